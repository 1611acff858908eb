//! The tail-called programs' bodies: each takes the main program's handoff, judges the frame
//! with its protocol's module (DNS, DNS over TCP, TLS, plain HTTP) and counts the decision on
//! the name; `main` wraps each in its entry point and the one exit.

use aya_ebpf::programs::XdpContext;
use gateway_common::{
    enums::{Action, Proto, Reason},
    maps::{GenSettings, NO_CATEGORY, TRACE_NO_ACTION, UNKNOWN_SLOT, logs},
};

use crate::{Outcome, count_decision, device::Device, dns, dns_tcp, http, maps, tls};

/// What a tail-called program starts from: the main program's handoff, its generation's
/// settings and the device. `Err` is the outcome when that cannot be had.
#[inline(always)]
pub(crate) fn take_handoff() -> Result<(dns::Handoff, &'static GenSettings, Device), Outcome> {
    let Some(s) = maps::scratch() else {
        return Err(Outcome::unjudged());
    };
    let h = s.handoff;
    let dev = Device {
        slot: h.slot,
        policy: h.policy & 63,
        flags: 0,
        known: h.slot != UNKNOWN_SLOT,
    };
    Ok((h, maps::settings_of(h.generation & 1), dev))
}

/// A decision on a name (the query's or the ClientHello's, left in `scratch.text`): counted,
/// and, if `event`, an event unless the policy's `log` (in its `flags`, as the deciding program
/// read them) says not to.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn decided_on_name(
    dev: &Device,
    policy_flags: u32,
    proto: Proto,
    action: Action,
    reason: Reason,
    category: u8,
    qtype: u16,
    name_len: u16,
    event: bool,
) {
    count_decision(dev, proto, action, reason, category);
    if !event || !logs(policy_flags, action) {
        return;
    }
    maps::emit(|ev| {
        // SAFETY: no preconditions.
        ev.boot_ns = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns() };
        ev.slot = dev.slot;
        ev.policy = dev.policy;
        ev.qtype = qtype;
        ev.proto = proto as u8;
        ev.action = action as u8;
        ev.reason = reason as u8;
        ev.category = category;
        ev.name_len = name_len;
        if let Some(s) = maps::scratch() {
            copy_name(&mut ev.name, &s.text, name_len);
        }
    });
}

/// Copies the first `len` bytes of `from` (rounded up to whole words) into `to`. The rest of
/// `to` is left as it was: an event's reader takes `name_len` bytes, and not writing the other
/// ~200 saves the stores and the cache lines they would touch in the ring.
#[inline(always)]
fn copy_name(to: &mut [u8; 256], from: &[u8; 256], len: u16) {
    let words = usize::from(len).div_ceil(8);
    let (to, from) = (to.as_mut_ptr().cast::<u64>(), from.as_ptr().cast::<u64>());
    let mut i = 0;
    while i < 256 / 8 && i < words {
        // SAFETY: word `i` < 32 of two 256-byte arrays. Volatile: LLVM would otherwise turn
        // the loop into a call to `memcpy`, a byte loop in a BPF subprogram.
        unsafe { core::ptr::write_volatile(to.add(i), from.add(i).read_unaligned()) };
        i += 1;
    }
}

/// A decision on a TCP flow (a ClientHello's, a request's): counted with an event for the name,
/// unless it is a blocked flow's later packet (counted, not logged again); `None` as the action
/// means nothing was decided.
#[inline(always)]
fn flow_decided(dev: &Device, proto: Proto, d: &tls::TlsOutcome) -> Outcome {
    let Some(action) = d.action else {
        return Outcome::new(dev, d.verdict, d.reason);
    };
    decided_on_name(
        dev,
        d.policy_flags,
        proto,
        action,
        d.reason,
        d.category,
        0,
        d.name_len,
        d.reason != Reason::FlowBlocked,
    );
    Outcome {
        action: action as u32,
        ..Outcome::new(dev, d.verdict, d.reason)
    }
}

#[inline(always)]
pub(crate) fn judge_tls(ctx: &XdpContext) -> Outcome {
    let (h, settings, dev) = match take_handoff() {
        Ok(t) => t,
        Err(out) => return out,
    };
    let generation = h.generation & 1;
    let d = tls::judge(ctx, &h.frame.bounded(), generation, settings, dev.policy);
    flow_decided(&dev, Proto::Tls, &d)
}

#[inline(always)]
pub(crate) fn judge_http(ctx: &XdpContext) -> Outcome {
    let (h, settings, dev) = match take_handoff() {
        Ok(t) => t,
        Err(out) => return out,
    };
    let generation = h.generation & 1;
    let f = h.frame.bounded();
    let r = http::judge(ctx, &f, generation, settings, dev.policy, h.off);
    let out = flow_decided(&dev, Proto::Http, &r.d);
    if r.next != 0 {
        if let Some(s) = maps::scratch() {
            s.handoff.off = r.next;
            // SAFETY: PROGS holds programs of this type; on success this does not return.
            unsafe { maps::PROGS.tail_call(ctx, maps::PROG_HTTP) };
        }
        // More requests in the segment than the tail-call limit lets one frame judge: no client
        // pipelines so many, so the flow is blocked rather than the rest passed unjudged.
        let b = http::block_flow(
            ctx,
            &f,
            &f.flow_key(),
            Reason::HttpUnparsed,
            NO_CATEGORY,
            0,
            0,
        );
        count_decision(
            &dev,
            Proto::Http,
            Action::Block,
            Reason::HttpUnparsed,
            NO_CATEGORY,
        );
        return Outcome {
            action: Action::Block as u32,
            ..Outcome::new(&dev, b.verdict, Reason::HttpUnparsed)
        };
    }
    out
}

#[inline(always)]
pub(crate) fn judge_dns(ctx: &XdpContext) -> Outcome {
    let (h, settings, dev) = match take_handoff() {
        Ok(t) => t,
        Err(out) => return out,
    };
    let generation = h.generation & 1;
    let d = dns::judge(
        ctx,
        &h.frame.bounded(),
        generation,
        settings,
        dev.policy,
        h.refused != 0,
    );
    decided_on_name(
        &dev,
        d.policy_flags,
        Proto::Dns,
        d.action,
        d.reason,
        d.category,
        d.qtype,
        d.name_len,
        // Only queries whose name was read; malformed ones are counted.
        d.name_len > 0,
    );
    Outcome {
        action: d.action as u32,
        ..Outcome::new(&dev, d.verdict, d.reason)
    }
}

#[inline(always)]
pub(crate) fn judge_dns_tcp(ctx: &XdpContext) -> Outcome {
    let (h, _, dev) = match take_handoff() {
        Ok(t) => t,
        Err(out) => return out,
    };
    let f = h.frame.bounded();
    let policy = maps::policy(h.generation & 1, dev.policy);
    let r = match dns_tcp::read(ctx, &f, h.off, &policy) {
        dns_tcp::Read::Frame(r) => r,
        dns_tcp::Read::Judge => {
            // SAFETY: PROGS holds programs of this type; on success this does not return.
            unsafe { maps::PROGS.tail_call(ctx, maps::PROG_DNS_MSG) };
            return too_many(ctx, &f, &dev);
        }
    };
    let d = &r.d;
    if r.decided && d.reason != Reason::FlowBlocked {
        count_decision(&dev, Proto::Dns, d.action, d.reason, d.category);
    }
    // A segment that ends inside a message is counted under the last message decided in it.
    let reason = if d.reason == Reason::DnsTcpPending && h.last != 0 {
        Reason::from_u32(h.last - 1).unwrap_or(Reason::DnsTcpPending)
    } else {
        d.reason
    };
    Outcome {
        action: if r.decided {
            d.action as u32
        } else {
            TRACE_NO_ACTION
        },
        ..Outcome::new(&dev, d.verdict, reason)
    }
}

#[inline(always)]
pub(crate) fn judge_dns_msg(ctx: &XdpContext) -> Outcome {
    let (h, settings, dev) = match take_handoff() {
        Ok(t) => t,
        Err(out) => return out,
    };
    let generation = h.generation & 1;
    let f = h.frame.bounded();
    let r = dns_tcp::judge_next(ctx, &f, generation, settings, dev.policy, h.refused != 0);
    let d = &r.d;
    decided_on_name(
        &dev,
        d.policy_flags,
        Proto::Dns,
        d.action,
        d.reason,
        d.category,
        d.qtype,
        d.name_len,
        d.name_len > 0,
    );
    if r.more {
        if let Some(s) = maps::scratch() {
            s.handoff.off = r.off;
            s.handoff.last = d.reason as u32 + 1;
            // SAFETY: PROGS holds programs of this type; on success this does not return.
            unsafe { maps::PROGS.tail_call(ctx, maps::PROG_DNS_TCP) };
        }
        return too_many(ctx, &f, &dev);
    }
    Outcome {
        action: d.action as u32,
        ..Outcome::new(&dev, d.verdict, d.reason)
    }
}

/// The kernel's tail-call limit reached: more messages in the segment than a frame may judge.
/// The flow is reset and blocked.
#[inline(always)]
fn too_many(ctx: &XdpContext, f: &dns::Frame, dev: &Device) -> Outcome {
    let verdict = dns_tcp::too_many(ctx, f);
    count_decision(
        dev,
        Proto::Dns,
        Action::Block,
        Reason::DnsTcpTooMany,
        NO_CATEGORY,
    );
    Outcome {
        action: Action::Block as u32,
        ..Outcome::new(dev, verdict, Reason::DnsTcpTooMany)
    }
}

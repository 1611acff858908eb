//! The gateway's XDP filter.
//!
//! One entry point, one exit: `gateway` calls `judge`, which returns the outcome (verdict,
//! reason, device), and `finish` counts it and turns it into the XDP action. `judge` never
//! returns `XDP_ABORTED`: every failure to parse is an outcome with its own reason.
#![no_std]
#![no_main]
// Inline asm (the verifier-shaped bounds check in `packet_bytes`) is unstable on the BPF target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod device;
mod dns;
mod maps;
mod packet_bytes;
mod tls;

use aya_ebpf::{Global, bindings::xdp_action, macros::xdp, programs::XdpContext};
use gateway_common::bytes::Bytes as _;
use gateway_common::{
    enums::{Action, Global as GlobalCounter, LinkType, Proto, Reason, Verdict, stats_index},
    maps::{
        DecisionKey, NO_CATEGORY, POLICY_BLOCK_PORTS, POLICY_MONITOR, POLICY_QUIC_BLOCK,
        SETTINGS_HAS_BLOCK_PORTS, SETTINGS_TLS_PORTS, TRACE_NO_ACTION, Trace, UNKNOWN_SLOT,
        block_port_key, flow_slot, logs,
    },
    packet::{
        ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Fragment, IPPROTO_TCP, IPPROTO_UDP, is_suspend_exempt,
        parse_l2, parse_l3, parse_l4,
    },
    tls::may_start_hello,
};

use crate::{device::Device, packet_bytes::PacketBytes};

/// `LinkType` of the interface this instance is attached to. Set at load time; the verifier
/// prunes the other link type's code.
#[unsafe(no_mangle)]
static LINK_TYPE: Global<u32> = Global::new(LinkType::Ethernet as u32);

/// Non-zero: record every outcome in `TRACE` (replay and fixtures only).
#[unsafe(no_mangle)]
static TRACE_ENABLED: Global<u32> = Global::new(0);

/// What happens to a frame, and why.
#[derive(Clone, Copy)]
struct Outcome {
    verdict: Verdict,
    reason: Reason,
    slot: u32,
    policy: u32,
    /// `Action` of a decision on a name or device, or `TRACE_NO_ACTION`.
    action: u32,
}

impl Outcome {
    /// Passed before anything about the frame was known (the control or scratch map missing,
    /// which array maps cannot be): counted as uninspected traffic of unknown devices.
    #[inline(always)]
    const fn unjudged() -> Self {
        Self {
            verdict: Verdict::Pass,
            reason: Reason::Uninspected,
            slot: UNKNOWN_SLOT,
            policy: 0,
            action: TRACE_NO_ACTION,
        }
    }

    #[inline(always)]
    fn new(dev: &Device, verdict: Verdict, reason: Reason) -> Self {
        Self {
            verdict,
            reason,
            slot: dev.slot,
            policy: dev.policy,
            action: TRACE_NO_ACTION,
        }
    }
}

#[xdp]
pub fn gateway(ctx: XdpContext) -> u32 {
    let out = judge(&ctx);
    finish(&ctx, &out)
}

/// The DNS program: tail-called by `gateway` for UDP to port 53, with its findings in scratch.
#[xdp]
pub fn gateway_dns(ctx: XdpContext) -> u32 {
    let out = judge_dns(&ctx);
    finish(&ctx, &out)
}

/// The TLS program: tail-called by `gateway` for TCP segments with payload to port 443 that
/// start a record or belong to a flow with state.
#[xdp]
pub fn gateway_tls(ctx: XdpContext) -> u32 {
    let out = judge_tls(&ctx);
    finish(&ctx, &out)
}

#[inline(always)]
fn judge_tls(ctx: &XdpContext) -> Outcome {
    let Some(s) = maps::scratch() else {
        return Outcome::unjudged();
    };
    let h = s.handoff;
    let generation = h.generation & 1;
    let dev = Device {
        slot: h.slot,
        policy: h.policy & 63,
        flags: 0,
        known: h.slot != UNKNOWN_SLOT,
    };
    let Some(settings) = maps::settings_of(generation) else {
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    };
    let d = tls::judge(ctx, &h.frame.bounded(), generation, settings, dev.policy);
    let Some(action) = d.action else {
        return Outcome::new(&dev, d.verdict, d.reason);
    };
    count_decision(&dev, Proto::Tls, action, d.reason, d.category);
    if d.reason != Reason::FlowBlocked && logs(maps::policy(generation, dev.policy).flags, action) {
        maps::emit(|ev| {
            // SAFETY: no preconditions.
            ev.boot_ns = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns() };
            ev.slot = dev.slot;
            ev.policy = dev.policy;
            ev.qtype = 0;
            ev.proto = Proto::Tls as u8;
            ev.action = action as u8;
            ev.reason = d.reason as u8;
            ev.category = d.category;
            ev.name_len = d.name_len;
            if let Some(s) = maps::scratch() {
                ev.name = s.text;
            }
        });
    }
    Outcome {
        action: action as u32,
        ..Outcome::new(&dev, d.verdict, d.reason)
    }
}

#[inline(always)]
fn judge_dns(ctx: &XdpContext) -> Outcome {
    let Some(s) = maps::scratch() else {
        return Outcome::unjudged();
    };
    let h = s.handoff;
    let generation = h.generation & 1;
    let slot = h.slot;
    let dev = Device {
        slot,
        policy: h.policy & 63,
        flags: 0,
        known: slot != UNKNOWN_SLOT,
    };
    let Some(settings) = maps::settings_of(generation) else {
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    };
    let d = dns::judge(ctx, &h.frame.bounded(), generation, settings, dev.policy);
    count_decision(&dev, Proto::Dns, d.action, d.reason, d.category);
    if d.name_len > 0 && logs(maps::policy(generation, dev.policy).flags, d.action) {
        maps::emit(|ev| {
            // SAFETY: no preconditions.
            ev.boot_ns = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns() };
            ev.slot = dev.slot;
            ev.policy = dev.policy;
            ev.qtype = d.qtype;
            ev.proto = Proto::Dns as u8;
            ev.action = d.action as u8;
            ev.reason = d.reason as u8;
            ev.category = d.category;
            ev.name_len = d.name_len;
            // The DNS program left the name in scratch memory.
            if let Some(s) = maps::scratch() {
                ev.name = s.text;
            }
        });
    }
    Outcome {
        action: d.action as u32,
        ..Outcome::new(&dev, d.verdict, d.reason)
    }
}

#[inline(always)]
fn judge(ctx: &XdpContext) -> Outcome {
    let pkt = PacketBytes::new(ctx);
    let Some((generation, settings)) = maps::active() else {
        return Outcome::unjudged();
    };
    let link = if LINK_TYPE.load() == LinkType::RawIp as u32 {
        LinkType::RawIp
    } else {
        LinkType::Ethernet
    };
    let mut dev = Device::unknown(settings);

    let l2 = match parse_l2(&pkt, link) {
        Ok(l2) => l2,
        Err(e) => {
            if let Some(mac) = e.src_mac {
                dev.by_mac(generation, settings, &mac);
                if dev.suspended() {
                    return suspended(&dev);
                }
            }
            return Outcome::new(&dev, Verdict::Pass, e.reason);
        }
    };
    if link == LinkType::Ethernet {
        dev.by_mac(generation, settings, &l2.src_mac);
    }
    if l2.ethertype != ETH_P_IP && l2.ethertype != ETH_P_IPV6 {
        if dev.suspended() {
            return if l2.ethertype == ETH_P_ARP {
                Outcome::new(&dev, Verdict::Pass, Reason::SuspendedExempt)
            } else {
                suspended(&dev)
            };
        }
        return Outcome::new(&dev, Verdict::Pass, Reason::NonIp);
    }

    let l3 = match parse_l3(&pkt, &l2) {
        Ok(l3) => l3,
        Err(e) => {
            if let Some(src) = e.src {
                dev.by_address(generation, settings, &src);
            }
            if dev.suspended() {
                return suspended(&dev);
            }
            return Outcome::new(&dev, Verdict::Pass, e.reason);
        }
    };
    dev.by_address(generation, settings, &l3.src);

    if dev.suspended() {
        if l3.fragment != Fragment::Later
            && let Ok(l4) = parse_l4(&pkt, &l3)
            && is_suspend_exempt(&l3, &l4)
        {
            return Outcome::new(&dev, Verdict::Pass, Reason::SuspendedExempt);
        }
        return suspended(&dev);
    }
    if l3.fragment == Fragment::Later {
        return Outcome::new(&dev, Verdict::Pass, Reason::Fragment);
    }
    let l4 = match parse_l4(&pkt, &l3) {
        Ok(l4) => l4,
        Err(reason) => return Outcome::new(&dev, Verdict::Pass, reason),
    };
    // DNS: UDP to port 53, and TCP segments to port 53 that carry data (handshakes pass).
    if l4.dst_port == 53
        && (l3.proto == IPPROTO_UDP || (l3.proto == IPPROTO_TCP && l4.payload_off < l3.l3_end))
    {
        // Hand over to the DNS program (verified on its own); it counts and returns the verdict.
        if let Some(s) = maps::scratch() {
            s.handoff = dns::Handoff {
                frame: dns::Frame::new(&pkt, &l2, &l3, &l4),
                generation,
                slot: dev.slot,
                policy: dev.policy & 63,
            };
            // SAFETY: PROGS holds programs of this type; on success this does not return.
            unsafe { maps::PROGS.tail_call(ctx, maps::PROG_DNS) };
        }
        // No DNS program loaded (or scratch missing): the query is passed, and counted so.
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    }
    if settings.flags & SETTINGS_HAS_BLOCK_PORTS != 0 {
        let policy = maps::policy(generation, dev.policy);
        if policy.flags & POLICY_BLOCK_PORTS != 0
            && maps::port_blocked(block_port_key(
                generation,
                dev.policy,
                l3.proto,
                l4.dst_port,
            ))
        {
            return decided(&dev, Proto::Port, Reason::BlockedPort, policy.flags, true);
        }
    }
    if l4.payload_off >= l3.l3_end {
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    }
    if l3.proto == IPPROTO_UDP && l4.dst_port == QUIC_PORT {
        if is_quic_initial(&pkt, l4.payload_off) {
            let policy = maps::policy(generation, dev.policy);
            let block = policy.flags & POLICY_QUIC_BLOCK != 0;
            return decided(&dev, Proto::Quic, Reason::Quic, policy.flags, block);
        }
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    }
    let tls_port = if settings.flags & SETTINGS_TLS_PORTS != 0 {
        maps::tls_port(generation, l4.dst_port)
    } else {
        l4.dst_port == DEFAULT_TLS_PORT
    };
    if l3.proto != IPPROTO_TCP || !tls_port {
        return Outcome::new(&dev, Verdict::Pass, Reason::Uninspected);
    }
    // TLS: a segment that may start a ClientHello, or one of a flow with state (a walk that
    // continues, a blocked flow). Data segments of decided flows stop here.
    let inspect = pkt.u8_at(l4.payload_off).is_some_and(may_start_hello)
        || maps::flow_marked(flow_slot(&l3.src, &l3.dst, l4.src_port, l4.dst_port));
    if inspect && let Some(s) = maps::scratch() {
        s.handoff = dns::Handoff {
            frame: dns::Frame::new(&pkt, &l2, &l3, &l4),
            generation,
            slot: dev.slot,
            policy: dev.policy & 63,
        };
        // SAFETY: as above.
        unsafe { maps::PROGS.tail_call(ctx, maps::PROG_TLS) };
    }
    Outcome::new(&dev, Verdict::Pass, Reason::Uninspected)
}

/// The TCP port whose ClientHellos are inspected unless `[gateway] tls_ports` says otherwise.
const DEFAULT_TLS_PORT: u16 = 443;
/// The UDP port whose QUIC Initials are judged.
const QUIC_PORT: u16 = 443;

/// QUIC versions whose Initial packets are recognised: 1 (RFC 9000), 2 (RFC 9369), and the
/// IETF drafts (0xff0000xx), which number packet types like version 1.
const QUIC_V1: u32 = 1;
const QUIC_V2: u32 = 0x6b33_43cf;

/// Whether the UDP payload at `off` is a QUIC long-header Initial packet.
#[inline(always)]
fn is_quic_initial(pkt: &PacketBytes, off: usize) -> bool {
    let Some(h) = pkt.read::<5>(off) else {
        return false;
    };
    // Long header form and the fixed bit.
    if h[0] & 0xc0 != 0xc0 {
        return false;
    }
    let version = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let kind = (h[0] >> 4) & 3;
    match version {
        QUIC_V1 => kind == 0,
        QUIC_V2 => kind == 1,
        v => v & 0xffff_ff00 == 0xff00_0000 && kind == 0,
    }
}

/// A decision made by the main program (port, QUIC): counted on the device; blocked frames
/// dropped unless the policy monitors.
#[inline(always)]
fn decided(dev: &Device, proto: Proto, reason: Reason, flags: u32, block: bool) -> Outcome {
    let action = if !block {
        Action::Allow
    } else if flags & POLICY_MONITOR != 0 {
        Action::Monitor
    } else {
        Action::Block
    };
    count_decision(dev, proto, action, reason, NO_CATEGORY);
    let verdict = if action == Action::Block {
        Verdict::Drop
    } else {
        Verdict::Pass
    };
    Outcome {
        action: action as u32,
        ..Outcome::new(dev, verdict, reason)
    }
}

/// Counts a decision on a device.
#[inline(always)]
fn count_decision(dev: &Device, proto: Proto, action: Action, reason: Reason, category: u8) {
    let key = DecisionKey {
        slot: dev.slot,
        proto: proto as u8,
        action: action as u8,
        reason: reason as u8,
        category,
    };
    if !maps::count_decision(&key) {
        maps::count_global(GlobalCounter::DecisionMapFull);
    }
}

/// A suspended device's frame: dropped, and counted as a decision on the device.
#[inline(always)]
fn suspended(dev: &Device) -> Outcome {
    count_decision(
        dev,
        Proto::Suspended,
        Action::Block,
        Reason::Suspended,
        NO_CATEGORY,
    );
    Outcome {
        action: Action::Block as u32,
        ..Outcome::new(dev, Verdict::Drop, Reason::Suspended)
    }
}

/// The one exit: counts the outcome and returns its XDP action.
#[inline(always)]
fn finish(ctx: &XdpContext, out: &Outcome) -> u32 {
    let bytes = ctx.data_end().wrapping_sub(ctx.data()) as u64;
    maps::count_stats(stats_index(out.reason, out.verdict), bytes);
    maps::count_device(out.slot, bytes, out.verdict != Verdict::Pass);
    if TRACE_ENABLED.load() != 0 {
        maps::trace(&Trace {
            seq: 0,
            verdict: out.verdict as u32,
            reason: out.reason as u32,
            slot: out.slot,
            policy: out.policy,
            action: out.action,
        });
    }
    match out.verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => xdp_action::XDP_TX,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

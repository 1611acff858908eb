//! SafeSearch: a query for a name the policy's engines cover, answered in place with a CNAME to
//! the engine's enforcement name and that name's addresses (which the daemon resolves and keeps
//! current in `SAFE_TARGETS`).
//!
//! The answer is built like a block answer (`answer`): the question kept, the records appended
//! with direct stores and summed as they are written, the enforcement name copied from the
//! target's record with one helper call, its sum taken from the record. A target whose
//! addresses are not known yet answers nothing: the query goes to the resolver as it came.

use aya_ebpf::{helpers::generated::bpf_xdp_store_bytes, programs::XdpContext};
use gateway_common::{
    domain::{DNS_HEADER, MAX_LEVELS, QTYPE_A, QTYPE_AAAA, QTYPE_HTTPS, QTYPE_SVCB},
    enums::{Action, Reason, Verdict},
    maps::{NO_CATEGORY, POLICY_MONITOR, PolicyEntry},
    safe_search::{MAX_SAFE_ADDRS, MAX_TARGET_WIRE, SAFE_V4_KNOWN, SAFE_V6_KNOWN, SafeTarget},
};

use crate::{
    answer::{Rcode, Records, answer, fold, reply, resize},
    dns::{DnsOutcome, Frame},
    maps,
    packet_bytes::{PacketBytes, nonzero},
};

/// The SafeSearch target (index + 1) covering the name just decided (its suffix fingerprints in
/// scratch, `labels` labels) for `policy_id`, for a query of `qtype`; 0 if none.
#[inline(always)]
pub(crate) fn covered(generation: u32, policy_id: u32, labels: u32, qtype: u16) -> u32 {
    if !(qtype == QTYPE_A || qtype == QTYPE_AAAA || qtype == QTYPE_HTTPS || qtype == QTYPE_SVCB)
        || labels == 0
    {
        return 0;
    }
    let Some(s) = maps::scratch() else { return 0 };
    let count = if (labels as usize) < MAX_LEVELS {
        labels as usize
    } else {
        MAX_LEVELS
    };
    // `dns::decide` left the fingerprints, least specific first: the last is the whole name's.
    let whole = s.fps[(count - 1) & (MAX_LEVELS - 1)];
    maps::safe_target_of(generation, whole, policy_id)
}

/// The outcome of a query covered by target `target` (index + 1): answered with the
/// enforcement name (A, AAAA), answered empty (HTTPS, SVCB: no ECH keys or address hints for
/// the real name), or passed while its addresses are not known.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn judge(
    ctx: &XdpContext,
    f: &Frame,
    header: &[u8; DNS_HEADER],
    end: usize,
    qtype: u16,
    generation: u32,
    target: u32,
    policy: &PolicyEntry,
) -> DnsOutcome {
    if policy.flags & POLICY_MONITOR != 0 {
        return DnsOutcome::new(
            Verdict::Pass,
            Reason::SafeSearch,
            Action::Monitor,
            NO_CATEGORY,
        );
    }
    if qtype == QTYPE_HTTPS || qtype == QTYPE_SVCB {
        let v = answer(ctx, f, header, end, Rcode::NoError, None, policy);
        return DnsOutcome::new(v, Reason::SafeSearch, Action::Rewrite, NO_CATEGORY);
    }
    let Some(t) = maps::safe_target(generation, target.wrapping_sub(1)) else {
        return unresolved();
    };
    let v4 = qtype == QTYPE_A;
    let known = if v4 { SAFE_V4_KNOWN } else { SAFE_V6_KNOWN };
    if t.addrs().flags & known == 0 || t.name_len == 0 || t.name_len as usize > MAX_TARGET_WIRE {
        return unresolved();
    }
    let v = rewrite(ctx, f, header, end, v4, t);
    DnsOutcome::new(v, Reason::SafeSearch, Action::Rewrite, NO_CATEGORY)
}

#[inline(always)]
const fn unresolved() -> DnsOutcome {
    DnsOutcome::new(
        Verdict::Pass,
        Reason::SafeSearchUnresolved,
        Action::Allow,
        NO_CATEGORY,
    )
}

/// The answer: the question, a CNAME to the target's name, its addresses of the query's family
/// (none, if it has none: the client then asks for the other), and OPT if the query had one. A
/// query over TCP (no answer can be built in the stream) is reset.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    f: &Frame,
    header: &[u8; DNS_HEADER],
    end: usize,
    v4: bool,
    t: &SafeTarget,
) -> Verdict {
    if f.tcp {
        return crate::answer::reset(ctx, f);
    }
    let Some(s) = maps::scratch() else {
        return Verdict::Drop;
    };
    let a = t.addrs();
    let n = usize::from(if v4 { a.n4 } else { a.n6 });
    let n = if n > MAX_SAFE_ADDRS {
        MAX_SAFE_ADDRS
    } else {
        n
    };
    let had_opt = header[10] != 0 || header[11] != 0;
    // Verifier: the name's length as a helper's (1..=64, see `nonzero`).
    let name_len = nonzero(t.name_len, MAX_TARGET_WIRE as u32 - 1, &mut s.size) as usize;
    let rr = if v4 { 16 } else { 28 };
    let new_len = end + 12 + name_len + n * rr + if had_opt { 11 } else { 0 };
    if !resize(ctx, new_len) {
        return Verdict::Drop;
    }
    let ttl = a.ttl.to_be_bytes();
    // The CNAME: owner the question's name, type 5, class IN, TTL, data length, the name.
    let mut cname = Records::at(ctx, end);
    if !(cname.word([0xc0, 0x0c, 0, 5, 0, 1, ttl[0], ttl[1]])
        && cname.quad([ttl[2], ttl[3], 0, name_len as u8]))
    {
        return Verdict::Drop;
    }
    if !copy_name(ctx, cname.at, t, name_len, new_len) {
        return Verdict::Drop;
    }
    // The addresses: owner a pointer to the CNAME's data (its offset in the message).
    let ptr = (0xc000 | (cname.at - f.payload_off)) as u16;
    let p = ptr.to_be_bytes();
    let kind = if v4 { QTYPE_A } else { QTYPE_AAAA };
    let mut after = Records::at(ctx, cname.at + name_len);
    let mut i = 0;
    while i < MAX_SAFE_ADDRS {
        if i >= n {
            break;
        }
        let ok = after.word([p[0], p[1], 0, kind as u8, 0, 1, ttl[0], ttl[1]])
            && after.half([ttl[2], ttl[3]])
            && if v4 {
                after.half([0, 4]) && after.quad(a.v4_be[i])
            } else {
                after.half([0, 16]) && after.v6(&a.v6_be[i])
            };
        if !ok {
            return Verdict::Drop;
        }
        i += 1;
    }
    if had_opt && !after.opt() {
        return Verdict::Drop;
    }
    // The records' sum from their start (a word boundary of theirs): the CNAME's fixed part,
    // the name's (from its record: it starts 12 bytes in), and what follows it, which starts
    // mid-word when the name's length is odd.
    let mut tail = fold(after.sum);
    if name_len & 1 != 0 {
        tail = tail.swap_bytes();
    }
    let sum = cname.sum + u64::from(t.name_sum & 0xffff) + u64::from(tail);
    reply(
        ctx,
        f,
        header,
        end,
        Rcode::NoError,
        1 + n as u8,
        u64::from(fold(sum)),
        after.at,
    )
}

/// Writes the target's name (`name_len` bytes) into the frame at `at`. When at least a word of
/// the answer follows it (addresses, or OPT), as whole words with direct stores — the last word
/// runs into what follows, which is written after it — else with one helper call.
#[inline(always)]
fn copy_name(ctx: &XdpContext, at: usize, t: &SafeTarget, name_len: usize, new_len: usize) -> bool {
    if at + name_len + 8 > new_len {
        // SAFETY: `name_len` (1..=64) bytes of the record's 64-byte name; the helper checks the
        // frame's bounds.
        return unsafe {
            bpf_xdp_store_bytes(
                ctx.ctx,
                at as u32,
                t.name.as_ptr() as *mut _,
                name_len as u32,
            )
        } == 0;
    }
    let pkt = PacketBytes::new(ctx);
    let words = t.name.as_ptr().cast::<u64>();
    let mut w = 0;
    while w < MAX_TARGET_WIRE / 8 {
        if w * 8 >= name_len {
            break;
        }
        // SAFETY: word `w` < 8 of the 64-byte name.
        let v = unsafe { words.add(w).read_unaligned() };
        if !pkt.put(at + w * 8, v) {
            return false;
        }
        w += 1;
    }
    true
}

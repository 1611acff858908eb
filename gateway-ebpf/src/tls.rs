//! TLS: the ClientHello's server name, across segments, and the decision on the flow.
//!
//! The segment's payload is copied into per-CPU scratch memory (one `bpf_xdp_load_bytes`), then
//! the shared walk (`gateway_common::tls`) runs a field per `bpf_loop` iteration. Where it stops
//! at the end of a segment is kept per flow in `FLOWS` (and a host name read in part, in
//! `FLOW_NAMES`); the next in-order segment resumes it. A retransmitted first segment restarts
//! the walk; any other segment out of order ends it, and the policy's `on_unparsed_tls` decides.
//! A blocked flow stays in `FLOWS`: its later packets are dropped.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use gateway_common::{
    bytes::Bytes,
    domain::MAX_LEVELS,
    enums::{Action, Global, Reason, Verdict},
    maps::{
        FLOW_BLOCKED, FLOW_PENDING, FlowKey, FlowState, GenSettings, NO_CATEGORY, POLICY_MONITOR,
        POLICY_TLS_DROP, POLICY_UNPARSED_TLS_BLOCK,
    },
    tls::{Hello, HelloSink, HelloWalk, MAX_STEPS, may_start_hello},
};

use gateway_common::packet::{L3, L4};

use crate::{
    dns::{self, Frame},
    maps,
    packet_bytes::{PacketBytes, nonzero, opaque},
};

/// Bytes of a segment's payload the walk reads (the scratch buffer is twice that: indexes are
/// masked with `PAYLOAD_MASK`).
pub const MAX_PAYLOAD: usize = 2048;
const PAYLOAD_MASK: usize = 4095;

/// `bpf_loop` state of the walk.
#[repr(C)]
pub struct TlsCtx {
    walk: HelloWalk,
    seed: u64,
    pos: u32,
    end: u32,
    /// `Hello` as a number once the loop stopped.
    result: u32,
    _pad: u32,
}

const R_MORE: u32 = 0;
const R_NEED_MORE: u32 = 1;
const R_SNI: u32 = 2;
const R_NO_SNI: u32 = 3;
const R_UNPARSED: u32 = 4;
const R_NOT_HELLO: u32 = 5;

/// The walk's output: the host name's text and label hashes, in scratch memory (the HTTP
/// scan's too).
pub(crate) struct Sink<'a> {
    pub(crate) text: &'a mut [u8; 256],
    pub(crate) labels: &'a mut [u64; MAX_LEVELS],
}

impl HelloSink for Sink<'_> {
    // Verifier (6.18.44, the HTTP scan): `opaque` keeps the masks, which LLVM drops where it
    // has bounded the index itself (`name_len < 253`) on a register the verifier does not see
    // bounded ("R7 max value is outside of the allowed memory range").
    #[inline(always)]
    fn text(&mut self, i: usize, c: u8) {
        self.text[opaque(i) & 0xff] = c;
    }
    #[inline(always)]
    fn label(&mut self, i: usize, hash: u64) {
        self.labels[opaque(i) & (MAX_LEVELS - 1)] = hash;
    }
}

/// Walk steps per `bpf_loop` iteration. Verifier (6.18.44): two steps per iteration made the
/// callback's states multiply past a million processed instructions; one step per call costs a
/// helper call per field and verifies on every kernel.
const STEPS_PER_CALL: u32 = 1;

/// `STEPS_PER_CALL` fields per iteration.
extern "C" fn tls_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = maps::scratch() else { return 1 };
    let end = (s.tls.end as usize) & PAYLOAD_MASK;
    let mut pos = s.tls.pos as usize;
    let seed = s.tls.seed;
    let (payload, walk) = (&s.payload, &mut s.tls.walk);
    let mut sink = Sink {
        text: &mut s.text,
        labels: &mut s.labels,
    };
    // A few fields per call: the call and the scratch lookup cost as much as a field.
    let mut r = Hello::More;
    let mut k = 0;
    while k < STEPS_PER_CALL {
        r = walk.step(
            seed,
            // Verifier (6.1): `opaque` keeps the mask, which LLVM drops knowing `i < end <= 4095`;
            // 6.1 learns nothing from comparing two unknown scalars ("R0 unbounded memory
            // access").
            |i| (i < end).then(|| payload[opaque(i) & PAYLOAD_MASK]),
            &mut pos,
            end,
            &mut sink,
        );
        if r != Hello::More {
            break;
        }
        k += 1;
    }
    s.tls.pos = pos as u32;
    s.tls.result = match r {
        Hello::More => return 0,
        Hello::NeedMore => R_NEED_MORE,
        Hello::Sni => R_SNI,
        Hello::NoSni => R_NO_SNI,
        Hello::Unparsed => R_UNPARSED,
        Hello::NotHello => R_NOT_HELLO,
    };
    1
}

/// `*w = HelloWalk::new()`, as one volatile store: a plain one leaves the zero fields to a
/// call to `memset` (a byte loop in a BPF subprogram).
#[inline(always)]
fn fresh_walk(w: &mut HelloWalk) {
    // SAFETY: `w` is a valid, aligned HelloWalk.
    unsafe { core::ptr::write_volatile(w, HelloWalk::new()) };
}

/// What the TLS program decided on a segment.
#[derive(Clone, Copy)]
pub struct TlsOutcome {
    pub verdict: Verdict,
    pub reason: Reason,
    /// `None`: no decision on the flow (uninspected, or the walk goes on).
    pub action: Option<Action>,
    pub category: u8,
    /// Host name bytes in `scratch.text` (0: no name to report).
    pub name_len: u16,
    /// The policy's `POLICY_*` flags, on a decision (its `log` decides the event).
    pub policy_flags: u32,
}

impl TlsOutcome {
    #[inline(always)]
    pub(crate) const fn dropped(self) -> Self {
        Self {
            verdict: Verdict::Drop,
            ..self
        }
    }

    /// A later packet of a blocked flow: dropped, counted, not logged again.
    #[inline(always)]
    pub(crate) const fn blocked_flow() -> Self {
        Self {
            verdict: Verdict::Drop,
            reason: Reason::FlowBlocked,
            action: Some(Action::Block),
            category: NO_CATEGORY,
            name_len: 0,
            // Not read: a blocked flow's later packets are counted, not logged.
            policy_flags: 0,
        }
    }

    #[inline(always)]
    pub(crate) const fn pass(reason: Reason) -> Self {
        Self {
            verdict: Verdict::Pass,
            reason,
            action: None,
            category: NO_CATEGORY,
            name_len: 0,
            policy_flags: 0,
        }
    }
}

/// A SYN to a TLS port: the flow's state starts at its sequence number (+ 1, the first payload
/// byte's), so its first payload bytes are taken in order only. On the fast path of SYNs alone:
/// one insert into `FLOWS` (a second, `BPF_EXIST`, when the flow had state: a SYN again, or a
/// new connection on the ports of an old one) and the slot's mark.
// A map value by reference: by value it would be copied onto the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn start_flow(pkt: &PacketBytes, l3: &L3, l4: &L4) {
    let Some(s) = maps::scratch() else {
        return;
    };
    let Some((seq, _)) = gateway_common::packet::tcp_seq_ack(pkt, l3.l4_off) else {
        return;
    };
    let key = FlowKey::of(pkt, l3, l4);
    fresh_walk(&mut s.flow.walk);
    let seq = seq.wrapping_add(1);
    s.flow.first_seq = seq;
    s.flow.next_seq = seq;
    s.flow.state = FLOW_PENDING;
    if maps::FLOWS.insert(key, &s.flow, BPF_NOEXIST).is_ok() {
        maps::mark_flow(key.mark_slot(), true);
        maps::count_global(Global::FlowsCreated);
    } else {
        let _ = maps::FLOWS.insert(key, &s.flow, BPF_EXIST);
    }
}

/// A RST or FIN without payload from the device on a flow whose slot is marked: the flow's state,
/// if it has one, is removed with its mark — unless the flow was blocked (its later packets stay
/// dropped until the LRU map evicts it).
#[inline(always)]
pub fn end_flow(pkt: &PacketBytes, l3: &L3, l4: &L4) {
    let key = FlowKey::of(pkt, l3, l4);
    // SAFETY: the value is only read.
    let blocked = match unsafe { maps::FLOWS.get(key) } {
        Some(st) => st.state == FLOW_BLOCKED,
        None => return,
    };
    if !blocked && maps::FLOWS.remove(key).is_ok() {
        maps::mark_flow(key.mark_slot(), false);
        maps::count_global(Global::FlowsRemoved);
    }
}

/// `bpf_map_update_elem` flags (uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// Judges a TCP segment with payload to a TLS port.
// Map values are passed by reference on purpose: by value they would be copied onto the
// 512-byte stack (a `FlowName` is 384 bytes).
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn judge(
    ctx: &XdpContext,
    f: &Frame,
    generation: u32,
    settings: &GenSettings,
    policy_id: u32,
) -> TlsOutcome {
    let pkt = PacketBytes::new(ctx);
    let key = f.flow_key();
    let slot = key.mark_slot();
    let Some(first) = pkt.u8_at(f.payload_off) else {
        return TlsOutcome::pass(Reason::Uninspected);
    };
    let len = f.l3_end.saturating_sub(f.payload_off);
    let Some(s) = maps::scratch() else {
        return TlsOutcome::pass(Reason::Uninspected);
    };

    // Where the walk starts: saved state, a fresh walk, or nothing to do. Walk states live in
    // scratch memory, never on the stack (misaligned stack accesses are rejected).
    fresh_walk(&mut s.tls.walk);
    let mut first_seq = f.seq;
    let mut existed = false;
    let mut broken = false;
    // No flow of this mark slot has state: nothing to look up (a new ClientHello's usual case).
    let state = if maps::flow_marked(slot) {
        // SAFETY: the value is read and copied at once; the map is not changed meanwhile by us.
        unsafe { maps::FLOWS.get(key) }
    } else {
        None
    };
    if let Some(st) = state {
        existed = true;
        if st.state == FLOW_BLOCKED && !(may_start_hello(first) && f.seq != st.first_seq) {
            return TlsOutcome::blocked_flow();
        }
        if st.state == FLOW_BLOCKED || (f.seq == st.first_seq && may_start_hello(first)) {
            // A new connection on the ports of a blocked one (its ClientHello at another
            // sequence number), or the first segment again (a retransmission): start over.
        } else if f.seq == st.next_seq {
            maps::copy(&mut s.tls.walk, &st.walk);
            first_seq = st.first_seq;
            if s.tls.walk.in_name() {
                // SAFETY: as above.
                match unsafe { maps::FLOW_NAMES.get(key) } {
                    Some(n) => {
                        maps::copy(&mut s.text, &n.text);
                        maps::copy(&mut s.labels, &n.labels);
                    }
                    None => {
                        maps::count_global(Global::FlowNameLost);
                        broken = true;
                    }
                }
            }
        } else if (f.seq.wrapping_sub(st.next_seq) as i32) > 0 {
            // Ahead of the bytes expected, before the ClientHello was decided: dropped, so the
            // client sends the bytes in between, then this one again ("disorder" evasions,
            // which send a hello's second part first, meet the walk in order).
            return TlsOutcome::pass(Reason::TcpOutOfOrder).dropped();
        } else {
            // Behind: a retransmission of part of what the walk read, which cannot be judged
            // again from here (`on_unparsed_tls` decides).
            broken = true;
        }
    } else if !may_start_hello(first) {
        return TlsOutcome::pass(Reason::Uninspected);
    }

    let result = if broken {
        R_UNPARSED
    } else {
        let n = if len > MAX_PAYLOAD { MAX_PAYLOAD } else { len } as u32;
        // Verifier: 1..=2048, whatever the compiler keeps of the comparison above.
        let n = nonzero(n, MAX_PAYLOAD as u32 - 1, &mut s.size);
        // SAFETY: `n` <= 2048 bytes into the 4096-byte buffer; the helper checks the packet range.
        let loaded = len > 0
            && unsafe {
                bpf_xdp_load_bytes(
                    ctx.ctx,
                    f.payload_off as u32,
                    s.payload.as_mut_ptr().cast(),
                    n,
                )
            } == 0;
        if loaded {
            s.tls.seed = settings.table_seed;
            s.tls.pos = 0;
            s.tls.end = n;
            s.tls.result = R_MORE;
            // SAFETY: the callback matches bpf_loop's contract; its state is in scratch memory.
            unsafe {
                bpf_loop(
                    MAX_STEPS / STEPS_PER_CALL,
                    tls_step as *mut c_void,
                    core::ptr::null_mut(),
                    0,
                )
            };
            // A segment longer than the walk reads cannot be followed by an in-order one.
            if s.tls.result == R_NEED_MORE && (len > MAX_PAYLOAD) {
                R_UNPARSED
            } else {
                s.tls.result
            }
        } else {
            R_UNPARSED
        }
    };

    let policy = maps::policy(generation, policy_id);
    // The flow's state leaves `FLOWS`, or (from `scratch.flow`) goes in: marks and counters
    // follow.
    let forget = |existed: bool| {
        if existed {
            let _ = maps::FLOWS.remove(key);
            maps::mark_flow(slot, false);
            maps::count_global(Global::FlowsRemoved);
        }
    };
    let keep = |flow: &FlowState| {
        if maps::FLOWS.insert(key, flow, 0).is_ok() && !existed {
            maps::mark_flow(slot, true);
            maps::count_global(Global::FlowsCreated);
        }
    };
    let (block, reason, category, name_len) = match result {
        R_NEED_MORE => {
            s.flow.walk = s.tls.walk;
            s.flow.first_seq = first_seq;
            s.flow.next_seq = f.seq.wrapping_add(len as u32);
            s.flow.state = FLOW_PENDING;
            keep(&s.flow);
            if s.tls.walk.in_name() {
                // Built in scratch memory: the stack is too small for it.
                s.flow_name.text = s.text;
                s.flow_name.labels = s.labels;
                let _ = maps::FLOW_NAMES.insert(key, &s.flow_name, 0);
            }
            return TlsOutcome::pass(Reason::TlsPending);
        }
        R_NOT_HELLO => {
            forget(existed);
            return TlsOutcome::pass(Reason::Uninspected);
        }
        R_SNI => {
            let labels = u32::from(s.tls.walk.labels);
            let d = dns::decide(generation, settings, policy_id, &policy, labels);
            let (reason, category) = dns::counted_as(d.why);
            (d.block, reason, category, s.tls.walk.name_len)
        }
        R_NO_SNI => (
            policy.flags & POLICY_UNPARSED_TLS_BLOCK != 0,
            Reason::TlsNoSni,
            NO_CATEGORY,
            0,
        ),
        _ => (
            policy.flags & POLICY_UNPARSED_TLS_BLOCK != 0,
            Reason::TlsUnparsed,
            NO_CATEGORY,
            0,
        ),
    };
    let name_len = name_len & 0xff;
    // Allowed, or blocked under `mode = monitor`: passed, and the flow forgotten.
    if !block || policy.flags & POLICY_MONITOR != 0 {
        forget(existed);
        return TlsOutcome {
            verdict: Verdict::Pass,
            reason,
            action: Some(if block {
                Action::Monitor
            } else {
                Action::Allow
            }),
            category,
            name_len,
            policy_flags: policy.flags,
        };
    }
    // Blocked: the flow's later packets are dropped too.
    fresh_walk(&mut s.flow.walk);
    s.flow.first_seq = first_seq;
    s.flow.next_seq = 0;
    s.flow.state = FLOW_BLOCKED;
    keep(&s.flow);
    let verdict = if policy.flags & POLICY_TLS_DROP != 0 {
        Verdict::Drop
    } else {
        crate::answer::reset(ctx, f)
    };
    TlsOutcome {
        verdict,
        reason,
        action: Some(Action::Block),
        category,
        name_len,
        policy_flags: policy.flags,
    }
}

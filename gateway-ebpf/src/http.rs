//! Plain HTTP: the host of a request that starts in the segment, judged like a server name.
//!
//! The segment's payload (from where the request starts) is copied into per-CPU scratch memory
//! (one `bpf_xdp_load_bytes`), then the shared scan (`gateway_common::http`) reads up to
//! `CHUNK` bytes per `bpf_loop` iteration. A blocked request is reset (or dropped) and its flow
//! kept in `FLOWS` as blocked: its later packets are dropped. An allowed request followed by
//! another in the same segment (pipelining) has that one judged too, by the program again
//! (a tail call from itself, with where it starts).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use gateway_common::{
    bytes::Bytes,
    enums::{Action, Global, Reason, Verdict},
    http::{HostScan, Http, MAX_HEAD, MAX_STEPS},
    maps::{
        FLOW_BLOCKED, FlowKey, GenSettings, NO_CATEGORY, POLICY_HTTP_DROP, POLICY_MONITOR,
        POLICY_UNPARSED_HTTP_BLOCK,
    },
    packet::{L3, L4},
    tls::HelloWalk,
};

use crate::{
    dns::{self, Frame},
    maps,
    packet_bytes::{PacketBytes, nonzero, opaque},
    tls::{Sink, TlsOutcome},
};

/// The scratch buffer's index mask (it holds 4096 bytes; at most `MAX_HEAD` are copied).
const PAYLOAD_MASK: usize = 4095;

/// `bpf_loop` state of the scan.
#[repr(C)]
pub struct HttpCtx {
    scan: HostScan,
    seed: u64,
    pos: u32,
    end: u32,
    /// `R_*` once the loop stopped.
    result: u32,
    _pad: u32,
}

const R_MORE: u32 = 0;
const R_HOST: u32 = 1;
const R_NO_HOST: u32 = 2;
const R_UNPARSED: u32 = 3;
const R_NOT_HTTP: u32 = 4;

/// One step (up to `CHUNK` bytes) per iteration.
extern "C" fn http_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = maps::scratch() else { return 1 };
    let end = (s.http.end as usize) & PAYLOAD_MASK;
    let mut pos = s.http.pos as usize;
    let seed = s.http.seed;
    let (payload, scan) = (&s.payload, &mut s.http.scan);
    let mut sink = Sink {
        text: &mut s.text,
        labels: &mut s.labels,
    };
    let r = scan.step(
        seed,
        // Verifier (6.1): `opaque` keeps the mask, as in the ClientHello walk.
        |i| (i < end).then(|| payload[opaque(i) & PAYLOAD_MASK]),
        &mut pos,
        end,
        &mut sink,
    );
    s.http.pos = pos as u32;
    s.http.result = match r {
        Http::More => return 0,
        Http::Host => R_HOST,
        Http::NoHost => R_NO_HOST,
        Http::Unparsed => R_UNPARSED,
        Http::NotHttp => R_NOT_HTTP,
    };
    1
}

/// Whether a payload starting with `b` may be a request: methods are upper-case letters, and
/// servers skip empty lines before the request line.
#[inline(always)]
pub const fn may_start_request(b: u8) -> bool {
    b.wrapping_sub(b'A') < 26 || b == b'\r' || b == b'\n'
}

/// A SYN to an HTTP port whose slot is marked: a new connection on the ports of one with state
/// (a blocked one) starts clean.
#[inline(always)]
pub fn reopen(pkt: &PacketBytes, l3: &L3, l4: &L4) {
    let key = FlowKey::of(pkt, l3, l4);
    if maps::FLOWS.remove(key).is_ok() {
        maps::mark_flow(key.mark_slot(), false);
        maps::count_global(Global::FlowsRemoved);
    }
}

/// What the program decided on a request, and where the next one of the segment starts
/// (payload offset; 0: none to judge).
pub struct HttpOutcome {
    pub d: TlsOutcome,
    pub next: u32,
}

/// Judges the request starting `off` bytes into the payload of a TCP segment to an HTTP port.
#[inline(always)]
pub fn judge(
    ctx: &XdpContext,
    f: &Frame,
    generation: u32,
    settings: &GenSettings,
    policy_id: u32,
    off: u32,
) -> HttpOutcome {
    let none = |d: TlsOutcome| HttpOutcome { d, next: 0 };
    let pkt = PacketBytes::new(ctx);
    let key = f.flow_key();
    let slot = key.mark_slot();
    let len = f.l3_end.saturating_sub(f.payload_off);
    let Some(s) = maps::scratch() else {
        return none(TlsOutcome::pass(Reason::Uninspected));
    };
    if off == 0 && maps::flow_marked(slot) {
        // SAFETY: the value is only read.
        if let Some(st) = unsafe { maps::FLOWS.get(key) }
            && st.state == FLOW_BLOCKED
        {
            return none(TlsOutcome::blocked_flow());
        }
    }
    let off = (off as usize) & 0x3fff;
    if off >= len {
        return none(TlsOutcome::pass(Reason::Uninspected));
    }
    match pkt.u8_at(f.payload_off + off) {
        Some(b) if may_start_request(b) => {}
        _ => return none(TlsOutcome::pass(Reason::Uninspected)),
    }
    let left = len - off;
    let n = if left > MAX_HEAD { MAX_HEAD } else { left } as u32;
    // Verifier: 1..=2048, whatever the compiler keeps of the comparisons above.
    let n = nonzero(n, MAX_HEAD as u32 - 1, &mut s.size);
    // SAFETY: `n` <= 2048 bytes into the 4096-byte buffer; the helper checks the packet range.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (f.payload_off + off) as u32,
            s.payload.as_mut_ptr().cast(),
            n,
        )
    } == 0;
    if !loaded {
        return none(TlsOutcome::pass(Reason::Uninspected));
    }
    // SAFETY: a valid, aligned HostScan of scratch memory. Volatile: a plain store of the
    // zero fields would become a call to `memset`.
    unsafe { core::ptr::write_volatile(&mut s.http.scan, HostScan::new()) };
    s.http.seed = settings.table_seed;
    s.http.pos = 0;
    s.http.end = n;
    s.http.result = R_MORE;
    // SAFETY: the callback matches bpf_loop's contract; its state is in scratch memory.
    unsafe {
        bpf_loop(
            MAX_STEPS,
            http_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };

    let policy = maps::policy(generation, policy_id);
    let unparsed_block = policy.flags & POLICY_UNPARSED_HTTP_BLOCK != 0;
    let result = s.http.result;
    let (block, reason, category, name_len) = match result {
        R_HOST => {
            let labels = u32::from(s.http.scan.labels);
            let d = dns::decide(generation, settings, policy_id, &policy, labels);
            let (reason, category) = dns::counted_as(d.why);
            (d.block, reason, category, s.http.scan.name_len & 0xff)
        }
        R_NO_HOST => (unparsed_block, Reason::HttpNoHost, NO_CATEGORY, 0),
        R_NOT_HTTP => return none(TlsOutcome::pass(Reason::Uninspected)),
        _ => (unparsed_block, Reason::HttpUnparsed, NO_CATEGORY, 0),
    };
    let monitor = policy.flags & POLICY_MONITOR != 0;
    if !block || monitor {
        // The next request of the segment, if the head said where it starts.
        let next = match s.http.scan.next() {
            Some(rel) if (rel as usize) < left => (off + rel as usize) as u32,
            _ => 0,
        };
        return HttpOutcome {
            d: TlsOutcome {
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
            },
            next,
        };
    }
    HttpOutcome {
        d: block_flow(ctx, f, &key, reason, category, name_len, policy.flags),
        next: 0,
    }
}

/// Blocks the flow of `f` (its later packets are dropped) and answers the segment: a reset to
/// the device, or nothing (`http_block_answer = "drop"`).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a map value by reference: by value it would be copied onto the stack"
)]
#[inline(always)]
pub fn block_flow(
    ctx: &XdpContext,
    f: &Frame,
    key: &FlowKey,
    reason: Reason,
    category: u8,
    name_len: u16,
    policy_flags: u32,
) -> TlsOutcome {
    let Some(s) = maps::scratch() else {
        return TlsOutcome::pass(Reason::Uninspected).dropped();
    };
    // SAFETY: a valid, aligned HelloWalk of scratch memory (volatile: see `HostScan` above).
    unsafe { core::ptr::write_volatile(&mut s.flow.walk, HelloWalk::new()) };
    s.flow.first_seq = f.seq;
    s.flow.next_seq = 0;
    s.flow.state = FLOW_BLOCKED;
    let existed = maps::flow_marked(key.mark_slot())
        // SAFETY: only tested for presence.
        && unsafe { maps::FLOWS.get(*key) }.is_some();
    if maps::FLOWS.insert(*key, &s.flow, 0).is_ok() && !existed {
        maps::mark_flow(key.mark_slot(), true);
        maps::count_global(Global::FlowsCreated);
    }
    let verdict = if policy_flags & POLICY_HTTP_DROP != 0 {
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
        policy_flags,
    }
}

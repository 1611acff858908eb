//! DNS over TCP, judged as a stream.
//!
//! A TCP flow to port 53 is a stream of messages, each after its 2-byte length (RFC 7766), and a
//! client may put several in one segment or split one over several. Per flow, `DNS_STREAMS`
//! keeps the stream's next sequence number and the start of the message being read (its length,
//! header and question: `DNS_STREAM_PREFIX` bytes at most), so every message is judged whole and
//! in order, however it was cut:
//!
//! - A segment at the next sequence number is read on; one already read again — a
//!   retransmission, or the real segment after a decoy that never reached the server — is read
//!   again from the state the flow had before it. Any other (ahead: out of order; behind: an
//!   old retransmission of bytes this state cannot frame) is dropped: the client sends it again,
//!   in order.
//! - Two programs take turns, a message at a time: the stream program (`read`) collects a
//!   message's prefix and tail-calls the message program (`judge_next`), which judges it and
//!   tail-calls the stream program for the rest of the segment. Apart, each is verified once
//!   (together, the name walk would be checked once per way the stream can reach it). The
//!   kernel's tail-call limit (33) bounds a segment to 16 messages; a segment with more is
//!   answered with a reset.
//! - A blocked message resets the flow (the client gets an RST; its segment is dropped) and the
//!   flow's later segments are dropped. Answering in the stream instead would need the gateway to
//!   own the connection: the server would see a gap where the answered query was, and every byte
//!   after it would be out of its sequence.
//!
//! The state starts at the SYN (its sequence number + 1) or, for a flow whose SYN went by
//! unseen, at its first data segment (taken to start a message).

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use gateway_common::{
    domain::{DNS_HEADER, MAX_WIRE_NAME, QTYPE_HTTPS, QTYPE_SVCB, check_query_header},
    enums::{Action, Global, Reason, Verdict},
    maps::{
        DNS_STREAM_BLOCKED, DNS_STREAM_OPEN, DNS_STREAM_PREFIX, DnsAnswer, DnsStream, FlowKey,
        GenSettings, NO_CATEGORY, POLICY_HTTPS_EMPTY, POLICY_MONITOR, POLICY_SAFE_SEARCH,
        PolicyEntry,
    },
};

use crate::{
    answer::reset,
    dns::{self, DnsOutcome, Frame, Scratch},
    maps,
    packet_bytes::{nonzero, opaque},
};

/// Offset in `DnsStream::buf` of message byte 0 (its length's first byte).
const BUF_BASE: usize = 2;
/// Shortest message with a question: header, the root name, type and class.
const MIN_MESSAGE: u32 = DNS_HEADER as u32 + 1 + 4;

/// What the stream program hands to the message program (in scratch memory).
#[repr(C)]
pub struct StreamJudge {
    /// Bytes of the message's prefix in `DnsStream::buf` (its length field included).
    pub(crate) prefix: u32,
    /// Payload offset where the stream goes on after the message, and 1 if the segment has
    /// bytes there.
    next: u32,
    more: u32,
    /// 1: the message is shorter than a header and a question.
    short: u32,
}

/// What one call made of the segment.
pub struct StreamOutcome {
    pub d: DnsOutcome,
    /// A message was decided (counted, and its name in `scratch.text` when `d.name_len > 0`).
    pub decided: bool,
    /// More of the segment follows the message decided, at payload offset `off`.
    pub more: bool,
    pub off: u32,
}

impl StreamOutcome {
    #[inline(always)]
    const fn frame(verdict: Verdict, reason: Reason) -> Self {
        Self {
            d: DnsOutcome::new(verdict, reason, Action::Allow, NO_CATEGORY),
            decided: false,
            more: false,
            off: 0,
        }
    }
}

/// Starts (or restarts) the stream of `key` at sequence number `seq`.
#[inline(always)]
fn start(s: &mut Scratch, key: &FlowKey, seq: u32) {
    let st = &mut s.stream;
    st.next_seq = seq;
    st.state = DNS_STREAM_OPEN;
    st.skip = 0;
    st.have = 0;
    st.seg_seq = seq;
    st.seg_skip = 0;
    st.seg_have = 0;
    st.seg_valid = 1;
    // By reference: a value would be copied onto the stack (584 bytes).
    #[allow(clippy::needless_borrows_for_generic_args)]
    let inserted = maps::DNS_STREAMS.insert(*key, &s.stream, 0).is_ok();
    if inserted {
        maps::count_global(Global::DnsStreamsCreated);
    }
}

/// What the stream program made of the segment from an offset on.
pub enum Read {
    /// The frame's outcome (the segment ended inside a message, was out of order, the flow is
    /// blocked, or a message could not be read).
    Frame(StreamOutcome),
    /// A message's prefix is whole in `DNS_STREAMS` (its length and where the stream goes on
    /// in `scratch.stream_judge`): the message program judges it.
    Judge,
}

/// The stream program: reads the segment from payload offset `off` (0 in the first call for
/// it) to the end of the next message's prefix, or of the segment.
#[inline(always)]
pub fn read(ctx: &XdpContext, f: &Frame, off: u32, policy: &PolicyEntry) -> Read {
    let frame = |verdict, reason| Read::Frame(StreamOutcome::frame(verdict, reason));
    let Some(s) = maps::scratch() else {
        return frame(Verdict::Pass, Reason::Uninspected);
    };
    let key = f.flow_key();
    let seg_len = f.l3_end.saturating_sub(f.payload_off) as u32;
    if off == 0 && f.syn {
        // A connection starts (a SYN again: a new connection on the ports of an old one).
        start(s, &key, f.seq);
        if seg_len == 0 {
            return frame(Verdict::Pass, Reason::Uninspected);
        }
    }
    let mut st = maps::DNS_STREAMS.get_ptr_mut(key);
    if st.is_none() && off == 0 {
        // No SYN seen (or its state evicted): the stream is taken to start here.
        start(s, &key, f.seq);
        st = maps::DNS_STREAMS.get_ptr_mut(key);
    }
    let Some(st) = st else {
        // The map refused the entry: judged like a flow with no stream kept would be.
        return frame(Verdict::Pass, Reason::Uninspected);
    };
    // SAFETY: the value stays valid while this program runs (LRU entries are freed after an
    // RCU grace period); a flow's segments come one at a time.
    let st = unsafe { &mut *st };
    if st.state == DNS_STREAM_BLOCKED {
        return Read::Frame(StreamOutcome {
            d: DnsOutcome::new(
                Verdict::Drop,
                Reason::FlowBlocked,
                Action::Block,
                NO_CATEGORY,
            ),
            decided: true,
            more: false,
            off: 0,
        });
    }
    if off == 0 {
        if f.seq == st.next_seq {
            st.seg_seq = f.seq;
            st.seg_skip = st.skip;
            st.seg_have = st.have;
            st.seg_valid = 1;
        } else if f.seq == st.seg_seq && st.seg_valid != 0 {
            st.skip = st.seg_skip;
            st.have = st.seg_have;
        } else {
            return frame(Verdict::Drop, Reason::TcpOutOfOrder);
        }
        st.next_seq = f.seq.wrapping_add(seg_len);
    }
    let pending = || frame(Verdict::Pass, Reason::DnsTcpPending);
    let mut off = off;
    if off >= seg_len {
        return pending();
    }
    if st.skip > 0 {
        let n = if st.skip < seg_len - off {
            st.skip
        } else {
            seg_len - off
        };
        st.skip -= n;
        off += n;
        if off >= seg_len {
            return pending();
        }
    }
    // The length first (its two bytes may come in two segments), then the prefix it implies.
    if st.have < 2 {
        if st.have == 0 && st.seg_have != 0 {
            // A new message overwrites the one the segment's state points into.
            st.seg_valid = 0;
        }
        match collect(ctx, f, s, st, &mut off, seg_len, 2) {
            Some(true) => {}
            Some(false) => return pending(),
            None => return Read::Frame(broken(st, policy)),
        }
    }
    let msg_len = u32::from(u16::from_be_bytes([st.buf[BUF_BASE], st.buf[BUF_BASE + 1]]));
    let total = msg_len + 2;
    let prefix = if total < DNS_STREAM_PREFIX {
        total
    } else {
        DNS_STREAM_PREFIX
    };
    if st.have < prefix {
        match collect(ctx, f, s, st, &mut off, seg_len, prefix) {
            Some(true) => {}
            Some(false) => return pending(),
            None => return Read::Frame(broken(st, policy)),
        }
    }
    // The prefix is whole: the rest of the message is passed over, the next one starts after.
    st.skip = total - prefix;
    st.have = 0;
    let rest = seg_len - off;
    let skipped = if st.skip < rest { st.skip } else { rest };
    st.skip -= skipped;
    let next = off + skipped;
    let j = &mut s.stream_judge;
    j.prefix = prefix;
    j.next = next;
    j.more = u32::from(next < seg_len);
    j.short = u32::from(msg_len < MIN_MESSAGE);
    Read::Judge
}

/// The message program: judges the message whose prefix the stream program left in
/// `DNS_STREAMS` (a program of its own: the verifier checks the walk and the lookups once,
/// from one state, not once per way the stream got there).
#[inline(always)]
pub fn judge_next(
    ctx: &XdpContext,
    f: &Frame,
    generation: u32,
    settings: &GenSettings,
    policy_id: u32,
    refused: bool,
) -> StreamOutcome {
    let policy = maps::policy(generation, policy_id);
    let (Some(s), Some(st)) = (maps::scratch(), maps::DNS_STREAMS.get_ptr_mut(f.flow_key())) else {
        // The state was evicted between the two programs: the message goes unjudged.
        return StreamOutcome::frame(Verdict::Pass, Reason::Uninspected);
    };
    // SAFETY: as in `read`.
    let st = unsafe { &mut *st };
    let j = &s.stream_judge;
    let (prefix, next, more, short) = (j.prefix, j.next, j.more, j.short);
    let mut d = if short != 0 || prefix > DNS_STREAM_PREFIX || prefix < 2 + DNS_HEADER as u32 {
        dns::parse_error(&policy, Reason::DnsTruncated)
    } else {
        judge_message(
            s, st, prefix, generation, settings, policy_id, &policy, refused,
        )
    };
    let block = d.action == Action::Block;
    if block {
        d.verdict = answer_block(ctx, f, st, &policy);
    }
    StreamOutcome {
        more: !block && more != 0,
        off: next,
        d,
        decided: true,
    }
}

/// The copy failed although the segment had the bytes (the frame was not what its headers
/// said): the message cannot be judged, and `on_parse_error` decides; a block blocks the flow.
#[inline(always)]
fn broken(st: &mut DnsStream, policy: &PolicyEntry) -> StreamOutcome {
    let d = dns::parse_error(policy, Reason::DnsTruncated);
    if d.action == Action::Block {
        st.state = DNS_STREAM_BLOCKED;
    }
    StreamOutcome {
        d,
        decided: true,
        more: false,
        off: 0,
    }
}

/// Copies segment bytes from payload offset `*off` into the message prefix until it holds
/// `want` bytes (at most `DNS_STREAM_PREFIX`) or the segment ends: whether it holds them, or
/// `None` if the copy failed.
#[inline(always)]
fn collect(
    ctx: &XdpContext,
    f: &Frame,
    s: &mut Scratch,
    st: &mut DnsStream,
    off: &mut u32,
    seg_len: u32,
    want: u32,
) -> Option<bool> {
    let have = st.have;
    if have >= want || have >= DNS_STREAM_PREFIX || *off >= seg_len {
        return Some(have >= want);
    }
    let avail = seg_len - *off;
    let need = want - have;
    let n = if need < avail { need } else { avail };
    // 1..=512 for the verifier; then the copy's true bound.
    let n = nonzero(n, 511, &mut s.size);
    if n > DNS_STREAM_PREFIX {
        return None;
    }
    // Verifier (6.1): the bound must be on the register that forms the pointer. `opaque`, the
    // mask and the comparison right before the use keep LLVM from testing one copy and adding
    // another (it knows `have < DNS_STREAM_PREFIX` from above and would drop both).
    let at = opaque(have as usize) & 0x1ff;
    if at >= DNS_STREAM_PREFIX as usize {
        return None;
    }
    let at = BUF_BASE + at;
    // SAFETY: `at` + `n` <= 2 + 272 + 273 < the buffer's 552 bytes; the helper checks the
    // packet range.
    let copied = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            f.payload_off as u32 + *off,
            st.buf.as_mut_ptr().add(at).cast(),
            n,
        )
    } == 0;
    if !copied {
        return None;
    }
    st.have = have + n;
    *off += n;
    Some(st.have >= want)
}

/// Judges the message whose prefix (`prefix` bytes, length field included) is in `st.buf`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn judge_message(
    s: &mut Scratch,
    st: &DnsStream,
    prefix: u32,
    generation: u32,
    settings: &GenSettings,
    policy_id: u32,
    policy: &PolicyEntry,
    refused: bool,
) -> DnsOutcome {
    let b = &st.buf;
    let mut header = [0u8; DNS_HEADER];
    let mut i = 0;
    while i < DNS_HEADER {
        header[i] = b[BUF_BASE + 2 + i];
        i += 1;
    }
    if let Err(r) = check_query_header(&header) {
        return dns::parse_error(policy, r);
    }
    // Message bytes after the header (14 with the length) are the question's.
    let name_at = BUF_BASE + 2 + DNS_HEADER;
    let avail = prefix - (2 + DNS_HEADER as u32);
    let n = if avail > MAX_WIRE_NAME as u32 {
        MAX_WIRE_NAME as u32
    } else {
        avail
    } & 0xff;
    if n == 0 {
        return dns::parse_error(policy, Reason::DnsTruncated);
    }
    // The name to `wire`, as whole words (`name_at` is a word boundary of the buffer).
    let from = b.as_ptr().wrapping_add(name_at).cast::<u64>();
    let to = s.wire.as_mut_ptr().cast::<u64>();
    let mut w = 0;
    while w < 256 / 8 {
        // SAFETY: word `w` < 32: bytes name_at + 8w.. lie within the 552-byte buffer, and
        // 8w.. within the 256 of `wire`. Volatile: LLVM would make the loop a `memcpy` call.
        unsafe { core::ptr::write_volatile(to.add(w), from.add(w).read_unaligned()) };
        w += 1;
    }
    let (wire, text_len, labels) = match dns::walk_name(s, n, settings.table_seed) {
        Ok(w) => w,
        Err(r) => return dns::parse_error(policy, r),
    };
    if 2 + DNS_HEADER as u32 + wire + 4 > prefix {
        return dns::parse_error(policy, Reason::DnsTruncated);
    }
    let q = name_at + (wire as usize & 0x1ff);
    let qtype = u16::from_be_bytes([b[q], b[q + 1]]);
    let mut out = if refused {
        blocked(policy, Reason::DnsResolver, NO_CATEGORY)
    } else {
        let d = dns::decide(generation, settings, policy_id, policy, labels);
        let (reason, category) = dns::counted_as(d.why);
        if d.block {
            blocked(policy, reason, category)
        } else if policy.flags & POLICY_SAFE_SEARCH != 0
            && crate::safe_search::covered(generation, policy_id, labels, qtype) != 0
        {
            // No answer in the stream: the flow is reset (a client that asks over TCP gets no
            // unfiltered answer for a covered name).
            blocked(policy, Reason::SafeSearch, NO_CATEGORY)
        } else if (qtype == QTYPE_HTTPS || qtype == QTYPE_SVCB)
            && policy.flags & POLICY_HTTPS_EMPTY != 0
        {
            // No empty answer in the stream (see the module's notes): the flow is reset, and
            // the client asks again without it.
            blocked(policy, Reason::HttpsRecords, category)
        } else {
            DnsOutcome::new(Verdict::Pass, reason, Action::Allow, category)
        }
    };
    out.qtype = qtype;
    out.name_len = text_len as u16;
    out.policy_flags = policy.flags;
    out
}

/// A blocked message: the flow is reset (or the segment dropped, `dns_block_answer = "drop"`);
/// under `mode = "monitor"`, passed.
#[inline(always)]
fn blocked(policy: &PolicyEntry, reason: Reason, category: u8) -> DnsOutcome {
    let action = if policy.flags & POLICY_MONITOR != 0 {
        Action::Monitor
    } else {
        Action::Block
    };
    // The verdict of a block is the caller's (`answer_block`): one reset for every reason.
    DnsOutcome::new(Verdict::Pass, reason, action, category)
}

/// The verdict on a segment whose message was blocked: a reset to the client, or a drop
/// (`dns_block_answer = "drop"`). The flow's later segments are dropped.
#[inline(always)]
fn answer_block(ctx: &XdpContext, f: &Frame, st: &mut DnsStream, policy: &PolicyEntry) -> Verdict {
    st.state = DNS_STREAM_BLOCKED;
    if policy.dns_answer == DnsAnswer::Drop as u32 {
        Verdict::Drop
    } else {
        reset(ctx, f)
    }
}

/// A segment with more messages than the tail-call limit lets one frame judge: the flow is
/// reset and blocked.
#[inline(always)]
pub fn too_many(ctx: &XdpContext, f: &Frame) -> Verdict {
    let key = f.flow_key();
    if let Some(st) = maps::DNS_STREAMS.get_ptr_mut(key) {
        // SAFETY: as in `judge`.
        unsafe { (*st).state = DNS_STREAM_BLOCKED };
    }
    reset(ctx, f)
}

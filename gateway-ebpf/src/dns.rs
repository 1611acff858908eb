//! DNS queries: the name, the decision, and the answer built in place.
//!
//! The question name is copied into a per-CPU scratch buffer (one `bpf_xdp_load_bytes`), then
//! walked a label per `bpf_loop` iteration: the verifier checks the callback once, whatever the
//! number of labels. The label walk (lower-casing, checks, a keyed hash per label) and the suffix
//! fingerprints are the shared functions of `gateway_common::domain`; the suffixes are then looked
//! up most specific first.
//!
//! A blocked query is answered from its own frame (`answer`): the DNS header becomes a response, what
//! follows the question is cut off (`bpf_xdp_adjust_tail`), a sinkhole record and an OPT record
//! are appended as needed, addresses and ports are swapped, and lengths and checksums are
//! recomputed — with direct stores of whole words, and the checksums summed from what was
//! written and the question already in scratch. The frame goes back out with `XDP_TX`; the query
//! never reaches a resolver.

use core::ffi::c_void;

use aya_ebpf::{helpers::generated::bpf_loop, programs::XdpContext};
use gateway_common::{
    bytes::Bytes,
    domain::{
        DNS_HEADER, Decision, Label, MAX_LEVELS, MAX_WIRE_NAME, NameWalk, QTYPE_A, QTYPE_AAAA,
        QTYPE_HTTPS, QTYPE_SVCB, Why, check_query_header, decide_level, default_decision, suffixes,
    },
    enums::{Action, Reason, Verdict},
    maps::{
        DnsAnswer, GenSettings, POLICY_DEFAULT_BLOCK, POLICY_HTTPS_EMPTY, POLICY_MONITOR,
        POLICY_PARSE_ERROR_BLOCK, POLICY_SAFE_SEARCH, PolicyEntry,
    },
    packet::{Addr, Fragment, IPPROTO_TCP, L2, L3, L4, TCP_ACK, TCP_SYN},
};

use crate::{
    answer::{Rcode, answer},
    maps,
    packet_bytes::{PacketBytes, opaque},
};

/// Per-CPU working memory for one query.
#[repr(C)]
pub struct Scratch {
    /// The question name as it came (wire format).
    pub wire: [u8; 256],
    /// Room for the last word read at the end of `wire` (the walk reads whole words).
    pub wire_slack: u64,
    /// The name as lower-case text.
    pub text: [u8; 256],
    /// Room for the last word written at the end of `text` (the walk writes whole words).
    pub text_slack: u64,
    /// Fingerprints of the suffixes, least specific first.
    pub fps: [u64; MAX_LEVELS],
    /// Hashes of the last `MAX_LEVELS` labels read (label `i` at `i % MAX_LEVELS`).
    pub labels: [u64; MAX_LEVELS],
    /// A TCP segment's payload, for the ClientHello walk.
    pub payload: [u8; 4096],
    /// Loop state of the ClientHello walk.
    pub tls: crate::tls::TlsCtx,
    /// Loop state of the HTTP request scan.
    pub http: crate::http::HttpCtx,
    /// A flow's state on its way to `FLOWS`.
    pub flow: gateway_common::maps::FlowState,
    /// A host name that continues in the next segment, on its way to `FLOW_NAMES`.
    pub flow_name: gateway_common::maps::FlowName,
    /// A copy of a segment for its checksum, zero padded: a TCP reset's, or an answer's whose
    /// question was not all copied to `wire`; also an IPv4 header with options.
    pub seg: [u8; 512],
    /// What the main program hands to the DNS program (tail call).
    pub handoff: Handoff,
    /// A DNS-over-TCP stream's state on its way to `DNS_STREAMS`.
    pub stream: gateway_common::maps::DnsStream,
    pub stream_judge: crate::dns_tcp::StreamJudge,
    /// Loop state of the `bpf_loop` callbacks. Kept in map memory, not on the stack: the
    /// verifier tracks stack values precisely, so a counter there makes every iteration a new
    /// state and the callback never converges; map memory reads as unknown, so it does.
    pub walk: WalkCtx,
    pub matching: MatchCtx,
    /// Where helper lengths pass through on their way to the call (`packet_bytes::nonzero`).
    pub size: u32,
    pub size_pad: u32,
}

/// The main program's findings, for the DNS program it tail-calls.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handoff {
    pub frame: Frame,
    pub generation: u32,
    pub slot: u32,
    pub policy: u32,
    /// DNS over TCP: where in the payload the next message starts (0 in the first call for a
    /// segment), and the reason the last message of the segment was decided with (+ 1; 0: none).
    pub off: u32,
    pub last: u32,
    /// 1: the frame goes to a resolver the policy's `dns_resolvers` does not list (decided by
    /// the main program: its stack is its own, and the DNS programs' is full).
    pub refused: u32,
    pub _pad: u32,
}

/// What the DNS and TLS paths need of the headers, handed over in scratch memory and read back
/// with `bounded`'s masks: whichever way the frame was parsed (VLAN depth, IP version, extension
/// headers), the verifier then checks that code in one abstract state, instead of once per path
/// (which exceeds its one-million-instruction budget).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Frame {
    pub l3_off: usize,
    pub l4_off: usize,
    pub payload_off: usize,
    pub l3_end: usize,
    pub v6: bool,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    /// A TCP segment (DNS over TCP, TLS): a block is answered with a reset.
    pub tcp: bool,
    /// A first IP fragment (more follow): not answered, and dropped if it ends before the part
    /// the decision needs.
    pub frag: bool,
    /// A SYN without ACK: a connection starts.
    pub syn: bool,
    /// The sequence number of the segment's first payload byte (one past a SYN's own).
    pub seq: u32,
    pub ack: u32,
}

impl Frame {
    /// Writes the frame's findings into `self` (the handoff in scratch memory) field by field:
    /// a `Frame` built first and then assigned would be copied with a `memcpy`. The offsets are
    /// stored as they are: the programs that read the handoff take it with `bounded`.
    #[inline(always)]
    pub fn fill(&mut self, pkt: &PacketBytes, l2: &L2, l3: &L3, l4: &L4) {
        let tcp = l3.proto == IPPROTO_TCP;
        let (seq, ack) = if tcp {
            gateway_common::packet::tcp_seq_ack(pkt, l3.l4_off).unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        let syn = tcp && l4.tcp_flags & TCP_SYN != 0;
        self.l3_off = l2.l3_off;
        self.l4_off = l3.l4_off;
        self.payload_off = l4.payload_off;
        self.l3_end = l3.end(pkt.size());
        self.v6 = l3.version == 6;
        self.src = l3.src;
        self.dst = l3.dst(pkt).unwrap_or_default();
        self.sport = l4.src_port();
        self.dport = l4.dst_port();
        self.tcp = tcp;
        self.frag = l3.fragment == Fragment::First;
        self.syn = syn && l4.tcp_flags & TCP_ACK == 0;
        self.seq = seq.wrapping_add(u32::from(syn));
        self.ack = ack;
    }

    /// The key of the TCP flow the frame belongs to (`FLOWS`, `DNS_STREAMS`).
    #[inline(always)]
    pub fn flow_key(&self) -> gateway_common::maps::FlowKey {
        gateway_common::maps::FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            _pad: 0,
        }
    }

    /// The same masks again: a `Frame` read back from map memory (the tail-call handoff) has
    /// unknown bounds as far as the verifier is concerned.
    #[inline(always)]
    pub fn bounded(mut self) -> Self {
        self.l3_off &= 0x3f;
        self.l4_off &= 0x3fff;
        self.payload_off &= 0x3fff;
        self.l3_end &= 0xffff;
        self
    }
}

/// The outcome of a DNS query for the main program.
pub struct DnsOutcome {
    pub verdict: Verdict,
    pub reason: Reason,
    pub action: Action,
    pub category: u8,
    /// Query type, and length of the name now in `Scratch::text` (0: the name was not read).
    pub qtype: u16,
    pub name_len: u16,
    /// The policy's `POLICY_*` flags, once the name was read (its `log` decides the event).
    pub policy_flags: u32,
}

impl DnsOutcome {
    pub(crate) const fn new(
        verdict: Verdict,
        reason: Reason,
        action: Action,
        category: u8,
    ) -> Self {
        Self {
            verdict,
            reason,
            action,
            category,
            qtype: 0,
            name_len: 0,
            policy_flags: 0,
        }
    }
}

/// `bpf_loop` state of the name walk.
#[repr(C)]
pub struct WalkCtx {
    walk: NameWalk,
    /// Wire bytes of the name copied into `Scratch::wire`.
    pub(crate) avail: u32,
    /// 0 running, 1 done, 2 malformed.
    state: u32,
    reason: u32,
    seed: u64,
}

/// One label per iteration. Verifier (6.18.44): with two labels per iteration the callback's
/// states multiply and `gateway_dns_msg` passed a million instructions; one label keeps it far
/// below on every kernel, for one more helper call per label.
extern "C" fn walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = maps::scratch() else { return 1 };
    if walk_label(s) { 1 } else { 0 }
}

/// Reads one label of the name; true when the walk is over (complete or malformed).
#[inline(always)]
fn walk_label(s: &mut Scratch) -> bool {
    let avail = s.walk.avail as usize;
    let seed = s.walk.seed;
    // Whole words at any byte offset of `wire` and `text`: the masks keep every word inside the
    // array and its slack word, and the pointers come from the whole scratch value.
    let base: *mut u8 = (s as *mut Scratch).cast();
    let wire = base.wrapping_add(core::mem::offset_of!(Scratch, wire));
    let text = base.wrapping_add(core::mem::offset_of!(Scratch, text));
    // Verifier (6.1): the masks must reach the program. LLVM drops them where it has proven the
    // offset small (`text + n <= 253` above), keeping the bound only on a register it then
    // spills; 6.1 does not carry bounds to a spilled copy ("R2 max value is outside of the
    // allowed memory range"). `opaque` keeps each mask.
    let step = s.walk.walk.label(
        seed,
        avail,
        // SAFETY: bytes i..i + 8 (i < 256) lie within `wire` and `wire_slack`.
        |i| {
            u64::from_le(unsafe {
                core::ptr::read_unaligned(wire.add(opaque(i) & 0xff).cast::<u64>())
            })
        },
        // SAFETY: bytes i..i + 8 (i < 256) lie within `text` and `text_slack`.
        |i, w| unsafe {
            core::ptr::write_unaligned(text.add(opaque(i) & 0xff).cast::<u64>(), w.to_le())
        },
    );
    match step {
        Label::Read(h) => {
            let i = (s.walk.walk.labels as usize).wrapping_sub(1) & (MAX_LEVELS - 1);
            s.labels[i] = h;
            if s.walk.walk.done != 0 {
                s.walk.state = 1;
                return true;
            }
            false
        }
        Label::Done => {
            s.walk.state = 1;
            true
        }
        Label::Bad(r) => {
            s.walk.state = 2;
            s.walk.reason = r as u32;
            true
        }
    }
}

/// `bpf_loop` state of the lookups.
#[repr(C)]
pub struct MatchCtx {
    generation: u32,
    buckets: u32,
    seed: u64,
    count: u32,
    policy: u32,
    blocked: u64,
    /// 1 once a level decided.
    found: u32,
    block: u32,
    explicit: u32,
    category: u32,
}

extern "C" fn match_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = maps::scratch() else { return 1 };
    let c = &mut s.matching;
    // Most specific first: the last recorded suffix is the longest.
    let level = (c.count as u64).wrapping_sub(1).wrapping_sub(index) & (MAX_LEVELS as u64 - 1);
    let generation = c.generation & 1;
    let (buckets, seed, policy, blocked) = (c.buckets, c.seed, c.policy, c.blocked);
    let fp = s.fps[level as usize];
    let c = &mut s.matching;
    // A shorter suffix is an ancestor of the name: its rules for the names below it apply.
    match decide_suffix(generation, buckets, seed, fp, policy, blocked, true) {
        Some(d) => {
            c.found = 1;
            c.block = u32::from(d.block);
            match d.why {
                Why::Category(cat) => c.category = u32::from(cat),
                _ => c.explicit = 1,
            }
            1
        }
        None => 0,
    }
}

/// The decision of `policy` (blocking the categories `blocked`) at the suffix with fingerprint
/// `fp`: its rule set in the domain table of `generation` (0 or 1), if any — the one for names
/// below the suffix (`below`) or for the suffix itself (the whole name).
#[inline(always)]
fn decide_suffix(
    generation: u32,
    buckets: u32,
    seed: u64,
    fp: u64,
    policy: u32,
    blocked: u64,
    below: bool,
) -> Option<Decision> {
    let value = maps::domain(generation, buckets, seed, fp)?;
    let id = if below {
        gateway_common::maps::below_id(value)
    } else {
        gateway_common::maps::here_id(value)
    };
    // Masked for the verifier: the index is bounded by the map's size whatever the value.
    let rules = maps::ruleset(generation, id & (gateway_common::maps::MAX_RULESETS - 1))?;
    decide_level(&rules, policy, blocked)
}

/// The reason and category a decision on a name is counted under.
#[inline(always)]
pub(crate) fn counted_as(why: Why) -> (Reason, u8) {
    match why {
        Why::Explicit => (Reason::Explicit, gateway_common::maps::NO_CATEGORY),
        Why::Category(c) => (Reason::Category, c),
        Why::Default => (Reason::Default, gateway_common::maps::NO_CATEGORY),
    }
}

/// The decision on the name now in `scratch.text` (`len` bytes) for `policy`.
#[inline(always)]
pub(crate) fn decide(
    generation: u32,
    settings: &GenSettings,
    policy_id: u32,
    policy: &PolicyEntry,
    labels: u32,
) -> Decision {
    let Some(s) = maps::scratch() else {
        return default_decision(policy.flags & POLICY_DEFAULT_BLOCK != 0);
    };
    let count = suffixes(&s.labels, labels as usize, settings.table_seed, &mut s.fps) as u32;
    if count == 0 || settings.domain_buckets == 0 {
        return default_decision(policy.flags & POLICY_DEFAULT_BLOCK != 0);
    }
    // The whole name first, here: a listed name is decided without the loop over the shorter
    // suffixes (and its callback).
    let whole = s.fps[(count as usize - 1) & (MAX_LEVELS - 1)];
    if let Some(d) = decide_suffix(
        generation & 1,
        settings.domain_buckets,
        settings.table_seed,
        whole,
        policy_id,
        policy.block_categories,
        false,
    ) {
        return d;
    }
    // The shorter suffixes, most specific first.
    let count = count - 1;
    let m = &mut s.matching;
    m.generation = generation;
    m.buckets = settings.domain_buckets;
    m.seed = settings.table_seed;
    m.count = count;
    m.policy = policy_id;
    m.blocked = policy.block_categories;
    // Volatile: four adjacent zero stores would otherwise become a call to `memset` (a byte
    // loop in a BPF subprogram).
    // SAFETY: the fields are valid, aligned u32s of scratch memory.
    unsafe {
        core::ptr::write_volatile(&mut m.found, 0);
        core::ptr::write_volatile(&mut m.block, 0);
        core::ptr::write_volatile(&mut m.explicit, 0);
        core::ptr::write_volatile(&mut m.category, 0);
    }
    if count > 0 {
        // SAFETY: the callback matches bpf_loop's contract; its state is in scratch memory.
        unsafe { bpf_loop(count, match_step as *mut c_void, core::ptr::null_mut(), 0) };
    }
    let m = &s.matching;
    if m.found == 0 {
        return default_decision(policy.flags & POLICY_DEFAULT_BLOCK != 0);
    }
    let why = if m.explicit != 0 {
        Why::Explicit
    } else {
        Why::Category(m.category as u8)
    };
    Decision {
        block: m.block != 0,
        why,
    }
}

/// Judges a UDP datagram to port 53, or a DNS-shaped one to another port.
#[inline(always)]
pub fn judge(
    ctx: &XdpContext,
    f: &Frame,
    generation: u32,
    settings: &GenSettings,
    policy_id: u32,
    refused: bool,
) -> DnsOutcome {
    let policy = maps::policy(generation, policy_id);
    let parse_error = |reason: Reason| {
        // A first fragment that ends before the question: its later fragments would carry the
        // name past the filter (RFC 1858's tiny fragment). No client sends one.
        if f.frag && reason == Reason::DnsTruncated {
            DnsOutcome::new(
                Verdict::Drop,
                Reason::FragmentTooSmall,
                Action::Block,
                gateway_common::maps::NO_CATEGORY,
            )
        } else {
            parse_error(&policy, reason)
        }
    };
    let pkt = PacketBytes::new(ctx);
    let dns_off = f.payload_off;
    let Some(header) = pkt.read::<DNS_HEADER>(dns_off) else {
        return parse_error(Reason::DnsTruncated);
    };
    if let Err(r) = check_query_header(&header) {
        return parse_error(r);
    }
    let name_off = dns_off + DNS_HEADER;
    if f.l3_end <= name_off {
        return parse_error(Reason::DnsTruncated);
    }
    let mut n = (f.l3_end - name_off) as u32;
    if n > MAX_WIRE_NAME as u32 {
        n = MAX_WIRE_NAME as u32;
    }
    let Some(s) = maps::scratch() else {
        return parse_error(Reason::DnsTruncated);
    };
    // Verifier: the length is proven within 1..=255 and the buffer is 256 bytes.
    let n = n & 0xff;
    if n == 0 {
        return parse_error(Reason::DnsTruncated);
    }
    if copy_question(&pkt, name_off, n as usize, s).is_none() {
        return parse_error(Reason::DnsTruncated);
    }
    let (wire, text_len, labels) = match walk_name(s, n, settings.table_seed) {
        Ok(w) => w,
        Err(r) => return parse_error(r),
    };
    let q_off = name_off + wire as usize;
    let Some(q) = pkt.read::<4>(q_off) else {
        return parse_error(Reason::DnsTruncated);
    };
    let qtype = u16::from_be_bytes([q[0], q[1]]);
    let mut out = if !refused {
        judge_name(
            ctx, f, &header, q_off, qtype, generation, settings, policy_id, &policy, labels,
        )
    } else if policy.flags & POLICY_MONITOR != 0 {
        DnsOutcome::new(
            Verdict::Pass,
            Reason::DnsResolver,
            Action::Monitor,
            gateway_common::maps::NO_CATEGORY,
        )
    } else {
        let v = answer(ctx, f, &header, q_off + 4, Rcode::Refused, None, &policy);
        DnsOutcome::new(
            v,
            Reason::DnsResolver,
            Action::Block,
            gateway_common::maps::NO_CATEGORY,
        )
    };
    // A fragment is not answered (the answer would be a fragment too): dropped, its datagram
    // never reassembled.
    if f.frag && out.verdict == Verdict::Tx {
        out.verdict = Verdict::Drop;
    }
    out.qtype = qtype;
    out.name_len = text_len as u16;
    out.policy_flags = policy.flags;
    out
}

/// A malformed query, decided by the policy's `on_parse_error`.
#[inline(always)]
pub(crate) fn parse_error(policy: &PolicyEntry, reason: Reason) -> DnsOutcome {
    if policy.flags & POLICY_PARSE_ERROR_BLOCK != 0 {
        DnsOutcome::new(
            Verdict::Drop,
            reason,
            Action::Block,
            gateway_common::maps::NO_CATEGORY,
        )
    } else {
        DnsOutcome::new(
            Verdict::Pass,
            reason,
            Action::Allow,
            gateway_common::maps::NO_CATEGORY,
        )
    }
}

/// Walks the `n` wire bytes (1..=255) of the name now in `scratch.wire`: its text into
/// `scratch.text`, its label hashes into `scratch.labels`. Returns the wire bytes the name took,
/// its text length and its labels.
#[inline(always)]
pub(crate) fn walk_name(s: &mut Scratch, n: u32, seed: u64) -> Result<(u32, u32, u32), Reason> {
    s.walk = WalkCtx {
        walk: NameWalk::default(),
        avail: n,
        state: 0,
        reason: 0,
        seed,
    };
    // Every label takes at least 2 wire bytes: a name of `n` bytes has at most n/2 + 1 labels
    // counting the root.
    // SAFETY: the callback matches bpf_loop's contract; its state is in scratch memory.
    unsafe {
        bpf_loop(
            n / 2 + 1,
            walk_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // Volatile: the callback wrote these through its own pointer to scratch, which LLVM, given
    // `s` (a `&mut` nothing else may change), would assume it did not, and not read again.
    let w = &s.walk;
    // SAFETY: valid, aligned fields of scratch memory.
    let read = |v: &u32| unsafe { core::ptr::read_volatile(v) };
    // SAFETY: as above.
    let read16 = |v: &u16| u32::from(unsafe { core::ptr::read_volatile(v) });
    match read(&w.state) {
        1 => {}
        2 => return Err(Reason::from_u32(read(&w.reason)).unwrap_or(Reason::DnsTruncated)),
        _ => return Err(Reason::DnsTruncated),
    }
    Ok((
        read16(&w.walk.wire) & 0x1ff,
        read16(&w.walk.len) & 0xff,
        read16(&w.walk.labels) & 0xff,
    ))
}

/// Copies the `n` bytes (at most 255) of the frame at `off` into `scratch.wire`: whole words with
/// direct loads (a helper call and its `memcpy` cost more than a name's few words), the rest as
/// the word that ends at byte `n` (overlapping the last one copied), or one byte at a time when
/// `n` is below a word. `None` if the frame ends first.
#[inline(always)]
fn copy_question(pkt: &PacketBytes, off: usize, n: usize, s: &mut Scratch) -> Option<()> {
    let wire: *mut u8 = s.wire.as_mut_ptr();
    let mut at = 0;
    while at < 256 {
        if at + 8 > n {
            break;
        }
        let w = pkt.read::<8>(off + at)?;
        // SAFETY: `at` is a multiple of 8 below 256: the word lies within `wire`.
        unsafe { core::ptr::write_unaligned(wire.add(at & 0xf8).cast::<[u8; 8]>(), w) };
        at += 8;
    }
    if at >= n {
        return Some(());
    }
    if n >= 8 {
        // Opaque: else LLVM checks `off + n` against the end and reads at `off + n - 8`, two
        // pointers the verifier does not relate.
        let last = opaque(n - 8) & 0xff;
        if last > 248 {
            return None;
        }
        let w = pkt.read::<8>(off + last)?;
        // SAFETY: `last` is at most 248: the word lies within `wire`.
        unsafe { core::ptr::write_unaligned(wire.add(last).cast::<[u8; 8]>(), w) };
        return Some(());
    }
    let mut i = 0;
    while i < 7 {
        if at >= n {
            break;
        }
        s.wire[at & 0xff] = pkt.u8_at(off + at)?;
        at += 1;
        i += 1;
    }
    Some(())
}

/// The decision on a well-formed query, and its answer.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn judge_name(
    ctx: &XdpContext,
    f: &Frame,
    header: &[u8; DNS_HEADER],
    q_off: usize,
    qtype: u16,
    generation: u32,
    settings: &GenSettings,
    policy_id: u32,
    policy: &PolicyEntry,
    labels: u32,
) -> DnsOutcome {
    let policy = *policy;
    let header = *header;
    let d = decide(generation, settings, policy_id, &policy, labels);
    let (reason, category) = counted_as(d.why);
    let monitor = policy.flags & POLICY_MONITOR != 0;
    if !d.block {
        if policy.flags & POLICY_SAFE_SEARCH != 0 {
            let target = crate::safe_search::covered(generation, policy_id, labels, qtype);
            if target != 0 {
                return crate::safe_search::judge(
                    ctx,
                    f,
                    &header,
                    q_off + 4,
                    qtype,
                    generation,
                    target,
                    &policy,
                );
            }
        }
        if (qtype == QTYPE_HTTPS || qtype == QTYPE_SVCB) && policy.flags & POLICY_HTTPS_EMPTY != 0 {
            if monitor {
                return DnsOutcome::new(
                    Verdict::Pass,
                    Reason::HttpsRecords,
                    Action::Monitor,
                    category,
                );
            }
            let v = answer(ctx, f, &header, q_off + 4, Rcode::NoError, None, &policy);
            return DnsOutcome::new(v, Reason::HttpsRecords, Action::Block, category);
        }
        return DnsOutcome::new(Verdict::Pass, reason, Action::Allow, category);
    }
    if monitor {
        return DnsOutcome::new(Verdict::Pass, reason, Action::Monitor, category);
    }
    let v = match policy.dns_answer {
        x if x == DnsAnswer::Drop as u32 => Verdict::Drop,
        x if x == DnsAnswer::Refused as u32 => {
            answer(ctx, f, &header, q_off + 4, Rcode::Refused, None, &policy)
        }
        x if x == DnsAnswer::Sinkhole as u32 => {
            let rr = if qtype == QTYPE_A || qtype == QTYPE_AAAA {
                Some(qtype)
            } else {
                None
            };
            answer(ctx, f, &header, q_off + 4, Rcode::NoError, rr, &policy)
        }
        _ => answer(ctx, f, &header, q_off + 4, Rcode::NxDomain, None, &policy),
    };
    DnsOutcome::new(v, reason, Action::Block, category)
}

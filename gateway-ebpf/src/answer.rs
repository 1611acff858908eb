//! Answers built in place in the frame: a DNS response made of its query (header turned,
//! tail cut, sinkhole and OPT records appended, addresses and ports swapped) and a TCP reset,
//! with their lengths and checksums computed from what was written.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_tail, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use gateway_common::{
    bytes::{Bytes, low_bytes},
    domain::{DNS_HEADER, QTYPE_A},
    enums::Verdict,
    maps::PolicyEntry,
    packet::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_HLEN, TCP_RST},
};

use crate::{
    dns::{Frame, Scratch},
    maps,
    packet_bytes::{PacketBytes, nonzero, opaque},
};

#[derive(Clone, Copy)]
pub(crate) enum Rcode {
    NoError = 0,
    NxDomain = 3,
    Refused = 5,
}

/// Folds a 32-bit ones'-complement sum to 16 bits.
#[inline(always)]
pub(crate) fn fold(sum: u64) -> u16 {
    let mut s = sum;
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Stores the bytes of `v` at `off` in the frame: a direct store (the frame's bounds are read
/// again, so this is right after `bpf_xdp_adjust_tail` too). Values are built with
/// `from_ne_bytes` from the bytes in frame order (or `to_be`/`to_le` of numbers).
#[inline(always)]
fn put<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> bool {
    PacketBytes::new(ctx).put(off, v)
}

/// Ones'-complement sum of `bytes` as big-endian 16-bit words (not folded). At most 8 bytes:
/// larger arrays would live on the stack, which the DNS program has little of.
#[inline(always)]
fn sum_words<const N: usize>(bytes: &[u8; N]) -> u64 {
    const { assert!(N <= 8) };
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < N {
        sum += u64::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Writes pieces of an answer into the frame one after another from `at`, and sums what it
/// writes (big-endian words, unfolded, as if the first piece started a word: every piece but
/// the last has an even length), so the checksum needs no second encoding of them. Each method
/// returns false if the piece did not fit.
pub(crate) struct Records<'a> {
    ctx: &'a XdpContext,
    pub(crate) at: usize,
    pub(crate) sum: u64,
}

impl<'a> Records<'a> {
    #[inline(always)]
    pub(crate) fn at(ctx: &'a XdpContext, at: usize) -> Self {
        Self { ctx, at, sum: 0 }
    }

    /// An IPv6 address, as two words.
    #[inline(always)]
    pub(crate) fn v6(&mut self, v6: &[u8; 16]) -> bool {
        self.word([v6[0], v6[1], v6[2], v6[3], v6[4], v6[5], v6[6], v6[7]])
            && self.word([v6[8], v6[9], v6[10], v6[11], v6[12], v6[13], v6[14], v6[15]])
    }

    /// The OPT record (RFC 6891): root name, type 41, UDP payload size 1232, extended
    /// rcode/version/flags 0, no data. 11 bytes: the last piece.
    #[inline(always)]
    pub(crate) fn opt(&mut self) -> bool {
        self.word([0, 0, 41, 0x04, 0xd0, 0, 0, 0]) && self.half([0, 0]) && self.byte(0)
    }

    #[inline(always)]
    pub(crate) fn word(&mut self, b: [u8; 8]) -> bool {
        self.sum += sum_words(&b);
        self.advance(8, put(self.ctx, self.at, u64::from_ne_bytes(b)))
    }

    #[inline(always)]
    pub(crate) fn quad(&mut self, b: [u8; 4]) -> bool {
        self.sum += sum_words(&b);
        self.advance(4, put(self.ctx, self.at, u32::from_ne_bytes(b)))
    }

    #[inline(always)]
    pub(crate) fn half(&mut self, b: [u8; 2]) -> bool {
        self.sum += sum_words(&b);
        self.advance(2, put(self.ctx, self.at, u16::from_ne_bytes(b)))
    }

    /// A last, odd byte: the high half of a word.
    #[inline(always)]
    pub(crate) fn byte(&mut self, b: u8) -> bool {
        self.sum += u64::from(b) << 8;
        self.advance(1, put(self.ctx, self.at, b))
    }

    #[inline(always)]
    fn advance(&mut self, n: usize, written: bool) -> bool {
        self.at += n;
        written
    }
}

/// Turns the query frame into its answer. `end` is the offset just after the question.
/// Returns `Verdict::Tx`, or `Verdict::Drop` if the frame could not be rewritten (then the
/// query is not answered but does not reach a resolver either).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn answer(
    ctx: &XdpContext,
    f: &Frame,
    header: &[u8; DNS_HEADER],
    end: usize,
    rcode: Rcode,
    sinkhole: Option<u16>,
    policy: &PolicyEntry,
) -> Verdict {
    if f.tcp {
        return reset(ctx, f);
    }
    let had_opt = header[10] != 0 || header[11] != 0;
    // The records appended after the question: a sinkhole answer (A: 16 bytes, AAAA: 28) and
    // an OPT record (11) when the query had one.
    let answer_len = match sinkhole {
        Some(QTYPE_A) => 16,
        Some(_) => 28,
        None => 0,
    };
    if !resize(ctx, end + answer_len + if had_opt { 11 } else { 0 }) {
        return Verdict::Drop;
    }
    // The appended records, written in place after the question; their sum is kept as they
    // are written.
    let mut records = Records::at(ctx, end);
    if let Some(qtype) = sinkhole {
        // Name (a pointer to the question's), type, class IN, TTL, data length, address.
        let ttl = policy.ttl.to_be_bytes();
        let t = qtype.to_be_bytes();
        let ok = records.word([0xc0, 0x0c, t[0], t[1], 0, 1, ttl[0], ttl[1]])
            && records.half([ttl[2], ttl[3]])
            && if qtype == QTYPE_A {
                records.half([0, 4]) && records.quad(policy.sinkhole_v4_be)
            } else {
                records.half([0, 16]) && records.v6(&policy.sinkhole_v6_be)
            };
        if !ok {
            return Verdict::Drop;
        }
    }
    if had_opt && !records.opt() {
        return Verdict::Drop;
    }
    let ancount = u8::from(answer_len != 0);
    reply(
        ctx,
        f,
        header,
        end,
        rcode,
        ancount,
        u64::from(fold(records.sum)),
        records.at,
    )
}

/// Sets the frame's length to `new_len` (`bpf_xdp_adjust_tail`); false if it cannot be.
#[inline(always)]
pub(crate) fn resize(ctx: &XdpContext, new_len: usize) -> bool {
    // Verifier: materialise the length as a scalar before using it (see `opaque`).
    let old_len = opaque(ctx.data_end().wrapping_sub(ctx.data()));
    let delta = new_len as i64 - old_len as i64;
    // SAFETY: adjust_tail checks the bounds itself; packet pointers are re-read afterwards.
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) == 0 }
}

/// Finishes an answer whose records (after the question, which ends at `end`) are written and
/// sum to `records_sum` (folded, as if they started a word), ending at `new_len`: the DNS
/// header (response, same opcode, RD copied, RA set, `rcode`, one question, `ancount` answers,
/// an OPT record if the query had one), the UDP header and the checksums; sends it back.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn reply(
    ctx: &XdpContext,
    f: &Frame,
    header: &[u8; DNS_HEADER],
    end: usize,
    rcode: Rcode,
    ancount: u8,
    records_sum: u64,
    new_len: usize,
) -> Verdict {
    let dns_off = f.payload_off;
    let had_opt = header[10] != 0 || header[11] != 0;
    // (Written with `Records` too, for their sum: they start at an even offset of the segment.)
    let mut dns_header = Records::at(ctx, dns_off + 2);
    if !(dns_header.half([0x80 | (header[2] & 0x01), 0x80 | rcode as u8])
        && dns_header.word([0, 1, 0, ancount, 0, 0, 0, u8::from(had_opt)]))
    {
        return Verdict::Drop;
    }

    // The UDP header: ports swapped, new length; the checksum is computed below.
    let udp_len = (new_len - f.l4_off) as u16;
    let (d, sp, l) = (
        f.dport.to_be_bytes(),
        f.sport.to_be_bytes(),
        udp_len.to_be_bytes(),
    );
    let mut udp_header = Records::at(ctx, f.l4_off);
    if !(udp_header.quad([d[0], d[1], sp[0], sp[1]]) && udp_header.quad([l[0], l[1], 0, 0])) {
        return Verdict::Drop;
    }

    // The segment's checksum sum, without reading the segment back: everything but the
    // question was just written, and the question is in scratch (copied there for the walk).
    let question = end.wrapping_sub(dns_off + DNS_HEADER);
    let Some(question_sum) = scratch_sum(question) else {
        // Not all of it was copied (a name near the 255-byte limit): read the segment.
        return send_back(ctx, f, new_len, IPPROTO_UDP, 6, None);
    };
    // The UDP header (checksum 0) and the DNS header: the ID, as it was, and what was written.
    let headers =
        udp_header.sum + u64::from(u16::from_be_bytes([header[0], header[1]])) + dns_header.sum;
    // The records follow the question, so they start mid-word when its length is odd.
    let mut extra = fold(records_sum);
    if question & 1 != 0 {
        extra = extra.swap_bytes();
    }
    let sum = headers + question_sum + u64::from(extra);
    send_back(ctx, f, new_len, IPPROTO_UDP, 6, Some(sum))
}

/// The sum (big-endian words, unfolded) of the first `len` bytes of `scratch.wire`, zero padded:
/// the question of a query whose name was walked. `None` if they were not all copied there.
/// Summed here a word at a time (a question is a few words; a helper call costs more).
#[inline(always)]
fn scratch_sum(len: usize) -> Option<u64> {
    let s = maps::scratch()?;
    if len == 0 || len > s.walk.avail as usize {
        return None;
    }
    let wire: *const u8 = s.wire.as_ptr();
    let mut sum = 0u64;
    let mut at = 0;
    while at < 256 {
        if at >= len {
            break;
        }
        // SAFETY: `at` is a multiple of 8 below 256: the word lies within `wire`.
        let w = unsafe { core::ptr::read_unaligned(wire.add(at & 0xf8).cast::<u64>()) };
        // The bytes after the question count as zeroes.
        let w = w & low_bytes(len - at);
        // Native-order 32-bit halves: their one's-complement sum folds to that of the 16-bit
        // words.
        sum += (w & 0xffff_ffff) + (w >> 32);
        at += 8;
    }
    // Native-order words: fold, then turn to big-endian order.
    Some(u64::from(u16::from_be(fold(sum))))
}

/// Turns a TCP segment carrying a blocked DNS query into a reset to its sender: RST|ACK with the
/// sequence number the sender expects next and its data acknowledged, no payload.
#[inline(always)]
pub(crate) fn reset(ctx: &XdpContext, f: &Frame) -> Verdict {
    let old_len = opaque(ctx.data_end().wrapping_sub(ctx.data()));
    let payload = f.l3_end.saturating_sub(f.payload_off) as u32;
    let new_len = f.l4_off + TCP_HLEN;
    // SAFETY: adjust_tail checks the bounds itself; packet pointers are re-read afterwards.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, (new_len as i64 - old_len as i64) as i32) } != 0 {
        return Verdict::Drop;
    }
    let seq = f.ack.to_be_bytes();
    let ack = f.seq.wrapping_add(payload).to_be_bytes();
    // Written as 8 + 8 + 4 bytes: stores of at most a word stay in registers.
    let ports_seq = [
        (f.dport >> 8) as u8,
        f.dport as u8,
        (f.sport >> 8) as u8,
        f.sport as u8,
        seq[0],
        seq[1],
        seq[2],
        seq[3],
    ];
    let ack_flags = [
        ack[0],
        ack[1],
        ack[2],
        ack[3],
        (TCP_HLEN as u8 / 4) << 4,
        TCP_RST | TCP_ACK,
        0,
        0,
    ];
    if !(put(ctx, f.l4_off, u64::from_ne_bytes(ports_seq))
        && put(ctx, f.l4_off + 8, u64::from_ne_bytes(ack_flags))
        && put(ctx, f.l4_off + 16, 0u32))
    {
        return Verdict::Drop;
    }
    send_back(ctx, f, new_len, IPPROTO_TCP, 16, None)
}

/// Sends the rewritten frame (now `new_len` bytes, transport header in place with a zero
/// checksum at `csum_off`) back where it came from: MACs and addresses swapped, IP lengths and
/// the IPv4 header checksum set, the transport checksum computed over the pseudo header and
/// the segment.
#[inline(always)]
fn send_back(
    ctx: &XdpContext,
    f: &Frame,
    new_len: usize,
    proto: u8,
    csum_off: usize,
    segment_sum: Option<u64>,
) -> Verdict {
    let pkt = PacketBytes::new(ctx);
    if f.l3_off >= 14 {
        // Destination and source MAC swapped, as a word and a half word (bytes 0..8, 8..12).
        let (Some(lo), Some(hi)) = (pkt.read::<8>(0), pkt.read::<4>(8)) else {
            return Verdict::Drop;
        };
        let (lo, hi) = (u64::from_le_bytes(lo), u64::from(u32::from_le_bytes(hi)));
        let dst = lo & 0xffff_ffff_ffff;
        let src = lo >> 48 | hi << 16;
        if !(put(ctx, 0, (src | dst << 48).to_le()) && put(ctx, 8, ((dst >> 16) as u32).to_le())) {
            return Verdict::Drop;
        }
    }
    let seg_len = (new_len - f.l4_off) as u16;
    let l3_off = f.l3_off;
    let Some(s) = maps::scratch() else {
        return Verdict::Drop;
    };
    // The pseudo header's sum (big-endian words), added to the segment's below.
    let pseudo = if !f.v6 {
        // IPv4-mapped: the IPv4 address is the high half of the second word. Swapped.
        let addrs = (f.dst.0[1] >> 32) | (f.src.0[1] >> 32) << 32;
        let total = ((new_len - l3_off) as u16).to_be();
        if !(put(ctx, l3_off + 12, addrs.to_le())
            && put(ctx, l3_off + 2, total)
            && put(ctx, l3_off + 10, 0u16))
        {
            return Verdict::Drop;
        }
        // IPv4 header checksum over the (bounded) header: summed in place when it has no
        // options (the usual case), else copied out and summed by the helper.
        let hlen = (f.l4_off.wrapping_sub(l3_off)) & 0x3c;
        if hlen < 20 {
            return Verdict::Drop;
        }
        let sum = if hlen == 20 {
            let p = PacketBytes::new(ctx);
            let Some(a) = p.read::<8>(l3_off) else {
                return Verdict::Drop;
            };
            let Some(b) = p.read::<4>(l3_off + 8) else {
                return Verdict::Drop;
            };
            sum_words(&a) + sum_words(&b) + sum_words(&addrs.to_le_bytes())
        } else {
            // 24..=60 here.
            let n = nonzero(hlen as u32, 0x3f, &mut s.size);
            // SAFETY: `n` (at most 64) bytes into the 512-byte buffer; the helper checks the
            // packet.
            if unsafe { bpf_xdp_load_bytes(ctx.ctx, l3_off as u32, s.seg.as_mut_ptr().cast(), n) }
                != 0
            {
                return Verdict::Drop;
            }
            // SAFETY: `n` bytes of `s.seg` were just written; it is a multiple of 4.
            let native =
                unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, s.seg.as_mut_ptr().cast(), n, 0) };
            // The helper sums native-order words; `sum_words` big-endian ones.
            u64::from(u16::from_be(fold(native as u32 as u64)))
        };
        if !put(ctx, l3_off + 10, (!fold(sum)).to_be()) {
            return Verdict::Drop;
        }
        sum_words(&addrs.to_le_bytes()) + u64::from(proto) + u64::from(seg_len)
    } else {
        // `Addr` words hold the address bytes in order (little-endian): written and summed as
        // they are.
        let words = [f.dst.0[0], f.dst.0[1], f.src.0[0], f.src.0[1]];
        let payload = ((new_len - l3_off - 40) as u16).to_be();
        if !(put(ctx, l3_off + 8, words[0].to_le())
            && put(ctx, l3_off + 16, words[1].to_le())
            && put(ctx, l3_off + 24, words[2].to_le())
            && put(ctx, l3_off + 32, words[3].to_le())
            && put(ctx, l3_off + 4, payload))
        {
            return Verdict::Drop;
        }
        sum_words(&words[0].to_le_bytes())
            + sum_words(&words[1].to_le_bytes())
            + sum_words(&words[2].to_le_bytes())
            + sum_words(&words[3].to_le_bytes())
            + u64::from(proto)
            + u64::from(seg_len)
    };

    // Transport checksum (big-endian): pseudo header + the segment, whose sum the caller has,
    // or else copied out, zero padded to 4 bytes, and summed by the helper.
    let c = match segment_sum {
        Some(seg) => !fold(pseudo + seg),
        None => match segment_checksum(ctx, f, s, seg_len, pseudo) {
            Some(c) => c,
            None => return Verdict::Drop,
        },
    };
    let c = if proto == IPPROTO_UDP && c == 0 {
        // For UDP, 0 means "no checksum".
        0xffff
    } else {
        c
    };
    if !put(ctx, f.l4_off + csum_off, c.to_be()) {
        return Verdict::Drop;
    }
    Verdict::Tx
}

/// The transport checksum (big-endian) of the segment at `f.l4_off`, `seg_len` bytes, whose
/// pseudo header sums to `pseudo`: the segment copied into scratch and summed by the helper.
#[inline(always)]
fn segment_checksum(
    ctx: &XdpContext,
    f: &Frame,
    s: &mut Scratch,
    seg_len: u16,
    pseudo: u64,
) -> Option<u16> {
    let seg_len = (seg_len as u32) & 0x1ff;
    let padded = (seg_len + 3) & 0x1fc;
    // Zero the padding: at most 3 bytes after the segment.
    let tail = (seg_len & 0x1fc) as usize;
    s.seg[tail & 0x1ff] = 0;
    s.seg[(tail + 1) & 0x1ff] = 0;
    s.seg[(tail + 2) & 0x1ff] = 0;
    s.seg[(tail + 3) & 0x1ff] = 0;
    if seg_len == 0 || padded > 508 {
        return None;
    }
    // 1..=505 here; the padded length from it, for the same reason (`nonzero`).
    let len = nonzero(seg_len, 0x1ff, &mut s.size);
    let padded = (len + 3) & 0x3fc;
    // SAFETY: `len` (at most 512) bytes into the 512-byte buffer; the helper checks the packet.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, f.l4_off as u32, s.seg.as_mut_ptr().cast(), len) } != 0
    {
        return None;
    }
    // The helper sums native-order words: the pseudo header's sum goes in as its seed in that
    // order.
    let seed = u32::from(fold(pseudo).to_be());
    // SAFETY: `padded` bytes of `s.seg` are initialised (segment + zeroed padding), a multiple
    // of 4.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            s.seg.as_mut_ptr().cast(),
            padded,
            seed,
        )
    };
    // Native-order sum: its complement stored natively is the big-endian checksum's bytes.
    Some(u16::from_be(!fold(sum as u64)))
}

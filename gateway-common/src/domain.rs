//! Domain names: the DNS question walk, suffix fingerprints, and the §5 decision.
//!
//! The kernel runs these a label at a time from `bpf_loop` callbacks (so the verifier checks the
//! loop body once, whatever the number of labels); the host runs the same functions in a plain
//! loop.
//!
//! 1. `NameWalk::label` reads one label of the wire-format question name: it writes the label as
//!    lower-case text (`a.b.c`), checks label and name lengths, rejects compression pointers,
//!    empty names and bytes that cannot appear in a host name's text form, and returns a keyed
//!    hash of the label.
//! 2. `suffixes` combines the label hashes from the right into a keyed 64-bit fingerprint of
//!    every suffix that starts at a label: `com`, `example.com`, `www.example.com`. The domain
//!    table is keyed by the same fingerprints, computed by the daemon with `fingerprint`.
//! 3. `decide_level` applies a policy to the rule sets found for those suffixes, most specific
//!    first.

use crate::{
    bytes::{le_word, low_bytes},
    enums::Reason,
};

/// Longest name in text form (RFC 1035: 255 octets on the wire, 253 characters of text).
pub const MAX_NAME: usize = 253;
/// Longest label.
pub const MAX_LABEL: usize = 63;
/// Most bytes of a question name on the wire (with length octets and the root label).
pub const MAX_WIRE_NAME: usize = 255;
/// Suffixes matched, counted from the right: a rule may have at most this many labels
/// (the configuration rejects deeper rules), and the deepest suffixes of longer names are ignored
/// only beyond this depth.
pub const MAX_LEVELS: usize = 16;

/// DNS record types the filter treats specially.
pub const QTYPE_A: u16 = 1;
pub const QTYPE_AAAA: u16 = 28;
pub const QTYPE_SVCB: u16 = 64;
pub const QTYPE_HTTPS: u16 = 65;
/// Size of the DNS header.
pub const DNS_HEADER: usize = 12;

/// Checks the DNS header of a query: a question (QR = 0), opcode QUERY, exactly one question.
#[inline(always)]
pub fn check_query_header(h: &[u8; DNS_HEADER]) -> Result<(), Reason> {
    if h[2] & 0x80 != 0 {
        return Err(Reason::DnsNotQuery);
    }
    if (h[2] >> 3) & 0x0f != 0 {
        return Err(Reason::DnsNotQuery);
    }
    if h[4] != 0 || h[5] != 1 {
        return Err(Reason::DnsQdcount);
    }
    Ok(())
}

/// Whether a UDP payload's first bytes are a DNS query's header — QR = 0, opcode QUERY, no
/// response code, one question, no answer or authority records, at most one additional (OPT) —
/// as a datagram to any port is taken for one (`dns_resolvers`: DNS to other ports is judged
/// like DNS to port 53). Ten of its bytes are fixed: other traffic matches by chance about once
/// in 2^50 datagrams.
#[inline(always)]
pub fn is_query_shaped(h: &[u8; DNS_HEADER]) -> bool {
    // Bytes 2..10 (flags and three counts) as one word against a mask: one load and compare
    // on the UDP fast path, where every datagram not to port 53 is asked.
    const MASK: u64 = u64::from_le_bytes([0xf8, 0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    const QUERY: u64 = u64::from_le_bytes([0, 0, 0, 1, 0, 0, 0, 0]);
    let w = u64::from_le_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
    w & MASK == QUERY && h[10] == 0 && h[11] <= 1
}

/// Where the name walk is. The walk goes a label at a time: the kernel runs one `bpf_loop`
/// iteration per label, the host a plain loop.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NameWalk {
    /// Text written so far (including dots).
    pub len: u16,
    /// Wire bytes consumed.
    pub wire: u16,
    /// Labels read.
    pub labels: u16,
    /// 1 once the root label (length 0) was read: with the last label, or by itself.
    pub done: u16,
}

/// What one label did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// A label was read; its keyed hash (the input of `suffix_step`).
    Read(u64),
    /// The name is complete (the root label was read).
    Done,
    /// The name is malformed.
    Bad(Reason),
}

/// Odd multiplier of the per-word step of a label's hash.
const WORD_MIX: u64 = 0xff51_afd7_ed55_8ccd;
/// Odd multiplier of the per-label step of the suffix fingerprint.
const SUFFIX_MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// The keyed start of a label's hash.
#[inline(always)]
pub const fn label_start(seed: u64) -> u64 {
    seed ^ 0xcbf2_9ce4_8422_2325
}

/// One word of a label's text into its hash: eight bytes, little-endian, zero past the label's
/// end. A label is hashed a word at a time (the kernel walks eight bytes per step).
#[inline(always)]
pub const fn label_word(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(WORD_MIX).rotate_left(31)
}

/// The hash of a label's lower-case text under `seed`, as the name walk computes it.
pub fn label_hash(seed: u64, text: &[u8]) -> u64 {
    text.chunks(8).fold(label_start(seed), |h, chunk| {
        label_word(h, le_word(chunk, 0))
    })
}

/// A label's hash fed a byte at a time (the ClientHello's host name, which may continue in the
/// next segment): `acc` collects the word being filled; `len` is the label's length before `c`.
/// Returns the new (hash, acc).
#[inline(always)]
pub const fn label_push(h: u64, acc: u64, len: usize, c: u8) -> (u64, u64) {
    let acc = acc | ((c as u64) << (8 * (len % 8)));
    if len % 8 == 7 {
        (label_word(h, acc), 0)
    } else {
        (h, acc)
    }
}

/// The hash of a label fed with `label_push`, `len` bytes long.
#[inline(always)]
pub const fn label_end(h: u64, acc: u64, len: usize) -> u64 {
    if len.is_multiple_of(8) {
        h
    } else {
        label_word(h, acc)
    }
}

/// Words of a byte of every lane.
const ONES: u64 = 0x0101_0101_0101_0101;
/// Bit 7 of every lane.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of every byte of `v` that is at least `c` (`v`'s bytes below 0x80, `c` at least 0x2d:
/// no lane carries into the next).
#[inline(always)]
const fn at_least(v: u64, c: u8) -> u64 {
    v.wrapping_add(ONES * (0x80 - c as u64)) & HIGHS
}

/// Bit 7 of every byte of `v` within `lo..=hi`.
#[inline(always)]
const fn within(v: u64, lo: u8, hi: u8) -> u64 {
    at_least(v, lo) & !at_least(v, hi + 1)
}

/// `host_char` on eight bytes at once: the bytes with letters lower-cased, and bit 7 set in
/// every byte that is a host-name character. A dozen word operations instead of eight
/// byte-at-a-time checks.
#[inline(always)]
pub const fn host_word(w: u64) -> (u64, u64) {
    let ascii = !w & HIGHS;
    let v = w & !HIGHS;
    let letter = within(v | (ONES * 0x20), b'a', b'z') & ascii;
    let other = (within(v, b'0', b'9') | within(v, b'-', b'-') | within(v, b'_', b'_')) & ascii;
    (w | (letter >> 2), letter | other)
}

/// Words a label takes at most.
const LABEL_WORDS: usize = MAX_LABEL.div_ceil(8);

/// The keyed start of a suffix fingerprint.
#[inline(always)]
pub const fn suffix_start(seed: u64) -> u64 {
    seed.rotate_left(32) ^ 0x6a09_e667_f3bc_c908
}

/// Extends a suffix by the label to its left (by that label's hash).
#[inline(always)]
pub const fn suffix_step(acc: u64, label_hash: u64) -> u64 {
    (acc ^ label_hash).wrapping_mul(SUFFIX_MIX).rotate_left(29)
}

/// A character of a host name in lower case, or `None`. Host names are letters, digits, '-'
/// and '_' (underscore: service labels). Anything else (dots inside a label, spaces, control
/// bytes) cannot be a name a rule matches, and would make the text form ambiguous.
#[inline(always)]
pub const fn host_char(b: u8) -> Option<u8> {
    // Setting bit 5 lower-cases a letter; (b | 0x20) is in a..=z exactly for the letters of
    // either case. Two range checks for the usual bytes instead of three (the kernel walks every
    // byte of every name with this).
    let lower = b | 0x20;
    if lower.wrapping_sub(b'a') < 26 {
        return Some(lower);
    }
    if b.wrapping_sub(b'0') < 10 || b == b'-' || b == b'_' {
        return Some(b);
    }
    None
}

impl NameWalk {
    /// Reads the label at wire offset `self.wire`: its length octet and its bytes, eight at a
    /// time. `avail` is how many wire bytes there are; `word(i)` is wire bytes `i..i + 8` as a
    /// little-endian word (bytes at or past `avail` may be anything: they are masked off);
    /// `emit(i, w)` writes the eight text bytes of `w` at text offset `i` (zeroes past the label,
    /// overwritten by what follows). Every label's bytes are lower-cased, checked and hashed
    /// under `seed`.
    #[inline(always)]
    pub fn label(
        &mut self,
        seed: u64,
        avail: usize,
        word: impl Fn(usize) -> u64,
        mut emit: impl FnMut(usize, u64),
    ) -> Label {
        if self.done != 0 {
            return Label::Done;
        }
        let at = self.wire as usize;
        if at >= avail {
            return Label::Bad(Reason::DnsTruncated);
        }
        let n = (word(at) & 0xff) as usize;
        if n == 0 {
            if self.labels == 0 {
                return Label::Bad(Reason::DnsEmptyName);
            }
            self.wire += 1;
            self.done = 1;
            return Label::Done;
        }
        if n & 0xc0 == 0xc0 {
            // A compression pointer: never in a question a client sends.
            return Label::Bad(Reason::DnsCompression);
        }
        if n > MAX_LABEL {
            // 64..=191: no label is that long (these were the obsolete label types).
            return Label::Bad(Reason::DnsLabelTooLong);
        }
        // This label and the root label after it must fit in 255 wire bytes, its text in 253.
        let mut text = self.len as usize;
        if self.labels > 0 {
            text += 1;
        }
        if at + n + 2 > MAX_WIRE_NAME || text + n > MAX_NAME {
            return Label::Bad(Reason::DnsNameTooLong);
        }
        if at + 1 + n > avail {
            return Label::Bad(Reason::DnsTruncated);
        }
        if self.labels > 0 {
            emit(text - 1, u64::from(b'.'));
        }
        let mut h = label_start(seed);
        let mut k = 0;
        while k < LABEL_WORDS {
            let done = k * 8;
            if done >= n {
                break;
            }
            let keep = low_bytes(n - done);
            let (lower, ok) = host_word(word(at + 1 + done) & keep);
            if ok | (!keep & HIGHS) != HIGHS {
                return Label::Bad(Reason::DnsBadChar);
            }
            emit(text + done, lower);
            h = label_word(h, lower);
            k += 1;
        }
        let next = at + 1 + n;
        self.wire = next as u16;
        self.len = (text + n) as u16;
        self.labels += 1;
        // The root label right after: the name is complete now (one step fewer for the kernel).
        if next < avail && word(next) & 0xff == 0 {
            self.wire += 1;
            self.done = 1;
        }
        Label::Read(h)
    }
}

/// The suffix fingerprints of a name from its label hashes: `hashes[i % MAX_LEVELS]` is the hash
/// of label `i` (of `labels`, left to right). Writes the fingerprint of the last label, the last
/// two, ... into `out` (least specific first, at most `MAX_LEVELS`) and returns how many.
#[inline(always)]
pub fn suffixes(
    hashes: &[u64; MAX_LEVELS],
    labels: usize,
    seed: u64,
    out: &mut [u64; MAX_LEVELS],
) -> usize {
    let count = if labels < MAX_LEVELS {
        labels
    } else {
        MAX_LEVELS
    };
    let mut acc = suffix_start(seed);
    let mut k = 0;
    while k < MAX_LEVELS {
        if k >= count {
            break;
        }
        acc = suffix_step(acc, hashes[labels.wrapping_sub(1 + k) & (MAX_LEVELS - 1)]);
        out[k] = finish(acc);
        k += 1;
    }
    count
}

/// The host's loop over `NameWalk::label`: walks the question name at `off` in `b` into `text`.
/// Returns (text length, wire length). The kernel runs the same function from a `bpf_loop`
/// callback instead.
pub fn walk_name<B: crate::bytes::Bytes + ?Sized>(
    b: &B,
    off: usize,
    text: &mut [u8; 256],
) -> Result<(usize, usize), Reason> {
    let mut walk = NameWalk::default();
    let avail = b.size().saturating_sub(off);
    loop {
        let step = walk.label(
            0,
            avail,
            |i| le_word(b, off + i),
            |i, w| {
                for (k, x) in w.to_le_bytes().into_iter().enumerate() {
                    if let Some(t) = text.get_mut(i + k) {
                        *t = x;
                    }
                }
            },
        );
        match step {
            Label::Read(_) => {}
            Label::Done => return Ok((walk.len as usize, walk.wire as usize)),
            Label::Bad(r) => return Err(r),
        }
    }
}

/// Final avalanche; never 0 (the table's empty key).
#[inline(always)]
const fn finish(h: u64) -> u64 {
    let mut x = h;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    if x == 0 { 1 } else { x }
}

/// The fingerprint of the whole of `name` (lower-case text, no trailing dot) under `seed`: what
/// the daemon stores for a rule. Equal to the kernel's fingerprint of the same suffix.
pub fn fingerprint(name: &[u8], seed: u64) -> u64 {
    let mut acc = suffix_start(seed);
    for label in name.rsplit(|&c| c == b'.') {
        acc = suffix_step(acc, label_hash(seed, label));
    }
    finish(acc)
}

/// What the domain table says about one domain: which categories list it (as a block, or as an
/// `@@` exception), and which policies allow or block it explicitly. Bit `n` is category or
/// policy id `n`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleSet {
    pub categories: u64,
    pub category_exceptions: u64,
    pub allow_policies: u64,
    pub block_policies: u64,
}
const _: () = assert!(core::mem::size_of::<RuleSet>() == 32);

/// Why a name was allowed or blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The policy's explicit allow or block list.
    Explicit,
    /// A category the policy blocks (or an exception in it), with the category id.
    Category(u8),
    /// No rule matched: the policy's default.
    Default,
}

/// A decision on a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub block: bool,
    pub why: Why,
}

/// The lowest set bit's index.
#[inline(always)]
fn lowest(bits: u64) -> u8 {
    bits.trailing_zeros() as u8
}

/// Applies policy `policy` (its id, the categories it blocks, its default) to the rule set of one
/// suffix. `None`: nothing at this level concerns this policy; try the next shorter suffix.
/// At one level the order is: explicit allow, explicit block, category exception, category.
#[inline(always)]
pub fn decide_level(r: &RuleSet, policy: u32, blocked_categories: u64) -> Option<Decision> {
    let bit = 1u64 << (policy & 63);
    if r.allow_policies & bit != 0 {
        return Some(Decision {
            block: false,
            why: Why::Explicit,
        });
    }
    if r.block_policies & bit != 0 {
        return Some(Decision {
            block: true,
            why: Why::Explicit,
        });
    }
    let exceptions = r.category_exceptions & blocked_categories;
    if exceptions != 0 {
        return Some(Decision {
            block: false,
            why: Why::Category(lowest(exceptions)),
        });
    }
    let hits = r.categories & blocked_categories;
    if hits != 0 {
        return Some(Decision {
            block: true,
            why: Why::Category(lowest(hits)),
        });
    }
    None
}

/// The policy's default, when no level decided.
#[inline(always)]
pub const fn default_decision(default_block: bool) -> Decision {
    Decision {
        block: default_block,
        why: Why::Default,
    }
}

/// Validates and normalises a domain written in a rule or list: lower case, no trailing dot,
/// labels of letters, digits, '-' and '_', at most `MAX_LEVELS` labels. Returns the length of
/// the normalised text written into `out`, or why it is not a domain.
pub fn normalise(input: &str, out: &mut [u8; MAX_NAME]) -> Result<usize, &'static str> {
    let s = input.strip_suffix('.').unwrap_or(input);
    if s.is_empty() {
        return Err("empty domain");
    }
    if s.len() > MAX_NAME {
        return Err("longer than 253 characters");
    }
    let mut labels = 0;
    for label in s.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > MAX_LABEL {
            return Err("label longer than 63 characters");
        }
        labels += 1;
    }
    if labels > MAX_LEVELS {
        return Err("more than 16 labels");
    }
    for (i, b) in s.bytes().enumerate() {
        out[i] = match b {
            b'A'..=b'Z' => b + 32,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => b,
            _ => {
                return Err(
                    "characters other than letters, digits, '-', '_' and '.' (use punycode for IDNs)",
                );
            }
        };
    }
    Ok(s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_shapes() {
        let q = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        assert!(is_query_shaped(&q));
        assert!(is_query_shaped(&[0, 0, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 0]));
        for (i, b) in [
            (2, 0x80),
            (2, 0x08),
            (3, 0x01),
            (4, 1),
            (5, 2),
            (6, 1),
            (7, 1),
            (8, 1),
        ]
        .into_iter()
        .chain([(9, 1), (10, 1), (11, 2)])
        {
            let mut h = q;
            h[i] = if i == 5 || i == 11 { b } else { h[i] | b };
            assert!(!is_query_shaped(&h), "byte {i} = {b:#x}");
        }
        assert!(!is_query_shaped(&[0; DNS_HEADER]));
    }

    #[test]
    fn host_char_is_the_host_name_alphabet() {
        for b in 0..=255u8 {
            let expected = match b {
                b'A'..=b'Z' => Some(b + 32),
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => Some(b),
                _ => None,
            };
            assert_eq!(host_char(b), expected, "byte {b:#04x}");
        }
    }
    use std::{format, vec, vec::Vec};

    #[test]
    fn host_word_is_host_char_in_every_lane() {
        // Every byte value in every lane, with the other lanes a valid letter or a bad byte.
        for lane in 0..8 {
            for fill in [b'Q', 0xff, b'.'] {
                for b in 0..=255u8 {
                    let mut bytes = [fill; 8];
                    bytes[lane] = b;
                    let (lower, ok) = host_word(u64::from_le_bytes(bytes));
                    let (lower, ok) = (lower.to_le_bytes(), ok.to_le_bytes());
                    for k in 0..8 {
                        let expected = host_char(bytes[k]);
                        assert_eq!(ok[k] == 0x80, expected.is_some(), "byte {:#04x}", bytes[k]);
                        assert_eq!(ok[k] & 0x7f, 0);
                        if let Some(c) = expected {
                            assert_eq!(lower[k], c);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn streamed_label_hashes_equal_word_hashes() {
        let seed = 0xabcd;
        for len in 1..=63usize {
            let text: Vec<u8> = (0..len).map(|i| b'a' + (i * 7 % 26) as u8).collect();
            let (mut h, mut acc) = (label_start(seed), 0);
            for (i, c) in text.iter().enumerate() {
                (h, acc) = label_push(h, acc, i, *c);
            }
            assert_eq!(
                label_end(h, acc, len),
                label_hash(seed, &text),
                "length {len}"
            );
        }
        assert_ne!(
            label_hash(seed, b"abcdefgh"),
            label_hash(seed, b"abcdefgha")
        );
    }

    fn wire(name: &str) -> Vec<u8> {
        let mut w = Vec::new();
        for l in name.split('.').filter(|l| !l.is_empty()) {
            w.push(l.len() as u8);
            w.extend_from_slice(l.as_bytes());
        }
        w.push(0);
        w
    }

    /// The host loop over the shared step function.
    fn walk(w: &[u8]) -> Result<(Vec<u8>, usize), Reason> {
        let mut text = [0u8; 256];
        let (len, wire) = walk_name(w, 0, &mut text)?;
        Ok((text[..len].to_vec(), wire))
    }

    /// The kernel's fingerprints of a wire name, through the shared label walk.
    fn suffix_fps(w: &[u8], seed: u64) -> Vec<u64> {
        let mut walk = NameWalk::default();
        let mut hashes = [0u64; MAX_LEVELS];
        loop {
            match walk.label(seed, w.len(), |i| le_word(w, i), |_, _| {}) {
                Label::Read(h) => hashes[(walk.labels as usize - 1) % MAX_LEVELS] = h,
                Label::Done => break,
                Label::Bad(r) => panic!("{r:?}"),
            }
        }
        let mut out = [0u64; MAX_LEVELS];
        let n = suffixes(&hashes, walk.labels as usize, seed, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn names_are_lower_cased_text() {
        assert_eq!(
            walk(&wire("WwW.ExAmPle.COM")),
            Ok((b"www.example.com".to_vec(), 17))
        );
        assert_eq!(
            walk(&wire("_dmarc.example.com")).map(|t| t.0),
            Ok(b"_dmarc.example.com".to_vec())
        );
        assert_eq!(walk(&[0]), Err(Reason::DnsEmptyName));
        assert_eq!(walk(&[3, b'c', b'o']), Err(Reason::DnsTruncated));
        assert_eq!(walk(&[0xc0, 12]), Err(Reason::DnsCompression));
        assert_eq!(walk(&[3, b'a', b'.', b'b', 0]), Err(Reason::DnsBadChar));
        assert_eq!(walk(&[2, b'a', b' ', 0]), Err(Reason::DnsBadChar));
    }

    #[test]
    fn label_and_name_limits() {
        let l63 = "a".repeat(63);
        assert!(walk(&wire(&format!("{l63}.com"))).is_ok());
        let mut w = vec![64u8];
        w.extend(std::iter::repeat_n(b'a', 64));
        w.push(0);
        assert_eq!(walk(&w), Err(Reason::DnsLabelTooLong));
        // 4 labels of 63 = 255 text characters with dots: over 253.
        let long = [l63.as_str(); 4].join(".");
        assert_eq!(walk(&wire(&long)), Err(Reason::DnsNameTooLong));
        // 253 characters exactly.
        let ok = format!("{}.{}.{}.{}", l63, l63, l63, "a".repeat(61));
        assert_eq!(ok.len(), 253);
        assert_eq!(walk(&wire(&ok)).map(|t| t.0.len()), Ok(253));
    }

    #[test]
    fn every_label_suffix_is_fingerprinted_and_matches_the_rule_form() {
        let seed = 0x1234;
        let fps = suffix_fps(&wire("WWW.example.com"), seed);
        assert_eq!(
            fps,
            vec![
                fingerprint(b"com", seed),
                fingerprint(b"example.com", seed),
                fingerprint(b"www.example.com", seed)
            ]
        );
        // A look-alike is not a suffix: "notexample.com" does not contain ".example.com".
        let look = suffix_fps(&wire("notexample.com"), seed);
        assert!(!look.contains(&fingerprint(b"example.com", seed)));
        assert!(look.contains(&fingerprint(b"notexample.com", seed)));
        // Another seed, other fingerprints.
        assert_ne!(
            fingerprint(b"example.com", seed),
            fingerprint(b"example.com", seed + 1)
        );
        assert_ne!(fingerprint(b"example.com", seed), 0);
        // Label boundaries are part of the fingerprint.
        assert_ne!(fingerprint(b"ab.c", seed), fingerprint(b"a.bc", seed));
        assert_ne!(fingerprint(b"a.b", seed), fingerprint(b"b.a", seed));
        // Names deeper than MAX_LEVELS: the 16 rightmost suffixes are fingerprinted.
        let deep = vec!["x"; 20].join(".");
        let fps = suffix_fps(&wire(&deep), seed);
        assert_eq!(fps.len(), MAX_LEVELS);
        assert_eq!(
            fps[15],
            fingerprint(vec!["x"; 16].join(".").as_bytes(), seed)
        );
    }

    fn rules(cats: u64, exc: u64, allow: u64, block: u64) -> RuleSet {
        RuleSet {
            categories: cats,
            category_exceptions: exc,
            allow_policies: allow,
            block_policies: block,
        }
    }

    #[test]
    fn order_at_one_level() {
        let p = 3;
        let pbit = 1 << p;
        // Explicit allow beats explicit block beats category.
        let r = rules(1, 0, pbit, pbit);
        assert_eq!(
            decide_level(&r, p, 1),
            Some(Decision {
                block: false,
                why: Why::Explicit
            })
        );
        let r = rules(1, 0, 0, pbit);
        assert_eq!(
            decide_level(&r, p, 1),
            Some(Decision {
                block: true,
                why: Why::Explicit
            })
        );
        let r = rules(0b110, 0, 0, 0);
        assert_eq!(
            decide_level(&r, p, 0b100),
            Some(Decision {
                block: true,
                why: Why::Category(2)
            })
        );
        // Categories the policy does not block do not concern it.
        assert_eq!(decide_level(&r, p, 0b1), None);
        // Another policy's explicit entries do not concern it either.
        assert_eq!(
            decide_level(&rules(0, 0, 1 << 5, 1 << 6), p, u64::MAX),
            None
        );
        // An exception in a blocked category allows.
        let r = rules(0b1, 0b1, 0, 0);
        assert_eq!(
            decide_level(&r, p, 0b1),
            Some(Decision {
                block: false,
                why: Why::Category(0)
            })
        );
    }

    #[test]
    fn rule_domains_are_normalised() {
        let mut out = [0u8; MAX_NAME];
        let n = normalise("Ads.Example.COM.", &mut out).expect("valid");
        assert_eq!(&out[..n], b"ads.example.com");
        let n = normalise("xn--bcher-kva.example", &mut out).expect("punycode");
        assert_eq!(&out[..n], b"xn--bcher-kva.example");
        assert!(normalise("bücher.example", &mut out).is_err());
        assert!(normalise("a..b", &mut out).is_err());
        assert!(normalise("", &mut out).is_err());
        assert!(normalise(&"a.".repeat(17), &mut out).is_err());
        assert!(normalise(&format!("{}.com", "a".repeat(64)), &mut out).is_err());
    }
}

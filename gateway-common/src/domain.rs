//! Domain names: the DNS question walk, suffix fingerprints, and the §5 decision.
//!
//! The kernel runs these one byte at a time from `bpf_loop` callbacks (so the verifier checks a
//! loop body once, not 253 iterations); the host runs the same step functions in a plain loop.
//!
//! 1. `NameWalk::step` turns the wire-format question name into lower-case text (`a.b.c`),
//!    checking label and name lengths, and rejects compression pointers, empty names and bytes
//!    that cannot appear in a host name's text form.
//! 2. `SuffixHasher::step` walks the text from its end and produces a keyed 64-bit fingerprint of
//!    every suffix that starts at a label: `com`, `example.com`, `www.example.com`. The domain
//!    table is keyed by the same fingerprints, computed by the daemon with `fingerprint`.
//! 3. `decide` applies a policy to the rule sets found for those suffixes, most specific first.

use crate::enums::Reason;

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

/// Where the name walk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NameWalk {
    /// Bytes of the label still to copy; 0 means the next byte is a length octet.
    pub label_left: u8,
    /// Text written so far (including dots).
    pub len: u16,
    /// Wire bytes consumed.
    pub wire: u16,
    /// Labels seen.
    pub labels: u8,
    /// 1 once the root label (length 0) was read.
    pub done: u8,
}

/// What one byte did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep going.
    More,
    /// Write this text byte at this position, keep going.
    Emit(u8, u16),
    /// The name is complete (the root label was read).
    Done,
    /// The name is malformed.
    Bad(Reason),
}

impl NameWalk {
    /// Consumes one wire byte.
    #[inline(always)]
    pub fn step(&mut self, b: u8) -> Step {
        if self.done != 0 {
            return Step::Done;
        }
        self.wire += 1;
        if self.wire as usize > MAX_WIRE_NAME {
            return Step::Bad(Reason::DnsNameTooLong);
        }
        if self.label_left == 0 {
            if b == 0 {
                if self.labels == 0 {
                    return Step::Bad(Reason::DnsEmptyName);
                }
                self.done = 1;
                return Step::Done;
            }
            if b & 0xc0 == 0xc0 {
                // A compression pointer: never in a question a client sends.
                return Step::Bad(Reason::DnsCompression);
            }
            if b as usize > MAX_LABEL {
                // 64..=191: no label is that long (these were the obsolete label types).
                return Step::Bad(Reason::DnsLabelTooLong);
            }
            self.label_left = b;
            if self.labels > 0 {
                let at = self.len;
                self.len += 1;
                self.labels += 1;
                return if self.len as usize > MAX_NAME {
                    Step::Bad(Reason::DnsNameTooLong)
                } else {
                    Step::Emit(b'.', at)
                };
            }
            self.labels = 1;
            return Step::More;
        }
        self.label_left -= 1;
        // Host names are letters, digits, '-' and '_' (underscore: service labels). Anything
        // else (dots inside a label, spaces, control bytes) cannot be a name a rule matches, and
        // would make the text form ambiguous.
        let c = match b {
            b'A'..=b'Z' => b + 32,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => b,
            _ => return Step::Bad(Reason::DnsBadChar),
        };
        let at = self.len;
        self.len += 1;
        if self.len as usize > MAX_NAME {
            return Step::Bad(Reason::DnsNameTooLong);
        }
        Step::Emit(c, at)
    }
}

/// The host's loop over `NameWalk::step`: walks the question name at `off` in `b` into `text`.
/// Returns (text length, wire length). The kernel runs the same step function from a
/// `bpf_loop` callback instead.
pub fn walk_name<B: crate::bytes::Bytes + ?Sized>(
    b: &B,
    off: usize,
    text: &mut [u8; 256],
) -> Result<(usize, usize), Reason> {
    let mut walk = NameWalk::default();
    for i in 0..MAX_WIRE_NAME {
        let byte = b.u8_at(off + i).ok_or(Reason::DnsTruncated)?;
        match walk.step(byte) {
            Step::More => {}
            Step::Emit(c, at) => {
                if let Some(t) = text.get_mut(at as usize) {
                    *t = c;
                }
            }
            Step::Done => return Ok((walk.len as usize, walk.wire as usize)),
            Step::Bad(r) => return Err(r),
        }
    }
    Err(Reason::DnsNameTooLong)
}

/// FNV-1a prime: the per-byte step of the fingerprint.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Running state of the right-to-left suffix hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SuffixHasher {
    pub h: u64,
    /// Suffixes recorded so far.
    pub count: u8,
}

impl SuffixHasher {
    pub const fn new(seed: u64) -> Self {
        Self { h: seed, count: 0 }
    }

    /// Feeds `c`, the text byte at position `pos`, walking from the end of the name to its start.
    /// Returns the fingerprint of a suffix that ends here (just before a dot, or at the start).
    #[inline(always)]
    pub fn step(&mut self, c: u8, pos: usize) -> Option<u64> {
        if c == b'.' {
            // The suffix to the right is complete.
            let fp = finish(self.h);
            self.h = (self.h ^ u64::from(c)).wrapping_mul(FNV_PRIME);
            self.count = self.count.saturating_add(1);
            return Some(fp);
        }
        self.h = (self.h ^ u64::from(c)).wrapping_mul(FNV_PRIME);
        if pos == 0 {
            self.count = self.count.saturating_add(1);
            return Some(finish(self.h));
        }
        None
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
/// the daemon stores for a rule.
pub fn fingerprint(name: &[u8], seed: u64) -> u64 {
    let mut h = SuffixHasher::new(seed);
    let mut last = 0;
    let mut i = name.len();
    while i > 0 {
        i -= 1;
        if let Some(fp) = h.step(name[i], i) {
            last = fp;
        }
    }
    last
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
    use std::{format, vec, vec::Vec};

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

    fn suffixes(text: &[u8], seed: u64) -> Vec<u64> {
        let mut h = SuffixHasher::new(seed);
        let mut out = Vec::new();
        for i in (0..text.len()).rev() {
            if let Some(fp) = h.step(text[i], i) {
                out.push(fp);
            }
        }
        out
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
        let fps = suffixes(b"www.example.com", seed);
        assert_eq!(
            fps,
            vec![
                fingerprint(b"com", seed),
                fingerprint(b"example.com", seed),
                fingerprint(b"www.example.com", seed)
            ]
        );
        // A look-alike is not a suffix: "notexample.com" does not contain ".example.com".
        let look = suffixes(b"notexample.com", seed);
        assert!(!look.contains(&fingerprint(b"example.com", seed)));
        assert!(look.contains(&fingerprint(b"notexample.com", seed)));
        // Another seed, other fingerprints.
        assert_ne!(
            fingerprint(b"example.com", seed),
            fingerprint(b"example.com", seed + 1)
        );
        assert_ne!(fingerprint(b"example.com", seed), 0);
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

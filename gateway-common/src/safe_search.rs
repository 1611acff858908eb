//! SafeSearch in the kernel: which names a policy's engines cover (`SAFE_NAMES`), and the
//! engines' enforcement names with the addresses the kernel answers them with (`SAFE_TARGETS`).
//!
//! A covered name (`www.google.de`) is looked up by its whole-name fingerprint, the one the
//! domain table uses, in the generation being judged; its value says, per policy, which target
//! (`forcesafesearch.google.com`) answers it. A target's record holds its name in wire format
//! (with the name's checksum sum, so the kernel need not read it back) and two address sets:
//! the daemon, which resolves the enforcement names and keeps them current, writes the set not
//! in force and then flips `current`, so a frame always reads a whole set.

use core::mem::size_of;

/// Targets per generation (distinct enforcement names of all engines).
pub const MAX_SAFE_TARGETS: u32 = 32;
/// Capacity of `SAFE_NAMES` (both generations): covered names of all engines, twice.
pub const SAFE_NAME_SLOTS: u32 = 8192;
/// Longest enforcement name on the wire (the kernel copies it with a bounded length).
pub const MAX_TARGET_WIRE: usize = 64;
/// Addresses per family the kernel answers with.
pub const MAX_SAFE_ADDRS: usize = 4;

/// Key of `SAFE_NAMES`: a covered name's whole-name fingerprint (`domain::fingerprint`, under
/// the generation's table seed) in one generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafeKey {
    pub fp: u64,
    pub generation: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SafeKey>() == 16);

/// Value of `SAFE_NAMES`: per policy id, the target answering the name (its index + 1; 0: the
/// policy does not cover the name).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SafeName {
    pub targets: [u8; 64],
}
const _: () = assert!(size_of::<SafeName>() == 64);
const _: () = assert!(crate::maps::MAX_POLICIES as usize <= 64);

impl Default for SafeName {
    fn default() -> Self {
        Self { targets: [0; 64] }
    }
}

/// `SafeAddrs::flags`: the IPv4 addresses are known (`n4` of them; 0: the name has none).
pub const SAFE_V4_KNOWN: u8 = 1;
/// `SafeAddrs::flags`: the IPv6 addresses are known.
pub const SAFE_V6_KNOWN: u8 = 2;

/// One set of a target's addresses, as last resolved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SafeAddrs {
    /// TTL of the answers, seconds (what the resolver gave, capped by the daemon).
    pub ttl: u32,
    pub n4: u8,
    pub n6: u8,
    /// `SAFE_*_KNOWN`.
    pub flags: u8,
    pub _pad: u8,
    pub v4_be: [[u8; 4]; MAX_SAFE_ADDRS],
    pub v6_be: [[u8; 16]; MAX_SAFE_ADDRS],
}
const _: () = assert!(size_of::<SafeAddrs>() == 88);

/// `SAFE_TARGETS[generation * MAX_SAFE_TARGETS + t]`: an enforcement name and its addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SafeTarget {
    /// Which of `sets` is in force (0 or 1).
    pub current: u32,
    /// Bytes of `name` (1..=MAX_TARGET_WIRE; 0: the slot is free).
    pub name_len: u32,
    /// `wire_sum(name)`: the name's ones'-complement sum as big-endian words from an even
    /// offset (folded), for the answer's checksum.
    pub name_sum: u32,
    pub _pad: u32,
    pub sets: [SafeAddrs; 2],
    /// The name in wire format (length-prefixed labels, root label last), zero padded.
    pub name: [u8; MAX_TARGET_WIRE],
}
const _: () = assert!(size_of::<SafeTarget>() == 256);

impl Default for SafeTarget {
    fn default() -> Self {
        Self {
            current: 0,
            name_len: 0,
            name_sum: 0,
            _pad: 0,
            sets: [SafeAddrs::default(); 2],
            name: [0; MAX_TARGET_WIRE],
        }
    }
}

impl SafeTarget {
    /// The record for the enforcement name `name` (lower-case text, no trailing dot), no
    /// address known; `None` if it does not fit `MAX_TARGET_WIRE` or is not a host name.
    pub fn named(name: &str) -> Option<Self> {
        let mut t = Self::default();
        let mut at = 0usize;
        for label in name.split('.') {
            let len = label.len();
            if len == 0 || len > crate::domain::MAX_LABEL {
                return None;
            }
            *t.name.get_mut(at)? = len as u8;
            for (i, b) in label.bytes().enumerate() {
                *t.name.get_mut(at + 1 + i)? = crate::domain::host_char(b)?;
            }
            at += 1 + len;
        }
        // The root label.
        *t.name.get_mut(at)? = 0;
        t.name_len = (at + 1) as u32;
        t.name_sum = u32::from(wire_sum(t.name.get(..at + 1)?));
        Some(t)
    }

    /// The address set in force.
    #[inline(always)]
    pub fn addrs(&self) -> &SafeAddrs {
        &self.sets[(self.current & 1) as usize]
    }
}

/// Index of a target in `SAFE_TARGETS`.
#[inline(always)]
pub const fn target_index(generation: u32, target: u32) -> u32 {
    (generation & 1) * MAX_SAFE_TARGETS + (target & (MAX_SAFE_TARGETS - 1))
}

/// The ones'-complement sum of `bytes` as big-endian 16-bit words (an odd last byte is the high
/// half of a word), folded to 16 bits.
pub fn wire_sum(bytes: &[u8]) -> u16 {
    let mut sum = 0u64;
    for pair in bytes.chunks(2) {
        let hi = u64::from(pair.first().copied().unwrap_or(0));
        let lo = u64::from(pair.get(1).copied().unwrap_or(0));
        sum += hi << 8 | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, integers and byte arrays only, explicit padding (size asserted).
    unsafe impl aya::Pod for super::SafeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SafeName {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SafeTarget {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_records_hold_the_wire_name_and_its_sum() {
        let t = SafeTarget::named("strict.bing.com").expect("fits");
        assert_eq!(t.name_len, 17);
        assert_eq!(&t.name[..17], b"\x06strict\x04bing\x03com\x00");
        assert_eq!(
            t.name_sum,
            u32::from(wire_sum(b"\x06strict\x04bing\x03com\x00"))
        );
        assert!(SafeTarget::named(&"a".repeat(64)).is_none());
        assert!(SafeTarget::named(&["abcdefgh"; 8].join(".")).is_none());
        assert!(SafeTarget::named("bad..name").is_none());
        assert!(SafeTarget::named("sp ace.example").is_none());
    }

    #[test]
    fn wire_sums_are_big_endian_and_fold() {
        assert_eq!(wire_sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(wire_sum(&[0xff, 0xff, 0x00, 0x02]), 0x0002);
        assert_eq!(target_index(1, 3), MAX_SAFE_TARGETS + 3);
    }
}

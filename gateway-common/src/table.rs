//! Open-addressing hash tables in BPF arrays: the device identity tables.
//!
//! A BPF hash map lookup costs a helper call, a jhash and a bucket walk (about 30 ns for an
//! 8-byte key here). These tables cost one inlined array lookup and a few compares: a bucket is
//! one 64-byte cache line with several slots, the bucket index is a keyed multiply-shift hash,
//! and probing is linear over at most `MAX_PROBE` buckets. The daemon builds the whole image of
//! a generation with `insert` and writes it through `mmap`; the kernel reads it with `lookup`.
//! Both use the probing order defined here, once.
//!
//! A key of all zeroes marks an empty slot (no device has MAC 00:00:00:00:00:00 or address ::;
//! the configuration rejects them). Linear probing stops at the first bucket with an empty slot:
//! `insert` only moves on to the next bucket when this one is full.

use crate::maps::DeviceRef;

/// Buckets probed before a lookup gives up (and before `insert` reports the table full).
pub const MAX_PROBE: u32 = 4;

/// Fibonacci hashing of `x` under `seed`: one multiply. The top bits of the product depend on
/// every input bit, and `home` takes the bucket from them. (Keys are operator-chosen MACs and
/// addresses, and the seed is random per table, so a stronger hash buys nothing here.)
#[inline(always)]
pub const fn mix(x: u64, seed: u64) -> u64 {
    (x ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The bucket `h` falls in: the top log2(`buckets`) bits, for a power-of-two bucket count.
#[inline(always)]
pub const fn home(h: u64, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    (h >> (64 - buckets.trailing_zeros())) as u32 & (buckets - 1)
}

/// A bucket layout.
pub trait Bucket: Copy + Default {
    type Key: Copy + PartialEq;
    type Value: Copy + Default;
    /// Slots per bucket.
    const WAYS: usize;
    /// The key of slot `i` (the empty key if `i` is out of range).
    fn key(&self, i: usize) -> Self::Key;
    /// The value of slot `i`.
    fn value(&self, i: usize) -> Self::Value;
    /// Stores into slot `i`.
    fn set(&mut self, i: usize, key: Self::Key, value: Self::Value);
    /// The key that marks an empty slot.
    fn empty() -> Self::Key;
    /// The hash of `key` under `seed`.
    fn hash(key: &Self::Key, seed: u64) -> u64;
}

/// Slots of MAC buckets.
pub const MAC_WAYS: usize = 4;

/// A bucket of the MAC table: MAC (as the low 48 bits of a u64) -> device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacBucket {
    pub keys: [u64; MAC_WAYS],
    pub values: [DeviceRef; MAC_WAYS],
}
const _: () = assert!(core::mem::size_of::<MacBucket>() == 64);

/// A MAC address as a table key.
#[inline(always)]
pub const fn mac_key(mac: &[u8; 6]) -> u64 {
    (mac[0] as u64)
        | (mac[1] as u64) << 8
        | (mac[2] as u64) << 16
        | (mac[3] as u64) << 24
        | (mac[4] as u64) << 32
        | (mac[5] as u64) << 40
}

impl Bucket for MacBucket {
    type Key = u64;
    type Value = DeviceRef;
    const WAYS: usize = MAC_WAYS;
    #[inline(always)]
    fn key(&self, i: usize) -> u64 {
        match self.keys.get(i) {
            Some(k) => *k,
            None => 0,
        }
    }
    #[inline(always)]
    fn value(&self, i: usize) -> DeviceRef {
        match self.values.get(i) {
            Some(v) => *v,
            None => DeviceRef::default(),
        }
    }
    fn set(&mut self, i: usize, key: u64, value: DeviceRef) {
        if let (Some(k), Some(v)) = (self.keys.get_mut(i), self.values.get_mut(i)) {
            *k = key;
            *v = value;
        }
    }
    #[inline(always)]
    fn empty() -> u64 {
        0
    }
    #[inline(always)]
    fn hash(key: &u64, seed: u64) -> u64 {
        mix(*key, seed)
    }
}

/// Slots of address buckets.
pub const IP_WAYS: usize = 2;

/// A bucket of the address table: IPv4-mapped or IPv6 address (two u64) -> device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpBucket {
    pub keys: [[u64; 2]; IP_WAYS],
    pub values: [DeviceRef; IP_WAYS],
    pub _pad: [u64; 2],
}
const _: () = assert!(core::mem::size_of::<IpBucket>() == 64);

/// An address (IPv4-mapped or IPv6, network order) as a table key: `packet::Addr`'s words.
#[inline(always)]
pub const fn ip_key(a: &[u8; 16]) -> [u64; 2] {
    crate::packet::Addr::from_bytes(*a).0
}

impl Bucket for IpBucket {
    type Key = [u64; 2];
    type Value = DeviceRef;
    const WAYS: usize = IP_WAYS;
    #[inline(always)]
    fn key(&self, i: usize) -> [u64; 2] {
        match self.keys.get(i) {
            Some(k) => *k,
            None => [0, 0],
        }
    }
    #[inline(always)]
    fn value(&self, i: usize) -> DeviceRef {
        match self.values.get(i) {
            Some(v) => *v,
            None => DeviceRef::default(),
        }
    }
    fn set(&mut self, i: usize, key: [u64; 2], value: DeviceRef) {
        if let (Some(k), Some(v)) = (self.keys.get_mut(i), self.values.get_mut(i)) {
            *k = key;
            *v = value;
        }
    }
    #[inline(always)]
    fn empty() -> [u64; 2] {
        [0, 0]
    }
    #[inline(always)]
    fn hash(key: &[u64; 2], seed: u64) -> u64 {
        mix(key[0] ^ key[1].rotate_left(29), seed)
    }
}

/// Slots of domain buckets.
pub const DOMAIN_WAYS: usize = 5;

/// A bucket of the domain table: 64-bit fingerprint of a domain (a keyed hash of its text,
/// `domain::suffix_hashes`) -> rule set id. Five slots in one cache line: 12.8 bytes a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainBucket {
    pub keys: [u64; DOMAIN_WAYS],
    pub values: [u32; DOMAIN_WAYS],
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<DomainBucket>() == 64);

impl Bucket for DomainBucket {
    type Key = u64;
    type Value = u32;
    const WAYS: usize = DOMAIN_WAYS;
    #[inline(always)]
    fn key(&self, i: usize) -> u64 {
        match self.keys.get(i) {
            Some(k) => *k,
            None => 0,
        }
    }
    #[inline(always)]
    fn value(&self, i: usize) -> u32 {
        match self.values.get(i) {
            Some(v) => *v,
            None => 0,
        }
    }
    fn set(&mut self, i: usize, key: u64, value: u32) {
        if let (Some(k), Some(v)) = (self.keys.get_mut(i), self.values.get_mut(i)) {
            *k = key;
            *v = value;
        }
    }
    #[inline(always)]
    fn empty() -> u64 {
        0
    }
    /// Fingerprints are already keyed hashes; the bucket comes from their top bits unmixed.
    #[inline(always)]
    fn hash(key: &u64, _seed: u64) -> u64 {
        *key
    }
}

/// Looks `key` up in the table of `buckets` buckets whose bucket `i` is `get(i)`.
///
/// Bounded: at most `MAX_PROBE * B::WAYS` compares, with constant loop bounds the verifier
/// unrolls or walks.
#[inline(always)]
pub fn lookup<'a, B: Bucket + 'a>(
    get: impl Fn(u32) -> Option<&'a B>,
    buckets: u32,
    seed: u64,
    key: &B::Key,
) -> Option<B::Value> {
    // The empty key would match an empty slot (an IPv6 source of :: is normal: DAD probes).
    if *key == B::empty() {
        return None;
    }
    let h = B::hash(key, seed);
    let first = home(h, buckets);
    let mut probe = 0;
    while probe < MAX_PROBE {
        let b = get((first + probe) & (buckets - 1))?;
        let mut has_empty = false;
        let mut i = 0;
        while i < B::WAYS {
            let k = b.key(i);
            if k == *key {
                return Some(b.value(i));
            }
            if k == B::empty() {
                has_empty = true;
            }
            i += 1;
        }
        if has_empty {
            return None;
        }
        probe += 1;
    }
    None
}

/// The table has no free slot within `MAX_PROBE` buckets of the key's home.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFull;

/// Inserts or replaces `key` in `table` (a power-of-two number of buckets).
pub fn insert<B: Bucket>(
    table: &mut [B],
    seed: u64,
    key: B::Key,
    value: B::Value,
) -> Result<(), TableFull> {
    let buckets = table.len() as u32;
    let first = home(B::hash(&key, seed), buckets);
    for probe in 0..MAX_PROBE {
        let idx = ((first + probe) & (buckets - 1)) as usize;
        let Some(b) = table.get_mut(idx) else {
            return Err(TableFull);
        };
        for i in 0..B::WAYS {
            let k = b.key(i);
            if k == key || k == B::empty() {
                b.set(i, key, value);
                return Ok(());
            }
        }
    }
    Err(TableFull)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn dev(slot: u32) -> DeviceRef {
        DeviceRef {
            slot,
            policy: 1,
            flags: 0,
        }
    }

    #[test]
    fn mac_table_finds_every_key_and_nothing_else() {
        let mut t = vec![MacBucket::default(); 64];
        let seed = 0x1234_5678_9abc_def0;
        for i in 1..=120u32 {
            let mac = [2, 0, 0, 0, (i >> 8) as u8, i as u8];
            insert(&mut t, seed, mac_key(&mac), dev(i)).expect("fits at ~half load");
        }
        for i in 1..=120u32 {
            let mac = [2, 0, 0, 0, (i >> 8) as u8, i as u8];
            assert_eq!(
                lookup(|b| t.get(b as usize), 64, seed, &mac_key(&mac)),
                Some(dev(i))
            );
        }
        assert_eq!(
            lookup(|b| t.get(b as usize), 64, seed, &0),
            None,
            "the empty key is never found"
        );
        for i in 121..=400u32 {
            let mac = [2, 0, 0, 0, (i >> 8) as u8, i as u8];
            assert_eq!(
                lookup(|b| t.get(b as usize), 64, seed, &mac_key(&mac)),
                None
            );
        }
    }

    #[test]
    fn sequential_keys_spread_evenly() {
        // Devices of one vendor differ in their last bytes only.
        let mut load = vec![0u32; 1024];
        for i in 0..2048u32 {
            let mac = [2, 0xbe, 0, 0, (i >> 8) as u8, i as u8];
            load[home(mix(mac_key(&mac), 0x5eed), 1024) as usize] += 1;
        }
        assert!(
            load.iter().all(|n| *n <= 6),
            "max bucket load {:?}",
            load.iter().max()
        );
    }

    #[test]
    fn ip_table_and_replacement() {
        let mut t = vec![IpBucket::default(); 16];
        let a = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 17];
        insert(&mut t, 7, ip_key(&a), dev(1)).expect("fits");
        insert(&mut t, 7, ip_key(&a), dev(2)).expect("replaces");
        assert_eq!(
            lookup(|b| t.get(b as usize), 16, 7, &ip_key(&a)),
            Some(dev(2))
        );
        let used: usize = t
            .iter()
            .map(|b| b.keys.iter().filter(|k| **k != [0, 0]).count())
            .sum();
        assert_eq!(used, 1);
    }

    #[test]
    fn a_full_neighbourhood_is_reported() {
        let mut t = vec![MacBucket::default(); 4];
        let mut n = 0;
        for i in 1..=100u64 {
            if insert(&mut t, 1, i, dev(i as u32)).is_err() {
                break;
            }
            n += 1;
        }
        assert_eq!(n, 16, "four buckets of four slots");
        for i in 1..=16u64 {
            assert_eq!(lookup(|b| t.get(b as usize), 4, 1, &i), Some(dev(i as u32)));
        }
    }
}

//! Bucketised cuckoo hash tables in BPF arrays: device identities and domains.
//!
//! A BPF hash map lookup costs a helper call, a jhash and a bucket walk (about 30 ns for an
//! 8-byte key here). These tables cost at most two inlined array lookups and a few compares: a
//! bucket is one 64-byte cache line with several slots, and every key lives in one of exactly two
//! buckets (`home` and `alternate`, from different bits of a keyed hash). The daemon builds the
//! whole image of a generation with `insert`, which moves keys to their other bucket to make room
//! (cuckoo hashing), so tables fill to 90% and beyond; it writes the image through `mmap`. The
//! kernel reads it with `lookup`. Both sides use the bucket functions defined here, once.
//!
//! A key of all zeroes marks an empty slot (no device has MAC 00:00:00:00:00:00 or address ::;
//! the configuration rejects them; domain fingerprints are never zero).

use crate::maps::DeviceRef;

/// Relocations `insert` tries before it reports the table full.
pub const MAX_KICKS: u32 = 2_000;

/// Fibonacci hashing of `x` under `seed`: one multiply. The top bits of the product depend on
/// every input bit, and `home` takes the bucket from them. (Keys are operator-chosen MACs and
/// addresses, and the seed is random per table, so a stronger hash buys nothing here.)
#[inline(always)]
pub const fn mix(x: u64, seed: u64) -> u64 {
    (x ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The first bucket of hash `h`: its top 32 bits scaled to `buckets` (below `buckets` for any
/// count; for a power of two, exactly the top log2(`buckets`) bits). A multiply and a shift:
/// BPF has no count-zeros instruction, and the kernel spends this on every probe.
#[inline(always)]
pub const fn home(h: u64, buckets: u32) -> u32 {
    (((h >> 32) * buckets as u64) >> 32) as u32
}

/// The second bucket of hash `h`: from its low bits, remixed (independent of `home`).
#[inline(always)]
pub const fn alternate(h: u64, buckets: u32) -> u32 {
    let x = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    home(x ^ (x >> 27), buckets)
}

/// The slot accessors every bucket layout shares: `keys` and `values` arrays of `WAYS` entries;
/// out-of-range slots read as empty (keys and values `Default`).
macro_rules! slot_accessors {
    () => {
        #[inline(always)]
        fn key(&self, i: usize) -> Self::Key {
            self.keys.get(i).copied().unwrap_or_default()
        }
        #[inline(always)]
        fn value(&self, i: usize) -> Self::Value {
            self.values.get(i).copied().unwrap_or_default()
        }
        fn set(&mut self, i: usize, key: Self::Key, value: Self::Value) {
            if let (Some(k), Some(v)) = (self.keys.get_mut(i), self.values.get_mut(i)) {
                *k = key;
                *v = value;
            }
        }
    };
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
    slot_accessors!();
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
    slot_accessors!();
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
    slot_accessors!();
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

/// Looks `key` up in the table of `buckets` buckets whose bucket `i` is `get(i)`: at most two
/// buckets, `B::WAYS` compares each, constant bounds.
#[inline(always)]
pub fn lookup<'a, B: Bucket + 'a>(
    get: impl Fn(u32) -> Option<&'a B>,
    buckets: u32,
    seed: u64,
    key: &B::Key,
) -> Option<B::Value> {
    // The empty key would match an empty slot (an IPv6 source of :: is normal: DAD probes);
    // both halves refuse it.
    lookup_home(&get, buckets, seed, key).or_else(|| lookup_alternate(&get, buckets, seed, key))
}

/// The first half of `lookup`: the key's home bucket only. A hit here is the common case (keys
/// stay in their home bucket unless it was full); callers on a hot path probe the alternate
/// bucket with `lookup_alternate` only on a miss, out of line.
#[inline(always)]
pub fn lookup_home<'a, B: Bucket + 'a>(
    get: impl Fn(u32) -> Option<&'a B>,
    buckets: u32,
    seed: u64,
    key: &B::Key,
) -> Option<B::Value> {
    if *key == B::empty() {
        return None;
    }
    find(get(home(B::hash(key, seed), buckets))?, key)
}

/// The second half of `lookup`: the key's alternate bucket (if distinct from its home).
#[inline(always)]
pub fn lookup_alternate<'a, B: Bucket + 'a>(
    get: impl Fn(u32) -> Option<&'a B>,
    buckets: u32,
    seed: u64,
    key: &B::Key,
) -> Option<B::Value> {
    if *key == B::empty() {
        return None;
    }
    let h = B::hash(key, seed);
    let second = alternate(h, buckets);
    if second == home(h, buckets) {
        return None;
    }
    find(get(second)?, key)
}

#[inline(always)]
fn find<B: Bucket>(b: &B, key: &B::Key) -> Option<B::Value> {
    let mut i = 0;
    while i < B::WAYS {
        if b.key(i) == *key {
            return Some(b.value(i));
        }
        i += 1;
    }
    None
}

/// No room: `MAX_KICKS` relocations did not free a slot. (The builder draws a new seed, or the
/// table needs more buckets.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFull;

fn slot_of<B: Bucket>(b: &B, key: &B::Key) -> Option<usize> {
    (0..B::WAYS).find(|i| b.key(*i) == *key)
}

fn free_slot<B: Bucket>(b: &B) -> Option<usize> {
    (0..B::WAYS).find(|i| b.key(*i) == B::empty())
}

/// Removes `key` from `table`; returns the bucket it was in, if it was there.
pub fn remove<B: Bucket>(table: &mut [B], seed: u64, key: &B::Key) -> Option<usize> {
    let buckets = table.len() as u32;
    let h = B::hash(key, seed);
    for b in [home(h, buckets) as usize, alternate(h, buckets) as usize] {
        if let Some(bucket) = table.get_mut(b)
            && let Some(i) = slot_of(bucket, key)
        {
            bucket.set(i, B::empty(), B::Value::default());
            return Some(b);
        }
    }
    None
}

/// Inserts or replaces `key` in `table` (a power-of-two number of buckets). Keys already in the
/// table may move to their other bucket to make room.
pub fn insert<B: Bucket>(
    table: &mut [B],
    seed: u64,
    key: B::Key,
    value: B::Value,
) -> Result<(), TableFull> {
    insert_noting(table, seed, key, value, |_| {})
}

/// As `insert`, calling `wrote` with the index of every bucket it writes (for writing only
/// those to the kernel). On `TableFull` the table has lost a key: rebuild it.
pub fn insert_noting<B: Bucket>(
    table: &mut [B],
    seed: u64,
    key: B::Key,
    value: B::Value,
    mut wrote: impl FnMut(usize),
) -> Result<(), TableFull> {
    let buckets = table.len() as u32;
    let h = B::hash(&key, seed);
    let (b1, b2) = (home(h, buckets) as usize, alternate(h, buckets) as usize);
    for b in [b1, b2] {
        let bucket = table.get_mut(b).ok_or(TableFull)?;
        if let Some(i) = slot_of(bucket, &key) {
            bucket.set(i, key, value);
            wrote(b);
            return Ok(());
        }
    }
    for b in [b1, b2] {
        let bucket = table.get_mut(b).ok_or(TableFull)?;
        if let Some(i) = free_slot(bucket) {
            bucket.set(i, key, value);
            wrote(b);
            return Ok(());
        }
    }
    // Random walk: evict a slot of the current bucket into the victim's other bucket.
    let (mut k, mut v, mut at) = (key, value, b1);
    let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15 ^ h;
    for _ in 0..MAX_KICKS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = (rng % B::WAYS as u64) as usize;
        let bucket = table.get_mut(at).ok_or(TableFull)?;
        let (vk, vv) = (bucket.key(i), bucket.value(i));
        bucket.set(i, k, v);
        wrote(at);
        let vh = B::hash(&vk, seed);
        let (v1, v2) = (home(vh, buckets) as usize, alternate(vh, buckets) as usize);
        let other = if v1 == at { v2 } else { v1 };
        let dest = table.get_mut(other).ok_or(TableFull)?;
        if let Some(j) = free_slot(dest) {
            dest.set(j, vk, vv);
            wrote(other);
            return Ok(());
        }
        (k, v, at) = (vk, vv, other);
    }
    // Put the homeless key back where the table can report it: it is lost, so fail.
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

    /// For a power-of-two count, `home` is the hash's top log2(count) bits (what it computed
    /// before it became a multiply), so tables built either way agree; for any count it is in
    /// range.
    #[test]
    fn home_is_the_top_bits() {
        let mut h = 0x0123_4567_89ab_cdefu64;
        for _ in 0..10_000 {
            h = mix(h, 0x5eed);
            assert_eq!(home(h, 1), 0);
            for k in 1..=31u32 {
                assert_eq!(home(h, 1 << k), (h >> (64 - k)) as u32, "2^{k} buckets");
            }
            for n in [3u32, 1000, 65_537, u32::MAX] {
                assert!(home(h, n) < n);
            }
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
    fn cuckoo_fills_past_ninety_percent() {
        // 1,024 buckets of 5: 5,120 slots, 4,700 keys (92%).
        let mut t = vec![DomainBucket::default(); 1024];
        let seed = 0xfeed;
        let key = |i: u64| mix(i, 0x1234) | 1;
        for i in 0..4_700u64 {
            insert(&mut t, seed, key(i), i as u32).expect("fits");
        }
        for i in 0..4_700u64 {
            assert_eq!(
                lookup(|b| t.get(b as usize), 1024, seed, &key(i)),
                Some(i as u32),
                "key {i}"
            );
        }
        for i in 4_700..20_000u64 {
            assert_eq!(lookup(|b| t.get(b as usize), 1024, seed, &key(i)), None);
        }
    }

    #[test]
    fn an_overfull_table_is_reported() {
        let mut t = vec![MacBucket::default(); 4];
        let mut n = 0;
        for i in 1..=100u64 {
            if insert(&mut t, 1, i, dev(i as u32)).is_err() {
                break;
            }
            n += 1;
        }
        assert!(
            (12..=16).contains(&n),
            "four buckets of four slots took {n}"
        );
    }
}

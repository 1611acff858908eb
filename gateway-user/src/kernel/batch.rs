//! Whole-map operations aya does not wrap. Reading a whole map in a few system calls
//! (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+): reading the decision map key by key costs two system
//! calls per key; a scrape of 1,000 devices is thousands of keys. Emptying a loaded filter's
//! maps in place (`Emptied`), so that one loaded filter serves many test cases: verification is
//! most of what a load costs, minutes per load under qemu on the kernel matrix.

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use aya_obj::generated::bpf_cmd::{
    BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH,
};

use super::sys::bpf;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One element as the kernel wrote it: the key's bytes and the value's bytes.
pub type RawElement = (Vec<u8>, Vec<u8>);

/// Elements asked for per call.
const CHUNK: usize = 1024;

/// Every (key, value) of the map `fd`: keys of `key_size` bytes, values of `value_size` bytes
/// (for per-CPU maps: the value size rounded up to 8, times the possible CPUs). `None` if the
/// kernel does not support batch lookups for this map (the caller reads it key by key).
pub fn lookup_all(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
) -> std::io::Result<Option<Vec<RawElement>>> {
    let mut out = Vec::new();
    // The batch position token: a u32 bucket for hash maps, a key for arrays; room for both.
    let mut token = vec![0u8; key_size.max(8)];
    let mut next = vec![0u8; key_size.max(8)];
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers that live across the call and hold `count` keys
        // and values of the sizes the map has; the kernel writes at most that much.
        let err = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        let n = (attr.count as usize).min(CHUNK);
        for i in 0..n {
            out.push((
                keys[i * key_size..(i + 1) * key_size].to_vec(),
                values[i * value_size..(i + 1) * value_size].to_vec(),
            ));
        }
        match err {
            None => {}
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Some(out)),
            Some(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
                    ) =>
            {
                return Ok(None);
            }
            Some(e) => return Err(e),
        }
        std::mem::swap(&mut token, &mut next);
        first = false;
    }
}

/// The bytes of one CPU's value in a per-CPU map element as the kernel lays it out for system
/// calls: `value_size` rounded up to 8.
pub fn per_cpu_slot(value_size: usize) -> usize {
    value_size.div_ceil(8) * 8
}

/// The values of a per-CPU map element (`raw`, as `lookup_all` returns it) summed over CPUs
/// with `add`, each CPU's value read from its 8-byte-aligned slot.
pub fn per_cpu<T: aya::Pod + Default>(raw: &[u8], add: impl Fn(&mut T, &T)) -> T {
    let stride = per_cpu_slot(size_of::<T>());
    let mut total = T::default();
    for chunk in raw.chunks_exact(stride) {
        // SAFETY: `chunk` holds at least size_of::<T>() bytes written by the kernel for a Pod.
        let v: T = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
        add(&mut total, &v);
    }
    total
}

/// The `map_elem` member of `union bpf_attr` (lookups, deletions, next keys).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next: u64,
    flags: u64,
}

/// How a map is brought back to what a fresh load holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emptying {
    /// Arrays: every element zeroed (value bytes per element).
    Zero(usize),
    /// Hash maps and tries: every key deleted.
    Delete,
    /// The event ring: read to its end.
    Drain,
    /// As loaded: the tail-call table and the global sections, which the loader fills.
    Keep,
}

/// The maps of a loaded filter, to be emptied again and again (`Emptied::empty`).
#[derive(Debug, Default)]
pub struct Emptied {
    /// (name, map id, how).
    maps: Vec<(String, u32, Emptying)>,
}

impl Emptied {
    /// Notes every map of `ebpf` (before any is taken from it); fails on a map of a type it
    /// cannot empty, so that a new map is never silently left full between test cases.
    pub fn of(ebpf: &aya::Ebpf) -> anyhow::Result<Self> {
        use aya::maps::Map;
        let cpus = super::cpu_count()?;
        let mut maps = Vec::new();
        for (name, map) in ebpf.maps() {
            // The value bytes of an array element are known once its info is read.
            let (data, how) = match map {
                Map::Array(d) | Map::PerCpuArray(d) => (d, Emptying::Zero(0)),
                Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::PerCpuHashMap(d)
                | Map::PerCpuLruHashMap(d)
                | Map::LpmTrie(d) => (d, Emptying::Delete),
                Map::RingBuf(d) => (d, Emptying::Drain),
                Map::ProgramArray(d) => (d, Emptying::Keep),
                other => anyhow::bail!("map {name}: cannot empty a map of type {other:?}"),
            };
            let info = data.info()?;
            let value = info.value_size() as usize;
            let how = match how {
                _ if name.starts_with('.') => Emptying::Keep,
                Emptying::Zero(_) if matches!(map, Map::PerCpuArray(_)) => {
                    Emptying::Zero(per_cpu_slot(value) * cpus)
                }
                Emptying::Zero(_) => Emptying::Zero(value),
                how => how,
            };
            maps.push((name.to_string(), info.id(), how));
        }
        Ok(Self { maps })
    }

    /// Empties every map noted: afterwards the filter's maps hold what a fresh load's do.
    pub fn empty(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        for (name, id, how) in &self.maps {
            let data = aya::maps::MapData::from_id(*id)
                .with_context(|| format!("opening map {name} (id {id})"))?;
            let info = data.info()?;
            let fd = data.fd().as_fd();
            let done = match how {
                Emptying::Zero(value) => zero(fd, info.max_entries(), *value),
                Emptying::Delete => delete_all(fd, info.key_size() as usize),
                Emptying::Drain => {
                    let mut ring = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data))?;
                    while ring.next().is_some() {}
                    Ok(())
                }
                Emptying::Keep => Ok(()),
            };
            done.with_context(|| format!("emptying map {name}"))?;
        }
        Ok(())
    }
}

/// Zeroes elements `0..entries` of the array `fd` (values of `value` bytes).
fn zero(fd: BorrowedFd<'_>, entries: u32, value: usize) -> std::io::Result<()> {
    let zeros = vec![0u8; CHUNK * value];
    let mut first = 0u32;
    while first < entries {
        let n = (entries - first).min(CHUNK as u32);
        let keys: Vec<u32> = (first..first + n).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: zeros.as_ptr() as u64,
            count: n,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` holds `n` u32 keys and `zeros` at least `n` values of the map's size.
        unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }?;
        first += n;
    }
    Ok(())
}

/// Deletes every key (of `key_size` bytes) of the map `fd`.
fn delete_all(fd: BorrowedFd<'_>, key_size: usize) -> std::io::Result<()> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut next = vec![0u8; key_size];
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            // No key: the first one.
            key: keys.last().map_or(0, |k| k.as_ptr() as u64),
            value_or_next: next.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        // SAFETY: `key` (if any) and `next` are buffers of the map's key size.
        match unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
            Ok(_) => keys.push(next),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    for key in &keys {
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            ..ElemAttr::default()
        };
        // SAFETY: `key` is a buffer of the map's key size.
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) } {
            // An LRU map may have evicted it meanwhile.
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

//! Reading a whole map in a few system calls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+), which aya
//! does not wrap. Reading the decision map key by key costs two system calls per key; a scrape
//! of 1,000 devices is thousands of keys.

use std::os::fd::{AsRawFd as _, BorrowedFd};

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

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
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
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

/// The values of a per-CPU map element (`raw`, as `lookup_all` returns it) summed over CPUs
/// with `add`, each CPU's value read from its 8-byte-aligned slot.
pub fn per_cpu<T: aya::Pod + Default>(raw: &[u8], add: impl Fn(&mut T, &T)) -> T {
    let stride = size_of::<T>().div_ceil(8) * 8;
    let mut total = T::default();
    for chunk in raw.chunks_exact(stride) {
        // SAFETY: `chunk` holds at least size_of::<T>() bytes written by the kernel for a Pod.
        let v: T = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
        add(&mut total, &v);
    }
    total
}

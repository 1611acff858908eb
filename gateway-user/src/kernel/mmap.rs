//! BPF arrays mapped into the daemon's memory (`BPF_F_MMAPABLE`): whole tables are written with
//! memory stores instead of one syscall per element.

use std::{marker::PhantomData, os::fd::AsFd as _, os::fd::AsRawFd as _, ptr::NonNull};

use anyhow::{Context as _, bail};
use aya::maps::MapData;

/// A BPF array of `T`, mapped read-write.
pub struct MmapArray<T> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
    // Keeps the map's fd open for as long as the mapping exists.
    _map: MapData,
    _t: PhantomData<T>,
}

// SAFETY: the mapping is plain shared memory owned by this value; access goes through `&self` /
// `&mut self` like a `Vec<T>`.
unsafe impl<T: Send> Send for MmapArray<T> {}

impl<T: aya::Pod> MmapArray<T> {
    /// Maps `map`, which must be an mmapable array of `T`.
    pub fn new(map: MapData) -> anyhow::Result<Self> {
        let info = map.info()?;
        if info.value_size() as usize != size_of::<T>() || !size_of::<T>().is_multiple_of(8) {
            bail!(
                "array value size {} does not match {} bytes",
                info.value_size(),
                size_of::<T>()
            );
        }
        let len = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the whole map; the kernel checks the size and that
        // the map was created with BPF_F_MMAPABLE.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mmap of a BPF array (is it BPF_F_MMAPABLE?)");
        }
        let ptr = NonNull::new(p.cast::<T>()).context("mmap returned null")?;
        Ok(Self {
            ptr,
            len,
            bytes,
            _map: map,
            _t: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element `i` (volatile: the kernel shares this memory).
    pub fn get(&self, i: usize) -> Option<T> {
        // SAFETY: in bounds; T is Pod, so any bytes are a valid T.
        (i < self.len).then(|| unsafe { self.ptr.as_ptr().add(i).read_volatile() })
    }

    /// Stores element `i`; false if out of range.
    pub fn set(&mut self, i: usize, value: T) -> bool {
        if i >= self.len {
            return false;
        }
        // SAFETY: in bounds of the mapping.
        unsafe { self.ptr.as_ptr().add(i).write_volatile(value) };
        true
    }
}

impl<T> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

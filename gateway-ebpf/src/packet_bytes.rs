//! `Bytes` over the XDP frame: the kernel side of the shared parsers.

use aya_ebpf::programs::XdpContext;
use gateway_common::bytes::Bytes;

/// The frame between `data` and `data_end`.
pub struct PacketBytes {
    start: usize,
    end: usize,
}

impl PacketBytes {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }
}

impl PacketBytes {
    /// Writes the bytes of `v` (an integer: its in-memory bytes, in order) at `off`; false
    /// (nothing written) if any of them would lie past the end. One direct store: no helper
    /// call, and no byte array for LLVM to turn into a `memset` call.
    #[inline(always)]
    pub fn put<T: Copy>(&self, off: usize, v: T) -> bool {
        // Verifier: as in `read`.
        let p = self.start.wrapping_add(off);
        let last = opaque(p.wrapping_add(core::mem::size_of::<T>()));
        if last > self.end {
            return false;
        }
        // SAFETY: [p, p + size_of::<T>()) lies within the frame, checked above.
        unsafe { core::ptr::write_unaligned(p as *mut T, v) };
        true
    }
}

impl Bytes for PacketBytes {
    #[inline(always)]
    fn size(&self) -> usize {
        // pkt_end - pkt yields an unknown scalar (allowed with CAP_PERFMON); it is only ever
        // used as a bound, never to form a pointer.
        self.end.wrapping_sub(self.start)
    }

    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // Verifier: `p + N <= data_end` marks [p, p + N) readable; `off` is always derived from
        // masked or bounded header fields, so `p` has a bounded variable offset.
        let p = self.start.wrapping_add(off);
        let last = opaque(p.wrapping_add(N));
        if last > self.end {
            return None;
        }
        // SAFETY: [p, p + N) lies within the frame, checked above.
        Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
    }
}

/// Hides `v` from the optimiser. Without it LLVM rewrites `p + 1 > end` as `p >= end`, a form
/// from which the verifier learns no readable range, and folds `x - (end - data)` into
/// arithmetic on `data_end`, which the verifier forbids.
#[inline(always)]
pub fn opaque(mut v: usize) -> usize {
    // SAFETY: a register move onto itself. (A real instruction: an empty asm body leaves two
    // BTF line-info records at one offset, which the kernel rejects.)
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) v, options(pure, nomem, nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "bpf"))]
    {
        v = core::hint::black_box(v);
    }
    v
}

//! `Bytes` over the XDP frame: the kernel side of the shared parsers.

use aya_ebpf::programs::XdpContext;
use gateway_common::bytes::Bytes;

/// One definition for the kernel and the host parsers.
pub use gateway_common::bytes::opaque;

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

/// `len`, known by the caller to lie in `1..=mask + 1` (`mask` one less than a power of two),
/// as a helper's length: passed through `through` (map memory) and then `((len - 1) & mask) + 1`.
///
/// Verifier (6.1), two checks:
/// - Helpers such as `bpf_xdp_load_bytes` take their length as `ARG_CONST_SIZE`, at least 1. A
///   caller's `len == 0` check bounds the register it tested, but LLVM may pass a copy reloaded
///   from the stack, and 6.1 does not carry bounds to a spilled copy ("invalid access to map
///   value ... size=0"). The mask and the `+ 1` give the bound on the register passed.
/// - A length must be precise, so the verifier traces back the instructions that computed it.
///   On 6.1 a trace that reaches back past a `bpf_loop` callback gives up and marks every scalar
///   of every state precise, and states stop being pruned: the DNS program ran out of its
///   1,000,000 instructions. Read back from map memory, the length's trace ends at the load.
///
/// 6.12 and later need neither; the same code serves all.
#[inline(always)]
pub fn nonzero(len: u32, mask: u32, through: &mut u32) -> u32 {
    // SAFETY: `through` is a valid, aligned u32 (a field of scratch memory).
    let v = unsafe {
        core::ptr::write_volatile(through, len);
        core::ptr::read_volatile(through)
    };
    (v.wrapping_sub(1) & mask) + 1
}

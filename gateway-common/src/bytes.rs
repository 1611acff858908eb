//! The byte-reader every parser is written against.
//!
//! The kernel implements it over the XDP packet (a bounds check against `data_end` per read);
//! the host implements it over slices. Parsers only ever ask for fixed-size reads at an offset,
//! which is the access pattern the verifier can follow.

/// A mask of the low `n` bytes of a word (all of it for `n` >= 8): the bytes of a little-endian
/// word that lie before an end `n` bytes after its start.
#[inline(always)]
pub const fn low_bytes(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (n * 8)) - 1
    }
}

/// The eight bytes of `b` at `at` as a little-endian word, zero past its end (a word-at-a-time
/// reader on the host, where a whole-word read may run past the data).
pub fn le_word<B: Bytes + ?Sized>(b: &B, at: usize) -> u64 {
    let mut w = [0u8; 8];
    for (k, x) in w.iter_mut().enumerate() {
        *x = at.checked_add(k).and_then(|i| b.u8_at(i)).unwrap_or(0);
    }
    u64::from_le_bytes(w)
}

/// Bytes that can be read at an offset.
pub trait Bytes {
    /// Number of readable bytes.
    fn size(&self) -> usize;

    /// The `N` bytes at `off`, or `None` if any of them lies past the end.
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]>;

    /// The byte at `off`.
    #[inline(always)]
    fn u8_at(&self, off: usize) -> Option<u8> {
        let [b] = self.read::<1>(off)?;
        Some(b)
    }

    /// The big-endian `u16` at `off`.
    #[inline(always)]
    fn be16_at(&self, off: usize) -> Option<u16> {
        self.read::<2>(off).map(u16::from_be_bytes)
    }

    /// The big-endian `u32` at `off`.
    #[inline(always)]
    fn be32_at(&self, off: usize) -> Option<u32> {
        self.read::<4>(off).map(u32::from_be_bytes)
    }
}

impl Bytes for [u8] {
    #[inline]
    fn size(&self) -> usize {
        self.len()
    }

    #[inline]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let end = off.checked_add(N)?;
        self.get(off..end)?.try_into().ok()
    }
}

/// Hides `v` from the optimiser (not from the verifier, which follows a register move). Without
/// it LLVM rewrites `p + 1 > end` as `p >= end`, a form from which the verifier learns no
/// readable range, folds `x - (end - data)` into arithmetic on `data_end`, which the verifier
/// forbids, and drops masks it has proven redundant but the verifier needs. On the host, the
/// value as it is.
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

#[cfg(test)]
mod tests {
    use super::Bytes;

    #[test]
    fn reads_within_bounds_only() {
        let b: &[u8] = &[1, 2, 3, 4];
        assert_eq!(b.u8_at(3), Some(4));
        assert_eq!(b.u8_at(4), None);
        assert_eq!(b.be16_at(2), Some(0x0304));
        assert_eq!(b.be16_at(3), None);
        assert_eq!(b.be32_at(0), Some(0x0102_0304));
        assert_eq!(b.read::<2>(usize::MAX), None);
        assert_eq!(b.read::<0>(4), Some([]));
    }

    #[test]
    fn words_and_masks() {
        let b: &[u8] = &[1, 2, 3];
        assert_eq!(super::le_word(b, 0), 0x03_0201);
        assert_eq!(super::le_word(b, 2), 3);
        assert_eq!(super::le_word(b, usize::MAX), 0);
        assert_eq!(super::low_bytes(1), 0xff);
        assert_eq!(super::low_bytes(7), 0x00ff_ffff_ffff_ffff);
        assert_eq!(super::low_bytes(8), u64::MAX);
        assert_eq!(super::low_bytes(63), u64::MAX);
    }
}

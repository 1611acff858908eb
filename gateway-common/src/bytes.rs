//! The byte-reader every parser is written against.
//!
//! The kernel implements it over the XDP packet (a bounds check against `data_end` per read);
//! the host implements it over slices. Parsers only ever ask for fixed-size reads at an offset,
//! which is the access pattern the verifier can follow.

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
}

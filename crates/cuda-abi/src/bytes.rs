//! Bounds-checked little-endian reads: every image reader in this crate goes through these, so
//! a field past the end of the bytes given is an error, never a read outside them.

/// `n` bytes at `off`, or None when they are not all inside `b`.
pub(crate) fn at(b: &[u8], off: u64, n: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(n).ok()?)?;
    b.get(start..end)
}

pub(crate) fn u8_at(b: &[u8], off: u64) -> Option<u8> {
    at(b, off, 1).map(|s| s[0])
}

pub(crate) fn u16_at(b: &[u8], off: u64) -> Option<u16> {
    at(b, off, 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

pub(crate) fn u32_at(b: &[u8], off: u64) -> Option<u32> {
    at(b, off, 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn u64_at(b: &[u8], off: u64) -> Option<u64> {
    at(b, off, 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// The bytes of `b` before its first NUL (all of `b` when it has none).
pub(crate) fn until_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

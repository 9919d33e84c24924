//! Fatbinaries: the container `nvcc` embeds in programs (section `.nv_fatbin`), holding one
//! module several times over, compiled for different GPUs: cubins for given SM architectures
//! and PTX for the driver to compile for newer ones. The driver loads one of them.
//!
//! Layout (little-endian; as NVIDIA's `fatbinary.h` and public readers of it describe it):
//!
//! ```text
//! header   u32 magic 0xBA55ED50 | u16 version 1 | u16 headerSize | u64 fatSize
//!          entries follow at headerSize, fatSize bytes of them
//! entry    +0 u16 kind (1 PTX, 2 cubin) | +2 u16 version | +4 u32 headerSize
//!          +8 u64 payloadSize | +16 u32 compressedSize | +28 u32 arch (e.g. 90 for sm_90)
//!          +40 u64 flags | +56 u64 uncompressedSize
//!          payload at the entry + headerSize; the next entry after it
//! ```
//!
//! The wrapper `nvcc` registers with the runtime (`__fatBinC_Wrapper_t`: u32 magic
//! 0x466243B1, u32 version, a pointer to the fatbinary, a pointer to a file name or linked
//! fatbinaries) is followed to the fatbinary it points at.
//!
//! Compressed entries (`--compress-all`, and the toolkit's default for large programs) carry
//! the flag 0x2000 and an LZ4 block. Entries flagged 0x8000 (`--compress-mode=size` or
//! `balance`, the default from CUDA 13) hold zstd frames (read by [`crate::zstd`]). Both are
//! decompressed here (up to [`MAX_UNCOMPRESSED`]) and read like the others. Entries of other
//! kinds (LTO IR and the like, which the driver does not load as modules) are skipped.

use crate::bytes::{at, u16_at, u32_at, u64_at, until_nul};
use crate::image::Module;
use crate::modimage::ImageError;
use crate::{cubin, ptx};

pub const MAGIC: u32 = 0xBA55_ED50;
pub const WRAPPER_MAGIC: u32 = 0x4662_43B1;
pub const HEADER_BYTES: u64 = 16;
/// `__fatBinC_Wrapper_t` on a 64-bit host.
pub const WRAPPER_BYTES: u64 = 24;
pub const ENTRY_BYTES: u64 = 64;
pub const KIND_PTX: u16 = 1;
pub const KIND_CUBIN: u16 = 2;
pub const FLAG_LZ4: u64 = 0x2000;
pub const FLAG_ZSTD: u64 = 0x8000;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The most a compressed entry may expand to here.
pub const MAX_UNCOMPRESSED: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Ptx,
    Cubin,
}

/// One loadable entry of a fatbinary, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// The SM architecture it was compiled for (major × 10 + minor).
    pub arch: u32,
    pub module: Module,
}

fn bad(what: String) -> ImageError {
    ImageError::Malformed(format!("fatbinary: {what}"))
}

/// The bytes of a fatbinary, from its first [`HEADER_BYTES`] bytes.
pub fn extent(b: &[u8]) -> Result<u64, ImageError> {
    if u32_at(b, 0) != Some(MAGIC) {
        return Err(bad(format!("magic is not {MAGIC:#x}")));
    }
    let version = u16_at(b, 4).ok_or_else(|| bad("header".into()))?;
    if version != 1 {
        return Err(ImageError::Unsupported(format!(
            "fatbinary: version {version}; version 1 is read"
        )));
    }
    let header = u16_at(b, 6).ok_or_else(|| bad("header".into()))? as u64;
    if header < HEADER_BYTES {
        return Err(bad(format!(
            "headerSize {header} is less than the {HEADER_BYTES}-byte header"
        )));
    }
    let fat = u64_at(b, 8).ok_or_else(|| bad("header".into()))?;
    header
        .checked_add(fat)
        .ok_or_else(|| bad(format!("fatSize {fat} overflows")))
}

/// Decompresses an LZ4 block into exactly `want` bytes; every read and copy is checked.
/// A zstd-compressed entry's payload, decompressed: its first `compressed` bytes when the
/// header says how many (the rest is padding), else the whole payload. `uncompressed`, when
/// the header gives it, must be what the frames hold.
fn zstd_entry(payload: &[u8], compressed: u64, uncompressed: u64) -> Result<Vec<u8>, String> {
    let src = match compressed as usize {
        0 => payload,
        n => payload.get(..n).ok_or_else(|| {
            format!(
                "compressedSize {n} is past its {}-byte payload",
                payload.len()
            )
        })?,
    };
    let limit = match uncompressed {
        0 => MAX_UNCOMPRESSED,
        n if n <= MAX_UNCOMPRESSED => n,
        n => {
            return Err(format!(
                "{n} bytes uncompressed (at most {MAX_UNCOMPRESSED} are read)"
            ));
        }
    };
    let out = crate::zstd::decompress(src, limit as usize).map_err(|e| e.to_string())?;
    if uncompressed != 0 && out.len() as u64 != uncompressed {
        return Err(format!(
            "uncompressedSize says {uncompressed} bytes, the zstd frames hold {}",
            out.len()
        ));
    }
    Ok(out)
}

pub fn lz4_block(src: &[u8], want: u64) -> Result<Vec<u8>, ImageError> {
    if want > MAX_UNCOMPRESSED {
        return Err(ImageError::Unsupported(format!(
            "fatbinary: a compressed entry of {want} bytes uncompressed (at most {MAX_UNCOMPRESSED} are read)"
        )));
    }
    let lz = |what: &str| bad(format!("compressed entry: {what}"));
    let want = want as usize;
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(want)
        .map_err(|_| lz(&format!("no host memory for its {want} bytes")))?;
    let mut i = 0usize;
    let byte = |i: &mut usize| -> Result<u8, ImageError> {
        let b = *src.get(*i).ok_or_else(|| lz("ends inside a sequence"))?;
        *i += 1;
        Ok(b)
    };
    let length = |i: &mut usize, base: usize| -> Result<usize, ImageError> {
        let mut n = base;
        if base == 15 {
            loop {
                let b = byte(i)?;
                n = n
                    .checked_add(b as usize)
                    .ok_or_else(|| lz("a length overflows"))?;
                if b != 255 {
                    break;
                }
            }
        }
        Ok(n)
    };
    while i < src.len() {
        let token = byte(&mut i)?;
        let lit = length(&mut i, (token >> 4) as usize)?;
        let end = i
            .checked_add(lit)
            .ok_or_else(|| lz("a literal overflows"))?;
        let run = src
            .get(i..end)
            .ok_or_else(|| lz("a literal runs past the end"))?;
        if out.len() + lit > want {
            return Err(lz("expands past its stated size"));
        }
        out.extend_from_slice(run);
        i = end;
        if i == src.len() {
            break;
        }
        let lo = byte(&mut i)? as usize;
        let hi = byte(&mut i)? as usize;
        let offset = lo | hi << 8;
        if offset == 0 || offset > out.len() {
            return Err(lz("a match reaches before the start"));
        }
        let n = length(&mut i, (token & 15) as usize)?
            .checked_add(4)
            .ok_or_else(|| lz("a match overflows"))?;
        if out.len() + n > want {
            return Err(lz("expands past its stated size"));
        }
        let from = out.len() - offset;
        for k in 0..n {
            let b = out[from + k];
            out.push(b);
        }
    }
    if out.len() != want {
        return Err(lz(&format!(
            "expands to {} bytes, its header says {want}",
            out.len()
        )));
    }
    Ok(out)
}

/// Reads a fatbinary: every cubin and PTX entry, read. `b` holds at least the bytes
/// [`extent`] gives; a header or entry claiming bytes past the end of `b` is refused.
pub fn parse(b: &[u8]) -> Result<Vec<Entry>, ImageError> {
    let total = extent(b)?;
    if total > b.len() as u64 {
        return Err(bad(format!(
            "headerSize + fatSize is {total} bytes, past the image's {}",
            b.len()
        )));
    }
    let mut off = u16_at(b, 6).unwrap_or(0) as u64;
    let mut entries = Vec::new();
    let mut n = 0;
    while off < total {
        n += 1;
        let e = at(b, off, ENTRY_BYTES)
            .filter(|_| off + ENTRY_BYTES <= total)
            .ok_or_else(|| bad(format!("entry {n} at {off}: its header lies past the end")))?;
        let kind = u16_at(e, 0).unwrap_or(0);
        let header = u32_at(e, 4).unwrap_or(0) as u64;
        let size = u64_at(e, 8).unwrap_or(0);
        let compressed = u32_at(e, 16).unwrap_or(0) as u64;
        let arch = u32_at(e, 28).unwrap_or(0);
        let flags = u64_at(e, 40).unwrap_or(0);
        let uncompressed = u64_at(e, 56).unwrap_or(0);
        if header < ENTRY_BYTES {
            return Err(bad(format!(
                "entry {n}: headerSize {header} is less than {ENTRY_BYTES}"
            )));
        }
        let start = off + header;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= total)
            .ok_or_else(|| {
                bad(format!(
                    "entry {n}: payload of {size} bytes at {start} lies past the end ({total})"
                ))
            })?;
        let payload = &b[start as usize..end as usize];
        off = end;
        let kind = match kind {
            KIND_PTX => EntryKind::Ptx,
            KIND_CUBIN => EntryKind::Cubin,
            _ => continue,
        };
        let what = format!("entry {n} (sm_{arch}, {kind:?})");
        let data: std::borrow::Cow<[u8]> =
            if flags & FLAG_ZSTD != 0 || payload.starts_with(&ZSTD_MAGIC) {
                zstd_entry(payload, compressed, uncompressed)
                    .map_err(|e| bad(format!("{what}: {e}")))?
                    .into()
            } else if flags & FLAG_LZ4 != 0 {
                let src = payload.get(..compressed as usize).ok_or_else(|| {
                    bad(format!(
                        "{what}: compressedSize {compressed} is past its {size}-byte payload"
                    ))
                })?;
                lz4_block(src, uncompressed)?.into()
            } else {
                payload.into()
            };
        let module = match kind {
            EntryKind::Cubin => cubin::parse(&data),
            EntryKind::Ptx => ptx::parse(until_nul(&data)),
        }
        .map_err(|e| e.within(&format!("fatbinary {what}")))?;
        entries.push(Entry { kind, arch, module });
    }
    if entries.is_empty() {
        return Err(ImageError::Unsupported(
            "fatbinary: no cubin or PTX entry to load".into(),
        ));
    }
    Ok(entries)
}

/// The entry a driver for a GPU of compute capability `major.minor` loads: the cubin of the
/// same major version built for the highest minor version it can run, else the PTX for the
/// highest architecture not above the GPU's, compiled at load.
pub fn for_device(entries: &[Entry], major: u32, minor: u32) -> Option<&Entry> {
    let dev = major * 10 + minor;
    let cubin = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Cubin && e.arch / 10 == major && e.arch <= dev)
        .max_by_key(|e| e.arch);
    cubin.or_else(|| {
        entries
            .iter()
            .filter(|e| e.kind == EntryKind::Ptx && e.arch <= dev)
            .max_by_key(|e| e.arch)
    })
}

/// The entry whose variables take the most device memory: what a charge made before the
/// driver picks must cover.
pub fn largest(entries: &[Entry]) -> Option<&Entry> {
    entries.iter().reduce(|a, b| {
        if b.module.globals.footprint > a.module.globals.footprint {
            b
        } else {
            a
        }
    })
}

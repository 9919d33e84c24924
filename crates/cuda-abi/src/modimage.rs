//! Module images as the driver receives them (`cuModuleLoadData`/`DataEx`/`FatBinary`,
//! `cuLibraryLoadData`, and the files of `cuModuleLoad`/`cuLibraryLoadFromFile`): which kind
//! an image is, the kernels it holds and the device memory its `__device__` variables take.
//! One reading shared by the simulated driver (which places the variables and finds kernels by
//! name) and the interposer (which charges the variables before the driver loads anything).
//!
//! Kinds, told apart by their first bytes:
//! - the simulator's own text format ([`crate::image`], first line `gpuslice-sim-image`);
//! - a cubin: an ELF file for `EM_CUDA` ([`crate::cubin`]);
//! - a fatbinary ([`crate::fatbin`], magic 0xBA55ED50), or the wrapper `nvcc` registers
//!   (magic 0x466243B1) pointing at one;
//! - PTX text, beginning with `.version` ([`crate::ptx`]).
//!
//! Anything else is not a module image. Every size comes from the image itself, bounds-checked
//! against the bytes given: a malformed image is an error naming the field, never a read past
//! its end or a size of zero.

use std::ffi::{CStr, c_char, c_void};
use std::fmt;

use crate::bytes::until_nul;
use crate::image::{self, Module};
use crate::{cubin, fatbin, ptx};

/// The most bytes an image read through a pointer may claim (headers past this are refused
/// rather than trusted).
pub const MAX_IMAGE_BYTES: u64 = 1 << 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Not a module image of any kind this crate knows.
    Unrecognized,
    /// An image whose headers contradict themselves or the bytes given.
    Malformed(String),
    /// A well-formed image holding something this crate cannot size.
    Unsupported(String),
}

impl ImageError {
    /// The same error, said to be about a part of a larger image.
    pub fn within(self, what: &str) -> ImageError {
        match self {
            ImageError::Unrecognized => {
                ImageError::Malformed(format!("{what}: not a cubin or PTX"))
            }
            ImageError::Malformed(m) => ImageError::Malformed(format!("{what}: {m}")),
            ImageError::Unsupported(m) => ImageError::Unsupported(format!("{what}: {m}")),
        }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Unrecognized => f.write_str(
                "not a module image (a cubin, PTX text beginning with .version, a fatbinary or its wrapper)",
            ),
            ImageError::Malformed(m) => write!(f, "malformed module image: {m}"),
            ImageError::Unsupported(m) => write!(f, "module image cannot be sized: {m}"),
        }
    }
}

/// A module image, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    Sim(Module),
    Cubin(Module),
    Ptx(Module),
    /// Every loadable entry; the driver loads one ([`Image::for_device`]).
    Fatbin(Vec<fatbin::Entry>),
}

/// What loading an image may cost before the driver says which part it loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub bytes: u64,
    /// Why the charge is not simply the image's variables (a fatbinary whose entries differ).
    pub note: Option<String>,
}

impl Image {
    /// The bytes to reserve before the load. A fatbinary is charged its largest entry: which
    /// one the driver picks depends on the GPU and the driver version, so the charge covers
    /// any of them (and is given back whole at unload).
    pub fn charge(&self) -> Charge {
        match self {
            Image::Sim(m) | Image::Cubin(m) | Image::Ptx(m) => Charge {
                bytes: m.globals.footprint,
                note: None,
            },
            Image::Fatbin(entries) => {
                let big = fatbin::largest(entries).map_or(0, |e| e.module.globals.footprint);
                let small = entries
                    .iter()
                    .map(|e| e.module.globals.footprint)
                    .min()
                    .unwrap_or(0);
                let note = (small != big).then(|| {
                    let sizes: Vec<String> = entries
                        .iter()
                        .map(|e| format!("sm_{} {:?} {}", e.arch, e.kind, e.module.globals.footprint))
                        .collect();
                    format!(
                        "a fatbinary whose entries' __device__ variables differ ({}); charging the largest, {big} bytes, since the driver picks one only as it loads",
                        sizes.join(", ")
                    )
                });
                Charge { bytes: big, note }
            }
        }
    }

    /// The module a GPU of compute capability `major.minor` loads from this image; None when a
    /// fatbinary holds nothing it can run.
    pub fn for_device(&self, major: u32, minor: u32) -> Option<&Module> {
        match self {
            Image::Sim(m) | Image::Cubin(m) | Image::Ptx(m) => Some(m),
            Image::Fatbin(e) => fatbin::for_device(e, major, minor).map(|e| &e.module),
        }
    }
}

/// Reads an image held whole in `b` (a file's contents): every size is checked against
/// `b.len()`.
pub fn read(b: &[u8]) -> Result<Image, ImageError> {
    if b.starts_with(&cubin::ELF_MAGIC) {
        return cubin::parse(b).map(Image::Cubin);
    }
    if b.starts_with(&fatbin::MAGIC.to_le_bytes()) {
        return fatbin::parse(b).map(Image::Fatbin);
    }
    let text = until_nul(b);
    if text.starts_with(image::MAGIC.as_bytes()) {
        return match image::parse(&String::from_utf8_lossy(text)) {
            Some(Ok(m)) => Ok(Image::Sim(m)),
            Some(Err(line)) => Err(ImageError::Malformed(format!(
                "simulated image: the declaration {line:?}"
            ))),
            None => Err(ImageError::Unrecognized),
        };
    }
    if ptx::looks_like_ptx(text) {
        return ptx::parse(text).map(Image::Ptx);
    }
    Err(ImageError::Unrecognized)
}

/// Whether the bytes at `p` begin with `magic`, read one at a time and no further than the
/// first that differs.
///
/// # Safety
/// `p` points to at least one readable byte, and to each next one while they match.
unsafe fn begins_with(p: *const u8, magic: &[u8]) -> bool {
    for (i, &m) in magic.iter().enumerate() {
        // SAFETY: byte `i` is read only when bytes before it matched the magic, none of which
        // is NUL, so the image (NUL-terminated text or a binary header) extends to it.
        if unsafe { *p.add(i) } != m {
            return false;
        }
    }
    true
}

/// `n` bytes at `p` as a slice, refusing claims past [`MAX_IMAGE_BYTES`].
///
/// # Safety
/// The image's own headers say it is `n` bytes long; the driver reads it on that word too.
unsafe fn bytes<'a>(p: *const u8, n: u64) -> Result<&'a [u8], ImageError> {
    if n > MAX_IMAGE_BYTES {
        return Err(ImageError::Unsupported(format!(
            "its headers claim {n} bytes, more than the {MAX_IMAGE_BYTES} read through a pointer"
        )));
    }
    // SAFETY: as the caller guarantees, the image is `n` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, n as usize) })
}

/// The fatbinary at `p`, sized by its own header.
///
/// # Safety
/// As [`read_ptr`], for a fatbinary.
unsafe fn fatbin_at<'a>(p: *const u8) -> Result<&'a [u8], ImageError> {
    // SAFETY: a fatbinary starts with its 16-byte header (the magic was checked).
    let h = unsafe { bytes(p, fatbin::HEADER_BYTES)? };
    let n = fatbin::extent(h)?;
    // SAFETY: the header says the fatbinary is `n` bytes.
    unsafe { bytes(p, n.max(fatbin::HEADER_BYTES)) }
}

/// An image copied out of the caller's memory: what is read is then exactly what a driver
/// given [`Copied::bytes`] loads, whatever another thread writes to the original meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copied {
    /// The image: a cubin or fatbinary to the end its headers give, text with its NUL.
    pub bytes: Vec<u8>,
    /// It came wrapped in a `__fatBinC_Wrapper_t` (then `bytes` is the fatbinary).
    pub wrapped: bool,
}

/// Copies the image at `p` as `cuModuleLoadData` and its kin receive it: with no length, each
/// kind sized by its own headers (a cubin by its header, section table and sections; a
/// fatbinary by `headerSize + fatSize`, found through its wrapper if it has one; text by its
/// NUL). None for a null pointer, which the driver refuses itself.
///
/// # Safety
/// `p` is null or points to an image as the driver requires one: readable for the extent its
/// headers give, text NUL-terminated. The magic numbers are compared a byte at a time, so a
/// short text image is never read past its NUL. An image whose headers lie about its length
/// is read as far as they say, as the driver would read it.
pub unsafe fn copy_ptr(p: *const c_void) -> Option<Result<Copied, ImageError>> {
    if p.is_null() {
        return None;
    }
    let p = p as *const u8;
    let plain = |b: &[u8]| {
        Ok(Copied {
            bytes: copy(b)?,
            wrapped: false,
        })
    };
    // SAFETY: throughout, reads follow the headers of the image the caller vouches for.
    let r = unsafe {
        if begins_with(p, &cubin::ELF_MAGIC) {
            let mut n = 64;
            loop {
                let b = match bytes(p, n) {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e)),
                };
                match cubin::extent(b) {
                    Ok(need) if need > n => n = need,
                    Ok(_) => break plain(b),
                    Err(e) => break Err(e),
                }
            }
        } else if begins_with(p, &fatbin::MAGIC.to_le_bytes()) {
            fatbin_at(p).and_then(plain)
        } else if begins_with(p, &fatbin::WRAPPER_MAGIC.to_le_bytes()) {
            wrapper(p).and_then(|b| {
                Ok(Copied {
                    bytes: copy(b)?,
                    wrapped: true,
                })
            })
        } else {
            plain(CStr::from_ptr(p as *const c_char).to_bytes_with_nul())
        }
    };
    Some(r)
}

/// `b` copied, or an error when there is no memory for the copy (never an abort).
fn copy(b: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut v = Vec::new();
    v.try_reserve_exact(b.len()).map_err(|_| {
        ImageError::Unsupported(format!("no host memory to copy its {} bytes", b.len()))
    })?;
    v.extend_from_slice(b);
    Ok(v)
}

/// Reads the image at `p` as the driver receives it ([`copy_ptr`], then [`read`]).
///
/// # Safety
/// As [`copy_ptr`].
pub unsafe fn read_ptr(p: *const c_void) -> Option<Result<Image, ImageError>> {
    // SAFETY: as the caller guarantees.
    unsafe { copy_ptr(p) }.map(|c| c.and_then(|c| read(&c.bytes)))
}

/// Follows a `__fatBinC_Wrapper_t` to its fatbinary.
///
/// # Safety
/// `p` is a wrapper (its magic checked) as `nvcc` lays it out on a 64-bit host.
unsafe fn wrapper<'a>(p: *const u8) -> Result<&'a [u8], ImageError> {
    // SAFETY: the wrapper is WRAPPER_BYTES long.
    let w = unsafe { bytes(p, fatbin::WRAPPER_BYTES)? };
    let version = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
    if !matches!(version, 1 | 2) {
        return Err(ImageError::Malformed(format!(
            "fatbinary wrapper: version {version}; 1 and 2 are read"
        )));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&w[8..16]);
    let data = u64::from_le_bytes(a) as usize as *const u8;
    if data.is_null() {
        return Err(ImageError::Malformed(
            "fatbinary wrapper: its data pointer is null".into(),
        ));
    }
    // SAFETY: the wrapper points at the fatbinary it wraps.
    unsafe {
        if !begins_with(data, &fatbin::MAGIC.to_le_bytes()) {
            return Err(ImageError::Malformed(
                "fatbinary wrapper: its data is not a fatbinary".into(),
            ));
        }
        fatbin_at(data)
    }
}

//! The module image format of the simulated GPU, and the device memory its `__device__`
//! variables take: one reading shared by the simulated driver (which places the variables) and
//! the interposer (which charges them before the driver loads the image).
//!
//! A simulated image is NUL-terminated text (as PTX is) whose first line is
//! `gpuslice-sim-image`; every further line is a declaration, blank lines and `#` comments
//! aside:
//!
//! ```text
//! gpuslice-sim-image
//! global NAME BYTES     a __device__ variable of BYTES bytes (decimal, > 0)
//! kernel NAME           a kernel (informational: any name launches on the simulator)
//! ```
//!
//! Variables are laid out in order, each aligned to [`GLOBAL_ALIGN`]; a module's variables
//! are one device allocation rounded up to [`GLOBAL_GRANULARITY`] (none when it has none).
//! Images that do not start with the magic line (real cubins, fatbins, PTX) are not read here.

use std::ffi::{CStr, c_char, c_void};

/// The first line of a simulated image.
pub const MAGIC: &str = "gpuslice-sim-image";
pub const GLOBAL_ALIGN: u64 = 256;
pub const GLOBAL_GRANULARITY: u64 = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    pub name: String,
    /// Offset of the variable inside the module's allocation.
    pub offset: u64,
    pub bytes: u64,
}

/// A simulated image's variables and the device bytes they take together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    pub vars: Vec<Global>,
    pub footprint: u64,
}

/// Reads a simulated image: None when `text` is not one, Err(line) naming the first malformed
/// declaration.
pub fn parse(text: &str) -> Option<Result<Globals, String>> {
    let mut lines = text.lines();
    if lines.next()?.trim_end() != MAGIC {
        return None;
    }
    let mut g = Globals::default();
    let mut end = 0u64;
    for line in lines {
        let line = line.trim();
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next(), w.next()) {
            (None, ..) => {}
            (Some(c), ..) if c.starts_with('#') => {}
            (Some("kernel"), Some(_), None, None) => {}
            (Some("global"), Some(name), Some(bytes), None) => {
                let bytes = match bytes.parse::<u64>() {
                    Ok(b) if b > 0 => b,
                    _ => return Some(Err(line.to_string())),
                };
                if g.vars.iter().any(|v| v.name == name) {
                    return Some(Err(line.to_string()));
                }
                let Some(offset) = end.checked_next_multiple_of(GLOBAL_ALIGN) else {
                    return Some(Err(line.to_string()));
                };
                let Some(e) = offset.checked_add(bytes) else {
                    return Some(Err(line.to_string()));
                };
                end = e;
                g.vars.push(Global {
                    name: name.to_string(),
                    offset,
                    bytes,
                });
            }
            _ => return Some(Err(line.to_string())),
        }
    }
    let Some(footprint) = end.checked_next_multiple_of(GLOBAL_GRANULARITY) else {
        return Some(Err("the variables together".to_string()));
    };
    g.footprint = footprint;
    Some(Ok(g))
}

/// Reads the image at `image` (as `cuModuleLoadData` receives it): None when it is not a
/// simulated image.
///
/// # Safety
/// `image` is null or points to readable memory that is either NUL-terminated or longer than
/// the magic line where it differs from it: the bytes are compared one at a time and reading
/// stops at the first that differs, so a shorter or binary image is never read past its end.
pub unsafe fn parse_ptr(image: *const c_void) -> Option<Result<Globals, String>> {
    if image.is_null() {
        return None;
    }
    let p = image as *const u8;
    for (i, &m) in MAGIC.as_bytes().iter().enumerate() {
        // SAFETY: bytes before `i` matched the magic (non-NUL), so byte `i` is inside the image.
        if unsafe { *p.add(i) } != m {
            return None;
        }
    }
    // SAFETY: a simulated image is NUL-terminated text, as the caller guarantees.
    let text = unsafe { CStr::from_ptr(image as *const c_char) };
    parse(&text.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_aligned_and_the_module_rounded() {
        let g =
            parse("gpuslice-sim-image\n# weights\nglobal a 10\nkernel busy_k\n\nglobal b 5000\n")
                .unwrap()
                .unwrap();
        assert_eq!(g.vars[0].offset, 0);
        assert_eq!(g.vars[1].offset, 256);
        assert_eq!(g.footprint, 8192);
        assert_eq!(parse("gpuslice-sim-image\n").unwrap().unwrap().footprint, 0);
    }

    #[test]
    fn other_images_are_not_read_and_malformed_ones_are_named() {
        assert_eq!(parse("\x7fELF..."), None);
        assert_eq!(unsafe { parse_ptr(c"image".as_ptr().cast()) }, None);
        for bad in [
            "global a",
            "global a 0",
            "global a -1",
            "global a 1 2",
            "data x",
            "global a 1\nglobal a 2",
        ] {
            let text = format!("{MAGIC}\n{bad}\n");
            assert!(matches!(parse(&text), Some(Err(_))), "{bad}");
        }
        let c = std::ffi::CString::new(format!("{MAGIC}\nglobal g 4097\n")).unwrap();
        let g = unsafe { parse_ptr(c.as_ptr().cast()) }.unwrap().unwrap();
        assert_eq!(g.footprint, 8192);
    }
}

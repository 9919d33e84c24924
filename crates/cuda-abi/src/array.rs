//! The device memory a CUDA array takes, by the driver's rules for every kind of array: one
//! function used both where gpuslice charges an array (the interposer) and where the simulated
//! driver takes it, so the charge and the device can never drift apart.
//!
//! Descriptor rules (as `cuArray3DCreate` documents them):
//! - 1D: `Height == 0 && Depth == 0`; 2D: `Depth == 0`; 3D: all three non-zero.
//! - `CUDA_ARRAY3D_LAYERED`: `Depth` is the number of layers (1D layered when `Height == 0`).
//! - `CUDA_ARRAY3D_CUBEMAP`: `Width == Height`, `Depth == 6` (six faces); with `LAYERED` as
//!   well, `Depth` is a non-zero multiple of 6 (six faces per layer).
//! - Mipmapped: level `l` halves width, height and (3D only) depth, each down to 1; layers and
//!   faces are never halved. There are at most `1 + log2(largest extent)` levels.
//! - `NumChannels` is 1, 2 or 4; the element is one of the plain formats below.
//!
//! An array is one device allocation: its levels and layers together, rounded up to
//! [`ARRAY_GRANULARITY`]. Anything this module cannot size is refused with
//! `CUDA_ERROR_INVALID_VALUE`, so nothing is ever created uncharged.

use crate::driver::*;

/// The unit the device allocates array memory in.
pub const ARRAY_GRANULARITY: u64 = 4096;

/// Bytes of one channel of an element of `format`; None for formats this table does not size.
pub fn element_bytes(format: CUarray_format) -> Option<u64> {
    Some(match format {
        CU_AD_FORMAT_UNSIGNED_INT8 | CU_AD_FORMAT_SIGNED_INT8 => 1,
        CU_AD_FORMAT_UNSIGNED_INT16 | CU_AD_FORMAT_SIGNED_INT16 | CU_AD_FORMAT_HALF => 2,
        CU_AD_FORMAT_UNSIGNED_INT32 | CU_AD_FORMAT_SIGNED_INT32 | CU_AD_FORMAT_FLOAT => 4,
        _ => return None,
    })
}

/// The 3D descriptor equivalent to a 2D (or 1D, `Height == 0`) one.
pub fn from_2d(d: &CUDA_ARRAY_DESCRIPTOR) -> CUDA_ARRAY3D_DESCRIPTOR {
    CUDA_ARRAY3D_DESCRIPTOR {
        Width: d.Width,
        Height: d.Height,
        Depth: 0,
        Format: d.Format,
        NumChannels: d.NumChannels,
        Flags: 0,
    }
}

/// The 3D descriptor equivalent to a pre-3.2 (`_v1`) 2D one.
pub fn from_2d_v1(d: &CUDA_ARRAY_DESCRIPTOR_v1) -> CUDA_ARRAY3D_DESCRIPTOR {
    CUDA_ARRAY3D_DESCRIPTOR {
        Width: d.Width as usize,
        Height: d.Height as usize,
        Depth: 0,
        Format: d.Format,
        NumChannels: d.NumChannels,
        Flags: 0,
    }
}

/// The current layout of a pre-3.2 (`_v1`) 3D descriptor.
pub fn from_3d_v1(d: &CUDA_ARRAY3D_DESCRIPTOR_v1) -> CUDA_ARRAY3D_DESCRIPTOR {
    CUDA_ARRAY3D_DESCRIPTOR {
        Width: d.Width as usize,
        Height: d.Height as usize,
        Depth: d.Depth as usize,
        Format: d.Format,
        NumChannels: d.NumChannels,
        Flags: d.Flags,
    }
}

/// Device bytes of an array described by `d` with `levels` mipmap levels (1 for a plain
/// array), rounded up to [`ARRAY_GRANULARITY`]; `CUDA_ERROR_INVALID_VALUE` for a descriptor the
/// driver rejects or this module cannot size.
pub fn array_bytes(d: &CUDA_ARRAY3D_DESCRIPTOR, levels: u32) -> Result<u64, CUresult> {
    const BAD: CUresult = CUDA_ERROR_INVALID_VALUE;
    let (w, h, z) = (d.Width as u64, d.Height as u64, d.Depth as u64);
    let layered = d.Flags & CUDA_ARRAY3D_LAYERED != 0;
    let cubemap = d.Flags & CUDA_ARRAY3D_CUBEMAP != 0;
    if w == 0 || levels == 0 || !matches!(d.NumChannels, 1 | 2 | 4) {
        return Err(BAD);
    }
    let element = element_bytes(d.Format).ok_or(BAD)? * d.NumChannels as u64;
    // Slices that never shrink (layers, faces) and the extents that do.
    let (slices, (h, z)) = if cubemap {
        let faces_ok = if layered { z > 0 && z % 6 == 0 } else { z == 6 };
        if w != h || !faces_ok {
            return Err(BAD);
        }
        (z, (h, 0))
    } else if layered {
        if z == 0 {
            return Err(BAD);
        }
        (z, (h, 0))
    } else {
        if h == 0 && z != 0 {
            return Err(BAD);
        }
        (1, (h, z))
    };
    let largest = w.max(h).max(z);
    if levels > 64 - largest.leading_zeros() {
        return Err(BAD);
    }
    let shrink = |x: u64, l: u32| if x == 0 { 1 } else { (x >> l).max(1) };
    let mut total = 0u64;
    for l in 0..levels {
        let level = [shrink(w, l), shrink(h, l), shrink(z, l), slices, element]
            .into_iter()
            .try_fold(1u64, |a, b| a.checked_mul(b))
            .ok_or(BAD)?;
        total = total.checked_add(level).ok_or(BAD)?;
    }
    total
        .checked_add(ARRAY_GRANULARITY - 1)
        .map(|t| t / ARRAY_GRANULARITY * ARRAY_GRANULARITY)
        .ok_or(BAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(
        w: usize,
        h: usize,
        z: usize,
        f: CUarray_format,
        c: u32,
        flags: u32,
    ) -> CUDA_ARRAY3D_DESCRIPTOR {
        CUDA_ARRAY3D_DESCRIPTOR {
            Width: w,
            Height: h,
            Depth: z,
            Format: f,
            NumChannels: c,
            Flags: flags,
        }
    }
    const F: CUarray_format = CU_AD_FORMAT_FLOAT;
    const U8: CUarray_format = CU_AD_FORMAT_UNSIGNED_INT8;
    const L: u32 = CUDA_ARRAY3D_LAYERED;
    const C: u32 = CUDA_ARRAY3D_CUBEMAP;

    #[test]
    fn every_kind_of_array() {
        // 1D, 2D, 3D.
        assert_eq!(array_bytes(&d(4096, 0, 0, U8, 1, 0), 1), Ok(4096));
        assert_eq!(array_bytes(&d(1024, 1024, 0, F, 4, 0), 1), Ok(16 << 20));
        assert_eq!(
            array_bytes(&d(64, 64, 64, CU_AD_FORMAT_HALF, 2, 0), 1),
            Ok(1 << 20)
        );
        // Layered: every layer, at every level.
        assert_eq!(array_bytes(&d(1024, 0, 8, U8, 4, L), 1), Ok(32 << 10));
        assert_eq!(array_bytes(&d(512, 512, 10, F, 1, L), 1), Ok(10 << 20));
        // Cubemap: six faces; layered cubemap: six per layer.
        assert_eq!(array_bytes(&d(512, 512, 6, F, 1, C), 1), Ok(6 << 20));
        assert_eq!(array_bytes(&d(512, 512, 12, F, 1, C | L), 1), Ok(12 << 20));
        // Small arrays take a whole allocation unit.
        assert_eq!(array_bytes(&d(3, 0, 0, U8, 1, 0), 1), Ok(ARRAY_GRANULARITY));
    }

    #[test]
    fn mipmaps_halve_extents_but_never_layers() {
        // 2D layered, 3 levels: (512² + 256² + 128²) × 4 B × 10 layers.
        let per_layer = (512 * 512 + 256 * 256 + 128 * 128) * 4;
        assert_eq!(
            array_bytes(&d(512, 512, 10, F, 1, L), 3),
            Ok(per_layer * 10)
        );
        // 3D: depth halves too.
        let full = 64 * 64 * 64 + 32 * 32 * 32 + 16 * 16 * 16;
        assert_eq!(array_bytes(&d(64, 64, 64, U8, 1, 0), 3), Ok(full));
        // Cubemap layered: faces never halve.
        let face = (256 * 256 + 128 * 128) * 4;
        assert_eq!(array_bytes(&d(256, 256, 18, F, 1, C | L), 2), Ok(face * 18));
        // A full chain down to 1×1.
        assert!(array_bytes(&d(1024, 1024, 0, U8, 1, 0), 11).is_ok());
        assert_eq!(
            array_bytes(&d(1024, 1024, 0, U8, 1, 0), 12),
            Err(CUDA_ERROR_INVALID_VALUE)
        );
    }

    #[test]
    fn descriptors_the_driver_rejects() {
        let bad = Err(CUDA_ERROR_INVALID_VALUE);
        assert_eq!(array_bytes(&d(0, 4, 0, F, 1, 0), 1), bad);
        assert_eq!(array_bytes(&d(4, 4, 0, F, 3, 0), 1), bad);
        assert_eq!(array_bytes(&d(4, 4, 0, 0x7f, 1, 0), 1), bad);
        assert_eq!(array_bytes(&d(4, 4, 0, F, 1, 0), 0), bad);
        assert_eq!(array_bytes(&d(4, 0, 4, F, 1, 0), 1), bad);
        assert_eq!(array_bytes(&d(4, 4, 0, F, 1, L), 1), bad);
        assert_eq!(array_bytes(&d(4, 8, 6, F, 1, C), 1), bad);
        assert_eq!(array_bytes(&d(4, 4, 5, F, 1, C), 1), bad);
        assert_eq!(array_bytes(&d(4, 4, 7, F, 1, C | L), 1), bad);
        assert_eq!(array_bytes(&d(usize::MAX, usize::MAX, 0, F, 4, 0), 1), bad);
    }

    #[test]
    fn old_layouts_size_alike() {
        let v1 = CUDA_ARRAY_DESCRIPTOR_v1 {
            Width: 100,
            Height: 7,
            Format: F,
            NumChannels: 2,
        };
        let v2 = CUDA_ARRAY_DESCRIPTOR {
            Width: 100,
            Height: 7,
            Format: F,
            NumChannels: 2,
        };
        assert_eq!(
            array_bytes(&from_2d_v1(&v1), 1),
            array_bytes(&from_2d(&v2), 1)
        );
        let v1 = CUDA_ARRAY3D_DESCRIPTOR_v1 {
            Width: 8,
            Height: 8,
            Depth: 6,
            Format: F,
            NumChannels: 1,
            Flags: C,
        };
        assert_eq!(
            array_bytes(&from_3d_v1(&v1), 1),
            array_bytes(&d(8, 8, 6, F, 1, C), 1)
        );
    }
}

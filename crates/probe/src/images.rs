//! `gpuslice-probe exact images|image-race`: real module images (hand-built cubins, PTX and
//! fatbinaries, as a CUDA toolchain would write them) loaded every way a program loads them,
//! with the ledger and the device's count recorded after every step (see exact.rs).

use gpuslice_cuda_abi::driver::*;
use gpuslice_cuda_abi::fatbin::EntryKind;
use gpuslice_cuda_abi::imagegen::{self, Pack, Var};
use std::ffi::{CString, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::exact::Run;

fn cubin(bytes: u64) -> Vec<u8> {
    let v = Var {
        name: "weights",
        bytes,
        init: false,
    };
    imagegen::cubin(&["train"], &["helper"], &[v])
}

fn ptx(bytes: u64) -> Vec<u8> {
    CString::new(imagegen::ptx(&["train"], &[("weights", bytes)]))
        .unwrap()
        .into_bytes_with_nul()
}

/// A file holding `img`, removed when dropped.
struct TempImage(std::path::PathBuf, CString);

impl TempImage {
    fn new(img: &[u8]) -> TempImage {
        let p = std::env::temp_dir().join(format!("gpuslice-probe-image-{}", std::process::id()));
        std::fs::write(&p, img).unwrap_or_else(|e| super::die(format!("{}: {e}", p.display())));
        let c = CString::new(p.to_str().unwrap()).unwrap();
        TempImage(p, c)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const KINDS: [&str; 8] = [
    "cubin",
    "ptx",
    "fatbin",
    "fatbin_zstd",
    "wrapper",
    "cubin_file",
    "library",
    "library_file",
];

/// Loads `img` the way `kind` says; Ok(handle) or the driver's error.
unsafe fn load(run: &Run, kind: &str, img: &[u8]) -> (CUresult, usize) {
    let cu = run.cu;
    let (no, nv) = (std::ptr::null_mut(), std::ptr::null_mut());
    let mut h: *mut c_void = std::ptr::null_mut();
    let r = unsafe {
        match kind {
            "cubin" | "ptx" => (cu.module_load)(h_mod(&mut h), img.as_ptr().cast()),
            "fatbin" | "fatbin_zstd" => (cu.module_load_fatbin)(h_mod(&mut h), img.as_ptr().cast()),
            "wrapper" => {
                let w = imagegen::wrapper(img);
                (cu.module_load_fatbin)(h_mod(&mut h), (&w as *const imagegen::Wrapper).cast())
            }
            "cubin_file" => {
                let f = TempImage::new(img);
                (cu.module_load_file)(h_mod(&mut h), f.1.as_ptr())
            }
            "library" => {
                (cu.library_load)(h_lib(&mut h), img.as_ptr().cast(), no, nv, 0, no, nv, 0)
            }
            _ => {
                let f = TempImage::new(img);
                (cu.library_load_file)(h_lib(&mut h), f.1.as_ptr(), no, nv, 0, no, nv, 0)
            }
        }
    };
    (r, h as usize)
}

fn h_mod(h: &mut *mut c_void) -> *mut CUmodule {
    (h as *mut *mut c_void).cast()
}

fn h_lib(h: &mut *mut c_void) -> *mut CUlibrary {
    (h as *mut *mut c_void).cast()
}

fn is_library(kind: &str) -> bool {
    kind.starts_with("library")
}

/// Every image kind, every way of loading it, first with variables of `big` bytes, then
/// `small`; then a fatbinary whose entries differ (sm_80: `mixed`, sm_90: `small`); then
/// images that cannot be sized.
pub fn images(run: &mut Run, big: usize, small: usize, mixed: usize) {
    let cu = run.cu;
    for kind in KINDS {
        for (label, bytes) in [("big", big as u64), ("small", small as u64)] {
            let img = match kind {
                "cubin" | "cubin_file" | "library_file" => cubin(bytes),
                "ptx" | "library" => ptx(bytes),
                _ => imagegen::fatbin_packed(
                    &[
                        (EntryKind::Cubin, 90, &cubin(bytes)),
                        (EntryKind::Ptx, 90, &ptx(bytes)),
                    ],
                    if kind == "fatbin_zstd" {
                        Pack::Zstd
                    } else {
                        Pack::Lz4
                    },
                ),
            };
            let (r, h) = unsafe { load(run, kind, &img) };
            run.step(&format!("{kind}_load_{label}"), r);
            if r != CUDA_SUCCESS {
                continue;
            }
            for (name, what) in [(c"train", "kernel"), (c"helper", "missing")] {
                let r = unsafe {
                    if is_library(kind) {
                        let mut k: CUkernel = std::ptr::null_mut();
                        (cu.library_kernel)(&mut k, h as CUlibrary, name.as_ptr())
                    } else {
                        let mut f: CUfunction = std::ptr::null_mut();
                        (cu.module_function)(&mut f, h as CUmodule, name.as_ptr())
                    }
                };
                run.step(&format!("{kind}_{what}"), r);
            }
            let (mut p, mut n) = (0, 0);
            let r = unsafe {
                if is_library(kind) {
                    (cu.library_global)(&mut p, &mut n, h as CUlibrary, c"weights".as_ptr())
                } else {
                    (cu.module_global)(&mut p, &mut n, h as CUmodule, c"weights".as_ptr())
                }
            };
            run.step(&format!("{kind}_global_{n}"), r);
            let r = unsafe {
                if is_library(kind) {
                    (cu.library_unload)(h as CUlibrary)
                } else {
                    (cu.module_unload)(h as CUmodule)
                }
            };
            run.step(&format!("{kind}_unload"), r);
        }
    }
    let img = imagegen::fatbin(
        &[
            (EntryKind::Cubin, 80, &cubin(mixed as u64)),
            (EntryKind::Cubin, 90, &cubin(small as u64)),
        ],
        false,
    );
    let (r, h) = unsafe { load(run, "fatbin", &img) };
    run.step("mixed_load", r);
    if r == CUDA_SUCCESS {
        run.step("mixed_unload", unsafe { (cu.module_unload)(h as CUmodule) });
    }
    // Images that cannot be sized: text that is no image, a cubin file whose section table
    // lies past its end (a file has a length to check against; an image in memory is read as
    // far as its headers say, as the driver reads it).
    let mut cut = cubin(small as u64);
    let n = cut.len() as u64;
    cut[40..48].copy_from_slice(&n.to_le_bytes());
    for (name, how, img) in [
        ("not_an_image", "fatbin", b"image\0".to_vec()),
        ("past_its_end", "cubin_file", cut),
    ] {
        let (r, h) = unsafe { load(run, how, &img) };
        run.step(&format!("{name}_load"), r);
        if r == CUDA_SUCCESS {
            run.step("unload", unsafe { (cu.module_unload)(h as CUmodule) });
        }
    }
}

/// `n` loads of a cubin while another thread flips its `.nv.global` size between `small` and
/// `big`: what the driver loads must be what was charged, whichever size each read sees.
pub fn race(run: &mut Run, small: usize, big: usize, n: usize) {
    let cu = run.cu;
    let img = cubin(small as u64);
    // The section header's sh_size is the last place the size appears (the symbol's st_size
    // comes first); the image lives in u64s so the field can be written atomically.
    let at = img
        .windows(8)
        .rposition(|w| w == (small as u64).to_le_bytes())
        .unwrap();
    assert_eq!(at % 8, 0, "section headers are 8-byte aligned");
    let words: Arc<Vec<AtomicU64>> = Arc::new(
        img.chunks(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a[..c.len()].copy_from_slice(c);
                AtomicU64::new(u64::from_le_bytes(a))
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (words, stop) = (words.clone(), stop.clone());
        std::thread::spawn(move || {
            let field = &words[at / 8];
            while !stop.load(Ordering::Relaxed) {
                field.store(big as u64, Ordering::Relaxed);
                std::hint::spin_loop();
                field.store(small as u64, Ordering::Relaxed);
                std::hint::spin_loop();
            }
        })
    };
    let base = words.as_ptr() as *const c_void;
    for _ in 0..n {
        let mut m = std::ptr::null_mut();
        let r = run.step("load", unsafe { (cu.module_load)(&mut m, base) });
        if r == CUDA_SUCCESS {
            run.step("unload", unsafe { (cu.module_unload)(m) });
        }
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
}

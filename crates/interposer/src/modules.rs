//! Module `__device__` variables: the driver places a module's variables in device memory when
//! it loads the module and frees them when it unloads it (or its context ends), so they are
//! charged from before the load to the unload, like any other allocation.
//!
//! Their size is read from the image before the driver sees it (`gpuslice_cuda_abi::image`); an
//! image whose declarations are malformed is refused with `CUDA_ERROR_INVALID_IMAGE` before the
//! driver loads anything.

use gpuslice_cuda_abi::driver::*;
use gpuslice_cuda_abi::image;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};

use crate::book::Key;
use crate::memory::{freed, object_hook};
use crate::real::call_real;
use crate::tenant::guard;

/// Loads a module through `call`, charging the variables `globals` declares.
unsafe fn load(
    m: *mut CUmodule,
    globals: Option<Result<image::Globals, String>>,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let bytes = match globals {
        // Not a simulated image: nothing this build can size is declared in it.
        None => return call(),
        Some(Err(_)) => return CUDA_ERROR_INVALID_IMAGE,
        Some(Ok(g)) if g.footprint == 0 => return call(),
        Some(Ok(g)) => g.footprint,
    };
    // SAFETY: `m` is the caller's output slot, passed on unchanged.
    unsafe { object_hook(m.cast(), Some(Ok(bytes)), Key::Module, call) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoad(m: *mut CUmodule, fname: *const c_char) -> CUresult {
    guard(|| unsafe {
        let call = || call_real!(CUDA, cuModuleLoad: unsafe extern "C" fn(*mut CUmodule, *const c_char) -> CUresult, m, fname);
        // An unreadable file goes to the driver, which reports it.
        let globals = fname
            .as_ref()
            .and_then(|_| std::fs::read(&*CStr::from_ptr(fname).to_string_lossy()).ok())
            .and_then(|b| image::parse(&String::from_utf8_lossy(&b)));
        load(m, globals, call)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(m: *mut CUmodule, img: *const c_void) -> CUresult {
    guard(|| unsafe {
        let call = || call_real!(CUDA, cuModuleLoadData: unsafe extern "C" fn(*mut CUmodule, *const c_void) -> CUresult, m, img);
        load(m, image::parse_ptr(img), call)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    m: *mut CUmodule,
    img: *const c_void,
    n: c_uint,
    opts: *mut c_int,
    vals: *mut *mut c_void,
) -> CUresult {
    guard(|| unsafe {
        let call = || call_real!(CUDA, cuModuleLoadDataEx: unsafe extern "C" fn(*mut CUmodule, *const c_void, c_uint, *mut c_int, *mut *mut c_void) -> CUresult, m, img, n, opts, vals);
        load(m, image::parse_ptr(img), call)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadFatBinary(m: *mut CUmodule, img: *const c_void) -> CUresult {
    guard(|| unsafe {
        let call = || call_real!(CUDA, cuModuleLoadFatBinary: unsafe extern "C" fn(*mut CUmodule, *const c_void) -> CUresult, m, img);
        load(m, image::parse_ptr(img), call)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleUnload(m: CUmodule) -> CUresult {
    guard(|| {
        freed(
            Key::Module(m as usize),
            || call_real!(CUDA, cuModuleUnload: unsafe extern "C" fn(CUmodule) -> CUresult, m),
        )
    })
}

/// Loads a library through `call`, charging the variables `globals` declares in the current
/// context, where the driver places them.
unsafe fn load_library(
    lib: *mut CUlibrary,
    globals: Option<Result<image::Globals, String>>,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    // SAFETY: `lib` is the caller's output slot, passed on unchanged; a library handle keys
    // its record like a module's (the driver's handles are distinct objects).
    unsafe { load(lib.cast(), globals, call) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryLoadData(
    lib: *mut CUlibrary,
    code: *const c_void,
    jo: *mut c_int,
    jv: *mut *mut c_void,
    nj: c_uint,
    lo: *mut c_int,
    lv: *mut *mut c_void,
    nl: c_uint,
) -> CUresult {
    guard(|| unsafe {
        let call = || call_real!(CUDA, cuLibraryLoadData: unsafe extern "C" fn(*mut CUlibrary, *const c_void, *mut c_int, *mut *mut c_void, c_uint, *mut c_int, *mut *mut c_void, c_uint) -> CUresult, lib, code, jo, jv, nj, lo, lv, nl);
        load_library(lib, image::parse_ptr(code), call)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryLoadFromFile(
    lib: *mut CUlibrary,
    fname: *const c_char,
    jo: *mut c_int,
    jv: *mut *mut c_void,
    nj: c_uint,
    lo: *mut c_int,
    lv: *mut *mut c_void,
    nl: c_uint,
) -> CUresult {
    guard(|| unsafe {
        let call = || call_real!(CUDA, cuLibraryLoadFromFile: unsafe extern "C" fn(*mut CUlibrary, *const c_char, *mut c_int, *mut *mut c_void, c_uint, *mut c_int, *mut *mut c_void, c_uint) -> CUresult, lib, fname, jo, jv, nj, lo, lv, nl);
        let globals = fname
            .as_ref()
            .and_then(|_| std::fs::read(&*CStr::from_ptr(fname).to_string_lossy()).ok())
            .and_then(|b| image::parse(&String::from_utf8_lossy(&b)));
        load_library(lib, globals, call)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryUnload(lib: CUlibrary) -> CUresult {
    guard(|| {
        freed(
            Key::Module(lib as usize),
            || call_real!(CUDA, cuLibraryUnload: unsafe extern "C" fn(CUlibrary) -> CUresult, lib),
        )
    })
}

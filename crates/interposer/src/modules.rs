//! Module `__device__` variables: the driver places a module's variables in device memory when
//! it loads the module and frees them when it unloads it (or its context ends), so they are
//! charged from before the load to the unload, like any other allocation.
//!
//! Their size is read from the image before the driver sees it (`gpuslice_cuda_abi::modimage`:
//! cubins, PTX, fatbinaries and their wrappers, and the simulator's own format). The image is
//! first copied out of the program's memory (or its file read once), and the driver is handed
//! that copy: what was sized is exactly what is loaded, whatever another thread writes to the
//! original or the file meanwhile. A file load reaches the driver as the matching load from
//! memory. An image that cannot be read or sized (not a module image, malformed, compressed
//! in a form this build cannot read) is refused with `CUDA_ERROR_INVALID_IMAGE` and one line on
//! stderr before the driver loads anything. A fatbinary is charged its largest entry, since
//! the driver picks one only as it loads.

use gpuslice_cuda_abi::driver::*;
use gpuslice_cuda_abi::fatbin::WRAPPER_MAGIC;
use gpuslice_cuda_abi::modimage::{self, Image, ImageError};
use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::Mutex;

use crate::book::Key;
use crate::memory::{freed, object_hook};
use crate::real::call_real;
use crate::tenant::guard;

/// The copy of an image the driver was given, kept until the module is unloaded: a driver
/// that loads kernels lazily may read the image after the load call returns.
struct Kept {
    _bytes: Vec<u8>,
    _wrapper: Option<Box<[u64; 3]>>,
}

// SAFETY: `Kept` owns its buffers; the raw addresses inside the wrapper point into them.
unsafe impl Send for Kept {}

/// Module and library handle → the image copy its driver call was given.
static KEPT: Mutex<BTreeMap<usize, Kept>> = Mutex::new(BTreeMap::new());

fn keep(handle: usize, k: Kept) {
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(handle, k);
}

fn unkeep(handle: usize) {
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&handle);
}

/// An image read and ready for the driver: `ptr` points into `kept`, which holds exactly the
/// bytes `image` was read from.
struct Staged {
    image: Image,
    ptr: *const c_void,
    kept: Kept,
}

/// Copies and reads the image at `p`. None for a null pointer, which the driver refuses.
///
/// # Safety
/// `p` is as `cuModuleLoadData` requires (see `modimage::copy_ptr`).
unsafe fn stage(p: *const c_void) -> Option<Result<Staged, ImageError>> {
    // SAFETY: as the caller guarantees.
    let c = match unsafe { modimage::copy_ptr(p) }? {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let image = match modimage::read(&c.bytes) {
        Ok(i) => i,
        Err(e) => return Some(Err(e)),
    };
    // A wrapped fatbinary is handed over wrapped, as it came, around the copy.
    let wrapper = c.wrapped.then(|| {
        // SAFETY: `p` is a wrapper (copy_ptr found its magic): two u32 then two pointers.
        let (version, rest) = unsafe { (*(p as *const u32).add(1), *(p as *const u64).add(2)) };
        Box::new([
            WRAPPER_MAGIC as u64 | (version as u64) << 32,
            c.bytes.as_ptr() as u64,
            rest,
        ])
    });
    let ptr = match &wrapper {
        Some(w) => w.as_ptr() as *const c_void,
        None => c.bytes.as_ptr() as *const c_void,
    };
    Some(Ok(Staged {
        image,
        ptr,
        kept: Kept {
            _bytes: c.bytes,
            _wrapper: wrapper,
        },
    }))
}

/// Reads the image in file `fname` once. None when there is no name or the file cannot be
/// read: the driver's own file load reports that.
///
/// # Safety
/// `fname` is null or a NUL-terminated path.
unsafe fn stage_file(fname: *const c_char) -> Option<Result<Staged, ImageError>> {
    if fname.is_null() {
        return None;
    }
    // SAFETY: as the caller guarantees.
    let path = unsafe { CStr::from_ptr(fname) }
        .to_string_lossy()
        .into_owned();
    let mut bytes = std::fs::read(path).ok()?;
    // Text images are NUL-terminated in memory; binary ones ignore what follows them.
    bytes.push(0);
    let image = match modimage::read(&bytes) {
        Ok(i) => i,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(Staged {
        image,
        ptr: bytes.as_ptr() as *const c_void,
        kept: Kept {
            _bytes: bytes,
            _wrapper: None,
        },
    }))
}

/// Loads a module (or library) whose handle the driver writes to `out`: `staged` is the image
/// read, `call` the driver's load of the copy at the pointer it is given, `unread` the
/// driver's own call for an image that was not read (a null pointer, a missing file).
unsafe fn load(
    out: *mut c_void,
    staged: Option<Result<Staged, ImageError>>,
    call: impl FnOnce(*const c_void) -> CUresult,
    unread: impl FnOnce() -> CUresult,
) -> CUresult {
    let s = match staged {
        None => return unread(),
        Some(Err(e)) => {
            eprintln!("gpuslice: refusing to load a module: {e}");
            return CUDA_ERROR_INVALID_IMAGE;
        }
        Some(Ok(s)) => s,
    };
    let charge = s.image.charge();
    if let Some(note) = &charge.note {
        eprintln!("gpuslice: {note}");
    }
    let ptr = s.ptr;
    let r = if charge.bytes == 0 {
        call(ptr)
    } else {
        // SAFETY: `out` is the caller's output slot, passed on unchanged.
        unsafe {
            object_hook(
                out as *const usize,
                Some(Ok(charge.bytes)),
                Key::Module,
                || call(ptr),
            )
        }
    };
    if r == CUDA_SUCCESS && !out.is_null() {
        // SAFETY: the driver wrote the new handle to `out`.
        keep(unsafe { *(out as *const usize) }, s.kept);
    }
    r
}

type LoadData = unsafe extern "C" fn(*mut CUmodule, *const c_void) -> CUresult;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoad(m: *mut CUmodule, fname: *const c_char) -> CUresult {
    guard(|| unsafe {
        let call = |p| call_real!(CUDA, cuModuleLoadData: LoadData, m, p);
        let unread = || call_real!(CUDA, cuModuleLoad: unsafe extern "C" fn(*mut CUmodule, *const c_char) -> CUresult, m, fname);
        load(m.cast(), stage_file(fname), call, unread)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(m: *mut CUmodule, img: *const c_void) -> CUresult {
    guard(|| unsafe {
        let call = |p| call_real!(CUDA, cuModuleLoadData: LoadData, m, p);
        load(m.cast(), stage(img), call, || call(img))
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
        let call = |p| call_real!(CUDA, cuModuleLoadDataEx: unsafe extern "C" fn(*mut CUmodule, *const c_void, c_uint, *mut c_int, *mut *mut c_void) -> CUresult, m, p, n, opts, vals);
        load(m.cast(), stage(img), call, || call(img))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadFatBinary(m: *mut CUmodule, img: *const c_void) -> CUresult {
    guard(|| unsafe {
        let call = |p| call_real!(CUDA, cuModuleLoadFatBinary: LoadData, m, p);
        load(m.cast(), stage(img), call, || call(img))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleUnload(m: CUmodule) -> CUresult {
    guard(|| {
        let r = freed(
            Key::Module(m as usize),
            || call_real!(CUDA, cuModuleUnload: unsafe extern "C" fn(CUmodule) -> CUresult, m),
        );
        if r == CUDA_SUCCESS {
            unkeep(m as usize);
        }
        r
    })
}

type LibraryLoadData = unsafe extern "C" fn(
    *mut CUlibrary,
    *const c_void,
    *mut c_int,
    *mut *mut c_void,
    c_uint,
    *mut c_int,
    *mut *mut c_void,
    c_uint,
) -> CUresult;

// A library's variables are charged in the current context, where the driver places them; its
// handle keys its record like a module's (the driver's handles are distinct objects).

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
        let call = |p| call_real!(CUDA, cuLibraryLoadData: LibraryLoadData, lib, p, jo, jv, nj, lo, lv, nl);
        load(lib.cast(), stage(code), call, || call(code))
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
        let call = |p| call_real!(CUDA, cuLibraryLoadData: LibraryLoadData, lib, p, jo, jv, nj, lo, lv, nl);
        let unread = || call_real!(CUDA, cuLibraryLoadFromFile: unsafe extern "C" fn(*mut CUlibrary, *const c_char, *mut c_int, *mut *mut c_void, c_uint, *mut c_int, *mut *mut c_void, c_uint) -> CUresult, lib, fname, jo, jv, nj, lo, lv, nl);
        load(lib.cast(), stage_file(fname), call, unread)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryUnload(lib: CUlibrary) -> CUresult {
    guard(|| {
        let r = freed(
            Key::Module(lib as usize),
            || call_real!(CUDA, cuLibraryUnload: unsafe extern "C" fn(CUlibrary) -> CUresult, lib),
        );
        if r == CUDA_SUCCESS {
            unkeep(lib as usize);
        }
        r
    })
}

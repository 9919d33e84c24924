//! Reaching the real driver and NVML from inside the interposer.
//!
//! Never call the exported `dlsym` from here: it is ours. The real one comes from `dlvsym`
//! (which we do not override), resolved in a load-time constructor so it is ready before any
//! program code can call `dlsym`.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

pub type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// The real `dlsym`. Read by the naked trampoline in `lib.rs`, so it must stay a plain static.
#[unsafe(no_mangle)]
pub static GPUSLICE_REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

pub fn init_real_dlsym() {
    if !GPUSLICE_REAL_DLSYM.load(Ordering::Acquire).is_null() {
        return;
    }
    for ver in [c"GLIBC_2.34", c"GLIBC_2.2.5"] {
        let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), ver.as_ptr()) };
        if !p.is_null() {
            GPUSLICE_REAL_DLSYM.store(p, Ordering::Release);
            return;
        }
    }
}

pub fn real_dlsym() -> DlsymFn {
    init_real_dlsym();
    let p = GPUSLICE_REAL_DLSYM.load(Ordering::Acquire);
    assert!(!p.is_null(), "gpuslice: cannot find the C library's dlsym");
    unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(p) }
}

/// A library opened once per process, by SONAME (the same object the program itself loads).
pub struct Library {
    soname: &'static CStr,
    handle: AtomicPtr<c_void>,
}

impl Library {
    const fn new(soname: &'static CStr) -> Self {
        Self {
            soname,
            handle: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    fn handle(&self) -> *mut c_void {
        let h = self.handle.load(Ordering::Acquire);
        if !h.is_null() {
            return h;
        }
        let mut h =
            unsafe { libc::dlopen(self.soname.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if h.is_null() {
            h = unsafe { libc::dlopen(self.soname.as_ptr(), libc::RTLD_NOW) };
        }
        if !h.is_null() {
            self.handle.store(h, Ordering::Release);
        }
        h
    }

    /// The library's own definition of `name` (its dependency scope, where our exports are absent).
    pub fn sym(&self, name: &CStr) -> *mut c_void {
        let h = self.handle();
        if h.is_null() {
            return std::ptr::null_mut();
        }
        unsafe { real_dlsym()(h, name.as_ptr()) }
    }
}

pub static CUDA: Library = Library::new(c"libcuda.so.1");
pub static NVML: Library = Library::new(c"libnvidia-ml.so.1");

/// A real function resolved on first use and cached.
pub struct RealFn {
    lib: &'static Library,
    name: &'static CStr,
    ptr: AtomicPtr<c_void>,
}

impl RealFn {
    pub const fn new(lib: &'static Library, name: &'static CStr) -> Self {
        Self {
            lib,
            name,
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    #[inline]
    pub fn get(&self) -> *mut c_void {
        let p = self.ptr.load(Ordering::Relaxed);
        if !p.is_null() {
            return p;
        }
        let p = self.lib.sym(self.name);
        self.ptr.store(p, Ordering::Relaxed);
        p
    }
}

/// Calls the real driver function `$name` with type `$ty`, or answers CUDA_ERROR_NOT_FOUND if
/// the driver lacks it (as calling a missing entry point through cuGetProcAddress would).
macro_rules! call_real {
    ($lib:ident, $name:ident : $ty:ty $(, $arg:expr)* $(,)?) => {{
        static F: $crate::real::RealFn = $crate::real::RealFn::new(&$crate::real::$lib, {
            const N: &str = concat!(stringify!($name), "\0");
            match std::ffi::CStr::from_bytes_with_nul(N.as_bytes()) { Ok(c) => c, Err(_) => panic!() }
        });
        let p = F.get();
        if p.is_null() {
            $crate::real::missing(stringify!($lib))
        } else {
            #[allow(unused_unsafe)]
            let r = unsafe { std::mem::transmute::<*mut std::ffi::c_void, $ty>(p)($($arg),*) };
            r
        }
    }};
}
pub(crate) use call_real;

pub fn missing(lib: &str) -> c_int {
    if lib == "NVML" {
        gpuslice_cuda_abi::nvml::NVML_ERROR_FUNCTION_NOT_FOUND
    } else {
        gpuslice_cuda_abi::driver::CUDA_ERROR_NOT_FOUND
    }
}

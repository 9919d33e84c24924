//! `cuGetProcAddress`: from a base name, CUDA version and flags to one of this library's functions.

use std::ffi::{CStr, c_char, c_int, c_void};

use gpuslice_cuda_abi::driver::*;
use gpuslice_cuda_abi::generated::{ResolveError, resolve_symbol};
use std::sync::{Mutex, OnceLock};

use crate::*;

/// Which exported symbol serves `name` for a caller built against `version`: the table
/// generated from cuda.h and cudaTypedefs.h, the same one the interposer reads.
pub fn variant_for(
    name: &str,
    version: i32,
    per_thread: bool,
) -> Result<&'static str, ResolveError> {
    resolve_symbol(name, version, per_thread)
}

/// With `GPUSLICE_SIM_TRACE_LOOKUPS=FILE`, every `cuGetProcAddress` request that reaches this
/// driver is appended to FILE, so a test can show that none bypassed the interposer.
fn trace(name: &str, version: c_int, flags: u64) {
    use std::io::Write;
    static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    let f = FILE.get_or_init(|| {
        let p = std::env::var_os("GPUSLICE_SIM_TRACE_LOOKUPS")?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
            .map(Mutex::new)
    });
    if let Some(f) = f {
        let _ = writeln!(
            f.lock().unwrap_or_else(|e| e.into_inner()),
            "{name} {version} {flags}"
        );
    }
}

/// The address of the exported function `sym`.
pub(crate) fn export_address(sym: &str) -> Option<*mut c_void> {
    match sym {
        "cuGetProcAddress" => Some(cuGetProcAddress as *const () as *mut c_void),
        "cuGetProcAddress_v2" => Some(cuGetProcAddress_v2 as *const () as *mut c_void),
        _ => crate::api_device::exports_device(sym)
            .or_else(|| crate::api_mem::exports_mem(sym))
            .or_else(|| crate::api_exec::exports_exec(sym))
            .or_else(|| crate::api_share::exports_share(sym)),
    }
}

unsafe fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> R {
    if symbol.is_null()
        || pfn.is_null()
        || flags
            & !(CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)
            != 0
    {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let set_status = |s: c_int| {
        if !status.is_null() {
            unsafe { *status = s };
        }
    };
    unsafe { *pfn = std::ptr::null_mut() };
    let name = unsafe { CStr::from_ptr(symbol) }.to_string_lossy();
    let per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0;
    trace(&name, version, flags);
    match variant_for(&name, version, per_thread) {
        Ok(sym) => match export_address(sym) {
            Some(p) => {
                unsafe { *pfn = p };
                set_status(CU_GET_PROC_ADDRESS_SUCCESS);
                Ok(())
            }
            None => {
                set_status(CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
                Err(CUDA_ERROR_NOT_FOUND)
            }
        },
        Err(ResolveError::NotFound) => {
            set_status(CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
            Err(CUDA_ERROR_NOT_FOUND)
        }
        Err(ResolveError::VersionNotSufficient) => {
            set_status(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
            Err(CUDA_ERROR_NOT_FOUND)
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    guard(|| unsafe { get_proc_address(symbol, pfn, version, flags, std::ptr::null_mut()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    guard(|| unsafe { get_proc_address(symbol, pfn, version, flags, status) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_functions_this_driver_implements_are_reachable_at_their_current_version() {
        for name in [
            "cuMemAlloc",
            "cuMemFree",
            "cuLaunchKernel",
            "cuCtxCreate",
            "cuGraphInstantiate",
            "cuMemAllocAsync",
            "cuGetProcAddress",
        ] {
            let sym = variant_for(name, DRIVER_VERSION, false).unwrap();
            assert!(export_address(sym).is_some(), "{name} -> {sym}");
        }
        assert_eq!(
            variant_for("cuMemAllocAsync", 11010, false),
            Err(ResolveError::VersionNotSufficient)
        );
    }
}

//! The two doors through which programs find driver functions without linking them: `dlsym` and
//! `cuGetProcAddress`. Both hand out our hook wherever we govern the function.
//!
//! The CUDA runtime `dlopen`s the driver, fetches `cuGetProcAddress` with `dlsym` and asks it for
//! every other entry point, so exporting `cu*` symbols alone would catch nothing it does.

use gpuslice_cuda_abi::driver::*;
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use crate::real::{CUDA, call_real, real_dlsym};
use crate::tenant::guard;

macro_rules! hooks {
    ($($module:ident :: $name:ident),* $(,)?) => {
        /// Every function the interposer exports and hands out in place of the real one.
        pub const HOOKED: &[&str] = &[$(stringify!($name)),*];

        pub fn hook_for(name: &[u8]) -> Option<*mut c_void> {
            $( if name == stringify!($name).as_bytes() { return Some(crate::$module::$name as *mut c_void); } )*
            None
        }
    };
}

hooks! {
    context::cuInit,
    lookup::cuGetProcAddress, lookup::cuGetProcAddress_v2,
    context::cuCtxCreate, context::cuCtxCreate_v2, context::cuCtxCreate_v3, context::cuCtxCreate_v4,
    context::cuCtxDestroy, context::cuCtxDestroy_v2,
    context::cuDevicePrimaryCtxRetain, context::cuDevicePrimaryCtxRelease, context::cuDevicePrimaryCtxRelease_v2,
    context::cuDevicePrimaryCtxReset, context::cuDevicePrimaryCtxReset_v2,
    memory::cuMemAlloc, memory::cuMemAlloc_v2, memory::cuMemAllocManaged, memory::cuMemAllocPitch, memory::cuMemAllocPitch_v2,
    memory::cuMemFree, memory::cuMemFree_v2,
    memory::cuMemCreate, memory::cuMemRelease,
    memory::cuArrayCreate, memory::cuArrayCreate_v2, memory::cuArray3DCreate, memory::cuArray3DCreate_v2,
    memory::cuArrayDestroy, memory::cuMipmappedArrayCreate, memory::cuMipmappedArrayDestroy,
    modules::cuModuleLoad, modules::cuModuleLoadData, modules::cuModuleLoadDataEx, modules::cuModuleLoadFatBinary, modules::cuModuleUnload,
    modules::cuLibraryLoadData, modules::cuLibraryLoadFromFile, modules::cuLibraryUnload,
    memory::cuMemAllocAsync, memory::cuMemAllocAsync_ptsz, memory::cuMemAllocFromPoolAsync, memory::cuMemAllocFromPoolAsync_ptsz,
    memory::cuMemFreeAsync, memory::cuMemFreeAsync_ptsz, memory::cuMemPoolTrimTo, memory::cuMemPoolCreate, memory::cuMemPoolDestroy,
    graphmem::cuGraphInstantiate, graphmem::cuGraphInstantiate_v2, graphmem::cuGraphInstantiateWithFlags,
    graphmem::cuGraphInstantiateWithParams, graphmem::cuGraphInstantiateWithParams_ptsz, graphmem::cuGraphExecDestroy,
    graphmem::cuGraphExecUpdate, graphmem::cuGraphExecUpdate_v2, graphmem::cuDeviceGraphMemTrim,
    memory::cuMemRetainAllocationHandle, memory::cuMemMap, memory::cuMemUnmap, memory::cuMemAddressFree,
    shared::cuIpcGetMemHandle, shared::cuIpcOpenMemHandle, shared::cuIpcOpenMemHandle_v2, shared::cuIpcCloseMemHandle, shared::cuMemImportFromShareableHandle, shared::cuMemPoolImportFromShareableHandle,
    launch::cuLaunch, launch::cuLaunchGrid, launch::cuLaunchGridAsync,
    memory::cuMemGetInfo, memory::cuMemGetInfo_v2, memory::cuDeviceTotalMem, memory::cuDeviceTotalMem_v2,
    launch::cuLaunchKernel, launch::cuLaunchKernel_ptsz, launch::cuLaunchKernelEx, launch::cuLaunchKernelEx_ptsz,
    launch::cuLaunchCooperativeKernel, launch::cuLaunchCooperativeKernel_ptsz, launch::cuLaunchCooperativeKernelMultiDevice,
    launch::cuGraphLaunch, launch::cuGraphLaunch_ptsz,
    launch::cuCtxSynchronize, launch::cuStreamSynchronize, launch::cuStreamSynchronize_ptsz, launch::cuEventSynchronize,
    nvml::nvmlDeviceGetMemoryInfo, nvml::nvmlDeviceGetMemoryInfo_v2,
    nvml::nvmlDeviceGetComputeRunningProcesses, nvml::nvmlDeviceGetComputeRunningProcesses_v2, nvml::nvmlDeviceGetComputeRunningProcesses_v3, nvml::nvmlDeviceGetGraphicsRunningProcesses, nvml::nvmlDeviceGetGraphicsRunningProcesses_v2, nvml::nvmlDeviceGetGraphicsRunningProcesses_v3, nvml::nvmlDeviceGetMPSComputeRunningProcesses, nvml::nvmlDeviceGetMPSComputeRunningProcesses_v2, nvml::nvmlDeviceGetMPSComputeRunningProcesses_v3, nvml::nvmlDeviceGetProcessUtilization, nvml::nvmlDeviceGetProcessesUtilizationInfo, nvml::nvmlDeviceGetRunningProcessDetailList,
}

/// Real driver address → our hook, for every hooked driver symbol the driver exports.
fn by_real_address() -> &'static HashMap<usize, usize> {
    static MAP: OnceLock<HashMap<usize, usize>> = OnceLock::new();
    MAP.get_or_init(|| {
        HOOKED
            .iter()
            .filter(|n| n.starts_with("cu"))
            .filter_map(|n| {
                let c = std::ffi::CString::new(*n).ok()?;
                let real = CUDA.sym(&c);
                (!real.is_null()).then(|| (real as usize, hook_for(n.as_bytes()).unwrap() as usize))
            })
            .collect()
    })
}

/// Which exported variant a request means, as the driver resolves it.
fn requested_variant(name: &str, version: c_int, flags: u64) -> Option<&'static str> {
    let per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0;
    gpuslice_cuda_abi::generated::resolve_symbol(name, version, per_thread).ok()
}

fn trace(line: std::fmt::Arguments) {
    static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    let f = FILE.get_or_init(|| {
        let p = std::env::var_os("GPUSLICE_TRACE_LOOKUPS")?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
            .map(Mutex::new)
    });
    if let Some(f) = f {
        let _ = writeln!(f.lock().unwrap(), "{line}");
    }
}

/// After the real `cuGetProcAddress` answered, put our hook in its place where we govern it.
unsafe fn substitute(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    r: CUresult,
) -> CUresult {
    if symbol.is_null() || pfn.is_null() {
        return r;
    }
    let name = unsafe { CStr::from_ptr(symbol) }.to_string_lossy();
    let mut outcome = "passed";
    if r == CUDA_SUCCESS && unsafe { !(*pfn).is_null() } {
        let real = unsafe { *pfn } as usize;
        let hook = by_real_address()
            .get(&real)
            .map(|&h| h as *mut c_void)
            // A driver may hand out an address other than its exported symbol's: fall back to
            // resolving the name and version the way the driver does.
            .or_else(|| {
                requested_variant(&name, version, flags).and_then(|v| hook_for(v.as_bytes()))
            });
        if let Some(h) = hook {
            unsafe { *pfn = h };
            outcome = "hooked";
        }
    } else {
        outcome = "failed";
    }
    trace(format_args!(
        "cuGetProcAddress {name} {version} {flags} {outcome}"
    ));
    r
}

type GetProcFn = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CUresult;
type GetProcV2Fn =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CUresult;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    guard(|| unsafe {
        let r = call_real!(CUDA, cuGetProcAddress: GetProcFn, symbol, pfn, version, flags);
        substitute(symbol, pfn, version, flags, r)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CUresult {
    guard(|| unsafe {
        let r =
            call_real!(CUDA, cuGetProcAddress_v2: GetProcV2Fn, symbol, pfn, version, flags, status);
        substitute(symbol, pfn, version, flags, r)
    })
}

/// Our `dlsym`, reached through the trampoline in `lib.rs` for every handle but `RTLD_NEXT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpuslice_dlsym_hook(
    handle: *mut c_void,
    symbol: *const c_char,
) -> *mut c_void {
    if !symbol.is_null() {
        let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
        if (name.starts_with(b"cu") || name.starts_with(b"nvml"))
            && let Some(h) = hook_for(name)
        {
            trace(format_args!(
                "dlsym {} hooked",
                String::from_utf8_lossy(name)
            ));
            return h;
        }
    }
    unsafe { real_dlsym()(handle, symbol) }
}

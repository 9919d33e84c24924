//! `cuGetProcAddress`: from a base name, CUDA version and flags to one of this library's functions.

use std::ffi::{c_char, c_int, c_void, CStr};

use gpuslice_cuda_abi::driver::*;

use crate::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveError {
    /// No driver function has that name.
    NotFound,
    /// The function exists, but not in the requested CUDA version.
    VersionTooLow,
}

/// For each base name (as `cuGetProcAddress` is asked for it): the CUDA version at which each
/// ABI variant appeared (from the `PFN_<name>_v<version>` typedefs of cudaTypedefs.h), its
/// exported symbol (cuda.h's `#define`s), and whether it is the per-thread-default-stream one.
static VARIANTS: &[(&str, &[(i32, &str, bool)])] = &[
    ("cuArray3DCreate", &[(2000, "cuArray3DCreate", false), (3020, "cuArray3DCreate_v2", false)]),
    ("cuArrayCreate", &[(2000, "cuArrayCreate", false), (3020, "cuArrayCreate_v2", false)]),
    ("cuArrayDestroy", &[(2000, "cuArrayDestroy", false)]),
    ("cuCtxCreate", &[(2000, "cuCtxCreate", false), (3020, "cuCtxCreate_v2", false), (11040, "cuCtxCreate_v3", false), (12050, "cuCtxCreate_v4", false)]),
    ("cuCtxDestroy", &[(2000, "cuCtxDestroy", false), (4000, "cuCtxDestroy_v2", false)]),
    ("cuCtxGetApiVersion", &[(3020, "cuCtxGetApiVersion", false)]),
    ("cuCtxGetCurrent", &[(4000, "cuCtxGetCurrent", false)]),
    ("cuCtxGetDevice", &[(2000, "cuCtxGetDevice", false)]),
    ("cuCtxGetFlags", &[(7000, "cuCtxGetFlags", false)]),
    ("cuCtxGetStreamPriorityRange", &[(5050, "cuCtxGetStreamPriorityRange", false)]),
    ("cuCtxPopCurrent", &[(2000, "cuCtxPopCurrent", false), (4000, "cuCtxPopCurrent_v2", false)]),
    ("cuCtxPushCurrent", &[(2000, "cuCtxPushCurrent", false), (4000, "cuCtxPushCurrent_v2", false)]),
    ("cuCtxSetCurrent", &[(4000, "cuCtxSetCurrent", false)]),
    ("cuCtxSynchronize", &[(2000, "cuCtxSynchronize", false)]),
    ("cuDeviceComputeCapability", &[(2000, "cuDeviceComputeCapability", false)]),
    ("cuDeviceGet", &[(2000, "cuDeviceGet", false)]),
    ("cuDeviceGetAttribute", &[(2000, "cuDeviceGetAttribute", false)]),
    ("cuDeviceGetByPCIBusId", &[(4010, "cuDeviceGetByPCIBusId", false)]),
    ("cuDeviceGetCount", &[(2000, "cuDeviceGetCount", false)]),
    ("cuDeviceGetDefaultMemPool", &[(11020, "cuDeviceGetDefaultMemPool", false)]),
    ("cuDeviceGetGraphMemAttribute", &[(11040, "cuDeviceGetGraphMemAttribute", false)]),
    ("cuDeviceGetMemPool", &[(11020, "cuDeviceGetMemPool", false)]),
    ("cuDeviceGetName", &[(2000, "cuDeviceGetName", false)]),
    ("cuDeviceGetPCIBusId", &[(4010, "cuDeviceGetPCIBusId", false)]),
    ("cuDeviceGetUuid", &[(9020, "cuDeviceGetUuid", false), (11040, "cuDeviceGetUuid_v2", false)]),
    ("cuDeviceGraphMemTrim", &[(11040, "cuDeviceGraphMemTrim", false)]),
    ("cuDevicePrimaryCtxGetState", &[(7000, "cuDevicePrimaryCtxGetState", false)]),
    ("cuDevicePrimaryCtxRelease", &[(7000, "cuDevicePrimaryCtxRelease", false), (11000, "cuDevicePrimaryCtxRelease_v2", false)]),
    ("cuDevicePrimaryCtxReset", &[(7000, "cuDevicePrimaryCtxReset", false), (11000, "cuDevicePrimaryCtxReset_v2", false)]),
    ("cuDevicePrimaryCtxRetain", &[(7000, "cuDevicePrimaryCtxRetain", false)]),
    ("cuDevicePrimaryCtxSetFlags", &[(7000, "cuDevicePrimaryCtxSetFlags", false), (11000, "cuDevicePrimaryCtxSetFlags_v2", false)]),
    ("cuDeviceSetGraphMemAttribute", &[(11040, "cuDeviceSetGraphMemAttribute", false)]),
    ("cuDeviceSetMemPool", &[(11020, "cuDeviceSetMemPool", false)]),
    ("cuDeviceTotalMem", &[(2000, "cuDeviceTotalMem", false), (3020, "cuDeviceTotalMem_v2", false)]),
    ("cuDriverGetVersion", &[(2020, "cuDriverGetVersion", false)]),
    ("cuEventCreate", &[(2000, "cuEventCreate", false)]),
    ("cuEventDestroy", &[(2000, "cuEventDestroy", false), (4000, "cuEventDestroy_v2", false)]),
    ("cuEventElapsedTime", &[(2000, "cuEventElapsedTime", false), (12080, "cuEventElapsedTime_v2", false)]),
    ("cuEventQuery", &[(2000, "cuEventQuery", false)]),
    ("cuEventRecord", &[(2000, "cuEventRecord", false), (7000, "cuEventRecord_ptsz", true)]),
    ("cuEventRecordWithFlags", &[(11010, "cuEventRecordWithFlags", false), (11010, "cuEventRecordWithFlags_ptsz", true)]),
    ("cuEventSynchronize", &[(2000, "cuEventSynchronize", false)]),
    ("cuFuncGetAttribute", &[(2020, "cuFuncGetAttribute", false)]),
    ("cuFuncSetAttribute", &[(9000, "cuFuncSetAttribute", false)]),
    ("cuFuncSetCacheConfig", &[(3000, "cuFuncSetCacheConfig", false)]),
    ("cuGetErrorName", &[(6000, "cuGetErrorName", false)]),
    ("cuGetErrorString", &[(6000, "cuGetErrorString", false)]),
    ("cuGetExportTable", &[(3000, "cuGetExportTable", false)]),
    ("cuGetProcAddress", &[(11030, "cuGetProcAddress", false), (12000, "cuGetProcAddress_v2", false)]),
    ("cuGraphAddDependencies", &[(10000, "cuGraphAddDependencies", false), (12030, "cuGraphAddDependencies_v2", false)]),
    ("cuGraphAddEmptyNode", &[(10000, "cuGraphAddEmptyNode", false)]),
    ("cuGraphAddKernelNode", &[(10000, "cuGraphAddKernelNode", false), (12000, "cuGraphAddKernelNode_v2", false)]),
    ("cuGraphAddMemAllocNode", &[(11040, "cuGraphAddMemAllocNode", false)]),
    ("cuGraphAddMemFreeNode", &[(11040, "cuGraphAddMemFreeNode", false)]),
    ("cuGraphCreate", &[(10000, "cuGraphCreate", false)]),
    ("cuGraphDestroy", &[(10000, "cuGraphDestroy", false)]),
    ("cuGraphExecDestroy", &[(10000, "cuGraphExecDestroy", false)]),
    ("cuGraphInstantiate", &[(10000, "cuGraphInstantiate", false), (11000, "cuGraphInstantiate_v2", false), (12000, "cuGraphInstantiateWithFlags", false)]),
    ("cuGraphInstantiateWithFlags", &[(11040, "cuGraphInstantiateWithFlags", false)]),
    ("cuGraphLaunch", &[(10000, "cuGraphLaunch", false), (10000, "cuGraphLaunch_ptsz", true)]),
    ("cuInit", &[(2000, "cuInit", false)]),
    ("cuKernelGetFunction", &[(12000, "cuKernelGetFunction", false)]),
    ("cuLaunchCooperativeKernel", &[(9000, "cuLaunchCooperativeKernel", false), (9000, "cuLaunchCooperativeKernel_ptsz", true)]),
    ("cuLaunchCooperativeKernelMultiDevice", &[(9000, "cuLaunchCooperativeKernelMultiDevice", false)]),
    ("cuLaunchKernel", &[(4000, "cuLaunchKernel", false), (7000, "cuLaunchKernel_ptsz", true)]),
    ("cuLaunchKernelEx", &[(11060, "cuLaunchKernelEx", false), (11060, "cuLaunchKernelEx_ptsz", true)]),
    ("cuLibraryGetKernel", &[(12000, "cuLibraryGetKernel", false)]),
    ("cuLibraryLoadData", &[(12000, "cuLibraryLoadData", false)]),
    ("cuLibraryLoadFromFile", &[(12000, "cuLibraryLoadFromFile", false)]),
    ("cuLibraryUnload", &[(12000, "cuLibraryUnload", false)]),
    ("cuMemAddressFree", &[(10020, "cuMemAddressFree", false)]),
    ("cuMemAddressReserve", &[(10020, "cuMemAddressReserve", false)]),
    ("cuMemAlloc", &[(2000, "cuMemAlloc", false), (3020, "cuMemAlloc_v2", false)]),
    ("cuMemAllocAsync", &[(11020, "cuMemAllocAsync", false), (11020, "cuMemAllocAsync_ptsz", true)]),
    ("cuMemAllocFromPoolAsync", &[(11020, "cuMemAllocFromPoolAsync", false), (11020, "cuMemAllocFromPoolAsync_ptsz", true)]),
    ("cuMemAllocHost", &[(2000, "cuMemAllocHost", false), (3020, "cuMemAllocHost_v2", false)]),
    ("cuMemAllocManaged", &[(6000, "cuMemAllocManaged", false)]),
    ("cuMemAllocPitch", &[(2000, "cuMemAllocPitch", false), (3020, "cuMemAllocPitch_v2", false)]),
    ("cuMemCreate", &[(10020, "cuMemCreate", false)]),
    ("cuMemFree", &[(2000, "cuMemFree", false), (3020, "cuMemFree_v2", false)]),
    ("cuMemFreeAsync", &[(11020, "cuMemFreeAsync", false), (11020, "cuMemFreeAsync_ptsz", true)]),
    ("cuMemFreeHost", &[(2000, "cuMemFreeHost", false)]),
    ("cuMemGetAddressRange", &[(2000, "cuMemGetAddressRange", false), (3020, "cuMemGetAddressRange_v2", false)]),
    ("cuMemGetAllocationGranularity", &[(10020, "cuMemGetAllocationGranularity", false)]),
    ("cuMemGetInfo", &[(2000, "cuMemGetInfo", false), (3020, "cuMemGetInfo_v2", false)]),
    ("cuMemHostAlloc", &[(2020, "cuMemHostAlloc", false)]),
    ("cuMemHostGetDevicePointer", &[(2020, "cuMemHostGetDevicePointer", false), (3020, "cuMemHostGetDevicePointer_v2", false)]),
    ("cuMemMap", &[(10020, "cuMemMap", false)]),
    ("cuMemPoolCreate", &[(11020, "cuMemPoolCreate", false)]),
    ("cuMemPoolDestroy", &[(11020, "cuMemPoolDestroy", false)]),
    ("cuMemPoolGetAttribute", &[(11020, "cuMemPoolGetAttribute", false)]),
    ("cuMemPoolSetAttribute", &[(11020, "cuMemPoolSetAttribute", false)]),
    ("cuMemPoolTrimTo", &[(11020, "cuMemPoolTrimTo", false)]),
    ("cuMemRelease", &[(10020, "cuMemRelease", false)]),
    ("cuMemSetAccess", &[(10020, "cuMemSetAccess", false)]),
    ("cuMemUnmap", &[(10020, "cuMemUnmap", false)]),
    ("cuMemcpy", &[(4000, "cuMemcpy", false), (7000, "cuMemcpy_ptds", true)]),
    ("cuMemcpyAsync", &[(4000, "cuMemcpyAsync", false), (7000, "cuMemcpyAsync_ptsz", true)]),
    ("cuMemcpyDtoD", &[(2000, "cuMemcpyDtoD", false), (3020, "cuMemcpyDtoD_v2", false), (7000, "cuMemcpyDtoD_v2_ptds", true)]),
    ("cuMemcpyDtoDAsync", &[(3000, "cuMemcpyDtoDAsync", false), (3020, "cuMemcpyDtoDAsync_v2", false), (7000, "cuMemcpyDtoDAsync_v2_ptsz", true)]),
    ("cuMemcpyDtoH", &[(2000, "cuMemcpyDtoH", false), (3020, "cuMemcpyDtoH_v2", false), (7000, "cuMemcpyDtoH_v2_ptds", true)]),
    ("cuMemcpyDtoHAsync", &[(2000, "cuMemcpyDtoHAsync", false), (3020, "cuMemcpyDtoHAsync_v2", false), (7000, "cuMemcpyDtoHAsync_v2_ptsz", true)]),
    ("cuMemcpyHtoD", &[(2000, "cuMemcpyHtoD", false), (3020, "cuMemcpyHtoD_v2", false), (7000, "cuMemcpyHtoD_v2_ptds", true)]),
    ("cuMemcpyHtoDAsync", &[(2000, "cuMemcpyHtoDAsync", false), (3020, "cuMemcpyHtoDAsync_v2", false), (7000, "cuMemcpyHtoDAsync_v2_ptsz", true)]),
    ("cuMemsetD16", &[(2000, "cuMemsetD16", false), (3020, "cuMemsetD16_v2", false), (7000, "cuMemsetD16_v2_ptds", true)]),
    ("cuMemsetD16Async", &[(3020, "cuMemsetD16Async", false), (7000, "cuMemsetD16Async_ptsz", true)]),
    ("cuMemsetD32", &[(2000, "cuMemsetD32", false), (3020, "cuMemsetD32_v2", false), (7000, "cuMemsetD32_v2_ptds", true)]),
    ("cuMemsetD32Async", &[(3020, "cuMemsetD32Async", false), (7000, "cuMemsetD32Async_ptsz", true)]),
    ("cuMemsetD8", &[(2000, "cuMemsetD8", false), (3020, "cuMemsetD8_v2", false), (7000, "cuMemsetD8_v2_ptds", true)]),
    ("cuMemsetD8Async", &[(3020, "cuMemsetD8Async", false), (7000, "cuMemsetD8Async_ptsz", true)]),
    ("cuMipmappedArrayCreate", &[(5000, "cuMipmappedArrayCreate", false)]),
    ("cuMipmappedArrayDestroy", &[(5000, "cuMipmappedArrayDestroy", false)]),
    ("cuModuleGetFunction", &[(2000, "cuModuleGetFunction", false)]),
    ("cuModuleLoad", &[(2000, "cuModuleLoad", false)]),
    ("cuModuleLoadData", &[(2000, "cuModuleLoadData", false)]),
    ("cuModuleLoadDataEx", &[(2010, "cuModuleLoadDataEx", false)]),
    ("cuModuleLoadFatBinary", &[(2000, "cuModuleLoadFatBinary", false)]),
    ("cuModuleUnload", &[(2000, "cuModuleUnload", false)]),
    ("cuStreamBeginCapture", &[(10000, "cuStreamBeginCapture", false), (10000, "cuStreamBeginCapture_ptsz", true), (10010, "cuStreamBeginCapture_v2", false), (10010, "cuStreamBeginCapture_v2_ptsz", true)]),
    ("cuStreamCreate", &[(2000, "cuStreamCreate", false)]),
    ("cuStreamCreateWithPriority", &[(5050, "cuStreamCreateWithPriority", false)]),
    ("cuStreamDestroy", &[(2000, "cuStreamDestroy", false), (4000, "cuStreamDestroy_v2", false)]),
    ("cuStreamEndCapture", &[(10000, "cuStreamEndCapture", false), (10000, "cuStreamEndCapture_ptsz", true)]),
    ("cuStreamGetCtx", &[(9020, "cuStreamGetCtx", false), (9020, "cuStreamGetCtx_ptsz", true), (12050, "cuStreamGetCtx_v2", false), (12050, "cuStreamGetCtx_v2_ptsz", true)]),
    ("cuStreamGetFlags", &[(5050, "cuStreamGetFlags", false), (7000, "cuStreamGetFlags_ptsz", true)]),
    ("cuStreamGetPriority", &[(5050, "cuStreamGetPriority", false), (7000, "cuStreamGetPriority_ptsz", true)]),
    ("cuStreamIsCapturing", &[(10000, "cuStreamIsCapturing", false), (10000, "cuStreamIsCapturing_ptsz", true)]),
    ("cuStreamQuery", &[(2000, "cuStreamQuery", false), (7000, "cuStreamQuery_ptsz", true)]),
    ("cuStreamSynchronize", &[(2000, "cuStreamSynchronize", false), (7000, "cuStreamSynchronize_ptsz", true)]),
    ("cuStreamWaitEvent", &[(3020, "cuStreamWaitEvent", false), (7000, "cuStreamWaitEvent_ptsz", true)]),
];

/// Which exported symbol serves `name` for a caller built against `version`.
pub fn variant_for(name: &str, version: i32, per_thread: bool) -> Result<&'static str, ResolveError> {
    let Some((_, vs)) = VARIANTS.iter().find(|(n, _)| *n == name) else {
        // A function with a single ABI and no typedef entry still resolves by its own name.
        return match EXPORTED_ONLY.iter().find(|s| **s == name) {
            Some(s) => Ok(s),
            None => Err(ResolveError::NotFound),
        };
    };
    let pick = |pt: bool| vs.iter().filter(|(v, _, p)| *p == pt && *v <= version).map(|(_, s, _)| *s).next_back();
    let plain = pick(false).ok_or(ResolveError::VersionTooLow)?;
    Ok(if per_thread { pick(true).unwrap_or(plain) } else { plain })
}

/// Exported functions that have no versioned variants to choose between.
static EXPORTED_ONLY: &[&str] = &[];

/// The address of the exported function `sym`.
pub(crate) fn export_address(sym: &str) -> Option<*mut c_void> {
    match sym {
        "cuGetProcAddress" => Some(cuGetProcAddress as *const () as *mut c_void),
        "cuGetProcAddress_v2" => Some(cuGetProcAddress_v2 as *const () as *mut c_void),
        _ => crate::api_device::exports_device(sym)
            .or_else(|| crate::api_mem::exports_mem(sym))
            .or_else(|| crate::api_exec::exports_exec(sym)),
    }
}

unsafe fn get_proc_address(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut c_int) -> R {
    if symbol.is_null() || pfn.is_null() || flags & !(CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0 {
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
        Err(ResolveError::VersionTooLow) => {
            set_status(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
            Err(CUDA_ERROR_NOT_FOUND)
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) -> CUresult {
    guard(|| unsafe { get_proc_address(symbol, pfn, version, flags, std::ptr::null_mut()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut c_int) -> CUresult {
    guard(|| unsafe { get_proc_address(symbol, pfn, version, flags, status) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pick_the_variant_of_their_time() {
        assert_eq!(variant_for("cuMemAlloc", 3010, false), Ok("cuMemAlloc"));
        assert_eq!(variant_for("cuMemAlloc", 3020, false), Ok("cuMemAlloc_v2"));
        assert_eq!(variant_for("cuMemAlloc", 12090, true), Ok("cuMemAlloc_v2"));
        assert_eq!(variant_for("cuMemcpyHtoD", 12000, true), Ok("cuMemcpyHtoD_v2_ptds"));
        assert_eq!(variant_for("cuMemcpyHtoD", 12000, false), Ok("cuMemcpyHtoD_v2"));
        assert_eq!(variant_for("cuLaunchKernel", 12000, true), Ok("cuLaunchKernel_ptsz"));
        assert_eq!(variant_for("cuCtxCreate", 12090, false), Ok("cuCtxCreate_v4"));
        assert_eq!(variant_for("cuGraphInstantiate", 12000, false), Ok("cuGraphInstantiateWithFlags"));
        assert_eq!(variant_for("cuGraphInstantiate", 11000, false), Ok("cuGraphInstantiate_v2"));
        assert_eq!(variant_for("cuMemAllocAsync", 11010, false), Err(ResolveError::VersionTooLow));
        assert_eq!(variant_for("cuNoSuchThing", 12000, false), Err(ResolveError::NotFound));
    }

    #[test]
    fn every_variant_in_the_table_that_is_exported_resolves_to_an_address() {
        let mut missing = Vec::new();
        for (_, vs) in VARIANTS {
            for (_, s, _) in *vs {
                if export_address(s).is_none() {
                    missing.push(*s);
                }
            }
        }
        // Older or newer ABIs of implemented functions that this driver does not provide.
        assert!(missing.len() < 20, "{missing:?}");
    }
}

//! The generated symbol list and `cuGetProcAddress` resolution, checked against what
//! cuda.h/cudaTypedefs.h (CUDA 12.9) say a real driver exports and hands out.

use gpuslice_cuda_abi::generated::{
    CUDA_HEADER_VERSION, DRIVER_SYMBOLS, PROC_TABLE, ResolveError, is_driver_symbol, proc_variants,
    resolve_symbol,
};

fn ok(name: &str, version: i32, per_thread: bool) -> &'static str {
    resolve_symbol(name, version, per_thread)
        .unwrap_or_else(|e| panic!("{name} @ {version} (per_thread={per_thread}): {e:?}"))
}

#[test]
fn header_version() {
    assert_eq!(CUDA_HEADER_VERSION, 12090);
}

#[test]
fn symbols_are_sorted_unique_and_searchable() {
    assert!(DRIVER_SYMBOLS.windows(2).all(|w| w[0] < w[1]));
    for s in DRIVER_SYMBOLS {
        assert!(is_driver_symbol(s));
    }
    assert!(PROC_TABLE.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn exported_names_follow_cuda_h_renames() {
    // Linked names after `#define cuX cuX_v2`, and the legacy names kept beside them.
    for s in [
        "cuMemAlloc",
        "cuMemAlloc_v2",
        "cuCtxCreate",
        "cuCtxCreate_v2",
        "cuCtxCreate_v3",
        "cuCtxCreate_v4",
        "cuGetProcAddress",
        "cuGetProcAddress_v2",
        "cuGraphInstantiate",
        "cuGraphInstantiate_v2",
        "cuGraphInstantiateWithFlags",
        "cuTexRefSetAddress2D_v2",
        "cuTexRefSetAddress2D_v3",
        "cuInit",
        "cuGetExportTable",
    ] {
        assert!(is_driver_symbol(s), "{s}");
    }
    // Per-thread variants: `_ptds` for synchronous copies/sets, `_ptsz` for stream work, and
    // the suffix goes after the `_v2`.
    for s in [
        "cuLaunchKernel_ptsz",
        "cuMemcpy_ptds",
        "cuMemcpyAsync_ptsz",
        "cuMemcpyHtoD_v2_ptds",
        "cuMemcpyHtoDAsync_v2_ptsz",
        "cuMemsetD8_v2_ptds",
        "cuStreamBeginCapture_ptsz",
        "cuStreamBeginCapture_v2_ptsz",
        "cuStreamGetCaptureInfo_v3_ptsz",
        "cuGraphLaunch_ptsz",
        "cuMemBatchDecompressAsync_ptsz",
    ] {
        assert!(is_driver_symbol(s), "{s}");
    }
    // Not exported: a header-only inline wrapper, `_ptds` spellings of `_ptsz` functions, and
    // per-thread variants of functions without a stream.
    for s in [
        "cuGetProcAddress_v2_ptsz",
        "cuMemcpyHtoD_ptds",
        "cuLaunchKernel_ptds",
        "cuMemAlloc_v2_ptds",
        "cuCtxCreate_v5",
        "cudaMalloc",
    ] {
        assert!(!is_driver_symbol(s), "{s}");
    }
}

#[test]
fn every_resolved_symbol_is_exported() {
    for (name, variants) in PROC_TABLE {
        assert!(!variants.is_empty(), "{name}");
        assert!(
            variants.windows(2).all(|w| w[0].version <= w[1].version),
            "{name}"
        );
        for v in *variants {
            assert!(is_driver_symbol(v.symbol), "{name} -> {}", v.symbol);
        }
    }
}

#[test]
fn memory() {
    assert_eq!(ok("cuMemAlloc", 2000, false), "cuMemAlloc");
    assert_eq!(ok("cuMemAlloc", 3010, false), "cuMemAlloc");
    assert_eq!(ok("cuMemAlloc", 3020, false), "cuMemAlloc_v2");
    assert_eq!(ok("cuMemAlloc", 12090, true), "cuMemAlloc_v2");
    assert_eq!(ok("cuMemFree", 12000, false), "cuMemFree_v2");
    assert_eq!(ok("cuMemGetInfo", 12000, false), "cuMemGetInfo_v2");
    assert_eq!(ok("cuMemAllocAsync", 11020, false), "cuMemAllocAsync");
    assert_eq!(ok("cuMemAllocAsync", 11020, true), "cuMemAllocAsync_ptsz");
    assert_eq!(ok("cuMemAdvise", 12010, false), "cuMemAdvise");
    assert_eq!(ok("cuMemAdvise", 12020, false), "cuMemAdvise_v2");
    assert_eq!(
        ok("cuMemPrefetchAsync", 12020, true),
        "cuMemPrefetchAsync_v2_ptsz"
    );
    assert_eq!(
        ok("cuMemPrefetchAsync", 12000, true),
        "cuMemPrefetchAsync_ptsz"
    );
}

#[test]
fn copies_and_sets() {
    assert_eq!(ok("cuMemcpyHtoD", 2000, false), "cuMemcpyHtoD");
    assert_eq!(ok("cuMemcpyHtoD", 3020, false), "cuMemcpyHtoD_v2");
    assert_eq!(ok("cuMemcpyHtoD", 12000, false), "cuMemcpyHtoD_v2");
    assert_eq!(ok("cuMemcpyHtoD", 12000, true), "cuMemcpyHtoD_v2_ptds");
    // Per-thread variants appeared in 7.0; older requests get the default-stream one.
    assert_eq!(ok("cuMemcpyHtoD", 6050, true), "cuMemcpyHtoD_v2");
    assert_eq!(
        ok("cuMemcpyHtoDAsync", 12000, true),
        "cuMemcpyHtoDAsync_v2_ptsz"
    );
    assert_eq!(ok("cuMemcpy", 12000, true), "cuMemcpy_ptds");
    assert_eq!(ok("cuMemcpy", 12000, false), "cuMemcpy");
    assert_eq!(ok("cuMemcpyAsync", 12000, true), "cuMemcpyAsync_ptsz");
    assert_eq!(ok("cuMemsetD32", 12000, true), "cuMemsetD32_v2_ptds");
    assert_eq!(ok("cuMemsetD32Async", 12000, true), "cuMemsetD32Async_ptsz");
    assert_eq!(
        ok("cuMemcpyBatchAsync", 12080, true),
        "cuMemcpyBatchAsync_ptsz"
    );
}

#[test]
fn launch() {
    assert_eq!(ok("cuLaunchKernel", 4000, false), "cuLaunchKernel");
    assert_eq!(ok("cuLaunchKernel", 12000, false), "cuLaunchKernel");
    assert_eq!(ok("cuLaunchKernel", 12000, true), "cuLaunchKernel_ptsz");
    assert_eq!(ok("cuLaunchKernel", 6050, true), "cuLaunchKernel");
    assert_eq!(ok("cuLaunchKernelEx", 11060, true), "cuLaunchKernelEx_ptsz");
    assert_eq!(
        ok("cuLaunchCooperativeKernel", 12000, true),
        "cuLaunchCooperativeKernel_ptsz"
    );
    assert_eq!(ok("cuLaunchHostFunc", 10000, false), "cuLaunchHostFunc");
    assert_eq!(
        resolve_symbol("cuLaunchKernelEx", 11050, false),
        Err(ResolveError::VersionNotSufficient)
    );
}

#[test]
fn context_creation_versions() {
    assert_eq!(ok("cuCtxCreate", 2000, false), "cuCtxCreate");
    assert_eq!(ok("cuCtxCreate", 3020, false), "cuCtxCreate_v2");
    assert_eq!(ok("cuCtxCreate", 11030, false), "cuCtxCreate_v2");
    assert_eq!(ok("cuCtxCreate", 11040, false), "cuCtxCreate_v3");
    assert_eq!(ok("cuCtxCreate", 12040, false), "cuCtxCreate_v3");
    assert_eq!(ok("cuCtxCreate", 12050, false), "cuCtxCreate_v4");
    assert_eq!(ok("cuCtxCreate", 12090, true), "cuCtxCreate_v4");
    assert_eq!(ok("cuCtxDestroy", 4000, false), "cuCtxDestroy_v2");
    assert_eq!(ok("cuCtxPushCurrent", 3020, false), "cuCtxPushCurrent");
    assert_eq!(
        ok("cuDevicePrimaryCtxRelease", 11000, false),
        "cuDevicePrimaryCtxRelease_v2"
    );
    assert_eq!(
        ok("cuDevicePrimaryCtxRelease", 10020, false),
        "cuDevicePrimaryCtxRelease"
    );
}

#[test]
fn graphs() {
    assert_eq!(ok("cuGraphInstantiate", 10000, false), "cuGraphInstantiate");
    assert_eq!(
        ok("cuGraphInstantiate", 11000, false),
        "cuGraphInstantiate_v2"
    );
    // 11.4-11.8 headers still typed cuGraphInstantiate as the five-argument v11000 form.
    assert_eq!(
        ok("cuGraphInstantiate", 11080, false),
        "cuGraphInstantiate_v2"
    );
    // 12.0's cuda.h maps it to cuGraphInstantiateWithFlags.
    assert_eq!(
        ok("cuGraphInstantiate", 12000, false),
        "cuGraphInstantiateWithFlags"
    );
    assert_eq!(
        ok("cuGraphInstantiateWithFlags", 11040, false),
        "cuGraphInstantiateWithFlags"
    );
    assert_eq!(
        ok("cuGraphInstantiateWithParams", 12000, true),
        "cuGraphInstantiateWithParams_ptsz"
    );
    assert_eq!(ok("cuGraphLaunch", 12000, true), "cuGraphLaunch_ptsz");
    assert_eq!(
        ok("cuGraphExecUpdate", 12000, false),
        "cuGraphExecUpdate_v2"
    );
    assert_eq!(ok("cuGraphExecUpdate", 11080, false), "cuGraphExecUpdate");
    assert_eq!(
        ok("cuGraphAddKernelNode", 12000, false),
        "cuGraphAddKernelNode_v2"
    );
    assert_eq!(ok("cuGraphGetEdges", 12030, false), "cuGraphGetEdges_v2");
    assert_eq!(
        resolve_symbol("cuGraphInstantiate", 9020, false),
        Err(ResolveError::VersionNotSufficient)
    );
}

#[test]
fn stream_capture() {
    assert_eq!(
        ok("cuStreamBeginCapture", 10000, false),
        "cuStreamBeginCapture"
    );
    assert_eq!(
        ok("cuStreamBeginCapture", 10000, true),
        "cuStreamBeginCapture_ptsz"
    );
    assert_eq!(
        ok("cuStreamBeginCapture", 10010, false),
        "cuStreamBeginCapture_v2"
    );
    assert_eq!(
        ok("cuStreamBeginCapture", 12000, true),
        "cuStreamBeginCapture_v2_ptsz"
    );
    assert_eq!(
        ok("cuStreamEndCapture", 12000, true),
        "cuStreamEndCapture_ptsz"
    );
    assert_eq!(
        ok("cuStreamIsCapturing", 12000, false),
        "cuStreamIsCapturing"
    );
    assert_eq!(
        ok("cuStreamGetCaptureInfo", 10010, false),
        "cuStreamGetCaptureInfo"
    );
    assert_eq!(
        ok("cuStreamGetCaptureInfo", 11030, false),
        "cuStreamGetCaptureInfo_v2"
    );
    assert_eq!(
        ok("cuStreamGetCaptureInfo", 12030, false),
        "cuStreamGetCaptureInfo_v3"
    );
    assert_eq!(
        ok("cuStreamGetCaptureInfo", 12030, true),
        "cuStreamGetCaptureInfo_v3_ptsz"
    );
    assert_eq!(
        ok("cuStreamGetCaptureInfo", 12020, true),
        "cuStreamGetCaptureInfo_v2_ptsz"
    );
    assert_eq!(
        ok("cuStreamBeginCaptureToGraph", 12030, true),
        "cuStreamBeginCaptureToGraph_ptsz"
    );
    assert_eq!(
        ok("cuStreamUpdateCaptureDependencies", 12030, false),
        "cuStreamUpdateCaptureDependencies_v2"
    );
}

#[test]
fn streams_and_events() {
    assert_eq!(
        ok("cuStreamSynchronize", 12000, true),
        "cuStreamSynchronize_ptsz"
    );
    assert_eq!(ok("cuStreamQuery", 2000, true), "cuStreamQuery");
    assert_eq!(ok("cuStreamDestroy", 4000, false), "cuStreamDestroy_v2");
    assert_eq!(
        ok("cuStreamWaitValue32", 11070, true),
        "cuStreamWaitValue32_v2_ptsz"
    );
    assert_eq!(
        ok("cuStreamWaitValue32", 8000, false),
        "cuStreamWaitValue32"
    );
    assert_eq!(ok("cuStreamGetCtx", 12050, true), "cuStreamGetCtx_v2_ptsz");
    assert_eq!(ok("cuEventRecord", 12000, true), "cuEventRecord_ptsz");
    assert_eq!(ok("cuEventDestroy", 4000, false), "cuEventDestroy_v2");
    assert_eq!(
        ok("cuEventElapsedTime", 12080, false),
        "cuEventElapsedTime_v2"
    );
    assert_eq!(ok("cuEventElapsedTime", 12060, false), "cuEventElapsedTime");
}

#[test]
fn get_proc_address_itself() {
    assert_eq!(ok("cuGetProcAddress", 11030, false), "cuGetProcAddress");
    assert_eq!(ok("cuGetProcAddress", 11080, false), "cuGetProcAddress");
    assert_eq!(ok("cuGetProcAddress", 12000, false), "cuGetProcAddress_v2");
    assert_eq!(ok("cuGetProcAddress", 12000, true), "cuGetProcAddress_v2");
    assert_eq!(
        resolve_symbol("cuGetProcAddress", 11020, false),
        Err(ResolveError::VersionNotSufficient)
    );
}

#[test]
fn device_and_misc() {
    assert_eq!(ok("cuInit", 2000, false), "cuInit");
    assert_eq!(ok("cuDriverGetVersion", 12000, false), "cuDriverGetVersion");
    assert_eq!(ok("cuDeviceTotalMem", 3020, false), "cuDeviceTotalMem_v2");
    assert_eq!(ok("cuDeviceGetUuid", 11040, false), "cuDeviceGetUuid_v2");
    assert_eq!(ok("cuDeviceGetUuid", 9020, false), "cuDeviceGetUuid");
    assert_eq!(ok("cuModuleGetGlobal", 3020, false), "cuModuleGetGlobal_v2");
    // Its typedef lacks the version suffix; the PFN macro supplies 12.4.
    assert_eq!(
        ok("cuModuleGetFunctionCount", 12040, false),
        "cuModuleGetFunctionCount"
    );
    assert_eq!(
        ok("cuTexRefSetAddress2D", 2020, false),
        "cuTexRefSetAddress2D"
    );
    assert_eq!(
        ok("cuTexRefSetAddress2D", 3020, false),
        "cuTexRefSetAddress2D_v2"
    );
    assert_eq!(
        ok("cuTexRefSetAddress2D", 4010, false),
        "cuTexRefSetAddress2D_v3"
    );
}

#[test]
fn unknown_names() {
    for name in [
        "cuNoSuchThing",
        "cuMemAlloc_v2",
        "cuLaunchKernel_ptsz",
        "",
        "cudaMalloc",
    ] {
        assert_eq!(
            resolve_symbol(name, 12090, false),
            Err(ResolveError::NotFound),
            "{name}"
        );
        assert!(proc_variants(name).is_none());
    }
}

#[test]
fn interop_and_profiler() {
    for s in [
        "cuGLInit",
        "cuGLMapBufferObject_v2_ptds",
        "cuGraphicsGLRegisterBuffer",
        "cuVDPAUCtxCreate_v2",
        "cuEGLStreamConsumerConnect",
        "cuProfilerStart",
    ] {
        assert!(is_driver_symbol(s), "{s}");
    }
    // Windows-only.
    assert!(!is_driver_symbol("cuWGLGetDevice"));
    assert_eq!(
        resolve_symbol("cuWGLGetDevice", 12000, false),
        Err(ResolveError::NotFound)
    );
    assert_eq!(
        ok("cuGLMapBufferObject", 12000, true),
        "cuGLMapBufferObject_v2_ptds"
    );
    assert_eq!(
        ok("cuGLMapBufferObjectAsync", 12000, true),
        "cuGLMapBufferObjectAsync_v2_ptsz"
    );
    assert_eq!(ok("cuGLCtxCreate", 3020, false), "cuGLCtxCreate_v2");
    assert_eq!(ok("cuProfilerStop", 4000, false), "cuProfilerStop");
}

//! Kernel launches. Every path that puts work on a GPU (plain, extended, cooperative and
//! multi-device cooperative launches, graph launches, and the per-thread-stream variants) goes
//! through the compute gate, which decides when it may be submitted.

use gpuslice_cuda_abi::driver::*;
use std::ffi::{c_int, c_uint, c_void};

use crate::compute::{governed, governed_unit, waiting};
use crate::real::call_real;
use crate::tenant::guard;

type LaunchFn = unsafe extern "C" fn(
    CUfunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CUstream,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;
type LaunchExFn = unsafe extern "C" fn(
    *const CUlaunchConfig,
    CUfunction,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;
type CoopFn = unsafe extern "C" fn(
    CUfunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CUstream,
    *mut *mut c_void,
) -> CUresult;
type CoopMultiFn = unsafe extern "C" fn(*mut CUDA_LAUNCH_PARAMS, c_uint, c_uint) -> CUresult;
type GraphLaunchFn = unsafe extern "C" fn(CUgraphExec, CUstream) -> CUresult;

macro_rules! plain_launch {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
            shared: c_uint, stream: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void,
        ) -> CUresult {
            guard(|| governed(&[stream], || {
                call_real!(CUDA, $name: LaunchFn, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra)
            }))
        }
    };
}
plain_launch!(cuLaunchKernel);
plain_launch!(cuLaunchKernel_ptsz);

macro_rules! ex_launch {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void,
        ) -> CUresult {
            let stream = if config.is_null() { std::ptr::null_mut() } else { unsafe { (*config).hStream } };
            guard(|| governed(&[stream], || call_real!(CUDA, $name: LaunchExFn, config, f, params, extra)))
        }
    };
}
ex_launch!(cuLaunchKernelEx);
ex_launch!(cuLaunchKernelEx_ptsz);

macro_rules! coop_launch {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
            shared: c_uint, stream: CUstream, params: *mut *mut c_void,
        ) -> CUresult {
            guard(|| governed(&[stream], || {
                call_real!(CUDA, $name: CoopFn, f, gx, gy, gz, bx, by, bz, shared, stream, params)
            }))
        }
    };
}
coop_launch!(cuLaunchCooperativeKernel);
coop_launch!(cuLaunchCooperativeKernel_ptsz);

/// Gated as one launch in the current context, and fenced on the first launch's stream: the
/// devices of a multi-device launch run in lockstep, so one device's completion times them all.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchCooperativeKernelMultiDevice(
    list: *mut CUDA_LAUNCH_PARAMS,
    n: c_uint,
    flags: c_uint,
) -> CUresult {
    let stream = if list.is_null() || n == 0 {
        std::ptr::null_mut()
    } else {
        unsafe { (*list).hStream }
    };
    guard(|| {
        governed(
            &[stream],
            || call_real!(CUDA, cuLaunchCooperativeKernelMultiDevice: CoopMultiFn, list, n, flags),
        )
    })
}

/// A graph is gated like one launch and charged, like any launch, the GPU time it really took;
/// the graph memory its launch may reserve is charged first (`graphmem.rs`).
macro_rules! graph_launch {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(exec: CUgraphExec, stream: CUstream) -> CUresult {
            guard(|| {
                crate::graphmem::launch(exec, stream, || {
                    governed_unit(&[stream], || call_real!(CUDA, $name: GraphLaunchFn, exec, stream))
                })
            })
        }
    };
}
graph_launch!(cuGraphLaunch);
graph_launch!(cuGraphLaunch_ptsz);

// The pre-4.0 launches, configured by cuFuncSetBlockShape/cuParamSet*: the first two run on the
// legacy default stream.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunch(f: CUfunction) -> CUresult {
    guard(|| {
        governed(
            &[std::ptr::null_mut()],
            || call_real!(CUDA, cuLaunch: unsafe extern "C" fn(CUfunction) -> CUresult, f),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchGrid(f: CUfunction, w: c_int, h: c_int) -> CUresult {
    guard(|| {
        governed(
            &[std::ptr::null_mut()],
            || call_real!(CUDA, cuLaunchGrid: unsafe extern "C" fn(CUfunction, c_int, c_int) -> CUresult, f, w, h),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchGridAsync(
    f: CUfunction,
    w: c_int,
    h: c_int,
    stream: CUstream,
) -> CUresult {
    guard(|| {
        governed(
            &[stream],
            || call_real!(CUDA, cuLaunchGridAsync: unsafe extern "C" fn(CUfunction, c_int, c_int, CUstream) -> CUresult, f, w, h, stream),
        )
    })
}

// Synchronizations: passed straight through, counted as a thread waiting for its own work so
// that the gate does not take a thread being woken by the end of that work for an idle
// process (`compute::waiting`).

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    waiting(|| call_real!(CUDA, cuCtxSynchronize: unsafe extern "C" fn() -> CUresult))
}

macro_rules! stream_sync {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(stream: CUstream) -> CUresult {
            waiting(|| call_real!(CUDA, $name: unsafe extern "C" fn(CUstream) -> CUresult, stream))
        }
    };
}
stream_sync!(cuStreamSynchronize);
stream_sync!(cuStreamSynchronize_ptsz);

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    waiting(
        || call_real!(CUDA, cuEventSynchronize: unsafe extern "C" fn(CUevent) -> CUresult, event),
    )
}

//! Kernel launches. Memory isolation needs nothing here; the hooks exist so every launch path
//! already runs through the interposer, where compute shares are enforced.

use gpuslice_cuda_abi::driver::*;
use std::ffi::{c_uint, c_void};

use crate::real::call_real;

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

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernel(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    call_real!(CUDA, cuLaunchKernel: LaunchFn, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernel_ptsz(
    f: CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    call_real!(CUDA, cuLaunchKernel_ptsz: LaunchFn, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra)
}

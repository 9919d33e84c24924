//! Contexts cost device memory that no allocation call reports; each one is charged to the
//! tenant while it exists, so what the tenant is told is free is what it can really use.

use gpuslice_cuda_abi::driver::*;
use std::ffi::{c_int, c_uint, c_void};

use crate::real::call_real;
use crate::tenant::{Owner, guard, tenant_or_return};

unsafe fn create(pctx: *mut CUcontext, dev: CUdevice, call: impl FnOnce() -> CUresult) -> CUresult {
    if pctx.is_null() {
        return call();
    }
    let t = tenant_or_return!();
    let d = match t.dev(dev) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let cost = t.ledger.context_overhead();
    let r = t.charged_call(d, cost, call);
    if r == CUDA_SUCCESS {
        t.remember(Owner::Context(unsafe { *pctx } as usize), d, cost);
    }
    r
}

type CtxCreateFn = unsafe extern "C" fn(*mut CUcontext, c_uint, CUdevice) -> CUresult;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate(
    pctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(|| unsafe {
        create(
            pctx,
            dev,
            || call_real!(CUDA, cuCtxCreate: CtxCreateFn, pctx, flags, dev),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(
    pctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(|| unsafe {
        create(
            pctx,
            dev,
            || call_real!(CUDA, cuCtxCreate_v2: CtxCreateFn, pctx, flags, dev),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v3(
    pctx: *mut CUcontext,
    params: *mut c_void,
    n: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(|| unsafe {
        create(
            pctx,
            dev,
            || call_real!(CUDA, cuCtxCreate_v3: unsafe extern "C" fn(*mut CUcontext, *mut c_void, c_int, c_uint, CUdevice) -> CUresult, pctx, params, n, flags, dev),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(
    pctx: *mut CUcontext,
    params: *mut c_void,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    guard(|| unsafe {
        create(
            pctx,
            dev,
            || call_real!(CUDA, cuCtxCreate_v4: unsafe extern "C" fn(*mut CUcontext, *mut c_void, c_uint, CUdevice) -> CUresult, pctx, params, flags, dev),
        )
    })
}

fn destroyed(ctx: CUcontext, r: CUresult) -> CUresult {
    if r == CUDA_SUCCESS {
        if let Ok(t) = crate::tenant::tenant() {
            t.forget(Owner::Context(ctx as usize));
        }
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy(ctx: CUcontext) -> CUresult {
    guard(|| {
        destroyed(
            ctx,
            call_real!(CUDA, cuCtxDestroy: unsafe extern "C" fn(CUcontext) -> CUresult, ctx),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    guard(|| {
        destroyed(
            ctx,
            call_real!(CUDA, cuCtxDestroy_v2: unsafe extern "C" fn(CUcontext) -> CUresult, ctx),
        )
    })
}

// The primary context is reference-counted by the driver: charge on the first retain, give back
// when the count returns to zero or the context is reset.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    guard(|| {
        let real = || call_real!(CUDA, cuDevicePrimaryCtxRetain: unsafe extern "C" fn(*mut CUcontext, CUdevice) -> CUresult, pctx, dev);
        let t = tenant_or_return!();
        let d = match t.dev(dev) {
            Ok(d) => d,
            Err(e) => return e,
        };
        let mut refs = t.primary.lock().unwrap();
        let n = refs.entry(dev).or_insert(0);
        if *n > 0 {
            let r = real();
            if r == CUDA_SUCCESS {
                *n += 1;
            }
            return r;
        }
        let r = t.charged_call(d, t.ledger.context_overhead(), real);
        if r == CUDA_SUCCESS {
            *n = 1;
        }
        r
    })
}

fn primary_released(dev: CUdevice, reset: bool, r: CUresult) -> CUresult {
    if r != CUDA_SUCCESS {
        return r;
    }
    if let Ok(t) = crate::tenant::tenant() {
        let mut refs = t.primary.lock().unwrap();
        if let Some(n) = refs.get_mut(&dev) {
            let was = *n;
            *n = if reset { 0 } else { n.saturating_sub(1) };
            if was > 0 && *n == 0 {
                if let Ok(d) = t.dev(dev) {
                    t.release(d, t.ledger.context_overhead());
                }
            }
        }
    }
    r
}

type DevFn = unsafe extern "C" fn(CUdevice) -> CUresult;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    guard(|| {
        primary_released(
            dev,
            false,
            call_real!(CUDA, cuDevicePrimaryCtxRelease: DevFn, dev),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    guard(|| {
        primary_released(
            dev,
            false,
            call_real!(CUDA, cuDevicePrimaryCtxRelease_v2: DevFn, dev),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    guard(|| {
        primary_released(
            dev,
            true,
            call_real!(CUDA, cuDevicePrimaryCtxReset: DevFn, dev),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    guard(|| {
        primary_released(
            dev,
            true,
            call_real!(CUDA, cuDevicePrimaryCtxReset_v2: DevFn, dev),
        )
    })
}

/// `cuInit` is where a broken tenant configuration surfaces: the process learns at once that it
/// may not use the GPU, instead of at its first allocation.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    guard(|| {
        let r = call_real!(CUDA, cuInit: unsafe extern "C" fn(c_uint) -> CUresult, flags);
        if r != CUDA_SUCCESS {
            return r;
        }
        match crate::tenant::tenant() {
            Ok(_) => r,
            Err(e) => e,
        }
    })
}

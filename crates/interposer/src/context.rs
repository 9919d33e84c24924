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

/// Ends context `ctx` through `call`: its own charge and everything it owned come back, and
/// pools are measured again (their allocations in it are gone).
fn destroyed(ctx: CUcontext, call: impl FnOnce() -> CUresult) -> CUresult {
    let Ok(t) = crate::tenant::tenant() else {
        return call();
    };
    let r = t.book.end_context_with(t, || (call(), ctx as usize));
    if r == CUDA_SUCCESS {
        t.forget(Owner::Context(ctx as usize));
        crate::memory::reconcile_pools(t);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy(ctx: CUcontext) -> CUresult {
    guard(|| {
        destroyed(
            ctx,
            || call_real!(CUDA, cuCtxDestroy: unsafe extern "C" fn(CUcontext) -> CUresult, ctx),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    guard(|| {
        destroyed(
            ctx,
            || call_real!(CUDA, cuCtxDestroy_v2: unsafe extern "C" fn(CUcontext) -> CUresult, ctx),
        )
    })
}

// The primary context is reference-counted by the driver: charge on the first retain, give back
// (with everything it owned) when the driver says it is gone: the last release, or a reset.

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
        let r = if *n > 0 {
            let r = real();
            if r == CUDA_SUCCESS {
                *n += 1;
            }
            r
        } else {
            let r = t.charged_call(d, t.ledger.context_overhead(), real);
            if r == CUDA_SUCCESS {
                *n = 1;
            }
            r
        };
        if r == CUDA_SUCCESS && !pctx.is_null() {
            // SAFETY: the driver succeeded and wrote the handle through the non-null `pctx`.
            let ctx = unsafe { *pctx } as usize;
            t.book.primary_ctx.lock().unwrap().insert(dev, ctx);
        }
        r
    })
}

/// Whether the driver still has a primary context on `dev`.
fn primary_active(dev: CUdevice) -> bool {
    let (mut flags, mut active): (c_uint, c_int) = (0, 0);
    let r = call_real!(CUDA, cuDevicePrimaryCtxGetState: unsafe extern "C" fn(CUdevice, *mut c_uint, *mut c_int) -> CUresult, dev, &mut flags, &mut active);
    // If the driver cannot say, assume it lives: keeping a charge is the safe side.
    r != CUDA_SUCCESS || active != 0
}

fn primary_released(dev: CUdevice, reset: bool, call: impl FnOnce() -> CUresult) -> CUresult {
    let Ok(t) = crate::tenant::tenant() else {
        return call();
    };
    let ctx = t
        .book
        .primary_ctx
        .lock()
        .unwrap()
        .get(&dev)
        .copied()
        .unwrap_or(0);
    let mut ended = false;
    let r = t.book.end_context_with(t, || {
        let r = call();
        ended = r == CUDA_SUCCESS && (reset || !primary_active(dev));
        (r, if ended { ctx } else { 0 })
    });
    if r != CUDA_SUCCESS {
        return r;
    }
    let mut refs = t.primary.lock().unwrap();
    if let Some(n) = refs.get_mut(&dev) {
        let was = *n;
        // While the context lives its charge stays, whatever our count says.
        *n = if ended { 0 } else { n.saturating_sub(1).max(1) };
        if was > 0
            && *n == 0
            && let Ok(d) = t.dev(dev)
        {
            t.release(d, t.ledger.context_overhead());
        }
    }
    drop(refs);
    if ended {
        t.book.primary_ctx.lock().unwrap().remove(&dev);
        crate::memory::reconcile_pools(t);
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
            || call_real!(CUDA, cuDevicePrimaryCtxRelease: DevFn, dev),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    guard(|| {
        primary_released(
            dev,
            false,
            || call_real!(CUDA, cuDevicePrimaryCtxRelease_v2: DevFn, dev),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    guard(|| {
        primary_released(
            dev,
            true,
            || call_real!(CUDA, cuDevicePrimaryCtxReset: DevFn, dev),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    guard(|| {
        primary_released(
            dev,
            true,
            || call_real!(CUDA, cuDevicePrimaryCtxReset_v2: DevFn, dev),
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

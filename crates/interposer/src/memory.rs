//! Every driver path that creates device memory, charged against the tenant's cap, and the
//! queries that tell the tenant how big its GPU is.
//!
//! Pattern: reserve in the ledger, call the driver, keep or roll back (`Tenant::charged_call`).
//! Memory pools are the exception: a pool's footprint is what it has *reserved* from the device,
//! which grows in chunks and outlives frees, so pools are charged their reservation as measured
//! around each call rather than the sizes asked for.

use gpuslice_cuda_abi::array;
use gpuslice_cuda_abi::driver::*;
use gpuslice_ledger::Dev;
use std::ffi::{c_uint, c_void};

use crate::book::{Key, Rec, current_ctx};
use crate::real::call_real;
use crate::tenant::{PoolCharge, Tenant, guard, tenant_or_return};

// ---- plain allocations -------------------------------------------------------------------

unsafe fn alloc_common(
    dptr: *mut CUdeviceptr,
    bytes: u64,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if dptr.is_null() {
        return call();
    }
    let t = tenant_or_return!();
    let (_, dev) = match t.current_dev() {
        Ok(d) => d,
        Err(e) => return e,
    };
    let r = t.charged_call(dev, bytes, call);
    if r == CUDA_SUCCESS {
        let rec = Rec {
            dev,
            bytes,
            ctx: current_ctx(),
        };
        t.book.add(t, Key::Ptr(unsafe { *dptr }), rec);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    guard(|| unsafe {
        alloc_common(
            dptr,
            bytesize as u64,
            || call_real!(CUDA, cuMemAlloc_v2: unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult, dptr, bytesize),
        )
    })
}

/// The pre-3.2 entry point with 32-bit pointers and sizes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc(dptr: *mut CUdeviceptr_v1, bytesize: c_uint) -> CUresult {
    guard(|| unsafe {
        let real = || call_real!(CUDA, cuMemAlloc: unsafe extern "C" fn(*mut CUdeviceptr_v1, c_uint) -> CUresult, dptr, bytesize);
        if dptr.is_null() {
            return real();
        }
        let mut wide: CUdeviceptr = 0;
        alloc_common(&mut wide, bytesize as u64, || {
            let r = real();
            wide = *dptr as u64;
            r
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    flags: c_uint,
) -> CUresult {
    // Managed memory counts in full: without oversubscription it can all become resident.
    guard(|| unsafe {
        alloc_common(
            dptr,
            bytesize as u64,
            || call_real!(CUDA, cuMemAllocManaged: unsafe extern "C" fn(*mut CUdeviceptr, usize, c_uint) -> CUresult, dptr, bytesize, flags),
        )
    })
}

/// Real drivers pad each row to the pitch; 512 bytes is the largest alignment they use.
const PITCH_ALIGN: u64 = 512;

/// Pitched allocations: the pitch is known only afterwards, so the padded bound is reserved and
/// then settled on the truth.
unsafe fn alloc_pitch(
    width: u64,
    height: u64,
    call: impl FnOnce() -> CUresult,
    read: impl Fn() -> (CUdeviceptr, u64),
    free: impl FnOnce(CUdeviceptr),
) -> CUresult {
    let t = tenant_or_return!();
    let (_, dev) = match t.current_dev() {
        Ok(d) => d,
        Err(e) => return e,
    };
    let bound = width
        .div_ceil(PITCH_ALIGN)
        .saturating_mul(PITCH_ALIGN)
        .saturating_mul(height);
    let r = t.charged_call(dev, bound, call);
    if r != CUDA_SUCCESS {
        return r;
    }
    let (ptr, pitch) = read();
    let actual = pitch.saturating_mul(height);
    if actual > bound && t.reserve(dev, actual - bound).is_err() {
        free(ptr);
        t.release(dev, bound);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if actual < bound {
        t.release(dev, bound - actual);
    }
    let rec = Rec {
        dev,
        bytes: actual,
        ctx: current_ctx(),
    };
    t.book.add(t, Key::Ptr(ptr), rec);
    CUDA_SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CUresult {
    guard(|| unsafe {
        let real = || call_real!(CUDA, cuMemAllocPitch_v2: unsafe extern "C" fn(*mut CUdeviceptr, *mut usize, usize, usize, c_uint) -> CUresult, dptr, pitch, width, height, elem);
        if dptr.is_null() || pitch.is_null() {
            return real();
        }
        alloc_pitch(
            width as u64,
            height as u64,
            real,
            || (*dptr, *pitch as u64),
            |p| {
                call_real!(CUDA, cuMemFree_v2: unsafe extern "C" fn(CUdeviceptr) -> CUresult, p);
            },
        )
    })
}

/// The pre-3.2 entry point with 32-bit pointers and sizes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch(
    dptr: *mut CUdeviceptr_v1,
    pitch: *mut c_uint,
    width: c_uint,
    height: c_uint,
    elem: c_uint,
) -> CUresult {
    guard(|| unsafe {
        let real = || call_real!(CUDA, cuMemAllocPitch: unsafe extern "C" fn(*mut CUdeviceptr_v1, *mut c_uint, c_uint, c_uint, c_uint) -> CUresult, dptr, pitch, width, height, elem);
        if dptr.is_null() || pitch.is_null() {
            return real();
        }
        alloc_pitch(
            width as u64,
            height as u64,
            real,
            || (*dptr as u64, *pitch as u64),
            |p| {
                call_real!(CUDA, cuMemFree: unsafe extern "C" fn(CUdeviceptr_v1) -> CUresult, p as CUdeviceptr_v1);
            },
        )
    })
}

/// Runs the driver call that frees `key`, giving back its charge (see `book.rs` for why the
/// book stays locked across the call).
pub(crate) fn freed(key: Key, call: impl FnOnce() -> CUresult) -> CUresult {
    match crate::tenant::tenant() {
        Ok(t) => t.book.free_with(t, key, call),
        Err(_) => call(),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    guard(|| {
        freed(
            Key::Ptr(dptr),
            || call_real!(CUDA, cuMemFree_v2: unsafe extern "C" fn(CUdeviceptr) -> CUresult, dptr),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree(dptr: CUdeviceptr_v1) -> CUresult {
    guard(|| {
        freed(
            Key::Ptr(dptr as u64),
            || call_real!(CUDA, cuMemFree: unsafe extern "C" fn(CUdeviceptr_v1) -> CUresult, dptr),
        )
    })
}

// ---- virtual memory management -------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult {
    guard(|| unsafe {
        let real = || call_real!(CUDA, cuMemCreate: unsafe extern "C" fn(*mut CUmemGenericAllocationHandle, usize, *const CUmemAllocationProp, u64) -> CUresult, handle, size, prop, flags);
        if handle.is_null()
            || prop.is_null()
            || (*prop).location.type_ != CU_MEM_LOCATION_TYPE_DEVICE
        {
            // Host-resident physical memory is not device memory.
            return real();
        }
        let t = tenant_or_return!();
        let dev = match t.dev((*prop).location.id) {
            Ok(d) => d,
            Err(e) => return e,
        };
        // Held across the call: a handle released by another thread meanwhile and reused by
        // the driver for this one must be settled first.
        let mut vmm = t.book.vmm.lock().unwrap();
        let r = t.charged_call(dev, size as u64, real);
        if r == CUDA_SUCCESS {
            vmm.created(t, *handle, dev, size as u64);
        }
        r
    })
}

/// Runs a VMM driver call with the VMM book locked and, if it succeeded, updates the book.
fn vmm_call(
    call: impl FnOnce() -> CUresult,
    then: impl FnOnce(&Tenant, &mut crate::book::Vmm),
) -> CUresult {
    let Ok(t) = crate::tenant::tenant() else {
        return call();
    };
    let mut vmm = t.book.vmm.lock().unwrap();
    let r = call();
    if r == CUDA_SUCCESS {
        then(t, &mut vmm);
    }
    r
}

/// Physical memory lives until its handle is released *and* its last mapping is gone, so the
/// charge does too.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    guard(|| {
        vmm_call(
            || call_real!(CUDA, cuMemRelease: unsafe extern "C" fn(CUmemGenericAllocationHandle) -> CUresult, handle),
            |t, v| v.released(t, handle),
        )
    })
}

/// The driver hands out the same handle again, with one more reference to release.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRetainAllocationHandle(
    handle: *mut CUmemGenericAllocationHandle,
    addr: *mut c_void,
) -> CUresult {
    guard(|| {
        vmm_call(
            || call_real!(CUDA, cuMemRetainAllocationHandle: unsafe extern "C" fn(*mut CUmemGenericAllocationHandle, *mut c_void) -> CUresult, handle, addr),
            // SAFETY: the driver succeeded, so `handle` was a valid out-pointer it wrote.
            |_, v| v.retained(unsafe { *handle }),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: CUmemGenericAllocationHandle,
    flags: u64,
) -> CUresult {
    guard(|| {
        vmm_call(
            || call_real!(CUDA, cuMemMap: unsafe extern "C" fn(CUdeviceptr, usize, usize, CUmemGenericAllocationHandle, u64) -> CUresult, ptr, size, offset, handle, flags),
            |_, v| v.mapped(ptr, size as u64, handle),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard(|| {
        vmm_call(
            || call_real!(CUDA, cuMemUnmap: unsafe extern "C" fn(CUdeviceptr, usize) -> CUresult, ptr, size),
            |t, v| v.unmapped(t, ptr, size as u64),
        )
    })
}

/// Freeing an address range ends whatever is still mapped in it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard(|| {
        vmm_call(
            || call_real!(CUDA, cuMemAddressFree: unsafe extern "C" fn(CUdeviceptr, usize) -> CUresult, ptr, size),
            |t, v| v.unmapped(t, ptr, size as u64),
        )
    })
}

// ---- arrays ----------------------------------------------------------------------------------

/// Charges an array of the size `bytes` gives (`array::array_bytes`, the rules the driver sizes
/// arrays by). A missing descriptor or handle goes to the driver, which rejects it; a descriptor
/// that cannot be sized is refused here, so no array is ever created uncharged.
pub(crate) unsafe fn object_hook(
    handle_out: *const usize,
    bytes: Option<Result<u64, CUresult>>,
    owner: fn(usize) -> Key,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    let Some(bytes) = bytes.filter(|_| !handle_out.is_null()) else {
        return call();
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) => return e,
    };
    let t = tenant_or_return!();
    let (_, dev) = match t.current_dev() {
        Ok(d) => d,
        Err(e) => return e,
    };
    let r = t.charged_call(dev, bytes, call);
    if r == CUDA_SUCCESS {
        let rec = Rec {
            dev,
            bytes,
            ctx: current_ctx(),
        };
        t.book.add(t, owner(unsafe { *handle_out }), rec);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayCreate_v2(
    arr: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR,
) -> CUresult {
    guard(|| unsafe {
        let bytes = desc
            .as_ref()
            .map(|d| array::array_bytes(&array::from_2d(d), 1));
        object_hook(
            arr.cast(),
            bytes,
            Key::Array,
            || call_real!(CUDA, cuArrayCreate_v2: unsafe extern "C" fn(*mut CUarray, *const CUDA_ARRAY_DESCRIPTOR) -> CUresult, arr, desc),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayCreate(
    arr: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR_v1,
) -> CUresult {
    guard(|| unsafe {
        let bytes = desc
            .as_ref()
            .map(|d| array::array_bytes(&array::from_2d_v1(d), 1));
        object_hook(
            arr.cast(),
            bytes,
            Key::Array,
            || call_real!(CUDA, cuArrayCreate: unsafe extern "C" fn(*mut CUarray, *const CUDA_ARRAY_DESCRIPTOR_v1) -> CUresult, arr, desc),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArray3DCreate_v2(
    arr: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
) -> CUresult {
    guard(|| unsafe {
        let bytes = desc.as_ref().map(|d| array::array_bytes(d, 1));
        object_hook(
            arr.cast(),
            bytes,
            Key::Array,
            || call_real!(CUDA, cuArray3DCreate_v2: unsafe extern "C" fn(*mut CUarray, *const CUDA_ARRAY3D_DESCRIPTOR) -> CUresult, arr, desc),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArray3DCreate(
    arr: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR_v1,
) -> CUresult {
    guard(|| unsafe {
        let bytes = desc
            .as_ref()
            .map(|d| array::array_bytes(&array::from_3d_v1(d), 1));
        object_hook(
            arr.cast(),
            bytes,
            Key::Array,
            || call_real!(CUDA, cuArray3DCreate: unsafe extern "C" fn(*mut CUarray, *const CUDA_ARRAY3D_DESCRIPTOR_v1) -> CUresult, arr, desc),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayDestroy(arr: CUarray) -> CUresult {
    guard(|| {
        freed(
            Key::Array(arr as usize),
            || call_real!(CUDA, cuArrayDestroy: unsafe extern "C" fn(CUarray) -> CUresult, arr),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    arr: *mut CUmipmappedArray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
    levels: c_uint,
) -> CUresult {
    guard(|| unsafe {
        let real = || call_real!(CUDA, cuMipmappedArrayCreate: unsafe extern "C" fn(*mut CUmipmappedArray, *const CUDA_ARRAY3D_DESCRIPTOR, c_uint) -> CUresult, arr, desc, levels);
        object_hook(
            arr.cast(),
            desc.as_ref().map(|d| array::array_bytes(d, levels)),
            Key::Mipmap,
            real,
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayDestroy(arr: CUmipmappedArray) -> CUresult {
    guard(|| {
        freed(
            Key::Mipmap(arr as usize),
            || call_real!(CUDA, cuMipmappedArrayDestroy: unsafe extern "C" fn(CUmipmappedArray) -> CUresult, arr),
        )
    })
}

// ---- stream-ordered allocation and memory pools --------------------------------------------------

fn pool_reserved(pool: CUmemoryPool) -> Option<u64> {
    let mut v: u64 = 0;
    let r = call_real!(CUDA, cuMemPoolGetAttribute: unsafe extern "C" fn(CUmemoryPool, CUmemPool_attribute, *mut c_void) -> CUresult,
        pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, (&mut v as *mut u64).cast());
    (r == CUDA_SUCCESS).then_some(v)
}

/// Brings every pool's charge in line with what it has reserved now. Returns whether anything
/// was given back.
pub fn reconcile_pools(t: &Tenant) -> bool {
    let mut freed = false;
    let mut pools = t.pools.lock().unwrap();
    for (&pool, pc) in pools.iter_mut() {
        freed |= reconcile_one(t, pool as CUmemoryPool, pc);
    }
    drop(pools);
    // The device's graph memory is a pool too.
    freed |= crate::graphmem::reconcile(t);
    freed
}

fn reconcile_one(t: &Tenant, pool: CUmemoryPool, pc: &mut PoolCharge) -> bool {
    let (Some(dev), Some(now)) = (pc.dev, pool_reserved(pool)) else {
        return false;
    };
    if now > pc.charged {
        // Memory the driver has already handed out; the next reservation sees it.
        t.charge_unchecked(dev, now - pc.charged);
    } else if now < pc.charged {
        t.release(dev, pc.charged - now);
    }
    let freed = now < pc.charged;
    pc.charged = now;
    freed
}

fn default_pool(ordinal: CUdevice) -> Result<CUmemoryPool, CUresult> {
    let mut pool: CUmemoryPool = std::ptr::null_mut();
    let r = call_real!(CUDA, cuDeviceGetMemPool: unsafe extern "C" fn(*mut CUmemoryPool, CUdevice) -> CUresult, &mut pool, ordinal);
    if r == CUDA_SUCCESS { Ok(pool) } else { Err(r) }
}

/// Allocates `bytes` from `pool` through `call` and charges the pool's growth.
unsafe fn pool_alloc(
    t: &Tenant,
    pool: CUmemoryPool,
    dev: Dev,
    dptr: *mut CUdeviceptr,
    bytes: u64,
    stream: CUstream,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    // Settle other pools first, so a pool that has given memory back does not cause a refusal.
    if t.available(dev) < bytes {
        reconcile_pools(t);
    }
    let mut pools = t.pools.lock().unwrap();
    let pc = pools.entry(pool as usize).or_default();
    pc.dev.get_or_insert(dev);
    reconcile_one(t, pool, pc);
    if t.reserve_exact(dev, bytes).is_err() {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    let r = call();
    let now = pool_reserved(pool).unwrap_or(pc.charged.saturating_add(bytes));
    let growth = now.saturating_sub(pc.charged);
    if r != CUDA_SUCCESS {
        t.release(dev, bytes);
        reconcile_one(t, pool, pc);
        return r;
    }
    if growth <= bytes {
        t.release(dev, bytes - growth);
        pc.charged = now;
        return CUDA_SUCCESS;
    }
    // The pool grew by more than was asked (it reserves in chunks): that is its real footprint.
    if t.reserve_exact(dev, growth - bytes).is_ok() {
        pc.charged = now;
        return CUDA_SUCCESS;
    }
    // It does not fit: undo the allocation and hand the chunk back to the device.
    call_real!(CUDA, cuMemFreeAsync: unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult, unsafe { *dptr }, stream);
    call_real!(CUDA, cuStreamSynchronize: unsafe extern "C" fn(CUstream) -> CUresult, stream);
    call_real!(CUDA, cuMemPoolTrimTo: unsafe extern "C" fn(CUmemoryPool, usize) -> CUresult, pool, 0);
    t.release(dev, bytes);
    reconcile_one(t, pool, pc);
    CUDA_ERROR_OUT_OF_MEMORY
}

type AllocAsyncFn = unsafe extern "C" fn(*mut CUdeviceptr, usize, CUstream) -> CUresult;
type AllocFromPoolFn =
    unsafe extern "C" fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream) -> CUresult;
type FreeAsyncFn = unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult;

unsafe fn alloc_async(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    stream: CUstream,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if dptr.is_null() {
        return call();
    }
    let t = tenant_or_return!();
    let (ordinal, dev) = match t.current_dev() {
        Ok(d) => d,
        Err(e) => return e,
    };
    let pool = match default_pool(ordinal) {
        Ok(p) => p,
        Err(e) => return e,
    };
    unsafe { pool_alloc(t, pool, dev, dptr, bytes as u64, stream, call) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    guard(|| unsafe {
        alloc_async(
            dptr,
            bytes,
            stream,
            || call_real!(CUDA, cuMemAllocAsync: AllocAsyncFn, dptr, bytes, stream),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    stream: CUstream,
) -> CUresult {
    guard(|| unsafe {
        alloc_async(
            dptr,
            bytes,
            stream,
            || call_real!(CUDA, cuMemAllocAsync_ptsz: AllocAsyncFn, dptr, bytes, stream),
        )
    })
}

unsafe fn alloc_from_pool(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    pool: CUmemoryPool,
    stream: CUstream,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if dptr.is_null() || pool.is_null() {
        return call();
    }
    let t = tenant_or_return!();
    let known = t
        .pools
        .lock()
        .unwrap()
        .get(&(pool as usize))
        .and_then(|p| p.dev);
    let dev = match known {
        Some(d) => d,
        None => match t.current_dev() {
            Ok((_, d)) => d,
            Err(e) => return e,
        },
    };
    unsafe { pool_alloc(t, pool, dev, dptr, bytes as u64, stream, call) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    guard(|| unsafe {
        alloc_from_pool(
            dptr,
            bytes,
            pool,
            stream,
            || call_real!(CUDA, cuMemAllocFromPoolAsync: AllocFromPoolFn, dptr, bytes, pool, stream),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut CUdeviceptr,
    bytes: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    guard(|| unsafe {
        alloc_from_pool(
            dptr,
            bytes,
            pool,
            stream,
            || call_real!(CUDA, cuMemAllocFromPoolAsync_ptsz: AllocFromPoolFn, dptr, bytes, pool, stream),
        )
    })
}

fn after_pool_change(r: CUresult) -> CUresult {
    if r == CUDA_SUCCESS
        && let Ok(t) = crate::tenant::tenant()
    {
        reconcile_pools(t);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    guard(|| after_pool_change(call_real!(CUDA, cuMemFreeAsync: FreeAsyncFn, dptr, stream)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    guard(|| after_pool_change(call_real!(CUDA, cuMemFreeAsync_ptsz: FreeAsyncFn, dptr, stream)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolTrimTo(pool: CUmemoryPool, keep: usize) -> CUresult {
    guard(|| {
        after_pool_change(
            call_real!(CUDA, cuMemPoolTrimTo: unsafe extern "C" fn(CUmemoryPool, usize) -> CUresult, pool, keep),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolCreate(
    pool: *mut CUmemoryPool,
    props: *const CUmemPoolProps,
) -> CUresult {
    guard(|| unsafe {
        let r = call_real!(CUDA, cuMemPoolCreate: unsafe extern "C" fn(*mut CUmemoryPool, *const CUmemPoolProps) -> CUresult, pool, props);
        if r == CUDA_SUCCESS
            && !props.is_null()
            && (*props).location.type_ == CU_MEM_LOCATION_TYPE_DEVICE
        {
            let t = tenant_or_return!();
            if let Ok(dev) = t.dev((*props).location.id) {
                t.pools.lock().unwrap().insert(
                    *pool as usize,
                    PoolCharge {
                        dev: Some(dev),
                        charged: 0,
                    },
                );
            }
        }
        r
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolDestroy(pool: CUmemoryPool) -> CUresult {
    guard(|| {
        let r = call_real!(CUDA, cuMemPoolDestroy: unsafe extern "C" fn(CUmemoryPool) -> CUresult, pool);
        if r == CUDA_SUCCESS
            && let Ok(t) = crate::tenant::tenant()
            && let Some(PoolCharge {
                dev: Some(dev),
                charged,
            }) = t.pools.lock().unwrap().remove(&(pool as usize))
        {
            t.release(dev, charged);
        }
        r
    })
}

// ---- what the tenant is told ------------------------------------------------------------------

/// Gives back what dead processes of the tenant still hold, so that every process answers memory
/// queries exactly, with or without a supervisor reaping. Cheap: slots that hold nothing are
/// skipped, and a live slot costs one failed lock attempt.
pub fn reclaim_dead(t: &Tenant) {
    t.reclaim_dead();
}

/// The tenant's view of a device: total = its cap (never more than the device), free = what is
/// left of the cap (never more than the device really has free).
pub fn tenant_view(t: &Tenant, dev: Dev, real_free: u64, real_total: u64) -> (u64, u64) {
    t.view(dev, real_free, real_total)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    guard(|| unsafe {
        let r = call_real!(CUDA, cuMemGetInfo_v2: unsafe extern "C" fn(*mut usize, *mut usize) -> CUresult, free, total);
        if r != CUDA_SUCCESS || free.is_null() || total.is_null() {
            return r;
        }
        let t = tenant_or_return!();
        let (_, dev) = match t.current_dev() {
            Ok(d) => d,
            Err(e) => return e,
        };
        reclaim_dead(t);
        reconcile_pools(t);
        let (f, tot) = tenant_view(t, dev, *free as u64, *total as u64);
        (*free, *total) = (f as usize, tot as usize);
        r
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) -> CUresult {
    guard(|| unsafe {
        let (mut f, mut tot) = (0usize, 0usize);
        let r = cuMemGetInfo_v2(&mut f, &mut tot);
        if r == CUDA_SUCCESS && !free.is_null() && !total.is_null() {
            *free = f.min(u32::MAX as usize) as c_uint;
            *total = tot.min(u32::MAX as usize) as c_uint;
        }
        r
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard(|| unsafe {
        let r = call_real!(CUDA, cuDeviceTotalMem_v2: unsafe extern "C" fn(*mut usize, CUdevice) -> CUresult, bytes, dev);
        if r != CUDA_SUCCESS || bytes.is_null() {
            return r;
        }
        let t = tenant_or_return!();
        reclaim_dead(t);
        match t.dev(dev) {
            Ok(d) => *bytes = (*bytes as u64).min(t.cap(d)) as usize,
            Err(e) => return e,
        }
        r
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) -> CUresult {
    guard(|| unsafe {
        let mut b = 0usize;
        let r = cuDeviceTotalMem_v2(&mut b, dev);
        if r == CUDA_SUCCESS && !bytes.is_null() {
            *bytes = b.min(u32::MAX as usize) as c_uint;
        }
        r
    })
}

//! Device memory: linear allocations, copies and sets, stream-ordered pools, VMM, arrays.

use std::ffi::{c_uint, c_ushort, c_void};

use gpuslice_cuda_abi::array;
use gpuslice_cuda_abi::driver::*;

use crate::*;

// ---- linear memory -------------------------------------------------------------------------

pub(crate) fn alloc_linear(
    r: &mut Reg,
    size: u64,
    kind: AllocKind,
    low32: bool,
) -> Result<u64, CUresult> {
    let s = sim()?;
    let c = r.current()?;
    let dev = r.ctxs[&c].dev;
    if size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let charge = round_up(size, PAGE);
    if !s.try_alloc(dev, charge) {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    let Some(p) = map_anon(size, low32) else {
        s.free(dev, charge);
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    };
    r.allocs.insert(
        p,
        Alloc {
            size,
            map_len: size,
            dev,
            ctx: c,
            charge,
            kind,
        },
    );
    Ok(p)
}

/// Frees the allocation based at `base`, whatever its kind.
pub(crate) fn free_alloc(r: &mut Reg, base: u64, _ctx_teardown: bool) -> R {
    let s = sim()?;
    let a = r.allocs.remove(&base).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    match a.kind {
        AllocKind::Linear => match r.exported.remove(&base) {
            // Exported: the charge is the shared object's, which others may still hold.
            Some(h) => crate::api_share::unhold(r, h.index),
            None => s.free(a.dev, a.charge),
        },
        AllocKind::Ipc(index) => {
            crate::api_share::ipc_unmapped(r, base);
            crate::api_share::unhold(r, index);
        }
        AllocKind::Managed | AllocKind::Global => s.free(a.dev, a.charge),
        // Pool memory stays reserved by the pool until it is trimmed.
        AllocKind::Pool(p) => {
            if let Some(pool) = r.pools.get_mut(&p) {
                pool.used = pool.used.saturating_sub(a.charge);
            }
        }
        AllocKind::Graph => {}
    }
    unmap(base, a.map_len);
    Ok(())
}

unsafe fn mem_alloc(dptr: *mut CUdeviceptr, size: u64) -> R {
    if dptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    sim()?;
    let p = alloc_linear(&mut reg(), size, AllocKind::Linear, false)?;
    unsafe { out(dptr, p) }
}

unsafe fn mem_alloc_v1(dptr: *mut CUdeviceptr_v1, size: u64) -> R {
    if dptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    sim()?;
    let mut r = reg();
    let p = alloc_linear(&mut r, size, AllocKind::Linear, true)?;
    if p > u32::MAX as u64 {
        free_alloc(&mut r, p, false)?;
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    unsafe { out(dptr, p as CUdeviceptr_v1) }
}

unsafe fn mem_free(p: u64) -> R {
    sim()?;
    let mut r = reg();
    match r.allocs.get(&p) {
        Some(a) if a.kind == AllocKind::Graph => {
            return crate::api_exec::free_graph_live(&mut r, p);
        }
        Some(a) if a.kind != AllocKind::Global && !matches!(a.kind, AllocKind::Ipc(_)) => {}
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    free_alloc(&mut r, p, false)
}

unsafe fn alloc_pitch(w: u64, h: u64, elem: u32, low32: bool) -> Result<(u64, u64), CUresult> {
    sim()?;
    if w == 0 || h == 0 || !matches!(elem, 4 | 8 | 16) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let pitch = round_up(w, 512);
    let p = alloc_linear(&mut reg(), pitch * h, AllocKind::Linear, low32)?;
    Ok((p, pitch))
}

unsafe fn address_range(p: u64) -> Result<(u64, u64), CUresult> {
    sim()?;
    let r = reg();
    r.current()?;
    r.alloc_at(p, 0)
        .map(|(b, a)| (b, a.size))
        .ok_or(CUDA_ERROR_NOT_FOUND)
}

// ---- copies and sets -----------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Side {
    Host,
    Device,
    Any,
}

/// Copies `n` bytes. Synchronous copies wait for the legacy default stream's work first;
/// asynchronous ones are ordered in their stream, where no simulated kernel touches data.
unsafe fn copy(dst: u64, ds: Side, src: u64, ss: Side, n: u64, stream: Option<CUstream>) -> R {
    sim()?;
    let wait = {
        let r = reg();
        let c = r.current()?;
        for (p, side) in [(dst, ds), (src, ss)] {
            match side {
                Side::Device => r.check_range(p, n)?,
                Side::Host | Side::Any if n > 0 && p == 0 => return Err(CUDA_ERROR_INVALID_VALUE),
                _ => {}
            }
        }
        match stream {
            Some(h) => {
                r.sid(h)?;
                0
            }
            None => r.not_before(Sid::Null(c)),
        }
    };
    sleep_until(wait);
    if n > 0 {
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n as usize) };
    }
    Ok(())
}

unsafe fn memset(dst: u64, value: u32, elem: u64, n: u64, stream: Option<CUstream>) -> R {
    sim()?;
    let wait = {
        let r = reg();
        let c = r.current()?;
        if dst % elem != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        r.check_range(dst, n.checked_mul(elem).ok_or(CUDA_ERROR_INVALID_VALUE)?)?;
        match stream {
            Some(h) => {
                r.sid(h)?;
                0
            }
            None => r.not_before(Sid::Null(c)),
        }
    };
    sleep_until(wait);
    unsafe {
        match elem {
            1 => std::ptr::write_bytes(dst as *mut u8, value as u8, n as usize),
            2 => std::slice::from_raw_parts_mut(dst as *mut u16, n as usize).fill(value as u16),
            _ => std::slice::from_raw_parts_mut(dst as *mut u32, n as usize).fill(value),
        }
    }
    Ok(())
}

// ---- stream-ordered pools ------------------------------------------------------------------

pub(crate) fn default_pool(r: &mut Reg, dev: usize) -> usize {
    if let Some(&p) = r.default_pool.get(&dev) {
        return p;
    }
    let h = r.handle();
    r.pools.insert(
        h,
        Pool {
            dev,
            reserved: 0,
            used: 0,
            reserved_high: 0,
            used_high: 0,
            threshold: 0,
            max_size: 0,
            default: true,
        },
    );
    r.default_pool.insert(dev, h);
    h
}

fn current_pool(r: &mut Reg, dev: usize) -> usize {
    match r.current_pool.get(&dev) {
        Some(&p) if r.pools.contains_key(&p) => p,
        _ => default_pool(r, dev),
    }
}

fn pool_alloc(r: &mut Reg, h: usize, size: u64) -> Result<u64, CUresult> {
    let s = sim()?;
    let c = r.current()?;
    if size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let charge = round_up(size, PAGE);
    let pool = r.pools.get_mut(&h).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    let dev = pool.dev;
    if pool.used + charge > pool.reserved {
        // Grow the reservation from the device, a chunk at a time.
        let grow = round_up(pool.used + charge - pool.reserved, POOL_CHUNK);
        if pool.max_size > 0 && pool.reserved + grow > pool.max_size {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        if !s.try_alloc(dev, grow) {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        pool.reserved += grow;
        pool.reserved_high = pool.reserved_high.max(pool.reserved);
    }
    let Some(p) = map_anon(size, false) else {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    };
    pool.used += charge;
    pool.used_high = pool.used_high.max(pool.used);
    r.allocs.insert(
        p,
        Alloc {
            size,
            map_len: size,
            dev,
            ctx: c,
            charge,
            kind: AllocKind::Pool(h),
        },
    );
    Ok(p)
}

/// Gives back reserved memory above both what is in use and `keep`.
fn pool_trim(r: &mut Reg, h: usize, keep: u64) {
    let Ok(s) = sim() else { return };
    if let Some(pool) = r.pools.get_mut(&h) {
        let floor = round_up(pool.used, POOL_CHUNK).max(round_up(keep, POOL_CHUNK));
        if pool.reserved > floor {
            s.free(pool.dev, pool.reserved - floor);
            pool.reserved = floor;
        }
    }
}

/// At synchronisation, pools holding more than their release threshold give the rest back.
pub(crate) fn trim_pools_on_sync(dev: usize) {
    let mut r = reg();
    let pools: Vec<(usize, u64)> = r
        .pools
        .iter()
        .filter(|(_, p)| p.dev == dev)
        .map(|(&h, p)| (h, p.threshold))
        .collect();
    for (h, t) in pools {
        pool_trim(&mut r, h, t);
    }
}

unsafe fn alloc_async(
    dptr: *mut CUdeviceptr,
    size: u64,
    pool: Option<CUmemoryPool>,
    stream: CUstream,
) -> R {
    if dptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    sim()?;
    let mut r = reg();
    let sid = r.sid(stream)?;
    let h = match pool {
        Some(p) => {
            if !r.pools.contains_key(&(p as usize)) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            p as usize
        }
        None => {
            let dev = r.sid_dev(sid);
            current_pool(&mut r, dev)
        }
    };
    let p = pool_alloc(&mut r, h, size)?;
    unsafe { out(dptr, p) }
}

unsafe fn free_async(p: u64, stream: CUstream) -> R {
    sim()?;
    let mut r = reg();
    r.sid(stream)?;
    match r.allocs.get(&p) {
        Some(a) if a.kind == AllocKind::Graph => {
            return crate::api_exec::free_graph_live(&mut r, p);
        }
        Some(a) if a.kind != AllocKind::Global && !matches!(a.kind, AllocKind::Ipc(_)) => {}
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    free_alloc(&mut r, p, false)
}

fn pool_handle(r: &Reg, pool: CUmemoryPool) -> Result<usize, CUresult> {
    let h = pool as usize;
    if r.pools.contains_key(&h) {
        Ok(h)
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

// ---- VMM -----------------------------------------------------------------------------------

fn drop_phys(r: &mut Reg, h: u64) {
    if let Some(p) = r.phys.remove(&h) {
        unsafe { libc::close(p.fd) };
        match p.shared {
            Some(index) => crate::api_share::unhold(r, index),
            None => {
                if let Ok(s) = sim() {
                    s.free(p.dev, p.size);
                }
            }
        }
    }
}

fn check_prop(prop: *const CUmemAllocationProp) -> Result<usize, CUresult> {
    if prop.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let p = unsafe { &*prop };
    if p.type_ != CU_MEM_ALLOCATION_TYPE_PINNED || p.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    device(p.location.id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)
}

/// Unmaps whole mappings inside `[ptr, ptr+size)`, keeping the address range reserved.
fn unmap_range(r: &mut Reg, ptr: u64, size: u64) -> R {
    let (&base, va) = r
        .vas
        .range(..=ptr)
        .next_back()
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if ptr + size > base + va.size {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let hit: Vec<(u64, u64, u64)> = va
        .maps
        .iter()
        .filter(|&(&m, &(l, _))| m < ptr + size && m + l > ptr)
        .map(|(&m, &(l, h))| (m, l, h))
        .collect();
    if hit.is_empty() || hit.iter().any(|&(m, l, _)| m < ptr || m + l > ptr + size) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for (m, l, h) in hit {
        unsafe {
            libc::mmap(
                m as *mut c_void,
                l as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        r.vas.get_mut(&base).unwrap().maps.remove(&m);
        if let Some(p) = r.phys.get_mut(&h) {
            p.maps -= 1;
            if p.refs == 0 && p.maps == 0 {
                drop_phys(r, h);
            }
        }
    }
    Ok(())
}

// ---- arrays --------------------------------------------------------------------------------

fn create_array(out_h: *mut *mut c_void, bytes: u64, mipmapped: bool) -> R {
    if out_h.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let s = sim()?;
    let mut r = reg();
    let c = r.current()?;
    let dev = r.ctxs[&c].dev;
    // Already whole allocation units (array::ARRAY_GRANULARITY).
    let charge = bytes;
    if !s.try_alloc(dev, charge) {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    let h = r.handle();
    r.arrays.insert(
        h,
        Array {
            dev,
            ctx: c,
            charge,
            mipmapped,
        },
    );
    unsafe { *out_h = h as *mut c_void };
    Ok(())
}

fn destroy_array(h: usize, mipmapped: bool) -> R {
    let s = sim()?;
    let mut r = reg();
    match r.arrays.get(&h) {
        Some(a) if a.mipmapped == mipmapped => {}
        _ => return Err(CUDA_ERROR_INVALID_HANDLE),
    }
    let a = r.arrays.remove(&h).unwrap();
    s.free(a.dev, a.charge);
    Ok(())
}

unsafe fn host_alloc(pp: *mut *mut c_void, size: u64) -> R {
    if pp.is_null() || size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    sim()?;
    let mut r = reg();
    r.current()?;
    let p = map_anon(size, false).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
    r.host_allocs.insert(p as usize, size as usize);
    unsafe { out(pp, p as *mut c_void) }
}

export! { exports_mem;

fn cuMemAlloc(dptr: *mut CUdeviceptr_v1, size: c_uint) { mem_alloc_v1(dptr, size as u64) }
fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) { mem_alloc(dptr, size as u64) }
fn cuMemFree(dptr: CUdeviceptr_v1) { mem_free(dptr as u64) }
fn cuMemFree_v2(dptr: CUdeviceptr) { mem_free(dptr) }

fn cuMemAllocPitch(dptr: *mut CUdeviceptr_v1, pitch: *mut c_uint, w: c_uint, h: c_uint, elem: c_uint) {
    if dptr.is_null() || pitch.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (p, pi) = alloc_pitch(w as u64, h as u64, elem, true)?;
    if p > u32::MAX as u64 {
        free_alloc(&mut reg(), p, false)?;
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    out(dptr, p as CUdeviceptr_v1)?;
    out(pitch, pi as c_uint)
}

fn cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, w: usize, h: usize, elem: c_uint) {
    if dptr.is_null() || pitch.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (p, pi) = alloc_pitch(w as u64, h as u64, elem, false)?;
    out(dptr, p)?;
    out(pitch, pi as usize)
}

fn cuMemAllocManaged(dptr: *mut CUdeviceptr, size: usize, flags: c_uint) {
    if dptr.is_null() || !(flags == CU_MEM_ATTACH_GLOBAL || flags == CU_MEM_ATTACH_HOST) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    sim()?;
    let p = alloc_linear(&mut reg(), size as u64, AllocKind::Managed, false)?;
    out(dptr, p)
}

fn cuMemGetAddressRange(base: *mut CUdeviceptr_v1, size: *mut c_uint, dptr: CUdeviceptr_v1) {
    let (b, s) = address_range(dptr as u64)?;
    if !base.is_null() {
        *base = b as CUdeviceptr_v1;
    }
    if !size.is_null() {
        *size = s as c_uint;
    }
    Ok(())
}

fn cuMemGetAddressRange_v2(base: *mut CUdeviceptr, size: *mut usize, dptr: CUdeviceptr) {
    let (b, s) = address_range(dptr)?;
    if !base.is_null() {
        *base = b;
    }
    if !size.is_null() {
        *size = s as usize;
    }
    Ok(())
}

fn cuMemAllocHost(pp: *mut *mut c_void, size: c_uint) { host_alloc(pp, size as u64) }
fn cuMemAllocHost_v2(pp: *mut *mut c_void, size: usize) { host_alloc(pp, size as u64) }
fn cuMemHostAlloc(pp: *mut *mut c_void, size: usize, _flags: c_uint) { host_alloc(pp, size as u64) }

fn cuMemFreeHost(p: *mut c_void) {
    sim()?;
    let len = reg().host_allocs.remove(&(p as usize)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    unmap(p as u64, len as u64);
    Ok(())
}

fn cuMemHostGetDevicePointer_v2(pd: *mut CUdeviceptr, p: *mut c_void, _flags: c_uint) {
    sim()?;
    if !reg().host_allocs.contains_key(&(p as usize)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    out(pd, p as u64)
}

// Copies. `cuMemcpy` takes unified addresses: either side may be host or device.
fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, Side::Any, src, Side::Any, n as u64, None) }
fn cuMemcpy_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, Side::Any, src, Side::Any, n as u64, None) }
fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst, Side::Any, src, Side::Any, n as u64, Some(s)) }
fn cuMemcpyAsync_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst, Side::Any, src, Side::Any, n as u64, Some(s)) }

fn cuMemcpyHtoD(dst: CUdeviceptr_v1, src: *const c_void, n: c_uint) { copy(dst as u64, Side::Device, src as u64, Side::Host, n as u64, None) }
fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize) { copy(dst, Side::Device, src as u64, Side::Host, n as u64, None) }
fn cuMemcpyHtoD_v2_ptds(dst: CUdeviceptr, src: *const c_void, n: usize) { copy(dst, Side::Device, src as u64, Side::Host, n as u64, None) }
fn cuMemcpyDtoH(dst: *mut c_void, src: CUdeviceptr_v1, n: c_uint) { copy(dst as u64, Side::Host, src as u64, Side::Device, n as u64, None) }
fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) { copy(dst as u64, Side::Host, src, Side::Device, n as u64, None) }
fn cuMemcpyDtoH_v2_ptds(dst: *mut c_void, src: CUdeviceptr, n: usize) { copy(dst as u64, Side::Host, src, Side::Device, n as u64, None) }
fn cuMemcpyDtoD(dst: CUdeviceptr_v1, src: CUdeviceptr_v1, n: c_uint) { copy(dst as u64, Side::Device, src as u64, Side::Device, n as u64, None) }
fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, Side::Device, src, Side::Device, n as u64, None) }
fn cuMemcpyDtoD_v2_ptds(dst: CUdeviceptr, src: CUdeviceptr, n: usize) { copy(dst, Side::Device, src, Side::Device, n as u64, None) }

fn cuMemcpyHtoDAsync(dst: CUdeviceptr_v1, src: *const c_void, n: c_uint, s: CUstream) { copy(dst as u64, Side::Device, src as u64, Side::Host, n as u64, Some(s)) }
fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, n: usize, s: CUstream) { copy(dst, Side::Device, src as u64, Side::Host, n as u64, Some(s)) }
fn cuMemcpyHtoDAsync_v2_ptsz(dst: CUdeviceptr, src: *const c_void, n: usize, s: CUstream) { copy(dst, Side::Device, src as u64, Side::Host, n as u64, Some(s)) }
fn cuMemcpyDtoHAsync(dst: *mut c_void, src: CUdeviceptr_v1, n: c_uint, s: CUstream) { copy(dst as u64, Side::Host, src as u64, Side::Device, n as u64, Some(s)) }
fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst as u64, Side::Host, src, Side::Device, n as u64, Some(s)) }
fn cuMemcpyDtoHAsync_v2_ptsz(dst: *mut c_void, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst as u64, Side::Host, src, Side::Device, n as u64, Some(s)) }
fn cuMemcpyDtoDAsync(dst: CUdeviceptr_v1, src: CUdeviceptr_v1, n: c_uint, s: CUstream) { copy(dst as u64, Side::Device, src as u64, Side::Device, n as u64, Some(s)) }
fn cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst, Side::Device, src, Side::Device, n as u64, Some(s)) }
fn cuMemcpyDtoDAsync_v2_ptsz(dst: CUdeviceptr, src: CUdeviceptr, n: usize, s: CUstream) { copy(dst, Side::Device, src, Side::Device, n as u64, Some(s)) }

fn cuMemsetD8(dst: CUdeviceptr_v1, v: u8, n: c_uint) { memset(dst as u64, v as u32, 1, n as u64, None) }
fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) { memset(dst, v as u32, 1, n as u64, None) }
fn cuMemsetD8_v2_ptds(dst: CUdeviceptr, v: u8, n: usize) { memset(dst, v as u32, 1, n as u64, None) }
fn cuMemsetD16(dst: CUdeviceptr_v1, v: c_ushort, n: c_uint) { memset(dst as u64, v as u32, 2, n as u64, None) }
fn cuMemsetD16_v2(dst: CUdeviceptr, v: c_ushort, n: usize) { memset(dst, v as u32, 2, n as u64, None) }
fn cuMemsetD16_v2_ptds(dst: CUdeviceptr, v: c_ushort, n: usize) { memset(dst, v as u32, 2, n as u64, None) }
fn cuMemsetD32(dst: CUdeviceptr_v1, v: c_uint, n: c_uint) { memset(dst as u64, v, 4, n as u64, None) }
fn cuMemsetD32_v2(dst: CUdeviceptr, v: c_uint, n: usize) { memset(dst, v, 4, n as u64, None) }
fn cuMemsetD32_v2_ptds(dst: CUdeviceptr, v: c_uint, n: usize) { memset(dst, v, 4, n as u64, None) }
fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, s: CUstream) { memset(dst, v as u32, 1, n as u64, Some(s)) }
fn cuMemsetD8Async_ptsz(dst: CUdeviceptr, v: u8, n: usize, s: CUstream) { memset(dst, v as u32, 1, n as u64, Some(s)) }
fn cuMemsetD16Async(dst: CUdeviceptr, v: c_ushort, n: usize, s: CUstream) { memset(dst, v as u32, 2, n as u64, Some(s)) }
fn cuMemsetD16Async_ptsz(dst: CUdeviceptr, v: c_ushort, n: usize, s: CUstream) { memset(dst, v as u32, 2, n as u64, Some(s)) }
fn cuMemsetD32Async(dst: CUdeviceptr, v: c_uint, n: usize, s: CUstream) { memset(dst, v, 4, n as u64, Some(s)) }
fn cuMemsetD32Async_ptsz(dst: CUdeviceptr, v: c_uint, n: usize, s: CUstream) { memset(dst, v, 4, n as u64, Some(s)) }

// Stream-ordered allocation.
fn cuMemAllocAsync(dptr: *mut CUdeviceptr, size: usize, s: CUstream) { alloc_async(dptr, size as u64, None, s) }
fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, size: usize, s: CUstream) { alloc_async(dptr, size as u64, None, s) }
fn cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, size: usize, pool: CUmemoryPool, s: CUstream) { alloc_async(dptr, size as u64, Some(pool), s) }
fn cuMemAllocFromPoolAsync_ptsz(dptr: *mut CUdeviceptr, size: usize, pool: CUmemoryPool, s: CUstream) { alloc_async(dptr, size as u64, Some(pool), s) }
fn cuMemFreeAsync(dptr: CUdeviceptr, s: CUstream) { free_async(dptr, s) }
fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, s: CUstream) { free_async(dptr, s) }

fn cuMemPoolCreate(pool: *mut CUmemoryPool, props: *const CUmemPoolProps) {
    if pool.is_null() || props.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let p = &*props;
    if p.allocType != CU_MEM_ALLOCATION_TYPE_PINNED || p.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let dev = device(p.location.id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)?;
    let mut r = reg();
    let h = r.handle();
    r.pools.insert(h, Pool { dev, reserved: 0, used: 0, reserved_high: 0, used_high: 0, threshold: 0, max_size: p.maxSize as u64, default: false });
    out(pool, h as CUmemoryPool)
}

fn cuMemPoolDestroy(pool: CUmemoryPool) {
    let s = sim()?;
    let mut r = reg();
    let h = pool_handle(&r, pool)?;
    if r.pools[&h].default {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let bases: Vec<u64> = r.allocs.iter().filter(|(_, a)| a.kind == AllocKind::Pool(h)).map(|(&b, _)| b).collect();
    for b in bases {
        free_alloc(&mut r, b, true)?;
    }
    let p = r.pools.remove(&h).unwrap();
    s.free(p.dev, p.reserved);
    r.current_pool.retain(|_, &mut c| c != h);
    Ok(())
}

fn cuMemPoolTrimTo(pool: CUmemoryPool, keep: usize) {
    sim()?;
    let mut r = reg();
    let h = pool_handle(&r, pool)?;
    pool_trim(&mut r, h, keep as u64);
    Ok(())
}

fn cuMemPoolSetAttribute(pool: CUmemoryPool, attr: CUmemPool_attribute, value: *mut c_void) {
    sim()?;
    if value.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let h = pool_handle(&r, pool)?;
    let p = r.pools.get_mut(&h).unwrap();
    match attr {
        CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => {}
        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => p.threshold = *(value as *const u64),
        // Only resetting a high-water mark is allowed.
        CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH if *(value as *const u64) == 0 => p.reserved_high = p.reserved,
        CU_MEMPOOL_ATTR_USED_MEM_HIGH if *(value as *const u64) == 0 => p.used_high = p.used,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    Ok(())
}

fn cuMemPoolGetAttribute(pool: CUmemoryPool, attr: CUmemPool_attribute, value: *mut c_void) {
    sim()?;
    if value.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let r = reg();
    let h = pool_handle(&r, pool)?;
    let p = &r.pools[&h];
    let v = match attr {
        CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => {
            *(value as *mut i32) = 1;
            return Ok(());
        }
        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => p.threshold,
        CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT => p.reserved,
        CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH => p.reserved_high,
        CU_MEMPOOL_ATTR_USED_MEM_CURRENT => p.used,
        CU_MEMPOOL_ATTR_USED_MEM_HIGH => p.used_high,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    *(value as *mut u64) = v;
    Ok(())
}

fn cuDeviceGetDefaultMemPool(pool: *mut CUmemoryPool, dev: CUdevice) {
    let d = device(dev)?;
    let h = default_pool(&mut reg(), d);
    out(pool, h as CUmemoryPool)
}

fn cuDeviceGetMemPool(pool: *mut CUmemoryPool, dev: CUdevice) {
    let d = device(dev)?;
    let h = current_pool(&mut reg(), d);
    out(pool, h as CUmemoryPool)
}

fn cuDeviceSetMemPool(dev: CUdevice, pool: CUmemoryPool) {
    let d = device(dev)?;
    let mut r = reg();
    let h = pool_handle(&r, pool)?;
    if r.pools[&h].dev != d {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    r.current_pool.insert(d, h);
    Ok(())
}

// Virtual memory management.
fn cuMemGetAllocationGranularity(g: *mut usize, prop: *const CUmemAllocationProp, _option: std::ffi::c_int) {
    sim()?;
    check_prop(prop)?;
    out(g, VMM_GRANULARITY as usize)
}

fn cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: u64) {
    let s = sim()?;
    if handle.is_null() || flags != 0 || size == 0 || size as u64 % VMM_GRANULARITY != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let dev = check_prop(prop)?;
    if !s.try_alloc(dev, size as u64) {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    let fd = libc::memfd_create(c"gpuslice-vmm".as_ptr(), libc::MFD_CLOEXEC);
    if fd < 0 || libc::ftruncate(fd, size as libc::off_t) != 0 {
        if fd >= 0 {
            libc::close(fd);
        }
        s.free(dev, size as u64);
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    let mut r = reg();
    let h = r.handle() as u64;
    let handle_types = (*prop).requestedHandleTypes;
    r.phys.insert(h, Phys { dev, size: size as u64, fd, refs: 1, maps: 0, handle_types, shared: None });
    out(handle, h)
}

fn cuMemRelease(handle: CUmemGenericAllocationHandle) {
    sim()?;
    let mut r = reg();
    let p = r.phys.get_mut(&handle).filter(|p| p.refs > 0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    // Memory still mapped stays until its last mapping goes.
    p.refs -= 1;
    if p.refs == 0 && p.maps == 0 {
        drop_phys(&mut r, handle);
    }
    Ok(())
}

fn cuMemRetainAllocationHandle(handle: *mut CUmemGenericAllocationHandle, addr: *mut c_void) {
    sim()?;
    if handle.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let a = addr as u64;
    // The physical allocation mapped at `addr`, released or not: the handle comes back with one
    // more reference to release.
    let h = r
        .vas
        .range(..=a)
        .next_back()
        .and_then(|(_, va)| va.maps.range(..=a).next_back())
        .filter(|&(&m, &(l, _))| a < m + l)
        .map(|(_, &(_, h))| h)
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    r.phys.get_mut(&h).ok_or(CUDA_ERROR_INVALID_VALUE)?.refs += 1;
    out(handle, h)
}

fn cuMemAddressReserve(ptr: *mut CUdeviceptr, size: usize, align: usize, addr: CUdeviceptr, flags: u64) {
    sim()?;
    let size = size as u64;
    let align = if align == 0 { VMM_GRANULARITY } else { align as u64 };
    if ptr.is_null() || flags != 0 || size == 0 || size % VMM_GRANULARITY != 0 || !align.is_power_of_two() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let len = size + align;
    let raw = libc::mmap(
        addr as *mut c_void,
        len as usize,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    );
    if raw == libc::MAP_FAILED {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    let raw = raw as u64;
    let base = round_up(raw, align);
    if base > raw {
        libc::munmap(raw as *mut c_void, (base - raw) as usize);
    }
    let tail = raw + len - (base + size);
    if tail > 0 {
        libc::munmap((base + size) as *mut c_void, tail as usize);
    }
    reg().vas.insert(base, VaRange { size, maps: Default::default() });
    out(ptr, base)
}

fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) {
    sim()?;
    let mut r = reg();
    match r.vas.get(&ptr) {
        Some(v) if v.size == size as u64 => {}
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    if !r.vas[&ptr].maps.is_empty() {
        unmap_range(&mut r, ptr, size as u64)?;
    }
    r.vas.remove(&ptr);
    libc::munmap(ptr as *mut c_void, size);
    Ok(())
}

fn cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: u64) {
    sim()?;
    let (size, offset) = (size as u64, offset as u64);
    if flags != 0 || size == 0 || ptr % VMM_GRANULARITY != 0 || size % VMM_GRANULARITY != 0 || offset % VMM_GRANULARITY != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let (fd, psize) = match r.phys.get(&handle) {
        Some(p) if p.refs > 0 => (p.fd, p.size),
        _ => return Err(CUDA_ERROR_INVALID_HANDLE),
    };
    if offset + size > psize {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (&base, va) = r.vas.range(..=ptr).next_back().ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if ptr + size > base + va.size {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if va.maps.iter().any(|(&m, &(l, _))| m < ptr + size && m + l > ptr) {
        return Err(CUDA_ERROR_ALREADY_MAPPED);
    }
    let p = libc::mmap(
        ptr as *mut c_void,
        size as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED | libc::MAP_FIXED,
        fd,
        offset as libc::off_t,
    );
    if p == libc::MAP_FAILED {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    r.vas.get_mut(&base).unwrap().maps.insert(ptr, (size, handle));
    r.phys.get_mut(&handle).unwrap().maps += 1;
    Ok(())
}

fn cuMemUnmap(ptr: CUdeviceptr, size: usize) {
    sim()?;
    unmap_range(&mut reg(), ptr, size as u64)
}

fn cuMemSetAccess(ptr: CUdeviceptr, size: usize, desc: *const CUmemAccessDesc, count: usize) {
    sim()?;
    if desc.is_null() || count == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for d in std::slice::from_raw_parts(desc, count) {
        if d.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        device(d.location.id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)?;
    }
    if !reg().is_device_range(ptr, size as u64) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

// Arrays: sized by the rules the interposer charges by (gpuslice_cuda_abi::array).
fn cuArrayCreate(h: *mut CUarray, d: *const CUDA_ARRAY_DESCRIPTOR_v1) {
    let d = d.as_ref().ok_or(CUDA_ERROR_INVALID_VALUE)?;
    create_array(h.cast(), array::array_bytes(&array::from_2d_v1(d), 1)?, false)
}

fn cuArrayCreate_v2(h: *mut CUarray, d: *const CUDA_ARRAY_DESCRIPTOR) {
    let d = d.as_ref().ok_or(CUDA_ERROR_INVALID_VALUE)?;
    create_array(h.cast(), array::array_bytes(&array::from_2d(d), 1)?, false)
}

fn cuArray3DCreate(h: *mut CUarray, d: *const CUDA_ARRAY3D_DESCRIPTOR_v1) {
    let d = d.as_ref().ok_or(CUDA_ERROR_INVALID_VALUE)?;
    create_array(h.cast(), array::array_bytes(&array::from_3d_v1(d), 1)?, false)
}

fn cuArray3DCreate_v2(h: *mut CUarray, d: *const CUDA_ARRAY3D_DESCRIPTOR) {
    let d = d.as_ref().ok_or(CUDA_ERROR_INVALID_VALUE)?;
    create_array(h.cast(), array::array_bytes(d, 1)?, false)
}

fn cuArrayDestroy(h: CUarray) { destroy_array(h as usize, false) }

fn cuMipmappedArrayCreate(h: *mut CUmipmappedArray, d: *const CUDA_ARRAY3D_DESCRIPTOR, levels: c_uint) {
    let d = d.as_ref().ok_or(CUDA_ERROR_INVALID_VALUE)?;
    create_array(h.cast(), array::array_bytes(d, levels)?, true)
}

fn cuMipmappedArrayDestroy(h: CUmipmappedArray) { destroy_array(h as usize, true) }

}

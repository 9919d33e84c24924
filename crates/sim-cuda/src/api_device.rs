//! Initialisation, devices, contexts, error strings.

use std::ffi::{c_char, c_int, c_uint, c_void};

use gpuslice_cuda_abi::driver::*;

use crate::*;

fn parse_uuid(s: &str) -> CUuuid {
    let hex: Vec<u8> = s
        .trim_start_matches("GPU-")
        .bytes()
        .filter(|b| b.is_ascii_hexdigit())
        .collect();
    let mut u = CUuuid::default();
    for (i, pair) in hex.chunks(2).take(16).enumerate() {
        let v = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("0"), 16).unwrap_or(0);
        u.bytes[i] = v as c_char;
    }
    u
}

unsafe fn copy_cstr(dst: *mut c_char, len: c_int, s: &str) -> R {
    if dst.is_null() || len <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let n = s.len().min(len as usize - 1);
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast(), dst, n);
        *dst.add(n) = 0;
    }
    Ok(())
}

fn attribute(dev: usize, attr: c_int) -> Result<c_int, CUresult> {
    let spec = sim()?.spec(dev);
    let bus = u32::from_str_radix(spec.pci_bus_id.split(':').nth(1).unwrap_or("0"), 16).unwrap_or(0)
        as c_int;
    Ok(match attr {
        CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK => 1024,
        CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X | CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y => 1024,
        CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z => 64,
        CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X => i32::MAX,
        CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y | CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z => 65535,
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK => 48 * 1024,
        CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY => 64 * 1024,
        CU_DEVICE_ATTRIBUTE_WARP_SIZE => 32,
        CU_DEVICE_ATTRIBUTE_MAX_PITCH => i32::MAX,
        CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK
        | CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR => 65536,
        CU_DEVICE_ATTRIBUTE_CLOCK_RATE => 1_980_000,
        CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT => 512,
        CU_DEVICE_ATTRIBUTE_GPU_OVERLAP => 1,
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT => spec.sm_count as c_int,
        CU_DEVICE_ATTRIBUTE_KERNEL_EXEC_TIMEOUT
        | CU_DEVICE_ATTRIBUTE_INTEGRATED
        | CU_DEVICE_ATTRIBUTE_TCC_DRIVER => 0,
        CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY => 1,
        CU_DEVICE_ATTRIBUTE_COMPUTE_MODE => 0,
        CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS | CU_DEVICE_ATTRIBUTE_ECC_ENABLED => 1,
        CU_DEVICE_ATTRIBUTE_PCI_BUS_ID => bus,
        CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID | CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID => 0,
        CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE => 2_619_000,
        CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH => 5120,
        CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE => 50 * 1024 * 1024,
        CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR => 2048,
        CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT => 3,
        CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING => 1,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR => 9,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR => 0,
        CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR => 228 * 1024,
        CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY | CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS => 1,
        CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH
        | CU_DEVICE_ATTRIBUTE_COOPERATIVE_MULTI_DEVICE_LAUNCH => 1,
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN => 227 * 1024,
        CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR => 32,
        CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED => 1,
        a if (1..=160).contains(&a) => 0,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    })
}

/// Creates a context on `dev`, charging the device what a context costs.
pub(crate) fn create_ctx(
    reg: &mut Reg,
    dev: usize,
    flags: u32,
    primary: bool,
) -> Result<usize, CUresult> {
    let s = sim()?;
    let cost = s.spec(dev).context_bytes;
    if cost > 0 && !s.try_alloc(dev, cost) {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    let h = reg.handle();
    reg.ctxs.insert(
        h,
        Ctx {
            dev,
            primary,
            flags,
            null_done: 0,
        },
    );
    Ok(h)
}

/// Destroys a context and everything it owns, returning its device memory.
pub(crate) fn destroy_ctx(reg: &mut Reg, c: usize) -> R {
    let s = sim()?;
    let ctx = reg.ctxs.remove(&c).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    let bases: Vec<u64> = reg
        .allocs
        .iter()
        .filter(|(_, a)| a.ctx == c)
        .map(|(&b, _)| b)
        .collect();
    for b in bases {
        crate::api_mem::free_alloc(reg, b, true)?;
    }
    let arrays: Vec<usize> = reg
        .arrays
        .iter()
        .filter(|(_, a)| a.ctx == c)
        .map(|(&h, _)| h)
        .collect();
    for h in arrays {
        let a = reg.arrays.remove(&h).unwrap();
        s.free(a.dev, a.charge);
    }
    reg.streams.retain(|_, st| st.ctx != c);
    reg.events.retain(|_, e| e.ctx != c);
    let mods: Vec<usize> = reg
        .modules
        .iter()
        .filter(|(_, mc)| **mc == c)
        .map(|(&m, _)| m)
        .collect();
    for m in mods {
        // Its variables' allocation went with the context's allocations above.
        reg.module_globals.remove(&m);
        reg.modules.remove(&m);
        reg.functions.retain(|_, f| f.owner != m);
    }
    s.free(ctx.dev, s.spec(ctx.dev).context_bytes);
    Ok(())
}

fn primary_slot(reg: &mut Reg, dev: usize) -> &mut Primary {
    if reg.primary.len() <= dev {
        reg.primary.resize(dev + 1, Primary::default());
    }
    &mut reg.primary[dev]
}

unsafe fn ctx_create_common(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> R {
    if pctx.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = device(dev)?;
    if flags & !CU_CTX_FLAGS_MASK != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let h = create_ctx(&mut r, d, flags, false)?;
    ctx_push(h);
    unsafe { out(pctx, h as CUcontext) }
}

unsafe fn primary_release(dev: CUdevice) -> R {
    let d = device(dev)?;
    let mut r = reg();
    let p = *primary_slot(&mut r, d);
    if p.refs == 0 {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    primary_slot(&mut r, d).refs -= 1;
    if let (1, Some(c)) = (p.refs, p.ctx) {
        destroy_ctx(&mut r, c)?;
        primary_slot(&mut r, d).ctx = None;
    }
    Ok(())
}

unsafe fn primary_reset(dev: CUdevice) -> R {
    let d = device(dev)?;
    let mut r = reg();
    let p = *primary_slot(&mut r, d);
    if let Some(c) = p.ctx {
        destroy_ctx(&mut r, c)?;
    }
    let slot = primary_slot(&mut r, d);
    slot.ctx = None;
    slot.refs = 0;
    Ok(())
}

unsafe fn primary_set_flags(dev: CUdevice, flags: c_uint) -> R {
    let d = device(dev)?;
    if flags & !CU_CTX_FLAGS_MASK != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    primary_slot(&mut r, d).flags = flags;
    Ok(())
}

unsafe fn ctx_destroy(ctx: CUcontext) -> R {
    sim()?;
    let c = ctx as usize;
    let mut r = reg();
    match r.ctxs.get(&c) {
        None => return Err(CUDA_ERROR_INVALID_CONTEXT),
        Some(x) if x.primary => return Err(CUDA_ERROR_INVALID_CONTEXT),
        _ => {}
    }
    destroy_ctx(&mut r, c)?;
    // A destroyed context that is current to this thread is popped.
    if ctx_top() == Some(c) {
        ctx_pop();
    }
    Ok(())
}

unsafe fn ctx_push_current(ctx: CUcontext) -> R {
    sim()?;
    let r = reg();
    if !r.ctxs.contains_key(&(ctx as usize)) {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    ctx_push(ctx as usize);
    Ok(())
}

unsafe fn ctx_pop_current(pctx: *mut CUcontext) -> R {
    sim()?;
    let c = ctx_pop().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    if !pctx.is_null() {
        unsafe { *pctx = c as CUcontext };
    }
    Ok(())
}

unsafe fn total_mem(dev: CUdevice) -> Result<u64, CUresult> {
    let d = device(dev)?;
    Ok(sim()?.memory_total(d))
}

pub(crate) unsafe fn mem_info() -> Result<(u64, u64), CUresult> {
    let s = sim()?;
    let d = reg().current_dev()?;
    let total = s.memory_total(d);
    Ok((total.saturating_sub(s.memory_used(d)), total))
}

export! { exports_device;

fn cuInit(flags: c_uint) {
    if flags != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    match init() {
        CUDA_SUCCESS => Ok(()),
        e => Err(e),
    }
}

fn cuDriverGetVersion(v: *mut c_int) {
    out(v, DRIVER_VERSION)
}

fn cuDeviceGet(d: *mut CUdevice, ordinal: c_int) {
    if d.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    device(ordinal)?;
    out(d, ordinal)
}

fn cuDeviceGetCount(n: *mut c_int) {
    sim()?;
    out(n, crate::visible().len() as c_int)
}

fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) {
    let d = device(dev)?;
    copy_cstr(name, len, &sim()?.spec(d).name)
}

fn cuDeviceGetUuid(u: *mut CUuuid, dev: CUdevice) {
    let d = device(dev)?;
    out(u, parse_uuid(&sim()?.spec(d).uuid))
}

fn cuDeviceGetUuid_v2(u: *mut CUuuid, dev: CUdevice) {
    let d = device(dev)?;
    out(u, parse_uuid(&sim()?.spec(d).uuid))
}

fn cuDeviceGetPCIBusId(bus: *mut c_char, len: c_int, dev: CUdevice) {
    let d = device(dev)?;
    copy_cstr(bus, len, &sim()?.spec(d).pci_bus_id)
}

fn cuDeviceGetByPCIBusId(dev: *mut CUdevice, bus: *const c_char) {
    let s = sim()?;
    if bus.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let want = std::ffi::CStr::from_ptr(bus).to_string_lossy().to_ascii_uppercase();
    for &i in crate::visible() {
        let have = s.spec(i).pci_bus_id.to_ascii_uppercase();
        if have == want || have.ends_with(&want) {
            return out(dev, crate::ordinal_of(i));
        }
    }
    Err(CUDA_ERROR_INVALID_DEVICE)
}

fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) {
    let t = total_mem(dev)?;
    out(bytes, t.min(u32::MAX as u64) as c_uint)
}

fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) {
    let t = total_mem(dev)?;
    out(bytes, t as usize)
}

fn cuDeviceGetAttribute(v: *mut c_int, attr: CUdevice_attribute, dev: CUdevice) {
    let d = device(dev)?;
    if v.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    out(v, attribute(d, attr)?)
}

fn cuDeviceComputeCapability(major: *mut c_int, minor: *mut c_int, dev: CUdevice) {
    device(dev)?;
    out(major, 9)?;
    out(minor, 0)
}

fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) {
    if pctx.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let d = device(dev)?;
    let mut r = reg();
    let p = *primary_slot(&mut r, d);
    let c = match p.ctx {
        Some(c) => c,
        None => {
            let c = create_ctx(&mut r, d, p.flags, true)?;
            primary_slot(&mut r, d).ctx = Some(c);
            c
        }
    };
    primary_slot(&mut r, d).refs += 1;
    out(pctx, c as CUcontext)
}

fn cuDevicePrimaryCtxRelease(dev: CUdevice) { primary_release(dev) }
fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) { primary_release(dev) }
fn cuDevicePrimaryCtxReset(dev: CUdevice) { primary_reset(dev) }
fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) { primary_reset(dev) }
fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: c_uint) { primary_set_flags(dev, flags) }
fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) { primary_set_flags(dev, flags) }

fn cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut c_uint, active: *mut c_int) {
    let d = device(dev)?;
    if flags.is_null() || active.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let p = *primary_slot(&mut r, d);
    out(flags, p.flags)?;
    out(active, p.ctx.is_some() as c_int)
}

fn cuCtxCreate(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) { ctx_create_common(pctx, flags, dev) }
fn cuCtxCreate_v2(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) { ctx_create_common(pctx, flags, dev) }
fn cuCtxCreate_v3(pctx: *mut CUcontext, params: *mut c_void, n: c_int, flags: c_uint, dev: CUdevice) {
    if n < 0 || (n > 0 && params.is_null()) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    ctx_create_common(pctx, flags, dev)
}
fn cuCtxCreate_v4(pctx: *mut CUcontext, _params: *mut c_void, flags: c_uint, dev: CUdevice) {
    ctx_create_common(pctx, flags, dev)
}

fn cuCtxDestroy(ctx: CUcontext) { ctx_destroy(ctx) }
fn cuCtxDestroy_v2(ctx: CUcontext) { ctx_destroy(ctx) }
fn cuCtxPushCurrent(ctx: CUcontext) { ctx_push_current(ctx) }
fn cuCtxPushCurrent_v2(ctx: CUcontext) { ctx_push_current(ctx) }
fn cuCtxPopCurrent(pctx: *mut CUcontext) { ctx_pop_current(pctx) }
fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) { ctx_pop_current(pctx) }

fn cuCtxSetCurrent(ctx: CUcontext) {
    sim()?;
    if ctx.is_null() {
        ctx_set_top(None);
        return Ok(());
    }
    if !reg().ctxs.contains_key(&(ctx as usize)) {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    ctx_set_top(Some(ctx as usize));
    Ok(())
}

fn cuCtxGetCurrent(pctx: *mut CUcontext) {
    sim()?;
    out(pctx, ctx_top().unwrap_or(0) as CUcontext)
}

fn cuCtxGetDevice(d: *mut CUdevice) {
    sim()?;
    let dev = reg().current_dev()?;
    out(d, crate::ordinal_of(dev))
}

fn cuCtxGetFlags(flags: *mut c_uint) {
    sim()?;
    let r = reg();
    let c = r.current()?;
    out(flags, r.ctxs[&c].flags)
}

fn cuCtxGetApiVersion(ctx: CUcontext, v: *mut c_uint) {
    sim()?;
    let r = reg();
    let c = if ctx.is_null() { r.current()? } else { ctx as usize };
    if !r.ctxs.contains_key(&c) {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    out(v, 3020)
}

fn cuCtxGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int) {
    sim()?;
    if !least.is_null() {
        *least = 0;
    }
    if !greatest.is_null() {
        *greatest = -5;
    }
    Ok(())
}

fn cuCtxSynchronize() {
    sim()?;
    let (t, dev) = {
        let r = reg();
        let c = r.current()?;
        (r.ctx_done(c), r.ctxs[&c].dev)
    };
    sleep_until(t);
    crate::api_mem::trim_pools_on_sync(dev);
    Ok(())
}

fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) {
    let (f, t) = mem_info()?;
    out(free, f.min(u32::MAX as u64) as c_uint)?;
    out(total, t.min(u32::MAX as u64) as c_uint)
}

fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) {
    let (f, t) = mem_info()?;
    out(free, f as usize)?;
    out(total, t as usize)
}

fn cuGetErrorString(e: CUresult, s: *mut *const c_char) {
    if s.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    match error_strings(e) {
        Some((_, d)) => out(s, d.as_ptr()),
        None => {
            *s = std::ptr::null();
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
}

fn cuGetErrorName(e: CUresult, s: *mut *const c_char) {
    if s.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    match error_strings(e) {
        Some((n, _)) => out(s, n.as_ptr()),
        None => {
            *s = std::ptr::null();
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
}

fn cuGetExportTable(table: *mut *const c_void, _id: *const CUuuid) {
    // The runtime's private tables are not simulated.
    if !table.is_null() {
        *table = std::ptr::null();
    }
    Err(CUDA_ERROR_NOT_SUPPORTED)
}

}

//! NVML's memory queries, answered with the tenant's view so that `nvidia-smi` and monitoring
//! inside the tenant show a GPU of the size the tenant was given.

use gpuslice_cuda_abi::nvml::*;
use std::ffi::{c_char, c_uint};

use crate::real::call_real;
use crate::tenant::{Tenant, guard};

fn tenant_dev(t: &Tenant, device: nvmlDevice_t) -> Option<gpuslice_ledger::Dev> {
    let mut buf = [0 as c_char; 96];
    let r = call_real!(NVML, nvmlDeviceGetUUID: unsafe extern "C" fn(nvmlDevice_t, *mut c_char, c_uint) -> nvmlReturn_t, device, buf.as_mut_ptr(), buf.len() as c_uint);
    if r != NVML_SUCCESS {
        return None;
    }
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    gpuslice_ledger::parse_uuid(&s).and_then(|u| t.dev_for_uuid(&u).ok())
}

/// (total, used, free) as the tenant sees them; `None` when the device is not the tenant's
/// concern or the tenant is unusable (then NVML answers are refused, not passed through).
fn view(
    device: nvmlDevice_t,
    real_total: u64,
    real_free: u64,
) -> Result<(u64, u64, u64), nvmlReturn_t> {
    let t = crate::tenant::tenant().map_err(|_| NVML_ERROR_NO_PERMISSION)?;
    let dev = tenant_dev(t, device).ok_or(NVML_ERROR_UNKNOWN)?;
    crate::memory::reclaim_dead(t);
    let used = t.used(dev);
    let (free, total) = crate::memory::tenant_view(t, dev, real_free, real_total);
    Ok((total, used.min(total), free))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    guard(|| unsafe {
        let r = call_real!(NVML, nvmlDeviceGetMemoryInfo: unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_t) -> nvmlReturn_t, device, memory);
        if r != NVML_SUCCESS || memory.is_null() {
            return r;
        }
        let m = &mut *memory;
        match view(device, m.total, m.free) {
            Ok((total, used, free)) => {
                (m.total, m.used, m.free) = (total, used, free);
                r
            }
            Err(e) => e,
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    guard(|| unsafe {
        let r = call_real!(NVML, nvmlDeviceGetMemoryInfo_v2: unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_v2_t) -> nvmlReturn_t, device, memory);
        if r != NVML_SUCCESS || memory.is_null() {
            return r;
        }
        let m = &mut *memory;
        match view(device, m.total, m.free) {
            Ok((total, used, free)) => {
                // The driver's own reservation is part of the tenant's cap, not on top of it.
                (m.total, m.reserved, m.used, m.free) = (total, 0, used, free);
                r
            }
            Err(e) => e,
        }
    })
}

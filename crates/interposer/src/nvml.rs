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

// ---- Processes: the tenant sees only its own ----

/// Pids of the tenant's own processes: those holding a live slot in its ledger, as the kernel
/// reports the slots' lock holders (a pid a process writes into its slot is not trusted), and
/// this process, whose own lock the kernel does not report to it.
fn own_pids(t: &Tenant) -> Vec<u32> {
    let mut v = t.ledger.live_pids();
    v.push(std::process::id());
    v
}

/// Runs NVML's size protocol on the real list into our own buffer, keeps the tenant's own
/// processes, and answers the caller with the same protocol: `*count` in is the caller's room,
/// out the number of entries; too little room is `NVML_ERROR_INSUFFICIENT_SIZE`. Sizes are
/// those of the filtered list, so the caller learns nothing of other tenants' processes.
/// `empty` is the answer for an empty filtered list (`NVML_SUCCESS` for process lists,
/// `NVML_ERROR_NOT_FOUND` for utilization samples, as the real library answers).
///
/// # Safety
/// `count` and `out` are the caller's: null, or valid for `*count` entries.
unsafe fn own_only<T: Copy + Default>(
    count: *mut c_uint,
    out: *mut T,
    pid: impl Fn(&T) -> u32,
    empty: nvmlReturn_t,
    real: impl Fn(*mut c_uint, *mut T) -> nvmlReturn_t,
) -> nvmlReturn_t {
    if count.is_null() {
        // Let the library refuse the call its own way.
        return real(count, out);
    }
    let Ok(t) = crate::tenant::tenant() else {
        return NVML_ERROR_NO_PERMISSION;
    };
    let mut buf: Vec<T> = vec![T::default(); 64];
    let mut n: c_uint;
    let mut tries = 0;
    loop {
        n = buf.len() as c_uint;
        let r = real(&mut n, buf.as_mut_ptr());
        if r == NVML_ERROR_INSUFFICIENT_SIZE && tries < 8 {
            buf.resize(n as usize + 16, T::default());
            tries += 1;
            continue;
        }
        if r == NVML_ERROR_NOT_FOUND {
            n = 0;
            break;
        }
        if r != NVML_SUCCESS {
            return r;
        }
        break;
    }
    buf.truncate((n as usize).min(buf.len()));
    let own = own_pids(t);
    buf.retain(|x| own.contains(&pid(x)));
    // SAFETY: `count` is non-null and the caller's.
    let room = unsafe { *count } as usize;
    // SAFETY: as above.
    unsafe { *count = buf.len() as c_uint };
    if buf.is_empty() {
        return empty;
    }
    if room < buf.len() || out.is_null() {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller's array has room for `room` >= buf.len() entries.
    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), out, buf.len()) };
    NVML_SUCCESS
}

type ListV1 =
    unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut nvmlProcessInfo_v1_t) -> nvmlReturn_t;
type ListV2 =
    unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut nvmlProcessInfo_t) -> nvmlReturn_t;

macro_rules! own_process_list {
    ($($name:ident : $ty:ident, $info:ty;)*) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            device: nvmlDevice_t,
            count: *mut c_uint,
            infos: *mut $info,
        ) -> nvmlReturn_t {
            // SAFETY: the caller's pointers go to own_only as they came (its contract is the
            // C function's); the real function has nvml.h's signature `$ty`.
            guard(|| unsafe {
                own_only(count, infos, |p: &$info| p.pid, NVML_SUCCESS, |c, b| {
                    call_real!(NVML, $name: $ty, device, c, b)
                })
            })
        }
    )*};
}

own_process_list! {
    nvmlDeviceGetComputeRunningProcesses: ListV1, nvmlProcessInfo_v1_t;
    nvmlDeviceGetComputeRunningProcesses_v2: ListV2, nvmlProcessInfo_t;
    nvmlDeviceGetComputeRunningProcesses_v3: ListV2, nvmlProcessInfo_t;
    nvmlDeviceGetGraphicsRunningProcesses: ListV1, nvmlProcessInfo_v1_t;
    nvmlDeviceGetGraphicsRunningProcesses_v2: ListV2, nvmlProcessInfo_t;
    nvmlDeviceGetGraphicsRunningProcesses_v3: ListV2, nvmlProcessInfo_t;
    nvmlDeviceGetMPSComputeRunningProcesses: ListV1, nvmlProcessInfo_v1_t;
    nvmlDeviceGetMPSComputeRunningProcesses_v2: ListV2, nvmlProcessInfo_t;
    nvmlDeviceGetMPSComputeRunningProcesses_v3: ListV2, nvmlProcessInfo_t;
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    utilization: *mut nvmlProcessUtilizationSample_t,
    process_samples_count: *mut c_uint,
    last_seen_time_stamp: std::ffi::c_ulonglong,
) -> nvmlReturn_t {
    type F = unsafe extern "C" fn(
        nvmlDevice_t,
        *mut nvmlProcessUtilizationSample_t,
        *mut c_uint,
        std::ffi::c_ulonglong,
    ) -> nvmlReturn_t;
    // SAFETY: as for the process lists: the caller's pointers keep their contract, and the
    // real function has nvml.h's signature.
    guard(|| unsafe {
        own_only(
            process_samples_count,
            utilization,
            |s: &nvmlProcessUtilizationSample_t| s.pid,
            NVML_ERROR_NOT_FOUND,
            |c, b| call_real!(NVML, nvmlDeviceGetProcessUtilization: F, device, b, c, last_seen_time_stamp),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessesUtilizationInfo(
    device: nvmlDevice_t,
    info: *mut nvmlProcessesUtilizationInfo_v1_t,
) -> nvmlReturn_t {
    type F =
        unsafe extern "C" fn(nvmlDevice_t, *mut nvmlProcessesUtilizationInfo_v1_t) -> nvmlReturn_t;
    // SAFETY: `info` is checked for null before it is read; its array and count keep the
    // caller's contract (version 1 layout, checked), and the real function has nvml.h's
    // signature.
    guard(|| unsafe {
        if info.is_null() || (*info).version != nvmlProcessesUtilizationInfo_v1 {
            // A null or a version we do not know: the library answers, with nothing to filter.
            return call_real!(NVML, nvmlDeviceGetProcessesUtilizationInfo: F, device, info);
        }
        let i = &mut *info;
        let last_seen = i.lastSeenTimeStamp;
        own_only(
            &mut i.processSamplesCount,
            i.procUtilArray,
            |s: &nvmlProcessUtilizationInfo_v1_t| s.pid,
            NVML_SUCCESS,
            |c, b| {
                let mut mine = nvmlProcessesUtilizationInfo_v1_t {
                    version: nvmlProcessesUtilizationInfo_v1,
                    // SAFETY: `c` is own_only's counter.
                    processSamplesCount: *c,
                    lastSeenTimeStamp: last_seen,
                    procUtilArray: b,
                };
                let r =
                    call_real!(NVML, nvmlDeviceGetProcessesUtilizationInfo: F, device, &mut mine);
                *c = mine.processSamplesCount;
                r
            },
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRunningProcessDetailList(
    device: nvmlDevice_t,
    list: *mut nvmlProcessDetailList_v1_t,
) -> nvmlReturn_t {
    type F = unsafe extern "C" fn(nvmlDevice_t, *mut nvmlProcessDetailList_v1_t) -> nvmlReturn_t;
    // SAFETY: `list` is checked for null before it is read; its array and count keep the
    // caller's contract (version 1 layout, checked), and the real function has nvml.h's
    // signature.
    guard(|| unsafe {
        if list.is_null() || (*list).version != nvmlProcessDetailList_v1 {
            return call_real!(NVML, nvmlDeviceGetRunningProcessDetailList: F, device, list);
        }
        let l = &mut *list;
        let mode = l.mode;
        own_only(
            &mut l.numProcArrayEntries,
            l.procArray,
            |p: &nvmlProcessDetail_v1_t| p.pid,
            NVML_SUCCESS,
            |c, b| {
                let mut mine = nvmlProcessDetailList_v1_t {
                    version: nvmlProcessDetailList_v1,
                    mode,
                    numProcArrayEntries: *c,
                    procArray: b,
                };
                let r =
                    call_real!(NVML, nvmlDeviceGetRunningProcessDetailList: F, device, &mut mine);
                *c = mine.numProcArrayEntries;
                r
            },
        )
    })
}

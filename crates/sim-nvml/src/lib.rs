//! The simulated NVML: a `libnvidia-ml.so.1` that answers from the shared simulated-GPU state.
//!
//! Every entry point is `extern "C"`, returns an `nvmlReturn_t` and never unwinds: a panic inside
//! becomes `NVML_ERROR_UNKNOWN`. Handles are addresses of a static per-index table, so they stay
//! valid for the life of the process, as real NVML handles do, and can be checked on the way in.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod mig;

use core::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::Duration;

use gpuslice_cuda_abi::nvml::*;
use gpuslice_sim_state::{GpuEvent, Sim};

/// Versions this simulator claims, the same as its CUDA driver's (`gpuslice_sim_state`).
pub const DRIVER_VERSION: &str = gpuslice_sim_state::DRIVER_VERSION;
pub const NVML_VERSION: &str = gpuslice_sim_state::NVML_VERSION;
pub const CUDA_DRIVER_VERSION: c_int = gpuslice_sim_state::CUDA_DRIVER_VERSION;

/// PCI ids reported for every simulated device (an H100 SXM5, NVIDIA's vendor id).
const PCI_DEVICE_ID: u32 = 0x2330_10DE;
const PCI_SUBSYSTEM_ID: u32 = 0x16C1_10DE;

/// Events a simulated device can deliver (raised through `gpuslice_sim_state::Sim::raise`).
const SUPPORTED_EVENTS: c_ulonglong =
    nvmlEventTypeXidCriticalError | nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError;

/// Window of `nvmlDeviceGetUtilizationRates`, like the real driver's one-second sample period.
const UTIL_WINDOW_NS: u64 = 1_000_000_000;

type R = Result<(), nvmlReturn_t>;

/// Runs an entry point body, turning `Err(code)` and panics into return codes.
fn entry(f: impl FnOnce() -> R) -> nvmlReturn_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => NVML_SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => NVML_ERROR_UNKNOWN,
    }
}

// ---- Initialisation ----

/// nvmlInit/nvmlShutdown nesting depth; the library is usable while it is above zero.
static INIT_DEPTH: Mutex<u32> = Mutex::new(0);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn init() -> R {
    let mut depth = lock(&INIT_DEPTH);
    Sim::get().map_err(|_| NVML_ERROR_DRIVER_NOT_LOADED)?;
    *depth += 1;
    Ok(())
}

/// The attached state, or UNINITIALIZED outside an init/shutdown pair.
fn sim() -> Result<&'static Sim, nvmlReturn_t> {
    if *lock(&INIT_DEPTH) == 0 {
        return Err(NVML_ERROR_UNINITIALIZED);
    }
    Sim::get().map_err(|_| NVML_ERROR_UNKNOWN)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    entry(init)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit() -> nvmlReturn_t {
    entry(init)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    // NO_GPUS / NO_ATTACH only relax failures the simulator cannot have.
    entry(init)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    entry(|| {
        let mut depth = lock(&INIT_DEPTH);
        if *depth == 0 {
            return Err(NVML_ERROR_UNINITIALIZED);
        }
        *depth -= 1;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    catch_unwind(|| error_string(result).as_ptr()).unwrap_or(c"Unknown Error".as_ptr())
}

fn error_string(result: nvmlReturn_t) -> &'static CStr {
    match result {
        NVML_SUCCESS => c"Success",
        NVML_ERROR_UNINITIALIZED => c"Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
        NVML_ERROR_NO_PERMISSION => c"Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED => c"Already Initialized",
        NVML_ERROR_NOT_FOUND => c"Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER => c"Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        NVML_ERROR_TIMEOUT => c"Timeout",
        NVML_ERROR_IRQ_ISSUE => c"Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND => c"NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND => c"Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM => c"Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST => c"GPU is lost",
        NVML_ERROR_RESET_REQUIRED => c"GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM => c"The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH => c"RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_IN_USE => c"In use by another client",
        NVML_ERROR_MEMORY => c"Insufficient Memory",
        NVML_ERROR_NO_DATA => c"No data",
        NVML_ERROR_VGPU_ECC_NOT_ENABLED => c"ECC is not enabled on the vGPU",
        NVML_ERROR_INSUFFICIENT_RESOURCES => c"Insufficient resources",
        NVML_ERROR_FREQ_NOT_SUPPORTED => c"Frequency not supported",
        NVML_ERROR_ARGUMENT_VERSION_MISMATCH => c"Argument version mismatch",
        NVML_ERROR_DEPRECATED => c"Deprecated",
        NVML_ERROR_NOT_READY => c"Not ready",
        NVML_ERROR_GPU_NOT_FOUND => c"GPU not found",
        NVML_ERROR_INVALID_STATE => c"Invalid state",
        _ => c"Unknown Error",
    }
}

// ---- Argument helpers ----

fn out<'a, T>(p: *mut T) -> Result<&'a mut T, nvmlReturn_t> {
    // SAFETY: the C caller hands us a pointer to writable storage of T, or null.
    unsafe { p.as_mut() }.ok_or(NVML_ERROR_INVALID_ARGUMENT)
}

fn in_str<'a>(p: *const c_char) -> Result<&'a str, nvmlReturn_t> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null, and the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| NVML_ERROR_INVALID_ARGUMENT)
}

/// Copies `s` NUL-terminated into a caller buffer of `len` bytes.
fn write_str(buf: *mut c_char, len: c_uint, s: &str) -> R {
    if buf.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    if (len as usize) < s.len() + 1 {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: the caller's buffer holds `len` >= s.len() + 1 bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

fn fill_chars(dst: &mut [c_char], s: &str) {
    dst.fill(0);
    let room = dst.len().saturating_sub(1);
    for (d, b) in dst.iter_mut().zip(s.bytes().take(room)) {
        *d = b as c_char;
    }
}

/// Writes `items` into a caller array of `*count` entries with NVML's sizing protocol: too small a
/// count (or no array at all when there is something to write) answers INSUFFICIENT_SIZE and the
/// needed count.
fn write_list<T>(count: *mut c_uint, buf: *mut T, items: &[T]) -> R
where
    T: Copy,
{
    let count = out(count)?;
    let need = items.len() as c_uint;
    if *count < need || (need > 0 && buf.is_null()) {
        *count = need;
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if need > 0 {
        // SAFETY: the caller's array has room for `*count` >= need entries.
        unsafe { core::ptr::copy_nonoverlapping(items.as_ptr(), buf, items.len()) };
    }
    *count = need;
    Ok(())
}

// ---- Device handles ----

use gpuslice_sim_state::MAX_DEVICES;

#[repr(C)]
struct DeviceSlot {
    index: u32,
}

static SLOTS: [DeviceSlot; MAX_DEVICES] = {
    let mut slots = [const { DeviceSlot { index: 0 } }; MAX_DEVICES];
    let mut i = 0;
    while i < MAX_DEVICES {
        slots[i].index = i as u32;
        i += 1;
    }
    slots
};

fn device_count(sim: &Sim) -> usize {
    sim.device_count().min(MAX_DEVICES)
}

fn handle_of(dev: usize) -> nvmlDevice_t {
    (&SLOTS[dev] as *const DeviceSlot).cast_mut().cast()
}

/// Slot index behind a handle, refusing anything that is not the address of one of our slots.
fn slot_index(h: nvmlDevice_t) -> Option<usize> {
    let base = SLOTS.as_ptr() as usize;
    let size = core::mem::size_of::<DeviceSlot>();
    let off = (h as usize).checked_sub(base)?;
    (off % size == 0 && off / size < MAX_DEVICES).then_some(off / size)
}

/// Initialised state plus the device a handle names.
fn device_of(h: nvmlDevice_t) -> Result<(&'static Sim, usize), nvmlReturn_t> {
    let sim = sim()?;
    match slot_index(h) {
        Some(dev) if dev < device_count(sim) => {
            reachable(sim, dev)?;
            Ok((sim, dev))
        }
        _ => Err(NVML_ERROR_INVALID_ARGUMENT),
    }
}

/// A device that has fallen off the bus answers nothing but GPU_IS_LOST.
fn reachable(sim: &Sim, dev: usize) -> R {
    if sim.is_lost(dev) {
        return Err(NVML_ERROR_GPU_IS_LOST);
    }
    Ok(())
}

// ---- System queries ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    entry(|| {
        sim()?;
        write_str(version, length, DRIVER_VERSION)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    // Answered without init, as by the real library.
    entry(|| write_str(version, length, NVML_VERSION))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(cuda_version: *mut c_int) -> nvmlReturn_t {
    entry(|| {
        *out(cuda_version)? = CUDA_DRIVER_VERSION;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(
    cuda_version: *mut c_int,
) -> nvmlReturn_t {
    unsafe { nvmlSystemGetCudaDriverVersion(cuda_version) }
}

// ---- Enumeration ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    entry(|| {
        let sim = sim()?;
        *out(count)? = device_count(sim) as c_uint;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> nvmlReturn_t {
    unsafe { nvmlDeviceGetCount_v2(count) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    entry(|| {
        let sim = sim()?;
        let device = out(device)?;
        if index as usize >= device_count(sim) {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        reachable(sim, index as usize)?;
        *device = handle_of(index as usize);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    unsafe { nvmlDeviceGetHandleByIndex_v2(index, device) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    entry(|| {
        let sim = sim()?;
        let uuid = in_str(uuid)?;
        let device = out(device)?;
        if let Some(dev) = (0..device_count(sim)).find(|&d| sim.spec(d).uuid == uuid) {
            reachable(sim, dev)?;
            *device = handle_of(dev);
            return Ok(());
        }
        // MIG device UUIDs name their MIG device handle.
        for dev in 0..device_count(sim) {
            if let Some(d) = mig::mig_devices(sim, dev)
                .into_iter()
                .find(|d| d.uuid == uuid)
            {
                reachable(sim, dev)?;
                *device = table_handle(&MIG_HANDLES, ci_index(dev, d.gi, d.ci));
                return Ok(());
            }
        }
        Err(NVML_ERROR_NOT_FOUND)
    })
}

/// (domain, bus, device, function) of a `[domain:]bus:device.function` string, hex fields.
fn parse_bus_id(s: &str) -> Option<(u32, u32, u32, u32)> {
    let s = s.trim().trim_end_matches('\0');
    let (rest, function) = s.rsplit_once('.')?;
    let mut parts: Vec<&str> = rest.split(':').collect();
    if parts.len() == 2 {
        parts.insert(0, "0");
    }
    let [domain, bus, dev] = parts.as_slice() else {
        return None;
    };
    let hex = |t: &str| u32::from_str_radix(t, 16).ok();
    Some((hex(domain)?, hex(bus)?, hex(dev)?, hex(function)?))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    pci_bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    entry(|| {
        let sim = sim()?;
        let want = parse_bus_id(in_str(pci_bus_id)?).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        let device = out(device)?;
        let dev = (0..device_count(sim))
            .find(|&d| parse_bus_id(&sim.spec(d).pci_bus_id) == Some(want))
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        reachable(sim, dev)?;
        *device = handle_of(dev);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(
    pci_bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    unsafe { nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id, device) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (_, dev) = device_of(device)?;
        *out(index)? = dev as c_uint;
        Ok(())
    })
}

// ---- Identity ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    entry(|| match target(device)? {
        (sim, Target::Gpu(dev)) => write_str(name, length, &sim.spec(dev).name),
        (_, Target::Mig(_, d)) => write_str(name, length, &d.name),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    entry(|| match target(device)? {
        (sim, Target::Gpu(dev)) => write_str(uuid, length, &sim.spec(dev).uuid),
        (_, Target::Mig(_, d)) => write_str(uuid, length, &d.uuid),
    })
}

fn pci_info(sim: &Sim, dev: usize, legacy_bus_id: bool) -> nvmlPciInfo_t {
    // A spec without a parsable bus id still gets a distinct one.
    let (domain, bus, device, function) =
        parse_bus_id(&sim.spec(dev).pci_bus_id).unwrap_or((0, dev as u32 + 1, 0, 0));
    let legacy = format!("{domain:04X}:{bus:02X}:{device:02X}.{function:X}");
    let full = format!("{domain:08X}:{bus:02X}:{device:02X}.{function:X}");
    let mut info = nvmlPciInfo_t {
        domain,
        bus,
        device,
        pciDeviceId: PCI_DEVICE_ID,
        pciSubSystemId: PCI_SUBSYSTEM_ID,
        ..Default::default()
    };
    fill_chars(&mut info.busIdLegacy, &legacy);
    fill_chars(&mut info.busId, if legacy_bus_id { &legacy } else { &full });
    info
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        *out(pci)? = pci_info(sim, dev, false);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        *out(pci)? = pci_info(sim, dev, true);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        if pci.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // Callers of the oldest symbol pass the old, shorter struct: write only its bytes, with
        // its reserved words zeroed.
        let mut info = pci_info(sim, dev, true);
        info.busId = [0; NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
        // SAFETY: the caller's struct holds at least the legacy layout's bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (&info as *const nvmlPciInfo_t).cast::<u8>(),
                pci.cast::<u8>(),
                NVML_PCI_INFO_V1_SIZE,
            )
        };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: nvmlDevice_t,
    minor: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (_, dev) = device_of(device)?;
        *out(minor)? = dev as c_uint;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMultiGpuBoard(
    device: nvmlDevice_t,
    multi_gpu: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        *out(multi_gpu)? = 0;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNumaNodeId(
    device: nvmlDevice_t,
    node: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let node = out(node)?;
        let numa = sim.spec(dev).numa_node;
        if numa < 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        *node = numa as c_uint;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTopologyCommonAncestor(
    device1: nvmlDevice_t,
    device2: nvmlDevice_t,
    path_info: *mut nvmlGpuTopologyLevel_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, a) = device_of(device1)?;
        let (_, b) = device_of(device2)?;
        let path_info = out(path_info)?;
        // No PCIe switches are modelled: devices meet at their NUMA node's host bridge or cross
        // the inter-socket link.
        *path_info = if a == b {
            NVML_TOPOLOGY_INTERNAL
        } else if sim.spec(a).numa_node == sim.spec(b).numa_node {
            NVML_TOPOLOGY_NODE
        } else {
            NVML_TOPOLOGY_SYSTEM
        };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        let major = out(major)?;
        let minor = out(minor)?;
        *major = 9;
        *minor = 0;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPersistenceMode(
    device: nvmlDevice_t,
    mode: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        *out(mode)? = NVML_FEATURE_ENABLED;
        Ok(())
    })
}

// ---- Memory ----

/// (total, used) of a device; used counts every process's allocations and contexts. A MIG
/// device has its profile's memory; processes are not placed in MIG devices here, so none of
/// it is used.
fn memory(sim: &Sim, t: &Target) -> (u64, u64) {
    match t {
        Target::Gpu(dev) => {
            let total = sim.memory_total(*dev);
            (total, sim.memory_used(*dev).min(total))
        }
        Target::Mig(_, d) => (d.memory_bytes, 0),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory_out: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, t) = target(device)?;
        let m = out(memory_out)?;
        let (total, used) = memory(sim, &t);
        *m = nvmlMemory_t {
            total,
            free: total - used,
            used,
        };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory_out: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, t) = target(device)?;
        let m = out(memory_out)?;
        if m.version != nvmlMemory_v2 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        // Nothing is held back for the driver, so v1 and v2 agree on used and free.
        let (total, used) = memory(sim, &t);
        *m = nvmlMemory_v2_t {
            version: nvmlMemory_v2,
            total,
            reserved: 0,
            free: total - used,
            used,
        };
        Ok(())
    })
}

// ---- Processes ----

fn compute_processes<T: Copy>(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut T,
    make: impl Fn(&Sim, usize, u32, u64) -> T,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let items: Vec<T> = sim
            .processes(dev)
            .iter()
            .map(|p| make(sim, dev, p.pid, p.used_bytes))
            .collect();
        write_list(count, infos, &items)
    })
}

fn info_v1(_: &Sim, _: usize, pid: u32, used: u64) -> nvmlProcessInfo_v1_t {
    nvmlProcessInfo_v1_t {
        pid,
        usedGpuMemory: used,
    }
}

fn info_v2(sim: &Sim, dev: usize, pid: u32, used: u64) -> nvmlProcessInfo_t {
    let (gi, ci) = mig::process_instance(sim, dev, pid);
    nvmlProcessInfo_t {
        pid,
        usedGpuMemory: used,
        gpuInstanceId: gi,
        computeInstanceId: ci,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_v1_t,
) -> nvmlReturn_t {
    compute_processes(device, count, infos, info_v1)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    compute_processes(device, count, infos, info_v2)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    compute_processes(device, count, infos, info_v2)
}

/// The simulated devices run no graphics work.
fn graphics_processes<T: Copy>(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut T,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        write_list::<T>(count, infos, &[])
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_v1_t,
) -> nvmlReturn_t {
    graphics_processes(device, count, infos)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v2(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    graphics_processes(device, count, infos)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    graphics_processes(device, count, infos)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRunningProcessDetailList(
    device: nvmlDevice_t,
    list: *mut nvmlProcessDetailList_v1_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let l = out(list)?;
        if l.version != nvmlProcessDetailList_v1 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let items: Vec<nvmlProcessDetail_v1_t> = match l.mode {
            NVML_PROCESS_MODE_COMPUTE => sim
                .processes(dev)
                .iter()
                .map(|p| {
                    let i = info_v2(sim, dev, p.pid, p.used_bytes);
                    nvmlProcessDetail_v1_t {
                        pid: i.pid,
                        usedGpuMemory: i.usedGpuMemory,
                        gpuInstanceId: i.gpuInstanceId,
                        computeInstanceId: i.computeInstanceId,
                        usedGpuCcProtectedMemory: 0,
                    }
                })
                .collect(),
            // No graphics work and no MPS server on the simulated devices.
            NVML_PROCESS_MODE_GRAPHICS | NVML_PROCESS_MODE_MPS => Vec::new(),
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        write_list(&mut l.numProcArrayEntries, l.procArray, &items)
    })
}

/// The simulated devices run no MPS server, so no process is an MPS client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMPSComputeRunningProcesses(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_v1_t,
) -> nvmlReturn_t {
    graphics_processes(device, count, infos)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMPSComputeRunningProcesses_v2(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    graphics_processes(device, count, infos)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMPSComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    graphics_processes(device, count, infos)
}

// ---- Utilization and sensors ----

/// Offset from the state's monotonic clock to the wall clock, fixed at first use so that a
/// timestamp handed out and passed back as `lastSeenTimeStamp` converts back exactly.
fn wall_minus_monotonic_ns() -> i128 {
    static OFFSET: std::sync::OnceLock<i128> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        wall - i128::from(Sim::now_ns())
    })
}

fn busy_percent(sim: &Sim, dev: usize) -> u32 {
    let f = sim.utilization(dev, UTIL_WINDOW_NS);
    (f.clamp(0.0, 1.0) * 100.0).round() as u32
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let u = out(utilization)?;
        // Memory-controller bandwidth is not modelled.
        *u = nvmlUtilization_t {
            gpu: busy_percent(sim, dev),
            memory: 0,
        };
        Ok(())
    })
}

/// Per-process SM utilization since `last_seen_time_stamp` (wall-clock µs, 0 for the last
/// window): (pid, percent, timestamp), only samples newer than the caller's last one.
fn process_samples(
    sim: &Sim,
    dev: usize,
    last_seen_time_stamp: c_ulonglong,
) -> Vec<(u32, u32, u64)> {
    let now_ns = Sim::now_ns();
    let to_wall = wall_minus_monotonic_ns();
    let wall_us = |mono_ns: u64| ((i128::from(mono_ns) + to_wall).max(0) / 1000) as u64;
    let since_ns = if last_seen_time_stamp == 0 {
        now_ns.saturating_sub(UTIL_WINDOW_NS)
    } else {
        (i128::from(last_seen_time_stamp) * 1000 - to_wall).clamp(0, i128::from(now_ns)) as u64
    };
    let elapsed = now_ns.saturating_sub(since_ns).max(1);
    sim.process_busy(dev, since_ns)
        .into_iter()
        .map(|(pid, busy, last_seen)| (pid, busy, wall_us(last_seen)))
        .filter(|&(_, busy, ts)| busy > 0 && ts > last_seen_time_stamp)
        .map(|(pid, busy, ts)| {
            let pct = ((busy as f64 / elapsed as f64) * 100.0).round().min(100.0) as u32;
            (pid, pct, ts)
        })
        .collect()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessesUtilizationInfo(
    device: nvmlDevice_t,
    info: *mut nvmlProcessesUtilizationInfo_v1_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let i = out(info)?;
        if i.version != nvmlProcessesUtilizationInfo_v1 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let samples: Vec<nvmlProcessUtilizationInfo_v1_t> =
            process_samples(sim, dev, i.lastSeenTimeStamp)
                .into_iter()
                .map(|(pid, sm, ts)| nvmlProcessUtilizationInfo_v1_t {
                    timeStamp: ts,
                    pid,
                    smUtil: sm,
                    ..Default::default()
                })
                .collect();
        write_list(&mut i.processSamplesCount, i.procUtilArray, &samples)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    utilization: *mut nvmlProcessUtilizationSample_t,
    process_samples_count: *mut c_uint,
    last_seen_time_stamp: c_ulonglong,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let count = out(process_samples_count)?;
        let samples: Vec<nvmlProcessUtilizationSample_t> =
            process_samples(sim, dev, last_seen_time_stamp)
                .into_iter()
                .map(|(pid, sm, ts)| nvmlProcessUtilizationSample_t {
                    pid,
                    timeStamp: ts,
                    smUtil: sm,
                    memUtil: 0,
                    encUtil: 0,
                    decUtil: 0,
                })
                .collect();
        if samples.is_empty() {
            *count = 0;
            return Err(NVML_ERROR_NOT_FOUND);
        }
        write_list(count, utilization, &samples)
    })
}

/// Warms with load so dashboards show movement; exact values mean nothing.
fn temperature(sim: &Sim, dev: usize) -> c_uint {
    32 + busy_percent(sim, dev) * 4 / 10
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        if sensor != NVML_TEMPERATURE_GPU {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        *out(temp)? = temperature(sim, dev);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    device: nvmlDevice_t,
    power_mw: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        // Idle draw plus a share of a 700 W board limit.
        *out(power_mw)? = 70_000 + busy_percent(sim, dev) * 6_300;
        Ok(())
    })
}

// ---- what monitoring tools (nvitop, gpustat) read ----
//
// The board an H100 SXM5 is: no fan (its cooling is the chassis'), no display, no video
// engines in use, ECC on and clean, a 700 W limit, clocks at their boost values while busy.
// Windows-only and confidential-computing queries answer "not supported", as on such a board
// under Linux without CC.

const MAX_POWER_MW: c_uint = 700_000;
/// BAR1 of an H100 80GB: 128 GiB, a few MiB in use.
const BAR1_TOTAL: u64 = 128 << 30;
const BAR1_USED: u64 = 4 << 20;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed(
    device: nvmlDevice_t,
    speed: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        out(speed)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed_v2(
    device: nvmlDevice_t,
    _fan: c_uint,
    speed: *mut c_uint,
) -> nvmlReturn_t {
    unsafe { nvmlDeviceGetFanSpeed(device, speed) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPerformanceState(
    device: nvmlDevice_t,
    state: *mut nvmlPstates_t,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        *out(state)? = NVML_PSTATE_0;
        Ok(())
    })
}

unsafe fn power_limit(device: nvmlDevice_t, limit: *mut c_uint) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        *out(limit)? = MAX_POWER_MW;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    unsafe { power_limit(device, limit) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(
    device: nvmlDevice_t,
    limit: *mut c_uint,
) -> nvmlReturn_t {
    unsafe { power_limit(device, limit) }
}

unsafe fn engine_idle(
    device: nvmlDevice_t,
    util: *mut c_uint,
    period_us: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        *out(util)? = 0;
        *out(period_us)? = (UTIL_WINDOW_NS / 1000) as c_uint;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEncoderUtilization(
    device: nvmlDevice_t,
    util: *mut c_uint,
    period_us: *mut c_uint,
) -> nvmlReturn_t {
    unsafe { engine_idle(device, util, period_us) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDecoderUtilization(
    device: nvmlDevice_t,
    util: *mut c_uint,
    period_us: *mut c_uint,
) -> nvmlReturn_t {
    unsafe { engine_idle(device, util, period_us) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeMode(
    device: nvmlDevice_t,
    mode: *mut nvmlComputeMode_t,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        *out(mode)? = NVML_COMPUTEMODE_DEFAULT;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEccMode(
    device: nvmlDevice_t,
    current: *mut nvmlEnableState_t,
    pending: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        *out(current)? = NVML_FEATURE_ENABLED;
        *out(pending)? = NVML_FEATURE_ENABLED;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: nvmlDevice_t,
    kind: nvmlMemoryErrorType_t,
    counter: nvmlEccCounterType_t,
    count: *mut c_ulonglong,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        if !(0..NVML_MEMORY_ERROR_TYPE_COUNT).contains(&kind)
            || !(0..NVML_ECC_COUNTER_TYPE_COUNT).contains(&counter)
        {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        *out(count)? = 0;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    kind: nvmlClockType_t,
    mhz: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let busy = busy_percent(sim, dev) > 0;
        *out(mhz)? = match kind {
            NVML_CLOCK_GRAPHICS | NVML_CLOCK_SM if busy => 1980,
            NVML_CLOCK_GRAPHICS | NVML_CLOCK_SM => 345,
            NVML_CLOCK_MEM => 2619,
            NVML_CLOCK_VIDEO => 1545,
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetBAR1MemoryInfo(
    device: nvmlDevice_t,
    bar1: *mut nvmlBAR1Memory_t,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        *out(bar1)? = nvmlBAR1Memory_t {
            bar1Total: BAR1_TOTAL,
            bar1Free: BAR1_TOTAL - BAR1_USED,
            bar1Used: BAR1_USED,
        };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDisplayActive(
    device: nvmlDevice_t,
    active: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        *out(active)? = NVML_FEATURE_DISABLED;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDisplayMode(
    device: nvmlDevice_t,
    mode: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    unsafe { nvmlDeviceGetDisplayActive(device, mode) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDriverModel(
    device: nvmlDevice_t,
    _current: *mut nvmlDriverModel_t,
    _pending: *mut nvmlDriverModel_t,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDriverModel_v2(
    device: nvmlDevice_t,
    current: *mut nvmlDriverModel_t,
    pending: *mut nvmlDriverModel_t,
) -> nvmlReturn_t {
    unsafe { nvmlDeviceGetDriverModel(device, current, pending) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperatureV(
    device: nvmlDevice_t,
    t: *mut nvmlTemperature_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let t = out(t)?;
        if t.version != nvmlTemperature_v1 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        if t.sensorType != NVML_TEMPERATURE_GPU {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        t.temperature = temperature(sim, dev) as c_int;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetConfComputeMemSizeInfo(
    device: nvmlDevice_t,
    _info: *mut core::ffi::c_void,
) -> nvmlReturn_t {
    entry(|| {
        device_of(device)?;
        Err(NVML_ERROR_NOT_SUPPORTED)
    })
}

// ---- MIG ----

const GIS_PER_DEVICE: usize = 16;
const CIS_PER_GI: usize = 8;
const GI_TABLE: usize = MAX_DEVICES * GIS_PER_DEVICE;
const CI_TABLE: usize = GI_TABLE * CIS_PER_GI;

// GPU-instance, compute-instance and MIG-device handles are addresses in these tables, indexed
// by (device, GI id[, CI id]); like device handles they stay valid for the process's life and
// are checked against the live state on every use.
static GI_HANDLES: [u8; GI_TABLE] = [0; GI_TABLE];
static CI_HANDLES: [u8; CI_TABLE] = [0; CI_TABLE];
static MIG_HANDLES: [u8; CI_TABLE] = [0; CI_TABLE];

fn table_handle<T>(table: &'static [u8], i: usize) -> *mut T {
    (&table[i] as *const u8).cast_mut().cast()
}

fn table_index<T>(table: &'static [u8], h: *mut T) -> Option<usize> {
    (h as usize)
        .checked_sub(table.as_ptr() as usize)
        .filter(|&i| i < table.len())
}

fn gi_handle(dev: usize, gi: u32) -> nvmlGpuInstance_t {
    table_handle(&GI_HANDLES, dev * GIS_PER_DEVICE + gi as usize)
}

fn ci_index(dev: usize, gi: u32, ci: u32) -> usize {
    (dev * GIS_PER_DEVICE + gi as usize) * CIS_PER_GI + ci as usize
}

/// The (device, GI id) of a live GPU instance handle.
fn gi_of(h: nvmlGpuInstance_t) -> Result<(&'static Sim, usize, u32), nvmlReturn_t> {
    let sim = sim()?;
    let i = table_index(&GI_HANDLES, h).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    let (dev, gi) = (i / GIS_PER_DEVICE, (i % GIS_PER_DEVICE) as u32);
    if dev >= device_count(sim) || mig::gpu_instance(sim, dev, gi).is_err() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    Ok((sim, dev, gi))
}

/// The (device, GI id, CI id) of a live compute instance handle.
fn ci_of(h: nvmlComputeInstance_t) -> Result<(&'static Sim, usize, u32, u32), nvmlReturn_t> {
    let sim = sim()?;
    let i = table_index(&CI_HANDLES, h).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    let (dev, gi, ci) = (
        i / (GIS_PER_DEVICE * CIS_PER_GI),
        ((i / CIS_PER_GI) % GIS_PER_DEVICE) as u32,
        (i % CIS_PER_GI) as u32,
    );
    let live = dev < device_count(sim)
        && mig::gpu_instance(sim, dev, gi)
            .is_ok_and(|g| g.cis.iter().any(|c| u32::from(c.id) == ci));
    if !live {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    Ok((sim, dev, gi, ci))
}

/// What a device handle names: a whole GPU or one of its MIG devices.
enum Target {
    Gpu(usize),
    Mig(usize, mig::MigDevice),
}

fn target(h: nvmlDevice_t) -> Result<(&'static Sim, Target), nvmlReturn_t> {
    if slot_index(h).is_some() {
        let (sim, dev) = device_of(h)?;
        return Ok((sim, Target::Gpu(dev)));
    }
    let sim = sim()?;
    let i = table_index(&MIG_HANDLES, h).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    let (dev, gi, ci) = (
        i / (GIS_PER_DEVICE * CIS_PER_GI),
        ((i / CIS_PER_GI) % GIS_PER_DEVICE) as u32,
        (i % CIS_PER_GI) as u32,
    );
    if dev >= device_count(sim) {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    reachable(sim, dev)?;
    let d = mig::find_mig_device(sim, dev, gi, ci).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    Ok((sim, Target::Mig(dev, d)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current_mode: *mut c_uint,
    pending_mode: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let current_mode = out(current_mode)?;
        let pending_mode = out(pending_mode)?;
        (*current_mode, *pending_mode) = mig::mode(sim, dev)?;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceSetMigMode(
    device: nvmlDevice_t,
    mode: c_uint,
    activation_status: *mut nvmlReturn_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let status = out(activation_status)?;
        let r = mig::set_mode(sim, dev, mode);
        // The change takes effect at once here; real GPUs may need a reset first, which
        // `activationStatus` would report.
        *status = match r {
            Ok(()) => NVML_SUCCESS,
            Err(e) => e,
        };
        r
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        *out(count)? = mig::max_mig_devices(sim, dev);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig_device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let mig_device = out(mig_device)?;
        let d = mig::mig_devices(sim, dev)
            .into_iter()
            .nth(index as usize)
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        *mig_device = table_handle(&MIG_HANDLES, ci_index(dev, d.gi, d.ci));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: nvmlDevice_t,
    is_mig: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (_, t) = target(device)?;
        *out(is_mig)? = c_uint::from(matches!(t, Target::Mig(..)));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig_device: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    entry(|| {
        let Target::Mig(dev, _) = target(mig_device)?.1 else {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        };
        *out(device)? = handle_of(dev);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let Target::Mig(_, d) = target(device)?.1 else {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        };
        *out(id)? = d.gi;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let Target::Mig(_, d) = target(device)?.1 else {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        };
        *out(id)? = d.ci;
        Ok(())
    })
}

fn gpu_instance_profile(
    device: nvmlDevice_t,
    profile: c_uint,
) -> Result<(nvmlGpuInstanceProfileInfo_t, &'static str), nvmlReturn_t> {
    let (sim, dev) = device_of(device)?;
    mig::gpu_instance_profile(sim, dev, profile)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfo(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_t,
) -> nvmlReturn_t {
    entry(|| {
        let (p, _) = gpu_instance_profile(device, profile)?;
        *out(info)? = p;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfoV(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_v2_t,
) -> nvmlReturn_t {
    entry(|| {
        if info.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: both versions begin with the version word.
        let version = unsafe { info.cast::<c_uint>().read() };
        if version != nvmlGpuInstanceProfileInfo_v2 && version != nvmlGpuInstanceProfileInfo_v3 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let (p, pname) = gpu_instance_profile(device, profile)?;
        let name = format!("MIG {pname}");
        if version == nvmlGpuInstanceProfileInfo_v2 {
            let v2 = out(info)?;
            v2.id = p.id;
            v2.isP2pSupported = p.isP2pSupported;
            v2.sliceCount = p.sliceCount;
            v2.instanceCount = p.instanceCount;
            v2.multiprocessorCount = p.multiprocessorCount;
            v2.copyEngineCount = p.copyEngineCount;
            v2.decoderCount = p.decoderCount;
            v2.encoderCount = p.encoderCount;
            v2.jpegCount = p.jpegCount;
            v2.ofaCount = p.ofaCount;
            v2.memorySizeMB = p.memorySizeMB;
            fill_chars(&mut v2.name, &name);
        } else {
            let v3 = out(info.cast::<nvmlGpuInstanceProfileInfo_v3_t>())?;
            v3.id = p.id;
            v3.sliceCount = p.sliceCount;
            v3.instanceCount = p.instanceCount;
            v3.multiprocessorCount = p.multiprocessorCount;
            v3.copyEngineCount = p.copyEngineCount;
            v3.decoderCount = p.decoderCount;
            v3.encoderCount = p.encoderCount;
            v3.jpegCount = p.jpegCount;
            v3.ofaCount = p.ofaCount;
            v3.memorySizeMB = p.memorySizeMB;
            fill_chars(&mut v3.name, &name);
            v3.capabilities = if p.isP2pSupported != 0 {
                NVML_GPU_INSTANCE_PROFILE_CAPS_P2P
            } else {
                0
            };
        }
        Ok(())
    })
}

fn placements(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placements: *mut nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let count = out(count)?;
        let all: Vec<nvmlGpuInstancePlacement_t> = mig::possible_placements(sim, dev, profile_id)?
            .into_iter()
            .map(|(start, size)| nvmlGpuInstancePlacement_t { start, size })
            .collect();
        // A null array asks for the count only.
        if placements.is_null() {
            *count = all.len() as c_uint;
            return Ok(());
        }
        write_list(count, placements, &all)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placements_out: *mut nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    placements(device, profile_id, placements_out, count)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstancePossiblePlacements(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placements_out: *mut nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    placements(device, profile_id, placements_out, count)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceRemainingCapacity(
    device: nvmlDevice_t,
    profile_id: c_uint,
    count: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let count = out(count)?;
        *count = mig::remaining_capacity(sim, dev, profile_id)?;
        Ok(())
    })
}

fn create_gi(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placement: *const nvmlGpuInstancePlacement_t,
    with_placement: bool,
    gpu_instance: *mut nvmlGpuInstance_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let gpu_instance = out(gpu_instance)?;
        let placement = if with_placement {
            // SAFETY: the caller passes a readable placement or null.
            let p = unsafe { placement.as_ref() }.ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
            Some((p.start, p.size))
        } else {
            None
        };
        let gi = mig::create_gpu_instance(sim, dev, profile_id, placement)?;
        *gpu_instance = gi_handle(dev, gi);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstance(
    device: nvmlDevice_t,
    profile_id: c_uint,
    gpu_instance: *mut nvmlGpuInstance_t,
) -> nvmlReturn_t {
    create_gi(device, profile_id, core::ptr::null(), false, gpu_instance)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstanceWithPlacement(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placement: *const nvmlGpuInstancePlacement_t,
    gpu_instance: *mut nvmlGpuInstance_t,
) -> nvmlReturn_t {
    create_gi(device, profile_id, placement, true, gpu_instance)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceDestroy(gpu_instance: nvmlGpuInstance_t) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev, gi) = gi_of(gpu_instance)?;
        mig::destroy_gpu_instance(sim, dev, gi)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstances(
    device: nvmlDevice_t,
    profile_id: c_uint,
    instances: *mut nvmlGpuInstance_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let count = out(count)?;
        if !mig::enabled(sim, dev) {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        let ids = mig::gpu_instances(sim, dev, profile_id)?;
        // The caller's array holds the profile's instanceCount entries; `count` is output only.
        if instances.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        for (k, &gi) in ids.iter().enumerate() {
            // SAFETY: the array has room for every instance of the profile.
            unsafe { *instances.add(k) = gi_handle(dev, gi) };
        }
        *count = ids.len() as c_uint;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceById(
    device: nvmlDevice_t,
    id: c_uint,
    gpu_instance: *mut nvmlGpuInstance_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = device_of(device)?;
        let gpu_instance = out(gpu_instance)?;
        mig::gpu_instance(sim, dev, id)?;
        *gpu_instance = gi_handle(dev, id);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetInfo(
    gpu_instance: nvmlGpuInstance_t,
    info: *mut nvmlGpuInstanceInfo_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev, gi) = gi_of(gpu_instance)?;
        let info = out(info)?;
        let g = mig::gpu_instance(sim, dev, gi)?;
        *info = nvmlGpuInstanceInfo_t {
            device: handle_of(dev),
            id: gi,
            profileId: u32::from(g.profile_id),
            placement: nvmlGpuInstancePlacement_t {
                start: u32::from(g.start),
                size: u32::from(g.size),
            },
        };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    gpu_instance: nvmlGpuInstance_t,
    profile: c_uint,
    eng_profile: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev, gi) = gi_of(gpu_instance)?;
        let info = out(info)?;
        *info = mig::compute_instance_profile(sim, dev, gi, profile, eng_profile)?.0;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfoV(
    gpu_instance: nvmlGpuInstance_t,
    profile: c_uint,
    eng_profile: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_v2_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev, gi) = gi_of(gpu_instance)?;
        if info.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: both versions begin with the version word.
        let version = unsafe { info.cast::<c_uint>().read() };
        if version != nvmlComputeInstanceProfileInfo_v2
            && version != nvmlComputeInstanceProfileInfo_v3
        {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let (p, name) = mig::compute_instance_profile(sim, dev, gi, profile, eng_profile)?;
        let v2 = out(info)?;
        v2.id = p.id;
        v2.sliceCount = p.sliceCount;
        v2.instanceCount = p.instanceCount;
        v2.multiprocessorCount = p.multiprocessorCount;
        v2.sharedCopyEngineCount = p.sharedCopyEngineCount;
        v2.sharedDecoderCount = p.sharedDecoderCount;
        v2.sharedEncoderCount = p.sharedEncoderCount;
        v2.sharedJpegCount = p.sharedJpegCount;
        v2.sharedOfaCount = p.sharedOfaCount;
        fill_chars(&mut v2.name, &format!("MIG {name}"));
        if version == nvmlComputeInstanceProfileInfo_v3 {
            out(info.cast::<nvmlComputeInstanceProfileInfo_v3_t>())?.capabilities = 0;
        }
        Ok(())
    })
}

fn create_ci(
    gpu_instance: nvmlGpuInstance_t,
    profile_id: c_uint,
    placement: *const nvmlComputeInstancePlacement_t,
    with_placement: bool,
    compute_instance: *mut nvmlComputeInstance_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev, gi) = gi_of(gpu_instance)?;
        let compute_instance = out(compute_instance)?;
        let placement = if with_placement {
            // SAFETY: the caller passes a readable placement or null.
            let p = unsafe { placement.as_ref() }.ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
            Some((p.start, p.size))
        } else {
            None
        };
        let ci = mig::create_compute_instance(sim, dev, gi, profile_id, placement)?;
        *compute_instance = table_handle(&CI_HANDLES, ci_index(dev, gi, ci));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstance(
    gpu_instance: nvmlGpuInstance_t,
    profile_id: c_uint,
    compute_instance: *mut nvmlComputeInstance_t,
) -> nvmlReturn_t {
    create_ci(
        gpu_instance,
        profile_id,
        core::ptr::null(),
        false,
        compute_instance,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstanceWithPlacement(
    gpu_instance: nvmlGpuInstance_t,
    profile_id: c_uint,
    placement: *const nvmlComputeInstancePlacement_t,
    compute_instance: *mut nvmlComputeInstance_t,
) -> nvmlReturn_t {
    create_ci(gpu_instance, profile_id, placement, true, compute_instance)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlComputeInstanceDestroy(
    compute_instance: nvmlComputeInstance_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev, gi, ci) = ci_of(compute_instance)?;
        mig::destroy_compute_instance(sim, dev, gi, ci)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstances(
    gpu_instance: nvmlGpuInstance_t,
    profile_id: c_uint,
    instances: *mut nvmlComputeInstance_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev, gi) = gi_of(gpu_instance)?;
        let count = out(count)?;
        if profile_id >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT || instances.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let g = mig::gpu_instance(sim, dev, gi)?;
        let mut ids: Vec<u32> = g
            .cis
            .iter()
            .filter(|c| u32::from(c.profile_id) == profile_id)
            .map(|c| u32::from(c.id))
            .collect();
        ids.sort_unstable();
        for (k, &ci) in ids.iter().enumerate() {
            // SAFETY: the array has room for every instance of the profile.
            unsafe { *instances.add(k) = table_handle(&CI_HANDLES, ci_index(dev, gi, ci)) };
        }
        *count = ids.len() as c_uint;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceById(
    gpu_instance: nvmlGpuInstance_t,
    id: c_uint,
    compute_instance: *mut nvmlComputeInstance_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev, gi) = gi_of(gpu_instance)?;
        let compute_instance = out(compute_instance)?;
        let g = mig::gpu_instance(sim, dev, gi)?;
        if !g.cis.iter().any(|c| u32::from(c.id) == id) {
            return Err(NVML_ERROR_NOT_FOUND);
        }
        *compute_instance = table_handle(&CI_HANDLES, ci_index(dev, gi, id));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo_v2(
    compute_instance: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev, gi, ci) = ci_of(compute_instance)?;
        let info = out(info)?;
        let g = mig::gpu_instance(sim, dev, gi)?;
        let c = g
            .cis
            .iter()
            .find(|c| u32::from(c.id) == ci)
            .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        *info = nvmlComputeInstanceInfo_t {
            device: handle_of(dev),
            gpuInstance: gi_handle(dev, gi),
            id: ci,
            profileId: u32::from(c.profile_id),
            placement: nvmlComputeInstancePlacement_t {
                start: u32::from(c.start),
                size: u32::from(c.size),
            },
        };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo(
    compute_instance: nvmlComputeInstance_t,
    info: *mut nvmlComputeInstanceInfo_t,
) -> nvmlReturn_t {
    unsafe { nvmlComputeInstanceGetInfo_v2(compute_instance, info) }
}

// ---- Events ----
//
// Events live in the shared state (`Sim::raise`), one ring per device, so an event raised by
// any process reaches every event set registered for that device in every process. A set keeps,
// per registered device, the sequence number it has read up to; registering starts it at the
// device's current head, so events from before the registration are not seen, as in NVML.

/// One device registered on an event set.
struct Registration {
    dev: usize,
    mask: c_ulonglong,
    /// Next sequence number of the device's events to read.
    cursor: u64,
}

/// An event set: its registrations and the events read from the state but not yet delivered.
struct EventSet {
    inner: Mutex<SetInner>,
}

struct SetInner {
    registrations: Vec<Registration>,
    pending: std::collections::VecDeque<nvmlEventData_t>,
}

// SAFETY: nvmlEventData_t holds a device handle, an address of a static table; it is never
// dereferenced through the set.
unsafe impl Send for SetInner {}

/// Addresses of live event sets, so stale or foreign pointers are refused rather than followed.
static EVENT_SETS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn event_set(set: nvmlEventSet_t) -> Result<&'static EventSet, nvmlReturn_t> {
    if set.is_null() || !lock(&EVENT_SETS).contains(&(set as usize)) {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: the address is a live leaked Box<EventSet>; it is only freed by nvmlEventSetFree,
    // after which it is no longer in EVENT_SETS.
    Ok(unsafe { &*(set as *const EventSet) })
}

/// The NVML event type of a simulated event.
fn event_type(ev: &GpuEvent) -> c_ulonglong {
    match ev {
        GpuEvent::Xid { .. } => nvmlEventTypeXidCriticalError,
        GpuEvent::EccSingleBit => nvmlEventTypeSingleBitEccError,
        GpuEvent::EccDoubleBit => nvmlEventTypeDoubleBitEccError,
    }
}

/// `ev` on `dev` as `nvmlEventSetWait` reports it. Instance ids are given only for an XID
/// attributable to an instance while MIG is on; 0xFFFFFFFF otherwise.
fn event_data(sim: &Sim, dev: usize, ev: &GpuEvent) -> nvmlEventData_t {
    let (data, gi, ci) = match *ev {
        GpuEvent::Xid {
            code,
            gpu_instance,
            compute_instance,
        } if mig::enabled(sim, dev) => (code, gpu_instance, compute_instance),
        GpuEvent::Xid { code, .. } => (code, None, None),
        _ => (0, None, None),
    };
    nvmlEventData_t {
        device: handle_of(dev),
        eventType: event_type(ev),
        eventData: data,
        gpuInstanceId: gi.unwrap_or(NVML_INVALID_INSTANCE_ID),
        computeInstanceId: ci.unwrap_or(NVML_INVALID_INSTANCE_ID),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    entry(|| {
        sim()?;
        let set = out(set)?;
        let p = Box::into_raw(Box::new(EventSet {
            inner: Mutex::new(SetInner {
                registrations: Vec::new(),
                pending: Default::default(),
            }),
        }));
        lock(&EVENT_SETS).push(p as usize);
        *set = p.cast();
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    entry(|| {
        sim()?;
        let mut sets = lock(&EVENT_SETS);
        let pos = sets
            .iter()
            .position(|&p| p == set as usize)
            .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        sets.swap_remove(pos);
        // SAFETY: it was created by Box::into_raw in nvmlEventSetCreate and is now unlisted.
        drop(unsafe { Box::from_raw(set as *mut EventSet) });
        Ok(())
    })
}

/// Events are reported per GPU; MIG device handles take no part (NVML reports a MIG
/// instance's XIDs on its parent GPU, with the instance ids).
fn whole_gpu(device: nvmlDevice_t) -> Result<(&'static Sim, usize), nvmlReturn_t> {
    if slot_index(device).is_none() && matches!(target(device), Ok((_, Target::Mig(..)))) {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    device_of(device)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    event_types: *mut c_ulonglong,
) -> nvmlReturn_t {
    entry(|| {
        whole_gpu(device)?;
        *out(event_types)? = SUPPORTED_EVENTS;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    event_types: c_ulonglong,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    entry(|| {
        let (sim, dev) = whole_gpu(device)?;
        let set = event_set(set)?;
        // Nothing of the request is registered when any of it is unsupported.
        if event_types & !SUPPORTED_EVENTS != 0 {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        let mut inner = lock(&set.inner);
        match inner.registrations.iter_mut().find(|r| r.dev == dev) {
            Some(r) => r.mask |= event_types,
            None => inner.registrations.push(Registration {
                dev,
                mask: event_types,
                cursor: sim.event_head(dev),
            }),
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeoutms: c_uint,
) -> nvmlReturn_t {
    entry(|| {
        let sim = sim()?;
        let set = event_set(set)?;
        let data = out(data)?;
        // 0 waits without limit, as NVML documents.
        let deadline = (timeoutms > 0)
            .then(|| std::time::Instant::now() + Duration::from_millis(timeoutms.into()));
        loop {
            let seen = sim.event_generation();
            {
                let mut inner = lock(&set.inner);
                let SetInner {
                    registrations,
                    pending,
                } = &mut *inner;
                for r in registrations.iter_mut() {
                    if sim.is_lost(r.dev) {
                        return Err(NVML_ERROR_GPU_IS_LOST);
                    }
                    let (evs, next) = sim.events_since(r.dev, r.cursor);
                    r.cursor = next;
                    pending.extend(
                        evs.iter()
                            .filter(|e| event_type(e) & r.mask != 0)
                            .map(|e| event_data(sim, r.dev, e)),
                    );
                }
                if let Some(e) = pending.pop_front() {
                    *data = e;
                    return Ok(());
                }
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Err(NVML_ERROR_TIMEOUT),
                },
                None => Duration::from_secs(3600),
            };
            sim.wait_events(seen, left);
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeoutms: c_uint,
) -> nvmlReturn_t {
    // The pre-MIG layout: device, eventType and eventData only. Writing the instance ids
    // would run past a caller's older, 24-byte struct.
    if data.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: plain data.
    let mut full: nvmlEventData_t = unsafe { std::mem::zeroed() };
    let r = unsafe { nvmlEventSetWait_v2(set, &mut full, timeoutms) };
    if r == NVML_SUCCESS {
        // SAFETY: the caller's buffer holds at least the three leading fields.
        unsafe {
            (&raw mut (*data).device).write(full.device);
            (&raw mut (*data).eventType).write(full.eventType);
            (&raw mut (*data).eventData).write(full.eventData);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_parse_in_every_form() {
        assert_eq!(parse_bus_id("00000000:3B:00.0"), Some((0, 0x3B, 0, 0)));
        assert_eq!(parse_bus_id("0001:3b:1f.1"), Some((1, 0x3B, 0x1F, 1)));
        assert_eq!(parse_bus_id("3B:00.0"), Some((0, 0x3B, 0, 0)));
        assert_eq!(parse_bus_id("nonsense"), None);
        assert_eq!(parse_bus_id("0:1:2:3.0"), None);
    }

    #[test]
    fn foreign_handles_are_refused() {
        assert_eq!(slot_index(handle_of(1)), Some(1));
        assert_eq!(
            slot_index(handle_of(MAX_DEVICES - 1)),
            Some(MAX_DEVICES - 1)
        );
        assert_eq!(slot_index(core::ptr::null_mut()), None);
        let misaligned = (handle_of(0) as usize + 1) as nvmlDevice_t;
        assert_eq!(slot_index(misaligned), None);
        let past_end = (handle_of(MAX_DEVICES - 1) as usize + 4) as nvmlDevice_t;
        assert_eq!(slot_index(past_end), None);
    }
}

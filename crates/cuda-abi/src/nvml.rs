//! NVML types and codes (hand-written; names and layouts as in `nvml.h`, checked by the tests below).
//!
//! Only the subset the interposer and the simulated NVML use. Enums that `nvml.h` declares as C
//! `enum`s are plain `c_int`/`c_uint` constants here, so an out-of-range value from a caller is
//! never undefined behaviour on the Rust side.

use core::ffi::{c_char, c_int, c_uint, c_ulonglong};

// ---- Return codes (nvmlReturn_t) ----

pub type nvmlReturn_t = c_int;

pub const NVML_SUCCESS: nvmlReturn_t = 0;
pub const NVML_ERROR_UNINITIALIZED: nvmlReturn_t = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: nvmlReturn_t = 2;
pub const NVML_ERROR_NOT_SUPPORTED: nvmlReturn_t = 3;
pub const NVML_ERROR_NO_PERMISSION: nvmlReturn_t = 4;
pub const NVML_ERROR_ALREADY_INITIALIZED: nvmlReturn_t = 5;
pub const NVML_ERROR_NOT_FOUND: nvmlReturn_t = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: nvmlReturn_t = 7;
pub const NVML_ERROR_INSUFFICIENT_POWER: nvmlReturn_t = 8;
pub const NVML_ERROR_DRIVER_NOT_LOADED: nvmlReturn_t = 9;
pub const NVML_ERROR_TIMEOUT: nvmlReturn_t = 10;
pub const NVML_ERROR_IRQ_ISSUE: nvmlReturn_t = 11;
pub const NVML_ERROR_LIBRARY_NOT_FOUND: nvmlReturn_t = 12;
pub const NVML_ERROR_FUNCTION_NOT_FOUND: nvmlReturn_t = 13;
pub const NVML_ERROR_CORRUPTED_INFOROM: nvmlReturn_t = 14;
pub const NVML_ERROR_GPU_IS_LOST: nvmlReturn_t = 15;
pub const NVML_ERROR_RESET_REQUIRED: nvmlReturn_t = 16;
pub const NVML_ERROR_OPERATING_SYSTEM: nvmlReturn_t = 17;
pub const NVML_ERROR_LIB_RM_VERSION_MISMATCH: nvmlReturn_t = 18;
pub const NVML_ERROR_IN_USE: nvmlReturn_t = 19;
pub const NVML_ERROR_MEMORY: nvmlReturn_t = 20;
pub const NVML_ERROR_NO_DATA: nvmlReturn_t = 21;
pub const NVML_ERROR_VGPU_ECC_NOT_ENABLED: nvmlReturn_t = 22;
pub const NVML_ERROR_INSUFFICIENT_RESOURCES: nvmlReturn_t = 23;
pub const NVML_ERROR_FREQ_NOT_SUPPORTED: nvmlReturn_t = 24;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: nvmlReturn_t = 25;
pub const NVML_ERROR_DEPRECATED: nvmlReturn_t = 26;
pub const NVML_ERROR_NOT_READY: nvmlReturn_t = 27;
pub const NVML_ERROR_GPU_NOT_FOUND: nvmlReturn_t = 28;
pub const NVML_ERROR_INVALID_STATE: nvmlReturn_t = 29;
pub const NVML_ERROR_UNKNOWN: nvmlReturn_t = 999;

// ---- Buffer sizes ----

pub const NVML_DEVICE_UUID_BUFFER_SIZE: usize = 80;
pub const NVML_DEVICE_UUID_V2_BUFFER_SIZE: usize = 96;
pub const NVML_DEVICE_NAME_BUFFER_SIZE: usize = 64;
pub const NVML_DEVICE_NAME_V2_BUFFER_SIZE: usize = 96;
pub const NVML_DEVICE_SERIAL_BUFFER_SIZE: usize = 30;
pub const NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE: usize = 80;
pub const NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE: usize = 80;
pub const NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE: usize = 32;
pub const NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE: usize = 16;

/// `NVML_STRUCT_VERSION(data, ver)`: versioned structs carry `sizeof | ver << 24` in `version`.
pub const fn nvml_struct_version(size: usize, ver: u32) -> c_uint {
    (size as c_uint) | (ver << 24)
}

// ---- Handles ----

#[repr(C)]
pub struct nvmlDevice_st {
    _opaque: [u8; 0],
}
pub type nvmlDevice_t = *mut nvmlDevice_st;

#[repr(C)]
pub struct nvmlGpuInstance_st {
    _opaque: [u8; 0],
}
pub type nvmlGpuInstance_t = *mut nvmlGpuInstance_st;

#[repr(C)]
pub struct nvmlComputeInstance_st {
    _opaque: [u8; 0],
}
pub type nvmlComputeInstance_t = *mut nvmlComputeInstance_st;

#[repr(C)]
pub struct nvmlEventSet_st {
    _opaque: [u8; 0],
}
pub type nvmlEventSet_t = *mut nvmlEventSet_st;

// ---- Memory ----

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlMemory_t {
    pub total: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlMemory_v2_t {
    pub version: c_uint,
    pub total: c_ulonglong,
    pub reserved: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

pub const nvmlMemory_v2: c_uint = nvml_struct_version(core::mem::size_of::<nvmlMemory_v2_t>(), 2);

// ---- Utilization ----

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlUtilization_t {
    pub gpu: c_uint,
    pub memory: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlProcessUtilizationSample_t {
    pub pid: c_uint,
    /// CPU timestamp in microseconds.
    pub timeStamp: c_ulonglong,
    pub smUtil: c_uint,
    pub memUtil: c_uint,
    pub encUtil: c_uint,
    pub decUtil: c_uint,
}

/// One process's sample in `nvmlDeviceGetProcessesUtilizationInfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlProcessUtilizationInfo_v1_t {
    /// CPU timestamp in microseconds.
    pub timeStamp: c_ulonglong,
    pub pid: c_uint,
    pub smUtil: c_uint,
    pub memUtil: c_uint,
    pub encUtil: c_uint,
    pub decUtil: c_uint,
    pub jpgUtil: c_uint,
    pub ofaUtil: c_uint,
}

/// Argument of `nvmlDeviceGetProcessesUtilizationInfo`: the caller's array and its size in,
/// the samples and their number out.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct nvmlProcessesUtilizationInfo_v1_t {
    pub version: c_uint,
    pub processSamplesCount: c_uint,
    pub lastSeenTimeStamp: c_ulonglong,
    pub procUtilArray: *mut nvmlProcessUtilizationInfo_v1_t,
}

pub const nvmlProcessesUtilizationInfo_v1: c_uint =
    nvml_struct_version(core::mem::size_of::<nvmlProcessesUtilizationInfo_v1_t>(), 1);

// ---- Processes ----

/// Layout taken by the unversioned `nvmlDeviceGet{Compute,Graphics}RunningProcesses`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlProcessInfo_v1_t {
    pub pid: c_uint,
    pub usedGpuMemory: c_ulonglong,
}

/// Layout taken by the `_v2` and `_v3` process queries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlProcessInfo_t {
    pub pid: c_uint,
    pub usedGpuMemory: c_ulonglong,
    pub gpuInstanceId: c_uint,
    pub computeInstanceId: c_uint,
}

pub type nvmlProcessInfo_v2_t = nvmlProcessInfo_t;

/// One process in `nvmlDeviceGetRunningProcessDetailList`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlProcessDetail_v1_t {
    pub pid: c_uint,
    pub usedGpuMemory: c_ulonglong,
    pub gpuInstanceId: c_uint,
    pub computeInstanceId: c_uint,
    pub usedGpuCcProtectedMemory: c_ulonglong,
}

/// Argument of `nvmlDeviceGetRunningProcessDetailList`: which kind of processes (`mode`), the
/// caller's array and its size in, the processes and their number out.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct nvmlProcessDetailList_v1_t {
    pub version: c_uint,
    pub mode: c_uint,
    pub numProcArrayEntries: c_uint,
    pub procArray: *mut nvmlProcessDetail_v1_t,
}

pub const nvmlProcessDetailList_v1: c_uint =
    nvml_struct_version(core::mem::size_of::<nvmlProcessDetailList_v1_t>(), 1);
/// `mode` of a process detail list.
pub const NVML_PROCESS_MODE_COMPUTE: c_uint = 0;
pub const NVML_PROCESS_MODE_GRAPHICS: c_uint = 1;
pub const NVML_PROCESS_MODE_MPS: c_uint = 2;

/// `usedGpuMemory` when the amount is unknown (e.g. under Windows WDDM).
pub const NVML_VALUE_NOT_AVAILABLE: c_ulonglong = c_ulonglong::MAX;

// ---- PCI ----

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct nvmlPciInfo_t {
    /// `domain:bus:device.function` with a 4-digit domain.
    pub busIdLegacy: [c_char; NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    /// `device id << 16 | vendor id`.
    pub pciDeviceId: c_uint,
    pub pciSubSystemId: c_uint,
    /// `domain:bus:device.function` with an 8-digit domain.
    pub busId: [c_char; NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE],
}

impl Default for nvmlPciInfo_t {
    fn default() -> Self {
        Self {
            busIdLegacy: [0; NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE],
            domain: 0,
            bus: 0,
            device: 0,
            pciDeviceId: 0,
            pciSubSystemId: 0,
            busId: [0; NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE],
        }
    }
}

/// Bytes the legacy unversioned `nvmlDeviceGetPciInfo` writes: the old struct had four reserved
/// `unsigned int`s where `busId` now begins.
pub const NVML_PCI_INFO_V1_SIZE: usize = 52;

// ---- Misc enums ----

pub type nvmlEnableState_t = c_int;
pub const NVML_FEATURE_DISABLED: nvmlEnableState_t = 0;
pub const NVML_FEATURE_ENABLED: nvmlEnableState_t = 1;

pub type nvmlTemperatureSensors_t = c_int;
pub const NVML_TEMPERATURE_GPU: nvmlTemperatureSensors_t = 0;

pub type nvmlGpuTopologyLevel_t = c_int;
pub const NVML_TOPOLOGY_INTERNAL: nvmlGpuTopologyLevel_t = 0;
pub const NVML_TOPOLOGY_SINGLE: nvmlGpuTopologyLevel_t = 10;
pub const NVML_TOPOLOGY_MULTIPLE: nvmlGpuTopologyLevel_t = 20;
pub const NVML_TOPOLOGY_HOSTBRIDGE: nvmlGpuTopologyLevel_t = 30;
pub const NVML_TOPOLOGY_NODE: nvmlGpuTopologyLevel_t = 40;
pub const NVML_TOPOLOGY_SYSTEM: nvmlGpuTopologyLevel_t = 50;

/// `nvmlInitWithFlags` flags.
pub const NVML_INIT_FLAG_NO_GPUS: c_uint = 1;
pub const NVML_INIT_FLAG_NO_ATTACH: c_uint = 2;

// ---- Events ----

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct nvmlEventData_t {
    pub device: nvmlDevice_t,
    pub eventType: c_ulonglong,
    /// The XID number for XID events (999 when unknown), 0 for every other event.
    pub eventData: c_ulonglong,
    /// With MIG on, the GPU instance an XID is attributable to; `NVML_INVALID_INSTANCE_ID`
    /// (0xFFFFFFFF) otherwise.
    pub gpuInstanceId: c_uint,
    /// Likewise the compute instance.
    pub computeInstanceId: c_uint,
}

pub const nvmlEventTypeSingleBitEccError: c_ulonglong = 0x0000_0000_0000_0001;
pub const nvmlEventTypeDoubleBitEccError: c_ulonglong = 0x0000_0000_0000_0002;
pub const nvmlEventTypePState: c_ulonglong = 0x0000_0000_0000_0004;
pub const nvmlEventTypeXidCriticalError: c_ulonglong = 0x0000_0000_0000_0008;
pub const nvmlEventTypeClock: c_ulonglong = 0x0000_0000_0000_0010;
pub const nvmlEventTypePowerSourceChange: c_ulonglong = 0x0000_0000_0000_0080;
pub const nvmlEventMigConfigChange: c_ulonglong = 0x0000_0000_0000_0100;
pub const nvmlEventTypeNone: c_ulonglong = 0;

/// `eventData` of an XID event whose number the driver cannot tell.
pub const NVML_XID_UNKNOWN: c_ulonglong = 999;

// ---- Event entry points (signatures as in nvml.h) ----

pub type nvmlEventSetCreate_t = unsafe extern "C" fn(*mut nvmlEventSet_t) -> nvmlReturn_t;
pub type nvmlEventSetFree_t = unsafe extern "C" fn(nvmlEventSet_t) -> nvmlReturn_t;
pub type nvmlDeviceGetSupportedEventTypes_t =
    unsafe extern "C" fn(nvmlDevice_t, *mut c_ulonglong) -> nvmlReturn_t;
pub type nvmlDeviceRegisterEvents_t =
    unsafe extern "C" fn(nvmlDevice_t, c_ulonglong, nvmlEventSet_t) -> nvmlReturn_t;
/// `nvmlEventSetWait_v2`, and the older `nvmlEventSetWait`, which predates MIG and leaves
/// `gpuInstanceId`/`computeInstanceId` unwritten.
pub type nvmlEventSetWait_t =
    unsafe extern "C" fn(nvmlEventSet_t, *mut nvmlEventData_t, c_uint) -> nvmlReturn_t;

// ---- MIG ----

pub const NVML_DEVICE_MIG_DISABLE: c_uint = 0;
pub const NVML_DEVICE_MIG_ENABLE: c_uint = 1;

pub const NVML_GPU_INSTANCE_PROFILE_1_SLICE: c_uint = 0x0;
pub const NVML_GPU_INSTANCE_PROFILE_2_SLICE: c_uint = 0x1;
pub const NVML_GPU_INSTANCE_PROFILE_3_SLICE: c_uint = 0x2;
pub const NVML_GPU_INSTANCE_PROFILE_4_SLICE: c_uint = 0x3;
pub const NVML_GPU_INSTANCE_PROFILE_7_SLICE: c_uint = 0x4;
pub const NVML_GPU_INSTANCE_PROFILE_8_SLICE: c_uint = 0x5;
pub const NVML_GPU_INSTANCE_PROFILE_6_SLICE: c_uint = 0x6;
pub const NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1: c_uint = 0x7;
pub const NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1: c_uint = 0x8;
pub const NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2: c_uint = 0x9;
pub const NVML_GPU_INSTANCE_PROFILE_COUNT: c_uint = 0xA;

pub const NVML_GPU_INSTANCE_PROFILE_CAPS_P2P: c_uint = 0x1;

pub const NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE: c_uint = 0x0;
pub const NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE: c_uint = 0x1;
pub const NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE: c_uint = 0x2;
pub const NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE: c_uint = 0x3;
pub const NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE: c_uint = 0x4;
pub const NVML_COMPUTE_INSTANCE_PROFILE_8_SLICE: c_uint = 0x5;
pub const NVML_COMPUTE_INSTANCE_PROFILE_6_SLICE: c_uint = 0x6;
pub const NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1: c_uint = 0x7;
pub const NVML_COMPUTE_INSTANCE_PROFILE_COUNT: c_uint = 0x8;

pub const NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED: c_uint = 0x0;
pub const NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT: c_uint = 0x1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlGpuInstancePlacement_t {
    pub start: c_uint,
    pub size: c_uint,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlGpuInstanceProfileInfo_t {
    pub id: c_uint,
    pub isP2pSupported: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub copyEngineCount: c_uint,
    pub decoderCount: c_uint,
    pub encoderCount: c_uint,
    pub jpegCount: c_uint,
    pub ofaCount: c_uint,
    pub memorySizeMB: c_ulonglong,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct nvmlGpuInstanceProfileInfo_v2_t {
    pub version: c_uint,
    pub id: c_uint,
    pub isP2pSupported: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub copyEngineCount: c_uint,
    pub decoderCount: c_uint,
    pub encoderCount: c_uint,
    pub jpegCount: c_uint,
    pub ofaCount: c_uint,
    pub memorySizeMB: c_ulonglong,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
}

pub const nvmlGpuInstanceProfileInfo_v2: c_uint =
    nvml_struct_version(core::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>(), 2);

/// v3 drops `isP2pSupported` for a `capabilities` bit field at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct nvmlGpuInstanceProfileInfo_v3_t {
    pub version: c_uint,
    pub id: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub copyEngineCount: c_uint,
    pub decoderCount: c_uint,
    pub encoderCount: c_uint,
    pub jpegCount: c_uint,
    pub ofaCount: c_uint,
    pub memorySizeMB: c_ulonglong,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
    pub capabilities: c_uint,
}

pub const nvmlGpuInstanceProfileInfo_v3: c_uint =
    nvml_struct_version(core::mem::size_of::<nvmlGpuInstanceProfileInfo_v3_t>(), 3);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct nvmlGpuInstanceInfo_t {
    pub device: nvmlDevice_t,
    pub id: c_uint,
    pub profileId: c_uint,
    pub placement: nvmlGpuInstancePlacement_t,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct nvmlComputeInstanceInfo_t {
    pub device: nvmlDevice_t,
    pub gpuInstance: nvmlGpuInstance_t,
    pub id: c_uint,
    pub profileId: c_uint,
    pub placement: nvmlComputeInstancePlacement_t,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlComputeInstancePlacement_t {
    pub start: c_uint,
    pub size: c_uint,
}

/// `nvmlDeviceGetComputeInstanceProfileInfo` (unversioned).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct nvmlComputeInstanceProfileInfo_t {
    pub id: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub sharedCopyEngineCount: c_uint,
    pub sharedDecoderCount: c_uint,
    pub sharedEncoderCount: c_uint,
    pub sharedJpegCount: c_uint,
    pub sharedOfaCount: c_uint,
}

/// v2 adds `version` in front and `name` at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct nvmlComputeInstanceProfileInfo_v2_t {
    pub version: c_uint,
    pub id: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub sharedCopyEngineCount: c_uint,
    pub sharedDecoderCount: c_uint,
    pub sharedEncoderCount: c_uint,
    pub sharedJpegCount: c_uint,
    pub sharedOfaCount: c_uint,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
}

pub const nvmlComputeInstanceProfileInfo_v2: c_uint = nvml_struct_version(
    core::mem::size_of::<nvmlComputeInstanceProfileInfo_v2_t>(),
    2,
);

/// v3 adds a `capabilities` word at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct nvmlComputeInstanceProfileInfo_v3_t {
    pub version: c_uint,
    pub id: c_uint,
    pub sliceCount: c_uint,
    pub instanceCount: c_uint,
    pub multiprocessorCount: c_uint,
    pub sharedCopyEngineCount: c_uint,
    pub sharedDecoderCount: c_uint,
    pub sharedEncoderCount: c_uint,
    pub sharedJpegCount: c_uint,
    pub sharedOfaCount: c_uint,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
    pub capabilities: c_uint,
}

pub const nvmlComputeInstanceProfileInfo_v3: c_uint = nvml_struct_version(
    core::mem::size_of::<nvmlComputeInstanceProfileInfo_v3_t>(),
    3,
);

/// Value `nvmlDeviceGetGpuInstanceId`/`ComputeInstanceId` report for a non-MIG process.
pub const NVML_INVALID_INSTANCE_ID: c_uint = c_uint::MAX;

// ---- MIG entry points (signatures as in nvml.h) ----

pub type nvmlDeviceSetMigMode_t =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlReturn_t) -> nvmlReturn_t;
pub type nvmlDeviceGetGpuInstanceProfileInfo_t =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlGpuInstanceProfileInfo_t) -> nvmlReturn_t;
pub type nvmlDeviceGetGpuInstancePossiblePlacements_v2_t = unsafe extern "C" fn(
    nvmlDevice_t,
    c_uint,
    *mut nvmlGpuInstancePlacement_t,
    *mut c_uint,
) -> nvmlReturn_t;
pub type nvmlDeviceCreateGpuInstance_t =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlGpuInstance_t) -> nvmlReturn_t;
pub type nvmlDeviceCreateGpuInstanceWithPlacement_t = unsafe extern "C" fn(
    nvmlDevice_t,
    c_uint,
    *const nvmlGpuInstancePlacement_t,
    *mut nvmlGpuInstance_t,
) -> nvmlReturn_t;
pub type nvmlGpuInstanceDestroy_t = unsafe extern "C" fn(nvmlGpuInstance_t) -> nvmlReturn_t;
pub type nvmlDeviceGetGpuInstances_t =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlGpuInstance_t, *mut c_uint) -> nvmlReturn_t;
pub type nvmlGpuInstanceGetInfo_t =
    unsafe extern "C" fn(nvmlGpuInstance_t, *mut nvmlGpuInstanceInfo_t) -> nvmlReturn_t;
pub type nvmlGpuInstanceGetComputeInstanceProfileInfo_t = unsafe extern "C" fn(
    nvmlGpuInstance_t,
    c_uint,
    c_uint,
    *mut nvmlComputeInstanceProfileInfo_t,
) -> nvmlReturn_t;
pub type nvmlGpuInstanceCreateComputeInstance_t =
    unsafe extern "C" fn(nvmlGpuInstance_t, c_uint, *mut nvmlComputeInstance_t) -> nvmlReturn_t;
pub type nvmlGpuInstanceCreateComputeInstanceWithPlacement_t = unsafe extern "C" fn(
    nvmlGpuInstance_t,
    c_uint,
    *const nvmlComputeInstancePlacement_t,
    *mut nvmlComputeInstance_t,
)
    -> nvmlReturn_t;
pub type nvmlComputeInstanceDestroy_t = unsafe extern "C" fn(nvmlComputeInstance_t) -> nvmlReturn_t;
pub type nvmlGpuInstanceGetComputeInstances_t = unsafe extern "C" fn(
    nvmlGpuInstance_t,
    c_uint,
    *mut nvmlComputeInstance_t,
    *mut c_uint,
) -> nvmlReturn_t;
pub type nvmlComputeInstanceGetInfo_v2_t =
    unsafe extern "C" fn(nvmlComputeInstance_t, *mut nvmlComputeInstanceInfo_t) -> nvmlReturn_t;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_nvml_h() {
        assert_eq!(size_of::<nvmlMemory_t>(), 24);
        assert_eq!(size_of::<nvmlMemory_v2_t>(), 40);
        assert_eq!(offset_of!(nvmlMemory_v2_t, total), 8);
        assert_eq!(nvmlMemory_v2, 40 | (2 << 24));
        assert_eq!(size_of::<nvmlUtilization_t>(), 8);
        assert_eq!(size_of::<nvmlProcessInfo_v1_t>(), 16);
        assert_eq!(size_of::<nvmlProcessInfo_t>(), 24);
        assert_eq!(offset_of!(nvmlProcessInfo_t, gpuInstanceId), 16);
        assert_eq!(offset_of!(nvmlProcessInfo_t, computeInstanceId), 20);
        assert_eq!(size_of::<nvmlProcessUtilizationSample_t>(), 32);
        assert_eq!(size_of::<nvmlProcessUtilizationInfo_v1_t>(), 40);
        assert_eq!(offset_of!(nvmlProcessUtilizationInfo_v1_t, pid), 8);
        assert_eq!(size_of::<nvmlProcessesUtilizationInfo_v1_t>(), 24);
        assert_eq!(size_of::<nvmlProcessDetail_v1_t>(), 32);
        assert_eq!(
            offset_of!(nvmlProcessDetail_v1_t, usedGpuCcProtectedMemory),
            24
        );
        assert_eq!(size_of::<nvmlProcessDetailList_v1_t>(), 24);
        assert_eq!(offset_of!(nvmlProcessDetailList_v1_t, procArray), 16);
        assert_eq!(nvmlProcessesUtilizationInfo_v1, 24 | 1 << 24);
        assert_eq!(offset_of!(nvmlProcessUtilizationSample_t, timeStamp), 8);
        assert_eq!(offset_of!(nvmlProcessUtilizationSample_t, decUtil), 28);
        assert_eq!(size_of::<nvmlPciInfo_t>(), 68);
        assert_eq!(offset_of!(nvmlPciInfo_t, domain), 16);
        assert_eq!(offset_of!(nvmlPciInfo_t, pciSubSystemId), 32);
        assert_eq!(offset_of!(nvmlPciInfo_t, busId), 36);
        assert_eq!(size_of::<nvmlEventData_t>(), 32);
        assert_eq!(offset_of!(nvmlEventData_t, eventType), 8);
        assert_eq!(offset_of!(nvmlEventData_t, eventData), 16);
        assert_eq!(offset_of!(nvmlEventData_t, gpuInstanceId), 24);
        assert_eq!(offset_of!(nvmlEventData_t, computeInstanceId), 28);
        assert_eq!(
            (
                nvmlEventTypeSingleBitEccError,
                nvmlEventTypeDoubleBitEccError,
                nvmlEventTypeXidCriticalError
            ),
            (0x1, 0x2, 0x8)
        );
        assert_eq!(size_of::<nvmlGpuInstanceProfileInfo_t>(), 48);
        assert_eq!(offset_of!(nvmlGpuInstanceProfileInfo_t, memorySizeMB), 40);
        assert_eq!(size_of::<nvmlGpuInstanceProfileInfo_v2_t>(), 152);
        assert_eq!(
            offset_of!(nvmlGpuInstanceProfileInfo_v2_t, memorySizeMB),
            48
        );
        assert_eq!(size_of::<nvmlGpuInstanceProfileInfo_v3_t>(), 152);
        assert_eq!(
            offset_of!(nvmlGpuInstanceProfileInfo_v3_t, capabilities),
            144
        );
        assert_eq!(size_of::<nvmlGpuInstanceInfo_t>(), 24);
        assert_eq!(size_of::<nvmlComputeInstanceInfo_t>(), 32);
        assert_eq!(offset_of!(nvmlComputeInstanceInfo_t, placement), 24);
        assert_eq!(size_of::<nvmlComputeInstanceProfileInfo_t>(), 36);
        assert_eq!(size_of::<nvmlComputeInstanceProfileInfo_v2_t>(), 136);
        assert_eq!(offset_of!(nvmlComputeInstanceProfileInfo_v2_t, name), 40);
        assert_eq!(size_of::<nvmlComputeInstanceProfileInfo_v3_t>(), 140);
    }
}

// ---- what monitoring tools (nvitop, gpustat) ask for ----

pub type nvmlPstates_t = c_int;
pub const NVML_PSTATE_0: nvmlPstates_t = 0;
pub type nvmlComputeMode_t = c_int;
pub const NVML_COMPUTEMODE_DEFAULT: nvmlComputeMode_t = 0;
pub type nvmlClockType_t = c_int;
pub const NVML_CLOCK_GRAPHICS: nvmlClockType_t = 0;
pub const NVML_CLOCK_SM: nvmlClockType_t = 1;
pub const NVML_CLOCK_MEM: nvmlClockType_t = 2;
pub const NVML_CLOCK_VIDEO: nvmlClockType_t = 3;
pub type nvmlMemoryErrorType_t = c_int;
pub const NVML_MEMORY_ERROR_TYPE_COUNT: nvmlMemoryErrorType_t = 2;
pub type nvmlEccCounterType_t = c_int;
pub const NVML_ECC_COUNTER_TYPE_COUNT: nvmlEccCounterType_t = 2;
pub type nvmlDriverModel_t = c_int;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct nvmlBAR1Memory_t {
    pub bar1Total: u64,
    pub bar1Free: u64,
    pub bar1Used: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct nvmlTemperature_t {
    pub version: c_uint,
    pub sensorType: nvmlTemperatureSensors_t,
    pub temperature: c_int,
}

/// `NVML_STRUCT_VERSION(Temperature, 1)`.
pub const nvmlTemperature_v1: c_uint =
    nvml_struct_version(std::mem::size_of::<nvmlTemperature_t>(), 1);

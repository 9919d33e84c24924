//! NVML's event API: XID and ECC events of whole GPUs, read from an event set.
//!
//! NVML reports faults and never their end; what recovery means is the caller's business.
//! Events are registered per GPU (NVML takes no MIG device handles here); an XID attributable
//! to a MIG instance carries its GPU and compute instance ids.

use std::ffi::c_uint;
use std::sync::Arc;

use gpuslice_cuda_abi::nvml::*;

use crate::{Nvml, NvmlError, Result};

/// Event type bits (`nvmlEventType*`) for [`EventSet::register`].
pub const EVENT_ECC_SINGLE_BIT: u64 = nvmlEventTypeSingleBitEccError;
pub const EVENT_ECC_DOUBLE_BIT: u64 = nvmlEventTypeDoubleBitEccError;
pub const EVENT_XID: u64 = nvmlEventTypeXidCriticalError;

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An XID error with its number (999 when the driver cannot tell).
    Xid(u64),
    /// An uncorrectable (double-bit) ECC error.
    EccDoubleBit,
    /// A corrected (single-bit) ECC error: the hardware fixed it.
    EccSingleBit,
    /// Any other event type bit (clocks, power source, MIG changes …), as NVML gave it.
    Other(u64),
}

/// One event as read from the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The GPU's NVML index.
    pub gpu: u32,
    pub uuid: String,
    pub kind: EventKind,
    /// With MIG on, the GPU instance an XID is attributable to.
    pub gpu_instance: Option<u32>,
    /// Likewise the compute instance.
    pub compute_instance: Option<u32>,
}

/// Decodes an `nvmlEventData_t`'s type, data and instance ids. 0xFFFFFFFF means "no
/// instance"; instance ids of anything but an XID are ignored.
pub fn decode(
    event_type: u64,
    event_data: u64,
    gpu_instance: u32,
    compute_instance: u32,
) -> (EventKind, Option<u32>, Option<u32>) {
    let id = |v: u32| (v != NVML_INVALID_INSTANCE_ID).then_some(v);
    match event_type {
        t if t == nvmlEventTypeXidCriticalError => (
            EventKind::Xid(event_data),
            id(gpu_instance),
            id(compute_instance),
        ),
        t if t == nvmlEventTypeDoubleBitEccError => (EventKind::EccDoubleBit, None, None),
        t if t == nvmlEventTypeSingleBitEccError => (EventKind::EccSingleBit, None, None),
        other => (EventKind::Other(other), None, None),
    }
}

/// An NVML event set and the GPUs registered on it; freed on drop.
pub struct EventSet {
    nvml: Arc<Nvml>,
    set: nvmlEventSet_t,
    wait: nvmlEventSetWait_t,
    /// `nvmlEventSetWait` (pre-MIG) writes no instance ids.
    wait_v2: bool,
    /// (handle, index, uuid) of every registered GPU.
    devices: Vec<(nvmlDevice_t, u32, String)>,
}

// NVML handles are process-wide; the set is used by one thread at a time (`&mut` or owned).
unsafe impl Send for EventSet {}

impl Nvml {
    /// A new, empty event set.
    pub fn event_set(self: &Arc<Self>) -> Result<EventSet> {
        let (wait, wait_v2) = match self.sym::<nvmlEventSetWait_t>("nvmlEventSetWait_v2") {
            Ok(f) => (f, true),
            Err(_) => (self.sym::<nvmlEventSetWait_t>("nvmlEventSetWait")?, false),
        };
        let mut set = std::ptr::null_mut();
        call!(self, "nvmlEventSetCreate", nvmlEventSetCreate_t, (&mut set))?;
        Ok(EventSet {
            nvml: self.clone(),
            set,
            wait,
            wait_v2,
            devices: Vec::new(),
        })
    }

    /// The event types GPU `index` can report.
    pub fn supported_events(&self, index: u32) -> Result<u64> {
        let h = self.handle(index)?;
        let mut types = 0;
        call!(
            self,
            "nvmlDeviceGetSupportedEventTypes",
            nvmlDeviceGetSupportedEventTypes_t,
            (h, &mut types)
        )?;
        Ok(types)
    }

    /// Whether the device (GPU or MIG device) with `uuid` answers: found by UUID and its
    /// memory readable. A GPU that has fallen off the bus fails here.
    pub fn probe(&self, uuid: &str) -> Result<()> {
        let c = std::ffi::CString::new(uuid).map_err(|_| NvmlError::Call {
            call: "nvmlDeviceGetHandleByUUID",
            code: NVML_ERROR_INVALID_ARGUMENT,
            message: "UUID contains a NUL byte".into(),
        })?;
        let mut h = std::ptr::null_mut();
        call!(
            self,
            "nvmlDeviceGetHandleByUUID",
            unsafe extern "C" fn(*const std::ffi::c_char, *mut nvmlDevice_t) -> nvmlReturn_t,
            (c.as_ptr(), &mut h)
        )?;
        self.memory_of(h).map(|_| ())
    }
}

impl EventSet {
    /// Registers GPU `index` for those of `wanted` it supports; returns what was registered
    /// (0: nothing it supports was asked for). A GPU without event support fails with
    /// `NVML_ERROR_NOT_SUPPORTED`; the set stays usable.
    pub fn register(&mut self, index: u32, wanted: u64) -> Result<u64> {
        let n = &self.nvml;
        let types = wanted & n.supported_events(index)?;
        if types == 0 {
            return Ok(0);
        }
        let h = n.handle(index)?;
        call!(
            n,
            "nvmlDeviceRegisterEvents",
            nvmlDeviceRegisterEvents_t,
            (h, types, self.set)
        )?;
        let uuid = n.uuid_of(h)?;
        self.devices.push((h, index, uuid));
        Ok(types)
    }

    /// UUIDs of the registered GPUs.
    pub fn registered(&self) -> impl Iterator<Item = (u32, &str)> {
        self.devices.iter().map(|(_, i, u)| (*i, u.as_str()))
    }

    /// The next event, waiting up to `timeout_ms` (at least 1: NVML reads 0 as "forever");
    /// `None` when nothing happened in that time.
    pub fn wait(&self, timeout_ms: u32) -> Result<Option<Event>> {
        // SAFETY: plain data; the instance ids start as "none" for the pre-MIG wait, which
        // leaves them unwritten.
        let mut d: nvmlEventData_t = unsafe { std::mem::zeroed() };
        d.gpuInstanceId = NVML_INVALID_INSTANCE_ID;
        d.computeInstanceId = NVML_INVALID_INSTANCE_ID;
        let call = if self.wait_v2 {
            "nvmlEventSetWait_v2"
        } else {
            "nvmlEventSetWait"
        };
        // SAFETY: a live set and an event record of the layout nvml.h gives.
        let r = unsafe { (self.wait)(self.set, &mut d, timeout_ms.max(1) as c_uint) };
        if r == NVML_ERROR_TIMEOUT {
            return Ok(None);
        }
        self.nvml.check(call, r)?;
        let (kind, gpu_instance, compute_instance) = decode(
            d.eventType,
            d.eventData,
            d.gpuInstanceId,
            d.computeInstanceId,
        );
        let (gpu, uuid) = match self.devices.iter().find(|(h, _, _)| *h == d.device) {
            Some((_, i, u)) => (*i, u.clone()),
            None => {
                let n = &self.nvml;
                let mut i = 0;
                call!(
                    n,
                    "nvmlDeviceGetIndex",
                    unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t,
                    (d.device, &mut i)
                )?;
                (i, self.nvml.uuid_of(d.device)?)
            }
        };
        Ok(Some(Event {
            gpu,
            uuid,
            kind,
            gpu_instance,
            compute_instance,
        }))
    }
}

impl Drop for EventSet {
    fn drop(&mut self) {
        if let Ok(free) = self.nvml.sym::<nvmlEventSetFree_t>("nvmlEventSetFree") {
            // SAFETY: the set was created by nvmlEventSetCreate and is freed once.
            unsafe { free(self.set) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_records_decode() {
        let none = NVML_INVALID_INSTANCE_ID;
        assert_eq!(
            decode(nvmlEventTypeXidCriticalError, 79, none, none),
            (EventKind::Xid(79), None, None)
        );
        assert_eq!(
            decode(nvmlEventTypeXidCriticalError, 94, 3, 0),
            (EventKind::Xid(94), Some(3), Some(0))
        );
        assert_eq!(
            decode(nvmlEventTypeXidCriticalError, 999, 1, none),
            (EventKind::Xid(NVML_XID_UNKNOWN), Some(1), None)
        );
        assert_eq!(
            decode(nvmlEventTypeDoubleBitEccError, 0, 2, 2),
            (EventKind::EccDoubleBit, None, None)
        );
        assert_eq!(
            decode(nvmlEventTypeSingleBitEccError, 0, none, none),
            (EventKind::EccSingleBit, None, None)
        );
        assert_eq!(
            decode(nvmlEventTypePState, 0, none, none),
            (EventKind::Other(nvmlEventTypePState), None, None)
        );
    }
}

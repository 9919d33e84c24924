//! NVML, loaded at run time with `dlopen`: the real `libnvidia-ml.so.1`, or any library file
//! named by path (the simulator's). No NVML is needed to build or link against this crate.
//!
//! Only what discovery and MIG management need is wrapped. Every call checks its return code;
//! handles never leave this crate, so callers name GPUs by index and instances by id.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod mig;

pub use events::{Event, EventKind, EventSet};

use std::ffi::{CStr, CString, c_char, c_uint, c_void};
use std::path::Path;

use gpuslice_cuda_abi::nvml::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmlError {
    #[error("cannot load {lib}: {reason}")]
    Load { lib: String, reason: String },
    #[error("{lib} has no {symbol}")]
    Symbol { lib: String, symbol: String },
    #[error("{call}: {message} (NVML error {code})")]
    Call {
        call: &'static str,
        code: nvmlReturn_t,
        message: String,
    },
}

impl NvmlError {
    pub fn code(&self) -> Option<nvmlReturn_t> {
        match self {
            NvmlError::Call { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The GPU has fallen off the bus or is otherwise inaccessible.
    pub fn is_gpu_lost(&self) -> bool {
        self.code() == Some(NVML_ERROR_GPU_IS_LOST)
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(NVML_ERROR_NOT_FOUND)
    }
}

pub type Result<T> = std::result::Result<T, NvmlError>;

/// A GPU as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub memory_bytes: u64,
    /// From the MIG profile of the whole GPU when NVML describes one; `None` otherwise (NVML
    /// has no direct SM-count query for a whole GPU).
    pub sm_count: Option<u32>,
    pub numa_node: Option<u32>,
    pub pci_bus_id: String,
}

/// How two GPUs are connected (`nvmlGpuTopologyLevel_t`), nearest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topology {
    SameBoard,
    SingleSwitch,
    MultipleSwitches,
    HostBridge,
    NumaNode,
    System,
}

/// A MIG device (a compute instance) as NVML shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigDevice {
    pub parent: u32,
    pub uuid: String,
    pub memory_bytes: u64,
    pub gpu_instance: u32,
    pub compute_instance: u32,
}

/// A GPU instance and the compute instances in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInstance {
    pub id: u32,
    /// The NVML profile id (`nvidia-smi mig -lgip`'s ID column).
    pub profile_id: u32,
    pub start: u32,
    pub size: u32,
    pub compute_instances: Vec<ComputeInstance>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeInstance {
    pub id: u32,
    pub profile_id: u32,
    pub start: u32,
    pub size: u32,
}

/// An initialised NVML; shut down and unloaded on drop.
pub struct Nvml {
    lib: *mut c_void,
    name: String,
}

// NVML is thread-safe; the handle is only a library handle.
unsafe impl Send for Nvml {}
unsafe impl Sync for Nvml {}

macro_rules! call {
    ($self:ident, $name:literal, $ty:ty, ($($arg:expr),*)) => {{
        let f: $ty = $self.sym($name)?;
        // SAFETY: `f` has the signature nvml.h gives `$name`; the arguments are live locals.
        let r = unsafe { f($($arg),*) };
        $self.check($name, r)
    }};
}

// After `call!`, which it uses.
pub mod events;

impl Nvml {
    /// The system's NVML (`libnvidia-ml.so.1` from the loader's search path).
    pub fn system() -> Result<Nvml> {
        Nvml::open("libnvidia-ml.so.1")
    }

    /// The NVML at `path` (e.g. the simulator's `libnvidia_ml.so`).
    pub fn from_path(path: &Path) -> Result<Nvml> {
        Nvml::open(&path.to_string_lossy())
    }

    fn open(lib: &str) -> Result<Nvml> {
        let c = CString::new(lib).map_err(|_| NvmlError::Load {
            lib: lib.into(),
            reason: "path contains a NUL byte".into(),
        })?;
        // SAFETY: a NUL-terminated path; RTLD_LOCAL keeps its symbols to this handle.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            // SAFETY: dlerror returns a NUL-terminated message or null.
            let why = unsafe { libc::dlerror() };
            let reason = if why.is_null() {
                "dlopen failed".into()
            } else {
                unsafe { CStr::from_ptr(why) }
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(NvmlError::Load {
                lib: lib.into(),
                reason,
            });
        }
        let n = Nvml {
            lib: h,
            name: lib.into(),
        };
        call!(n, "nvmlInit_v2", unsafe extern "C" fn() -> nvmlReturn_t, ())?;
        Ok(n)
    }

    fn sym<F: Copy>(&self, name: &str) -> Result<F> {
        let c = CString::new(name).expect("symbol names have no NUL");
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(self.lib, c.as_ptr()) };
        if p.is_null() {
            return Err(NvmlError::Symbol {
                lib: self.name.clone(),
                symbol: name.into(),
            });
        }
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        // SAFETY: F is a function pointer type of the symbol's signature.
        Ok(unsafe { std::mem::transmute_copy(&p) })
    }

    fn check(&self, call: &'static str, code: nvmlReturn_t) -> Result<()> {
        if code == NVML_SUCCESS {
            return Ok(());
        }
        let message = self
            .sym::<unsafe extern "C" fn(nvmlReturn_t) -> *const c_char>("nvmlErrorString")
            .ok()
            .map(|f| unsafe { f(code) })
            .filter(|p| !p.is_null())
            // SAFETY: nvmlErrorString returns a static NUL-terminated string.
            .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unknown error".into());
        Err(NvmlError::Call {
            call,
            code,
            message,
        })
    }

    fn handle(&self, index: u32) -> Result<nvmlDevice_t> {
        let mut h = std::ptr::null_mut();
        call!(
            self,
            "nvmlDeviceGetHandleByIndex_v2",
            unsafe extern "C" fn(c_uint, *mut nvmlDevice_t) -> nvmlReturn_t,
            (index, &mut h)
        )?;
        Ok(h)
    }

    fn string(
        &self,
        h: nvmlDevice_t,
        f: &'static str,
        get: unsafe extern "C" fn(nvmlDevice_t, *mut c_char, c_uint) -> nvmlReturn_t,
    ) -> Result<String> {
        let mut buf = [0 as c_char; 128];
        // SAFETY: the buffer holds `len` bytes.
        let r = unsafe { get(h, buf.as_mut_ptr(), buf.len() as c_uint) };
        self.check(f, r)?;
        // SAFETY: NVML NUL-terminates within the buffer on success.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    fn name_of(&self, h: nvmlDevice_t) -> Result<String> {
        self.string(h, "nvmlDeviceGetName", self.sym("nvmlDeviceGetName")?)
    }

    fn uuid_of(&self, h: nvmlDevice_t) -> Result<String> {
        self.string(h, "nvmlDeviceGetUUID", self.sym("nvmlDeviceGetUUID")?)
    }

    fn memory_of(&self, h: nvmlDevice_t) -> Result<u64> {
        let mut m = nvmlMemory_t::default();
        call!(
            self,
            "nvmlDeviceGetMemoryInfo",
            unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_t) -> nvmlReturn_t,
            (h, &mut m)
        )?;
        Ok(m.total)
    }

    pub fn device_count(&self) -> Result<u32> {
        let mut n = 0;
        call!(
            self,
            "nvmlDeviceGetCount_v2",
            unsafe extern "C" fn(*mut c_uint) -> nvmlReturn_t,
            (&mut n)
        )?;
        Ok(n)
    }

    pub fn name(&self, index: u32) -> Result<String> {
        self.name_of(self.handle(index)?)
    }

    /// Every GPU, by index.
    pub fn gpus(&self) -> Result<Vec<Gpu>> {
        (0..self.device_count()?).map(|i| self.gpu(i)).collect()
    }

    pub fn gpu(&self, index: u32) -> Result<Gpu> {
        let h = self.handle(index)?;
        let mut numa = 0;
        let numa_node = call!(
            self,
            "nvmlDeviceGetNumaNodeId",
            unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t,
            (h, &mut numa)
        )
        .ok()
        .map(|_| numa);
        let mut pci = nvmlPciInfo_t::default();
        call!(
            self,
            "nvmlDeviceGetPciInfo_v3",
            unsafe extern "C" fn(nvmlDevice_t, *mut nvmlPciInfo_t) -> nvmlReturn_t,
            (h, &mut pci)
        )?;
        // SAFETY: NVML NUL-terminates busId.
        let pci_bus_id = unsafe { CStr::from_ptr(pci.busId.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        // The whole-GPU MIG profile (7 slices) carries the SM count on MIG-capable parts.
        let sm_count = self
            .gpu_instance_profile(index, NVML_GPU_INSTANCE_PROFILE_7_SLICE)
            .ok()
            .flatten()
            .map(|p| p.multiprocessorCount);
        Ok(Gpu {
            index,
            name: self.name_of(h)?,
            uuid: self.uuid_of(h)?,
            memory_bytes: self.memory_of(h)?,
            sm_count,
            numa_node,
            pci_bus_id,
        })
    }

    /// How GPUs `a` and `b` are connected.
    pub fn topology(&self, a: u32, b: u32) -> Result<Topology> {
        let (ha, hb) = (self.handle(a)?, self.handle(b)?);
        let mut level: nvmlGpuTopologyLevel_t = 0;
        call!(
            self,
            "nvmlDeviceGetTopologyCommonAncestor",
            unsafe extern "C" fn(
                nvmlDevice_t,
                nvmlDevice_t,
                *mut nvmlGpuTopologyLevel_t,
            ) -> nvmlReturn_t,
            (ha, hb, &mut level)
        )?;
        Ok(match level {
            NVML_TOPOLOGY_INTERNAL => Topology::SameBoard,
            NVML_TOPOLOGY_SINGLE => Topology::SingleSwitch,
            NVML_TOPOLOGY_MULTIPLE => Topology::MultipleSwitches,
            NVML_TOPOLOGY_HOSTBRIDGE => Topology::HostBridge,
            NVML_TOPOLOGY_NODE => Topology::NumaNode,
            _ => Topology::System,
        })
    }

    /// True when GPUs `a` and `b` reach each other over NVLink (`nvmlDeviceGetP2PStatus`,
    /// NVLink capability). An NVML without the query, or a GPU without NVLink, says false.
    pub fn nvlink_peer(&self, a: u32, b: u32) -> Result<bool> {
        // nvmlGpuP2PCapsIndex_t NVML_P2P_CAPS_INDEX_NVLINK; status 0 is NVML_P2P_STATUS_OK.
        const CAPS_INDEX_NVLINK: c_uint = 2;
        type P2p =
            unsafe extern "C" fn(nvmlDevice_t, nvmlDevice_t, c_uint, *mut c_uint) -> nvmlReturn_t;
        if self.sym::<P2p>("nvmlDeviceGetP2PStatus").is_err() {
            return Ok(false);
        }
        let (ha, hb) = (self.handle(a)?, self.handle(b)?);
        let mut status: c_uint = 1;
        match call!(
            self,
            "nvmlDeviceGetP2PStatus",
            P2p,
            (ha, hb, CAPS_INDEX_NVLINK, &mut status)
        ) {
            Ok(()) => Ok(status == 0),
            Err(e) if e.code() == Some(NVML_ERROR_NOT_SUPPORTED) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Bytes of GPU `index`'s memory in use.
    pub fn memory_used(&self, index: u32) -> Result<u64> {
        let h = self.handle(index)?;
        let mut m = nvmlMemory_t::default();
        call!(
            self,
            "nvmlDeviceGetMemoryInfo",
            unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_t) -> nvmlReturn_t,
            (h, &mut m)
        )?;
        Ok(m.used)
    }

    /// Every process with a context on GPU `index` and the memory the driver says it uses:
    /// compute, graphics and MPS clients alike (a process escaping CUDA's interposer may use
    /// any). A process listed more than once counts once, with its largest figure; a figure
    /// NVML does not know (`NVML_VALUE_NOT_AVAILABLE`) reads as 0. Pids are as the driver
    /// reports them (the host's, for a caller in the host's PID namespace). Each list takes the
    /// newest form the library has (`_v3`, `_v2`, then the unversioned one); a library with
    /// none of a kind contributes nothing of that kind, but one without any compute list is an
    /// error.
    pub fn processes(&self, index: u32) -> Result<Vec<(u32, u64)>> {
        let h = self.handle(index)?;
        let mut out: std::collections::BTreeMap<u32, u64> = Default::default();
        let mut add = |list: Vec<(u32, u64)>| {
            for (pid, used) in list {
                let used = if used == NVML_VALUE_NOT_AVAILABLE {
                    0
                } else {
                    used
                };
                let e = out.entry(pid).or_default();
                *e = (*e).max(used);
            }
        };
        macro_rules! forms {
            ($base:literal) => {
                [concat!($base, "_v3"), concat!($base, "_v2"), $base]
            };
        }
        add(self.process_list(h, forms!("nvmlDeviceGetComputeRunningProcesses"))?);
        for kind in [
            forms!("nvmlDeviceGetGraphicsRunningProcesses"),
            forms!("nvmlDeviceGetMPSComputeRunningProcesses"),
        ] {
            match self.process_list(h, kind) {
                Ok(l) => add(l),
                Err(NvmlError::Symbol { .. }) => {}
                Err(e) if e.code() == Some(NVML_ERROR_NOT_SUPPORTED) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out.into_iter().collect())
    }

    /// One kind of process list, in the newest form the library has: `[v3, v2, v1]` names.
    fn process_list(&self, h: nvmlDevice_t, forms: [&'static str; 3]) -> Result<Vec<(u32, u64)>> {
        type Versioned =
            unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut nvmlProcessInfo_t) -> nvmlReturn_t;
        type V1 = unsafe extern "C" fn(
            nvmlDevice_t,
            *mut c_uint,
            *mut nvmlProcessInfo_v1_t,
        ) -> nvmlReturn_t;
        for n in &forms[..2] {
            if let Ok(f) = self.sym::<Versioned>(n) {
                return self
                    .fill_list(n, |count, buf: *mut nvmlProcessInfo_t| {
                        // SAFETY: `f` has nvml.h's signature; `buf` has room for `*count` entries.
                        unsafe { f(h, count, buf) }
                    })
                    .map(|l| l.iter().map(|p| (p.pid, p.usedGpuMemory)).collect());
            }
        }
        let f = self.sym::<V1>(forms[2])?;
        self.fill_list(forms[2], |count, buf: *mut nvmlProcessInfo_v1_t| {
            // SAFETY: as above, for the unversioned layout.
            unsafe { f(h, count, buf) }
        })
        .map(|l| l.iter().map(|p| (p.pid, p.usedGpuMemory)).collect())
    }

    /// Runs NVML's size protocol: asks, grows the buffer while the list grows, returns it.
    fn fill_list<T: Copy + Default>(
        &self,
        call: &'static str,
        f: impl Fn(*mut c_uint, *mut T) -> nvmlReturn_t,
    ) -> Result<Vec<T>> {
        let mut buf: Vec<T> = vec![T::default(); 32];
        for _ in 0..8 {
            let mut count = buf.len() as c_uint;
            let r = f(&mut count, buf.as_mut_ptr());
            if r == NVML_ERROR_INSUFFICIENT_SIZE {
                buf.resize(count as usize + 16, T::default());
                continue;
            }
            self.check(call, r)?;
            buf.truncate(count as usize);
            return Ok(buf);
        }
        Err(NvmlError::Call {
            call,
            code: NVML_ERROR_INSUFFICIENT_SIZE,
            message: "the process list kept growing".into(),
        })
    }

    /// GPU `index`'s busy percentage over NVML's last sampling period.
    pub fn utilization_percent(&self, index: u32) -> Result<u32> {
        let h = self.handle(index)?;
        let mut u = nvmlUtilization_t::default();
        call!(
            self,
            "nvmlDeviceGetUtilizationRates",
            unsafe extern "C" fn(nvmlDevice_t, *mut nvmlUtilization_t) -> nvmlReturn_t,
            (h, &mut u)
        )?;
        Ok(u.gpu)
    }

    /// `/dev/nvidia<minor>` of GPU `index`, when NVML knows it.
    pub fn minor(&self, index: u32) -> Result<u32> {
        let h = self.handle(index)?;
        let mut m = 0;
        call!(
            self,
            "nvmlDeviceGetMinorNumber",
            unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t,
            (h, &mut m)
        )?;
        Ok(m)
    }

    // ---- MIG: reading ----

    /// (current, pending) MIG mode; `None` when the GPU does not support MIG.
    pub fn mig_mode(&self, index: u32) -> Result<Option<(bool, bool)>> {
        let h = self.handle(index)?;
        let (mut cur, mut pend) = (0, 0);
        match call!(
            self,
            "nvmlDeviceGetMigMode",
            unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut c_uint) -> nvmlReturn_t,
            (h, &mut cur, &mut pend)
        ) {
            Ok(()) => Ok(Some((
                cur == NVML_DEVICE_MIG_ENABLE,
                pend == NVML_DEVICE_MIG_ENABLE,
            ))),
            Err(e) if e.code() == Some(NVML_ERROR_NOT_SUPPORTED) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Info for `NVML_GPU_INSTANCE_PROFILE_*` value `profile`; `None` where this GPU lacks it
    /// (or MIG is off).
    pub fn gpu_instance_profile(
        &self,
        index: u32,
        profile: u32,
    ) -> Result<Option<nvmlGpuInstanceProfileInfo_t>> {
        let h = self.handle(index)?;
        let mut info = nvmlGpuInstanceProfileInfo_t::default();
        match call!(
            self,
            "nvmlDeviceGetGpuInstanceProfileInfo",
            nvmlDeviceGetGpuInstanceProfileInfo_t,
            (h, profile, &mut info)
        ) {
            Ok(()) => Ok(Some(info)),
            Err(e)
                if matches!(
                    e.code(),
                    Some(NVML_ERROR_NOT_SUPPORTED | NVML_ERROR_INVALID_ARGUMENT)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn gi_handles(&self, index: u32) -> Result<Vec<nvmlGpuInstance_t>> {
        let h = self.handle(index)?;
        let mut out = Vec::new();
        for profile in 0..NVML_GPU_INSTANCE_PROFILE_COUNT {
            let Some(info) = self.gpu_instance_profile(index, profile)? else {
                continue;
            };
            let mut buf = vec![std::ptr::null_mut(); info.instanceCount.max(1) as usize];
            let mut n = 0;
            call!(
                self,
                "nvmlDeviceGetGpuInstances",
                nvmlDeviceGetGpuInstances_t,
                (h, info.id, buf.as_mut_ptr(), &mut n)
            )?;
            out.extend(buf.into_iter().take(n as usize));
        }
        Ok(out)
    }

    fn gi_info(&self, gi: nvmlGpuInstance_t) -> Result<nvmlGpuInstanceInfo_t> {
        // SAFETY: plain data; every field is written on success.
        let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
        call!(
            self,
            "nvmlGpuInstanceGetInfo",
            nvmlGpuInstanceGetInfo_t,
            (gi, &mut info)
        )?;
        Ok(info)
    }

    fn ci_handles(&self, gi: nvmlGpuInstance_t) -> Result<Vec<nvmlComputeInstance_t>> {
        let mut out = Vec::new();
        for profile in 0..NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
            let mut info = nvmlComputeInstanceProfileInfo_t::default();
            let r = call!(
                self,
                "nvmlGpuInstanceGetComputeInstanceProfileInfo",
                nvmlGpuInstanceGetComputeInstanceProfileInfo_t,
                (
                    gi,
                    profile,
                    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                    &mut info
                )
            );
            if r.is_err() {
                continue;
            }
            let mut buf = vec![std::ptr::null_mut(); info.instanceCount.max(1) as usize];
            let mut n = 0;
            call!(
                self,
                "nvmlGpuInstanceGetComputeInstances",
                nvmlGpuInstanceGetComputeInstances_t,
                (gi, info.id, buf.as_mut_ptr(), &mut n)
            )?;
            out.extend(buf.into_iter().take(n as usize));
        }
        Ok(out)
    }

    /// The GPU instances of GPU `index` with their compute instances, by start.
    pub fn gpu_instances(&self, index: u32) -> Result<Vec<GpuInstance>> {
        let mut out = Vec::new();
        for gi in self.gi_handles(index)? {
            let info = self.gi_info(gi)?;
            let mut cis = Vec::new();
            for ci in self.ci_handles(gi)? {
                // SAFETY: plain data; every field is written on success.
                let mut c: nvmlComputeInstanceInfo_t = unsafe { std::mem::zeroed() };
                call!(
                    self,
                    "nvmlComputeInstanceGetInfo_v2",
                    nvmlComputeInstanceGetInfo_v2_t,
                    (ci, &mut c)
                )?;
                cis.push(ComputeInstance {
                    id: c.id,
                    profile_id: c.profileId,
                    start: c.placement.start,
                    size: c.placement.size,
                });
            }
            cis.sort_by_key(|c| c.start);
            out.push(GpuInstance {
                id: info.id,
                profile_id: info.profileId,
                start: info.placement.start,
                size: info.placement.size,
                compute_instances: cis,
            });
        }
        out.sort_by_key(|g| g.start);
        Ok(out)
    }

    /// The MIG devices of GPU `index` (none while MIG is off).
    pub fn mig_devices(&self, index: u32) -> Result<Vec<MigDevice>> {
        let h = self.handle(index)?;
        let mut max = 0;
        call!(
            self,
            "nvmlDeviceGetMaxMigDeviceCount",
            unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t,
            (h, &mut max)
        )?;
        let mut out = Vec::new();
        for k in 0..max {
            let mut m = std::ptr::null_mut();
            match call!(
                self,
                "nvmlDeviceGetMigDeviceHandleByIndex",
                unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlDevice_t) -> nvmlReturn_t,
                (h, k, &mut m)
            ) {
                Ok(()) => {}
                Err(e) if e.code() == Some(NVML_ERROR_NOT_FOUND) => continue,
                Err(e) => return Err(e),
            }
            let (mut gi, mut ci) = (0, 0);
            call!(
                self,
                "nvmlDeviceGetGpuInstanceId",
                unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t,
                (m, &mut gi)
            )?;
            call!(
                self,
                "nvmlDeviceGetComputeInstanceId",
                unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t,
                (m, &mut ci)
            )?;
            out.push(MigDevice {
                parent: index,
                uuid: self.uuid_of(m)?,
                memory_bytes: self.memory_of(m)?,
                gpu_instance: gi,
                compute_instance: ci,
            });
        }
        Ok(out)
    }

    // ---- MIG: changing ----

    pub fn set_mig_mode(&self, index: u32, enabled: bool) -> Result<()> {
        let h = self.handle(index)?;
        let mode = if enabled {
            NVML_DEVICE_MIG_ENABLE
        } else {
            NVML_DEVICE_MIG_DISABLE
        };
        let mut activation = NVML_SUCCESS;
        call!(
            self,
            "nvmlDeviceSetMigMode",
            nvmlDeviceSetMigMode_t,
            (h, mode, &mut activation)
        )?;
        self.check("nvmlDeviceSetMigMode (activation)", activation)
    }

    /// Creates a GPU instance of NVML profile id `profile_id` at memory slice `start` (with
    /// the profile's size); returns its id.
    pub fn create_gpu_instance(
        &self,
        index: u32,
        profile_id: u32,
        start: u32,
        size: u32,
    ) -> Result<u32> {
        let h = self.handle(index)?;
        let placement = nvmlGpuInstancePlacement_t { start, size };
        let mut gi = std::ptr::null_mut();
        call!(
            self,
            "nvmlDeviceCreateGpuInstanceWithPlacement",
            nvmlDeviceCreateGpuInstanceWithPlacement_t,
            (h, profile_id, &placement, &mut gi)
        )?;
        Ok(self.gi_info(gi)?.id)
    }

    fn gi_by_id(&self, index: u32, gi: u32) -> Result<nvmlGpuInstance_t> {
        let h = self.handle(index)?;
        let mut g = std::ptr::null_mut();
        call!(
            self,
            "nvmlDeviceGetGpuInstanceById",
            unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlGpuInstance_t) -> nvmlReturn_t,
            (h, gi, &mut g)
        )?;
        Ok(g)
    }

    pub fn destroy_gpu_instance(&self, index: u32, gi: u32) -> Result<()> {
        let g = self.gi_by_id(index, gi)?;
        call!(
            self,
            "nvmlGpuInstanceDestroy",
            nvmlGpuInstanceDestroy_t,
            (g)
        )
    }

    /// Creates a compute instance of profile `ci_profile` in GPU instance `gi` at compute
    /// slice `start`, or wherever NVML chooses; returns its id.
    pub fn create_compute_instance(
        &self,
        index: u32,
        gi: u32,
        ci_profile: u32,
        placement: Option<(u32, u32)>,
    ) -> Result<u32> {
        let g = self.gi_by_id(index, gi)?;
        let mut ci = std::ptr::null_mut();
        match placement {
            Some((start, size)) => {
                let p = nvmlComputeInstancePlacement_t { start, size };
                call!(
                    self,
                    "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
                    nvmlGpuInstanceCreateComputeInstanceWithPlacement_t,
                    (g, ci_profile, &p, &mut ci)
                )?
            }
            None => call!(
                self,
                "nvmlGpuInstanceCreateComputeInstance",
                nvmlGpuInstanceCreateComputeInstance_t,
                (g, ci_profile, &mut ci)
            )?,
        }
        // SAFETY: plain data; every field is written on success.
        let mut c: nvmlComputeInstanceInfo_t = unsafe { std::mem::zeroed() };
        call!(
            self,
            "nvmlComputeInstanceGetInfo_v2",
            nvmlComputeInstanceGetInfo_v2_t,
            (ci, &mut c)
        )?;
        Ok(c.id)
    }

    pub fn destroy_compute_instance(&self, index: u32, gi: u32, ci: u32) -> Result<()> {
        let g = self.gi_by_id(index, gi)?;
        let mut c = std::ptr::null_mut();
        call!(
            self,
            "nvmlGpuInstanceGetComputeInstanceById",
            unsafe extern "C" fn(
                nvmlGpuInstance_t,
                c_uint,
                *mut nvmlComputeInstance_t,
            ) -> nvmlReturn_t,
            (g, ci, &mut c)
        )?;
        call!(
            self,
            "nvmlComputeInstanceDestroy",
            nvmlComputeInstanceDestroy_t,
            (c)
        )
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        if let Ok(f) = self.sym::<unsafe extern "C" fn() -> nvmlReturn_t>("nvmlShutdown") {
            // SAFETY: paired with the nvmlInit_v2 in `open`.
            unsafe { f() };
        }
        // The library stays mapped: NVML may keep threads or atexit handlers of its own.
    }
}

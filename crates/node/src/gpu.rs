//! What the agent needs to know about the node's GPUs, behind a trait so the agent runs on NVML
//! (real or simulated) and tests can give it any machine. Discovery is repeated, so a MIG layout
//! applied out of band shows up without a restart.

use std::sync::Arc;

/// One physical GPU as discovered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_bytes: u64,
    pub sms: u32,
    pub numa: Option<u32>,
    pub pci_bus_id: String,
    /// `/dev/nvidia<minor>`, when the device has a node (not on the simulator).
    pub minor: Option<u32>,
    pub nvlink_peers: Vec<String>,
    /// GPUs with equal ids share a PCIe switch.
    pub pcie_switch: Option<String>,
    /// MIG is on: the GPU itself is not offered, only its MIG devices.
    pub mig_enabled: bool,
    pub mig: Vec<MigDev>,
}

/// A moment's reading of one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GpuSample {
    pub memory_used_bytes: u64,
    /// 0.0–1.0 over the sampling window.
    pub utilization: f64,
}

pub trait GpuSource: Send + Sync {
    fn gpus(&self) -> Result<Vec<Gpu>, String>;
    fn sample(&self, index: u32) -> Result<GpuSample, String>;
    /// (pid, bytes used) of every process on GPU `index`, by the driver's count (see
    /// `crate::watchdog`). A source that cannot tell says so: the watchdog then reports it.
    fn processes(&self, _index: u32) -> Result<Vec<(u32, u64)>, String> {
        Err("this GPU source cannot list processes".into())
    }
}

/// One MIG device (a GPU instance with one whole compute instance), advertised as
/// `gpuslice.io/mig-<profile>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigDev {
    pub uuid: String,
    /// The GPU-instance profile, e.g. `1g.10gb`.
    pub profile: String,
    pub memory_bytes: u64,
    pub sms: u32,
    /// First memory slice of the GPU instance, as NVML places it.
    pub start: Option<u8>,
}

/// GPUs through NVML loaded at run time: the system's `libnvidia-ml.so.1`, or the simulator's
/// `libnvidia_ml.so` (which reads the same shared state as the simulated `libcuda.so`).
pub struct NvmlGpus {
    nvml: gpuslice_nvml::Nvml,
    /// The simulator has no `/dev/nvidia*` nodes to hand to containers.
    sim: bool,
}

impl NvmlGpus {
    pub fn system() -> Result<Arc<dyn GpuSource>, String> {
        let nvml = gpuslice_nvml::Nvml::system().map_err(|e| e.to_string())?;
        Ok(Arc::new(NvmlGpus { nvml, sim: false }))
    }

    /// The simulator's NVML at `lib`.
    pub fn simulated(lib: &std::path::Path) -> Result<Arc<dyn GpuSource>, String> {
        let nvml = gpuslice_nvml::Nvml::from_path(lib).map_err(|e| e.to_string())?;
        Ok(Arc::new(NvmlGpus { nvml, sim: true }))
    }

    /// The MIG devices of GPU `index` named `name`, by profile. A compute instance smaller than
    /// its GPU instance has no `<n>g.<m>gb` resource name and is left out (logged).
    fn mig(&self, index: u32, name: &str) -> Result<Option<Vec<MigDev>>, String> {
        let e = |e: gpuslice_nvml::NvmlError| format!("GPU {index}: {e}");
        if !self
            .nvml
            .mig_mode(index)
            .map_err(e)?
            .is_some_and(|(cur, _)| cur)
        {
            return Ok(None);
        }
        let model = gpuslice_core::mig::model(name).map_err(|err| {
            format!("GPU {index} ({name}) has MIG enabled but its model is unknown: {err}")
        })?;
        let gis = self.nvml.gpu_instances(index).map_err(e)?;
        let mut out = Vec::new();
        for d in self.nvml.mig_devices(index).map_err(e)? {
            let Some(gi) = gis.iter().find(|g| g.id == d.gpu_instance) else {
                continue;
            };
            let Some(p) = model.profile_by_id(gi.profile_id) else {
                tracing::warn!(
                    gpu = index,
                    profile_id = gi.profile_id,
                    "MIG device of an unknown profile left out"
                );
                continue;
            };
            let full = p.full_compute_profile();
            let whole = matches!(gi.compute_instances.as_slice(),
                [c] if c.profile_id == full.id && c.start == 0);
            if !whole {
                tracing::warn!(gpu = index, uuid = %d.uuid, profile = p.name,
                    "MIG device with a partial compute instance left out");
                continue;
            }
            out.push(MigDev {
                uuid: d.uuid,
                profile: p.name.to_string(),
                memory_bytes: d.memory_bytes,
                sms: p.sm_count,
                start: u8::try_from(gi.start).ok(),
            });
        }
        out.sort_by(|a, b| (&a.profile, &a.uuid).cmp(&(&b.profile, &b.uuid)));
        Ok(Some(out))
    }
}

impl GpuSource for NvmlGpus {
    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        let found = self.nvml.gpus().map_err(|e| e.to_string())?;
        let n = found.len() as u32;
        let mut out = Vec::new();
        for g in &found {
            let mut nvlink_peers = Vec::new();
            for other in &found {
                if other.index != g.index
                    && self
                        .nvml
                        .nvlink_peer(g.index, other.index)
                        .map_err(|e| e.to_string())?
                {
                    nvlink_peers.push(other.uuid.clone());
                }
            }
            // GPUs behind one PCIe switch share an id: the smallest bus id among them.
            let mut switch_mates = Vec::new();
            for j in 0..n {
                if j != g.index
                    && matches!(
                        self.nvml.topology(g.index, j),
                        Ok(gpuslice_nvml::Topology::SingleSwitch)
                    )
                {
                    switch_mates.push(found[j as usize].pci_bus_id.clone());
                }
            }
            let pcie_switch = (!switch_mates.is_empty()).then(|| {
                switch_mates.push(g.pci_bus_id.clone());
                switch_mates.into_iter().min().unwrap()
            });
            let sms = g
                .sm_count
                .or_else(|| {
                    gpuslice_core::mig::model(&g.name)
                        .ok()
                        .and_then(|m| m.profiles.iter().map(|p| p.sm_count).max())
                })
                .unwrap_or(0);
            let mig = self.mig(g.index, &g.name)?;
            out.push(Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                model: g.name.clone(),
                memory_bytes: g.memory_bytes,
                sms,
                numa: g.numa_node,
                pci_bus_id: g.pci_bus_id.clone(),
                minor: if self.sim {
                    None
                } else {
                    self.nvml.minor(g.index).ok()
                },
                nvlink_peers,
                pcie_switch,
                mig_enabled: mig.is_some(),
                mig: mig.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    fn sample(&self, index: u32) -> Result<GpuSample, String> {
        Ok(GpuSample {
            memory_used_bytes: self.nvml.memory_used(index).map_err(|e| e.to_string())?,
            utilization: f64::from(
                self.nvml
                    .utilization_percent(index)
                    .map_err(|e| e.to_string())?
                    .min(100),
            ) / 100.0,
        })
    }

    fn processes(&self, index: u32) -> Result<Vec<(u32, u64)>, String> {
        self.nvml.processes(index).map_err(|e| e.to_string())
    }
}

/// A fixed machine for tests.
pub struct StaticGpus(pub Vec<Gpu>);

impl GpuSource for StaticGpus {
    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        Ok(self.0.clone())
    }
    fn sample(&self, _index: u32) -> Result<GpuSample, String> {
        Ok(GpuSample::default())
    }
}

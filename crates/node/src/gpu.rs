//! What the agent needs to know about the node's GPUs, behind a trait so the agent runs on NVML
//! (real or simulated) and tests can give it any machine.

use std::sync::Arc;

/// One physical GPU as discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// The simulated GPU, read from the same shared state file its `libnvidia-ml.so` reads.
pub struct SimGpus {
    sim: gpuslice_sim_state::Sim,
}

impl SimGpus {
    /// Attaches to the simulator's state (`GPUSLICE_SIM_STATE`, creating it from
    /// `GPUSLICE_SIM_DEVICES` when absent, exactly as the simulated libraries do).
    pub fn open() -> Result<Arc<dyn GpuSource>, String> {
        let cfg = std::env::var("GPUSLICE_SIM_DEVICES").unwrap_or_default();
        let specs = gpuslice_sim_state::parse_devices(&cfg).map_err(|e| e.to_string())?;
        let path = std::env::var_os("GPUSLICE_SIM_STATE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(gpuslice_sim_state::default_state_path);
        let sim = gpuslice_sim_state::Sim::open(&path, &specs).map_err(|e| e.to_string())?;
        Ok(Arc::new(SimGpus { sim }))
    }
}

impl GpuSource for SimGpus {
    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        Ok((0..self.sim.device_count())
            .map(|i| {
                let s = self.sim.spec(i);
                Gpu {
                    index: i as u32,
                    uuid: s.uuid,
                    model: s.name,
                    memory_bytes: s.memory_bytes,
                    sms: s.sm_count,
                    numa: u32::try_from(s.numa_node).ok(),
                    pci_bus_id: s.pci_bus_id,
                    minor: None,
                    nvlink_peers: Vec::new(),
                }
            })
            .collect())
    }

    fn sample(&self, index: u32) -> Result<GpuSample, String> {
        let i = index as usize;
        if i >= self.sim.device_count() {
            return Err(format!("no GPU {index}"));
        }
        Ok(GpuSample {
            memory_used_bytes: self.sim.memory_used(i),
            utilization: self.sim.utilization(i, 1_000_000_000),
        })
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

//! MIG as the simulated NVML sees it.
//!
//! The shared state has no MIG yet, so every device reports MIG disabled with no instances. The
//! exported MIG entry points only go through these functions, so wiring them to real state later
//! changes this file alone.

use gpuslice_cuda_abi::nvml::{NVML_DEVICE_MIG_DISABLE, nvmlGpuInstanceProfileInfo_t};

use gpuslice_sim_state::Sim;

/// GPU and compute instance id reported for processes outside any MIG instance.
pub const NO_INSTANCE: u32 = u32::MAX;

/// (current, pending) MIG mode.
pub fn mode(_sim: &Sim, _dev: usize) -> (u32, u32) {
    (NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_DISABLE)
}

pub fn enabled(sim: &Sim, dev: usize) -> bool {
    mode(sim, dev).0 != NVML_DEVICE_MIG_DISABLE
}

/// Upper bound on MIG devices (compute instances) under `dev`; 0 while MIG is off.
pub fn max_mig_devices(_sim: &Sim, _dev: usize) -> u32 {
    0
}

/// The MIG device (as gpu instance id, compute instance id) at `index` under `dev`.
pub fn mig_device_index(_sim: &Sim, _dev: usize, _index: u32) -> Option<(u32, u32)> {
    None
}

/// Profile info of a GPU instance profile on `dev`, None when the profile is not available.
pub fn gpu_instance_profile(
    _sim: &Sim,
    _dev: usize,
    _profile: u32,
) -> Option<nvmlGpuInstanceProfileInfo_t> {
    None
}

/// Ids of the GPU instances of `profile_id` on `dev`.
pub fn gpu_instances(_sim: &Sim, _dev: usize, _profile_id: u32) -> Vec<u32> {
    Vec::new()
}

/// (gpu instance id, compute instance id) that process `pid` runs in on `dev`.
pub fn process_instance(_sim: &Sim, _dev: usize, _pid: u32) -> (u32, u32) {
    (NO_INSTANCE, NO_INSTANCE)
}

//! MIG as the simulated NVML sees it: the rules of real hardware over the state in
//! `sim-state`.
//!
//! Geometry comes from `gpuslice_core::mig`, chosen by the simulated device's name (an
//! "NVIDIA H100 80GB HBM3" gets the H100-80GB tables); a device whose name matches no MIG
//! model does not support MIG. Error codes follow the NVML reference: an unknown profile is
//! INVALID_ARGUMENT, a placement that is taken or a GPU that is full INSUFFICIENT_RESOURCES,
//! destroying a GPU instance that still has compute instances IN_USE, and changing the mode
//! while processes hold memory on the GPU IN_USE.

use gpuslice_core::mig::{GiProfile, GpuModel, Instance, check_layout, model};
use gpuslice_cuda_abi::nvml::*;
use gpuslice_sim_state::{MigCi, MigGi, MigState, Sim};

/// GPU and compute instance id reported for processes outside any MIG instance.
pub const NO_INSTANCE: u32 = u32::MAX;

type Res<T> = Result<T, nvmlReturn_t>;

pub fn model_of(sim: &Sim, dev: usize) -> Option<&'static GpuModel> {
    model(&sim.spec(dev).name).ok()
}

fn capable(sim: &Sim, dev: usize) -> Res<&'static GpuModel> {
    model_of(sim, dev).ok_or(NVML_ERROR_NOT_SUPPORTED)
}

/// The model of a MIG-enabled device.
fn enabled_model(sim: &Sim, dev: usize) -> Res<&'static GpuModel> {
    let m = capable(sim, dev)?;
    if !sim.mig(dev).enabled {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    Ok(m)
}

/// Commits `f`'s edit of the state; a concurrent writer that does not let go is IN_USE.
fn update<T>(sim: &Sim, dev: usize, f: impl FnOnce(&mut MigState) -> Res<T>) -> Res<T> {
    sim.mig_update(dev, f).map_err(|_| NVML_ERROR_IN_USE)?
}

/// (current, pending) MIG mode. The simulator applies a mode change at once (as after the GPU
/// reset real hardware may need), so both are always equal.
pub fn mode(sim: &Sim, dev: usize) -> Res<(u32, u32)> {
    capable(sim, dev)?;
    let m = if sim.mig(dev).enabled {
        NVML_DEVICE_MIG_ENABLE
    } else {
        NVML_DEVICE_MIG_DISABLE
    };
    Ok((m, m))
}

pub fn enabled(sim: &Sim, dev: usize) -> bool {
    model_of(sim, dev).is_some() && sim.mig(dev).enabled
}

pub fn set_mode(sim: &Sim, dev: usize, mode: u32) -> Res<()> {
    capable(sim, dev)?;
    let want = match mode {
        NVML_DEVICE_MIG_ENABLE => true,
        NVML_DEVICE_MIG_DISABLE => false,
        _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
    };
    if sim.mig(dev).enabled == want {
        return Ok(());
    }
    // Real drivers refuse to switch while any process has the GPU open.
    if !sim.processes(dev).is_empty() {
        return Err(NVML_ERROR_IN_USE);
    }
    update(sim, dev, |s| {
        if !want && !s.gis.is_empty() {
            return Err(NVML_ERROR_IN_USE);
        }
        s.enabled = want;
        Ok(())
    })
}

/// Upper bound on MIG devices (compute instances) under `dev`; 0 while MIG is off.
pub fn max_mig_devices(sim: &Sim, dev: usize) -> u32 {
    match model_of(sim, dev) {
        Some(m) if sim.mig(dev).enabled => u32::from(m.compute_slices),
        _ => 0,
    }
}

/// A MIG device: the compute instance `ci` of GPU instance `gi`.
#[derive(Debug, Clone)]
pub struct MigDevice {
    pub gi: u32,
    pub ci: u32,
    pub uuid: String,
    pub name: String,
    pub memory_bytes: u64,
}

fn mig_device(sim: &Sim, dev: usize, m: &GpuModel, gi: &MigGi, ci: &MigCi) -> MigDevice {
    let p = m.profile_by_id(u32::from(gi.profile_id));
    MigDevice {
        gi: u32::from(gi.id),
        ci: u32::from(ci.id),
        uuid: format!(
            "MIG-{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            0x5e1f_0000u32 + dev as u32,
            gi.id,
            ci.id,
            gi.start,
            u64::from(ci.serial)
        ),
        name: format!(
            "{} MIG {}",
            sim.spec(dev).name,
            p.map_or("unknown", |p| p.name)
        ),
        memory_bytes: p.map_or(0, |p| p.memory_mib << 20),
    }
}

/// MIG devices under `dev`, ordered by (GPU instance, compute instance) id.
pub fn mig_devices(sim: &Sim, dev: usize) -> Vec<MigDevice> {
    let Some(m) = model_of(sim, dev) else {
        return Vec::new();
    };
    let s = sim.mig(dev);
    if !s.enabled {
        return Vec::new();
    }
    let mut gis: Vec<&MigGi> = s.gis.iter().collect();
    gis.sort_by_key(|g| g.id);
    let mut out = Vec::new();
    for gi in gis {
        let mut cis = gi.cis.clone();
        cis.sort_by_key(|c| c.id);
        for ci in &cis {
            out.push(mig_device(sim, dev, m, gi, ci));
        }
    }
    out
}

pub fn find_mig_device(sim: &Sim, dev: usize, gi: u32, ci: u32) -> Option<MigDevice> {
    mig_devices(sim, dev)
        .into_iter()
        .find(|d| d.gi == gi && d.ci == ci)
}

/// Profile info for `NVML_GPU_INSTANCE_PROFILE_*` value `nvml_profile`, and the profile name.
pub fn gpu_instance_profile(
    sim: &Sim,
    dev: usize,
    nvml_profile: u32,
) -> Res<(nvmlGpuInstanceProfileInfo_t, &'static str)> {
    if nvml_profile >= NVML_GPU_INSTANCE_PROFILE_COUNT {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let m = enabled_model(sim, dev)?;
    let p = m
        .profile_by_nvml(nvml_profile)
        .ok_or(NVML_ERROR_NOT_SUPPORTED)?;
    Ok((gi_info(p), p.name))
}

fn gi_info(p: &GiProfile) -> nvmlGpuInstanceProfileInfo_t {
    let me = u32::from(p.media_extension());
    // Engine counts are not part of the modelled geometry; these follow the usual shape (one
    // copy engine per compute slice, media engines only on `+me` and the whole GPU).
    let whole = u32::from(p.memory_slices == 8 || p.name.starts_with("4g.24gb"));
    nvmlGpuInstanceProfileInfo_t {
        id: p.id,
        isP2pSupported: 0,
        sliceCount: u32::from(p.compute_slices),
        instanceCount: u32::from(p.max_instances),
        multiprocessorCount: p.sm_count,
        copyEngineCount: u32::from(p.compute_slices),
        decoderCount: u32::from(p.compute_slices).div_ceil(2) + 4 * whole,
        encoderCount: whole,
        jpegCount: me + whole,
        ofaCount: me + whole,
        memorySizeMB: p.memory_mib,
    }
}

/// The GI profile with NVML profile id `id` (the `id` field of the profile info).
fn profile_by_id(m: &GpuModel, id: u32) -> Res<&'static GiProfile> {
    m.profile_by_id(id).ok_or(NVML_ERROR_INVALID_ARGUMENT)
}

pub fn possible_placements(sim: &Sim, dev: usize, profile_id: u32) -> Res<Vec<(u32, u32)>> {
    let m = enabled_model(sim, dev)?;
    let p = profile_by_id(m, profile_id)?;
    Ok(p.placements
        .iter()
        .map(|pl| (u32::from(pl.start), u32::from(pl.size)))
        .collect())
}

fn layout(m: &GpuModel, s: &MigState) -> Vec<Instance> {
    s.gis
        .iter()
        .filter_map(|g| {
            m.profile_by_id(u32::from(g.profile_id)).map(|p| Instance {
                profile: p.name.into(),
                start: g.start,
                size: g.size,
            })
        })
        .collect()
}

/// Where a new instance of `p` could go now, in the profile's placement order.
fn free_placements(m: &GpuModel, s: &MigState, p: &GiProfile) -> Vec<(u8, u8)> {
    let base = layout(m, s);
    p.placements
        .iter()
        .filter(|pl| {
            let mut l = base.clone();
            l.push(Instance {
                profile: p.name.into(),
                start: pl.start,
                size: pl.size,
            });
            check_layout(m, &l).is_ok()
        })
        .map(|pl| (pl.start, pl.size))
        .collect()
}

pub fn remaining_capacity(sim: &Sim, dev: usize, profile_id: u32) -> Res<u32> {
    let m = enabled_model(sim, dev)?;
    let p = profile_by_id(m, profile_id)?;
    // How many more fit, one after another, each taking the first free placement.
    let mut s = sim.mig(dev);
    let mut n = 0;
    while let Some(&(start, size)) = free_placements(m, &s, p).first() {
        s.gis.push(MigGi {
            id: 0,
            profile_id: p.id as u8,
            start,
            size,
            cis: Vec::new(),
        });
        n += 1;
    }
    Ok(n)
}

/// GPU instance ids follow the placement, as on real GPUs: the whole GPU is 0, the halves 1
/// and 2, the quarters 3 to 6, single memory slices 7 to 14. Two live instances never share
/// an id because they never share a memory slice.
fn gi_id(start: u8, size: u8) -> u8 {
    match size {
        8.. => 0,
        4..=7 => 1 + start / 4,
        2..=3 => 3 + start / 2,
        _ => 7 + start,
    }
}

/// Creates a GPU instance of profile `profile_id` at `placement` (start, size), or at the first
/// free placement; returns its id.
pub fn create_gpu_instance(
    sim: &Sim,
    dev: usize,
    profile_id: u32,
    placement: Option<(u32, u32)>,
) -> Res<u32> {
    let m = enabled_model(sim, dev)?;
    let p = profile_by_id(m, profile_id)?;
    if let Some((start, size)) = placement
        && !p
            .placements
            .iter()
            .any(|pl| u32::from(pl.start) == start && u32::from(pl.size) == size)
    {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    update(sim, dev, |s| {
        if !s.enabled {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        let free = free_placements(m, s, p);
        let (start, size) = match placement {
            Some((start, size)) => free
                .iter()
                .copied()
                .find(|&(s0, _)| u32::from(s0) == start)
                .ok_or(NVML_ERROR_INSUFFICIENT_RESOURCES)
                .map(|_| (start as u8, size as u8))?,
            None => *free.first().ok_or(NVML_ERROR_INSUFFICIENT_RESOURCES)?,
        };
        let id = gi_id(start, size);
        s.gis.push(MigGi {
            id,
            profile_id: p.id as u8,
            start,
            size,
            cis: Vec::new(),
        });
        Ok(u32::from(id))
    })
}

pub fn destroy_gpu_instance(sim: &Sim, dev: usize, gi: u32) -> Res<()> {
    enabled_model(sim, dev)?;
    update(sim, dev, |s| {
        let k = s
            .gis
            .iter()
            .position(|g| u32::from(g.id) == gi)
            .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        if !s.gis[k].cis.is_empty() {
            return Err(NVML_ERROR_IN_USE);
        }
        s.gis.remove(k);
        Ok(())
    })
}

/// Ids of the GPU instances of profile id `profile_id` on `dev`, ascending.
pub fn gpu_instances(sim: &Sim, dev: usize, profile_id: u32) -> Res<Vec<u32>> {
    let m = enabled_model(sim, dev)?;
    profile_by_id(m, profile_id)?;
    let mut ids: Vec<u32> = sim
        .mig(dev)
        .gis
        .iter()
        .filter(|g| u32::from(g.profile_id) == profile_id)
        .map(|g| u32::from(g.id))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The GPU instance `gi` of `dev`, if it exists.
pub fn gpu_instance(sim: &Sim, dev: usize, gi: u32) -> Res<MigGi> {
    enabled_model(sim, dev)?;
    sim.mig(dev)
        .gis
        .into_iter()
        .find(|g| u32::from(g.id) == gi)
        .ok_or(NVML_ERROR_NOT_FOUND)
}

/// The GI profile of `gi` on `dev`.
fn gi_profile(sim: &Sim, dev: usize, gi: &MigGi) -> Res<&'static GiProfile> {
    let m = enabled_model(sim, dev)?;
    m.profile_by_id(u32::from(gi.profile_id))
        .ok_or(NVML_ERROR_UNKNOWN)
}

/// Compute-instance profile info (and name) for `ci_profile` inside GPU instance `gi`.
pub fn compute_instance_profile(
    sim: &Sim,
    dev: usize,
    gi: u32,
    ci_profile: u32,
    engine_profile: u32,
) -> Res<(nvmlComputeInstanceProfileInfo_t, &'static str)> {
    if ci_profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT
        || engine_profile >= NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT
    {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let g = gpu_instance(sim, dev, gi).map_err(|_| NVML_ERROR_INVALID_ARGUMENT)?;
    let p = gi_profile(sim, dev, &g)?;
    let c = p
        .compute_profile_by_id(ci_profile)
        .ok_or(NVML_ERROR_NOT_SUPPORTED)?;
    Ok((
        nvmlComputeInstanceProfileInfo_t {
            id: c.id,
            sliceCount: u32::from(c.compute_slices),
            instanceCount: u32::from(c.max_instances),
            multiprocessorCount: p.sm_count * u32::from(c.compute_slices)
                / u32::from(p.compute_slices),
            sharedCopyEngineCount: u32::from(p.compute_slices),
            sharedDecoderCount: 0,
            sharedEncoderCount: 0,
            sharedJpegCount: 0,
            sharedOfaCount: 0,
        },
        c.name,
    ))
}

/// Compute-slice starts a CI of `size` slices may take in a GI of `slices`: aligned to the
/// size rounded up to a power of two (`-lcipp`: 1c at 0..6, 2c at 0,2,4, 3c at 0,4, 4c at 0
/// in a 7-slice GI).
fn ci_starts(slices: u8, size: u8, max: u8) -> Vec<u8> {
    let align = size.next_power_of_two();
    (0..slices)
        .step_by(usize::from(align))
        .filter(|s| s + size <= slices)
        .take(usize::from(max))
        .collect()
}

pub fn create_compute_instance(
    sim: &Sim,
    dev: usize,
    gi: u32,
    ci_profile: u32,
    placement: Option<(u32, u32)>,
) -> Res<u32> {
    if ci_profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let g = gpu_instance(sim, dev, gi).map_err(|_| NVML_ERROR_INVALID_ARGUMENT)?;
    let p = gi_profile(sim, dev, &g)?;
    let c = p
        .compute_profile_by_id(ci_profile)
        .ok_or(NVML_ERROR_NOT_SUPPORTED)?;
    let starts = ci_starts(p.compute_slices, c.compute_slices, c.max_instances);
    if let Some((start, size)) = placement
        && (size != u32::from(c.compute_slices) || !starts.iter().any(|&s| u32::from(s) == start))
    {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let serial_dev = dev;
    update(sim, serial_dev, |s| {
        let serial = s.serial.wrapping_add(1);
        let g = s
            .gis
            .iter_mut()
            .find(|g| u32::from(g.id) == gi)
            .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        let used: u16 = g
            .cis
            .iter()
            .fold(0, |m, ci| m | (((1u16 << ci.size) - 1) << ci.start));
        let fits = |st: u8| used & (((1u16 << c.compute_slices) - 1) << st) == 0;
        let start = match placement {
            Some((start, _)) => Some(start as u8).filter(|&st| fits(st)),
            None => starts.iter().copied().find(|&st| fits(st)),
        }
        .ok_or(NVML_ERROR_INSUFFICIENT_RESOURCES)?;
        let id = (0u8..)
            .find(|i| !g.cis.iter().any(|ci| ci.id == *i))
            .expect("fewer than 256 compute instances");
        g.cis.push(MigCi {
            id,
            profile_id: c.id as u8,
            start,
            size: c.compute_slices,
            serial,
        });
        s.serial = serial;
        Ok(u32::from(id))
    })
}

pub fn destroy_compute_instance(sim: &Sim, dev: usize, gi: u32, ci: u32) -> Res<()> {
    enabled_model(sim, dev)?;
    update(sim, dev, |s| {
        let g = s
            .gis
            .iter_mut()
            .find(|g| u32::from(g.id) == gi)
            .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        let k = g
            .cis
            .iter()
            .position(|c| u32::from(c.id) == ci)
            .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        g.cis.remove(k);
        Ok(())
    })
}

/// (gpu instance id, compute instance id) that process `pid` runs in on `dev`. Processes are
/// not bound to MIG devices in the simulator.
pub fn process_instance(_sim: &Sim, _dev: usize, _pid: u32) -> (u32, u32) {
    (NO_INSTANCE, NO_INSTANCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gi_ids_follow_placements() {
        assert_eq!(gi_id(0, 8), 0);
        assert_eq!((gi_id(0, 4), gi_id(4, 4)), (1, 2));
        assert_eq!((gi_id(0, 2), gi_id(6, 2)), (3, 6));
        assert_eq!((gi_id(0, 1), gi_id(6, 1)), (7, 13));
    }

    #[test]
    fn ci_placements_match_lcipp() {
        assert_eq!(ci_starts(7, 1, 7), vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(ci_starts(7, 2, 3), vec![0, 2, 4]);
        assert_eq!(ci_starts(7, 3, 2), vec![0, 4]);
        assert_eq!(ci_starts(7, 4, 1), vec![0]);
        assert_eq!(ci_starts(7, 7, 1), vec![0]);
        assert_eq!(ci_starts(3, 2, 1), vec![0]);
        assert_eq!(ci_starts(4, 2, 2), vec![0, 2]);
    }
}

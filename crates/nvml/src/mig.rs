//! Declarative MIG through NVML: read what the GPUs have, apply a mig-parted config with the
//! fewest changes (rolling back if a step fails), check a config, describe the GPUs as one.
//!
//! The decisions are pure and live in `gpuslice_core::mig` (`desired_state`, `plan_exact`,
//! `mismatch`, `export`); this module reads and changes GPUs.

use gpuslice_core::mig::{
    self as core_mig, DeviceDesired, FoundGpu, FoundInstance, GiProfile, GpuModel, Instance,
    MigError, MigPartedConfig,
};

use crate::{GpuInstance, Nvml, NvmlError};

#[derive(Debug, thiserror::Error)]
pub enum MigOpError {
    /// The config or the request cannot be met as written (bad input).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Nvml(#[from] NvmlError),
    /// A step failed; everything done before it was undone (or, if `rollback` is set, undoing
    /// failed too and the GPUs are in between).
    #[error("{step} failed: {cause}; {}", match .rollback {
        None => format!("rolled back the {} step(s) already done", .undone),
        Some(e) => format!("ROLLBACK FAILED after undoing {} step(s): {e}", .undone),
    })]
    Failed {
        step: String,
        cause: NvmlError,
        undone: usize,
        rollback: Option<String>,
    },
}

impl From<MigError> for MigOpError {
    fn from(e: MigError) -> Self {
        MigOpError::Input(e.to_string())
    }
}

/// One GPU's MIG state with the model it was recognised as.
#[derive(Debug, Clone)]
pub struct GpuState {
    pub found: FoundGpu,
    /// `None` when gpuslice does not know the model.
    pub model: Option<&'static GpuModel>,
    /// `false` when NVML says the GPU has no MIG.
    pub mig_capable: bool,
    pub instances: Vec<GpuInstance>,
}

/// Reads every GPU's MIG state.
pub fn read(nvml: &Nvml) -> Result<Vec<GpuState>, MigOpError> {
    let mut out = Vec::new();
    for index in 0..nvml.device_count()? {
        let name = nvml.name(index)?;
        let model = core_mig::model(&name).ok();
        let mode = nvml.mig_mode(index)?;
        let enabled = mode.is_some_and(|(cur, _)| cur);
        let instances = if enabled {
            nvml.gpu_instances(index)?
        } else {
            Vec::new()
        };
        let mut found = Vec::new();
        for gi in &instances {
            let m = model.ok_or_else(|| {
                MigOpError::Input(format!(
                    "GPU {index} ({name}) has MIG instances but is not a model gpuslice knows"
                ))
            })?;
            let p = m.profile_by_id(gi.profile_id).ok_or_else(|| {
                MigOpError::Input(format!(
                    "GPU {index} ({name}) has a GPU instance of unknown profile id {}",
                    gi.profile_id
                ))
            })?;
            found.push(FoundInstance {
                instance: Instance {
                    profile: p.name.into(),
                    start: gi.start as u8,
                    size: gi.size as u8,
                },
                whole_ci: whole(p, gi),
            });
        }
        out.push(GpuState {
            found: FoundGpu {
                index,
                name,
                mig_enabled: enabled,
                instances: found,
            },
            model,
            mig_capable: mode.is_some(),
            instances,
        });
    }
    Ok(out)
}

fn whole(p: &GiProfile, gi: &GpuInstance) -> bool {
    let full = p.full_compute_profile();
    matches!(gi.compute_instances.as_slice(),
        [c] if c.profile_id == full.id && c.start == 0 && c.size == u32::from(full.compute_slices))
}

/// What config `name` asks of each GPU in `gpus`.
pub fn desired(
    config: &MigPartedConfig,
    name: &str,
    gpus: &[GpuState],
) -> Result<Vec<DeviceDesired>, MigOpError> {
    let devices: Vec<(u32, &str)> = gpus
        .iter()
        .map(|g| (g.found.index, g.found.name.as_str()))
        .collect();
    Ok(core_mig::desired_state(config, name, &devices)?)
}

/// Why the GPUs do not match config `name`; empty when they do.
pub fn check(nvml: &Nvml, config: &MigPartedConfig, name: &str) -> Result<Vec<String>, MigOpError> {
    let gpus = read(nvml)?;
    let want = desired(config, name, &gpus)?;
    Ok(want
        .iter()
        .zip(&gpus)
        .filter_map(|(w, g)| core_mig::mismatch(w, &g.found))
        .collect())
}

/// The GPUs as a mig-parted config named `name`.
pub fn export(nvml: &Nvml, name: &str) -> Result<MigPartedConfig, MigOpError> {
    let gpus: Vec<FoundGpu> = read(nvml)?.into_iter().map(|g| g.found).collect();
    Ok(core_mig::export(name, &gpus))
}

/// One change to one GPU; each has an exact inverse. GPU instances are named by their start
/// slice, which survives a destroy and re-create, unlike their ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    SetMode {
        gpu: u32,
        enabled: bool,
    },
    CreateGi {
        gpu: u32,
        profile: &'static str,
        profile_id: u32,
        start: u32,
        size: u32,
    },
    DestroyGi {
        gpu: u32,
        profile: &'static str,
        profile_id: u32,
        start: u32,
        size: u32,
    },
    CreateCi {
        gpu: u32,
        gi_start: u32,
        profile_id: u32,
        start: u32,
        size: u32,
    },
    DestroyCi {
        gpu: u32,
        gi_start: u32,
        profile_id: u32,
        start: u32,
        size: u32,
    },
}

impl Step {
    fn inverse(&self) -> Step {
        match self.clone() {
            Step::SetMode { gpu, enabled } => Step::SetMode {
                gpu,
                enabled: !enabled,
            },
            Step::CreateGi {
                gpu,
                profile,
                profile_id,
                start,
                size,
            } => Step::DestroyGi {
                gpu,
                profile,
                profile_id,
                start,
                size,
            },
            Step::DestroyGi {
                gpu,
                profile,
                profile_id,
                start,
                size,
            } => Step::CreateGi {
                gpu,
                profile,
                profile_id,
                start,
                size,
            },
            Step::CreateCi {
                gpu,
                gi_start,
                profile_id,
                start,
                size,
            } => Step::DestroyCi {
                gpu,
                gi_start,
                profile_id,
                start,
                size,
            },
            Step::DestroyCi {
                gpu,
                gi_start,
                profile_id,
                start,
                size,
            } => Step::CreateCi {
                gpu,
                gi_start,
                profile_id,
                start,
                size,
            },
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::SetMode { gpu, enabled } => write!(
                f,
                "GPU {gpu}: {} MIG",
                if *enabled { "enable" } else { "disable" }
            ),
            Step::CreateGi {
                gpu,
                profile,
                start,
                ..
            } => write!(f, "GPU {gpu}: create GPU instance {profile}@{start}"),
            Step::DestroyGi {
                gpu,
                profile,
                start,
                ..
            } => write!(f, "GPU {gpu}: destroy GPU instance {profile}@{start}"),
            Step::CreateCi {
                gpu,
                gi_start,
                profile_id,
                start,
                ..
            } => write!(
                f,
                "GPU {gpu}: create compute instance (profile {profile_id}) at {start} in the GPU instance at {gi_start}"
            ),
            Step::DestroyCi {
                gpu,
                gi_start,
                profile_id,
                start,
                ..
            } => write!(
                f,
                "GPU {gpu}: destroy compute instance (profile {profile_id}) at {start} in the GPU instance at {gi_start}"
            ),
        }
    }
}

fn destroy_all(gpu: u32, gi: &GpuInstance, p: &'static GiProfile, steps: &mut Vec<Step>) {
    for c in &gi.compute_instances {
        steps.push(Step::DestroyCi {
            gpu,
            gi_start: gi.start,
            profile_id: c.profile_id,
            start: c.start,
            size: c.size,
        });
    }
    steps.push(Step::DestroyGi {
        gpu,
        profile: p.name,
        profile_id: p.id,
        start: gi.start,
        size: gi.size,
    });
}

fn whole_ci(gpu: u32, gi_start: u32, p: &GiProfile) -> Step {
    let full = p.full_compute_profile();
    Step::CreateCi {
        gpu,
        gi_start,
        profile_id: full.id,
        start: 0,
        size: u32::from(full.compute_slices),
    }
}

/// The steps that take `gpus` to what `want` says, destroying as few instances as possible.
/// Refuses (as bad input) a config that asks a GPU for MIG it lacks or a layout that cannot
/// exist, before anything changes.
pub fn steps(gpus: &[GpuState], want: &[DeviceDesired]) -> Result<Vec<Step>, MigOpError> {
    let mut steps = Vec::new();
    for (g, w) in gpus.iter().zip(want) {
        let gpu = g.found.index;
        let Some(enable) = w.mig_enabled else {
            continue;
        };
        let profile_of = |gi: &GpuInstance| {
            g.model
                .and_then(|m| m.profile_by_id(gi.profile_id))
                .expect("read() recognised every instance")
        };
        if !enable {
            if g.found.mig_enabled {
                for gi in &g.instances {
                    destroy_all(gpu, gi, profile_of(gi), &mut steps);
                }
                steps.push(Step::SetMode {
                    gpu,
                    enabled: false,
                });
            }
            continue;
        }
        let model = match g.model {
            Some(m) if g.mig_capable => m,
            _ => {
                return Err(MigOpError::Input(format!(
                    "GPU {gpu} ({}) does not support MIG (or is not a model gpuslice knows); MIG models: {}",
                    g.found.name,
                    core_mig::MODELS
                        .iter()
                        .map(|m| m.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        let current: Vec<Instance> = g
            .found
            .instances
            .iter()
            .map(|i| i.instance.clone())
            .collect();
        let plan = core_mig::plan_exact(model, &w.demand, &current)?;
        if !plan.feasible {
            return Err(MigOpError::Input(format!(
                "GPU {gpu} ({}): {} cannot all exist at once; what would not fit: {}",
                model.name,
                w.demand
                    .iter()
                    .map(|(p, n)| format!("{p}={n}"))
                    .collect::<Vec<_>>()
                    .join(","),
                plan.unplaced
                    .iter()
                    .map(|u| format!("{}={}", u.profile, u.count))
                    .collect::<Vec<_>>()
                    .join(",")
            )));
        }
        if !g.found.mig_enabled {
            steps.push(Step::SetMode { gpu, enabled: true });
        }
        for d in &plan.destroy {
            let gi = g
                .instances
                .iter()
                .find(|gi| gi.start == u32::from(d.start))
                .expect("planned from these instances");
            destroy_all(gpu, gi, profile_of(gi), &mut steps);
        }
        for inst in &plan.instances {
            let p = model
                .profile(&inst.profile)
                .expect("planned for this model");
            let start = u32::from(inst.start);
            match g
                .instances
                .iter()
                .find(|gi| gi.start == start && gi.profile_id == p.id)
            {
                Some(gi) => {
                    // Kept: make its compute instances one whole one if they are not.
                    if !whole(p, gi) {
                        for c in &gi.compute_instances {
                            steps.push(Step::DestroyCi {
                                gpu,
                                gi_start: start,
                                profile_id: c.profile_id,
                                start: c.start,
                                size: c.size,
                            });
                        }
                        steps.push(whole_ci(gpu, start, p));
                    }
                }
                None => {
                    steps.push(Step::CreateGi {
                        gpu,
                        profile: p.name,
                        profile_id: p.id,
                        start,
                        size: u32::from(inst.size),
                    });
                    steps.push(whole_ci(gpu, start, p));
                }
            }
        }
    }
    Ok(steps)
}

fn gi_at(nvml: &Nvml, gpu: u32, start: u32) -> Result<u32, NvmlError> {
    nvml.gpu_instances(gpu)?
        .into_iter()
        .find(|g| g.start == start)
        .map(|g| g.id)
        .ok_or_else(|| NvmlError::Call {
            call: "nvmlDeviceGetGpuInstances",
            code: gpuslice_cuda_abi::nvml::NVML_ERROR_NOT_FOUND,
            message: format!("no GPU instance starts at memory slice {start} on GPU {gpu}"),
        })
}

fn run(nvml: &Nvml, s: &Step) -> Result<(), NvmlError> {
    match *s {
        Step::SetMode { gpu, enabled } => nvml.set_mig_mode(gpu, enabled),
        Step::CreateGi {
            gpu,
            profile_id,
            start,
            size,
            ..
        } => nvml
            .create_gpu_instance(gpu, profile_id, start, size)
            .map(|_| ()),
        Step::DestroyGi { gpu, start, .. } => {
            nvml.destroy_gpu_instance(gpu, gi_at(nvml, gpu, start)?)
        }
        Step::CreateCi {
            gpu,
            gi_start,
            profile_id,
            start,
            size,
        } => nvml
            .create_compute_instance(
                gpu,
                gi_at(nvml, gpu, gi_start)?,
                profile_id,
                Some((start, size)),
            )
            .map(|_| ()),
        Step::DestroyCi {
            gpu,
            gi_start,
            start,
            ..
        } => {
            let gi = nvml
                .gpu_instances(gpu)?
                .into_iter()
                .find(|g| g.start == gi_start);
            let ci = gi.as_ref().and_then(|g| {
                g.compute_instances
                    .iter()
                    .find(|c| c.start == start)
                    .map(|c| (g.id, c.id))
            });
            match ci {
                Some((gi, ci)) => nvml.destroy_compute_instance(gpu, gi, ci),
                None => Err(NvmlError::Call {
                    call: "nvmlGpuInstanceGetComputeInstances",
                    code: gpuslice_cuda_abi::nvml::NVML_ERROR_NOT_FOUND,
                    message: format!(
                        "no compute instance at {start} in the GPU instance at {gi_start} on GPU {gpu}"
                    ),
                }),
            }
        }
    }
}

/// Runs `steps` in order. If one fails, the ones done are undone in reverse order, leaving the
/// GPUs as they were.
pub fn execute(nvml: &Nvml, steps: &[Step]) -> Result<(), MigOpError> {
    for (k, s) in steps.iter().enumerate() {
        if let Err(cause) = run(nvml, s) {
            let mut rollback = None;
            let mut undone = 0;
            for done in steps[..k].iter().rev() {
                let inv = done.inverse();
                if let Err(e) = run(nvml, &inv) {
                    rollback = Some(format!("{inv}: {e}"));
                    break;
                }
                undone += 1;
            }
            return Err(MigOpError::Failed {
                step: s.to_string(),
                cause,
                undone,
                rollback,
            });
        }
    }
    Ok(())
}

/// Applies config `name`: plans every GPU first (nothing changes if any GPU's part is bad
/// input), then executes. Returns the steps taken (none when the GPUs already match).
pub fn apply(nvml: &Nvml, config: &MigPartedConfig, name: &str) -> Result<Vec<Step>, MigOpError> {
    let gpus = read(nvml)?;
    let want = desired(config, name, &gpus)?;
    let steps = steps(&gpus, &want)?;
    execute(nvml, &steps)?;
    Ok(steps)
}

//! From what a GPU has to what a config wants: the exact-match plan, the check behind
//! `assert`, and the config that describes a GPU as it is (`export`).

use std::collections::BTreeMap;

use super::layout::{Instance, check_layout};
use super::parted::{DeviceSelector, MigConfigEntry, MigPartedConfig};
use super::plan::{Plan, plan};
use super::{DeviceDesired, GpuModel, MigError, lookup};

/// A GPU instance as found on a GPU: its placement and whether its compute instances are
/// exactly one that takes the whole GPU instance (the shape mig-parted creates and expects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundInstance {
    pub instance: Instance,
    pub whole_ci: bool,
}

/// The MIG state of one GPU, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundGpu {
    pub index: u32,
    /// The device's product name.
    pub name: String,
    pub mig_enabled: bool,
    pub instances: Vec<FoundInstance>,
}

impl FoundGpu {
    /// Profile name -> number of GPU instances.
    pub fn counts(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for i in &self.instances {
            *m.entry(i.instance.profile.clone()).or_default() += 1;
        }
        m
    }
}

/// The layout with exactly the demanded instances that destroys the fewest of `current`.
///
/// `plan` keeps instances beyond the demand unless they are in the way; an exact match must
/// drop them too, and keeping a surplus instance must never cost a needed one. So this asks,
/// for every subset of `current` that the demand could use (largest first), whether `plan`
/// can meet the demand around it without destroying any of it. At most 7 instances exist per
/// GPU, so that is at most 128 small searches. An infeasible demand returns `plan`'s best
/// partial layout from scratch, with `feasible: false`.
pub fn plan_exact<S: AsRef<str>>(
    model: &GpuModel,
    demand: &[(S, u32)],
    current: &[Instance],
) -> Result<Plan, MigError> {
    check_layout(model, current)?;
    let fresh = plan(model, demand, None)?;
    if !fresh.feasible {
        return Ok(Plan {
            destroy: current.to_vec(),
            ..fresh
        });
    }
    let mut want: BTreeMap<&str, u32> = BTreeMap::new();
    for (p, n) in demand {
        *want.entry(lookup(model, p.as_ref())?.name).or_default() += n;
    }
    let n = current.len();
    let mut masks: Vec<u32> = (0..(1u32 << n)).collect();
    masks.sort_by_key(|m| (std::cmp::Reverse(m.count_ones()), *m));
    for mask in masks {
        let kept: Vec<Instance> = (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| current[i].clone())
            .collect();
        let mut have: BTreeMap<&str, u32> = BTreeMap::new();
        for k in &kept {
            *have.entry(lookup(model, &k.profile)?.name).or_default() += 1;
        }
        if have
            .iter()
            .any(|(p, &c)| c > want.get(p).copied().unwrap_or(0))
        {
            continue;
        }
        let p = plan(model, demand, Some(&kept))?;
        if p.feasible && p.destroy.is_empty() {
            let mut destroy: Vec<Instance> = (0..n)
                .filter(|i| mask & (1 << i) == 0)
                .map(|i| current[i].clone())
                .collect();
            destroy.sort_by_key(|i| i.start);
            return Ok(Plan { destroy, ..p });
        }
    }
    unreachable!("the empty subset is always feasible when the demand is")
}

/// Why `gpu` does not match `want`, or `None` when it does. A device no entry selects
/// matches whatever it is.
pub fn mismatch(want: &DeviceDesired, gpu: &FoundGpu) -> Option<String> {
    let enabled = want.mig_enabled?;
    if enabled != gpu.mig_enabled {
        return Some(format!(
            "GPU {}: MIG is {}, the config wants it {}",
            gpu.index,
            on_off(gpu.mig_enabled),
            on_off(enabled)
        ));
    }
    if !enabled {
        return None;
    }
    let have = gpu.counts();
    let wanted: BTreeMap<String, u32> = want.demand.iter().cloned().collect();
    if have != wanted {
        return Some(format!(
            "GPU {}: has {}, the config wants {}",
            gpu.index,
            describe(&have),
            describe(&wanted)
        ));
    }
    if let Some(i) = gpu.instances.iter().find(|i| !i.whole_ci) {
        return Some(format!(
            "GPU {}: GPU instance {}@{} is not one whole compute instance",
            gpu.index, i.instance.profile, i.instance.start
        ));
    }
    None
}

fn on_off(b: bool) -> &'static str {
    if b { "enabled" } else { "disabled" }
}

fn describe(m: &BTreeMap<String, u32>) -> String {
    if m.is_empty() {
        return "no instances".into();
    }
    m.iter()
        .map(|(p, n)| format!("{p}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A mig-parted v1 config named `name` describing `gpus` as they are: one entry for all
/// GPUs when they agree, else one per GPU.
pub fn export(name: &str, gpus: &[FoundGpu]) -> MigPartedConfig {
    let entry = |devices: DeviceSelector, g: &FoundGpu| MigConfigEntry {
        devices,
        device_filter: None,
        mig_enabled: g.mig_enabled,
        mig_devices: g.counts(),
    };
    let entries = match gpus.first() {
        Some(first)
            if gpus
                .iter()
                .all(|g| g.mig_enabled == first.mig_enabled && g.counts() == first.counts()) =>
        {
            vec![entry(DeviceSelector::All, first)]
        }
        _ => gpus
            .iter()
            .map(|g| entry(DeviceSelector::List(vec![g.index]), g))
            .collect(),
    };
    MigPartedConfig {
        version: "v1".into(),
        mig_configs: BTreeMap::from([(name.to_string(), entries)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mig::{H100_80GB, parse_demand};

    fn inst(p: &str, start: u8) -> Instance {
        let prof = H100_80GB.profile(p).unwrap();
        Instance {
            profile: prof.name.into(),
            start,
            size: prof.memory_slices,
        }
    }

    #[test]
    fn surplus_instances_go_and_needed_ones_stay() {
        let current = vec![inst("1g.10gb", 0), inst("1g.10gb", 1), inst("3g.40gb", 4)];
        let demand = parse_demand("3g.40gb=1,1g.10gb=1").unwrap();
        let p = plan_exact(&H100_80GB, &demand, &current).unwrap();
        assert!(p.feasible);
        assert_eq!(p.destroy.len(), 1);
        assert_eq!(p.instances.len(), 2);
        assert!(p.instances.contains(&inst("3g.40gb", 4)));
    }

    #[test]
    fn keeping_surplus_never_costs_a_needed_instance() {
        // 2g@0 and 2g@2 are surplus (none wanted); 3g@4 is wanted, and a second 3g must go at
        // 0, where the surplus sits. Plain `plan` keeps the two 2g and moves nothing; the exact
        // plan destroys only the two 2g.
        let current = vec![inst("2g.20gb", 0), inst("2g.20gb", 2), inst("3g.40gb", 4)];
        let demand = parse_demand("3g.40gb=2").unwrap();
        let p = plan_exact(&H100_80GB, &demand, &current).unwrap();
        assert!(p.feasible);
        assert_eq!(p.destroy, vec![inst("2g.20gb", 0), inst("2g.20gb", 2)]);
        assert_eq!(p.instances, vec![inst("3g.40gb", 0), inst("3g.40gb", 4)]);
    }

    #[test]
    fn an_exact_match_destroys_nothing_and_the_empty_demand_destroys_all() {
        let current = vec![inst("3g.40gb", 0), inst("1g.10gb", 4)];
        let demand = parse_demand("1g.10gb=1,3g.40gb=1").unwrap();
        let p = plan_exact(&H100_80GB, &demand, &current).unwrap();
        assert!(p.destroy.is_empty());
        let none: Vec<(String, u32)> = Vec::new();
        let p = plan_exact(&H100_80GB, &none, &current).unwrap();
        assert_eq!(p.destroy.len(), 2);
        assert!(p.instances.is_empty());
    }

    #[test]
    fn nvml_profile_values_follow_nvml_h() {
        let m = &H100_80GB;
        let v = |p: &str| m.profile(p).unwrap().nvml_profile();
        assert_eq!(v("1g.10gb"), 0);
        assert_eq!(v("2g.20gb"), 1);
        assert_eq!(v("3g.40gb"), 2);
        assert_eq!(v("4g.40gb"), 3);
        assert_eq!(v("7g.80gb"), 4);
        assert_eq!(v("1g.10gb+me"), 7);
        assert_eq!(v("1g.20gb"), 9);
        for model in crate::mig::MODELS {
            for p in model.profiles {
                assert_eq!(
                    model.profile_by_nvml(p.nvml_profile()).unwrap().name,
                    p.name
                );
                assert_eq!(p.full_compute_profile().compute_slices, p.compute_slices);
            }
        }
    }

    #[test]
    fn mismatch_names_what_differs() {
        let want = DeviceDesired {
            index: 0,
            mig_enabled: Some(true),
            demand: vec![("3g.40gb".into(), 2)],
        };
        let gpu = FoundGpu {
            index: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            mig_enabled: true,
            instances: vec![FoundInstance {
                instance: inst("3g.40gb", 0),
                whole_ci: true,
            }],
        };
        let why = mismatch(&want, &gpu).unwrap();
        assert!(
            why.contains("3g.40gb=1") && why.contains("3g.40gb=2"),
            "{why}"
        );
        let mut ok = gpu.clone();
        ok.instances.push(FoundInstance {
            instance: inst("3g.40gb", 4),
            whole_ci: true,
        });
        assert_eq!(mismatch(&want, &ok), None);
        ok.instances[1].whole_ci = false;
        assert!(
            mismatch(&want, &ok)
                .unwrap()
                .contains("whole compute instance")
        );
        let cfg = export("current", &[ok]);
        assert_eq!(cfg.mig_configs["current"][0].devices, DeviceSelector::All);
    }
}

//! From GPUs, configuration and health to what kubelet is told: one device list per resource,
//! and the node inventory the scheduler reads. Pure.

use std::collections::{BTreeMap, BTreeSet};

use gpuslice_core::protocol::{self, GpuMode, Inventory};

use crate::config::{Mode, NodeConfig};
use crate::gpu::Gpu;

/// Separates a GPU's UUID from the unit number in a device ID (`GPU-…::3`).
pub const UNIT_SEP: &str = "::";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub id: String,
    pub gpu_uuid: String,
    pub healthy: bool,
    pub numa: Option<u32>,
}

/// Everything advertised, by resource name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub resources: BTreeMap<String, Vec<Unit>>,
}

/// The GPU a device ID names.
pub fn gpu_of(id: &str) -> &str {
    id.split_once(UNIT_SEP).map(|(g, _)| g).unwrap_or(id)
}

pub fn resource_for(cfg: &NodeConfig, mode: Mode) -> String {
    match mode {
        Mode::Shared => protocol::RESOURCE_GPU.to_string(),
        Mode::Whole => protocol::RESOURCE_WHOLE_GPU.to_string(),
        Mode::TimeSlicing => cfg.time_slicing.resource_name.clone(),
    }
}

/// `gpuslice.io/mig-<profile>` (`+` spelt `.`: see `protocol::mig_resource`).
pub fn mig_resource(profile: &str) -> String {
    protocol::mig_resource(profile)
}

/// The MIG device with this UUID and its GPU.
pub fn find_mig<'a>(gpus: &'a [Gpu], uuid: &str) -> Option<(&'a Gpu, &'a crate::gpu::MigDev)> {
    gpus.iter()
        .filter(|g| g.mig_enabled)
        .find_map(|g| g.mig.iter().find(|m| m.uuid == uuid).map(|m| (g, m)))
}

pub fn plan(cfg: &NodeConfig, gpus: &[Gpu], unhealthy: &BTreeSet<String>) -> Plan {
    let mut p = Plan::default();
    // gpuslice's own resources are always registered, possibly empty, so a mode change on
    // reload only changes device lists. The time-slicing resource (`nvidia.com/gpu` by
    // default) is registered only while a GPU is offered that way: registered empty, it would
    // contend with NVIDIA's device plugin for the same name.
    for m in [Mode::Shared, Mode::Whole] {
        p.resources.entry(resource_for(cfg, m)).or_default();
    }
    for g in gpus {
        let healthy = !unhealthy.contains(&g.uuid);
        if g.mig_enabled {
            // Registered only for the profiles present; a fault of the parent GPU takes its
            // MIG devices down with it.
            for m in &g.mig {
                p.resources
                    .entry(mig_resource(&m.profile))
                    .or_default()
                    .push(Unit {
                        id: m.uuid.clone(),
                        gpu_uuid: g.uuid.clone(),
                        healthy: healthy && !unhealthy.contains(&m.uuid),
                        numa: g.numa,
                    });
            }
            continue;
        }
        let offer = cfg.offer(g.index, &g.uuid);
        let list = p
            .resources
            .entry(resource_for(cfg, offer.mode))
            .or_default();
        let unit = |id: String| Unit {
            id,
            gpu_uuid: g.uuid.clone(),
            healthy,
            numa: g.numa,
        };
        match offer.mode {
            Mode::Whole => list.push(unit(g.uuid.clone())),
            Mode::Shared | Mode::TimeSlicing => {
                for k in 0..offer.units {
                    list.push(unit(format!("{}{UNIT_SEP}{k}", g.uuid)));
                }
            }
        }
    }
    p
}

/// The node annotation for the scheduler. Time-sliced GPUs are left out: the gpuslice scheduler
/// does not place them (kubelet's replica count does).
pub fn inventory(cfg: &NodeConfig, gpus: &[Gpu], unhealthy: &BTreeSet<String>) -> Inventory {
    Inventory::new(
        gpus.iter()
            .filter_map(|g| {
                let healthy = !unhealthy.contains(&g.uuid);
                // What a GPU offers; everything else about it is reported the same way.
                let (slices, mode, mig) = if g.mig_enabled {
                    let mig = g
                        .mig
                        .iter()
                        .map(|m| protocol::MigDevice {
                            uuid: m.uuid.clone(),
                            profile: m.profile.clone(),
                            memory_mib: m.memory_bytes >> 20,
                            sms: m.sms,
                            healthy: healthy && !unhealthy.contains(&m.uuid),
                            start: m.start,
                        })
                        .collect();
                    (1, GpuMode::Mig, mig)
                } else {
                    let offer = cfg.offer(g.index, &g.uuid);
                    let mode = match offer.mode {
                        Mode::Shared => GpuMode::Shared,
                        Mode::Whole => GpuMode::Whole,
                        Mode::TimeSlicing => return None,
                    };
                    (offer.units, mode, Vec::new())
                };
                Some(protocol::GpuInfo {
                    uuid: g.uuid.clone(),
                    index: g.index,
                    model: g.model.clone(),
                    memory_mib: g.memory_bytes >> 20,
                    sms: g.sms,
                    numa: g.numa,
                    nvlink_peers: g.nvlink_peers.clone(),
                    pcie_switch: g.pcie_switch.clone(),
                    slices,
                    mode,
                    mig,
                    healthy,
                })
            })
            .collect(),
    )
}

/// Kubelet's choice among available devices: the GPUs the scheduler chose when known, then
/// devices packed onto as few GPUs as possible (the fullest first), so replicas of one request
/// land on one GPU.
pub fn preferred(
    available: &[String],
    must_include: &[String],
    size: usize,
    wanted_gpus: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = must_include.to_vec();
    let mut pool: Vec<&String> = available.iter().filter(|d| !out.contains(d)).collect();
    pool.sort();
    for w in wanted_gpus {
        if out.len() >= size {
            break;
        }
        if out.iter().any(|d| gpu_of(d) == w) {
            continue;
        }
        if let Some(pos) = pool.iter().position(|d| gpu_of(d) == w) {
            out.push(pool.remove(pos).clone());
        }
    }
    // Group the rest by GPU; GPUs already in the answer first, then those with the fewest free units.
    let mut by_gpu: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for d in &pool {
        by_gpu.entry(gpu_of(d)).or_default().push(d);
    }
    let mut groups: Vec<(&str, Vec<&String>)> = by_gpu.into_iter().collect();
    groups.sort_by_key(|(g, ds)| {
        (
            !out.iter().any(|d| gpu_of(d) == *g),
            ds.len(),
            g.to_string(),
        )
    });
    for (_, ds) in groups {
        for d in ds {
            if out.len() >= size {
                return out;
            }
            out.push(d.clone());
        }
    }
    out.truncate(size.max(must_include.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(i: u32) -> Gpu {
        Gpu {
            index: i,
            uuid: format!("GPU-{i}"),
            model: "M".into(),
            memory_bytes: 80 << 30,
            sms: 132,
            numa: Some(i % 2),
            pci_bus_id: String::new(),
            minor: None,
            nvlink_peers: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn mig_gpus_offer_their_mig_devices_by_profile() {
        let cfg = NodeConfig::default();
        let mut g = gpu(0);
        g.mig_enabled = true;
        let dev = |u: &str, p: &str, mib: u64| crate::gpu::MigDev {
            uuid: u.into(),
            profile: p.into(),
            memory_bytes: mib << 20,
            sms: 16,
            start: None,
        };
        g.mig = vec![
            dev("MIG-a", "1g.10gb", 9984),
            dev("MIG-b", "1g.10gb", 9984),
            dev("MIG-c", "3g.40gb", 40448),
        ];
        // Where NVML placed the instance travels to the inventory for the scheduler's hint.
        g.mig[2].start = Some(4);
        let unhealthy = BTreeSet::from(["MIG-b".to_string()]);
        let p = plan(&cfg, &[g.clone(), gpu(1)], &unhealthy);
        let ids = |r: &str| {
            p.resources[r]
                .iter()
                .map(|u| (u.id.clone(), u.healthy))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids("gpuslice.io/mig-1g.10gb"),
            [("MIG-a".into(), true), ("MIG-b".into(), false)]
        );
        assert_eq!(ids("gpuslice.io/mig-3g.40gb"), [("MIG-c".into(), true)]);
        assert!(
            p.resources["gpuslice.io/gpu"]
                .iter()
                .all(|u| u.gpu_uuid == "GPU-1")
        );
        let inv = inventory(&cfg, &[g, gpu(1)], &unhealthy);
        inv.validate().unwrap();
        assert_eq!(inv.gpus[0].mode, GpuMode::Mig);
        assert_eq!(inv.gpus[0].mig.len(), 3);
        let c = inv.gpus[0].mig.iter().find(|m| m.uuid == "MIG-c").unwrap();
        assert_eq!(c.start, Some(4));
        assert!(inv.to_json().contains("\"start\":4"), "{}", inv.to_json());
        assert!(!inv.gpus[0].mig[1].healthy);
        // The parent's fault takes every MIG device down.
        let p = plan(
            &cfg,
            &[inv_gpu(&inv)],
            &BTreeSet::from(["GPU-0".to_string()]),
        );
        assert!(
            p.resources["gpuslice.io/mig-3g.40gb"]
                .iter()
                .all(|u| !u.healthy)
        );
    }

    fn inv_gpu(inv: &Inventory) -> Gpu {
        let g = &inv.gpus[0];
        Gpu {
            index: g.index,
            uuid: g.uuid.clone(),
            mig_enabled: true,
            mig: g
                .mig
                .iter()
                .map(|m| crate::gpu::MigDev {
                    uuid: m.uuid.clone(),
                    profile: m.profile.clone(),
                    memory_bytes: m.memory_mib << 20,
                    sms: m.sms,
                    start: m.start,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn plans_per_gpu_modes() {
        let cfg = NodeConfig::parse("version: v1\nslices: 3\ngpus:\n  - {index: 1, mode: whole}\n  - {index: 2, mode: time-slicing}\n").unwrap();
        let unhealthy = BTreeSet::from(["GPU-0".to_string()]);
        let p = plan(&cfg, &[gpu(0), gpu(1), gpu(2)], &unhealthy);
        let shared = &p.resources["gpuslice.io/gpu"];
        assert_eq!(
            shared.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
            ["GPU-0::0", "GPU-0::1", "GPU-0::2"]
        );
        assert!(shared.iter().all(|u| !u.healthy));
        assert_eq!(p.resources["gpuslice.io/whole-gpu"][0].id, "GPU-1");
        assert_eq!(p.resources["nvidia.com/gpu"].len(), 4);
        let inv = inventory(&cfg, &[gpu(0), gpu(1), gpu(2)], &unhealthy);
        inv.validate().unwrap();
        assert_eq!(inv.gpus.len(), 2);
        assert!(!inv.gpus[0].healthy);
        assert_eq!(inv.gpus[1].mode, GpuMode::Whole);
    }

    /// `nvidia.com/gpu` registered with no devices would contend with NVIDIA's device plugin
    /// for that name: the time-slicing resource exists only while a GPU is offered that way,
    /// even when the config's `timeSlicing` section is filled in.
    #[test]
    fn time_slicing_resource_only_while_a_gpu_is_time_sliced() {
        let shared_only = NodeConfig::parse(
            "version: v1\ntimeSlicing: {resourceName: nvidia.com/gpu, replicas: 4}\n",
        )
        .unwrap();
        let p = plan(&shared_only, &[gpu(0), gpu(1)], &BTreeSet::new());
        assert_eq!(
            p.resources.keys().collect::<Vec<_>>(),
            ["gpuslice.io/gpu", "gpuslice.io/whole-gpu"]
        );
        // A time-slicing default with only MIG GPUs offers no replica either.
        let ts = NodeConfig::parse("version: v1\ndefaultMode: time-slicing\n").unwrap();
        let mut m = gpu(0);
        m.mig_enabled = true;
        let p = plan(&ts, &[m], &BTreeSet::new());
        assert!(!p.resources.contains_key("nvidia.com/gpu"), "{p:?}");
        let p = plan(&ts, &[gpu(0)], &BTreeSet::new());
        assert_eq!(p.resources["nvidia.com/gpu"].len(), 4);
    }

    #[test]
    fn preference_follows_the_scheduler_then_packs() {
        let avail: Vec<String> = ["GPU-0::0", "GPU-0::1", "GPU-1::0", "GPU-1::1", "GPU-1::2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(preferred(&avail, &[], 1, &["GPU-1".into()]), ["GPU-1::0"]);
        assert_eq!(preferred(&avail, &[], 2, &[]), ["GPU-0::0", "GPU-0::1"]);
        assert_eq!(
            preferred(&avail, &["GPU-1::2".into()], 2, &[]),
            ["GPU-1::2", "GPU-1::0"]
        );
    }
}

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

pub fn plan(cfg: &NodeConfig, gpus: &[Gpu], unhealthy: &BTreeSet<String>) -> Plan {
    let mut p = Plan::default();
    // Every resource the agent can serve is always registered, possibly empty, so a mode change
    // on reload only changes device lists.
    for m in [Mode::Shared, Mode::Whole, Mode::TimeSlicing] {
        p.resources.entry(resource_for(cfg, m)).or_default();
    }
    for g in gpus {
        let offer = cfg.offer(g.index, &g.uuid);
        let healthy = !unhealthy.contains(&g.uuid);
        let list = p.resources.get_mut(&resource_for(cfg, offer.mode)).unwrap();
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
                let offer = cfg.offer(g.index, &g.uuid);
                let mode = match offer.mode {
                    Mode::Shared => GpuMode::Shared,
                    Mode::Whole => GpuMode::Whole,
                    Mode::TimeSlicing => return None,
                };
                Some(protocol::GpuInfo {
                    uuid: g.uuid.clone(),
                    index: g.index,
                    model: g.model.clone(),
                    memory_mib: g.memory_bytes >> 20,
                    sms: g.sms,
                    numa: g.numa,
                    nvlink_peers: g.nvlink_peers.clone(),
                    pcie_switch: None,
                    slices: offer.units,
                    mode,
                    mig: Vec::new(),
                    healthy: !unhealthy.contains(&g.uuid),
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

//! "Which MIG layout would fit the pending pods": a per-GPU suggestion from the exact planner
//! in [`crate::mig`]. Advice only: nothing here (or in the scheduler) changes a GPU.
//!
//! The demand is cluster-wide: the MIG devices pending pods ask for, minus the free healthy
//! devices of the same profile anywhere in the cluster (those pods can use them as they are).
//! Each GPU in MIG mode is then planned for that whole demand on its own, so the hints are
//! alternatives, best first, not a cluster-wide assignment. Devices taken by a placed pod are
//! kept by the plan; only free instances may be destroyed.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::mig::{self, Instance, Plan};
use crate::protocol::GpuMode;

use super::cluster::Cluster;
use super::fit::PodSpec;

/// One GPU's suggestion, or why it was left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigHint {
    pub node: String,
    /// The physical GPU's UUID.
    pub gpu: String,
    /// The model as the inventory names it.
    pub model: String,
    /// Why this GPU was not planned for; `plan` is then absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The outstanding demand this GPU was planned for (profiles its model has).
    pub demand: BTreeMap<String, u32>,
    /// Instances the plan adds to the GPU's current layout.
    pub create: Vec<Instance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

/// MIG devices asked for by `pending` beyond the free healthy devices of the cluster.
pub fn outstanding_mig(cluster: &Cluster, pending: &[PodSpec]) -> BTreeMap<String, u32> {
    let mut want: BTreeMap<String, u32> = BTreeMap::new();
    for c in pending.iter().flat_map(|p| &p.containers) {
        for (profile, &n) in &c.mig {
            let w = want.entry(profile.clone()).or_default();
            *w = w.saturating_add(n);
        }
    }
    for node in &cluster.nodes {
        for (g, u) in node.gpus.iter().zip(&node.usage) {
            if g.info.mode != GpuMode::Mig || !g.info.healthy {
                continue;
            }
            for (j, m) in g.info.mig.iter().enumerate() {
                let taken = j < 64 && u.mig_taken & (1 << j) != 0;
                if m.healthy
                    && !taken
                    && let Some(w) = want.get_mut(&m.profile)
                {
                    *w = w.saturating_sub(1);
                }
            }
        }
    }
    want.retain(|_, n| *n > 0);
    want
}

/// Hints for every GPU in MIG mode, best first (fewest demanded instances left unplaced, then
/// fewest destroyed). Empty when the free devices already cover the pending pods. GPUs whose
/// model the MIG geometry does not know, or whose devices lack a placement (an agent that does
/// not report `start`), are listed with `skipped` and no plan; GPUs whose plan would create
/// nothing are left out.
pub fn mig_hint(cluster: &Cluster, pending: &[PodSpec]) -> Vec<MigHint> {
    let want = outstanding_mig(cluster, pending);
    if want.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for node in &cluster.nodes {
        for (g, u) in node.gpus.iter().zip(&node.usage) {
            if g.info.mode != GpuMode::Mig {
                continue;
            }
            let mut hint = MigHint {
                node: node.name.clone(),
                gpu: g.info.uuid.clone(),
                model: g.info.model.clone(),
                skipped: None,
                demand: BTreeMap::new(),
                create: Vec::new(),
                plan: None,
            };
            match plan_gpu(&g.info, u.mig_taken, &want) {
                Ok(None) => continue,
                Ok(Some((demand, create, plan))) => {
                    hint.demand = demand;
                    hint.create = create;
                    hint.plan = Some(plan);
                }
                Err(why) => hint.skipped = Some(why),
            }
            out.push(hint);
        }
    }
    let rank = |h: &MigHint| {
        h.plan.as_ref().map_or((1, 0, 0), |p| {
            let left: u32 = p.unplaced.iter().map(|x| x.count).sum();
            (0, left, p.destroy.len())
        })
    };
    out.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then_with(|| (&a.node, &a.gpu).cmp(&(&b.node, &b.gpu)))
    });
    out
}

type GpuPlan = (BTreeMap<String, u32>, Vec<Instance>, Plan);

/// `Ok(None)`: nothing to suggest on this GPU; `Err`: why it cannot be planned for.
fn plan_gpu(
    info: &crate::protocol::GpuInfo,
    taken: u64,
    want: &BTreeMap<String, u32>,
) -> Result<Option<GpuPlan>, String> {
    if !info.healthy {
        return Err("GPU is unhealthy".into());
    }
    let model = mig::model(&info.model)
        .map_err(|_| format!("model '{}' is not in the MIG geometry tables", info.model))?;
    let mut current = Vec::with_capacity(info.mig.len());
    let mut keep = Vec::new();
    for (j, m) in info.mig.iter().enumerate() {
        // Without the placement the free slices are unknown; guessing could suggest a layout
        // that overlaps a device in use.
        let start = m.start.ok_or_else(|| {
            format!(
                "MIG device {} reports no placement (start); the node agent must report it",
                m.uuid
            )
        })?;
        let p = model.profile(&m.profile).ok_or_else(|| {
            format!(
                "MIG device {}: profile {} unknown on {}",
                m.uuid, m.profile, model.name
            )
        })?;
        let size = p
            .placement_at(start)
            .ok_or_else(|| {
                format!(
                    "MIG device {}: {} cannot start at {start}",
                    m.uuid, m.profile
                )
            })?
            .size;
        current.push(Instance {
            profile: p.name.into(),
            start,
            size,
        });
        if j >= 64 || taken & (1 << j) != 0 {
            keep.push(start);
        }
    }
    let demand: BTreeMap<String, u32> = want
        .iter()
        .filter(|(p, _)| model.profile(p).is_some())
        .map(|(p, n)| (p.clone(), *n))
        .collect();
    if demand.is_empty() {
        return Ok(None);
    }
    let d: Vec<(&str, u32)> = demand.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let plan = mig::plan_keeping(model, &d, Some(&current), &keep).map_err(|e| e.to_string())?;
    let create: Vec<Instance> = plan
        .instances
        .iter()
        .filter(|i| !current.contains(i))
        .cloned()
        .collect();
    if create.is_empty() {
        return Ok(None);
    }
    Ok(Some((demand, create, plan)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        AssignedGpu, Assignment, ContainerAssignment, GpuInfo, Inventory, MigDevice,
    };
    use crate::sched::PodRecord;

    fn dev(uuid: &str, profile: &str, start: Option<u8>) -> MigDevice {
        MigDevice {
            uuid: uuid.into(),
            profile: profile.into(),
            memory_mib: 40448,
            sms: 60,
            healthy: true,
            start,
        }
    }

    fn mig_gpu(uuid: &str, index: u32, model: &str, mig: Vec<MigDevice>) -> GpuInfo {
        GpuInfo {
            uuid: uuid.into(),
            index,
            model: model.into(),
            memory_mib: 81559,
            sms: 132,
            numa: None,
            nvlink_peers: vec![],
            pcie_switch: None,
            slices: 1,
            mode: GpuMode::Mig,
            mig,
            healthy: true,
        }
    }

    const H100: &str = "NVIDIA H100 80GB HBM3";

    /// An H100 split 3g.40gb@0 (MIG-0) + 3g.40gb@4 (MIG-4), with `busy` taken by a pod.
    fn cluster(busy: &[&str]) -> Cluster {
        let mut c = Cluster::new();
        let g = mig_gpu(
            "GPU-h",
            0,
            H100,
            vec![
                dev("MIG-0", "3g.40gb", Some(0)),
                dev("MIG-4", "3g.40gb", Some(4)),
            ],
        );
        c.upsert_node("n", &Inventory::new(vec![g]));
        for (k, uuid) in busy.iter().enumerate() {
            let a = Assignment::new(
                "n",
                vec![ContainerAssignment {
                    name: "main".into(),
                    gpus: vec![AssignedGpu {
                        uuid: uuid.to_string(),
                        memory_mib: 40448,
                        compute_percent: 100,
                        exclusive: true,
                        mig: Some("3g.40gb".into()),
                    }],
                }],
            );
            c.add_pod(PodRecord {
                uid: format!("busy{k}"),
                namespace: "ns".into(),
                name: format!("busy{k}"),
                priority: 0,
                assignment: a,
                gang: None,
                demand: Default::default(),
            })
            .unwrap();
        }
        c
    }

    fn pending(n: usize, profile: &str) -> Vec<PodSpec> {
        let res = format!("gpuslice.io/mig-{profile}");
        (0..n)
            .map(|i| {
                let uid = format!("p{i}");
                PodSpec::parse(
                    &uid,
                    "ns",
                    &uid,
                    0,
                    [("main", vec![(res.as_str(), "1")])],
                    [],
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn pending_small_pods_split_the_free_3g() {
        for (busy, free) in [("MIG-0", 4u8), ("MIG-4", 0u8)] {
            let c = cluster(&[busy]);
            let hints = mig_hint(&c, &pending(3, "1g.10gb"));
            assert_eq!(hints.len(), 1, "{hints:?}");
            let h = &hints[0];
            assert_eq!((h.node.as_str(), h.gpu.as_str()), ("n", "GPU-h"));
            assert_eq!(h.demand, BTreeMap::from([("1g.10gb".to_string(), 3)]));
            let p = h.plan.as_ref().unwrap();
            assert!(p.feasible, "{p:?}");
            assert_eq!(
                p.destroy,
                [Instance {
                    profile: "3g.40gb".into(),
                    start: free,
                    size: 4
                }],
                "busy {busy}"
            );
            assert_eq!(h.create.len(), 3);
            assert!(
                h.create
                    .iter()
                    .all(|i| i.profile == "1g.10gb" && (free..free + 4).contains(&i.start)),
                "{h:?}"
            );
        }
    }

    #[test]
    fn busy_instances_are_never_destroyed() {
        // Seven 1g.10gb would fit only if both 3g.40gb went; the busy one must stay.
        let c = cluster(&["MIG-0"]);
        let h = &mig_hint(&c, &pending(7, "1g.10gb"))[0];
        let p = h.plan.as_ref().unwrap();
        assert!(!p.feasible);
        assert!(p.destroy.iter().all(|i| i.start != 0), "{p:?}");
        assert!(p.instances.contains(&Instance {
            profile: "3g.40gb".into(),
            start: 0,
            size: 4
        }));
        assert_eq!(p.unplaced[0].count, 4, "{p:?}");
        // The unconstrained planner would take it: the constraint is what keeps it.
        let current = [
            Instance {
                profile: "3g.40gb".into(),
                start: 0,
                size: 4,
            },
            Instance {
                profile: "3g.40gb".into(),
                start: 4,
                size: 4,
            },
        ];
        let free = mig::plan(mig::model(H100).unwrap(), &[("1g.10gb", 7)], Some(&current)).unwrap();
        assert_eq!(free.destroy.len(), 2);
        // Both busy: nothing may go, so there is nothing to suggest.
        assert!(mig_hint(&cluster(&["MIG-0", "MIG-4"]), &pending(7, "1g.10gb")).is_empty());
    }

    #[test]
    fn free_matching_devices_cover_demand_first() {
        let c = cluster(&["MIG-0"]);
        assert!(mig_hint(&c, &pending(1, "3g.40gb")).is_empty());
        assert_eq!(
            outstanding_mig(&c, &pending(2, "3g.40gb")),
            BTreeMap::from([("3g.40gb".to_string(), 1)])
        );
        assert!(mig_hint(&c, &[]).is_empty());
    }

    #[test]
    fn unknown_model_and_unplaced_devices_are_skipped_with_reason() {
        let mut c = cluster(&[]);
        let odd = mig_gpu(
            "GPU-v",
            0,
            "Tesla V100-SXM2-32GB",
            vec![dev("MIG-v", "1g.10gb", Some(0))],
        );
        let old = mig_gpu("GPU-o", 0, H100, vec![dev("MIG-o", "3g.40gb", None)]);
        c.upsert_node("v", &Inventory::new(vec![odd]));
        c.upsert_node("o", &Inventory::new(vec![old]));
        let hints = mig_hint(&c, &pending(2, "1g.10gb"));
        assert_eq!(hints.len(), 3, "{hints:?}");
        // The planned GPU ranks first.
        assert_eq!(hints[0].gpu, "GPU-h");
        assert!(hints[0].plan.is_some());
        let skipped = |gpu: &str| {
            let h = hints.iter().find(|h| h.gpu == gpu).unwrap();
            assert!(h.plan.is_none() && h.create.is_empty());
            h.skipped.clone().unwrap()
        };
        assert!(
            skipped("GPU-v").contains("not in the MIG geometry"),
            "{hints:?}"
        );
        assert!(
            skipped("GPU-o").contains("MIG-o reports no placement"),
            "{hints:?}"
        );
        let json = serde_json::to_value(&hints).unwrap();
        assert_eq!(json[0]["plan"]["destroy"][0]["profile"], "3g.40gb");
        assert!(json[1].get("plan").is_none());
    }
}

use proptest::prelude::*;

use super::sim::best_node;
use super::*;
use crate::protocol::{GpuInfo, GpuMode, Inventory, MigDevice, Policy};

fn gpu(uuid: &str, index: u32, mem: u64, slices: u32) -> GpuInfo {
    GpuInfo {
        uuid: uuid.into(),
        index,
        model: "NVIDIA H100 80GB HBM3".into(),
        memory_mib: mem,
        sms: 132,
        numa: Some(index / 4),
        nvlink_peers: vec![],
        pcie_switch: Some(format!("sw{}", index / 2)),
        slices,
        mode: GpuMode::Shared,
        mig: vec![],
        healthy: true,
    }
}

fn node8(c: &mut Cluster, name: &str) {
    let gpus = (0..8)
        .map(|i| gpu(&format!("{name}-g{i}"), i, 81920, 4))
        .collect();
    c.upsert_node(name, &Inventory::new(gpus));
}

fn pod(uid: &str, ns: &str, res: &[(&str, &str)], ann: &[(&str, &str)]) -> PodSpec {
    PodSpec::parse(
        uid,
        ns,
        uid,
        0,
        [("main", res.to_vec())],
        ann.iter().copied(),
    )
    .unwrap()
}

fn place(c: &mut Cluster, p: &PodSpec, cfg: &Config) -> Result<String, String> {
    let cand = Candidate::new(c, p, cfg);
    let (n, f) = best_node(c, &cand)?;
    let rec = c.record(n, p, &f);
    let name = c.nodes[n].name.clone();
    c.add_pod(rec).map_err(|e| e.to_string())?;
    Ok(name)
}

#[test]
fn slices_land_on_distinct_gpus_with_defaults_resolved() {
    let mut c = Cluster::new();
    node8(&mut c, "n1");
    let p = pod("p", "ns", &[("gpuslice.io/gpu", "3")], &[]);
    let cand = Candidate::new(&c, &p, &Config::default());
    let f = fit_node(&c.nodes[0], &cand).unwrap();
    let a = c.assignment(0, &p, &f);
    let gpus = &a.containers[0].gpus;
    assert_eq!(gpus.len(), 3);
    let mut u: Vec<_> = gpus.iter().map(|g| &g.uuid).collect();
    u.dedup();
    assert_eq!(u.len(), 3);
    assert!(
        gpus.iter()
            .all(|g| g.memory_mib == 20480 && g.compute_percent == 25)
    );
    a.validate().unwrap();
}

#[test]
fn binpack_and_spread_choose_differently() {
    for (policy, same) in [(Policy::Binpack, true), (Policy::Spread, false)] {
        let cfg = Config {
            node_policy: policy,
            gpu_policy: policy,
            ..Config::default()
        };
        let mut c = Cluster::new();
        node8(&mut c, "a");
        node8(&mut c, "b");
        let p1 = pod(
            "p1",
            "ns",
            &[
                ("gpuslice.io/gpu", "1"),
                ("gpuslice.io/gpu-memory", "10000"),
            ],
            &[],
        );
        let p2 = pod(
            "p2",
            "ns",
            &[
                ("gpuslice.io/gpu", "1"),
                ("gpuslice.io/gpu-memory", "10000"),
            ],
            &[],
        );
        let n1 = place(&mut c, &p1, &cfg).unwrap();
        let n2 = place(&mut c, &p2, &cfg).unwrap();
        assert_eq!(n1 == n2, same, "{policy}: {n1} {n2}");
        let g1 = &c.pods["p1"].assignment.containers[0].gpus[0].uuid;
        let g2 = &c.pods["p2"].assignment.containers[0].gpus[0].uuid;
        assert_eq!(g1 == g2, same, "{policy}: {g1} {g2}");
    }
}

#[test]
fn annotation_overrides_policy() {
    let mut c = Cluster::new();
    node8(&mut c, "a");
    node8(&mut c, "b");
    let cfg = Config::default();
    place(
        &mut c,
        &pod("p1", "ns", &[("gpuslice.io/gpu", "1")], &[]),
        &cfg,
    )
    .unwrap();
    let n = place(
        &mut c,
        &pod(
            "p2",
            "ns",
            &[("gpuslice.io/gpu", "1")],
            &[("gpuslice.io/node-policy", "spread")],
        ),
        &cfg,
    )
    .unwrap();
    assert_ne!(n, c.pods["p1"].assignment.node);
}

#[test]
fn topology_prefers_nvlink_then_numa() {
    let mut c = Cluster::new();
    let mut gpus: Vec<GpuInfo> = (0..8).map(|i| gpu(&format!("g{i}"), i, 81920, 4)).collect();
    // NVLink pair 5–6 across NUMA nodes 1/1; binpack key alone would pick g0, g1.
    gpus[5].nvlink_peers = vec!["g6".into()];
    c.upsert_node("n", &Inventory::new(gpus.clone()));
    let p = pod("p", "ns", &[("gpuslice.io/gpu", "2")], &[]);
    let f = fit_node(&c.nodes[0], &Candidate::new(&c, &p, &Config::default())).unwrap();
    let mut set: Vec<u16> = f.takes.iter().map(|(_, t)| t.gpu).collect();
    set.sort();
    assert_eq!(set, vec![5, 6]);
    // Without NVLink: same NUMA node (indices 0..4 share NUMA 0).
    gpus[5].nvlink_peers.clear();
    c.upsert_node("n", &Inventory::new(gpus));
    let p = pod("p", "ns", &[("gpuslice.io/gpu", "4")], &[]);
    let f = fit_node(&c.nodes[0], &Candidate::new(&c, &p, &Config::default())).unwrap();
    let numas: Vec<_> = f
        .takes
        .iter()
        .map(|(_, t)| c.nodes[0].gpus[t.gpu as usize].info.numa)
        .collect();
    assert!(numas.iter().all(|n| *n == numas[0]), "{numas:?}");
}

#[test]
fn model_filters_and_pinning() {
    let mut c = Cluster::new();
    let mut gpus = vec![gpu("h", 0, 81920, 2), gpu("a", 1, 40960, 2)];
    gpus[1].model = "NVIDIA A100-SXM4-40GB".into();
    c.upsert_node("n", &Inventory::new(gpus));
    let cfg = Config::default();
    let only = |ann: &[(&str, &str)]| {
        let p = pod("p", "ns", &[("gpuslice.io/gpu", "1")], ann);
        let f = fit_node(&c.nodes[0], &Candidate::new(&c, &p, &cfg));
        f.map(|f| c.assignment(0, &p, &f).containers[0].gpus[0].uuid.clone())
    };
    assert_eq!(
        only(&[("gpuslice.io/gpu-model-include", "A100")]).unwrap(),
        "a"
    );
    assert_eq!(
        only(&[("gpuslice.io/gpu-model-exclude", "A100")]).unwrap(),
        "h"
    );
    assert_eq!(only(&[("gpuslice.io/gpu-uuid", "a")]).unwrap(), "a");
    assert_eq!(only(&[("gpuslice.io/gpu-uuid-exclude", "h")]).unwrap(), "a");
    assert_eq!(only(&[("gpuslice.io/gpu-uuid-exclude", "a")]).unwrap(), "h");
    assert!(only(&[("gpuslice.io/gpu-uuid-exclude", "a,h")]).is_err());
    assert!(only(&[("gpuslice.io/gpu-model-include", "V100")]).is_err());
}

#[test]
fn whole_and_mig() {
    let mut c = Cluster::new();
    let mut w = gpu("w0", 0, 81920, 1);
    w.mode = GpuMode::Whole;
    let mut w1 = gpu("w1", 1, 81920, 1);
    w1.mode = GpuMode::Whole;
    let mut m = gpu("m", 2, 81920, 1);
    m.mode = GpuMode::Mig;
    m.mig = (0..2)
        .map(|j| MigDevice {
            uuid: format!("MIG-{j}"),
            profile: "3g.40gb".into(),
            memory_mib: 40448,
            sms: 60,
            healthy: true,
            start: None,
        })
        .collect();
    c.upsert_node("n", &Inventory::new(vec![w, w1, m]));
    let cfg = Config::default();
    let p = pod(
        "p",
        "ns",
        &[
            ("gpuslice.io/whole-gpu", "2"),
            ("gpuslice.io/mig-3g.40gb", "1"),
        ],
        &[],
    );
    place(&mut c, &p, &cfg).unwrap();
    let a = &c.pods["p"].assignment.containers[0].gpus;
    assert_eq!(
        a.iter().filter(|g| g.exclusive && g.mig.is_none()).count(),
        2
    );
    assert_eq!(
        a.iter()
            .filter(|g| g.mig.as_deref() == Some("3g.40gb"))
            .count(),
        1
    );
    let p2 = pod("p2", "ns", &[("gpuslice.io/whole-gpu", "1")], &[]);
    assert!(place(&mut c, &p2, &cfg).unwrap_err().contains("whole GPUs"));
    let p3 = pod("p3", "ns", &[("gpuslice.io/mig-3g.40gb", "1")], &[]);
    place(&mut c, &p3, &cfg).unwrap();
    let p4 = pod("p4", "ns", &[("gpuslice.io/mig-3g.40gb", "1")], &[]);
    assert!(
        place(&mut c, &p4, &cfg)
            .unwrap_err()
            .contains("MIG 3g.40gb")
    );
    c.remove_pod("p3");
    place(&mut c, &p4, &cfg).unwrap();
}

#[test]
fn quota_refusal_names_the_quota() {
    let mut c = Cluster::new();
    node8(&mut c, "n");
    c.quotas.insert(
        "team-a".into(),
        Quota {
            namespace: "team-a".into(),
            gpu_memory_mib: Some(30000),
            gpu_compute_percent: None,
            weight: 1,
        },
    );
    let cfg = Config::default();
    let r = [
        ("gpuslice.io/gpu", "1"),
        ("gpuslice.io/gpu-memory", "20000"),
    ];
    place(&mut c, &pod("p1", "team-a", &r, &[]), &cfg).unwrap();
    let e = place(&mut c, &pod("p2", "team-a", &r, &[]), &cfg).unwrap_err();
    assert!(
        e.contains("quota team-a/gpu-memory") && e.contains("30000"),
        "{e}"
    );
    place(&mut c, &pod("p3", "team-b", &r, &[]), &cfg).unwrap();
    c.remove_pod("p1");
    place(&mut c, &pod("p2", "team-a", &r, &[]), &cfg).unwrap();
}

#[test]
fn dominant_share_and_gate() {
    let cap = Demand {
        memory_mib: 1000,
        compute_percent: 1000,
    };
    let s = dominant_share(
        Demand {
            memory_mib: 500,
            compute_percent: 100,
        },
        cap,
        1,
    );
    assert_eq!(s, 0.5);
    assert_eq!(
        dominant_share(
            Demand {
                memory_mib: 500,
                compute_percent: 100
            },
            cap,
            2
        ),
        0.25
    );
    assert_eq!(quota::fair_share_blocker(0.7, 2, [("b", 0.1)]), Some("b"));
    assert_eq!(quota::fair_share_blocker(0.4, 2, [("b", 0.1)]), None);
    assert_eq!(quota::fair_share_blocker(0.7, 2, [("b", 0.6)]), None);
}

#[test]
fn gang_completes_or_expires() {
    let mut g = GangTracker::new();
    let r = |u: &str| Reservation {
        uid: u.into(),
        namespace: "ns".into(),
        name: u.into(),
        node: "n".into(),
    };
    assert!(matches!(
        g.reserve("ns/x", 3, 1000, 0, r("a")),
        GangDecision::Waiting {
            have: 1,
            need: 3,
            deadline_ms: 1000
        }
    ));
    // Repeated reservation of the same member is not counted twice.
    assert!(matches!(
        g.reserve("ns/x", 3, 1000, 10, r("a")),
        GangDecision::Waiting { have: 1, .. }
    ));
    assert!(matches!(
        g.reserve("ns/x", 3, 1000, 20, r("b")),
        GangDecision::Waiting { have: 2, .. }
    ));
    assert!(g.expire(999).is_empty());
    assert_eq!(g.reservation("b").unwrap().node, "n");
    match g.reserve("ns/x", 3, 1000, 30, r("c")) {
        GangDecision::Complete(m) => assert_eq!(m.len(), 3),
        o => panic!("{o:?}"),
    }
    assert!(g.reservation("a").is_none());
    g.reserve("ns/y", 2, 1000, 0, r("d"));
    let released = g.expire(1000);
    assert_eq!(released.len(), 1);
    assert!(g.reservation("d").is_none());
}

#[test]
fn preemption_takes_fewest_lowest_and_keeps_gangs_whole() {
    let mut c = Cluster::new();
    c.upsert_node("n", &Inventory::new(vec![gpu("g0", 0, 80000, 4)]));
    c.upsert_node("m", &Inventory::new(vec![gpu("h0", 0, 80000, 4)]));
    let cfg = Config::default();
    let mk = |uid: &str, prio: i32, mem: &str, ann: &[(&str, &str)]| {
        PodSpec::parse(
            uid,
            "ns",
            uid,
            prio,
            [(
                "main",
                vec![("gpuslice.io/gpu", "1"), ("gpuslice.io/gpu-memory", mem)],
            )],
            ann.iter().copied(),
        )
        .unwrap()
    };
    let put = |c: &mut Cluster, p: &PodSpec, node: usize| {
        let f = fit_node(&c.nodes[node], &Candidate::new(c, p, &cfg)).unwrap();
        let rec = c.record(node, p, &f);
        c.add_pod(rec).unwrap();
    };
    put(&mut c, &mk("low1", 1, "20000", &[]), 0);
    put(&mut c, &mk("low2", 2, "20000", &[]), 0);
    put(&mut c, &mk("mid", 5, "40000", &[]), 0);
    let hi = mk("hi", 10, "20000", &[]);
    let v = select_victims(&c, 0, &Candidate::new(&c, &hi, &cfg)).unwrap();
    assert_eq!(
        v.iter().map(|v| v.uid.as_str()).collect::<Vec<_>>(),
        vec!["low1"]
    );
    let big = mk("big", 10, "60000", &[]);
    let v = select_victims(&c, 0, &Candidate::new(&c, &big, &cfg)).unwrap();
    let mut names: Vec<_> = v.iter().map(|v| v.uid.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["low1", "mid"],
        "fewest victims: mid frees 40000, plus one low"
    );
    let low = mk("lowest", 0, "20000", &[]);
    assert!(select_victims(&c, 0, &Candidate::new(&c, &low, &cfg)).is_none());
    // Gangs: one split across nodes is protected; one wholly on a node goes together.
    let gang = |g: &'static str| [("gpuslice.io/gang", g), ("gpuslice.io/gang-size", "2")];
    let mut c = Cluster::new();
    c.upsert_node("n", &Inventory::new(vec![gpu("g0", 0, 80000, 4)]));
    c.upsert_node("m", &Inventory::new(vec![gpu("h0", 0, 80000, 4)]));
    put(&mut c, &mk("ga", 1, "70000", &gang("split")), 1);
    put(&mut c, &mk("gb", 1, "10000", &gang("split")), 0);
    put(&mut c, &mk("gc", 1, "30000", &gang("local")), 0);
    put(&mut c, &mk("gd", 1, "30000", &gang("local")), 0);
    assert!(select_victims(&c, 1, &Candidate::new(&c, &mk("x", 10, "20000", &[]), &cfg)).is_none());
    let v = select_victims(&c, 0, &Candidate::new(&c, &mk("y", 10, "20000", &[]), &cfg)).unwrap();
    let mut names: Vec<_> = v.iter().map(|v| v.uid.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["gc", "gd"]);
}

fn arb_req() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    prop_oneof![
        6 => arb_slices(),
        1 => (1u32..3).prop_map(|n| vec![("gpuslice.io/whole-gpu", n.to_string())]),
        1 => (1u32..4).prop_map(|n| vec![("gpuslice.io/mig-3g.40gb", n.to_string())]),
    ]
}

fn arb_slices() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    (
        1u32..4,
        prop::option::of(1u64..50000),
        prop::option::of(1u32..101),
    )
        .prop_map(|(s, m, k)| {
            let mut v = vec![("gpuslice.io/gpu", s.to_string())];
            if let Some(m) = m {
                v.push(("gpuslice.io/gpu-memory", m.to_string()));
            }
            if let Some(k) = k {
                v.push(("gpuslice.io/gpu-compute", k.to_string()));
            }
            v
        })
}

fn check_no_overcommit(c: &Cluster) {
    for n in &c.nodes {
        for (g, u) in n.gpus.iter().zip(&n.usage) {
            assert!(
                u64::from(u.memory_mib) <= g.info.memory_mib,
                "{}: memory {} > {}",
                g.info.uuid,
                u.memory_mib,
                g.info.memory_mib
            );
            assert!(u.compute <= 100, "{}: compute {}", g.info.uuid, u.compute);
            assert!(u32::from(u.slices) <= g.info.slices);
        }
    }
    // Usage equals the sum of recorded assignments, GPU by GPU.
    let mut sum: std::collections::HashMap<String, (u64, u32)> = Default::default();
    for p in c.pods.values() {
        for ct in &p.assignment.containers {
            for g in &ct.gpus {
                let e = sum.entry(g.uuid.clone()).or_default();
                e.0 += g.memory_mib;
                e.1 += g.compute_percent;
            }
        }
    }
    for n in &c.nodes {
        for (g, u) in n.gpus.iter().zip(&n.usage) {
            let (m, k) = sum.get(&g.info.uuid).copied().unwrap_or_default();
            assert_eq!(
                (u64::from(u.memory_mib), u32::from(u.compute)),
                (m, k),
                "{}",
                g.info.uuid
            );
            if u.exclusive {
                assert_eq!(u.slices, 1, "{}: an exclusive GPU is shared", g.info.uuid);
            }
            // Each MIG device is held by at most one pod, and exactly those marked taken.
            for (j, mig) in g.info.mig.iter().enumerate() {
                let holders = sum.contains_key(&mig.uuid) as u64;
                let n_holders = c
                    .pods
                    .values()
                    .flat_map(|p| &p.assignment.containers)
                    .flat_map(|ct| &ct.gpus)
                    .filter(|x| x.uuid == mig.uuid)
                    .count();
                assert!(n_holders <= 1, "{}: held {} times", mig.uuid, n_holders);
                assert_eq!((u.mig_taken >> j) & 1, holders, "{}", mig.uuid);
            }
        }
    }
}

/// Two nodes share a shape exactly when their GPUs read the same to fitting, and the filter's
/// once-per-shape verdict is each node's own.
fn check_shapes(c: &Cluster, cand: &Candidate) {
    let seen = |n: &crate::sched::Node| {
        let hw: Vec<_> = n
            .gpus
            .iter()
            .map(|g| {
                (
                    g.info.model.clone(),
                    g.info.memory_mib,
                    g.info.slices,
                    g.info.mode,
                    g.info.healthy,
                    g.info.mig.len(),
                )
            })
            .collect();
        (hw, n.usage.clone())
    };
    for a in &c.nodes {
        assert!((a.shape() as usize) < c.shape_bound());
        for b in &c.nodes {
            assert_eq!(
                a.shape() == b.shape(),
                seen(a) == seen(b),
                "{} vs {}",
                a.name,
                b.name
            );
        }
    }
    let mut memo = crate::sched::ShapeMemo::new(c, cand);
    for n in &c.nodes {
        assert_eq!(memo.verdict(n, cand), fit_verdict(n, cand), "{}", n.name);
    }
}

#[test]
fn shape_ids_are_reused_once_no_node_holds_them() {
    let mut c = Cluster::new();
    node8(&mut c, "a");
    node8(&mut c, "b");
    assert_eq!(
        c.nodes[0].shape(),
        c.nodes[1].shape(),
        "alike nodes share a shape"
    );
    let cfg = Config::default();
    for k in 0..500 {
        let p = pod(
            &format!("p{k}"),
            "ns",
            &[
                ("gpuslice.io/gpu", "1"),
                ("gpuslice.io/gpu-memory", &format!("{}", 1000 + k)),
            ],
            &[],
        );
        place(&mut c, &p, &cfg).unwrap();
        assert_ne!(c.nodes[0].shape(), c.nodes[1].shape());
        c.remove_pod(&p.uid);
    }
    assert_eq!(c.nodes[0].shape(), c.nodes[1].shape());
    // Two shapes live at most at once: ids are reused, not minted per state ever seen.
    assert!(c.shape_bound() <= 2, "{}", c.shape_bound());
    c.remove_node("a");
    c.remove_node("b");
    node8(&mut c, "c");
    assert!(c.shape_bound() <= 2, "{}", c.shape_bound());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever arrives and leaves, in whatever order, under either policy: no GPU is ever
    /// over-committed in memory, compute or slices, and usage is exactly the sum of placements.
    #[test]
    fn never_overcommits(
        ops in prop::collection::vec((arb_req(), any::<bool>(), 0usize..40, any::<bool>()), 1..60),
        spread in any::<bool>(),
    ) {
        let mut c = Cluster::new();
        for n in 0..3 {
            let mut gpus: Vec<GpuInfo> = (0..4).map(|i| gpu(&format!("n{n}g{i}"), i, 40000 + 10000 * i as u64, 1 + i)).collect();
            let mut w = gpu(&format!("n{n}w"), 4, 80000, 1);
            w.mode = GpuMode::Whole;
            let mut m = gpu(&format!("n{n}m"), 5, 80000, 1);
            m.mode = GpuMode::Mig;
            m.mig = (0..2).map(|j| MigDevice { uuid: format!("n{n}mig{j}"), profile: "3g.40gb".into(), memory_mib: 40000, sms: 60, healthy: true, start: None }).collect();
            gpus.push(w);
            gpus.push(m);
            c.upsert_node(&format!("n{n}"), &Inventory::new(gpus));
        }
        let p = if spread { Policy::Spread } else { Policy::Binpack };
        let cfg = Config { node_policy: p, gpu_policy: p, ..Config::default() };
        for (k, (req, add, victim, preempt)) in ops.into_iter().enumerate() {
            if add {
                let res: Vec<(&str, &str)> = req.iter().map(|(a, b)| (*a, b.as_str())).collect();
                let pod = PodSpec::parse(&format!("p{k}"), "ns", &format!("p{k}"), k as i32 % 5, [("c", res)], []).unwrap();
                let cand = Candidate::new(&c, &pod, &cfg);
                // The filter's allocation-free verdict decides, scores and charges exactly
                // like the full fit, on every node in every state reached.
                for node in &c.nodes {
                    match (fit_node(node, &cand), fit_verdict(node, &cand)) {
                        (Ok(f), Ok(v)) => prop_assert_eq!((f.score, f.demand, f.score10()), (v.score, v.demand, v.score10())),
                        (Err(a), Err(b)) => prop_assert_eq!(a, b.describe(&pod).to_string()),
                        (a, b) => prop_assert!(false, "full fit {:?}, verdict {:?}", a, b),
                    }
                }
                check_shapes(&c, &cand);
                if let Ok((n, f)) = best_node(&c, &cand) {
                    let rec = c.record(n, &pod, &f);
                    prop_assert!(c.add_pod(rec).is_ok());
                } else if preempt {
                    for n in 0..c.nodes.len() {
                        if let Some(v) = select_victims(&c, n, &cand) {
                            prop_assert!(v.iter().all(|v| v.priority < pod.priority));
                            for v in &v { c.remove_pod(&v.uid); }
                            let f = fit_node(&c.nodes[n], &Candidate::new(&c, &pod, &cfg));
                            prop_assert!(f.is_ok(), "victims made no room");
                            let rec = c.record(n, &pod, &f.unwrap());
                            prop_assert!(c.add_pod(rec).is_ok());
                            break;
                        }
                    }
                }
            } else if victim % 5 == 0 {
                // The agent republishes a node with one GPU's health flipped: its hardware
                // class changes and its pods are charged again.
                let n = c.nodes[victim % c.nodes.len()].clone();
                let mut gpus: Vec<GpuInfo> = n.gpus.iter().map(|g| (*g.info).clone()).collect();
                gpus[victim % 4].healthy ^= true;
                c.upsert_node(&n.name, &Inventory::new(gpus));
            } else {
                let uids: Vec<String> = c.pods.keys().cloned().collect();
                if !uids.is_empty() {
                    let mut sorted = uids; sorted.sort();
                    c.remove_pod(&sorted[victim % sorted.len()]);
                }
            }
            check_no_overcommit(&c);
        }
    }

    /// A hand-written assignment that over-commits is refused and leaves the cluster as it was.
    #[test]
    fn over_committing_assignment_is_refused(m1 in 1u64..60000, m2 in 1u64..60000, k1 in 1u32..101, k2 in 1u32..101) {
        let mut c = Cluster::new();
        c.upsert_node("n", &Inventory::new(vec![gpu("g", 0, 60000, 4)]));
        let mk = |uid: &str, m: u64, k: u32| PodRecord {
            uid: uid.into(), namespace: "ns".into(), name: uid.into(), priority: 0, gang: None,
            demand: Demand { memory_mib: m, compute_percent: k as u64 },
            assignment: crate::protocol::Assignment::new("n", vec![crate::protocol::ContainerAssignment {
                name: "c".into(),
                gpus: vec![crate::protocol::AssignedGpu { uuid: "g".into(), memory_mib: m, compute_percent: k, exclusive: false, mig: None }],
            }]),
        };
        c.add_pod(mk("a", m1, k1)).unwrap();
        let before = c.nodes[0].usage.clone();
        let r = c.add_pod(mk("b", m2, k2));
        prop_assert_eq!(r.is_ok(), m1 + m2 <= 60000 && k1 + k2 <= 100);
        if r.is_err() { prop_assert_eq!(&c.nodes[0].usage, &before); }
        check_no_overcommit(&c);
    }
}

#[test]
fn a_node_update_keeps_the_usage_of_its_pods() {
    let mut c = Cluster::new();
    node8(&mut c, "a");
    node8(&mut c, "b");
    let cfg = Config::default();
    place(
        &mut c,
        &pod(
            "p",
            "ns",
            &[("gpuslice.io/gpu", "1"), ("gpuslice.io/gpu-memory", "1234")],
            &[],
        ),
        &cfg,
    )
    .unwrap();
    let node = c.pods["p"].assignment.node.clone();
    let gpus = (0..8)
        .map(|i| gpu(&format!("{node}-g{i}"), i, 81920, 4))
        .collect();
    c.upsert_node(&node, &Inventory::new(gpus));
    assert_eq!(c.node(&node).unwrap().used_memory_mib(), 1234);
    c.remove_pod("p");
    assert_eq!(c.node(&node).unwrap().used_memory_mib(), 0);
    c.upsert_node(
        &node,
        &Inventory::new(
            (0..8)
                .map(|i| gpu(&format!("{node}-g{i}"), i, 81920, 4))
                .collect(),
        ),
    );
    assert_eq!(c.node(&node).unwrap().used_memory_mib(), 0);
}

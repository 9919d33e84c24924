//! The cluster file (nodes, GPUs, placed pods, quotas) and the what-if simulator, which
//! replays a pod arrival/departure trace through the same fit and scoring code the extender
//! uses. Time is the trace's, in seconds; nothing here reads a clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

use crate::protocol::{
    Assignment, ContainerAssignment, GpuInfo, GpuMode, Inventory, Policy, ProtocolError,
};

use super::cluster::{Cluster, PodRecord};
use super::fit::{Candidate, Config, Fit, PodSpec, fit_node};
use super::quota::{Demand, Quota, dominant_share};

/// One node entry of a cluster file. With `count`, the entry stands for `count` identical
/// nodes named `<name>-0` … `<name>-<count-1>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(default)]
    pub count: Option<u32>,
    pub gpus: Vec<GpuInfo>,
}

/// A pod already placed, in a cluster file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacedPod {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub gang: Option<String>,
    pub node: String,
    pub containers: Vec<ContainerAssignment>,
}

/// The cluster file (`docs/cluster-file.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    pub version: u32,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub pods: Vec<PlacedPod>,
    #[serde(default)]
    pub quotas: Vec<Quota>,
}

impl ClusterSpec {
    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        let de = &mut serde_json::Deserializer::from_str(s);
        let spec: ClusterSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            ProtocolError::new(
                format!("cluster file: {}", e.path()),
                e.into_inner().to_string(),
            )
        })?;
        if spec.version != crate::protocol::PROTOCOL_VERSION {
            return Err(ProtocolError::new(
                "cluster file: version",
                format!("{} is not supported; use 1", spec.version),
            ));
        }
        Ok(spec)
    }

    /// Builds the cluster, validating every inventory and placed pod.
    pub fn build(&self) -> Result<Cluster, ProtocolError> {
        let mut c = Cluster::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let inv = Inventory::new(n.gpus.clone());
            inv.validate().map_err(|e| {
                ProtocolError::new(
                    format!("cluster file: nodes[{i}] ({}): {}", n.name, e.field),
                    e.reason,
                )
            })?;
            match n.count {
                None => {
                    if c.node(&n.name).is_some() {
                        return Err(ProtocolError::new(
                            format!("cluster file: nodes[{i}].name"),
                            format!("'{}' appears twice", n.name),
                        ));
                    }
                    c.upsert_node(&n.name, &inv)
                }
                Some(k) => {
                    for j in 0..k {
                        let mut inv = inv.clone();
                        for g in &mut inv.gpus {
                            g.uuid = format!("{}-{}-{j}", g.uuid, n.name);
                            for p in &mut g.nvlink_peers {
                                *p = format!("{p}-{}-{j}", n.name);
                            }
                            for m in &mut g.mig {
                                m.uuid = format!("{}-{}-{j}", m.uuid, n.name);
                            }
                        }
                        c.upsert_node(&format!("{}-{j}", n.name), &inv);
                    }
                }
            }
        }
        for q in &self.quotas {
            c.quotas.insert(q.namespace.clone(), q.clone());
        }
        for (i, p) in self.pods.iter().enumerate() {
            let field = format!("cluster file: pods[{i}]");
            let a = Assignment::new(p.node.clone(), p.containers.clone());
            a.validate()
                .map_err(|e| ProtocolError::new(format!("{field}: {}", e.field), e.reason))?;
            let demand =
                a.containers
                    .iter()
                    .flat_map(|c| &c.gpus)
                    .fold(Demand::default(), |mut d, g| {
                        d.memory_mib += g.memory_mib;
                        d.compute_percent += g.compute_percent as u64;
                        d
                    });
            let rec = PodRecord {
                uid: p
                    .uid
                    .clone()
                    .unwrap_or_else(|| format!("{}/{}", p.namespace, p.name)),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                priority: p.priority,
                assignment: a,
                gang: p.gang.as_ref().map(|g| format!("{}/{g}", p.namespace)),
                demand,
            };
            c.add_pod(rec)
                .map_err(|e| ProtocolError::new(field, e.to_string()))?;
        }
        Ok(c)
    }
}

/// The best node for a pod: quota first, then fit, then the highest score (lowest index on
/// ties, so runs are reproducible). Also used by the simulator's scheduling loop.
pub fn best_node(cluster: &Cluster, c: &Candidate) -> Result<(usize, Fit), String> {
    let mut best: Option<(usize, Fit)> = None;
    let mut last_err = String::from("no nodes");
    for (i, n) in cluster.nodes.iter().enumerate() {
        match fit_node(n, c) {
            Ok(f) => {
                if let Some(q) = cluster.quotas.get(&c.pod.namespace) {
                    let used = cluster.namespace_usage(&c.pod.namespace);
                    if let Err(e) = q.check(used, f.demand) {
                        last_err = e.to_string();
                        continue;
                    }
                }
                if best.as_ref().is_none_or(|(_, b)| f.score > b.score) {
                    best = Some((i, f));
                }
            }
            Err(e) => last_err = format!("{}: {e}", n.name),
        }
    }
    best.ok_or(last_err)
}

/// One pod of a trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracePod {
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    /// Seconds from the trace's start.
    pub arrival: f64,
    /// Seconds the pod runs once placed.
    pub duration: f64,
    #[serde(default)]
    pub priority: i32,
    pub containers: Vec<TraceContainer>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn default_ns() -> String {
    "default".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceContainer {
    pub name: String,
    /// Resource name → whole number (as a JSON number or string).
    pub resources: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trace {
    /// A pod pending longer than this many seconds is counted as rejected.
    #[serde(default = "default_wait")]
    pub max_pending_seconds: f64,
    pub pods: Vec<TracePod>,
}

fn default_wait() -> f64 {
    1800.0
}

impl Trace {
    pub fn parse(s: &str) -> Result<(Self, Vec<PodSpec>), ProtocolError> {
        let de = &mut serde_json::Deserializer::from_str(s);
        let t: Trace = serde_path_to_error::deserialize(de).map_err(|e| {
            ProtocolError::new(format!("trace: {}", e.path()), e.into_inner().to_string())
        })?;
        let mut specs = Vec::with_capacity(t.pods.len());
        for (i, p) in t.pods.iter().enumerate() {
            if !(p.arrival >= 0.0 && p.duration > 0.0) {
                return Err(ProtocolError::new(
                    format!("trace: pods[{i}].arrival/duration"),
                    "arrival ≥ 0 and duration > 0 seconds",
                ));
            }
            let res: Vec<Vec<(String, String)>> = p
                .containers
                .iter()
                .map(|c| {
                    c.resources
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string()),
                            )
                        })
                        .collect()
                })
                .collect();
            let spec = PodSpec::parse(
                &format!("{}/{}", p.namespace, p.name),
                &p.namespace,
                &p.name,
                p.priority,
                p.containers.iter().zip(&res).map(|(c, r)| {
                    (
                        c.name.as_str(),
                        r.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                    )
                }),
                p.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .map_err(|e| {
                ProtocolError::new(
                    format!("trace: pods[{i}] ({}): {}", p.name, e.field),
                    e.reason,
                )
            })?;
            specs.push(spec);
        }
        Ok((t, specs))
    }
}

/// How the simulator places pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimPolicy {
    /// Slices; node and GPU binpack.
    Binpack,
    /// Slices; node and GPU spread.
    Spread,
    /// Every slice becomes a whole GPU (what a plain device plugin does).
    Whole,
}

impl SimPolicy {
    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        match s {
            "binpack" => Ok(Self::Binpack),
            "spread" => Ok(Self::Spread),
            "whole" => Ok(Self::Whole),
            o => Err(ProtocolError::new(
                "--policy",
                format!("'{o}' is not a policy; accepted: binpack, spread, whole"),
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Binpack => "binpack",
            Self::Spread => "spread",
            Self::Whole => "whole",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub t: f64,
    pub memory_util: f64,
    pub compute_util: f64,
    pub fragmentation: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    pub policy: SimPolicy,
    pub placed: usize,
    pub rejected: usize,
    pub mean_pending_s: f64,
    pub p95_pending_s: f64,
    /// Time-weighted means over the trace.
    pub memory_util: f64,
    pub compute_util: f64,
    pub fragmentation: f64,
    pub samples: Vec<Sample>,
}

/// Fraction of free memory that sits on partly used GPUs, so that a whole-GPU or large
/// request cannot use it.
pub fn fragmentation(c: &Cluster) -> f64 {
    let (mut free, mut stranded) = (0u64, 0u64);
    for n in &c.nodes {
        for (g, u) in n.gpus.iter().zip(&n.usage) {
            if g.info.mode == GpuMode::Mig || u.exclusive {
                continue;
            }
            let f = g.info.memory_mib.saturating_sub(u.memory_mib as u64);
            free += f;
            if u.slices > 0 {
                stranded += f;
            }
        }
    }
    if free == 0 {
        0.0
    } else {
        stranded as f64 / free as f64
    }
}

/// Replays `pods` (parsed from `trace`) on `spec` under `policy`.
pub fn simulate(
    spec: &ClusterSpec,
    trace: &Trace,
    pods: &[PodSpec],
    policy: SimPolicy,
    fair_share: bool,
) -> Result<SimReport, ProtocolError> {
    let mut spec = spec.clone();
    let mut pods: Vec<PodSpec> = pods.to_vec();
    let cfg = Config {
        node_policy: if policy == SimPolicy::Spread {
            Policy::Spread
        } else {
            Policy::Binpack
        },
        gpu_policy: if policy == SimPolicy::Spread {
            Policy::Spread
        } else {
            Policy::Binpack
        },
        fair_share,
        ..Config::default()
    };
    // Memory and compute a pod could use, whatever it was given: utilization counts this.
    let mut useful: Vec<Option<Demand>> = vec![None; pods.len()];
    if policy == SimPolicy::Whole {
        for n in &mut spec.nodes {
            for g in &mut n.gpus {
                if g.mode == GpuMode::Shared {
                    g.mode = GpuMode::Whole;
                    g.slices = 1;
                }
            }
        }
        for (i, p) in pods.iter_mut().enumerate() {
            let mut d = Demand::default();
            for c in &mut p.containers {
                d.memory_mib += c.slices as u64 * c.memory_mib.unwrap_or(0);
                d.compute_percent += c.slices as u64 * c.compute_percent.unwrap_or(100) as u64;
                c.whole += c.slices;
                c.slices = 0;
                c.memory_mib = None;
                c.compute_percent = None;
            }
            p.annotations.node_policy = None;
            p.annotations.gpu_policy = None;
            useful[i] = Some(d);
        }
    } else {
        for p in &mut pods {
            p.annotations.node_policy = None;
            p.annotations.gpu_policy = None;
        }
    }
    let mut cluster = spec.build()?;
    let empty = cluster.clone();
    let cap = cluster.capacity();
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by(|&a, &b| {
        trace.pods[a]
            .arrival
            .total_cmp(&trace.pods[b].arrival)
            .then(a.cmp(&b))
    });
    let mut next_arrival = 0usize;
    let mut pending: Vec<usize> = Vec::new();
    // (end time in ms, pod index)
    let mut running: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut useful_now = Demand::default();
    let mut useful_of: Vec<Demand> = vec![Demand::default(); pods.len()];
    let (mut placed, mut rejected) = (0usize, 0usize);
    let mut waits: Vec<f64> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let ms = |s: f64| (s * 1000.0).round() as u64;
    loop {
        let ta = order.get(next_arrival).map(|&i| ms(trace.pods[i].arrival));
        let td = running.peek().map(|Reverse((t, _))| *t);
        let t = match (ta, td) {
            (None, None) => break,
            (Some(a), None) => a,
            (None, Some(d)) => d,
            (Some(a), Some(d)) => a.min(d),
        };
        while let Some(Reverse((te, i))) = running.peek().copied() {
            if te > t {
                break;
            }
            running.pop();
            cluster.remove_pod(&pods[i].uid);
            useful_now.sub(useful_of[i]);
        }
        while next_arrival < order.len() && ms(trace.pods[order[next_arrival]].arrival) <= t {
            let i = order[next_arrival];
            next_arrival += 1;
            // A pod that does not fit even an empty cluster never will.
            if best_node(&empty, &Candidate::new(&empty, &pods[i], &cfg)).is_err() {
                rejected += 1;
            } else {
                pending.push(i);
            }
        }
        if fair_share {
            let share = |i: usize| {
                let ns = &pods[i].namespace;
                let w = cluster.quotas.get(ns).map_or(1, |q| q.weight);
                dominant_share(cluster.namespace_usage(ns), cap, w)
            };
            let mut keyed: Vec<(f64, usize)> = pending.iter().map(|&i| (share(i), i)).collect();
            keyed.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then(ms(trace.pods[a.1].arrival).cmp(&ms(trace.pods[b.1].arrival)))
            });
            pending = keyed.into_iter().map(|(_, i)| i).collect();
        }
        // Gangs are placed only whole: members wait until all of them are pending.
        let mut gang_members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in &pending {
            if let Some(k) = pods[i].gang_key() {
                gang_members.entry(k).or_default().push(i);
            }
        }
        let mut still = Vec::new();
        let mut done_gangs: std::collections::BTreeSet<String> = Default::default();
        for &i in &pending {
            let group: Vec<usize> = match pods[i].gang_key() {
                Some(k) if done_gangs.contains(&k) => continue,
                Some(k) => {
                    let m = gang_members[&k].clone();
                    done_gangs.insert(k);
                    if (m.len() as u32) < pods[i].gang().map_or(1, |g| g.size) {
                        still.extend(m);
                        continue;
                    }
                    m
                }
                None => vec![i],
            };
            let mut trial = cluster.clone_if(group.len() > 1);
            let target = trial.as_mut().unwrap_or(&mut cluster);
            let mut ok = true;
            for &j in &group {
                let cand = Candidate::new(target, &pods[j], &cfg);
                match best_node(target, &cand) {
                    Ok((n, f)) => {
                        let rec = target.record(n, &pods[j], &f);
                        target.add_pod(rec).expect("a fit never over-commits");
                        useful_of[j] = useful[j].unwrap_or(f.demand);
                    }
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                if let Some(t2) = trial {
                    cluster = t2;
                }
                for &j in &group {
                    placed += 1;
                    waits.push((t as f64 / 1000.0) - trace.pods[j].arrival);
                    running.push(Reverse((t + ms(trace.pods[j].duration), j)));
                    useful_now.add(useful_of[j]);
                }
            } else if group.len() == 1 && trial.is_none() {
                still.push(i);
            } else {
                still.extend(group);
            }
        }
        pending = Vec::new();
        for i in still {
            if (t as f64 / 1000.0) - trace.pods[i].arrival > trace.max_pending_seconds {
                rejected += 1;
            } else {
                pending.push(i);
            }
        }
        samples.push(Sample {
            t: t as f64 / 1000.0,
            memory_util: if cap.memory_mib == 0 {
                0.0
            } else {
                useful_now.memory_mib as f64 / cap.memory_mib as f64
            },
            compute_util: if cap.compute_percent == 0 {
                0.0
            } else {
                useful_now.compute_percent as f64 / cap.compute_percent as f64
            },
            fragmentation: fragmentation(&cluster),
        });
    }
    rejected += pending.len();
    let tw = |f: &dyn Fn(&Sample) -> f64| {
        let (mut acc, mut span) = (0.0, 0.0);
        for w in samples.windows(2) {
            let dt = w[1].t - w[0].t;
            acc += f(&w[0]) * dt;
            span += dt;
        }
        if span == 0.0 { 0.0 } else { acc / span }
    };
    waits.sort_by(f64::total_cmp);
    let mean = if waits.is_empty() {
        0.0
    } else {
        waits.iter().sum::<f64>() / waits.len() as f64
    };
    let p95 = if waits.is_empty() {
        0.0
    } else {
        waits[((waits.len() - 1) as f64 * 0.95).round() as usize]
    };
    Ok(SimReport {
        policy,
        placed,
        rejected,
        mean_pending_s: mean,
        p95_pending_s: p95,
        memory_util: tw(&|s| s.memory_util),
        compute_util: tw(&|s| s.compute_util),
        fragmentation: tw(&|s| s.fragmentation),
        samples,
    })
}

impl Cluster {
    fn clone_if(&self, yes: bool) -> Option<Cluster> {
        yes.then(|| self.clone())
    }
}

//! Does a pod fit on a node, where exactly, and how good is that placement.

use crate::protocol::{ContainerRequest, GangSpec, GpuMode, PodAnnotations, Policy, ProtocolError};

use super::cluster::{Cluster, GpuUsage, Node};
use super::quota::Demand;

/// Global defaults; pods override policies by annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node_policy: Policy,
    pub gpu_policy: Policy,
    /// Default for gangs without `gang-timeout-seconds`.
    pub gang_timeout_seconds: u64,
    /// Enforce dominant-resource fair share between namespaces when the cluster is contended.
    pub fair_share: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_policy: Policy::Binpack,
            gpu_policy: Policy::Binpack,
            gang_timeout_seconds: 300,
            fair_share: true,
        }
    }
}

/// A pod as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub priority: i32,
    pub containers: Vec<ContainerRequest>,
    pub annotations: PodAnnotations,
}

impl PodSpec {
    /// Builds a pod from its containers' resources and its annotations, refusing malformed
    /// ones with the field named.
    pub fn parse<'a>(
        uid: &str,
        namespace: &str,
        name: &str,
        priority: i32,
        containers: impl IntoIterator<Item = (&'a str, Vec<(&'a str, &'a str)>)>,
        annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ProtocolError> {
        let containers = containers
            .into_iter()
            .map(|(n, res)| ContainerRequest::from_resources(n, res))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            priority,
            containers,
            annotations: PodAnnotations::parse(annotations)?,
        })
    }

    /// Whether the pod asks for anything gpuslice schedules.
    pub fn wants_gpus(&self) -> bool {
        self.containers.iter().any(|c| !c.is_empty())
    }

    pub fn gang(&self) -> Option<&GangSpec> {
        self.annotations.gang.as_ref()
    }

    pub fn gang_key(&self) -> Option<String> {
        self.gang()
            .map(|g| format!("{}/{}", self.namespace, g.name))
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One device taken by one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// GPU index within the node.
    pub gpu: u16,
    /// MIG device index within the GPU.
    pub mig: Option<u16>,
    pub memory_mib: u64,
    pub compute: u32,
    pub exclusive: bool,
}

/// A placement of a whole pod on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// (container index, device).
    pub takes: Vec<(u16, Take)>,
    /// 0.0–1.0; higher is better.
    pub score: f64,
    pub demand: Demand,
}

impl Fit {
    /// The extender's 0–10 score.
    pub fn score10(&self) -> i64 {
        Verdict {
            score: self.score,
            demand: self.demand,
        }
        .score10()
    }
}

/// A pod prepared against one cluster: per-model eligibility decided once.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub pod: &'a PodSpec,
    allowed_models: Vec<bool>,
    pub node_policy: Policy,
    pub gpu_policy: Policy,
}

impl<'a> Candidate<'a> {
    pub fn new(cluster: &Cluster, pod: &'a PodSpec, cfg: &Config) -> Self {
        let a = &pod.annotations;
        let allowed_models = cluster
            .models
            .iter()
            .map(|m| {
                let inc = a.model_include.is_empty()
                    || a.model_include.iter().any(|s| m.contains(s.as_str()));
                let exc = a.model_exclude.iter().any(|s| m.contains(s.as_str()));
                inc && !exc
            })
            .collect();
        Self {
            pod,
            allowed_models,
            node_policy: a.node_policy.unwrap_or(cfg.node_policy),
            gpu_policy: a.gpu_policy.unwrap_or(cfg.gpu_policy),
        }
    }

    #[inline]
    fn gpu_allowed(&self, node: &Node, i: usize) -> bool {
        let g = &node.gpus[i];
        g.healthy
            && self
                .allowed_models
                .get(g.model as usize)
                .copied()
                .unwrap_or(false)
            && (self.pod.annotations.uuids.is_empty()
                || self
                    .pod
                    .annotations
                    .uuids
                    .iter()
                    .any(|u| *u == g.info.uuid || g.info.mig.iter().any(|m| m.uuid == *u)))
            && !self.pod.annotations.uuid_exclude.contains(&g.info.uuid)
    }

    fn mig_allowed(&self, node: &Node, i: usize, j: usize) -> bool {
        let g = &node.gpus[i].info;
        let m = &g.mig[j];
        let pins = &self.pod.annotations.uuids;
        m.healthy
            && g.healthy
            && self
                .allowed_models
                .get(node.gpus[i].model as usize)
                .copied()
                .unwrap_or(false)
            && (pins.is_empty() || pins.iter().any(|u| *u == g.uuid || *u == m.uuid))
            && !self
                .pod
                .annotations
                .uuid_exclude
                .iter()
                .any(|u| *u == g.uuid || *u == m.uuid)
    }
}

const STACK_GPUS: usize = 16;

/// Candidate GPU indices of one node (at most 64: NVLink masks are 64 bits).
struct Cands {
    buf: [u16; 64],
    len: usize,
}

impl Default for Cands {
    fn default() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl Cands {
    fn clear(&mut self) {
        self.len = 0;
    }
    fn push(&mut self, i: u16) {
        if self.len < 64 {
            self.buf[self.len] = i;
            self.len += 1;
        }
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_mut(&mut self) -> &mut [u16] {
        &mut self.buf[..self.len]
    }
}

/// Topology tiers of a multi-GPU set: 3 all NVLink-connected, 2 one NUMA node, 1 one PCIe
/// switch, 0 none.
const TIERS: f64 = 3.0;

/// Fits the pod on the node. On failure, the reason says what is short.
pub fn fit_node(node: &Node, c: &Candidate) -> Result<Fit, String> {
    let mut takes: Vec<(u16, Take)> = Vec::new();
    let v = fit_inner(node, c, |ci, t| takes.push((ci, t)))
        .map_err(|r| r.describe(c.pod).to_string())?;
    Ok(Fit {
        takes,
        score: v.score,
        demand: v.demand,
    })
}

/// What filtering needs of a fit: exactly [`fit_node`]'s decision, score and demand, without
/// building the list of devices (only the node bound needs that).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub score: f64,
    pub demand: Demand,
}

impl Verdict {
    /// The extender's 0–10 score, as [`Fit::score10`].
    pub fn score10(&self) -> i64 {
        (self.score * 10.0).round().clamp(0.0, 10.0) as i64
    }
}

/// Why a pod does not fit a node, without the text: the filter refuses thousands of nodes
/// per pod and most refusals read the same, so the text is made only when it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Container `container` found `fit` GPUs for its slices.
    Slices { container: u16, fit: u32 },
    /// Container `container` found `free` whole GPUs.
    Whole { container: u16, free: u32 },
    /// Container `container` found `got` free MIG devices of its `profile`-th profile.
    Mig {
        container: u16,
        profile: u16,
        got: u32,
    },
}

impl Refusal {
    /// The reason as [`fit_node`] gives it, for the pod that was refused.
    pub fn describe<'a>(&self, pod: &'a PodSpec) -> impl std::fmt::Display + 'a {
        RefusalText { r: *self, pod }
    }
}

struct RefusalText<'a> {
    r: Refusal,
    pod: &'a PodSpec,
}

impl std::fmt::Display for RefusalText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = |i: u16| self.pod.containers.get(i as usize);
        match self.r {
            Refusal::Slices { container, fit } => {
                let Some(req) = c(container) else {
                    return write!(f, "container {container}: {fit} GPUs fit");
                };
                write!(
                    f,
                    "container {}: {} of {} slices fit (",
                    req.name, fit, req.slices
                )?;
                match req.memory_mib {
                    Some(m) => write!(f, "{m}")?,
                    None => f.write_str("even-share")?,
                }
                f.write_str(" MiB, ")?;
                match req.compute_percent {
                    Some(k) => write!(f, "{k}")?,
                    None => f.write_str("even-share")?,
                }
                f.write_str(" % each)")
            }
            Refusal::Whole { container, free } => match c(container) {
                Some(req) => write!(
                    f,
                    "container {}: {} of {} whole GPUs free",
                    req.name, free, req.whole
                ),
                None => write!(f, "container {container}: {free} whole GPUs free"),
            },
            Refusal::Mig {
                container,
                profile,
                got,
            } => match c(container)
                .and_then(|req| Some((req, req.mig.iter().nth(profile as usize)?)))
            {
                Some((req, (p, count))) => write!(
                    f,
                    "container {}: {} of {} MIG {} devices free",
                    req.name, got, count, p
                ),
                None => write!(f, "container {container}: {got} MIG devices free"),
            },
        }
    }
}

/// [`fit_verdict`] over many nodes of one cluster, once per node shape: nodes of one
/// [`Node::shape`] get the same verdict unless the pod pins UUIDs, and a cluster is mostly
/// nodes in a few shapes (empty, full, alike). Only for the cluster's own nodes, whose shape
/// ids are current.
pub struct ShapeMemo {
    /// Per shape id; empty when the pod pins UUIDs.
    slots: Vec<Option<Result<Verdict, Refusal>>>,
}

impl ShapeMemo {
    pub fn new(cluster: &Cluster, c: &Candidate) -> Self {
        let slots = if c.pod.annotations.uuids.is_empty() {
            vec![None; cluster.shape_bound()]
        } else {
            Vec::new()
        };
        Self { slots }
    }

    #[inline]
    pub fn verdict(&mut self, node: &Node, c: &Candidate) -> Result<Verdict, Refusal> {
        match self.slots.get_mut(node.shape() as usize) {
            Some(Some(v)) => *v,
            Some(slot) => *slot.insert(fit_verdict(node, c)),
            None => fit_verdict(node, c),
        }
    }
}

/// [`fit_node`] without allocating: runs once per node shape per pod on the filter path.
pub fn fit_verdict(node: &Node, c: &Candidate) -> Result<Verdict, Refusal> {
    fit_inner(node, c, |_, _| {})
}

/// The one fitting algorithm; `take` receives each device chosen, per container index.
fn fit_inner(
    node: &Node,
    c: &Candidate,
    mut take: impl FnMut(u16, Take),
) -> Result<Verdict, Refusal> {
    // Scratch usage on the stack for ordinary nodes: this runs once per node per pod.
    let mut stack = [GpuUsage::default(); STACK_GPUS];
    let mut heap: Vec<GpuUsage>;
    let usage: &mut [GpuUsage] = if node.usage.len() <= STACK_GPUS {
        stack[..node.usage.len()].copy_from_slice(&node.usage);
        &mut stack[..node.usage.len()]
    } else {
        heap = node.usage.to_vec();
        &mut heap
    };
    let mut topo_sum = 0.0;
    let mut topo_n = 0u32;
    let mut demand = Demand::default();
    let mut cands = Cands::default();
    for (ci, req) in c.pod.containers.iter().enumerate() {
        if req.slices > 0 {
            cands.clear();
            for (i, (g, u)) in node.gpus.iter().zip(usage.iter()).enumerate() {
                if g.mode != GpuMode::Shared || u.exclusive || u.slices >= g.slices {
                    continue;
                }
                let (m, k) = match (req.memory_mib, req.compute_percent) {
                    (Some(m), Some(k)) => (m, k),
                    (m, k) => {
                        let (dm, dk) = g.share();
                        (m.unwrap_or(dm), k.unwrap_or(dk))
                    }
                };
                // The cheap arithmetic first: on a busy cluster most GPUs fail it.
                if u.memory_mib as u64 + m <= g.memory_mib as u64
                    && u.compute as u32 + k <= 100
                    && c.gpu_allowed(node, i)
                {
                    cands.push(i as u16);
                }
            }
            if (cands.len() as u32) < req.slices {
                return Err(Refusal::Slices {
                    container: ci as u16,
                    fit: cands.len() as u32,
                });
            }
            let key = |i: u16| {
                let g = &node.gpus[i as usize];
                let m = req.memory_mib.unwrap_or_else(|| g.share().0);
                // Candidates fit, so this does not underflow.
                let free_after = g.memory_mib as u64 - usage[i as usize].memory_mib as u64 - m;
                match c.gpu_policy {
                    Policy::Binpack => free_after as i64,
                    Policy::Spread => -(free_after as i64),
                }
            };
            let (set, tier) = choose_set(node, cands.as_mut(), req.slices as usize, key);
            if req.slices > 1 {
                topo_sum += tier as f64 / TIERS;
                topo_n += 1;
            }
            for &i in set.as_slice() {
                let (dm, dc) = node.gpus[i as usize].share();
                let t = Take {
                    gpu: i,
                    mig: None,
                    memory_mib: req.memory_mib.unwrap_or(dm),
                    compute: req.compute_percent.unwrap_or(dc),
                    exclusive: false,
                };
                let u = &mut usage[i as usize];
                // The GPU was a candidate: the sums stay within its capped figures.
                u.memory_mib += t.memory_mib as u32;
                u.compute += t.compute as u8;
                u.slices += 1;
                demand.memory_mib += t.memory_mib;
                demand.compute_percent += t.compute as u64;
                take(ci as u16, t);
            }
        }
        if req.whole > 0 {
            cands.clear();
            for (i, (g, u)) in node.gpus.iter().zip(usage.iter()).enumerate() {
                if g.mode == GpuMode::Whole
                    && u.slices == 0
                    && !u.exclusive
                    && c.gpu_allowed(node, i)
                {
                    cands.push(i as u16);
                }
            }
            if (cands.len() as u32) < req.whole {
                return Err(Refusal::Whole {
                    container: ci as u16,
                    free: cands.len() as u32,
                });
            }
            let (set, tier) = choose_set(node, cands.as_mut(), req.whole as usize, |i| i as i64);
            if req.whole > 1 {
                topo_sum += tier as f64 / TIERS;
                topo_n += 1;
            }
            for &i in set.as_slice() {
                let g = &node.gpus[i as usize];
                let t = Take {
                    gpu: i,
                    mig: None,
                    memory_mib: g.memory_mib as u64,
                    compute: 100,
                    exclusive: true,
                };
                let u = &mut usage[i as usize];
                u.memory_mib = u.memory_mib.saturating_add(g.memory_mib);
                u.compute = 100;
                u.slices += 1;
                u.exclusive = true;
                demand.memory_mib += t.memory_mib;
                demand.compute_percent += 100;
                take(ci as u16, t);
            }
        }
        for (pi, (profile, &count)) in req.mig.iter().enumerate() {
            let mut got = 0u32;
            // Binpack: GPUs with most MIG devices already taken first; spread: fewest.
            let mut order: Vec<usize> = (0..node.gpus.len())
                .filter(|&i| node.gpus[i].mode == GpuMode::Mig)
                .collect();
            order.sort_by_key(|&i| {
                let taken = usage[i].mig_taken.count_ones() as i64;
                match c.gpu_policy {
                    Policy::Binpack => (-taken, i),
                    Policy::Spread => (taken, i),
                }
            });
            'gpus: for i in order {
                let g = &node.gpus[i].info;
                for (j, m) in g.mig.iter().enumerate() {
                    if got == count {
                        break 'gpus;
                    }
                    if m.profile == *profile
                        && usage[i].mig_taken & (1 << j) == 0
                        && c.mig_allowed(node, i, j)
                    {
                        usage[i].mig_taken |= 1 << j;
                        let compute =
                            ((m.sms as u64 * 100) / g.sms.max(1) as u64).clamp(1, 100) as u32;
                        let t = Take {
                            gpu: i as u16,
                            mig: Some(j as u16),
                            memory_mib: m.memory_mib,
                            compute,
                            exclusive: true,
                        };
                        demand.memory_mib += m.memory_mib;
                        demand.compute_percent += compute as u64;
                        take(ci as u16, t);
                        got += 1;
                    }
                }
            }
            if got < count {
                return Err(Refusal::Mig {
                    container: ci as u16,
                    profile: pi as u16,
                    got,
                });
            }
        }
    }
    let topo = if topo_n == 0 {
        1.0
    } else {
        topo_sum / topo_n as f64
    };
    let s = score(node, usage, c.node_policy, topo);
    Ok(Verdict { score: s, demand })
}

/// Picks `n` GPUs out of `cands`: the best topology tier, and within it the best by `key`
/// (lower is better). Returns the set and its tier.
fn choose_set(node: &Node, cands: &mut [u16], n: usize, key: impl Fn(u16) -> i64) -> (Set, u8) {
    if n == 1 {
        // One GPU: the best by key, without sorting.
        let best = cands
            .iter()
            .copied()
            .min_by_key(|&i| (key(i), i))
            .expect("caller checked n ≤ len");
        return (Set::from(&[best][..]), 3);
    }
    cands.sort_by_key(|&i| (key(i), i));
    if n == 0 {
        return (Set::from(&[][..]), 3);
    }
    // NVLink: a clique grown greedily from each seed in preference order.
    for s in 0..cands.len() {
        let mut set = vec![cands[s]];
        for &o in cands.iter() {
            if set.len() == n {
                break;
            }
            if !set.contains(&o)
                && set
                    .iter()
                    .all(|&x| node.gpus[x as usize].nvlink & (1 << o) != 0)
            {
                set.push(o);
            }
        }
        if set.len() == n {
            return (Set::from(&set[..]), 3);
        }
    }
    let group = |f: &dyn Fn(u16) -> Option<u32>| -> Option<Vec<u16>> {
        for &s in cands.iter() {
            let Some(v) = f(s) else { continue };
            let set: Vec<u16> = cands
                .iter()
                .copied()
                .filter(|&o| f(o) == Some(v))
                .take(n)
                .collect();
            if set.len() == n {
                return Some(set);
            }
        }
        None
    };
    if let Some(set) = group(&|i| node.gpus[i as usize].info.numa) {
        return (Set::from(&set[..]), 2);
    }
    if let Some(set) = group(&|i| node.gpus[i as usize].switch.map(u32::from)) {
        return (Set::from(&set[..]), 1);
    }
    (Set::from(&cands[..n]), 0)
}

/// A chosen set of GPU indices, without allocating.
struct Set {
    buf: [u16; 64],
    len: usize,
}

impl Set {
    fn from(s: &[u16]) -> Self {
        let mut buf = [0; 64];
        let len = s.len().min(64);
        buf[..len].copy_from_slice(&s[..len]);
        Set { buf, len }
    }
    fn as_slice(&self) -> &[u16] {
        &self.buf[..self.len]
    }
}

/// Scores a node's usage after a placement, 0.0–1.0: 60 % the node policy (binpack prefers
/// fuller nodes, spread emptier ones), 20 % topology of multi-GPU sets, 20 % the largest
/// hole left (free memory on the emptiest GPU), which steers away from placements that
/// fragment the last whole GPU.
pub fn score(node: &Node, usage: &[GpuUsage], policy: Policy, topo: f64) -> f64 {
    let mut used = 0u64;
    let mut hole = 0u64;
    for (g, u) in node.gpus.iter().zip(usage) {
        if g.mode == GpuMode::Mig {
            continue;
        }
        used += u.memory_mib as u64;
        if !u.exclusive {
            hole = hole.max(g.memory_mib.saturating_sub(u.memory_mib) as u64);
        }
    }
    let util = if node.total_memory_mib == 0 {
        0.0
    } else {
        used as f64 / node.total_memory_mib as f64
    };
    let pol = match policy {
        Policy::Binpack => util,
        Policy::Spread => 1.0 - util,
    };
    let hole = if node.max_gpu_memory_mib == 0 {
        0.0
    } else {
        hole as f64 / node.max_gpu_memory_mib as f64
    };
    (0.6 * pol + 0.2 * topo + 0.2 * hole).clamp(0.0, 1.0)
}

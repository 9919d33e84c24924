//! The scheduler's picture of the cluster: nodes with their GPUs (from inventories) and the
//! usage that the assignments of placed pods add up to.

use std::collections::{BTreeMap, HashMap};

use crate::protocol::{
    AssignedGpu, Assignment, ContainerAssignment, GpuInfo, GpuMode, Inventory, even_share,
};

use super::fit::{Fit, PodSpec};
use super::quota::{Demand, Quota};

/// What is taken of one GPU: 16 bytes, since the filter reads every GPU of every node for
/// each pod. `Copy` so fitting works on scratch copies. Charging never exceeds the GPU's
/// [`Gpu`] figures, which bound each field's width.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GpuUsage {
    /// Bit i set: the GPU's MIG device i is taken.
    pub mig_taken: u64,
    pub memory_mib: u32,
    pub slices: u16,
    /// Percent, at most 100.
    pub compute: u8,
    pub exclusive: bool,
}

/// One GPU of a node. Fitting reads only the copies at the top (32 bytes per GPU);
/// the inventory entry is boxed so that the node's GPU array stays compact.
#[derive(Debug, Clone)]
pub struct Gpu {
    /// Bit j set: GPU j of the same node is an NVLink peer.
    pub nvlink: u64,
    pub info: Box<GpuInfo>,
    /// `info.memory_mib`, capped at `u32::MAX` MiB (4 PiB).
    pub memory_mib: u32,
    /// Interned model id (index into [`Cluster::models`]).
    pub model: u32,
    /// `info.slices`, capped at `u16::MAX`.
    pub slices: u16,
    /// `info.mode`.
    pub mode: GpuMode,
    /// `info.healthy`.
    pub healthy: bool,
    /// Interned PCIe switch id, unique within the node (`None` past 255 switches, which
    /// only costs such a node the switch tier of its topology score).
    pub switch: Option<u8>,
}

// What the filter streams per GPU; the figures in ARCHITECTURE.md and docs/scheduler.md.
const _: () = assert!(std::mem::size_of::<Gpu>() == 32 && std::mem::size_of::<GpuUsage>() == 16);

impl Gpu {
    /// The even share (memory MiB, compute %) a slice without explicit sizes gets, from the
    /// copies at the top.
    #[inline]
    pub fn share(&self) -> (u64, u32) {
        even_share(self.memory_mib as u64, self.slices as u32)
    }
}

/// GPUs a node keeps inside its record before spilling to the heap: the common 8-GPU node.
pub const INLINE_GPUS: usize = 8;

/// A node's GPUs and their usage are stored inside the node record (up to [`INLINE_GPUS`]),
/// so the filter's pass over thousands of nodes streams one contiguous array instead of taking
/// a cache and TLB miss on a separate heap block per node.
pub type Gpus = smallvec::SmallVec<[Gpu; INLINE_GPUS]>;
pub type Usages = smallvec::SmallVec<[GpuUsage; INLINE_GPUS]>;

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// The name's first bytes, inside the node: see [`Node::is_named`].
    short_name: ShortName,
    pub gpus: Gpus,
    pub usage: Usages,
    /// See [`Node::shape`].
    shape: u32,
    /// Its hardware class id (the shape without the usage).
    class: u32,
    /// Memory of shared and whole-mode GPUs, for utilization scores.
    pub total_memory_mib: u64,
    pub max_gpu_memory_mib: u64,
}

/// Up to [`ShortName::CAP`] bytes of a name and its full length. Typical node names
/// (`ip-10-0-1-17.us-east-1.compute.internal`, `gke-…-pool-1a2b3c4d-x7z9`) fit whole.
#[derive(Debug, Clone, Copy)]
struct ShortName {
    len: usize,
    bytes: [u8; ShortName::CAP],
}

impl ShortName {
    const CAP: usize = 56;

    fn new(name: &str) -> Self {
        let mut bytes = [0u8; Self::CAP];
        let n = name.len().min(Self::CAP);
        bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
        ShortName {
            len: name.len(),
            bytes,
        }
    }
}

impl Node {
    /// Equal for two nodes whose GPUs read the same to fitting: same hardware (models,
    /// memory, slices, modes, health, NVLink and PCIe layout, MIG devices) and the same usage
    /// on each GPU. Names and UUIDs are not part of it, so only pods that pin UUIDs can tell
    /// two nodes of one shape apart. Ids are below [`Cluster::shape_bound`].
    #[inline]
    pub fn shape(&self) -> u32 {
        self.shape
    }

    /// The hardware half of the shape: what upsert saw, with UUIDs, indices and switch names
    /// replaced by the node-local masks and ids that fitting reads.
    fn class_key(&self) -> ClassKey {
        self.gpus
            .iter()
            .map(|g| {
                let mut info = (*g.info).clone();
                info.uuid.clear();
                info.index = 0;
                info.nvlink_peers.clear();
                info.pcie_switch = None;
                for m in &mut info.mig {
                    m.uuid.clear();
                }
                (info, g.nvlink, g.switch)
            })
            .collect()
    }

    /// Whether the node is called `name`. Names that fit [`ShortName`] are compared without
    /// reading the `String`'s heap block: a pass over thousands of nodes in order would
    /// otherwise take a cache miss per node just to confirm each one's name.
    #[inline]
    pub fn is_named(&self, name: &str) -> bool {
        let k = &self.short_name;
        if k.len != name.len() {
            return false;
        }
        if k.len <= ShortName::CAP {
            k.bytes[..k.len] == *name.as_bytes()
        } else {
            self.name == name
        }
    }

    pub fn used_memory_mib(&self) -> u64 {
        self.usage.iter().map(|u| u.memory_mib as u64).sum()
    }

    fn locate(&self, uuid: &str) -> Option<(usize, Option<usize>)> {
        for (i, g) in self.gpus.iter().enumerate() {
            if g.info.uuid == uuid {
                return Some((i, None));
            }
            if let Some(j) = g.info.mig.iter().position(|m| m.uuid == uuid) {
                return Some((i, Some(j)));
            }
        }
        None
    }
}

type ClassKey = Vec<(GpuInfo, u64, Option<u8>)>;

/// Ids for equal keys, counted by holder and reused once no holder is left, so a scheduler
/// that runs for months keeps only the shapes its nodes have now.
#[derive(Debug, Clone)]
struct Interner<K> {
    ids: HashMap<K, (u32, u32)>,
    free: Vec<u32>,
    bound: u32,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            free: Vec::new(),
            bound: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq> Interner<K> {
    fn acquire(&mut self, k: K) -> u32 {
        if let Some((id, refs)) = self.ids.get_mut(&k) {
            *refs += 1;
            return *id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.bound += 1;
            self.bound - 1
        });
        self.ids.insert(k, (id, 1));
        id
    }

    fn release(&mut self, k: &K) {
        if let Some((id, refs)) = self.ids.get_mut(k) {
            *refs -= 1;
            if *refs == 0 {
                self.free.push(*id);
                self.ids.remove(k);
            }
        }
    }
}

/// A pod the cluster already holds resources for (bound, or reserved for a gang).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub priority: i32,
    pub assignment: Assignment,
    /// `namespace/gang` when the pod belongs to a gang.
    pub gang: Option<String>,
    pub demand: Demand,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("node '{0}' is not known")]
    UnknownNode(String),
    #[error("pod {pod}: device '{uuid}' is not on node '{node}'")]
    UnknownDevice {
        pod: String,
        node: String,
        uuid: String,
    },
    #[error("pod {pod}: GPU '{uuid}' would be over-committed ({what})")]
    Overcommit {
        pod: String,
        uuid: String,
        what: String,
    },
    #[error("pod uid '{0}' is already placed")]
    Duplicate(String),
}

/// The whole picture. Nodes are addressed by index on hot paths and by name at the edges.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Read freely; changed only through the methods below, which keep each node's shape id
    /// (what the filter's once-per-shape fitting trusts) current.
    pub nodes: Vec<Node>,
    index: HashMap<String, usize>,
    pub models: Vec<String>,
    pub pods: HashMap<String, PodRecord>,
    pub quotas: BTreeMap<String, Quota>,
    pub ns_usage: BTreeMap<String, Demand>,
    /// Bumped by every change, so callers can tell whether cached decisions still hold.
    pub generation: u64,
    /// Pod uids by the node their assignment names, so a node update re-applies only its own.
    by_node: HashMap<String, std::collections::BTreeSet<String>>,
    classes: Interner<ClassKey>,
    shapes: Interner<(u32, Usages)>,
}

impl Cluster {
    /// What namespace `ns` holds across the cluster (nothing if it holds nothing).
    pub fn namespace_usage(&self, ns: &str) -> Demand {
        self.ns_usage.get(ns).copied().unwrap_or_default()
    }

    pub fn new() -> Self {
        Self::default()
    }

    /// Every [`Node::shape`] is below this; it is at most the number of nodes' distinct shapes
    /// at their peak, so a per-shape table indexed by id stays small.
    pub fn shape_bound(&self) -> usize {
        self.shapes.bound as usize
    }

    /// Gives up node `i`'s shape and class ids (before it changes or goes).
    fn unshape(&mut self, i: usize) {
        let n = &self.nodes[i];
        self.shapes.release(&(n.class, n.usage.clone()));
        let key = n.class_key();
        self.classes.release(&key);
    }

    /// Charges or gives back an assignment on node `i`, keeping its shape id current.
    fn apply_at(
        &mut self,
        i: usize,
        pod: &str,
        a: &Assignment,
        sign: i64,
    ) -> Result<(), ClusterError> {
        let n = &mut self.nodes[i];
        let old = n.usage.clone();
        apply(n, pod, a, sign)?;
        if n.usage != old {
            self.shapes.release(&(n.class, old));
            n.shape = self.shapes.acquire((n.class, n.usage.clone()));
        }
        Ok(())
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.node_index(name).map(|i| &self.nodes[i])
    }

    fn intern_model(&mut self, m: &str) -> u32 {
        match self.models.iter().position(|x| x == m) {
            Some(i) => i as u32,
            None => {
                self.models.push(m.to_string());
                (self.models.len() - 1) as u32
            }
        }
    }

    /// Adds or replaces a node's inventory; the usage of pods already on it is re-applied.
    /// Pods whose devices vanished keep their record but no longer count on the node.
    pub fn upsert_node(&mut self, name: &str, inv: &Inventory) {
        self.generation += 1;
        let mut gpus = Gpus::with_capacity(inv.gpus.len());
        let usage: Usages = smallvec::smallvec![GpuUsage::default(); inv.gpus.len()];
        let mut switches: Vec<&str> = Vec::new();
        for g in &inv.gpus {
            let model = self.intern_model(&g.model);
            let switch =
                g.pcie_switch
                    .as_deref()
                    .map(|s| match switches.iter().position(|x| *x == s) {
                        Some(i) => i as u32,
                        None => {
                            switches.push(s);
                            (switches.len() - 1) as u32
                        }
                    });
            gpus.push(Gpu {
                nvlink: 0,
                info: Box::new(g.clone()),
                memory_mib: u32::try_from(g.memory_mib).unwrap_or(u32::MAX),
                model,
                slices: u16::try_from(g.slices).unwrap_or(u16::MAX),
                mode: g.mode,
                healthy: g.healthy,
                switch: switch.and_then(|i| u8::try_from(i).ok()),
            });
        }
        for i in 0..gpus.len() {
            let mut mask = 0u64;
            for (j, other) in inv.gpus.iter().enumerate() {
                let linked = inv.gpus[i].nvlink_peers.iter().any(|p| p == &other.uuid)
                    || other.nvlink_peers.iter().any(|p| p == &inv.gpus[i].uuid);
                if j != i && j < 64 && linked {
                    mask |= 1 << j;
                }
            }
            gpus[i].nvlink = mask;
        }
        let total = inv
            .gpus
            .iter()
            .filter(|g| g.mode != GpuMode::Mig)
            .map(|g| g.memory_mib)
            .sum();
        let max = inv.gpus.iter().map(|g| g.memory_mib).max().unwrap_or(0);
        let mut node = Node {
            name: name.to_string(),
            short_name: ShortName::new(name),
            usage,
            gpus,
            shape: 0,
            class: 0,
            total_memory_mib: total,
            max_gpu_memory_mib: max,
        };
        node.class = self.classes.acquire(node.class_key());
        node.shape = self.shapes.acquire((node.class, node.usage.clone()));
        let idx = match self.index.get(name) {
            Some(&i) => {
                self.unshape(i);
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        let uids: Vec<String> = self
            .by_node
            .get(name)
            .map(|u| u.iter().cloned().collect())
            .unwrap_or_default();
        for uid in uids {
            if let Some(p) = self.pods.get(&uid) {
                let a = p.assignment.clone();
                let _ = self.apply_at(idx, &uid, &a, 1);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        self.generation += 1;
        if let Some(i) = self.index.remove(name) {
            self.unshape(i);
            self.nodes.swap_remove(i);
            if i < self.nodes.len() {
                let moved = self.nodes[i].name.clone();
                self.index.insert(moved, i);
            }
        }
    }

    /// Records a placed pod and charges its assignment. Refuses an assignment that names a
    /// device the node lacks or that would over-commit a GPU; the cluster is then unchanged.
    pub fn add_pod(&mut self, rec: PodRecord) -> Result<(), ClusterError> {
        if self.pods.contains_key(&rec.uid) {
            return Err(ClusterError::Duplicate(rec.uid));
        }
        let i = self
            .node_index(&rec.assignment.node)
            .ok_or_else(|| ClusterError::UnknownNode(rec.assignment.node.clone()))?;
        self.apply_at(i, &rec.uid, &rec.assignment, 1)?;
        self.generation += 1;
        let u = self.ns_usage.entry(rec.namespace.clone()).or_default();
        u.add(rec.demand);
        self.by_node
            .entry(rec.assignment.node.clone())
            .or_default()
            .insert(rec.uid.clone());
        self.pods.insert(rec.uid.clone(), rec);
        Ok(())
    }

    /// Forgets a pod and gives its devices back. Unknown uids are ignored (idempotent).
    pub fn remove_pod(&mut self, uid: &str) -> Option<PodRecord> {
        let rec = self.pods.remove(uid)?;
        self.generation += 1;
        if let Some(set) = self.by_node.get_mut(&rec.assignment.node) {
            set.remove(uid);
            if set.is_empty() {
                self.by_node.remove(&rec.assignment.node);
            }
        }
        if let Some(i) = self.node_index(&rec.assignment.node) {
            let _ = self.apply_at(i, uid, &rec.assignment, -1);
        }
        if let Some(u) = self.ns_usage.get_mut(&rec.namespace) {
            u.sub(rec.demand);
        }
        Some(rec)
    }

    /// Turns a fit on node `node` into the protocol's assignment.
    pub fn assignment(&self, node: usize, pod: &PodSpec, fit: &Fit) -> Assignment {
        let n = &self.nodes[node];
        let mut containers: Vec<ContainerAssignment> = Vec::new();
        for (ci, c) in pod.containers.iter().enumerate() {
            let gpus: Vec<AssignedGpu> = fit
                .takes
                .iter()
                .filter(|(i, _)| *i as usize == ci)
                .map(|(_, t)| {
                    let g = &n.gpus[t.gpu as usize].info;
                    match t.mig {
                        Some(m) => AssignedGpu {
                            uuid: g.mig[m as usize].uuid.clone(),
                            memory_mib: t.memory_mib,
                            compute_percent: t.compute,
                            exclusive: true,
                            mig: Some(g.mig[m as usize].profile.clone()),
                        },
                        None => AssignedGpu {
                            uuid: g.uuid.clone(),
                            memory_mib: t.memory_mib,
                            compute_percent: t.compute,
                            exclusive: t.exclusive,
                            mig: None,
                        },
                    }
                })
                .collect();
            if !gpus.is_empty() {
                containers.push(ContainerAssignment {
                    name: c.name.clone(),
                    gpus,
                });
            }
        }
        Assignment::new(n.name.clone(), containers)
    }

    /// Places `pod` on `node` with `fit`: the record the cluster keeps.
    pub fn record(&self, node: usize, pod: &PodSpec, fit: &Fit) -> PodRecord {
        PodRecord {
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            priority: pod.priority,
            assignment: self.assignment(node, pod, fit),
            gang: pod.gang_key(),
            demand: fit.demand,
        }
    }

    /// Total memory (MiB) and compute (percent units) of the cluster's non-MIG GPUs plus MIG
    /// devices, for fair-share denominators.
    pub fn capacity(&self) -> Demand {
        let mut d = Demand::default();
        for n in &self.nodes {
            for g in &n.gpus {
                d.memory_mib += g.info.memory_mib;
                d.compute_percent += 100;
            }
        }
        d
    }
}

/// Charges (`sign` = 1) or gives back (`sign` = -1) an assignment on a node. Charging checks
/// every device first, so a refused assignment changes nothing.
/// The node's shape id is left as it was: that suits scratch copies, which are fitted
/// directly; nodes of the cluster change through `Cluster::apply_at`.
pub(crate) fn apply(
    node: &mut Node,
    pod: &str,
    a: &Assignment,
    sign: i64,
) -> Result<(), ClusterError> {
    let mut scratch = node.usage.clone();
    for c in &a.containers {
        for g in &c.gpus {
            let (i, mig) = node
                .locate(&g.uuid)
                .ok_or_else(|| ClusterError::UnknownDevice {
                    pod: pod.to_string(),
                    node: node.name.clone(),
                    uuid: g.uuid.clone(),
                })?;
            let u = &mut scratch[i];
            let gpu = &node.gpus[i];
            let info = &gpu.info;
            let over = |what: String| ClusterError::Overcommit {
                pod: pod.to_string(),
                uuid: info.uuid.clone(),
                what,
            };
            if sign > 0 {
                if let Some(j) = mig {
                    if u.mig_taken & (1 << j) != 0 {
                        return Err(over(format!("MIG device {} taken twice", g.uuid)));
                    }
                    u.mig_taken |= 1 << j;
                    continue;
                }
                if u.exclusive || (g.exclusive && u.slices > 0) {
                    return Err(over("exclusive use".into()));
                }
                // Checked against the GPU's capped copies, so each sum fits its field.
                if u.memory_mib as u64 + g.memory_mib > gpu.memory_mib as u64 {
                    return Err(over(format!(
                        "memory {} + {} > {} MiB",
                        u.memory_mib, g.memory_mib, gpu.memory_mib
                    )));
                }
                if u.compute as u64 + g.compute_percent as u64 > 100 {
                    return Err(over(format!(
                        "compute {} + {} > 100 %",
                        u.compute, g.compute_percent
                    )));
                }
                if u.slices >= gpu.slices {
                    return Err(over(format!("slices {} + 1 > {}", u.slices, gpu.slices)));
                }
                u.memory_mib += g.memory_mib as u32;
                u.compute += g.compute_percent as u8;
                u.slices += 1;
                u.exclusive |= g.exclusive;
            } else {
                if let Some(j) = mig {
                    u.mig_taken &= !(1 << j);
                    continue;
                }
                u.memory_mib = (u.memory_mib as u64).saturating_sub(g.memory_mib) as u32;
                u.compute = (u.compute as u32).saturating_sub(g.compute_percent) as u8;
                u.slices = u.slices.saturating_sub(1);
                if g.exclusive {
                    u.exclusive = false;
                }
            }
        }
    }
    node.usage = scratch;
    Ok(())
}

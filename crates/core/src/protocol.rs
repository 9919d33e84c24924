//! The scheduler ↔ node protocol, version 1: resource names, the node inventory the agent
//! publishes, the assignment the scheduler writes at bind, and the pod annotations that steer
//! placement. `docs/protocol.md` is the prose form of this module.
//!
//! Every parser here refuses malformed input with a message naming the field (as a JSON path
//! such as `gpus[2].memoryMiB`, or an annotation/resource name) and the accepted form. Nothing
//! is defaulted to "unlimited".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The protocol version this build reads and writes. A document with another version is
/// refused, not guessed at.
pub const PROTOCOL_VERSION: u32 = 1;

/// Slices: each unit is one share of one GPU. A container asking for N gets N shares on N
/// distinct GPUs. Advertised by the node agent through the device plugin.
pub const RESOURCE_GPU: &str = "gpuslice.io/gpu";
/// GPU memory per slice, in MiB. Decided by the scheduler; not advertised by nodes
/// (kube-scheduler ignores it, kubelet drops extended resources the node does not have).
pub const RESOURCE_GPU_MEMORY: &str = "gpuslice.io/gpu-memory";
/// Compute per slice, in percent of one GPU (1–100). Scheduler-only, like memory.
pub const RESOURCE_GPU_COMPUTE: &str = "gpuslice.io/gpu-compute";
/// Whole GPUs, exclusively. Advertised by the node agent.
pub const RESOURCE_WHOLE_GPU: &str = "gpuslice.io/whole-gpu";
/// MIG devices: `gpuslice.io/mig-<profile>`, e.g. `gpuslice.io/mig-1g.10gb`; see
/// [`mig_resource`] for profiles with a `+`.
pub const RESOURCE_MIG_PREFIX: &str = "gpuslice.io/mig-";

/// The resource name of MIG devices of `profile`. A Kubernetes resource name may not hold a
/// `+`, so `1g.10gb+me` is advertised as `gpuslice.io/mig-1g.10gb.me`, the spelling NVIDIA's
/// device plugin uses for its `nvidia.com/mig-` resources.
pub fn mig_resource(profile: &str) -> String {
    format!("{RESOURCE_MIG_PREFIX}{}", profile.replace('+', "."))
}

/// The MIG profile a resource name stands for (`gpuslice.io/mig-1g.10gb.me` → `1g.10gb+me`),
/// or `None` for a resource outside [`RESOURCE_MIG_PREFIX`]. The `+me` spelling is accepted too.
pub fn mig_profile_of(resource: &str) -> Option<String> {
    let p = resource.strip_prefix(RESOURCE_MIG_PREFIX)?;
    Some(match p.strip_suffix(".me") {
        Some(base) => format!("{base}+me"),
        None => p.to_string(),
    })
}

/// Every resource the extender must be asked about, with whether kube-scheduler ignores it
/// (`managedResources` of kube-scheduler's extender configuration): slices, whole GPUs, the
/// scheduler-only memory and compute, and a MIG resource for every profile of every GPU model
/// whose geometry is built in (`crate::mig::MODELS`), so that no MIG request bypasses the
/// extender. kube-scheduler calls the extender only for pods asking for one of these.
pub fn managed_resources() -> Vec<(String, bool)> {
    let mut out = vec![
        (RESOURCE_GPU.to_string(), false),
        (RESOURCE_WHOLE_GPU.to_string(), false),
        (RESOURCE_GPU_MEMORY.to_string(), true),
        (RESOURCE_GPU_COMPUTE.to_string(), true),
    ];
    let mut mig: BTreeSet<String> = BTreeSet::new();
    for m in crate::mig::MODELS {
        for p in m.profiles {
            mig.insert(mig_resource(p.name));
        }
    }
    out.extend(mig.into_iter().map(|r| (r, false)));
    out
}

/// Most memory one slice may ask for: 1 TiB, several times the largest GPU's. Larger
/// `gpuslice.io/gpu-memory` values are bytes written where MiB are counted.
pub const MAX_SLICE_MEMORY_MIB: u64 = 1 << 20;

/// Node annotation: the node's GPU inventory (JSON, [`Inventory`]), written by the agent.
pub const ANNOTATION_INVENTORY: &str = "gpuslice.io/inventory";
/// Pod annotation: the scheduler's decision (JSON, [`Assignment`]), written before the Binding.
pub const ANNOTATION_ASSIGNMENT: &str = "gpuslice.io/assignment";
/// Pod annotation: node-level policy, `binpack` or `spread`.
pub const ANNOTATION_NODE_POLICY: &str = "gpuslice.io/node-policy";
/// Pod annotation: GPU-level policy (which GPU inside a node), `binpack` or `spread`.
pub const ANNOTATION_GPU_POLICY: &str = "gpuslice.io/gpu-policy";
/// Pod annotation: comma-separated GPU model substrings; only matching GPUs are used.
pub const ANNOTATION_MODEL_INCLUDE: &str = "gpuslice.io/gpu-model-include";
/// Pod annotation: comma-separated GPU model substrings; matching GPUs are never used.
pub const ANNOTATION_MODEL_EXCLUDE: &str = "gpuslice.io/gpu-model-exclude";
/// Pod annotation: comma-separated GPU UUIDs; only these GPUs are used.
pub const ANNOTATION_UUID_PIN: &str = "gpuslice.io/gpu-uuid";
/// Pod annotation: comma-separated GPU (or MIG device) UUIDs; these are never used.
pub const ANNOTATION_UUID_EXCLUDE: &str = "gpuslice.io/gpu-uuid-exclude";
/// Pod annotation: gang name (scoped to the pod's namespace).
pub const ANNOTATION_GANG_NAME: &str = "gpuslice.io/gang";
/// Pod annotation: number of pods in the gang (≥ 1); required with a gang name.
pub const ANNOTATION_GANG_SIZE: &str = "gpuslice.io/gang-size";
/// Pod annotation: seconds a partial gang's reservations are held before release.
pub const ANNOTATION_GANG_TIMEOUT: &str = "gpuslice.io/gang-timeout-seconds";

/// Refusal of a protocol document or annotation; `field` names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ProtocolError {
    pub field: String,
    pub reason: String,
}

impl ProtocolError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(what: &str, s: &str) -> Result<T, ProtocolError> {
    let de = &mut serde_json::Deserializer::from_str(s);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            what.to_string()
        } else {
            format!("{what}: {path}")
        };
        ProtocolError::new(field, e.into_inner().to_string())
    })
}

fn check_version(what: &str, v: u32) -> Result<(), ProtocolError> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::new(
            format!("{what}: version"),
            format!("version {v} is not supported; this build speaks version {PROTOCOL_VERSION}"),
        ))
    }
}

/// How a GPU is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// Shared by slices (`gpuslice.io/gpu`) with memory and compute caps.
    Shared,
    /// Handed out whole (`gpuslice.io/whole-gpu`).
    Whole,
    /// Partitioned into MIG devices (`gpuslice.io/mig-<profile>`).
    Mig,
}

/// One MIG device as the agent found it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigDevice {
    pub uuid: String,
    pub profile: String,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    pub sms: u32,
    #[serde(default = "yes")]
    pub healthy: bool,
    /// The GPU instance's first memory slice, when the agent knows it; the scheduler's MIG
    /// layout hint needs it to tell which slices are free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u8>,
}

fn yes() -> bool {
    true
}

/// One physical GPU of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuInfo {
    pub uuid: String,
    pub index: u32,
    pub model: String,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    pub sms: u32,
    /// NUMA node of the GPU's PCIe root, if known.
    #[serde(default)]
    pub numa: Option<u32>,
    /// UUIDs of GPUs reachable over NVLink.
    #[serde(default)]
    pub nvlink_peers: Vec<String>,
    /// An identifier of the PCIe switch above the GPU (GPUs with equal ids share it).
    #[serde(default)]
    pub pcie_switch: Option<String>,
    /// How many slices this GPU is offered as (shared mode); 1 for whole and MIG.
    pub slices: u32,
    pub mode: GpuMode,
    #[serde(default)]
    pub mig: Vec<MigDevice>,
    #[serde(default = "yes")]
    pub healthy: bool,
}

/// The node annotation [`ANNOTATION_INVENTORY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inventory {
    pub version: u32,
    pub gpus: Vec<GpuInfo>,
}

impl Inventory {
    pub fn new(gpus: Vec<GpuInfo>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            gpus,
        }
    }

    /// Parses and validates an inventory annotation.
    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        let inv: Inventory = parse_json(ANNOTATION_INVENTORY, s)?;
        inv.validate()?;
        Ok(inv)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("inventory serializes")
    }

    pub fn validate(&self) -> Result<(), ProtocolError> {
        let w = ANNOTATION_INVENTORY;
        check_version(w, self.version)?;
        let mut uuids = BTreeSet::new();
        let mut indices = BTreeSet::new();
        for (i, g) in self.gpus.iter().enumerate() {
            let f = |name: &str| format!("{w}: gpus[{i}].{name}");
            if g.uuid.trim().is_empty() {
                return Err(ProtocolError::new(f("uuid"), "must not be empty"));
            }
            if !uuids.insert(g.uuid.as_str()) {
                return Err(ProtocolError::new(
                    f("uuid"),
                    format!("'{}' appears twice", g.uuid),
                ));
            }
            if !indices.insert(g.index) {
                return Err(ProtocolError::new(
                    f("index"),
                    format!("{} appears twice", g.index),
                ));
            }
            if g.memory_mib == 0 {
                return Err(ProtocolError::new(f("memoryMiB"), "must be at least 1"));
            }
            if g.slices == 0 {
                return Err(ProtocolError::new(f("slices"), "must be at least 1"));
            }
            if g.mode != GpuMode::Shared && g.slices != 1 {
                return Err(ProtocolError::new(
                    f("slices"),
                    "must be 1 unless mode is \"shared\"",
                ));
            }
            if g.mode != GpuMode::Mig && !g.mig.is_empty() {
                return Err(ProtocolError::new(
                    f("mig"),
                    "MIG devices listed but mode is not \"mig\"",
                ));
            }
            if g.nvlink_peers.iter().any(|p| p == &g.uuid) {
                return Err(ProtocolError::new(
                    f("nvlinkPeers"),
                    "a GPU cannot be its own peer",
                ));
            }
            let mut mig_mem = 0u64;
            for (j, m) in g.mig.iter().enumerate() {
                let mf = |name: &str| format!("{w}: gpus[{i}].mig[{j}].{name}");
                if m.uuid.trim().is_empty() {
                    return Err(ProtocolError::new(mf("uuid"), "must not be empty"));
                }
                if !uuids.insert(m.uuid.as_str()) {
                    return Err(ProtocolError::new(
                        mf("uuid"),
                        format!("'{}' appears twice", m.uuid),
                    ));
                }
                if !valid_profile_name(&m.profile) {
                    return Err(ProtocolError::new(
                        mf("profile"),
                        format!(
                            "'{}' is not a MIG profile name (e.g. 1g.10gb, 3g.40gb)",
                            m.profile
                        ),
                    ));
                }
                if m.memory_mib == 0 {
                    return Err(ProtocolError::new(mf("memoryMiB"), "must be at least 1"));
                }
                mig_mem += m.memory_mib;
            }
            if mig_mem > g.memory_mib {
                return Err(ProtocolError::new(
                    f("mig"),
                    format!(
                        "MIG devices hold {mig_mem} MiB, more than the GPU's {} MiB",
                        g.memory_mib
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `1g.10gb`, `3g.40gb`, `1g.10gb+me`: the shape of a MIG profile name (not its existence on a
/// model; the MIG module knows that).
pub fn valid_profile_name(p: &str) -> bool {
    let base = p.strip_suffix("+me").unwrap_or(p);
    let Some((c, m)) = base.split_once("g.") else {
        return false;
    };
    let Some(m) = m.strip_suffix("gb") else {
        return false;
    };
    !c.is_empty()
        && c.bytes().all(|b| b.is_ascii_digit())
        && !m.is_empty()
        && m.bytes().all(|b| b.is_ascii_digit())
}

/// One device given to a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignedGpu {
    /// The physical GPU's UUID, or the MIG device's UUID when `mig` is set.
    pub uuid: String,
    /// The memory cap for this container on this device.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    /// The compute quota in percent of the device.
    pub compute_percent: u32,
    /// True for a whole GPU: no other container shares it.
    #[serde(default)]
    pub exclusive: bool,
    /// The MIG profile, when the device is a MIG device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerAssignment {
    pub name: String,
    pub gpus: Vec<AssignedGpu>,
}

/// The pod annotation [`ANNOTATION_ASSIGNMENT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Assignment {
    pub version: u32,
    pub node: String,
    pub containers: Vec<ContainerAssignment>,
}

impl Assignment {
    pub fn new(node: impl Into<String>, containers: Vec<ContainerAssignment>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            node: node.into(),
            containers,
        }
    }

    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        let a: Assignment = parse_json(ANNOTATION_ASSIGNMENT, s)?;
        a.validate()?;
        Ok(a)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("assignment serializes")
    }

    pub fn validate(&self) -> Result<(), ProtocolError> {
        let w = ANNOTATION_ASSIGNMENT;
        check_version(w, self.version)?;
        if self.node.trim().is_empty() {
            return Err(ProtocolError::new(
                format!("{w}: node"),
                "must not be empty",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.containers.iter().enumerate() {
            if !names.insert(c.name.as_str()) {
                return Err(ProtocolError::new(
                    format!("{w}: containers[{i}].name"),
                    format!("'{}' appears twice", c.name),
                ));
            }
            let mut seen = BTreeSet::new();
            for (j, g) in c.gpus.iter().enumerate() {
                let f = |name: &str| format!("{w}: containers[{i}].gpus[{j}].{name}");
                if g.uuid.trim().is_empty() {
                    return Err(ProtocolError::new(f("uuid"), "must not be empty"));
                }
                if !seen.insert(g.uuid.as_str()) {
                    return Err(ProtocolError::new(
                        f("uuid"),
                        "a container's slices must be on distinct GPUs",
                    ));
                }
                if g.memory_mib == 0 {
                    return Err(ProtocolError::new(f("memoryMiB"), "must be at least 1"));
                }
                if !(1..=100).contains(&g.compute_percent) {
                    return Err(ProtocolError::new(f("computePercent"), "must be 1..=100"));
                }
            }
        }
        Ok(())
    }

    /// The devices given to one container, if it has any.
    pub fn container(&self, name: &str) -> Option<&ContainerAssignment> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// What one container asks for, read from its resource limits (requests where limits lack
/// them; extended resources must be equal in both anyway).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRequest {
    pub name: String,
    /// Number of slices, each on a distinct GPU.
    pub slices: u32,
    /// Memory per slice in MiB; `None` = the GPU's memory divided by its slice count.
    pub memory_mib: Option<u64>,
    /// Compute per slice in percent; `None` = 100 divided by the GPU's slice count.
    pub compute_percent: Option<u32>,
    /// Whole GPUs.
    pub whole: u32,
    /// MIG devices by profile.
    pub mig: BTreeMap<String, u32>,
}

impl ContainerRequest {
    pub fn is_empty(&self) -> bool {
        self.slices == 0 && self.whole == 0 && self.mig.values().all(|&n| n == 0)
    }

    /// Parses a container's resources (name → Kubernetes quantity string). Resources outside
    /// `gpuslice.io/` are ignored; unknown `gpuslice.io/` resources are refused.
    pub fn from_resources<'a>(
        name: &str,
        resources: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ProtocolError> {
        let mut r = ContainerRequest {
            name: name.to_string(),
            ..Default::default()
        };
        for (k, v) in resources {
            if !k.starts_with("gpuslice.io/") {
                continue;
            }
            let field = format!("container {name}: resource {k}");
            let n = parse_count(&field, v)?;
            match k {
                RESOURCE_GPU => r.slices = to_u32(&field, n)?,
                RESOURCE_GPU_MEMORY => {
                    // The resource counts MiB, so `4Gi` is 4·2^30 MiB: far beyond any GPU, and
                    // almost surely bytes meant. Refused with the number that was meant.
                    if n > MAX_SLICE_MEMORY_MIB {
                        return Err(ProtocolError::new(
                            field,
                            format!(
                                "'{v}' is {n} MiB, more than any GPU has (the resource counts MiB; {v} bytes would be {})",
                                n >> 20
                            ),
                        ));
                    }
                    r.memory_mib = Some(n)
                }
                RESOURCE_GPU_COMPUTE => {
                    if !(1..=100).contains(&n) {
                        return Err(ProtocolError::new(
                            field,
                            format!("'{v}' must be 1..=100 (percent of one GPU)"),
                        ));
                    }
                    r.compute_percent = Some(n as u32)
                }
                RESOURCE_WHOLE_GPU => r.whole = to_u32(&field, n)?,
                _ => {
                    let Some(p) = mig_profile_of(k) else {
                        return Err(ProtocolError::new(
                            field,
                            format!(
                                "unknown gpuslice resource; accepted: {RESOURCE_GPU}, {RESOURCE_GPU_MEMORY}, {RESOURCE_GPU_COMPUTE}, {RESOURCE_WHOLE_GPU}, {RESOURCE_MIG_PREFIX}<profile>"
                            ),
                        ));
                    };
                    if !valid_profile_name(&p) {
                        return Err(ProtocolError::new(
                            field,
                            format!("'{p}' is not a MIG profile name (e.g. 1g.10gb)"),
                        ));
                    }
                    if n > 0 {
                        r.mig.insert(p, to_u32(&field, n)?);
                    }
                }
            }
        }
        if r.slices == 0 && (r.memory_mib.is_some() || r.compute_percent.is_some()) {
            return Err(ProtocolError::new(
                format!("container {name}: resource {RESOURCE_GPU}"),
                format!(
                    "{RESOURCE_GPU_MEMORY}/{RESOURCE_GPU_COMPUTE} are per slice and need {RESOURCE_GPU} ≥ 1"
                ),
            ));
        }
        if r.memory_mib == Some(0) {
            return Err(ProtocolError::new(
                format!("container {name}: resource {RESOURCE_GPU_MEMORY}"),
                "must be at least 1 MiB",
            ));
        }
        Ok(r)
    }
}

fn to_u32(field: &str, n: u64) -> Result<u32, ProtocolError> {
    u32::try_from(n).map_err(|_| ProtocolError::new(field, format!("{n} is too large")))
}

/// Resources and counting annotations are Kubernetes quantities, read by the one parser
/// (`crate::quantity::Quantity`): the API server canonicalizes `16000` to `16k`, and users may
/// write `1e3`. Ours are whole numbers: a fraction (`0.5`, `100m`) or a negative value is
/// refused, naming the field, never rounded.
fn parse_count(field: &str, v: &str) -> Result<u64, ProtocolError> {
    crate::quantity::Quantity::parse_whole(v).map_err(|e| ProtocolError::new(field, e.to_string()))
}

/// Node- or GPU-level placement preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Fill the fullest node/GPU first; keeps whole GPUs and nodes free.
    #[default]
    Binpack,
    /// Use the emptiest node/GPU first; spreads interference.
    Spread,
}

impl Policy {
    pub fn parse(field: &str, s: &str) -> Result<Self, ProtocolError> {
        match s.trim() {
            "binpack" => Ok(Policy::Binpack),
            "spread" => Ok(Policy::Spread),
            other => Err(ProtocolError::new(
                field,
                format!("'{other}' is not a policy; accepted: binpack, spread"),
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Binpack => "binpack",
            Policy::Spread => "spread",
        })
    }
}

/// Gang membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GangSpec {
    pub name: String,
    pub size: u32,
    pub timeout_seconds: Option<u64>,
}

/// What the pod's annotations ask of placement. `None` = the scheduler's configured default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAnnotations {
    pub node_policy: Option<Policy>,
    pub gpu_policy: Option<Policy>,
    pub model_include: Vec<String>,
    pub model_exclude: Vec<String>,
    pub uuids: Vec<String>,
    pub uuid_exclude: Vec<String>,
    pub gang: Option<GangSpec>,
}

fn list(field: &str, v: &str) -> Result<Vec<String>, ProtocolError> {
    let items: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
    if items.iter().any(|s| s.is_empty()) {
        return Err(ProtocolError::new(
            field,
            format!("'{v}' has an empty item; accepted: a comma-separated list"),
        ));
    }
    Ok(items)
}

impl PodAnnotations {
    /// Reads the gpuslice annotations of a pod; unknown `gpuslice.io/` annotations other than
    /// the assignment are refused so that a typo does not silently lose a constraint.
    pub fn parse<'a>(
        annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ProtocolError> {
        let mut a = PodAnnotations::default();
        let (mut gang_name, mut gang_size, mut gang_timeout) = (None, None, None);
        for (k, v) in annotations {
            if !k.starts_with("gpuslice.io/") {
                continue;
            }
            let field = format!("annotation {k}");
            match k {
                ANNOTATION_NODE_POLICY => a.node_policy = Some(Policy::parse(&field, v)?),
                ANNOTATION_GPU_POLICY => a.gpu_policy = Some(Policy::parse(&field, v)?),
                ANNOTATION_MODEL_INCLUDE => a.model_include = list(&field, v)?,
                ANNOTATION_MODEL_EXCLUDE => a.model_exclude = list(&field, v)?,
                ANNOTATION_UUID_PIN => a.uuids = list(&field, v)?,
                ANNOTATION_UUID_EXCLUDE => a.uuid_exclude = list(&field, v)?,
                ANNOTATION_GANG_NAME => {
                    if v.trim().is_empty() {
                        return Err(ProtocolError::new(field, "must not be empty"));
                    }
                    gang_name = Some(v.trim().to_string())
                }
                ANNOTATION_GANG_SIZE => {
                    let n = parse_count(&field, v)?;
                    if n == 0 || n > 100_000 {
                        return Err(ProtocolError::new(
                            field,
                            format!("'{v}' must be 1..=100000"),
                        ));
                    }
                    gang_size = Some(n as u32)
                }
                ANNOTATION_GANG_TIMEOUT => {
                    let n = parse_count(&field, v)?;
                    if n == 0 {
                        return Err(ProtocolError::new(field, "must be at least 1 second"));
                    }
                    gang_timeout = Some(n)
                }
                ANNOTATION_ASSIGNMENT => {}
                _ => {
                    return Err(ProtocolError::new(
                        field,
                        "unknown gpuslice annotation (see docs/protocol.md for the accepted ones)",
                    ));
                }
            }
        }
        match (gang_name, gang_size) {
            (Some(name), Some(size)) => {
                a.gang = Some(GangSpec {
                    name,
                    size,
                    timeout_seconds: gang_timeout,
                })
            }
            (None, None) if gang_timeout.is_none() => {}
            (Some(_), None) => {
                return Err(ProtocolError::new(
                    format!("annotation {ANNOTATION_GANG_SIZE}"),
                    "required with gpuslice.io/gang",
                ));
            }
            _ => {
                return Err(ProtocolError::new(
                    format!("annotation {ANNOTATION_GANG_NAME}"),
                    "required with gang-size/gang-timeout-seconds",
                ));
            }
        }
        Ok(a)
    }
}

/// Memory (MiB) and compute (%) a slice gets on a GPU of `memory_mib` offered as `slices`
/// slices, when the request leaves them out: an even share.
pub fn even_share(memory_mib: u64, slices: u32) -> (u64, u32) {
    let n = slices.max(1);
    ((memory_mib / n as u64).max(1), (100 / n).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv_json() -> String {
        r#"{"version":1,"gpus":[{"uuid":"GPU-a","index":0,"model":"NVIDIA H100 80GB HBM3","memoryMiB":81559,"sms":132,"numa":0,"nvlinkPeers":["GPU-b"],"pcieSwitch":"sw0","slices":4,"mode":"shared"},
            {"uuid":"GPU-b","index":1,"model":"NVIDIA H100 80GB HBM3","memoryMiB":81559,"sms":132,"slices":1,"mode":"mig","mig":[{"uuid":"MIG-1","profile":"3g.40gb","memoryMiB":40448,"sms":60}]}]}"#
            .to_string()
    }

    /// Kubernetes' qualified name: an optional DNS-subdomain prefix and a `/`, then 1–63 of
    /// `[A-Za-z0-9._-]`, starting and ending alphanumeric (apimachinery `IsQualifiedName`).
    fn is_qualified_name(n: &str) -> bool {
        let name = n.rsplit_once('/').map_or(n, |(_, x)| x);
        let b = name.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
    }

    #[test]
    fn managed_resources_cover_every_modelled_profile_with_valid_names() {
        let managed = managed_resources();
        for m in crate::mig::MODELS {
            for p in m.profiles {
                let r = mig_resource(p.name);
                assert!(
                    managed.iter().any(|(n, ign)| *n == r && !ign),
                    "{} {}: {r} not managed",
                    m.name,
                    p.name
                );
                assert_eq!(mig_profile_of(&r).as_deref(), Some(p.name), "{r}");
            }
        }
        for (n, _) in &managed {
            assert!(is_qualified_name(n), "{n} is not a valid resource name");
        }
        assert!(managed.contains(&("gpuslice.io/mig-1g.10gb.me".to_string(), false)));
        assert!(managed.contains(&(RESOURCE_GPU_MEMORY.to_string(), true)));
        // A pod asks with the resource name; the assignment and NVML speak the profile.
        let r = ContainerRequest::from_resources(
            "c",
            [
                ("gpuslice.io/mig-1g.10gb.me", "1"),
                ("gpuslice.io/mig-3g.40gb", "1"),
            ],
        )
        .unwrap();
        assert_eq!(r.mig.get("1g.10gb+me"), Some(&1));
        assert_eq!(r.mig.get("3g.40gb"), Some(&1));
    }

    #[test]
    fn inventory_round_trips() {
        let inv = Inventory::parse(&inv_json()).unwrap();
        assert_eq!(inv.gpus.len(), 2);
        assert_eq!(inv.gpus[0].nvlink_peers, vec!["GPU-b"]);
        assert!(inv.gpus[1].healthy);
        let again = Inventory::parse(&inv.to_json()).unwrap();
        assert_eq!(inv, again);
        assert!(inv.to_json().contains("\"memoryMiB\":81559"));
        assert!(inv.to_json().contains("\"nvlinkPeers\""));
    }

    #[test]
    fn inventory_errors_name_the_field() {
        let bad = inv_json().replace(
            "\"memoryMiB\":81559,\"sms\":132,\"numa\"",
            "\"memoryMiB\":\"lots\",\"sms\":132,\"numa\"",
        );
        let e = Inventory::parse(&bad).unwrap_err();
        assert!(e.field.contains("gpus[0].memoryMiB"), "{e}");
        let e =
            Inventory::parse(&inv_json().replace("\"version\":1", "\"version\":2")).unwrap_err();
        assert!(e.field.ends_with("version"), "{e}");
        let e = Inventory::parse(&inv_json().replace("\"slices\":4", "\"slices\":0")).unwrap_err();
        assert!(e.field.ends_with("gpus[0].slices"), "{e}");
        let e = Inventory::parse(&inv_json().replace("GPU-b\",\"index\":1", "GPU-a\",\"index\":1"))
            .unwrap_err();
        assert!(e.field.ends_with("gpus[1].uuid"), "{e}");
        let e = Inventory::parse(&inv_json().replace("3g.40gb", "big")).unwrap_err();
        assert!(e.field.ends_with("gpus[1].mig[0].profile"), "{e}");
        let e = Inventory::parse(&inv_json().replace("\"sms\":60", "\"sms\":60,\"smz\":1"))
            .unwrap_err();
        assert!(e.to_string().contains("smz"), "{e}");
        assert!(Inventory::parse("not json").is_err());
    }

    #[test]
    fn assignment_round_trips_and_refuses() {
        let a = Assignment::new(
            "node-1",
            vec![ContainerAssignment {
                name: "main".into(),
                gpus: vec![AssignedGpu {
                    uuid: "GPU-a".into(),
                    memory_mib: 4096,
                    compute_percent: 25,
                    exclusive: false,
                    mig: None,
                }],
            }],
        );
        let s = a.to_json();
        assert!(s.contains("\"computePercent\":25"), "{s}");
        assert_eq!(Assignment::parse(&s).unwrap(), a);
        let e = Assignment::parse(&s.replace("\"computePercent\":25", "\"computePercent\":0"))
            .unwrap_err();
        assert!(
            e.field.ends_with("containers[0].gpus[0].computePercent"),
            "{e}"
        );
        let e = Assignment::parse(&s.replace("\"node\":\"node-1\"", "\"node\":\"\"")).unwrap_err();
        assert!(e.field.ends_with("node"), "{e}");
    }

    #[test]
    fn requests_parse_and_refuse() {
        let r = ContainerRequest::from_resources(
            "c",
            [
                ("gpuslice.io/gpu", "2"),
                ("gpuslice.io/gpu-memory", "8192"),
                ("cpu", "1"),
                ("gpuslice.io/mig-1g.10gb", "1"),
            ],
        )
        .unwrap();
        assert_eq!(
            (r.slices, r.memory_mib, r.compute_percent),
            (2, Some(8192), None)
        );
        assert_eq!(r.mig.get("1g.10gb"), Some(&1));
        let e = ContainerRequest::from_resources(
            "c",
            [("gpuslice.io/gpu", "1"), ("gpuslice.io/gpu-compute", "150")],
        )
        .unwrap_err();
        assert!(e.field.contains("gpu-compute"), "{e}");
        let e =
            ContainerRequest::from_resources("c", [("gpuslice.io/gpu-memory", "4Gi")]).unwrap_err();
        assert!(e.field.contains("gpu-memory"), "{e}");
        assert!(e.to_string().contains("would be 4096"), "{e}");
        // The API server writes 16000 as 16k; every Kubernetes spelling of a whole number counts.
        for (v, want) in [
            ("16k", 16000),
            ("16000", 16000),
            ("1e3", 1000),
            ("2000m", 2),
        ] {
            let r = ContainerRequest::from_resources(
                "c",
                [("gpuslice.io/gpu", "1"), ("gpuslice.io/gpu-memory", v)],
            )
            .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(r.memory_mib, Some(want), "{v}");
        }
        let r = ContainerRequest::from_resources("c", [("gpuslice.io/gpu", "1e0")]).unwrap();
        assert_eq!(r.slices, 1);
        // Fractions are refused, naming the field, never rounded.
        for (k, v) in [
            ("gpuslice.io/gpu", "0.5"),
            ("gpuslice.io/gpu-memory", "1.5"),
            ("gpuslice.io/gpu-compute", "500m"),
            ("gpuslice.io/gpu", "-1"),
        ] {
            let e = ContainerRequest::from_resources("c", [("gpuslice.io/gpu", "1"), (k, v)])
                .unwrap_err();
            assert!(e.field.contains(k), "{k}={v}: {e}");
            assert!(e.to_string().contains(v), "{k}={v}: {e}");
        }
        let e = ContainerRequest::from_resources("c", [("gpuslice.io/gpu-memory", "4096")])
            .unwrap_err();
        assert!(e.field.contains("gpuslice.io/gpu"), "{e}");
        let e = ContainerRequest::from_resources("c", [("gpuslice.io/gpus", "1")]).unwrap_err();
        assert!(e.field.contains("gpuslice.io/gpus"), "{e}");
    }

    #[test]
    fn annotations_parse_and_refuse() {
        let a = PodAnnotations::parse([
            ("gpuslice.io/node-policy", "spread"),
            ("gpuslice.io/gpu-model-include", "H100, A100"),
            ("gpuslice.io/gang", "train"),
            ("gpuslice.io/gang-size", "4"),
            ("other.io/x", "y"),
        ])
        .unwrap();
        assert_eq!(a.node_policy, Some(Policy::Spread));
        assert_eq!(a.model_include, vec!["H100", "A100"]);
        assert_eq!(a.gang.as_ref().unwrap().size, 4);
        let e = PodAnnotations::parse([("gpuslice.io/gpu-policy", "tight")]).unwrap_err();
        assert!(e.field.contains("gpuslice.io/gpu-policy"), "{e}");
        let e = PodAnnotations::parse([("gpuslice.io/gang", "x")]).unwrap_err();
        assert!(e.field.contains("gang-size"), "{e}");
        let e = PodAnnotations::parse([("gpuslice.io/gpu-uuid", "GPU-a,,GPU-b")]).unwrap_err();
        assert!(e.field.contains("gpu-uuid"), "{e}");
        let e = PodAnnotations::parse([("gpuslice.io/node-polcy", "spread")]).unwrap_err();
        assert!(e.field.contains("node-polcy"), "{e}");
    }
}

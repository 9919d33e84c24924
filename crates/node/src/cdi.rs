//! Container Device Interface spec files: one per tenant, in the dynamic CDI directory, naming a
//! device `gpuslice.io/gpu=<tenant>` whose edits are the same env, mounts and device nodes as the
//! Allocate response.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const CDI_VERSION: &str = "1.0.0";
pub const CDI_KIND: &str = "gpuslice.io/gpu";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The fully qualified CDI device name kubelet passes to the runtime.
pub fn qualified(tenant: &str) -> String {
    format!("{CDI_KIND}={tenant}")
}

pub fn spec_path(dir: &Path, tenant: &str) -> PathBuf {
    dir.join(format!("gpuslice.io-gpu_{tenant}.json"))
}

pub fn write(dir: &Path, tenant: &str, edits: ContainerEdits) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spec = Spec {
        cdi_version: CDI_VERSION.into(),
        kind: CDI_KIND.into(),
        devices: vec![Device {
            name: tenant.to_string(),
            container_edits: edits,
        }],
    };
    let path = spec_path(dir, tenant);
    // Rewritten from the persisted allocations at every start, so no fsync is needed here.
    crate::state::write_replace(
        &path,
        &serde_json::to_vec_pretty(&spec).expect("spec serializes"),
        false,
    )?;
    Ok(path)
}

pub fn remove(dir: &Path, tenant: &str) {
    let _ = std::fs::remove_file(spec_path(dir, tenant));
}

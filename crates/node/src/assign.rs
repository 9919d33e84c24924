//! Where the scheduler's decisions come from: the `gpuslice.io/assignment` annotation of pods
//! bound to this node (through the Kubernetes API), or, without a cluster, the local assignment
//! file that stands in for those pods.
//!
//! Local assignment file (`--assignments FILE`, default `<state-dir>/assignments.json`):
//!
//! ```json
//! {"pods": [{"namespace": "default", "name": "train-0", "uid": "6c1…",
//!            "assignment": {"version": 1, "node": "gpu-node-1", "containers": [...]}}]}
//! ```
//!
//! `assignment` is exactly the annotation's JSON. The file is re-read at every Allocate.

use std::path::PathBuf;

use gpuslice_core::protocol::{self, Assignment, ContainerAssignment};
use serde::Deserialize;

/// A pod waiting on this node with the scheduler's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Sort key: older pods are admitted by kubelet first.
    pub created: String,
    pub assignment: Assignment,
}

/// Units of `resource` a container of an assignment holds.
pub fn units(c: &ContainerAssignment, resource: &str) -> usize {
    c.gpus
        .iter()
        .filter(|g| match resource {
            protocol::RESOURCE_GPU => !g.exclusive && g.mig.is_none(),
            protocol::RESOURCE_WHOLE_GPU => g.exclusive && g.mig.is_none(),
            r => protocol::mig_profile_of(r).is_some_and(|p| g.mig.as_deref() == Some(&p)),
        })
        .count()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalFile {
    pods: Vec<LocalPod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalPod {
    namespace: String,
    name: String,
    uid: String,
    assignment: serde_json::Value,
}

pub enum Source {
    File(PathBuf),
    Kube { client: kube::Client, node: String },
}

/// Pending pods, and refusals of pods whose assignment could not be read (named by pod).
pub struct Pending {
    pub pods: Vec<PendingPod>,
    pub errors: Vec<String>,
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => format!("the local assignment file {}", p.display()),
            Source::Kube { node, .. } => format!("pods bound to node {node}"),
        }
    }

    pub async fn pending(&self, node: &str) -> Result<Pending, String> {
        let mut out = Pending {
            pods: Vec::new(),
            errors: Vec::new(),
        };
        let mut accept = |ns: String, name: String, uid: String, created: String, raw: &str| {
            match Assignment::parse(raw) {
                Ok(a) if a.node == node => out.pods.push(PendingPod {
                    namespace: ns,
                    name,
                    uid,
                    created,
                    assignment: a,
                }),
                Ok(a) => out.errors.push(format!(
                    "pod {ns}/{name}: {}: node is '{}', this node is '{node}'",
                    protocol::ANNOTATION_ASSIGNMENT,
                    a.node
                )),
                Err(e) => out.errors.push(format!("pod {ns}/{name}: {e}")),
            }
        };
        match self {
            Source::File(path) => {
                let text = match std::fs::read_to_string(path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                };
                let de = &mut serde_json::Deserializer::from_str(&text);
                let f: LocalFile = serde_path_to_error::deserialize(de)
                    .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
                for (i, p) in f.pods.into_iter().enumerate() {
                    accept(
                        p.namespace,
                        p.name,
                        p.uid,
                        format!("{i:08}"),
                        &p.assignment.to_string(),
                    );
                }
            }
            Source::Kube { client, node } => {
                use k8s_openapi::api::core::v1::Pod;
                let pods: kube::Api<Pod> = kube::Api::all(client.clone());
                let lp = kube::api::ListParams::default()
                    .fields(&format!("spec.nodeName={node},status.phase=Pending"));
                let list = pods
                    .list(&lp)
                    .await
                    .map_err(|e| format!("listing pods on {node}: {e}"))?;
                for p in list.items {
                    let m = p.metadata;
                    let Some(raw) = m
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(protocol::ANNOTATION_ASSIGNMENT))
                    else {
                        continue;
                    };
                    let created = m
                        .creation_timestamp
                        .as_ref()
                        .map(|t| format!("{:?}", t.0))
                        .unwrap_or_default();
                    accept(
                        m.namespace.clone().unwrap_or_default(),
                        m.name.clone().unwrap_or_default(),
                        m.uid.clone().unwrap_or_default(),
                        created,
                        raw,
                    );
                }
            }
        }
        out.pods
            .sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        Ok(out)
    }
}

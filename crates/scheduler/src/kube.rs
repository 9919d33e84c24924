//! Cluster state from the Kubernetes API (nodes' inventory annotations, pods' assignment
//! annotations), and binds through it: the assignment annotation is patched with the pod's
//! `resourceVersion` as a precondition, then the Binding is created.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use gpuslice_core::protocol::{ANNOTATION_ASSIGNMENT, ANNOTATION_INVENTORY, Assignment, Inventory};
use gpuslice_core::sched::{Demand, PodRecord};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};

use crate::extender::{BindTarget, Binder, BoxFuture, Extender};

/// Connects with a kubeconfig file, or in-cluster / `$KUBECONFIG` when `None`.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, String> {
    let cfg = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| format!("--kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("Kubernetes config: {e}"))?,
    };
    Client::try_from(cfg).map_err(|e| format!("Kubernetes client: {e}"))
}

/// Patches the assignment (optimistic concurrency on `resourceVersion`) and creates the
/// Binding. A conflict is retried against the fresh pod a few times; a pod already bound
/// or already carrying another assignment is reported, never overwritten.
pub struct KubeBinder {
    pub client: Client,
}

const CONFLICT_RETRIES: usize = 3;

impl KubeBinder {
    async fn bind_once(&self, t: &BindTarget) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &t.namespace);
        let want = t.assignment.to_json();
        let mut attempt = 0;
        loop {
            let pod = pods
                .get(&t.name)
                .await
                .map_err(|e| format!("get pod: {e}"))?;
            let md = &pod.metadata;
            if md.uid.as_deref().is_some_and(|u| u != t.uid) {
                return Err(format!(
                    "pod uid is {}, not {}",
                    md.uid.as_deref().unwrap_or(""),
                    t.uid
                ));
            }
            if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                return Err(format!("pod is already bound to {n}"));
            }
            let existing = md
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_ASSIGNMENT));
            if existing.is_some_and(|e| *e != want) {
                return Err(format!(
                    "pod already carries another {ANNOTATION_ASSIGNMENT}"
                ));
            }
            if existing.is_none() {
                let patch = serde_json::json!({"metadata": {
                    "resourceVersion": md.resource_version,
                    "annotations": {ANNOTATION_ASSIGNMENT: want},
                }});
                match pods
                    .patch(&t.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 && attempt < CONFLICT_RETRIES => {
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(format!("annotate pod: {e}")),
                }
            }
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(t.name.clone()),
                    namespace: Some(t.namespace.clone()),
                    uid: Some(t.uid.clone()),
                    ..Default::default()
                },
                target: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(t.node.clone()),
                    ..Default::default()
                },
            };
            let _: serde_json::Value = pods
                .create_subresource("binding", &t.name, &PostParams::default(), &binding)
                .await
                .map_err(|e| format!("create binding: {e}"))?;
            return Ok(());
        }
    }
}

impl Binder for KubeBinder {
    fn bind<'a>(&'a self, t: &'a BindTarget) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.bind_once(t))
    }
}

/// The record of a pod that the API shows holding gpuslice devices, if any. Pods that have
/// finished hold nothing.
pub fn pod_record(p: &Pod) -> Result<Option<PodRecord>, String> {
    let md = &p.metadata;
    let Some(a) = md
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_ASSIGNMENT))
    else {
        return Ok(None);
    };
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed"))
        || md.deletion_timestamp.is_some()
            && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
    {
        return Ok(None);
    }
    let ns = md.namespace.clone().unwrap_or_else(|| "default".into());
    let name = md.name.clone().unwrap_or_default();
    let assignment = Assignment::parse(a).map_err(|e| format!("pod {ns}/{name}: {e}"))?;
    let demand =
        assignment
            .containers
            .iter()
            .flat_map(|c| &c.gpus)
            .fold(Demand::default(), |mut d, g| {
                d.memory_mib += g.memory_mib;
                d.compute_percent += g.compute_percent as u64;
                d
            });
    let gang = md
        .annotations
        .as_ref()
        .and_then(|a| a.get(gpuslice_core::protocol::ANNOTATION_GANG_NAME))
        .map(|g| format!("{ns}/{g}"));
    Ok(Some(PodRecord {
        uid: md.uid.clone().unwrap_or_else(|| format!("{ns}/{name}")),
        namespace: ns,
        name,
        priority: p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
        assignment,
        gang,
        demand,
    }))
}

fn apply_node(ext: &Extender, n: &Node) {
    let Some(name) = n.metadata.name.as_deref() else {
        return;
    };
    let inv = n
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_INVENTORY));
    let mut st = ext.lock();
    match inv.map(|s| Inventory::parse(s)) {
        Some(Ok(inv)) => st.cluster.upsert_node(name, &inv),
        Some(Err(e)) => {
            tracing::warn!(node = name, "ignoring node: {e}");
            st.cluster.remove_node(name);
        }
        None => st.cluster.remove_node(name),
    }
}

fn apply_pod(ext: &Extender, p: &Pod, deleted: bool) {
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let mut st = ext.lock();
    // A gang member reserved but not yet bound is ours; the API does not know it yet.
    if st.gangs.reservation(&uid).is_some() {
        if deleted {
            st.gangs.cancel(&uid);
            st.cluster.remove_pod(&uid);
        }
        return;
    }
    let rec = if deleted { Ok(None) } else { pod_record(p) };
    match rec {
        Ok(Some(rec)) => {
            if st
                .cluster
                .pods
                .get(&uid)
                .is_some_and(|old| old.assignment == rec.assignment)
            {
                return;
            }
            st.cluster.remove_pod(&uid);
            if let Err(e) = st.cluster.add_pod(rec) {
                tracing::warn!(pod = uid, "assignment not counted: {e}");
            }
        }
        Ok(None) => {
            st.cluster.remove_pod(&uid);
            st.seen.remove(&uid);
        }
        Err(e) => tracing::warn!(pod = uid, "{e}"),
    }
}

/// Lists, then watches; on any watch end or error, lists again (the list replaces what the
/// watch may have missed). Runs until the process ends.
pub async fn watch_nodes(client: Client, ext: Arc<Extender>) {
    let api: Api<Node> = Api::all(client);
    loop {
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let names: std::collections::HashSet<String> = list
                    .items
                    .iter()
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                {
                    let mut st = ext.lock();
                    let gone: Vec<String> = st
                        .cluster
                        .nodes
                        .iter()
                        .map(|n| n.name.clone())
                        .filter(|n| !names.contains(n))
                        .collect();
                    for n in gone {
                        st.cluster.remove_node(&n);
                    }
                }
                for n in &list.items {
                    apply_node(&ext, n);
                }
                let rv = list.metadata.resource_version.unwrap_or_default();
                if let Ok(stream) = api.watch(&WatchParams::default().timeout(290), &rv).await {
                    let mut stream = stream.boxed();
                    while let Ok(Some(ev)) = stream.try_next().await {
                        match ev {
                            WatchEvent::Added(n) | WatchEvent::Modified(n) => apply_node(&ext, &n),
                            WatchEvent::Deleted(n) => {
                                if let Some(name) = n.metadata.name.as_deref() {
                                    ext.lock().cluster.remove_node(name);
                                }
                            }
                            WatchEvent::Bookmark(_) => {}
                            WatchEvent::Error(e) => {
                                tracing::info!("node watch ended: {e}");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("listing nodes: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn watch_pods(client: Client, ext: Arc<Extender>) {
    let api: Api<Pod> = Api::all(client);
    loop {
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let live: std::collections::HashSet<String> = list
                    .items
                    .iter()
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect();
                {
                    let mut st = ext.lock();
                    let gone: Vec<String> = st
                        .cluster
                        .pods
                        .keys()
                        .filter(|u| !live.contains(*u) && st.gangs.reservation(u).is_none())
                        .cloned()
                        .collect();
                    for u in gone {
                        st.cluster.remove_pod(&u);
                    }
                }
                for p in &list.items {
                    apply_pod(&ext, p, false);
                }
                let rv = list.metadata.resource_version.unwrap_or_default();
                if let Ok(stream) = api.watch(&WatchParams::default().timeout(290), &rv).await {
                    let mut stream = stream.boxed();
                    while let Ok(Some(ev)) = stream.try_next().await {
                        match ev {
                            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                                apply_pod(&ext, &p, false)
                            }
                            WatchEvent::Deleted(p) => apply_pod(&ext, &p, true),
                            WatchEvent::Bookmark(_) => {}
                            WatchEvent::Error(e) => {
                                tracing::info!("pod watch ended: {e}");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("listing pods: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

//! Reconciliation with kubelet's pod resources API (v1, `PodResourcesLister.List`): kubelet
//! knows which device IDs running containers hold; the store knows what the agent granted.
//!
//! - A stored allocation that no running container holds is released (ledger, CDI spec, record),
//!   at start at once, later only when two passes in a row miss it, so an allocation kubelet has
//!   not recorded yet (its Allocate just answered) is never taken for a finished one. A ledger a
//!   live process still holds is kept.
//! - Allocations kubelet reports are left untouched: their tenants keep ledger, cap and usage.
//! - A device kubelet reports for one of our resources that no allocation knows is *held
//!   elsewhere*: counted in a metric, advertised unhealthy and refused by Allocate until kubelet
//!   stops reporting it. The agent cannot know its caps, so it never makes a record for it.
//! - Without kubelet (no socket, a failed call) the store alone decides: nothing is released and
//!   what was known to be held elsewhere stays so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::agent::Shared;
use crate::devices::Plan;
use crate::podres_pb as v1;
use crate::state::Allocation;

pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// How often the agent asks kubelet again, so allocations of pods deleted while it missed the
/// deletion are released.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(30);
/// Connect and List together; kubelet answers from memory.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Kubelet's own clients accept 16 MiB answers (a node with many pods); tonic's default is 4.
const MAX_MESSAGE: usize = 16 << 20;

/// One device a running container holds, as kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Held {
    pub resource: String,
    pub id: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl Held {
    pub fn holder(&self) -> String {
        format!(
            "pod {}/{} container {}",
            self.namespace, self.pod, self.container
        )
    }
}

/// Devices held by containers the agent has no allocation for: (resource, device ID) → holder.
pub type HeldElsewhere = BTreeMap<(String, String), String>;

/// Refuses a configured socket path that cannot be kubelet's socket. An absent file is fine (a
/// plain host has no kubelet; the agent then reconciles with its store alone).
pub fn check_socket_path(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    if p.as_os_str().is_empty() {
        return Err(format!(
            "empty; give kubelet's pod resources socket, e.g. {DEFAULT_SOCKET}"
        ));
    }
    match std::fs::metadata(p) {
        Ok(m) if !m.file_type().is_socket() => Err(format!(
            "{} exists and is not a socket; give kubelet's pod resources socket, e.g. {DEFAULT_SOCKET}",
            p.display()
        )),
        _ => Ok(()),
    }
}

/// Every device-plugin device held by a container, flattened.
pub fn held(resp: &v1::ListPodResourcesResponse) -> Vec<Held> {
    let mut out = Vec::new();
    for p in &resp.pod_resources {
        for c in &p.containers {
            for d in &c.devices {
                for id in &d.device_ids {
                    out.push(Held {
                        resource: d.resource_name.clone(),
                        id: id.clone(),
                        namespace: p.namespace.clone(),
                        pod: p.name.clone(),
                        container: c.name.clone(),
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Asks kubelet which devices running containers hold.
pub async fn list(socket: &Path) -> Result<Vec<Held>, String> {
    let call = async {
        let ch = crate::plugin::unix_channel(socket)
            .await
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        let mut c = v1::pod_resources_lister_client::PodResourcesListerClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE);
        c.list(v1::ListPodResourcesRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("List on {}: {}", socket.display(), e.message()))
    };
    let resp = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| {
            format!(
                "List on {}: no answer in {CALL_TIMEOUT:?}",
                socket.display()
            )
        })??;
    Ok(held(&resp))
}

/// Whether kubelet's report of `h` is this allocation: the same resource and device ID and, when
/// the allocation names its pod, the same pod (a record left by a failed Allocate must not be
/// kept alive by another pod that got the same device).
fn matches(a: &Allocation, h: &Held) -> bool {
    a.resource == h.resource
        && a.device_ids.iter().any(|d| d == &h.id)
        && (a.pod.is_empty() || (a.namespace == h.namespace && a.pod == h.pod))
}

/// What kubelet's report means for the store. Pure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Tenants a running container holds.
    pub kept: Vec<String>,
    /// Tenants no running container holds.
    pub orphaned: Vec<String>,
    /// Devices of our resources held by containers the store does not know.
    pub unknown: Vec<Held>,
}

pub fn decide(allocs: &[Allocation], held: &[Held], ours: &dyn Fn(&str) -> bool) -> Outcome {
    let mut o = Outcome::default();
    for a in allocs {
        if held.iter().any(|h| matches(a, h)) {
            o.kept.push(a.tenant.clone());
        } else {
            o.orphaned.push(a.tenant.clone());
        }
    }
    o.unknown = held
        .iter()
        .filter(|h| ours(&h.resource) && !allocs.iter().any(|a| matches(a, h)))
        .cloned()
        .collect();
    o
}

/// Marks devices held elsewhere unhealthy, so kubelet does not hand them to another pod.
pub fn mark_held(plan: &mut Plan, elsewhere: &HeldElsewhere) {
    if elsewhere.is_empty() {
        return;
    }
    for (resource, units) in plan.resources.iter_mut() {
        for u in units.iter_mut() {
            if elsewhere.contains_key(&(resource.clone(), u.id.clone())) {
                u.healthy = false;
            }
        }
    }
}

/// Allocate's check: an error naming the holder if kubelet offers a device held elsewhere.
pub fn refuse_held(
    elsewhere: &HeldElsewhere,
    resource: &str,
    ids: &[String],
) -> Result<(), String> {
    for id in ids {
        if let Some(h) = elsewhere.get(&(resource.to_string(), id.clone())) {
            return Err(format!(
                "{resource} device {id} is held by {h}, which this agent has no allocation for (its caps are unknown); it is not handed out again until kubelet stops reporting it"
            ));
        }
    }
    Ok(())
}

pub struct PodresMetrics {
    pub unknown: Family<Vec<(String, String)>, Gauge>,
    pub released: Counter,
    pub reachable: Gauge,
}

impl PodresMetrics {
    pub fn register(r: &mut Registry) -> PodresMetrics {
        let m = PodresMetrics {
            unknown: Family::default(),
            released: Counter::default(),
            reachable: Gauge::default(),
        };
        r.register(
            "gpuslice_kubelet_unknown_devices",
            "Devices kubelet reports held by containers the agent has no allocation for (not handed out again)",
            m.unknown.clone(),
        );
        r.register(
            "gpuslice_reconcile_released",
            "Allocations released because no running container holds their devices",
            m.released.clone(),
        );
        r.register(
            "gpuslice_pod_resources_reachable",
            "1 if the last reconciliation reached kubelet's pod resources API",
            m.reachable.clone(),
        );
        m
    }
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// False: kubelet was not reached and the store alone stands.
    pub reached: bool,
    pub released: Vec<String>,
    pub kept: Vec<String>,
    /// Orphaned, but a process still holds the ledger.
    pub busy: Vec<String>,
    pub unknown: Vec<Held>,
}

/// Reconciliation across passes: remembers which grants the last pass missed.
pub struct Reconciler {
    socket: PathBuf,
    missed: BTreeSet<String>,
    reachable: Option<bool>,
}

impl Reconciler {
    pub fn new(socket: PathBuf) -> Reconciler {
        Reconciler {
            socket,
            missed: BTreeSet::new(),
            reachable: None,
        }
    }

    /// One pass. `at_start`: no Allocate of this agent can be in flight, so what kubelet does not
    /// report is released at once.
    pub async fn pass(&mut self, shared: &Shared, at_start: bool) -> Report {
        let listed = list(&self.socket).await;
        let m = &shared.metrics.podres;
        let held = match listed {
            Ok(h) => {
                if self.reachable != Some(true) {
                    tracing::info!(socket = %self.socket.display(), "reconciling allocations with kubelet's pod resources API");
                }
                self.reachable = Some(true);
                m.reachable.set(1);
                h
            }
            Err(e) => {
                // Warned once per outage; a plain host has no kubelet at all.
                if self.reachable != Some(false) {
                    tracing::warn!(
                        "{e}; reconciling with the agent's own store only (nothing released)"
                    );
                }
                self.reachable = Some(false);
                m.reachable.set(0);
                return Report::default();
            }
        };
        let ours: BTreeSet<String> = shared.plan().resources.keys().cloned().collect();
        let mut report = Report {
            reached: true,
            ..Report::default()
        };
        {
            let mut store = shared.store.lock().unwrap();
            let in_store: BTreeSet<String> = store
                .state
                .allocations
                .iter()
                .map(|a| a.resource.clone())
                .collect();
            let is_ours =
                |r: &str| r.starts_with("gpuslice.io/") || ours.contains(r) || in_store.contains(r);
            let o = decide(&store.state.allocations, &held, &is_ours);
            let mut missed = BTreeSet::new();
            for t in o.orphaned {
                // Keyed by the grant, not the tenant name alone: a pod recreated under the same
                // name (a StatefulSet's) gets a new record that must be missed twice itself.
                let key = store
                    .find(&t)
                    .map(|a| format!("{t}\n{}\n{}", a.pod_uid, a.device_ids.join(",")))
                    .unwrap_or_else(|| t.clone());
                if !at_start && !self.missed.contains(&key) {
                    missed.insert(key);
                    continue;
                }
                if crate::allocate::release(&shared.paths, &mut store, &t) {
                    tracing::info!(tenant = %t, "released: kubelet reports no running container holding its devices");
                    m.released.inc();
                    report.released.push(t);
                } else {
                    tracing::warn!(tenant = %t, "kubelet reports no container holding its devices, but a process still holds its ledger; kept");
                    report.busy.push(t);
                }
            }
            self.missed = missed;
            report.kept = o.kept;
            report.unknown = o.unknown;
        }
        let elsewhere: HeldElsewhere = report
            .unknown
            .iter()
            .map(|h| ((h.resource.clone(), h.id.clone()), h.holder()))
            .collect();
        m.unknown.clear();
        for h in &report.unknown {
            m.unknown
                .get_or_create(&vec![("resource".to_string(), h.resource.clone())])
                .inc();
        }
        let changed = {
            let mut cur = shared.held_elsewhere.write().unwrap();
            for (k, who) in &elsewhere {
                if !cur.contains_key(k) {
                    tracing::warn!(resource = %k.0, device = %k.1, "kubelet reports the device held by {who}, unknown to this agent; counted and not handed out again");
                }
            }
            let changed = *cur != elsewhere;
            *cur = elsewhere;
            changed
        };
        if changed {
            shared.replan();
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(tenant: &str, resource: &str, pod: &str, ids: &[&str]) -> Allocation {
        Allocation {
            tenant: tenant.into(),
            resource: resource.into(),
            namespace: if pod.is_empty() { "" } else { "ns" }.into(),
            pod: pod.into(),
            pod_uid: String::new(),
            container: "c".into(),
            gpus: vec!["GPU-a".into()],
            memory_bytes: 1 << 30,
            compute_percent: 10,
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn h(resource: &str, id: &str, pod: &str) -> Held {
        Held {
            resource: resource.into(),
            id: id.into(),
            namespace: "ns".into(),
            pod: pod.into(),
            container: "c".into(),
        }
    }

    #[test]
    fn kept_orphaned_and_unknown() {
        let allocs = [
            alloc("ns.a.c", "gpuslice.io/gpu", "a", &["GPU-a::0"]),
            alloc("ns.b.c", "gpuslice.io/gpu", "b", &["GPU-a::1"]),
            alloc("whole-a", "gpuslice.io/whole-gpu", "", &["GPU-a"]),
            // A record left by a failed Allocate: another pod holds its device now.
            alloc("ns.old.c", "gpuslice.io/gpu", "old", &["GPU-a::2"]),
        ];
        let held = [
            h("gpuslice.io/gpu", "GPU-a::0", "a"),
            h("gpuslice.io/whole-gpu", "GPU-a", "w"),
            h("gpuslice.io/gpu", "GPU-a::2", "new"),
            h("gpuslice.io/gpu", "GPU-a::3", "ghost"),
            h("nvidia.com/gpu", "GPU-a::0", "ts"),
            h("example.com/nic", "eth1", "x"),
        ];
        let ours = |r: &str| r.starts_with("gpuslice.io/") || r == "nvidia.com/gpu";
        let o = decide(&allocs, &held, &ours);
        assert_eq!(o.kept, ["ns.a.c", "whole-a"]);
        assert_eq!(o.orphaned, ["ns.b.c", "ns.old.c"]);
        let unknown: Vec<(&str, &str)> = o
            .unknown
            .iter()
            .map(|h| (h.resource.as_str(), h.id.as_str()))
            .collect();
        assert_eq!(
            unknown,
            [
                ("gpuslice.io/gpu", "GPU-a::2"),
                ("gpuslice.io/gpu", "GPU-a::3"),
                ("nvidia.com/gpu", "GPU-a::0")
            ]
        );
    }

    #[test]
    fn held_devices_are_unhealthy_and_refused() {
        let mut plan = Plan::default();
        let unit = |id: &str| crate::devices::Unit {
            id: id.into(),
            gpu_uuid: "GPU-a".into(),
            healthy: true,
            numa: None,
        };
        plan.resources.insert(
            "gpuslice.io/gpu".into(),
            vec![unit("GPU-a::0"), unit("GPU-a::1")],
        );
        plan.resources
            .insert("nvidia.com/gpu".into(), vec![unit("GPU-a::0")]);
        let elsewhere: HeldElsewhere = [(
            ("gpuslice.io/gpu".to_string(), "GPU-a::1".to_string()),
            "pod ns/x container c".to_string(),
        )]
        .into();
        mark_held(&mut plan, &elsewhere);
        let health: Vec<bool> = plan.resources["gpuslice.io/gpu"]
            .iter()
            .map(|u| u.healthy)
            .collect();
        assert_eq!(health, [true, false]);
        assert!(
            plan.resources["nvidia.com/gpu"][0].healthy,
            "another resource's same ID"
        );
        let e = refuse_held(
            &elsewhere,
            "gpuslice.io/gpu",
            &["GPU-a::0".into(), "GPU-a::1".into()],
        )
        .unwrap_err();
        assert!(
            e.contains("GPU-a::1") && e.contains("pod ns/x container c"),
            "{e}"
        );
        assert!(refuse_held(&elsewhere, "nvidia.com/gpu", &["GPU-a::1".into()]).is_ok());
    }

    #[test]
    fn socket_path_checked() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            check_socket_path(Path::new(""))
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            check_socket_path(d.path())
                .unwrap_err()
                .contains("not a socket")
        );
        assert!(check_socket_path(&d.path().join("absent.sock")).is_ok());
        let s = d.path().join("k.sock");
        let _l = std::os::unix::net::UnixListener::bind(&s).unwrap();
        assert!(check_socket_path(&s).is_ok());
    }
}

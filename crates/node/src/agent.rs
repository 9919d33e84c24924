//! Wiring: discovery, configuration (with hot reload), health, the device plugins, the
//! inventory for the scheduler, metrics and persisted allocations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::allocate::{self, Paths};
use crate::assign::{self, Source};
use crate::config::NodeConfig;
use crate::devices::{self, Plan};
use crate::gpu::{Gpu, GpuSource};
use crate::health::{EventSource, Tracker};
use crate::metrics::Metrics;
use crate::pb;
use crate::state::Store;

pub struct Options {
    pub node_name: String,
    pub config_path: Option<PathBuf>,
    pub socket_dir: PathBuf,
    pub cdi_dir: PathBuf,
    pub state_dir: PathBuf,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The interposer library to hand to containers.
    pub interposer: PathBuf,
    /// Further directories of `<tenant>/ledger` to report (plain `gpuslice run` tenants).
    pub extra_tenant_dirs: Vec<PathBuf>,
    pub health_quiet: Duration,
    pub reload_every: Duration,
    /// Kubelet's pod resources socket, for reconciling allocations with running containers.
    pub pod_resources_socket: PathBuf,
    pub reconcile_every: Duration,
    /// Where the machine's compute arbiter listens for `gpuslice run` supervisors and publishes
    /// its figures (the `gpuslice run` compute directory).
    pub compute_dir: PathBuf,
}

pub struct Shared {
    pub node: String,
    pub cfg: RwLock<NodeConfig>,
    /// The last discovery; replaced when a re-discovery finds a change (e.g. a MIG layout).
    pub gpus: RwLock<Vec<Gpu>>,
    pub gpu_source: Arc<dyn GpuSource>,
    pub health: Mutex<Tracker>,
    pub store: Mutex<Store>,
    pub paths: Paths,
    pub source: Source,
    pub metrics: Metrics,
    pub tenant_dirs: Vec<PathBuf>,
    /// Devices kubelet reports held by containers with no allocation here (see `podres`).
    pub held_elsewhere: RwLock<crate::podres::HeldElsewhere>,
    state_dir: PathBuf,
    plan_tx: watch::Sender<Plan>,
}

impl Shared {
    pub fn plan_rx(&self) -> watch::Receiver<Plan> {
        self.plan_tx.subscribe()
    }

    /// What is advertised now (without subscribing to its changes).
    pub fn plan(&self) -> watch::Ref<'_, Plan> {
        self.plan_tx.borrow()
    }

    pub fn unhealthy(&self) -> BTreeSet<String> {
        self.health.lock().unwrap().unhealthy()
    }

    /// Recomputes what is advertised; publishes the inventory when it changed.
    pub fn replan(&self) -> bool {
        let cfg = self.cfg.read().unwrap().clone();
        let bad = self.unhealthy();
        let gpus = self.gpus.read().unwrap().clone();
        let mut plan = devices::plan(&cfg, &gpus, &bad);
        crate::podres::mark_held(&mut plan, &self.held_elsewhere.read().unwrap());
        let changed = *self.plan_tx.borrow() != plan;
        if changed {
            // The inventory is on disk before kubelet hears of the new devices.
            let inv = devices::inventory(&cfg, &gpus, &bad);
            let path = self.state_dir.join("inventory.json");
            if let Err(e) = crate::state::write_atomic(&path, inv.to_json().as_bytes()) {
                tracing::warn!("{e}");
            }
            self.plan_tx.send_replace(plan);
        }
        changed
    }

    /// For GetPreferredAllocation: the GPUs the scheduler chose for the pod being admitted.
    pub async fn wanted_gpus(
        &self,
        resource: &str,
        req: &pb::PreferredAllocationRequest,
    ) -> Vec<Vec<String>> {
        let pending = self.source.pending(&self.node).await.ok();
        let store = self.store.lock().unwrap();
        req.container_requests
            .iter()
            .map(|c| {
                let Some(p) = &pending else { return Vec::new() };
                for pod in &p.pods {
                    for ca in &pod.assignment.containers {
                        let done = store
                            .state
                            .allocations
                            .iter()
                            .any(|a| a.pod_uid == pod.uid && a.container == ca.name);
                        if !done && assign::units(ca, resource) == c.allocation_size.max(0) as usize
                        {
                            return ca.gpus.iter().map(|g| g.uuid.clone()).collect();
                        }
                    }
                }
                Vec::new()
            })
            .collect()
    }

    pub async fn allocate(
        &self,
        resource: &str,
        ids: &[String],
    ) -> Result<pb::ContainerAllocateResponse, String> {
        let held = crate::podres::refuse_held(&self.held_elsewhere.read().unwrap(), resource, ids);
        if let Err(e) = held {
            self.metrics.allocate_refusals.inc();
            return Err(e);
        }
        let pending = match resource {
            gpuslice_core::protocol::RESOURCE_GPU | gpuslice_core::protocol::RESOURCE_WHOLE_GPU => {
                self.source.pending(&self.node).await?
            }
            _ => assign::Pending {
                pods: Vec::new(),
                errors: Vec::new(),
            },
        };
        let cfg = self.cfg.read().unwrap().clone();
        let bad = self.unhealthy();
        let gpus = self.gpus.read().unwrap().clone();
        let mut store = self.store.lock().unwrap();
        let r = allocate::decide(
            &cfg,
            &gpus,
            &bad,
            &store,
            resource,
            ids,
            &pending,
            &self.source.describe(),
        )
        .and_then(|g| allocate::apply(&cfg, &gpus, &self.paths, &mut store, g));
        match &r {
            Ok(_) => self.metrics.allocations.inc(),
            Err(_) => self.metrics.allocate_refusals.inc(),
        };
        r
    }

    pub fn render_metrics(&self) -> String {
        let allocs = self.store.lock().unwrap().state.allocations.clone();
        self.metrics.render(
            self.gpu_source.as_ref(),
            &self.unhealthy(),
            &self.tenant_dirs,
            &allocs,
        )
    }

    /// Asks the GPU source again; a changed answer (a MIG layout applied out of band, a GPU
    /// gone) is re-planned and re-published. A failed discovery keeps the last one.
    pub fn rediscover(&self) -> bool {
        match self.gpu_source.gpus() {
            Ok(now) => {
                let changed = *self.gpus.read().unwrap() != now;
                if changed {
                    *self.gpus.write().unwrap() = now;
                    tracing::info!("GPU discovery changed");
                    self.replan();
                }
                changed
            }
            Err(e) => {
                tracing::warn!("re-discovering GPUs: {e}; keeping the last discovery");
                false
            }
        }
    }

    /// Applies a changed configuration file; a bad one keeps the last good configuration.
    pub fn reload(&self, path: &std::path::Path) -> Result<bool, String> {
        match NodeConfig::load(path) {
            Ok(cfg) => {
                self.metrics.config_ok.set(1);
                let changed = *self.cfg.read().unwrap() != cfg;
                if changed {
                    *self.cfg.write().unwrap() = cfg;
                    self.replan();
                    tracing::info!(path = %path.display(), "configuration reloaded");
                }
                Ok(changed)
            }
            Err(e) => {
                self.metrics.config_ok.set(0);
                self.metrics.reload_errors.inc();
                let msg = format!(
                    "{}: {e}; keeping the last good configuration",
                    path.display()
                );
                tracing::error!("{msg}");
                Err(msg)
            }
        }
    }
}

/// Builds the agent's state: discovery, the stored allocations re-applied (ledgers and CDI
/// specs exist again after a restart or reboot), the first plan.
pub fn start(
    opts: &Options,
    cfg: NodeConfig,
    gpu_source: Arc<dyn GpuSource>,
    source: Source,
) -> Result<Arc<Shared>, String> {
    let gpus = gpu_source.gpus()?;
    let paths = Paths::prepare(
        &opts.state_dir,
        &opts.cdi_dir,
        &opts.interposer,
        &opts.compute_dir,
    )?;
    let mut store = Store::open(&opts.state_dir)?;
    for a in store.state.allocations.clone() {
        let g = allocate::Grant { alloc: a.clone() };
        if let Err(e) = allocate::apply(&cfg, &gpus, &paths, &mut store, g) {
            tracing::error!(tenant = %a.tenant, "restoring the allocation: {e}");
        }
    }
    let mut tenant_dirs = vec![paths.tenants.clone()];
    for d in &opts.extra_tenant_dirs {
        if !tenant_dirs.contains(d) {
            tenant_dirs.push(d.clone());
        }
    }
    let (plan_tx, _) = watch::channel(Plan::default());
    let shared = Arc::new(Shared {
        node: opts.node_name.clone(),
        cfg: RwLock::new(cfg),
        gpus: RwLock::new(gpus),
        gpu_source,
        health: Mutex::new(Tracker::new(opts.health_quiet.as_millis() as u64)),
        store: Mutex::new(store),
        paths,
        source,
        metrics: Metrics::new(&opts.compute_dir),
        tenant_dirs,
        held_elsewhere: RwLock::default(),
        state_dir: opts.state_dir.clone(),
        plan_tx,
    });
    shared.replan();
    Ok(shared)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the health loop: events from `events` (blocking, on its own thread) update the tracker;
/// devices quiet for the configured period are re-probed (outside the lock: NVML may be slow)
/// and advertised healthy again only if they answer.
pub fn spawn_health(shared: Arc<Shared>, mut events: Box<dyn EventSource>) {
    std::thread::Builder::new()
        .name("gpuslice-health".into())
        .spawn(move || {
            loop {
                let ev = events.next(1000);
                let quiet = shared.cfg.read().unwrap().health.recover_after_seconds;
                let mut changed = false;
                if let Some(ev) = &ev {
                    shared.metrics.health.on_event(ev);
                    let c = shared.health.lock().unwrap().on_event(ev, now_ms());
                    let back = matches!(ev, crate::health::HealthEvent::Recovered { .. });
                    if c {
                        shared.metrics.health.transition(ev.uuid(), back);
                    }
                    tracing::info!(?ev, unhealthy = c && !back, "health event");
                    changed |= c;
                }
                let due = {
                    let mut t = shared.health.lock().unwrap();
                    t.set_quiet(quiet.map(|s| s.saturating_mul(1000)));
                    t.due(now_ms())
                };
                for uuid in due {
                    let ok = events.probe(&uuid);
                    let mut t = shared.health.lock().unwrap();
                    if !ok {
                        t.hold(&uuid, now_ms());
                        shared.metrics.health.probe_failed(&uuid);
                    } else if t.recover(&uuid) {
                        tracing::info!(device = %uuid, "quiet and answering: healthy again");
                        shared.metrics.health.transition(&uuid, true);
                        changed = true;
                    }
                }
                if changed {
                    shared.replan();
                }
            }
        })
        .expect("spawning the health thread");
}

/// Everything long-running, until the process is stopped.
pub async fn run(opts: Options, shared: Arc<Shared>) -> Result<(), String> {
    // Before kubelet hears of any device: allocations of pods gone while the agent was down are
    // released, and devices held by containers the agent does not know are withheld.
    let mut reconciler = crate::podres::Reconciler::new(opts.pod_resources_socket.clone());
    reconciler.pass(&shared, true).await;
    crate::watchdog::spawn(shared.clone());
    {
        let s = shared.clone();
        let every = opts.reconcile_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                reconciler.pass(&s, false).await;
            }
        });
    }
    // One device plugin per resource name planned; a reload may add one, and one it drops ends
    // its supervisor, to be started again if the name comes back.
    let mut served: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut rx = shared.plan_rx();
    if let Some(addr) = opts.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics and /healthz");
        let s = shared.clone();
        tokio::spawn(async move {
            let app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move |headers: axum::http::HeaderMap| {
                        let s = s.clone();
                        async move {
                            let body = tokio::task::spawn_blocking(move || s.render_metrics())
                                .await
                                .unwrap_or_default();
                            let accept = headers.get("accept").and_then(|v| v.to_str().ok());
                            crate::exposition::respond(accept, body)
                        }
                    }),
                )
                .route("/healthz", axum::routing::get(|| async { "ok\n" }));
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("metrics server: {e}");
            }
        });
    }
    {
        // Configuration and discovery on one beat: a changed file is applied, and the GPUs are
        // asked again so that MIG changes made out of band are advertised without a restart.
        let s = shared.clone();
        let every = opts.reload_every;
        let path = opts.config_path.clone();
        tokio::spawn(async move {
            let mut last = path.as_ref().and_then(|p| std::fs::read(p).ok());
            loop {
                tokio::time::sleep(every).await;
                if let Some(path) = &path {
                    let now = std::fs::read(path).ok();
                    if now != last {
                        last = now;
                        let _ = s.reload(path);
                    }
                }
                let s2 = s.clone();
                let _ = tokio::task::spawn_blocking(move || s2.rediscover()).await;
            }
        });
    }
    {
        // Allocations of pods that are gone, with no process left, are cleaned up.
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let live = match &s.source {
                    Source::Kube { client, node } => live_pods(client, node).await.ok(),
                    Source::File(_) => s
                        .source
                        .pending(&s.node)
                        .await
                        .ok()
                        .map(|p| p.pods.into_iter().map(|p| p.uid).collect()),
                };
                let mut store = s.store.lock().unwrap();
                for t in allocate::collect_garbage(&s.paths, &mut store, live.as_ref()) {
                    tracing::info!(tenant = %t, "released the allocation of a finished pod");
                }
            }
        });
    }
    if let Source::Kube { client, node } = &shared.source {
        let (client, node) = (client.clone(), node.clone());
        let mut inv_rx = shared.plan_rx();
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let inv = {
                    let cfg = s.cfg.read().unwrap().clone();
                    let gpus = s.gpus.read().unwrap().clone();
                    devices::inventory(&cfg, &gpus, &s.unhealthy())
                };
                if let Err(e) = publish_inventory(&client, &node, &inv).await {
                    tracing::warn!("{e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                if inv_rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    loop {
        let names: Vec<String> = rx.borrow_and_update().resources.keys().cloned().collect();
        served.retain(|_, h| !h.is_finished());
        for r in names {
            if let std::collections::btree_map::Entry::Vacant(e) = served.entry(r) {
                let h = tokio::spawn(crate::plugin::supervise(
                    shared.clone(),
                    e.key().clone(),
                    opts.socket_dir.clone(),
                ));
                e.insert(h);
            }
        }
        // Also look again every second: a supervisor that saw its name dropped may end just
        // after a change brought the name back.
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                return Ok(());
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn live_pods(client: &kube::Client, node: &str) -> Result<BTreeSet<String>, String> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    let list = pods.list(&lp).await.map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            )
        })
        .filter_map(|p| p.metadata.uid)
        .collect())
}

async fn publish_inventory(
    client: &kube::Client,
    node: &str,
    inv: &gpuslice_core::protocol::Inventory,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::Node;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let patch = serde_json::json!({
        "metadata": {"annotations": {gpuslice_core::protocol::ANNOTATION_INVENTORY: inv.to_json()}}
    });
    nodes
        .patch(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(|e| format!("publishing the inventory on node {node}: {e}"))?;
    Ok(())
}

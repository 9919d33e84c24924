//! Prometheus metrics, gathered at scrape time from NVML (device totals, use, utilization) and
//! from every tenant ledger on the node: the agent's own tenants and plain `gpuslice run` ones.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::gpu::GpuSource;
use crate::state::Allocation;

type Labels = Vec<(String, String)>;
type G = Family<Labels, Gauge<f64, AtomicU64>>;
type C = Family<Labels, Counter<f64, AtomicU64>>;

pub struct Metrics {
    registry: Registry,
    gpu_total: G,
    gpu_used: G,
    gpu_util: G,
    gpu_healthy: G,
    t_used: G,
    t_limit: G,
    t_quota: G,
    t_refusals: C,
    pub reload_errors: Counter,
    pub config_ok: Gauge,
    pub allocations: Counter,
    pub allocate_refusals: Counter,
    /// Reconciliation with kubelet's pod resources API.
    pub podres: crate::podres::PodresMetrics,
    /// Compute share and throttled time, from the compute arbiter's figures.
    compute: crate::usage::ComputeMetrics,
    /// Device faults and health transitions.
    pub health: HealthMetrics,
    /// Processes the watchdog acted on (see `crate::watchdog`).
    watchdog_actions: C,
    lock: Mutex<()>,
}

fn gauge(r: &mut Registry, name: &str, help: &str) -> G {
    let f = G::default();
    r.register(name, help, f.clone());
    f
}

impl Metrics {
    /// `compute_dir`: where the compute arbiter publishes its figures.
    pub fn new(compute_dir: &std::path::Path) -> Metrics {
        let mut r = Registry::default();
        let gpu_total = gauge(
            &mut r,
            "gpuslice_gpu_memory_total_bytes",
            "Device memory of the GPU",
        );
        let gpu_used = gauge(
            &mut r,
            "gpuslice_gpu_memory_used_bytes",
            "Device memory in use on the GPU, all processes",
        );
        let gpu_util = gauge(
            &mut r,
            "gpuslice_gpu_utilization_ratio",
            "Fraction of the last second the GPU was busy",
        );
        let gpu_healthy = gauge(
            &mut r,
            "gpuslice_gpu_healthy",
            "1 if the GPU is advertised healthy",
        );
        let t_used = gauge(
            &mut r,
            "gpuslice_tenant_memory_used_bytes",
            "Device memory the tenant holds on the GPU, contexts included",
        );
        let t_limit = gauge(
            &mut r,
            "gpuslice_tenant_memory_limit_bytes",
            "The tenant's memory cap on the GPU",
        );
        let t_quota = gauge(
            &mut r,
            "gpuslice_tenant_compute_quota_ratio",
            "The tenant's compute quota as a fraction of the GPU",
        );
        let t_refusals = C::default();
        // The client appends `_total` to counters.
        r.register(
            "gpuslice_tenant_oom_refusals",
            "Allocations refused because they would exceed the tenant's cap",
            t_refusals.clone(),
        );
        let reload_errors = Counter::default();
        r.register(
            "gpuslice_config_reload_errors",
            "Configuration reloads refused (the last good configuration stays)",
            reload_errors.clone(),
        );
        let config_ok = Gauge::default();
        r.register(
            "gpuslice_config_last_reload_ok",
            "1 if the last configuration load succeeded",
            config_ok.clone(),
        );
        let allocations = Counter::default();
        r.register(
            "gpuslice_allocations",
            "Containers granted by Allocate",
            allocations.clone(),
        );
        let allocate_refusals = Counter::default();
        r.register(
            "gpuslice_allocate_refusals",
            "Allocate requests refused",
            allocate_refusals.clone(),
        );
        config_ok.set(1);
        let podres = crate::podres::PodresMetrics::register(&mut r);
        let compute = crate::usage::ComputeMetrics::register(&mut r, compute_dir.to_path_buf());
        let health = HealthMetrics::register(&mut r);
        let watchdog_actions = C::default();
        r.register(
            "gpuslice_watchdog_actions",
            "Processes the watchdog acted on: a tenant's process using a GPU without the \
             interposer, over the tenant's cap by the driver's count, or on a GPU the tenant may \
             not use; or a process of no tenant on a GPU (reason no-tenant). action is kill or report",
            watchdog_actions.clone(),
        );
        Metrics {
            registry: r,
            gpu_total,
            gpu_used,
            gpu_util,
            gpu_healthy,
            t_used,
            t_limit,
            t_quota,
            t_refusals,
            reload_errors,
            config_ok,
            allocations,
            allocate_refusals,
            podres,
            compute,
            health,
            watchdog_actions,
            lock: Mutex::new(()),
        }
    }

    /// Counts one watchdog action.
    pub fn watchdog_action(&self, tenant: &str, gpu: &str, reason: &str, action: &str) {
        let l: Labels = vec![
            ("tenant".into(), tenant.to_string()),
            ("gpu".into(), gpu.to_string()),
            ("reason".into(), reason.to_string()),
            ("action".into(), action.to_string()),
        ];
        self.watchdog_actions.get_or_create(&l).inc();
    }

    /// Reads everything afresh and renders the exposition text.
    pub fn render(
        &self,
        gpus: &dyn GpuSource,
        unhealthy: &std::collections::BTreeSet<String>,
        tenant_dirs: &[PathBuf],
        allocations: &[Allocation],
    ) -> String {
        let _g = self.lock.lock().unwrap();
        for f in [
            &self.gpu_total,
            &self.gpu_used,
            &self.gpu_util,
            &self.gpu_healthy,
            &self.t_used,
            &self.t_limit,
            &self.t_quota,
        ] {
            f.clear();
        }
        self.t_refusals.clear();
        if let Ok(list) = gpus.gpus() {
            for g in list {
                let l: Labels = vec![
                    ("gpu".into(), g.uuid.clone()),
                    ("model".into(), g.model.clone()),
                ];
                self.gpu_total.get_or_create(&l).set(g.memory_bytes as f64);
                self.gpu_healthy
                    .get_or_create(&l)
                    .set(if unhealthy.contains(&g.uuid) {
                        0.0
                    } else {
                        1.0
                    });
                if let Ok(s) = gpus.sample(g.index) {
                    self.gpu_used
                        .get_or_create(&l)
                        .set(s.memory_used_bytes as f64);
                    self.gpu_util.get_or_create(&l).set(s.utilization);
                }
            }
        }
        let mut known: Vec<crate::usage::Known> = Vec::new();
        for dir in tenant_dirs {
            for (name, ledger) in ledgers(dir) {
                let a = allocations.iter().find(|a| a.tenant == name);
                let labels = |gpu: &str| -> Labels {
                    vec![
                        ("tenant".into(), name.clone()),
                        (
                            "namespace".into(),
                            a.map(|a| a.namespace.clone()).unwrap_or_default(),
                        ),
                        ("pod".into(), a.map(|a| a.pod.clone()).unwrap_or_default()),
                        (
                            "container".into(),
                            a.map(|a| a.container.clone()).unwrap_or_default(),
                        ),
                        ("gpu".into(), gpu.to_string()),
                    ]
                };
                let quota = ledger
                    .compute()
                    .ok()
                    .flatten()
                    .map(|c| c.quota as f64 / 100.0);
                let spec = ledger.spec();
                let mut gpus_seen: Vec<String> = Vec::new();
                for d in ledger.devices() {
                    let u = gpuslice_ledger::format_uuid(&d.uuid);
                    let l = labels(&u);
                    self.t_used.get_or_create(&l).set(d.used as f64);
                    self.t_limit.get_or_create(&l).set(d.cap as f64);
                    self.t_refusals.get_or_create(&l).inc_by(d.refusals as f64);
                    if let Some(q) = quota {
                        self.t_quota.get_or_create(&l).set(q);
                    }
                    gpus_seen.push(u);
                }
                // GPUs the tenant may use but has not touched yet: limit known, nothing used.
                for u in spec.allowed.iter().map(gpuslice_ledger::format_uuid) {
                    if gpus_seen.contains(&u) {
                        continue;
                    }
                    let l = labels(&u);
                    self.t_used.get_or_create(&l).set(0.0);
                    self.t_limit.get_or_create(&l).set(spec.memory_cap as f64);
                    self.t_refusals.get_or_create(&l).inc_by(0.0);
                    if let Some(q) = quota {
                        self.t_quota.get_or_create(&l).set(q);
                    }
                    gpus_seen.push(u);
                }
                let mut base = labels("");
                base.pop();
                known.push(crate::usage::Known {
                    id: ledger.tenant_id(),
                    labels: base,
                    gpus: gpus_seen,
                    gated: quota.is_some(),
                });
            }
        }
        self.compute.update(&known);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String");
        out
    }
}

/// `(tenant name, ledger)` for every `<dir>/<tenant>/ledger` that opens.
fn ledgers(dir: &Path) -> Vec<(String, gpuslice_ledger::Ledger)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, gpuslice_ledger::Ledger)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            gpuslice_ledger::Ledger::open(&e.path().join("ledger"))
                .ok()
                .map(|l| (name, l))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Counters of GPU faults and health transitions, kept by the health loop.
pub struct HealthMetrics {
    xids: C,
    ecc: C,
    lost: C,
    transitions: C,
    probe_failures: C,
}

impl HealthMetrics {
    pub fn register(r: &mut Registry) -> HealthMetrics {
        let (xids, ecc, lost, transitions, probe_failures) = (
            C::default(),
            C::default(),
            C::default(),
            C::default(),
            C::default(),
        );
        r.register(
            "gpuslice_gpu_xid_errors",
            "XID errors NVML reported, by GPU and XID (application XIDs included)",
            xids.clone(),
        );
        r.register(
            "gpuslice_gpu_ecc_uncorrectable_errors",
            "Uncorrectable (double-bit) ECC errors NVML reported, by GPU",
            ecc.clone(),
        );
        r.register(
            "gpuslice_gpu_lost_events",
            "Times a GPU was found fallen off the bus (NVML GPU_IS_LOST), by GPU",
            lost.clone(),
        );
        r.register(
            "gpuslice_device_health_transitions",
            "Devices (GPUs or MIG devices) advertised unhealthy or healthy again",
            transitions.clone(),
        );
        r.register(
            "gpuslice_device_probe_failures",
            "Faulted devices still not answering NVML after a quiet period (kept unhealthy)",
            probe_failures.clone(),
        );
        HealthMetrics {
            xids,
            ecc,
            lost,
            transitions,
            probe_failures,
        }
    }

    pub fn on_event(&self, ev: &crate::health::HealthEvent) {
        use crate::health::HealthEvent;
        match ev {
            HealthEvent::Xid { uuid, code } => {
                let l: Labels = vec![
                    ("gpu".into(), uuid.clone()),
                    ("xid".into(), code.to_string()),
                ];
                self.xids.get_or_create(&l).inc();
            }
            HealthEvent::EccUncorrectable { uuid } => {
                self.ecc
                    .get_or_create(&vec![("gpu".into(), uuid.clone())])
                    .inc();
            }
            HealthEvent::Lost { uuid } => {
                self.lost
                    .get_or_create(&vec![("gpu".into(), uuid.clone())])
                    .inc();
            }
            HealthEvent::Recovered { .. } => {}
        }
    }

    pub fn probe_failed(&self, device: &str) {
        let l: Labels = vec![("device".into(), device.to_string())];
        self.probe_failures.get_or_create(&l).inc();
    }

    pub fn transition(&self, device: &str, healthy: bool) {
        let to = if healthy { "healthy" } else { "unhealthy" };
        let l: Labels = vec![
            ("device".into(), device.to_string()),
            ("to".into(), to.into()),
        ];
        self.transitions.get_or_create(&l).inc();
    }
}

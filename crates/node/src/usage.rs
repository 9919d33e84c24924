//! The tenants' compute share and throttled time: the compute arbiter's status file (in the
//! compute directory, written only by the arbiter) is read once a second (and at each scrape),
//! and `gpuslice_core::usage` turns its per-tenant counters into totals that never go
//! backwards. The same reading feeds `gpuslice top`.
//!
//! A row names its tenant by the id the tenant's ledger holds, so it is matched to the ledger
//! (and through it to the pod) by that id, not by its name. Rows of tenants whose ledger the
//! agent cannot see (`gpuslice run` under another user's state directory) are still reported,
//! as `<name>#<id>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use gpuslice_core::usage::{Reading, Usage};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How often the arbiter's figures are read, and so the share's window and the most of one process's
/// time that can be lost when it dies and its entry is taken before the next reading.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Shortest window a share is measured over: a little under the beat, so that every beat
/// closes one even when a scrape read them just before.
const WINDOW: Duration = Duration::from_millis(950);

/// The arbiter's figures in `dir` read now: one reading per tenant and GPU, and the tenant
/// names they carry. A tenant is keyed by its ledger's id (the arbiter's own id when the
/// tenant gave none).
pub fn read(dir: &Path) -> (Vec<Reading>, BTreeMap<u64, String>) {
    let mut out = Vec::new();
    let mut names = BTreeMap::new();
    for r in gpuslice_arbiter::status::read(&dir.join(gpuslice_arbiter::status::FILE)) {
        let tenant = if r.ledger_id != 0 {
            r.ledger_id
        } else {
            r.tenant_id
        };
        names.entry(tenant).or_insert(r.name);
        out.push(Reading {
            gpu: gpuslice_ledger::format_uuid(&r.gpu),
            // One row per registration and GPU, its counters only growing while the arbiter
            // lives: the arbiter's id names the row (a restarted arbiter's rows start again
            // from zero, which reads as a restart).
            entry: r.tenant_id as usize,
            pid: 0,
            tenant,
            used_ns: r.charged_ns,
            throttled_ns: r.throttled_ns,
        });
    }
    (out, names)
}

struct Inner {
    usage: Usage,
    names: BTreeMap<u64, String>,
    /// Tenants with a ledger at the last scrape: their totals are kept while it exists.
    keep: BTreeSet<u64>,
}

/// The arbiter's totals over time, sampled on a beat.
pub struct Sampler {
    dir: PathBuf,
    epoch: Instant,
    inner: Mutex<Inner>,
}

impl Sampler {
    fn new(dir: PathBuf) -> Sampler {
        Sampler {
            dir,
            epoch: Instant::now(),
            inner: Mutex::new(Inner {
                usage: Usage::new(WINDOW.as_nanos() as u64),
                names: BTreeMap::new(),
                keep: BTreeSet::new(),
            }),
        }
    }

    fn sample(&self) {
        // Read under the lock: the beat and a scrape sample concurrently, and a reading older
        // than one already observed would look like a counter restart and be added again.
        let mut g = self.inner.lock().unwrap();
        let (readings, names) = read(&self.dir);
        let now = self.epoch.elapsed().as_nanos() as u64;
        g.usage.observe(now, readings);
        g.names.extend(names);
        let keep = g.keep.clone();
        g.usage.forget_except(&keep);
        let live: BTreeSet<u64> = g.usage.totals().keys().map(|k| k.0).collect();
        g.names.retain(|t, _| live.contains(t));
    }
}

/// A tenant the metrics know from its ledger.
pub struct Known {
    pub id: u64,
    /// tenant, namespace, pod, container (the gpu label is added per series).
    pub labels: Vec<(String, String)>,
    /// GPUs the tenant's other series name; each gets a share and a throttled time, zero until
    /// it launches there.
    pub gpus: Vec<String>,
    /// Whether the tenant has compute limits (otherwise its launches are not gated and it
    /// never has an entry).
    pub gated: bool,
}

type Labels = Vec<(String, String)>;

pub struct ComputeMetrics {
    share: Family<Labels, Gauge<f64, AtomicU64>>,
    throttled: Family<Labels, Counter<f64, AtomicU64>>,
    sampler: Arc<Sampler>,
}

impl ComputeMetrics {
    /// Registers the two families and starts reading the arbiter's figures in `dir` on a beat, until
    /// this is dropped.
    pub fn register(r: &mut Registry, dir: PathBuf) -> ComputeMetrics {
        let share = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        r.register(
            "gpuslice_tenant_compute_share_ratio",
            "Fraction of the GPU's time the tenant's work took over the last second",
            share.clone(),
        );
        let throttled = Family::<Labels, Counter<f64, AtomicU64>>::default();
        // The client appends `_total` to counters.
        r.register(
            "gpuslice_tenant_throttled_seconds",
            "Time the tenant's processes were held back by the compute gate",
            throttled.clone(),
        );
        let sampler = Arc::new(Sampler::new(dir));
        spawn_beat(Arc::downgrade(&sampler));
        ComputeMetrics {
            share,
            throttled,
            sampler,
        }
    }

    /// Reads the figures now and sets both families: the tenants in `known` under their labels,
    /// any other tenant found in a region under `<name>#<id>`.
    pub fn update(&self, known: &[Known]) {
        self.share.clear();
        self.throttled.clear();
        {
            let mut g = self.sampler.inner.lock().unwrap();
            g.keep = known.iter().map(|k| k.id).filter(|&id| id != 0).collect();
        }
        self.sampler.sample();
        let g = self.sampler.inner.lock().unwrap();
        let mut done: BTreeSet<u64> = BTreeSet::new();
        let series = |base: &Labels, gpu: &str, key: &(u64, String)| {
            let mut l = base.clone();
            l.push(("gpu".into(), gpu.to_string()));
            let t = g.usage.totals().get(key).copied().unwrap_or_default();
            self.throttled
                .get_or_create(&l)
                .inc_by(t.throttled_ns as f64 / 1e9);
            if let Some(s) = g.usage.share(key) {
                self.share.get_or_create(&l).set(s);
            } else if g.usage.window().is_some() {
                self.share.get_or_create(&l).set(0.0);
            }
        };
        for k in known.iter().filter(|k| k.id != 0) {
            done.insert(k.id);
            let mut gpus: BTreeSet<&str> = g
                .usage
                .totals()
                .keys()
                .filter(|(t, _)| *t == k.id)
                .map(|(_, gpu)| gpu.as_str())
                .collect();
            if k.gated {
                gpus.extend(k.gpus.iter().map(String::as_str));
            }
            for gpu in gpus {
                series(&k.labels, gpu, &(k.id, gpu.to_string()));
            }
        }
        for key in g.usage.totals().keys().filter(|k| !done.contains(&k.0)) {
            let name = g.names.get(&key.0).map_or("", String::as_str);
            let base: Labels = vec![
                ("tenant".into(), format!("{name}#{:016x}", key.0)),
                ("namespace".into(), String::new()),
                ("pod".into(), String::new()),
                ("container".into(), String::new()),
            ];
            series(&base, &key.1, key);
        }
    }
}

/// Reads the figures every [`SAMPLE_EVERY`] while the sampler exists.
fn spawn_beat(sampler: Weak<Sampler>) {
    let _ = std::thread::Builder::new()
        .name("gpuslice-usage".into())
        .spawn(move || {
            loop {
                std::thread::sleep(SAMPLE_EVERY);
                match sampler.upgrade() {
                    Some(s) => s.sample(),
                    None => return,
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_arbiter::status::{self, Row};

    #[test]
    fn two_tenants_on_one_gpu_are_counted_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let row = |tenant_id: u64, charged_ns: u64| Row {
            gpu: [7; 16],
            tenant_id,
            ledger_id: 100 + tenant_id,
            name: format!("t{tenant_id}"),
            quota: 50,
            mode: 0,
            priority: 1,
            charged_ns,
            throttled_ns: 0,
            holder: false,
            processes: 1,
        };
        let mut u = Usage::new(1);
        for (t, (a, b)) in [(1_000, 3_000), (2_000, 7_000), (4_000, 9_000)]
            .into_iter()
            .enumerate()
        {
            status::write(&dir.path().join(status::FILE), &[row(1, a), row(2, b)]).unwrap();
            u.observe(t as u64 * 1_000, read(dir.path()).0);
        }
        let used: Vec<u64> = u.totals().values().map(|t| t.used_ns).collect();
        assert_eq!(used, vec![4_000, 9_000], "{:?}", u.totals());
    }
}

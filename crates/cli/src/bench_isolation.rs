//! `gpuslice bench isolation`: tenants saturating one simulated GPU with `busy` kernels of mixed
//! lengths (0.05 to 5 ms), each under `gpuslice run` with its quota, mode and priority. The
//! achieved shares per one-second window come from the simulator's record of what ran (the
//! instrument, not the enforcement: the interposer never reads it).

use gpuslice_compute::Region;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::install::Install;

pub struct Opts {
    pub warmup: f64,
    pub windows: usize,
    pub launches: u64,
    pub rounds: usize,
}

struct Tenant {
    name: String,
    quota: Option<u8>,
    mode: &'static str,
    priority: &'static str,
    work: Vec<String>,
}

fn t(
    name: &str,
    quota: Option<u8>,
    mode: &'static str,
    priority: &'static str,
    work: &[&str],
) -> Tenant {
    Tenant {
        name: name.into(),
        quota,
        mode,
        priority,
        work: work.iter().map(|s| s.to_string()).collect(),
    }
}

struct Scenario {
    dir: PathBuf,
}

impl Scenario {
    fn new(root: &Path, label: &str) -> Scenario {
        let dir = root.join(label);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scenario { dir }
    }

    fn spawn(&self, install: &Install, tn: &Tenant) -> Result<Child, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut c = Command::new(exe);
        c.args([
            "run",
            "--sim",
            "--gpu-memory",
            "4GiB",
            "--name",
            &tn.name,
            "--share-mode",
            tn.mode,
            "--priority",
            tn.priority,
        ]);
        if let Some(q) = tn.quota {
            c.args(["--gpu-compute", &q.to_string()]);
        }
        c.arg("--").arg(install.probe()).args(&tn.work);
        c.env("GPUSLICE_STATE_DIR", self.dir.join("state"))
            .env("GPUSLICE_SIM_STATE", self.dir.join("sim-gpu"))
            .env_remove("GPUSLICE_SIM_DEVICES")
            .env_remove("LD_PRELOAD")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        c.spawn().map_err(|e| e.to_string())
    }

    /// Probe pid → tenant name, from the GPU's compute region.
    fn names(&self) -> BTreeMap<u32, String> {
        let mut m = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("state/compute")) {
            for e in rd.flatten() {
                if let Ok(r) = Region::open(&e.path()) {
                    for v in r.entries() {
                        m.insert(v.pid, v.name);
                    }
                }
            }
        }
        m
    }

    fn sim(&self) -> Result<gpuslice_sim_state::Sim, String> {
        let specs = gpuslice_sim_state::parse_devices("").map_err(|e| e.to_string())?;
        gpuslice_sim_state::Sim::open(&self.dir.join("sim-gpu"), &specs).map_err(|e| e.to_string())
    }

    /// Shares (percent of wall time) per tenant name in each of `windows` one-second windows.
    fn windows(&self, warmup: f64, windows: usize) -> Result<Vec<BTreeMap<String, f64>>, String> {
        std::thread::sleep(Duration::from_secs_f64(warmup));
        let sim = self.sim()?;
        let mut names = self.names();
        let mut out = Vec::new();
        for _ in 0..windows {
            let since = gpuslice_sim_state::Sim::now_ns();
            std::thread::sleep(Duration::from_secs(1));
            let now = gpuslice_sim_state::Sim::now_ns();
            names.extend(self.names());
            let mut w = BTreeMap::new();
            for (pid, busy, _) in sim.process_busy(0, since) {
                // Work queued beyond now is not yet done; count only what ran in the window.
                let name = names
                    .get(&pid)
                    .cloned()
                    .unwrap_or_else(|| format!("pid{pid}"));
                *w.entry(name).or_insert(0.0) += busy as f64 * 100.0 / (now - since) as f64;
            }
            out.push(w);
        }
        Ok(out)
    }
}

fn finish(children: Vec<Child>) -> Vec<serde_json::Value> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().ok();
            out.and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(|l| serde_json::from_str(l).ok())
            })
            .unwrap_or(serde_json::Value::Null)
        })
        .collect()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISS" }
}

pub fn run(install: &Install, root: &Path, o: &Opts) -> Result<(), String> {
    let secs = (o.warmup + o.windows as f64 + 0.5).to_string();
    let sat = ["saturate", secs.as_str()];
    println!(
        "gpuslice bench isolation — simulated GPU, busy kernels of 0.05-5 ms, share of wall time per 1 s window after {} s warm-up (target in brackets)",
        o.warmup
    );
    let shares: Vec<(&str, Vec<Tenant>, Vec<f64>, f64)> = vec![
        (
            "30/70 best-effort",
            vec![
                t("a30", Some(30), "best-effort", "normal", &sat),
                t("b70", Some(70), "best-effort", "normal", &sat),
            ],
            vec![30.0, 70.0],
            3.0,
        ),
        (
            "10/90 best-effort",
            vec![
                t("a10", Some(10), "best-effort", "normal", &sat),
                t("b90", Some(90), "best-effort", "normal", &sat),
            ],
            vec![10.0, 90.0],
            3.0,
        ),
        (
            "10/20/30/40 best-effort",
            vec![
                t("a10", Some(10), "best-effort", "normal", &sat),
                t("b20", Some(20), "best-effort", "normal", &sat),
                t("c30", Some(30), "best-effort", "normal", &sat),
                t("d40", Some(40), "best-effort", "normal", &sat),
            ],
            vec![10.0, 20.0, 30.0, 40.0],
            3.0,
        ),
        (
            "fixed 30% alone",
            vec![t("a30", Some(30), "fixed", "normal", &sat)],
            vec![30.0],
            3.0,
        ),
        (
            "best-effort 30% alone (>= 95)",
            vec![t("a30", Some(30), "best-effort", "normal", &sat)],
            vec![100.0],
            5.0,
        ),
        (
            "equal, 3 tenants (quotas 10/30/60 ignored)",
            vec![
                t("a", Some(10), "equal", "normal", &sat),
                t("b", Some(30), "equal", "normal", &sat),
                t("c", Some(60), "equal", "normal", &sat),
            ],
            vec![100.0 / 3.0, 100.0 / 3.0, 100.0 / 3.0],
            3.0,
        ),
        (
            "30/70 best-effort, 70 replays CUDA graphs",
            vec![
                t("a30", Some(30), "best-effort", "normal", &sat),
                t(
                    "b70",
                    Some(70),
                    "best-effort",
                    "normal",
                    &["saturate", secs.as_str(), "graph"],
                ),
            ],
            vec![30.0, 70.0],
            3.0,
        ),
        (
            "30/70 best-effort, 30 launches cooperatively",
            vec![
                t(
                    "a30",
                    Some(30),
                    "best-effort",
                    "normal",
                    &["saturate", secs.as_str(), "coop"],
                ),
                t(
                    "b70",
                    Some(70),
                    "best-effort",
                    "normal",
                    &["saturate", secs.as_str(), "ex"],
                ),
            ],
            vec![30.0, 70.0],
            3.0,
        ),
    ];
    for (i, (label, tenants, target, tol)) in shares.into_iter().enumerate() {
        let sc = Scenario::new(root, &format!("s{i}"));
        let children = tenants
            .iter()
            .map(|tn| sc.spawn(install, tn))
            .collect::<Result<Vec<_>, _>>()?;
        let ws = sc.windows(o.warmup, o.windows);
        finish(children);
        let ws = ws?;
        let mut worst: f64 = 0.0;
        let mut cells = Vec::new();
        for (k, tn) in tenants.iter().enumerate() {
            let got: Vec<f64> = ws
                .iter()
                .map(|w| w.get(&tn.name).copied().unwrap_or(0.0))
                .collect();
            for g in &got {
                worst = worst.max((g - target[k]).abs());
            }
            let list: Vec<String> = got.iter().map(|g| format!("{g:.1}")).collect();
            cells.push(format!("{} [{:.0}] {}", tn.name, target[k], list.join(" ")));
        }
        println!(
            "{label:<44} {}   worst |Δ| {worst:.1} pp {}",
            cells.join("  |  "),
            verdict(worst <= tol)
        );
    }

    // Priority: an inference-like loop (2 ms kernel every 20 ms), alone and next to a saturating
    // low-priority tenant.
    let run_secs = (o.warmup + o.windows as f64).to_string();
    let periodic = ["periodic", "20", "2000", run_secs.as_str()];
    let sc = Scenario::new(root, "p-alone");
    let alone =
        finish(vec![sc.spawn(
            install,
            &t("infer", None, "best-effort", "high", &periodic),
        )?]);
    let p99_alone = alone[0]["p99_us"]
        .as_f64()
        .ok_or("periodic probe gave no report")?;
    let sc = Scenario::new(root, "p-shared");
    let low = sc.spawn(
        install,
        &t(
            "train",
            None,
            "best-effort",
            "low",
            &["saturate", secs.as_str()],
        ),
    )?;
    let high = sc.spawn(install, &t("infer", None, "best-effort", "high", &periodic))?;
    let ws = sc.windows(o.warmup, o.windows);
    let rep = finish(vec![high, low]);
    let ws = ws?;
    let p99 = rep[0]["p99_us"]
        .as_f64()
        .ok_or("periodic probe gave no report")?;
    let longest_low = 5000.0;
    let bound = p99_alone * 1.05 + longest_low;
    let mut low_of_rest = f64::MAX;
    for w in &ws {
        let hi = w.get("infer").copied().unwrap_or(0.0);
        let lo = w.get("train").copied().unwrap_or(0.0);
        low_of_rest = low_of_rest.min(lo * 100.0 / (100.0 - hi));
    }
    println!(
        "{:<44} high p99 alone {:.2} ms, next to low {:.2} ms (bound {:.2} ms = alone +5% + 5 ms) {}",
        "priority high (2 ms / 20 ms) + low saturating",
        p99_alone / 1e3,
        p99 / 1e3,
        bound / 1e3,
        verdict(p99 <= bound)
    );
    println!(
        "{:<44} low gets {:.1}% of the time high leaves (>= 80, worst window) {}",
        "",
        low_of_rest,
        verdict(low_of_rest >= 80.0)
    );
    Ok(())
}

/// ns a launch costs: direct, through the interposer with memory limits only, and with the
/// compute gate (uncontended: the tenant alone on the GPU).
pub fn overhead(install: &Install, root: &Path, o: &Opts) -> Result<(), String> {
    let sc = Scenario::new(root, "overhead");
    let simlib = sc.dir.join("lib");
    install.link_simulator(&simlib)?;
    let mut ledgers = Vec::new();
    for (k, compute) in [(0, false), (1, true)] {
        let p = sc.dir.join(format!("ledger{k}"));
        let l = gpuslice_ledger::Ledger::create(
            &p,
            &gpuslice_ledger::TenantSpec {
                name: format!("bench{k}"),
                memory_cap: 64 << 30,
                context_overhead: 0,
                allowed: vec![],
            },
        )
        .map_err(|e| e.to_string())?;
        if compute {
            l.set_compute(gpuslice_ledger::ComputeSpec {
                quota: 100,
                mode: 0,
                priority: 1,
            })
            .map_err(|e| e.to_string())?;
        }
        ledgers.push(p);
    }
    let n = o.launches.to_string();
    let measure = |ledger: Option<&PathBuf>| -> Result<f64, String> {
        let mut c = Command::new(install.probe());
        c.args(["launches", &n])
            .env("LD_LIBRARY_PATH", &simlib)
            .env("GPUSLICE_SIM_STATE", sc.dir.join("sim-gpu"))
            .env("GPUSLICE_COMPUTE_DIR", sc.dir.join("compute"))
            .env_remove("LD_PRELOAD");
        if let Some(l) = ledger {
            c.env("LD_PRELOAD", install.interposer())
                .env("GPUSLICE_LEDGER", l);
        }
        let out = c.output().map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "launch probe: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        v["ns_per_call"]
            .as_f64()
            .ok_or_else(|| format!("launch probe: {v}"))
    };
    let (mut d, mut m, mut g) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        d.push(measure(None)?);
        m.push(measure(Some(&ledgers[0]))?);
        g.push(measure(Some(&ledgers[1]))?);
    }
    let med = crate::bench::median;
    let (d, m, g) = (med(d), med(m), med(g));
    println!(
        "{:<44} direct {d:.1}, memory-only interposer {m:.1}, with the compute gate {g:.1}: the gate adds {:.1} ns (target <= 150), the whole interposer {:.1} ns",
        "uncontended cuLaunchKernel (ns/launch)",
        g - m,
        g - d
    );
    Ok(())
}

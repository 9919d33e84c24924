//! `gpuslice bench`: what the interposer costs, measured side by side in one run on the
//! simulated GPU (shim vs direct), so that a noisy machine affects both sides alike.

use gpuslice_core::tenant::DEFAULT_CONTEXT_OVERHEAD;
use gpuslice_ledger::{Ledger, TenantSpec};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::install::Install;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// overhead: what the interposer costs per call; isolation: compute shares, modes and
    /// priority across the workload shapes of real programs, on the simulated GPU.
    #[arg(default_value = "overhead", value_parser = ["overhead", "isolation"])]
    which: String,
    /// isolation: seconds of warm-up before the measured windows.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// isolation: measured one-second windows per scenario.
    #[arg(long, default_value_t = 3)]
    windows: usize,
    /// Kernel launches per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    launches: u64,
    /// cuMemAlloc+cuMemFree pairs per measurement.
    #[arg(long, default_value_t = 100_000)]
    allocs: u64,
    /// Process starts per side for the start-up cost.
    #[arg(long, default_value_t = 200)]
    starts: u32,
    /// Processes that initialise CUDA at once in one tenant.
    #[arg(long, default_value_t = 300)]
    processes: usize,
    /// Alternating rounds per comparison (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// isolation: the reduced matrix (about a minute).
    #[arg(long)]
    quick: bool,
    /// isolation: run only these rows (comma-separated ids; `overhead` is the launch cost).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// isolation: also print one JSON line per row.
    #[arg(long)]
    json: bool,
}

struct Bench {
    install: Install,
    dir: PathBuf,
    simlib: PathBuf,
}

impl Bench {
    fn command(&self, shim: bool, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("LD_LIBRARY_PATH", &self.simlib)
            .env("GPUSLICE_SIM_STATE", self.dir.join("sim-gpu"))
            .env_remove("LD_PRELOAD");
        if shim {
            // The limits come from this process, the probes' warden (see `run`).
            c.env("LD_PRELOAD", self.install.interposer());
        }
        c
    }

    fn probe_ns(&self, shim: bool, args: &[&str]) -> Result<f64, String> {
        let out = self
            .command(shim, &self.install.probe())
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "probe {args:?}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        v["ns_per_call"]
            .as_f64()
            .ok_or_else(|| format!("probe {args:?}: {v}"))
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
}

pub fn bench(args: BenchArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gpuslice bench: {e}");
            1
        }
    }
}

fn run(a: BenchArgs) -> Result<(), String> {
    let install = Install::locate()?;
    if a.which == "isolation" {
        let root = std::env::temp_dir().join(format!("gpuslice-bench-iso-{}", std::process::id()));
        let o = crate::bench_isolation::Opts {
            warmup: a.warmup,
            windows: a.windows,
            launches: a.launches.min(500_000),
            rounds: a.rounds,
            quick: a.quick,
            only: a.only,
            json: a.json,
        };
        let r = crate::bench_isolation::run(&install, &root, &o);
        let _ = std::fs::remove_dir_all(&root);
        return r;
    }
    let dir = std::env::temp_dir().join(format!("gpuslice-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let simlib = dir.join("lib");
    install.link_simulator(&simlib)?;
    let ledger = dir.join("ledger");
    let spec = TenantSpec {
        name: "bench".into(),
        memory_cap: 64 << 30,
        context_overhead: DEFAULT_CONTEXT_OVERHEAD.bytes(),
        allowed: vec![],
    };
    let l = Ledger::create(&ledger, &spec).map_err(|e| e.to_string())?;
    // A full share in best-effort mode: alone on the GPU, every launch takes the gate's fast
    // path, which is what the interposer costs a tenant that is not waiting.
    let compute = gpuslice_ledger::ComputeSpec {
        quota: 100,
        mode: gpuslice_compute::policy::MODE_BEST_EFFORT,
        priority: gpuslice_compute::policy::PRIO_NORMAL,
    };
    l.set_compute(compute).map_err(|e| e.to_string())?;
    let limits = l.limits().map_err(|e| e.to_string())?;
    // The benchmark's own arbiter, so that no other tenant of the machine shares its GPU.
    let arbiter = gpuslice_arbiter::server::Handle::spawn(
        None,
        gpuslice_arbiter::server::Options {
            status: None,
            linger: None,
        },
    )
    .map_err(|e| format!("cannot start the compute arbiter: {e}"))?;
    let socket = dir.join("arbiter.sock");
    arbiter
        .add_tenant(
            &socket,
            gpuslice_arbiter::Spec {
                name: "bench".into(),
                quota: compute.quota,
                mode: compute.mode,
                priority: compute.priority,
                ledger_id: limits.tenant_id,
            },
        )
        .map_err(|e| format!("cannot register with the compute arbiter: {e}"))?;
    // The benchmark's processes are its children: it serves their limits as `gpuslice run`
    // would, so the measured start-up includes finding them.
    let reaper = Ledger::open(&ledger).map_err(|e| e.to_string())?;
    gpuslice_warden::server::start(
        gpuslice_warden::server::Grant {
            limits,
            ledger: ledger.clone(),
            arbiter: Some(Box::new(move || {
                gpuslice_compute::wire::connect_path(&socket)
            })),
        },
        move || {
            reaper.reclaim_dead(None);
        },
    )
    .map_err(|e| format!("cannot serve the probes' limits: {e}"))?;
    let b = Bench {
        install,
        dir: dir.clone(),
        simlib,
    };
    let result = report(&b, &a, &l);
    drop(arbiter);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn report(b: &Bench, a: &BenchArgs, ledger: &Ledger) -> Result<(), String> {
    println!(
        "gpuslice bench — interposer vs direct, simulated GPU, {} alternating rounds, medians",
        a.rounds
    );
    println!(
        "{:<44} {:>12} {:>12} {:>12}",
        "", "direct", "gpuslice", "added"
    );
    let launches = a.launches.to_string();
    let allocs = a.allocs.to_string();
    for (label, args) in [
        (
            "cuLaunchKernel (ns/call)",
            vec!["launches", launches.as_str()],
        ),
        (
            "cuMemAlloc + cuMemFree (ns/call, 1MiB)",
            vec!["allocs", allocs.as_str(), "1MiB"],
        ),
    ] {
        let (mut d, mut s) = (Vec::new(), Vec::new());
        for _ in 0..a.rounds {
            d.push(b.probe_ns(false, &args)?);
            s.push(b.probe_ns(true, &args)?);
        }
        let (d, s) = (median(d), median(s));
        println!("{label:<44} {d:>12.1} {s:>12.1} {:>12.1}", s - d);
    }

    // Start-up: a process that never touches CUDA pays only the library load and constructor.
    let truth = PathBuf::from("/bin/true");
    let (mut d, mut s) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        for (shim, acc) in [(false, &mut d), (true, &mut s)] {
            let t = Instant::now();
            for _ in 0..a.starts {
                b.command(shim, &truth)
                    .status()
                    .map_err(|e| e.to_string())?;
            }
            acc.push(t.elapsed().as_secs_f64() * 1e3 / a.starts as f64);
        }
    }
    let (d, s) = (median(d), median(s));
    println!(
        "{:<44} {d:>12.3} {s:>12.3} {:>12.3}",
        "process start-up, no CUDA (ms)",
        s - d
    );
    // A whole tenant around a command that does nothing: what wrapping a job costs.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let starts = a.starts.clamp(1, 50);
    let (mut d, mut s) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        for (wrapped, acc) in [(false, &mut d), (true, &mut s)] {
            let t = Instant::now();
            for _ in 0..starts {
                let mut c = if wrapped {
                    let mut c = Command::new(&exe);
                    c.args(["run", "--sim", "--gpu-memory", "1GiB", "--", "/bin/true"])
                        .env("GPUSLICE_STATE_DIR", b.dir.join("state"));
                    c
                } else {
                    Command::new(&truth)
                };
                let st = c
                    .env("GPUSLICE_SIM_STATE", b.dir.join("sim-gpu"))
                    .env_remove("LD_PRELOAD")
                    .status()
                    .map_err(|e| e.to_string())?;
                if !st.success() {
                    return Err(format!("gpuslice run -- true exited with {st}"));
                }
            }
            acc.push(t.elapsed().as_secs_f64() * 1e3 / starts as f64);
        }
    }
    let (d, s) = (median(d), median(s));
    println!(
        "{:<44} {d:>12.3} {s:>12.3} {:>12.3}",
        "`gpuslice run -- true` vs `true` (ms)",
        s - d
    );
    let (mut d, mut s) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        for (shim, acc) in [(false, &mut d), (true, &mut s)] {
            let out = b
                .command(shim, &b.install.probe())
                .arg("info")
                .output()
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            acc.push(v["init_ns"].as_f64().unwrap_or(f64::NAN) / 1e6);
        }
    }
    let (d, s) = (median(d), median(s));
    println!(
        "{:<44} {d:>12.3} {s:>12.3} {:>12.3}",
        "CUDA init to first cuMemGetInfo (ms)",
        s - d
    );

    // Many processes of one tenant initialising at once: no serialisation on the ledger.
    for shim in [false, true] {
        let t = Instant::now();
        let children: Vec<_> = (0..a.processes)
            .map(|_| {
                b.command(shim, &b.install.probe())
                    .arg("info")
                    .stdout(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let mut init: Vec<f64> = Vec::new();
        for c in children {
            let out = c.wait_with_output().map_err(|e| e.to_string())?;
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                init.push(v["init_ns"].as_f64().unwrap_or(f64::NAN) / 1e6);
            }
        }
        init.sort_by(|a, b| a.total_cmp(b));
        if init.len() != a.processes {
            return Err(format!(
                "only {} of {} processes initialised CUDA",
                init.len(),
                a.processes
            ));
        }
        println!(
            "{} concurrent processes {:<9} CUDA init p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all done in {:.2} s",
            a.processes,
            if shim { "(gpuslice)" } else { "(direct)" },
            percentile(&init, 0.5),
            percentile(&init, 0.99),
            init[init.len() - 1],
            t.elapsed().as_secs_f64()
        );
    }
    ledger.reclaim_dead(None);
    Ok(())
}

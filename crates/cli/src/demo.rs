//! `gpuslice demo`: isolation at work on the simulated GPU, with no GPU and no setup.
//!
//! Several tenants share one simulated 80 GiB GPU, each started by `gpuslice run` with its own
//! cap, each pushing a different allocation path until it is refused. Then two processes of one
//! tenant race for the last bytes, and a process is SIGKILLed while holding memory.

use gpuslice_core::ByteSize;
use gpuslice_ledger::Ledger;
use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::install::Install;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

struct TenantPlan {
    name: &'static str,
    cap: &'static str,
    path: &'static str,
    what: &'static str,
    chunk: &'static str,
}

const TENANTS: &[TenantPlan] = &[
    TenantPlan {
        name: "train-a",
        cap: "8GiB",
        path: "alloc",
        what: "cuMemAlloc",
        chunk: "512MiB",
    },
    TenantPlan {
        name: "infer-b",
        cap: "4GiB",
        path: "pool",
        what: "cuMemAllocFromPoolAsync",
        chunk: "256MiB",
    },
    TenantPlan {
        name: "serve-c",
        cap: "3GiB",
        path: "async",
        what: "cuMemAllocAsync",
        chunk: "256MiB",
    },
    TenantPlan {
        name: "jax-d",
        cap: "3GiB",
        path: "vmm",
        what: "cuMemCreate (VMM)",
        chunk: "256MiB",
    },
    TenantPlan {
        name: "viz-e",
        cap: "2GiB",
        path: "array",
        what: "cuArrayCreate",
        chunk: "128MiB",
    },
    TenantPlan {
        name: "graph-f",
        cap: "2GiB",
        path: "graph",
        what: "graph alloc nodes",
        chunk: "256MiB",
    },
    TenantPlan {
        name: "nb-g",
        cap: "1.5GiB",
        path: "managed",
        what: "cuMemAllocManaged",
        chunk: "256MiB",
    },
];

#[derive(Deserialize, Default)]
struct FillReport {
    granted: u64,
    error: i32,
    free: u64,
    total: u64,
}

fn gib(b: u64) -> String {
    ByteSize(b).to_string()
}

struct Demo {
    install: Install,
    dir: PathBuf,
    exe: PathBuf,
}

impl Demo {
    fn tenant(&self, name: &str, cap: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(["run", "--sim", "--gpu-memory", cap, "--name", name, "--"])
            .args(cmd);
        c.env("GPUSLICE_STATE_DIR", &self.dir)
            .env("GPUSLICE_SIM_STATE", self.dir.join("sim-gpu"))
            .env_remove("GPUSLICE_SIM_DEVICES");
        c
    }

    fn probe(&self) -> String {
        self.install.probe().to_string_lossy().into_owned()
    }

    fn ledger_of(&self, name: &str) -> Option<Ledger> {
        let tenants = self.dir.join("tenants");
        let entry = std::fs::read_dir(tenants).ok()?.flatten().find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
        })?;
        Ledger::open(&entry.path().join("ledger")).ok()
    }
}

fn first_line(child: &mut Child, timeout: Duration) -> Option<String> {
    let out = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout).ok().filter(|l| !l.is_empty())
}

fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

pub fn demo(_args: DemoArgs) -> i32 {
    match run_demo() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("gpuslice demo: {e}");
            1
        }
    }
}

fn run_demo() -> Result<bool, String> {
    let install = Install::locate()?;
    if !install.probe().is_file() {
        return Err(format!(
            "the demo workload {} is missing; build the workspace with `cargo build`",
            install.probe().display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("gpuslice-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let demo = Demo {
        install,
        dir: dir.clone(),
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let result = show(&demo);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn show(demo: &Demo) -> Result<bool, String> {
    println!(
        "gpuslice demo — one simulated NVIDIA H100 80GB shared by {} tenants",
        TENANTS.len()
    );
    println!(
        "Each tenant is a `gpuslice run --sim --gpu-memory CAP` process that allocates through one"
    );
    println!("path until refused. Every CUDA context also costs 256MiB, charged to its tenant.\n");
    let probe = demo.probe();
    let mut children: Vec<(Child, &TenantPlan)> = Vec::new();
    for t in TENANTS {
        let mut c = demo.tenant(t.name, t.cap, &[&probe, "fill", t.path, t.chunk, "--hold"]);
        c.stdout(Stdio::piped());
        children.push((c.spawn().map_err(|e| e.to_string())?, t));
    }
    let mut ok = true;
    let mut rows = Vec::new();
    for (child, t) in children.iter_mut() {
        let line = first_line(child, Duration::from_secs(30))
            .ok_or_else(|| format!("tenant {} reported nothing", t.name))?;
        let r: FillReport =
            serde_json::from_str(&line).map_err(|e| format!("tenant {}: {e}: {line}", t.name))?;
        let cap: ByteSize = t.cap.parse().unwrap();
        let ledger = demo
            .ledger_of(t.name)
            .ok_or_else(|| format!("tenant {} has no ledger", t.name))?;
        let dev = ledger
            .devices()
            .into_iter()
            .next()
            .unwrap_or(gpuslice_ledger::DeviceUsage {
                uuid: [0; 16],
                cap: 0,
                used: 0,
                peak: 0,
                refusals: 0,
            });
        let held = dev.used <= cap.bytes() && r.error == 2 && r.total == cap.bytes();
        ok &= held;
        rows.push([
            t.name.to_string(),
            t.what.to_string(),
            t.cap.to_string(),
            format!("{} × {}", r.granted, t.chunk),
            if r.error == 2 {
                "OUT_OF_MEMORY".into()
            } else {
                format!("error {}", r.error)
            },
            gib(dev.used),
            gib(r.total),
            gib(r.free),
            if held { "yes".into() } else { "NO".into() },
        ]);
    }
    print_table(
        &[
            "tenant",
            "allocates with",
            "cap",
            "granted",
            "then refused",
            "ledger used",
            "sees total",
            "sees free",
            "within cap",
        ],
        &rows,
    );
    for (child, _) in children.iter_mut() {
        stop(child);
    }

    println!();
    ok &= race(demo)?;
    ok &= sigkill(demo)?;
    println!(
        "\n{}",
        if ok {
            "All tenants stayed within their caps."
        } else {
            "ISOLATION FAILED: see the rows above."
        }
    );
    Ok(ok)
}

/// Two processes of one tenant ask for 1.5GiB each at the same instant, with 2.5GiB left.
fn race(demo: &Demo) -> Result<bool, String> {
    let probe = demo.probe();
    let at = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + Duration::from_millis(1500))
    .as_nanos()
    .to_string();
    let script =
        format!("'{probe}' race 1536MiB {at} 500 & '{probe}' race 1536MiB {at} 500 & wait");
    let out = demo
        .tenant("race", "3GiB", &["sh", "-c", &script])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let granted = text.matches("\"error\":0").count();
    let refused = text.matches("\"error\":2").count();
    let ok = granted == 1 && refused == 1;
    println!(
        "Race: tenant `race` (cap 3GiB, two processes, 2.5GiB left after their contexts) — both ask for 1.5GiB at once: {granted} granted, {refused} refused{}",
        if ok {
            "."
        } else {
            "  <-- expected exactly one"
        }
    );
    Ok(ok)
}

/// A process holding 3GiB is SIGKILLed; its tenant gets the memory back within a second.
fn sigkill(demo: &Demo) -> Result<bool, String> {
    let probe = demo.probe();
    let flag = demo.dir.join("holder.out");
    let script = format!(
        "'{probe}' hold 3GiB > '{f}' & h=$!; while [ ! -s '{f}' ]; do sleep 0.02; done; kill -9 $h; wait $h 2>/dev/null; \
         t0=$(date +%s%N); '{probe}' fill alloc 1GiB --max 3; echo \"$(( ($(date +%s%N) - t0) / 1000000 ))\"",
        f = flag.display()
    );
    let start = Instant::now();
    let out = demo
        .tenant("crash", "4GiB", &["sh", "-c", &script])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let report: FillReport = text
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    let ok = report.granted == 3;
    println!(
        "SIGKILL: tenant `crash` (cap 4GiB) — a process holding 3GiB was killed with SIGKILL; the next process got {} of 3GiB back{} ({:.1}s in all)",
        gib(report.granted << 30),
        if ok { "" } else { "  <-- expected all of it" },
        start.elapsed().as_secs_f64()
    );
    Ok(ok)
}

fn print_table(head: &[&str], rows: &[[String; 9]]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("  {}", parts.join("  "));
    };
    line(head.to_vec());
    line(
        w.iter()
            .map(|&n| "-".repeat(n))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

//! Compute isolation, end to end: tenants under `gpuslice run` saturate one simulated GPU
//! through the real interposer; what each achieved is read from the simulator's record of what
//! ran. Bounds are generous: these are correctness properties (shares converge, nobody starves,
//! a killed holder frees its turn, every launch path is gated); the exact figures are
//! `gpuslice bench isolation`'s.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tenant(m: &Machine, name: &str, compute: &[&str], args: &[&str]) -> Command {
    let mut c = Command::new(gpuslice());
    c.args(["run", "--sim", "--gpu-memory", "2GiB", "--name", name])
        .args(compute)
        .arg("--")
        .arg(probe())
        .args(args);
    m.env(&mut c);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// `gpuslice run` processes of the test, by pid, with their tenant names.
type Supervisors = BTreeMap<u32, String>;

fn parent_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// The tenant a process belongs to: the supervisor among its ancestors.
fn owner(pid: u32, sup: &Supervisors) -> Option<String> {
    let mut p = pid;
    for _ in 0..32 {
        if let Some(n) = sup.get(&p) {
            return Some(n.clone());
        }
        p = parent_of(p)?;
    }
    None
}

/// The arbiter's published rows for this machine.
fn status(m: &Machine) -> Vec<gpuslice_arbiter::status::Row> {
    gpuslice_arbiter::status::read(&m.dir.join("state/compute/status"))
}

/// Waits until `n` tenants have launched on the GPU (the arbiter lists them).
fn wait_attached(m: &Machine, n: usize) {
    let t = Instant::now();
    while status(m).len() < n {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "tenants never launched: {:?}",
            status(m)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Percent of wall time each tenant's work ran during the next `secs` seconds.
fn shares(m: &Machine, sup: &Supervisors, secs: f64) -> BTreeMap<String, f64> {
    let specs = gpuslice_sim_state::parse_devices("").unwrap();
    let sim = gpuslice_sim_state::Sim::open(&m.dir.join("sim-gpu"), &specs).unwrap();
    let since = gpuslice_sim_state::Sim::now_ns();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let now = gpuslice_sim_state::Sim::now_ns();
    let mut out = BTreeMap::new();
    for (pid, busy, _) in sim.process_busy(0, since) {
        let n = owner(pid, sup).unwrap_or_else(|| format!("pid{pid}"));
        *out.entry(n).or_insert(0.0) += busy as f64 * 100.0 / (now - since) as f64;
    }
    out
}

/// Consecutive windows of `secs` each.
fn windows(m: &Machine, sup: &Supervisors, secs: f64, k: usize) -> Vec<BTreeMap<String, f64>> {
    (0..k).map(|_| shares(m, sup, secs)).collect()
}

fn finish(c: Child) -> std::process::Output {
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tenant failed: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn bad_compute_flags_exit_2_naming_the_accepted_values() {
    let m = Machine::new("compute-flags");
    for (flags, expect) in [
        (vec!["--gpu-compute", "0"], "1 to 100"),
        (vec!["--gpu-compute", "101"], "1 to 100"),
        (vec!["--gpu-compute", "30.5"], "1 to 100"),
        (vec!["--gpu-compute", "lots"], "1 to 100"),
        (vec!["--share-mode", "fair"], "best-effort, fixed, equal"),
        (vec!["--priority", "urgent"], "high, normal, low"),
        (vec!["--share-mode", "fixed"], "--gpu-compute"),
    ] {
        let out = tenant(&m, "bad", &flags, &["info"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(expect), "{flags:?}: {err}");
        assert!(out.stdout.is_empty(), "{flags:?}: the command never ran");
    }
}

#[test]
fn best_effort_shares_follow_quotas_and_top_shows_them() {
    let m = Machine::new("compute-shares");
    let a = tenant(&m, "a30", &["--gpu-compute", "30"], &["saturate", "5"])
        .spawn()
        .unwrap();
    let b = tenant(
        &m,
        "b70",
        &["--gpu-compute", "70"],
        &["--via", "procaddr", "saturate", "5"],
    )
    .spawn()
    .unwrap();
    wait_attached(&m, 2);
    std::thread::sleep(Duration::from_millis(1200));
    let s = shares(&m, 2.0);
    let mut top = Command::new(gpuslice());
    m.env(&mut top);
    let top = top
        .args(["top", "--once", "--interval", "0.5"])
        .output()
        .unwrap();
    finish(a);
    finish(b);
    let (a, b) = (s["a30"], s["b70"]);
    assert!(
        (20.0..=40.0).contains(&a) && (60.0..=80.0).contains(&b),
        "30/70 came out {a:.1}/{b:.1}"
    );
    assert!(
        a + b > 85.0,
        "work-conserving: the GPU stays busy ({a:.1} + {b:.1})"
    );
    let frame = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success(), "{frame}");
    assert!(frame.contains("mode best-effort"), "{frame}");
    for (name, quota) in [("a30", "30%"), ("b70", "70%")] {
        let line = frame
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{frame}"));
        assert!(
            line.contains(quota) && line.contains("normal") && line.contains("/2.00"),
            "{line}"
        );
        let share: f64 = line
            .split_whitespace()
            .find(|w| w.ends_with('%') && w != &quota)
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap();
        assert!(share > 5.0, "top shows a live share: {line}");
    }
}

/// A fixed 30% tenant alone stays near 30% whichever way it launches: plain, extended,
/// cooperative, graph replay, or found through cuGetProcAddress.
#[test]
fn fixed_quota_holds_on_every_launch_path() {
    let paths: [(&str, &[&str]); 5] = [
        ("launch", &["saturate", "4"]),
        ("ex", &["saturate", "4", "ex"]),
        ("coop", &["saturate", "4", "coop"]),
        ("graph", &["saturate", "4", "graph"]),
        ("procaddr", &["--via", "procaddr", "saturate", "4"]),
    ];
    let runs: Vec<_> = paths
        .iter()
        .map(|(label, args)| {
            let m = Machine::new(&format!("compute-fixed-{label}"));
            let c = tenant(
                &m,
                "f30",
                &["--gpu-compute", "30", "--share-mode", "fixed"],
                args,
            )
            .spawn()
            .unwrap();
            (label, m, c)
        })
        .collect();
    let mut results = Vec::new();
    for (label, m, _) in &runs {
        wait_attached(m, 1);
        results.push((label, m));
    }
    std::thread::sleep(Duration::from_millis(800));
    // Each GPU is private to its machine; measure them one after another over the same run.
    let got: Vec<(String, f64)> = results
        .iter()
        .map(|(l, m)| {
            (
                l.to_string(),
                shares(m, 0.4).get("f30").copied().unwrap_or(0.0),
            )
        })
        .collect();
    for (_, _, c) in runs {
        finish(c);
    }
    for (label, s) in got {
        assert!(
            (15.0..=45.0).contains(&s),
            "fixed 30% via {label} got {s:.1}%"
        );
    }
}

#[test]
fn high_priority_waits_for_little_and_low_priority_is_not_starved() {
    let m = Machine::new("compute-priority");
    let low = tenant(&m, "train", &["--priority", "low"], &["saturate", "5"])
        .spawn()
        .unwrap();
    wait_attached(&m, 1);
    let high = tenant(
        &m,
        "infer",
        &["--priority", "high"],
        &["periodic", "20", "2000", "3"],
    )
    .spawn()
    .unwrap();
    wait_attached(&m, 2);
    let s = shares(&m, 1.5);
    let rep = report(&finish(high));
    finish(low);
    let p99 = u(&rep, "p99_us");
    // Alone: 2 ms. At most one low kernel (<= 5 ms) ahead of it, plus generous slack for a
    // loaded machine; ungated, it would queue behind seconds of low-priority work.
    assert!(p99 < 20_000, "high-priority p99 {p99} µs: {rep}");
    assert!(
        s["train"] > 50.0,
        "low priority still runs while high idles: {s:?}"
    );
}

#[test]
fn a_killed_holder_frees_its_turn_and_conflicting_modes_are_refused() {
    let m = Machine::new("compute-kill");
    let a = tenant(&m, "victim", &["--gpu-compute", "50"], &["saturate", "30"])
        .spawn()
        .unwrap();
    let b = tenant(&m, "survivor", &["--gpu-compute", "50"], &["saturate", "4"])
        .spawn()
        .unwrap();
    wait_attached(&m, 2);

    let out = tenant(
        &m,
        "other-mode",
        &["--gpu-compute", "50", "--share-mode", "equal"],
        &["saturate", "1"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("one mode per GPU") && err.contains("best-effort"),
        "{err}"
    );

    // Kill the victim's process while it holds the GPU.
    let t = Instant::now();
    let victim = loop {
        let r = &regions(&m)[0];
        if let Some(v) = r
            .entries()
            .into_iter()
            .find(|v| v.name == "victim" && v.holder)
        {
            break v.pid;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the victim never held the GPU"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    let s = shares(&m, 1.0);
    assert!(
        s.get("survivor").copied().unwrap_or(0.0) > 80.0,
        "the survivor takes the whole GPU: {s:?}"
    );
    assert!(
        regions(&m)[0].entries().iter().all(|v| v.name != "victim"),
        "the dead entry is cleared"
    );
    finish(b);
    let st = a.wait_with_output().unwrap().status;
    assert!(!st.success(), "the victim's run reports the kill");
}

//! Compute isolation under faults and hostile tenants: stopped and killed holders, a tenant
//! with many idle processes, a tenant that rewrites what it can write or talks garbage to the
//! arbiter. In each case the other tenant keeps at least its share and never stalls.

mod common;
use common::*;
use gpuslice_compute::wire::{self, Msg};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn program(m: &Machine, name: &str, compute: &[&str], prog: &[&str]) -> Command {
    program_mem(m, name, "2GiB", compute, prog)
}

fn program_mem(m: &Machine, name: &str, mem: &str, compute: &[&str], prog: &[&str]) -> Command {
    let mut c = Command::new(gpuslice());
    c.args(["run", "--sim", "--gpu-memory", mem, "--name", name])
        .args(compute)
        .arg("--")
        .args(prog);
    m.env(&mut c);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn shapes(m: &Machine) -> String {
    let lib = m.sim_lib_dir();
    compile_c(
        "shapes",
        "shapes",
        &["-L", lib.to_str().unwrap(), "-lcuda", "-lpthread"],
    )
    .to_string_lossy()
    .into_owned()
}

fn status(m: &Machine) -> Vec<gpuslice_arbiter::status::Row> {
    gpuslice_arbiter::status::read(&m.dir.join("state/compute/status"))
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// The program a supervisor runs (its first child).
fn program_pid(sup: u32) -> u32 {
    let mut out = 0;
    wait_for("the program started", 20, || {
        let c =
            std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap_or_default();
        out = c
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out != 0
    });
    out
}

/// Percent of wall time each supervisor's processes ran over the next `secs`.
fn shares(m: &Machine, sups: &BTreeMap<u32, &str>, secs: f64) -> BTreeMap<String, f64> {
    let specs = gpuslice_sim_state::parse_devices("").unwrap();
    let sim = gpuslice_sim_state::Sim::open(&m.dir.join("sim-gpu"), &specs).unwrap();
    let since = gpuslice_sim_state::Sim::now_ns();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let now = gpuslice_sim_state::Sim::now_ns();
    let mut out = BTreeMap::new();
    for (pid, busy, _) in sim.process_busy(0, since) {
        let mut p = pid;
        let mut name = format!("pid{pid}");
        for _ in 0..32 {
            if let Some(n) = sups.get(&p) {
                name = n.to_string();
                break;
            }
            match parent_of(p) {
                Some(pp) => p = pp,
                None => break,
            }
        }
        *out.entry(name).or_insert(0.0) += busy as f64 * 100.0 / (now - since) as f64;
    }
    out
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

fn two(m: &Machine, sh: &str, secs: &str) -> (Child, Child, BTreeMap<u32, &'static str>) {
    let a = program(
        m,
        "a",
        &["--gpu-compute", "50"],
        &[sh, secs, "train", "4", "1000"],
    )
    .spawn()
    .unwrap();
    let b = program(
        m,
        "b",
        &["--gpu-compute", "50"],
        &[sh, secs, "train", "4", "1000"],
    )
    .spawn()
    .unwrap();
    let sups = [(a.id(), "a"), (b.id(), "b")].into();
    wait_for("both tenants launched", 30, || status(m).len() == 2);
    (a, b, sups)
}

/// SIGSTOP of the holder, then of a waiter: the other tenant takes the GPU within a slice
/// and keeps it while the stopped one cannot use it.
#[test]
fn a_stopped_holder_or_waiter_stalls_nobody() {
    let _one = serial();
    let m = Machine::new("faults-stop");
    let sh = shapes(&m);
    let (a, b, sups) = two(&m, &sh, "9");
    let pa = program_pid(a.id()) as i32;
    for holder in [true, false] {
        wait_for("a in the wanted state", 10, || {
            status(&m)
                .iter()
                .any(|r| r.name == "a" && r.holder == holder)
        });
        unsafe { libc::kill(pa, libc::SIGSTOP) };
        let s = shares(&m, &sups, 1.5);
        unsafe { libc::kill(pa, libc::SIGCONT) };
        let got = s.get("b").copied().unwrap_or(0.0);
        assert!(
            got > 80.0,
            "a stopped {} leaves b {got:.1}% over 1.5 s: {s:?}",
            if holder { "holder" } else { "waiter" }
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    finish(a);
    finish(b);
}

#[test]
fn a_killed_holder_frees_its_turn_at_once() {
    let _one = serial();
    // Statistical on a loaded machine (one window of 1 s): a miss is tried once more.
    if std::panic::catch_unwind(|| killed_holder("faults-kill")).is_err() {
        killed_holder("faults-kill-again");
    }
}

fn killed_holder(name: &str) {
    let m = Machine::new(name);
    let sh = shapes(&m);
    let (a, b, sups) = two(&m, &sh, "6");
    let pa = program_pid(a.id()) as i32;
    wait_for("a holds the GPU", 10, || {
        status(&m).iter().any(|r| r.name == "a" && r.holder)
    });
    unsafe { libc::kill(pa, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    let s = shares(&m, &sups, 1.0);
    assert!(s.get("b").copied().unwrap_or(0.0) > 85.0, "{s:?}");
    finish(b);
    assert!(!a.wait_with_output().unwrap().status.success());
    wait_for("the dead tenant left the arbiter", 10, || {
        status(&m).iter().all(|r| r.name != "a")
    });
}

/// 65 idle processes of one tenant take nothing from another: it launches at once and gets
/// the whole GPU.
#[test]
fn many_idle_processes_of_one_tenant_do_not_crowd_out_another() {
    let _one = serial();
    let m = Machine::new("faults-idle");
    let sh = shapes(&m);
    // Each process's context is charged to the tenant: room for all of them.
    let a = program_mem(
        &m,
        "idle",
        "24GiB",
        &["--gpu-compute", "50"],
        &[&sh, "25", "idle", "65", "100"],
    )
    .spawn()
    .unwrap();
    wait_for("65 processes attached", 120, || {
        status(&m)
            .iter()
            .any(|r| r.name == "idle" && r.processes >= 65)
    });
    let b = program(
        &m,
        "b",
        &["--gpu-compute", "50"],
        &[&sh, "3", "train", "4", "1000"],
    )
    .spawn()
    .unwrap();
    let sups = [(a.id(), "idle"), (b.id(), "b")].into();
    wait_for("b launched", 20, || {
        status(&m).iter().any(|r| r.name == "b")
    });
    let s = shares(&m, &sups, 1.0);
    let out = finish(b);
    for r in json_lines(&out) {
        assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
    }
    assert!(s.get("b").copied().unwrap_or(0.0) > 80.0, "{s:?}");
    unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
    let _ = a.wait_with_output();
}

/// What a tenant can write or say: its ledger's compute word rewritten to a full share, an
/// environment pointing elsewhere, garbage and forged tokens on the arbiter's socket, a flood
/// of connections. None of it moves the split.
#[test]
fn a_hostile_tenant_gets_no_more_than_its_share() {
    let _one = serial();
    // Statistical over a 2 s window on a loaded CI machine: a real regression fails twice.
    if std::panic::catch_unwind(hostile_run).is_err() {
        hostile_run();
    }
}

fn hostile_run() {
    let m = Machine::new("faults-hostile");
    let sh = shapes(&m);
    let a = program(
        &m,
        "a",
        &["--gpu-compute", "30"],
        &[
            "env",
            "GPUSLICE_COMPUTE_DIR=/tmp",
            "GPUSLICE_LEDGER=/dev/null",
            &sh,
            "7",
            "train",
            "4",
            "1000",
        ],
    )
    .spawn()
    .unwrap();
    let b = program(
        &m,
        "b",
        &["--gpu-compute", "70"],
        &[&sh, "7", "train", "4", "1000"],
    )
    .spawn()
    .unwrap();
    let sups = [(a.id(), "a"), (b.id(), "b")].into();
    wait_for("both launched", 30, || status(&m).len() == 2);
    // The tenant's own ledger says it may have everything.
    let l = m.ledger("a").expect("a's ledger");
    let _ = l.set_compute(gpuslice_ledger::ComputeSpec {
        quota: 100,
        mode: 0,
        priority: 0,
    });
    // Garbage, forged tokens and a flood of connections on the arbiter's socket.
    let sock = m.dir.join("state/compute/arbiter.sock");
    let mut keep = Vec::new();
    for i in 0..300 {
        let Ok(c) = wire::connect_path(&sock) else {
            continue;
        };
        let _ = match i % 3 {
            0 => wire::send(c.as_raw_fd(), &[b"\x01\x02garbage"], &[]),
            1 => wire::send_msg(
                c.as_raw_fd(),
                &Msg::Attach {
                    token: [i as u8; 16],
                },
                &[],
            ),
            _ => wire::send_msg(c.as_raw_fd(), &Msg::Want, &[]),
        };
        keep.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let s = shares(&m, &sups, 2.0);
    drop(keep);
    finish(a);
    finish(b);
    let (x, y) = (s["a"], s["b"]);
    let part = x * 100.0 / (x + y);
    assert!((part - 30.0).abs() <= 3.0, "a got {x:.1}, b {y:.1}: {s:?}");
}

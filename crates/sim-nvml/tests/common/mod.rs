//! Test harness: dlopen the built libnvidia_ml.so, run each scenario in a fresh process with its
//! own state file (sim-state reads its environment once per process), and hold simulated memory
//! and busy time from separate helper processes, as real GPU clients are.
#![allow(dead_code)]

use std::ffi::{CString, c_void};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const CHILD_ENV: &str = "SIM_NVML_TEST_CHILD";
const HOLDER_ENV: &str = "SIM_NVML_TEST_HOLD";

pub struct Lib(*mut c_void);

impl Lib {
    pub fn open() -> Lib {
        // Cargo builds the library next to the test (target/<profile>/deps) as the test's
        // dependency, but copies it up to target/<profile> only on a plain build: prefer the
        // fresh one.
        let exe = std::env::current_exe().unwrap();
        let deps = exe.parent().unwrap();
        let path = [
            deps.join("libnvidia_ml.so"),
            deps.parent().unwrap().join("libnvidia_ml.so"),
        ]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| deps.join("libnvidia_ml.so"));
        assert!(
            path.exists(),
            "{} missing: build gpuslice-sim-nvml first",
            path.display()
        );
        let c = CString::new(path.to_str().unwrap()).unwrap();
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!h.is_null(), "dlopen {} failed", path.display());
        Lib(h)
    }

    /// The symbol `name` as a function pointer of type `F`.
    pub fn sym<F: Copy>(&self, name: &str) -> F {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        let c = CString::new(name).unwrap();
        let p = unsafe { libc::dlsym(self.0, c.as_ptr()) };
        assert!(!p.is_null(), "{name} is not exported");
        unsafe { std::mem::transmute_copy(&p) }
    }
}

/// Runs `body` in a fresh copy of this test binary with its own state file and device config.
/// `name` must be the test function's name.
pub fn isolated(name: &str, devices: &str, body: fn()) {
    if std::env::var_os(CHILD_ENV).is_some() {
        body();
        return;
    }
    let dir = std::env::temp_dir();
    let state = dir.join(format!("sim-nvml-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(CHILD_ENV, "1")
        .env("GPUSLICE_SIM_STATE", &state)
        .env("GPUSLICE_SIM_DEVICES", devices)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&state);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scenario {name} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "scenario {name} did not run:\n{stdout}"
    );
}

/// A helper process holding `bytes` on `dev` and having run `busy_ms` of work there; it lives
/// until dropped.
pub struct Holder {
    child: Child,
    pub pid: u32,
    /// Monotonic ns at which its work ends.
    pub busy_end_ns: u64,
}

impl Holder {
    pub fn spawn(dev: usize, bytes: u64, busy_ms: u64) -> Holder {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["holder", "--exact", "--nocapture", "--test-threads=1"])
            .env(HOLDER_ENV, format!("{dev},{bytes},{busy_ms}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            // libtest may print "test holder ... " on the same line first.
            .find_map(|l| l.split_once("ready ").map(|(_, r)| r.to_owned()))
            .expect("holder did not come up");
        let busy_end_ns = ready.trim().parse().unwrap();
        let pid = child.id();
        Holder {
            child,
            pid,
            busy_end_ns,
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Body of the helper process; a no-op in an ordinary test run.
pub fn holder_main() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let v: Vec<u64> = spec.split(',').map(|s| s.parse().unwrap()).collect();
    let (dev, bytes, busy_ms) = (v[0] as usize, v[1], v[2]);
    let sim = gpuslice_sim_state::Sim::get().unwrap();
    assert!(sim.try_alloc(dev, bytes));
    let end = if busy_ms > 0 {
        sim.run_busy(dev, gpuslice_sim_state::Sim::now_ns(), busy_ms * 1_000_000)
    } else {
        gpuslice_sim_state::Sim::now_ns()
    };
    println!("ready {end}");
    std::io::stdout().flush().unwrap();
    // Hold everything until the parent closes our stdin.
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}

/// Sleeps until the state's monotonic clock passes `t_ns`.
pub fn sleep_until(t_ns: u64) {
    let now = gpuslice_sim_state::Sim::now_ns();
    if t_ns > now {
        std::thread::sleep(std::time::Duration::from_nanos(t_ns - now));
    }
}

pub fn state_path() -> PathBuf {
    PathBuf::from(std::env::var_os("GPUSLICE_SIM_STATE").unwrap())
}

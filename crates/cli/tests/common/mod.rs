//! Shared harness for the end-to-end tests: the built binaries and libraries, a private
//! simulated GPU per test, and helpers to run tenants and compile C programs.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gpuslice"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn artifact(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the whole workspace first (`cargo build --workspace`, as scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn gpuslice() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gpuslice"))
}

pub fn probe() -> String {
    artifact("gpuslice-probe").to_string_lossy().into_owned()
}

/// A private machine: its own simulated GPU state and gpuslice state directory.
pub struct Machine {
    pub dir: PathBuf,
    pub devices: Option<String>,
}

impl Machine {
    pub fn new(name: &str) -> Machine {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Machine { dir, devices: None }
    }

    pub fn with_devices(mut self, spec: &str) -> Machine {
        self.devices = Some(spec.to_string());
        self
    }

    pub fn env(&self, c: &mut Command) {
        c.env("GPUSLICE_STATE_DIR", self.dir.join("state"))
            .env("GPUSLICE_SIM_STATE", self.dir.join("sim-gpu"))
            .env_remove("GPUSLICE_LEDGER")
            .env_remove("LD_PRELOAD");
        match &self.devices {
            Some(d) => c.env("GPUSLICE_SIM_DEVICES", d),
            None => c.env_remove("GPUSLICE_SIM_DEVICES"),
        };
    }

    /// `gpuslice run --sim --gpu-memory CAP --name NAME -- ARGS…`
    pub fn tenant(&self, name: &str, cap: &str, args: &[&str]) -> Command {
        let mut c = Command::new(gpuslice());
        c.args(["run", "--sim", "--gpu-memory", cap, "--name", name, "--"])
            .args(args);
        self.env(&mut c);
        c
    }

    /// `gpuslice run --sim OPTS… --gpu-memory CAP --name NAME -- ARGS…`
    pub fn tenant_with(&self, opts: &[&str], name: &str, cap: &str, args: &[&str]) -> Command {
        let mut c = Command::new(gpuslice());
        c.args(["run", "--sim"])
            .args(opts)
            .args(["--gpu-memory", cap, "--name", name, "--"])
            .args(args);
        self.env(&mut c);
        c
    }

    /// The ledger of the running tenant NAME.
    pub fn ledger(&self, name: &str) -> Option<gpuslice_ledger::Ledger> {
        let dir = self.dir.join("state/tenants");
        let e = std::fs::read_dir(dir).ok()?.flatten().find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
        })?;
        gpuslice_ledger::Ledger::open(&e.path().join("ledger")).ok()
    }

    /// A library directory where the simulator answers to libcuda.so.1 and libnvidia-ml.so.1,
    /// for running programs without `gpuslice run`.
    pub fn sim_lib_dir(&self) -> PathBuf {
        let d = self.dir.join("simlib");
        std::fs::create_dir_all(&d).unwrap();
        for (f, names) in [
            ("libcuda.so", ["libcuda.so.1", "libcuda.so"]),
            ("libnvidia_ml.so", ["libnvidia-ml.so.1", "libnvidia-ml.so"]),
        ] {
            for n in names {
                let _ = std::fs::remove_file(d.join(n));
                std::os::unix::fs::symlink(artifact(f), d.join(n)).unwrap();
            }
        }
        d
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The one JSON report of a probe run, with the run's stderr in the panic message otherwise.
pub fn report(out: &Output) -> Value {
    json_lines(out).into_iter().next().unwrap_or_else(|| {
        panic!(
            "no report; status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// What each CUDA context costs a tenant (gpuslice_core::tenant::DEFAULT_CONTEXT_OVERHEAD).
pub const CTX: u64 = 256 * MIB;

/// Compiles `tests/c/NAME.c` (once per test binary) with extra flags; returns the executable.
pub fn compile_c(name: &str, out_name: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    let out_dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cprogs-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(out_name);
    let st = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .args(flags)
        .status()
        .expect("a C compiler (cc)");
    assert!(st.success(), "compiling {}", src.display());
    out
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by tests that time a shared GPU on a shared CPU, so that two of them in one test binary
/// never run at once (the harness runs a binary's tests in parallel).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

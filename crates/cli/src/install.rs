//! Where gpuslice's own files are: the interposer, the simulated GPU's libraries and the probe
//! workload live beside the `gpuslice` executable (a build's `target/<profile>/`, or an install's
//! `bin/` with `lib/gpuslice/`), and per-tenant state lives in a runtime directory.

use std::path::{Path, PathBuf};

pub const INTERPOSER: &str = "libgpuslice.so";
pub const SIM_CUDA: &str = "libcuda.so";
pub const SIM_NVML: &str = "libnvidia_ml.so";
pub const PROBE: &str = "gpuslice-probe";

#[derive(Debug, Clone)]
pub struct Install {
    pub lib_dir: PathBuf,
    pub bin_dir: PathBuf,
}

impl Install {
    pub fn locate() -> Result<Install, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot locate the gpuslice executable: {e}"))?;
        let bin_dir = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
        let candidates: Vec<PathBuf> = match std::env::var_os("GPUSLICE_LIB_DIR") {
            Some(d) => vec![PathBuf::from(d)],
            None => vec![bin_dir.clone(), bin_dir.join("../lib/gpuslice")],
        };
        for dir in &candidates {
            if dir.join(INTERPOSER).is_file() {
                return Ok(Install {
                    lib_dir: dir.clone(),
                    bin_dir,
                });
            }
        }
        Err(format!(
            "cannot find {INTERPOSER} (looked in {}); build the workspace with `cargo build` or set GPUSLICE_LIB_DIR",
            candidates
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    pub fn interposer(&self) -> PathBuf {
        self.lib_dir.join(INTERPOSER)
    }

    /// Makes `dir` a library directory in which the simulated GPU answers to the names real
    /// programs load (`libcuda.so.1`, `libnvidia-ml.so.1`).
    pub fn link_simulator(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (file, names) in [
            (SIM_CUDA, &["libcuda.so.1", "libcuda.so"]),
            (SIM_NVML, &["libnvidia-ml.so.1", "libnvidia-ml.so"]),
        ] {
            let target = self.lib_dir.join(file);
            if !target.is_file() {
                return Err(format!(
                    "the simulated GPU's {file} is missing from {}",
                    self.lib_dir.display()
                ));
            }
            for name in names {
                let link = dir.join(name);
                if std::fs::read_link(&link).is_ok_and(|t| t == target) {
                    continue;
                }
                // Made aside and renamed over: another process may be using the directory.
                let tmp = dir.join(format!(".{name}.{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&target, &tmp)
                    .and_then(|()| std::fs::rename(&tmp, &link))
                    .map_err(|e| format!("{}: {e}", link.display()))?;
            }
        }
        Ok(())
    }

    /// The library directory `gpuslice run --sim` tenants load the simulated GPU from: one per
    /// install under the state directory, made once and shared (not made and removed on every
    /// start).
    pub fn sim_lib_dir(&self) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.lib_dir.hash(&mut h);
        state_dir().join(format!("sim-lib-{:016x}", h.finish()))
    }

    pub fn probe(&self) -> PathBuf {
        self.bin_dir.join(PROBE)
    }
}

/// Runtime state: `GPUSLICE_STATE_DIR`, else `$XDG_RUNTIME_DIR/gpuslice`, else `/tmp/gpuslice-<uid>`.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GPUSLICE_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("gpuslice");
    }
    PathBuf::from(format!("/tmp/gpuslice-{}", unsafe { libc::getuid() }))
}

/// Where the machine's compute arbiter listens and publishes its figures. Every tenant sharing a
/// GPU must reach the same arbiter, so the default is machine-wide (not per user): `GPUSLICE_COMPUTE_DIR`, else the state dir's when
/// `GPUSLICE_STATE_DIR` is set (a private setup), else `/run/gpuslice/compute` (the node agent's,
/// mounted into containers there) where it exists or can be made, else `/dev/shm/gpuslice-compute`.
pub fn compute_dir() -> PathBuf {
    if std::env::var_os("GPUSLICE_COMPUTE_DIR").is_some_and(|d| !d.is_empty()) {
        return gpuslice_compute::configured_dir();
    }
    if let Some(d) = std::env::var_os("GPUSLICE_STATE_DIR") {
        return PathBuf::from(d).join("compute");
    }
    let run = PathBuf::from(gpuslice_compute::DEFAULT_DIR);
    let writable = |d: &Path| {
        let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
        unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    };
    if gpuslice_compute::prepare_dir(&run).is_ok() && writable(&run) {
        return run;
    }
    PathBuf::from("/dev/shm/gpuslice-compute")
}

/// Prepends `value` to a `:`-separated variable.
pub fn prepend(var: &str, value: &Path) -> std::ffi::OsString {
    let mut out = value.as_os_str().to_owned();
    if let Some(old) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        out.push(":");
        out.push(old);
    }
    out
}

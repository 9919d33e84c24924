//! `gpuslice run`'s watchdog: the supervisor compares what the driver says its command's
//! processes hold with the tenant's cap, and acts on processes that escaped the interposer or
//! the cap (see `gpuslice_core::watchdog` for the rules, `gpuslice_node::watchdog` for how
//! processes are read and killed).
//!
//! The tenant's processes are the supervisor's descendants. The supervisor is a child
//! subreaper, so a process that double-forks to leave the tree is handed to the supervisor,
//! not to init, and stays watched; the watchdog also reaps such orphans when they exit.
//! The cap and allow-list are the ones the supervisor wrote into the ledger before the command
//! started, never re-read from the ledger, which tenant processes can write.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gpuslice_core::watchdog::{Action, DEFAULT_SLACK_PER_PROCESS, Watched};
use gpuslice_ledger::Ledger;
use gpuslice_node::watchdog::{self as nw, Actor, Record, Tenant};

/// `--watchdog`: what to do about a process of the tenant that escapes its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Kill,
    Report,
    Off,
}

pub fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "kill" => Ok(Mode::Kill),
        "report" => Ok(Mode::Report),
        "off" => Ok(Mode::Off),
        _ => Err(format!(
            "'{s}' is not a watchdog action; accepted: kill, report, off"
        )),
    }
}

/// A watchdog ready to start: NVML loaded, the supervisor made a subreaper.
pub struct Watchdog {
    nvml: gpuslice_nvml::Nvml,
    gpus: Vec<(u32, String)>,
    ledger: Ledger,
    tenant: Tenant,
    action: Action,
    log: PathBuf,
}

/// NVML and its GPUs, loaded for the watchdog (on its own thread while `gpuslice run` sets up
/// the tenant: loading NVML is the slowest step of a start).
pub struct Driver {
    nvml: gpuslice_nvml::Nvml,
    gpus: Vec<(u32, String)>,
}

impl Driver {
    /// Loads NVML: the simulated GPU's from `sim_lib` if given, else the system's.
    pub fn load(sim_lib: Option<&Path>) -> Result<Driver, String> {
        let nvml = match sim_lib {
            Some(lib) => gpuslice_nvml::Nvml::from_path(&lib.join("libnvidia-ml.so.1")),
            None => gpuslice_nvml::Nvml::system(),
        }
        .map_err(|e| format!("cannot start the watchdog: {e}; `--watchdog off` runs without it"))?;
        let gpus = nvml
            .gpus()
            .map_err(|e| format!("cannot start the watchdog: {e}"))?
            .into_iter()
            .map(|g| (g.index, g.uuid))
            .collect();
        Ok(Driver { nvml, gpus })
    }
}

impl Watchdog {
    /// Called before the command starts, with what `Driver::load` gave (`None` with
    /// `--watchdog off`).
    pub fn prepare(
        args: &crate::run::RunArgs,
        tenant_dir: &Path,
        ledger_path: &Path,
        driver: Option<Driver>,
    ) -> Result<Option<Watchdog>, String> {
        let action = match args.watchdog {
            Mode::Off => return Ok(None),
            Mode::Kill => Action::Kill,
            Mode::Report => Action::Report,
        };
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "cannot keep the command's orphans under watch (PR_SET_CHILD_SUBREAPER): {}",
                std::io::Error::last_os_error()
            ));
        }
        let Driver { nvml, gpus } = driver.ok_or("the watchdog's driver was not loaded")?;
        let ledger = Ledger::open(ledger_path).map_err(|e| e.to_string())?;
        // Read now, before any tenant process can touch the ledger.
        let spec = ledger.spec();
        let tenant = Tenant {
            name: args.name.clone().unwrap_or_else(|| "run".into()),
            limits: Watched {
                cap: spec.memory_cap,
                allowed: spec
                    .allowed
                    .iter()
                    .map(gpuslice_ledger::format_uuid)
                    .collect(),
                slack_per_process: DEFAULT_SLACK_PER_PROCESS,
            },
            live: Default::default(),
        };
        Ok(Some(Watchdog {
            nvml,
            gpus,
            ledger,
            tenant,
            action,
            log: tenant_dir.join(nw::LOG_FILE),
        }))
    }
}

/// The running watchdog; stopped when dropped.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    /// Stops the watch without waiting for the thread, which may be sleeping out its period:
    /// `gpuslice run` exits as soon as its command does.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.thread.take());
    }
}

/// Starts watching the supervisor's descendants; `child` is the command (waited for by the
/// supervisor itself, so never reaped here).
pub fn start(w: Option<Watchdog>, child: u32) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = w.map(|mut w| {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("gpuslice-watchdog".into())
            .spawn(move || {
                let mut actor = Actor::default();
                let mut last_error = String::new();
                while !stop.load(Ordering::SeqCst) {
                    let t0 = Instant::now();
                    let e = w.round(child, &mut actor);
                    if e != last_error {
                        if !e.is_empty() {
                            eprintln!("gpuslice run: watchdog: {e}");
                        }
                        last_error = e;
                    }
                    std::thread::sleep(nw::PERIOD.saturating_sub(t0.elapsed()));
                }
            })
            .expect("spawning the watchdog thread")
    });
    Running { stop, thread }
}

impl Watchdog {
    /// One look; returns an error text, empty if none.
    fn round(&mut self, child: u32, actor: &mut Actor) -> String {
        let me = std::process::id();
        // The driver's lists first, then who is whose: a process started in between is then
        // already in `/proc` (and one that is not is looked up on its own below).
        let mut lists = Vec::new();
        let mut errors = Vec::new();
        for (index, uuid) in &self.gpus {
            match self.nvml.processes(*index) {
                Ok(l) => lists.push((uuid.clone(), l)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        self.tenant.live = self.ledger.live_pids().into_iter().collect();
        let all = nw::all_processes();
        // Orphans handed to us as subreaper: collect their exit status so they do not linger.
        for (&pid, st) in &all {
            if st.ppid == me && st.zombie && pid != child {
                // SAFETY: waitpid on a child of ours that has exited; never blocks.
                unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
            }
        }
        let mine = nw::descendants(me, &all);
        let findings = nw::evaluate(std::slice::from_ref(&self.tenant), &lists, |pid| {
            (mine.contains(&pid) || descends_from(pid, me)).then_some(0)
        });
        let (name, log, action) = (&self.tenant.name, &self.log, self.action);
        actor.act(
            &findings,
            // Other processes on the GPU are other tenants' or the host's: not ours to judge.
            |f| {
                if f.tenant.is_some() {
                    action
                } else {
                    Action::Ignore
                }
            },
            |f, a, error| {
                let r = Record::new(f, name, a);
                match error {
                    None => eprintln!("gpuslice run: {}", r.describe()),
                    Some(e) => eprintln!("gpuslice run: {}; the kill failed: {e}", r.describe()),
                }
                if let Err(e) = nw::append(log, &r) {
                    eprintln!("gpuslice run: watchdog log: {e}");
                }
            },
        );
        errors.join("; ")
    }
}

/// Whether `pid` descends from `root`, walking its parents as they are now.
fn descends_from(pid: u32, root: u32) -> bool {
    let mut p = pid;
    for _ in 0..4096 {
        match nw::stat(p) {
            Some(s) if s.ppid == root => return true,
            Some(s) if s.ppid > 1 => p = s.ppid,
            _ => return false,
        }
    }
    false
}

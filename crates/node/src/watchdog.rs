//! The watchdog outside the tenant: what the driver really has allocated, compared with what
//! each tenant may have (`gpuslice_core::watchdog` decides; this module reads and acts).
//!
//! The interposer governs only processes that load it and keep to their ledger. A process
//! started with a clean environment, a static binary, direct ioctls, or a tenant that rewrites
//! its own ledger's counters all escape it. The driver still counts their memory, so at least
//! every [`PERIOD`] the watchdog lists each GPU's processes through NVML (the driver's own
//! per-process figure), finds which tenant each belongs to, whether it runs under the
//! interposer (`libgpuslice.so` mapped *and* a live slot in the tenant's ledger, whose holder the
//! kernel reports, not the tenant), and acts on what breaks the tenant's limits.
//!
//! Used by the node agent for its tenants ([`spawn`]) and by `gpuslice run` for its own process
//! tree (the helpers here: `/proc`, kills, the action log).
//!
//! Which process is whose, on a node: a container's tenant directory (holding its ledger) is
//! mounted at `/var/run/gpuslice`; a process belongs to the tenant whose directory (device and
//! inode) it sees there, through `/proc/<pid>/root`. Caps and allowed GPUs come from the agent's
//! own allocation records, never from the ledger's header, which tenant processes can write.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpuslice_core::watchdog::{self as wd, Action, Finding, GpuProcess, Reason, Watched};
use serde::{Deserialize, Serialize};

use crate::agent::Shared;
use crate::config::{UnknownProcesses, WatchdogAction};

/// How often the watchdog looks.
pub const PERIOD: Duration = Duration::from_millis(wd::PERIOD_MS);

/// The action log's file name: in the agent's state directory, and in each `gpuslice run`
/// tenant's directory.
pub const LOG_FILE: &str = "watchdog.jsonl";
/// The log is cut to its newer half when it would grow past this.
pub const LOG_MAX_BYTES: u64 = 64 << 10;

// ---- /proc ----

/// What `/proc/<pid>/stat` says: the parent, whether the process has exited (a zombie), and
/// when it started (clock ticks since boot), which with the pid names one process for its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    pub start: u64,
    pub zombie: bool,
}

/// Reads `/proc/<pid>/stat`; `None` if the process is gone.
pub fn stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and ')': the fields that follow start after the last ')'.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22 (starttime).
    Some(Stat {
        zombie: matches!(*f.first()?, "Z" | "X"),
        ppid: f.get(1)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// Every process visible in `/proc`, with its stat.
pub fn all_processes() -> HashMap<u32, Stat> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The descendants of `root` (not `root` itself), by parent links.
pub fn descendants(root: u32, all: &HashMap<u32, Stat>) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, s) in all {
        children.entry(s.ppid).or_default().push(pid);
    }
    let mut out = HashSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if c != root && out.insert(c) {
                todo.push(c);
            }
        }
    }
    out
}

/// What `/proc/<pid>/maps` says about the interposer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// `libgpuslice.so` is mapped (also after the file was replaced on disk).
    Yes,
    /// It is not, or the map cannot be read: fail closed.
    No,
    /// The process has no address space left: it is exiting. The kernel tears down the memory
    /// map (`exit_mm`) before it closes descriptors and drops locks (`exit_files`), so the
    /// driver still lists what an exiting process held for a moment after its map is empty. A
    /// process running user code always has a map, so this cannot be put on by a live tenant.
    Exiting,
}

/// Whether `libgpuslice.so` is mapped into `pid`.
pub fn interposer_mapped(pid: u32) -> Mapped {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Mapped::No;
    };
    if maps.is_empty() {
        return Mapped::Exiting;
    }
    let yes = maps.lines().any(|l| {
        let path = l.split_whitespace().nth(5).unwrap_or("");
        Path::new(path)
            .file_name()
            .is_some_and(|n| n == "libgpuslice.so")
    });
    if yes { Mapped::Yes } else { Mapped::No }
}

/// Sends SIGKILL to `pid` if it is still the process that started at `start`. The check and
/// the signal go through a pidfd, so a pid reused in between is never hit.
pub fn kill(pid: u32, start: u64) -> Result<(), String> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as libc::c_int;
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(format!("pidfd_open({pid}): {e}"));
    }
    let r = if stat(pid).is_some_and(|s| s.start == start) {
        // SAFETY: a descriptor we own; no siginfo; flags 0.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                Ok(())
            } else {
                Err(format!("kill({pid}): {e}"))
            }
        } else {
            Ok(())
        }
    } else {
        // Gone, and the pid already names another process.
        Ok(())
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    r
}

/// (device, inode) of a file, which names it across mount namespaces.
pub fn file_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Where a container sees its tenant directory (the mount holding its ledger), relative to its
/// root. `/var/run` is usually a symlink to `/run`, which `/proc/<pid>/root` would resolve in
/// the agent's root, so `/run` is looked at first.
const CONTAINER_TENANT_DIRS: [&str; 2] = ["run/gpuslice", "var/run/gpuslice"];

/// The (device, inode) of the directories `pid` sees at the container's tenant directory. The
/// directory is the mount itself: a tenant can replace or delete the ledger file in it, but
/// not the mount point without unmounting it.
pub fn container_tenant_dir(pid: u32) -> Vec<(u64, u64)> {
    CONTAINER_TENANT_DIRS
        .iter()
        .filter_map(|p| file_id(&Path::new(&format!("/proc/{pid}/root")).join(p)))
        .collect()
}

// ---- the action log ----

/// One action, as `gpuslice top` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub unix_ms: u64,
    /// The tenant's name; empty for a process of no tenant.
    pub tenant: String,
    pub gpu: String,
    pub pid: u32,
    pub reason: String,
    pub action: String,
    pub used_bytes: u64,
    pub tenant_used_bytes: u64,
    pub cap_bytes: u64,
}

impl Record {
    pub fn new(f: &Finding, tenant: &str, action: Action) -> Record {
        Record {
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            tenant: tenant.to_string(),
            gpu: f.gpu.clone(),
            pid: f.pid,
            reason: f.reason.as_str().to_string(),
            action: action.as_str().to_string(),
            used_bytes: f.used,
            tenant_used_bytes: f.tenant_used,
            cap_bytes: f.cap,
        }
    }

    /// One line for a log.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b >> 20;
        let who = if self.tenant.is_empty() {
            "of no tenant".to_string()
        } else {
            format!("of tenant {}", self.tenant)
        };
        let what = match self.reason.as_str() {
            "unmanaged" => "uses the GPU without the interposer".to_string(),
            "over-cap" => format!(
                "is the largest of a tenant over its cap by the driver's count ({} MiB of {} MiB)",
                mib(self.tenant_used_bytes),
                mib(self.cap_bytes)
            ),
            "gpu-not-allowed" => "uses a GPU its tenant may not use".to_string(),
            _ => "uses a watched GPU".to_string(),
        };
        format!(
            "watchdog: {} pid {} {who}: holds {} MiB on {} and {what} ({})",
            if self.action == "kill" {
                "killed"
            } else {
                "reporting"
            },
            self.pid,
            mib(self.used_bytes),
            self.gpu,
            self.reason
        )
    }
}

/// Appends `r` to the log at `path`, keeping the file under [`LOG_MAX_BYTES`] by dropping its
/// older half when needed.
pub fn append(path: &Path, r: &Record) -> Result<(), String> {
    let mut line = serde_json::to_string(r).map_err(|e| e.to_string())?;
    line.push('\n');
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    if len + line.len() as u64 > LOG_MAX_BYTES {
        let mut kept = read_log(path);
        let mut text = String::new();
        while let Some(r) = kept.pop() {
            let l = serde_json::to_string(&r).map_err(|e| e.to_string())? + "\n";
            if (text.len() + l.len()) as u64 > LOG_MAX_BYTES / 2 {
                break;
            }
            text.insert_str(0, &l);
        }
        text.push_str(&line);
        return crate::state::write_atomic(path, text.as_bytes());
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The records in the log at `path`, oldest first. Only the file's last [`LOG_MAX_BYTES`] are
/// read, so a file grown by someone else costs no more; lines that do not parse are skipped.
pub fn read_log(path: &Path) -> Vec<Record> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let from = len.saturating_sub(LOG_MAX_BYTES);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err()
        || f.take(LOG_MAX_BYTES).read_to_end(&mut buf).is_err()
    {
        return Vec::new();
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

// ---- one round ----

/// A tenant as the watchdog sees it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub limits: Watched,
    /// Pids holding live slots in its ledger, as the kernel reports them.
    pub live: HashSet<u32>,
}

/// Builds the decision's input from NVML's lists (`(gpu uuid, [(pid, used)])`) and decides.
/// `tenant_of` says which tenant (index into `tenants`) a pid belongs to, if any.
pub fn evaluate(
    tenants: &[Tenant],
    gpus: &[(String, Vec<(u32, u64)>)],
    mut tenant_of: impl FnMut(u32) -> Option<usize>,
) -> Vec<Finding> {
    let mut owner: HashMap<u32, Option<usize>> = HashMap::new();
    let mut interposed: HashMap<u32, Mapped> = HashMap::new();
    let mut procs = Vec::new();
    for (gpu, list) in gpus {
        for &(pid, used) in list {
            let t = *owner.entry(pid).or_insert_with(|| tenant_of(pid));
            let i = match t {
                Some(t) => *interposed
                    .entry(pid)
                    .or_insert_with(|| match interposer_mapped(pid) {
                        Mapped::Yes if !tenants[t].live.contains(&pid) => Mapped::No,
                        m => m,
                    }),
                None => Mapped::No,
            };
            if i == Mapped::Exiting {
                // What it holds is being released; judging it now would act on a process
                // that is already going, and count it twice if it was a tenant's.
                continue;
            }
            procs.push(GpuProcess {
                pid,
                gpu: gpu.clone(),
                used,
                tenant: t,
                interposed: i == Mapped::Yes,
            });
        }
    }
    let limits: Vec<Watched> = tenants.iter().map(|t| t.limits.clone()).collect();
    wd::decide(&limits, &procs)
}

/// Acts on findings, remembering what it acted on so that a finding that persists (a process
/// reported, or one still dying) is logged and counted once. Kills are repeated every round
/// while the process is still listed; they are idempotent.
#[derive(Default)]
pub struct Actor {
    seen: HashSet<(u32, u64, String, Reason)>,
}

impl Actor {
    /// `action(finding)` says what to do (Ignore skips it); `record` is called once per new
    /// action, after the kill if there is one.
    pub fn act(
        &mut self,
        findings: &[Finding],
        action: impl Fn(&Finding) -> Action,
        mut record: impl FnMut(&Finding, Action, Option<String>),
    ) {
        let mut now = HashSet::new();
        for f in findings {
            let a = action(f);
            if a == Action::Ignore {
                continue;
            }
            let Some(st) = stat(f.pid) else { continue };
            let key = (f.pid, st.start, f.gpu.clone(), f.reason);
            let error = if a == Action::Kill && !st.zombie {
                kill(f.pid, st.start).err()
            } else {
                None
            };
            if !self.seen.contains(&key) {
                record(f, a, error);
            }
            now.insert(key);
        }
        self.seen = now;
    }
}

// ---- the node agent's watchdog ----

fn tenant_action(a: WatchdogAction) -> Action {
    match a {
        WatchdogAction::Kill => Action::Kill,
        WatchdogAction::Report => Action::Report,
        WatchdogAction::Off => Action::Ignore,
    }
}

fn unknown_action(a: UnknownProcesses) -> Action {
    match a {
        UnknownProcesses::Ignore => Action::Ignore,
        UnknownProcesses::Report => Action::Report,
        UnknownProcesses::Kill => Action::Kill,
    }
}

/// Starts the agent's watchdog thread over every tenant the agent granted.
pub fn spawn(shared: Arc<Shared>) {
    std::thread::Builder::new()
        .name("gpuslice-watchdog".into())
        .spawn(move || {
            let mut actor = Actor::default();
            let mut last_error = String::new();
            loop {
                if let Err(e) = round(&shared, &mut actor) {
                    if e != last_error {
                        tracing::warn!("watchdog: {e}");
                        last_error = e;
                    }
                } else {
                    last_error.clear();
                }
                std::thread::sleep(PERIOD);
            }
        })
        .expect("spawning the watchdog thread");
}

/// One look at every GPU.
pub fn round(shared: &Shared, actor: &mut Actor) -> Result<(), String> {
    let cfg = shared.cfg.read().unwrap().watchdog.clone();
    if cfg.action == WatchdogAction::Off && cfg.unknown_processes == UnknownProcesses::Ignore {
        return Ok(());
    }
    let slack = cfg.slack_mib << 20;
    // The driver's lists first, then the ledgers' live slots: a process claims its slot before
    // it touches the device, so every interposed process listed is found live.
    let gpus = shared.gpus.read().unwrap().clone();
    let mut lists = Vec::new();
    let mut errors = Vec::new();
    for g in gpus.iter().filter(|g| !g.mig_enabled) {
        match shared.gpu_source.processes(g.index) {
            Ok(l) => lists.push((g.uuid.clone(), l)),
            Err(e) => errors.push(format!("GPU {}: {e}", g.uuid)),
        }
    }
    let allocations = shared.store.lock().unwrap().state.allocations.clone();
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut by_dir: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for a in &allocations {
        // MIG grants have no ledger: the hardware confines them.
        if a.resource
            .starts_with(gpuslice_core::protocol::RESOURCE_MIG_PREFIX)
        {
            continue;
        }
        let Some(id) = file_id(&shared.paths.tenants.join(&a.tenant)) else {
            continue;
        };
        by_dir.insert(id, tenants.len());
        // A ledger that no longer opens (replaced or damaged from inside the container) has no
        // live slots: every process of the tenant on a GPU is then unmanaged.
        let live = gpuslice_ledger::Ledger::open(&shared.paths.ledger(&a.tenant))
            .map(|l| l.live_pids().into_iter().collect())
            .unwrap_or_default();
        tenants.push(Tenant {
            name: a.tenant.clone(),
            limits: Watched {
                cap: a.memory_bytes,
                allowed: a.gpus.clone(),
                slack_per_process: slack,
            },
            live,
        });
    }
    // Processes of plain `gpuslice run` tenants on this node (live slots in their ledgers) are
    // governed by their own supervisor's watchdog: not reported as processes of no tenant.
    let own_dir = &shared.paths.tenants;
    let run_tenants: HashSet<u32> = shared
        .tenant_dirs
        .iter()
        .filter(|d| *d != own_dir)
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter_map(|e| gpuslice_ledger::Ledger::open(&e.path().join("ledger")).ok())
        .flat_map(|l| l.live_pids())
        .collect();
    let findings = evaluate(&tenants, &lists, |pid| {
        container_tenant_dir(pid)
            .iter()
            .find_map(|id| by_dir.get(id).copied())
    });
    let log = shared
        .paths
        .tenants
        .parent()
        .map_or_else(|| PathBuf::from(LOG_FILE), |d| d.join(LOG_FILE));
    actor.act(
        &findings,
        |f| match f.tenant {
            Some(_) => tenant_action(cfg.action),
            None if run_tenants.contains(&f.pid) => Action::Ignore,
            None => unknown_action(cfg.unknown_processes),
        },
        |f, action, error| {
            let tenant = f.tenant.map_or("", |t| tenants[t].name.as_str());
            let r = Record::new(f, tenant, action);
            match &error {
                None => tracing::warn!(
                    tenant,
                    gpu = %f.gpu,
                    pid = f.pid,
                    reason = %f.reason,
                    action = %action,
                    used_bytes = f.used,
                    tenant_used_bytes = f.tenant_used,
                    cap_bytes = f.cap,
                    "{}",
                    r.describe()
                ),
                Some(e) => tracing::error!(
                    tenant,
                    pid = f.pid,
                    "{}; the kill failed: {e}",
                    r.describe()
                ),
            }
            shared
                .metrics
                .watchdog_action(tenant, &f.gpu, f.reason.as_str(), action.as_str());
            if let Err(e) = append(&log, &r) {
                tracing::warn!("watchdog log: {e}");
            }
        },
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("cannot list processes: {}", errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_reads_own_process() {
        let s = stat(std::process::id()).unwrap();
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert!(!s.zombie);
        assert!(s.start > 0);
        assert!(stat(u32::MAX).is_none());
    }

    #[test]
    fn a_process_without_an_address_space_is_exiting_not_unmanaged() {
        // This test process has no interposer mapped; a child that has exited and is not yet
        // reaped has no map at all, like one the kernel is tearing down.
        assert_eq!(interposer_mapped(std::process::id()), Mapped::No);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        while !stat(pid).unwrap().zombie {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(interposer_mapped(pid), Mapped::Exiting);
        // Still listed by the driver, over a cap of nothing: not judged while it goes.
        let t = Tenant {
            name: "t".into(),
            limits: Watched {
                cap: 0,
                allowed: vec!["GPU-x".into()],
                slack_per_process: 0,
            },
            live: HashSet::new(),
        };
        let gpus = vec![("GPU-x".to_string(), vec![(pid, 1 << 30)])];
        assert!(evaluate(&[t], &gpus, |_| Some(0)).is_empty());
        child.wait().unwrap();
        assert_eq!(interposer_mapped(pid), Mapped::No, "gone: fail closed");
    }

    #[test]
    fn descendants_follow_parent_links() {
        let mk = |ppid| Stat {
            ppid,
            start: 1,
            zombie: false,
        };
        let all: HashMap<u32, Stat> = [
            (1, mk(0)),
            (10, mk(1)),
            (11, mk(10)),
            (12, mk(11)),
            (20, mk(1)),
        ]
        .into_iter()
        .collect();
        let d = descendants(10, &all);
        assert_eq!(d, [11, 12].into_iter().collect());
    }

    #[test]
    fn the_log_stays_bounded_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOG_FILE);
        let f = Finding {
            pid: 0,
            gpu: "GPU-x".into(),
            tenant: Some(0),
            reason: Reason::OverCap,
            used: 1,
            tenant_used: 2,
            cap: 3,
        };
        for pid in 0..2000 {
            let r = Record::new(&Finding { pid, ..f.clone() }, "t", Action::Kill);
            append(&p, &r).unwrap();
            assert!(std::fs::metadata(&p).unwrap().len() <= LOG_MAX_BYTES);
        }
        let got = read_log(&p);
        assert_eq!(got.last().unwrap().pid, 1999);
        assert!(got.len() > 100, "{}", got.len());
        assert!(got.windows(2).all(|w| w[0].pid + 1 == w[1].pid));
        // Junk someone else wrote is skipped, not fatal.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"not json\n")
            .unwrap();
        assert_eq!(read_log(&p).last().unwrap().pid, 1999);
    }

    #[test]
    fn kill_spares_a_reused_pid() {
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = c.id();
        let st = stat(pid).unwrap();
        kill(pid, st.start + 1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            c.try_wait().unwrap().is_none(),
            "another start time: not ours to kill"
        );
        kill(pid, st.start).unwrap();
        let status = c.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}

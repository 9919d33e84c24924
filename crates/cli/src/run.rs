//! `gpuslice run`: one tenant, standalone. Creates the tenant's ledger, starts the command with
//! the interposer loaded, returns dead processes' memory to the tenant while it runs, and exits
//! with the command's status.

use gpuslice_core::compute::{ComputeLimits, ComputeQuota, Priority, ShareMode};
use gpuslice_core::{ByteSize, DeviceList, TenantLimits};
use gpuslice_ledger::{ComputeSpec, Ledger, TenantSpec};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use crate::install::{Install, compute_dir, prepend, state_dir};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run against the simulated GPU instead of a real one.
    #[arg(long)]
    pub sim: bool,
    /// Device memory cap per GPU, e.g. 4GiB, 512MiB, 4Gi, 1.5GiB or a number of bytes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub gpu_memory: ByteSize,
    /// GPUs the tenant may use, by index (sets CUDA_VISIBLE_DEVICES), e.g. 0 or 0,2.
    #[arg(long, value_name = "LIST", value_parser = parse_devices)]
    pub devices: Option<DeviceList>,
    /// Share of each GPU's time, 1-100 percent (without it: a full share, weight 100).
    #[arg(long, value_name = "PCT", value_parser = parse_quota)]
    pub gpu_compute: Option<ComputeQuota>,
    /// How the GPU's time is split: best-effort (idle time lent out), fixed (never above the
    /// quota), equal (quotas ignored). One mode per GPU: the first tenant's wins.
    #[arg(long, value_name = "MODE", default_value = "best-effort", value_parser = parse_mode)]
    pub share_mode: ShareMode,
    /// high, normal or low: higher priorities' kernels wait for lower ones as little as possible.
    #[arg(long, value_name = "PRIORITY", default_value = "normal", value_parser = parse_priority)]
    pub priority: Priority,
    /// Name shown for the tenant in `gpuslice top` and metrics.
    #[arg(long)]
    pub name: Option<String>,
    /// What to do about a process of the command that uses a GPU without the interposer or holds more than the cap by the driver's count: kill (SIGKILL), report (log only) or off.
    #[arg(long, value_name = "ACTION", default_value = "kill", value_parser = crate::watchdog::parse_mode)]
    pub watchdog: crate::watchdog::Mode,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.parse::<ByteSize>().map_err(|e| e.to_string())
}

fn parse_quota(s: &str) -> Result<ComputeQuota, String> {
    s.parse()
        .map_err(|e: gpuslice_core::compute::ComputeError| e.to_string())
}

fn parse_mode(s: &str) -> Result<ShareMode, String> {
    s.parse()
        .map_err(|e: gpuslice_core::compute::ComputeError| e.to_string())
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    s.parse()
        .map_err(|e: gpuslice_core::compute::ComputeError| e.to_string())
}

/// The ledger's codes for the tenant's compute limits.
pub fn compute_spec(c: &ComputeLimits) -> ComputeSpec {
    ComputeSpec {
        quota: c.quota.map_or(0, |q| q.percent()),
        mode: match c.mode {
            ShareMode::BestEffort => 0,
            ShareMode::Fixed => 1,
            ShareMode::Equal => 2,
        },
        priority: match c.priority {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        },
    }
}

/// Refuses at start a share mode other than the one live tenants already use on this node's
/// GPUs (the interposer checks again, per GPU, when the first kernel is launched).
fn check_mode(dir: &std::path::Path, mode: u8) -> Result<(), String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let Ok(r) = gpuslice_compute::Region::open(&e.path()) else {
            continue;
        };
        if let Some(m) = r.mode()
            && m != mode
            && !r.entries().is_empty()
        {
            return Err(format!(
                "a GPU on this node is shared in {} mode by its running tenants; --share-mode {} is refused (one mode per GPU)",
                gpuslice_compute::policy::mode_name(m),
                gpuslice_compute::policy::mode_name(mode)
            ));
        }
    }
    Ok(())
}

fn parse_devices(s: &str) -> Result<DeviceList, String> {
    s.parse::<DeviceList>().map_err(|e| e.to_string())
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        unsafe { libc::kill(pid, sig) };
    }
}

/// The tenant's files, removed when the tenant ends.
struct TenantDir(PathBuf);

impl Drop for TenantDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: RunArgs) -> i32 {
    match try_run(args) {
        Ok(status) => exit_code(status),
        Err(msg) => {
            eprintln!("gpuslice run: {msg}");
            1
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn try_run(args: RunArgs) -> Result<ExitStatus, String> {
    let install = Install::locate()?;
    let limits = TenantLimits::new(args.gpu_memory);
    let compute = ComputeLimits {
        quota: args.gpu_compute,
        mode: args.share_mode,
        priority: args.priority,
    };
    if let Err(e) = compute.validate() {
        eprintln!("gpuslice run: {e}");
        std::process::exit(2);
    }
    let compute_dir = compute_dir();
    check_mode(&compute_dir, compute_spec(&compute).mode)?;
    let name = args.name.clone().unwrap_or_else(|| "run".to_string());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "--name '{name}' may contain only letters, digits, '-', '_' and '.'"
        ));
    }
    let dir = state_dir()
        .join("tenants")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = TenantDir(dir);
    let ledger_path = dir.0.join("ledger");
    let spec = TenantSpec {
        name: name.clone(),
        memory_cap: limits.memory.bytes(),
        context_overhead: limits.context_overhead.bytes(),
        allowed: Vec::new(),
    };
    let ledger = Ledger::create(&ledger_path, &spec)
        .map_err(|e| format!("cannot create the tenant ledger: {e}"))?;
    ledger
        .set_compute(compute_spec(&compute))
        .map_err(|e| format!("cannot record the compute limits: {e}"))?;

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("LD_PRELOAD", prepend("LD_PRELOAD", &install.interposer()))
        .env("GPUSLICE_LEDGER", &ledger_path)
        .env("GPUSLICE_TENANT", &name)
        .env("GPUSLICE_COMPUTE_DIR", &compute_dir);
    if args.sim {
        let lib = dir.0.join("lib");
        install.link_simulator(&lib)?;
        cmd.env("LD_LIBRARY_PATH", prepend("LD_LIBRARY_PATH", &lib));
    }
    if let Some(devs) = &args.devices {
        cmd.env("CUDA_VISIBLE_DEVICES", devs.to_string())
            .env("NVIDIA_VISIBLE_DEVICES", devs.to_string());
    }

    let watchdog = crate::watchdog::Watchdog::prepare(&args, &dir.0, &ledger_path)?;
    // The command never outlives its supervisor: without it, nobody reaps dead processes' memory.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // The terminal sends SIGINT/SIGQUIT to the whole foreground group; the rest is forwarded.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.command[0].to_string_lossy()))?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let _watchdog = crate::watchdog::start(watchdog, child.id());
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }

    // Processes of the tenant that die (SIGKILL included) give their memory back within this period.
    let done = Arc::new(AtomicBool::new(false));
    let reaper = {
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                ledger.reclaim_dead(None);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the command: {e}"))?;
    done.store(true, Ordering::SeqCst);
    let _ = reaper.join();
    Ok(status)
}

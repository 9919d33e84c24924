//! `gpuslice run`: one tenant, standalone. Creates the tenant's ledger, becomes the tenant's
//! warden (the authority its processes take their limits from: `gpuslice_warden`), starts the
//! command with the interposer loaded, returns dead processes' memory to the tenant while it
//! runs, and exits with the command's status.

use gpuslice_core::compat;
use gpuslice_core::compute::{ComputeLimits, ComputeQuota, Priority, ShareMode};
use gpuslice_core::{ByteSize, DeviceList, TenantLimits};
use gpuslice_ledger::{ComputeSpec, Ledger, TenantSpec};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::install::{Install, prepend, state_dir};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run against the simulated GPU instead of a real one.
    #[arg(long)]
    pub sim: bool,
    /// Device memory cap per GPU, e.g. 4GiB, 512MiB, 4Gi, 1.5GiB or a number of bytes.
    /// Without it, HAMi-core's CUDA_DEVICE_MEMORY_LIMIT (or _<i>, all alike) in this command's
    /// environment, e.g. 4g or 4096m.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub gpu_memory: Option<ByteSize>,
    /// GPUs the tenant may use, by NVML index, e.g. 0 or 0,2. Others get a cap of zero, and
    /// CUDA_VISIBLE_DEVICES names the chosen ones by UUID.
    #[arg(long, value_name = "LIST", value_parser = parse_devices)]
    pub devices: Option<DeviceList>,
    /// Share of each GPU's time, 1-100 percent (without it: HAMi-core's CUDA_DEVICE_SM_LIMIT
    /// in this command's environment if set, else a full share, weight 100).
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
    // The flags, else HAMi-core's variables in our own environment (the operator's, not the
    // tenant's: the tenant's processes never take limits from theirs).
    let env = |n: &str| std::env::var(n).ok();
    let refuse = |e: compat::CompatError| -> ! {
        eprintln!("gpuslice run: {e}");
        std::process::exit(2)
    };
    let gpu_memory = match args.gpu_memory {
        Some(m) => m,
        None => match compat::hami_uniform(compat::HAMI_MEMORY, env, compat::hami_size) {
            Ok(Some(m)) => m,
            Ok(None) => {
                eprintln!(
                    "gpuslice run: --gpu-memory SIZE is required (or HAMi-core's {} in gpuslice run's environment)",
                    compat::HAMI_MEMORY
                );
                std::process::exit(2)
            }
            Err(e) => refuse(e),
        },
    };
    let gpu_compute = match args.gpu_compute {
        Some(q) => Some(q),
        None => compat::hami_uniform(compat::HAMI_SM, env, compat::hami_sm)
            .unwrap_or_else(|e| refuse(e))
            .and_then(ComputeQuota::new),
    };
    let limits = TenantLimits::new(gpu_memory);
    let compute = ComputeLimits {
        quota: gpu_compute,
        mode: args.share_mode,
        priority: args.priority,
    };
    if let Err(e) = compute.validate() {
        eprintln!("gpuslice run: {e}");
        std::process::exit(2);
    }
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
    // The simulated GPU's libraries, then NVML for the watchdog, on their own thread while the
    // tenant is set up below.
    let lib = install.sim_lib_dir();
    let wants_nvml = args.watchdog != crate::watchdog::Mode::Off;
    let sim = args.sim;
    let (lib2, install2) = (lib.clone(), install.clone());
    let loading = std::thread::spawn(move || -> Result<Option<crate::watchdog::Driver>, String> {
        if sim {
            install2.link_simulator(&lib2)?;
        }
        wants_nvml
            .then(|| crate::watchdog::Driver::load(sim.then_some(lib2.as_path())))
            .transpose()
    });
    let chosen = match &args.devices {
        Some(devs) => gpu_uuids(&install, args.sim, devs)?,
        None => Vec::new(),
    };
    let spec = TenantSpec {
        name: name.clone(),
        memory_cap: limits.memory.bytes(),
        context_overhead: limits.context_overhead.bytes(),
        allowed: chosen.iter().map(|(u, _)| *u).collect(),
    };
    let ledger = Ledger::create(&ledger_path, &spec)
        .map_err(|e| format!("cannot create the tenant ledger: {e}"))?;
    ledger
        .set_compute(compute_spec(&compute))
        .map_err(|e| format!("cannot record the compute limits: {e}"))?;
    let granted = ledger
        .limits()
        .map_err(|e| format!("cannot read back the tenant's limits: {e}"))?;

    // The compute arbiter gives each tenant process its own channel (a refused mode exits 1).
    // Before we become a subreaper: an arbiter started here must not stay in our tree.
    let arbiter = crate::arbiter::channels(&name, granted.tenant_id, &compute_spec(&compute))?;
    // Orphaned processes of the tenant (double forks, daemons) stay in our tree, so that the
    // warden still answers them and nobody outside the tree can pose as one of them.
    // SAFETY: prctl with these arguments only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // The tenant's processes take their limits from here, never from their environment. A
    // process's exit (its connection closing) returns its memory at once; the tick also
    // covers processes that died before connecting.
    gpuslice_warden::server::start(
        gpuslice_warden::server::Grant {
            limits: granted,
            ledger: ledger_path.clone(),
            arbiter: Some(arbiter),
        },
        move || {
            ledger.reclaim_dead(None);
        },
    )
    .map_err(|e| format!("cannot serve the tenant's limits: {e}"))?;

    let mut env: Vec<(&str, OsString)> = vec![
        ("LD_PRELOAD", prepend("LD_PRELOAD", &install.interposer())),
        ("GPUSLICE_TENANT", OsString::from(&name)),
    ];
    if args.sim {
        env.push(("LD_LIBRARY_PATH", prepend("LD_LIBRARY_PATH", &lib)));
    }
    if !chosen.is_empty() {
        let names: Vec<&str> = chosen.iter().map(|(_, n)| n.as_str()).collect();
        env.push(("CUDA_VISIBLE_DEVICES", names.join(",").into()));
        env.push(("NVIDIA_VISIBLE_DEVICES", names.join(",").into()));
    }

    let driver = loading
        .join()
        .map_err(|_| "loading the driver's libraries failed".to_string())??;
    let watchdog = crate::watchdog::Watchdog::prepare(&args, &dir.0, &ledger_path, driver)?;
    // The terminal sends SIGINT/SIGQUIT to the whole foreground group; the rest is forwarded.
    // (The command gets every signal's default back: `spawn`.)
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    // The command never outlives its supervisor (`spawn`).
    let child = crate::spawn::spawn(&args.command[0], &args.command[1..], &env)
        .map_err(|e| format!("cannot start {}: {e}", args.command[0].to_string_lossy()))?;
    CHILD.store(child as i32, Ordering::SeqCst);
    let _watchdog = crate::watchdog::start(watchdog, child);
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }

    wait_for(child as libc::pid_t)
}

/// Waits for the command, reaping on the way any orphaned process of the tenant that was
/// re-parented to us (we are the tenant's subreaper), and returns the command's status.
fn wait_for(pid: libc::pid_t) -> Result<ExitStatus, String> {
    use std::os::unix::process::ExitStatusExt;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(format!("waiting for the command: {e}"));
            }
        }
    }
}

/// The GPUs `devs` names (NVML indices), as (UUID, the name CUDA_VISIBLE_DEVICES takes).
fn gpu_uuids(
    install: &Install,
    sim: bool,
    devs: &DeviceList,
) -> Result<Vec<([u8; 16], String)>, String> {
    let nvml = if sim {
        gpuslice_nvml::Nvml::from_path(&install.lib_dir.join(crate::install::SIM_NVML))
    } else {
        gpuslice_nvml::Nvml::system()
    }
    .map_err(|e| format!("--devices needs NVML to name the GPUs: {e}"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("--devices: cannot count the GPUs: {e}"))?;
    let mut out = Vec::new();
    for &i in &devs.0 {
        if i >= count {
            eprintln!(
                "gpuslice run: --devices {devs}: there is no GPU {i} (this machine has {count}: 0-{})",
                count.saturating_sub(1)
            );
            std::process::exit(2);
        }
        let g = nvml
            .gpu(i)
            .map_err(|e| format!("--devices: cannot read GPU {i}: {e}"))?;
        let uuid = gpuslice_ledger::parse_uuid(&g.uuid)
            .ok_or_else(|| format!("--devices: GPU {i} has an unreadable UUID '{}'", g.uuid))?;
        out.push((uuid, g.uuid));
    }
    Ok(out)
}

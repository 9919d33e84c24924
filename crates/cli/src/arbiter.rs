//! `gpuslice arbiter`: the machine-wide compute arbiter for `gpuslice run` tenants, started on
//! demand by the first supervisor that finds nobody listening, and gone a few seconds after its
//! last tenant. Also the supervisor's side: registering its tenant.

use gpuslice_arbiter::{RegisterError, Registration, Spec};
use gpuslice_ledger::ComputeSpec;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The socket to serve (default: `arbiter.sock` in the compute directory).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Exit after this many seconds without tenants (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub linger: u64,
    /// Fork once more and let the starter return: the arbiter then belongs to no tenant's
    /// process tree.
    #[arg(long, hide = true)]
    pub daemon: bool,
}

pub fn socket_path() -> PathBuf {
    crate::install::compute_dir().join("arbiter.sock")
}

/// Where the arbiter serving `socket` publishes its figures.
pub fn status_path(socket: &Path) -> PathBuf {
    socket.with_file_name(gpuslice_arbiter::status::FILE)
}

pub fn main(args: Args) -> i32 {
    if args.daemon {
        // SAFETY: single-threaded at this point; the parent only exits.
        match unsafe { libc::fork() } {
            0 => {}
            -1 => return 1,
            // SAFETY: exiting the intermediate process without running destructors is the point.
            _ => unsafe { libc::_exit(0) },
        }
    }
    let socket = args.socket.unwrap_or_else(socket_path);
    if let Some(d) = socket.parent() {
        let _ = gpuslice_compute::prepare_dir(d);
    }
    // One arbiter per socket: the life lock is held until we exit (or die).
    let lock = match gpuslice_arbiter::take_alive_lock(&socket) {
        Ok(Some(l)) => l,
        Ok(None) => {
            eprintln!(
                "gpuslice arbiter: another arbiter serves {}",
                socket.display()
            );
            return 0;
        }
        Err(e) => {
            eprintln!("gpuslice arbiter: {e}");
            return 1;
        }
    };
    let listener = match gpuslice_arbiter::listen(&socket, 0o666) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "gpuslice arbiter: cannot listen at {}: {e}",
                socket.display()
            );
            return 1;
        }
    };
    let r = gpuslice_arbiter::server::serve(
        listener,
        gpuslice_arbiter::server::Options {
            status: Some(status_path(&socket)),
            linger: (args.linger > 0).then(|| Duration::from_secs(args.linger)),
        },
    );
    // Gone before the life lock is released, so a newcomer never connects to a dead socket.
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(status_path(&socket));
    drop(lock);
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gpuslice arbiter: {e}");
            1
        }
    }
}

/// Starts `gpuslice arbiter --socket SOCKET` detached (its own session, no terminal).
fn spawn_daemon(socket: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let mut c = Command::new(exe);
    c.arg("arbiter")
        .arg("--daemon")
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    // The intermediate process exits at once; the arbiter itself is reparented away from us.
    c.spawn()?.wait()?;
    Ok(())
}

/// Registers the tenant with the machine's arbiter, starting one if needed. A registration
/// refused for its mode is an error naming both modes; the caller exits 1.
pub fn register(name: &str, ledger_id: u64, c: &ComputeSpec) -> Result<Registration, String> {
    let socket = socket_path();
    let spec = Spec {
        name: name.to_string(),
        quota: c.quota,
        mode: c.mode,
        priority: c.priority,
        ledger_id,
    };
    // An arbiter that is just exiting may close our connection: try again once.
    let mut last = String::new();
    for _ in 0..3 {
        gpuslice_arbiter::ensure_running(&socket, || spawn_daemon(&socket))
            .map_err(|e| format!("cannot start the compute arbiter: {e}"))?;
        match Registration::register(&socket, &spec) {
            Ok(r) => return Ok(r),
            Err(RegisterError::Refused { text, .. }) => return Err(text),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

/// Registers the tenant and returns what the warden calls to give each tenant process its own
/// channel. The registration lives as long as the returned closure (the supervisor's life).
pub fn channels(
    name: &str,
    ledger_id: u64,
    c: &ComputeSpec,
) -> Result<gpuslice_warden::server::ArbiterFn, String> {
    let reg = register(name, ledger_id, c)?;
    Ok(Box::new(move || reg.attach()))
}

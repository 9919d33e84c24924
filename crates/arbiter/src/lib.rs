//! The compute arbiter. It alone holds the scheduling state of every GPU it serves: which
//! tenant holds each GPU, virtual times, credits. Tenants reach it only through private
//! channels (see `gpuslice_compute::wire`) and learn their turn from a page only it can write
//! (`gpuslice_compute::page`). See ARCHITECTURE.md, "How GPU time is shared".
//!
//! - [`server`]: the event loop (one thread, `ppoll`), hosted by `gpuslice arbiter` (machine-wide
//!   daemon for `gpuslice run`) or by the node agent (one listening socket per container).
//! - [`Registration`]: the supervisor's side: register a tenant, then make one channel per
//!   tenant process.
//! - [`status`]: the figures the arbiter publishes for `gpuslice top` and metrics.

pub mod server;
pub mod status;

use gpuslice_compute::policy;
use gpuslice_compute::wire::{self, Msg};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A tenant's compute settings as registered (the ledger's `ComputeSpec` codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    /// 1-100; 0 = a full share (weight 100).
    pub quota: u8,
    pub mode: u8,
    pub priority: u8,
    /// The tenant's ledger id, published beside its figures (display and joins only).
    pub ledger_id: u64,
}

impl Spec {
    /// Checks every field, naming the accepted form.
    pub fn validate(&self) -> Result<(), String> {
        if self.quota > 100 {
            return Err(format!("quota {} is not 0-100", self.quota));
        }
        if self.mode > policy::MODE_EQUAL {
            return Err(format!(
                "mode {} is not best-effort, fixed or equal",
                self.mode
            ));
        }
        if self.priority > policy::PRIO_LOW {
            return Err(format!(
                "priority {} is not high, normal or low",
                self.priority
            ));
        }
        if self.mode == policy::MODE_FIXED && self.quota == 0 {
            return Err("fixed mode needs a quota (1-100)".into());
        }
        if self.name.is_empty()
            || self.name.len() > wire::NAME_LEN
            || !self
                .name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        {
            return Err(format!(
                "name '{}' must be 1-{} letters, digits, '-', '_' or '.'",
                self.name,
                wire::NAME_LEN
            ));
        }
        Ok(())
    }
}

/// Why a registration failed.
#[derive(Debug)]
pub enum RegisterError {
    Io(io::Error),
    /// The arbiter refused: `code` is one of `wire::REFUSE_*`.
    Refused {
        code: u32,
        text: String,
    },
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::Io(e) => write!(f, "cannot reach the compute arbiter: {e}"),
            RegisterError::Refused { text, .. } => f.write_str(text),
        }
    }
}

/// A registered tenant. Dropping it (or the supervisor dying) ends the tenant at the arbiter.
pub struct Registration {
    socket: PathBuf,
    _conn: OwnedFd,
    pub tenant_id: u64,
    token: [u8; 16],
}

impl Registration {
    /// Registers a tenant with the arbiter listening at `socket`.
    pub fn register(socket: &Path, spec: &Spec) -> Result<Registration, RegisterError> {
        spec.validate().map_err(|text| RegisterError::Refused {
            code: wire::REFUSE_MALFORMED,
            text,
        })?;
        let conn = wire::connect_path(socket).map_err(RegisterError::Io)?;
        let (reply, _) = wire::call(
            conn.as_raw_fd(),
            &Msg::Register {
                name: spec.name.clone(),
                quota: spec.quota,
                mode: spec.mode,
                priority: spec.priority,
                ledger_id: spec.ledger_id,
            },
        )
        .map_err(RegisterError::Io)?;
        match reply {
            Msg::Registered { tenant_id, token } => Ok(Registration {
                socket: socket.to_path_buf(),
                _conn: conn,
                tenant_id,
                token,
            }),
            Msg::Refused { code, text, .. } => Err(RegisterError::Refused { code, text }),
            other => Err(RegisterError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected reply {other:?}"),
            ))),
        }
    }

    /// A new channel of this tenant, for one of its processes.
    pub fn attach(&self) -> io::Result<OwnedFd> {
        let c = wire::connect_path(&self.socket)?;
        match wire::call(c.as_raw_fd(), &Msg::Attach { token: self.token })?.0 {
            Msg::Attached => Ok(c),
            Msg::Refused { text, .. } => Err(io::Error::other(text)),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected reply {other:?}"),
            )),
        }
    }
}

fn flock(path: &Path, nonblock: bool) -> io::Result<Option<OwnedFd>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(path)?;
    let fd: OwnedFd = f.into();
    let op = libc::LOCK_EX | if nonblock { libc::LOCK_NB } else { 0 };
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(Some(fd));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// The lock a live arbiter holds for its whole life (released by the kernel when it dies).
pub fn alive_lock(socket: &Path) -> PathBuf {
    socket.with_extension("alive")
}

/// Takes the life lock of the arbiter serving `socket`, held until the descriptor is closed or
/// the process dies: `None` if another arbiter holds it.
pub fn take_alive_lock(socket: &Path) -> io::Result<Option<OwnedFd>> {
    flock(&alive_lock(socket), true)
}

fn spawn_lock(socket: &Path) -> PathBuf {
    socket.with_extension("spawn")
}

/// Makes sure an arbiter listens at `socket`, starting one with `spawn` if nobody does. Two
/// callers racing end with one arbiter: spawning happens under a lock file (which a SIGKILL
/// releases), and only when no arbiter holds its life lock.
pub fn ensure_running(socket: &Path, spawn: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    if wire::connect_path(socket).is_ok() {
        return Ok(());
    }
    if let Some(d) = socket.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _guard = flock(&spawn_lock(socket), false)?;
    if wire::connect_path(socket).is_ok() {
        return Ok(());
    }
    let alive = take_alive_lock(socket)?;
    if alive.is_some() {
        // Nobody serves: a stale socket file from an arbiter that died.
        drop(alive);
        let _ = std::fs::remove_file(socket);
        spawn()?;
    }
    let start = Instant::now();
    loop {
        if wire::connect_path(socket).is_ok() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no compute arbiter came up at {}", socket.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// 128 random bits from the kernel.
pub(crate) fn random_token() -> [u8; 16] {
    let mut t = [0u8; 16];
    let mut got = 0;
    while got < t.len() {
        // SAFETY: writing at most the remaining bytes of `t`.
        let r = unsafe { libc::getrandom(t[got..].as_mut_ptr().cast(), t.len() - got, 0) };
        if r > 0 {
            got += r as usize;
        } else if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            panic!("getrandom failed: {}", io::Error::last_os_error());
        }
    }
    t
}

/// Binds a seqpacket listener at `path` (replacing a stale file), with `mode` permissions.
pub fn listen(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let s = wire::seqpacket()?;
    let (addr, len) = wire::path_addr(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of length `len`.
    if unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    // SAFETY: listen on our socket.
    if unsafe { libc::listen(s.as_raw_fd(), 128) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// An eventfd, to wake the event loop from another thread.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

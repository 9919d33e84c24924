//! The interposer's side: finds every authority over the calling process and what each grants.

use crate::{ARBITER_SOCKET, CONTAINER_DIR, LEDGER_FILE, LIMITS_FILE, wire};
use gpuslice_ledger::Limits;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Who granted an [`Authority`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The node agent, through the files mounted at [`CONTAINER_DIR`].
    Container(PathBuf),
    /// The `gpuslice run` supervisor with this pid, an ancestor of the caller.
    Warden(u32),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Container(d) => write!(f, "the limits mounted at {}", d.display()),
            Source::Warden(pid) => write!(f, "gpuslice run (pid {pid})"),
        }
    }
}

/// One authority's grant: the limits, the ledger to charge, and the way to the arbiter.
pub struct Authority {
    pub source: Source,
    pub limits: Limits,
    /// A descriptor of the tenant's ledger, until the caller takes it to map it.
    ledger: Option<OwnedFd>,
    /// The connection to a warden, kept for the process's life: the warden learns of the
    /// process's exit when it closes.
    conn: Mutex<Option<OwnedFd>>,
}

impl Authority {
    /// The ledger's descriptor, once.
    pub fn take_ledger(&mut self) -> Option<OwnedFd> {
        self.ledger.take()
    }

    /// A new channel to the compute arbiter, already bound to this tenant.
    pub fn arbiter_channel(&self) -> Result<OwnedFd, String> {
        match &self.source {
            Source::Container(dir) => {
                let path = dir.join(ARBITER_SOCKET);
                let s = wire::seqpacket().map_err(|e| e.to_string())?;
                let addr = wire::path_addr(&path).map_err(|e| e.to_string())?;
                wire::connect(&s, &addr).map_err(|e| {
                    format!(
                        "cannot reach the compute arbiter at {}: {e}",
                        path.display()
                    )
                })?;
                Ok(s)
            }
            Source::Warden(_) => {
                let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
                let c = conn
                    .as_ref()
                    .ok_or_else(|| "the connection to gpuslice run was closed".to_string())?;
                let (payload, mut fds) = request(c, wire::REQ_ARBITER)?;
                debug_assert!(payload.is_empty());
                fds.pop()
                    .ok_or_else(|| "gpuslice run sent no arbiter channel".to_string())
            }
        }
    }

    /// Drops the warden connection without telling anyone: for a forked child, whose
    /// inherited copy belongs to its parent.
    pub fn forget_connection(&self) {
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::mem::forget(c);
        }
    }

    pub fn connection_fd(&self) -> Option<i32> {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.as_raw_fd())
    }
}

fn request(c: &OwnedFd, tag: &[u8; 8]) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    wire::send(c.as_raw_fd(), &[tag], &[]).map_err(|e| format!("gpuslice run: {e}"))?;
    let (msg, fds) = wire::recv(c.as_raw_fd()).map_err(|e| format!("gpuslice run: {e}"))?;
    match msg.get(..8) {
        Some(t) if t == wire::REP_OK => Ok((msg[8..].to_vec(), fds)),
        Some(t) if t == wire::REP_ERR => Err(String::from_utf8_lossy(&msg[8..]).into_owned()),
        _ if msg.is_empty() => Err("gpuslice run closed the connection".into()),
        _ => Err("gpuslice run sent a malformed reply".into()),
    }
}

/// Every authority over the calling process, outermost first: the container's, then each
/// `gpuslice run` among its ancestors from the farthest to the nearest. An empty list means the
/// process was not started by gpuslice; the caller must then refuse CUDA.
pub fn discover() -> Result<Vec<Authority>, String> {
    let mut out = Vec::new();
    if let Some(a) = container(Path::new(CONTAINER_DIR))? {
        out.push(a);
    }
    for pid in crate::ancestors().into_iter().rev() {
        if let Some(a) = warden(pid)? {
            out.push(a);
        }
    }
    Ok(out)
}

/// The container's authority, if the agent mounted one at `dir`. Present but unusable is an
/// error, never "no limits".
pub fn container(dir: &Path) -> Result<Option<Authority>, String> {
    let lp = dir.join(LIMITS_FILE);
    let bytes = match std::fs::read(&lp) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", lp.display())),
    };
    let limits = Limits::decode(&bytes).map_err(|e| format!("{}: {e}", lp.display()))?;
    let path = dir.join(LEDGER_FILE);
    let ledger = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open the tenant ledger {}: {e}", path.display()))?;
    Ok(Some(Authority {
        source: Source::Container(dir.to_path_buf()),
        limits,
        ledger: Some(ledger.into()),
        conn: Mutex::new(None),
    }))
}

/// The grant of the warden running as ancestor `pid`, if that process is one. A warden refuses
/// processes outside its tree.
pub fn warden(pid: u32) -> Result<Option<Authority>, String> {
    let s = wire::seqpacket().map_err(|e| e.to_string())?;
    let addr = wire::abstract_addr(&crate::socket_name(pid));
    match wire::connect(&s, &addr) {
        Ok(()) => {}
        // Nobody listens under that name: this ancestor is not a warden.
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => return Ok(None),
        Err(e) => return Err(format!("cannot reach gpuslice run (pid {pid}): {e}")),
    }
    // Only the ancestor itself may answer for its name; anyone else squatting on it is ignored.
    match wire::peer_pid(s.as_raw_fd()) {
        Ok(p) if p == pid => {}
        _ => return Ok(None),
    }
    let (payload, mut fds) =
        request(&s, wire::REQ_LIMITS).map_err(|e| match e.strip_prefix("gpuslice run") {
            Some(rest) => format!("gpuslice run (pid {pid}){rest}"),
            None => e,
        })?;
    let limits = Limits::decode(&payload)
        .map_err(|e| format!("gpuslice run (pid {pid}) sent bad limits: {e}"))?;
    let ledger = fds
        .pop()
        .ok_or_else(|| format!("gpuslice run (pid {pid}) sent no ledger"))?;
    Ok(Some(Authority {
        source: Source::Warden(pid),
        limits,
        ledger: Some(ledger),
        conn: Mutex::new(Some(s)),
    }))
}

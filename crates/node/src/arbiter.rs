//! The node's compute arbiter, hosted by the agent: one per machine, scheduling every tenant on
//! its GPUs, containers and plain `gpuslice run` tenants alike (two arbiters on one GPU would
//! each hand out the whole of it).
//!
//! - The machine-wide socket `<compute dir>/arbiter.sock` is served here while the agent runs,
//!   so `gpuslice run` supervisors on the node register with this arbiter instead of starting
//!   their own. The arbiter's life lock is taken first: if a `gpuslice run` arbiter already
//!   serves the machine, the agent refuses to start (it would split the GPUs' time in two) and
//!   says how to resolve it.
//! - Each container tenant gets its own listening socket, `arbiter.sock` in its tenant directory
//!   (which the container sees at `/var/run/gpuslice`). Every connection accepted there is a
//!   channel of that tenant: where a process connects from is who it is, and nothing it sends
//!   can name another tenant.

use gpuslice_arbiter::Spec;
use gpuslice_arbiter::server::{Handle, Options};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the machine-wide socket in the compute directory.
pub const SOCKET: &str = "arbiter.sock";

impl std::fmt::Debug for Arbiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arbiter").field("dir", &self.dir).finish()
    }
}

pub struct Arbiter {
    handle: Handle,
    dir: PathBuf,
    /// tenant name → (arbiter id, the spec it was added with, its socket).
    tenants: Mutex<HashMap<String, (u64, Spec, PathBuf)>>,
    /// Held for the agent's life: no other arbiter serves this machine meanwhile.
    _alive: OwnedFd,
}

impl Arbiter {
    /// Serves the machine-wide socket in `dir` and publishes figures to `dir/status`.
    pub fn start(dir: &Path) -> Result<Arbiter, String> {
        let at = |e: std::io::Error| format!("the compute arbiter at {}: {e}", dir.display());
        gpuslice_compute::prepare_dir(dir).map_err(at)?;
        let socket = dir.join(SOCKET);
        let Some(alive) = gpuslice_arbiter::take_alive_lock(&socket).map_err(at)? else {
            return Err(format!(
                "another compute arbiter serves {} (started by `gpuslice run` before the agent); \
                 it exits a few seconds after its last tenant: end those tenants, then start the agent",
                socket.display()
            ));
        };
        let main = gpuslice_arbiter::listen(&socket, 0o666).map_err(at)?;
        let handle = Handle::spawn(
            Some(main),
            Options {
                status: Some(dir.join(gpuslice_arbiter::status::FILE)),
                linger: None,
            },
        )
        .map_err(at)?;
        Ok(Arbiter {
            handle,
            dir: dir.to_path_buf(),
            tenants: Mutex::new(HashMap::new()),
            _alive: alive,
        })
    }

    /// The directory of the machine-wide socket and the status file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes `tenant` a tenant of the arbiter, listening at `socket`. Idempotent for the same
    /// spec and socket; a changed one replaces the old registration.
    pub fn ensure(&self, tenant: &str, socket: &Path, spec: Spec) -> Result<(), String> {
        let mut t = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, old, path)) = t.get(tenant) {
            if *old == spec && path == socket && socket.exists() {
                return Ok(());
            }
            self.handle.remove_tenant(*id);
            t.remove(tenant);
        }
        let id = self
            .handle
            .add_tenant(socket, spec.clone())
            .map_err(|e| format!("cannot add tenant {tenant} to the compute arbiter: {e}"))?;
        t.insert(tenant.to_string(), (id, spec, socket.to_path_buf()));
        Ok(())
    }

    /// Ends `tenant` at the arbiter (its socket goes with its directory).
    pub fn remove(&self, tenant: &str) {
        let mut t = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, _, _)) = t.remove(tenant) {
            self.handle.remove_tenant(id);
        }
    }
}

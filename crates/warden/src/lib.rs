//! Where a tenant's limits come from. A tenant's processes can write their own ledger and set
//! their own environment, so neither may say what the tenant is allowed. The limits come from
//! an *authority* the tenant cannot change:
//!
//! * **In a container** (node agent): files the agent mounts read-only at [`CONTAINER_DIR`]:
//!   `limits` (the encoded [`Limits`]), with the writable `ledger` and the compute arbiter's
//!   socket `arbiter.sock` mounted over it. A process in the container cannot replace them
//!   without privileges the agent does not grant.
//! * **Under `gpuslice run`**: the supervisor is a *warden*. It serves, on the abstract Unix
//!   socket `gpuslice-warden-<its pid>`, the tenant's limits, a descriptor of its ledger and, on
//!   request, a channel to the compute arbiter. It answers only processes descending from it
//!   (it is their child subreaper, so orphans stay in its tree), and a client believes an
//!   answer only if the kernel says it came from that ancestor (`SO_PEERCRED`).
//!
//! The interposer collects every authority that applies: the container's, then every warden
//! among its ancestors, outermost first. A tenant's process is charged in each of their ledgers,
//! so a nested `gpuslice run` (or a fake warden a tenant starts) can only narrow the limits,
//! never widen them. No environment variable is read.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod client;
pub mod server;
mod wire;

pub use gpuslice_ledger::Limits;

/// Where the node agent mounts a container's tenant files.
pub const CONTAINER_DIR: &str = "/var/run/gpuslice";
/// The encoded limits, read-only in the container.
pub const LIMITS_FILE: &str = "limits";
/// The tenant's ledger, the one writable file.
pub const LEDGER_FILE: &str = "ledger";
/// The compute arbiter's socket for this tenant.
pub const ARBITER_SOCKET: &str = "arbiter.sock";

/// The abstract socket name of the warden running as process `pid`.
pub fn socket_name(pid: u32) -> String {
    format!("gpuslice-warden-{pid}")
}

/// The parent of process `pid`, from `/proc/<pid>/stat` (0 when it has none or is gone).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: the fields start after the last ')'.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut f = rest.split_ascii_whitespace();
    let _state = f.next()?;
    f.next()?.parse().ok()
}

/// Whether `pid` descends from `ancestor` (a process is not its own descendant).
pub fn is_descendant(pid: u32, ancestor: u32) -> bool {
    let mut p = pid;
    // Bounded: a parent chain is acyclic, but a racing exit could make us read anything.
    for _ in 0..4096 {
        match parent_of(p) {
            Some(pp) if pp == ancestor => return true,
            Some(pp) if pp > 1 && pp != p => p = pp,
            _ => return false,
        }
    }
    false
}

/// The calling process's ancestors, nearest first, up to (not including) pid 1.
pub fn ancestors() -> Vec<u32> {
    let mut out = Vec::new();
    // SAFETY: getppid has no preconditions.
    let mut p = unsafe { libc::getppid() } as u32;
    while p > 1 && out.len() < 4096 {
        out.push(p);
        match parent_of(p) {
            Some(pp) if pp != p => p = pp,
            _ => break,
        }
    }
    out
}

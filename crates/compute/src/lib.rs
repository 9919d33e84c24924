//! GPU time between tenants: the vocabulary shared by the compute arbiter (`gpuslice-arbiter`)
//! and the interposer's gate. The arbiter alone decides who holds each GPU; a tenant process
//! reaches it only through a private channel and learns its turn from a page only the arbiter
//! can write. See ARCHITECTURE.md, "How GPU time is shared".
//!
//! - [`wire`]: the messages on a channel (SOCK_SEQPACKET, fixed little-endian layouts).
//! - [`page`]: the sealed grant page the arbiter writes and each process maps read-only.
//! - [`policy`]: the pure turn scheduler (virtual time per tenant, fixed-mode credit,
//!   priority), which the arbiter runs and tests exercise directly.
//!
//! Libc and std only: the interposer links this crate.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod page;
pub mod policy;
pub mod wire;

use std::io;
use std::path::{Path, PathBuf};

/// Where the machine's arbiter listens for `gpuslice run` supervisors (`arbiter.sock`) and
/// publishes its figures (`status`), when the environment names no other place.
pub const DEFAULT_DIR: &str = "/run/gpuslice/compute";

/// The arbiter's directory as configured: `GPUSLICE_COMPUTE_DIR`, else [`DEFAULT_DIR`].
pub fn configured_dir() -> PathBuf {
    match std::env::var_os("GPUSLICE_COMPUTE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_DIR),
    }
}

/// Makes `dir` usable by supervisors of every user (sticky, world-writable), as every tenant on
/// the machine must reach the same arbiter; the sticky bit keeps one user from removing
/// another's files.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777));
    Ok(())
}

//! The warden's messages: SOCK_SEQPACKET, so each send is one whole message. A request is an
//! 8-byte tag; a reply is an 8-byte status tag and a payload, with descriptors as SCM_RIGHTS.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

pub const REQ_LIMITS: &[u8; 8] = b"GSWLIM01";
pub const REQ_ARBITER: &[u8; 8] = b"GSWARB01";
pub const REP_OK: &[u8; 8] = b"GSWOK001";
pub const REP_ERR: &[u8; 8] = b"GSWERR01";
/// Larger than any reply: limits are under 400 bytes.
pub const MAX_MSG: usize = 4096;

pub use gpuslice_shm::sock::{abstract_addr, connect, path_addr, peer_pid, send, seqpacket};

/// Receives one message and the descriptors that came with it.
pub fn recv(fd: RawFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    gpuslice_shm::sock::recv(fd, MAX_MSG)
}

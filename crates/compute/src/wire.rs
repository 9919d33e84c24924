//! The arbiter's wire protocol: SOCK_SEQPACKET Unix sockets, so each send is one whole
//! message; fixed little-endian layouts, a 4-byte tag first; descriptors travel as SCM_RIGHTS.
//!
//! Supervisor → arbiter, on a connection kept open for the tenant's life:
//!   `REGISTER {name[32], quota, mode, priority}` → `REGISTERED {tenant_id u64, token [16]}`
//!   or `REFUSED {code u32, device mode u8, asked mode u8, text}`.
//! Tenant process → arbiter, one connection per process and GPU (a *channel*):
//!   `ATTACH {token}` → `ATTACHED` (skipped on a tenant's own listening socket), then
//!   `OPEN {gpu uuid[16]}` → `OPENED` with the channel's grant page (read-only memfd), then
//!   one-way `WANT`, `IDLE` and `RELEASE {epoch u32}`.
//! Anything malformed closes that connection only.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

pub const REGISTER: u32 = 0x4753_0001;
pub const ATTACH: u32 = 0x4753_0002;
pub const OPEN: u32 = 0x4753_0003;
/// The channel has work queued (or wants to launch): it wants the GPU, or is busy holding it.
pub const WANT: u32 = 0x4753_0004;
/// The channel's work has completed and it launched nothing for a grace period.
pub const IDLE: u32 = 0x4753_0005;
/// After a revoke: the channel's work has completed; it may still want the GPU.
pub const RELEASE: u32 = 0x4753_0006;
pub const REGISTERED: u32 = 0x4753_0101;
pub const ATTACHED: u32 = 0x4753_0102;
pub const OPENED: u32 = 0x4753_0103;
pub const REFUSED: u32 = 0x4753_01ff;

/// Refusal codes.
pub const REFUSE_MODE: u32 = 1;
pub const REFUSE_MALFORMED: u32 = 2;
pub const REFUSE_FULL: u32 = 3;
pub const REFUSE_TOKEN: u32 = 4;

pub const NAME_LEN: usize = 32;
/// Larger than any message.
pub const MAX_MSG: usize = 512;

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Register {
        name: String,
        quota: u8,
        mode: u8,
        priority: u8,
        /// The id the tenant's ledger holds: shown beside its figures so readers can join them
        /// to the ledger; never used to schedule.
        ledger_id: u64,
    },
    Attach {
        token: [u8; 16],
    },
    Open {
        uuid: [u8; 16],
    },
    Want,
    Idle,
    Release {
        epoch: u32,
    },
    Registered {
        tenant_id: u64,
        token: [u8; 16],
    },
    Attached,
    Opened,
    Refused {
        code: u32,
        device_mode: u8,
        asked_mode: u8,
        text: String,
    },
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        let tag = |b: &mut Vec<u8>, t: u32| b.extend_from_slice(&t.to_le_bytes());
        match self {
            Msg::Register {
                name,
                quota,
                mode,
                priority,
                ledger_id,
            } => {
                tag(&mut b, REGISTER);
                let mut n = [0u8; NAME_LEN];
                let k = name.len().min(NAME_LEN);
                n[..k].copy_from_slice(&name.as_bytes()[..k]);
                b.extend_from_slice(&n);
                b.extend_from_slice(&[*quota, *mode, *priority, 0]);
                b.extend_from_slice(&ledger_id.to_le_bytes());
            }
            Msg::Attach { token } => {
                tag(&mut b, ATTACH);
                b.extend_from_slice(token);
            }
            Msg::Open { uuid } => {
                tag(&mut b, OPEN);
                b.extend_from_slice(uuid);
            }
            Msg::Want => tag(&mut b, WANT),
            Msg::Idle => tag(&mut b, IDLE),
            Msg::Release { epoch } => {
                tag(&mut b, RELEASE);
                b.extend_from_slice(&epoch.to_le_bytes());
            }
            Msg::Registered { tenant_id, token } => {
                tag(&mut b, REGISTERED);
                b.extend_from_slice(&tenant_id.to_le_bytes());
                b.extend_from_slice(token);
            }
            Msg::Attached => tag(&mut b, ATTACHED),
            Msg::Opened => tag(&mut b, OPENED),
            Msg::Refused {
                code,
                device_mode,
                asked_mode,
                text,
            } => {
                tag(&mut b, REFUSED);
                b.extend_from_slice(&code.to_le_bytes());
                b.extend_from_slice(&[*device_mode, *asked_mode, 0, 0]);
                let t = text.as_bytes();
                b.extend_from_slice(&t[..t.len().min(MAX_MSG - b.len())]);
            }
        }
        b
    }

    /// Decodes one message; `None` for anything malformed (unknown tag, wrong length).
    pub fn decode(b: &[u8]) -> Option<Msg> {
        let tag = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
        let body = &b[4..];
        let fixed = |n: usize| (body.len() == n).then_some(body);
        Some(match tag {
            REGISTER => {
                let p = fixed(NAME_LEN + 12)?;
                let end = p[..NAME_LEN]
                    .iter()
                    .position(|&c| c == 0)
                    .unwrap_or(NAME_LEN);
                let name = std::str::from_utf8(&p[..end]).ok()?.to_string();
                Msg::Register {
                    name,
                    quota: p[NAME_LEN],
                    mode: p[NAME_LEN + 1],
                    priority: p[NAME_LEN + 2],
                    ledger_id: u64::from_le_bytes(p[NAME_LEN + 4..].try_into().ok()?),
                }
            }
            ATTACH => Msg::Attach {
                token: fixed(16)?.try_into().ok()?,
            },
            OPEN => Msg::Open {
                uuid: fixed(16)?.try_into().ok()?,
            },
            WANT => {
                fixed(0)?;
                Msg::Want
            }
            IDLE => {
                fixed(0)?;
                Msg::Idle
            }
            RELEASE => Msg::Release {
                epoch: u32::from_le_bytes(fixed(4)?.try_into().ok()?),
            },
            REGISTERED => {
                let p = fixed(24)?;
                Msg::Registered {
                    tenant_id: u64::from_le_bytes(p[..8].try_into().ok()?),
                    token: p[8..].try_into().ok()?,
                }
            }
            ATTACHED => {
                fixed(0)?;
                Msg::Attached
            }
            OPENED => {
                fixed(0)?;
                Msg::Opened
            }
            REFUSED => {
                if body.len() < 8 {
                    return None;
                }
                Msg::Refused {
                    code: u32::from_le_bytes(body[..4].try_into().ok()?),
                    device_mode: body[4],
                    asked_mode: body[5],
                    text: String::from_utf8_lossy(&body[8..]).into_owned(),
                }
            }
            _ => return None,
        })
    }
}

/// Sends `m` with `fds` attached.
pub fn send_msg(fd: RawFd, m: &Msg, fds: &[RawFd]) -> io::Result<()> {
    send(fd, &[&m.encode()], fds)
}

/// Receives one message; an error for a closed connection or a malformed message.
pub fn recv_msg(fd: RawFd) -> io::Result<(Msg, Vec<OwnedFd>)> {
    let (b, fds) = recv(fd)?;
    if b.is_empty() && fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the arbiter closed the connection",
        ));
    }
    let m = Msg::decode(&b)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed arbiter message"))?;
    Ok((m, fds))
}

/// A request and its reply on a blocking connection.
pub fn call(fd: RawFd, m: &Msg) -> io::Result<(Msg, Vec<OwnedFd>)> {
    send_msg(fd, m, &[])?;
    recv_msg(fd)
}

/// The socket primitives the channels are built on.
pub use gpuslice_shm::sock::{connect, connect_path, path_addr, peer_pid, send, seqpacket};

/// Receives one message and the descriptors that came with it.
pub fn recv(fd: RawFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    gpuslice_shm::sock::recv(fd, MAX_MSG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_garbage_is_refused() {
        let all = [
            Msg::Register {
                name: "train-a".into(),
                quota: 30,
                mode: 1,
                priority: 2,
                ledger_id: 9,
            },
            Msg::Attach { token: [7; 16] },
            Msg::Open { uuid: [9; 16] },
            Msg::Want,
            Msg::Idle,
            Msg::Release { epoch: 77 },
            Msg::Registered {
                tenant_id: 5,
                token: [1; 16],
            },
            Msg::Attached,
            Msg::Opened,
            Msg::Refused {
                code: REFUSE_MODE,
                device_mode: 1,
                asked_mode: 2,
                text: "no".into(),
            },
        ];
        for m in all {
            assert_eq!(Msg::decode(&m.encode()), Some(m.clone()), "{m:?}");
            let mut longer = m.encode();
            longer.push(0);
            if !matches!(m, Msg::Refused { .. }) {
                assert_eq!(Msg::decode(&longer), None, "a longer {m:?} is malformed");
            }
        }
        for junk in [&b""[..], b"\x01", b"\xff\xff\xff\xff", &[0u8; 40]] {
            assert_eq!(Msg::decode(junk), None);
        }
    }
}

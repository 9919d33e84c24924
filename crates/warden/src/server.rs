//! The warden: `gpuslice run`'s side. It answers the processes of its own tree with the tenant's
//! limits, its ledger and channels to the compute arbiter, and notices at once when one of them
//! exits (its connection closes), so dead processes' memory comes back without polling.

use crate::wire;
use gpuslice_ledger::Limits;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

/// Opens a new channel to the compute arbiter for one tenant process.
pub type ArbiterFn = Box<dyn Fn() -> io::Result<OwnedFd> + Send + Sync>;

/// What the warden hands out.
pub struct Grant {
    pub limits: Limits,
    /// The tenant's ledger; each process gets its own descriptor of it.
    pub ledger: PathBuf,
    /// `None` when the tenant has no compute arbiter: requests are refused (the interposer
    /// then refuses kernel launches rather than running ungoverned).
    pub arbiter: Option<ArbiterFn>,
}

/// How often `tick` runs even when no connection closes.
pub const TICK: Duration = Duration::from_millis(200);

/// Binds this process's warden socket and serves it on a background thread for the rest of
/// the process's life. `tick` runs whenever a tenant process disconnects, and every [`TICK`].
pub fn start(grant: Grant, tick: impl Fn() + Send + 'static) -> io::Result<()> {
    let me = std::process::id();
    let listener = wire::seqpacket()?;
    let addr = wire::abstract_addr(&crate::socket_name(me));
    // SAFETY: `addr` is a valid sockaddr_un of the length given; the fd is ours.
    let r = unsafe {
        libc::bind(
            listener.as_raw_fd(),
            (&addr.0 as *const libc::sockaddr_un).cast(),
            addr.1,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain syscall on our descriptor.
    if unsafe { libc::listen(listener.as_raw_fd(), 128) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let limits = grant.limits.encode();
    // Opened once: each process gets a duplicate, so a burst of starting processes costs no
    // path lookups. Closing a duplicate would drop this process's record locks on the file,
    // so `tick` (which takes and drops them to reclaim dead slots) runs on this same thread.
    let ledger = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&grant.ledger)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the tenant ledger {}: {e}", grant.ledger.display()),
            )
        })?;
    std::thread::Builder::new()
        .name("gpuslice-warden".into())
        .spawn(move || serve(me, listener, grant, ledger, limits, tick))?;
    Ok(())
}

fn serve(
    me: u32,
    listener: OwnedFd,
    grant: Grant,
    ledger: std::fs::File,
    limits: Vec<u8>,
    tick: impl Fn(),
) {
    // Each connection, and for a process outside our tree the refusal it gets at its first
    // request (answered then, not at accept: closing with its request unread would turn the
    // refusal into a bare reset).
    let mut conns: Vec<(OwnedFd, Option<String>)> = Vec::new();
    let mut last_tick = std::time::Instant::now();
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(&listener)
            .chain(conns.iter().map(|(c, _)| c))
            .map(|f| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the length given.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                TICK.as_millis() as libc::c_int,
            )
        };
        let mut closed = false;
        if n > 0 {
            // Connections first, from the back, so removal keeps the other indices valid.
            for i in (1..fds.len()).rev() {
                let re = fds[i].revents;
                if re == 0 {
                    continue;
                }
                let (c, refusal) = &conns[i - 1];
                let keep = re & libc::POLLIN != 0
                    && match refusal {
                        None => answer(c, &grant, &ledger, &limits),
                        Some(msg) => {
                            let _ = wire::recv(c.as_raw_fd());
                            let _ =
                                wire::send(c.as_raw_fd(), &[wire::REP_ERR, msg.as_bytes()], &[]);
                            false
                        }
                    };
                if !keep {
                    conns.swap_remove(i - 1);
                    closed = true;
                }
            }
            if fds[0].revents & libc::POLLIN != 0
                && let Some(c) = accept(&listener, me)
            {
                conns.push(c);
            }
        }
        if closed || last_tick.elapsed() >= TICK {
            tick();
            last_tick = std::time::Instant::now();
        }
    }
}

/// Accepts one connection; one from outside our own tree is marked to be refused.
fn accept(listener: &OwnedFd, me: u32) -> Option<(OwnedFd, Option<String>)> {
    // SAFETY: null address pointers are allowed; the result is checked.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let c = unsafe { OwnedFd::from_raw_fd(fd) };
    let pid = wire::peer_pid(fd).ok()?;
    if !crate::is_descendant(pid, me) {
        let msg =
            format!("process {pid} is not a process of this gpuslice run tenant (supervisor {me})");
        return Some((c, Some(msg)));
    }
    Some((c, None))
}

/// Answers one request; `false` when the connection is over (closed, or a malformed request,
/// which ends only that process's connection).
fn answer(c: &OwnedFd, grant: &Grant, ledger: &std::fs::File, limits: &[u8]) -> bool {
    let fd = c.as_raw_fd();
    let Ok((req, _fds)) = wire::recv(fd) else {
        return false;
    };
    let reply = match req.as_slice() {
        [] => return false,
        r if r == wire::REQ_LIMITS => ledger
            .try_clone()
            .map(|l| (limits.to_vec(), OwnedFd::from(l)))
            .map_err(|e| format!("cannot share the tenant ledger: {e}")),
        r if r == wire::REQ_ARBITER => match &grant.arbiter {
            Some(f) => f()
                .map(|ch| (Vec::new(), ch))
                .map_err(|e| format!("cannot reach the compute arbiter: {e}")),
            None => Err("this tenant has no compute arbiter".to_string()),
        },
        _ => {
            let _ = wire::send(fd, &[wire::REP_ERR, b"unknown request"], &[]);
            return false;
        }
    };
    let sent = match reply {
        Ok((payload, f)) => wire::send(fd, &[wire::REP_OK, &payload], &[f.as_raw_fd()]),
        Err(msg) => wire::send(fd, &[wire::REP_ERR, msg.as_bytes()], &[]),
    };
    sent.is_ok()
}

//! The arbiter's event loop: one thread, `ppoll` over its listening sockets and every
//! connection, woken early by the deadlines of each GPU's scheduler. All scheduling state is
//! here; what a tenant process sends can only move its own tenant's demand, and is checked
//! against the connection it came on (a channel belongs to the tenant that made it).

use crate::{Spec, eventfd, random_token};
use gpuslice_compute::page::{self, PageWriter};
use gpuslice_compute::policy::{self, Sched, View};
use gpuslice_compute::wire::{self, Msg};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Processes (channels) one tenant may have at once, over all GPUs.
pub const MAX_CHANNELS_PER_TENANT: usize = 1024;
/// Tenants one arbiter serves at once.
pub const MAX_TENANTS: usize = 4096;
/// Connections not yet bound to a tenant (they only ever send one message).
pub const MAX_PENDING: usize = 256;
/// How often the status file is rewritten.
const STATUS_EVERY_NS: u64 = 200_000_000;

pub fn now_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

enum Kind {
    /// The main socket: REGISTER and ATTACH.
    Main,
    /// A tenant's own socket (node agent): every connection is a channel of `tenant`.
    TenantListener {
        tenant: u64,
    },
    /// The wake-up eventfd of the command queue.
    Wake,
    /// Accepted on the main socket; its first message decides what it is.
    Pending,
    Registration {
        tenant: u64,
    },
    Channel(Channel),
}

struct Channel {
    tenant: u64,
    gpu: Option<[u8; 16]>,
    page: Option<PageWriter>,
    busy: bool,
    released_epoch: u32,
    /// Went from idle to wanting: if its tenant still holds the GPU, the grant is renewed
    /// (new epoch) so the process knows this grant postdates its WANT.
    regrant: bool,
}

struct Conn {
    /// Owned so that dropping the connection closes it.
    _fd: OwnedFd,
    kind: Kind,
}

struct Tenant {
    spec: Spec,
    token: [u8; 16],
    /// The supervisor's pid (0 for node-agent tenants), to recognise nested registrations.
    reg_pid: u32,
    /// Registrations mapped onto this tenant (nested `gpuslice run`), the own one included.
    registrations: usize,
    channels: usize,
    /// Node agent tenants live until removed, not until a registration closes.
    hosted: bool,
}

struct Gpu {
    sched: Sched,
    /// Tenants whose drain outlasted the grace, and when it ended: their first RELEASE after
    /// it charges the time since.
    late: HashMap<u64, u64>,
    /// Per tenant: the view last published and its epoch (bumped at every change).
    published: HashMap<u64, (View, u32)>,
}

/// Commands from the host (node agent) to the loop.
enum Cmd {
    AddTenant {
        listener: OwnedFd,
        spec: Spec,
        reply: mpsc::Sender<u64>,
    },
    RemoveTenant(u64),
    Stop,
}

pub struct Options {
    /// Where the status file goes (rewritten every 200 ms, 0644).
    pub status: Option<PathBuf>,
    /// Exit once there has been no tenant and no connection for this long.
    pub linger: Option<Duration>,
}

struct Server {
    conns: HashMap<RawFd, Conn>,
    tenants: HashMap<u64, Tenant>,
    gpus: HashMap<[u8; 16], Gpu>,
    next_id: u64,
    opts: Options,
    cmds: Option<mpsc::Receiver<Cmd>>,
    last_status: u64,
    stop: bool,
}

/// Serves `socket` (created 0666: any local user may register a tenant; what a tenant can do
/// is bounded by design) until idle for `opts.linger`.
pub fn serve(listener: OwnedFd, opts: Options) -> io::Result<()> {
    let mut s = Server::new(opts, None);
    s.add(listener, Kind::Main);
    s.run()
}

/// An arbiter running on its own thread, for a host that adds and removes tenants itself.
pub struct Handle {
    tx: Mutex<mpsc::Sender<Cmd>>,
    wake: Arc<OwnedFd>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Handle {
    /// Starts an arbiter thread; `main` is an optional socket for `gpuslice run` supervisors.
    pub fn spawn(main: Option<OwnedFd>, opts: Options) -> io::Result<Handle> {
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(eventfd()?);
        let wake2 = wake.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("gpuslice-arbiter".into())
            .spawn(move || {
                let mut s = Server::new(opts, Some(rx));
                s.add(wake2, Kind::Wake);
                if let Some(m) = main {
                    s.add(m, Kind::Main);
                }
                let _ = s.run();
            })?;
        Ok(Handle {
            tx: Mutex::new(tx),
            wake,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, c: Cmd) {
        let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(c);
        let one = 1u64;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Adds a tenant whose processes connect to `socket` (created 0666 inside the tenant's own
    /// directory); returns its id.
    pub fn add_tenant(&self, socket: &Path, spec: Spec) -> io::Result<u64> {
        spec.validate().map_err(io::Error::other)?;
        let listener = crate::listen(socket, 0o666)?;
        let (reply, rx) = mpsc::channel();
        self.send(Cmd::AddTenant {
            listener,
            spec,
            reply,
        });
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::other("the arbiter did not answer"))
    }

    pub fn remove_tenant(&self, id: u64) {
        self.send(Cmd::RemoveTenant(id));
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.send(Cmd::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn refuse(fd: RawFd, code: u32, text: String) {
    let _ = wire::send_msg(
        fd,
        &Msg::Refused {
            code,
            device_mode: 0,
            asked_mode: 0,
            text,
        },
        &[],
    );
}

/// The parent of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; the fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

impl Server {
    fn new(opts: Options, cmds: Option<mpsc::Receiver<Cmd>>) -> Server {
        Server {
            conns: HashMap::new(),
            tenants: HashMap::new(),
            gpus: HashMap::new(),
            next_id: 1,
            opts,
            cmds,
            last_status: 0,
            stop: false,
        }
    }

    fn add(&mut self, fd: OwnedFd, kind: Kind) {
        self.conns.insert(fd.as_raw_fd(), Conn { _fd: fd, kind });
    }

    fn run(&mut self) -> io::Result<()> {
        let mut idle_since = now_ns();
        while !self.stop {
            let now = now_ns();
            let deadline = self
                .gpus
                .values()
                .filter_map(|g| g.sched.deadline())
                .min()
                .unwrap_or(u64::MAX)
                .min(self.last_status + STATUS_EVERY_NS);
            let wait = deadline.saturating_sub(now).min(1_000_000_000);
            let mut fds: Vec<libc::pollfd> = self
                .conns
                .keys()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ts = libc::timespec {
                tv_sec: (wait / 1_000_000_000) as libc::time_t,
                tv_nsec: (wait % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: `fds` is a valid array of its length; `ts` outlives the call.
            let n = unsafe {
                libc::ppoll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    &ts,
                    std::ptr::null(),
                )
            };
            if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return Err(io::Error::last_os_error());
            }
            let now = now_ns();
            for p in &fds {
                if p.revents != 0 {
                    self.ready(p.fd, p.revents, now);
                }
            }
            self.settle(now_ns());
            if now >= self.last_status + STATUS_EVERY_NS {
                self.last_status = now;
                self.write_status();
            }
            let busy = !self.tenants.is_empty()
                || self
                    .conns
                    .values()
                    .any(|c| matches!(c.kind, Kind::Pending | Kind::Channel(_)));
            if busy {
                idle_since = now;
            } else if let Some(l) = self.opts.linger
                && now.saturating_sub(idle_since) > l.as_nanos() as u64
            {
                return Ok(());
            }
        }
        Ok(())
    }

    fn ready(&mut self, fd: RawFd, revents: libc::c_short, now: u64) {
        let Some(c) = self.conns.get(&fd) else { return };
        match c.kind {
            Kind::Main | Kind::TenantListener { .. } => {
                let tenant = match c.kind {
                    Kind::TenantListener { tenant } => Some(tenant),
                    _ => None,
                };
                self.accept(fd, tenant);
            }
            Kind::Wake => {
                let mut v = 0u64;
                // SAFETY: reading 8 bytes into a valid u64 from our eventfd.
                unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
                self.commands(now);
            }
            _ => {
                if revents & libc::POLLIN != 0 {
                    // Drain what is queued, but a bounded amount per round: a flooding channel
                    // cannot starve the others.
                    for _ in 0..64 {
                        match recv_nowait(fd) {
                            Ok(Some(b)) => {
                                if !self.message(fd, &b, now) {
                                    self.close(fd, now);
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(_) => {
                                self.close(fd, now);
                                return;
                            }
                        }
                    }
                } else if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                    self.close(fd, now);
                }
            }
        }
    }

    fn accept(&mut self, lfd: RawFd, tenant: Option<u64>) {
        // SAFETY: accept4 with null address pointers is allowed.
        let fd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd < 0 {
            return;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        match tenant {
            Some(t) => {
                let Some(ten) = self.tenants.get_mut(&t) else {
                    return;
                };
                if ten.channels >= MAX_CHANNELS_PER_TENANT {
                    refuse(
                        fd.as_raw_fd(),
                        wire::REFUSE_FULL,
                        format!(
                            "this tenant already has {MAX_CHANNELS_PER_TENANT} processes on the arbiter"
                        ),
                    );
                    return;
                }
                ten.channels += 1;
                self.add(fd, Kind::Channel(Channel::new(t)));
            }
            None => {
                let pending = self
                    .conns
                    .values()
                    .filter(|c| matches!(c.kind, Kind::Pending))
                    .count();
                if pending >= MAX_PENDING {
                    return;
                }
                self.add(fd, Kind::Pending);
            }
        }
    }

    fn commands(&mut self, now: u64) {
        let Some(rx) = &self.cmds else { return };
        let cmds: Vec<Cmd> = rx.try_iter().collect();
        for c in cmds {
            match c {
                Cmd::AddTenant {
                    listener,
                    spec,
                    reply,
                } => {
                    let id = self.new_tenant(spec, 0, true);
                    self.add(listener, Kind::TenantListener { tenant: id });
                    let _ = reply.send(id);
                }
                Cmd::RemoveTenant(id) => self.end_tenant(id, now),
                Cmd::Stop => self.stop = true,
            }
        }
    }

    fn new_tenant(&mut self, spec: Spec, reg_pid: u32, hosted: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.tenants.insert(
            id,
            Tenant {
                spec,
                token: random_token(),
                reg_pid,
                registrations: usize::from(!hosted),
                channels: 0,
                hosted,
            },
        );
        id
    }

    /// Handles one message on `fd`; `false` closes the connection.
    fn message(&mut self, fd: RawFd, b: &[u8], now: u64) -> bool {
        let Some(m) = Msg::decode(b) else {
            return false;
        };
        let kind = &self.conns.get(&fd).expect("live connection").kind;
        match (kind, m) {
            (
                Kind::Pending,
                Msg::Register {
                    name,
                    quota,
                    mode,
                    priority,
                    ledger_id,
                },
            ) => self.register(
                fd,
                Spec {
                    name,
                    quota,
                    mode,
                    priority,
                    ledger_id,
                },
            ),
            (Kind::Pending, Msg::Attach { token }) => {
                let found = self
                    .tenants
                    .iter()
                    .find(|(_, t)| ct_eq(&t.token, &token))
                    .map(|(&id, t)| (id, t.channels));
                match found {
                    None => {
                        refuse(fd, wire::REFUSE_TOKEN, "unknown tenant token".into());
                        false
                    }
                    Some((_, n)) if n >= MAX_CHANNELS_PER_TENANT => {
                        refuse(
                            fd,
                            wire::REFUSE_FULL,
                            format!(
                                "this tenant already has {MAX_CHANNELS_PER_TENANT} processes on the arbiter"
                            ),
                        );
                        false
                    }
                    Some((id, _)) => {
                        self.tenants.get_mut(&id).expect("found").channels += 1;
                        self.conns.get_mut(&fd).expect("live").kind =
                            Kind::Channel(Channel::new(id));
                        wire::send_msg(fd, &Msg::Attached, &[]).is_ok()
                    }
                }
            }
            (Kind::Channel(ch), Msg::Open { uuid }) if ch.gpu.is_none() => self.open(fd, uuid, now),
            (Kind::Channel(ch), Msg::Want) if ch.gpu.is_some() => {
                let c = self.channel(fd);
                if !c.busy {
                    c.busy = true;
                    c.regrant = true;
                }
                true
            }
            (Kind::Channel(ch), Msg::Idle) if ch.gpu.is_some() => {
                self.channel(fd).busy = false;
                true
            }
            (Kind::Channel(ch), Msg::Release { epoch }) if ch.gpu.is_some() => {
                let (tenant, uuid) = (ch.tenant, ch.gpu);
                self.channel(fd).released_epoch = epoch;
                if let Some(g) = uuid.and_then(|u| self.gpus.get_mut(&u))
                    && let Some(at) = g.late.remove(&tenant)
                {
                    g.sched.charge_late(tenant, now_ns().saturating_sub(at));
                }
                true
            }
            // Anything else is a protocol violation: only this connection ends.
            _ => false,
        }
    }

    fn channel(&mut self, fd: RawFd) -> &mut Channel {
        match &mut self.conns.get_mut(&fd).expect("live").kind {
            Kind::Channel(c) => c,
            _ => unreachable!("checked by the caller"),
        }
    }

    fn register(&mut self, fd: RawFd, spec: Spec) -> bool {
        if let Err(e) = spec.validate() {
            refuse(fd, wire::REFUSE_MALFORMED, e);
            return false;
        }
        let pid = wire::peer_pid(fd).unwrap_or(0);
        // A supervisor inside a registered tenant's process tree joins that tenant: nesting
        // never grants a share of its own.
        let mut p = pid;
        for _ in 0..64 {
            let Some(pp) = parent_of(p) else { break };
            if pp <= 1 {
                break;
            }
            if let Some((&id, _)) = self
                .tenants
                .iter()
                .find(|(_, t)| !t.hosted && t.reg_pid == pp)
            {
                let t = self.tenants.get_mut(&id).expect("found");
                t.registrations += 1;
                let token = t.token;
                self.conns.get_mut(&fd).expect("live").kind = Kind::Registration { tenant: id };
                return wire::send_msg(
                    fd,
                    &Msg::Registered {
                        tenant_id: id,
                        token,
                    },
                    &[],
                )
                .is_ok();
            }
            p = pp;
        }
        if let Some(other) = self.tenants.values().find(|t| t.spec.mode != spec.mode) {
            let _ = wire::send_msg(
                fd,
                &Msg::Refused {
                    code: wire::REFUSE_MODE,
                    device_mode: other.spec.mode,
                    asked_mode: spec.mode,
                    text: format!(
                        "the GPUs are shared in {} mode by their running tenants; --share-mode {} is refused (one mode per GPU)",
                        policy::mode_name(other.spec.mode),
                        policy::mode_name(spec.mode)
                    ),
                },
                &[],
            );
            return false;
        }
        if self.tenants.len() >= MAX_TENANTS {
            refuse(
                fd,
                wire::REFUSE_FULL,
                format!("the arbiter already serves {MAX_TENANTS} tenants"),
            );
            return false;
        }
        let id = self.new_tenant(spec, pid, false);
        let token = self.tenants[&id].token;
        self.conns.get_mut(&fd).expect("live").kind = Kind::Registration { tenant: id };
        wire::send_msg(
            fd,
            &Msg::Registered {
                tenant_id: id,
                token,
            },
            &[],
        )
        .is_ok()
    }

    fn open(&mut self, fd: RawFd, uuid: [u8; 16], now: u64) -> bool {
        let tenant = self.channel(fd).tenant;
        let Some(t) = self.tenants.get(&tenant) else {
            return false;
        };
        let spec = t.spec.clone();
        let gpu = self.gpus.entry(uuid).or_insert_with(|| Gpu {
            sched: Sched::default(),
            late: HashMap::new(),
            published: HashMap::new(),
        });
        if let Some(m) = gpu.sched.mode()
            && m != spec.mode
        {
            let _ = wire::send_msg(
                fd,
                &Msg::Refused {
                    code: wire::REFUSE_MODE,
                    device_mode: m,
                    asked_mode: spec.mode,
                    text: format!(
                        "this GPU is shared in {} mode by its first tenant; {} is refused (one mode per GPU)",
                        policy::mode_name(m),
                        policy::mode_name(spec.mode)
                    ),
                },
                &[],
            );
            return false;
        }
        let page = match PageWriter::new() {
            Ok(p) => p,
            Err(e) => {
                refuse(
                    fd,
                    wire::REFUSE_FULL,
                    format!("cannot make a grant page: {e}"),
                );
                return false;
            }
        };
        gpu.sched
            .add(tenant, spec.quota, spec.mode, spec.priority, now);
        let (view, epoch) = gpu
            .published
            .get(&tenant)
            .copied()
            .unwrap_or((View::Wait, 1));
        page.set(word(view, epoch));
        let sent = wire::send_msg(fd, &Msg::Opened, &[page.fd().as_raw_fd()]).is_ok();
        let ch = self.channel(fd);
        ch.gpu = Some(uuid);
        ch.page = Some(page);
        sent
    }

    fn close(&mut self, fd: RawFd, now: u64) {
        let Some(c) = self.conns.remove(&fd) else {
            return;
        };
        match c.kind {
            Kind::Registration { tenant } => {
                let end = match self.tenants.get_mut(&tenant) {
                    Some(t) => {
                        t.registrations = t.registrations.saturating_sub(1);
                        t.registrations == 0 && !t.hosted
                    }
                    None => false,
                };
                if end {
                    self.end_tenant(tenant, now);
                }
            }
            Kind::Channel(ch) => {
                if let Some(t) = self.tenants.get_mut(&ch.tenant) {
                    t.channels = t.channels.saturating_sub(1);
                }
                if let Some(u) = ch.gpu {
                    let still = self.conns.values().any(|c| {
                        matches!(&c.kind, Kind::Channel(o) if o.tenant == ch.tenant && o.gpu == Some(u))
                    });
                    if !still && let Some(g) = self.gpus.get_mut(&u) {
                        g.sched.remove(ch.tenant, now);
                        g.published.remove(&ch.tenant);
                        g.late.remove(&ch.tenant);
                        if g.sched.is_empty() {
                            self.gpus.remove(&u);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Ends a tenant: its channels are closed (its processes then refuse launches), its
    /// listener goes, and it leaves every GPU.
    fn end_tenant(&mut self, id: u64, now: u64) {
        self.tenants.remove(&id);
        let fds: Vec<RawFd> = self
            .conns
            .iter()
            .filter(|(_, c)| match &c.kind {
                Kind::Channel(ch) => ch.tenant == id,
                Kind::TenantListener { tenant } | Kind::Registration { tenant } => *tenant == id,
                _ => false,
            })
            .map(|(&fd, _)| fd)
            .collect();
        for fd in fds {
            self.close(fd, now);
        }
        for g in self.gpus.values_mut() {
            g.sched.remove(id, now);
            g.published.remove(&id);
            g.late.remove(&id);
        }
        self.gpus.retain(|_, g| !g.sched.is_empty());
    }

    /// Brings every GPU's scheduler up to date with its channels and publishes the result.
    fn settle(&mut self, now: u64) {
        for (uuid, g) in self.gpus.iter_mut() {
            for _ in 0..4 {
                // Demand and releases, per tenant, from its channels on this GPU.
                let mut want: HashMap<u64, bool> = HashMap::new();
                let mut released: HashMap<u64, bool> = HashMap::new();
                for c in self.conns.values() {
                    if let Kind::Channel(ch) = &c.kind
                        && ch.gpu == Some(*uuid)
                    {
                        *want.entry(ch.tenant).or_default() |= ch.busy;
                        let epoch = g.published.get(&ch.tenant).map_or(0, |p| p.1);
                        let done = !ch.busy || ch.released_epoch == epoch;
                        *released.entry(ch.tenant).or_insert(true) &= done;
                    }
                }
                for (&t, &w) in &want {
                    g.sched.set_want(t, w, now);
                }
                for (&t, &r) in &released {
                    if r && g.published.get(&t).is_some_and(|p| p.0 == View::Revoked) {
                        g.sched.released(t, now);
                    }
                }
                g.sched.step(now);
                g.late.extend(g.sched.take_overdue());
                // Publish what changed.
                let mut changed = false;
                let mut renew: Vec<u64> = Vec::new();
                for c in self.conns.values_mut() {
                    if let Kind::Channel(ch) = &mut c.kind
                        && ch.gpu == Some(*uuid)
                        && std::mem::take(&mut ch.regrant)
                    {
                        renew.push(ch.tenant);
                    }
                }
                for t in renew {
                    if let Some(e) = g.published.get_mut(&t)
                        && matches!(e.0, View::Granted { .. })
                    {
                        e.1 = e.1.wrapping_add(1);
                    }
                }
                let ids: Vec<u64> = g.sched.tenants.iter().map(|t| t.id).collect();
                for t in ids {
                    let v = g.sched.view(t);
                    let e = g.published.entry(t).or_insert((View::Wait, 1));
                    if e.0 != v {
                        *e = (v, e.1.wrapping_add(1));
                        changed = true;
                    }
                }
                for c in self.conns.values() {
                    if let Kind::Channel(ch) = &c.kind
                        && ch.gpu == Some(*uuid)
                        && let Some(p) = &ch.page
                        && let Some(&(v, e)) = g.published.get(&ch.tenant)
                    {
                        p.set(word(v, e));
                    }
                }
                if !changed {
                    break;
                }
            }
        }
    }

    fn write_status(&self) {
        let Some(path) = &self.opts.status else {
            return;
        };
        let mut rows = Vec::new();
        for (uuid, g) in &self.gpus {
            for t in &g.sched.tenants {
                let Some(ten) = self.tenants.get(&t.id) else {
                    continue;
                };
                let procs = self
                    .conns
                    .values()
                    .filter(|c| matches!(&c.kind, Kind::Channel(ch) if ch.tenant == t.id && ch.gpu == Some(*uuid)))
                    .count();
                rows.push(crate::status::Row {
                    gpu: *uuid,
                    tenant_id: t.id,
                    ledger_id: ten.spec.ledger_id,
                    name: ten.spec.name.clone(),
                    quota: t.quota,
                    mode: t.mode,
                    priority: t.priority,
                    charged_ns: t.charged_ns,
                    throttled_ns: t.throttled_ns,
                    holder: g.sched.holder() == Some(t.id),
                    processes: procs as u32,
                });
            }
        }
        let _ = crate::status::write(path, &rows);
    }
}

impl Channel {
    fn new(tenant: u64) -> Channel {
        Channel {
            tenant,
            gpu: None,
            page: None,
            busy: false,
            released_epoch: 0,
            regrant: false,
        }
    }
}

fn word(v: View, epoch: u32) -> u64 {
    match v {
        View::Wait => page::pack(page::WAIT, 0, epoch),
        View::Granted { bound } => page::pack(page::GRANTED, bound, epoch),
        View::Revoked => page::pack(page::REVOKED, 0, epoch),
    }
}

fn ct_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One message if one is queued; `Ok(None)` if none; an error for a closed connection.
fn recv_nowait(fd: RawFd) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; wire::MAX_MSG];
    // SAFETY: reading into a buffer of its length; descriptors passed to us are not accepted
    // (no control buffer), so the kernel closes any.
    let r = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    if r == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    let n = r as usize;
    if n > buf.len() {
        // Longer than any message: malformed.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too long",
        ));
    }
    Ok(Some(buf[..n].to_vec()))
}

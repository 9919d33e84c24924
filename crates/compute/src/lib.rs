//! Per-device compute coordination. Every tenant process that launches work on a GPU attaches
//! to that GPU's *region*: one shared-memory file per GPU UUID with one entry per process
//! (quota, mode, priority, GPU time charged, virtual time, demand) and a *holder* word naming the
//! entry that may submit work now. Each process's interposer decides locally; there is no
//! daemon. See ARCHITECTURE.md, "How GPU time is shared".
//!
//! Liveness follows `gpuslice_shm`: an entry is owned while its process holds a kernel record
//! lock, so a SIGKILLed holder is recognised at once and its turn taken over. Waiting uses a
//! futex on the shared word `turn` with a timeout; no process ever waits on a lock.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod page;
pub mod policy;
pub mod wire;

use gpuslice_shm::MappedFile;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::SeqCst};

pub const MAGIC: u64 = u64::from_le_bytes(*b"GPUSLCR1");
pub const VERSION: u32 = 1;
/// Processes that may launch on one GPU at a time.
pub const ENTRIES: usize = 64;
const NAME_LEN: usize = 32;

/// Where `gpuslice run` and the node agent keep the regions when the environment names none.
pub const DEFAULT_DIR: &str = "/run/gpuslice/compute";

/// The regions' directory as configured: `GPUSLICE_COMPUTE_DIR`, else [`DEFAULT_DIR`].
pub fn configured_dir() -> PathBuf {
    match std::env::var_os("GPUSLICE_COMPUTE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_DIR),
    }
}

/// Makes `dir` usable by tenants of every user (sticky, world-writable), as every tenant on a
/// GPU must attach to the same region.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777));
    Ok(())
}

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    /// 0 = not yet chosen; otherwise 1 + mode code. The first tenant's mode wins.
    mode: AtomicU32,
    /// (epoch << 16) | (entry + 1); entry part 0 = nobody holds the device.
    holder: AtomicU64,
    /// When the holder's slice ends (CLOCK_MONOTONIC ns).
    slice_end: AtomicU64,
    /// Futex word: bumped at every hand-over.
    turn: AtomicU32,
    high_water: AtomicU32,
    /// Bit i: entry i is waiting for the device.
    waiting: AtomicU64,
    _reserved: [AtomicU64; 8],
}

#[repr(C)]
pub struct Entry {
    /// 0 = unused.
    pub tenant_id: AtomicU64,
    pub pid: AtomicU32,
    /// quota | mode << 8 | priority << 16
    pub cfg: AtomicU32,
    name: [AtomicU64; NAME_LEN / 8],
    /// GPU time charged to this process (ns), as measured through the driver.
    pub used_ns: AtomicU64,
    pub vt: AtomicU64,
    /// 1 while the process is inside a launch call.
    pub in_gate: AtomicU32,
    _pad: AtomicU32,
    /// When it last left a launch call.
    pub last_exit: AtomicU64,
    /// Latest completion of its work it has observed (ns).
    pub last_end: AtomicU64,
    /// Time spent held back in the gate (ns).
    pub throttled_ns: AtomicU64,
    /// Fixed mode: may not take the device before this time.
    pub eligible_at: AtomicU64,
    pub launches: AtomicU64,
    pub credit: AtomicI64,
    /// The tenant the entry was last taken for. Unlike `tenant_id` it is not cleared when the
    /// process dies, so a dead process's counters can still be attributed until the entry is
    /// taken again. 0 in regions written before it existed (then `tenant_id` tells).
    pub owner: AtomicU64,
    _reserved: [AtomicU64; 3],
}

const fn align64(x: usize) -> usize {
    (x + 63) & !63
}
const ENTRY_OFF: usize = align64(size_of::<Header>());
const ENTRY_SIZE: usize = align64(size_of::<Entry>());
pub const FILE_LEN: usize = ENTRY_OFF + ENTRIES * ENTRY_SIZE;

pub fn pack_cfg(quota: u8, mode: u8, priority: u8) -> u32 {
    quota as u32 | (mode as u32) << 8 | (priority as u32) << 16
}
pub fn unpack_cfg(c: u32) -> (u8, u8, u8) {
    (c as u8, (c >> 8) as u8, (c >> 16) as u8)
}

pub fn now_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn region_path(dir: &Path, uuid: &[u8; 16]) -> PathBuf {
    let h: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("gpu-{h}"))
}

/// A snapshot of one entry, for `gpuslice top` and the chooser.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryView {
    pub entry: usize,
    pub tenant_id: u64,
    pub pid: u32,
    pub name: String,
    pub quota: u8,
    pub mode: u8,
    pub priority: u8,
    pub used_ns: u64,
    pub vt: u64,
    pub throttled_ns: u64,
    pub waiting: bool,
    pub holder: bool,
    pub launches: u64,
}

/// One entry's identity and counters at one instant, live or not: what accounting over time
/// (the node agent's metrics, `gpuslice top`) needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub entry: usize,
    pub pid: u32,
    /// The tenant the entry was last taken for, also after its process died.
    pub tenant_id: u64,
    pub name: String,
    pub used_ns: u64,
    pub throttled_ns: u64,
}

pub struct Region {
    file: MappedFile,
}

#[derive(Debug)]
pub enum AttachError {
    Io(io::Error),
    /// The device already runs in another share mode.
    ModeConflict {
        device: u8,
        asked: u8,
    },
    Full,
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Io(e) => write!(f, "{e}"),
            AttachError::ModeConflict { device, asked } => write!(
                f,
                "this GPU is shared in {} mode by its first tenant; --share-mode {} is refused (one mode per GPU)",
                policy::mode_name(*device),
                policy::mode_name(*asked)
            ),
            AttachError::Full => write!(f, "all {ENTRIES} compute entries of this GPU are in use"),
        }
    }
}

impl Region {
    /// Opens the region of a GPU, creating it on first use.
    pub fn open_or_create(path: &Path) -> io::Result<Region> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = MappedFile::open_or_create(path, FILE_LEN, 0o666, |m| {
            let h = unsafe { m.at::<Header>(0) };
            h.version.store(VERSION, SeqCst);
            h.magic.store(MAGIC, SeqCst);
        })?;
        Self::check(file)
    }

    /// Opens an existing region (for readers such as `gpuslice top`).
    pub fn open(path: &Path) -> io::Result<Region> {
        Self::check(MappedFile::open(path, FILE_LEN)?)
    }

    fn check(file: MappedFile) -> io::Result<Region> {
        let r = Region { file };
        let h = r.header();
        if h.magic.load(SeqCst) != MAGIC || h.version.load(SeqCst) != VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a gpuslice compute region of version {VERSION}",
                    r.file.path().display()
                ),
            ));
        }
        Ok(r)
    }

    fn header(&self) -> &Header {
        unsafe { self.file.at::<Header>(0) }
    }

    pub fn entry(&self, i: usize) -> &Entry {
        unsafe { self.file.at::<Entry>(ENTRY_OFF + i * ENTRY_SIZE) }
    }

    pub fn high_water(&self) -> usize {
        (self.header().high_water.load(SeqCst) as usize).min(ENTRIES)
    }

    /// The device's share mode, if a tenant has set it.
    pub fn mode(&self) -> Option<u8> {
        match self.header().mode.load(SeqCst) {
            0 => None,
            m => Some((m - 1) as u8),
        }
    }

    /// Whether entry `i` belongs to a live process (other than the caller).
    pub fn is_live(&self, i: usize) -> bool {
        self.entry(i).tenant_id.load(SeqCst) != 0 && self.file.slot_is_live(i).unwrap_or(false)
    }

    /// Takes an entry for the calling process. The first tenant on the device sets its mode;
    /// a tenant asking for another mode while live tenants use the device is refused. Once all
    /// tenants have left, the next one sets the mode afresh.
    pub fn attach(
        &self,
        tenant_id: u64,
        name: &str,
        quota: u8,
        mode: u8,
        priority: u8,
    ) -> Result<usize, AttachError> {
        let h = self.header();
        self.reclaim_dead();
        let want = mode as u32 + 1;
        loop {
            let cur = h.mode.load(SeqCst);
            if cur == want {
                break;
            }
            let anyone = (0..self.high_water()).any(|i| self.is_live(i));
            if cur != 0 && anyone {
                return Err(AttachError::ModeConflict {
                    device: (cur - 1) as u8,
                    asked: mode,
                });
            }
            if h.mode.compare_exchange(cur, want, SeqCst, SeqCst).is_ok() {
                break;
            }
        }
        for i in 0..ENTRIES {
            if !self.file.claim_slot(i).map_err(AttachError::Io)? {
                continue;
            }
            let e = self.entry(i);
            let mut name_b = [0u8; NAME_LEN];
            let n = name.len().min(NAME_LEN - 1);
            name_b[..n].copy_from_slice(&name.as_bytes()[..n]);
            for (k, w) in e.name.iter().enumerate() {
                w.store(
                    u64::from_le_bytes(name_b[k * 8..k * 8 + 8].try_into().unwrap()),
                    SeqCst,
                );
            }
            for a in [
                &e.used_ns,
                &e.throttled_ns,
                &e.last_exit,
                &e.last_end,
                &e.eligible_at,
                &e.launches,
            ] {
                a.store(0, SeqCst);
            }
            e.credit.store(0, SeqCst);
            e.in_gate.store(0, SeqCst);
            e.vt.store(self.min_active_vt(Some(i)).unwrap_or(0), SeqCst);
            e.owner.store(tenant_id, SeqCst);
            e.pid.store(std::process::id(), SeqCst);
            e.cfg.store(pack_cfg(quota, mode, priority), SeqCst);
            e.tenant_id.store(tenant_id, SeqCst);
            h.high_water.fetch_max(i as u32 + 1, SeqCst);
            // A mode set by a tenant that left just now may have been replaced meanwhile.
            if h.mode.load(SeqCst) != want {
                self.detach(i);
                continue;
            }
            return Ok(i);
        }
        Err(AttachError::Full)
    }

    pub fn detach(&self, i: usize) {
        let e = self.entry(i);
        self.set_waiting(i, false);
        e.tenant_id.store(0, SeqCst);
        self.release_if_holder(i);
        let _ = self.file.release_slot(i);
    }

    /// Clears entries of processes that died, and the device if one of them held it.
    pub fn reclaim_dead(&self) {
        for i in 0..self.high_water() {
            let e = self.entry(i);
            if e.tenant_id.load(SeqCst) == 0 {
                continue;
            }
            if let Ok(true) = self.file.claim_slot(i) {
                self.set_waiting(i, false);
                e.tenant_id.store(0, SeqCst);
                self.release_if_holder(i);
                let _ = self.file.release_slot(i);
            }
        }
    }

    fn release_if_holder(&self, i: usize) {
        let h = self.header();
        let cur = h.holder.load(SeqCst);
        if holder_entry(cur) == Some(i) {
            let _ = h
                .holder
                .compare_exchange(cur, next_word(cur, None), SeqCst, SeqCst);
            self.wake();
        }
    }

    pub fn holder_word(&self) -> u64 {
        self.header().holder.load(SeqCst)
    }

    pub fn slice_end(&self) -> u64 {
        self.header().slice_end.load(SeqCst)
    }

    /// Hands the device from the holder word `seen` to `to` for a slice ending at `slice_end`.
    pub fn hand_over(&self, seen: u64, to: Option<usize>, slice_end: u64) -> bool {
        let h = self.header();
        let next = next_word(seen, to);
        if h.holder
            .compare_exchange(seen, next, SeqCst, SeqCst)
            .is_err()
        {
            return false;
        }
        h.slice_end.store(slice_end, SeqCst);
        self.wake();
        true
    }

    /// Extends the holder's slice (the holder alone calls this).
    pub fn extend(&self, slice_end: u64) {
        self.header().slice_end.store(slice_end, SeqCst);
    }

    pub fn set_waiting(&self, i: usize, on: bool) {
        let w = &self.header().waiting;
        if on {
            w.fetch_or(1 << i, SeqCst);
        } else {
            w.fetch_and(!(1 << i), SeqCst);
        }
    }

    pub fn waiting_mask(&self) -> u64 {
        self.header().waiting.load(SeqCst)
    }

    pub fn turn(&self) -> u32 {
        self.header().turn.load(SeqCst)
    }

    fn wake(&self) {
        let t = &self.header().turn;
        t.fetch_add(1, SeqCst);
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                t.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                0usize,
                0usize,
                0u32,
            );
        }
    }

    /// Sleeps until the turn word moves past `seen` or `timeout_ns` passes. A dead process can
    /// never make this wait longer than the timeout.
    pub fn wait_turn(&self, seen: u32, timeout_ns: u64) {
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        let t = &self.header().turn;
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                t.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                &ts as *const libc::timespec,
                0usize,
                0u32,
            );
        }
    }

    /// Least virtual time among live entries that are waiting or hold the device.
    pub fn min_active_vt(&self, except: Option<usize>) -> Option<u64> {
        let waiting = self.waiting_mask();
        let holder = holder_entry(self.holder_word());
        (0..self.high_water())
            .filter(|&i| Some(i) != except)
            .filter(|&i| waiting & (1 << i) != 0 || holder == Some(i))
            .filter(|&i| self.entry(i).tenant_id.load(SeqCst) != 0)
            .map(|i| self.entry(i).vt.load(SeqCst))
            .min()
    }

    /// The chooser's view: live entries, with their weights' tenants' process counts applied.
    pub fn candidates(&self, me: usize, me_demand: bool) -> Vec<policy::Candidate> {
        let waiting = self.waiting_mask();
        (0..self.high_water())
            .filter(|&i| i == me || (waiting & (1 << i) != 0 && self.is_live(i)))
            .map(|i| {
                let e = self.entry(i);
                let (_, _, prio) = unpack_cfg(e.cfg.load(SeqCst));
                policy::Candidate {
                    entry: i,
                    priority: prio,
                    vt: e.vt.load(SeqCst),
                    demand: if i == me { me_demand } else { true },
                    eligible_at: e.eligible_at.load(SeqCst),
                }
            })
            .collect()
    }

    /// Live processes of tenant `tenant_id` on this device.
    pub fn processes_of(&self, tenant_id: u64) -> u32 {
        (0..self.high_water())
            .filter(|&i| self.entry(i).tenant_id.load(SeqCst) == tenant_id)
            .count() as u32
    }

    /// Whether a live process of strictly higher priority than `priority` uses the device.
    pub fn higher_priority_present(&self, me: usize, priority: u8) -> bool {
        (0..self.high_water()).any(|i| {
            i != me && {
                let e = self.entry(i);
                e.tenant_id.load(SeqCst) != 0
                    && unpack_cfg(e.cfg.load(SeqCst)).2 < priority
                    && self.is_live(i)
            }
        })
    }

    /// Latest completion any other process has published that is not after `t`.
    pub fn others_last_end_before(&self, me: usize, t: u64) -> u64 {
        (0..self.high_water())
            .filter(|&i| i != me)
            .map(|i| self.entry(i).last_end.load(SeqCst))
            .filter(|&e| e <= t)
            .max()
            .unwrap_or(0)
    }

    /// Every entry that was ever taken, with the counters it holds now. A dead process's entry
    /// keeps its final counters until a new process takes it (attaching zeroes them first), so
    /// a reader sampling often loses nothing of a process that died in between. A reading torn
    /// by a concurrent attach (identity changed while the counters were read) is retried.
    pub fn readings(&self) -> Vec<Reading> {
        let mut out = Vec::new();
        for i in 0..self.high_water() {
            let e = self.entry(i);
            let who = || {
                let owner = e.owner.load(SeqCst);
                let t = if owner != 0 {
                    owner
                } else {
                    e.tenant_id.load(SeqCst)
                };
                (e.pid.load(SeqCst), t)
            };
            for _ in 0..4 {
                let (pid, tenant_id) = who();
                if tenant_id == 0 {
                    break;
                }
                let used_ns = e.used_ns.load(SeqCst);
                let throttled_ns = e.throttled_ns.load(SeqCst);
                let name = entry_name(e);
                if who() == (pid, tenant_id) {
                    out.push(Reading {
                        entry: i,
                        pid,
                        tenant_id,
                        name,
                        used_ns,
                        throttled_ns,
                    });
                    break;
                }
            }
        }
        out
    }

    pub fn entries(&self) -> Vec<EntryView> {
        let waiting = self.waiting_mask();
        let holder = holder_entry(self.holder_word());
        (0..self.high_water())
            .filter(|&i| self.entry(i).tenant_id.load(SeqCst) != 0 && self.is_live(i))
            .map(|i| {
                let e = self.entry(i);
                let (quota, mode, priority) = unpack_cfg(e.cfg.load(SeqCst));
                EntryView {
                    entry: i,
                    tenant_id: e.tenant_id.load(SeqCst),
                    pid: e.pid.load(SeqCst),
                    name: entry_name(e),
                    quota,
                    mode,
                    priority,
                    used_ns: e.used_ns.load(SeqCst),
                    vt: e.vt.load(SeqCst),
                    throttled_ns: e.throttled_ns.load(SeqCst),
                    waiting: waiting & (1 << i) != 0,
                    holder: holder == Some(i),
                    launches: e.launches.load(SeqCst),
                }
            })
            .collect()
    }
}

fn entry_name(e: &Entry) -> String {
    let mut nb = Vec::with_capacity(NAME_LEN);
    for w in &e.name {
        nb.extend_from_slice(&w.load(SeqCst).to_le_bytes());
    }
    let end = nb.iter().position(|&b| b == 0).unwrap_or(nb.len());
    String::from_utf8_lossy(&nb[..end]).into_owned()
}

/// The regions in `dir` that open, with their GPU's UUID (from the `gpu-<hex>` file name).
pub fn regions(dir: &Path) -> Vec<([u8; 16], Region)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<([u8; 16], Region)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let hex = name.to_str()?.strip_prefix("gpu-")?;
            if hex.len() != 32 || !hex.is_ascii() {
                return None;
            }
            let mut uuid = [0u8; 16];
            for (k, b) in uuid.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).ok()?;
            }
            Some((uuid, Region::open(&e.path()).ok()?))
        })
        .collect();
    out.sort_by_key(|r| r.0);
    out
}

pub fn holder_entry(word: u64) -> Option<usize> {
    match word & 0xffff {
        0 => None,
        e => Some(e as usize - 1),
    }
}

fn next_word(seen: u64, to: Option<usize>) -> u64 {
    let epoch = (seen >> 16).wrapping_add(1);
    (epoch << 16) | to.map_or(0, |e| e as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("gpuslice-compute-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn first_mode_wins_until_everyone_left() {
        let d = tmp("mode");
        let p = region_path(&d, &[1; 16]);
        let r = Region::open_or_create(&p).unwrap();
        let a = r
            .attach(7, "a", 30, policy::MODE_FIXED, policy::PRIO_NORMAL)
            .unwrap();
        // The caller owns entry `a`; liveness of one's own entry reads as not live, so a child
        // process takes the conflicting attach.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let r = Region::open(&p).unwrap();
            let code = match r.attach(8, "b", 30, policy::MODE_EQUAL, policy::PRIO_NORMAL) {
                Err(AttachError::ModeConflict { .. }) => 0,
                _ => 1,
            };
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert_eq!(
            libc::WEXITSTATUS(st),
            0,
            "a conflicting mode is refused while a tenant is live"
        );
        r.detach(a);
        assert!(
            r.attach(9, "c", 30, policy::MODE_EQUAL, policy::PRIO_NORMAL)
                .is_ok(),
            "an empty device takes a new mode"
        );
        assert_eq!(r.mode(), Some(policy::MODE_EQUAL));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn readings_keep_a_freed_entrys_owner_and_counters_until_it_is_taken() {
        let d = tmp("readings");
        let r = Region::open_or_create(&region_path(&d, &[3; 16])).unwrap();
        let a = r
            .attach(7, "seven", 30, policy::MODE_FIXED, policy::PRIO_NORMAL)
            .unwrap();
        r.entry(a).used_ns.store(500, SeqCst);
        r.entry(a).throttled_ns.store(40, SeqCst);
        r.detach(a);
        assert!(r.entries().is_empty(), "not live any more");
        let v = r.readings();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].entry, v[0].tenant_id, v[0].pid, v[0].name.as_str()),
            (a, 7, std::process::id(), "seven")
        );
        assert_eq!((v[0].used_ns, v[0].throttled_ns), (500, 40));
        let b = r
            .attach(8, "eight", 70, policy::MODE_FIXED, policy::PRIO_NORMAL)
            .unwrap();
        assert_eq!(b, a, "the freed entry is taken again");
        let v = r.readings();
        assert_eq!((v[0].tenant_id, v[0].used_ns, v[0].throttled_ns), (8, 0, 0));
        let (uuid, _) = regions(&d).into_iter().next().unwrap();
        assert_eq!(uuid, [3; 16]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hand_over_is_a_compare_and_swap() {
        let d = tmp("hand");
        let r = Region::open_or_create(&region_path(&d, &[2; 16])).unwrap();
        let w = r.holder_word();
        assert_eq!(holder_entry(w), None);
        assert!(r.hand_over(w, Some(3), 10));
        assert!(
            !r.hand_over(w, Some(4), 10),
            "a stale view cannot hand over"
        );
        assert_eq!(holder_entry(r.holder_word()), Some(3));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

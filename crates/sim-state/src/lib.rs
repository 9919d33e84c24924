//! State of the simulated GPUs, shared by every process on the machine.
//!
//! One mapped file holds the devices' fixed specs (written once by whichever process creates it),
//! per-process memory charges in kernel-tracked slots (so a dead process's memory comes back), and
//! per-device timelines of busy intervals (so every process sees the same utilisation). Everything
//! mutable is an atomic; nothing here can be left locked by a process that dies.
#![deny(unsafe_op_in_unsafe_fn)]

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use gpuslice_shm::{Counter, MappedFile, Reservation, try_reserve};

mod shared;
pub use shared::{MAX_SHARED, ShareError, SharedHandle, SharedInfo};

/// The versions the simulated driver claims, one set for its CUDA driver and its NVML: an R575
/// driver shipping CUDA 12.9 (what `cuDriverGetVersion` and `nvmlSystemGetCudaDriverVersion`
/// both say, as on a real machine).
pub const CUDA_DRIVER_VERSION: i32 = 12090;
pub const DRIVER_VERSION: &str = "575.57.08";
pub const NVML_VERSION: &str = "12.575.57.08";

pub const MAX_DEVICES: usize = 16;
pub const MAX_SLOTS: usize = 1024;
/// Busy intervals remembered per device; enough for a second of 1 ms kernels several times over.
pub const RING_LEN: usize = 8192;

const MAGIC: u64 = 0x6770_7573_696d_0004; // "gpusim" + layout version
const NAME_LEN: usize = 96;
const UUID_LEN: usize = 48;
const BUS_LEN: usize = 32;

pub const DEFAULT_NAME: &str = "NVIDIA H100 80GB HBM3";
pub const DEFAULT_MEMORY: u64 = 80 << 30;
pub const DEFAULT_SMS: u32 = 132;
pub const DEFAULT_CONTEXT_BYTES: u64 = 256 << 20;

/// A simulated device as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub uuid: String,
    pub memory_bytes: u64,
    pub sm_count: u32,
    pub context_bytes: u64,
    pub pci_bus_id: String,
    pub numa_node: i32,
}

impl DeviceSpec {
    /// The default device at `index`: UUID and bus id are deterministic per index.
    pub fn default_at(index: usize) -> Self {
        DeviceSpec {
            name: DEFAULT_NAME.to_string(),
            uuid: default_uuid(index),
            memory_bytes: DEFAULT_MEMORY,
            sm_count: DEFAULT_SMS,
            context_bytes: DEFAULT_CONTEXT_BYTES,
            pci_bus_id: default_bus_id(index),
            numa_node: 0,
        }
    }
}

fn default_uuid(index: usize) -> String {
    format!(
        "GPU-5e1f{:04x}-0000-4000-8000-{:012x}",
        index,
        0x5e1f_0000_0000u64 + index as u64
    )
}

fn default_bus_id(index: usize) -> String {
    format!("00000000:{:02X}:00.0", 0x18 + index * 0x10)
}

/// A live process and what it holds on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessUsage {
    pub pid: u32,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimError {
    /// `GPUSLICE_SIM_DEVICES` is malformed; the message names the bad field.
    Config(String),
    /// The state file could not be created, opened or understood.
    State(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Config(m) => write!(f, "GPUSLICE_SIM_DEVICES: {m}"),
            SimError::State(m) => write!(f, "simulated GPU state: {m}"),
        }
    }
}

impl std::error::Error for SimError {}

/// Parses a size: plain bytes or with a `KiB`/`MiB`/`GiB`/`TiB` (or `K`/`M`/`G`/`T`, `KB`...) suffix.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// Parses a `GPUSLICE_SIM_DEVICES` value. Specs are separated by `;`; each is a comma-separated
/// list of `key=value` with keys `count`, `memory`, `sms`, `name`, `context`, `uuid`, `numa`
/// (`name` may contain commas only as its last key). An empty value means the default device.
pub fn parse_devices(cfg: &str) -> Result<Vec<DeviceSpec>, SimError> {
    let mut out = Vec::new();
    let cfg = cfg.trim();
    if cfg.is_empty() {
        return Ok(vec![DeviceSpec::default_at(0)]);
    }
    for spec in cfg.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let mut count = 1usize;
        let mut proto = DeviceSpec::default_at(0);
        let mut uuid: Option<String> = None;
        let mut rest = spec;
        while !rest.is_empty() {
            let (key, after) = rest
                .split_once('=')
                .ok_or_else(|| SimError::Config(format!("`{}` is not key=value", rest.trim())))?;
            let key = key.trim().to_ascii_lowercase();
            // A name may hold commas ("NVIDIA A100-SXM4-80GB, rev 2"); it takes the rest when last.
            let (value, next) = if key == "name" && !after.contains('=') {
                (after, "")
            } else {
                match after.split_once(',') {
                    Some((v, n)) => (v, n),
                    None => (after, ""),
                }
            };
            let value = value.trim();
            let bad = |what: &str| SimError::Config(format!("bad {key}=`{value}`: {what}"));
            match key.as_str() {
                "count" => {
                    count = value.parse().map_err(|_| bad("expected a number"))?;
                    if count == 0 || count > MAX_DEVICES {
                        return Err(bad(&format!("must be 1..={MAX_DEVICES}")));
                    }
                }
                "memory" | "mem" => {
                    proto.memory_bytes = parse_size(value)
                        .ok_or_else(|| bad("expected bytes or a KiB/MiB/GiB size"))?;
                    if proto.memory_bytes == 0 {
                        return Err(bad("must be positive"));
                    }
                }
                "sms" | "sm_count" => {
                    proto.sm_count = value.parse().map_err(|_| bad("expected a number"))?;
                    if proto.sm_count == 0 {
                        return Err(bad("must be positive"));
                    }
                }
                "context" | "context_bytes" => {
                    proto.context_bytes = parse_size(value)
                        .ok_or_else(|| bad("expected bytes or a KiB/MiB/GiB size"))?;
                }
                "name" => {
                    if value.is_empty() || value.len() >= NAME_LEN {
                        return Err(bad(&format!("must be 1..{NAME_LEN} bytes")));
                    }
                    proto.name = value.to_string();
                }
                "uuid" => {
                    if !value.starts_with("GPU-") || value.len() >= UUID_LEN {
                        return Err(bad("expected GPU-xxxxxxxx-..."));
                    }
                    uuid = Some(value.to_string());
                }
                "numa" | "numa_node" => {
                    proto.numa_node = value.parse().map_err(|_| bad("expected a number"))?;
                }
                _ => return Err(SimError::Config(format!("unknown field `{key}`"))),
            }
            rest = next;
        }
        if uuid.is_some() && count > 1 {
            return Err(SimError::Config("uuid= needs count=1".into()));
        }
        for _ in 0..count {
            let i = out.len();
            if i >= MAX_DEVICES {
                return Err(SimError::Config(format!(
                    "count: more than {MAX_DEVICES} devices"
                )));
            }
            let mut d = proto.clone();
            d.uuid = uuid.clone().unwrap_or_else(|| default_uuid(i));
            d.pci_bus_id = default_bus_id(i);
            if d.context_bytes >= d.memory_bytes {
                return Err(SimError::Config("context: not smaller than memory".into()));
            }
            out.push(d);
        }
    }
    if out.is_empty() {
        out.push(DeviceSpec::default_at(0));
    }
    Ok(out)
}

// ---- shared layout -------------------------------------------------------------------------

#[repr(C)]
struct Header {
    magic: u64,
    device_count: u64,
    slot_count: u64,
    ring_len: u64,
}

/// Fixed at creation: plain bytes written before the file becomes visible, never after.
#[repr(C)]
struct SpecRaw {
    name: [u8; NAME_LEN],
    uuid: [u8; UUID_LEN],
    bus: [u8; BUS_LEN],
    memory_bytes: u64,
    context_bytes: u64,
    sm_count: u32,
    numa_node: i32,
}

/// One busy interval. `seq` is `2*index+1` while being written and `2*index+2` once complete,
/// so a reader can tell a settled entry of the round it expects from anything else.
#[repr(C)]
struct Interval {
    seq: AtomicU64,
    pid: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
}

#[repr(C)]
struct DeviceState {
    spec: SpecRaw,
    /// When the last work queued on the device completes.
    busy_until: AtomicU64,
    /// Intervals ever recorded; the ring holds the last `RING_LEN`.
    ring_head: AtomicU64,
    ring: [Interval; RING_LEN],
}

#[repr(C)]
struct Slot {
    /// Owner's pid (as the owner sees it), for reporting only; liveness is the slot lock.
    pid: AtomicU64,
    mem: [Counter; MAX_DEVICES],
    /// Busy time queued by the owner per device (ns), and when its last queued work ends.
    busy_ns: [AtomicU64; MAX_DEVICES],
    last_end: [AtomicU64; MAX_DEVICES],
    /// Shared memory objects this process holds, one bit per entry of the shared table
    /// (`shared.rs`). Written only by the owner, or by a reclaimer once the owner is dead.
    holds: [AtomicU64; shared::HOLD_WORDS],
}

#[repr(C)]
struct Shared {
    header: Header,
    devices: [DeviceState; MAX_DEVICES],
    slots: [Slot; MAX_SLOTS],
    mig: [MigRegion; MAX_DEVICES],
    events: EventRegion,
    shared: [shared::SharedObj; shared::MAX_SHARED],
}

/// Process-wide handle on the mapped state.
pub struct Sim {
    map: MappedFile,
    devices: usize,
    /// (pid that claimed it, slot index); a pid change means we are a fork child without a slot.
    mine: Mutex<Option<(u32, usize)>>,
}

fn copy_str(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn read_str(b: &[u8]) -> String {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// Default state path: per user, in tmpfs.
pub fn default_state_path() -> PathBuf {
    PathBuf::from(format!("/dev/shm/gpuslice-sim-{}", unsafe {
        libc::getuid()
    }))
}

static SIM: OnceLock<Result<Sim, SimError>> = OnceLock::new();

impl Sim {
    /// The process-wide state, attached on first use (creating the file from
    /// `GPUSLICE_SIM_DEVICES` if it does not exist yet).
    pub fn get() -> Result<&'static Sim, SimError> {
        SIM.get_or_init(|| {
            let cfg = std::env::var("GPUSLICE_SIM_DEVICES").unwrap_or_default();
            let specs = parse_devices(&cfg)?;
            let path = std::env::var_os("GPUSLICE_SIM_STATE")
                .map(PathBuf::from)
                .unwrap_or_else(default_state_path);
            Sim::open(&path, &specs)
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// Attaches to the state at `path`, creating it with `specs` if absent. Devices already in an
    /// existing file win: they are a property of the machine, not of the process.
    pub fn open(path: &std::path::Path, specs: &[DeviceSpec]) -> Result<Sim, SimError> {
        if specs.is_empty() || specs.len() > MAX_DEVICES {
            return Err(SimError::Config(format!("need 1..={MAX_DEVICES} devices")));
        }
        let len = std::mem::size_of::<Shared>();
        let map = MappedFile::open_or_create(path, len, 0o666, |m| {
            // Sole owner of a fresh, zeroed, not-yet-visible file.
            let sh = unsafe { &mut *(m.as_ptr() as *mut Shared) };
            sh.header.device_count = specs.len() as u64;
            sh.header.slot_count = MAX_SLOTS as u64;
            sh.header.ring_len = RING_LEN as u64;
            for (d, s) in sh.devices.iter_mut().zip(specs) {
                copy_str(&mut d.spec.name, &s.name);
                copy_str(&mut d.spec.uuid, &s.uuid);
                copy_str(&mut d.spec.bus, &s.pci_bus_id);
                d.spec.memory_bytes = s.memory_bytes;
                d.spec.context_bytes = s.context_bytes;
                d.spec.sm_count = s.sm_count;
                d.spec.numa_node = s.numa_node;
            }
            sh.header.magic = MAGIC;
        })
        .map_err(|e| SimError::State(format!("{}: {e}", path.display())))?;
        let sh = unsafe { map.at::<Shared>(0) };
        if sh.header.magic != MAGIC
            || sh.header.slot_count != MAX_SLOTS as u64
            || sh.header.ring_len != RING_LEN as u64
        {
            return Err(SimError::State(format!(
                "{}: not a gpuslice simulator state of this version",
                path.display()
            )));
        }
        let devices = sh.header.device_count as usize;
        if devices == 0 || devices > MAX_DEVICES {
            return Err(SimError::State(format!(
                "{}: corrupt device count {devices}",
                path.display()
            )));
        }
        Ok(Sim {
            map,
            devices,
            mine: Mutex::new(None),
        })
    }

    fn sh(&self) -> &Shared {
        // Size and alignment checked by `at`; every mutable field is atomic.
        unsafe { self.map.at::<Shared>(0) }
    }

    pub fn path(&self) -> &std::path::Path {
        self.map.path()
    }

    /// CLOCK_MONOTONIC in ns: one clock for every process on the machine.
    pub fn now_ns() -> u64 {
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    pub fn device_count(&self) -> usize {
        self.devices
    }

    fn dev(&self, dev: usize) -> &DeviceState {
        assert!(dev < self.devices, "simulated device {dev} does not exist");
        &self.sh().devices[dev]
    }

    pub fn spec(&self, dev: usize) -> DeviceSpec {
        let s = &self.dev(dev).spec;
        DeviceSpec {
            name: read_str(&s.name),
            uuid: read_str(&s.uuid),
            memory_bytes: s.memory_bytes,
            sm_count: s.sm_count,
            context_bytes: s.context_bytes,
            pci_bus_id: read_str(&s.bus),
            numa_node: s.numa_node,
        }
    }

    pub fn memory_total(&self, dev: usize) -> u64 {
        self.dev(dev).spec.memory_bytes
    }

    /// Bytes in use on `dev` by every process, context memory included.
    pub fn memory_used(&self, dev: usize) -> u64 {
        let _ = self.dev(dev);
        self.reclaim_dead();
        gpuslice_shm::total(self.all_counters(dev))
    }

    /// Live processes holding memory on `dev`, one entry per pid, with exactly what the
    /// simulated driver charges each (allocations and contexts).
    ///
    /// Pids are in the caller's PID namespace, as the kernel reports the holder of each slot's
    /// lock (a real driver reports host pids, which is the same for a caller in the host's
    /// namespace). A holder the caller's namespace cannot see is left out; the pid word a process
    /// writes into its slot is never trusted for this.
    pub fn processes(&self, dev: usize) -> Vec<ProcessUsage> {
        let _ = self.dev(dev);
        self.reclaim_dead();
        let me = std::process::id();
        let mut out: Vec<ProcessUsage> = Vec::new();
        let shared = self.shared_attribution(dev);
        for (i, s) in self.sh().slots.iter().enumerate() {
            let extra: u64 = shared
                .iter()
                .filter(|(slot, _)| *slot == i)
                .map(|(_, b)| b)
                .sum();
            let used = s.mem[dev].charged().saturating_add(extra);
            if used == 0 {
                continue;
            }
            let pid = match self.map.slot_holder(i) {
                Ok(Some(0)) | Err(_) => continue,
                Ok(Some(pid)) => pid,
                // The kernel does not report our own locks (this copy's or another copy's of
                // this library in this process); anything else unlocked is dead.
                Ok(None) if s.pid.load(Ordering::SeqCst) == me as u64 => me,
                Ok(None) => continue,
            };
            match out.iter_mut().find(|p| p.pid == pid) {
                Some(p) => p.used_bytes += used,
                None => out.push(ProcessUsage {
                    pid,
                    used_bytes: used,
                }),
            }
        }
        out
    }

    /// This process's slot, claimed on first use (and again in a fork child).
    fn my_slot(&self) -> usize {
        let pid = std::process::id();
        let mut mine = self.mine.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, i)) = (*mine).filter(|(p, _)| *p == pid) {
            return i;
        }
        let start = (pid as usize).wrapping_mul(2654435761) % MAX_SLOTS;
        for k in 0..MAX_SLOTS {
            let i = (start + k) % MAX_SLOTS;
            let s = &self.sh().slots[i];
            // Record locks are per process: a slot that another copy of this library in the same
            // process (libcuda and libnvidia-ml each link one) holds would "claim" fine. The pid
            // field tells them apart; the CAS settles two copies racing for one slot.
            let seen = s.pid.load(Ordering::SeqCst);
            if seen == pid as u64 {
                continue;
            }
            if self.map.claim_slot(i).unwrap_or(false) {
                if s.pid
                    .compare_exchange(seen, pid as u64, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    continue;
                }
                // Whatever a dead previous owner left is ours to drop.
                for d in 0..MAX_DEVICES {
                    s.mem[d].reset();
                    s.busy_ns[d].store(0, Ordering::SeqCst);
                    s.last_end[d].store(0, Ordering::SeqCst);
                }
                self.drop_holds(i);
                *mine = Some((pid, i));
                return i;
            }
        }
        panic!("all {MAX_SLOTS} simulated-GPU process slots are taken");
    }

    /// The slot this process charges to, if it has claimed one (for tests and diagnostics).
    pub fn current_slot(&self) -> Option<usize> {
        let m = self.mine.lock().unwrap_or_else(|e| e.into_inner());
        m.filter(|(p, _)| *p == std::process::id()).map(|(_, i)| i)
    }

    /// Every charge on `dev`: each process's own, and each shared object some process holds
    /// (counted once, however many hold it).
    fn all_counters(&self, dev: usize) -> impl Iterator<Item = &Counter> {
        self.sh()
            .slots
            .iter()
            .map(move |s| &s.mem[dev])
            .chain(self.shared_counters(dev))
    }

    /// Charges `bytes` on `dev` to this process; `false` (and nothing charged) if the device
    /// does not have them.
    pub fn try_alloc(&self, dev: usize, bytes: u64) -> bool {
        let cap = self.memory_total(dev);
        let me = &self.sh().slots[self.my_slot()].mem[dev];
        for attempt in 0..2 {
            match try_reserve(me, || self.all_counters(dev), cap, bytes) {
                Reservation::Granted { .. } => return true,
                Reservation::Refused { .. } if attempt == 0 => {
                    // Maybe a dead process still holds what we need.
                    if self.reclaim_dead() == 0 {
                        return false;
                    }
                }
                Reservation::Refused { .. } => return false,
            }
        }
        false
    }

    /// Returns `bytes` on `dev` that this process had charged.
    pub fn free(&self, dev: usize, bytes: u64) {
        let _ = self.dev(dev);
        self.sh().slots[self.my_slot()].mem[dev].release(bytes);
    }

    /// What this process has charged on `dev`.
    pub fn my_usage(&self, dev: usize) -> u64 {
        let _ = self.dev(dev);
        self.sh().slots[self.my_slot()].mem[dev].charged()
    }

    /// Returns the memory of processes that died; the number of slots reclaimed.
    pub fn reclaim_dead(&self) -> usize {
        let mine = self.current_slot();
        let me = std::process::id() as u64;
        let mut n = 0;
        for (i, s) in self.sh().slots.iter().enumerate() {
            // Our own slot, or one held by another copy of this library in this process: the
            // kernel reports neither as locked to us.
            if Some(i) == mine || s.pid.load(Ordering::SeqCst) == me {
                continue;
            }
            let charged = (0..self.devices).any(|d| s.mem[d].charged() > 0)
                || s.holds.iter().any(|w| w.load(Ordering::SeqCst) != 0);
            if !charged || self.map.slot_is_live(i).unwrap_or(true) {
                continue;
            }
            // Taking the lock makes us the only one touching it; a process that just claimed
            // it (and reset it itself) makes this fail, which is fine.
            if self.map.claim_slot(i).unwrap_or(false) {
                // Its shared objects first: a reclaimer killed here leaves the counters, so
                // the next one still finds the slot worth reclaiming.
                self.drop_holds(i);
                for d in 0..MAX_DEVICES {
                    s.mem[d].reset();
                }
                s.pid.store(0, Ordering::SeqCst);
                let _ = self.map.release_slot(i);
                n += 1;
            }
        }
        n
    }

    /// Queues `duration_ns` of work on `dev`'s timeline, starting no earlier than
    /// `not_before_ns`, after everything already queued by any process. Returns its end.
    pub fn run_busy(&self, dev: usize, not_before_ns: u64, duration_ns: u64) -> u64 {
        let d = self.dev(dev);
        let now = Self::now_ns();
        if duration_ns == 0 {
            return now.max(not_before_ns);
        }
        let mut cur = d.busy_until.load(Ordering::SeqCst);
        let (start, end) = loop {
            let start = now.max(not_before_ns).max(cur);
            let end = start + duration_ns;
            match d
                .busy_until
                .compare_exchange_weak(cur, end, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break (start, end),
                Err(c) => cur = c,
            }
        };
        let slot = self.my_slot();
        let s = &self.sh().slots[slot];
        s.busy_ns[dev].fetch_add(duration_ns, Ordering::SeqCst);
        s.last_end[dev].fetch_max(end, Ordering::SeqCst);
        self.record(d, std::process::id(), start, end);
        end
    }

    /// When the work already queued on `dev` completes.
    pub fn busy_until(&self, dev: usize) -> u64 {
        self.dev(dev).busy_until.load(Ordering::SeqCst)
    }

    fn record(&self, d: &DeviceState, pid: u32, start: u64, end: u64) {
        let idx = d.ring_head.fetch_add(1, Ordering::SeqCst);
        let e = &d.ring[(idx % RING_LEN as u64) as usize];
        e.seq.store(2 * idx + 1, Ordering::SeqCst);
        e.pid.store(pid as u64, Ordering::SeqCst);
        e.start.store(start, Ordering::SeqCst);
        e.end.store(end, Ordering::SeqCst);
        e.seq.store(2 * idx + 2, Ordering::SeqCst);
    }

    /// Settled intervals still in `dev`'s ring: (pid, start, end).
    fn intervals(&self, dev: usize) -> Vec<(u32, u64, u64)> {
        let d = self.dev(dev);
        let head = d.ring_head.load(Ordering::SeqCst);
        let first = head.saturating_sub(RING_LEN as u64);
        let mut out = Vec::new();
        for idx in first..head {
            let e = &d.ring[(idx % RING_LEN as u64) as usize];
            // A writer mid-entry finishes in a few stores; wait for it rather than miss the interval.
            let mut spins = 0;
            loop {
                let s1 = e.seq.load(Ordering::SeqCst);
                if s1 == 2 * idx + 1 && spins < 1000 {
                    spins += 1;
                    std::hint::spin_loop();
                    continue;
                }
                if s1 != 2 * idx + 2 {
                    break;
                }
                let v = (
                    e.pid.load(Ordering::SeqCst) as u32,
                    e.start.load(Ordering::SeqCst),
                    e.end.load(Ordering::SeqCst),
                );
                if e.seq.load(Ordering::SeqCst) == s1 {
                    out.push(v);
                }
                break;
            }
        }
        out
    }

    /// Fraction of the last `window_ns` during which `dev` was busy, from any process.
    pub fn utilization(&self, dev: usize, window_ns: u64) -> f64 {
        if window_ns == 0 {
            return 0.0;
        }
        let now = Self::now_ns();
        let from = now.saturating_sub(window_ns);
        let busy: u64 = self
            .intervals(dev)
            .iter()
            .map(|&(_, s, e)| overlap(s, e, from, now))
            .sum();
        (busy as f64 / window_ns as f64).min(1.0)
    }

    /// Per process: busy time on `dev` between `since_ns` and now, and when its latest work
    /// (up to now) ran. Processes with no work in that span are left out.
    pub fn process_busy(&self, dev: usize, since_ns: u64) -> Vec<(u32, u64, u64)> {
        let now = Self::now_ns();
        let mut acc: Vec<(u32, u64, u64)> = Vec::new();
        for (pid, s, e) in self.intervals(dev) {
            let o = overlap(s, e, since_ns, now);
            if o == 0 {
                continue;
            }
            let seen = e.min(now);
            match acc.iter_mut().find(|a| a.0 == pid) {
                Some(a) => {
                    a.1 += o;
                    a.2 = a.2.max(seen);
                }
                None => acc.push((pid, o, seen)),
            }
        }
        acc.sort_by_key(|a| a.0);
        acc
    }
}

// ---- MIG ----------------------------------------------------------------------------------

/// GPU instances and compute instances per GPU instance the state can hold (a GPU has at
/// most 7 of either).
pub const MIG_MAX_GIS: usize = 8;
pub const MIG_MAX_CIS: usize = 8;
const MIG_WORDS: usize = 1 + MIG_MAX_GIS * (1 + MIG_MAX_CIS);

/// A compute instance: ids and placement (in compute slices of its GPU instance) as NVML
/// reports them; `serial` makes the MIG device's UUID differ from any earlier one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MigCi {
    pub id: u8,
    pub profile_id: u8,
    pub start: u8,
    pub size: u8,
    pub serial: u32,
}

/// A GPU instance: NVML profile id and placement in memory slices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigGi {
    pub id: u8,
    pub profile_id: u8,
    pub start: u8,
    pub size: u8,
    pub cis: Vec<MigCi>,
}

/// A device's MIG state. The simulator's rules (geometry, errors) live with its NVML; this is
/// storage only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigState {
    pub enabled: bool,
    pub gis: Vec<MigGi>,
    /// Last serial handed to a compute instance.
    pub serial: u32,
}

impl MigState {
    fn encode(&self) -> [u64; MIG_WORDS] {
        assert!(self.gis.len() <= MIG_MAX_GIS, "too many GPU instances");
        let mut w = [0u64; MIG_WORDS];
        w[0] =
            u64::from(self.enabled) | (self.gis.len() as u64) << 8 | u64::from(self.serial) << 32;
        for (g, gi) in self.gis.iter().enumerate() {
            assert!(gi.cis.len() <= MIG_MAX_CIS, "too many compute instances");
            let base = 1 + g * (1 + MIG_MAX_CIS);
            w[base] = pack(gi.id, gi.profile_id, gi.start, gi.size, gi.cis.len() as u32);
            for (c, ci) in gi.cis.iter().enumerate() {
                w[base + 1 + c] = pack(ci.id, ci.profile_id, ci.start, ci.size, ci.serial);
            }
        }
        w
    }

    fn decode(w: &[u64; MIG_WORDS]) -> MigState {
        let gis = ((w[0] >> 8) & 0xff) as usize;
        MigState {
            enabled: w[0] & 1 != 0,
            serial: (w[0] >> 32) as u32,
            gis: (0..gis.min(MIG_MAX_GIS))
                .map(|g| {
                    let base = 1 + g * (1 + MIG_MAX_CIS);
                    let (id, profile_id, start, size, cis) = unpack(w[base]);
                    MigGi {
                        id,
                        profile_id,
                        start,
                        size,
                        cis: (0..(cis as usize).min(MIG_MAX_CIS))
                            .map(|c| {
                                let (id, profile_id, start, size, serial) = unpack(w[base + 1 + c]);
                                MigCi {
                                    id,
                                    profile_id,
                                    start,
                                    size,
                                    serial,
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

fn pack(a: u8, b: u8, c: u8, d: u8, rest: u32) -> u64 {
    u64::from(a)
        | u64::from(b) << 8
        | u64::from(c) << 16
        | u64::from(d) << 24
        | u64::from(rest) << 32
}

fn unpack(w: u64) -> (u8, u8, u8, u8, u32) {
    (
        w as u8,
        (w >> 8) as u8,
        (w >> 16) as u8,
        (w >> 24) as u8,
        (w >> 32) as u32,
    )
}

/// Two copies of a device's MIG state; `gen % 2` names the current one. A writer (only ever
/// one, see `mig_update`) fills the other copy and then bumps `gen`. A reader copies the
/// current one and keeps it only if `gen` has not moved meanwhile: a writer can only touch
/// that copy after bumping `gen` past it. A writer that dies mid-way leaves `gen` unbumped,
/// so nobody ever sees its half-written copy.
#[repr(C)]
struct MigRegion {
    generation: AtomicU64,
    copies: [[AtomicU64; MIG_WORDS]; 2],
}

/// Another process is changing the device's MIG state right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigBusy;

/// Serialises writers inside this process; the record lock does it across processes.
static MIG_WRITER: Mutex<()> = Mutex::new(());

impl Sim {
    fn mig_region(&self, dev: usize) -> &MigRegion {
        let _ = self.dev(dev);
        &self.sh().mig[dev]
    }

    /// The MIG state of `dev` as last committed.
    pub fn mig(&self, dev: usize) -> MigState {
        let r = self.mig_region(dev);
        loop {
            let g = r.generation.load(Ordering::SeqCst);
            let copy = &r.copies[(g % 2) as usize];
            let mut w = [0u64; MIG_WORDS];
            for (d, s) in w.iter_mut().zip(copy.iter()) {
                *d = s.load(Ordering::SeqCst);
            }
            if r.generation.load(Ordering::SeqCst) == g {
                return MigState::decode(&w);
            }
            std::hint::spin_loop();
        }
    }

    /// Changes `dev`'s MIG state: `f` sees the current state and either edits it (`Ok`,
    /// committed at once) or refuses (`Err`, nothing changes). Writers exclude each other with
    /// a non-blocking record lock, which the kernel drops if the holder dies; one that finds
    /// the lock held retries for up to a second, then gives up with [`MigBusy`].
    pub fn mig_update<T, E>(
        &self,
        dev: usize,
        f: impl FnOnce(&mut MigState) -> Result<T, E>,
    ) -> Result<Result<T, E>, MigBusy> {
        let r = self.mig_region(dev);
        let _inproc = MIG_WRITER.lock().unwrap_or_else(|e| e.into_inner());
        let lock = MAX_SLOTS + dev;
        let deadline = Self::now_ns() + 1_000_000_000;
        while !self.map.claim_slot(lock).unwrap_or(false) {
            if Self::now_ns() > deadline {
                return Err(MigBusy);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut state = self.mig(dev);
        let out = f(&mut state);
        if out.is_ok() {
            let g = r.generation.load(Ordering::SeqCst);
            let next = &r.copies[((g + 1) % 2) as usize];
            for (d, s) in next.iter().zip(state.encode()) {
                d.store(s, Ordering::SeqCst);
            }
            r.generation.store(g + 1, Ordering::SeqCst);
        }
        let _ = self.map.release_slot(lock);
        Ok(out)
    }
}

// ---- Events --------------------------------------------------------------------------------

/// Events remembered per device. A reader more than this far behind misses the oldest, as a
/// driver's event queue that overflows does.
pub const EVENT_RING: usize = 64;

/// Something a GPU reports by itself, as its driver would see it (an NVML event). Raised by
/// tests and tools the way a hardware fault would arise, and delivered to every NVML event set
/// registered for it, in any process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuEvent {
    /// An XID error; with MIG on, the GPU and compute instance it is attributable to, if any.
    Xid {
        code: u64,
        gpu_instance: Option<u32>,
        compute_instance: Option<u32>,
    },
    /// A corrected (single-bit) ECC error.
    EccSingleBit,
    /// An uncorrectable (double-bit) ECC error.
    EccDoubleBit,
}

const EV_XID: u64 = 1;
const EV_SBE: u64 = 2;
const EV_DBE: u64 = 3;
const NO_INSTANCE: u32 = u32::MAX;

impl GpuEvent {
    fn encode(self) -> (u64, u64, u64) {
        match self {
            GpuEvent::Xid {
                code,
                gpu_instance,
                compute_instance,
            } => (
                EV_XID,
                code,
                u64::from(gpu_instance.unwrap_or(NO_INSTANCE)) << 32
                    | u64::from(compute_instance.unwrap_or(NO_INSTANCE)),
            ),
            GpuEvent::EccSingleBit => (EV_SBE, 0, u64::MAX),
            GpuEvent::EccDoubleBit => (EV_DBE, 0, u64::MAX),
        }
    }

    fn decode(kind: u64, data: u64, instance: u64) -> Option<GpuEvent> {
        let id = |v: u32| (v != NO_INSTANCE).then_some(v);
        match kind {
            EV_XID => Some(GpuEvent::Xid {
                code: data,
                gpu_instance: id((instance >> 32) as u32),
                compute_instance: id(instance as u32),
            }),
            EV_SBE => Some(GpuEvent::EccSingleBit),
            EV_DBE => Some(GpuEvent::EccDoubleBit),
            _ => None,
        }
    }
}

/// One event. `seq` is `2*index+1` while being written and `2*index+2` once complete, as in
/// the busy ring.
#[repr(C)]
struct EventRaw {
    seq: AtomicU64,
    kind: AtomicU64,
    data: AtomicU64,
    instance: AtomicU64,
}

#[repr(C)]
struct DeviceEvents {
    /// Events ever raised on the device; the ring holds the last `EVENT_RING`.
    head: AtomicU64,
    /// Non-zero while the device has fallen off the bus.
    lost: AtomicU64,
    ring: [EventRaw; EVENT_RING],
}

#[repr(C)]
struct EventRegion {
    /// Bumped after every event, machine-wide: the futex word waiters sleep on.
    raised: AtomicU32,
    devices: [DeviceEvents; MAX_DEVICES],
}

impl Sim {
    fn dev_events(&self, dev: usize) -> &DeviceEvents {
        let _ = self.dev(dev);
        &self.sh().events.devices[dev]
    }

    /// The index of the device with `uuid`.
    pub fn device_by_uuid(&self, uuid: &str) -> Option<usize> {
        (0..self.devices).find(|&d| self.spec(d).uuid == uuid)
    }

    /// Raises `ev` on `dev` and wakes every waiter; returns its sequence number.
    pub fn raise(&self, dev: usize, ev: GpuEvent) -> u64 {
        let d = self.dev_events(dev);
        let (kind, data, instance) = ev.encode();
        let idx = d.head.fetch_add(1, Ordering::SeqCst);
        let e = &d.ring[(idx % EVENT_RING as u64) as usize];
        e.seq.store(2 * idx + 1, Ordering::SeqCst);
        e.kind.store(kind, Ordering::SeqCst);
        e.data.store(data, Ordering::SeqCst);
        e.instance.store(instance, Ordering::SeqCst);
        e.seq.store(2 * idx + 2, Ordering::SeqCst);
        let w = &self.sh().events.raised;
        w.fetch_add(1, Ordering::SeqCst);
        // SAFETY: a futex wake on a word of the shared mapping (not process-private).
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                w.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                0usize,
                0usize,
                0u32,
            );
        }
        idx
    }

    /// An XID error `code` on the whole GPU with `uuid`, as the driver would report it.
    pub fn inject_xid(&self, uuid: &str, code: u64) -> Result<u64, SimError> {
        let dev = self.device_by_uuid_or_err(uuid)?;
        Ok(self.raise(
            dev,
            GpuEvent::Xid {
                code,
                gpu_instance: None,
                compute_instance: None,
            },
        ))
    }

    /// An uncorrectable (double-bit) ECC error on the GPU with `uuid`.
    pub fn inject_ecc_dbe(&self, uuid: &str) -> Result<u64, SimError> {
        let dev = self.device_by_uuid_or_err(uuid)?;
        Ok(self.raise(dev, GpuEvent::EccDoubleBit))
    }

    fn device_by_uuid_or_err(&self, uuid: &str) -> Result<usize, SimError> {
        self.device_by_uuid(uuid)
            .ok_or_else(|| SimError::Config(format!("no simulated device has uuid {uuid}")))
    }

    /// Sequence number the next event on `dev` will get: a reader starting here sees only
    /// what happens from now on.
    pub fn event_head(&self, dev: usize) -> u64 {
        self.dev_events(dev).head.load(Ordering::SeqCst)
    }

    /// Events on `dev` from sequence `from` on, and where to read next. Events already
    /// overwritten are skipped; one still being written ends the batch (it is read next time).
    pub fn events_since(&self, dev: usize, from: u64) -> (Vec<GpuEvent>, u64) {
        let d = self.dev_events(dev);
        let head = d.head.load(Ordering::SeqCst);
        let mut out = Vec::new();
        let mut idx = from.max(head.saturating_sub(EVENT_RING as u64));
        while idx < head {
            let e = &d.ring[(idx % EVENT_RING as u64) as usize];
            let mut spins = 0;
            let settled = loop {
                let s1 = e.seq.load(Ordering::SeqCst);
                if s1 > 2 * idx + 2 {
                    break None; // overwritten by a later round
                }
                if s1 < 2 * idx + 2 {
                    // Its writer is between taking the index and finishing: a few stores.
                    if spins < 1000 {
                        spins += 1;
                        std::hint::spin_loop();
                        continue;
                    }
                    return (out, idx);
                }
                let v = (
                    e.kind.load(Ordering::SeqCst),
                    e.data.load(Ordering::SeqCst),
                    e.instance.load(Ordering::SeqCst),
                );
                if e.seq.load(Ordering::SeqCst) == s1 {
                    break Some(v);
                }
            };
            if let Some(ev) = settled.and_then(|(k, d, i)| GpuEvent::decode(k, d, i)) {
                out.push(ev);
            }
            idx += 1;
        }
        (out, idx)
    }

    /// The machine-wide event count, to pass to [`Sim::wait_events`].
    pub fn event_generation(&self) -> u32 {
        self.sh().events.raised.load(Ordering::SeqCst)
    }

    /// Sleeps until an event is raised on any device after `seen` was read, or `timeout`
    /// passes (it may return early; callers re-check).
    pub fn wait_events(&self, seen: u32, timeout: std::time::Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        let w = &self.sh().events.raised;
        // SAFETY: a futex wait on a word of the shared mapping, bounded by the timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                w.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                &ts as *const libc::timespec,
                0usize,
                0u32,
            );
        }
    }

    /// Makes `dev` fall off the bus (NVML answers `GPU_IS_LOST` for it) or come back.
    pub fn set_lost(&self, dev: usize, lost: bool) {
        self.dev_events(dev)
            .lost
            .store(u64::from(lost), Ordering::SeqCst);
        // Waiters re-check and see the lost device.
        self.sh().events.raised.fetch_add(1, Ordering::SeqCst);
    }

    pub fn is_lost(&self, dev: usize) -> bool {
        self.dev_events(dev).lost.load(Ordering::SeqCst) != 0
    }
}

fn overlap(s: u64, e: u64, from: u64, to: u64) -> u64 {
    e.min(to).saturating_sub(s.max(from))
}

#[cfg(test)]
mod tests;

//! The tenant ledger: one shared-memory file per tenant, mapped by every process of the tenant
//! (through the interposer) and by gpuslice's own tools (`run`, the node agent, `top`).
//!
//! Layout, all little-endian atomics in one file:
//!
//! ```text
//! Header     magic, version, limits (cap per device, context overhead), allow-list of GPU UUIDs
//! Devices    [DEVICES] entries, claimed lazily by UUID the first time any process uses that GPU
//! Slots      [SLOTS] per-process slots: pid, and one Counter of bytes per device entry
//! ```
//!
//! Guarantees (see `gpuslice_shm` for the mechanism):
//! * a reservation is granted only if the tenant's total on that device stays within the cap,
//!   also when processes race for the last bytes;
//! * a process's charge lives in its own slot, which the kernel-held slot lock ties to the
//!   process's life: when it dies, anybody may reset the slot, and nothing else is touched;
//! * no counter can go below zero, and nothing here ever blocks.
//!
//! Devices are keyed by UUID, not ordinal: a child process that narrows `CUDA_VISIBLE_DEVICES`
//! (as launchers of distributed jobs do) renumbers devices, but a GPU's UUID stays the same.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod limits;
pub use limits::Limits;
mod shared;
pub use shared::{SHARED, Share};

use gpuslice_shm::{Counter, MappedFile, Reservation};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

pub const MAGIC: u64 = u64::from_le_bytes(*b"GPUSLDG1");
pub const VERSION: u32 = 2;
/// Device entries per tenant: more GPUs than any node has.
pub const DEVICES: usize = 16;
/// Process slots per tenant: concurrent processes of one tenant.
pub const SLOTS: usize = 1024;
const MAX_ALLOWED: usize = 16;
const NAME_LEN: usize = 64;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    allowed_count: AtomicU32,
    memory_cap: AtomicU64,
    context_overhead: AtomicU64,
    slots_high_water: AtomicU32,
    _pad: AtomicU32,
    name: [AtomicU64; NAME_LEN / 8],
    allowed: [[AtomicU64; 2]; MAX_ALLOWED],
    /// The tenant's compute limits, packed (see [`ComputeSpec::pack`]); 0 = none configured.
    compute: AtomicU64,
    /// A random non-zero id naming the tenant in per-device compute regions.
    tenant_id: AtomicU64,
    /// Space kept for later limits without a format change.
    _reserved: [AtomicU64; 30],
}

#[repr(C)]
struct DeviceEntry {
    /// 0 = unused; otherwise a non-zero key derived from the UUID. One CAS claims the entry.
    key: AtomicU64,
    uuid: [AtomicU64; 2],
    cap: AtomicU64,
    peak: AtomicU64,
    refusals: AtomicU64,
    _reserved: [AtomicU64; 2],
}

#[repr(C)]
struct Slot {
    pid: AtomicU32,
    active: AtomicU32,
    refusals: AtomicU64,
    mem: [Counter; DEVICES],
    /// Shared entries this process holds, one bit each (`shared.rs`).
    holds: [AtomicU64; shared::HOLD_WORDS],
    _reserved: [AtomicU64; 2],
}

const fn align64(x: usize) -> usize {
    (x + 63) & !63
}
const DEV_OFF: usize = align64(size_of::<Header>());
const SLOT_OFF: usize = align64(DEV_OFF + DEVICES * size_of::<DeviceEntry>());
const SLOT_SIZE: usize = align64(size_of::<Slot>());
const SHARED_OFF: usize = SLOT_OFF + SLOTS * SLOT_SIZE;
pub const FILE_LEN: usize = SHARED_OFF + shared::TABLE_LEN;

/// What a tenant is given, as the ledger stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    pub name: String,
    /// Bytes per device.
    pub memory_cap: u64,
    /// Bytes charged per live context.
    pub context_overhead: u64,
    /// GPU UUIDs the tenant may use; empty means every GPU it can see.
    pub allowed: Vec<[u8; 16]>,
}

// Hand-written rather than derived: the interposer links this crate and stays free of
// proc-macro dependencies.
#[derive(Debug)]
pub enum LedgerError {
    Io(io::Error),
    Invalid(String),
}

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerError::Io(e) => write!(f, "{e}"),
            LedgerError::Invalid(s) => f.write_str(s),
        }
    }
}
impl std::error::Error for LedgerError {}
impl From<io::Error> for LedgerError {
    fn from(e: io::Error) -> Self {
        LedgerError::Io(e)
    }
}

/// A tenant's compute limits as the ledger stores them: plain codes, so that the interposer
/// needs no domain crate. Codes: mode 0 best-effort, 1 fixed, 2 equal; priority 0 high,
/// 1 normal, 2 low; quota 1-100 percent, or 0 for none given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputeSpec {
    pub quota: u8,
    pub mode: u8,
    pub priority: u8,
}

impl ComputeSpec {
    const PRESENT: u64 = 1 << 63;

    fn pack(self) -> u64 {
        Self::PRESENT | self.quota as u64 | (self.mode as u64) << 8 | (self.priority as u64) << 16
    }

    fn unpack(w: u64) -> Result<Option<ComputeSpec>, String> {
        if w == 0 {
            return Ok(None);
        }
        let c = ComputeSpec {
            quota: w as u8,
            mode: (w >> 8) as u8,
            priority: (w >> 16) as u8,
        };
        if w & Self::PRESENT == 0 || c.quota > 100 || c.mode > 2 || c.priority > 2 {
            return Err("corrupt compute limits".into());
        }
        Ok(Some(c))
    }
}

/// Index of a device entry in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dev(pub usize);

/// A process's claim on its slot; the slot is ours while the file stays mapped by this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotId(pub usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub cap: u64,
    pub used: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUsage {
    pub uuid: [u8; 16],
    pub cap: u64,
    pub used: u64,
    pub peak: u64,
    pub refusals: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUsage {
    pub slot: usize,
    pub pid: u32,
    /// Bytes per device entry, indexed like [`Ledger::devices`].
    pub bytes: Vec<u64>,
}

pub struct Ledger {
    file: MappedFile,
    /// Limits from the tenant's authority. When present they, not the file's header (which the
    /// tenant's processes can write), decide caps, the allow-list and compute settings.
    authority: Option<Limits>,
    /// Per device entry, as this process resolved it: 0 unknown, 1 allowed, 2 not allowed.
    /// Kept locally so that a cap never depends on whether another process has finished
    /// writing the entry's UUID.
    resolved: [std::sync::atomic::AtomicU8; DEVICES],
}

fn uuid_key(uuid: &[u8; 16]) -> u64 {
    let lo = u64::from_le_bytes(uuid[..8].try_into().unwrap());
    let hi = u64::from_le_bytes(uuid[8..].try_into().unwrap());
    // Never 0, which marks an unused entry.
    (lo ^ hi.rotate_left(29)) | 1
}

fn uuid_words(uuid: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_le_bytes(uuid[..8].try_into().unwrap()),
        u64::from_le_bytes(uuid[8..].try_into().unwrap()),
    ]
}

fn words_uuid(w: [u64; 2]) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&w[0].to_le_bytes());
    u[8..].copy_from_slice(&w[1].to_le_bytes());
    u
}

impl Ledger {
    /// Creates the ledger file for a new tenant. Fails if one already exists at `path`.
    pub fn create(path: &Path, spec: &TenantSpec) -> Result<Ledger, LedgerError> {
        if spec.memory_cap == 0 {
            return Err(LedgerError::Invalid(
                "memory cap must be at least one byte".into(),
            ));
        }
        if spec.allowed.len() > MAX_ALLOWED {
            return Err(LedgerError::Invalid(format!(
                "at most {MAX_ALLOWED} devices per tenant"
            )));
        }
        if path.exists() {
            return Err(LedgerError::Invalid(format!(
                "{} already exists",
                path.display()
            )));
        }
        let mut created = false;
        let file = MappedFile::open_or_create(path, FILE_LEN, 0o600, |m| {
            created = true;
            init(unsafe { m.at::<Header>(0) }, spec);
        })?;
        if !created {
            return Err(LedgerError::Invalid(format!(
                "{} was created concurrently by someone else",
                path.display()
            )));
        }
        Ok(Ledger {
            file,
            authority: None,
            resolved: Default::default(),
        })
    }
}

fn init(h: &Header, spec: &TenantSpec) {
    {
        h.version.store(VERSION, SeqCst);
        h.memory_cap.store(spec.memory_cap, SeqCst);
        h.context_overhead.store(spec.context_overhead, SeqCst);
        let mut name = [0u8; NAME_LEN];
        let n = spec.name.len().min(NAME_LEN - 1);
        name[..n].copy_from_slice(&spec.name.as_bytes()[..n]);
        for (i, w) in h.name.iter().enumerate() {
            w.store(
                u64::from_le_bytes(name[i * 8..i * 8 + 8].try_into().unwrap()),
                SeqCst,
            );
        }
        for (slot, uuid) in h.allowed.iter().zip(&spec.allowed) {
            let w = uuid_words(uuid);
            slot[0].store(w[0], SeqCst);
            slot[1].store(w[1], SeqCst);
        }
        h.allowed_count.store(spec.allowed.len() as u32, SeqCst);
        // Magic last: a reader that sees it sees everything above.
        h.magic.store(MAGIC, SeqCst);
    }
}

impl Ledger {
    /// Opens an existing ledger, refusing anything that is not a complete ledger of this version.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Self::checked(MappedFile::open(path, FILE_LEN), path)
    }

    /// The ledger behind a descriptor handed over by the tenant's authority, bound to the
    /// limits that came with it: from then on the file's header decides nothing.
    pub fn from_fd(
        fd: std::os::fd::OwnedFd,
        label: &Path,
        limits: Limits,
    ) -> Result<Ledger, LedgerError> {
        let mut l = Self::checked(MappedFile::from_fd(fd, FILE_LEN, label), label)?;
        l.authority = Some(limits);
        Ok(l)
    }

    fn checked(file: io::Result<MappedFile>, path: &Path) -> Result<Ledger, LedgerError> {
        let file = file.map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => LedgerError::Invalid(format!(
                "{} is not a gpuslice ledger (too short)",
                path.display()
            )),
            _ => LedgerError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        })?;
        let l = Ledger {
            file,
            authority: None,
            resolved: Default::default(),
        };
        let h = l.header();
        if h.magic.load(SeqCst) != MAGIC {
            return Err(LedgerError::Invalid(format!(
                "{} is not a gpuslice ledger (bad magic)",
                path.display()
            )));
        }
        let v = h.version.load(SeqCst);
        if v != VERSION {
            return Err(LedgerError::Invalid(format!(
                "{} has ledger version {v}; this build reads version {VERSION}",
                path.display()
            )));
        }
        if h.memory_cap.load(SeqCst) == 0 {
            return Err(LedgerError::Invalid(format!(
                "{} has no memory cap",
                path.display()
            )));
        }
        if h.allowed_count.load(SeqCst) as usize > MAX_ALLOWED {
            return Err(LedgerError::Invalid(format!(
                "{} has a corrupt device allow-list",
                path.display()
            )));
        }
        Ok(l)
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    fn header(&self) -> &Header {
        unsafe { self.file.at::<Header>(0) }
    }
    fn device(&self, d: Dev) -> &DeviceEntry {
        unsafe {
            self.file
                .at::<DeviceEntry>(DEV_OFF + d.0 * size_of::<DeviceEntry>())
        }
    }
    fn slot(&self, i: usize) -> &Slot {
        unsafe { self.file.at::<Slot>(SLOT_OFF + i * SLOT_SIZE) }
    }

    pub fn spec(&self) -> TenantSpec {
        if let Some(a) = &self.authority {
            return a.spec.clone();
        }
        let h = self.header();
        let mut name = Vec::with_capacity(NAME_LEN);
        for w in &h.name {
            name.extend_from_slice(&w.load(SeqCst).to_le_bytes());
        }
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let n = (h.allowed_count.load(SeqCst) as usize).min(MAX_ALLOWED);
        TenantSpec {
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            memory_cap: h.memory_cap.load(SeqCst),
            context_overhead: h.context_overhead.load(SeqCst),
            allowed: h.allowed[..n]
                .iter()
                .map(|w| words_uuid([w[0].load(SeqCst), w[1].load(SeqCst)]))
                .collect(),
        }
    }

    /// Records the tenant's compute limits and gives it an id; done by the ledger's creator
    /// before any tenant process starts.
    pub fn set_compute(&self, c: ComputeSpec) -> Result<(), LedgerError> {
        if c.quota > 100 || c.mode > 2 || c.priority > 2 {
            return Err(LedgerError::Invalid(format!(
                "invalid compute limits {c:?}"
            )));
        }
        let h = self.header();
        let mut id = 0;
        while id == 0 {
            id = gpuslice_shm::random_u64();
        }
        h.tenant_id.store(id, SeqCst);
        h.compute.store(c.pack(), SeqCst);
        Ok(())
    }

    /// The tenant's compute limits; `Ok(None)` if none were recorded.
    pub fn compute(&self) -> Result<Option<ComputeSpec>, LedgerError> {
        if let Some(a) = &self.authority {
            return Ok(a.compute);
        }
        ComputeSpec::unpack(self.header().compute.load(SeqCst))
            .map_err(|e| LedgerError::Invalid(format!("{}: {e}", self.path().display())))
    }

    pub fn tenant_id(&self) -> u64 {
        if let Some(a) = &self.authority {
            return a.tenant_id;
        }
        self.header().tenant_id.load(SeqCst)
    }

    pub fn context_overhead(&self) -> u64 {
        if let Some(a) = &self.authority {
            return a.spec.context_overhead;
        }
        self.header().context_overhead.load(SeqCst)
    }

    fn is_allowed(&self, uuid: &[u8; 16]) -> bool {
        if let Some(a) = &self.authority {
            return a.spec.allowed.is_empty() || a.spec.allowed.contains(uuid);
        }
        let h = self.header();
        let n = (h.allowed_count.load(SeqCst) as usize).min(MAX_ALLOWED);
        let w = uuid_words(uuid);
        n == 0
            || h.allowed[..n]
                .iter()
                .any(|a| a[0].load(SeqCst) == w[0] && a[1].load(SeqCst) == w[1])
    }

    /// The entry for the GPU with this UUID, claimed on first use. A GPU outside the tenant's
    /// allow-list gets a cap of zero: it is visible, but nothing can be allocated on it.
    pub fn device_for(&self, uuid: &[u8; 16]) -> Result<Dev, LedgerError> {
        let d = self.claim_device(uuid)?;
        let flag = if self.is_allowed(uuid) { 1 } else { 2 };
        self.resolved[d.0].store(flag, SeqCst);
        Ok(d)
    }

    fn claim_device(&self, uuid: &[u8; 16]) -> Result<Dev, LedgerError> {
        let key = uuid_key(uuid);
        for i in 0..DEVICES {
            let e = self.device(Dev(i));
            match e.key.compare_exchange(0, key, SeqCst, SeqCst) {
                Ok(_) => {
                    let w = uuid_words(uuid);
                    e.uuid[0].store(w[0], SeqCst);
                    e.uuid[1].store(w[1], SeqCst);
                    let cap = if self.is_allowed(uuid) {
                        self.memory_cap()
                    } else {
                        0
                    };
                    e.cap.store(cap, SeqCst);
                    return Ok(Dev(i));
                }
                Err(k) if k == key => return Ok(Dev(i)),
                Err(_) => continue,
            }
        }
        Err(LedgerError::Invalid(format!(
            "more than {DEVICES} GPUs used by one tenant"
        )))
    }

    /// The cap of a device entry. It is derived from the header when the entry was claimed; an
    /// entry read before its claimer stored the cap reports the header's cap (or 0 if the GPU is
    /// not allowed), so there is no window in which a device looks unlimited.
    pub fn cap(&self, d: Dev) -> u64 {
        let e = self.device(d);
        if self.authority.is_some() {
            match self.resolved[d.0].load(SeqCst) {
                1 => return self.memory_cap(),
                2 => return 0,
                _ => {}
            }
            let uuid = words_uuid([e.uuid[0].load(SeqCst), e.uuid[1].load(SeqCst)]);
            return if uuid != [0; 16] && self.is_allowed(&uuid) {
                self.memory_cap()
            } else {
                0
            };
        }
        let c = e.cap.load(SeqCst);
        if c != 0 {
            return c;
        }
        let uuid = words_uuid([e.uuid[0].load(SeqCst), e.uuid[1].load(SeqCst)]);
        if uuid != [0; 16] && self.is_allowed(&uuid) {
            self.header().memory_cap.load(SeqCst)
        } else {
            0
        }
    }

    fn memory_cap(&self) -> u64 {
        match &self.authority {
            Some(a) => a.spec.memory_cap,
            None => self.header().memory_cap.load(SeqCst),
        }
    }

    /// The limits the file records, for whoever creates the tenant's authority from it.
    pub fn limits(&self) -> Result<Limits, LedgerError> {
        let tenant_id = match self.tenant_id() {
            0 => 1,
            id => id,
        };
        Ok(Limits {
            spec: self.spec(),
            compute: self.compute()?,
            tenant_id,
        })
    }

    fn high_water(&self) -> usize {
        (self.header().slots_high_water.load(SeqCst) as usize).min(SLOTS)
    }

    /// Every charge on `d`: each process's own and each shared entry some process holds.
    fn counters(&self, d: Dev) -> impl Iterator<Item = &Counter> {
        (0..self.high_water())
            .map(move |i| &self.slot(i).mem[d.0])
            .chain(self.shared_counters(d))
    }

    /// Bytes the tenant holds on a device, over all its processes.
    pub fn used(&self, d: Dev) -> u64 {
        gpuslice_shm::total(self.counters(d))
    }

    /// Claims a process slot for the calling process. The slot is held until the process exits
    /// (or the mapping is dropped); anything a dead predecessor left in it is cleared first.
    pub fn attach_process(&self) -> Result<SlotId, LedgerError> {
        let pid = std::process::id();
        let start = (pid as usize).wrapping_mul(2654435761) % SLOTS;
        for k in 0..SLOTS {
            let i = (start + k) % SLOTS;
            // Only slots we can lock are candidates; a live owner's lock makes this fail.
            if self.file.claim_slot(i)? {
                let s = self.slot(i);
                // What a dead predecessor held (a live process's hold on the same entry
                // keeps its charge).
                let _ = self.drop_holds(i);
                for c in &s.mem {
                    c.reset();
                }
                s.refusals.store(0, SeqCst);
                s.pid.store(pid, SeqCst);
                s.active.store(1, SeqCst);
                self.header()
                    .slots_high_water
                    .fetch_max(i as u32 + 1, SeqCst);
                return Ok(SlotId(i));
            }
        }
        Err(LedgerError::Invalid(format!(
            "all {SLOTS} process slots of this tenant are in use"
        )))
    }

    /// Gives the slot back at a clean exit; its charges must already be released.
    pub fn detach_process(&self, s: SlotId) {
        let _ = self.drop_holds(s.0);
        let slot = self.slot(s.0);
        slot.active.store(0, SeqCst);
        slot.pid.store(0, SeqCst);
        let _ = self.file.release_slot(s.0);
    }

    /// Charges `n` bytes on `d` to this process if the tenant stays within its cap.
    pub fn reserve(&self, s: SlotId, d: Dev, n: u64) -> Result<(), Refused> {
        let cap = self.cap(d);
        let mine = &self.slot(s.0).mem[d.0];
        let mut r = gpuslice_shm::try_reserve(mine, || self.counters(d), cap, n);
        if matches!(r, Reservation::Refused { .. }) && self.reclaim_dead(Some(s)) > 0 {
            // A dead process's memory was just returned: that may be what we were short of.
            r = gpuslice_shm::try_reserve(mine, || self.counters(d), cap, n);
        }
        match r {
            Reservation::Granted { total } => {
                self.device(d).peak.fetch_max(total, SeqCst);
                Ok(())
            }
            Reservation::Refused { used } => {
                self.device(d).refusals.fetch_add(1, SeqCst);
                self.slot(s.0).refusals.fetch_add(1, SeqCst);
                Err(Refused { cap, used })
            }
        }
    }

    /// Returns `n` bytes on `d` that this process held; never below zero.
    pub fn release(&self, s: SlotId, d: Dev, n: u64) {
        self.slot(s.0).mem[d.0].release(n);
    }

    /// Adds `n` bytes on `d` to this process's charge without a cap check: for memory the driver
    /// already handed out (a pool that grew by more than was asked).
    pub fn charge_unchecked(&self, s: SlotId, d: Dev, n: u64) {
        self.slot(s.0).mem[d.0].add(n);
        self.device(d).peak.fetch_max(self.used(d), SeqCst);
    }

    /// Bytes this process holds on `d`.
    pub fn held(&self, s: SlotId, d: Dev) -> u64 {
        self.slot(s.0).mem[d.0].charged()
    }

    /// Resets the slots of processes that died, returning their memory to the tenant.
    /// `skip` is the caller's own slot (a process always "holds" its own lock). Returns bytes freed.
    pub fn reclaim_dead(&self, skip: Option<SlotId>) -> u64 {
        let mut freed = 0;
        for i in 0..self.high_water() {
            if skip.map(|s| s.0) == Some(i) {
                continue;
            }
            let s = self.slot(i);
            let charged: u64 = s.mem.iter().map(|c| c.charged()).sum();
            let holds = s.holds.iter().any(|w| w.load(SeqCst) != 0);
            if charged == 0 && !holds && s.active.load(SeqCst) == 0 {
                continue;
            }
            // Taking the slot's lock succeeds only if its owner is gone.
            if let Ok(true) = self.file.claim_slot(i) {
                // Shared entries first: a reclaimer killed here leaves the counters, so the
                // next one still finds the slot worth reclaiming. An entry another live
                // process holds keeps its charge.
                freed += self.drop_holds(i);
                for c in &s.mem {
                    freed += c.reset();
                }
                s.active.store(0, SeqCst);
                s.pid.store(0, SeqCst);
                let _ = self.file.release_slot(i);
            }
        }
        freed
    }

    pub fn devices(&self) -> Vec<DeviceUsage> {
        (0..DEVICES)
            .map(Dev)
            .filter(|&d| self.device(d).key.load(SeqCst) != 0)
            .map(|d| {
                let e = self.device(d);
                DeviceUsage {
                    uuid: words_uuid([e.uuid[0].load(SeqCst), e.uuid[1].load(SeqCst)]),
                    cap: self.cap(d),
                    used: self.used(d),
                    peak: e.peak.load(SeqCst),
                    refusals: e.refusals.load(SeqCst),
                }
            })
            .collect()
    }

    /// Live or not-yet-reclaimed processes with their charges.
    pub fn processes(&self) -> Vec<ProcessUsage> {
        let ndev = self.devices().len();
        (0..self.high_water())
            .filter_map(|i| {
                let s = self.slot(i);
                let bytes: Vec<u64> = s.mem[..ndev].iter().map(|c| c.charged()).collect();
                (s.active.load(SeqCst) != 0 || bytes.iter().any(|&b| b > 0)).then(|| ProcessUsage {
                    slot: i,
                    pid: s.pid.load(SeqCst),
                    bytes,
                })
            })
            .collect()
    }

    /// Pids of the processes holding a live slot in this ledger, as the kernel reports the slot
    /// locks' holders (in the caller's PID namespace; holders not visible there are left out).
    /// The caller's own slot, if it holds one, is not reported by the kernel: add its own pid.
    pub fn live_pids(&self) -> Vec<u32> {
        let mut out: Vec<u32> = (0..self.high_water())
            .filter_map(|i| self.file.slot_holder(i).ok().flatten())
            .filter(|&pid| pid != 0)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Refusals counted for the tenant, all devices.
    pub fn refusals(&self) -> u64 {
        (0..DEVICES)
            .map(|d| self.device(Dev(d)).refusals.load(SeqCst))
            .sum()
    }
}

/// Formats a UUID the way NVML and `nvidia-smi` print it: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses NVML's UUID form (with or without the `GPU-`/`MIG-` prefix and dashes).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    let s = s
        .strip_prefix("GPU-")
        .or_else(|| s.strip_prefix("MIG-"))
        .unwrap_or(s);
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gpuslice-ledger-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    fn spec(cap: u64) -> TenantSpec {
        TenantSpec {
            name: "t".into(),
            memory_cap: cap,
            context_overhead: 0,
            allowed: vec![],
        }
    }

    const GPU0: [u8; 16] = [7; 16];

    #[test]
    fn create_open_and_spec_round_trip() {
        let p = tmp("rt");
        let s = TenantSpec {
            name: "team-a".into(),
            memory_cap: 4 << 30,
            context_overhead: 1 << 28,
            allowed: vec![GPU0],
        };
        Ledger::create(&p, &s).unwrap();
        assert!(
            Ledger::create(&p, &s).is_err(),
            "never silently reuses an existing ledger"
        );
        assert_eq!(Ledger::open(&p).unwrap().spec(), s);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn refuses_files_that_are_not_ledgers() {
        let p = tmp("junk");
        std::fs::write(&p, vec![0xAB; FILE_LEN]).unwrap();
        let e = Ledger::open(&p).err().unwrap().to_string();
        assert!(e.contains("not a gpuslice ledger"), "{e}");
        std::fs::write(&p, b"short").unwrap();
        assert!(Ledger::open(&p).is_err());
        std::fs::remove_file(&p).unwrap();
        assert!(Ledger::open(&p).is_err());
        assert!(
            Ledger::create(&p, &spec(0)).is_err(),
            "a zero cap is refused, not unlimited"
        );
    }

    #[test]
    fn reserve_release_and_cap() {
        let p = tmp("cap");
        let l = Ledger::create(&p, &spec(1000)).unwrap();
        let s = l.attach_process().unwrap();
        let d = l.device_for(&GPU0).unwrap();
        assert_eq!(l.device_for(&GPU0).unwrap(), d);
        l.reserve(s, d, 600).unwrap();
        assert_eq!(
            l.reserve(s, d, 500),
            Err(Refused {
                cap: 1000,
                used: 600
            })
        );
        l.reserve(s, d, 400).unwrap();
        assert_eq!(l.used(d), 1000);
        l.release(s, d, 5000);
        assert_eq!(l.used(d), 0, "release saturates at zero");
        assert_eq!(l.devices()[0].peak, 1000);
        assert_eq!(l.devices()[0].refusals, 1);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn devices_outside_the_allow_list_get_nothing() {
        let p = tmp("allow");
        let l = Ledger::create(
            &p,
            &TenantSpec {
                allowed: vec![GPU0],
                ..spec(1000)
            },
        )
        .unwrap();
        let s = l.attach_process().unwrap();
        let other = l.device_for(&[9; 16]).unwrap();
        assert_eq!(l.cap(other), 0);
        assert!(l.reserve(s, other, 1).is_err());
        let mine = l.device_for(&GPU0).unwrap();
        assert!(l.reserve(s, mine, 1000).is_ok());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn dead_process_memory_is_reclaimed_and_live_is_not() {
        let p = tmp("dead");
        let l = Ledger::create(&p, &spec(1000)).unwrap();
        let d = l.device_for(&GPU0).unwrap();
        let mut fds = [0; 2];
        unsafe { libc::pipe(fds.as_mut_ptr()) };
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let l = Ledger::open(&p).unwrap();
            let s = l.attach_process().unwrap();
            l.reserve(s, d, 700).unwrap();
            unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
            loop {
                unsafe { libc::pause() };
            }
        }
        let mut b = [0u8];
        unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        let me = l.attach_process().unwrap();
        assert_eq!(l.used(d), 700);
        assert_eq!(
            l.reclaim_dead(Some(me)),
            0,
            "a live process keeps its memory"
        );
        assert!(l.reserve(me, d, 400).is_err());
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0)
        };
        // The refused reservation reclaims on its own before giving up.
        l.reserve(me, d, 400).unwrap();
        assert_eq!(l.used(d), 400);
        assert!(l.processes().iter().all(|p| p.pid != pid as u32));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn live_pids_come_from_the_kernel_not_the_slot() {
        let p = tmp("live");
        let l = Ledger::create(&p, &spec(1000)).unwrap();
        let mut fds = [0; 2];
        unsafe { libc::pipe(fds.as_mut_ptr()) };
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let l = Ledger::open(&p).unwrap();
            let s = l.attach_process().unwrap();
            // A forged pid word changes nothing: the lock's holder is what counts.
            l.slot(s.0).pid.store(1, SeqCst);
            unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
            loop {
                unsafe { libc::pause() };
            }
        }
        let mut b = [0u8];
        unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        let _me = l.attach_process().unwrap();
        assert_eq!(
            l.live_pids(),
            vec![pid as u32],
            "our own slot is not reported"
        );
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0)
        };
        assert!(l.live_pids().is_empty());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn compute_limits_round_trip() {
        let p = tmp("compute");
        let l = Ledger::create(&p, &spec(1000)).unwrap();
        assert_eq!(l.compute().unwrap(), None);
        let c = ComputeSpec {
            quota: 30,
            mode: 1,
            priority: 2,
        };
        l.set_compute(c).unwrap();
        let o = Ledger::open(&p).unwrap();
        assert_eq!(o.compute().unwrap(), Some(c));
        assert_ne!(o.tenant_id(), 0);
        assert!(l.set_compute(ComputeSpec { quota: 101, ..c }).is_err());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_shared_charge_stays_while_any_process_holds_it_and_counts_once() {
        let p = tmp("shared");
        let l = Ledger::create(&p, &spec(1000)).unwrap();
        let d = l.device_for(&GPU0).unwrap();
        let key = [7, 9];
        let mut fds = [0; 2];
        unsafe { libc::pipe(fds.as_mut_ptr()) };
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // The exporter: charges 600, shares it, then waits to be killed.
            let l = Ledger::open(&p).unwrap();
            let s = l.attach_process().unwrap();
            l.reserve(s, d, 600).unwrap();
            l.share_export(s, d, key, 600).unwrap();
            unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
            loop {
                unsafe { libc::pause() };
            }
        }
        let mut b = [0u8];
        unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        let me = l.attach_process().unwrap();
        assert_eq!(l.used(d), 600, "moved into the entry, counted once");
        let (sh, jd, n) = l.share_join(me, key).unwrap();
        assert_eq!((jd, n, l.used(d)), (d, 600, 600), "joining adds nothing");
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0)
        };
        assert_eq!(
            l.reclaim_dead(Some(me)),
            0,
            "still held: nothing comes back"
        );
        assert_eq!(l.used(d), 600, "the dead exporter's memory stays charged");
        assert!(l.reserve(me, d, 401).is_err());
        l.share_drop(me, sh);
        assert_eq!(l.used(d), 0, "gone with its last holder");
        assert!(
            l.share_join(me, key).is_none(),
            "and cannot be joined again"
        );
        assert!(
            l.share_import(me, d, key, 1001).is_err(),
            "an import is capped"
        );
        assert_eq!(l.used(d), 0, "a refused import leaves nothing");
        let sh = l.share_import(me, d, key, 1000).unwrap().unwrap();
        assert_eq!(l.used(d), 1000);
        l.detach_process(me);
        assert_eq!(l.used(d), 0, "a detached process lets go");
        let _ = sh;
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn uuid_text_round_trips() {
        let u = [0x5e, 0x1f, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
        let s = format_uuid(&u);
        assert_eq!(s, "GPU-5e1f0001-0203-0405-0607-08090a0b0c0d");
        assert_eq!(parse_uuid(&s), Some(u));
        assert_eq!(parse_uuid("GPU-zz"), None);
    }
}

//! The calling process's membership in its tenant: the mapped ledger, its process slot, and
//! what it has allocated (so frees give back exactly what was charged).

use gpuslice_cuda_abi::driver::*;
use gpuslice_ledger::{ComputeSpec, Dev, Ledger, SlotId};
use gpuslice_warden::client::Authority;
use std::collections::HashMap;
use std::ffi::c_int;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::real::call_real;

/// The error every governed call returns when the tenant's limits cannot be read: the process
/// must not run unlimited.
pub const CONFIG_ERROR: c_int = CUDA_ERROR_NOT_PERMITTED;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Owner {
    /// Other objects are recorded in `book.rs`, with their owning context.
    Context(usize),
}

#[derive(Default)]
pub struct PoolCharge {
    pub dev: Option<Dev>,
    /// What this process has charged for the pool: its reserved size when last looked at.
    pub charged: u64,
}

/// The tenant's compute settings as its outermost authority gave them.
#[derive(Debug, Clone)]
pub struct ComputeLimits {
    pub spec: ComputeSpec,
    pub tenant_id: u64,
    pub name: String,
}

/// A ledger the process is charged in besides its own: an enclosing tenant's (a nested
/// `gpuslice run`, or a `gpuslice run` inside a container).
struct Outer {
    ledger: Ledger,
    slot: SlotId,
}

pub struct Tenant {
    /// The ledger of the nearest authority: the tenant the process belongs to.
    pub ledger: Ledger,
    pub slot: SlotId,
    /// Enclosing tenants, outermost first; every charge is made in each of them too.
    outer: Vec<Outer>,
    /// A device entry of `ledger` → the same GPU's entry in each of `outer`.
    outer_devs: Mutex<HashMap<usize, Vec<Dev>>>,
    /// Every authority, outermost first; they hold the connections that tell a warden when
    /// this process exits.
    authorities: Vec<Authority>,
    /// From the outermost authority that sets compute limits: nesting never widens a share.
    pub compute: Option<ComputeLimits>,
    ordinals: Mutex<HashMap<CUdevice, Dev>>,
    pub owned: Mutex<HashMap<Owner, (Dev, u64)>>,
    /// Keyed by pool handle. Also serialises allocations from one pool, so the growth seen
    /// around a call is that call's.
    pub pools: Mutex<HashMap<usize, PoolCharge>>,
    pub primary: Mutex<HashMap<CUdevice, u32>>,
    /// Every charged object with its owner (`book.rs`).
    pub book: crate::book::Book,
}

/// The tenant state of this process; reset in a forked child (it holds no slot of its own yet).
static CURRENT: AtomicPtr<Result<Tenant, String>> = AtomicPtr::new(std::ptr::null_mut());
/// A spin flag rather than a mutex: a forked child must be able to reset it.
static INITIALIZING: AtomicBool = AtomicBool::new(false);

pub extern "C" fn after_fork_in_child() {
    // The parent's state (and any lock another thread held in it) is abandoned, not freed. Its
    // warden connections are the parent's: closing them here would tell a warden the parent
    // exited, so they are only forgotten; the child makes its own.
    let p = CURRENT.swap(std::ptr::null_mut(), Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: `p` came from Box::into_raw in `tenant()` and is never freed, so it is valid;
        // only the mutexes inside are touched, which `forget_connection` tolerates poisoned.
        if let Ok(t) = unsafe { &*p } {
            for a in &t.authorities {
                a.forget_connection();
            }
        }
    }
    INITIALIZING.store(false, Ordering::SeqCst);
    crate::compute::after_fork();
}

fn load() -> Result<Tenant, String> {
    let mut auths = gpuslice_warden::client::discover()?;
    if auths.is_empty() {
        return Err(format!(
            "no gpuslice limits: this process was not started by `gpuslice run` and no container limits are mounted at {}",
            gpuslice_warden::CONTAINER_DIR
        ));
    }
    let compute = auths.iter().find_map(|a| {
        a.limits.compute.map(|spec| ComputeLimits {
            spec,
            tenant_id: a.limits.tenant_id,
            name: a.limits.spec.name.clone(),
        })
    });
    let mut members = Vec::with_capacity(auths.len());
    for a in &mut auths {
        let label = PathBuf::from(format!("the ledger of {}", a.source));
        let fd: OwnedFd = a
            .take_ledger()
            .ok_or_else(|| format!("{} sent no ledger", a.source))?;
        let ledger = Ledger::from_fd(fd, &label, a.limits.clone())
            .map_err(|e| format!("{}: {e}", a.source))?;
        let slot = ledger
            .attach_process()
            .map_err(|e| format!("tenant ledger of {}: {e}", a.source))?;
        members.push(Outer { ledger, slot });
    }
    let Outer { ledger, slot } = members.pop().expect("at least one authority");
    Ok(Tenant {
        ledger,
        slot,
        outer: members,
        outer_devs: Mutex::default(),
        authorities: auths,
        compute,
        ordinals: Mutex::default(),
        owned: Mutex::default(),
        pools: Mutex::default(),
        primary: Mutex::default(),
        book: Default::default(),
    })
}

/// This process's tenant, loading it on first use. A broken configuration is reported once on
/// stderr and then answered with [`CONFIG_ERROR`] by every governed call.
pub fn tenant() -> Result<&'static Tenant, c_int> {
    let mut p = CURRENT.load(Ordering::Acquire);
    if p.is_null() {
        while INITIALIZING
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        p = CURRENT.load(Ordering::Acquire);
        if p.is_null() {
            let t = load();
            if let Err(msg) = &t {
                eprintln!("gpuslice: {msg}; refusing CUDA in this process");
            }
            p = Box::into_raw(Box::new(t));
            CURRENT.store(p, Ordering::Release);
        }
        INITIALIZING.store(false, Ordering::Release);
    }
    match unsafe { &*p } {
        Ok(t) => Ok(t),
        Err(_) => Err(CONFIG_ERROR),
    }
}

pub(crate) fn device_uuid(ordinal: CUdevice) -> Result<[u8; 16], c_int> {
    type GetUuid = unsafe extern "C" fn(*mut CUuuid, CUdevice) -> CUresult;
    let mut u = CUuuid::default();
    let mut r = call_real!(CUDA, cuDeviceGetUuid_v2: GetUuid, &mut u, ordinal);
    if r == CUDA_ERROR_NOT_FOUND {
        r = call_real!(CUDA, cuDeviceGetUuid: GetUuid, &mut u, ordinal);
    }
    if r != CUDA_SUCCESS {
        return Err(r);
    }
    Ok(u.bytes.map(|b| b as u8))
}

impl Tenant {
    /// The ledger entry of device `ordinal` (as this process numbers it).
    pub fn dev(&self, ordinal: CUdevice) -> Result<Dev, c_int> {
        if let Some(d) = self.ordinals.lock().unwrap().get(&ordinal) {
            return Ok(*d);
        }
        let uuid = device_uuid(ordinal)?;
        let d = self.dev_for_uuid(&uuid).map_err(|e| {
            eprintln!("gpuslice: {e}");
            CUDA_ERROR_OUT_OF_MEMORY
        })?;
        self.ordinals.lock().unwrap().insert(ordinal, d);
        Ok(d)
    }

    /// The ledger entry of the GPU with this UUID, in this tenant's ledger and every
    /// enclosing one.
    pub fn dev_for_uuid(&self, uuid: &[u8; 16]) -> Result<Dev, gpuslice_ledger::LedgerError> {
        let d = self.ledger.device_for(uuid)?;
        if !self.outer.is_empty() {
            let mut m = self.outer_devs.lock().unwrap_or_else(|e| e.into_inner());
            if let std::collections::hash_map::Entry::Vacant(e) = m.entry(d.0) {
                let devs = self
                    .outer
                    .iter()
                    .map(|o| o.ledger.device_for(uuid))
                    .collect::<Result<Vec<_>, _>>()?;
                e.insert(devs);
            }
        }
        Ok(d)
    }

    /// Each enclosing ledger with its entry for `dev`. Empty for a tenant that is not nested.
    fn outer_of(&self, dev: Dev) -> Vec<(&Outer, Dev)> {
        if self.outer.is_empty() {
            return Vec::new();
        }
        let m = self.outer_devs.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&dev.0) {
            Some(devs) => self.outer.iter().zip(devs.iter().copied()).collect(),
            // Unreachable: every Dev handed out went through dev_for_uuid. Charge nothing
            // outside rather than guess an entry.
            None => Vec::new(),
        }
    }

    /// This tenant's ledger and every enclosing one, each with this process's slot; with a
    /// device, each ledger's entry for it (for `shared.rs`).
    pub(crate) fn ledgers(&self) -> Vec<(&Ledger, SlotId)> {
        let outer = self.outer.iter().map(|o| (&o.ledger, o.slot));
        std::iter::once((&self.ledger, self.slot))
            .chain(outer)
            .collect()
    }
    pub(crate) fn chain(&self, dev: Dev) -> Vec<(&Ledger, SlotId, Dev)> {
        let outer = self.outer_of(dev).into_iter();
        let outer = outer.map(|(o, d)| (&o.ledger, o.slot, d));
        std::iter::once((&self.ledger, self.slot, dev))
            .chain(outer)
            .collect()
    }

    /// The smallest cap on `dev` among this tenant and the ones enclosing it.
    pub fn cap(&self, dev: Dev) -> u64 {
        self.outer_of(dev)
            .into_iter()
            .map(|(o, d)| o.ledger.cap(d))
            .fold(self.ledger.cap(dev), u64::min)
    }

    /// Bytes the tenant holds on `dev` (its own ledger).
    pub fn used(&self, dev: Dev) -> u64 {
        self.ledger.used(dev)
    }

    /// What can still be allocated on `dev`: the least headroom in the chain of ledgers.
    pub fn available(&self, dev: Dev) -> u64 {
        self.outer_of(dev)
            .into_iter()
            .map(|(o, d)| o.ledger.cap(d).saturating_sub(o.ledger.used(d)))
            .fold(
                self.ledger.cap(dev).saturating_sub(self.ledger.used(dev)),
                u64::min,
            )
    }

    /// The tenant's view of a device: total = its cap (never more than the device), free =
    /// what is left of it in every enclosing tenant too (never more than the device has free).
    pub fn view(&self, dev: Dev, real_free: u64, real_total: u64) -> (u64, u64) {
        let total = self.cap(dev).min(real_total);
        let free = self.available(dev).min(total).min(real_free);
        (free, total)
    }

    /// Charges `bytes` in this tenant's ledger and every enclosing one, or in none.
    pub fn reserve_exact(&self, dev: Dev, bytes: u64) -> Result<(), gpuslice_ledger::Refused> {
        self.ledger.reserve(self.slot, dev, bytes)?;
        let outer = self.outer_of(dev);
        for (i, (o, d)) in outer.iter().enumerate() {
            if let Err(e) = o.ledger.reserve(o.slot, *d, bytes) {
                for (o, d) in &outer[..i] {
                    o.ledger.release(o.slot, *d, bytes);
                }
                self.ledger.release(self.slot, dev, bytes);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether any ledger of the chain holds more than its cap on `dev` (memory the driver
    /// handed out beyond a reservation).
    pub fn over_cap(&self, dev: Dev) -> bool {
        self.ledger.used(dev) > self.ledger.cap(dev)
            || self
                .outer_of(dev)
                .into_iter()
                .any(|(o, d)| o.ledger.used(d) > o.ledger.cap(d))
    }

    /// Returns dead processes' memory in every ledger of the chain.
    pub fn reclaim_dead(&self) {
        self.ledger.reclaim_dead(Some(self.slot));
        for o in &self.outer {
            o.ledger.reclaim_dead(Some(o.slot));
        }
    }

    /// Adds memory the driver already handed out, in every ledger of the chain.
    pub fn charge_unchecked(&self, dev: Dev, bytes: u64) {
        self.ledger.charge_unchecked(self.slot, dev, bytes);
        for (o, d) in self.outer_of(dev) {
            o.ledger.charge_unchecked(o.slot, d, bytes);
        }
    }

    /// A new channel to the compute arbiter of the authority that set the compute limits.
    #[allow(dead_code)] // For the compute arbiter's client, which the gate does not use yet.
    pub fn arbiter_channel(&self) -> Result<OwnedFd, String> {
        let a = self
            .authorities
            .iter()
            .find(|a| a.limits.compute.is_some())
            .ok_or_else(|| "this tenant has no compute limits".to_string())?;
        a.arbiter_channel()
    }

    /// The ledger entry of the current context's device.
    pub fn current_dev(&self) -> Result<(CUdevice, Dev), c_int> {
        let mut ordinal: CUdevice = 0;
        let r = call_real!(CUDA, cuCtxGetDevice: unsafe extern "C" fn(*mut CUdevice) -> CUresult, &mut ordinal);
        if r != CUDA_SUCCESS {
            return Err(r);
        }
        Ok((ordinal, self.dev(ordinal)?))
    }

    /// Charges `bytes`, returning CUDA_ERROR_OUT_OF_MEMORY if the cap does not allow it.
    /// Pools are re-measured first when that is what stands in the way: a pool may have
    /// returned memory to the device since we last looked.
    pub fn reserve(&self, dev: Dev, bytes: u64) -> Result<(), c_int> {
        if self.reserve_exact(dev, bytes).is_ok() {
            return Ok(());
        }
        if crate::memory::reconcile_pools(self) && self.reserve_exact(dev, bytes).is_ok() {
            return Ok(());
        }
        Err(CUDA_ERROR_OUT_OF_MEMORY)
    }

    pub fn release(&self, dev: Dev, bytes: u64) {
        self.ledger.release(self.slot, dev, bytes);
        for (o, d) in self.outer_of(dev) {
            o.ledger.release(o.slot, d, bytes);
        }
    }

    /// Reserve, call the driver, then keep or roll back: the driver is never asked for memory the
    /// ledger has not granted, and a failed call leaves the ledger as it was.
    pub fn charged_call(&self, dev: Dev, bytes: u64, call: impl FnOnce() -> CUresult) -> CUresult {
        if let Err(e) = self.reserve(dev, bytes) {
            return e;
        }
        let r = call();
        if r != CUDA_SUCCESS {
            self.release(dev, bytes);
        }
        r
    }

    pub fn remember(&self, what: Owner, dev: Dev, bytes: u64) {
        self.owned.lock().unwrap().insert(what, (dev, bytes));
    }

    /// Gives back what `what` was charged, if this process charged it.
    pub fn forget(&self, what: Owner) {
        if let Some((dev, bytes)) = self.owned.lock().unwrap().remove(&what) {
            self.release(dev, bytes);
        }
    }
}

/// Runs a hook body, turning a panic (which must never unwind into C) into an error code.
pub fn guard(f: impl FnOnce() -> c_int) -> c_int {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(CUDA_ERROR_UNKNOWN)
}

/// Resolves the tenant or returns its error from the enclosing hook.
macro_rules! tenant_or_return {
    () => {
        match $crate::tenant::tenant() {
            Ok(t) => t,
            Err(e) => return e,
        }
    };
}
pub(crate) use tenant_or_return;

//! The calling process's membership in its tenant: the mapped ledger, its process slot, and
//! what it has allocated (so frees give back exactly what was charged).

use gpuslice_cuda_abi::driver::*;
use gpuslice_ledger::{Dev, Ledger, SlotId};
use std::collections::HashMap;
use std::ffi::c_int;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::real::call_real;

/// Where the node agent mounts a container's ledger; used when `GPUSLICE_LEDGER` is unset, so
/// that programs which clear their environment are still governed.
pub const DEFAULT_LEDGER: &str = "/run/gpuslice/ledger";

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

pub struct Tenant {
    pub ledger: Ledger,
    pub slot: SlotId,
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
    // The parent's state (and any lock another thread held in it) is abandoned, not freed.
    CURRENT.store(std::ptr::null_mut(), Ordering::SeqCst);
    INITIALIZING.store(false, Ordering::SeqCst);
    crate::compute::after_fork();
}

fn load() -> Result<Tenant, String> {
    let (path, from_env) = match std::env::var_os("GPUSLICE_LEDGER") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_LEDGER), false),
    };
    let ledger = Ledger::open(&path).map_err(|e| {
        if from_env {
            format!("cannot use the tenant ledger GPUSLICE_LEDGER={}: {e}", path.display())
        } else {
            format!("no tenant ledger: GPUSLICE_LEDGER is unset and {DEFAULT_LEDGER} is unusable ({e}); start the program with `gpuslice run`")
        }
    })?;
    let slot = ledger
        .attach_process()
        .map_err(|e| format!("tenant ledger {}: {e}", path.display()))?;
    Ok(Tenant {
        ledger,
        slot,
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
        let d = self.ledger.device_for(&uuid).map_err(|e| {
            eprintln!("gpuslice: {e}");
            CUDA_ERROR_OUT_OF_MEMORY
        })?;
        self.ordinals.lock().unwrap().insert(ordinal, d);
        Ok(d)
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
        if self.ledger.reserve(self.slot, dev, bytes).is_ok() {
            return Ok(());
        }
        if crate::memory::reconcile_pools(self)
            && self.ledger.reserve(self.slot, dev, bytes).is_ok()
        {
            return Ok(());
        }
        Err(CUDA_ERROR_OUT_OF_MEMORY)
    }

    pub fn release(&self, dev: Dev, bytes: u64) {
        self.ledger.release(self.slot, dev, bytes);
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

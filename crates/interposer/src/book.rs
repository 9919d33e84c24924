//! What this process holds on the device, object by object, so that every way memory goes away
//! (a free, a destroy, an unmap, the end of a context) gives back exactly what was charged.
//!
//! Two rules keep the book exact under any interleaving of threads:
//! - A record is removed while its lock is held *across* the driver call that frees the object.
//!   The driver can hand the same address out again only after that call, and whoever received
//!   it needs the same lock to record it, so it always finds the old record gone.
//! - A record that is found still present when a new object with the same key is recorded
//!   belongs to an object the driver has already reused, so it is given back first.

use gpuslice_cuda_abi::driver::*;
use gpuslice_ledger::Dev;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::real::call_real;
use crate::tenant::Tenant;

/// What a record is keyed by: the driver's handle or address for the object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Key {
    Ptr(u64),
    Array(usize),
    Mipmap(usize),
    /// A module's or library's `__device__` variables.
    Module(usize),
}

/// One charged object: where, how much, and which context owns it (0 when none does).
#[derive(Clone, Copy, Debug)]
pub struct Rec {
    pub dev: Dev,
    pub bytes: u64,
    pub ctx: usize,
}

/// A physical VMM allocation: alive while a handle reference or a mapping of it remains.
#[derive(Clone, Copy, Debug)]
pub struct Phys {
    pub dev: Dev,
    pub bytes: u64,
    /// `cuMemCreate` and each `cuMemRetainAllocationHandle`, less each `cuMemRelease`.
    pub refs: u64,
    /// Live `cuMemMap`s of it.
    pub maps: u64,
}

#[derive(Default)]
pub struct Vmm {
    pub phys: HashMap<u64, Phys>,
    /// Mapped address → (length, physical handle).
    pub maps: BTreeMap<u64, (u64, u64)>,
}

/// What the device keeps reserved for graph memory, as this process last measured and charged it.
#[derive(Default, Clone, Copy)]
pub struct GraphCharge {
    pub ordinal: CUdevice,
    pub charged: u64,
}

/// What one executable graph allocates: (ordinal, ledger device, bytes) per device.
pub type GraphNeed = Vec<(CUdevice, Dev, u64)>;

#[derive(Default)]
pub struct Book {
    pub recs: Mutex<HashMap<Key, Rec>>,
    pub vmm: Mutex<Vmm>,
    /// Device ordinal → the primary context handle the driver gave out for it.
    pub primary_ctx: Mutex<HashMap<CUdevice, usize>>,
    /// Per ledger device: the graph memory reservation charged.
    pub graph: Mutex<HashMap<usize, GraphCharge>>,
    /// Executable graphs with memory-allocation nodes → (ordinal, device, bytes they allocate).
    pub execs: Mutex<HashMap<usize, GraphNeed>>,
    /// Records whose memory other processes may hold too (`shared.rs`): their charge is the
    /// hold's, not the record's. Locked after `recs`.
    pub shares: Mutex<HashMap<Key, crate::shared::Shared>>,
}

/// The calling thread's current context (0 when none).
pub fn current_ctx() -> usize {
    let mut c: CUcontext = std::ptr::null_mut();
    let r =
        call_real!(CUDA, cuCtxGetCurrent: unsafe extern "C" fn(*mut CUcontext) -> CUresult, &mut c);
    if r == CUDA_SUCCESS { c as usize } else { 0 }
}

impl Book {
    /// Records an object the driver has just created (its charge is already held).
    pub fn add(&self, t: &Tenant, key: Key, rec: Rec) {
        let old = self.recs.lock().unwrap().insert(key, rec);
        if let Some(o) = old {
            // The driver reused the key: the object we recorded is gone.
            t.release(o.dev, o.bytes);
            self.unshare(t, key);
        }
    }

    /// Runs the driver call that frees `key` with the book locked, and gives its charge back if
    /// the call succeeded.
    pub fn free_with(&self, t: &Tenant, key: Key, call: impl FnOnce() -> CUresult) -> CUresult {
        let mut recs = self.recs.lock().unwrap();
        let r = call();
        if r == CUDA_SUCCESS
            && let Some(o) = recs.remove(&key)
        {
            t.release(o.dev, o.bytes);
            self.unshare(t, key);
        }
        r
    }

    /// Lets go of what other processes may share of `key`'s memory.
    pub fn unshare(&self, t: &Tenant, key: Key) {
        let gone = self.shares.lock().unwrap().remove(&key);
        if let Some(s) = gone {
            s.hold.release(t);
        }
    }

    /// Runs a driver call that may end a context with the book locked. The call returns its
    /// result and the context it ended (0 for none); every object that context owned is given
    /// back.
    pub fn end_context_with(
        &self,
        t: &Tenant,
        call: impl FnOnce() -> (CUresult, usize),
    ) -> CUresult {
        let mut recs = self.recs.lock().unwrap();
        let (r, ended) = call();
        if r == CUDA_SUCCESS && ended != 0 {
            recs.retain(|&k, o| {
                if o.ctx == ended {
                    t.release(o.dev, o.bytes);
                    self.unshare(t, k);
                    false
                } else {
                    true
                }
            });
        }
        r
    }

    /// Bytes recorded as owned by context `ctx` (for diagnostics and tests of the book itself).
    #[allow(dead_code)]
    pub fn owned_by(&self, ctx: usize) -> u64 {
        self.recs
            .lock()
            .unwrap()
            .values()
            .filter(|o| o.ctx == ctx)
            .map(|o| o.bytes)
            .sum()
    }
}

impl Vmm {
    /// Gives the physical allocation's charge back once nothing keeps it alive.
    fn settle(&mut self, t: &Tenant, h: u64) {
        if let Some(p) = self.phys.get(&h)
            && p.refs == 0
            && p.maps == 0
        {
            t.release(p.dev, p.bytes);
            self.phys.remove(&h);
        }
    }

    pub fn created(&mut self, t: &Tenant, h: u64, dev: Dev, bytes: u64) {
        let old = self.phys.insert(
            h,
            Phys {
                dev,
                bytes,
                refs: 1,
                maps: 0,
            },
        );
        if let Some(o) = old {
            // The driver reused the handle: what we recorded under it is gone.
            t.release(o.dev, o.bytes);
        }
    }

    pub fn released(&mut self, t: &Tenant, h: u64) {
        if let Some(p) = self.phys.get_mut(&h) {
            p.refs = p.refs.saturating_sub(1);
        }
        self.settle(t, h);
    }

    pub fn retained(&mut self, h: u64) {
        if let Some(p) = self.phys.get_mut(&h) {
            p.refs += 1;
        }
    }

    pub fn mapped(&mut self, va: u64, len: u64, h: u64) {
        self.maps.insert(va, (len, h));
        if let Some(p) = self.phys.get_mut(&h) {
            p.maps += 1;
        }
    }

    /// Drops every mapping that starts inside `[va, va+len)`.
    pub fn unmapped(&mut self, t: &Tenant, va: u64, len: u64) {
        let end = va.saturating_add(len);
        let gone: Vec<(u64, u64)> = self
            .maps
            .range(va..end)
            .map(|(&m, &(_, h))| (m, h))
            .collect();
        for (m, h) in gone {
            self.maps.remove(&m);
            if let Some(p) = self.phys.get_mut(&h) {
                p.maps = p.maps.saturating_sub(1);
            }
            self.settle(t, h);
        }
    }
}

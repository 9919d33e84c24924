//! Device memory that several processes hold: what `cuIpcGetMemHandle` and
//! `cuMemExportToShareableHandle` hand to other processes. The memory stays on the device until
//! every holder has let go (the exporter's free or release, every importer's close or release),
//! and a process that dies lets go of all it held.
//!
//! A shared object is an entry of a fixed table. Who holds it is not recorded in the entry but
//! in each holder's own process slot (one bit per entry), which only the holder writes, or a
//! reclaimer once the holder is dead, exactly like the slot's memory counters. An entry's bytes
//! count on the device while it is live and at least one slot has its bit set. So letting go is
//! one bit cleared, dying is a slot reset, and nothing anywhere counts holders: there is no
//! reference count to get wrong and no lock to strand.
//!
//! Attribution (what NVML shows per process): to the process that allocated the memory while it
//! still holds it, as a real driver reports it; once that process has freed it or died, to the
//! remaining holder with the lowest slot, so that the memory never disappears from the process
//! list while the device still holds it.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use gpuslice_shm::Counter;

use crate::{MAX_SLOTS, Sim};

/// Shared objects the device can hold at once.
pub const MAX_SHARED: usize = 256;
pub(crate) const HOLD_WORDS: usize = MAX_SHARED / 64;

const FREE: u64 = 0;
const CLAIMING: u64 = 1;
const LIVE: u64 = 2;
const PHASE: u64 = 3;
const SLOT_SHIFT: u32 = 2;
const SLOT_MASK: u64 = 0x7ff;
const GEN_SHIFT: u32 = 13;

/// `state` packs a generation, the creating slot (plus one) and the phase, so that one CAS
/// both claims an entry and says who claimed it (for recovery if the claimer dies).
fn pack(generation: u64, slot: usize, phase: u64) -> u64 {
    generation << GEN_SHIFT | ((slot as u64 + 1) & SLOT_MASK) << SLOT_SHIFT | phase
}
fn generation(s: u64) -> u64 {
    s >> GEN_SHIFT
}
fn creator(s: u64) -> Option<usize> {
    ((s >> SLOT_SHIFT) & SLOT_MASK)
        .checked_sub(1)
        .map(|x| x as usize)
}

#[repr(C)]
pub(crate) struct SharedObj {
    state: AtomicU64,
    dev: AtomicU64,
    /// Random per creation: a handle names it, so handles cannot be guessed or reused.
    nonce: AtomicU64,
    /// The inode of the file behind a shareable handle (0 for IPC handles).
    ino: AtomicU64,
    creator_pid: AtomicU64,
    /// `held` is the object's size. Counted only while the entry is live and held.
    mem: Counter,
}

/// What names a shared object across processes (the contents of an IPC handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedHandle {
    pub index: u32,
    pub state: u64,
    pub nonce: u64,
}

/// A shared object as an importer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedInfo {
    pub handle: SharedHandle,
    pub dev: usize,
    pub bytes: u64,
    pub creator_pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareError {
    /// The handle names nothing live: never exported, or every holder has let go.
    Invalid,
    /// The table is full.
    Full,
}

impl Sim {
    fn obj(&self, i: usize) -> &SharedObj {
        &self.sh().shared[i]
    }

    /// Which entries any process slot holds (a dead slot not yet reclaimed included).
    fn held_mask(&self) -> [u64; HOLD_WORDS] {
        let mut m = [0u64; HOLD_WORDS];
        for s in self.sh().slots.iter() {
            for (w, h) in m.iter_mut().zip(&s.holds) {
                *w |= h.load(SeqCst);
            }
        }
        m
    }

    fn held_by_other(&self, i: usize, me: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        self.sh()
            .slots
            .iter()
            .enumerate()
            .any(|(j, s)| j != me && s.holds[w].load(SeqCst) & b != 0)
    }

    fn set_hold(&self, slot: usize, i: usize, on: bool) {
        let w = &self.sh().slots[slot].holds[i / 64];
        let b = 1u64 << (i % 64);
        if on {
            w.fetch_or(b, SeqCst);
        } else {
            w.fetch_and(!b, SeqCst);
        }
    }

    /// The counters of live, held shared objects on `dev`.
    pub(crate) fn shared_counters(&self, dev: usize) -> impl Iterator<Item = &Counter> {
        let held = self.held_mask();
        self.sh()
            .shared
            .iter()
            .enumerate()
            .filter(move |(i, o)| {
                held[i / 64] & 1 << (i % 64) != 0
                    && o.state.load(SeqCst) & PHASE == LIVE
                    && o.dev.load(SeqCst) == dev as u64
            })
            .map(|(_, o)| &o.mem)
    }

    /// (slot, bytes) for every live, held shared object on `dev`: the slot NVML reports it under.
    pub(crate) fn shared_attribution(&self, dev: usize) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for (i, o) in self.sh().shared.iter().enumerate() {
            let s = o.state.load(SeqCst);
            if s & PHASE != LIVE || o.dev.load(SeqCst) != dev as u64 {
                continue;
            }
            let (w, b) = (i / 64, 1u64 << (i % 64));
            let holds = |j: usize| self.sh().slots[j].holds[w].load(SeqCst) & b != 0;
            let to = creator(s)
                .filter(|&c| c < MAX_SLOTS && holds(c))
                .or_else(|| (0..MAX_SLOTS).find(|&j| holds(j)));
            if let Some(slot) = to {
                out.push((slot, o.mem.held.load(SeqCst)));
            }
        }
        out
    }

    /// Lets go of everything slot `i` holds and abandons claims it left half-made: for a slot
    /// whose owner is dead, by whoever now owns the slot's lock.
    pub(crate) fn drop_holds(&self, i: usize) {
        for w in &self.sh().slots[i].holds {
            w.store(0, SeqCst);
        }
        for o in self.sh().shared.iter() {
            let s = o.state.load(SeqCst);
            if s & PHASE == CLAIMING && creator(s) == Some(i) {
                let _ = o
                    .state
                    .compare_exchange(s, pack(generation(s), i, FREE), SeqCst, SeqCst);
            }
        }
    }

    /// Makes `bytes` on `dev`, already charged to this process, a shared object this process
    /// holds: from now on the charge lives in the object, not in the process. `ino` names the
    /// file behind a shareable handle (0 for none).
    pub fn share_export(
        &self,
        dev: usize,
        bytes: u64,
        ino: u64,
    ) -> Result<SharedHandle, ShareError> {
        let _ = self.dev(dev);
        let me = self.my_slot();
        let held = self.held_mask();
        for (i, o) in self.sh().shared.iter().enumerate() {
            let s = o.state.load(SeqCst);
            let phase = s & PHASE;
            // A live entry nobody holds any more is memory already gone: reusable.
            let reusable = phase == FREE || (phase == LIVE && held[i / 64] & 1 << (i % 64) == 0);
            if !reusable {
                continue;
            }
            let next = generation(s) + 1;
            let claim = pack(next, me, CLAIMING);
            if o.state.compare_exchange(s, claim, SeqCst, SeqCst).is_err() {
                continue;
            }
            // Someone joined in between (or is about to give up a join): not ours to reuse.
            if self.held_by_other(i, me) {
                let _ = o.state.compare_exchange(claim, s, SeqCst, SeqCst);
                continue;
            }
            let nonce = gpuslice_shm::random_u64() | 1;
            o.dev.store(dev as u64, SeqCst);
            o.nonce.store(nonce, SeqCst);
            o.ino.store(ino, SeqCst);
            o.creator_pid.store(std::process::id() as u64, SeqCst);
            o.mem.claiming.store(0, SeqCst);
            o.mem.held.store(bytes, SeqCst);
            self.set_hold(me, i, true);
            let live = pack(next, me, LIVE);
            if o.state
                .compare_exchange(claim, live, SeqCst, SeqCst)
                .is_err()
            {
                // Only a reclaimer of our own slot frees our claim, and we are alive.
                self.set_hold(me, i, false);
                return Err(ShareError::Full);
            }
            // Counted in the object now: the process's own charge goes (over, never under).
            self.free(dev, bytes);
            return Ok(SharedHandle {
                index: i as u32,
                state: live,
                nonce,
            });
        }
        Err(ShareError::Full)
    }

    /// What `h` names, if it is live and held; without joining it.
    pub fn share_lookup(&self, h: SharedHandle) -> Result<SharedInfo, ShareError> {
        let i = h.index as usize;
        if i >= MAX_SHARED {
            return Err(ShareError::Invalid);
        }
        let o = self.obj(i);
        if o.state.load(SeqCst) != h.state || o.nonce.load(SeqCst) != h.nonce {
            return Err(ShareError::Invalid);
        }
        let info = SharedInfo {
            handle: h,
            dev: o.dev.load(SeqCst) as usize,
            bytes: o.mem.held.load(SeqCst),
            creator_pid: o.creator_pid.load(SeqCst) as u32,
        };
        if o.state.load(SeqCst) != h.state || self.held_mask()[i / 64] & 1 << (i % 64) == 0 {
            return Err(ShareError::Invalid);
        }
        Ok(info)
    }

    /// The live, held object exported from the file with inode `ino`.
    pub fn share_find_ino(&self, ino: u64) -> Result<SharedInfo, ShareError> {
        if ino == 0 {
            return Err(ShareError::Invalid);
        }
        for (i, o) in self.sh().shared.iter().enumerate() {
            let s = o.state.load(SeqCst);
            if s & PHASE == LIVE && o.ino.load(SeqCst) == ino {
                let h = SharedHandle {
                    index: i as u32,
                    state: s,
                    nonce: o.nonce.load(SeqCst),
                };
                if let Ok(info) = self.share_lookup(h) {
                    return Ok(info);
                }
            }
        }
        Err(ShareError::Invalid)
    }

    /// Joins the holders of `h`. Fails if it names nothing live, or if every other holder let
    /// go before we joined (the memory is gone then, and stays gone).
    pub fn share_open(&self, h: SharedHandle) -> Result<SharedInfo, ShareError> {
        let info = self.share_lookup(h)?;
        let i = h.index as usize;
        let me = self.my_slot();
        self.set_hold(me, i, true);
        // Joined only if the entry is still the one named and someone else still held it
        // after our bit was visible: a last holder letting go at the same moment either sees
        // us (and the memory stays) or is seen gone here (and we give up).
        if self.obj(i).state.load(SeqCst) != h.state || !self.held_by_other(i, me) {
            self.set_hold(me, i, false);
            return Err(ShareError::Invalid);
        }
        Ok(info)
    }

    /// Lets go of the shared object at `index`; its memory leaves the device with the last
    /// holder.
    pub fn share_release(&self, index: u32) {
        if (index as usize) < MAX_SHARED {
            self.set_hold(self.my_slot(), index as usize, false);
        }
    }
}

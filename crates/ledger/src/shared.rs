//! Memory the tenant's processes share (IPC handles, VMM shareable handles): charged to the
//! tenant once, for as long as any of its processes holds it, whichever of them allocated it and
//! whether or not that one is still alive.
//!
//! A shared charge is an entry of a fixed table, keyed by what names the memory across
//! processes (a hash of the IPC handle, the identity of the shareable handle's file). Who holds
//! it is recorded in each holder's own process slot, one bit per entry, written only by that
//! process or by a reclaimer once it is dead, like the slot's counters. An entry's bytes count
//! against the cap while the entry is live and some slot has its bit: letting go is one bit
//! cleared, a dead process's slot reset lets go of all it held, and an entry still held by a
//! live process keeps its charge through any number of deaths. No reference count exists to
//! underflow, and nothing here blocks.
//!
//! An entry is claimed with one CAS on its state word, which also names the claiming slot, so a
//! claim left half-made by a process killed in the middle is abandoned by whoever reclaims that
//! slot.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use gpuslice_shm::Counter;

use crate::{Dev, Ledger, Refused, SHARED_OFF, SLOTS, SlotId};

/// Shared charges a tenant can hold at once. When the table is full, sharing falls back to
/// charging each importing process on its own (never less than the device holds).
pub const SHARED: usize = 256;
pub(crate) const HOLD_WORDS: usize = SHARED / 64;

const FREE: u64 = 0;
const CLAIMING: u64 = 1;
const LIVE: u64 = 2;
const PHASE: u64 = 3;
const SLOT_SHIFT: u32 = 2;
const SLOT_MASK: u64 = 0x7ff;
const GEN_SHIFT: u32 = 13;
const _: () = assert!(SLOTS < SLOT_MASK as usize);

fn pack(generation: u64, slot: usize, phase: u64) -> u64 {
    generation << GEN_SHIFT | ((slot as u64 + 1) & SLOT_MASK) << SLOT_SHIFT | phase
}
fn generation(s: u64) -> u64 {
    s >> GEN_SHIFT
}
fn claimer(s: u64) -> Option<usize> {
    ((s >> SLOT_SHIFT) & SLOT_MASK)
        .checked_sub(1)
        .map(|x| x as usize)
}

#[repr(C)]
pub(crate) struct Entry {
    state: AtomicU64,
    key: [AtomicU64; 2],
    dev: AtomicU64,
    /// `held` is the shared memory's size; it counts only while the entry is live and held.
    mem: Counter,
    _reserved: [AtomicU64; 2],
}

pub(crate) const TABLE_LEN: usize = SHARED * size_of::<Entry>();

/// A shared charge this process holds: the entry and the state it was live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    state: u64,
}

impl Ledger {
    fn entry(&self, i: usize) -> &Entry {
        // SAFETY: inside the file (FILE_LEN covers the table), aligned (SHARED_OFF is a multiple
        // of 64 and entries are 8-byte words), and every field is an atomic.
        unsafe { self.file.at::<Entry>(SHARED_OFF + i * size_of::<Entry>()) }
    }

    fn held_mask(&self) -> [u64; HOLD_WORDS] {
        let mut m = [0u64; HOLD_WORDS];
        for i in 0..self.high_water() {
            for (w, h) in m.iter_mut().zip(&self.slot(i).holds) {
                *w |= h.load(SeqCst);
            }
        }
        m
    }

    fn held_by_other(&self, e: usize, me: usize) -> bool {
        let (w, b) = (e / 64, 1u64 << (e % 64));
        (0..self.high_water()).any(|i| i != me && self.slot(i).holds[w].load(SeqCst) & b != 0)
    }

    fn set_hold(&self, slot: usize, e: usize, on: bool) {
        let w = &self.slot(slot).holds[e / 64];
        let b = 1u64 << (e % 64);
        if on {
            w.fetch_or(b, SeqCst);
        } else {
            w.fetch_and(!b, SeqCst);
        }
    }

    /// The charges of live, held entries on `d`.
    pub(crate) fn shared_counters(&self, d: Dev) -> impl Iterator<Item = &Counter> {
        let held = self.held_mask();
        (0..SHARED)
            .filter(move |&e| {
                let x = self.entry(e);
                held[e / 64] & 1 << (e % 64) != 0
                    && x.state.load(SeqCst) & PHASE == LIVE
                    && x.dev.load(SeqCst) == d.0 as u64
            })
            .map(|e| &self.entry(e).mem)
    }

    /// Lets go of everything slot `i` holds and abandons claims it left half-made: for the
    /// slot's new owner, or a reclaimer of a dead one. Returns the bytes that no process holds
    /// any more as a result.
    pub(crate) fn drop_holds(&self, i: usize) -> u64 {
        let s = self.slot(i);
        let mine: Vec<u64> = s.holds.iter().map(|w| w.swap(0, SeqCst)).collect();
        let held = self.held_mask();
        let mut freed = 0u64;
        for e in 0..SHARED {
            let x = self.entry(e);
            let st = x.state.load(SeqCst);
            let bit = 1u64 << (e % 64);
            if mine[e / 64] & bit != 0 && held[e / 64] & bit == 0 && st & PHASE == LIVE {
                freed = freed.saturating_add(x.mem.held.load(SeqCst));
            }
            if st & PHASE == CLAIMING && claimer(st) == Some(i) {
                let _ = x
                    .state
                    .compare_exchange(st, pack(generation(st), i, FREE), SeqCst, SeqCst);
            }
        }
        freed
    }

    /// A live entry for `key` that some process holds.
    fn find(&self, key: [u64; 2], skip: Option<usize>) -> Option<Share> {
        let held = self.held_mask();
        (0..SHARED).filter(|&e| Some(e) != skip).find_map(|e| {
            let x = self.entry(e);
            let st = x.state.load(SeqCst);
            (st & PHASE == LIVE
                && held[e / 64] & 1 << (e % 64) != 0
                && x.key[0].load(SeqCst) == key[0]
                && x.key[1].load(SeqCst) == key[1])
                .then_some(Share {
                    index: e,
                    state: st,
                })
        })
    }

    /// Claims a free entry for `key` holding `bytes` on `d`, held by `s`. Counted from the
    /// moment it is live; the caller then gives back whatever charged the bytes before.
    fn create_entry(&self, s: SlotId, d: Dev, key: [u64; 2], bytes: u64) -> Option<Share> {
        let held = self.held_mask();
        for e in 0..SHARED {
            let x = self.entry(e);
            let st = x.state.load(SeqCst);
            let phase = st & PHASE;
            // A live entry nobody holds is memory already gone: reusable.
            if !(phase == FREE || (phase == LIVE && held[e / 64] & 1 << (e % 64) == 0)) {
                continue;
            }
            let next = generation(st) + 1;
            let claim = pack(next, s.0, CLAIMING);
            if x.state.compare_exchange(st, claim, SeqCst, SeqCst).is_err() {
                continue;
            }
            if self.held_by_other(e, s.0) {
                // Joined meanwhile: not dead after all.
                let _ = x.state.compare_exchange(claim, st, SeqCst, SeqCst);
                continue;
            }
            x.key[0].store(key[0], SeqCst);
            x.key[1].store(key[1], SeqCst);
            x.dev.store(d.0 as u64, SeqCst);
            x.mem.claiming.store(0, SeqCst);
            x.mem.held.store(bytes, SeqCst);
            self.set_hold(s.0, e, true);
            let live = pack(next, s.0, LIVE);
            if x.state
                .compare_exchange(claim, live, SeqCst, SeqCst)
                .is_err()
            {
                self.set_hold(s.0, e, false);
                return None;
            }
            return Some(Share {
                index: e,
                state: live,
            });
        }
        None
    }

    /// Turns `bytes` on `d` that process `s` holds (its own charge) into a shared charge keyed
    /// `key` that `s` holds: from then on the charge stays while any process of the tenant
    /// holds the entry. `None` when the table is full: the charge stays the process's own.
    pub fn share_export(&self, s: SlotId, d: Dev, key: [u64; 2], bytes: u64) -> Option<Share> {
        let sh = self.create_entry(s, d, key, bytes)?;
        // Counted in the entry now; the process's own charge goes (over, never under).
        self.release(s, d, bytes);
        Some(sh)
    }

    /// Joins a live entry for `key` that another process holds: the memory is charged already.
    /// Returns it with its device and size.
    pub fn share_join(&self, s: SlotId, key: [u64; 2]) -> Option<(Share, Dev, u64)> {
        let mut skip = None;
        for _ in 0..SHARED {
            let sh = self.find(key, skip)?;
            if let Some(j) = self.join_entry(s, sh) {
                return Some(j);
            }
            skip = Some(sh.index);
        }
        None
    }

    fn join_entry(&self, s: SlotId, sh: Share) -> Option<(Share, Dev, u64)> {
        let x = self.entry(sh.index);
        let (d, n) = (Dev(x.dev.load(SeqCst) as usize), x.mem.held.load(SeqCst));
        let (w, b) = (sh.index / 64, 1u64 << (sh.index % 64));
        if self.slot(s.0).holds[w].load(SeqCst) & b != 0 {
            // Held by this process already (another of its objects).
            return (x.state.load(SeqCst) == sh.state).then_some((sh, d, n));
        }
        self.set_hold(s.0, sh.index, true);
        // Ours only if it is still the entry found and someone else still held it once our
        // bit was visible: a last holder leaving at the same moment either sees us (and the
        // charge stays) or is seen gone here.
        if x.state.load(SeqCst) == sh.state && self.held_by_other(sh.index, s.0) {
            return Some((sh, d, n));
        }
        self.set_hold(s.0, sh.index, false);
        None
    }

    /// Charges `bytes` on `d` for memory keyed `key` that no process of the tenant holds yet,
    /// if the tenant stays within its cap, as a shared charge `s` holds. `Ok(None)`: granted,
    /// but the table is full, so the charge is the process's own.
    pub fn share_import(
        &self,
        s: SlotId,
        d: Dev,
        key: [u64; 2],
        bytes: u64,
    ) -> Result<Option<Share>, Refused> {
        self.reserve(s, d, bytes)?;
        let Some(mine) = self.share_export(s, d, key, bytes) else {
            return Ok(None);
        };
        // Another process may have created an entry for the same memory at the same moment:
        // the one with the lower index is kept, so both end up on it.
        let other = self
            .find(key, Some(mine.index))
            .filter(|o| o.index < mine.index)
            .and_then(|o| self.join_entry(s, o));
        if let Some((o, _, _)) = other {
            self.share_drop(s, mine);
            return Ok(Some(o));
        }
        Ok(Some(mine))
    }

    /// Lets go of a shared charge; it leaves the tenant with its last holder.
    pub fn share_drop(&self, s: SlotId, sh: Share) {
        self.set_hold(s.0, sh.index, false);
    }

    /// Bytes of shared charges on `d` that the tenant holds (part of [`Ledger::used`]).
    pub fn shared_used(&self, d: Dev) -> u64 {
        gpuslice_shm::total(self.shared_counters(d))
    }
}

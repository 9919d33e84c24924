//! The compute gate: every launch path passes through [`governed`], which submits work only
//! while this process's tenant holds the GPU's turn. The turn is decided by the compute
//! arbiter (see `gpuslice_arbiter`), which this process reaches through a private channel per
//! GPU and which publishes the grant in a page only it can write. The process never decides
//! who runs, and what it sends can only affect its own tenant's turn.
//!
//! Fast path (the tenant holds the GPU, nobody else wants it): a thread-local cache lookup,
//! one load of the grant word, one load of the process's activity word. No clock, no event, no
//! system call. Otherwise launches are fenced by events so that at most the page's bound of
//! them is in flight, and a process that is not granted sleeps on the page's futex.
//!
//! One *gate thread* per process and GPU tells the arbiter when the process's work has drained
//! (`IDLE`, after a short grace without launches) or, after a revoke, that it has (`RELEASE`).
//! It waits for the work with `cuCtxSynchronize` in each context the process launched in, so a
//! process blocked in `cuStreamSynchronize` on its own kernels counts as busy, not idle; and a
//! thread not yet back from such a wait when the work has drained (woken late by a loaded host)
//! keeps it busy for a few milliseconds more, since it is about to launch again.
//!
//! What a holder keeps in flight is bounded by what the page allows and by the length of its
//! kernels: a thread whose kernels are long (it waited 10 ms or more for one) keeps one in
//! flight, so that whoever is next waits for one kernel, never for a queue of them.

use gpuslice_compute::page::{self, PageReader, futex_wait, futex_wake};
use gpuslice_compute::wire::{self, Msg};
use gpuslice_cuda_abi::driver::*;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_int, c_uint};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::*};

use crate::real::call_real;
use crate::tenant::{CONFIG_ERROR, tenant};

/// A holder whose work has drained and that launched nothing for this long is idle; while
/// another tenant waits for the GPU, sooner, since the GPU idles until it is handed on.
const GRACE_NS: u64 = 200_000;
const GRACE_CONTENDED_NS: u64 = 50_000;
/// A thread still inside a synchronize call (or waiting for a fence) after the work drained is
/// a thread being woken to launch more, not an idle one: the process stays busy for this long
/// at most after its work drained while such a thread has not returned. Wake-ups of a few
/// milliseconds are common on a loaded machine, and a busy tenant declared idle by one loses
/// its turn to a tenant that may then queue a whole non-preemptible kernel.
const WAKE_GRACE_NS: u64 = 10_000_000;
/// Uncontended, one launch in up to this many (per thread) is fenced, fewer the longer its
/// kernels (a fence covers about `BOUND_UNIT_NS` of work), and at most `UNCONTENDED_FENCES`
/// fences are outstanding per context: a tenant alone cannot queue so much that a newcomer
/// waits long for it to drain, and short launches pay for a fence once in many.
const UNCONTENDED_EVERY: u32 = 32;
const GPU_BOUND_EVERY: u32 = 8;
const UNCONTENDED_FENCES: usize = 2;
/// A thread that waited this long for its oldest fence runs long work: it fences every launch
/// and keeps one in flight, so that what a newcomer (or the next holder) waits for is one of
/// its kernels, not a queue of them. The GPU loses only a launch's latency per long kernel.
const LONG_WAIT_NS: u64 = 10_000_000;
/// The page's bound counts kernels of about this length or longer: shorter ones may be kept
/// in flight in proportion, plus one, so that the GPU does not idle while the thread wakes
/// from its wait for the oldest (one more is queued behind the kernel running), and what the
/// next holder waits for stays within one kernel of the bound.
const BOUND_UNIT_NS: u64 = 250_000;
/// Fences a context may have in flight at most.
const MAX_IN_FLIGHT: usize = 32;
/// How often the gate thread looks again at a process that keeps launching.
const BUSY_RECHECK_NS: u64 = 100_000;
/// How long a waiter sleeps before checking that the arbiter is still there.
const RECHECK_NS: u64 = 50_000_000;

/// `Gate::act`: what the arbiter has been told about this process's work.
/// Idle: told `IDLE` (or nothing yet); the next launch must send `WANT` first.
const ACT_IDLE: u32 = 0;
/// Told `WANT`; no launch since the gate thread last looked.
const ACT_CLEAN: u32 = 1;
/// Told `WANT`; launched since the gate thread last looked.
const ACT_TOUCHED: u32 = 2;
/// The arbiter is gone or refused us: launches are refused.
const ACT_DEAD: u32 = 3;
/// Told `WANT` after `IDLE`: launches wait for a grant newer than the one we went idle in, so
/// nothing is submitted on a turn the arbiter may already have handed on.
const ACT_WANTING: u32 = 4;

/// One process's gate on one GPU.
pub struct Gate {
    chan: OwnedFd,
    page: PageReader,
    act: AtomicU32,
    /// The grant epoch in which this process last told the arbiter it was idle.
    stale: AtomicU32,
    /// Serialises WANT/IDLE with the transitions of `act` they stand for.
    msg: Mutex<()>,
    /// Contexts (as addresses) the process launched in on this GPU.
    contexts: Mutex<Vec<usize>>,
    fences: Mutex<HashMap<usize, Fences>>,
    reported: AtomicBool,
    /// Set when reopening after the arbiter was lost has failed for good.
    gave_up: AtomicBool,
}

#[derive(Default)]
struct Fences {
    /// Each fence in flight, with the launches it covers.
    inflight: VecDeque<(CUevent, u32)>,
    pool: Vec<CUevent>,
}

// SAFETY: events are driver handles usable from any thread; all state is behind mutexes or atomics.
unsafe impl Send for Fences {}

type Gates = Mutex<HashMap<usize, Result<Option<&'static Gate>, c_int>>>;
/// Per context; reset in a forked child, which must make its own channels.
static GATES: AtomicPtr<Gates> = AtomicPtr::new(std::ptr::null_mut());
type Devices = Mutex<HashMap<[u8; 16], Result<&'static Gate, c_int>>>;
/// Per GPU: this process's gate (one channel and gate thread per GPU).
static DEVICES: AtomicPtr<Devices> = AtomicPtr::new(std::ptr::null_mut());
static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// (generation, context, gate) of this thread's last launch.
    static CACHE: Cell<(u64, usize, *const Gate)> = const { Cell::new((0, 0, std::ptr::null())) };
    /// Uncontended launches this thread may still make unfenced before its next fenced one,
    /// and how many it made since its last fenced one.
    static UNFENCED: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
    /// This thread's last wait for a fence took at least `LONG_WAIT_NS`. A thread starts so,
    /// until its first wait shows otherwise: a tenant alone must not queue a burst of long
    /// kernels before it has seen how long they are.
    static LONG: Cell<bool> = const { Cell::new(true) };
    /// How long this thread's waits for its oldest fence take per launch the fence covers (a
    /// moving average, ns): with its pipeline full, the GPU time of one of its launches.
    static PER_LAUNCH: Cell<u64> = const { Cell::new(0) };
}

/// Uncontended launches a thread may make unfenced after a fenced one. `keeping_up`: the GPU
/// had finished everything this thread fenced before (the thread is launch-bound, its kernels
/// shorter than its launches); otherwise at most `GPU_BOUND_EVERY`, so that a thread whose
/// kernels grow long queues few before its next wait shows it.
fn unfenced_run(keeping_up: bool) -> u32 {
    if LONG.with(|l| l.get()) {
        return 0;
    }
    let most = if keeping_up {
        UNCONTENDED_EVERY
    } else {
        GPU_BOUND_EVERY
    } as u64;
    match PER_LAUNCH.with(|c| c.get()) {
        0 => most as u32 - 1,
        k => (BOUND_UNIT_NS / k).clamp(1, most) as u32 - 1,
    }
}

/// How many fences a thread may keep in flight under the page's `bound`.
fn in_flight_limit(bound: usize) -> usize {
    if LONG.with(|l| l.get()) {
        return 1;
    }
    match PER_LAUNCH.with(|c| c.get()) {
        0 => bound,
        k => bound
            .max((bound as u64 * BOUND_UNIT_NS / k) as usize + usize::from(k < BOUND_UNIT_NS))
            .min(MAX_IN_FLIGHT),
    }
}

/// Threads of this process inside a synchronize call or waiting for one of its fences.
static WAITING: AtomicU32 = AtomicU32::new(0);

/// Counts the calling thread as waiting for its own work while `f` runs (see
/// [`WAKE_GRACE_NS`]).
pub fn waiting<R>(f: impl FnOnce() -> R) -> R {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            WAITING.fetch_sub(1, SeqCst);
        }
    }
    WAITING.fetch_add(1, SeqCst);
    let _done = Done;
    f()
}

pub fn after_fork() {
    GATES.store(std::ptr::null_mut(), SeqCst);
    DEVICES.store(std::ptr::null_mut(), SeqCst);
    GENERATION.fetch_add(1, SeqCst);
}

fn global<T: Default>(p: &AtomicPtr<T>) -> &'static T {
    let cur = p.load(Acquire);
    if !cur.is_null() {
        // SAFETY: published once by the compare-exchange below and never freed.
        return unsafe { &*cur };
    }
    let fresh = Box::into_raw(Box::default());
    match p.compare_exchange(std::ptr::null_mut(), fresh, AcqRel, Acquire) {
        // SAFETY: we just published it; never freed.
        Ok(_) => unsafe { &*fresh },
        Err(other) => {
            // SAFETY: `fresh` was never shared.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: published by the winner; never freed.
            unsafe { &*other }
        }
    }
}

/// Opens this process's channel for GPU `uuid` and starts its gate thread. `quiet`: a failure
/// is not reported (an attempt that will be repeated).
fn open_gate(uuid: [u8; 16], quiet: bool) -> Result<&'static Gate, c_int> {
    let t = tenant()?;
    let who = t.compute.as_ref().map_or(String::new(), |c| {
        format!(
            "tenant {} ({}, id {})",
            c.name,
            gpuslice_compute::policy::mode_name(c.spec.mode),
            c.tenant_id
        )
    });
    let fail = |e: String| {
        if !quiet {
            eprintln!("gpuslice: {who}: {e}; refusing kernel launches");
        }
        CONFIG_ERROR
    };
    let chan = t.arbiter_channel().map_err(fail)?;
    let (m, fds) = wire::call(chan.as_raw_fd(), &Msg::Open { uuid })
        .map_err(|e| fail(format!("the compute arbiter did not answer: {e}")))?;
    let page = match (m, fds.first()) {
        (Msg::Opened, Some(fd)) => PageReader::map(fd)
            .map_err(|e| fail(format!("the compute arbiter's grant page: {e}")))?,
        (Msg::Refused { text, .. }, _) => return Err(fail(text)),
        (other, _) => return Err(fail(format!("unexpected arbiter reply {other:?}"))),
    };
    let g: &'static Gate = Box::leak(Box::new(Gate {
        chan,
        page,
        act: AtomicU32::new(ACT_IDLE),
        stale: AtomicU32::new(0),
        msg: Mutex::new(()),
        contexts: Mutex::new(Vec::new()),
        fences: Mutex::new(HashMap::new()),
        reported: AtomicBool::new(false),
        gave_up: AtomicBool::new(false),
    }));
    let generation = GENERATION.load(SeqCst);
    std::thread::Builder::new()
        .name("gpuslice-gate".into())
        .spawn(move || g.gate_thread(generation))
        .map_err(|e| fail(format!("cannot start the gate thread: {e}")))?;
    Ok(g)
}

fn make_gate(ctx: usize) -> Result<Option<&'static Gate>, c_int> {
    let t = tenant()?;
    if t.compute.is_none() {
        return Ok(None);
    }
    let mut gates = global(&GATES).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = gates.get(&ctx) {
        return *g;
    }
    let made = (|| {
        let mut ordinal: CUdevice = 0;
        let r = call_real!(CUDA, cuCtxGetDevice: unsafe extern "C" fn(*mut CUdevice) -> CUresult, &mut ordinal);
        if r != CUDA_SUCCESS {
            return Err(r);
        }
        let uuid = crate::tenant::device_uuid(ordinal)?;
        let mut devs = global(&DEVICES).lock().unwrap_or_else(|e| e.into_inner());
        let g = *devs.entry(uuid).or_insert_with(|| open_gate(uuid, false));
        let g = g?;
        g.contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ctx);
        Ok(Some(g))
    })();
    gates.insert(ctx, made);
    made
}

/// The gate of the current context (and the context); `Ok(None)` without compute limits.
#[inline]
fn current_gate() -> Result<Option<(&'static Gate, usize)>, c_int> {
    let mut ctx: CUcontext = std::ptr::null_mut();
    let r = call_real!(CUDA, cuCtxGetCurrent: unsafe extern "C" fn(*mut CUcontext) -> CUresult, &mut ctx);
    if r != CUDA_SUCCESS || ctx.is_null() {
        // The driver itself will refuse the launch.
        return Ok(None);
    }
    let ctx = ctx as usize;
    let generation = GENERATION.load(Relaxed);
    let (cg, cc, cp) = CACHE.with(|c| c.get());
    if cg == generation && cc == ctx && !cp.is_null() {
        // SAFETY: gates are leaked, never freed.
        return Ok(Some((unsafe { &*cp }, ctx)));
    }
    let g = make_gate(ctx)?;
    if let Some(g) = g {
        CACHE.with(|c| c.set((generation, ctx, g as *const Gate)));
    }
    Ok(g.map(|g| (g, ctx)))
}

fn new_event() -> Option<CUevent> {
    let mut ev: CUevent = std::ptr::null_mut();
    let r = call_real!(CUDA, cuEventCreate: unsafe extern "C" fn(*mut CUevent, c_uint) -> CUresult, &mut ev, CU_EVENT_DISABLE_TIMING);
    (r == CUDA_SUCCESS).then_some(ev)
}

impl Fences {
    /// Recycles the fences that have passed; whether all of them had, and some were there.
    fn reap(&mut self) -> bool {
        let mut passed = false;
        while let Some(&(ev, _)) = self.inflight.front() {
            let r = call_real!(CUDA, cuEventQuery: unsafe extern "C" fn(CUevent) -> CUresult, ev);
            if r == CUDA_ERROR_NOT_READY {
                return false;
            }
            self.inflight.pop_front();
            self.pool.push(ev);
            passed = true;
        }
        passed
    }

    /// Waits for the oldest fence, and learns from how long that took.
    fn wait_oldest(&mut self) {
        let Some((ev, covers)) = self.inflight.pop_front() else {
            return;
        };
        let t0 = monotonic_ns();
        waiting(
            || call_real!(CUDA, cuEventSynchronize: unsafe extern "C" fn(CUevent) -> CUresult, ev),
        );
        self.pool.push(ev);
        let took = monotonic_ns().saturating_sub(t0);
        let each = took / covers.max(1) as u64;
        LONG.with(|l| l.set(each >= LONG_WAIT_NS));
        PER_LAUNCH.with(|c| {
            let k = c.get();
            c.set(if k == 0 { each } else { (3 * k + each) / 4 }.max(1));
        });
    }

    fn fence(&mut self, stream: CUstream, covers: u32) {
        let Some(ev) = self.pool.pop().or_else(new_event) else {
            return;
        };
        let r = call_real!(CUDA, cuEventRecord: unsafe extern "C" fn(CUevent, CUstream) -> CUresult, ev, stream);
        if r == CUDA_SUCCESS {
            self.inflight.push_back((ev, covers));
        } else {
            // A capturing stream: the launch became a graph node and runs nothing now.
            self.pool.push(ev);
        }
    }
}

impl Gate {
    fn send(&self, m: &Msg) {
        if wire::send_msg(self.chan.as_raw_fd(), m, &[]).is_err() {
            self.act.store(ACT_DEAD, SeqCst);
        }
    }

    /// Makes sure the arbiter counts this process as having work. Cheap unless it had told
    /// the arbiter it was idle.
    fn mark_busy(&self) {
        loop {
            match self.act.load(SeqCst) {
                ACT_TOUCHED | ACT_DEAD | ACT_WANTING => return,
                ACT_CLEAN => {
                    // Losing this race to the gate thread means it just declared us idle:
                    // look again, and tell the arbiter we want the GPU back.
                    if self
                        .act
                        .compare_exchange(ACT_CLEAN, ACT_TOUCHED, SeqCst, SeqCst)
                        .is_ok()
                    {
                        return;
                    }
                }
                _ => {
                    let _m = self.msg.lock().unwrap_or_else(|e| e.into_inner());
                    if self.act.load(SeqCst) == ACT_IDLE {
                        self.act.store(ACT_WANTING, SeqCst);
                        self.send(&Msg::Want);
                        futex_wake(&self.act);
                    }
                    return;
                }
            }
        }
    }

    fn dead(&self) -> c_int {
        if !self.reported.swap(true, SeqCst) {
            eprintln!(
                "gpuslice: the compute arbiter is gone; refusing kernel launches rather than running ungoverned"
            );
        }
        CONFIG_ERROR
    }

    /// The launch path when the fast one does not apply. Hands `launch` back unlaunched if
    /// the arbiter is gone.
    fn slow<F: FnOnce() -> CUresult>(
        &self,
        ctx: usize,
        streams: &[CUstream],
        launch: F,
    ) -> Result<CUresult, F> {
        let p = self.page.page();
        loop {
            let seq = p.seq.load(SeqCst);
            let w = p.word.load(SeqCst);
            if self.act.load(SeqCst) == ACT_DEAD {
                return Err(launch);
            }
            self.mark_busy();
            if page::state(w) == page::GRANTED && self.act.load(SeqCst) == ACT_WANTING {
                if page::epoch(w) == self.stale.load(SeqCst) {
                    // The grant we went idle in: the arbiter has not answered our WANT yet.
                    futex_wait(&p.seq, seq, RECHECK_NS);
                    continue;
                }
                let _ = self
                    .act
                    .compare_exchange(ACT_WANTING, ACT_TOUCHED, SeqCst, SeqCst);
            }
            if page::state(w) == page::GRANTED {
                let bound = match page::bound(w) {
                    0 => UNCONTENDED_FENCES,
                    b => b as usize,
                };
                let mut f = self.fences.lock().unwrap_or_else(|e| e.into_inner());
                if p.word.load(SeqCst) != w
                    || !matches!(self.act.load(SeqCst), ACT_TOUCHED | ACT_CLEAN)
                {
                    // The grant moved, or we were declared idle, while we queued for the lock.
                    continue;
                }
                let q = f.entry(ctx).or_default();
                // Work that was done before we came back for more is short.
                let keeping_up = q.reap();
                if keeping_up {
                    LONG.with(|l| l.set(false));
                }
                if q.inflight.len() >= in_flight_limit(bound) {
                    // Wait for our oldest work, then look at the grant again: it may have moved.
                    q.wait_oldest();
                    continue;
                }
                let r = launch();
                // What this fence covers: this launch and the unfenced ones before it.
                let covers = 1 + UNFENCED.with(|c| c.get().1);
                if r == CUDA_SUCCESS {
                    for &s in streams {
                        q.fence(s, covers);
                    }
                }
                // Long work is fenced launch by launch; short work amortises its fences.
                UNFENCED.with(|c| c.set((unfenced_run(keeping_up), 0)));
                return Ok(r);
            }
            futex_wait(&p.seq, seq, RECHECK_NS);
        }
    }

    /// Waits until every context's work submitted so far has completed.
    fn sync_all(&self) {
        let ctxs = self
            .contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for c in ctxs {
            let ctx = c as CUcontext;
            let r = call_real!(CUDA, cuCtxPushCurrent_v2: unsafe extern "C" fn(CUcontext) -> CUresult, ctx);
            if r != CUDA_SUCCESS {
                continue;
            }
            call_real!(CUDA, cuCtxSynchronize: unsafe extern "C" fn() -> CUresult);
            let mut out: CUcontext = std::ptr::null_mut();
            call_real!(CUDA, cuCtxPopCurrent_v2: unsafe extern "C" fn(*mut CUcontext) -> CUresult, &mut out);
        }
    }

    fn arbiter_gone(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.chan.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLIN) != 0
    }

    /// Tells the arbiter when this process's work has drained; see the module comment.
    fn gate_thread(&'static self, generation: u64) {
        let p = self.page.page();
        let mut released_epoch = 0u32;
        // When the work was last seen drained with no launch since.
        let mut drained_since: Option<u64> = None;
        while GENERATION.load(SeqCst) == generation {
            if self.arbiter_gone() {
                self.act.store(ACT_DEAD, SeqCst);
            }
            let a = self.act.load(SeqCst);
            if a == ACT_DEAD {
                return;
            }
            if a == ACT_IDLE {
                futex_wait(&self.act, ACT_IDLE, RECHECK_NS);
                continue;
            }
            let seq = p.seq.load(SeqCst);
            let w = p.word.load(SeqCst);
            match page::state(w) {
                page::REVOKED => {
                    if released_epoch != page::epoch(w) {
                        self.sync_all();
                        released_epoch = page::epoch(w);
                        self.send(&Msg::Release {
                            epoch: released_epoch,
                        });
                    } else {
                        futex_wait(&p.seq, seq, RECHECK_NS);
                    }
                }
                page::GRANTED if a == ACT_WANTING => {
                    // A launcher takes the new grant (or waits for it); nothing to drain yet.
                    futex_wait(&p.seq, seq, 1_000_000);
                }
                page::GRANTED => {
                    if self
                        .act
                        .compare_exchange(ACT_TOUCHED, ACT_CLEAN, SeqCst, SeqCst)
                        .is_ok()
                    {
                        drained_since = None;
                    }
                    let t0 = monotonic_ns();
                    self.sync_all();
                    if p.seq.load(SeqCst) != seq {
                        continue;
                    }
                    if self.act.load(SeqCst) != ACT_CLEAN {
                        // Launched meanwhile. If there was hardly anything to wait for, look
                        // again a little later (a grant change wakes us at once): looking again
                        // at once would spin on short work, taking the launchers' fast path
                        // from them at every look.
                        if monotonic_ns() - t0 < BUSY_RECHECK_NS {
                            futex_wait(&p.seq, seq, BUSY_RECHECK_NS);
                        }
                        continue;
                    }
                    // Drained: idle if nothing is launched for a grace period (a revoke ends
                    // the wait early)...
                    let grace = if page::bound(w) == 0 {
                        GRACE_NS
                    } else {
                        GRACE_CONTENDED_NS
                    };
                    futex_wait(&p.seq, seq, grace);
                    if p.seq.load(SeqCst) != seq {
                        continue;
                    }
                    // ...and no thread is still on its way back from waiting for this work.
                    let now = monotonic_ns();
                    let since = *drained_since.get_or_insert(now);
                    if WAITING.load(SeqCst) > 0 && now - since < WAKE_GRACE_NS {
                        continue;
                    }
                    let _m = self.msg.lock().unwrap_or_else(|e| e.into_inner());
                    if self
                        .act
                        .compare_exchange(ACT_CLEAN, ACT_IDLE, SeqCst, SeqCst)
                        .is_ok()
                    {
                        self.stale.store(page::epoch(w), SeqCst);
                        self.send(&Msg::Idle);
                    }
                }
                _ => futex_wait(&p.seq, seq, RECHECK_NS),
            }
        }
    }
}

/// Runs `launch` once this process may submit work to its current GPU.
#[inline]
pub fn governed(streams: &[CUstream], launch: impl FnOnce() -> CUresult) -> CUresult {
    gate(streams, false, launch)
}

/// [`governed`] for a launch that may be a large unit of work (a graph of many kernels): it
/// is always fenced, so that even uncontended at most `UNCONTENDED_FENCES` of them are
/// queued, and a newcomer waits for those, not for a queue of hundreds of kernels.
#[inline]
pub fn governed_unit(streams: &[CUstream], launch: impl FnOnce() -> CUresult) -> CUresult {
    gate(streams, true, launch)
}

#[inline]
fn gate(streams: &[CUstream], unit: bool, launch: impl FnOnce() -> CUresult) -> CUresult {
    let (g, ctx) = match current_gate() {
        Ok(None) => return launch(),
        Ok(Some(g)) => g,
        Err(e) => return e,
    };
    let w = g.page.page().word.load(Acquire);
    if !unit
        && w & 0xffff == page::GRANTED
        && match g.act.load(Relaxed) {
            ACT_TOUCHED => true,
            // The gate thread looked since our last launch: tell it we launched again.
            ACT_CLEAN => g
                .act
                .compare_exchange(ACT_CLEAN, ACT_TOUCHED, SeqCst, Relaxed)
                .is_ok(),
            _ => false,
        }
    {
        // Granted, unbounded (nobody else wants the GPU), and the arbiter knows we are busy.
        let go = UNFENCED.with(|c| {
            let (left, made) = c.get();
            if left > 0 {
                c.set((left - 1, made + 1));
            }
            left > 0
        });
        if go {
            return launch();
        }
    }
    let mut g = g;
    let mut launch = launch;
    loop {
        if g.act.load(SeqCst) == ACT_DEAD {
            match reopen(g, ctx) {
                Some(n) => g = n,
                None => return g.dead(),
            }
        }
        match g.slow(ctx, streams, launch) {
            Ok(r) => return r,
            Err(l) => launch = l,
        }
    }
}

/// How long a launch waits for a lost arbiter to come back (the node agent restarting) before
/// it is refused: the launch is held, never run ungoverned.
const REOPEN_FOR_NS: u64 = 30_000_000_000;
const REOPEN_EVERY_NS: u64 = 100_000_000;

fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The arbiter behind `old` is gone: opens a new channel for the same GPU (the arbiter may have
/// restarted), re-pointing every context of `old` at it. Retries for [`REOPEN_FOR_NS`] once
/// per gate; after that, and for a gate that already gave up, `None`.
fn reopen(old: &'static Gate, ctx: usize) -> Option<&'static Gate> {
    if old.gave_up.load(SeqCst) {
        return None;
    }
    let deadline = monotonic_ns() + REOPEN_FOR_NS;
    loop {
        {
            let mut gates = global(&GATES).lock().unwrap_or_else(|e| e.into_inner());
            // Another thread may have reopened it already.
            if let Some(Ok(Some(g))) = gates.get(&ctx)
                && !std::ptr::eq(*g, old)
                && g.act.load(SeqCst) != ACT_DEAD
            {
                return Some(*g);
            }
            let mut devs = global(&DEVICES).lock().unwrap_or_else(|e| e.into_inner());
            let uuid = devs
                .iter()
                .find(|(_, g)| matches!(g, Ok(g) if std::ptr::eq(*g, old)))
                .map(|(u, _)| *u);
            if let Some(uuid) = uuid
                && let Ok(new) = open_gate(uuid, true)
            {
                let ctxs = old
                    .contexts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                for &c in &ctxs {
                    gates.insert(c, Ok(Some(new)));
                }
                *new.contexts.lock().unwrap_or_else(|e| e.into_inner()) = ctxs;
                devs.insert(uuid, Ok(new));
                eprintln!("gpuslice: the compute arbiter came back; kernel launches continue");
                CACHE.with(|c| c.set((GENERATION.load(SeqCst), ctx, new as *const Gate)));
                return Some(new);
            }
        }
        if monotonic_ns() >= deadline {
            old.gave_up.store(true, SeqCst);
            return None;
        }
        std::thread::sleep(std::time::Duration::from_nanos(REOPEN_EVERY_NS));
    }
}

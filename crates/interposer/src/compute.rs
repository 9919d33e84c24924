//! The compute gate: every launch path passes through [`governed`], which admits the launch
//! only while this process holds its GPU's turn (see `gpuslice_compute`), with a bounded amount
//! of its work in flight. GPU time is measured through the driver: an event recorded after each
//! launch tells when the work completed, and the time between its start (its submission, or the
//! end of the work ahead of it) and its completion is charged.

use gpuslice_compute::policy::{self, Credit};
use gpuslice_compute::{Region, holder_entry, now_ns};
use gpuslice_cuda_abi::driver::*;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_float, c_int, c_uint};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering::*};
use std::sync::{Mutex, OnceLock};

use crate::real::call_real;
use crate::tenant::{CONFIG_ERROR, tenant};

/// A turn on the device lasts this long when others are waiting.
const SLICE_NS: u64 = 20_000_000;
/// A holder that has left the gate for this long with no launch is idle; others may take over.
const IDLE_GRACE_NS: u64 = 1_000_000;
/// A holder that overstays its slice by this much (stuck off-CPU) loses its turn.
const STUCK_NS: u64 = 2 * SLICE_NS;
/// Fixed mode: credit a tenant may bank while idle.
const FIXED_BURST_NS: i64 = 4_000_000;
/// Launches in flight per process; 1 while a higher-priority process uses the device, so that
/// it waits for at most one of ours.
const INFLIGHT: usize = 3;
const REBASE_NS: u64 = 1_000_000_000;
/// Uncontended, launches in quick succession share one completion event: at most this many,
/// spanning at most `BATCH_NS`. Anyone waiting for the GPU (or a higher priority present, or
/// fixed mode) makes every launch fenced.
const BATCH: u32 = 8;
const BATCH_NS: u64 = 20_000;
/// Uncontended, completed work is charged at least this often.
const REAP_NS: u64 = 1_000_000;

struct Device {
    region: Region,
    entry: usize,
    tenant_id: u64,
    quota: u8,
    mode: u8,
    priority: u8,
}

struct Local {
    inflight: VecDeque<(CUevent, u64)>,
    pool: Vec<CUevent>,
    ref_ev: CUevent,
    ref_host: u64,
    ref_stream: CUstream,
    last_end: u64,
    credit: Credit,
    k: usize,
    weight: u64,
    waiting_since: u64,
    /// Launches submitted since the last event, on `pending_stream`, the first at `pending_submit`.
    pending: u32,
    pending_stream: CUstream,
    pending_submit: u64,
    last_fence: u64,
    last_reap: u64,
    launches: u64,
}

/// The gate of one context.
pub struct CtxGate {
    dev: &'static Device,
    local: Mutex<Local>,
}

unsafe impl Send for CtxGate {}
unsafe impl Sync for CtxGate {}
unsafe impl Send for Local {}

type Gates = Mutex<HashMap<usize, Result<&'static CtxGate, c_int>>>;
/// Per context; reset in a forked child, which owns no entry of its own.
static GATES: AtomicPtr<Gates> = AtomicPtr::new(std::ptr::null_mut());
static DEVICES: AtomicPtr<Mutex<HashMap<[u8; 16], &'static Device>>> =
    AtomicPtr::new(std::ptr::null_mut());
static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CACHE: Cell<(u64, usize, *const CtxGate)> = const { Cell::new((0, 0, std::ptr::null())) };
}

pub fn after_fork() {
    GATES.store(std::ptr::null_mut(), SeqCst);
    DEVICES.store(std::ptr::null_mut(), SeqCst);
    GENERATION.fetch_add(1, SeqCst);
}

fn global<T: Default>(p: &AtomicPtr<T>) -> &'static T {
    let cur = p.load(Acquire);
    if !cur.is_null() {
        return unsafe { &*cur };
    }
    let fresh = Box::into_raw(Box::default());
    match p.compare_exchange(std::ptr::null_mut(), fresh, AcqRel, Acquire) {
        Ok(_) => unsafe { &*fresh },
        Err(other) => {
            drop(unsafe { Box::from_raw(fresh) });
            unsafe { &*other }
        }
    }
}

/// quota, mode, priority, tenant id, tenant name
type Config = (u8, u8, u8, u64, String);

fn config() -> &'static Result<Option<Config>, String> {
    static CFG: OnceLock<Result<Option<Config>, String>> = OnceLock::new();
    CFG.get_or_init(|| {
        let t = tenant().map_err(|_| String::new())?;
        Ok(t.compute.as_ref().map(|c| {
            (
                c.spec.quota,
                c.spec.mode,
                c.spec.priority,
                c.tenant_id,
                c.name.clone(),
            )
        }))
    })
}

fn device(uuid: [u8; 16], cfg: &Config) -> Result<&'static Device, c_int> {
    let mut m = global(&DEVICES).lock().unwrap();
    if let Some(d) = m.get(&uuid) {
        return Ok(d);
    }
    let path = gpuslice_compute::region_path(&gpuslice_compute::configured_dir(), &uuid);
    let region = Region::open_or_create(&path).map_err(|e| {
        eprintln!(
            "gpuslice: cannot use the compute region {}: {e}; refusing kernel launches",
            path.display()
        );
        CONFIG_ERROR
    })?;
    let (quota, mode, priority, tenant_id, name) = cfg;
    let entry = region
        .attach(*tenant_id, name, *quota, *mode, *priority)
        .map_err(|e| {
            eprintln!("gpuslice: {e}; refusing kernel launches");
            CONFIG_ERROR
        })?;
    let d: &'static Device = Box::leak(Box::new(Device {
        region,
        entry,
        tenant_id: *tenant_id,
        quota: *quota,
        mode: *mode,
        priority: *priority,
    }));
    m.insert(uuid, d);
    Ok(d)
}

fn make_gate(ctx: usize) -> Result<Option<&'static CtxGate>, c_int> {
    let cfg = match config() {
        Ok(None) => return Ok(None),
        Ok(Some(c)) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("gpuslice: {e}; refusing kernel launches");
            }
            return Err(CONFIG_ERROR);
        }
    };
    let mut gates = global(&GATES).lock().unwrap();
    if let Some(g) = gates.get(&ctx) {
        return g.map(Some);
    }
    let made = (|| {
        let mut ordinal: CUdevice = 0;
        let r = call_real!(CUDA, cuCtxGetDevice: unsafe extern "C" fn(*mut CUdevice) -> CUresult, &mut ordinal);
        if r != CUDA_SUCCESS {
            return Err(r);
        }
        let uuid = crate::tenant::device_uuid(ordinal)?;
        let dev = device(uuid, cfg)?;
        let mut ref_stream: CUstream = std::ptr::null_mut();
        let r = call_real!(CUDA, cuStreamCreate: unsafe extern "C" fn(*mut CUstream, c_uint) -> CUresult, &mut ref_stream, CU_STREAM_NON_BLOCKING);
        if r != CUDA_SUCCESS {
            return Err(r);
        }
        let ref_ev = new_event()?;
        let now = now_ns();
        let mut l = Local {
            inflight: VecDeque::new(),
            pool: Vec::new(),
            ref_ev,
            ref_host: 0,
            ref_stream,
            last_end: 0,
            credit: Credit { credit: 0, at: now },
            k: INFLIGHT,
            weight: policy::weight(dev.mode, dev.quota, 1),
            waiting_since: 0,
            pending: 0,
            pending_stream: std::ptr::null_mut(),
            pending_submit: 0,
            last_fence: 0,
            last_reap: 0,
            launches: 0,
        };
        rebase(&mut l);
        Ok(&*Box::leak(Box::new(CtxGate {
            dev,
            local: Mutex::new(l),
        })))
    })();
    gates.insert(ctx, made);
    made.map(Some)
}

fn new_event() -> Result<CUevent, c_int> {
    let mut ev: CUevent = std::ptr::null_mut();
    let r = call_real!(CUDA, cuEventCreate: unsafe extern "C" fn(*mut CUevent, c_uint) -> CUresult, &mut ev, CU_EVENT_DEFAULT);
    if r != CUDA_SUCCESS { Err(r) } else { Ok(ev) }
}

/// A reference event on an idle private stream completes when recorded, tying the GPU's event
/// clock to the host's; redone every second because elapsed times are single-precision.
fn rebase(l: &mut Local) {
    let before = now_ns();
    let r = call_real!(CUDA, cuEventRecord: unsafe extern "C" fn(CUevent, CUstream) -> CUresult, l.ref_ev, l.ref_stream);
    if r == CUDA_SUCCESS {
        call_real!(CUDA, cuEventSynchronize: unsafe extern "C" fn(CUevent) -> CUresult, l.ref_ev);
        l.ref_host = before;
    }
}

fn event_time(l: &Local, ev: CUevent) -> Option<u64> {
    let mut ms: c_float = 0.0;
    let r = call_real!(CUDA, cuEventElapsedTime: unsafe extern "C" fn(*mut c_float, CUevent, CUevent) -> CUresult, &mut ms, l.ref_ev, ev);
    (r == CUDA_SUCCESS).then(|| (l.ref_host as i128 + (ms as f64 * 1e6) as i128).max(0) as u64)
}

/// The gate of the current context; `Ok(None)` when the tenant has no compute limits.
#[inline]
fn current_gate() -> Result<Option<&'static CtxGate>, c_int> {
    let mut ctx: CUcontext = std::ptr::null_mut();
    let r = call_real!(CUDA, cuCtxGetCurrent: unsafe extern "C" fn(*mut CUcontext) -> CUresult, &mut ctx);
    if r != CUDA_SUCCESS || ctx.is_null() {
        // The driver itself will refuse the launch.
        return Ok(None);
    }
    let generation = GENERATION.load(Relaxed);
    let (cg, cc, cp) = CACHE.with(|c| c.get());
    if cg == generation && cc == ctx as usize && !cp.is_null() {
        return Ok(Some(unsafe { &*cp }));
    }
    let g = make_gate(ctx as usize)?;
    if let Some(g) = g {
        CACHE.with(|c| c.set((generation, ctx as usize, g as *const CtxGate)));
    }
    Ok(g)
}

impl CtxGate {
    fn me(&self) -> &gpuslice_compute::Entry {
        self.dev.region.entry(self.dev.entry)
    }

    /// Charges every launch of ours that has completed, oldest first.
    fn reap(&self, l: &mut Local) {
        let d = self.dev;
        l.last_reap = now_ns();
        self.me().launches.store(l.launches, Relaxed);
        while let Some(&(ev, submit)) = l.inflight.front() {
            let r = call_real!(CUDA, cuEventQuery: unsafe extern "C" fn(CUevent) -> CUresult, ev);
            if r == CUDA_ERROR_NOT_READY {
                break;
            }
            l.inflight.pop_front();
            l.pool.push(ev);
            if r != CUDA_SUCCESS {
                continue;
            }
            let end = event_time(l, ev).unwrap_or_else(now_ns);
            // The work started once it was submitted and whatever ran ahead of it had finished.
            let start = submit
                .max(l.last_end)
                .max(d.region.others_last_end_before(d.entry, end));
            let charge = end.saturating_sub(start);
            l.last_end = l.last_end.max(end);
            let e = self.me();
            e.last_end.store(l.last_end, SeqCst);
            e.used_ns.fetch_add(charge, SeqCst);
            e.vt.fetch_add(policy::vt_cost(charge, l.weight), SeqCst);
            l.credit.charge(charge);
        }
    }

    fn sync_oldest(&self, l: &mut Local) {
        if let Some(&(ev, _)) = l.inflight.front() {
            call_real!(CUDA, cuEventSynchronize: unsafe extern "C" fn(CUevent) -> CUresult, ev);
        }
        self.reap(l);
    }

    fn drain(&self, l: &mut Local) {
        self.fence_pending(l);
        while !l.inflight.is_empty() {
            let before = l.inflight.len();
            self.sync_oldest(l);
            if l.inflight.len() == before {
                // An event that never completes must not wedge the gate.
                break;
            }
        }
    }

    /// Refreshes what changes slowly: weight (processes of the tenant), in-flight bound,
    /// fixed-mode credit and eligibility.
    fn refresh(&self, l: &mut Local, now: u64) {
        let d = self.dev;
        l.weight = policy::weight(d.mode, d.quota, d.region.processes_of(d.tenant_id));
        l.k = if d.region.higher_priority_present(d.entry, d.priority) {
            1
        } else {
            INFLIGHT
        };
        if d.mode == policy::MODE_FIXED {
            l.credit.refill(now, d.quota, FIXED_BURST_NS);
            self.me().credit.store(l.credit.credit, SeqCst);
            self.me()
                .eligible_at
                .store(l.credit.eligible_at(d.quota), SeqCst);
        }
        if now.saturating_sub(l.ref_host) > REBASE_NS && l.inflight.is_empty() {
            rebase(l);
        }
    }

    fn slice_len(&self, l: &Local) -> u64 {
        if self.dev.mode == policy::MODE_FIXED {
            (l.credit.credit.max(0) as u64).clamp(200_000, SLICE_NS)
        } else {
            SLICE_NS
        }
    }

    /// Whether a waiter may take the device from the holder word `h`.
    fn may_take(&self, h: u64, now: u64) -> bool {
        let r = &self.dev.region;
        let Some(x) = holder_entry(h) else {
            return true;
        };
        if x == self.dev.entry || !r.is_live(x) {
            return true;
        }
        let e = r.entry(x);
        let (_, _, prio) = gpuslice_compute::unpack_cfg(e.cfg.load(SeqCst));
        if prio > self.dev.priority {
            return true;
        }
        let idle = e.in_gate.load(SeqCst) == 0
            && now.saturating_sub(e.last_exit.load(SeqCst)) > IDLE_GRACE_NS;
        idle || now > r.slice_end() + STUCK_NS
    }

    /// Blocks until this process may submit one more launch.
    fn admit(&self, l: &mut Local) {
        let d = self.dev;
        let r = &d.region;
        let me = d.entry;
        self.me().in_gate.store(1, SeqCst);
        self.reap(l);
        let mut waited_from = 0u64;
        loop {
            let turn = r.turn();
            let h = r.holder_word();
            let now = now_ns();
            if holder_entry(h) == Some(me) {
                if now < r.slice_end() {
                    if l.inflight.len() + usize::from(l.pending > 0) < l.k {
                        break;
                    }
                    self.fence_pending(l);
                    self.sync_oldest(l);
                    continue;
                }
                // The slice is over: keep the device if we are still the one to have it.
                self.reap(l);
                self.refresh(l, now);
                let next = policy::choose(&r.candidates(me, true), now);
                if next == Some(me) {
                    r.extend(now + self.slice_len(l));
                    continue;
                }
                // Hand over only once our work is done, so the next holder's time is its own.
                self.drain(l);
                self.refresh(l, now_ns());
                let now = now_ns();
                let next = policy::choose(&r.candidates(me, true), now);
                r.hand_over(h, next, now + SLICE_NS);
                continue;
            }
            if waited_from == 0 {
                waited_from = now;
                if l.waiting_since == 0 {
                    // Coming back from idle: no banked time.
                    let vt = policy::catch_up(self.me().vt.load(SeqCst), r.min_active_vt(Some(me)));
                    self.me().vt.store(vt, SeqCst);
                }
                l.waiting_since = now;
                r.set_waiting(me, true);
            }
            self.refresh(l, now);
            if self.may_take(h, now) {
                let next = policy::choose(&r.candidates(me, true), now);
                if next.is_some() || holder_entry(h).is_some_and(|x| !r.is_live(x)) {
                    let len = if next == Some(me) {
                        self.slice_len(l)
                    } else {
                        SLICE_NS
                    };
                    if r.hand_over(h, next, now + len) && next == Some(me) {
                        continue;
                    }
                }
            }
            let mut timeout = 1_000_000;
            let elig = self.me().eligible_at.load(SeqCst);
            if elig > now {
                timeout = (elig - now).min(timeout);
            }
            r.wait_turn(turn, timeout.max(50_000));
        }
        if waited_from != 0 {
            r.set_waiting(me, false);
            self.me()
                .throttled_ns
                .fetch_add(now_ns() - waited_from, SeqCst);
        }
        l.waiting_since = 0;
    }

    fn leave(&self) {
        let e = self.me();
        e.last_exit.store(now_ns(), SeqCst);
        e.in_gate.store(0, SeqCst);
    }

    /// Records an event after the launches not yet covered by one.
    fn fence_pending(&self, l: &mut Local) {
        if l.pending == 0 {
            return;
        }
        l.pending = 0;
        let ev = match l.pool.pop() {
            Some(ev) => ev,
            None => match new_event() {
                Ok(ev) => ev,
                Err(_) => return,
            },
        };
        let r = call_real!(CUDA, cuEventRecord: unsafe extern "C" fn(CUevent, CUstream) -> CUresult, ev, l.pending_stream);
        if r == CUDA_SUCCESS {
            l.inflight.push_back((ev, l.pending_submit));
            l.last_fence = l.pending_submit;
        } else {
            // A capturing stream: the launch became a graph node and runs nothing now.
            l.pool.push(ev);
        }
    }

    /// Notes a launch on `stream`; it is fenced now, or later together with the next ones.
    fn submitted(&self, l: &mut Local, stream: CUstream, submit: u64, batch: bool) {
        if l.pending > 0 && l.pending_stream != stream {
            self.fence_pending(l);
        }
        if l.pending == 0 {
            l.pending_stream = stream;
            l.pending_submit = submit;
        }
        l.pending += 1;
        l.launches += 1;
        if !batch || l.pending >= BATCH || submit.saturating_sub(l.pending_submit) >= BATCH_NS {
            self.fence_pending(l);
        }
    }

    /// Whether this launch may go without the slow path: we hold the GPU inside our slice, room
    /// in flight, nobody waiting.
    #[inline]
    fn fast(&self, l: &Local, now: u64) -> bool {
        let r = &self.dev.region;
        holder_entry(r.holder_word()) == Some(self.dev.entry)
            && now < r.slice_end()
            && l.inflight.len() < l.k
            && r.waiting_mask() == 0
            && now.saturating_sub(l.last_reap) < REAP_NS
    }
}

/// Runs `launch` once this process may submit work to its current GPU, and fences what it
/// submitted on `streams` so its GPU time can be measured.
pub fn governed(streams: &[CUstream], launch: impl FnOnce() -> CUresult) -> CUresult {
    let g = match current_gate() {
        Ok(None) => return launch(),
        Ok(Some(g)) => g,
        Err(e) => return e,
    };
    let mut l = g.local.lock().unwrap_or_else(|e| e.into_inner());
    let mut now = now_ns();
    // Batching is for the uncontended case only; fixed mode and lower priorities account
    // every launch.
    let batch = streams.len() == 1 && g.dev.mode != policy::MODE_FIXED && l.k > 1;
    let slow = !(batch && g.fast(&l, now));
    if slow {
        g.admit(&mut l);
        now = now_ns();
    }
    let r = launch();
    if r == CUDA_SUCCESS {
        for &s in streams {
            g.submitted(&mut l, s, now, batch && !slow);
        }
    }
    if slow {
        g.leave();
    } else {
        g.me().last_exit.store(now, Relaxed);
    }
    r
}

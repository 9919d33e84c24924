//! The simulated CUDA driver: `libcuda.so.1` backed by host memory and the shared simulated-GPU
//! state.
//!
//! Device memory is host memory (anonymous `MAP_NORESERVE` mappings, so a large untouched
//! allocation costs nothing) and device pointers are host addresses; what every allocation costs
//! the device is charged in the machine-wide state, so all processes see the same free memory.
//! Kernels do nothing, except those whose name starts with `busy`: they occupy their device for
//! as many microseconds as their first (u64) parameter says, serialized with every other context
//! and process on that device.
// `%` rather than `is_multiple_of`: the workspace's minimum Rust is 1.85.
#![allow(
    non_snake_case,
    clippy::missing_safety_doc,
    clippy::too_many_arguments,
    clippy::manual_is_multiple_of
)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};

use gpuslice_cuda_abi::driver::*;
use gpuslice_sim_state::Sim;

mod api_device;
mod api_exec;
mod api_mem;
mod api_share;
mod procaddr;
mod stubs;

pub(crate) type R = Result<(), CUresult>;

/// Version this driver reports and serves entry points for.
pub const DRIVER_VERSION: i32 = gpuslice_sim_state::CUDA_DRIVER_VERSION;
/// Device memory is charged in whole pages: what the host mapping behind it costs.
pub(crate) const PAGE: u64 = 4096;
/// VMM granularity (`cuMemGetAllocationGranularity`).
pub(crate) const VMM_GRANULARITY: u64 = 2 << 20;
/// Memory pools and graph memory grow their device reservation in chunks of this size.
pub(crate) const POOL_CHUNK: u64 = 32 << 20;

pub(crate) fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to).saturating_mul(to)
}

/// Runs an entry point's body; a panic becomes an error code instead of unwinding into C.
pub(crate) fn guard(f: impl FnOnce() -> R) -> CUresult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => CUDA_ERROR_UNKNOWN,
    }
}

/// Defines exported driver functions, plus a `$group(name)` lookup of their addresses for
/// `cuGetProcAddress`, so the lookup can never name a function that is not exported.
macro_rules! export {
    ($group:ident; $(fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block)*) => {
        $(
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($a: $t),*) -> gpuslice_cuda_abi::driver::CUresult {
                $crate::guard(|| -> $crate::R { #[allow(unused_unsafe)] unsafe { $body } })
            }
        )*
        pub(crate) fn $group(sym: &str) -> Option<*mut std::ffi::c_void> {
            match sym {
                $(stringify!($name) => Some($name as *const () as *mut std::ffi::c_void),)*
                _ => None,
            }
        }
    };
}
pub(crate) use export;

/// Writes `v` through a caller's out-pointer, refusing NULL.
pub(crate) unsafe fn out<T>(p: *mut T, v: T) -> R {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    unsafe { p.write(v) };
    Ok(())
}

/// A synchronize sleeps until this close to the end of the work, then yields until it: a real
/// driver's default (`CU_CTX_SCHED_AUTO`) spins or yields rather than sleeping, so a thread
/// launches again within microseconds of its work ending. Sleeping to the end would add the
/// host's wake-up latency to every wait, idling the GPU far more than a real one does; the
/// thread's timer slack is cut to 1 µs for the same reason (Linux's default adds up to 50 µs).
const SPIN_NS: u64 = 10_000;

pub(crate) fn sleep_until(t: u64) {
    thread_local! {
        static SLACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !SLACK.with(|s| s.replace(true)) {
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    }
    loop {
        let now = Sim::now_ns();
        if now >= t {
            return;
        }
        if t - now > SPIN_NS {
            std::thread::sleep(std::time::Duration::from_nanos(t - now - SPIN_NS));
        } else {
            std::thread::yield_now();
        }
    }
}

// ---- process-wide driver state -------------------------------------------------------------

static INIT: OnceLock<CUresult> = OnceLock::new();

/// Attaches to the simulated GPUs once; a bad configuration is reported on one stderr line.
pub(crate) fn init() -> CUresult {
    *INIT.get_or_init(|| match Sim::get() {
        Ok(_) => CUDA_SUCCESS,
        Err(e) => {
            eprintln!("libcuda (gpuslice simulator): {e}");
            match e {
                gpuslice_sim_state::SimError::Config(_) => CUDA_ERROR_INVALID_VALUE,
                gpuslice_sim_state::SimError::State(_) => CUDA_ERROR_OPERATING_SYSTEM,
            }
        }
    })
}

/// The simulated GPUs, once `cuInit` has succeeded.
pub(crate) fn sim() -> Result<&'static Sim, CUresult> {
    match INIT.get() {
        Some(&CUDA_SUCCESS) => Sim::get().map_err(|_| CUDA_ERROR_NOT_INITIALIZED),
        _ => Err(CUDA_ERROR_NOT_INITIALIZED),
    }
}

/// The devices this process may see, as simulated-GPU indices in ordinal order. Like the real
/// driver, `CUDA_VISIBLE_DEVICES` lists indices or UUIDs and stops at the first entry that names
/// no device.
pub(crate) fn visible() -> &'static [usize] {
    static VISIBLE: OnceLock<Vec<usize>> = OnceLock::new();
    VISIBLE.get_or_init(|| {
        let Ok(s) = sim() else { return Vec::new() };
        let all: Vec<usize> = (0..s.device_count()).collect();
        let Ok(list) = std::env::var("CUDA_VISIBLE_DEVICES") else {
            return all;
        };
        let mut out = Vec::new();
        for entry in list.split(',').map(str::trim) {
            let found = match entry.parse::<usize>() {
                Ok(i) => all.get(i).copied(),
                Err(_) => all
                    .iter()
                    .copied()
                    .find(|&i| !entry.is_empty() && s.spec(i).uuid.starts_with(entry)),
            };
            match found {
                Some(i) if !out.contains(&i) => out.push(i),
                _ => break,
            }
        }
        out
    })
}

/// The simulated-GPU index behind the ordinal `dev` of this process.
pub(crate) fn device(dev: CUdevice) -> Result<usize, CUresult> {
    sim()?;
    usize::try_from(dev)
        .ok()
        .and_then(|d| visible().get(d).copied())
        .ok_or(CUDA_ERROR_INVALID_DEVICE)
}

/// This process's ordinal for the simulated-GPU index `index`.
pub(crate) fn ordinal_of(index: usize) -> CUdevice {
    visible()
        .iter()
        .position(|&i| i == index)
        .map_or(-1, |o| o as CUdevice)
}

pub(crate) struct Ctx {
    pub dev: usize,
    pub primary: bool,
    pub flags: u32,
    /// Completion time of the context's legacy default stream.
    pub null_done: u64,
}

#[derive(Default, Clone, Copy)]
pub(crate) struct Primary {
    pub ctx: Option<usize>,
    pub refs: u32,
    pub flags: u32,
}

pub(crate) struct Stream {
    pub ctx: usize,
    pub flags: u32,
    pub priority: i32,
    pub done: u64,
    pub capture: Option<usize>,
}

pub(crate) struct Event {
    pub ctx: usize,
    pub flags: u32,
    pub time: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AllocKind {
    Linear,
    Managed,
    Pool(usize),
    /// Address space of a graph allocation node; its device memory is charged per launch.
    Graph,
    /// A module's `__device__` variables: freed only with their module (or its context).
    Global,
    /// Another process's memory opened through an IPC handle (shared object index).
    Ipc(u32),
}

pub(crate) struct Alloc {
    pub size: u64,
    pub map_len: u64,
    pub dev: usize,
    pub ctx: usize,
    pub charge: u64,
    pub kind: AllocKind,
}

pub(crate) struct Pool {
    pub dev: usize,
    pub reserved: u64,
    pub used: u64,
    pub reserved_high: u64,
    pub used_high: u64,
    pub threshold: u64,
    pub max_size: u64,
    pub default: bool,
}

pub(crate) struct Phys {
    pub dev: usize,
    pub size: u64,
    pub fd: i32,
    /// Handle references: `cuMemCreate` and each `cuMemRetainAllocationHandle`, less each
    /// `cuMemRelease`. The memory lives while a reference or a mapping remains.
    pub refs: u32,
    pub maps: u32,
    /// Handle types requested at creation (`CUmemAllocationProp::requestedHandleTypes`).
    pub handle_types: std::ffi::c_int,
    /// The shared object this memory became when exported, or was imported from: its charge
    /// is the object's, and the device keeps it until every process lets go.
    pub shared: Option<u32>,
}

pub(crate) struct VaRange {
    pub size: u64,
    /// va -> (len, physical handle)
    pub maps: BTreeMap<u64, (u64, u64)>,
}

pub(crate) struct Array {
    pub dev: usize,
    pub ctx: usize,
    pub charge: u64,
    pub mipmapped: bool,
}

pub(crate) struct Function {
    pub name: String,
    pub owner: usize,
}

/// What a graph node does; the handles it names are kept for inspection.
#[allow(dead_code)]
#[derive(Clone)]
pub(crate) enum NodeKind {
    Kernel { func: usize, busy_ns: u64 },
    MemAlloc { dev: usize, size: u64, dptr: u64 },
    MemFree { dptr: u64 },
    Empty,
}

pub(crate) struct Graph {
    pub nodes: Vec<(usize, NodeKind)>,
    pub edges: Vec<(usize, usize)>,
}

pub(crate) struct Exec {
    pub nodes: Vec<NodeKind>,
    /// Graph memory this exec needs while it runs, per device: allocations it also frees.
    pub mem_need: Vec<(usize, u64)>,
    /// Allocations it does not free: (device, bytes, address). They stay live after the launch
    /// until the program frees them (`cuMemFree`, `cuMemFreeAsync`).
    pub keeps: Vec<(usize, u64, u64)>,
    /// When its last launch completes.
    pub done: u64,
}

#[derive(Default, Clone, Copy)]
pub(crate) struct GraphMem {
    pub reserved: u64,
    pub reserved_high: u64,
    pub used: u64,
    pub used_high: u64,
}

#[derive(Default)]
pub(crate) struct Reg {
    next: usize,
    pub ctxs: HashMap<usize, Ctx>,
    pub primary: Vec<Primary>,
    pub streams: HashMap<usize, Stream>,
    pub events: HashMap<usize, Event>,
    pub allocs: BTreeMap<u64, Alloc>,
    pub pools: HashMap<usize, Pool>,
    pub default_pool: HashMap<usize, usize>,
    pub current_pool: HashMap<usize, usize>,
    pub phys: HashMap<u64, Phys>,
    pub vas: BTreeMap<u64, VaRange>,
    pub arrays: HashMap<usize, Array>,
    pub modules: HashMap<usize, usize>,
    /// Module → the base of its variables' allocation and the variables in it.
    pub module_globals: HashMap<usize, (u64, Vec<gpuslice_cuda_abi::image::Global>)>,
    /// Module or library → the kernels its image holds: the names `cuModuleGetFunction` and
    /// `cuLibraryGetKernel` find.
    pub module_kernels: HashMap<usize, Vec<String>>,
    pub libraries: HashMap<usize, ()>,
    pub functions: HashMap<usize, Function>,
    pub graphs: HashMap<usize, Graph>,
    pub nodes: HashMap<usize, usize>,
    pub execs: HashMap<usize, Exec>,
    pub graph_mem: HashMap<usize, GraphMem>,
    /// Graph allocations live past their launch: address → (device, bytes).
    pub graph_live: HashMap<u64, (usize, u64)>,
    pub host_allocs: HashMap<usize, usize>,
    /// Linear allocations exported through IPC handles: base → shared object.
    pub exported: HashMap<u64, gpuslice_sim_state::SharedHandle>,
    /// IPC handles opened here: (object, state) → (mapping, opens not yet closed).
    pub ipc_opens: HashMap<(u32, u64), (u64, u32)>,
    /// Shared objects this process holds, and through how many of its objects.
    pub holds: HashMap<u32, u32>,
}

static REG: Mutex<Option<Reg>> = Mutex::new(None);

pub(crate) struct RegGuard(MutexGuard<'static, Option<Reg>>);

impl std::ops::Deref for RegGuard {
    type Target = Reg;
    fn deref(&self) -> &Reg {
        self.0.as_ref().unwrap()
    }
}
impl std::ops::DerefMut for RegGuard {
    fn deref_mut(&mut self) -> &mut Reg {
        self.0.as_mut().unwrap()
    }
}

/// The process's driver objects. Never held across a sleep.
pub(crate) fn reg() -> RegGuard {
    let mut g = REG.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(Reg {
            next: 0x5100_0000,
            ..Default::default()
        });
    }
    RegGuard(g)
}

thread_local! {
    static CTX_STACK: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn ctx_top() -> Option<usize> {
    CTX_STACK.with(|s| s.borrow().last().copied())
}

pub(crate) fn ctx_set_top(c: Option<usize>) {
    CTX_STACK.with(|s| {
        let mut s = s.borrow_mut();
        match c {
            Some(c) => match s.last_mut() {
                Some(t) => *t = c,
                None => s.push(c),
            },
            None => {
                s.pop();
            }
        }
    })
}

pub(crate) fn ctx_push(c: usize) {
    CTX_STACK.with(|s| s.borrow_mut().push(c))
}

pub(crate) fn ctx_pop() -> Option<usize> {
    CTX_STACK.with(|s| s.borrow_mut().pop())
}

/// Which timeline a stream handle names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sid {
    Null(usize),
    Real(usize),
}

impl Reg {
    pub fn handle(&mut self) -> usize {
        self.next += 0x40;
        self.next
    }

    /// The calling thread's current context.
    pub fn current(&self) -> Result<usize, CUresult> {
        let c = ctx_top().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        if self.ctxs.contains_key(&c) {
            Ok(c)
        } else {
            Err(CUDA_ERROR_CONTEXT_IS_DESTROYED)
        }
    }

    pub fn current_dev(&self) -> Result<usize, CUresult> {
        let c = self.current()?;
        Ok(self.ctxs[&c].dev)
    }

    pub fn sid(&self, h: CUstream) -> Result<Sid, CUresult> {
        let h = h as usize;
        if h == 0 || h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD {
            return Ok(Sid::Null(self.current()?));
        }
        if self.streams.contains_key(&h) {
            Ok(Sid::Real(h))
        } else {
            Err(CUDA_ERROR_INVALID_HANDLE)
        }
    }

    pub fn sid_ctx(&self, s: Sid) -> usize {
        match s {
            Sid::Null(c) => c,
            Sid::Real(h) => self.streams[&h].ctx,
        }
    }

    pub fn sid_dev(&self, s: Sid) -> usize {
        self.ctxs[&self.sid_ctx(s)].dev
    }

    /// Earliest time new work on `s` may start: its own last completion, plus the implicit
    /// synchronisation between the legacy default stream and blocking streams.
    pub fn not_before(&self, s: Sid) -> u64 {
        match s {
            Sid::Null(c) => {
                let blocking = self
                    .streams
                    .values()
                    .filter(|st| st.ctx == c && st.flags & CU_STREAM_NON_BLOCKING == 0)
                    .map(|st| st.done)
                    .max()
                    .unwrap_or(0);
                self.ctxs[&c].null_done.max(blocking)
            }
            Sid::Real(h) => {
                let st = &self.streams[&h];
                if st.flags & CU_STREAM_NON_BLOCKING == 0 {
                    st.done
                        .max(self.ctxs.get(&st.ctx).map_or(0, |c| c.null_done))
                } else {
                    st.done
                }
            }
        }
    }

    pub fn set_done(&mut self, s: Sid, t: u64) {
        match s {
            Sid::Null(c) => {
                if let Some(c) = self.ctxs.get_mut(&c) {
                    c.null_done = c.null_done.max(t)
                }
            }
            Sid::Real(h) => {
                if let Some(st) = self.streams.get_mut(&h) {
                    st.done = st.done.max(t)
                }
            }
        }
    }

    /// When everything queued in context `c` completes.
    pub fn ctx_done(&self, c: usize) -> u64 {
        let streams = self
            .streams
            .values()
            .filter(|s| s.ctx == c)
            .map(|s| s.done)
            .max()
            .unwrap_or(0);
        self.ctxs.get(&c).map_or(0, |x| x.null_done).max(streams)
    }

    /// The allocation that contains `[p, p+len)`, if any.
    pub fn alloc_at(&self, p: u64, len: u64) -> Option<(u64, &Alloc)> {
        let (&base, a) = self.allocs.range(..=p).next_back()?;
        (p.checked_add(len)? <= base + a.size.max(1)).then_some((base, a))
    }

    /// Whether `[p, p+len)` is device memory this process may touch.
    pub fn is_device_range(&self, p: u64, len: u64) -> bool {
        if p == 0 {
            return false;
        }
        if self.alloc_at(p, len).is_some() {
            return true;
        }
        // A VMM range: every byte must be mapped.
        let Some((&base, va)) = self.vas.range(..=p).next_back() else {
            return false;
        };
        let end = p.saturating_add(len);
        if end > base + va.size {
            return false;
        }
        let mut at = p;
        while at < end {
            match va.maps.range(..=at).next_back() {
                Some((&m, &(mlen, _))) if m + mlen > at => at = m + mlen,
                _ => return false,
            }
        }
        true
    }

    pub fn check_range(&self, p: u64, len: u64) -> R {
        if len == 0 || self.is_device_range(p, len) {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
}

/// Host memory standing in for device memory: reserved, not committed, until touched.
pub(crate) fn map_anon(len: u64, low32: bool) -> Option<u64> {
    let len = round_up(len.max(1), PAGE);
    #[allow(unused_mut)]
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    #[cfg(target_arch = "x86_64")]
    if low32 {
        flags |= libc::MAP_32BIT;
    }
    #[cfg(not(target_arch = "x86_64"))]
    if low32 {
        return None;
    }
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        Some(p as u64)
    }
}

pub(crate) fn unmap(p: u64, len: u64) {
    unsafe { libc::munmap(p as *mut c_void, round_up(len.max(1), PAGE) as usize) };
}

/// Error names and descriptions with static C strings, for `cuGetErrorName`/`cuGetErrorString`.
pub(crate) fn error_strings(r: CUresult) -> Option<&'static (CString, CString)> {
    static T: OnceLock<HashMap<CUresult, (CString, CString)>> = OnceLock::new();
    T.get_or_init(|| {
        CU_RESULT_NAMES
            .iter()
            .map(|&(c, n)| {
                let desc = match c {
                    CUDA_SUCCESS => "no error".to_string(),
                    CUDA_ERROR_OUT_OF_MEMORY => "out of memory".to_string(),
                    CUDA_ERROR_NOT_INITIALIZED => "initialization error".to_string(),
                    CUDA_ERROR_INVALID_CONTEXT => "invalid device context".to_string(),
                    CUDA_ERROR_INVALID_DEVICE => "invalid device ordinal".to_string(),
                    CUDA_ERROR_NO_DEVICE => "no CUDA-capable device is detected".to_string(),
                    CUDA_ERROR_INVALID_HANDLE => "invalid resource handle".to_string(),
                    CUDA_ERROR_NOT_READY => "device not ready".to_string(),
                    CUDA_ERROR_NOT_FOUND => "named symbol not found".to_string(),
                    CUDA_ERROR_NOT_SUPPORTED => "operation not supported".to_string(),
                    CUDA_ERROR_UNKNOWN => "unknown error".to_string(),
                    _ => n
                        .trim_start_matches("CUDA_ERROR_")
                        .replace('_', " ")
                        .to_lowercase(),
                };
                (c, (CString::new(n).unwrap(), CString::new(desc).unwrap()))
            })
            .collect()
    })
    .get(&r)
}

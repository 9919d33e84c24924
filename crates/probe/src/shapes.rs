//! `gpuslice-probe shape`: the shapes real CUDA programs have, as workloads for
//! `gpuslice bench isolation`. Each is an ordinary driver-API program launching the simulator's
//! `busy` kernels (a `busy` kernel runs for as many microseconds as its first parameter says):
//!
//!   gpuslice-probe [--via …] shape SECONDS [--kernel-us L] [--sync N|never] [--graph NODES]
//!       [--procs P] [--threads T | --contexts C] [--gap G_MS/M] [--periodic R_MS --kernels K]
//!       [--stop-file PATH]
//!
//! - `--kernel-us L`: every kernel runs L µs (default 1000).
//! - `--sync N`: `cuStreamSynchronize` after every N launches (a training step); `never`
//!   (default) only bounds the queue the way real programs do, by polling events.
//! - `--graph NODES`: each launch replays an instantiated graph of NODES kernels.
//! - `--procs P`: P processes (this program spawns itself P times and waits, as a launcher
//!   such as torchrun does); `--threads T`: T threads, each with its own stream in the primary
//!   context; `--contexts C`: C threads, each with its own context and stream.
//! - `--gap G_MS/M`: sleep G ms after every M launches (data loading between steps).
//! - `--periodic R_MS --kernels K`: an inference loop: every R ms one request launches K
//!   kernels and synchronizes; each request's latency is recorded.
//! - `--stop-file PATH`: stop as soon as PATH exists (SECONDS still caps the run).
//!
//! It prints one JSON line: per process its pid, launches, GPU time launched and completed (by
//! observed completion) in total and per one-second window, and, for `--periodic`, every
//! request as [start CLOCK_MONOTONIC ns, latency µs] with p50/p99/max.

use super::{Via, base_via_procaddr, exported_name};
use gpuslice_cuda_abi::driver::*;
use std::collections::VecDeque;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

api! {
    init: "cuInit" @ 2000 => fn(c_uint);
    device_get: "cuDeviceGet" @ 2000 => fn(*mut CUdevice, c_int);
    primary_retain: "cuDevicePrimaryCtxRetain" @ 7000 => fn(*mut CUcontext, CUdevice);
    ctx_set_current: "cuCtxSetCurrent" @ 4000 => fn(CUcontext);
    ctx_create: "cuCtxCreate" @ 3020 => fn(*mut CUcontext, c_uint, CUdevice);
    stream_create: "cuStreamCreate" @ 2000 => fn(*mut CUstream, c_uint);
    stream_sync: "cuStreamSynchronize" @ 2000 => fn(CUstream);
    event_create: "cuEventCreate" @ 2000 => fn(*mut CUevent, c_uint);
    event_record: "cuEventRecord" @ 2000 => fn(CUevent, CUstream);
    event_query: "cuEventQuery" @ 2000 => fn(CUevent);
    event_sync: "cuEventSynchronize" @ 2000 => fn(CUevent);
    module_load: "cuModuleLoadData" @ 2000 => fn(*mut CUmodule, *const c_void);
    module_function: "cuModuleGetFunction" @ 2000 => fn(*mut CUfunction, CUmodule, *const c_char);
    launch: "cuLaunchKernel" @ 4000 => fn(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void, *mut *mut c_void);
    begin_capture: "cuStreamBeginCapture" @ 10010 => fn(CUstream, c_int);
    end_capture: "cuStreamEndCapture" @ 10000 => fn(CUstream, *mut CUgraph);
    graph_instantiate: "cuGraphInstantiateWithFlags" @ 11040 => fn(*mut CUgraphExec, CUgraph, u64);
    graph_launch: "cuGraphLaunch" @ 10000 => fn(CUgraphExec, CUstream);
}

/// Completion markers a worker keeps outstanding before it waits for the oldest: the bound a
/// real program's queue has (its allocator or its data pipeline), so that even without a
/// compute gate the queue never grows without limit.
const MAX_MARKERS: usize = 64;

#[derive(Clone, Debug)]
struct Shape {
    secs: f64,
    kernel_us: u64,
    sync_every: Option<u64>,
    graph_nodes: usize,
    procs: usize,
    threads: usize,
    contexts: usize,
    gap: Option<(u64, u64)>,
    periodic: Option<(u64, usize)>,
    stop_file: Option<PathBuf>,
}

fn fail(msg: String) -> ! {
    println!("{{\"error\":{msg:?}}}");
    std::process::exit(3);
}

fn check(r: CUresult, what: &str) {
    if r != CUDA_SUCCESS {
        fail(format!("{what} failed: {r}"));
    }
}

fn mono_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes one timespec into the valid local `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn parse(args: &[String]) -> Shape {
    let num = |field: &str, v: Option<&String>| -> u64 {
        v.and_then(|s| s.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| fail(format!("{field} takes a positive whole number")))
    };
    let secs = args
        .first()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or_else(|| fail("shape takes SECONDS (a positive number) first".into()));
    let mut s = Shape {
        secs,
        kernel_us: 1000,
        sync_every: None,
        graph_nodes: 0,
        procs: 1,
        threads: 1,
        contexts: 0,
        gap: None,
        periodic: None,
        stop_file: None,
    };
    let mut kernels = 1usize;
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1);
        match args[i].as_str() {
            "--kernel-us" => s.kernel_us = num("--kernel-us", v),
            "--sync" => {
                s.sync_every = match v.map(String::as_str) {
                    Some("never") => None,
                    _ => Some(num("--sync (or never)", v)),
                }
            }
            "--graph" => s.graph_nodes = num("--graph", v) as usize,
            "--procs" => s.procs = num("--procs", v) as usize,
            "--threads" => s.threads = num("--threads", v) as usize,
            "--contexts" => s.contexts = num("--contexts", v) as usize,
            "--gap" => {
                let (g, m) = v
                    .and_then(|t| t.split_once('/'))
                    .unwrap_or_else(|| fail("--gap takes G_MS/M".into()));
                s.gap = Some((
                    num("--gap G_MS", Some(&g.to_string())),
                    num("--gap M", Some(&m.to_string())),
                ));
            }
            "--periodic" => s.periodic = Some((num("--periodic", v), 1)),
            "--kernels" => kernels = num("--kernels", v) as usize,
            "--stop-file" => {
                s.stop_file = Some(PathBuf::from(
                    v.unwrap_or_else(|| fail("--stop-file takes a PATH".into())),
                ))
            }
            other => fail(format!("unknown shape option {other}")),
        }
        i += 2;
    }
    if let Some(p) = &mut s.periodic {
        p.1 = kernels;
    }
    if s.threads > 1 && s.contexts > 0 {
        fail("--threads and --contexts exclude each other".into());
    }
    s
}

/// A worker's result: GPU time it launched and saw complete, in total and per second.
#[derive(Default)]
struct Tally {
    launches: u64,
    launched_us: u64,
    completed_us: u64,
    windows_us: Vec<u64>,
    requests: Vec<(u64, u64)>,
}

impl Tally {
    fn complete(&mut self, start: Instant, us: u64) {
        let w = start.elapsed().as_secs() as usize;
        if self.windows_us.len() <= w {
            self.windows_us.resize(w + 1, 0);
        }
        self.windows_us[w] += us;
        self.completed_us += us;
    }

    fn merge(&mut self, o: Tally) {
        self.launches += o.launches;
        self.launched_us += o.launched_us;
        self.completed_us += o.completed_us;
        if self.windows_us.len() < o.windows_us.len() {
            self.windows_us.resize(o.windows_us.len(), 0);
        }
        for (a, b) in self.windows_us.iter_mut().zip(o.windows_us) {
            *a += b;
        }
        self.requests.extend(o.requests);
    }
}

struct Stopper {
    end: Instant,
    file: Option<PathBuf>,
    checked: Instant,
}

impl Stopper {
    fn new(s: &Shape, start: Instant) -> Stopper {
        Stopper {
            end: start + Duration::from_secs_f64(s.secs),
            file: s.stop_file.clone(),
            checked: start,
        }
    }

    /// Whether to stop: the time is up, or the stop file appeared (looked for every 10 ms, so
    /// the hot loop pays a clock read, not a system call).
    fn done(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.end {
            return true;
        }
        if let Some(f) = &self.file
            && now.duration_since(self.checked) >= Duration::from_millis(10)
        {
            self.checked = now;
            return f.exists();
        }
        false
    }
}

/// One thread's program: its own stream, in the primary context or (with `own_ctx`) in a
/// context of its own.
fn worker(api: &Api, s: &Shape, own_ctx: bool, start: Instant) -> Tally {
    let mut t = Tally::default();
    // SAFETY: every call gets valid out-pointers to locals; handles passed back in are the ones
    // the driver returned on this thread's current context.
    unsafe {
        let mut dev = 0;
        check((api.device_get)(&mut dev, 0), "cuDeviceGet");
        let mut ctx = std::ptr::null_mut();
        if own_ctx {
            check((api.ctx_create)(&mut ctx, 0, dev), "cuCtxCreate");
        } else {
            check(
                (api.primary_retain)(&mut ctx, dev),
                "cuDevicePrimaryCtxRetain",
            );
            check((api.ctx_set_current)(ctx), "cuCtxSetCurrent");
        }
        let (mut m, mut f) = (std::ptr::null_mut(), std::ptr::null_mut());
        check(
            (api.module_load)(&mut m, c"image".as_ptr().cast()),
            "cuModuleLoadData",
        );
        check(
            (api.module_function)(&mut f, m, c"busy".as_ptr()),
            "cuModuleGetFunction",
        );
        let mut stream = std::ptr::null_mut();
        check((api.stream_create)(&mut stream, 0), "cuStreamCreate");
        let kernel = |us: u64| -> CUresult {
            let mut arg = us;
            let mut params = [&mut arg as *mut u64 as *mut c_void];
            (api.launch)(
                f,
                1,
                1,
                1,
                1,
                1,
                1,
                0,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        let mut events = Vec::new();
        for _ in 0..MAX_MARKERS {
            let mut e = std::ptr::null_mut();
            check((api.event_create)(&mut e, 0), "cuEventCreate");
            events.push(e);
        }
        let mut stop = Stopper::new(s, start);

        if let Some((period_ms, k)) = s.periodic {
            let period = Duration::from_millis(period_ms);
            let mut next = Instant::now();
            while !stop.done() {
                let (at, t0) = (mono_ns(), Instant::now());
                for _ in 0..k {
                    check(kernel(s.kernel_us), "cuLaunchKernel");
                }
                check((api.stream_sync)(stream), "cuStreamSynchronize");
                t.requests.push((at, t0.elapsed().as_micros() as u64));
                t.launches += k as u64;
                t.launched_us += k as u64 * s.kernel_us;
                t.complete(start, k as u64 * s.kernel_us);
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            return t;
        }

        let graph = (s.graph_nodes > 0).then(|| {
            let (mut g, mut e) = (std::ptr::null_mut(), std::ptr::null_mut());
            check((api.begin_capture)(stream, 0), "cuStreamBeginCapture");
            for _ in 0..s.graph_nodes {
                check(kernel(s.kernel_us), "captured cuLaunchKernel");
            }
            check((api.end_capture)(stream, &mut g), "cuStreamEndCapture");
            check((api.graph_instantiate)(&mut e, g, 0), "cuGraphInstantiate");
            e
        });
        let per_launch = s.kernel_us * s.graph_nodes.max(1) as u64;
        // A marker every `mark` launches tells when work completed without synchronizing.
        let mark = s.sync_every.unwrap_or(16).clamp(1, 16);
        let mut markers: VecDeque<(CUevent, u64)> = VecDeque::new();
        let mut free: Vec<CUevent> = events;
        let mut unmarked = 0u64;
        while !stop.done() {
            let r = match graph {
                Some(g) => (api.graph_launch)(g, stream),
                None => kernel(s.kernel_us),
            };
            check(r, "launch");
            t.launches += 1;
            t.launched_us += per_launch;
            unmarked += per_launch;
            if t.launches % mark == 0 {
                if free.is_empty() {
                    let (e, us) = markers.pop_front().unwrap();
                    check((api.event_sync)(e), "cuEventSynchronize");
                    t.complete(start, us);
                    free.push(e);
                }
                let e = free.pop().unwrap();
                check((api.event_record)(e, stream), "cuEventRecord");
                markers.push_back((e, unmarked));
                unmarked = 0;
            }
            while let Some(&(e, us)) = markers.front() {
                if (api.event_query)(e) != CUDA_SUCCESS {
                    break;
                }
                t.complete(start, us);
                free.push(e);
                markers.pop_front();
            }
            let synced = s.sync_every.is_some_and(|n| t.launches % n == 0);
            if synced {
                check((api.stream_sync)(stream), "cuStreamSynchronize");
            }
            if let Some((g_ms, m)) = s.gap
                && t.launches % m == 0
            {
                std::thread::sleep(Duration::from_millis(g_ms));
            }
        }
        check((api.stream_sync)(stream), "cuStreamSynchronize");
        for (_, us) in markers.drain(..) {
            t.complete(start, us);
        }
        t.complete(start, unmarked);
    }
    t
}

/// One process: its threads, merged.
fn process(api: &'static Api, s: &Shape, start: Instant) -> Tally {
    let n = s.threads.max(s.contexts).max(1);
    if n == 1 && s.contexts == 0 {
        return worker(api, s, false, start);
    }
    let own_ctx = s.contexts > 0;
    let tallies: Vec<Tally> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..n)
            .map(|_| sc.spawn(move || worker(api, s, own_ctx, start)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = Tally::default();
    for t in tallies {
        all.merge(t);
    }
    all
}

fn proc_json(pid: u32, t: &Tally) -> String {
    let w: Vec<String> = t.windows_us.iter().map(u64::to_string).collect();
    format!(
        "{{\"pid\":{pid},\"launches\":{},\"launched_us\":{},\"completed_us\":{},\"windows_us\":[{}]}}",
        t.launches,
        t.launched_us,
        t.completed_us,
        w.join(",")
    )
}

/// `args` are the words after `shape`; `via` is how the driver's functions are found.
pub fn main(via: Via, args: &[String]) {
    let s = parse(args);
    let api: &'static Api = Box::leak(Box::new(Api::load(via).unwrap_or_else(|e| fail(e))));
    // SAFETY: cuInit takes flags by value.
    check(unsafe { (api.init)(0) }, "cuInit");
    let start = Instant::now();
    let mut procs: Vec<String> = Vec::new();
    let mut tally = Tally::default();
    if s.procs > 1 {
        // A launcher: it spawns its workers (as torchrun does) and launches nothing itself.
        let exe = std::env::current_exe().unwrap_or_else(|e| fail(format!("current_exe: {e}")));
        let mut child_args: Vec<String> = std::env::args().skip(1).collect();
        if let Some(i) = child_args.iter().position(|a| a == "--procs") {
            child_args[i + 1] = "1".into();
        }
        let children: Vec<_> = (0..s.procs)
            .map(|_| {
                Command::new(&exe)
                    .args(&child_args)
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| fail(format!("cannot start a worker process: {e}")))
            })
            .collect();
        for c in children {
            let out = c
                .wait_with_output()
                .unwrap_or_else(|e| fail(format!("worker: {e}")));
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().find(|l| l.starts_with('{')).unwrap_or("");
            // A worker's report is `{"procs":[…],…}`; its process entries are passed on.
            match line
                .strip_prefix("{\"procs\":[")
                .and_then(|r| r.split_once("],\"requests\""))
            {
                Some((p, _)) if out.status.success() => procs.push(p.to_string()),
                _ => fail(format!("a worker process failed: {line}")),
            }
        }
    } else {
        tally = process(api, &s, start);
        procs.push(proc_json(std::process::id(), &tally));
    }
    let mut lat: Vec<u64> = tally.requests.iter().map(|r| r.1).collect();
    lat.sort_unstable();
    let q = |p: f64| -> u64 {
        if lat.is_empty() {
            return 0;
        }
        lat[((lat.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(lat.len() - 1)]
    };
    let reqs: Vec<String> = tally
        .requests
        .iter()
        .map(|(a, l)| format!("[{a},{l}]"))
        .collect();
    println!(
        "{{\"procs\":[{}],\"requests\":[{}],\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        procs.join(","),
        reqs.join(","),
        q(0.5),
        q(0.99),
        lat.last().copied().unwrap_or(0)
    );
}

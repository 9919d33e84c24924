//! `gpuslice-probe`: a small CUDA driver-API program, the workload of `gpuslice demo`, of the
//! tests and of the benchmark. It finds the driver the way real programs do (`dlopen` +
//! `dlsym`, or `cuGetProcAddress` like the CUDA runtime), drives one allocation path until the
//! driver refuses, and prints one JSON line of what happened.
//!
//! Usage:
//!   gpuslice-probe [--via dlsym|procaddr|procaddr4] info
//!   gpuslice-probe [--via …] fill PATH CHUNK [--max N] [--hold]
//!   gpuslice-probe [--via …] hold BYTES
//!   gpuslice-probe [--via …] forkhold BYTES
//!   gpuslice-probe [--via …] race BYTES START_UNIX_NS HOLD_MS
//!   gpuslice-probe [--via …] launches N
//!   gpuslice-probe [--via …] allocs N BYTES
//!   gpuslice-probe [--via …] saturate SECONDS [launch|ex|coop|graph]
//!   gpuslice-probe [--via …] periodic PERIOD_MS KERNEL_US SECONDS
//!   gpuslice-probe [--via …] shape SECONDS [OPTIONS]   (see shapes.rs)
//!
//! `saturate` keeps the GPU busy with `busy` kernels of mixed lengths (0.05 to 5 ms) along one
//! launch path; `periodic` is an inference-like loop (one kernel per period, waited for) that
//! reports completion latencies.
//! PATH: alloc alloc_v1 pitch pitch_v1 managed async pool vmm array array3d mipmap graph context
#![allow(non_snake_case)]

mod exact;
mod images;
mod shared;

use gpuslice_cuda_abi::driver::*;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The module image the probe's launches use: the simulator finds only the kernels it names.
pub(crate) const KERNELS: &std::ffi::CStr =
    c"gpuslice-sim-image\nkernel busy\nkernel noop\nkernel k\n";

macro_rules! api {
    ($($field:ident : $name:literal @ $ver:literal => fn($($arg:ty),*);)*) => {
        struct Api { $($field: unsafe extern "C" fn($($arg),*) -> CUresult,)* }
        impl Api {
            fn load(via: Via) -> Result<Api, String> {
                let lib = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
                if lib.is_null() {
                    return Err("cannot dlopen libcuda.so.1".into());
                }
                let gpa = match via {
                    Via::ProcAddress4 => unsafe { libc::dlsym(lib, c"cuGetProcAddress".as_ptr()) },
                    _ => unsafe { libc::dlsym(lib, c"cuGetProcAddress_v2".as_ptr()) },
                };
                Ok(Api { $($field: {
                    let p = if via != Via::Dlsym {
                        base_via_procaddr(gpa, via, $name, $ver)?
                    } else {
                        let exported = CString::new(exported_name($name, $ver)).unwrap();
                        unsafe { libc::dlsym(lib, exported.as_ptr()) }
                    };
                    if p.is_null() { return Err(format!("driver has no {}", $name)); }
                    unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> CUresult>(p) }
                },)* })
            }
        }
    };
}

/// The symbol a program linked against cuda.h of `ver` would bind `base` to.
fn exported_name(base: &str, ver: i32) -> String {
    gpuslice_cuda_abi::generated::resolve_symbol(base, ver, false)
        .map(str::to_string)
        .unwrap_or_else(|_| base.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Dlsym,
    /// `cuGetProcAddress_v2`, the 5-argument form of CUDA 12.
    ProcAddress,
    /// `cuGetProcAddress`, the 4-argument form of CUDA 11.3.
    ProcAddress4,
}

fn base_via_procaddr(
    gpa: *mut c_void,
    via: Via,
    base: &str,
    ver: i32,
) -> Result<*mut c_void, String> {
    if gpa.is_null() {
        return Err("driver has no cuGetProcAddress".into());
    }
    type Gpa5 =
        unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CUresult;
    type Gpa4 = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CUresult;
    let name = CString::new(base).unwrap();
    let (mut p, mut status) = (std::ptr::null_mut(), 0);
    let r = unsafe {
        if via == Via::ProcAddress4 {
            std::mem::transmute::<*mut c_void, Gpa4>(gpa)(name.as_ptr(), &mut p, ver, 0)
        } else {
            std::mem::transmute::<*mut c_void, Gpa5>(gpa)(
                name.as_ptr(),
                &mut p,
                ver,
                0,
                &mut status,
            )
        }
    };
    if r != CUDA_SUCCESS {
        return Err(format!("cuGetProcAddress({base}, {ver}) = {r}"));
    }
    Ok(p)
}

api! {
    init: "cuInit" @ 2000 => fn(c_uint);
    device_get: "cuDeviceGet" @ 2000 => fn(*mut CUdevice, c_int);
    primary_retain: "cuDevicePrimaryCtxRetain" @ 7000 => fn(*mut CUcontext, CUdevice);
    ctx_set_current: "cuCtxSetCurrent" @ 4000 => fn(CUcontext);
    ctx_create: "cuCtxCreate" @ 3020 => fn(*mut CUcontext, c_uint, CUdevice);
    ctx_sync: "cuCtxSynchronize" @ 2000 => fn();
    mem_get_info: "cuMemGetInfo" @ 3020 => fn(*mut usize, *mut usize);
    device_total_mem: "cuDeviceTotalMem" @ 3020 => fn(*mut usize, CUdevice);
    mem_alloc: "cuMemAlloc" @ 3020 => fn(*mut CUdeviceptr, usize);
    mem_free: "cuMemFree" @ 3020 => fn(CUdeviceptr);
    mem_alloc_v1: "cuMemAlloc" @ 2000 => fn(*mut CUdeviceptr_v1, c_uint);
    mem_free_v1: "cuMemFree" @ 2000 => fn(CUdeviceptr_v1);
    mem_alloc_pitch_v1: "cuMemAllocPitch" @ 2000 => fn(*mut CUdeviceptr_v1, *mut c_uint, c_uint, c_uint, c_uint);
    mem_alloc_pitch: "cuMemAllocPitch" @ 3020 => fn(*mut CUdeviceptr, *mut usize, usize, usize, c_uint);
    mem_alloc_managed: "cuMemAllocManaged" @ 6000 => fn(*mut CUdeviceptr, usize, c_uint);
    stream_create: "cuStreamCreate" @ 2000 => fn(*mut CUstream, c_uint);
    stream_sync: "cuStreamSynchronize" @ 2000 => fn(CUstream);
    mem_alloc_async: "cuMemAllocAsync" @ 11020 => fn(*mut CUdeviceptr, usize, CUstream);
    mem_free_async: "cuMemFreeAsync" @ 11020 => fn(CUdeviceptr, CUstream);
    pool_create: "cuMemPoolCreate" @ 11020 => fn(*mut CUmemoryPool, *const CUmemPoolProps);
    alloc_from_pool: "cuMemAllocFromPoolAsync" @ 11020 => fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream);
    mem_create: "cuMemCreate" @ 10020 => fn(*mut CUmemGenericAllocationHandle, usize, *const CUmemAllocationProp, u64);
    mem_release: "cuMemRelease" @ 10020 => fn(CUmemGenericAllocationHandle);
    array_create: "cuArrayCreate" @ 3020 => fn(*mut CUarray, *const CUDA_ARRAY_DESCRIPTOR);
    array3d_create: "cuArray3DCreate" @ 3020 => fn(*mut CUarray, *const CUDA_ARRAY3D_DESCRIPTOR);
    array_destroy: "cuArrayDestroy" @ 2000 => fn(CUarray);
    mipmap_create: "cuMipmappedArrayCreate" @ 5000 => fn(*mut CUmipmappedArray, *const CUDA_ARRAY3D_DESCRIPTOR, c_uint);
    graph_create: "cuGraphCreate" @ 10000 => fn(*mut CUgraph, c_uint);
    graph_add_alloc: "cuGraphAddMemAllocNode" @ 11040 => fn(*mut CUgraphNode, CUgraph, *const CUgraphNode, usize, *mut CUDA_MEM_ALLOC_NODE_PARAMS);
    graph_instantiate: "cuGraphInstantiateWithFlags" @ 11040 => fn(*mut CUgraphExec, CUgraph, u64);
    module_load: "cuModuleLoadData" @ 2000 => fn(*mut CUmodule, *const c_void);
    module_function: "cuModuleGetFunction" @ 2000 => fn(*mut CUfunction, CUmodule, *const c_char);
    launch: "cuLaunchKernel" @ 4000 => fn(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void, *mut *mut c_void);
    launch_ex: "cuLaunchKernelEx" @ 11060 => fn(*const CUlaunchConfig, CUfunction, *mut *mut c_void, *mut *mut c_void);
    launch_coop: "cuLaunchCooperativeKernel" @ 9000 => fn(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void);
    begin_capture: "cuStreamBeginCapture" @ 10010 => fn(CUstream, c_int);
    end_capture: "cuStreamEndCapture" @ 10000 => fn(CUstream, *mut CUgraph);
    graph_launch: "cuGraphLaunch" @ 10000 => fn(CUgraphExec, CUstream);
}

mod shapes;

enum Held {
    Ptr(CUdeviceptr),
    Ptr32(CUdeviceptr_v1),
    Async(CUdeviceptr),
    Vmm(CUmemGenericAllocationHandle),
    Array(CUarray),
    Other,
}

struct Probe {
    api: Api,
    dev: CUdevice,
    stream: CUstream,
    pool: CUmemoryPool,
}

fn die(msg: String) -> ! {
    println!("{{\"error\":{:?}}}", msg);
    std::process::exit(3);
}

impl Probe {
    fn start(via: Via) -> Probe {
        let api = Api::load(via).unwrap_or_else(|e| die(e));
        let r = unsafe { (api.init)(0) };
        if r != CUDA_SUCCESS {
            die(format!("cuInit failed: {r}"));
        }
        let mut dev = 0;
        let mut ctx = std::ptr::null_mut();
        unsafe {
            check((api.device_get)(&mut dev, 0), "cuDeviceGet");
            check(
                (api.primary_retain)(&mut ctx, dev),
                "cuDevicePrimaryCtxRetain",
            );
            check((api.ctx_set_current)(ctx), "cuCtxSetCurrent");
        }
        Probe {
            api,
            dev,
            stream: std::ptr::null_mut(),
            pool: std::ptr::null_mut(),
        }
    }

    fn busy_function(&self) -> CUfunction {
        let (mut m, mut f) = (std::ptr::null_mut(), std::ptr::null_mut());
        unsafe {
            check(
                (self.api.module_load)(&mut m, KERNELS.as_ptr().cast()),
                "cuModuleLoadData",
            );
            check(
                (self.api.module_function)(&mut f, m, c"busy".as_ptr()),
                "cuModuleGetFunction",
            );
        }
        f
    }

    fn own_stream(&self) -> CUstream {
        let mut s = std::ptr::null_mut();
        unsafe { check((self.api.stream_create)(&mut s, 0), "cuStreamCreate") };
        s
    }

    /// One `busy` kernel of `us` microseconds along `path` (launch, ex or coop).
    fn launch_busy(&self, path: &str, f: CUfunction, stream: CUstream, us: u64) -> CUresult {
        let mut arg = us;
        let mut params = [&mut arg as *mut u64 as *mut c_void];
        let pp = params.as_mut_ptr();
        unsafe {
            match path {
                "ex" => {
                    let cfg = CUlaunchConfig {
                        gridDimX: 1,
                        gridDimY: 1,
                        gridDimZ: 1,
                        blockDimX: 1,
                        blockDimY: 1,
                        blockDimZ: 1,
                        sharedMemBytes: 0,
                        hStream: stream,
                        attrs: std::ptr::null_mut(),
                        numAttrs: 0,
                    };
                    (self.api.launch_ex)(&cfg, f, pp, std::ptr::null_mut())
                }
                "coop" => (self.api.launch_coop)(f, 1, 1, 1, 1, 1, 1, 0, stream, pp),
                _ => (self.api.launch)(f, 1, 1, 1, 1, 1, 1, 0, stream, pp, std::ptr::null_mut()),
            }
        }
    }

    /// An executable graph of `busy` kernels, made by capturing launches on `stream`.
    fn busy_graph(&self, f: CUfunction, stream: CUstream, us: &[u64]) -> CUgraphExec {
        let mut g = std::ptr::null_mut();
        let mut e = std::ptr::null_mut();
        unsafe {
            check((self.api.begin_capture)(stream, 0), "cuStreamBeginCapture");
            for &u in us {
                check(
                    self.launch_busy("launch", f, stream, u),
                    "captured cuLaunchKernel",
                );
            }
            check((self.api.end_capture)(stream, &mut g), "cuStreamEndCapture");
            check(
                (self.api.graph_instantiate)(&mut e, g, 0),
                "cuGraphInstantiate",
            );
        }
        e
    }

    fn info(&self) -> (usize, usize, usize) {
        let (mut free, mut total, mut dtotal) = (0, 0, 0);
        unsafe {
            check(
                (self.api.mem_get_info)(&mut free, &mut total),
                "cuMemGetInfo",
            );
            check(
                (self.api.device_total_mem)(&mut dtotal, self.dev),
                "cuDeviceTotalMem",
            );
        }
        (free, total, dtotal)
    }

    /// One allocation of `bytes` along `path`.
    fn alloc(&mut self, path: &str, bytes: usize) -> Result<Held, CUresult> {
        let a = &self.api;
        let mut p: CUdeviceptr = 0;
        let r = unsafe {
            match path {
                "alloc" => (a.mem_alloc)(&mut p, bytes),
                "alloc_v1" | "pitch_v1" => {
                    // The pre-3.2 ABI: 32-bit pointers and sizes.
                    let mut p32: CUdeviceptr_v1 = 0;
                    let r = if path == "alloc_v1" {
                        (a.mem_alloc_v1)(&mut p32, bytes as c_uint)
                    } else {
                        let mut pitch: c_uint = 0;
                        (a.mem_alloc_pitch_v1)(
                            &mut p32,
                            &mut pitch,
                            4096,
                            (bytes / 4096) as c_uint,
                            4,
                        )
                    };
                    return if r == CUDA_SUCCESS {
                        Ok(Held::Ptr32(p32))
                    } else {
                        Err(r)
                    };
                }
                "managed" => (a.mem_alloc_managed)(&mut p, bytes, CU_MEM_ATTACH_GLOBAL),
                "pitch" => {
                    let mut pitch = 0;
                    (a.mem_alloc_pitch)(&mut p, &mut pitch, 4096, bytes / 4096, 4)
                }
                "async" | "pool" => {
                    if self.stream.is_null() {
                        check((a.stream_create)(&mut self.stream, 0), "cuStreamCreate");
                    }
                    if path == "pool" && self.pool.is_null() {
                        let props = CUmemPoolProps {
                            allocType: 1, // CU_MEM_ALLOCATION_TYPE_PINNED
                            location: CUmemLocation {
                                type_: CU_MEM_LOCATION_TYPE_DEVICE,
                                id: self.dev,
                            },
                            ..Default::default()
                        };
                        check((a.pool_create)(&mut self.pool, &props), "cuMemPoolCreate");
                    }
                    let r = if path == "pool" {
                        (a.alloc_from_pool)(&mut p, bytes, self.pool, self.stream)
                    } else {
                        (a.mem_alloc_async)(&mut p, bytes, self.stream)
                    };
                    if r == CUDA_SUCCESS {
                        (a.stream_sync)(self.stream);
                    }
                    r
                }
                "vmm" => {
                    let prop = CUmemAllocationProp {
                        type_: 1, // CU_MEM_ALLOCATION_TYPE_PINNED
                        location: CUmemLocation {
                            type_: CU_MEM_LOCATION_TYPE_DEVICE,
                            id: self.dev,
                        },
                        ..Default::default()
                    };
                    let mut h = 0;
                    let r = (a.mem_create)(&mut h, bytes, &prop, 0);
                    return if r == CUDA_SUCCESS {
                        Ok(Held::Vmm(h))
                    } else {
                        Err(r)
                    };
                }
                "array" | "array3d" | "mipmap" => {
                    let mut arr: CUarray = std::ptr::null_mut();
                    // 4096-wide rows of single-byte texels, `bytes / 4096` rows.
                    let r = if path == "array" {
                        let d = CUDA_ARRAY_DESCRIPTOR {
                            Width: 4096,
                            Height: bytes / 4096,
                            Format: CU_AD_FORMAT_UNSIGNED_INT8,
                            NumChannels: 1,
                        };
                        (a.array_create)(&mut arr, &d)
                    } else {
                        let d = CUDA_ARRAY3D_DESCRIPTOR {
                            Width: 4096,
                            Height: 1024,
                            Depth: bytes / (4096 * 1024),
                            Format: CU_AD_FORMAT_UNSIGNED_INT8,
                            NumChannels: 1,
                            Flags: 0,
                        };
                        if path == "array3d" {
                            (a.array3d_create)(&mut arr, &d)
                        } else {
                            let mut m: CUmipmappedArray = std::ptr::null_mut();
                            let r = (a.mipmap_create)(&mut m, &d, 1);
                            return if r == CUDA_SUCCESS {
                                Ok(Held::Other)
                            } else {
                                Err(r)
                            };
                        }
                    };
                    return if r == CUDA_SUCCESS {
                        Ok(Held::Array(arr))
                    } else {
                        Err(r)
                    };
                }
                "graph" => {
                    let mut g: CUgraph = std::ptr::null_mut();
                    check((a.graph_create)(&mut g, 0), "cuGraphCreate");
                    let mut params: CUDA_MEM_ALLOC_NODE_PARAMS = std::mem::zeroed();
                    params.poolProps.allocType = 1;
                    params.poolProps.location = CUmemLocation {
                        type_: CU_MEM_LOCATION_TYPE_DEVICE,
                        id: self.dev,
                    };
                    params.bytesize = bytes;
                    let mut node: CUgraphNode = std::ptr::null_mut();
                    check(
                        (a.graph_add_alloc)(&mut node, g, std::ptr::null(), 0, &mut params),
                        "cuGraphAddMemAllocNode",
                    );
                    let mut exec: CUgraphExec = std::ptr::null_mut();
                    check((a.graph_instantiate)(&mut exec, g, 0), "cuGraphInstantiate");
                    // Graph memory is taken when the graph runs; an allocation the graph does
                    // not free stays with the program afterwards.
                    let mut r = (a.graph_launch)(exec, std::ptr::null_mut());
                    if r == CUDA_SUCCESS {
                        r = (a.ctx_sync)();
                    }
                    return if r == CUDA_SUCCESS {
                        Ok(Held::Other)
                    } else {
                        Err(r)
                    };
                }
                "context" => {
                    let mut c: CUcontext = std::ptr::null_mut();
                    let r = (a.ctx_create)(&mut c, 0, self.dev);
                    return if r == CUDA_SUCCESS {
                        Ok(Held::Other)
                    } else {
                        Err(r)
                    };
                }
                other => die(format!("unknown path {other}")),
            }
        };
        if r != CUDA_SUCCESS {
            return Err(r);
        }
        Ok(if path == "async" || path == "pool" {
            Held::Async(p)
        } else {
            Held::Ptr(p)
        })
    }

    fn free(&self, h: Held) {
        unsafe {
            match h {
                Held::Ptr(p) => check((self.api.mem_free)(p), "cuMemFree"),
                Held::Ptr32(p) => check((self.api.mem_free_v1)(p), "cuMemFree"),
                Held::Async(p) => {
                    check((self.api.mem_free_async)(p, self.stream), "cuMemFreeAsync");
                    (self.api.stream_sync)(self.stream);
                }
                Held::Vmm(h) => check((self.api.mem_release)(h), "cuMemRelease"),
                Held::Array(a) => check((self.api.array_destroy)(a), "cuArrayDestroy"),
                Held::Other => {}
            }
        }
    }
}

fn check(r: CUresult, what: &str) {
    if r != CUDA_SUCCESS {
        die(format!("{what} failed: {r}"));
    }
}

fn parse_bytes(s: &str) -> usize {
    let (n, mult) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else {
        (s, 1)
    };
    n.parse::<usize>()
        .unwrap_or_else(|_| die(format!("bad size {s}")))
        * mult
}

fn now_unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let started = Instant::now();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut via = Via::Dlsym;
    if args.first().map(String::as_str) == Some("--via") {
        via = match args.get(1).map(String::as_str) {
            Some("procaddr") => Via::ProcAddress,
            Some("procaddr4") => Via::ProcAddress4,
            Some("dlsym") => Via::Dlsym,
            _ => die("--via takes dlsym, procaddr or procaddr4".into()),
        };
        args.drain(..2);
    }
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| die(format!("missing argument {i}")))
    };
    if arg(0) == "exact" {
        return exact::main(&args[1..]);
    }
    if arg(0) == "share-agent" {
        return shared::main(&args[1..]);
    }
    let mut probe = Probe::start(via);
    match arg(0).as_str() {
        "info" => {
            let (free, total, dtotal) = probe.info();
            let init_ns = started.elapsed().as_nanos();
            println!(
                "{{\"free\":{free},\"total\":{total},\"device_total\":{dtotal},\"init_ns\":{init_ns}}}"
            );
        }
        "fill" => {
            let (path, chunk) = (arg(1), parse_bytes(&arg(2)));
            let max = args
                .iter()
                .position(|a| a == "--max")
                .map(|i| arg(i + 1).parse::<usize>().unwrap())
                .unwrap_or(usize::MAX);
            let hold = args.iter().any(|a| a == "--hold");
            let mut held = Vec::new();
            let mut error = 0;
            while held.len() < max {
                match probe.alloc(&path, chunk) {
                    Ok(h) => held.push(h),
                    Err(e) => {
                        error = e;
                        break;
                    }
                }
            }
            let (free, total, _) = probe.info();
            let granted = held.len();
            if hold {
                println!(
                    "{{\"path\":\"{path}\",\"granted\":{granted},\"bytes\":{},\"error\":{error},\"free\":{free},\"total\":{total}}}",
                    granted * chunk
                );
                sleep_forever();
            }
            for h in held {
                probe.free(h);
            }
            let (free_after, _, _) = probe.info();
            println!(
                "{{\"path\":\"{path}\",\"granted\":{granted},\"bytes\":{},\"error\":{error},\"free\":{free},\"total\":{total},\"free_after_release\":{free_after}}}",
                granted * chunk
            );
        }
        "hold" => {
            let bytes = parse_bytes(&arg(1));
            let r = probe.alloc("alloc", bytes).map(|_| 0).unwrap_or_else(|e| e);
            println!(
                "{{\"held\":{bytes},\"error\":{r},\"pid\":{}}}",
                std::process::id()
            );
            sleep_forever();
        }
        "forkhold" => {
            // Holds memory, then forks a child that outlives us (as a data-loader worker might).
            let bytes = parse_bytes(&arg(1));
            let r = probe.alloc("alloc", bytes).map(|_| 0).unwrap_or_else(|e| e);
            let child = unsafe { libc::fork() };
            if child == 0 {
                sleep_forever();
            }
            println!(
                "{{\"held\":{bytes},\"error\":{r},\"pid\":{},\"child\":{child}}}",
                std::process::id()
            );
            sleep_forever();
        }
        "race" => {
            let bytes = parse_bytes(&arg(1));
            let at: u128 = arg(2).parse().unwrap();
            let hold_ms: u64 = arg(3).parse().unwrap();
            while now_unix_ns() < at {
                std::hint::spin_loop();
            }
            let r = probe.alloc("alloc", bytes).map(|_| 0).unwrap_or_else(|e| e);
            println!("{{\"error\":{r}}}");
            std::thread::sleep(Duration::from_millis(hold_ms));
        }
        "launches" => {
            let n: usize = arg(1).parse().unwrap();
            let a = &probe.api;
            let (mut m, mut f) = (std::ptr::null_mut(), std::ptr::null_mut());
            unsafe {
                check(
                    (a.module_load)(&mut m, KERNELS.as_ptr().cast()),
                    "cuModuleLoadData",
                );
                check(
                    (a.module_function)(&mut f, m, c"noop".as_ptr()),
                    "cuModuleGetFunction",
                );
            }
            let t = Instant::now();
            for _ in 0..n {
                unsafe {
                    (a.launch)(
                        f,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        0,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                };
            }
            println!(
                "{{\"ns_per_call\":{:.1}}}",
                t.elapsed().as_nanos() as f64 / n as f64
            );
        }
        "allocs" => {
            let (n, bytes): (usize, usize) = (arg(1).parse().unwrap(), parse_bytes(&arg(2)));
            let t = Instant::now();
            for _ in 0..n {
                let mut p = 0;
                unsafe {
                    check((probe.api.mem_alloc)(&mut p, bytes), "cuMemAlloc");
                    check((probe.api.mem_free)(p), "cuMemFree");
                }
            }
            println!(
                "{{\"ns_per_call\":{:.1}}}",
                t.elapsed().as_nanos() as f64 / (2 * n) as f64
            );
        }
        "saturate" => {
            let secs: f64 = arg(1).parse().unwrap_or_else(|_| die("bad SECONDS".into()));
            let path = args.get(2).cloned().unwrap_or_else(|| "launch".into());
            let f = probe.busy_function();
            let stream = probe.own_stream();
            // Lengths cycle through a fixed mix; a per-process offset desynchronises tenants.
            const MIX_US: [u64; 8] = [50, 1000, 200, 5000, 2000, 50, 500, 3000];
            let mut i = std::process::id() as usize;
            let mut launched_us = 0u64;
            let mut n = 0u64;
            let graph =
                (path == "graph").then(|| probe.busy_graph(f, stream, &[1000, 2000, 500, 1500]));
            let end = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < end {
                let us = MIX_US[i % MIX_US.len()];
                i += 1;
                let r = match (path.as_str(), graph) {
                    (_, Some(g)) => unsafe { (probe.api.graph_launch)(g, stream) },
                    _ => probe.launch_busy(&path, f, stream, us),
                };
                if r != CUDA_SUCCESS {
                    die(format!("launch failed: {r}"));
                }
                launched_us += if graph.is_some() { 5000 } else { us };
                n += 1;
            }
            unsafe { (probe.api.stream_sync)(stream) };
            println!(
                "{{\"path\":\"{path}\",\"launches\":{n},\"launched_us\":{launched_us},\"pid\":{}}}",
                std::process::id()
            );
        }
        "periodic" => {
            let period = Duration::from_millis(arg(1).parse().unwrap());
            let kernel_us: u64 = arg(2).parse().unwrap();
            let secs: f64 = arg(3).parse().unwrap();
            let f = probe.busy_function();
            let stream = probe.own_stream();
            let mut lat: Vec<u64> = Vec::new();
            let start = Instant::now();
            let mut next = start;
            while start.elapsed().as_secs_f64() < secs {
                let t = Instant::now();
                let r = probe.launch_busy("launch", f, stream, kernel_us);
                if r != CUDA_SUCCESS {
                    die(format!("launch failed: {r}"));
                }
                unsafe { check((probe.api.stream_sync)(stream), "cuStreamSynchronize") };
                lat.push(t.elapsed().as_micros() as u64);
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            lat.sort_unstable();
            let q = |p: f64| {
                lat[((lat.len() as f64 * p).ceil() as usize)
                    .saturating_sub(1)
                    .min(lat.len() - 1)]
            };
            println!(
                "{{\"count\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
                lat.len(),
                q(0.5),
                q(0.99),
                lat[lat.len() - 1]
            );
        }
        "shape" => shapes::main(via, &args[1..]),
        other => die(format!("unknown command {other}")),
    }
    unsafe { (probe.api.ctx_sync)() };
}

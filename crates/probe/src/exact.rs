//! `gpuslice-probe exact SCENARIO [ARGS]`: memory patterns of real programs whose charge must
//! follow the device's own lifetime exactly. After every step it records two counts read past
//! the interposer: the tenant's ledger (the mapped ledger file) and the device's memory in use
//! (NVML's per-process accounting, which the interposer does not alter). One JSON line:
//! `{"scenario":…,"steps":[{"step":…,"r":…,"ledger":…,"device":…},…]}`.
//!
//! Scenarios:
//!   vmm SIZE N          create, map, release (the PyTorch expandable-segments pattern) N times,
//!                       then unmap everything
//!   vmm-retain SIZE     create, map, retain the handle, release twice, then another create
//!   race THREADS ITERS  threads racing cuMemAlloc/cuMemFree of mixed sizes
//!   contexts SIZE       allocations in a created context, then in the primary context across a
//!                       reset and a last release
//!   graph SIZE          a graph that allocates and frees SIZE, launched and destroyed; then
//!                       cuMemAlloc of SIZE, cuDeviceGraphMemTrim, cuMemAlloc again
//!   graph-update SMALL BIG
//!                       a graph that allocates and frees SMALL, instantiated and launched; then
//!                       updated (cuGraphExecUpdate_v2) from a graph of the same shape that
//!                       allocates BIG, launched, updated back to SMALL, launched, trimmed
//!   legacy N            N launches through cuLaunch, cuLaunchGrid and cuLaunchGridAsync
//!   globals SIZE        modules whose images declare two `__device__` variables of SIZE/2
//!                       each, loaded until refused (a malformed image first); the first one's
//!                       variable read back; every module unloaded; then one loaded in a created
//!                       context that is destroyed with it; then one library loaded, its
//!                       variable read back, and unloaded
//!   images BIG SMALL MIXED
//!                       real module images (cubin, PTX, fatbinary bare and wrapped, from
//!                       memory and from files, modules and libraries) whose `__device__`
//!                       variables take BIG, then SMALL: each loaded, its kernel and a missing
//!                       name looked up, its variable read back, unloaded; then a fatbinary
//!                       whose sm_80 entry takes MIXED and sm_90 entry SMALL (images.rs)
//!   image-race SMALL BIG N
//!                       N loads of a cubin whose `.nv.global` size another thread flips
//!                       between SMALL and BIG all along (images.rs)
//!   arrays              layered mipmapped, cubemap-layered mipmapped and cubemap arrays, in
//!                       turn, until one is refused; then every one destroyed

use gpuslice_cuda_abi::driver::*;
use gpuslice_cuda_abi::nvml::*;
use std::ffi::{CStr, c_int, c_uint, c_void};
use std::fmt::Write;

fn lib(name: &CStr) -> *mut c_void {
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
    if h.is_null() {
        super::die(format!("cannot dlopen {name:?}"));
    }
    h
}

/// A function of the driver or NVML, found with `dlsym` as programs that dlopen do.
fn sym<T: Copy>(h: *mut c_void, name: &CStr) -> T {
    let p = unsafe { libc::dlsym(h, name.as_ptr()) };
    if p.is_null() {
        super::die(format!("no {name:?}"));
    }
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: T is the function pointer type of `name`, as declared in cuda.h / nvml.h.
    unsafe { std::mem::transmute_copy(&p) }
}

macro_rules! driver {
    ($($f:ident: $name:literal => fn($($a:ty),*);)*) => {
        #[derive(Clone, Copy)]
        pub(crate) struct Cu { $(pub(crate) $f: unsafe extern "C" fn($($a),*) -> CUresult,)* }
        impl Cu {
            fn load(h: *mut c_void) -> Cu {
                Cu { $($f: sym(h, {
                    const N: &str = concat!($name, "\0");
                    match CStr::from_bytes_with_nul(N.as_bytes()) { Ok(c) => c, Err(_) => panic!() }
                }),)* }
            }
        }
    };
}

driver! {
    init: "cuInit" => fn(c_uint);
    device_get: "cuDeviceGet" => fn(*mut CUdevice, c_int);
    retain: "cuDevicePrimaryCtxRetain" => fn(*mut CUcontext, CUdevice);
    release_primary: "cuDevicePrimaryCtxRelease_v2" => fn(CUdevice);
    reset_primary: "cuDevicePrimaryCtxReset_v2" => fn(CUdevice);
    set_current: "cuCtxSetCurrent" => fn(CUcontext);
    ctx_create: "cuCtxCreate_v2" => fn(*mut CUcontext, c_uint, CUdevice);
    ctx_destroy: "cuCtxDestroy_v2" => fn(CUcontext);
    sync: "cuCtxSynchronize" => fn();
    alloc: "cuMemAlloc_v2" => fn(*mut CUdeviceptr, usize);
    free: "cuMemFree_v2" => fn(CUdeviceptr);
    array_create: "cuArrayCreate_v2" => fn(*mut CUarray, *const CUDA_ARRAY_DESCRIPTOR);
    array3d_create: "cuArray3DCreate_v2" => fn(*mut CUarray, *const CUDA_ARRAY3D_DESCRIPTOR);
    array_destroy: "cuArrayDestroy" => fn(CUarray);
    mipmap_create: "cuMipmappedArrayCreate" => fn(*mut CUmipmappedArray, *const CUDA_ARRAY3D_DESCRIPTOR, c_uint);
    mipmap_destroy: "cuMipmappedArrayDestroy" => fn(CUmipmappedArray);
    create: "cuMemCreate" => fn(*mut CUmemGenericAllocationHandle, usize, *const CUmemAllocationProp, u64);
    release: "cuMemRelease" => fn(CUmemGenericAllocationHandle);
    retain_handle: "cuMemRetainAllocationHandle" => fn(*mut CUmemGenericAllocationHandle, *mut c_void);
    reserve: "cuMemAddressReserve" => fn(*mut CUdeviceptr, usize, usize, CUdeviceptr, u64);
    address_free: "cuMemAddressFree" => fn(CUdeviceptr, usize);
    map: "cuMemMap" => fn(CUdeviceptr, usize, usize, CUmemGenericAllocationHandle, u64);
    unmap: "cuMemUnmap" => fn(CUdeviceptr, usize);
    graph_create: "cuGraphCreate" => fn(*mut CUgraph, c_uint);
    graph_destroy: "cuGraphDestroy" => fn(CUgraph);
    add_alloc: "cuGraphAddMemAllocNode" => fn(*mut CUgraphNode, CUgraph, *const CUgraphNode, usize, *mut CUDA_MEM_ALLOC_NODE_PARAMS);
    add_free: "cuGraphAddMemFreeNode" => fn(*mut CUgraphNode, CUgraph, *const CUgraphNode, usize, CUdeviceptr);
    instantiate_params: "cuGraphInstantiateWithParams" => fn(*mut CUgraphExec, CUgraph, *mut c_void);
    instantiate: "cuGraphInstantiateWithFlags" => fn(*mut CUgraphExec, CUgraph, u64);
    graph_launch: "cuGraphLaunch" => fn(CUgraphExec, CUstream);
    exec_destroy: "cuGraphExecDestroy" => fn(CUgraphExec);
    graph_trim: "cuDeviceGraphMemTrim" => fn(CUdevice);
    exec_update: "cuGraphExecUpdate_v2" => fn(CUgraphExec, CUgraph, *mut CUgraphExecUpdateResultInfo);
    module_load: "cuModuleLoadData" => fn(*mut CUmodule, *const c_void);
    module_function: "cuModuleGetFunction" => fn(*mut CUfunction, CUmodule, *const i8);
    module_load_ex: "cuModuleLoadDataEx" => fn(*mut CUmodule, *const c_void, c_uint, *mut c_int, *mut *mut c_void);
    module_global: "cuModuleGetGlobal_v2" => fn(*mut CUdeviceptr, *mut usize, CUmodule, *const i8);
    module_unload: "cuModuleUnload" => fn(CUmodule);
    library_load: "cuLibraryLoadData" => fn(*mut CUlibrary, *const c_void, *mut c_int, *mut *mut c_void, c_uint, *mut c_int, *mut *mut c_void, c_uint);
    library_global: "cuLibraryGetGlobal" => fn(*mut CUdeviceptr, *mut usize, CUlibrary, *const i8);
    library_unload: "cuLibraryUnload" => fn(CUlibrary);
    module_load_file: "cuModuleLoad" => fn(*mut CUmodule, *const i8);
    module_load_fatbin: "cuModuleLoadFatBinary" => fn(*mut CUmodule, *const c_void);
    library_load_file: "cuLibraryLoadFromFile" => fn(*mut CUlibrary, *const i8, *mut c_int, *mut *mut c_void, c_uint, *mut c_int, *mut *mut c_void, c_uint);
    library_kernel: "cuLibraryGetKernel" => fn(*mut CUkernel, CUlibrary, *const i8);
    launch_legacy: "cuLaunch" => fn(CUfunction);
    launch_grid: "cuLaunchGrid" => fn(CUfunction, c_int, c_int);
    launch_grid_async: "cuLaunchGridAsync" => fn(CUfunction, c_int, c_int, CUstream);
}

pub(crate) struct Run {
    pub(crate) cu: Cu,
    dev: CUdevice,
    ctx: CUcontext,
    ledger: gpuslice_ledger::Ledger,
    nvml_procs:
        unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut nvmlProcessInfo_t) -> nvmlReturn_t,
    nvml_dev: nvmlDevice_t,
    steps: String,
}

impl Run {
    fn start() -> Run {
        let h = lib(c"libcuda.so.1");
        let cu = Cu::load(h);
        // The tenant's ledger, found the way the interposer finds it: from the nearest
        // authority (`gpuslice run`, or the container's mount).
        let mut auths = gpuslice_warden::client::discover().unwrap_or_else(|e| super::die(e));
        let a = auths
            .last_mut()
            .unwrap_or_else(|| super::die("no gpuslice authority over this process".into()));
        let fd = a
            .take_ledger()
            .unwrap_or_else(|| super::die("the authority sent no ledger".into()));
        let ledger = gpuslice_ledger::Ledger::from_fd(
            fd,
            std::path::Path::new("the tenant's ledger"),
            a.limits.clone(),
        )
        .unwrap_or_else(|e| super::die(format!("ledger: {e}")));
        // Kept open for the process's life, like the interposer's own connection.
        std::mem::forget(auths);
        let n = lib(c"libnvidia-ml.so.1");
        let nvml_init: unsafe extern "C" fn() -> nvmlReturn_t = sym(n, c"nvmlInit_v2");
        let by_index: unsafe extern "C" fn(c_uint, *mut nvmlDevice_t) -> nvmlReturn_t =
            sym(n, c"nvmlDeviceGetHandleByIndex_v2");
        let mut nvml_dev = std::ptr::null_mut();
        let (mut dev, mut ctx) = (0, std::ptr::null_mut());
        unsafe {
            assert_eq!(nvml_init(), NVML_SUCCESS);
            assert_eq!(by_index(0, &mut nvml_dev), NVML_SUCCESS);
            super::check((cu.init)(0), "cuInit");
            super::check((cu.device_get)(&mut dev, 0), "cuDeviceGet");
            super::check((cu.retain)(&mut ctx, dev), "cuDevicePrimaryCtxRetain");
            super::check((cu.set_current)(ctx), "cuCtxSetCurrent");
        }
        Run {
            cu,
            dev,
            ctx,
            ledger,
            nvml_procs: sym(n, c"nvmlDeviceGetComputeRunningProcesses_v3"),
            nvml_dev,
            steps: String::new(),
        }
    }

    fn ledger_used(&self) -> u64 {
        self.ledger.devices().iter().map(|d| d.used).sum()
    }

    /// Every process's memory on the device, as the device accounts it.
    fn device_used(&self) -> u64 {
        let mut infos = [nvmlProcessInfo_t {
            pid: 0,
            usedGpuMemory: 0,
            gpuInstanceId: 0,
            computeInstanceId: 0,
        }; 64];
        let mut n: c_uint = infos.len() as c_uint;
        let r = unsafe { (self.nvml_procs)(self.nvml_dev, &mut n, infos.as_mut_ptr()) };
        assert_eq!(r, NVML_SUCCESS, "nvmlDeviceGetComputeRunningProcesses");
        infos[..n as usize].iter().map(|p| p.usedGpuMemory).sum()
    }

    pub(crate) fn step(&mut self, name: &str, r: CUresult) -> CUresult {
        let (l, d) = (self.ledger_used(), self.device_used());
        if !self.steps.is_empty() {
            self.steps.push(',');
        }
        let _ = write!(
            self.steps,
            "{{\"step\":\"{name}\",\"r\":{r},\"ledger\":{l},\"device\":{d}}}"
        );
        r
    }

    fn finish(self, scenario: &str) {
        println!("{{\"scenario\":\"{scenario}\",\"steps\":[{}]}}", self.steps);
    }

    fn prop(&self) -> CUmemAllocationProp {
        // SAFETY: plain C data; all-zero is the documented default of every field.
        let mut p: CUmemAllocationProp = unsafe { std::mem::zeroed() };
        p.type_ = CU_MEM_ALLOCATION_TYPE_PINNED;
        p.location = CUmemLocation {
            type_: CU_MEM_LOCATION_TYPE_DEVICE,
            id: self.dev,
        };
        p
    }
}

pub fn main(args: &[String]) {
    let arg = |i: usize| -> String {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| super::die(format!("exact: missing argument {i}")))
    };
    let bytes = |i: usize| super::parse_bytes(&arg(i));
    let mut run = Run::start();
    run.step("start", CUDA_SUCCESS);
    let scenario = arg(0);
    let cu = run.cu;
    unsafe {
        match scenario.as_str() {
            "vmm" => {
                let (size, n) = (bytes(1), arg(2).parse::<usize>().unwrap());
                let mut va = 0;
                run.step("reserve", (cu.reserve)(&mut va, size * n, 0, 0, 0));
                let prop = run.prop();
                let mut mapped = 0;
                for i in 0..n {
                    let mut h = 0;
                    if run.step("create", (cu.create)(&mut h, size, &prop, 0)) != CUDA_SUCCESS {
                        break;
                    }
                    run.step("map", (cu.map)(va + (i * size) as u64, size, 0, h, 0));
                    run.step("release", (cu.release)(h));
                    mapped += 1;
                }
                for i in 0..mapped {
                    run.step("unmap", (cu.unmap)(va + (i * size) as u64, size));
                }
                run.step("address_free", (cu.address_free)(va, size * n));
            }
            "vmm-retain" => {
                let size = bytes(1);
                let mut va = 0;
                run.step("reserve", (cu.reserve)(&mut va, size * 2, 0, 0, 0));
                let prop = run.prop();
                let (mut h, mut h2, mut h3) = (0, 0, 0);
                run.step("create", (cu.create)(&mut h, size, &prop, 0));
                run.step("map", (cu.map)(va, size, 0, h, 0));
                run.step("retain", (cu.retain_handle)(&mut h2, va as *mut c_void));
                run.step("release_retained", (cu.release)(h2));
                run.step("release", (cu.release)(h));
                // Still mapped, so still on the device: another one must not fit past the cap.
                let r = (cu.create)(&mut h3, size, &prop, 0);
                run.step("create_again", r);
                if r == CUDA_SUCCESS {
                    run.step("release_again", (cu.release)(h3));
                }
                run.step("unmap", (cu.unmap)(va, size));
                run.step("address_free", (cu.address_free)(va, size * 2));
            }
            "race" => race(&mut run, arg(1).parse().unwrap(), arg(2).parse().unwrap()),
            "contexts" => {
                let size = bytes(1);
                let mut c = std::ptr::null_mut();
                run.step("ctx_create", (cu.ctx_create)(&mut c, 0, run.dev));
                let mut p = 0;
                run.step("alloc_in_ctx", (cu.alloc)(&mut p, size));
                let mut a = std::ptr::null_mut();
                let desc = CUDA_ARRAY_DESCRIPTOR {
                    Width: 4096,
                    Height: 1024,
                    Format: CU_AD_FORMAT_FLOAT,
                    NumChannels: 1,
                };
                run.step("array_in_ctx", (cu.array_create)(&mut a, &desc));
                run.step("ctx_destroy", (cu.ctx_destroy)(c));
                run.step("set_primary", (cu.set_current)(run.ctx));
                run.step("alloc_in_primary", (cu.alloc)(&mut p, size));
                run.step("primary_reset", (cu.reset_primary)(run.dev));
                let mut ctx = std::ptr::null_mut();
                run.step("retain", (cu.retain)(&mut ctx, run.dev));
                run.step("set_primary", (cu.set_current)(ctx));
                run.step("alloc_in_primary", (cu.alloc)(&mut p, size));
                run.step("last_release", (cu.release_primary)(run.dev));
                run.step("retain", (cu.retain)(&mut ctx, run.dev));
                run.step("set_primary", (cu.set_current)(ctx));
            }
            "graph" => {
                let size = bytes(1);
                let mut g = std::ptr::null_mut();
                run.step("graph_create", (cu.graph_create)(&mut g, 0));
                let mut params: CUDA_MEM_ALLOC_NODE_PARAMS = std::mem::zeroed();
                params.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
                params.poolProps.location = CUmemLocation {
                    type_: CU_MEM_LOCATION_TYPE_DEVICE,
                    id: run.dev,
                };
                params.bytesize = size;
                let (mut an, mut fnode) = (std::ptr::null_mut(), std::ptr::null_mut());
                run.step(
                    "add_alloc",
                    (cu.add_alloc)(&mut an, g, std::ptr::null(), 0, &mut params),
                );
                run.step(
                    "add_free",
                    (cu.add_free)(&mut fnode, g, &an, 1, params.dptr),
                );
                let mut e = std::ptr::null_mut();
                // flags, upload stream, error node, result.
                let mut ip = [0u64; 4];
                run.step(
                    "instantiate_params",
                    (cu.instantiate_params)(&mut e, g, ip.as_mut_ptr().cast()),
                );
                run.step("launch", (cu.graph_launch)(e, std::ptr::null_mut()));
                run.step("sync", (cu.sync)());
                run.step("exec_destroy", (cu.exec_destroy)(e));
                let mut p = 0;
                // The device keeps the graph's memory cached: this must not fit past the cap.
                let r = (cu.alloc)(&mut p, size);
                run.step("alloc_while_cached", r);
                if r == CUDA_SUCCESS {
                    run.step("free", (cu.free)(p));
                }
                run.step("trim", (cu.graph_trim)(run.dev));
                run.step("alloc_after_trim", (cu.alloc)(&mut p, size));
                run.step("free", (cu.free)(p));
                // A graph whose allocation outlives the launch, freed by the program.
                let mut g2 = std::ptr::null_mut();
                run.step("graph_create", (cu.graph_create)(&mut g2, 0));
                params.dptr = 0;
                run.step(
                    "add_alloc",
                    (cu.add_alloc)(&mut an, g2, std::ptr::null(), 0, &mut params),
                );
                let mut e2 = std::ptr::null_mut();
                run.step("instantiate", (cu.instantiate)(&mut e2, g2, 0));
                run.step("launch", (cu.graph_launch)(e2, std::ptr::null_mut()));
                run.step("sync", (cu.sync)());
                run.step("free_graph_alloc", (cu.free)(params.dptr));
                run.step("exec_destroy", (cu.exec_destroy)(e2));
                run.step("graph_destroy", (cu.graph_destroy)(g2));
                run.step("graph_destroy", (cu.graph_destroy)(g));
                run.step("trim", (cu.graph_trim)(run.dev));
            }
            "graph-update" => {
                let make = |run: &mut Run, size: usize| {
                    let mut g = std::ptr::null_mut();
                    run.step("graph_create", (cu.graph_create)(&mut g, 0));
                    let mut params: CUDA_MEM_ALLOC_NODE_PARAMS = std::mem::zeroed();
                    params.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
                    params.poolProps.location = CUmemLocation {
                        type_: CU_MEM_LOCATION_TYPE_DEVICE,
                        id: run.dev,
                    };
                    params.bytesize = size;
                    let (mut an, mut fnode) = (std::ptr::null_mut(), std::ptr::null_mut());
                    run.step(
                        "add_alloc",
                        (cu.add_alloc)(&mut an, g, std::ptr::null(), 0, &mut params),
                    );
                    run.step(
                        "add_free",
                        (cu.add_free)(&mut fnode, g, &an, 1, params.dptr),
                    );
                    g
                };
                let (small, big) = (bytes(1), bytes(2));
                let g1 = make(&mut run, small);
                let mut e = std::ptr::null_mut();
                run.step("instantiate", (cu.instantiate)(&mut e, g1, 0));
                run.step("launch_small", (cu.graph_launch)(e, std::ptr::null_mut()));
                run.step("sync", (cu.sync)());
                let g2 = make(&mut run, big);
                let mut info: CUgraphExecUpdateResultInfo = std::mem::zeroed();
                run.step("update_big", (cu.exec_update)(e, g2, &mut info));
                run.step("update_result", info.result);
                run.step("launch_big", (cu.graph_launch)(e, std::ptr::null_mut()));
                run.step("sync", (cu.sync)());
                run.step("update_small", (cu.exec_update)(e, g1, &mut info));
                run.step(
                    "launch_small_again",
                    (cu.graph_launch)(e, std::ptr::null_mut()),
                );
                run.step("sync", (cu.sync)());
                run.step("exec_destroy", (cu.exec_destroy)(e));
                run.step("graph_destroy", (cu.graph_destroy)(g2));
                run.step("graph_destroy", (cu.graph_destroy)(g1));
                run.step("trim", (cu.graph_trim)(run.dev));
            }
            "legacy" => {
                let n: usize = arg(1).parse().unwrap();
                let (mut m, mut f) = (std::ptr::null_mut(), std::ptr::null_mut());
                super::check(
                    (cu.module_load)(&mut m, super::KERNELS.as_ptr().cast()),
                    "cuModuleLoadData",
                );
                super::check(
                    (cu.module_function)(&mut f, m, c"k".as_ptr()),
                    "cuModuleGetFunction",
                );
                for _ in 0..n {
                    super::check((cu.launch_legacy)(f), "cuLaunch");
                    super::check((cu.launch_grid)(f, 2, 2), "cuLaunchGrid");
                    super::check(
                        (cu.launch_grid_async)(f, 2, 2, std::ptr::null_mut()),
                        "cuLaunchGridAsync",
                    );
                }
                run.step("launched", (cu.sync)());
            }
            "arrays" => arrays(&mut run),
            "globals" => globals(&mut run, bytes(1)),
            "images" => super::images::images(&mut run, bytes(1), bytes(2), bytes(3)),
            "image-race" => {
                super::images::race(&mut run, bytes(1), bytes(2), arg(3).parse().unwrap())
            }
            other => super::die(format!("exact: unknown scenario {other}")),
        }
    }
    run.finish(&scenario);
}

/// Threads allocating and freeing mixed sizes as fast as they can, so that addresses one frees
/// are handed to another at once.
fn race(run: &mut Run, threads: usize, iters: usize) {
    let cu = run.cu;
    let ctx = run.ctx as usize;
    let refused = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let refused = &refused;
            s.spawn(move || unsafe {
                super::check((cu.set_current)(ctx as CUcontext), "cuCtxSetCurrent");
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                let mut held: Vec<CUdeviceptr> = Vec::new();
                for _ in 0..iters {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // 4 KiB to 4 MiB: small enough that threads together stay under the cap.
                    let size = 4096 << (seed % 11);
                    if held.len() < 4 && seed & 0x100 != 0 {
                        let mut p = 0;
                        match (cu.alloc)(&mut p, size as usize) {
                            CUDA_SUCCESS => held.push(p),
                            _ => {
                                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    } else if let Some(p) = held.pop() {
                        super::check((cu.free)(p), "cuMemFree");
                    }
                }
                for p in held {
                    super::check((cu.free)(p), "cuMemFree");
                }
            });
        }
    });
    let r = refused.load(std::sync::atomic::Ordering::Relaxed);
    run.step(
        "joined",
        if r == 0 {
            CUDA_SUCCESS
        } else {
            CUDA_ERROR_OUT_OF_MEMORY
        },
    );
}

/// Arrays whose footprint depends on every sizing rule (layers and faces that never shrink
/// with the mip level, levels that do), created in turn until the device or the cap refuses.
fn arrays(run: &mut Run) {
    let cu = run.cu;
    let desc = |w: usize, depth: usize, channels: u32, flags: c_uint| CUDA_ARRAY3D_DESCRIPTOR {
        Width: w,
        Height: w,
        Depth: depth,
        Format: CU_AD_FORMAT_FLOAT,
        NumChannels: channels,
        Flags: flags,
    };
    // 1024² × 4 B × 8 layers, 11 levels: about 43 MiB.
    let layered = desc(1024, 8, 1, CUDA_ARRAY3D_LAYERED);
    // 512² × 16 B × 12 faces, 3 levels: about 63 MiB.
    let cube_layered = desc(512, 12, 4, CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP);
    // 512² × 16 B × 6 faces: 24 MiB.
    let cube = desc(512, 6, 4, CUDA_ARRAY3D_CUBEMAP);
    let (mut mipmaps, mut plain) = (Vec::new(), Vec::new());
    for i in 0.. {
        let r = unsafe {
            match i % 3 {
                0 | 1 => {
                    let (d, levels) = if i % 3 == 0 {
                        (&layered, 11)
                    } else {
                        (&cube_layered, 3)
                    };
                    let mut a = std::ptr::null_mut();
                    let r = run.step("mipmap_create", (cu.mipmap_create)(&mut a, d, levels));
                    if r == CUDA_SUCCESS {
                        mipmaps.push(a);
                    }
                    r
                }
                _ => {
                    let mut a = std::ptr::null_mut();
                    let r = run.step("array_create", (cu.array3d_create)(&mut a, &cube));
                    if r == CUDA_SUCCESS {
                        plain.push(a);
                    }
                    r
                }
            }
        };
        if r != CUDA_SUCCESS {
            break;
        }
    }
    for a in mipmaps {
        run.step("mipmap_destroy", unsafe { (cu.mipmap_destroy)(a) });
    }
    for a in plain {
        run.step("array_destroy", unsafe { (cu.array_destroy)(a) });
    }
}

/// Modules with large `__device__` variables (the simulated image format of
/// `gpuslice_cuda_abi::image`), loaded until the cap or the device refuses.
fn globals(run: &mut Run, size: usize) {
    let cu = run.cu;
    let (half, null) = (size / 2, std::ptr::null_mut());
    let text =
        format!("gpuslice-sim-image\nkernel busy_k\nglobal weights {half}\nglobal bias {half}\n");
    let img = std::ffi::CString::new(text).unwrap();
    let bad = c"gpuslice-sim-image\nglobal weights lots\n";
    let mut m = null;
    run.step("load_malformed", unsafe {
        (cu.module_load)(&mut m, bad.as_ptr().cast())
    });
    let mut mods = Vec::new();
    loop {
        let mut m = null;
        let r = run.step("load", unsafe {
            (cu.module_load_ex)(
                &mut m,
                img.as_ptr().cast(),
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        });
        if r != CUDA_SUCCESS {
            break;
        }
        mods.push(m);
    }
    if let Some(&m) = mods.first() {
        let (mut p, mut n) = (0, 0);
        let r = unsafe { (cu.module_global)(&mut p, &mut n, m, c"bias".as_ptr()) };
        run.step(&format!("get_global_{n}"), r);
    }
    for m in mods {
        run.step("unload", unsafe { (cu.module_unload)(m) });
    }
    let mut c = std::ptr::null_mut();
    run.step("ctx_create", unsafe { (cu.ctx_create)(&mut c, 0, run.dev) });
    let mut m = null;
    run.step("load_in_ctx", unsafe {
        (cu.module_load)(&mut m, img.as_ptr().cast())
    });
    run.step("ctx_destroy", unsafe { (cu.ctx_destroy)(c) });
    run.step("set_primary", unsafe { (cu.set_current)(run.ctx) });
    let mut lib: CUlibrary = std::ptr::null_mut();
    let (no_opts, no_vals) = (std::ptr::null_mut(), std::ptr::null_mut());
    let r = unsafe {
        (cu.library_load)(
            &mut lib,
            img.as_ptr().cast(),
            no_opts,
            no_vals,
            0,
            no_opts,
            no_vals,
            0,
        )
    };
    run.step("library_load", r);
    let (mut p, mut n) = (0, 0);
    let r = unsafe { (cu.library_global)(&mut p, &mut n, lib, c"weights".as_ptr()) };
    run.step(&format!("library_global_{n}"), r);
    run.step("library_unload", unsafe { (cu.library_unload)(lib) });
}

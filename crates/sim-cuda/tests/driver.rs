//! Exercises the built `libcuda.so` through `dlopen`, as an application would.
//!
//! The library's state is process-wide, so every test runs its body in a fresh child process
//! (this test binary re-executed for that one test) with its own simulated-GPU state file.
#![allow(non_snake_case, clippy::missing_transmute_annotations)]

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::path::PathBuf;
use std::process::Command;

use gpuslice_cuda_abi::driver::*;

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const ROLE: &str = "SIMCUDA_TEST_ROLE";

fn lib_path() -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/libcuda.so
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let so = profile_dir.join("libcuda.so");
    if !so.exists() {
        let target = profile_dir.parent().unwrap();
        let release = profile_dir.file_name().unwrap() == "release";
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "gpuslice-sim-cuda"])
            .env("CARGO_TARGET_DIR", target);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building libcuda.so");
    }
    so
}

struct Cu(*mut c_void);

impl Cu {
    fn open() -> Cu {
        let p = CString::new(lib_path().to_str().unwrap()).unwrap();
        let h = unsafe { libc::dlopen(p.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!h.is_null(), "dlopen libcuda.so");
        Cu(h)
    }

    fn addr(&self, name: &str) -> *mut c_void {
        let n = CString::new(name).unwrap();
        unsafe { libc::dlsym(self.0, n.as_ptr()) }
    }

    /// A function of the library, typed by the caller.
    fn f<T: Copy>(&self, name: &str) -> T {
        let p = self.addr(name);
        assert!(!p.is_null(), "{name} is not exported");
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
        unsafe { std::mem::transmute_copy(&p) }
    }
}

/// Runs `body` in a child process with its own state file and `devices` configuration.
fn isolated(name: &str, devices: &str, body: impl FnOnce()) {
    if std::env::var(ROLE).as_deref() == Ok(name) {
        body();
        return;
    }
    let state =
        std::env::temp_dir().join(format!("gpuslice-simcuda-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, name)
        .env("GPUSLICE_SIM_STATE", &state)
        .env("GPUSLICE_SIM_DEVICES", devices)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&state);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "child for {name} failed:\n{text}"
    );
}

type FInit = unsafe extern "C" fn(c_uint) -> c_int;
type FDevGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type FCtxCreate = unsafe extern "C" fn(*mut CUcontext, c_uint, c_int) -> c_int;
type FCtx = unsafe extern "C" fn(CUcontext) -> c_int;
type FMemInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;
type FAlloc = unsafe extern "C" fn(*mut u64, usize) -> c_int;
type FFree = unsafe extern "C" fn(u64) -> c_int;
type FSync = unsafe extern "C" fn() -> c_int;
type FStream = unsafe extern "C" fn(CUstream) -> c_int;
type FStreamCreate = unsafe extern "C" fn(*mut CUstream, c_uint) -> c_int;
type FLaunch = unsafe extern "C" fn(
    CUfunction,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CUstream,
    *mut *mut c_void,
    *mut *mut c_void,
) -> c_int;

/// cuInit + a fresh context on device 0.
fn setup(cu: &Cu) -> CUcontext {
    let init: FInit = cu.f("cuInit");
    let create: FCtxCreate = cu.f("cuCtxCreate_v2");
    assert_eq!(unsafe { init(0) }, CUDA_SUCCESS);
    let mut ctx = std::ptr::null_mut();
    assert_eq!(unsafe { create(&mut ctx, 0, 0) }, CUDA_SUCCESS);
    ctx
}

fn free_mem(cu: &Cu) -> usize {
    let info: FMemInfo = cu.f("cuMemGetInfo_v2");
    let (mut f, mut t) = (0, 0);
    assert_eq!(unsafe { info(&mut f, &mut t) }, CUDA_SUCCESS);
    f
}

fn busy_function(cu: &Cu) -> CUfunction {
    let load: unsafe extern "C" fn(*mut CUmodule, *const c_void) -> c_int =
        cu.f("cuModuleLoadData");
    let get: unsafe extern "C" fn(*mut CUfunction, CUmodule, *const c_char) -> c_int =
        cu.f("cuModuleGetFunction");
    let mut m = std::ptr::null_mut();
    assert_eq!(
        unsafe { load(&mut m, c"any image".as_ptr().cast()) },
        CUDA_SUCCESS
    );
    let mut f = std::ptr::null_mut();
    assert_eq!(
        unsafe { get(&mut f, m, c"busy_kernel".as_ptr()) },
        CUDA_SUCCESS
    );
    f
}

fn launch_busy(cu: &Cu, f: CUfunction, stream: CUstream, us: u64) -> c_int {
    let launch: FLaunch = cu.f("cuLaunchKernel");
    let mut v = us;
    let mut params = [(&mut v as *mut u64).cast::<c_void>()];
    unsafe {
        launch(
            f,
            1,
            1,
            1,
            32,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
}

fn now_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn memory_accounting_and_oom() {
    isolated(
        "memory_accounting_and_oom",
        "memory=4GiB,context=256MiB",
        || {
            let cu = Cu::open();
            let alloc: FAlloc = cu.f("cuMemAlloc_v2");
            let free: FFree = cu.f("cuMemFree_v2");
            let count: unsafe extern "C" fn(*mut c_int) -> c_int = cu.f("cuDeviceGetCount");
            let mut n = 0;
            assert_eq!(
                unsafe { count(&mut n) },
                CUDA_ERROR_NOT_INITIALIZED,
                "before cuInit"
            );
            let mut p = 0u64;
            assert_eq!(unsafe { alloc(&mut p, MIB) }, CUDA_ERROR_NOT_INITIALIZED);
            let ctx = setup(&cu);
            assert_eq!(unsafe { count(&mut n) }, CUDA_SUCCESS);
            assert_eq!(n, 1);
            let info: FMemInfo = cu.f("cuMemGetInfo_v2");
            let (mut f, mut t) = (0, 0);
            assert_eq!(unsafe { info(&mut f, &mut t) }, CUDA_SUCCESS);
            assert_eq!(t, 4 * GIB);
            assert_eq!(f, 4 * GIB - 256 * MIB, "a context costs device memory");

            let mut a = 0u64;
            assert_eq!(unsafe { alloc(&mut a, GIB) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), 3 * GIB - 256 * MIB);
            let mut b = 0u64;
            assert_eq!(unsafe { alloc(&mut b, 3 * GIB) }, CUDA_ERROR_OUT_OF_MEMORY);
            assert_eq!(
                free_mem(&cu),
                3 * GIB - 256 * MIB,
                "a refused allocation changes nothing"
            );
            assert_eq!(unsafe { alloc(&mut b, 3 * GIB - 256 * MIB) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), 0);
            let mut c = 0u64;
            assert_eq!(unsafe { alloc(&mut c, 1) }, CUDA_ERROR_OUT_OF_MEMORY);
            assert_eq!(unsafe { alloc(&mut c, 0) }, CUDA_ERROR_INVALID_VALUE);
            assert_eq!(
                unsafe { alloc(std::ptr::null_mut(), 16) },
                CUDA_ERROR_INVALID_VALUE
            );

            // Device pointers are usable memory.
            let htod: unsafe extern "C" fn(u64, *const c_void, usize) -> c_int =
                cu.f("cuMemcpyHtoD_v2");
            let dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> c_int =
                cu.f("cuMemcpyDtoH_v2");
            let dtod: unsafe extern "C" fn(u64, u64, usize) -> c_int = cu.f("cuMemcpyDtoD_v2");
            let memset32: unsafe extern "C" fn(u64, c_uint, usize) -> c_int =
                cu.f("cuMemsetD32_v2");
            let src: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
            let mut back = vec![0u8; 4096];
            assert_eq!(
                unsafe { htod(a + 100, src.as_ptr().cast(), 4096) },
                CUDA_SUCCESS
            );
            assert_eq!(unsafe { dtod(b, a + 100, 4096) }, CUDA_SUCCESS);
            assert_eq!(
                unsafe { dtoh(back.as_mut_ptr().cast(), b, 4096) },
                CUDA_SUCCESS
            );
            assert_eq!(src, back);
            assert_eq!(unsafe { memset32(b, 0xdeadbeef, 8) }, CUDA_SUCCESS);
            let mut words = [0u32; 8];
            assert_eq!(
                unsafe { dtoh(words.as_mut_ptr().cast(), b, 32) },
                CUDA_SUCCESS
            );
            assert_eq!(words, [0xdeadbeef; 8]);
            assert_eq!(
                unsafe { htod(12345, src.as_ptr().cast(), 16) },
                CUDA_ERROR_INVALID_VALUE,
                "not device memory"
            );
            assert_eq!(
                unsafe { htod(a + GIB as u64 - 8, src.as_ptr().cast(), 16) },
                CUDA_ERROR_INVALID_VALUE,
                "past the end"
            );

            let range: unsafe extern "C" fn(*mut u64, *mut usize, u64) -> c_int =
                cu.f("cuMemGetAddressRange_v2");
            let (mut base, mut size) = (0u64, 0usize);
            assert_eq!(
                unsafe { range(&mut base, &mut size, a + 12345) },
                CUDA_SUCCESS
            );
            assert_eq!((base, size), (a, GIB));

            assert_eq!(unsafe { free(a) }, CUDA_SUCCESS);
            assert_eq!(unsafe { free(a) }, CUDA_ERROR_INVALID_VALUE, "double free");
            assert_eq!(free_mem(&cu), GIB);

            // Destroying a context returns its memory and its allocations.
            let destroy: FCtx = cu.f("cuCtxDestroy_v2");
            assert_eq!(unsafe { destroy(ctx) }, CUDA_SUCCESS);
            assert_eq!(unsafe { alloc(&mut c, 16) }, CUDA_ERROR_INVALID_CONTEXT);
            let create: FCtxCreate = cu.f("cuCtxCreate_v2");
            let mut ctx2 = std::ptr::null_mut();
            assert_eq!(unsafe { create(&mut ctx2, 0, 0) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), 4 * GIB - 256 * MIB);

            // Legacy 32-bit entry points still work, with addresses that fit.
            let alloc_v1: unsafe extern "C" fn(*mut u32, c_uint) -> c_int = cu.f("cuMemAlloc");
            let free_v1: unsafe extern "C" fn(u32) -> c_int = cu.f("cuMemFree");
            let mut small = 0u32;
            assert_eq!(unsafe { alloc_v1(&mut small, 1 << 20) }, CUDA_SUCCESS);
            assert_ne!(small, 0);
            assert_eq!(free_mem(&cu), 4 * GIB - 257 * MIB);
            assert_eq!(unsafe { free_v1(small) }, CUDA_SUCCESS);
        },
    );
}

#[test]
fn contexts_and_devices() {
    isolated(
        "contexts_and_devices",
        "count=2,memory=2GiB,sms=108,name=NVIDIA A100-SXM4-40GB,context=64MiB",
        || {
            let cu = Cu::open();
            let init: FInit = cu.f("cuInit");
            assert_eq!(unsafe { init(0) }, CUDA_SUCCESS);
            let get: FDevGet = cu.f("cuDeviceGet");
            let mut d = -1;
            assert_eq!(unsafe { get(&mut d, 1) }, CUDA_SUCCESS);
            assert_eq!(d, 1);
            assert_eq!(unsafe { get(&mut d, 2) }, CUDA_ERROR_INVALID_DEVICE);
            let name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int =
                cu.f("cuDeviceGetName");
            let mut buf = [0 as c_char; 64];
            assert_eq!(unsafe { name(buf.as_mut_ptr(), 64, 1) }, CUDA_SUCCESS);
            assert_eq!(
                unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(),
                "NVIDIA A100-SXM4-40GB"
            );
            let attr: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int =
                cu.f("cuDeviceGetAttribute");
            let mut v = 0;
            assert_eq!(
                unsafe { attr(&mut v, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0) },
                CUDA_SUCCESS
            );
            assert_eq!(v, 108);
            assert_eq!(
                unsafe { attr(&mut v, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 0) },
                CUDA_SUCCESS
            );
            assert_eq!(v, 9);
            let total: unsafe extern "C" fn(*mut usize, c_int) -> c_int =
                cu.f("cuDeviceTotalMem_v2");
            let mut t = 0;
            assert_eq!(unsafe { total(&mut t, 1) }, CUDA_SUCCESS);
            assert_eq!(t, 2 * GIB);
            let uuid: unsafe extern "C" fn(*mut CUuuid, c_int) -> c_int =
                cu.f("cuDeviceGetUuid_v2");
            let (mut u0, mut u1) = (CUuuid::default(), CUuuid::default());
            assert_eq!(unsafe { uuid(&mut u0, 0) + uuid(&mut u1, 1) }, CUDA_SUCCESS);
            assert_ne!(u0, u1);

            // No context yet: context-bound calls say so.
            let alloc: FAlloc = cu.f("cuMemAlloc_v2");
            let mut p = 0u64;
            assert_eq!(unsafe { alloc(&mut p, 16) }, CUDA_ERROR_INVALID_CONTEXT);
            let sync: FSync = cu.f("cuCtxSynchronize");
            assert_eq!(unsafe { sync() }, CUDA_ERROR_INVALID_CONTEXT);

            // The primary context costs memory while retained.
            let retain: unsafe extern "C" fn(*mut CUcontext, c_int) -> c_int =
                cu.f("cuDevicePrimaryCtxRetain");
            let release: unsafe extern "C" fn(c_int) -> c_int =
                cu.f("cuDevicePrimaryCtxRelease_v2");
            let state: unsafe extern "C" fn(c_int, *mut c_uint, *mut c_int) -> c_int =
                cu.f("cuDevicePrimaryCtxGetState");
            let set: FCtx = cu.f("cuCtxSetCurrent");
            let (mut pc, mut pc2) = (std::ptr::null_mut(), std::ptr::null_mut());
            assert_eq!(unsafe { retain(&mut pc, 1) }, CUDA_SUCCESS);
            assert_eq!(unsafe { retain(&mut pc2, 1) }, CUDA_SUCCESS);
            assert_eq!(pc, pc2);
            assert_eq!(unsafe { set(pc) }, CUDA_SUCCESS);
            let getdev: unsafe extern "C" fn(*mut c_int) -> c_int = cu.f("cuCtxGetDevice");
            assert_eq!(unsafe { getdev(&mut d) }, CUDA_SUCCESS);
            assert_eq!(d, 1);
            assert_eq!(free_mem(&cu), 2 * GIB - 64 * MIB);
            let (mut fl, mut active) = (0u32, 0);
            assert_eq!(unsafe { state(1, &mut fl, &mut active) }, CUDA_SUCCESS);
            assert_eq!(active, 1);
            assert_eq!(unsafe { release(1) + release(1) }, CUDA_SUCCESS);
            assert_eq!(unsafe { state(1, &mut fl, &mut active) }, CUDA_SUCCESS);
            assert_eq!(active, 0);
            assert_eq!(unsafe { release(1) }, CUDA_ERROR_INVALID_CONTEXT);

            // Push/pop.
            let create: FCtxCreate = cu.f("cuCtxCreate_v2");
            let pop: unsafe extern "C" fn(*mut CUcontext) -> c_int = cu.f("cuCtxPopCurrent_v2");
            let getcur: unsafe extern "C" fn(*mut CUcontext) -> c_int = cu.f("cuCtxGetCurrent");
            assert_eq!(unsafe { set(std::ptr::null_mut()) }, CUDA_SUCCESS);
            let mut c = std::ptr::null_mut();
            assert_eq!(unsafe { create(&mut c, 0, 0) }, CUDA_SUCCESS);
            let mut cur = std::ptr::null_mut();
            assert_eq!(unsafe { getcur(&mut cur) }, CUDA_SUCCESS);
            assert_eq!(cur, c);
            assert_eq!(unsafe { pop(&mut cur) }, CUDA_SUCCESS);
            assert_eq!(unsafe { getcur(&mut cur) }, CUDA_SUCCESS);
            assert!(cur.is_null());
            assert_eq!(unsafe { pop(&mut cur) }, CUDA_ERROR_INVALID_CONTEXT);

            let ename: unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int =
                cu.f("cuGetErrorName");
            let estr: unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int =
                cu.f("cuGetErrorString");
            let mut s = std::ptr::null();
            assert_eq!(
                unsafe { ename(CUDA_ERROR_OUT_OF_MEMORY, &mut s) },
                CUDA_SUCCESS
            );
            assert_eq!(
                unsafe { CStr::from_ptr(s) }.to_str().unwrap(),
                "CUDA_ERROR_OUT_OF_MEMORY"
            );
            assert_eq!(
                unsafe { estr(CUDA_ERROR_OUT_OF_MEMORY, &mut s) },
                CUDA_SUCCESS
            );
            assert_eq!(
                unsafe { CStr::from_ptr(s) }.to_str().unwrap(),
                "out of memory"
            );
            assert_eq!(unsafe { ename(4242, &mut s) }, CUDA_ERROR_INVALID_VALUE);
            let export: unsafe extern "C" fn(*mut *const c_void, *const CUuuid) -> c_int =
                cu.f("cuGetExportTable");
            let mut tbl = std::ptr::null();
            assert_eq!(unsafe { export(&mut tbl, &u0) }, CUDA_ERROR_NOT_SUPPORTED);
        },
    );
}

#[test]
fn malformed_config_fails_init() {
    isolated("malformed_config_fails_init", "count=2,memory=lots", || {
        let cu = Cu::open();
        let init: FInit = cu.f("cuInit");
        assert_eq!(unsafe { init(0) }, CUDA_ERROR_INVALID_VALUE);
        let count: unsafe extern "C" fn(*mut c_int) -> c_int = cu.f("cuDeviceGetCount");
        let mut n = 0;
        assert_eq!(unsafe { count(&mut n) }, CUDA_ERROR_NOT_INITIALIZED);
    });
}

#[test]
fn pools_keep_memory_reserved_until_trimmed() {
    isolated(
        "pools_keep_memory_reserved_until_trimmed",
        "memory=4GiB,context=0",
        || {
            let cu = Cu::open();
            setup(&cu);
            let stream_create: FStreamCreate = cu.f("cuStreamCreate");
            let sync: FStream = cu.f("cuStreamSynchronize");
            let alloc: unsafe extern "C" fn(*mut u64, usize, CUstream) -> c_int =
                cu.f("cuMemAllocAsync");
            let free: unsafe extern "C" fn(u64, CUstream) -> c_int = cu.f("cuMemFreeAsync");
            let get_pool: unsafe extern "C" fn(*mut CUmemoryPool, c_int) -> c_int =
                cu.f("cuDeviceGetDefaultMemPool");
            let get_attr: unsafe extern "C" fn(CUmemoryPool, c_int, *mut c_void) -> c_int =
                cu.f("cuMemPoolGetAttribute");
            let set_attr: unsafe extern "C" fn(CUmemoryPool, c_int, *mut c_void) -> c_int =
                cu.f("cuMemPoolSetAttribute");
            let trim: unsafe extern "C" fn(CUmemoryPool, usize) -> c_int = cu.f("cuMemPoolTrimTo");
            let mut s = std::ptr::null_mut();
            assert_eq!(unsafe { stream_create(&mut s, 0) }, CUDA_SUCCESS);
            let mut pool = std::ptr::null_mut();
            assert_eq!(unsafe { get_pool(&mut pool, 0) }, CUDA_SUCCESS);
            let attr = |a: c_int| {
                let mut v = 0u64;
                assert_eq!(
                    unsafe { get_attr(pool, a, (&mut v as *mut u64).cast()) },
                    CUDA_SUCCESS
                );
                v as usize
            };
            let base = free_mem(&cu);
            assert_eq!(base, 4 * GIB);

            let mut p = 0u64;
            assert_eq!(unsafe { alloc(&mut p, 10 * MIB, s) }, CUDA_SUCCESS);
            assert_eq!(attr(CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 10 * MIB);
            assert_eq!(
                attr(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
                32 * MIB,
                "reserved in chunks"
            );
            assert_eq!(
                free_mem(&cu),
                base - 32 * MIB,
                "the device sees the reservation, not the allocation"
            );
            let mut q = 0u64;
            assert_eq!(unsafe { alloc(&mut q, 20 * MIB, s) }, CUDA_SUCCESS);
            assert_eq!(
                attr(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
                32 * MIB,
                "fits the chunk already reserved"
            );
            assert_eq!(unsafe { free(p, s) + free(q, s) }, CUDA_SUCCESS);
            assert_eq!(attr(CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 0);
            assert_eq!(attr(CU_MEMPOOL_ATTR_USED_MEM_HIGH), 30 * MIB);
            assert_eq!(
                free_mem(&cu),
                base - 32 * MIB,
                "freed memory stays in the pool until a sync"
            );
            assert_eq!(unsafe { sync(s) }, CUDA_SUCCESS);
            assert_eq!(
                attr(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
                0,
                "release threshold 0: given back at sync"
            );
            assert_eq!(free_mem(&cu), base);

            // With a high release threshold the pool keeps its memory through syncs.
            let mut thr = u64::MAX;
            assert_eq!(
                unsafe {
                    set_attr(
                        pool,
                        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                        (&mut thr as *mut u64).cast(),
                    )
                },
                CUDA_SUCCESS
            );
            assert_eq!(unsafe { alloc(&mut p, 40 * MIB, s) }, CUDA_SUCCESS);
            assert_eq!(unsafe { free(p, s) }, CUDA_SUCCESS);
            assert_eq!(unsafe { sync(s) }, CUDA_SUCCESS);
            assert_eq!(attr(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 64 * MIB);
            assert_eq!(free_mem(&cu), base - 64 * MIB);
            assert_eq!(unsafe { trim(pool, 0) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), base);

            // An explicit pool, and running out.
            let create: unsafe extern "C" fn(*mut CUmemoryPool, *const CUmemPoolProps) -> c_int =
                cu.f("cuMemPoolCreate");
            let destroy: unsafe extern "C" fn(CUmemoryPool) -> c_int = cu.f("cuMemPoolDestroy");
            let from: unsafe extern "C" fn(*mut u64, usize, CUmemoryPool, CUstream) -> c_int =
                cu.f("cuMemAllocFromPoolAsync");
            let props = CUmemPoolProps {
                allocType: CU_MEM_ALLOCATION_TYPE_PINNED,
                location: CUmemLocation {
                    type_: CU_MEM_LOCATION_TYPE_DEVICE,
                    id: 0,
                },
                ..Default::default()
            };
            let mut mine = std::ptr::null_mut();
            assert_eq!(unsafe { create(&mut mine, &props) }, CUDA_SUCCESS);
            assert_eq!(unsafe { from(&mut p, 3 * GIB, mine, s) }, CUDA_SUCCESS);
            assert_eq!(
                unsafe { from(&mut q, 2 * GIB, mine, s) },
                CUDA_ERROR_OUT_OF_MEMORY
            );
            assert_eq!(unsafe { destroy(mine) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), base);
            assert_eq!(
                unsafe { destroy(pool) },
                CUDA_ERROR_INVALID_VALUE,
                "the default pool cannot be destroyed"
            );
        },
    );
}

#[test]
fn vmm_create_map_unmap_release() {
    isolated(
        "vmm_create_map_unmap_release",
        "memory=1GiB,context=0",
        || {
            let cu = Cu::open();
            setup(&cu);
            let gran: unsafe extern "C" fn(*mut usize, *const CUmemAllocationProp, c_int) -> c_int =
                cu.f("cuMemGetAllocationGranularity");
            let create: unsafe extern "C" fn(
                *mut u64,
                usize,
                *const CUmemAllocationProp,
                u64,
            ) -> c_int = cu.f("cuMemCreate");
            let release: unsafe extern "C" fn(u64) -> c_int = cu.f("cuMemRelease");
            let reserve: unsafe extern "C" fn(*mut u64, usize, usize, u64, u64) -> c_int =
                cu.f("cuMemAddressReserve");
            let addr_free: unsafe extern "C" fn(u64, usize) -> c_int = cu.f("cuMemAddressFree");
            let map: unsafe extern "C" fn(u64, usize, usize, u64, u64) -> c_int = cu.f("cuMemMap");
            let unmap: unsafe extern "C" fn(u64, usize) -> c_int = cu.f("cuMemUnmap");
            let access: unsafe extern "C" fn(u64, usize, *const CUmemAccessDesc, usize) -> c_int =
                cu.f("cuMemSetAccess");
            let htod: unsafe extern "C" fn(u64, *const c_void, usize) -> c_int =
                cu.f("cuMemcpyHtoD_v2");
            let dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> c_int =
                cu.f("cuMemcpyDtoH_v2");

            let prop = CUmemAllocationProp {
                type_: CU_MEM_ALLOCATION_TYPE_PINNED,
                location: CUmemLocation {
                    type_: CU_MEM_LOCATION_TYPE_DEVICE,
                    id: 0,
                },
                ..Default::default()
            };
            let mut g = 0usize;
            assert_eq!(
                unsafe { gran(&mut g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) },
                CUDA_SUCCESS
            );
            assert_eq!(g, 2 * MIB);
            let mut h = 0u64;
            assert_eq!(
                unsafe { create(&mut h, 3 * MIB, &prop, 0) },
                CUDA_ERROR_INVALID_VALUE,
                "not a granularity multiple"
            );
            assert_eq!(unsafe { create(&mut h, 4 * MIB, &prop, 0) }, CUDA_SUCCESS);
            assert_eq!(
                free_mem(&cu),
                GIB - 4 * MIB,
                "physical memory is charged at creation"
            );
            let mut big = 0u64;
            assert_eq!(
                unsafe { create(&mut big, GIB, &prop, 0) },
                CUDA_ERROR_OUT_OF_MEMORY
            );

            let mut va = 0u64;
            assert_eq!(unsafe { reserve(&mut va, 8 * MIB, 0, 0, 0) }, CUDA_SUCCESS);
            assert_eq!(va % (2 * MIB) as u64, 0);
            assert_eq!(free_mem(&cu), GIB - 4 * MIB, "address space is free");
            // The same physical memory mapped twice: both views see the same bytes.
            assert_eq!(unsafe { map(va, 4 * MIB, 0, h, 0) }, CUDA_SUCCESS);
            assert_eq!(
                unsafe { map(va + 4 * MIB as u64, 4 * MIB, 0, h, 0) },
                CUDA_SUCCESS
            );
            assert_eq!(
                unsafe { map(va, 2 * MIB, 0, h, 0) },
                CUDA_ERROR_ALREADY_MAPPED
            );
            let desc = CUmemAccessDesc {
                location: prop.location,
                flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            };
            assert_eq!(unsafe { access(va, 8 * MIB, &desc, 1) }, CUDA_SUCCESS);
            let data = *b"through the first view";
            assert_eq!(
                unsafe { htod(va + 1000, data.as_ptr().cast(), data.len()) },
                CUDA_SUCCESS
            );
            let mut back = [0u8; 22];
            assert_eq!(
                unsafe { dtoh(back.as_mut_ptr().cast(), va + 4 * MIB as u64 + 1000, 22) },
                CUDA_SUCCESS
            );
            assert_eq!(back, data);

            // Released while mapped: the memory stays until the last mapping goes.
            assert_eq!(unsafe { release(h) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), GIB - 4 * MIB);
            assert_eq!(unsafe { unmap(va, 4 * MIB) }, CUDA_SUCCESS);
            assert_eq!(
                unsafe { dtoh(back.as_mut_ptr().cast(), va, 8) },
                CUDA_ERROR_INVALID_VALUE,
                "unmapped"
            );
            assert_eq!(free_mem(&cu), GIB - 4 * MIB);
            assert_eq!(unsafe { unmap(va + 4 * MIB as u64, 4 * MIB) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), GIB);
            assert_eq!(unsafe { release(h) }, CUDA_ERROR_INVALID_VALUE);
            assert_eq!(unsafe { addr_free(va, 8 * MIB) }, CUDA_SUCCESS);
        },
    );
}

#[test]
fn arrays_are_charged_by_size() {
    isolated(
        "arrays_are_charged_by_size",
        "memory=1GiB,context=0",
        || {
            let cu = Cu::open();
            setup(&cu);
            let create2d: unsafe extern "C" fn(
                *mut CUarray,
                *const CUDA_ARRAY_DESCRIPTOR,
            ) -> c_int = cu.f("cuArrayCreate_v2");
            let create3d: unsafe extern "C" fn(
                *mut CUarray,
                *const CUDA_ARRAY3D_DESCRIPTOR,
            ) -> c_int = cu.f("cuArray3DCreate_v2");
            let destroy: unsafe extern "C" fn(CUarray) -> c_int = cu.f("cuArrayDestroy");
            let mip: unsafe extern "C" fn(
                *mut CUmipmappedArray,
                *const CUDA_ARRAY3D_DESCRIPTOR,
                c_uint,
            ) -> c_int = cu.f("cuMipmappedArrayCreate");
            let mip_destroy: unsafe extern "C" fn(CUmipmappedArray) -> c_int =
                cu.f("cuMipmappedArrayDestroy");
            let base = free_mem(&cu);

            let mut a = std::ptr::null_mut();
            let d2 = CUDA_ARRAY_DESCRIPTOR {
                Width: 1024,
                Height: 1024,
                Format: CU_AD_FORMAT_FLOAT,
                NumChannels: 4,
            };
            assert_eq!(unsafe { create2d(&mut a, &d2) }, CUDA_SUCCESS);
            assert_eq!(base - free_mem(&cu), 16 * MIB);
            let mut b = std::ptr::null_mut();
            let d3 = CUDA_ARRAY3D_DESCRIPTOR {
                Width: 64,
                Height: 64,
                Depth: 64,
                Format: CU_AD_FORMAT_UNSIGNED_INT8,
                NumChannels: 1,
                Flags: 0,
            };
            assert_eq!(unsafe { create3d(&mut b, &d3) }, CUDA_SUCCESS);
            assert_eq!(base - free_mem(&cu), 16 * MIB + 256 * 1024);
            let bad = CUDA_ARRAY_DESCRIPTOR {
                Width: 16,
                Height: 16,
                Format: CU_AD_FORMAT_FLOAT,
                NumChannels: 3,
            };
            assert_eq!(unsafe { create2d(&mut a, &bad) }, CUDA_ERROR_INVALID_VALUE);
            let huge = CUDA_ARRAY_DESCRIPTOR {
                Width: 65536,
                Height: 65536,
                Format: CU_AD_FORMAT_FLOAT,
                NumChannels: 1,
            };
            let mut c = std::ptr::null_mut();
            assert_eq!(unsafe { create2d(&mut c, &huge) }, CUDA_ERROR_OUT_OF_MEMORY);

            // A full 256x256 float chain of 9 levels: 4 * (65536 + 16384 + ... + 1) bytes.
            let mut m = std::ptr::null_mut();
            let dm = CUDA_ARRAY3D_DESCRIPTOR {
                Width: 256,
                Height: 256,
                Depth: 0,
                Format: CU_AD_FORMAT_FLOAT,
                NumChannels: 1,
                Flags: 0,
            };
            let before = free_mem(&cu);
            assert_eq!(unsafe { mip(&mut m, &dm, 9) }, CUDA_SUCCESS);
            let levels: usize = (0..9).map(|l| (256usize >> l) * (256usize >> l) * 4).sum();
            assert_eq!(before - free_mem(&cu), levels.div_ceil(4096) * 4096);
            assert_eq!(
                unsafe { destroy(m.cast()) },
                CUDA_ERROR_INVALID_HANDLE,
                "not a plain array"
            );
            assert_eq!(
                unsafe { mip_destroy(m) + destroy(a) + destroy(b) },
                CUDA_SUCCESS
            );
            assert_eq!(free_mem(&cu), base);
        },
    );
}

/// Two processes each launch one 100 ms busy kernel at about the same moment: the device runs
/// them one after the other, so the last finishes at least 200 ms after the first launch.
/// Wall-clock delays on a loaded machine only make finishes later, so the lower bound never
/// fails a correct device; an attempt whose launches were too far apart to overlap says
/// nothing and is made again.
#[test]
fn busy_kernels_serialize_across_processes() {
    const NAME: &str = "busy_kernels_serialize_across_processes";
    if let Ok(go) = std::env::var("SIMCUDA_GO_AT") {
        let go: u64 = go.parse().unwrap();
        let cu = Cu::open();
        setup(&cu);
        let f = busy_function(&cu);
        let sync: FSync = cu.f("cuCtxSynchronize");
        while now_ns() < go {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let start = now_ns();
        assert_eq!(
            launch_busy(&cu, f, std::ptr::null_mut(), 100_000),
            CUDA_SUCCESS
        );
        assert_eq!(unsafe { sync() }, CUDA_SUCCESS);
        println!("SIMCUDA_RAN {start} {}", now_ns());
        return;
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    for attempt in 1..=3 {
        let state = std::env::temp_dir().join(format!(
            "gpuslice-simcuda-{NAME}-{}-{attempt}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&state);
        let go = now_ns() + 1_500_000_000;
        let children: Vec<_> = (0..2)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                    .env("SIMCUDA_GO_AT", go.to_string())
                    .env("GPUSLICE_SIM_STATE", &state)
                    .env("GPUSLICE_SIM_DEVICES", "memory=8GiB")
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // (launched, finished) per child.
        let ran: Vec<(u64, u64)> = children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(out.status.success(), "{text}");
                let at = text
                    .find("SIMCUDA_RAN ")
                    .unwrap_or_else(|| panic!("child reports: {text}"));
                let mut t = text[at + 12..]
                    .split_whitespace()
                    .map(|x| x.parse::<u64>().unwrap());
                (t.next().unwrap(), t.next().unwrap())
            })
            .collect();
        let _ = std::fs::remove_file(&state);
        let first_launch = ran.iter().map(|r| r.0).min().unwrap();
        let last_launch = ran.iter().map(|r| r.0).max().unwrap();
        let last_done = ran.iter().map(|r| r.1).max().unwrap();
        if last_launch - first_launch > 50_000_000 {
            eprintln!(
                "attempt {attempt}: launches {} ms apart, too far to overlap",
                ms(last_launch - first_launch)
            );
            continue;
        }
        // Run side by side, both would be done about 100 ms after the later launch.
        assert!(
            last_done - first_launch >= 195_000_000,
            "the kernels overlapped: the last finished {} ms after the first launch",
            ms(last_done - first_launch)
        );
        // Nor does the device take longer than the two kernels (with room for a busy machine).
        assert!(
            last_done - first_launch < 600_000_000,
            "the last finished {} ms after the first launch",
            ms(last_done - first_launch)
        );
        return;
    }
    panic!("in three attempts the two launches never came within 50 ms of each other");
}

#[test]
fn events_time_stream_work() {
    isolated("events_time_stream_work", "", || {
        let cu = Cu::open();
        setup(&cu);
        let f = busy_function(&cu);
        let stream_create: FStreamCreate = cu.f("cuStreamCreate");
        let query: FStream = cu.f("cuStreamQuery");
        let ev_create: unsafe extern "C" fn(*mut CUevent, c_uint) -> c_int = cu.f("cuEventCreate");
        let record: unsafe extern "C" fn(CUevent, CUstream) -> c_int = cu.f("cuEventRecord");
        let ev_query: unsafe extern "C" fn(CUevent) -> c_int = cu.f("cuEventQuery");
        let ev_sync: unsafe extern "C" fn(CUevent) -> c_int = cu.f("cuEventSynchronize");
        let elapsed: unsafe extern "C" fn(*mut f32, CUevent, CUevent) -> c_int =
            cu.f("cuEventElapsedTime");
        let wait: unsafe extern "C" fn(CUstream, CUevent, c_uint) -> c_int =
            cu.f("cuStreamWaitEvent");
        let (mut s1, mut s2) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(
            unsafe { stream_create(&mut s1, 0) + stream_create(&mut s2, CU_STREAM_NON_BLOCKING) },
            CUDA_SUCCESS
        );
        let mut ev = [std::ptr::null_mut(); 4];
        for e in &mut ev {
            assert_eq!(unsafe { ev_create(e, 0) }, CUDA_SUCCESS);
        }
        let mut ms = 0f32;
        assert_eq!(
            unsafe { elapsed(&mut ms, ev[0], ev[1]) },
            CUDA_ERROR_INVALID_HANDLE,
            "not recorded yet"
        );

        assert_eq!(unsafe { record(ev[0], s1) }, CUDA_SUCCESS);
        assert_eq!(launch_busy(&cu, f, s1, 50_000), CUDA_SUCCESS);
        assert_eq!(unsafe { record(ev[1], s1) }, CUDA_SUCCESS);
        assert_eq!(unsafe { query(s1) }, CUDA_ERROR_NOT_READY);
        assert_eq!(unsafe { ev_query(ev[1]) }, CUDA_ERROR_NOT_READY);
        assert_eq!(
            unsafe { elapsed(&mut ms, ev[0], ev[1]) },
            CUDA_ERROR_NOT_READY
        );
        // s2 waits for s1's kernel, then runs its own 20 ms.
        assert_eq!(unsafe { wait(s2, ev[1], 0) }, CUDA_SUCCESS);
        assert_eq!(launch_busy(&cu, f, s2, 20_000), CUDA_SUCCESS);
        assert_eq!(unsafe { record(ev[2], s2) }, CUDA_SUCCESS);
        assert_eq!(unsafe { ev_sync(ev[2]) }, CUDA_SUCCESS);
        assert_eq!(
            unsafe { query(s1) + query(s2) + ev_query(ev[1]) },
            CUDA_SUCCESS
        );
        assert_eq!(unsafe { elapsed(&mut ms, ev[0], ev[1]) }, CUDA_SUCCESS);
        assert!((ms - 50.0).abs() < 1.0, "kernel took {ms} ms");
        assert_eq!(unsafe { elapsed(&mut ms, ev[1], ev[2]) }, CUDA_SUCCESS);
        assert!((ms - 20.0).abs() < 1.0, "dependent kernel took {ms} ms");

        // Other kernels complete at once.
        let load: unsafe extern "C" fn(*mut CUmodule, *const c_void) -> c_int =
            cu.f("cuModuleLoadData");
        let get: unsafe extern "C" fn(*mut CUfunction, CUmodule, *const c_char) -> c_int =
            cu.f("cuModuleGetFunction");
        let mut m = std::ptr::null_mut();
        let mut quick = std::ptr::null_mut();
        assert_eq!(
            unsafe { load(&mut m, c"x".as_ptr().cast()) + get(&mut quick, m, c"saxpy".as_ptr()) },
            CUDA_SUCCESS
        );
        assert_eq!(launch_busy(&cu, quick, s1, 1_000_000), CUDA_SUCCESS);
        assert_eq!(unsafe { query(s1) }, CUDA_SUCCESS);
        let launch: FLaunch = cu.f("cuLaunchKernel");
        let ret = unsafe {
            launch(
                quick,
                0,
                1,
                1,
                1,
                1,
                1,
                0,
                s1,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(ret, CUDA_ERROR_INVALID_VALUE, "empty grid");

        let timing_off = ev[3];
        let destroy: unsafe extern "C" fn(CUevent) -> c_int = cu.f("cuEventDestroy_v2");
        assert_eq!(unsafe { destroy(timing_off) }, CUDA_SUCCESS);
        assert_eq!(
            unsafe { ev_create(&mut ev[3], CU_EVENT_DISABLE_TIMING) },
            CUDA_SUCCESS
        );
        assert_eq!(unsafe { record(ev[3], s1) }, CUDA_SUCCESS);
        assert_eq!(
            unsafe { elapsed(&mut ms, ev[0], ev[3]) },
            CUDA_ERROR_INVALID_HANDLE
        );
    });
}

#[test]
fn graphs_run_their_kernels_and_own_their_memory() {
    isolated(
        "graphs_run_their_kernels_and_own_their_memory",
        "memory=2GiB,context=0",
        || {
            let cu = Cu::open();
            setup(&cu);
            let f = busy_function(&cu);
            let create: unsafe extern "C" fn(*mut CUgraph, c_uint) -> c_int = cu.f("cuGraphCreate");
            let add_kernel: unsafe extern "C" fn(
                *mut CUgraphNode,
                CUgraph,
                *const CUgraphNode,
                usize,
                *const CUDA_KERNEL_NODE_PARAMS,
            ) -> c_int = cu.f("cuGraphAddKernelNode_v2");
            let add_alloc: unsafe extern "C" fn(
                *mut CUgraphNode,
                CUgraph,
                *const CUgraphNode,
                usize,
                *mut CUDA_MEM_ALLOC_NODE_PARAMS,
            ) -> c_int = cu.f("cuGraphAddMemAllocNode");
            let instantiate: unsafe extern "C" fn(*mut CUgraphExec, CUgraph, u64) -> c_int =
                cu.f("cuGraphInstantiateWithFlags");
            let launch: unsafe extern "C" fn(CUgraphExec, CUstream) -> c_int =
                cu.f("cuGraphLaunch");
            let exec_destroy: unsafe extern "C" fn(CUgraphExec) -> c_int =
                cu.f("cuGraphExecDestroy");
            let graph_destroy: unsafe extern "C" fn(CUgraph) -> c_int = cu.f("cuGraphDestroy");
            let trim: unsafe extern "C" fn(c_int) -> c_int = cu.f("cuDeviceGraphMemTrim");
            let stream_create: FStreamCreate = cu.f("cuStreamCreate");
            let sync: FStream = cu.f("cuStreamSynchronize");
            let mut s = std::ptr::null_mut();
            assert_eq!(unsafe { stream_create(&mut s, 0) }, CUDA_SUCCESS);
            let base = free_mem(&cu);

            let mut g = std::ptr::null_mut();
            assert_eq!(unsafe { create(&mut g, 0) }, CUDA_SUCCESS);
            let mut us = 30_000u64;
            let mut params = [(&mut us as *mut u64).cast::<c_void>()];
            let kp = CUDA_KERNEL_NODE_PARAMS {
                func: f,
                gridDimX: 1,
                gridDimY: 1,
                gridDimZ: 1,
                blockDimX: 1,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: 0,
                kernelParams: params.as_mut_ptr(),
                extra: std::ptr::null_mut(),
                kern: std::ptr::null_mut(),
                ctx: std::ptr::null_mut(),
            };
            let (mut n1, mut n2, mut n3) = (
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            let mut ap = CUDA_MEM_ALLOC_NODE_PARAMS {
                poolProps: CUmemPoolProps::default(),
                accessDescs: std::ptr::null(),
                accessDescCount: 0,
                bytesize: 64 * MIB,
                dptr: 0,
            };
            ap.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
            ap.poolProps.location = CUmemLocation {
                type_: CU_MEM_LOCATION_TYPE_DEVICE,
                id: 0,
            };
            assert_eq!(
                unsafe { add_alloc(&mut n1, g, std::ptr::null(), 0, &mut ap) },
                CUDA_SUCCESS
            );
            assert_ne!(ap.dptr, 0, "the address is known when the node is made");
            assert_eq!(unsafe { add_kernel(&mut n2, g, &n1, 1, &kp) }, CUDA_SUCCESS);
            // The first node keeps the value it was given.
            unsafe { std::ptr::write_volatile(&mut us, 40_000) };
            assert_eq!(unsafe { add_kernel(&mut n3, g, &n2, 1, &kp) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), base, "nothing charged before launch");
            let mut e = std::ptr::null_mut();
            assert_eq!(unsafe { instantiate(&mut e, g, 0) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), base);

            let t0 = now_ns();
            assert_eq!(unsafe { launch(e, s) }, CUDA_SUCCESS);
            assert_eq!(
                free_mem(&cu),
                base - 64 * MIB,
                "graph memory is found at launch"
            );
            assert_eq!(unsafe { sync(s) }, CUDA_SUCCESS);
            let took = (now_ns() - t0) as f64 / 1e6;
            assert!(
                (69.0..200.0).contains(&took),
                "graph ran 30 ms + 40 ms of kernels in {took} ms"
            );
            assert_eq!(unsafe { exec_destroy(e) }, CUDA_SUCCESS);
            assert_eq!(
                free_mem(&cu),
                base - 64 * MIB,
                "cached for graphs until trimmed"
            );
            // The graph does not free its allocation: the program does, back into the
            // graph reservation.
            let mem_free: unsafe extern "C" fn(CUdeviceptr) -> c_int = cu.f("cuMemFree_v2");
            assert_eq!(unsafe { trim(0) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), base - 64 * MIB, "still live until freed");
            assert_eq!(unsafe { mem_free(ap.dptr) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), base - 64 * MIB, "freed into the reservation");
            assert_eq!(unsafe { trim(0) }, CUDA_SUCCESS);
            assert_eq!(free_mem(&cu), base);
            assert_eq!(unsafe { graph_destroy(g) }, CUDA_SUCCESS);

            // Stream capture records launches instead of running them.
            let begin: unsafe extern "C" fn(CUstream, c_int) -> c_int =
                cu.f("cuStreamBeginCapture_v2");
            let end: unsafe extern "C" fn(CUstream, *mut CUgraph) -> c_int =
                cu.f("cuStreamEndCapture");
            let capturing: unsafe extern "C" fn(CUstream, *mut c_int) -> c_int =
                cu.f("cuStreamIsCapturing");
            let query: FStream = cu.f("cuStreamQuery");
            assert_eq!(
                unsafe { begin(s, CU_STREAM_CAPTURE_MODE_GLOBAL) },
                CUDA_SUCCESS
            );
            let mut st = 0;
            assert_eq!(unsafe { capturing(s, &mut st) }, CUDA_SUCCESS);
            assert_eq!(st, CU_STREAM_CAPTURE_STATUS_ACTIVE);
            assert_eq!(launch_busy(&cu, f, s, 20_000), CUDA_SUCCESS);
            assert_eq!(unsafe { query(s) }, CUDA_SUCCESS, "captured, not run");
            let mut cg = std::ptr::null_mut();
            assert_eq!(unsafe { end(s, &mut cg) }, CUDA_SUCCESS);
            assert_eq!(unsafe { instantiate(&mut e, cg, 0) }, CUDA_SUCCESS);
            let t0 = now_ns();
            assert_eq!(unsafe { launch(e, s) }, CUDA_SUCCESS);
            assert_eq!(unsafe { sync(s) }, CUDA_SUCCESS);
            let took = (now_ns() - t0) as f64 / 1e6;
            assert!(
                (19.0..200.0).contains(&took),
                "captured kernel ran at launch: {took} ms"
            );
        },
    );
}

#[test]
fn get_proc_address_resolves_versions_and_is_symbolic() {
    isolated(
        "get_proc_address_resolves_versions_and_is_symbolic",
        "",
        || {
            let cu = Cu::open();
            type Gpa = unsafe extern "C" fn(
                *const c_char,
                *mut *mut c_void,
                c_int,
                u64,
                *mut c_int,
            ) -> c_int;
            let gpa: Gpa = cu.f("cuGetProcAddress_v2");
            let gpa_v1: unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> c_int =
                cu.f("cuGetProcAddress");
            let resolve = |name: &str, version: c_int, flags: u64| {
                let n = CString::new(name).unwrap();
                let mut p = std::ptr::null_mut();
                let mut status = -1;
                let r = unsafe { gpa(n.as_ptr(), &mut p, version, flags, &mut status) };
                (r, p, status)
            };
            // Works before cuInit, as the runtime needs it to find cuInit.
            assert_eq!(
                resolve("cuInit", 12000, 0),
                (CUDA_SUCCESS, cu.addr("cuInit"), CU_GET_PROC_ADDRESS_SUCCESS)
            );
            assert_eq!(resolve("cuMemAlloc", 12090, 0).1, cu.addr("cuMemAlloc_v2"));
            assert_eq!(resolve("cuMemAlloc", 3000, 0).1, cu.addr("cuMemAlloc"));
            assert_eq!(
                resolve(
                    "cuMemcpyHtoD",
                    12000,
                    CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
                )
                .1,
                cu.addr("cuMemcpyHtoD_v2_ptds")
            );
            assert_eq!(
                resolve("cuMemcpyHtoD", 12000, CU_GET_PROC_ADDRESS_LEGACY_STREAM).1,
                cu.addr("cuMemcpyHtoD_v2")
            );
            assert_eq!(
                resolve(
                    "cuLaunchKernel",
                    12000,
                    CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
                )
                .1,
                cu.addr("cuLaunchKernel_ptsz")
            );
            assert_eq!(
                resolve(
                    "cuMemAlloc",
                    12000,
                    CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
                )
                .1,
                cu.addr("cuMemAlloc_v2"),
                "no per-thread variant"
            );
            assert_eq!(
                resolve("cuCtxCreate", 12090, 0).1,
                cu.addr("cuCtxCreate_v4")
            );
            assert_eq!(
                resolve("cuGetProcAddress", 12000, 0).1,
                cu.addr("cuGetProcAddress_v2")
            );
            assert_eq!(
                resolve("cuGetProcAddress", 11030, 0).1,
                cu.addr("cuGetProcAddress")
            );
            let (r, p, st) = resolve("cuNoSuchFunction", 12000, 0);
            assert_eq!(
                (r, p, st),
                (
                    CUDA_ERROR_NOT_FOUND,
                    std::ptr::null_mut(),
                    CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
                )
            );
            let (r, p, st) = resolve("cuMemAllocAsync", 11000, 0);
            assert_eq!(
                (r, p, st),
                (
                    CUDA_ERROR_NOT_FOUND,
                    std::ptr::null_mut(),
                    CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                )
            );
            let mut p = std::ptr::null_mut();
            assert_eq!(
                unsafe { gpa_v1(c"cuMemFree".as_ptr(), &mut p, 12000, 0) },
                CUDA_SUCCESS
            );
            assert_eq!(p, cu.addr("cuMemFree_v2"));
            assert_eq!(
                unsafe { gpa_v1(std::ptr::null(), &mut p, 12000, 0) },
                CUDA_ERROR_INVALID_VALUE
            );

            // Linked -Bsymbolic: the library's own references bind to its own definitions.
            assert!(dynamic_flags(&cu).0, "libcuda.so lacks DF_SYMBOLIC");
            assert_eq!(dynamic_flags(&cu).1.as_deref(), Some("libcuda.so.1"));
        },
    );
}

/// (DF_SYMBOLIC or DT_SYMBOLIC set, DT_SONAME) from the loaded library's dynamic section.
fn dynamic_flags(cu: &Cu) -> (bool, Option<String>) {
    #[repr(C)]
    struct LinkMap {
        l_addr: usize,
        l_name: *const c_char,
        l_ld: *const [u64; 2],
    }
    unsafe extern "C" {
        fn dlinfo(handle: *mut c_void, request: c_int, info: *mut c_void) -> c_int;
    }
    const RTLD_DI_LINKMAP: c_int = 2;
    let mut lm: *const LinkMap = std::ptr::null();
    assert_eq!(
        unsafe {
            dlinfo(
                cu.0,
                RTLD_DI_LINKMAP,
                (&mut lm as *mut *const LinkMap).cast(),
            )
        },
        0
    );
    let (mut symbolic, mut soname_off, mut strtab) = (false, None, 0u64);
    let mut d = unsafe { (*lm).l_ld };
    loop {
        let [tag, val] = unsafe { *d };
        match tag {
            0 => break,
            14 => soname_off = Some(val),
            5 => strtab = val,
            16 => symbolic = true,
            30 if val & 0x2 != 0 => symbolic = true,
            _ => {}
        }
        d = unsafe { d.add(1) };
    }
    // glibc relocates DT_STRTAB in the loaded dynamic section to an absolute address.
    let soname = soname_off.map(|o| {
        unsafe { CStr::from_ptr((strtab + o) as *const c_char) }
            .to_string_lossy()
            .into_owned()
    });
    (symbolic, soname)
}

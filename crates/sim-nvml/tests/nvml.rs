//! The simulated NVML as a client sees it: through dlopen, against the shared simulated state.

mod common;

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

use common::{Holder, Lib, isolated, sleep_until};
use gpuslice_cuda_abi::nvml::*;
use gpuslice_sim_state::Sim;

type Init = unsafe extern "C" fn() -> nvmlReturn_t;
type GetCount = unsafe extern "C" fn(*mut c_uint) -> nvmlReturn_t;
type ByIndex = unsafe extern "C" fn(c_uint, *mut nvmlDevice_t) -> nvmlReturn_t;
type ByStr = unsafe extern "C" fn(*const c_char, *mut nvmlDevice_t) -> nvmlReturn_t;
type DevStr = unsafe extern "C" fn(nvmlDevice_t, *mut c_char, c_uint) -> nvmlReturn_t;
type DevU32 = unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t;
type DevU32x2 = unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut c_uint) -> nvmlReturn_t;
type DevU64 = unsafe extern "C" fn(nvmlDevice_t, *mut c_ulonglong) -> nvmlReturn_t;
type DevPtr<T> = unsafe extern "C" fn(nvmlDevice_t, *mut T) -> nvmlReturn_t;
type Procs<T> = unsafe extern "C" fn(nvmlDevice_t, *mut c_uint, *mut T) -> nvmlReturn_t;
type ProcUtil = unsafe extern "C" fn(
    nvmlDevice_t,
    *mut nvmlProcessUtilizationSample_t,
    *mut c_uint,
    c_ulonglong,
) -> nvmlReturn_t;

/// The library with nvmlInit_v2 done.
fn nvml() -> Lib {
    let lib = Lib::open();
    assert_eq!(unsafe { lib.sym::<Init>("nvmlInit_v2")() }, NVML_SUCCESS);
    lib
}

fn handle(lib: &Lib, index: u32) -> nvmlDevice_t {
    let mut h = null_mut();
    assert_eq!(
        unsafe { lib.sym::<ByIndex>("nvmlDeviceGetHandleByIndex_v2")(index, &mut h) },
        NVML_SUCCESS
    );
    h
}

fn dev_string(lib: &Lib, f: &str, h: nvmlDevice_t) -> String {
    let mut buf = [0 as c_char; 96];
    assert_eq!(
        unsafe { lib.sym::<DevStr>(f)(h, buf.as_mut_ptr(), buf.len() as c_uint) },
        NVML_SUCCESS
    );
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned()
}

fn chars(b: &[c_char]) -> String {
    unsafe { CStr::from_ptr(b.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn holder() {
    common::holder_main();
}

#[test]
fn init_is_reference_counted() {
    isolated("init_is_reference_counted", "", || {
        let lib = Lib::open();
        let count = lib.sym::<GetCount>("nvmlDeviceGetCount_v2");
        let shutdown = lib.sym::<Init>("nvmlShutdown");
        let err = lib.sym::<unsafe extern "C" fn(nvmlReturn_t) -> *const c_char>("nvmlErrorString");
        let mut n = 0;
        unsafe {
            assert_eq!(count(&mut n), NVML_ERROR_UNINITIALIZED);
            assert_eq!(shutdown(), NVML_ERROR_UNINITIALIZED);
            assert_eq!(
                CStr::from_ptr(err(NVML_ERROR_UNINITIALIZED)).to_str(),
                Ok("Uninitialized")
            );
            assert_eq!(CStr::from_ptr(err(12345)).to_str(), Ok("Unknown Error"));

            assert_eq!(lib.sym::<Init>("nvmlInit")(), NVML_SUCCESS);
            assert_eq!(lib.sym::<Init>("nvmlInit_v2")(), NVML_SUCCESS);
            assert_eq!(
                lib.sym::<unsafe extern "C" fn(c_uint) -> nvmlReturn_t>("nvmlInitWithFlags")(0),
                NVML_SUCCESS
            );
            assert_eq!(count(&mut n), NVML_SUCCESS);
            assert_eq!(n, 1);
            assert_eq!(count(null_mut()), NVML_ERROR_INVALID_ARGUMENT);
            let h = handle(&lib, 0);
            for _ in 0..2 {
                assert_eq!(shutdown(), NVML_SUCCESS);
                assert_eq!(
                    count(&mut n),
                    NVML_SUCCESS,
                    "still initialised while inits remain"
                );
            }
            assert_eq!(shutdown(), NVML_SUCCESS);
            assert_eq!(count(&mut n), NVML_ERROR_UNINITIALIZED);
            let mut buf = [0 as c_char; 96];
            assert_eq!(
                lib.sym::<DevStr>("nvmlDeviceGetName")(h, buf.as_mut_ptr(), 96),
                NVML_ERROR_UNINITIALIZED
            );
            assert_eq!(shutdown(), NVML_ERROR_UNINITIALIZED);

            // Handles from before a shutdown stay usable after the next init.
            assert_eq!(lib.sym::<Init>("nvmlInit_v2")(), NVML_SUCCESS);
            assert_eq!(
                dev_string(&lib, "nvmlDeviceGetName", h),
                gpuslice_sim_state::DEFAULT_NAME
            );

            let drv = lib.sym::<unsafe extern "C" fn(*mut c_char, c_uint) -> nvmlReturn_t>(
                "nvmlSystemGetDriverVersion",
            );
            assert_eq!(drv(buf.as_mut_ptr(), 4), NVML_ERROR_INSUFFICIENT_SIZE);
            assert_eq!(
                drv(
                    buf.as_mut_ptr(),
                    NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE as c_uint
                ),
                NVML_SUCCESS
            );
            assert_eq!(chars(&buf), gpuslice_sim_state::DRIVER_VERSION);
            let mut cuda = 0;
            assert_eq!(
                lib.sym::<unsafe extern "C" fn(*mut c_int) -> nvmlReturn_t>(
                    "nvmlSystemGetCudaDriverVersion_v2"
                )(&mut cuda),
                NVML_SUCCESS
            );
            assert_eq!(cuda, gpuslice_sim_state::CUDA_DRIVER_VERSION);
        }
    });
}

#[test]
fn devices_by_index_uuid_and_bus_id() {
    isolated(
        "devices_by_index_uuid_and_bus_id",
        "count=2,memory=16GiB,name=NVIDIA Sim Test GPU",
        || {
            let lib = nvml();
            let sim = Sim::get().unwrap();
            let mut n = 0;
            unsafe {
                assert_eq!(
                    lib.sym::<GetCount>("nvmlDeviceGetCount")(&mut n),
                    NVML_SUCCESS
                );
                assert_eq!(n, 2);
                let mut h = null_mut();
                assert_eq!(
                    lib.sym::<ByIndex>("nvmlDeviceGetHandleByIndex")(2, &mut h),
                    NVML_ERROR_INVALID_ARGUMENT
                );
            }
            for i in 0..2u32 {
                let spec = sim.spec(i as usize);
                let h = handle(&lib, i);
                assert_eq!(handle(&lib, i), h, "handles are stable");
                assert_eq!(
                    dev_string(&lib, "nvmlDeviceGetName", h),
                    "NVIDIA Sim Test GPU"
                );
                let uuid = dev_string(&lib, "nvmlDeviceGetUUID", h);
                assert_eq!(uuid, spec.uuid);
                unsafe {
                    let mut idx = 99;
                    assert_eq!(
                        lib.sym::<DevU32>("nvmlDeviceGetIndex")(h, &mut idx),
                        NVML_SUCCESS
                    );
                    assert_eq!(idx, i);
                    assert_eq!(
                        lib.sym::<DevU32>("nvmlDeviceGetMinorNumber")(h, &mut idx),
                        NVML_SUCCESS
                    );
                    assert_eq!(idx, i);

                    let mut by = null_mut();
                    let cu = std::ffi::CString::new(uuid).unwrap();
                    assert_eq!(
                        lib.sym::<ByStr>("nvmlDeviceGetHandleByUUID")(cu.as_ptr(), &mut by),
                        NVML_SUCCESS
                    );
                    assert_eq!(by, h);

                    let mut pci = nvmlPciInfo_t::default();
                    assert_eq!(
                        lib.sym::<DevPtr<nvmlPciInfo_t>>("nvmlDeviceGetPciInfo_v3")(h, &mut pci),
                        NVML_SUCCESS
                    );
                    assert_eq!(chars(&pci.busId), spec.pci_bus_id);
                    assert_eq!(chars(&pci.busIdLegacy), spec.pci_bus_id[4..]);
                    assert_eq!(pci.pciDeviceId & 0xFFFF, 0x10DE);
                    for id in [
                        chars(&pci.busId),
                        chars(&pci.busIdLegacy),
                        chars(&pci.busId).to_lowercase(),
                    ] {
                        let c = std::ffi::CString::new(id).unwrap();
                        let mut by = null_mut();
                        assert_eq!(
                            lib.sym::<ByStr>("nvmlDeviceGetHandleByPciBusId_v2")(
                                c.as_ptr(),
                                &mut by
                            ),
                            NVML_SUCCESS
                        );
                        assert_eq!(by, h);
                    }

                    // The oldest entry point writes only the old, shorter struct.
                    let mut old = [0xAAu8; 68];
                    assert_eq!(
                        lib.sym::<DevPtr<u8>>("nvmlDeviceGetPciInfo")(h, old.as_mut_ptr()),
                        NVML_SUCCESS
                    );
                    assert_eq!(&old[..12], &spec.pci_bus_id.as_bytes()[4..16]);
                    assert!(old[36..52].iter().all(|&b| b == 0));
                    assert!(old[52..].iter().all(|&b| b == 0xAA));

                    let (mut major, mut minor) = (0, 0);
                    let cc = lib.sym::<unsafe extern "C" fn(
                        nvmlDevice_t,
                        *mut c_int,
                        *mut c_int,
                    ) -> nvmlReturn_t>(
                        "nvmlDeviceGetCudaComputeCapability"
                    );
                    assert_eq!(cc(h, &mut major, &mut minor), NVML_SUCCESS);
                    assert_eq!((major, minor), (9, 0));
                }
            }
            unsafe {
                let mut by = null_mut();
                assert_eq!(
                    lib.sym::<ByStr>("nvmlDeviceGetHandleByUUID")(c"GPU-nope".as_ptr(), &mut by),
                    NVML_ERROR_NOT_FOUND
                );
                assert_eq!(
                    lib.sym::<ByStr>("nvmlDeviceGetHandleByPciBusId")(
                        c"0000:FF:00.0".as_ptr(),
                        &mut by
                    ),
                    NVML_ERROR_NOT_FOUND
                );
                assert_eq!(
                    lib.sym::<ByStr>("nvmlDeviceGetHandleByPciBusId")(c"garbage".as_ptr(), &mut by),
                    NVML_ERROR_INVALID_ARGUMENT
                );

                // Buffers too small for the answer, and handles that are not ours.
                let h = handle(&lib, 0);
                let mut small = [0 as c_char; 8];
                assert_eq!(
                    lib.sym::<DevStr>("nvmlDeviceGetUUID")(h, small.as_mut_ptr(), 8),
                    NVML_ERROR_INSUFFICIENT_SIZE
                );
                let mut idx = 0;
                let bogus = (h as usize + 1) as nvmlDevice_t;
                assert_eq!(
                    lib.sym::<DevU32>("nvmlDeviceGetIndex")(bogus, &mut idx),
                    NVML_ERROR_INVALID_ARGUMENT
                );
                assert_eq!(
                    lib.sym::<DevU32>("nvmlDeviceGetIndex")(null_mut(), &mut idx),
                    NVML_ERROR_INVALID_ARGUMENT
                );
                let mut x = 0u32;
                assert_eq!(
                    lib.sym::<DevU32>("nvmlDeviceGetIndex")((&mut x as *mut u32).cast(), &mut idx),
                    NVML_ERROR_INVALID_ARGUMENT
                );

                let mut level = -1;
                let topo = lib.sym::<unsafe extern "C" fn(
                    nvmlDevice_t,
                    nvmlDevice_t,
                    *mut c_int,
                ) -> nvmlReturn_t>(
                    "nvmlDeviceGetTopologyCommonAncestor"
                );
                assert_eq!(topo(h, h, &mut level), NVML_SUCCESS);
                assert_eq!(level, NVML_TOPOLOGY_INTERNAL);
                assert_eq!(topo(h, handle(&lib, 1), &mut level), NVML_SUCCESS);
                assert_eq!(level, NVML_TOPOLOGY_NODE);
            }
        },
    );
}

#[test]
fn memory_info_follows_the_state() {
    isolated(
        "memory_info_follows_the_state",
        "count=2,memory=8GiB",
        || {
            let lib = nvml();
            let sim = Sim::get().unwrap();
            let v1 = lib.sym::<DevPtr<nvmlMemory_t>>("nvmlDeviceGetMemoryInfo");
            let v2 = lib.sym::<DevPtr<nvmlMemory_v2_t>>("nvmlDeviceGetMemoryInfo_v2");
            let read = |dev: u32| unsafe {
                let h = handle(&lib, dev);
                let mut m1 = nvmlMemory_t::default();
                assert_eq!(v1(h, &mut m1), NVML_SUCCESS);
                let mut m2 = nvmlMemory_v2_t {
                    version: nvmlMemory_v2,
                    ..Default::default()
                };
                assert_eq!(v2(h, &mut m2), NVML_SUCCESS);
                assert_eq!((m1.total, m1.used, m1.free), (m2.total, m2.used, m2.free));
                assert_eq!(m1.total, m1.used + m1.free);
                assert_eq!(m2.reserved, 0);
                assert_eq!(m1.total, sim.memory_total(dev as usize));
                assert_eq!(m1.used, sim.memory_used(dev as usize));
                m1
            };
            assert_eq!(read(0).used, 0);
            {
                let _a = Holder::spawn(0, 1 << 30, 0);
                let _b = Holder::spawn(0, 512 << 20, 0);
                let _c = Holder::spawn(1, 3 << 30, 0);
                assert_eq!(read(0).used, (1 << 30) + (512 << 20));
                assert_eq!(read(1).used, 3 << 30);
                assert_eq!(read(1).free, 5 << 30);
            }
            // Dead holders' memory comes back.
            assert_eq!(read(0).used, 0);
            assert_eq!(read(1).used, 0);

            unsafe {
                let mut m2 = nvmlMemory_v2_t {
                    version: 1,
                    ..Default::default()
                };
                assert_eq!(
                    v2(handle(&lib, 0), &mut m2),
                    NVML_ERROR_ARGUMENT_VERSION_MISMATCH
                );
                assert_eq!(v1(handle(&lib, 0), null_mut()), NVML_ERROR_INVALID_ARGUMENT);
            }
        },
    );
}

#[test]
fn running_processes_with_the_size_protocol() {
    isolated(
        "running_processes_with_the_size_protocol",
        "count=2",
        || {
            let lib = nvml();
            let h = handle(&lib, 0);
            let v1 = lib.sym::<Procs<nvmlProcessInfo_v1_t>>("nvmlDeviceGetComputeRunningProcesses");
            let v2 = lib.sym::<Procs<nvmlProcessInfo_t>>("nvmlDeviceGetComputeRunningProcesses_v2");
            let v3 = lib.sym::<Procs<nvmlProcessInfo_t>>("nvmlDeviceGetComputeRunningProcesses_v3");
            let gfx =
                lib.sym::<Procs<nvmlProcessInfo_t>>("nvmlDeviceGetGraphicsRunningProcesses_v3");
            unsafe {
                let mut n = 0;
                assert_eq!(v3(h, &mut n, null_mut()), NVML_SUCCESS);
                assert_eq!(n, 0);
                assert_eq!(v3(h, null_mut(), null_mut()), NVML_ERROR_INVALID_ARGUMENT);
            }
            let a = Holder::spawn(0, 100 << 20, 0);
            let b = Holder::spawn(0, 300 << 20, 0);
            let _other = Holder::spawn(1, 1 << 20, 0);
            let mut want = vec![(a.pid, 100u64 << 20), (b.pid, 300u64 << 20)];
            want.sort();
            unsafe {
                let mut n = 0;
                assert_eq!(v3(h, &mut n, null_mut()), NVML_ERROR_INSUFFICIENT_SIZE);
                assert_eq!(n, 2);
                let mut buf = [nvmlProcessInfo_t::default(); 4];
                n = 1;
                assert_eq!(
                    v3(h, &mut n, buf.as_mut_ptr()),
                    NVML_ERROR_INSUFFICIENT_SIZE
                );
                assert_eq!(n, 2);
                for f in [v2, v3] {
                    n = 4;
                    assert_eq!(f(h, &mut n, buf.as_mut_ptr()), NVML_SUCCESS);
                    assert_eq!(n, 2);
                    let mut got: Vec<_> =
                        buf[..2].iter().map(|p| (p.pid, p.usedGpuMemory)).collect();
                    got.sort();
                    assert_eq!(got, want);
                    assert!(buf[..2].iter().all(|p| p.gpuInstanceId == u32::MAX && p.computeInstanceId == u32::MAX));
                }
                let mut old = [nvmlProcessInfo_v1_t::default(); 2];
                n = 2;
                assert_eq!(v1(h, &mut n, old.as_mut_ptr()), NVML_SUCCESS);
                let mut got: Vec<_> = old.iter().map(|p| (p.pid, p.usedGpuMemory)).collect();
                got.sort();
                assert_eq!(got, want);

                n = 4;
                assert_eq!(gfx(h, &mut n, buf.as_mut_ptr()), NVML_SUCCESS);
                assert_eq!(n, 0);
                let mps = lib
                    .sym::<Procs<nvmlProcessInfo_t>>("nvmlDeviceGetMPSComputeRunningProcesses_v3");
                n = 4;
                assert_eq!(mps(h, &mut n, buf.as_mut_ptr()), NVML_SUCCESS);
                assert_eq!(n, 0, "no MPS server on the simulated GPU");
            }
            drop(a);
            unsafe {
                let mut buf = [nvmlProcessInfo_t::default(); 4];
                let mut n = 4;
                assert_eq!(v3(h, &mut n, buf.as_mut_ptr()), NVML_SUCCESS);
                assert_eq!((n, buf[0].pid), (1, b.pid));
            }
        },
    );
}

#[test]
fn utilization_from_the_timeline() {
    isolated("utilization_from_the_timeline", "count=2", || {
        let lib = nvml();
        let h = handle(&lib, 0);
        let rates = lib.sym::<DevPtr<nvmlUtilization_t>>("nvmlDeviceGetUtilizationRates");
        let per_proc = lib.sym::<ProcUtil>("nvmlDeviceGetProcessUtilization");
        unsafe {
            let mut u = nvmlUtilization_t { gpu: 7, memory: 7 };
            assert_eq!(rates(h, &mut u), NVML_SUCCESS);
            assert_eq!(u.gpu, 0);
            let mut n = 0;
            assert_eq!(per_proc(h, null_mut(), &mut n, 0), NVML_ERROR_NOT_FOUND);
        }

        // 300 ms of work in one process, 100 ms queued behind it from another.
        let a = Holder::spawn(0, 1 << 20, 300);
        let b = Holder::spawn(0, 1 << 20, 100);
        sleep_until(a.busy_end_ns.max(b.busy_end_ns));
        let t0 = Instant::now();
        unsafe {
            let mut u = nvmlUtilization_t::default();
            assert_eq!(rates(h, &mut u), NVML_SUCCESS);
            assert!((38..=41).contains(&u.gpu), "gpu util {}", u.gpu);
            let mut other = nvmlUtilization_t::default();
            assert_eq!(rates(handle(&lib, 1), &mut other), NVML_SUCCESS);
            assert_eq!(other.gpu, 0);

            let mut n = 0;
            assert_eq!(
                per_proc(h, null_mut(), &mut n, 0),
                NVML_ERROR_INSUFFICIENT_SIZE
            );
            assert_eq!(n, 2);
            let mut s = [nvmlProcessUtilizationSample_t::default(); 2];
            n = 1;
            assert_eq!(
                per_proc(h, s.as_mut_ptr(), &mut n, 0),
                NVML_ERROR_INSUFFICIENT_SIZE
            );
            assert_eq!(n, 2);
            assert_eq!(per_proc(h, s.as_mut_ptr(), &mut n, 0), NVML_SUCCESS);
            assert_eq!(n, 2);
            let sa = *s.iter().find(|x| x.pid == a.pid).expect("sample for a");
            let sb = *s.iter().find(|x| x.pid == b.pid).expect("sample for b");
            assert!((28..=31).contains(&sa.smUtil), "a: {}", sa.smUtil);
            assert!((8..=11).contains(&sb.smUtil), "b: {}", sb.smUtil);
            // Wall-clock microseconds, like the real library's CPU timestamps.
            let wall_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64;
            assert!(
                sb.timeStamp <= wall_us && sb.timeStamp + 2_000_000 > wall_us,
                "{} vs {wall_us}",
                sb.timeStamp
            );
            assert!(sa.timeStamp < sb.timeStamp, "b's work ran after a's");

            // Nothing newer than the latest sample.
            n = 2;
            assert_eq!(
                per_proc(h, s.as_mut_ptr(), &mut n, sb.timeStamp),
                NVML_ERROR_NOT_FOUND
            );
            // Since a's last work only b ran: b kept the device busy over that whole span, minus
            // the time since it finished.
            n = 2;
            assert_eq!(
                per_proc(h, s.as_mut_ptr(), &mut n, sa.timeStamp),
                NVML_SUCCESS
            );
            assert_eq!((n, s[0].pid), (1, b.pid));
            assert!(s[0].smUtil > 50, "b since a: {}", s[0].smUtil);

            // The versioned form answers the same samples, with the same size protocol.
            let info = lib.sym::<DevPtr<nvmlProcessesUtilizationInfo_v1_t>>(
                "nvmlDeviceGetProcessesUtilizationInfo",
            );
            let mut arr = [nvmlProcessUtilizationInfo_v1_t::default(); 2];
            let mut pi = nvmlProcessesUtilizationInfo_v1_t {
                version: nvmlProcessesUtilizationInfo_v1,
                processSamplesCount: 0,
                lastSeenTimeStamp: 0,
                procUtilArray: null_mut(),
            };
            assert_eq!(info(h, &mut pi), NVML_ERROR_INSUFFICIENT_SIZE);
            assert_eq!(pi.processSamplesCount, 2);
            pi.procUtilArray = arr.as_mut_ptr();
            assert_eq!(info(h, &mut pi), NVML_SUCCESS);
            let mut pids: Vec<u32> = arr.iter().map(|x| x.pid).collect();
            pids.sort();
            let mut want = vec![a.pid, b.pid];
            want.sort();
            assert_eq!(pids, want);
            let ia = arr.iter().find(|x| x.pid == a.pid).unwrap();
            assert!((28..=31).contains(&ia.smUtil), "a: {}", ia.smUtil);
            pi.version = 1;
            assert_eq!(info(h, &mut pi), NVML_ERROR_ARGUMENT_VERSION_MISMATCH);

            let mut temp = 0;
            let t = lib
                .sym::<unsafe extern "C" fn(nvmlDevice_t, c_int, *mut c_uint) -> nvmlReturn_t>(
                    "nvmlDeviceGetTemperature",
                );
            assert_eq!(t(h, NVML_TEMPERATURE_GPU, &mut temp), NVML_SUCCESS);
            assert!((20..100).contains(&temp));
            let mut mw = 0;
            assert_eq!(
                lib.sym::<DevU32>("nvmlDeviceGetPowerUsage")(h, &mut mw),
                NVML_SUCCESS
            );
            assert!(mw > 70_000);
        }
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "queries too slow for the windows above"
        );
    });
}

#[test]
fn mig_is_disabled() {
    isolated("mig_is_disabled", "", || {
        let lib = nvml();
        let h = handle(&lib, 0);
        unsafe {
            let (mut cur, mut pend) = (9, 9);
            assert_eq!(
                lib.sym::<DevU32x2>("nvmlDeviceGetMigMode")(h, &mut cur, &mut pend),
                NVML_SUCCESS
            );
            assert_eq!(
                (cur, pend),
                (NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_DISABLE)
            );
            let mut n = 9;
            assert_eq!(
                lib.sym::<DevU32>("nvmlDeviceGetMaxMigDeviceCount")(h, &mut n),
                NVML_SUCCESS
            );
            assert_eq!(n, 0);
            assert_eq!(
                lib.sym::<DevU32>("nvmlDeviceIsMigDeviceHandle")(h, &mut n),
                NVML_SUCCESS
            );
            assert_eq!(n, 0);
            let mut mig = null_mut();
            let by = lib.sym::<unsafe extern "C" fn(
                nvmlDevice_t,
                c_uint,
                *mut nvmlDevice_t,
            ) -> nvmlReturn_t>("nvmlDeviceGetMigDeviceHandleByIndex");
            assert_eq!(by(h, 0, &mut mig), NVML_ERROR_NOT_FOUND);

            let mut info = nvmlGpuInstanceProfileInfo_t::default();
            let pi = lib.sym::<unsafe extern "C" fn(
                nvmlDevice_t,
                c_uint,
                *mut nvmlGpuInstanceProfileInfo_t,
            ) -> nvmlReturn_t>("nvmlDeviceGetGpuInstanceProfileInfo");
            assert_eq!(
                pi(h, NVML_GPU_INSTANCE_PROFILE_1_SLICE, &mut info),
                NVML_ERROR_NOT_SUPPORTED
            );
            let mut v2: nvmlGpuInstanceProfileInfo_v2_t = std::mem::zeroed();
            v2.version = nvmlGpuInstanceProfileInfo_v2;
            let piv = lib.sym::<unsafe extern "C" fn(
                nvmlDevice_t,
                c_uint,
                *mut nvmlGpuInstanceProfileInfo_v2_t,
            ) -> nvmlReturn_t>("nvmlDeviceGetGpuInstanceProfileInfoV");
            assert_eq!(
                piv(h, NVML_GPU_INSTANCE_PROFILE_1_SLICE, &mut v2),
                NVML_ERROR_NOT_SUPPORTED
            );
            v2.version = 7;
            assert_eq!(
                piv(h, NVML_GPU_INSTANCE_PROFILE_1_SLICE, &mut v2),
                NVML_ERROR_ARGUMENT_VERSION_MISMATCH
            );
            let gis = lib.sym::<unsafe extern "C" fn(
                nvmlDevice_t,
                c_uint,
                *mut nvmlGpuInstance_t,
                *mut c_uint,
            ) -> nvmlReturn_t>("nvmlDeviceGetGpuInstances");
            let mut count = 5;
            assert_eq!(gis(h, 0, null_mut(), &mut count), NVML_ERROR_NOT_SUPPORTED);

            let mut persist = -1;
            assert_eq!(
                lib.sym::<DevPtr<c_int>>("nvmlDeviceGetPersistenceMode")(h, &mut persist),
                NVML_SUCCESS
            );
            assert_eq!(persist, NVML_FEATURE_ENABLED);
            assert_eq!(
                lib.sym::<DevU32>("nvmlDeviceGetMultiGpuBoard")(h, &mut n),
                NVML_SUCCESS
            );
            assert_eq!(n, 0);
            assert_eq!(
                lib.sym::<DevU32>("nvmlDeviceGetNumaNodeId")(h, &mut n),
                NVML_SUCCESS
            );
            assert_eq!(n, 0);
        }
    });
}

#[test]
fn event_waits_time_out() {
    isolated("event_waits_time_out", "", || {
        let lib = nvml();
        let h = handle(&lib, 0);
        let create = lib
            .sym::<unsafe extern "C" fn(*mut nvmlEventSet_t) -> nvmlReturn_t>("nvmlEventSetCreate");
        let free =
            lib.sym::<unsafe extern "C" fn(nvmlEventSet_t) -> nvmlReturn_t>("nvmlEventSetFree");
        let register = lib.sym::<unsafe extern "C" fn(
            nvmlDevice_t,
            c_ulonglong,
            nvmlEventSet_t,
        ) -> nvmlReturn_t>("nvmlDeviceRegisterEvents");
        let wait = lib.sym::<unsafe extern "C" fn(
            nvmlEventSet_t,
            *mut nvmlEventData_t,
            c_uint,
        ) -> nvmlReturn_t>("nvmlEventSetWait_v2");
        unsafe {
            let mut supported = 0;
            assert_eq!(
                lib.sym::<DevU64>("nvmlDeviceGetSupportedEventTypes")(h, &mut supported),
                NVML_SUCCESS
            );
            assert_ne!(supported & nvmlEventTypeXidCriticalError, 0);

            let mut set = null_mut();
            assert_eq!(create(&mut set), NVML_SUCCESS);
            assert_eq!(
                register(h, nvmlEventTypeXidCriticalError, set),
                NVML_SUCCESS
            );
            assert_eq!(
                register(h, nvmlEventTypePState, set),
                NVML_ERROR_NOT_SUPPORTED
            );
            let mut data: nvmlEventData_t = std::mem::zeroed();
            let t0 = Instant::now();
            assert_eq!(wait(set, &mut data, 50), NVML_ERROR_TIMEOUT);
            assert!(t0.elapsed() >= Duration::from_millis(50));
            assert_eq!(wait(set, null_mut(), 0), NVML_ERROR_INVALID_ARGUMENT);
            assert_eq!(free(set), NVML_SUCCESS);
            assert_eq!(free(set), NVML_ERROR_INVALID_ARGUMENT);
            assert_eq!(wait(set, &mut data, 0), NVML_ERROR_INVALID_ARGUMENT);
        }
    });
}

type EvCreate = unsafe extern "C" fn(*mut nvmlEventSet_t) -> nvmlReturn_t;
type EvRegister = unsafe extern "C" fn(nvmlDevice_t, c_ulonglong, nvmlEventSet_t) -> nvmlReturn_t;
type EvWait = unsafe extern "C" fn(nvmlEventSet_t, *mut nvmlEventData_t, c_uint) -> nvmlReturn_t;

/// Events raised in the shared state (another mapping of it here, as a fault raised anywhere
/// on the machine) reach every set registered for their type, once each, in order; instance
/// ids are reported only for an XID on a MIG GPU; the pre-MIG wait writes only its 24 bytes.
#[test]
fn events_are_delivered_by_type_with_instance_ids() {
    isolated(
        "events_are_delivered_by_type_with_instance_ids",
        "count=2",
        || {
            let lib = nvml();
            let sim = Sim::get().unwrap();
            let (h0, h1) = (handle(&lib, 0), handle(&lib, 1));
            let create = lib.sym::<EvCreate>("nvmlEventSetCreate");
            let register = lib.sym::<EvRegister>("nvmlDeviceRegisterEvents");
            let wait = lib.sym::<EvWait>("nvmlEventSetWait_v2");
            let wait_v1 = lib.sym::<EvWait>("nvmlEventSetWait");
            let xid = |code, gi, ci| gpuslice_sim_state::GpuEvent::Xid {
                code,
                gpu_instance: gi,
                compute_instance: ci,
            };
            unsafe {
                sim.raise(0, xid(31, None, None)); // before any registration: never seen
                let (mut a, mut b) = (null_mut(), null_mut());
                assert_eq!(create(&mut a), NVML_SUCCESS);
                assert_eq!(create(&mut b), NVML_SUCCESS);
                let faults = nvmlEventTypeXidCriticalError | nvmlEventTypeDoubleBitEccError;
                assert_eq!(register(h0, faults, a), NVML_SUCCESS);
                assert_eq!(register(h1, faults, a), NVML_SUCCESS);
                assert_eq!(
                    register(h0, nvmlEventTypeSingleBitEccError, b),
                    NVML_SUCCESS
                );

                sim.raise(0, xid(79, None, None));
                sim.raise(0, gpuslice_sim_state::GpuEvent::EccSingleBit);
                sim.raise(1, gpuslice_sim_state::GpuEvent::EccDoubleBit);
                let mut d: nvmlEventData_t = std::mem::zeroed();
                assert_eq!(wait(a, &mut d, 1000), NVML_SUCCESS);
                assert_eq!(
                    (d.device, d.eventType, d.eventData),
                    (h0, nvmlEventTypeXidCriticalError, 79)
                );
                assert_eq!((d.gpuInstanceId, d.computeInstanceId), (u32::MAX, u32::MAX));
                assert_eq!(wait(a, &mut d, 1000), NVML_SUCCESS);
                assert_eq!(
                    (d.device, d.eventType, d.eventData),
                    (h1, nvmlEventTypeDoubleBitEccError, 0)
                );
                let t0 = Instant::now();
                assert_eq!(
                    wait(a, &mut d, 50),
                    NVML_ERROR_TIMEOUT,
                    "the SBE is not a's"
                );
                assert!(t0.elapsed() >= Duration::from_millis(50));
                assert_eq!(wait(b, &mut d, 1000), NVML_SUCCESS);
                assert_eq!(
                    (d.device, d.eventType),
                    (h0, nvmlEventTypeSingleBitEccError)
                );
                assert_eq!(wait(b, &mut d, 10), NVML_ERROR_TIMEOUT);

                // A waiter sleeps until an event arrives.
                let raiser = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    Sim::get().unwrap().raise(1, xid(48, Some(1), Some(0)));
                });
                assert_eq!(wait(a, &mut d, 10_000), NVML_SUCCESS);
                raiser.join().unwrap();
                assert_eq!((d.device, d.eventData), (h1, 48));
                assert_eq!(
                    (d.gpuInstanceId, d.computeInstanceId),
                    (u32::MAX, u32::MAX),
                    "no instance ids while MIG is off"
                );

                // With MIG on, an XID names the instance it is attributable to.
                sim.mig_update(0, |st| {
                    st.enabled = true;
                    Ok::<_, ()>(())
                })
                .unwrap()
                .unwrap();
                sim.raise(0, xid(94, Some(2), Some(0)));
                sim.raise(0, xid(95, Some(2), None));
                assert_eq!(wait(a, &mut d, 1000), NVML_SUCCESS);
                assert_eq!(
                    (d.eventData, d.gpuInstanceId, d.computeInstanceId),
                    (94, 2, 0)
                );
                // The older wait leaves the instance ids alone.
                d.gpuInstanceId = 7;
                d.computeInstanceId = 7;
                assert_eq!(wait_v1(a, &mut d, 1000), NVML_SUCCESS);
                assert_eq!(
                    (d.eventData, d.gpuInstanceId, d.computeInstanceId),
                    (95, 7, 7)
                );

                // A GPU that falls off the bus fails the wait and every query.
                sim.set_lost(1, true);
                assert_eq!(wait(a, &mut d, 1000), NVML_ERROR_GPU_IS_LOST);
                let mut h = null_mut();
                assert_eq!(
                    lib.sym::<ByIndex>("nvmlDeviceGetHandleByIndex_v2")(1, &mut h),
                    NVML_ERROR_GPU_IS_LOST
                );
                let mut m = nvmlMemory_t::default();
                assert_eq!(
                    lib.sym::<DevPtr<nvmlMemory_t>>("nvmlDeviceGetMemoryInfo")(h1, &mut m),
                    NVML_ERROR_GPU_IS_LOST
                );
                sim.set_lost(1, false);
                assert_eq!(wait(a, &mut d, 10), NVML_ERROR_TIMEOUT);
                assert_eq!(
                    lib.sym::<DevPtr<nvmlMemory_t>>("nvmlDeviceGetMemoryInfo")(h1, &mut m),
                    NVML_SUCCESS
                );
            }
        },
    );
}

/// A CUDA program loads the simulated driver and NVML into one process, each with its own mapping
/// of the state. NVML's reads must neither see that process's memory as a dead process's nor
/// take its slot away.
#[test]
fn same_process_memory_survives_nvml() {
    isolated("same_process_memory_survives_nvml", "", || {
        let sim = Sim::get().unwrap();
        assert!(sim.try_alloc(0, 1 << 30));
        let lib = nvml();
        let mut m = nvmlMemory_t::default();
        unsafe {
            assert_eq!(
                lib.sym::<DevPtr<nvmlMemory_t>>("nvmlDeviceGetMemoryInfo")(handle(&lib, 0), &mut m),
                NVML_SUCCESS
            );
        }
        assert_eq!(m.used, 1 << 30);
        assert_eq!(sim.my_usage(0), 1 << 30);
    });
}

type SetMig = unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlReturn_t) -> nvmlReturn_t;
type GiProfileInfo =
    unsafe extern "C" fn(nvmlDevice_t, c_uint, *mut nvmlGpuInstanceProfileInfo_t) -> nvmlReturn_t;

fn set_mig(lib: &Lib, h: nvmlDevice_t, mode: c_uint) -> nvmlReturn_t {
    let mut status = -1;
    let r = unsafe { lib.sym::<SetMig>("nvmlDeviceSetMigMode")(h, mode, &mut status) };
    assert_eq!(r, status, "activation status mirrors the result");
    r
}

fn gi_info(lib: &Lib, h: nvmlDevice_t, nvml_profile: c_uint) -> nvmlGpuInstanceProfileInfo_t {
    let mut info = nvmlGpuInstanceProfileInfo_t::default();
    assert_eq!(
        unsafe {
            lib.sym::<GiProfileInfo>("nvmlDeviceGetGpuInstanceProfileInfo")(
                h,
                nvml_profile,
                &mut info,
            )
        },
        NVML_SUCCESS
    );
    info
}

fn create_gi(
    lib: &Lib,
    h: nvmlDevice_t,
    id: c_uint,
    start: c_uint,
    size: c_uint,
) -> Result<nvmlGpuInstance_t, nvmlReturn_t> {
    let mut gi = null_mut();
    let p = nvmlGpuInstancePlacement_t { start, size };
    match unsafe {
        lib.sym::<nvmlDeviceCreateGpuInstanceWithPlacement_t>(
            "nvmlDeviceCreateGpuInstanceWithPlacement",
        )(h, id, &p, &mut gi)
    } {
        NVML_SUCCESS => Ok(gi),
        e => Err(e),
    }
}

#[test]
fn mig_instances_follow_the_hardware_rules() {
    isolated("mig_instances_follow_the_hardware_rules", "count=2", || {
        let lib = nvml();
        let h = handle(&lib, 0);
        unsafe {
            // A process holding memory on the GPU blocks the mode change.
            let sim = Sim::get().unwrap();
            assert!(sim.try_alloc(0, 1 << 30));
            assert_eq!(set_mig(&lib, h, NVML_DEVICE_MIG_ENABLE), NVML_ERROR_IN_USE);
            sim.free(0, 1 << 30);
            assert_eq!(set_mig(&lib, h, 7), NVML_ERROR_INVALID_ARGUMENT);
            assert_eq!(set_mig(&lib, h, NVML_DEVICE_MIG_ENABLE), NVML_SUCCESS);
            let (mut cur, mut pend) = (9, 9);
            lib.sym::<DevU32x2>("nvmlDeviceGetMigMode")(h, &mut cur, &mut pend);
            assert_eq!(
                (cur, pend),
                (NVML_DEVICE_MIG_ENABLE, NVML_DEVICE_MIG_ENABLE)
            );

            // H100-80GB geometry: 3g.40gb is profile id 9, 60 SMs, 40448 MiB, two at {0,4}:4.
            let p3 = gi_info(&lib, h, NVML_GPU_INSTANCE_PROFILE_3_SLICE);
            assert_eq!(
                (
                    p3.id,
                    p3.multiprocessorCount,
                    p3.memorySizeMB,
                    p3.instanceCount
                ),
                (9, 60, 40448, 2)
            );
            let p1 = gi_info(&lib, h, NVML_GPU_INSTANCE_PROFILE_1_SLICE);
            assert_eq!((p1.id, p1.memorySizeMB, p1.instanceCount), (19, 9984, 7));
            let mut pl = [nvmlGpuInstancePlacement_t::default(); 8];
            let mut n = pl.len() as c_uint;
            assert_eq!(
                lib.sym::<nvmlDeviceGetGpuInstancePossiblePlacements_v2_t>(
                    "nvmlDeviceGetGpuInstancePossiblePlacements_v2"
                )(h, 9, pl.as_mut_ptr(), &mut n),
                NVML_SUCCESS
            );
            assert_eq!(
                &pl[..n as usize],
                &[
                    nvmlGpuInstancePlacement_t { start: 0, size: 4 },
                    nvmlGpuInstancePlacement_t { start: 4, size: 4 }
                ]
            );

            // Bad profile id and bad placement are INVALID_ARGUMENT; a taken one INSUFFICIENT_RESOURCES.
            assert_eq!(
                create_gi(&lib, h, 77, 0, 4),
                Err(NVML_ERROR_INVALID_ARGUMENT)
            );
            assert_eq!(
                create_gi(&lib, h, 9, 2, 4),
                Err(NVML_ERROR_INVALID_ARGUMENT)
            );
            let gi = create_gi(&lib, h, 9, 4, 4).unwrap();
            assert_eq!(
                create_gi(&lib, h, 9, 4, 4),
                Err(NVML_ERROR_INSUFFICIENT_RESOURCES)
            );
            assert_eq!(
                create_gi(&lib, h, 19, 5, 1),
                Err(NVML_ERROR_INSUFFICIENT_RESOURCES)
            );
            // 7g.80gb (id 0) needs the whole GPU.
            assert_eq!(
                create_gi(&lib, h, 0, 0, 8),
                Err(NVML_ERROR_INSUFFICIENT_RESOURCES)
            );
            // Without a placement: the first free one.
            let mut g2 = null_mut();
            assert_eq!(
                lib.sym::<nvmlDeviceCreateGpuInstance_t>("nvmlDeviceCreateGpuInstance")(
                    h, 19, &mut g2
                ),
                NVML_SUCCESS
            );
            let mut info: nvmlGpuInstanceInfo_t = std::mem::zeroed();
            assert_eq!(
                lib.sym::<nvmlGpuInstanceGetInfo_t>("nvmlGpuInstanceGetInfo")(g2, &mut info),
                NVML_SUCCESS
            );
            assert_eq!(
                (
                    info.profileId,
                    info.placement.start,
                    info.placement.size,
                    info.id
                ),
                (19, 0, 1, 7)
            );
            assert_eq!(
                lib.sym::<nvmlGpuInstanceGetInfo_t>("nvmlGpuInstanceGetInfo")(gi, &mut info),
                NVML_SUCCESS
            );
            assert_eq!((info.profileId, info.placement.start, info.id), (9, 4, 2));
            let mut list = [null_mut(); 7];
            let mut n = 0;
            assert_eq!(
                lib.sym::<nvmlDeviceGetGpuInstances_t>("nvmlDeviceGetGpuInstances")(
                    h,
                    19,
                    list.as_mut_ptr(),
                    &mut n
                ),
                NVML_SUCCESS
            );
            assert_eq!((n, list[0]), (1, g2));

            // Compute instances: the whole 3g (CI profile 2), then no room for a 1c.
            let mut cp = nvmlComputeInstanceProfileInfo_t::default();
            assert_eq!(
                lib.sym::<nvmlGpuInstanceGetComputeInstanceProfileInfo_t>(
                    "nvmlGpuInstanceGetComputeInstanceProfileInfo"
                )(gi, NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE, 0, &mut cp),
                NVML_SUCCESS
            );
            assert_eq!((cp.id, cp.sliceCount, cp.multiprocessorCount), (2, 3, 60));
            let create_ci = lib.sym::<nvmlGpuInstanceCreateComputeInstance_t>(
                "nvmlGpuInstanceCreateComputeInstance",
            );
            let mut ci = null_mut();
            assert_eq!(create_ci(gi, 2, &mut ci), NVML_SUCCESS);
            let mut other = null_mut();
            assert_eq!(
                create_ci(gi, 0, &mut other),
                NVML_ERROR_INSUFFICIENT_RESOURCES
            );
            assert_eq!(
                create_ci(gi, 4, &mut other),
                NVML_ERROR_NOT_SUPPORTED,
                "7c does not fit a 3g"
            );
            let mut cinfo: nvmlComputeInstanceInfo_t = std::mem::zeroed();
            assert_eq!(
                lib.sym::<nvmlComputeInstanceGetInfo_v2_t>("nvmlComputeInstanceGetInfo_v2")(
                    ci, &mut cinfo
                ),
                NVML_SUCCESS
            );
            assert_eq!(
                (
                    cinfo.gpuInstance,
                    cinfo.profileId,
                    cinfo.placement.size,
                    cinfo.device
                ),
                (gi, 2, 3, h)
            );

            // The MIG device: its own UUID and the profile's memory, and back to its parent.
            let mut max = 0;
            lib.sym::<DevU32>("nvmlDeviceGetMaxMigDeviceCount")(h, &mut max);
            assert_eq!(max, 7);
            let by = lib.sym::<unsafe extern "C" fn(
                nvmlDevice_t,
                c_uint,
                *mut nvmlDevice_t,
            ) -> nvmlReturn_t>("nvmlDeviceGetMigDeviceHandleByIndex");
            let mut md = null_mut();
            assert_eq!(by(h, 0, &mut md), NVML_SUCCESS);
            assert_eq!(by(h, 1, &mut md.clone()), NVML_ERROR_NOT_FOUND);
            let mut is_mig = 0;
            lib.sym::<DevU32>("nvmlDeviceIsMigDeviceHandle")(md, &mut is_mig);
            assert_eq!(is_mig, 1);
            let uuid = dev_string(&lib, "nvmlDeviceGetUUID", md);
            assert!(uuid.starts_with("MIG-"), "{uuid}");
            assert_ne!(uuid, dev_string(&lib, "nvmlDeviceGetUUID", h));
            let mut mem = nvmlMemory_t::default();
            assert_eq!(
                lib.sym::<DevPtr<nvmlMemory_t>>("nvmlDeviceGetMemoryInfo")(md, &mut mem),
                NVML_SUCCESS
            );
            assert_eq!(mem.total, 40448 << 20);
            let mut parent = null_mut();
            assert_eq!(
                lib.sym::<DevPtr<nvmlDevice_t>>("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")(
                    md,
                    &mut parent
                ),
                NVML_SUCCESS
            );
            assert_eq!(parent, h);
            let (mut gid, mut cid) = (0, 9);
            lib.sym::<DevU32>("nvmlDeviceGetGpuInstanceId")(md, &mut gid);
            lib.sym::<DevU32>("nvmlDeviceGetComputeInstanceId")(md, &mut cid);
            assert_eq!((gid, cid), (2, 0));

            // A GI with a CI cannot go; neither can MIG mode while instances exist.
            let destroy_gi = lib.sym::<nvmlGpuInstanceDestroy_t>("nvmlGpuInstanceDestroy");
            assert_eq!(destroy_gi(gi), NVML_ERROR_IN_USE);
            assert_eq!(set_mig(&lib, h, NVML_DEVICE_MIG_DISABLE), NVML_ERROR_IN_USE);
            assert_eq!(
                lib.sym::<nvmlComputeInstanceDestroy_t>("nvmlComputeInstanceDestroy")(ci),
                NVML_SUCCESS
            );
            assert_eq!(
                lib.sym::<DevPtr<nvmlMemory_t>>("nvmlDeviceGetMemoryInfo")(md, &mut mem),
                NVML_ERROR_INVALID_ARGUMENT,
                "a stale MIG handle"
            );
            assert_eq!(destroy_gi(gi), NVML_SUCCESS);
            assert_eq!(destroy_gi(gi), NVML_ERROR_INVALID_ARGUMENT);
            assert_eq!(destroy_gi(g2), NVML_SUCCESS);
            assert_eq!(set_mig(&lib, h, NVML_DEVICE_MIG_DISABLE), NVML_SUCCESS);

            // Device 1 never changed; another process sees the same state through the file.
            let h1 = handle(&lib, 1);
            lib.sym::<DevU32x2>("nvmlDeviceGetMigMode")(h1, &mut cur, &mut pend);
            assert_eq!(cur, NVML_DEVICE_MIG_DISABLE);
        }
    });
}

#[test]
fn a_gpu_without_mig_says_so() {
    isolated(
        "a_gpu_without_mig_says_so",
        "name=Tesla T4,memory=16GiB",
        || {
            let lib = nvml();
            let h = handle(&lib, 0);
            let (mut cur, mut pend) = (9, 9);
            unsafe {
                assert_eq!(
                    lib.sym::<DevU32x2>("nvmlDeviceGetMigMode")(h, &mut cur, &mut pend),
                    NVML_ERROR_NOT_SUPPORTED
                );
            }
            assert_eq!(
                set_mig(&lib, h, NVML_DEVICE_MIG_ENABLE),
                NVML_ERROR_NOT_SUPPORTED
            );
        },
    );
}

/// What monitoring tools (nvitop, gpustat) read about a board, answered as an H100 SXM5 under
/// Linux answers: no fan, no display, ECC on and clean, a 700 W limit, clocks by domain, BAR1,
/// and "not supported" for Windows-only and confidential-computing queries. The CUDA version
/// NVML reports is the simulated driver's.
#[test]
fn monitoring_queries_answer_as_the_board_does() {
    isolated("monitoring_queries_answer_as_the_board_does", "", || {
        let lib = nvml();
        let h = handle(&lib, 0);
        let u32_of = |f: &str| {
            let mut v: c_uint = 12345;
            let r = unsafe { lib.sym::<DevU32>(f)(h, &mut v) };
            (r, v)
        };
        assert_eq!(u32_of("nvmlDeviceGetFanSpeed").0, NVML_ERROR_NOT_SUPPORTED);
        assert_eq!(u32_of("nvmlDeviceGetPerformanceState"), (NVML_SUCCESS, 0));
        assert_eq!(
            u32_of("nvmlDeviceGetPowerManagementLimit"),
            (NVML_SUCCESS, 700_000)
        );
        assert_eq!(
            u32_of("nvmlDeviceGetEnforcedPowerLimit"),
            (NVML_SUCCESS, 700_000)
        );
        assert_eq!(u32_of("nvmlDeviceGetComputeMode"), (NVML_SUCCESS, 0));
        assert_eq!(u32_of("nvmlDeviceGetDisplayActive"), (NVML_SUCCESS, 0));
        for f in [
            "nvmlDeviceGetEncoderUtilization",
            "nvmlDeviceGetDecoderUtilization",
        ] {
            let (mut u, mut p) = (9, 0);
            assert_eq!(
                unsafe { lib.sym::<DevU32x2>(f)(h, &mut u, &mut p) },
                NVML_SUCCESS
            );
            assert_eq!((u, p), (0, 1_000_000), "{f}");
        }
        let (mut cur, mut pend) = (0, 0);
        assert_eq!(
            unsafe { lib.sym::<DevU32x2>("nvmlDeviceGetEccMode")(h, &mut cur, &mut pend) },
            NVML_SUCCESS
        );
        assert_eq!((cur, pend), (1, 1));
        assert_eq!(
            unsafe { lib.sym::<DevU32x2>("nvmlDeviceGetDriverModel")(h, &mut cur, &mut pend) },
            NVML_ERROR_NOT_SUPPORTED
        );
        type Ecc =
            unsafe extern "C" fn(nvmlDevice_t, c_int, c_int, *mut c_ulonglong) -> nvmlReturn_t;
        let ecc = lib.sym::<Ecc>("nvmlDeviceGetTotalEccErrors");
        let mut n: c_ulonglong = 7;
        assert_eq!(unsafe { ecc(h, 1, 0, &mut n) }, NVML_SUCCESS);
        assert_eq!(n, 0);
        assert_eq!(unsafe { ecc(h, 2, 0, &mut n) }, NVML_ERROR_INVALID_ARGUMENT);
        type Clock = unsafe extern "C" fn(nvmlDevice_t, c_int, *mut c_uint) -> nvmlReturn_t;
        let clock = lib.sym::<Clock>("nvmlDeviceGetClockInfo");
        let mut mhz = 0;
        assert_eq!(unsafe { clock(h, NVML_CLOCK_MEM, &mut mhz) }, NVML_SUCCESS);
        assert_eq!(mhz, 2619);
        assert_eq!(
            unsafe { clock(h, 4, &mut mhz) },
            NVML_ERROR_INVALID_ARGUMENT
        );
        let mut bar1 = nvmlBAR1Memory_t::default();
        assert_eq!(
            unsafe {
                lib.sym::<DevPtr<nvmlBAR1Memory_t>>("nvmlDeviceGetBAR1MemoryInfo")(h, &mut bar1)
            },
            NVML_SUCCESS
        );
        assert_eq!(bar1.bar1Total, bar1.bar1Free + bar1.bar1Used);
        let mut t = nvmlTemperature_t {
            version: nvmlTemperature_v1,
            ..Default::default()
        };
        let temp_v = lib.sym::<DevPtr<nvmlTemperature_t>>("nvmlDeviceGetTemperatureV");
        assert_eq!(unsafe { temp_v(h, &mut t) }, NVML_SUCCESS);
        assert!(t.temperature >= 32, "{t:?}");
        t.version = 0;
        assert_eq!(
            unsafe { temp_v(h, &mut t) },
            NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        );
        let mut cc = [0u64; 2];
        assert_eq!(
            unsafe {
                lib.sym::<DevPtr<[u64; 2]>>("nvmlDeviceGetConfComputeMemSizeInfo")(h, &mut cc)
            },
            NVML_ERROR_NOT_SUPPORTED
        );
        type Ver = unsafe extern "C" fn(*mut c_int) -> nvmlReturn_t;
        let mut v: c_int = 0;
        assert_eq!(
            unsafe { lib.sym::<Ver>("nvmlSystemGetCudaDriverVersion")(&mut v) },
            NVML_SUCCESS
        );
        assert_eq!(v, gpuslice_sim_state::CUDA_DRIVER_VERSION);
    });
}

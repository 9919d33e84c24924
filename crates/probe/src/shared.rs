//! `gpuslice-probe share-agent SOCKET`: a process that holds device memory on command, so that
//! tests can share memory between processes (and tenants) step by step and check the charge
//! in between. It listens on the Unix socket SOCKET; each connection carries one command line
//! and gets one JSON line back (`r` is the CUresult):
//!
//!   pid                       {"pid":…}
//!   alloc SIZE                cuMemAlloc                      {"r":…,"ptr":…}
//!   free PTR                  cuMemFree                       {"r":…}
//!   ipc-get PTR               cuIpcGetMemHandle               {"r":…,"handle":"<hex>"}
//!   ipc-open HEX              cuIpcOpenMemHandle              {"r":…,"ptr":…}
//!   ipc-close PTR             cuIpcCloseMemHandle             {"r":…}
//!   vmm-create SIZE           cuMemCreate (POSIX fd handles)  {"r":…,"handle":…}
//!   vmm-export HANDLE         cuMemExportToShareableHandle    {"r":…}
//!   fd                        the last exported descriptor, passed with SCM_RIGHTS
//!   vmm-import SOCKET         `fd` from the agent at SOCKET, then cuMemImportFromShareableHandle
//!                                                             {"r":…,"handle":…}
//!   vmm-map HANDLE SIZE       cuMemAddressReserve + cuMemMap  {"r":…,"ptr":…}
//!   vmm-unmap PTR SIZE        cuMemUnmap + cuMemAddressFree   {"r":…}
//!   vmm-release HANDLE        cuMemRelease                    {"r":…}
//!   info                      cuMemGetInfo                    {"r":…,"free":…,"total":…}
//!   exit                      {"r":0}, then exits

use gpuslice_cuda_abi::driver::*;
use std::ffi::{CStr, c_int, c_uint, c_void};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

fn sym<T: Copy>(h: *mut c_void, name: &CStr) -> T {
    let p = unsafe { libc::dlsym(h, name.as_ptr()) };
    if p.is_null() {
        super::die(format!("no {name:?}"));
    }
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: T is the function pointer type of `name`, as declared in cuda.h.
    unsafe { std::mem::transmute_copy(&p) }
}

macro_rules! driver {
    ($($f:ident: $name:literal => fn($($a:ty),*);)*) => {
        #[derive(Clone, Copy)]
        struct Cu { $($f: unsafe extern "C" fn($($a),*) -> CUresult,)* }
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
    set_current: "cuCtxSetCurrent" => fn(CUcontext);
    alloc: "cuMemAlloc_v2" => fn(*mut CUdeviceptr, usize);
    free: "cuMemFree_v2" => fn(CUdeviceptr);
    ipc_get: "cuIpcGetMemHandle" => fn(*mut CUipcMemHandle, CUdeviceptr);
    ipc_open: "cuIpcOpenMemHandle_v2" => fn(*mut CUdeviceptr, CUipcMemHandle, c_uint);
    ipc_close: "cuIpcCloseMemHandle" => fn(CUdeviceptr);
    create: "cuMemCreate" => fn(*mut CUmemGenericAllocationHandle, usize, *const CUmemAllocationProp, u64);
    release: "cuMemRelease" => fn(CUmemGenericAllocationHandle);
    export: "cuMemExportToShareableHandle" => fn(*mut c_void, CUmemGenericAllocationHandle, c_int, u64);
    import: "cuMemImportFromShareableHandle" => fn(*mut CUmemGenericAllocationHandle, *mut c_void, c_int);
    reserve: "cuMemAddressReserve" => fn(*mut CUdeviceptr, usize, usize, CUdeviceptr, u64);
    address_free: "cuMemAddressFree" => fn(CUdeviceptr, usize);
    map: "cuMemMap" => fn(CUdeviceptr, usize, usize, CUmemGenericAllocationHandle, u64);
    unmap: "cuMemUnmap" => fn(CUdeviceptr, usize);
    get_info: "cuMemGetInfo_v2" => fn(*mut usize, *mut usize);
}

fn send_fd(s: &UnixStream, fd: RawFd, line: &[u8]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: line.as_ptr() as *mut c_void,
        iov_len: line.len(),
    };
    let mut buf = [0u8; 64];
    // SAFETY: plain C structures filled in as cmsg(3) describes, over buffers that outlive
    // the call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<c_int>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as usize;
        *(libc::CMSG_DATA(c) as *mut c_int) = fd;
        if libc::sendmsg(s.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fd(s: &UnixStream) -> Option<RawFd> {
    let mut data = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut buf = [0u8; 64];
    // SAFETY: as in `send_fd`; the descriptor is read only if the kernel put one there.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = buf.len();
        if libc::recvmsg(s.as_raw_fd(), &mut msg, 0) <= 0 {
            return None;
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        Some(*(libc::CMSG_DATA(c) as *const c_int))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<CUipcMemHandle> {
    let mut h = CUipcMemHandle { reserved: [0; 64] };
    if s.len() != 128 {
        return None;
    }
    for (i, b) in h.reserved.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

pub fn main(args: &[String]) {
    let path = args
        .first()
        .unwrap_or_else(|| super::die("share-agent SOCKET".into()));
    let lib = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
    if lib.is_null() {
        super::die("cannot dlopen libcuda.so.1".into());
    }
    let cu = Cu::load(lib);
    let (mut dev, mut ctx) = (0, std::ptr::null_mut());
    unsafe {
        super::check((cu.init)(0), "cuInit");
        super::check((cu.device_get)(&mut dev, 0), "cuDeviceGet");
        super::check((cu.retain)(&mut ctx, dev), "cuDevicePrimaryCtxRetain");
        super::check((cu.set_current)(ctx), "cuCtxSetCurrent");
    }
    let _ = std::fs::remove_file(path);
    // Bound under a temporary name and renamed: the socket appears only once it answers.
    let tmp = format!("{path}.tmp");
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).unwrap_or_else(|e| super::die(format!("{path}: {e}")));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| super::die(format!("{path}: {e}")));
    let mut last_fd: RawFd = -1;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| -> u64 { w.get(i).and_then(|x| x.parse().ok()).unwrap_or(0) };
        let reply = unsafe {
            match w.first().copied().unwrap_or("") {
                "pid" => format!("{{\"pid\":{}}}", std::process::id()),
                "alloc" => {
                    let mut p = 0;
                    let r = (cu.alloc)(&mut p, n(1) as usize);
                    format!("{{\"r\":{r},\"ptr\":{p}}}")
                }
                "free" => format!("{{\"r\":{}}}", (cu.free)(n(1))),
                "ipc-get" => {
                    let mut h = CUipcMemHandle { reserved: [0; 64] };
                    let r = (cu.ipc_get)(&mut h, n(1));
                    format!("{{\"r\":{r},\"handle\":\"{}\"}}", hex(&h.reserved))
                }
                "ipc-open" => match w.get(1).and_then(|s| unhex(s)) {
                    Some(h) => {
                        let mut p = 0;
                        let r = (cu.ipc_open)(&mut p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
                        format!("{{\"r\":{r},\"ptr\":{p}}}")
                    }
                    None => "{\"error\":\"bad handle\"}".into(),
                },
                "ipc-close" => format!("{{\"r\":{}}}", (cu.ipc_close)(n(1))),
                "vmm-create" => {
                    let mut prop = CUmemAllocationProp {
                        type_: CU_MEM_ALLOCATION_TYPE_PINNED,
                        requestedHandleTypes: CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                        ..Default::default()
                    };
                    prop.location.type_ = CU_MEM_LOCATION_TYPE_DEVICE;
                    prop.location.id = dev;
                    let mut h = 0;
                    let r = (cu.create)(&mut h, n(1) as usize, &prop, 0);
                    format!("{{\"r\":{r},\"handle\":{h}}}")
                }
                "vmm-export" => {
                    let mut fd: c_int = -1;
                    let r = (cu.export)(
                        (&mut fd as *mut c_int).cast(),
                        n(1),
                        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                        0,
                    );
                    if r == CUDA_SUCCESS {
                        if last_fd >= 0 {
                            libc::close(last_fd);
                        }
                        last_fd = fd;
                    }
                    format!("{{\"r\":{r}}}")
                }
                "fd" => {
                    let _ = send_fd(&conn, last_fd, b"{\"r\":0}\n");
                    continue;
                }
                "vmm-import" => {
                    let got = w.get(1).and_then(|p| {
                        let mut s = UnixStream::connect(p).ok()?;
                        s.write_all(b"fd\n").ok()?;
                        recv_fd(&s)
                    });
                    match got {
                        Some(fd) => {
                            let mut h = 0;
                            let r = (cu.import)(
                                &mut h,
                                fd as usize as *mut c_void,
                                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                            );
                            libc::close(fd);
                            format!("{{\"r\":{r},\"handle\":{h}}}")
                        }
                        None => "{\"error\":\"no descriptor\"}".into(),
                    }
                }
                "vmm-map" => {
                    let (h, size) = (n(1), n(2) as usize);
                    let mut va = 0;
                    let mut r = (cu.reserve)(&mut va, size, 0, 0, 0);
                    if r == CUDA_SUCCESS {
                        r = (cu.map)(va, size, 0, h, 0);
                    }
                    format!("{{\"r\":{r},\"ptr\":{va}}}")
                }
                "vmm-unmap" => {
                    let (p, size) = (n(1), n(2) as usize);
                    let mut r = (cu.unmap)(p, size);
                    if r == CUDA_SUCCESS {
                        r = (cu.address_free)(p, size);
                    }
                    format!("{{\"r\":{r}}}")
                }
                "vmm-release" => format!("{{\"r\":{}}}", (cu.release)(n(1))),
                "info" => {
                    let (mut f, mut t) = (0, 0);
                    let r = (cu.get_info)(&mut f, &mut t);
                    format!("{{\"r\":{r},\"free\":{f},\"total\":{t}}}")
                }
                "exit" => {
                    let _ = conn.write_all(b"{\"r\":0}\n");
                    let _ = std::fs::remove_file(path);
                    std::process::exit(0);
                }
                other => format!("{{\"error\":\"unknown command {other:?}\"}}"),
            }
        };
        let _ = conn.write_all(format!("{reply}\n").as_bytes());
    }
}

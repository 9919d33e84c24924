//! Memory that crosses processes: IPC memory handles (`cuIpcGetMemHandle`,
//! `cuIpcOpenMemHandle`, `cuIpcCloseMemHandle`, what `torch.multiprocessing` uses) and VMM
//! shareable handles of the POSIX file-descriptor type (`cuMemExportToShareableHandle`,
//! `cuMemImportFromShareableHandle`, what NCCL and expandable segments use).
//!
//! The device keeps such memory until every process holding it has let go, so the tenant is
//! charged for as long as any of its processes holds it, not for as long as the allocating one
//! lives. An export turns the exporter's charge into a shared charge in the ledger (keyed by
//! what names the memory across processes: a hash of the IPC handle, the identity of the
//! shareable handle's file); an importer of the same tenant joins it, charged nothing more; an
//! importer that finds no such charge (another tenant's memory, or a name the ledger cannot
//! match) is charged the whole size against its own cap, refused with out-of-memory if it does
//! not fit. So memory is charged exactly once per tenant holding it; across tenants each
//! holding tenant pays (the allocating one only while one of its processes still holds it).
//! Every ledger of a nested chain is treated alike.
//!
//! A shareable handle whose file names no size (a real driver's descriptor) cannot be sized
//! before it is imported, and there is no query for an imported handle's size: such imports,
//! and handle types other than POSIX descriptors, are refused (fail closed).

use gpuslice_cuda_abi::driver::*;
use gpuslice_ledger::{Dev, Share};
use std::ffi::{c_int, c_uint, c_void};

use crate::book::{Key, Rec, current_ctx};
use crate::real::call_real;
use crate::tenant::{Tenant, guard, tenant_or_return};

/// How one ledger of the chain carries the memory: a shared charge, or (table full) the
/// process's own.
#[derive(Clone, Copy, Debug)]
enum Part {
    Entry(Share),
    Own(Dev, u64),
}

/// What this process holds of one piece of shared memory, one part per ledger of its chain.
#[derive(Debug)]
pub struct Hold {
    parts: Vec<Part>,
}

impl Hold {
    /// Lets go: a shared charge leaves with its last holder, an own charge at once.
    pub fn release(self, t: &Tenant) {
        for ((l, slot), part) in t.ledgers().into_iter().zip(self.parts) {
            match part {
                Part::Entry(sh) => l.share_drop(slot, sh),
                Part::Own(d, n) => l.release(slot, d, n),
            }
        }
    }
}

/// A record's shared memory: the hold, and for IPC mappings the handle's key and opens.
#[derive(Debug)]
pub struct Shared {
    pub hold: Hold,
    ipc_key: Option<[u64; 2]>,
    opens: u32,
}

/// Makes `bytes` on `dev`, charged to this process, a shared charge keyed `key`.
fn export(t: &Tenant, dev: Dev, key: [u64; 2], bytes: u64) -> Hold {
    let parts = t
        .chain(dev)
        .into_iter()
        .map(|(l, slot, d)| match l.share_export(slot, d, key, bytes) {
            Some(sh) => Part::Entry(sh),
            None => Part::Own(d, bytes),
        })
        .collect();
    Hold { parts }
}

/// Joins the tenant's shared charge for `key` in every ledger that has one; the size it was
/// charged at, if any ledger had it.
fn join(t: &Tenant, key: [u64; 2]) -> (Vec<Option<Share>>, Option<u64>) {
    let mut size = None;
    let joins = t
        .ledgers()
        .into_iter()
        .map(|(l, slot)| {
            l.share_join(slot, key).map(|(sh, _, n)| {
                size.get_or_insert(n);
                sh
            })
        })
        .collect();
    (joins, size)
}

fn drop_joins(t: &Tenant, joins: &[Option<Share>]) {
    for ((l, slot), j) in t.ledgers().into_iter().zip(joins) {
        if let Some(sh) = j {
            l.share_drop(slot, *sh);
        }
    }
}

/// Charges `bytes` on `dev` in every ledger that had nothing to join, within its cap. On a
/// refusal everything is undone, the joins included.
fn complete(
    t: &Tenant,
    dev: Dev,
    key: [u64; 2],
    joins: Vec<Option<Share>>,
    bytes: u64,
) -> Result<Hold, c_int> {
    let mut parts: Vec<Part> = Vec::new();
    for (i, ((l, slot, d), j)) in t.chain(dev).into_iter().zip(&joins).enumerate() {
        let part = match j {
            Some(sh) => Part::Entry(*sh),
            None => match l.share_import(slot, d, key, bytes) {
                Ok(Some(sh)) => Part::Entry(sh),
                Ok(None) => Part::Own(d, bytes),
                Err(_) => {
                    // The ledgers before this one as parts, the ones after as joins.
                    Hold { parts }.release(t);
                    for ((l, slot), j) in t.ledgers().into_iter().zip(&joins).skip(i + 1) {
                        if let Some(sh) = j {
                            l.share_drop(slot, *sh);
                        }
                    }
                    return Err(CUDA_ERROR_OUT_OF_MEMORY);
                }
            },
        };
        parts.push(part);
    }
    Ok(Hold { parts })
}

fn hash_bytes(b: &[u8], seed: u64) -> u64 {
    // FNV-1a with a seed: two independent 64-bit hashes make a 128-bit key.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn ipc_key(h: &CUipcMemHandle) -> [u64; 2] {
    [
        hash_bytes(&h.reserved, 0x4950_4331),
        hash_bytes(&h.reserved, 0x9e37_79b9_7f4a_7c15),
    ]
}

/// The key and size of a shareable handle's file: only for a regular file with a size (the
/// simulator's memfd); a device file names nothing that tells two allocations apart.
fn fd_key(fd: c_int) -> Option<([u64; 2], u64)> {
    // SAFETY: `st` is a valid out-pointer; a bad descriptor makes fstat fail.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size <= 0 {
        return None;
    }
    Some(([st.st_dev ^ (1 << 63), st.st_ino], st.st_size as u64))
}

// ---- IPC memory handles ----------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuIpcGetMemHandle(h: *mut CUipcMemHandle, dptr: CUdeviceptr) -> CUresult {
    guard(|| {
        let r = call_real!(CUDA, cuIpcGetMemHandle: unsafe extern "C" fn(*mut CUipcMemHandle, CUdeviceptr) -> CUresult, h, dptr);
        if r != CUDA_SUCCESS || h.is_null() {
            return r;
        }
        let t = tenant_or_return!();
        // SAFETY: the driver succeeded, so it wrote the handle.
        let key = ipc_key(unsafe { &*h });
        let k = Key::Ptr(dptr);
        let mut recs = t.book.recs.lock().unwrap();
        let mut shares = t.book.shares.lock().unwrap();
        if let (Some(rec), false) = (recs.get_mut(&k), shares.contains_key(&k)) {
            let hold = export(t, rec.dev, key, rec.bytes);
            rec.bytes = 0;
            shares.insert(
                k,
                Shared {
                    hold,
                    ipc_key: None,
                    opens: 0,
                },
            );
        }
        r
    })
}

type IpcOpenFn = unsafe extern "C" fn(*mut CUdeviceptr, CUipcMemHandle, c_uint) -> CUresult;

fn ipc_open(
    pdptr: *mut CUdeviceptr,
    h: CUipcMemHandle,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if pdptr.is_null() {
        return call();
    }
    let t = tenant_or_return!();
    let (_, dev) = match t.current_dev() {
        Ok(d) => d,
        Err(e) => return e,
    };
    let key = ipc_key(&h);
    let mut recs = t.book.recs.lock().unwrap();
    let mut shares = t.book.shares.lock().unwrap();
    // Opened again in this process: the driver hands out the same mapping, one more close.
    if let Some(s) = shares
        .values_mut()
        .find(|s| s.ipc_key == Some(key) && s.opens > 0)
    {
        let r = call();
        if r == CUDA_SUCCESS {
            s.opens += 1;
        }
        return r;
    }
    let (joins, joined_size) = join(t, key);
    let r = call();
    if r != CUDA_SUCCESS {
        drop_joins(t, &joins);
        return r;
    }
    // SAFETY: the driver succeeded, so it wrote the pointer.
    let p = unsafe { *pdptr };
    let size = match joined_size {
        Some(n) if joins.iter().all(Option::is_some) => n,
        _ => {
            let (mut base, mut size) = (0 as CUdeviceptr, 0usize);
            let q = call_real!(CUDA, cuMemGetAddressRange_v2: unsafe extern "C" fn(*mut CUdeviceptr, *mut usize, CUdeviceptr) -> CUresult, &mut base, &mut size, p);
            if q != CUDA_SUCCESS || size == 0 {
                // Cannot be sized: not kept uncharged.
                drop_joins(t, &joins);
                close_real(p);
                return CUDA_ERROR_OUT_OF_MEMORY;
            }
            size as u64
        }
    };
    let hold = match complete(t, dev, key, joins, size) {
        Ok(h) => h,
        Err(e) => {
            close_real(p);
            return e;
        }
    };
    let k = Key::Ptr(p);
    if let Some(o) = recs.insert(
        k,
        Rec {
            dev,
            bytes: 0,
            ctx: current_ctx(),
        },
    ) {
        // The driver reused the address: what we recorded under it is gone.
        t.release(o.dev, o.bytes);
        if let Some(s) = shares.remove(&k) {
            s.hold.release(t);
        }
    }
    shares.insert(
        k,
        Shared {
            hold,
            ipc_key: Some(key),
            opens: 1,
        },
    );
    CUDA_SUCCESS
}

fn close_real(p: CUdeviceptr) {
    call_real!(CUDA, cuIpcCloseMemHandle: unsafe extern "C" fn(CUdeviceptr) -> CUresult, p);
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuIpcOpenMemHandle_v2(
    pdptr: *mut CUdeviceptr,
    h: CUipcMemHandle,
    flags: c_uint,
) -> CUresult {
    guard(|| {
        ipc_open(
            pdptr,
            h,
            || call_real!(CUDA, cuIpcOpenMemHandle_v2: IpcOpenFn, pdptr, h, flags),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuIpcOpenMemHandle(
    pdptr: *mut CUdeviceptr,
    h: CUipcMemHandle,
    flags: c_uint,
) -> CUresult {
    guard(|| {
        ipc_open(
            pdptr,
            h,
            || call_real!(CUDA, cuIpcOpenMemHandle: IpcOpenFn, pdptr, h, flags),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuIpcCloseMemHandle(p: CUdeviceptr) -> CUresult {
    guard(|| {
        let Ok(t) = crate::tenant::tenant() else {
            return call_real!(CUDA, cuIpcCloseMemHandle: unsafe extern "C" fn(CUdeviceptr) -> CUresult, p);
        };
        let k = Key::Ptr(p);
        let mut recs = t.book.recs.lock().unwrap();
        let r =
            call_real!(CUDA, cuIpcCloseMemHandle: unsafe extern "C" fn(CUdeviceptr) -> CUresult, p);
        if r != CUDA_SUCCESS {
            return r;
        }
        let mut shares = t.book.shares.lock().unwrap();
        let last = match shares.get_mut(&k) {
            Some(s) if s.ipc_key.is_some() => {
                s.opens = s.opens.saturating_sub(1);
                s.opens == 0
            }
            _ => false,
        };
        if last {
            if let Some(s) = shares.remove(&k) {
                s.hold.release(t);
            }
            if let Some(o) = recs.remove(&k) {
                t.release(o.dev, o.bytes);
            }
        }
        r
    })
}

// ---- VMM shareable handles --------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemExportToShareableHandle(
    out: *mut c_void,
    handle: CUmemGenericAllocationHandle,
    ty: c_int,
    flags: u64,
) -> CUresult {
    guard(|| {
        let real = || call_real!(CUDA, cuMemExportToShareableHandle: unsafe extern "C" fn(*mut c_void, CUmemGenericAllocationHandle, c_int, u64) -> CUresult, out, handle, ty, flags);
        let Ok(t) = crate::tenant::tenant() else {
            return real();
        };
        let mut vmm = t.book.vmm.lock().unwrap();
        let r = real();
        if r != CUDA_SUCCESS || ty != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR || out.is_null() {
            return r;
        }
        // SAFETY: the driver succeeded, so it wrote a descriptor there.
        let fd = unsafe { *(out as *const c_int) };
        let Some((key, _)) = fd_key(fd) else {
            // No importer can match it either: each is charged in full.
            return r;
        };
        if vmm.shares.contains_key(&handle) {
            return r;
        }
        if let Some(p) = vmm.phys.get_mut(&handle) {
            let hold = export(t, p.dev, key, p.bytes);
            p.bytes = 0;
            vmm.shares.insert(handle, hold);
        }
        r
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemImportFromShareableHandle(
    out: *mut CUmemGenericAllocationHandle,
    os: *mut c_void,
    ty: c_int,
) -> CUresult {
    guard(|| {
        let t = tenant_or_return!();
        if out.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        if ty != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
            return CUDA_ERROR_NOT_SUPPORTED;
        }
        let Some((key, size)) = fd_key(os as usize as c_int) else {
            return CUDA_ERROR_NOT_SUPPORTED;
        };
        let mut vmm = t.book.vmm.lock().unwrap();
        let (joins, joined_size) = join(t, key);
        let r = call_real!(CUDA, cuMemImportFromShareableHandle: unsafe extern "C" fn(*mut CUmemGenericAllocationHandle, *mut c_void, c_int) -> CUresult, out, os, ty);
        if r != CUDA_SUCCESS {
            drop_joins(t, &joins);
            return r;
        }
        // SAFETY: the driver succeeded, so it wrote the handle.
        let h = unsafe { *out };
        let release = || {
            call_real!(CUDA, cuMemRelease: unsafe extern "C" fn(CUmemGenericAllocationHandle) -> CUresult, h);
        };
        let mut prop = CUmemAllocationProp::default();
        let q = call_real!(CUDA, cuMemGetAllocationPropertiesFromHandle: unsafe extern "C" fn(*mut CUmemAllocationProp, CUmemGenericAllocationHandle) -> CUresult, &mut prop, h);
        let dev = match (q, t.dev(prop.location.id)) {
            (CUDA_SUCCESS, Ok(d)) => d,
            _ => {
                drop_joins(t, &joins);
                release();
                return CUDA_ERROR_NOT_SUPPORTED;
            }
        };
        let hold = match complete(t, dev, key, joins, joined_size.unwrap_or(size)) {
            Ok(hold) => hold,
            Err(e) => {
                release();
                return e;
            }
        };
        vmm.created(t, h, dev, 0);
        vmm.shares.insert(h, hold);
        CUDA_SUCCESS
    })
}

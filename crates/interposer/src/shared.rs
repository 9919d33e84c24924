//! Memory that crosses processes: IPC memory handles (`cuIpcGetMemHandle`,
//! `cuIpcOpenMemHandle`, `cuIpcCloseMemHandle`, what `torch.multiprocessing` uses) and VMM
//! shareable handles of the POSIX file-descriptor type (`cuMemImportFromShareableHandle`, what
//! NCCL and PyTorch's expandable segments use across processes).
//!
//! The device keeps such memory until every process holding it has let go, so the tenant is
//! charged for as long as any of its processes holds it, not for as long as the allocating one
//! lives.
//!
//! IPC: an export turns the exporter's charge into a shared charge in the ledger, keyed by a
//! hash of the IPC handle (the same bytes in every process); an importer of the same tenant
//! joins it, charged nothing more; an importer that finds no such charge (another tenant's
//! memory) is charged the whole size against its own cap, refused with out-of-memory if it
//! does not fit. Every ledger of a nested chain is treated alike.
//!
//! Shareable descriptors: a driver's descriptor names neither the allocation nor its size
//! (on a real driver it is an open file of the driver's device node, alike for every export),
//! so no importer can tell whose memory it is. Each importing process is charged the whole
//! allocation, like one it created, for as long as it holds the handle or a mapping of it;
//! the exporter keeps its own charge the same way. Within one tenant that counts memory once
//! per holding process: it errs towards refusing, never towards memory no one pays for. The
//! size is measured before the import is handed out, as the largest mapping the driver accepts
//! (`offset + size` must lie within the allocation), since no query returns it. Other handle
//! types are refused (fail closed).

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
        // Held across the calls: a handle released by another thread meanwhile and reused by
        // the driver for this one must be settled first.
        let mut vmm = t.book.vmm.lock().unwrap();
        let r = call_real!(CUDA, cuMemImportFromShareableHandle: unsafe extern "C" fn(*mut CUmemGenericAllocationHandle, *mut c_void, c_int) -> CUresult, out, os, ty);
        if r != CUDA_SUCCESS {
            return r;
        }
        // SAFETY: the driver succeeded, so it wrote the handle.
        let h = unsafe { *out };
        let refuse = |e: CUresult| {
            call_real!(CUDA, cuMemRelease: unsafe extern "C" fn(CUmemGenericAllocationHandle) -> CUresult, h);
            e
        };
        let mut prop = CUmemAllocationProp::default();
        let q = call_real!(CUDA, cuMemGetAllocationPropertiesFromHandle: unsafe extern "C" fn(*mut CUmemAllocationProp, CUmemGenericAllocationHandle) -> CUresult, &mut prop, h);
        if q != CUDA_SUCCESS || prop.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
            return refuse(CUDA_ERROR_NOT_SUPPORTED);
        }
        let dev = match t.dev(prop.location.id) {
            Ok(d) => d,
            Err(e) => return refuse(e),
        };
        let bytes = match allocation_size(h, &prop) {
            Ok(n) => n,
            Err(e) => return refuse(e),
        };
        if let Err(e) = t.reserve(dev, bytes) {
            return refuse(e);
        }
        vmm.created(t, h, dev, bytes);
        CUDA_SUCCESS
    })
}

/// The size of physical allocation `h`: the largest mapping of it the driver accepts, found by
/// bisection in a scratch reservation as large as the device (about 16 map/unmap pairs on an
/// 80 GiB device, once per import).
fn allocation_size(
    h: CUmemGenericAllocationHandle,
    prop: &CUmemAllocationProp,
) -> Result<u64, CUresult> {
    let ok = |r: CUresult| if r == CUDA_SUCCESS { Ok(()) } else { Err(r) };
    let mut gran: usize = 0;
    ok(
        call_real!(CUDA, cuMemGetAllocationGranularity: unsafe extern "C" fn(*mut usize, *const CUmemAllocationProp, c_int) -> CUresult, &mut gran, prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
    )?;
    let mut total: usize = 0;
    ok(
        call_real!(CUDA, cuDeviceTotalMem_v2: unsafe extern "C" fn(*mut usize, CUdevice) -> CUresult, &mut total, prop.location.id),
    )?;
    if gran == 0 || total < gran {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let units = total / gran;
    let mut va: CUdeviceptr = 0;
    ok(
        call_real!(CUDA, cuMemAddressReserve: unsafe extern "C" fn(*mut CUdeviceptr, usize, usize, CUdeviceptr, u64) -> CUresult, &mut va, units * gran, 0, 0, 0),
    )?;
    // Whether a mapping of `n` units is accepted; any answer but "too large" ends the search.
    let fits = |n: usize| -> Result<bool, CUresult> {
        match call_real!(CUDA, cuMemMap: unsafe extern "C" fn(CUdeviceptr, usize, usize, CUmemGenericAllocationHandle, u64) -> CUresult, va, n * gran, 0, h, 0)
        {
            CUDA_SUCCESS => {
                ok(
                    call_real!(CUDA, cuMemUnmap: unsafe extern "C" fn(CUdeviceptr, usize) -> CUresult, va, n * gran),
                )?;
                Ok(true)
            }
            CUDA_ERROR_INVALID_VALUE => Ok(false),
            e => Err(e),
        }
    };
    let found = (|| {
        if !fits(1)? {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        if fits(units)? {
            return Ok(units);
        }
        // fits(lo) and !fits(hi).
        let (mut lo, mut hi) = (1, units);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    })();
    call_real!(CUDA, cuMemAddressFree: unsafe extern "C" fn(CUdeviceptr, usize) -> CUresult, va, units * gran);
    found.map(|n| (n * gran) as u64)
}

// ---- memory pools shared between processes --------------------------------------------------

/// Refused: pointers imported from another process's pool (`cuMemPoolImportPointer`) would
/// hold that pool's memory alive past its exporter with nothing in this tenant's ledger, and the
/// pool's reservation is not this process's to size. Without an imported pool there is no
/// imported pointer, so refusing the pool is enough (fail closed). Pools of this process,
/// `cudaMallocAsync` included, are unaffected.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolImportFromShareableHandle(
    _pool: *mut CUmemoryPool,
    _handle: *mut c_void,
    _ty: c_int,
    _flags: u64,
) -> CUresult {
    guard(|| {
        eprintln!(
            "gpuslice: refusing cuMemPoolImportFromShareableHandle: memory of another process's pool cannot be charged"
        );
        CUDA_ERROR_NOT_SUPPORTED
    })
}

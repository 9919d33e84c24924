//! Memory shared between processes: IPC memory handles (`cuIpc*MemHandle`) and VMM shareable
//! handles of the POSIX file-descriptor type (`cuMemExportToShareableHandle`,
//! `cuMemImportFromShareableHandle`). The device keeps the memory until every holder has let go
//! (`sim-state`'s shared table); here are the handles, the mappings and their error codes.
//!
//! IPC memory is shared in accounting only: an importer's mapping is its own zeroed host memory.
//! A shareable handle is the physical allocation's memfd, so importers map the same bytes.

use std::ffi::{c_int, c_uint, c_void};

use gpuslice_cuda_abi::driver::*;
use gpuslice_sim_state::{ShareError, SharedHandle};

use crate::*;

const IPC_MAGIC: &[u8; 8] = b"GSLIPC01";

fn encode(h: SharedHandle) -> CUipcMemHandle {
    let mut b = [0u8; 64];
    b[..8].copy_from_slice(IPC_MAGIC);
    b[8..12].copy_from_slice(&h.index.to_le_bytes());
    b[16..24].copy_from_slice(&h.state.to_le_bytes());
    b[24..32].copy_from_slice(&h.nonce.to_le_bytes());
    CUipcMemHandle { reserved: b }
}

fn decode(h: &CUipcMemHandle) -> Option<SharedHandle> {
    let b = &h.reserved;
    if &b[..8] != IPC_MAGIC {
        return None;
    }
    Some(SharedHandle {
        index: u32::from_le_bytes(b[8..12].try_into().ok()?),
        state: u64::from_le_bytes(b[16..24].try_into().ok()?),
        nonce: u64::from_le_bytes(b[24..32].try_into().ok()?),
    })
}

/// This process holds shared object `index` once more (joined by the caller on the first).
pub(crate) fn hold(r: &mut Reg, index: u32) {
    *r.holds.entry(index).or_default() += 1;
}

/// This process holds shared object `index` once less; the last lets go of it on the device.
pub(crate) fn unhold(r: &mut Reg, index: u32) {
    let Some(n) = r.holds.get_mut(&index) else {
        return;
    };
    *n -= 1;
    if *n == 0 {
        r.holds.remove(&index);
        if let Ok(s) = sim() {
            s.share_release(index);
        }
    }
}

fn share_err(e: ShareError) -> CUresult {
    match e {
        ShareError::Invalid => CUDA_ERROR_INVALID_VALUE,
        ShareError::Full => CUDA_ERROR_OUT_OF_MEMORY,
    }
}

unsafe fn ipc_get(out_h: *mut CUipcMemHandle, dptr: CUdeviceptr) -> R {
    let s = sim()?;
    if out_h.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    r.current()?;
    // Only the base of a cuMemAlloc allocation can be exported.
    let (dev, charge) = match r.allocs.get(&dptr) {
        Some(a) if a.kind == AllocKind::Linear => (a.dev, a.charge),
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    let h = match r.exported.get(&dptr) {
        Some(&h) => h,
        None => {
            let h = s.share_export(dev, charge, 0).map_err(share_err)?;
            r.exported.insert(dptr, h);
            hold(&mut r, h.index);
            h
        }
    };
    unsafe { out(out_h, encode(h)) }
}

unsafe fn ipc_open(pdptr: *mut CUdeviceptr, h: CUipcMemHandle, flags: c_uint) -> R {
    let s = sim()?;
    if pdptr.is_null() || flags & !CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let ctx = r.current()?;
    let sh = decode(&h).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let info = s.share_lookup(sh).map_err(share_err)?;
    if info.creator_pid == std::process::id() {
        // A process cannot open its own handle.
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    // Opened again in this process: the same mapping, one more close to come.
    if let Some((p, n)) = r.ipc_opens.get_mut(&(sh.index, sh.state)) {
        *n += 1;
        let p = *p;
        return unsafe { out(pdptr, p) };
    }
    if !r.holds.contains_key(&sh.index) {
        s.share_open(sh).map_err(share_err)?;
    }
    hold(&mut r, sh.index);
    let Some(p) = map_anon(info.bytes, false) else {
        unhold(&mut r, sh.index);
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    };
    r.allocs.insert(
        p,
        Alloc {
            size: info.bytes,
            map_len: info.bytes,
            dev: info.dev,
            ctx,
            charge: 0,
            kind: AllocKind::Ipc(sh.index),
        },
    );
    r.ipc_opens.insert((sh.index, sh.state), (p, 1));
    unsafe { out(pdptr, p) }
}

/// Ends an IPC mapping (at its last close, or with its context).
pub(crate) fn ipc_unmapped(r: &mut Reg, p: u64) {
    r.ipc_opens.retain(|_, (q, _)| *q != p);
}

unsafe fn ipc_close(p: CUdeviceptr) -> R {
    sim()?;
    let mut r = reg();
    r.current()?;
    let key = r
        .ipc_opens
        .iter()
        .find(|(_, (q, _))| *q == p)
        .map(|(k, _)| *k)
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let n = &mut r.ipc_opens.get_mut(&key).unwrap().1;
    *n -= 1;
    if *n == 0 {
        crate::api_mem::free_alloc(&mut r, p, false)?;
    }
    Ok(())
}

fn fd_identity(fd: c_int) -> Result<(u64, u64), CUresult> {
    // SAFETY: `st` is a valid out-pointer; a bad descriptor is reported by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok((st.st_ino, st.st_size as u64))
}

unsafe fn export_shareable(out_h: *mut c_void, handle: u64, ty: c_int, flags: u64) -> R {
    let s = sim()?;
    if out_h.is_null() || flags != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if ty != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let mut r = reg();
    let p = r
        .phys
        .get(&handle)
        .filter(|p| p.refs > 0)
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if p.handle_types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR == 0 {
        // Not requested at cuMemCreate.
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (fd, dev, size, shared) = (p.fd, p.dev, p.size, p.shared);
    if shared.is_none() {
        let (ino, _) = fd_identity(fd)?;
        let h = s.share_export(dev, size, ino).map_err(share_err)?;
        r.phys.get_mut(&handle).unwrap().shared = Some(h.index);
        hold(&mut r, h.index);
    }
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    unsafe { *(out_h as *mut c_int) = dup };
    Ok(())
}

unsafe fn import_shareable(
    out_h: *mut CUmemGenericAllocationHandle,
    os: *mut c_void,
    ty: c_int,
) -> R {
    let s = sim()?;
    if out_h.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if ty != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let fd = os as usize as c_int;
    let (ino, _) = fd_identity(fd)?;
    let info = s.share_find_ino(ino).map_err(share_err)?;
    let mut r = reg();
    if !r.holds.contains_key(&info.handle.index) {
        s.share_open(info.handle).map_err(share_err)?;
    }
    hold(&mut r, info.handle.index);
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        unhold(&mut r, info.handle.index);
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    let h = r.handle() as u64;
    r.phys.insert(
        h,
        Phys {
            dev: info.dev,
            size: info.bytes,
            fd: dup,
            refs: 1,
            maps: 0,
            handle_types: CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            shared: Some(info.handle.index),
        },
    );
    unsafe { out(out_h, h) }
}

unsafe fn properties(prop: *mut CUmemAllocationProp, handle: u64) -> R {
    sim()?;
    if prop.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let r = reg();
    let p = r.phys.get(&handle).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut v = CUmemAllocationProp {
        type_: CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: p.handle_types,
        ..Default::default()
    };
    v.location.type_ = CU_MEM_LOCATION_TYPE_DEVICE;
    v.location.id = ordinal_of(p.dev);
    unsafe { out(prop, v) }
}

export! { exports_share;

fn cuIpcGetMemHandle(h: *mut CUipcMemHandle, dptr: CUdeviceptr) { ipc_get(h, dptr) }
fn cuIpcOpenMemHandle(p: *mut CUdeviceptr, h: CUipcMemHandle, flags: c_uint) { ipc_open(p, h, flags) }
fn cuIpcOpenMemHandle_v2(p: *mut CUdeviceptr, h: CUipcMemHandle, flags: c_uint) { ipc_open(p, h, flags) }
fn cuIpcCloseMemHandle(p: CUdeviceptr) { ipc_close(p) }
fn cuMemExportToShareableHandle(out_h: *mut c_void, handle: CUmemGenericAllocationHandle, ty: c_int, flags: u64) { export_shareable(out_h, handle, ty, flags) }
fn cuMemImportFromShareableHandle(h: *mut CUmemGenericAllocationHandle, os: *mut c_void, ty: c_int) { import_shareable(h, os, ty) }
fn cuMemGetAllocationPropertiesFromHandle(prop: *mut CUmemAllocationProp, handle: CUmemGenericAllocationHandle) { properties(prop, handle) }

}

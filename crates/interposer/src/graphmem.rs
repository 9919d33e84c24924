//! Graph memory: what memory-allocation nodes take is charged as what the driver keeps reserved
//! for graphs on the device (`CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT`), like a pool. The driver
//! reserves it when a graph is launched and keeps it cached after the graph ends or its
//! executable is destroyed, until `cuDeviceGraphMemTrim`; charging the reservation follows that
//! lifetime exactly, whatever instantiation, update or child-graph path built the graph.
//!
//! Launches of a graph with allocation nodes reserve their possible growth before the driver
//! runs them: what is in use by graphs now plus what this graph allocates, less what is reserved.

use gpuslice_cuda_abi::driver::*;
use gpuslice_ledger::Dev;
use std::ffi::{c_int, c_void};

use crate::book::GraphCharge;
use crate::real::call_real;
use crate::tenant::{Tenant, guard, tenant_or_return};

const CU_GRAPH_NODE_TYPE_MEM_ALLOC: i32 = 10;
const CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT: i32 = 0;
const CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: i32 = 2;

fn attr(ordinal: CUdevice, which: i32) -> Option<u64> {
    let mut v: u64 = 0;
    let r = call_real!(CUDA, cuDeviceGetGraphMemAttribute: unsafe extern "C" fn(CUdevice, i32, *mut c_void) -> CUresult,
        ordinal, which, (&mut v as *mut u64).cast());
    (r == CUDA_SUCCESS).then_some(v)
}

/// Bytes the memory-allocation nodes of `graph` take per device ordinal. Captured allocations
/// appear as such nodes too. A child graph cannot hold allocation nodes (the driver refuses to
/// embed one), so the top level is the whole answer.
fn alloc_bytes(graph: CUgraph) -> Result<Vec<(CUdevice, u64)>, CUresult> {
    type GetNodes = unsafe extern "C" fn(CUgraph, *mut CUgraphNode, *mut usize) -> CUresult;
    let mut n: usize = 0;
    let r = call_real!(CUDA, cuGraphGetNodes: GetNodes, graph, std::ptr::null_mut(), &mut n);
    if r != CUDA_SUCCESS {
        return Err(r);
    }
    let mut nodes: Vec<CUgraphNode> = vec![std::ptr::null_mut(); n];
    let r = call_real!(CUDA, cuGraphGetNodes: GetNodes, graph, nodes.as_mut_ptr(), &mut n);
    if r != CUDA_SUCCESS {
        return Err(r);
    }
    let mut out: Vec<(CUdevice, u64)> = Vec::new();
    for &node in &nodes[..n.min(nodes.len())] {
        let mut ty: i32 = -1;
        call_real!(CUDA, cuGraphNodeGetType: unsafe extern "C" fn(CUgraphNode, *mut i32) -> CUresult, node, &mut ty);
        if ty != CU_GRAPH_NODE_TYPE_MEM_ALLOC {
            continue;
        }
        // SAFETY: plain C data; all-zero is a valid value the driver overwrites.
        let mut p: CUDA_MEM_ALLOC_NODE_PARAMS = unsafe { std::mem::zeroed() };
        let r = call_real!(CUDA, cuGraphMemAllocNodeGetParams: unsafe extern "C" fn(CUgraphNode, *mut CUDA_MEM_ALLOC_NODE_PARAMS) -> CUresult, node, &mut p);
        if r != CUDA_SUCCESS {
            return Err(r);
        }
        let dev = p.poolProps.location.id;
        match out.iter_mut().find(|(d, _)| *d == dev) {
            Some(e) => e.1 = e.1.saturating_add(p.bytesize as u64),
            None => out.push((dev, p.bytesize as u64)),
        }
    }
    Ok(out)
}

/// Brings this process's graph-memory charge on each device in line with the reservation.
/// Returns whether anything was given back. Skipped while a launch holds the charges: that
/// launch settles them itself.
pub fn reconcile(t: &Tenant) -> bool {
    let Ok(mut g) = t.book.graph.try_lock() else {
        return false;
    };
    let mut freed = false;
    for (&d, gc) in g.iter_mut() {
        freed |= reconcile_one(t, Dev(d), gc);
    }
    freed
}

/// After a launch for which `held` bytes were reserved ahead: the charge becomes the
/// reservation now, the unused part of `held` is given back, and growth beyond it is charged
/// (the driver has it already).
fn settle(t: &Tenant, dev: Dev, gc: &mut GraphCharge, held: u64) {
    let now = attr(gc.ordinal, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT).unwrap_or(gc.charged);
    let target = gc.charged.saturating_add(held);
    if now > target {
        t.charge_unchecked(dev, now - target);
    } else {
        t.release(dev, target - now);
    }
    gc.charged = now;
}

fn reconcile_one(t: &Tenant, dev: Dev, gc: &mut GraphCharge) -> bool {
    let Some(now) = attr(gc.ordinal, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT) else {
        return false;
    };
    if now > gc.charged {
        // Reserved by the driver already: the next reservation sees it.
        t.charge_unchecked(dev, now - gc.charged);
    } else if now < gc.charged {
        t.release(dev, gc.charged - now);
    }
    let freed = now < gc.charged;
    gc.charged = now;
    freed
}

/// Records which executables allocate graph memory, and how much, once the driver made them.
unsafe fn instantiate(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if exec.is_null() {
        return call();
    }
    let t = tenant_or_return!();
    let need = match alloc_bytes(graph) {
        Ok(b) => b,
        // A driver that cannot list nodes cannot instantiate the graph either.
        Err(e) => return e,
    };
    let r = call();
    if r == CUDA_SUCCESS {
        // SAFETY: the driver succeeded, so it wrote the executable's handle.
        let e = unsafe { *exec } as usize;
        set_need(t, e, need);
    }
    r
}

fn set_need(t: &Tenant, exec: usize, need: Vec<(CUdevice, u64)>) {
    let mut execs = t.book.execs.lock().unwrap();
    execs.remove(&exec);
    let mut with_dev = Vec::new();
    for (ordinal, bytes) in need {
        if bytes == 0 {
            continue;
        }
        if let Ok(d) = t.dev(ordinal) {
            with_dev.push((ordinal, d, bytes));
        }
    }
    if !with_dev.is_empty() {
        execs.insert(exec, with_dev);
    }
}

/// Launches `exec` through `call`, charging the growth of the device's graph reservation.
pub fn launch(exec: CUgraphExec, stream: CUstream, call: impl FnOnce() -> CUresult) -> CUresult {
    let Ok(t) = crate::tenant::tenant() else {
        return call();
    };
    let need = t.book.execs.lock().unwrap().get(&(exec as usize)).cloned();
    let Some(need) = need else {
        return call();
    };
    let mut g = t.book.graph.lock().unwrap();
    let mut held: Vec<(Dev, u64)> = Vec::new();
    for &(ordinal, dev, bytes) in &need {
        let gc = g.entry(dev.0).or_insert(GraphCharge {
            ordinal,
            charged: 0,
        });
        reconcile_one(t, dev, gc);
        let used = attr(ordinal, CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT).unwrap_or(gc.charged);
        let grow = used.saturating_add(bytes).saturating_sub(gc.charged);
        if grow > 0 && t.reserve_exact(dev, grow).is_err() {
            drop(g);
            // Pools may have given memory back since last measured.
            let ok = crate::memory::reconcile_pools(t) && t.reserve_exact(dev, grow).is_ok();
            g = t.book.graph.lock().unwrap();
            if !ok {
                for (d, n) in held {
                    t.release(d, n);
                }
                return CUDA_ERROR_OUT_OF_MEMORY;
            }
        }
        held.push((dev, grow));
    }
    let r = call();
    let mut over = false;
    for (dev, grow) in held {
        let gc = g.get_mut(&dev.0).unwrap();
        settle(t, dev, gc, grow);
        over |= t.over_cap(dev);
    }
    if over {
        // The driver grew by more than could be reserved ahead (it grows in chunks): give the
        // excess back at once rather than hold it over the cap.
        call_real!(CUDA, cuStreamSynchronize: unsafe extern "C" fn(CUstream) -> CUresult, stream);
        for &(ordinal, dev, _) in &need {
            call_real!(CUDA, cuDeviceGraphMemTrim: unsafe extern "C" fn(CUdevice) -> CUresult, ordinal);
            if let Some(gc) = g.get_mut(&dev.0) {
                reconcile_one(t, dev, gc);
            }
        }
    }
    r
}

type InstantiateLegacyFn =
    unsafe extern "C" fn(*mut CUgraphExec, CUgraph, *mut CUgraphNode, *mut i8, usize) -> CUresult;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    flags: u64,
) -> CUresult {
    guard(|| unsafe {
        instantiate(
            exec,
            graph,
            || call_real!(CUDA, cuGraphInstantiateWithFlags: unsafe extern "C" fn(*mut CUgraphExec, CUgraph, u64) -> CUresult, exec, graph, flags),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    err: *mut CUgraphNode,
    log: *mut i8,
    len: usize,
) -> CUresult {
    guard(|| unsafe {
        instantiate(
            exec,
            graph,
            || call_real!(CUDA, cuGraphInstantiate: InstantiateLegacyFn, exec, graph, err, log, len),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    err: *mut CUgraphNode,
    log: *mut i8,
    len: usize,
) -> CUresult {
    guard(|| unsafe {
        instantiate(
            exec,
            graph,
            || call_real!(CUDA, cuGraphInstantiate_v2: InstantiateLegacyFn, exec, graph, err, log, len),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithParams(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut c_void,
) -> CUresult {
    guard(|| unsafe {
        instantiate(
            exec,
            graph,
            || call_real!(CUDA, cuGraphInstantiateWithParams: unsafe extern "C" fn(*mut CUgraphExec, CUgraph, *mut c_void) -> CUresult, exec, graph, params),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithParams_ptsz(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut c_void,
) -> CUresult {
    guard(|| unsafe {
        instantiate(
            exec,
            graph,
            || call_real!(CUDA, cuGraphInstantiateWithParams_ptsz: unsafe extern "C" fn(*mut CUgraphExec, CUgraph, *mut c_void) -> CUresult, exec, graph, params),
        )
    })
}

/// An updated executable allocates what its new graph's allocation nodes say.
fn updated(exec: CUgraphExec, graph: CUgraph, r: CUresult) -> CUresult {
    if r == CUDA_SUCCESS
        && let (Ok(t), Ok(need)) = (crate::tenant::tenant(), alloc_bytes(graph))
    {
        set_need(t, exec as usize, need);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecUpdate(
    exec: CUgraphExec,
    graph: CUgraph,
    err_node: *mut CUgraphNode,
    result: *mut c_int,
) -> CUresult {
    guard(|| {
        updated(
            exec,
            graph,
            call_real!(CUDA, cuGraphExecUpdate: unsafe extern "C" fn(CUgraphExec, CUgraph, *mut CUgraphNode, *mut c_int) -> CUresult, exec, graph, err_node, result),
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecUpdate_v2(
    exec: CUgraphExec,
    graph: CUgraph,
    info: *mut c_void,
) -> CUresult {
    guard(|| {
        updated(
            exec,
            graph,
            call_real!(CUDA, cuGraphExecUpdate_v2: unsafe extern "C" fn(CUgraphExec, CUgraph, *mut c_void) -> CUresult, exec, graph, info),
        )
    })
}

/// The executable goes; the memory it used stays reserved (and charged) until trimmed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: CUgraphExec) -> CUresult {
    guard(|| {
        let r = call_real!(CUDA, cuGraphExecDestroy: unsafe extern "C" fn(CUgraphExec) -> CUresult, exec);
        if r == CUDA_SUCCESS
            && let Ok(t) = crate::tenant::tenant()
        {
            t.book.execs.lock().unwrap().remove(&(exec as usize));
            reconcile(t);
        }
        r
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGraphMemTrim(dev: CUdevice) -> CUresult {
    guard(|| {
        let r =
            call_real!(CUDA, cuDeviceGraphMemTrim: unsafe extern "C" fn(CUdevice) -> CUresult, dev);
        if r == CUDA_SUCCESS
            && let Ok(t) = crate::tenant::tenant()
        {
            reconcile(t);
        }
        r
    })
}

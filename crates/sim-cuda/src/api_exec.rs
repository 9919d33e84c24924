//! Execution: streams, events, modules and kernels, launches, graphs and stream capture.

use std::ffi::{CStr, c_char, c_float, c_int, c_uint, c_void};

use gpuslice_cuda_abi::driver::*;
use gpuslice_cuda_abi::image;
use gpuslice_cuda_abi::modimage::{self, Image, ImageError};

use crate::*;

/// How long a launch of `name` keeps its device busy: `busy*` kernels run for as many
/// microseconds as their first parameter (a u64) says; everything else completes at once.
unsafe fn busy_ns(name: &str, params: *mut *mut c_void, extra: *mut *mut c_void) -> u64 {
    if !name.starts_with("busy") {
        return 0;
    }
    unsafe {
        if !params.is_null() && !(*params).is_null() {
            return ((*params) as *const u64)
                .read_unaligned()
                .saturating_mul(1000);
        }
        if !extra.is_null() {
            let mut i = 0;
            while i < 64 {
                let k = *extra.add(i) as usize;
                if k == CU_LAUNCH_PARAM_END {
                    break;
                }
                let v = *extra.add(i + 1);
                if k == CU_LAUNCH_PARAM_BUFFER_POINTER && !v.is_null() {
                    return (v as *const u64).read_unaligned().saturating_mul(1000);
                }
                i += 2;
            }
        }
    }
    0
}

/// Queues a kernel of `busy` ns on `sid`, after the stream's earlier work.
fn run_kernel(r: &mut Reg, sid: Sid, busy: u64) -> R {
    if busy == 0 {
        return Ok(());
    }
    let s = sim()?;
    let dev = r.sid_dev(sid);
    let end = s.run_busy(dev, r.not_before(sid), busy);
    r.set_done(sid, end);
    Ok(())
}

fn capture_graph(r: &Reg, sid: Sid) -> Option<usize> {
    match sid {
        Sid::Real(h) => r.streams[&h].capture,
        Sid::Null(_) => None,
    }
}

unsafe fn launch(
    f: CUfunction,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> R {
    sim()?;
    let mut r = reg();
    r.current()?;
    let name = r
        .functions
        .get(&(f as usize))
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?
        .name
        .clone();
    if grid.contains(&0)
        || block.contains(&0)
        || block.iter().map(|&b| b as u64).product::<u64>() > 1024
    {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let busy = unsafe { busy_ns(&name, params, extra) };
    let sid = r.sid(stream)?;
    if let Some(g) = capture_graph(&r, sid) {
        add_node(
            &mut r,
            g as CUgraph,
            std::ptr::null(),
            0,
            NodeKind::Kernel {
                func: f as usize,
                busy_ns: busy,
            },
        )?;
        return Ok(());
    }
    run_kernel(&mut r, sid, busy)
}

/// `cuLaunchGrid*`: a grid of the given width and height with the block shape and parameters
/// set beforehand (`cuFuncSetBlockShape`, `cuParamSet*`); the simulator keeps neither, so the
/// kernel runs one thread per block and takes no time.
unsafe fn legacy_grid(f: CUfunction, w: c_int, h: c_int, stream: CUstream) -> R {
    if w <= 0 || h <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    unsafe {
        launch(
            f,
            [w as c_uint, h as c_uint, 1],
            [1, 1, 1],
            stream,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    }
}

/// `CUDA_GRAPH_INSTANTIATE_PARAMS`: flags, upload stream, error node out, result out.
#[repr(C)]
struct InstantiateParams {
    flags: u64,
    upload: CUstream,
    err_node: CUgraphNode,
    result: c_int,
}

unsafe fn instantiate_with_params(e: *mut CUgraphExec, g: CUgraph, params: *mut c_void) -> R {
    if params.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let p = params as *mut InstantiateParams;
    let r = unsafe { instantiate(e, g) };
    // CUDA_GRAPH_INSTANTIATE_SUCCESS = 0, CUDA_GRAPH_INSTANTIATE_ERROR = 1.
    unsafe { (*p).result = if r.is_ok() { 0 } else { 1 } };
    r
}

unsafe fn launch_ex(
    config: *const CUlaunchConfig,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> R {
    if config.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let c = unsafe { &*config };
    unsafe {
        launch(
            f,
            [c.gridDimX, c.gridDimY, c.gridDimZ],
            [c.blockDimX, c.blockDimY, c.blockDimZ],
            c.hStream,
            params,
            extra,
        )
    }
}

/// Synchronisation points let pools give back memory above their release threshold.
fn wait_and_trim(t: u64, dev: usize) {
    sleep_until(t);
    crate::api_mem::trim_pools_on_sync(dev);
}

unsafe fn stream_sync(h: CUstream) -> R {
    sim()?;
    let (t, dev) = {
        let r = reg();
        let sid = r.sid(h)?;
        if capture_graph(&r, sid).is_some() {
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        (r.not_before(sid), r.sid_dev(sid))
    };
    wait_and_trim(t, dev);
    Ok(())
}

unsafe fn stream_query(h: CUstream) -> R {
    sim()?;
    let r = reg();
    let sid = r.sid(h)?;
    if r.not_before(sid) > Sim::now_ns() {
        Err(CUDA_ERROR_NOT_READY)
    } else {
        Ok(())
    }
}

unsafe fn stream_destroy(h: CUstream) -> R {
    sim()?;
    reg()
        .streams
        .remove(&(h as usize))
        .map(|_| ())
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

unsafe fn stream_wait_event(h: CUstream, ev: CUevent) -> R {
    sim()?;
    let mut r = reg();
    let sid = r.sid(h)?;
    let t = r
        .events
        .get(&(ev as usize))
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?
        .time;
    if let Some(t) = t {
        r.set_done(sid, t);
    }
    Ok(())
}

unsafe fn event_record(ev: CUevent, h: CUstream) -> R {
    sim()?;
    let mut r = reg();
    let sid = r.sid(h)?;
    if !r.events.contains_key(&(ev as usize)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    // The event completes when the stream's earlier work does.
    let t = r.not_before(sid).max(Sim::now_ns());
    r.events.get_mut(&(ev as usize)).unwrap().time = Some(t);
    Ok(())
}

unsafe fn event_destroy(ev: CUevent) -> R {
    sim()?;
    reg()
        .events
        .remove(&(ev as usize))
        .map(|_| ())
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

unsafe fn elapsed(ms: *mut c_float, a: CUevent, b: CUevent) -> R {
    sim()?;
    if ms.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let r = reg();
    let ea = r
        .events
        .get(&(a as usize))
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    let eb = r
        .events
        .get(&(b as usize))
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    if (ea.flags | eb.flags) & CU_EVENT_DISABLE_TIMING != 0 {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    let (Some(ta), Some(tb)) = (ea.time, eb.time) else {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    };
    if ta.max(tb) > Sim::now_ns() {
        return Err(CUDA_ERROR_NOT_READY);
    }
    unsafe { out(ms, ((tb as i128 - ta as i128) as f64 / 1e6) as c_float) }
}

unsafe fn new_stream(ph: *mut CUstream, flags: c_uint, priority: c_int) -> R {
    sim()?;
    if ph.is_null() || flags & !CU_STREAM_NON_BLOCKING != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let ctx = r.current()?;
    let h = r.handle();
    r.streams.insert(
        h,
        Stream {
            ctx,
            flags,
            priority: priority.clamp(-5, 0),
            done: 0,
            capture: None,
        },
    );
    unsafe { out(ph, h as CUstream) }
}

// ---- modules and functions -----------------------------------------------------------------

/// The module a load of `img` places on the simulated GPU: the part of it this GPU runs. An
/// image that is not one, or that cannot be read, is refused as the driver refuses it.
fn loadable(img: Option<Result<Image, ImageError>>) -> Result<image::Module, CUresult> {
    let img = match img {
        None => return Err(CUDA_ERROR_INVALID_VALUE),
        Some(Err(_)) => return Err(CUDA_ERROR_INVALID_IMAGE),
        Some(Ok(i)) => i,
    };
    let (major, minor) = crate::api_device::COMPUTE_CAPABILITY;
    img.for_device(major, minor)
        .cloned()
        .ok_or(CUDA_ERROR_NO_BINARY_FOR_GPU)
}

/// The image in file `fname`, as `cuModuleLoad` and `cuLibraryLoadFromFile` read it.
fn file_image(fname: *const c_char) -> Result<Option<Result<Image, ImageError>>, CUresult> {
    if fname.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let path = unsafe { CStr::from_ptr(fname) }
        .to_string_lossy()
        .into_owned();
    let bytes = std::fs::read(&path).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
    Ok(Some(modimage::read(&bytes)))
}

/// Places `module`'s variables in the current context's device memory and records its
/// kernels under a new handle.
fn place(r: &mut Reg, module: image::Module) -> Result<usize, CUresult> {
    let base = match module.globals.footprint {
        0 => None,
        n => Some(crate::api_mem::alloc_linear(
            r,
            n,
            AllocKind::Global,
            false,
        )?),
    };
    let h = r.handle();
    if let Some(b) = base {
        r.module_globals.insert(h, (b, module.globals.vars));
    }
    r.module_kernels.insert(h, module.kernels);
    Ok(h)
}

/// Loads the module of image `img` into the current context: its variables take device
/// memory there.
fn new_module(m: *mut CUmodule, img: Option<Result<Image, ImageError>>) -> R {
    if m.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    sim()?;
    let module = loadable(img)?;
    let mut r = reg();
    let ctx = r.current()?;
    let h = place(&mut r, module)?;
    r.modules.insert(h, ctx);
    unsafe { *m = h as CUmodule };
    Ok(())
}

/// The function called `name` in `owner` (a module or library), made on first request.
fn function(r: &mut Reg, owner: usize, name: *const c_char) -> Result<usize, CUresult> {
    if name.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    // Only the kernels the image holds are found, as the driver finds them.
    if !r
        .module_kernels
        .get(&owner)
        .is_some_and(|k| k.contains(&name))
    {
        return Err(CUDA_ERROR_NOT_FOUND);
    }
    if let Some((&h, _)) = r
        .functions
        .iter()
        .find(|(_, f)| f.owner == owner && f.name == name)
    {
        return Ok(h);
    }
    let h = r.handle();
    r.functions.insert(h, Function { name, owner });
    Ok(h)
}

/// The address and size of the variable `name` of module `m`.
fn module_global(m: CUmodule, name: *const c_char) -> Result<(u64, u64), CUresult> {
    sim()?;
    if !reg().modules.contains_key(&(m as usize)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    global_of(m as usize, name)
}

/// The address and size of the variable `name` of a module or library.
fn global_of(owner: usize, name: *const c_char) -> Result<(u64, u64), CUresult> {
    if name.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    let r = reg();
    let (base, vars) = r.module_globals.get(&owner).ok_or(CUDA_ERROR_NOT_FOUND)?;
    let v = vars
        .iter()
        .find(|v| v.name == name)
        .ok_or(CUDA_ERROR_NOT_FOUND)?;
    Ok((base + v.offset, v.bytes))
}

/// Loads the library of image `img`: its variables are placed in the current context (a
/// library's variables live in the contexts that use it; the simulator places them eagerly,
/// where the library is loaded).
fn load_library(lib: *mut CUlibrary, img: Option<Result<Image, ImageError>>) -> R {
    sim()?;
    if lib.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let module = loadable(img)?;
    let mut r = reg();
    let h = place(&mut r, module)?;
    r.libraries.insert(h, ());
    unsafe { *lib = h as CUlibrary };
    Ok(())
}

// ---- graphs --------------------------------------------------------------------------------

fn add_node(
    r: &mut Reg,
    g: CUgraph,
    deps: *const CUgraphNode,
    n: usize,
    kind: NodeKind,
) -> Result<usize, CUresult> {
    let g = g as usize;
    if !r.graphs.contains_key(&g) || (n > 0 && deps.is_null()) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let deps: Vec<usize> = if n == 0 {
        Vec::new()
    } else {
        unsafe { std::slice::from_raw_parts(deps, n) }
            .iter()
            .map(|&d| d as usize)
            .collect()
    };
    if deps.iter().any(|d| r.nodes.get(d) != Some(&g)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let h = r.handle();
    r.nodes.insert(h, g);
    let graph = r.graphs.get_mut(&g).unwrap();
    graph.nodes.push((h, kind));
    graph.edges.extend(deps.into_iter().map(|d| (d, h)));
    Ok(h)
}

unsafe fn kernel_node(
    node: *mut CUgraphNode,
    g: CUgraph,
    deps: *const CUgraphNode,
    n: usize,
    func: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> R {
    sim()?;
    if node.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let name = r
        .functions
        .get(&(func as usize))
        .ok_or(CUDA_ERROR_INVALID_VALUE)?
        .name
        .clone();
    // The node keeps the parameter values it was given, as the real driver copies them.
    let busy = unsafe { busy_ns(&name, params, extra) };
    let h = add_node(
        &mut r,
        g,
        deps,
        n,
        NodeKind::Kernel {
            func: func as usize,
            busy_ns: busy,
        },
    )?;
    unsafe { out(node, h as CUgraphNode) }
}

unsafe fn add_deps(g: CUgraph, from: *const CUgraphNode, to: *const CUgraphNode, n: usize) -> R {
    sim()?;
    let mut r = reg();
    let gh = g as usize;
    if !r.graphs.contains_key(&gh) || (n > 0 && (from.is_null() || to.is_null())) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for i in 0..n {
        let (a, b) = unsafe { (*from.add(i) as usize, *to.add(i) as usize) };
        if r.nodes.get(&a) != Some(&gh) || r.nodes.get(&b) != Some(&gh) || a == b {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        r.graphs.get_mut(&gh).unwrap().edges.push((a, b));
    }
    Ok(())
}

/// What an executable made of `nodes` allocates: memory it frees itself (needed while it
/// runs), per device, and allocations it leaves live.
type ExecMemory = (Vec<(usize, u64)>, Vec<(usize, u64, u64)>);

fn exec_memory(nodes: &[NodeKind]) -> ExecMemory {
    let mut mem_need: Vec<(usize, u64)> = Vec::new();
    let mut keeps = Vec::new();
    for k in nodes {
        if let NodeKind::MemAlloc { dev, size, dptr } = k {
            let freed = nodes
                .iter()
                .any(|f| matches!(f, NodeKind::MemFree { dptr: d } if d == dptr));
            if !freed {
                keeps.push((*dev, round_up(*size, PAGE), *dptr));
                continue;
            }
            match mem_need.iter_mut().find(|(d, _)| d == dev) {
                Some(e) => e.1 += round_up(*size, PAGE),
                None => mem_need.push((*dev, round_up(*size, PAGE))),
            }
        }
    }
    (mem_need, keeps)
}

unsafe fn instantiate(exec: *mut CUgraphExec, g: CUgraph) -> R {
    sim()?;
    if exec.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let graph = r
        .graphs
        .get(&(g as usize))
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let nodes: Vec<NodeKind> = graph.nodes.iter().map(|(_, k)| k.clone()).collect();
    let (mem_need, keeps) = exec_memory(&nodes);
    let h = r.handle();
    r.execs.insert(
        h,
        Exec {
            nodes,
            mem_need,
            keeps,
            done: 0,
        },
    );
    unsafe { out(exec, h as CUgraphExec) }
}

/// Takes the node parameters of a topologically identical graph (same nodes in the same order,
/// of the same types). An allocation node may change its size; what the executable allocates
/// follows, from its next launch. Answers the update result code and, on failure, the node.
fn exec_update(e: CUgraphExec, g: CUgraph) -> (R, c_int, CUgraphNode) {
    if let Err(x) = sim() {
        return (Err(x), CU_GRAPH_EXEC_UPDATE_ERROR, std::ptr::null_mut());
    }
    let mut r = reg();
    let (Some(graph), Some(ex)) = (r.graphs.get(&(g as usize)), r.execs.get(&(e as usize))) else {
        return (
            Err(CUDA_ERROR_INVALID_VALUE),
            CU_GRAPH_EXEC_UPDATE_ERROR,
            std::ptr::null_mut(),
        );
    };
    let fail = |code, node: usize| {
        (
            Err(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE),
            code,
            node as CUgraphNode,
        )
    };
    if graph.nodes.len() != ex.nodes.len() {
        return fail(CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED, 0);
    }
    for ((h, new), old) in graph.nodes.iter().zip(&ex.nodes) {
        if std::mem::discriminant(new) != std::mem::discriminant(old) {
            return fail(CU_GRAPH_EXEC_UPDATE_ERROR_NODE_TYPE_CHANGED, *h);
        }
    }
    // An allocation the last launch left live must be freed first, as before a relaunch.
    if ex
        .keeps
        .iter()
        .any(|(_, _, p)| r.graph_live.contains_key(p))
    {
        return fail(CU_GRAPH_EXEC_UPDATE_ERROR, 0);
    }
    let nodes: Vec<NodeKind> = graph.nodes.iter().map(|(_, k)| k.clone()).collect();
    let (mem_need, keeps) = exec_memory(&nodes);
    let ex = r.execs.get_mut(&(e as usize)).unwrap();
    let old = std::mem::replace(&mut ex.nodes, nodes);
    ex.mem_need = mem_need;
    ex.keeps = keeps;
    for k in old {
        if let NodeKind::MemAlloc { dptr, .. } = k {
            release_graph_va(&mut r, dptr);
        }
    }
    (Ok(()), CU_GRAPH_EXEC_UPDATE_SUCCESS, std::ptr::null_mut())
}

unsafe fn exec_update_v1(
    e: CUgraphExec,
    g: CUgraph,
    err: *mut CUgraphNode,
    result: *mut c_int,
) -> R {
    let (r, code, node) = exec_update(e, g);
    if !result.is_null() {
        unsafe { *result = code };
    }
    if !err.is_null() {
        unsafe { *err = node };
    }
    r
}

unsafe fn exec_update_v2(e: CUgraphExec, g: CUgraph, info: *mut CUgraphExecUpdateResultInfo) -> R {
    if info.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (r, code, node) = exec_update(e, g);
    unsafe {
        *info = CUgraphExecUpdateResultInfo {
            result: code,
            errorNode: node,
            errorFromNode: std::ptr::null_mut(),
        }
    };
    r
}

/// Graph memory in use on `dev`: by execs other than `except` that are still running, and by
/// allocations that outlived their launch.
fn graph_mem_pending(r: &Reg, dev: usize, except: usize, now: u64) -> u64 {
    let running: u64 = r
        .execs
        .iter()
        .filter(|(h, e)| **h != except && e.done > now)
        .flat_map(|(_, e)| e.mem_need.iter())
        .filter(|(d, _)| *d == dev)
        .map(|(_, n)| n)
        .sum();
    let live: u64 = r
        .graph_live
        .values()
        .filter(|(d, _)| *d == dev)
        .map(|(_, n)| n)
        .sum();
    running + live
}

/// Drops a graph allocation's address range once no graph or exec refers to it.
fn release_graph_va(r: &mut Reg, dptr: u64) {
    let is_it = |k: &NodeKind| matches!(k, NodeKind::MemAlloc { dptr: d, .. } if *d == dptr);
    if r.graph_live.contains_key(&dptr)
        || r.graphs
            .values()
            .any(|g| g.nodes.iter().any(|(_, k)| is_it(k)))
        || r.execs.values().any(|e| e.nodes.iter().any(is_it))
    {
        return;
    }
    if let Some(a) = r.allocs.remove(&dptr) {
        unmap(dptr, a.map_len);
    }
}

unsafe fn graph_launch(exec: CUgraphExec, stream: CUstream) -> R {
    let s = sim()?;
    let mut r = reg();
    let eh = exec as usize;
    let sid = r.sid(stream)?;
    if capture_graph(&r, sid).is_some() {
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    let e = r.execs.get(&eh).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let (mut need, nodes, keeps) = (e.mem_need.clone(), e.nodes.clone(), e.keeps.clone());
    // An allocation the last launch left live must be freed before the graph runs again.
    if keeps.iter().any(|(_, _, p)| r.graph_live.contains_key(p)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for &(dev, n, _) in &keeps {
        match need.iter_mut().find(|(d, _)| *d == dev) {
            Some(e) => e.1 += n,
            None => need.push((dev, n)),
        }
    }
    let now = Sim::now_ns();
    // Physical memory for the graph's allocations is found at launch, from the device's
    // graph memory, which keeps what it has until trimmed.
    for &(dev, n) in &need {
        let required = graph_mem_pending(&r, dev, eh, now) + n;
        let gm = r.graph_mem.entry(dev).or_default();
        if gm.reserved < required {
            let grow = round_up(required - gm.reserved, POOL_CHUNK);
            if !s.try_alloc(dev, grow) {
                return Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
            gm.reserved += grow;
            gm.reserved_high = gm.reserved_high.max(gm.reserved);
        }
        gm.used = required;
        gm.used_high = gm.used_high.max(required);
    }
    for k in nodes {
        if let NodeKind::Kernel { busy_ns, .. } = k {
            run_kernel(&mut r, sid, busy_ns)?;
        }
    }
    let done = r.not_before(sid).max(now);
    r.execs.get_mut(&eh).unwrap().done = done;
    for (dev, n, p) in keeps {
        r.graph_live.insert(p, (dev, n));
    }
    Ok(())
}

/// Frees a graph allocation that outlived its launch; its memory returns to the device's graph
/// reservation (not to the device) and its address stays with the graph.
pub(crate) fn free_graph_live(r: &mut Reg, p: u64) -> R {
    r.graph_live
        .remove(&p)
        .map(|_| ())
        .ok_or(CUDA_ERROR_INVALID_VALUE)
}

unsafe fn begin_capture(h: CUstream) -> R {
    sim()?;
    let mut r = reg();
    let sid = r.sid(h)?;
    let Sid::Real(sh) = sid else {
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    };
    if r.streams[&sh].capture.is_some() {
        return Err(CUDA_ERROR_ILLEGAL_STATE);
    }
    let g = r.handle();
    r.graphs.insert(
        g,
        Graph {
            nodes: Vec::new(),
            edges: Vec::new(),
        },
    );
    r.streams.get_mut(&sh).unwrap().capture = Some(g);
    Ok(())
}

unsafe fn end_capture(h: CUstream, pg: *mut CUgraph) -> R {
    sim()?;
    if pg.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let Sid::Real(sh) = r.sid(h)? else {
        return Err(CUDA_ERROR_ILLEGAL_STATE);
    };
    let g = r
        .streams
        .get_mut(&sh)
        .unwrap()
        .capture
        .take()
        .ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    // Captured work runs in capture order: chain the nodes.
    let graph = r.graphs.get_mut(&g).unwrap();
    let ids: Vec<usize> = graph.nodes.iter().map(|(n, _)| *n).collect();
    graph.edges.extend(ids.windows(2).map(|w| (w[0], w[1])));
    unsafe { out(pg, g as CUgraph) }
}

unsafe fn is_capturing(h: CUstream, status: *mut c_int) -> R {
    sim()?;
    let r = reg();
    let sid = r.sid(h)?;
    let st = if capture_graph(&r, sid).is_some() {
        CU_STREAM_CAPTURE_STATUS_ACTIVE
    } else {
        CU_STREAM_CAPTURE_STATUS_NONE
    };
    unsafe { out(status, st) }
}

fn node_kind(r: &Reg, node: CUgraphNode) -> Result<NodeKind, CUresult> {
    let g = r
        .nodes
        .get(&(node as usize))
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let graph = r.graphs.get(g).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    graph
        .nodes
        .iter()
        .find(|(h, _)| *h == node as usize)
        .map(|(_, k)| k.clone())
        .ok_or(CUDA_ERROR_INVALID_VALUE)
}

export! { exports_exec;

fn cuStreamCreate(ph: *mut CUstream, flags: c_uint) { new_stream(ph, flags, 0) }
fn cuStreamCreateWithPriority(ph: *mut CUstream, flags: c_uint, priority: c_int) { new_stream(ph, flags, priority) }
fn cuStreamDestroy(h: CUstream) { stream_destroy(h) }
fn cuStreamDestroy_v2(h: CUstream) { stream_destroy(h) }
fn cuStreamSynchronize(h: CUstream) { stream_sync(h) }
fn cuStreamSynchronize_ptsz(h: CUstream) { stream_sync(h) }
fn cuStreamQuery(h: CUstream) { stream_query(h) }
fn cuStreamQuery_ptsz(h: CUstream) { stream_query(h) }
fn cuStreamWaitEvent(h: CUstream, ev: CUevent, _flags: c_uint) { stream_wait_event(h, ev) }
fn cuStreamWaitEvent_ptsz(h: CUstream, ev: CUevent, _flags: c_uint) { stream_wait_event(h, ev) }

fn cuStreamGetFlags(h: CUstream, flags: *mut c_uint) {
    sim()?;
    let r = reg();
    match r.sid(h)? {
        Sid::Real(s) => out(flags, r.streams[&s].flags),
        Sid::Null(_) => out(flags, 0),
    }
}

fn cuStreamGetPriority(h: CUstream, p: *mut c_int) {
    sim()?;
    let r = reg();
    match r.sid(h)? {
        Sid::Real(s) => out(p, r.streams[&s].priority),
        Sid::Null(_) => out(p, 0),
    }
}

fn cuStreamGetCtx(h: CUstream, pctx: *mut CUcontext) {
    sim()?;
    let r = reg();
    let sid = r.sid(h)?;
    out(pctx, r.sid_ctx(sid) as CUcontext)
}

fn cuEventCreate(ph: *mut CUevent, flags: c_uint) {
    sim()?;
    if ph.is_null() || flags & !(CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS) != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let ctx = r.current()?;
    let h = r.handle();
    r.events.insert(h, Event { ctx, flags, time: None });
    out(ph, h as CUevent)
}

fn cuEventRecord(ev: CUevent, h: CUstream) { event_record(ev, h) }
fn cuEventRecord_ptsz(ev: CUevent, h: CUstream) { event_record(ev, h) }
fn cuEventRecordWithFlags(ev: CUevent, h: CUstream, _flags: c_uint) { event_record(ev, h) }
fn cuEventRecordWithFlags_ptsz(ev: CUevent, h: CUstream, _flags: c_uint) { event_record(ev, h) }

fn cuEventQuery(ev: CUevent) {
    sim()?;
    let r = reg();
    let e = r.events.get(&(ev as usize)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    match e.time {
        Some(t) if t > Sim::now_ns() => Err(CUDA_ERROR_NOT_READY),
        _ => Ok(()),
    }
}

fn cuEventSynchronize(ev: CUevent) {
    sim()?;
    let (t, dev) = {
        let r = reg();
        let e = r.events.get(&(ev as usize)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        (e.time.unwrap_or(0), r.ctxs.get(&e.ctx).map(|c| c.dev))
    };
    match dev {
        Some(d) => wait_and_trim(t, d),
        None => sleep_until(t),
    }
    Ok(())
}

fn cuEventElapsedTime(ms: *mut c_float, a: CUevent, b: CUevent) { elapsed(ms, a, b) }
fn cuEventElapsedTime_v2(ms: *mut c_float, a: CUevent, b: CUevent) { elapsed(ms, a, b) }
fn cuEventDestroy(ev: CUevent) { event_destroy(ev) }
fn cuEventDestroy_v2(ev: CUevent) { event_destroy(ev) }

fn cuModuleLoad(m: *mut CUmodule, fname: *const c_char) {
    sim()?;
    new_module(m, file_image(fname)?)
}

fn cuModuleLoadData(m: *mut CUmodule, image: *const c_void) {
    new_module(m, modimage::read_ptr(image))
}

fn cuModuleLoadDataEx(m: *mut CUmodule, image: *const c_void, _n: c_uint, _opts: *mut c_int, _vals: *mut *mut c_void) {
    new_module(m, modimage::read_ptr(image))
}

fn cuModuleLoadFatBinary(m: *mut CUmodule, fatbin: *const c_void) {
    new_module(m, modimage::read_ptr(fatbin))
}

fn cuModuleUnload(m: CUmodule) {
    sim()?;
    let mut r = reg();
    r.modules.remove(&(m as usize)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    r.functions.retain(|_, f| f.owner != m as usize);
    r.module_kernels.remove(&(m as usize));
    if let Some((base, _)) = r.module_globals.remove(&(m as usize)) {
        crate::api_mem::free_alloc(&mut r, base, false)?;
    }
    Ok(())
}

fn cuModuleGetGlobal_v2(dptr: *mut CUdeviceptr, bytes: *mut usize, m: CUmodule, name: *const c_char) {
    let (p, n) = module_global(m, name)?;
    // Either output may be omitted, as the driver allows.
    if !dptr.is_null() {
        *dptr = p;
    }
    if !bytes.is_null() {
        *bytes = n as usize;
    }
    Ok(())
}

fn cuModuleGetFunction(f: *mut CUfunction, m: CUmodule, name: *const c_char) {
    sim()?;
    if f.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    if !r.modules.contains_key(&(m as usize)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    let h = function(&mut r, m as usize, name)?;
    out(f, h as CUfunction)
}

fn cuLibraryLoadData(lib: *mut CUlibrary, code: *const c_void, _jo: *mut c_int, _jv: *mut *mut c_void, _nj: c_uint, _lo: *mut c_int, _lv: *mut *mut c_void, _nl: c_uint) {
    load_library(lib, modimage::read_ptr(code))
}

fn cuLibraryLoadFromFile(lib: *mut CUlibrary, fname: *const c_char, _jo: *mut c_int, _jv: *mut *mut c_void, _nj: c_uint, _lo: *mut c_int, _lv: *mut *mut c_void, _nl: c_uint) {
    sim()?;
    load_library(lib, file_image(fname)?)
}

fn cuLibraryUnload(lib: CUlibrary) {
    sim()?;
    let mut r = reg();
    r.libraries.remove(&(lib as usize)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    r.functions.retain(|_, f| f.owner != lib as usize);
    r.module_kernels.remove(&(lib as usize));
    if let Some((base, _)) = r.module_globals.remove(&(lib as usize)) {
        // Gone already when the context it was placed in has ended.
        if r.allocs.contains_key(&base) {
            crate::api_mem::free_alloc(&mut r, base, false)?;
        }
    }
    Ok(())
}

fn cuLibraryGetGlobal(dptr: *mut CUdeviceptr, bytes: *mut usize, lib: CUlibrary, name: *const c_char) {
    let (p, n) = {
        let r = reg();
        if !r.libraries.contains_key(&(lib as usize)) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let (base, _) = r.module_globals.get(&(lib as usize)).ok_or(CUDA_ERROR_NOT_FOUND)?;
        if !r.allocs.contains_key(base) {
            return Err(CUDA_ERROR_CONTEXT_IS_DESTROYED);
        }
        drop(r);
        global_of(lib as usize, name)?
    };
    if !dptr.is_null() {
        *dptr = p;
    }
    if !bytes.is_null() {
        *bytes = n as usize;
    }
    Ok(())
}

fn cuLibraryGetKernel(k: *mut CUkernel, lib: CUlibrary, name: *const c_char) {
    sim()?;
    if k.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    if !r.libraries.contains_key(&(lib as usize)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    // A kernel handle doubles as a function handle, as the real driver allows.
    let h = function(&mut r, lib as usize, name)?;
    out(k, h as CUkernel)
}

fn cuKernelGetFunction(f: *mut CUfunction, k: CUkernel) {
    sim()?;
    let r = reg();
    r.current()?;
    if !r.functions.contains_key(&(k as usize)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    out(f, k as CUfunction)
}

fn cuFuncGetAttribute(v: *mut c_int, attr: c_int, f: CUfunction) {
    sim()?;
    if !reg().functions.contains_key(&(f as usize)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    // CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, PTX and binary versions; the rest are zero.
    out(v, match attr {
        0 => 1024,
        5 | 6 => 90,
        _ => 0,
    })
}

fn cuFuncSetAttribute(f: CUfunction, _attr: c_int, _v: c_int) {
    sim()?;
    if !reg().functions.contains_key(&(f as usize)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    Ok(())
}

fn cuFuncSetCacheConfig(f: CUfunction, _cfg: c_int) {
    sim()?;
    if !reg().functions.contains_key(&(f as usize)) {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    Ok(())
}

fn cuLaunchKernel(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, _shm: c_uint, s: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void) {
    launch(f, [gx, gy, gz], [bx, by, bz], s, params, extra)
}
fn cuLaunchKernel_ptsz(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, _shm: c_uint, s: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void) {
    launch(f, [gx, gy, gz], [bx, by, bz], s, params, extra)
}
fn cuLaunchKernelEx(config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) {
    launch_ex(config, f, params, extra)
}
fn cuLaunchKernelEx_ptsz(config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) {
    launch_ex(config, f, params, extra)
}
fn cuLaunchCooperativeKernel(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, _shm: c_uint, s: CUstream, params: *mut *mut c_void) {
    launch(f, [gx, gy, gz], [bx, by, bz], s, params, std::ptr::null_mut())
}
fn cuLaunchCooperativeKernel_ptsz(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, _shm: c_uint, s: CUstream, params: *mut *mut c_void) {
    launch(f, [gx, gy, gz], [bx, by, bz], s, params, std::ptr::null_mut())
}
fn cuLaunchCooperativeKernelMultiDevice(list: *mut CUDA_LAUNCH_PARAMS, n: c_uint, _flags: c_uint) {
    if list.is_null() || n == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for p in std::slice::from_raw_parts(list, n as usize) {
        launch(p.function, [p.gridDimX, p.gridDimY, p.gridDimZ], [p.blockDimX, p.blockDimY, p.blockDimZ], p.hStream, p.kernelParams, std::ptr::null_mut())?;
    }
    Ok(())
}

fn cuGraphCreate(g: *mut CUgraph, flags: c_uint) {
    sim()?;
    if g.is_null() || flags != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let h = r.handle();
    r.graphs.insert(h, Graph { nodes: Vec::new(), edges: Vec::new() });
    out(g, h as CUgraph)
}

fn cuGraphDestroy(g: CUgraph) {
    sim()?;
    let mut r = reg();
    let graph = r.graphs.remove(&(g as usize)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    for (n, k) in graph.nodes {
        r.nodes.remove(&n);
        if let NodeKind::MemAlloc { dptr, .. } = k {
            release_graph_va(&mut r, dptr);
        }
    }
    Ok(())
}

fn cuGraphAddKernelNode(node: *mut CUgraphNode, g: CUgraph, deps: *const CUgraphNode, n: usize, p: *const CUDA_KERNEL_NODE_PARAMS_v1) {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let p = &*p;
    kernel_node(node, g, deps, n, p.func, p.kernelParams, p.extra)
}

fn cuGraphAddKernelNode_v2(node: *mut CUgraphNode, g: CUgraph, deps: *const CUgraphNode, n: usize, p: *const CUDA_KERNEL_NODE_PARAMS) {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let p = &*p;
    let f = if p.func.is_null() { p.kern as CUfunction } else { p.func };
    kernel_node(node, g, deps, n, f, p.kernelParams, p.extra)
}

fn cuGraphAddEmptyNode(node: *mut CUgraphNode, g: CUgraph, deps: *const CUgraphNode, n: usize) {
    sim()?;
    if node.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let h = add_node(&mut reg(), g, deps, n, NodeKind::Empty)?;
    out(node, h as CUgraphNode)
}

fn cuGraphGetNodes(g: CUgraph, nodes: *mut CUgraphNode, n: *mut usize) {
    sim()?;
    if n.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let r = reg();
    let graph = r.graphs.get(&(g as usize)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if nodes.is_null() {
        return out(n, graph.nodes.len());
    }
    // As the driver does: fill up to the caller's count, NULL the rest, report what was written.
    let cap = *n;
    for i in 0..cap {
        *nodes.add(i) = graph.nodes.get(i).map_or(std::ptr::null_mut(), |(h, _)| *h as CUgraphNode);
    }
    out(n, graph.nodes.len().min(cap))
}

fn cuGraphNodeGetType(node: CUgraphNode, ty: *mut c_int) {
    sim()?;
    // CUgraphNodeType values from cuda.h.
    let t = match node_kind(&reg(), node)? {
        NodeKind::Kernel { .. } => 0,
        NodeKind::Empty => 5,
        NodeKind::MemAlloc { .. } => 10,
        NodeKind::MemFree { .. } => 11,
    };
    out(ty, t)
}

fn cuGraphMemAllocNodeGetParams(node: CUgraphNode, p: *mut CUDA_MEM_ALLOC_NODE_PARAMS) {
    sim()?;
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let NodeKind::MemAlloc { dev, size, dptr } = node_kind(&reg(), node)? else { return Err(CUDA_ERROR_INVALID_VALUE) };
    let mut params: CUDA_MEM_ALLOC_NODE_PARAMS = std::mem::zeroed();
    params.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    params.poolProps.location = CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: crate::ordinal_of(dev) };
    params.bytesize = size as usize;
    params.dptr = dptr;
    out(p, params)
}

fn cuGraphAddMemAllocNode(node: *mut CUgraphNode, g: CUgraph, deps: *const CUgraphNode, n: usize, p: *mut CUDA_MEM_ALLOC_NODE_PARAMS) {
    sim()?;
    if node.is_null() || p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let params = &mut *p;
    let props = &params.poolProps;
    if props.allocType != CU_MEM_ALLOCATION_TYPE_PINNED || props.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE || params.bytesize == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let dev = device(props.location.id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)?;
    let mut r = reg();
    let ctx = r.current()?;
    if !r.graphs.contains_key(&(g as usize)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // The address is fixed now, for the graph's life; device memory backs it only at launch.
    let size = params.bytesize as u64;
    let dptr = map_anon(size, false).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
    let h = match add_node(&mut r, g, deps, n, NodeKind::MemAlloc { dev, size, dptr }) {
        Ok(h) => h,
        Err(e) => {
            unmap(dptr, size);
            return Err(e);
        }
    };
    r.allocs.insert(dptr, Alloc { size, map_len: size, dev, ctx, charge: 0, kind: AllocKind::Graph });
    params.dptr = dptr;
    out(node, h as CUgraphNode)
}

fn cuGraphAddMemFreeNode(node: *mut CUgraphNode, g: CUgraph, deps: *const CUgraphNode, n: usize, dptr: CUdeviceptr) {
    sim()?;
    if node.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    match r.allocs.get(&dptr) {
        Some(a) if a.kind == AllocKind::Graph => {}
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    let h = add_node(&mut r, g, deps, n, NodeKind::MemFree { dptr })?;
    out(node, h as CUgraphNode)
}

fn cuGraphAddDependencies(g: CUgraph, from: *const CUgraphNode, to: *const CUgraphNode, n: usize) { add_deps(g, from, to, n) }
fn cuGraphAddDependencies_v2(g: CUgraph, from: *const CUgraphNode, to: *const CUgraphNode, _edges: *const c_void, n: usize) { add_deps(g, from, to, n) }

fn cuGraphInstantiate(e: *mut CUgraphExec, g: CUgraph, _err: *mut CUgraphNode, _log: *mut c_char, _len: usize) { instantiate(e, g) }
fn cuGraphInstantiate_v2(e: *mut CUgraphExec, g: CUgraph, _err: *mut CUgraphNode, _log: *mut c_char, _len: usize) { instantiate(e, g) }
fn cuGraphInstantiateWithFlags(e: *mut CUgraphExec, g: CUgraph, _flags: u64) { instantiate(e, g) }

fn cuGraphInstantiateWithParams(e: *mut CUgraphExec, g: CUgraph, params: *mut c_void) { instantiate_with_params(e, g, params) }
fn cuGraphInstantiateWithParams_ptsz(e: *mut CUgraphExec, g: CUgraph, params: *mut c_void) { instantiate_with_params(e, g, params) }

fn cuLaunch(f: CUfunction) { launch(f, [1, 1, 1], [1, 1, 1], std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()) }
fn cuLaunchGrid(f: CUfunction, w: c_int, h: c_int) { legacy_grid(f, w, h, std::ptr::null_mut()) }
fn cuLaunchGridAsync(f: CUfunction, w: c_int, h: c_int, s: CUstream) { legacy_grid(f, w, h, s) }

fn cuGraphExecUpdate(e: CUgraphExec, g: CUgraph, err: *mut CUgraphNode, result: *mut c_int) { exec_update_v1(e, g, err, result) }
fn cuGraphExecUpdate_v2(e: CUgraphExec, g: CUgraph, info: *mut CUgraphExecUpdateResultInfo) { exec_update_v2(e, g, info) }

fn cuGraphLaunch(e: CUgraphExec, s: CUstream) { graph_launch(e, s) }
fn cuGraphLaunch_ptsz(e: CUgraphExec, s: CUstream) { graph_launch(e, s) }

fn cuGraphExecDestroy(e: CUgraphExec) {
    sim()?;
    // Its graph memory stays cached on the device until cuDeviceGraphMemTrim.
    let mut r = reg();
    let ex = r.execs.remove(&(e as usize)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    for k in ex.nodes {
        if let NodeKind::MemAlloc { dptr, .. } = k {
            release_graph_va(&mut r, dptr);
        }
    }
    Ok(())
}

fn cuDeviceGraphMemTrim(dev: CUdevice) {
    let d = device(dev)?;
    let s = sim()?;
    let mut r = reg();
    let now = Sim::now_ns();
    let pending = graph_mem_pending(&r, d, 0, now);
    let gm = r.graph_mem.entry(d).or_default();
    let floor = round_up(pending, POOL_CHUNK);
    if gm.reserved > floor {
        s.free(d, gm.reserved - floor);
        gm.reserved = floor;
    }
    gm.used = pending;
    Ok(())
}

fn cuDeviceGetGraphMemAttribute(dev: CUdevice, attr: c_int, value: *mut c_void) {
    let d = device(dev)?;
    if value.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let pending = graph_mem_pending(&r, d, 0, Sim::now_ns());
    let gm = r.graph_mem.entry(d).or_default();
    gm.used = pending;
    let v = match attr {
        0 => gm.used,
        1 => gm.used_high,
        2 => gm.reserved,
        3 => gm.reserved_high,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    *(value as *mut u64) = v;
    Ok(())
}

fn cuDeviceSetGraphMemAttribute(dev: CUdevice, attr: c_int, value: *mut c_void) {
    let d = device(dev)?;
    if value.is_null() || *(value as *const u64) != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = reg();
    let gm = r.graph_mem.entry(d).or_default();
    match attr {
        1 => gm.used_high = gm.used,
        3 => gm.reserved_high = gm.reserved,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    Ok(())
}

fn cuStreamBeginCapture(h: CUstream) { begin_capture(h) }
fn cuStreamBeginCapture_ptsz(h: CUstream) { begin_capture(h) }
fn cuStreamBeginCapture_v2(h: CUstream, _mode: c_int) { begin_capture(h) }
fn cuStreamBeginCapture_v2_ptsz(h: CUstream, _mode: c_int) { begin_capture(h) }
fn cuStreamEndCapture(h: CUstream, g: *mut CUgraph) { end_capture(h, g) }
fn cuStreamEndCapture_ptsz(h: CUstream, g: *mut CUgraph) { end_capture(h, g) }
fn cuStreamIsCapturing(h: CUstream, st: *mut c_int) { is_capturing(h, st) }
fn cuStreamIsCapturing_ptsz(h: CUstream, st: *mut c_int) { is_capturing(h, st) }

}

//! The charge follows the device's own lifetime of memory, exactly, for the patterns real
//! programs use: VMM handles released while mapped, threads racing allocations and frees,
//! contexts ended with live allocations, graph memory the driver keeps cached, and processes
//! that come and go without a supervisor. Every step of every scenario is checked from two
//! sides read past the interposer: the device's count (NVML's per-process accounting of the
//! simulated GPU) never passes the cap, and the tenant's ledger equals it and returns to where
//! it started.

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

/// Runs `gpuslice-probe exact ARGS` as a tenant capped at 1 GiB; returns its steps.
fn scenario(m: &Machine, name: &str, args: &[&str]) -> Vec<Value> {
    let p = probe();
    let mut all = vec![p.as_str(), "exact"];
    all.extend_from_slice(args);
    let out = m.tenant(name, "1GiB", &all).output().unwrap();
    let r = report(&out);
    assert!(out.status.success(), "{name}: {r}");
    r["steps"].as_array().unwrap().clone()
}

fn find<'a>(steps: &'a [Value], name: &str) -> Vec<&'a Value> {
    steps.iter().filter(|s| s["step"] == name).collect()
}

/// Every step within the cap on the device, and the ledger charging exactly what the device
/// holds; the last step back where the first was.
fn exact_throughout(steps: &[Value], what: &str) {
    for s in steps {
        assert!(
            u(s, "device") <= GIB,
            "{what}: the device passed the cap at {s}"
        );
        assert_eq!(
            u(s, "ledger"),
            u(s, "device"),
            "{what}: the ledger disagrees with the device at {s}"
        );
    }
    let (first, last) = (&steps[0], steps.last().unwrap());
    assert_eq!(u(last, "ledger"), u(first, "ledger"), "{what}: {last}");
    assert_eq!(u(last, "device"), u(first, "device"), "{what}: {last}");
}

#[test]
fn vmm_memory_released_while_mapped_stays_charged_until_unmapped() {
    let m = Machine::new("exact-vmm");
    let steps = scenario(&m, "vmm", &["vmm", "512MiB", "8"]);
    exact_throughout(&steps, "create/map/release");
    let creates = find(&steps, "create");
    assert_eq!(u(creates[0], "r"), 0, "{steps:?}");
    assert_eq!(
        u(creates[1], "r"),
        2,
        "a second 512MiB must not fit under 1GiB while the first is mapped: {steps:?}"
    );
    let released = find(&steps, "release")[0];
    assert_eq!(u(released, "ledger"), CTX + 512 * MIB, "{released}");
}

#[test]
fn a_retained_handle_is_one_more_reference() {
    let m = Machine::new("exact-retain");
    let steps = scenario(&m, "retain", &["vmm-retain", "512MiB"]);
    exact_throughout(&steps, "retain");
    for s in ["retain", "release_retained", "release"] {
        let s = find(&steps, s)[0];
        assert_eq!(u(s, "r"), 0, "{s}");
        assert_eq!(u(s, "ledger"), CTX + 512 * MIB, "{s}");
    }
    assert_eq!(u(find(&steps, "create_again")[0], "r"), 2, "{steps:?}");
}

#[test]
fn threads_racing_alloc_and_free_leave_the_ledger_exact() {
    let m = Machine::new("exact-race");
    // Repeated: the interleavings differ from run to run, and each run must come out exact.
    for _ in 0..3 {
        let steps = scenario(&m, "race", &["race", "8", "4000"]);
        exact_throughout(&steps, "racing threads");
        assert_eq!(u(&steps[0], "ledger"), CTX);
    }
}

#[test]
fn ending_a_context_gives_back_everything_it_held() {
    let m = Machine::new("exact-ctx");
    let steps = scenario(&m, "ctx", &["contexts", "256MiB"]);
    for s in &steps {
        assert_eq!(u(s, "r"), 0, "{s}");
        assert!(u(s, "device") <= GIB, "{s}");
        assert_eq!(u(s, "ledger"), u(s, "device"), "{s}");
    }
    let at = |name: &str, i: usize| u(find(&steps, name)[i], "ledger");
    assert_eq!(at("alloc_in_ctx", 0), 3 * CTX);
    assert_eq!(at("ctx_destroy", 0), CTX, "cuCtxDestroy with live memory");
    assert_eq!(
        at("primary_reset", 0),
        0,
        "cuDevicePrimaryCtxReset with live memory"
    );
    assert_eq!(
        at("last_release", 0),
        0,
        "the last cuDevicePrimaryCtxRelease"
    );
    assert_eq!(u(steps.last().unwrap(), "ledger"), CTX);
}

#[test]
fn graph_memory_is_charged_while_the_device_keeps_it() {
    let m = Machine::new("exact-graph");
    let steps = scenario(&m, "graph", &["graph", "512MiB"]);
    exact_throughout(&steps, "graph memory");
    for s in &steps {
        if s["step"] != "alloc_while_cached" {
            assert_eq!(u(s, "r"), 0, "{s}");
        }
    }
    assert_eq!(
        u(find(&steps, "exec_destroy")[0], "ledger"),
        CTX + 512 * MIB,
        "the driver keeps graph memory after the executable is gone"
    );
    assert_eq!(
        u(find(&steps, "alloc_while_cached")[0], "r"),
        2,
        "cached graph memory counts against the cap: {steps:?}"
    );
    assert_eq!(u(find(&steps, "trim")[0], "ledger"), CTX);
    assert_eq!(
        u(find(&steps, "free_graph_alloc")[0], "ledger"),
        CTX + 512 * MIB,
        "freed graph memory goes back to the graph reservation, not the device"
    );
}

#[test]
fn an_updated_graph_is_charged_what_it_now_allocates() {
    let m = Machine::new("exact-graph-update");
    let steps = scenario(&m, "graph-update", &["graph-update", "256MiB", "900MiB"]);
    for s in &steps {
        assert!(u(s, "device") <= GIB, "the device passed the cap at {s}");
        assert_eq!(u(s, "ledger"), u(s, "device"), "at {s}");
    }
    let r = |name: &str| u(find(&steps, name)[0], "r");
    assert_eq!(r("launch_small"), 0, "{steps:?}");
    assert_eq!((r("update_big"), r("update_result")), (0, 0), "{steps:?}");
    assert_eq!(
        r("launch_big"),
        2,
        "900 MiB of graph memory does not fit beside the context: {steps:?}"
    );
    assert_eq!(r("update_small"), 0, "{steps:?}");
    assert_eq!(r("launch_small_again"), 0, "{steps:?}");
    assert_eq!(u(steps.last().unwrap(), "ledger"), CTX);
}

#[test]
fn legacy_launches_reach_the_gate() {
    let m = Machine::new("exact-legacy");
    let trace = m.dir.join("lookups");
    let p = probe();
    let out = m
        .tenant("legacy", "1GiB", &[&p, "exact", "legacy", "3"])
        .env("GPUSLICE_TRACE_LOOKUPS", &trace)
        .output()
        .unwrap();
    let r = report(&out);
    assert!(out.status.success(), "{r}");
    let t = std::fs::read_to_string(&trace).unwrap();
    for f in ["cuLaunch", "cuLaunchGrid", "cuLaunchGridAsync"] {
        assert!(
            t.lines().any(|l| l == format!("dlsym {f} hooked")),
            "{f} not handed out as the gated hook:\n{t}"
        );
    }
}

#[test]
fn every_process_sees_exact_free_memory_without_a_reaper() {
    // No `gpuslice run`: the tenant's files mounted as the node agent mounts them into a
    // container, where no supervisor reaps. Each process exits holding its context; the next
    // must not count it.
    let m = Machine::new("exact-reclaim");
    let dir = m.dir.join("tenant");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = gpuslice_ledger::TenantSpec {
        name: "reclaim".into(),
        memory_cap: GIB,
        context_overhead: CTX,
        allowed: vec![],
    };
    let l = gpuslice_ledger::Ledger::create(&dir.join("ledger"), &spec).unwrap();
    let limits = gpuslice_ledger::Limits {
        spec,
        compute: None,
        tenant_id: 7,
    };
    std::fs::write(dir.join("limits"), limits.encode()).unwrap();
    drop(l);
    let p = probe();
    let d = dir.display();
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/gpuslice; \
         mount --bind '{d}' /run/gpuslice; mount -o remount,bind,ro /run/gpuslice; \
         mount --bind '{d}/ledger' /run/gpuslice/ledger; \
         for i in 1 2 3 4 5; do '{p}' info; done"
    );
    let mut c = Command::new("unshare");
    c.args(["-rm", "sh", "-c", &script]);
    m.env(&mut c);
    c.env("LD_PRELOAD", artifact("libgpuslice.so"))
        .env("LD_LIBRARY_PATH", m.sim_lib_dir());
    let out = c.output().unwrap();
    let rs = json_lines(&out);
    assert_eq!(
        rs.len(),
        5,
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(u(r, "total"), GIB, "process {i}: {r}");
        assert_eq!(u(r, "free"), GIB - CTX, "process {i}: {r}");
    }
}

#[test]
fn layered_mipmapped_and_cubemap_arrays_are_charged_what_the_device_takes() {
    let m = Machine::new("exact-arrays");
    let steps = scenario(&m, "arrays", &["arrays"]);
    exact_throughout(&steps, "arrays");
    let creates: Vec<&Value> = steps
        .iter()
        .filter(|s| s["step"] == "mipmap_create" || s["step"] == "array_create")
        .collect();
    let refused = creates.last().unwrap();
    assert_eq!(u(refused, "r"), 2, "the last array is refused: {steps:?}");
    assert!(
        creates[..creates.len() - 1].iter().all(|s| u(s, "r") == 0),
        "{steps:?}"
    );
    assert!(creates.len() > 6, "every kind was created twice: {steps:?}");
    // Refused only when the next array does not fit: at most the largest (about 63 MiB) short.
    let before = &creates[creates.len() - 2];
    assert!(u(before, "ledger") > GIB - 64 * MIB, "{before}");
}

#[test]
fn module_globals_are_charged_from_load_to_unload() {
    let m = Machine::new("exact-globals");
    // Two 50 MiB variables a module: 100 MiB, seven fit beside the context under 1 GiB.
    let steps = scenario(&m, "globals", &["globals", "100MiB"]);
    exact_throughout(&steps, "module globals");
    assert_eq!(u(find(&steps, "load_malformed")[0], "r"), 200, "{steps:?}");
    let loads = find(&steps, "load");
    assert_eq!(loads.len(), 8, "{steps:?}");
    assert!(loads[..7].iter().all(|s| u(s, "r") == 0), "{steps:?}");
    assert_eq!(
        u(loads[7], "r"),
        2,
        "the eighth module does not fit: {steps:?}"
    );
    assert_eq!(u(loads[6], "ledger"), CTX + 7 * 100 * MIB, "{steps:?}");
    let got = find(&steps, &format!("get_global_{}", 50 * MIB));
    assert_eq!(
        got.len(),
        1,
        "cuModuleGetGlobal reports the variable's size: {steps:?}"
    );
    assert_eq!(u(got[0], "r"), 0);
    assert_eq!(u(find(&steps, "unload").last().unwrap(), "ledger"), CTX);
    let in_ctx = find(&steps, "load_in_ctx")[0];
    assert_eq!(u(in_ctx, "r"), 0, "{in_ctx}");
    assert_eq!(u(in_ctx, "ledger"), 2 * CTX + 100 * MIB, "{in_ctx}");
    assert_eq!(
        u(find(&steps, "ctx_destroy")[0], "ledger"),
        CTX,
        "{steps:?}"
    );
    let lib = find(&steps, "library_load")[0];
    assert_eq!(u(lib, "r"), 0, "{lib}");
    assert_eq!(u(lib, "ledger"), CTX + 100 * MIB, "{lib}");
    let got = find(&steps, &format!("library_global_{}", 50 * MIB));
    assert_eq!(
        got.len(),
        1,
        "cuLibraryGetGlobal reports the variable's size: {steps:?}"
    );
    let unloaded = find(&steps, "library_unload")[0];
    assert_eq!(
        (u(unloaded, "r"), u(unloaded, "ledger")),
        (0, CTX),
        "{unloaded}"
    );
}

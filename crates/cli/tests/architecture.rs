//! ARCHITECTURE.md's invariants about who may depend on what, checked over `cargo metadata`
//! so that a change breaking one fails the build's tests instead of waiting for review.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Package name → its normal (non-dev, non-build) dependencies, resolved for this workspace on
/// this platform (the only one gpuslice builds for).
fn graph() -> &'static BTreeMap<String, Vec<String>> {
    static G: std::sync::OnceLock<BTreeMap<String, Vec<String>>> = std::sync::OnceLock::new();
    G.get_or_init(load)
}

fn load() -> BTreeMap<String, Vec<String>> {
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .args(["--filter-platform", &triple])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of: BTreeMap<&str, &str> = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    v["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| name_of[d["pkg"].as_str().unwrap()].to_string())
                .collect();
            (name_of[n["id"].as_str().unwrap()].to_string(), deps)
        })
        .collect()
}

/// Everything `root` links, directly or not.
fn closure(g: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(p) = todo.pop() {
        for d in g.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn the_interposer_links_libc_and_the_shared_state_crates_only() {
    let g = graph();
    let allowed: BTreeSet<String> = [
        "libc",
        "gpuslice-ledger",
        "gpuslice-shm",
        "gpuslice-compute",
        "gpuslice-cuda-abi",
        "gpuslice-warden",
    ]
    .map(String::from)
    .into();
    let got = closure(g, "gpuslice-interposer");
    let extra: Vec<_> = got.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "libgpuslice.so runs inside every tenant process and must stay small: it now also links {extra:?}"
    );
}

#[test]
fn the_simulator_never_links_gpuslice_limits() {
    let g = graph();
    for sim in [
        "gpuslice-sim-cuda",
        "gpuslice-sim-nvml",
        "gpuslice-sim-state",
    ] {
        let got = closure(g, sim);
        for forbidden in ["gpuslice-ledger", "gpuslice-compute", "gpuslice-warden"] {
            assert!(
                !got.contains(forbidden),
                "{sim} links {forbidden}: the simulated GPU must know nothing of tenants or limits"
            );
        }
    }
}

#[test]
fn core_does_no_io() {
    let g = graph();
    let got = closure(g, "gpuslice-core");
    for forbidden in ["libc", "tokio", "hyper", "kube", "tonic", "gpuslice-shm"] {
        assert!(!got.contains(forbidden), "gpuslice-core links {forbidden}");
    }
}

#[test]
fn only_the_edges_know_the_kubernetes_wire_types() {
    let g = graph();
    for (pkg, deps) in g {
        for d in deps {
            let owner = match d.as_str() {
                // kubelet's device plugin and pod resources protos.
                "tonic" | "prost" | "tonic-prost" => ["gpuslice-node"].as_slice(),
                // The API server's types: the node agent and the scheduler talk to it.
                "kube" | "k8s-openapi" => ["gpuslice-node", "gpuslice-scheduler"].as_slice(),
                _ => continue,
            };
            assert!(
                owner.contains(&pkg.as_str()) || !pkg.starts_with("gpuslice"),
                "{pkg} depends on {d}, which only {owner:?} may use"
            );
        }
    }
}

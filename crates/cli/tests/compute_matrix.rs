//! The compute matrix, end to end: each row of `gpuslice bench isolation --quick` (and a few
//! rows of the full matrix that hold today) is a test of its own, so that a failure names the
//! workload shape that broke the share. Every row runs
//! real programs (`gpuslice-probe shape`) under `gpuslice run --sim` with the real interposer,
//! and is judged by the benchmark from the simulator's own timeline: each tenant within 3
//! percentage points of its target in every window, the GPU at least 95 % busy while tenants
//! have work (fixed mode: capped tenants at their quota), and a high-priority loop's p99 within
//! one low-priority kernel of its p99 alone.
//!
//! Rows run one at a time (they time a shared GPU on a shared CPU). A row that misses is run
//! up to twice more before the test fails: a share over a one-second window on a loaded 2-core
//! machine is a statistical property (a tenant starved of CPU for a few hundred ms leaves the
//! GPU idle in that window whatever the gate does), while a broken gate misses every attempt,
//! by far more than the margin (the ignored rows below miss by 8 to 68 points every time).

mod common;
use common::*;
use std::process::Command;
/// Runs one row of the quick matrix and returns its JSON verdict.
fn run_row(id: &str) -> serde_json::Value {
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("matrix");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(gpuslice())
        .args(["bench", "isolation", "--quick", "--json", "--only", id])
        .env("TMPDIR", &tmp)
        .env_remove("GPUSLICE_STATE_DIR")
        .env_remove("GPUSLICE_COMPUTE_DIR")
        .env_remove("GPUSLICE_SIM_STATE")
        .env_remove("GPUSLICE_LEDGER")
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["row"] == id)
        .unwrap_or_else(|| panic!("no verdict for {id}:\n{text}"))
}

const ATTEMPTS: usize = 3;

fn holds(id: &str) {
    let _one = serial();
    let mut misses = Vec::new();
    for _ in 0..ATTEMPTS {
        let v = run_row(id);
        if v["pass"] == true {
            return;
        }
        eprintln!("{id} missed: {v}");
        misses.push(v.to_string());
    }
    panic!("{id} missed {ATTEMPTS} times:\n{}", misses.join("\n"));
}

#[test]
fn unknown_row_is_refused_naming_the_rows() {
    let out = Command::new(gpuslice())
        .args(["bench", "isolation", "--quick", "--only", "sync3-30-70"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("sync3-30-70") && err.contains("sync4-30-70"),
        "{err}"
    );
}

#[test]
fn gate_cost_is_measured_side_by_side() {
    let _one = serial();
    let v = run_row("overhead");
    for k in ["direct_ns", "memory_only_ns", "gate_ns"] {
        let ns = v[k].as_f64().unwrap_or(-1.0);
        assert!(ns > 0.0 && ns < 1e6, "{k}: {v}");
    }
}

// Rows of the quick matrix. Those marked `ignore` miss with the compute arbiter as it is (the
// figures are one run of `gpuslice bench isolation --quick` on a quiet 2-core machine); run
// them with `--ignored`.

#[test]
#[ignore = "misses with the arbiter: 27.4/61.9 (worst window 10 points off), GPU 89 % busy"]
fn sync_every_1_30_70() {
    holds("sync1-30-70");
}

#[test]
#[ignore = "misses with the arbiter by a hair: 28.0-29.5/67.3-67.8, worst window 2.6-3.0 points off, GPU 96-97 % busy"]
fn sync_every_4_30_70() {
    holds("sync4-30-70");
}

#[test]
#[ignore = "misses with the arbiter: 95.8/4.1 instead of 30/70"]
fn kernels_200ms_vs_1ms_30_70() {
    holds("k200ms-vs-1ms-30-70");
}

#[test]
#[ignore = "misses with the arbiter: 45.3/54.3 instead of 30/70"]
fn graphs_of_100_vs_plain_30_70() {
    holds("graph100x1ms-vs-plain-30-70");
}

#[test]
#[ignore = "misses with the arbiter: 30.3/66.0, worst window 6.9 points off, GPU 94.9 % busy"]
fn four_processes_vs_one_30_70() {
    holds("procs4-vs-1-30-70");
}

#[test]
#[ignore = "misses with the arbiter by a hair: 29.8/67.6, worst window 3.0 points off, GPU 97 % busy"]
fn eight_threads_own_streams_30_70() {
    holds("threads8-30-70");
}

#[test]
#[ignore = "passed once with the arbiter (30.3/67.2, worst window 3.0 points off): not yet a gate"]
fn three_contexts_30_70() {
    holds("contexts3-30-70");
}

#[test]
#[ignore = "passed once with the arbiter (32.0/68.0, worst window 2.0 points off): not yet a gate"]
fn fixed_30_70_with_200ms_kernels() {
    holds("fixed-30-70-200ms");
}

#[test]
#[ignore = "misses with the arbiter: p99 4.04 ms next to 1 ms low kernels (3.83 ms alone, bound 5.33 ms) but the GPU is 84.5 % busy"]
fn high_priority_p99_next_to_low_training() {
    holds("prio-low1ms");
}

// Rows of the full matrix that hold today: the new gate must keep them.

#[test]
fn kernels_1ms_30_70() {
    holds("kernel1ms-30-70");
}

#[test]
fn one_process_vs_four_30_70() {
    holds("procs1-vs-4-30-70");
}

#[test]
fn fixed_30_alone_is_capped_on_an_idle_gpu() {
    holds("fixed-30-alone");
}

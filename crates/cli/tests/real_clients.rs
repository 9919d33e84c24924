//! Monitoring tools no one here wrote, as users run them: nvitop and gpustat (with NVIDIA's
//! `nvidia-ml-py` binding they load), installed at pinned versions by
//! `scripts/fetch-py-clients.sh`. On the simulated GPU they must show the board; inside a
//! tenant (`gpuslice run --gpu-memory 1GiB`) they must show the cap as the GPU's total, the
//! tenant's own processes only, and no traceback.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The tools' bin directory, or `None` (the test says it skipped) when they could not be had.
fn clients() -> Option<PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/fetch-py-clients.sh"))
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("nvitop/gpustat unavailable: skipped");
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn clean(label: &str, out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("Traceback"),
        "{label}: {}\n{err}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nvitop_and_gpustat_show_the_board_and_inside_a_tenant_only_the_tenant() {
    let Some(bin) = clients() else { return };
    let m = Machine::new("clients");
    let gpustat = bin.join("gpustat");
    let nvitop = bin.join("nvitop");

    // Directly on the simulated GPU: the whole board.
    let mut c = Command::new(&gpustat);
    c.arg("--json");
    m.env(&mut c);
    c.env("LD_LIBRARY_PATH", m.sim_lib_dir());
    let v: serde_json::Value =
        serde_json::from_str(&clean("gpustat on the board", &c.output().unwrap())).unwrap();
    assert_eq!(v["gpus"][0]["memory.total"], 81920, "{v}");
    assert_eq!(
        v["driver_version"],
        gpuslice_sim_state::DRIVER_VERSION,
        "{v}"
    );

    // A process of another tenant holds memory on the same GPU meanwhile.
    let mut other = m
        .tenant(
            "other",
            "2GiB",
            &[&probe(), "fill", "alloc", "256MiB", "--hold", "20"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Inside a 1 GiB tenant with a process of its own holding memory.
    let script = format!(
        "{p} fill alloc 256MiB --hold 20 >/dev/null 2>&1 & sleep 2; \
         echo MINE $!; {g} --json; echo END; {n} --once; kill $!",
        p = probe(),
        g = gpustat.display(),
        n = nvitop.display()
    );
    let out = m
        .tenant("mine", "1GiB", &["sh", "-c", &script])
        .output()
        .unwrap();
    let _ = other.kill();
    let _ = other.wait();
    let text = clean("gpustat and nvitop in a tenant", &out);
    let mine: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MINE "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let json = text
        .split("END")
        .next()
        .and_then(|s| s.find('{').map(|i| &s[i..]))
        .unwrap_or_else(|| panic!("{text}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let gpu = &v["gpus"][0];
    assert_eq!(gpu["memory.total"], 1024, "the cap is the GPU's total: {v}");
    let pids: Vec<u64> = gpu["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert_eq!(pids, [mine], "only the tenant's own process: {v}");
    let top = text.split("END").nth(1).unwrap_or_default();
    assert!(top.contains("/ 1024MiB"), "nvitop shows the cap: {top}");
}

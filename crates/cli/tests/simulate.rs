//! `gpuslice simulate` and `gpuslice scheduler` as a user runs them.

use std::process::Command;

fn gpuslice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gpuslice"))
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn row(out: &str, label: &str) -> Vec<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row {label} in\n{out}"));
    line[label.len()..]
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches('%').parse::<f64>().ok())
        .collect()
}

#[test]
fn shipped_trace_binpack_fragments_less_and_slices_place_more_than_whole_gpus() {
    let r = root();
    let out = gpuslice()
        .args(["simulate", "--cluster"])
        .arg(r.join("deploy/sim/cluster.json"))
        .arg("--trace")
        .arg(r.join("deploy/sim/trace.json"))
        .args(["--policy", "binpack,spread,whole"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let placed = row(&text, "pods placed");
    let frag = row(&text, "fragmentation (mean)");
    let (b, s, w) = (placed[0], placed[1], placed[2]);
    assert!(b > w && s > w, "placed: {placed:?}\n{text}");
    assert!(frag[0] < frag[1], "fragmentation: {frag:?}\n{text}");
    assert!(text.contains("over time"), "{text}");
}

#[test]
fn bad_input_exits_2_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("gpuslice-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = dir.join("c.json");
    std::fs::write(&cluster, r#"{"version": 1, "nodes": [{"name": "n", "gpus": [{"uuid": "g", "index": 0, "model": "m", "memoryMiB": 0, "sms": 1, "slices": 1, "mode": "shared"}]}]}"#).unwrap();
    let trace = dir.join("t.json");
    std::fs::write(&trace, r#"{"pods": []}"#).unwrap();
    let out = gpuslice()
        .args(["simulate", "--cluster"])
        .arg(&cluster)
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gpus[0].memoryMiB"), "{err}");
    std::fs::write(&trace, r#"{"pods": [{"name": "p", "arrival": 0, "duration": 5, "containers": [{"name": "c", "resources": {"gpuslice.io/gpu": "x"}}]}]}"#).unwrap();
    std::fs::write(
        &cluster,
        std::fs::read_to_string(root().join("deploy/sim/cluster.json")).unwrap(),
    )
    .unwrap();
    let out = gpuslice()
        .args(["simulate", "--cluster"])
        .arg(&cluster)
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pods[0]") && err.contains("gpuslice.io/gpu"),
        "{err}"
    );
    let out = gpuslice()
        .args(["scheduler", "--listen", "127.0.0.1:0", "--cluster-file"])
        .arg(&trace)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cluster file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = dir.join("cfg.json");
    std::fs::write(&cfg, r#"{"nodePolicy": "tight"}"#).unwrap();
    let out = gpuslice()
        .args(["scheduler", "--listen", "127.0.0.1:0", "--cluster-file"])
        .arg(&cluster)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tight"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The webhook refuses to start without a usable certificate, naming the flag.
    let out = gpuslice()
        .args([
            "scheduler",
            "--webhook-listen",
            "127.0.0.1:0",
            "--webhook-tls-cert",
        ])
        .arg(dir.join("missing.crt"))
        .arg("--webhook-tls-key")
        .arg(dir.join("missing.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--webhook-tls-cert") && err.contains("missing.crt"),
        "{err}"
    );
    let out = gpuslice()
        .args(["scheduler", "--webhook-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--webhook-tls-cert"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

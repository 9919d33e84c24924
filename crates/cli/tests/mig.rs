//! `gpuslice mig` end to end: the real binary, through the simulated NVML, with the simulated
//! GPU's state shared between the commands and helper processes.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;

const H100X2: &str = "count=2,memory=80GiB,sms=132,name=NVIDIA H100 80GB HBM3";
const A100: &str = "count=1,memory=40GiB,sms=108,name=NVIDIA A100-SXM4-40GB";

const CONFIG: &str = r#"
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  mixed:
    - devices: [0]
      mig-enabled: true
      mig-devices:
        "3g.40gb": 1
        "1g.10gb": 4
    - devices: [1]
      mig-enabled: false
  halves:
    - devices: [0]
      mig-enabled: true
      mig-devices:
        "3g.40gb": 2
    - devices: [1]
      mig-enabled: false
  halves-and-sevenths:
    - devices: [0]
      mig-enabled: true
      mig-devices:
        "3g.40gb": 2
    - devices: [1]
      mig-enabled: true
      mig-devices:
        "1g.10gb": 7
"#;

fn mig(m: &Machine, args: &[&str]) -> Output {
    let mut c = Command::new(gpuslice());
    c.arg("mig").args(args);
    m.env(&mut c);
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn expect(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
}

fn file(m: &Machine, name: &str, body: &str) -> PathBuf {
    let p = m.dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn apply(m: &Machine, f: &Path, c: &str) -> Output {
    mig(m, &["apply", "--sim", "-f", f.to_str().unwrap(), "-c", c])
}

fn assert_cfg(m: &Machine, f: &Path, c: &str) -> Output {
    mig(m, &["assert", "--sim", "-f", f.to_str().unwrap(), "-c", c])
}

/// `gpuslice mig list --sim`: one JSON object per GPU.
fn list(m: &Machine) -> Vec<Value> {
    let o = mig(m, &["list", "--sim"]);
    expect(&o, 0);
    json_lines(&o)
}

fn mig_devices(gpu: &Value) -> Vec<(String, u64)> {
    gpu["mig_devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["uuid"].as_str().unwrap().to_string(),
                u(d, "memory_bytes"),
            )
        })
        .collect()
}

#[test]
fn apply_assert_export_and_reapply() {
    let m = Machine::new("mig-apply").with_devices(H100X2);
    let f = file(&m, "mig.yaml", CONFIG);

    // Fresh GPUs: MIG off, so `mixed` does not hold yet and `all-disabled` does.
    let o = assert_cfg(&m, &f, "mixed");
    expect(&o, 1);
    assert!(
        stdout(&o).contains("GPU 0: MIG is disabled"),
        "{}",
        text(&o)
    );
    expect(&assert_cfg(&m, &f, "all-disabled"), 0);

    let o = apply(&m, &f, "mixed");
    expect(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("GPU 0: enable MIG"), "{out}");
    assert_eq!(out.matches("create GPU instance").count(), 5, "{out}");
    expect(&assert_cfg(&m, &f, "mixed"), 0);
    let o = assert_cfg(&m, &f, "all-disabled");
    expect(&o, 1);
    assert!(stdout(&o).contains("GPU 0: MIG is enabled"), "{}", text(&o));

    // MIG devices appear through NVML, each with its own UUID and its profile's memory.
    let gpus = list(&m);
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0]["mig_enabled"], true);
    assert_eq!(gpus[1]["mig_enabled"], false);
    assert!(mig_devices(&gpus[1]).is_empty());
    let devs = mig_devices(&gpus[0]);
    assert_eq!(devs.len(), 5, "{devs:?}");
    let mut uuids: Vec<&str> = devs.iter().map(|d| d.0.as_str()).collect();
    assert!(uuids.iter().all(|u| u.starts_with("MIG-")), "{uuids:?}");
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 5, "MIG UUIDs are distinct");
    let mut mem: Vec<u64> = devs.iter().map(|d| d.1).collect();
    mem.sort();
    // H100-80GB: 1g.10gb has 9984 MiB, 3g.40gb 40448 MiB (`nvidia-smi mig -lgip`).
    assert_eq!(
        mem,
        vec![9984 * MIB, 9984 * MIB, 9984 * MIB, 9984 * MIB, 40448 * MIB]
    );

    // Export describes exactly this; the exported file asserts, as YAML and as JSON.
    let o = mig(&m, &["export", "--sim"]);
    expect(&o, 0);
    let exported = stdout(&o);
    assert!(exported.contains("version: v1"), "{exported}");
    assert!(exported.contains("1g.10gb: 4"), "{exported}");
    assert!(exported.contains("3g.40gb: 1"), "{exported}");
    let ef = file(&m, "exported.yaml", &exported);
    expect(&assert_cfg(&m, &ef, "current"), 0);
    let jf = file(
        &m,
        "mixed.json",
        r#"{"version": "v1", "mig-configs": {"j": [
            {"devices": [0], "mig-enabled": true, "mig-devices": {"1g.10gb": 4, "3g.40gb": 1}},
            {"devices": [1], "mig-enabled": false}]}}"#,
    );
    expect(&assert_cfg(&m, &jf, "j"), 0);

    // A second apply changes nothing: same instances, same UUIDs.
    let o = apply(&m, &f, "mixed");
    expect(&o, 0);
    assert!(stdout(&o).contains("nothing to do"), "{}", text(&o));
    assert_eq!(mig_devices(&list(&m)[0]), devs);

    // To two halves: the 3g.40gb stays (same UUID), the four 1g.10gb go, one 3g.40gb is added.
    let kept = devs.iter().find(|d| d.1 == 40448 * MIB).unwrap().clone();
    let o = apply(&m, &f, "halves");
    expect(&o, 0);
    let out = stdout(&o);
    assert_eq!(
        out.matches("destroy GPU instance 1g.10gb").count(),
        4,
        "{out}"
    );
    assert_eq!(out.matches("destroy GPU instance").count(), 4, "{out}");
    assert_eq!(
        out.matches("create GPU instance 3g.40gb").count(),
        1,
        "{out}"
    );
    expect(&assert_cfg(&m, &f, "halves"), 0);
    let devs = mig_devices(&list(&m)[0]);
    assert_eq!(devs.len(), 2);
    assert!(devs.contains(&kept), "{devs:?} lost {kept:?}");

    // And back to MIG off everywhere.
    expect(&apply(&m, &f, "all-disabled"), 0);
    expect(&assert_cfg(&m, &f, "all-disabled"), 0);
    assert!(mig_devices(&list(&m)[0]).is_empty());
}

/// A process holding memory on GPU 1 makes enabling MIG there fail (IN_USE, as on real
/// hardware). By then GPU 0 has already been changed; apply must put it back as it was.
#[test]
fn a_failing_step_rolls_everything_back() {
    let m = Machine::new("mig-rollback").with_devices(H100X2);
    let f = file(&m, "mig.yaml", CONFIG);
    expect(&apply(&m, &f, "mixed"), 0);
    let before_devs = mig_devices(&list(&m)[0]);
    let before = stdout(&mig(&m, &["export", "--sim"]));

    let mut holder = Command::new(probe());
    holder
        .args(["hold", "1GiB"])
        .env("LD_LIBRARY_PATH", m.sim_lib_dir())
        .env("CUDA_VISIBLE_DEVICES", "1")
        .stdout(Stdio::piped());
    m.env(&mut holder);
    let mut holder = holder.spawn().unwrap();
    let line = BufReader::new(holder.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    assert!(line.contains("\"error\":0"), "holder: {line}");

    let o = apply(&m, &f, "halves-and-sevenths");
    holder.kill().unwrap();
    holder.wait().unwrap();
    expect(&o, 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("GPU 1: enable MIG failed"), "{}", text(&o));
    assert!(err.contains("In use"), "{}", text(&o));
    assert!(err.contains("rolled back"), "{}", text(&o));
    // The steps on GPU 0 did run before the failure (and were undone).
    assert!(!err.contains("rolled back the 0 step"), "{}", text(&o));

    expect(&assert_cfg(&m, &f, "mixed"), 0);
    assert_eq!(stdout(&mig(&m, &["export", "--sim"])), before);
    let after_devs = mig_devices(&list(&m)[0]);
    assert_eq!(after_devs.len(), before_devs.len());
    // The kept 3g.40gb was never touched.
    let big = |d: &Vec<(String, u64)>| d.iter().find(|x| x.1 == 40448 * MIB).cloned();
    assert_eq!(big(&after_devs), big(&before_devs));

    // With the GPU free, the same apply succeeds.
    expect(&apply(&m, &f, "halves-and-sevenths"), 0);
    expect(&assert_cfg(&m, &f, "halves-and-sevenths"), 0);
}

#[test]
fn a100_seven_slices_have_their_own_uuids_and_memory() {
    let m = Machine::new("mig-a100").with_devices(A100);
    let f = file(
        &m,
        "a100.yaml",
        "version: v1\nmig-configs:\n  sevenths:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n        1g.5gb: 7\n",
    );
    expect(&apply(&m, &f, "sevenths"), 0);
    let gpus = list(&m);
    let devs = mig_devices(&gpus[0]);
    assert_eq!(devs.len(), 7);
    // A100-40GB 1g.5gb: 4864 MiB.
    assert!(devs.iter().all(|d| d.1 == 4864 * MIB), "{devs:?}");
    let mut u: Vec<&String> = devs.iter().map(|d| &d.0).collect();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), 7);
    // One more does not fit: bad input, nothing changes.
    let g = file(
        &m,
        "too-many.yaml",
        "version: v1\nmig-configs:\n  x:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n        1g.5gb: 7\n        2g.10gb: 1\n",
    );
    let o = apply(&m, &g, "x");
    expect(&o, 2);
    expect(&assert_cfg(&m, &f, "sevenths"), 0);
}

#[test]
fn bad_input_exits_2_naming_what_is_accepted() {
    let m = Machine::new("mig-bad").with_devices(H100X2);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["validate", "--model", "T4", "1g.10gb"], "accepted"),
        (
            vec!["plan", "--model", "B200", "--demand", "1g.10gb=1"],
            "H100-80GB",
        ),
        (
            vec!["plan", "--model", "H100", "--demand", "1g.10gb"],
            "PROFILE=COUNT",
        ),
        (
            vec!["plan", "--model", "H100", "--demand", "1g.5gb=1"],
            "1g.10gb",
        ),
        (vec!["validate", "--model", "H100", "9g.90gb"], "3g.40gb"),
        (
            vec!["plan", "--model", "H100", "--demand", "x=1"],
            "accepted",
        ),
    ];
    for (args, needle) in cases {
        let o = mig(&m, &args);
        expect(&o, 2);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {}", text(&o));
    }

    let f = file(&m, "mig.yaml", CONFIG);
    let garbage = file(&m, "garbage.yaml", "mig-configs: [1, 2\n");
    let no_version = file(&m, "nov.yaml", "mig-configs: {}\n");
    let bad_profile = file(
        &m,
        "badp.yaml",
        "version: v1\nmig-configs:\n  x:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {\"1g.5gb\": 1}\n",
    );
    let bad_devices = file(
        &m,
        "badd.yaml",
        "version: v1\nmig-configs:\n  x:\n    - devices: some\n      mig-enabled: false\n",
    );
    for (path, conf, needle) in [
        (&garbage, "x", "mig-parted v1"),
        (&no_version, "x", "version"),
        (&f, "nonexistent", "all-disabled, halves"),
        (&bad_profile, "x", "accepted"),
        (&bad_devices, "x", "all"),
    ] {
        for cmd in ["apply", "assert"] {
            let o = mig(
                &m,
                &[cmd, "--sim", "-f", path.to_str().unwrap(), "-c", conf],
            );
            expect(&o, 2);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(needle), "{cmd} {conf}: {}", text(&o));
        }
    }
    // Nothing was changed by any of it.
    expect(&assert_cfg(&m, &f, "all-disabled"), 0);
}

#[test]
fn validate_and_plan_answer_without_a_gpu() {
    let m = Machine::new("mig-plan");
    let o = mig(
        &m,
        &["validate", "--model", "H100", "3g.40gb@4,1g.10gb,1g.10gb"],
    );
    expect(&o, 0);
    assert!(stdout(&o).contains("3g.40gb@4"), "{}", text(&o));
    let o = mig(
        &m,
        &[
            "validate",
            "--model",
            "H100",
            "2g.20gb,2g.20gb,2g.20gb,1g.10gb@6,1g.10gb",
        ],
    );
    expect(&o, 1);
    assert!(stdout(&o).contains("compute slices"), "{}", text(&o));
    let o = mig(&m, &["validate", "--model", "H100", "3g.40gb@4,2g.20gb@4"]);
    expect(&o, 1);
    assert!(stdout(&o).contains("overlap"), "{}", text(&o));

    let o = mig(
        &m,
        &[
            "plan",
            "--model",
            "H100-80GB",
            "--demand",
            "1g.10gb=3,3g.40gb=1",
            "--output",
            "json",
        ],
    );
    expect(&o, 0);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["feasible"], true);
    assert_eq!(v["instances"].as_array().unwrap().len(), 4);
    assert!(v["unplaced"].as_array().unwrap().is_empty());
    assert!(v["destroy"].as_array().unwrap().is_empty());

    let o = mig(
        &m,
        &[
            "plan",
            "--model",
            "H100",
            "--demand",
            "3g.40gb=2",
            "--current",
            "1g.10gb@0,3g.40gb@4",
            "--output",
            "json",
        ],
    );
    expect(&o, 0);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["destroy"][0]["profile"], "1g.10gb");
    assert_eq!(v["destroy"].as_array().unwrap().len(), 1);

    let o = mig(&m, &["plan", "--model", "H100", "--demand", "3g.40gb=3"]);
    expect(&o, 1);
    assert!(stdout(&o).contains("unplaced: 3g.40gb=1"), "{}", text(&o));
}

/// Entries of NVIDIA mig-parted's own `deployments/systemd/config-default.yaml` for the H200:
/// `all-1g.35gb` (no filter) and `all-balanced`, which picks the H200's layout by PCI device
/// ID only (H200 0x2335, H200 NVL 0x233B) beside the other boards' entries.
const NVIDIA_DEFAULT_H200: &str = r#"
version: v1
mig-configs:
  all-1g.35gb:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.35gb": 4
  all-balanced:
    - device-filter: ["0x233510DE", "0x233B10DE"]
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.18gb": 2
        "2g.35gb": 1
        "3g.71gb": 1
    - device-filter: ["0x232110DE", "0x233A10DE"]
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.12gb": 2
        "2g.24gb": 1
        "3g.47gb": 1
    - device-filter: ["0x233010DE", "0x233110DE", "0x232210DE", "0x20B210DE", "0x20B510DE", "0x20F310DE", "0x20F510DE", "0x232410DE"]
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.10gb": 2
        "2g.20gb": 1
        "3g.40gb": 1
"#;

/// On an H200, NVIDIA's configs must do what mig-parted does: `all-1g.35gb` makes four
/// 1g.35gb devices (the H200 table's maximum: two memory slices each), and `all-balanced`
/// is not reported as already matching while MIG is off.
#[test]
fn nvidia_default_configs_on_an_h200() {
    let m = Machine::new("mig-h200").with_devices("count=1,memory=141GiB,sms=132,name=NVIDIA H200");
    let f = file(&m, "config-default.yaml", NVIDIA_DEFAULT_H200);
    let o = assert_cfg(&m, &f, "all-balanced");
    expect(&o, 1);
    let o = apply(&m, &f, "all-balanced");
    expect(&o, 0);
    assert!(!stdout(&o).contains("nothing to do"), "{}", text(&o));
    expect(&assert_cfg(&m, &f, "all-balanced"), 0);
    let mut mem: Vec<u64> = mig_devices(&list(&m)[0]).iter().map(|d| d.1).collect();
    mem.sort();
    // H200 `-lgip`: 1g.18gb 16384 MiB, 2g.35gb 33024 MiB, 3g.71gb 71168 MiB.
    assert_eq!(
        mem,
        vec![16384 * MIB, 16384 * MIB, 33024 * MIB, 71168 * MIB]
    );

    expect(&apply(&m, &f, "all-1g.35gb"), 0);
    expect(&assert_cfg(&m, &f, "all-1g.35gb"), 0);
    let devs = mig_devices(&list(&m)[0]);
    assert_eq!(devs.len(), 4, "{devs:?}");
    assert!(devs.iter().all(|d| d.1 == 33024 * MIB), "{devs:?}");
}

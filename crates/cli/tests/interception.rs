//! Every way a program can reach the driver leads through the interposer: linking, dlopen +
//! dlsym, cuGetProcAddress (tested with the probe elsewhere), NVIDIA's own CUDA runtime, and NVML.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn a_program_linked_against_libcuda_is_capped() {
    let m = Machine::new("linked");
    let lib = m.sim_lib_dir();
    let exe = compile_c("linked", "linked", &["-L", lib.to_str().unwrap(), "-lcuda"]);
    let r = report(
        &m.tenant("linked", "2GiB", &[exe.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(u(&r, "error"), 2, "{r}");
    assert_eq!(u(&r, "granted") * 256 * MIB, 2 * GIB - CTX, "{r}");
    assert_eq!(u(&r, "total"), 2 * GIB);
    assert_eq!(u(&r, "device_total"), 2 * GIB);
    assert_eq!(u(&r, "free"), 0);
    // The same program without gpuslice sees the whole simulated device.
    let mut c = Command::new(&exe);
    m.env(&mut c);
    let r = report(&c.env("LD_LIBRARY_PATH", &lib).output().unwrap());
    assert_eq!(u(&r, "total"), 80 * GIB, "{r}");
}

#[test]
fn nvml_reports_the_tenants_view() {
    let m = Machine::new("nvml");
    let lib = m.sim_lib_dir();
    let exe = compile_c(
        "nvml",
        "nvml",
        &["-L", lib.to_str().unwrap(), "-lnvidia-ml"],
    );
    let p = probe();
    // One process of the tenant holds 1GiB while another asks NVML.
    let script = format!(
        "'{p}' hold 1GiB > /dev/null & h=$!; sleep 0.5; '{}'; kill $h",
        exe.display()
    );
    let out = m
        .tenant("nvml", "3GiB", &["sh", "-c", &script])
        .output()
        .unwrap();
    let r = report(&out);
    assert_eq!(u(&r, "error"), 0, "{r}");
    for sfx in ["", "_v2"] {
        assert_eq!(u(&r, &format!("total{sfx}")), 3 * GIB, "{r}");
        assert_eq!(u(&r, &format!("used{sfx}")), GIB + CTX, "{r}");
        assert_eq!(u(&r, &format!("free{sfx}")), 3 * GIB - GIB - CTX, "{r}");
    }
}

#[test]
fn dlsym_rtld_next_keeps_its_meaning_for_other_libraries() {
    let m = Machine::new("rtldnext");
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rtld-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = compile_c("next_a", "libnext_a.so", &["-shared", "-fPIC", "-ldl"]);
    let b = compile_c("next_b", "libnext_b.so", &["-shared", "-fPIC"]);
    let ldir = a.parent().unwrap().to_str().unwrap().to_string();
    assert_eq!(b.parent().unwrap(), Path::new(&ldir));
    let exe = compile_c(
        "next_main",
        "next_main",
        &[
            "-L",
            &ldir,
            "-Wl,--no-as-needed",
            "-lnext_a",
            "-lnext_b",
            &format!("-Wl,-rpath,{ldir}"),
        ],
    );
    let mut direct = Command::new(&exe);
    assert_eq!(
        report(&direct.output().unwrap())["value"],
        42,
        "the program itself is sound"
    );
    let r = report(
        &m.tenant("rtld", "1GiB", &[exe.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert_eq!(r["value"], 42, "{r}");
}

fn cudart() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lib = root.join(".cache/cuda-runtime/lib/libcudart.so.12");
    if !lib.exists() {
        let st = Command::new("bash")
            .arg(root.join("scripts/fetch-cuda-runtime.sh"))
            .status()
            .unwrap();
        assert!(st.success(), "fetching NVIDIA's CUDA runtime wheel");
    }
    lib
}

#[test]
fn nvidias_cuda_runtime_resolves_every_entry_point_through_the_interposer() {
    let m = Machine::new("cudart");
    let rt = cudart();
    let exe = compile_c("cudart", "cudart", &["-ldl"]);
    let trace = m.dir.join("lookups.txt");
    let sim_trace = m.dir.join("sim-lookups.txt");
    let out = m
        .tenant(
            "cudart",
            "1GiB",
            &[exe.to_str().unwrap(), rt.to_str().unwrap()],
        )
        .env("GPUSLICE_TRACE_LOOKUPS", &trace)
        .env("GPUSLICE_SIM_TRACE_LOOKUPS", &sim_trace)
        .output()
        .unwrap();
    let r = report(&out);
    // The runtime stops at its private export tables, which the simulator does not provide.
    assert_ne!(r["cudaGetDeviceCount"], serde_json::Value::Null, "{r}");
    let text = std::fs::read_to_string(&trace).expect("the interposer saw the runtime's lookups");
    let seen: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("cuGetProcAddress "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(
        seen.len() >= 300,
        "the runtime asks for hundreds of entry points; saw {}",
        seen.len()
    );
    // Every lookup is answered with the interposer's hook exactly when the interposer governs
    // the variant the driver resolves it to (by name, CUDA version and per-thread flag).
    let exported = interposer_exports();
    let mut hooked = 0;
    for line in text
        .lines()
        .filter_map(|l| l.strip_prefix("cuGetProcAddress "))
    {
        let f: Vec<&str> = line.split(' ').collect();
        let (name, version, flags, outcome) = (
            f[0],
            f[1].parse::<i32>().unwrap(),
            f[2].parse::<u64>().unwrap(),
            f[3],
        );
        if outcome == "failed" {
            continue;
        }
        let variant = gpuslice_cuda_abi::generated::resolve_symbol(name, version, flags & 2 != 0)
            .unwrap_or(name);
        let expect = if exported.contains(variant) {
            "hooked"
        } else {
            "passed"
        };
        assert_eq!(outcome, expect, "{line} (resolves to {variant})");
        hooked += (outcome == "hooked") as usize;
    }
    assert!(
        hooked >= 30,
        "the runtime fetched the governed functions through the interposer ({hooked})"
    );
    // Nothing reached the driver's cuGetProcAddress without passing the interposer.
    let sim = std::fs::read_to_string(&sim_trace).expect("the simulator saw lookups");
    let at_sim: std::collections::BTreeSet<&str> =
        sim.lines().filter_map(|l| l.split(' ').next()).collect();
    let missed: Vec<_> = at_sim.difference(&seen).collect();
    assert!(
        missed.is_empty(),
        "lookups that bypassed the interposer: {missed:?}"
    );
}

/// The driver and NVML functions the interposer exports.
fn interposer_exports() -> std::collections::BTreeSet<String> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(artifact("libgpuslice.so"))
        .output()
        .expect("nm (binutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|n| n.starts_with("cu") || n.starts_with("nvml"))
        .map(str::to_string)
        .collect()
}

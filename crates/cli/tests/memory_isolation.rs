//! Memory isolation, end to end: real processes under `gpuslice run` and the real interposer,
//! on the simulated GPU, through every allocation path and both ways of finding the driver.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Fills a 2GiB tenant through `path` and checks that it stops at the cap, not before, with
/// CUDA_ERROR_OUT_OF_MEMORY, sees the cap as its GPU size, and gets everything back on free.
fn fill_to_cap(m: &Machine, path: &str, via: &str) {
    let cap = 2 * GIB;
    let chunk = 256 * MIB;
    let out = m
        .tenant(
            path,
            "2GiB",
            &[&probe(), "--via", via, "fill", path, "256MiB"],
        )
        .output()
        .unwrap();
    let r = report(&out);
    let what = format!("{path} via {via}: {r}");
    assert!(out.status.success(), "{what}");
    assert_eq!(
        u(&r, "error"),
        2,
        "refused with CUDA_ERROR_OUT_OF_MEMORY: {what}"
    );
    let usable = cap - CTX;
    let granted = u(&r, "granted") * chunk;
    assert!(granted <= usable, "never more than the cap: {what}");
    assert!(
        granted + chunk > usable,
        "refused only at the cap, not before: {what}"
    );
    assert_eq!(
        u(&r, "total"),
        cap,
        "the tenant sees its cap as the GPU's size: {what}"
    );
    assert_eq!(
        u(&r, "free"),
        usable - granted,
        "free is what is left of the cap: {what}"
    );
    assert_eq!(
        u(&r, "free_after_release"),
        usable,
        "frees give everything back: {what}"
    );
}

#[test]
fn every_allocation_path_stops_at_the_cap_through_dlsym() {
    let m = Machine::new("paths-dlsym");
    for path in [
        "alloc", "pitch", "managed", "async", "pool", "vmm", "array", "array3d",
    ] {
        fill_to_cap(&m, path, "dlsym");
    }
}

#[test]
fn every_allocation_path_stops_at_the_cap_through_cu_get_proc_address() {
    let m = Machine::new("paths-procaddr");
    for path in [
        "alloc", "pitch", "managed", "async", "pool", "vmm", "array", "array3d",
    ] {
        fill_to_cap(&m, path, "procaddr");
    }
}

#[test]
fn the_four_argument_cu_get_proc_address_and_legacy_entry_points_are_governed() {
    let m = Machine::new("legacy");
    for path in ["alloc", "pool", "vmm"] {
        fill_to_cap(&m, path, "procaddr4");
    }
    // The pre-3.2 ABI (32-bit pointers and sizes), as old binaries still call it.
    for path in ["alloc_v1", "pitch_v1"] {
        for via in ["dlsym", "procaddr", "procaddr4"] {
            let out = m
                .tenant(
                    path,
                    "1GiB",
                    &[&probe(), "--via", via, "fill", path, "128MiB"],
                )
                .output()
                .unwrap();
            let r = report(&out);
            assert_eq!(u(&r, "error"), 2, "{path}/{via}: {r}");
            assert_eq!(u(&r, "granted") * 128 * MIB, GIB - CTX, "{path}/{via}: {r}");
            assert_eq!(u(&r, "free_after_release"), GIB - CTX, "{path}/{via}: {r}");
        }
    }
}

#[test]
fn a_forked_child_does_not_keep_a_dead_parents_memory() {
    // Record locks are not inherited across fork: a worker that outlives its parent must not
    // keep the parent's memory charged.
    let m = Machine::new("fork");
    let script = format!("'{}' forkhold 1GiB & sleep 60", probe());
    let mut run = m
        .tenant("fork", "2GiB", &["sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let held: serde_json::Value = serde_json::from_str(&read_line(&mut run)).unwrap();
    let ledger = m.ledger("fork").unwrap();
    let dev = gpuslice_ledger::Dev(0);
    assert_eq!(ledger.used(dev), GIB + CTX);
    unsafe { libc::kill(u(&held, "pid") as i32, libc::SIGKILL) };
    let t = Instant::now();
    while ledger.used(dev) != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the parent's memory is still charged while its child lives"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let child = u(&held, "child") as i32;
    assert_eq!(
        unsafe { libc::kill(child, 0) },
        0,
        "the child is still alive"
    );
    unsafe { libc::kill(child, libc::SIGKILL) };
    stop(&mut run);
}

#[test]
fn paths_that_keep_their_memory_stop_at_the_cap() {
    // Mipmapped arrays, graph allocation nodes and contexts are not freed by the probe.
    let m = Machine::new("paths-kept");
    for via in ["dlsym", "procaddr"] {
        for (path, chunk) in [
            ("mipmap", 256 * MIB),
            ("graph", 256 * MIB),
            ("context", CTX),
        ] {
            let out = m
                .tenant(
                    path,
                    "2GiB",
                    &[&probe(), "--via", via, "fill", path, &chunk.to_string()],
                )
                .output()
                .unwrap();
            let r = report(&out);
            assert_eq!(u(&r, "error"), 2, "{path}/{via}: {r}");
            let usable = 2 * GIB - CTX;
            let granted = u(&r, "granted") * chunk;
            assert!(
                granted <= usable && granted + chunk > usable,
                "{path}/{via}: {r}"
            );
            assert_eq!(u(&r, "free"), usable - granted, "{path}/{via}: {r}");
        }
    }
}

#[test]
fn the_tenant_sees_its_cap_and_never_more_than_the_device() {
    let m = Machine::new("view").with_devices("memory=16GiB,sms=132");
    let r = report(
        &m.tenant("small", "4GiB", &[&probe(), "info"])
            .output()
            .unwrap(),
    );
    assert_eq!(u(&r, "total"), 4 * GIB);
    assert_eq!(u(&r, "device_total"), 4 * GIB);
    assert_eq!(
        u(&r, "free"),
        4 * GIB - CTX,
        "the context's memory shows as used"
    );
    let r = report(
        &m.tenant("big", "100GiB", &[&probe(), "info"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        u(&r, "total"),
        16 * GIB,
        "a cap above the device is clamped to the device"
    );
    assert!(u(&r, "free") <= 16 * GIB - CTX);
}

#[test]
fn free_never_exceeds_what_the_device_really_has() {
    // Two tenants with 10GiB caps on a 12GiB device: the second sees only what is really free.
    let m = Machine::new("overcommit").with_devices("memory=12GiB,sms=132");
    let mut first = m
        .tenant("first", "10GiB", &[&probe(), "hold", "8GiB"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = read_line(&mut first);
    assert!(line.contains("\"error\":0"), "{line}");
    let r = report(
        &m.tenant("second", "10GiB", &[&probe(), "info"])
            .output()
            .unwrap(),
    );
    let really_free = 12 * GIB - 8 * GIB - 2 * CTX;
    assert_eq!(u(&r, "free"), really_free, "{r}");
    assert_eq!(u(&r, "total"), 10 * GIB);
    stop(&mut first);
}

/// Ends a tenant the way an operator would: SIGTERM to `gpuslice run`, which forwards it.
fn stop(child: &mut std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

fn read_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut s = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut s)
        .unwrap();
    s
}

#[test]
fn two_processes_racing_for_the_last_bytes_never_both_win() {
    let m = Machine::new("race");
    let p = probe();
    for round in 0..12 {
        let at = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            + Duration::from_millis(600))
        .as_nanos();
        // Cap 3GiB, two contexts: 2.5GiB left, and each of four processes asks for 1.5GiB.
        let script = format!("for i in 1 2 3 4; do '{p}' race 1536MiB {at} 300 & done; wait");
        let out = m
            .tenant("race", "3.25GiB", &["sh", "-c", &script])
            .output()
            .unwrap();
        let codes: Vec<u64> = json_lines(&out).iter().map(|v| u(v, "error")).collect();
        assert_eq!(
            codes.len(),
            4,
            "round {round}: {codes:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // 3.25GiB - 4 contexts = 2.25GiB: room for exactly one 1.5GiB allocation.
        assert_eq!(
            codes.iter().filter(|&&c| c == 0).count(),
            1,
            "round {round}: exactly one winner: {codes:?}"
        );
        assert_eq!(
            codes.iter().filter(|&&c| c == 2).count(),
            3,
            "round {round}: the rest refused: {codes:?}"
        );
    }
}

#[test]
fn a_sigkilled_process_returns_its_memory_within_a_second() {
    // The tenant lives on (a shell waits) while one of its processes, holding 3GiB, is killed.
    let m = Machine::new("sigkill");
    let script = format!("'{}' hold 3GiB & sleep 60", probe());
    let mut run = m
        .tenant("victim", "4GiB", &["sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = read_line(&mut run);
    let held: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(u(&held, "error"), 0, "{line}");
    let ledger = m.ledger("victim").expect("tenant ledger");
    let dev = gpuslice_ledger::Dev(0);
    assert_eq!(ledger.used(dev), 3 * GIB + CTX);
    let t = Instant::now();
    unsafe { libc::kill(u(&held, "pid") as i32, libc::SIGKILL) };
    while ledger.used(dev) != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "memory still charged after {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("returned after {:?}", t.elapsed());
    stop(&mut run);
}

#[test]
fn a_killed_tenant_exits_with_its_commands_fate() {
    let m = Machine::new("fate");
    let mut run = m
        .tenant("fate", "1GiB", &[&probe(), "hold", "256MiB"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let held: serde_json::Value = serde_json::from_str(&read_line(&mut run)).unwrap();
    unsafe { libc::kill(u(&held, "pid") as i32, libc::SIGKILL) };
    assert_eq!(run.wait().unwrap().code(), Some(128 + 9));
    assert!(
        m.ledger("fate").is_none(),
        "the tenant's files are removed when it ends"
    );
}

#[test]
fn processes_killed_at_random_moments_leak_nothing_and_block_nobody() {
    // A tenant keeps allocating and freeing in several processes; the test SIGKILLs them at
    // random moments, including mid-allocation. Afterwards the whole cap is available again,
    // in the tenant and on the device.
    let m = Machine::new("chaos").with_devices("memory=8GiB,sms=132");
    let p = probe();
    let script = format!(
        "for i in $(seq 1 24); do '{p}' fill alloc 64MiB & pid=$!; sleep 0.0$((RANDOM % 9)); kill -9 $pid 2>/dev/null; done; wait; \
         '{p}' fill alloc 256MiB"
    );
    let t = Instant::now();
    let out = m
        .tenant("chaos", "6GiB", &["bash", "-c", &script])
        .output()
        .unwrap();
    let last = json_lines(&out)
        .pop()
        .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    // Everything the killed processes held is back: the survivor fills the whole cap.
    assert_eq!(u(&last, "granted") * 256 * MIB, 6 * GIB - CTX, "{last}");
    assert!(t.elapsed() < Duration::from_secs(60), "nobody blocked");
}

#[test]
fn malformed_sizes_are_refused_with_status_2() {
    // `4GB` is not Kubernetes syntax and ambiguous; `0.5` and `100m` are fractions of a byte.
    for bad in [
        "4GB", "4K", "lots", "-1GiB", "0", "1.2.3GiB", "", "0.5", "100m",
    ] {
        let out = Command::new(gpuslice())
            .args(["run", "--sim", "--gpu-memory", bad, "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("iB")
                || err.contains("empty")
                || err.contains("zero")
                || err.contains("whole number"),
            "{bad}: says what is accepted: {err}"
        );
    }
    let out = Command::new(gpuslice())
        .args(["run", "--sim", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a tenant without a cap does not run"
    );
    let out = Command::new(gpuslice())
        .args([
            "run",
            "--sim",
            "--gpu-memory",
            "1GiB",
            "--devices",
            "zero",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn accepted_size_forms() {
    let m = Machine::new("sizes");
    for (s, bytes) in [
        ("4GiB", 4 * GIB),
        ("512MiB", 512 * MIB),
        ("4Gi", 4 * GIB),
        ("1.5GiB", 3 * GIB / 2),
        ("1073741824", GIB),
    ] {
        let r = report(&m.tenant("sizes", s, &[&probe(), "info"]).output().unwrap());
        assert_eq!(u(&r, "total"), bytes, "{s}");
    }
}

#[test]
fn the_commands_exit_status_is_the_runs() {
    let m = Machine::new("status");
    assert_eq!(
        m.tenant("s", "1GiB", &["sh", "-c", "exit 7"])
            .status()
            .unwrap()
            .code(),
        Some(7)
    );
    assert_eq!(
        m.tenant("s", "1GiB", &["sh", "-c", "kill -9 $$"])
            .status()
            .unwrap()
            .code(),
        Some(137)
    );
    let out = m
        .tenant("s", "1GiB", &["/nonexistent/program"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/program"));
}

#[test]
fn without_a_usable_ledger_cuda_refuses_to_start() {
    let m = Machine::new("noledger");
    let lib = m.sim_lib_dir();
    let junk = m.dir.join("junk");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    for ledger in [None, Some(m.dir.join("missing")), Some(junk)] {
        let mut c = Command::new(probe());
        c.arg("info");
        m.env(&mut c);
        c.env("LD_PRELOAD", artifact("libgpuslice.so"))
            .env("LD_LIBRARY_PATH", &lib);
        if let Some(l) = &ledger {
            c.env("GPUSLICE_LEDGER", l);
        }
        let out = c.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains("cuInit failed: 800"),
            "{ledger:?}: fails closed at init: {stdout}"
        );
        // GPUSLICE_LEDGER grants nothing, whatever it names: limits come from gpuslice run.
        assert!(
            stderr.contains("gpuslice:") && stderr.contains("no gpuslice limits"),
            "{ledger:?}: says why: {stderr}"
        );
    }
}

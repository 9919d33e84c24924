//! A tenant's limits come from `gpuslice run` (its warden), never from anything the tenant can
//! change: its environment, its ledger file, a nested `gpuslice run`, or `CUDA_VISIBLE_DEVICES`.
//! Each test is what a careless or hostile tenant would try.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes a `fill alloc CHUNK` run was granted, and its report.
fn granted(out: &std::process::Output) -> (u64, serde_json::Value) {
    let r = report(out);
    (u(&r, "bytes"), r)
}

#[test]
fn the_environment_grants_nothing() {
    let m = Machine::new("envforge");
    // A well-formed ledger with a 64 GiB cap, as a tenant could make for itself.
    let forged = m.dir.join("forged");
    let l = gpuslice_ledger::Ledger::create(
        &forged,
        &gpuslice_ledger::TenantSpec {
            name: "forged".into(),
            memory_cap: 64 * GIB,
            context_overhead: CTX,
            allowed: vec![],
        },
    )
    .unwrap();
    drop(l);
    let mut c = Command::new(probe());
    c.args(["fill", "alloc", "256MiB"]);
    m.env(&mut c);
    c.env("LD_PRELOAD", artifact("libgpuslice.so"))
        .env("LD_LIBRARY_PATH", m.sim_lib_dir())
        .env("GPUSLICE_LEDGER", &forged);
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cuInit failed: 800"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no gpuslice limits"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_child_with_a_cleared_environment_keeps_the_tenant_cap() {
    let m = Machine::new("envi");
    let lib = artifact("libgpuslice.so");
    let sim = m.sim_lib_dir();
    // `env -i` drops every variable; the child re-adds only what it needs to find a driver.
    let out = m
        .tenant(
            "e",
            "1GiB",
            &[
                "env",
                "-i",
                &format!("LD_PRELOAD={}", lib.display()),
                &format!("LD_LIBRARY_PATH={}", sim.display()),
                &format!("GPUSLICE_SIM_STATE={}", m.dir.join("sim-gpu").display()),
                &probe(),
                "fill",
                "alloc",
                "256MiB",
            ],
        )
        .output()
        .unwrap();
    let (bytes, r) = granted(&out);
    assert_eq!(bytes, GIB - CTX, "capped as its tenant: {r}");
    assert_eq!(u(&r, "total"), GIB, "{r}");
}

#[test]
fn a_tenant_that_rewrites_its_ledger_gains_nothing() {
    let m = Machine::new("rewrite");
    let child = m
        .tenant(
            "w",
            "1GiB",
            &[
                "sh",
                "-c",
                &format!("sleep 1; exec '{}' fill alloc 256MiB", probe()),
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The tenant's processes can write their ledger file (same user): raise the header's cap
    // to 64 GiB, as a tenant trying to lift its own limit would.
    let deadline = Instant::now() + Duration::from_secs(10);
    let path = loop {
        if let Some(l) = m.ledger("w") {
            break l.path().to_path_buf();
        }
        assert!(
            Instant::now() < deadline,
            "the tenant's ledger never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // Header: magic u64, version u32, allowed_count u32, memory_cap u64.
        f.write_all_at(&(64 * GIB).to_le_bytes(), 16).unwrap();
    }
    assert_eq!(m.ledger("w").unwrap().spec().memory_cap, 64 * GIB);
    let out = child.wait_with_output().unwrap();
    let (bytes, r) = granted(&out);
    assert_eq!(bytes, GIB - CTX, "the cap it was given still holds: {r}");
}

#[test]
fn a_nested_run_stays_within_the_outer_cap() {
    let m = Machine::new("nested");
    let gs = gpuslice();
    let gs = gs.to_str().unwrap();
    let out = m
        .tenant(
            "outer",
            "1GiB",
            &[
                gs,
                "run",
                "--sim",
                "--gpu-memory",
                "64GiB",
                "--name",
                "inner",
                "--",
                &probe(),
                "fill",
                "alloc",
                "256MiB",
            ],
        )
        .output()
        .unwrap();
    let (bytes, r) = granted(&out);
    assert_eq!(bytes, GIB - CTX, "64 GiB asked inside a 1 GiB tenant: {r}");
    assert_eq!(u(&r, "total"), GIB, "the view is the outer cap: {r}");

    // Two nested tenants share the outer budget: the first holds 512 MiB (and a context), the
    // second gets what is left of 1.5 GiB, not a fresh 1 GiB of its own.
    let script = format!(
        "'{gs}' run --sim --gpu-memory 1GiB --name a -- '{p}' hold 512MiB > /dev/null & \
         sleep 1.5; '{gs}' run --sim --gpu-memory 1GiB --name b -- '{p}' fill alloc 128MiB; kill %1",
        p = probe()
    );
    let out = m
        .tenant("outer2", "1536MiB", &["bash", "-c", &script])
        .output()
        .unwrap();
    let (bytes, r) = granted(&out);
    assert_eq!(
        bytes,
        1536 * MIB - 2 * CTX - 512 * MIB,
        "the second nested tenant gets only what the outer one has left: {r}"
    );
}

#[test]
fn a_warden_answers_only_its_own_processes() {
    let m = Machine::new("foreign");
    let mut child = m.tenant("f", "1GiB", &["sleep", "5"]).spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match gpuslice_warden::client::warden(pid) {
            Err(e) => break e,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => panic!("the warden never listened"),
            Ok(Some(_)) => panic!("a process outside the tenant got its limits"),
        }
    };
    assert!(
        err.contains("not a process of this gpuslice run tenant"),
        "{err}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn devices_fill_the_allow_list() {
    let m = Machine::new("allow").with_devices("count=2,memory=80GiB");
    // Kept: the tenant sees GPU 1 only, as its device 0, with the whole cap.
    let out = m
        .tenant_with(
            &["--devices", "1"],
            "d",
            "1GiB",
            &[&probe(), "fill", "alloc", "256MiB"],
        )
        .output()
        .unwrap();
    let (bytes, r) = granted(&out);
    assert_eq!(bytes, GIB - CTX, "{r}");
    // Cleared: device 0 is now GPU 0, which the tenant was not given: nothing fits there, not
    // even a context.
    let out = m
        .tenant_with(
            &["--devices", "1"],
            "d2",
            "1GiB",
            &[
                "env",
                "-u",
                "CUDA_VISIBLE_DEVICES",
                &probe(),
                "fill",
                "alloc",
                "256MiB",
            ],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || stdout.contains("\"granted\":0"),
        "GPU 0 is outside the allow-list: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An index that does not exist is refused before anything starts.
    let out = m
        .tenant_with(&["--devices", "2"], "d3", "1GiB", &["true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no GPU 2"));
}

/// The supervisor ignores SIGINT and SIGQUIT (the terminal sends them to the whole foreground
/// group), but the command must not inherit that: Ctrl-C has to stop it. It is also started
/// with its exit status passed through, and a command that cannot be started is named.
#[test]
fn the_command_gets_default_signals_and_its_own_exit_status() {
    let m = Machine::new("signals");
    let out = m
        .tenant(
            "sig",
            "1GiB",
            &["sh", "-c", "grep SigIgn /proc/self/status; exit 7"],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let ignored = text
        .split_whitespace()
        .nth(1)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| panic!("no SigIgn line: {text}"));
    assert_eq!(
        ignored & 0b110,
        0,
        "SIGINT/SIGQUIT ignored in the command: {text}"
    );
    assert_eq!(out.status.code(), Some(7));
    // Interrupted, the command dies of SIGINT, and so does `run`'s status say.
    let mut c = m
        .tenant("sig2", "1GiB", &["sh", "-c", "kill -INT $$; sleep 5"])
        .spawn()
        .unwrap();
    let st = c.wait().unwrap();
    assert_eq!(st.code(), Some(128 + 2), "{st}");
    let out = m
        .tenant("sig3", "1GiB", &["no-such-command-anywhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-command-anywhere"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A user coming from HAMi-core keeps its variables: without `--gpu-memory`/`--gpu-compute`,
/// `gpuslice run` takes `CUDA_DEVICE_MEMORY_LIMIT(_<i>)` and `CUDA_DEVICE_SM_LIMIT` from its
/// own environment, in HAMi-core's grammar. Per-device values that differ, zero (HAMi-core's
/// "unlimited") and malformed ones are refused with status 2 naming the variable; with neither
/// flag nor variable, `run` refuses rather than run uncapped.
#[test]
fn hami_core_variables_stand_in_for_the_flags() {
    let m = Machine::new("hami");
    let run = |vars: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(gpuslice());
        c.args(["run", "--sim", "--name", "hami", "--"]).args(args);
        m.env(&mut c);
        c.env_remove("CUDA_DEVICE_MEMORY_LIMIT")
            .env_remove("CUDA_DEVICE_SM_LIMIT");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let p = probe();
    let fill: &[&str] = &[&p, "fill", "alloc", "256MiB"];
    for vars in [
        &[("CUDA_DEVICE_MEMORY_LIMIT", "1g")][..],
        &[("CUDA_DEVICE_MEMORY_LIMIT_0", "1024m")][..],
        &[
            ("CUDA_DEVICE_MEMORY_LIMIT", "1048576k"),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "1073741824"),
        ][..],
    ] {
        let out = run(vars, fill);
        let (bytes, r) = granted(&out);
        assert_eq!(bytes, GIB - CTX, "{vars:?}: {r}");
        assert_eq!(u(&r, "total"), GIB, "{vars:?}: {r}");
    }
    for (vars, names) in [
        (
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"),
                ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g"),
            ][..],
            &[
                "CUDA_DEVICE_MEMORY_LIMIT_0=1g",
                "CUDA_DEVICE_MEMORY_LIMIT_1=2g",
            ][..],
        ),
        (
            &[("CUDA_DEVICE_MEMORY_LIMIT", "0")][..],
            &["CUDA_DEVICE_MEMORY_LIMIT='0'"][..],
        ),
        (&[("CUDA_DEVICE_MEMORY_LIMIT", "1gb")][..], &["'1gb'"][..]),
        (
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT", "1g"),
                ("CUDA_DEVICE_SM_LIMIT", "150"),
            ][..],
            &["CUDA_DEVICE_SM_LIMIT='150'"][..],
        ),
        (&[][..], &["--gpu-memory"][..]),
    ] {
        let out = run(vars, &["true"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{vars:?}: {err}");
        for n in names {
            assert!(err.contains(n), "{vars:?}: {err}");
        }
    }
    // The SM limit becomes the compute quota, as `top` shows it.
    let mut c = Command::new(gpuslice());
    c.args(["run", "--sim", "--name", "hamism", "--", "sleep", "3"]);
    m.env(&mut c);
    c.env("CUDA_DEVICE_MEMORY_LIMIT", "1g")
        .env("CUDA_DEVICE_SM_LIMIT", "30")
        .stdout(Stdio::null());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let spec = loop {
        if let Some(Ok(Some(c))) = m.ledger("hamism").map(|l| l.compute()) {
            break c;
        }
        assert!(Instant::now() < deadline, "no ledger for the tenant");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(spec.quota, 30, "{spec:?}");
}

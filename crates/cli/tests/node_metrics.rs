//! The node agent's per-tenant compute metrics, end to end: a container the agent granted and a
//! plain `gpuslice run` tenant saturate one simulated GPU through the real interposer at 30/70,
//! and `/metrics` is scraped over TCP. Bounds are generous; exact shares are
//! `gpuslice bench isolation`'s business.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuslice_node::agent::{self, Options};
use gpuslice_node::assign::Source;
use gpuslice_node::config::NodeConfig;
use gpuslice_node::gpu::{Gpu, StaticGpus};

const DEADLINE: Duration = Duration::from_secs(30);

fn scrape(addr: std::net::SocketAddr) -> String {
    let t = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            assert!(
                out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
                "{out}"
            );
            return out;
        }
        assert!(t.elapsed() < DEADLINE, "metrics server never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `metric`'s value per tenant label.
fn values(body: &str, metric: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(metric)?.strip_prefix('{')?;
            let (labels, v) = rest.rsplit_once("} ")?;
            let tenant = labels
                .split("tenant=\"")
                .nth(1)?
                .split('"')
                .next()?
                .to_string();
            Some((tenant, v.trim().parse::<f64>().ok()?))
        })
        .collect()
}

/// The one value whose tenant label starts with `prefix`.
fn value(body: &str, metric: &str, prefix: &str) -> f64 {
    let v: Vec<f64> = values(body, metric)
        .into_iter()
        .filter(|(t, _)| t.starts_with(prefix))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(v.len(), 1, "one {metric} for {prefix}*:\n{body}");
    v[0]
}

/// Processes of the tenant named `prefix`* with a channel to the arbiter, by its figures.
fn processes(compute: &Path, prefix: &str) -> u32 {
    gpuslice_arbiter::status::read(&compute.join(gpuslice_arbiter::status::FILE))
        .iter()
        .filter(|r| r.name.starts_with(prefix))
        .map(|r| r.processes)
        .sum()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < DEADLINE, "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process of the granted container: its environment as the agent answered, with the
/// container's paths mapped back to the host's through the answer's mounts, and the tenant's
/// directory mounted where the interposer reads its limits (in a private mount namespace).
fn container_process(
    m: &Machine,
    resp: &gpuslice_node::pb::ContainerAllocateResponse,
    args: &[&str],
) -> Child {
    let dir = &resp
        .mounts
        .iter()
        .find(|m| m.container_path == gpuslice_node::allocate::CONTAINER_TENANT_DIR)
        .expect("the tenant's directory is mounted")
        .host_path;
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/gpuslice; \
         mount --bind '{dir}' /run/gpuslice; mount -o remount,bind,ro /run/gpuslice; \
         mount --bind '{dir}/ledger' /run/gpuslice/ledger; exec \"$0\" \"$@\""
    );
    let mut c = Command::new("unshare");
    c.args(["-rm", "sh", "-c", &script, &probe()]).args(args);
    m.env(&mut c);
    for (k, v) in &resp.envs {
        let host = resp.mounts.iter().find_map(|mount| {
            let rest = Path::new(v).strip_prefix(&mount.container_path).ok()?;
            let p = Path::new(&mount.host_path);
            Some(if rest.as_os_str().is_empty() {
                p.to_path_buf()
            } else {
                p.join(rest)
            })
        });
        match host {
            Some(p) => c.env(k, p),
            None => c.env(k, v),
        };
    }
    c.env("LD_LIBRARY_PATH", m.sim_lib_dir())
        .stdout(Stdio::null());
    c.spawn().unwrap()
}

fn kill(c: &mut Child) {
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    c.wait().unwrap();
}

#[test]
fn compute_share_and_throttled_time_per_tenant_in_metrics() {
    let m = Machine::new("node-metrics");
    let compute = m.dir.join("compute");
    // The agent's arbiter serves this test's directory, never the machine-wide one, and the
    // host tenant registers there.
    // The only test in this binary, so nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("GPUSLICE_COMPUTE_DIR", &compute) };
    let specs = gpuslice_sim_state::parse_devices("").unwrap();
    let sim = gpuslice_sim_state::Sim::open(&m.dir.join("sim-gpu"), &specs).unwrap();
    let spec = sim.spec(0);
    let uuid = spec.uuid.clone();

    let agent_dir = m.dir.join("agent");
    let sockets = agent_dir.join("plugins");
    std::fs::create_dir_all(&sockets).unwrap();
    let state = agent_dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let assignments = state.join("assignments.json");
    let assignment = serde_json::json!({"version": 1, "node": "node-a", "containers": [
        {"name": "main", "gpus": [{"uuid": uuid, "memoryMiB": 2048, "computePercent": 30}]}]});
    std::fs::write(
        &assignments,
        serde_json::to_vec(&serde_json::json!({"pods": [
            {"namespace": "team", "name": "c30", "uid": "uid-30", "assignment": assignment}]}))
        .unwrap(),
    )
    .unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let opts = Options {
        node_name: "node-a".into(),
        config_path: None,
        socket_dir: sockets.clone(),
        cdi_dir: agent_dir.join("cdi"),
        state_dir: state.clone(),
        metrics_addr: Some(addr),
        interposer: artifact("libgpuslice.so"),
        // Where this machine's `gpuslice run` tenants keep their ledgers.
        extra_tenant_dirs: vec![m.dir.join("state/tenants")],
        health_quiet: Duration::from_secs(3600),
        reload_every: Duration::from_secs(60),
        pod_resources_socket: sockets.join("no-pod-resources.sock"),
        reconcile_every: Duration::from_secs(3600),
        compute_dir: compute.clone(),
    };
    let gpu = Gpu {
        index: 0,
        uuid: uuid.clone(),
        model: spec.name.clone(),
        memory_bytes: spec.memory_bytes,
        sms: spec.sm_count,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = agent::start(
        &opts,
        NodeConfig::parse("version: v1\nslices: 4\n").unwrap(),
        Arc::new(StaticGpus(vec![gpu])),
        Source::File(assignments),
    )
    .unwrap();
    let resp = rt
        .block_on(shared.allocate("gpuslice.io/gpu", &[format!("{uuid}::0")]))
        .unwrap();
    std::thread::spawn(move || rt.block_on(agent::run(opts, shared)));

    // The container at 30 % (the agent's containers share in fixed mode) and a host tenant at
    // 70 %, both saturating the GPU.
    let mut c30 = container_process(&m, &resp, &["saturate", "60"]);
    wait_for("the container's first launch", || {
        processes(&compute, "team.c30.main") == 1
    });
    let mut host = Command::new(gpuslice());
    host.args([
        "run",
        "--sim",
        "--gpu-memory",
        "2GiB",
        "--gpu-compute",
        "70",
        "--share-mode",
        "fixed",
        "--name",
        "host70",
        "--",
    ])
    .arg(probe())
    .args(["saturate", "60"]);
    m.env(&mut host);
    let mut host = host.stdout(Stdio::null()).spawn().unwrap();
    wait_for("the host tenant's first launch", || {
        processes(&compute, "host70") == 1
    });
    std::thread::sleep(Duration::from_millis(2500));

    let share = "gpuslice_tenant_compute_share_ratio";
    let throttled = "gpuslice_tenant_throttled_seconds_total";
    let first = scrape(addr);
    std::thread::sleep(Duration::from_millis(2000));
    let second = scrape(addr);
    let (s30, s70) = (
        value(&second, share, "team.c30.main"),
        value(&second, share, "host70-"),
    );
    assert!(
        (0.15..=0.45).contains(&s30) && (0.5..=0.85).contains(&s70),
        "30/70 came out {s30:.2}/{s70:.2}:\n{second}"
    );
    // The container's series carry its pod; the host tenant's, its run directory's name.
    assert!(
        second.lines().any(|l| l.starts_with(share)
            && l.contains(
                "tenant=\"team.c30.main\",namespace=\"team\",pod=\"c30\",container=\"main\""
            )
            && l.contains(&format!("gpu=\"{uuid}\""))),
        "{second}"
    );
    let (t1, t2) = (
        value(&first, throttled, "team.c30.main"),
        value(&second, throttled, "team.c30.main"),
    );
    assert!(t1 > 0.0 && t2 > t1, "the 30 % tenant waits: {t1} then {t2}");
    assert!(value(&second, throttled, "host70-") >= value(&first, throttled, "host70-"));

    // The container's process dies: its time held back stays counted.
    kill(&mut c30);
    let third = scrape(addr);
    let t3 = value(&third, throttled, "team.c30.main");
    assert!(
        t3 >= t2,
        "throttled time went back from {t2} to {t3} when the process died"
    );
    // A new process of the container: the tenant's total still only grows.
    wait_for("the dead process's channel closed", || {
        processes(&compute, "team.c30.main") == 0
    });
    let mut again = container_process(&m, &resp, &["saturate", "60"]);
    wait_for("the new process's first launch", || {
        processes(&compute, "team.c30.main") == 1
    });
    std::thread::sleep(Duration::from_millis(1500));
    let fourth = scrape(addr);
    let t4 = value(&fourth, throttled, "team.c30.main");
    assert!(
        t4 >= t3,
        "throttled time went back from {t3} to {t4} after a new process started"
    );
    assert!(
        value(&fourth, share, "team.c30.main") > 0.05,
        "the new process runs again:\n{fourth}"
    );

    kill(&mut again);
    unsafe { libc::kill(host.id() as i32, libc::SIGTERM) };
    host.wait().unwrap();
    eprintln!(
        "shares {s30:.3}/{s70:.3}; 30 % tenant throttled {t1:.2}s, {t2:.2}s, after its process died {t3:.2}s, after a new one {t4:.2}s"
    );
}

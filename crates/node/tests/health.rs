//! GPU health end to end: the agent on the simulated GPU, its health fed by NVML's event API
//! (`gpuslice-nvml` over the simulator's `libnvidia_ml.so`), faults raised in the simulator's
//! shared state the way a GPU raises them, and a fake kubelet watching ListAndWatch. One test
//! per process: the simulated NVML attaches to one state file per process.

mod common;
use common::{kubelet, sim_nvml};
use std::time::Duration;

use gpuslice_node::agent::{self, Options};
use gpuslice_node::assign::Source;
use gpuslice_node::config::NodeConfig;
use gpuslice_node::gpu::NvmlGpus;
use gpuslice_node::health::NvmlEvents;
use gpuslice_node::pb;
use gpuslice_node::plugin::{socket_name, unix_channel};
use gpuslice_sim_state::{GpuEvent, Sim};
use tokio::sync::mpsc;

const GPU0: &str = "GPU-4ea10000-0000-4000-8000-4ea100000000";
const GPU1: &str = "GPU-4ea10001-0000-4000-8000-4ea100000001";
const H100: &str = "NVIDIA H100 80GB HBM3";
const DEADLINE: Duration = Duration::from_secs(30);

async fn next_registration(rx: &mut mpsc::UnboundedReceiver<pb::RegisterRequest>) -> String {
    common::next_registration(rx, DEADLINE).await.resource_name
}

type Watch = tonic::Streaming<pb::ListAndWatchResponse>;

async fn watch(sockets: &std::path::Path, resource: &str) -> Watch {
    let mut c = pb::device_plugin_client::DevicePluginClient::new(
        unix_channel(&sockets.join(socket_name(resource)))
            .await
            .unwrap(),
    );
    c.list_and_watch(pb::Empty {}).await.unwrap().into_inner()
}

/// (device id, healthy) of one ListAndWatch update.
fn health(m: &pb::ListAndWatchResponse) -> Vec<(String, bool)> {
    m.devices
        .iter()
        .map(|d| {
            assert!(
                d.health == "Healthy" || d.health == "Unhealthy",
                "{}",
                d.health
            );
            (d.id.clone(), d.health == "Healthy")
        })
        .collect()
}

/// Whether every device of GPU `uuid` in the update is healthy (`Some`), or none is.
fn gpu_healthy(m: &[(String, bool)], uuid: &str) -> Option<bool> {
    let of: Vec<bool> = m
        .iter()
        .filter(|(id, _)| id.starts_with(uuid))
        .map(|(_, h)| *h)
        .collect();
    assert!(!of.is_empty(), "no device of {uuid} in {m:?}");
    if of.iter().all(|h| *h) {
        Some(true)
    } else if of.iter().all(|h| !*h) {
        Some(false)
    } else {
        None
    }
}

/// The next update satisfying `want`, within the deadline.
async fn until(
    w: &mut Watch,
    what: &str,
    want: impl Fn(&[(String, bool)]) -> bool,
) -> Vec<(String, bool)> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let m = tokio::time::timeout_at(deadline, w.message())
            .await
            .unwrap_or_else(|_| panic!("no update in time: {what}"))
            .unwrap()
            .expect("the stream stays open");
        let h = health(&m);
        if want(&h) {
            return h;
        }
    }
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics server never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `series` (name and labels exactly as rendered), 0 if absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn xid(code: u64, gi: Option<u32>) -> GpuEvent {
    GpuEvent::Xid {
        code,
        gpu_instance: gi,
        compute_instance: gi.map(|_| 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_faults_mark_devices_unhealthy_until_quiet_and_answering() {
    let tmp = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this process, before anything reads the environment.
    unsafe {
        std::env::set_var(
            "GPUSLICE_SIM_DEVICES",
            format!(
                "memory=80GiB,sms=132,numa=0,uuid={GPU0},name={H100};memory=80GiB,sms=132,numa=1,uuid={GPU1},name={H100}"
            ),
        );
        std::env::set_var("GPUSLICE_SIM_STATE", tmp.path().join("sim-gpu"));
    }
    let lib = sim_nvml();
    let sim = Sim::get().unwrap();

    let sockets = tmp.path().join("plugins");
    std::fs::create_dir_all(&sockets).unwrap();
    let interposer = tmp.path().join("libgpuslice.so");
    std::fs::write(&interposer, b"\x7fELF stand-in").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _kubelet = kubelet(&sockets, tx);
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let state = tmp.path().join("state");
    let opts = Options {
        node_name: "node-a".into(),
        config_path: None,
        socket_dir: sockets.clone(),
        cdi_dir: tmp.path().join("cdi"),
        state_dir: state.clone(),
        metrics_addr: Some(metrics_addr),
        interposer,
        extra_tenant_dirs: vec![],
        // The configuration's quiet period wins over this default.
        health_quiet: Duration::from_secs(3600),
        reload_every: Duration::from_millis(100),
        pod_resources_socket: tmp.path().join("no-pod-resources.sock"),
        reconcile_every: Duration::from_secs(30),
        compute_dir: tmp.path().join("compute"),
    };
    let cfg =
        NodeConfig::parse("version: v1\nslices: 2\nhealth: {recoverAfterSeconds: 1}\n").unwrap();
    let shared = agent::start(
        &opts,
        cfg,
        NvmlGpus::simulated(&lib).unwrap(),
        Source::File(state.join("assignments.json")),
    )
    .unwrap();
    // The agent's own health source: NVML's event API, as `gpuslice node --sim` wires it.
    agent::spawn_health(
        shared.clone(),
        Box::new(NvmlEvents::open(Some(&lib)).unwrap()),
    );
    tokio::spawn(agent::run(opts, shared.clone()));
    let mut first = Vec::new();
    for _ in 0..2 {
        first.push(next_registration(&mut rx).await);
    }
    first.sort();
    assert_eq!(first, ["gpuslice.io/gpu", "gpuslice.io/whole-gpu"]);

    let mut w = watch(&sockets, "gpuslice.io/gpu").await;
    let all_healthy = |h: &[(String, bool)]| h.len() == 4 && h.iter().all(|(_, ok)| *ok);
    until(&mut w, "all four slices healthy", all_healthy).await;

    // An application XID (43: the GPU stopped processing, a kernel's fault) on GPU 0, then a
    // device XID (79: fallen off the bus) on GPU 1. Events are delivered in order, so the
    // update that shows GPU 1 unhealthy was made after the XID 43 was handled.
    sim.inject_xid(GPU0, 43).unwrap();
    sim.inject_xid(GPU1, 79).unwrap();
    let h = until(&mut w, "GPU 1 unhealthy after XID 79", |h| {
        gpu_healthy(h, GPU1) == Some(false)
    })
    .await;
    assert_eq!(
        gpu_healthy(&h, GPU0),
        Some(true),
        "XID 43 is not a device fault: {h:?}"
    );
    let body = scrape(metrics_addr).await;
    assert_eq!(
        sample(
            &body,
            &format!("gpuslice_gpu_xid_errors_total{{gpu=\"{GPU0}\",xid=\"43\"}}")
        ),
        1.0,
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            &format!("gpuslice_gpu_xid_errors_total{{gpu=\"{GPU1}\",xid=\"79\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            &format!("gpuslice_gpu_healthy{{gpu=\"{GPU1}\",model=\"{H100}\"}}")
        ),
        0.0
    );
    // After the quiet period the GPU answers NVML again and comes back.
    until(
        &mut w,
        "GPU 1 healthy again after the quiet period",
        all_healthy,
    )
    .await;
    let body = scrape(metrics_addr).await;
    for to in ["unhealthy", "healthy"] {
        assert_eq!(
            sample(
                &body,
                &format!(
                    "gpuslice_device_health_transitions_total{{device=\"{GPU1}\",to=\"{to}\"}}"
                )
            ),
            1.0,
            "{body}"
        );
    }

    // A double-bit ECC error is a fault; a single-bit one is not (and is not even asked for).
    let sbe = sim.raise(1, GpuEvent::EccSingleBit);
    sim.inject_ecc_dbe(GPU0).unwrap();
    assert!(sbe < sim.event_head(1));
    let h = until(
        &mut w,
        "GPU 0 unhealthy after a double-bit ECC error",
        |h| gpu_healthy(h, GPU0) == Some(false),
    )
    .await;
    assert_eq!(gpu_healthy(&h, GPU1), Some(true), "{h:?}");
    until(&mut w, "GPU 0 healthy again", all_healthy).await;
    let body = scrape(metrics_addr).await;
    assert_eq!(
        sample(
            &body,
            &format!("gpuslice_gpu_ecc_uncorrectable_errors_total{{gpu=\"{GPU0}\"}}")
        ),
        1.0
    );

    // A GPU that does not answer stays unhealthy past the quiet period: recovery needs a probe
    // that succeeds. GPU 1 falls off the bus; NVML's wait then fails with GPU_IS_LOST and the
    // agent finds which GPU is gone.
    sim.inject_xid(GPU1, 79).unwrap();
    sim.set_lost(1, true);
    until(&mut w, "GPU 1 unhealthy while lost", |h| {
        gpu_healthy(h, GPU1) == Some(false)
    })
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let failures = format!("gpuslice_device_probe_failures_total{{device=\"{GPU1}\"}}");
    // Two failed probes: two quiet periods past the fault, still unhealthy.
    while sample(&scrape(metrics_addr).await, &failures) < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "GPU 1 never probed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), w.message())
            .await
            .is_err(),
        "no update while GPU 1 is lost"
    );
    let body = scrape(metrics_addr).await;
    assert_eq!(
        sample(
            &body,
            &format!("gpuslice_gpu_lost_events_total{{gpu=\"{GPU1}\"}}")
        ),
        1.0,
        "a lost GPU is reported once, then left to the probe: {body}"
    );
    assert!(shared.unhealthy().contains(GPU1));
    // The lost GPU does not blind the agent to the others: a fault on GPU 0 is still seen.
    sim.inject_xid(GPU0, 79).unwrap();
    until(&mut w, "GPU 0 unhealthy while GPU 1 is lost", |h| {
        gpu_healthy(h, GPU0) == Some(false)
    })
    .await;
    sim.set_lost(1, false);
    until(&mut w, "GPU 1 healthy once it answers again", all_healthy).await;

    // MIG: an XID attributable to a GPU instance marks that MIG device only.
    let nvml = gpuslice_nvml::Nvml::from_path(&lib).unwrap();
    let model = gpuslice_core::mig::model(H100).unwrap();
    let p = model.profile("3g.40gb").unwrap();
    nvml.set_mig_mode(0, true).unwrap();
    let mut gis = Vec::new();
    for start in [0, 4] {
        let gi = nvml.create_gpu_instance(0, p.id, start, 4).unwrap();
        nvml.create_compute_instance(0, gi, p.full_compute_profile().id, None)
            .unwrap();
        gis.push(gi);
    }
    assert_eq!(next_registration(&mut rx).await, "gpuslice.io/mig-3g.40gb");
    let migs = nvml.mig_devices(0).unwrap();
    let faulty = migs.iter().find(|m| m.gpu_instance == gis[1]).unwrap();
    let mut mw = watch(&sockets, "gpuslice.io/mig-3g.40gb").await;
    until(&mut mw, "two healthy MIG devices", |h| {
        h.len() == 2 && h.iter().all(|(_, ok)| *ok)
    })
    .await;
    sim.raise(0, xid(94, Some(gis[1])));
    let h = until(&mut mw, "the faulted MIG device unhealthy", |h| {
        h.iter().any(|(_, ok)| !*ok)
    })
    .await;
    for (id, ok) in &h {
        assert_eq!(*ok, *id != faulty.uuid, "{h:?}");
    }
    until(&mut mw, "the MIG device healthy again", |h| {
        h.len() == 2 && h.iter().all(|(_, ok)| *ok)
    })
    .await;
}

//! The agent against a fake kubelet speaking the device plugin API over real Unix sockets.

mod common;
use common::kubelet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuslice_node::agent::{self, Options};
use gpuslice_node::assign::Source;
use gpuslice_node::config::NodeConfig;
use gpuslice_node::gpu::{Gpu, StaticGpus};
use gpuslice_node::health::{EventSource, HealthEvent};
use gpuslice_node::pb;
use gpuslice_node::plugin::{socket_name, unix_channel};
use tokio::sync::mpsc;

const GPU0: &str = "GPU-5e1f0000-0000-4000-8000-5e1f00000000";
const GPU1: &str = "GPU-5e1f0001-0000-4000-8000-5e1f00000001";
const DEADLINE: Duration = Duration::from_secs(20);

fn gpus() -> Vec<Gpu> {
    [GPU0, GPU1]
        .iter()
        .enumerate()
        .map(|(i, u)| Gpu {
            index: i as u32,
            uuid: u.to_string(),
            model: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: 80 << 30,
            sms: 132,
            numa: Some(i as u32),
            pci_bus_id: String::new(),
            minor: None,
            nvlink_peers: vec![],
            ..Default::default()
        })
        .collect()
}

/// Health events fed by the test.
struct Fake(Arc<Mutex<Vec<HealthEvent>>>);
impl EventSource for Fake {
    fn next(&mut self, timeout_ms: u64) -> Option<HealthEvent> {
        let e = self.0.lock().unwrap().pop();
        if e.is_none() {
            std::thread::sleep(Duration::from_millis(timeout_ms.min(20)));
        }
        e
    }
}

struct Dirs {
    _tmp: tempfile::TempDir,
    sockets: PathBuf,
    cdi: PathBuf,
    state: PathBuf,
    interposer: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let d = Dirs {
        sockets: tmp.path().join("plugins"),
        cdi: tmp.path().join("cdi"),
        state: tmp.path().join("state"),
        interposer: tmp.path().join("libgpuslice.so"),
        _tmp: tmp,
    };
    std::fs::create_dir_all(&d.sockets).unwrap();
    std::fs::write(&d.interposer, b"\x7fELF stand-in").unwrap();
    d
}

fn options(d: &Dirs, metrics: Option<std::net::SocketAddr>) -> Options {
    Options {
        node_name: "node-a".into(),
        config_path: None,
        socket_dir: d.sockets.clone(),
        cdi_dir: d.cdi.clone(),
        state_dir: d.state.clone(),
        metrics_addr: metrics,
        interposer: d.interposer.clone(),
        extra_tenant_dirs: vec![],
        health_quiet: Duration::from_secs(3600),
        reload_every: Duration::from_millis(100),
        // No kubelet pod resources API here: the agent reconciles with its store alone.
        pod_resources_socket: d.sockets.join("no-pod-resources.sock"),
        reconcile_every: Duration::from_secs(30),
        compute_dir: d.state.join("compute"),
    }
}

fn assignment_file(path: &Path, pods: &[(&str, &str, serde_json::Value)]) {
    let pods: Vec<serde_json::Value> = pods
        .iter()
        .map(|(name, uid, a)| serde_json::json!({"namespace": "team", "name": name, "uid": uid, "assignment": a}))
        .collect();
    std::fs::write(
        path,
        serde_json::to_vec(&serde_json::json!({ "pods": pods })).unwrap(),
    )
    .unwrap();
}

fn slice(gpu: &str, mib: u64, pct: u32) -> serde_json::Value {
    serde_json::json!({"version": 1, "node": "node-a", "containers": [
        {"name": "main", "gpus": [{"uuid": gpu, "memoryMiB": mib, "computePercent": pct}]}]})
}

async fn next_registration(
    rx: &mut mpsc::UnboundedReceiver<pb::RegisterRequest>,
) -> pb::RegisterRequest {
    common::next_registration(rx, DEADLINE).await
}

async fn registrations(
    rx: &mut mpsc::UnboundedReceiver<pb::RegisterRequest>,
    n: usize,
) -> Vec<pb::RegisterRequest> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(next_registration(rx).await);
    }
    v.sort_by(|a, b| a.resource_name.cmp(&b.resource_name));
    v
}

async fn plugin(
    dir: &Path,
    resource: &str,
) -> pb::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
    pb::device_plugin_client::DevicePluginClient::new(
        unix_channel(&dir.join(socket_name(resource)))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_devices_allocate_health_and_kubelet_restart() {
    let d = dirs();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let k = kubelet(&d.sockets, tx.clone());
    let cfg =
        NodeConfig::parse("version: v1\nslices: 4\ngpus:\n  - {index: 1, mode: whole}\n").unwrap();
    let assignments = d.state.join("assignments.json");
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let opts = options(&d, Some(metrics_port));
    let shared = agent::start(
        &opts,
        cfg,
        Arc::new(StaticGpus(gpus())),
        Source::File(assignments.clone()),
    )
    .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    agent::spawn_health(shared.clone(), Box::new(Fake(events.clone())));
    tokio::spawn(agent::run(opts, shared.clone()));

    // Registration: one per resource, the real API version, endpoint relative to the directory.
    // No GPU is time-sliced, so `nvidia.com/gpu` is not registered at all: registered with
    // no devices it would contend with NVIDIA's device plugin for the name.
    let regs = registrations(&mut rx, 2).await;
    let names: Vec<&str> = regs.iter().map(|r| r.resource_name.as_str()).collect();
    assert_eq!(names, ["gpuslice.io/gpu", "gpuslice.io/whole-gpu"]);
    assert!(
        !shared
            .plan_rx()
            .borrow()
            .resources
            .contains_key("nvidia.com/gpu")
    );
    for r in &regs {
        assert_eq!(r.version, "v1beta1");
        assert_eq!(r.endpoint, socket_name(&r.resource_name));
        assert!(
            r.options
                .as_ref()
                .unwrap()
                .get_preferred_allocation_available
        );
    }

    // Device list with health and NUMA topology.
    let mut c = plugin(&d.sockets, "gpuslice.io/gpu").await;
    let opts = c
        .get_device_plugin_options(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(opts.get_preferred_allocation_available && !opts.pre_start_required);
    let mut stream = c.list_and_watch(pb::Empty {}).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let ids: Vec<&str> = first.devices.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("{GPU0}::0"),
            format!("{GPU0}::1"),
            format!("{GPU0}::2"),
            format!("{GPU0}::3")
        ]
    );
    assert!(first.devices.iter().all(|x| x.health == "Healthy"));
    assert_eq!(first.devices[0].topology.as_ref().unwrap().nodes[0].id, 0);
    let mut w = plugin(&d.sockets, "gpuslice.io/whole-gpu").await;
    let whole = w
        .list_and_watch(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(whole.devices.len(), 1);
    assert_eq!(whole.devices[0].id, GPU1);
    assert_eq!(whole.devices[0].topology.as_ref().unwrap().nodes[0].id, 1);

    // No assignment: refused, never an uncapped container.
    let e = c
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![format!("{GPU0}::3")],
            }],
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("no pending pod"), "{}", e.message());

    // A malformed assignment is refused naming the pod and the field.
    let mut bad = slice(GPU0, 1024, 25);
    bad["containers"][0]["gpus"][0]["computePercent"] = serde_json::json!(0);
    assignment_file(&assignments, &[("broken", "uid-b", bad)]);
    let e = c
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![format!("{GPU0}::3")],
            }],
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("team/broken") && e.message().contains("computePercent"),
        "{}",
        e.message()
    );

    // The scheduler's assignment: preferred allocation follows it, Allocate honours it.
    assignment_file(&assignments, &[("train", "uid-1", slice(GPU0, 1024, 25))]);
    let pref = c
        .get_preferred_allocation(pb::PreferredAllocationRequest {
            container_requests: vec![pb::ContainerPreferredAllocationRequest {
                available_device_i_ds: ids.iter().rev().map(|s| s.to_string()).collect(),
                must_include_device_i_ds: vec![],
                allocation_size: 1,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pref.container_responses[0].device_i_ds,
        [format!("{GPU0}::0")]
    );
    let r = c
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![format!("{GPU0}::0")],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let resp = &r.container_responses[0];
    assert_eq!(resp.envs["CUDA_VISIBLE_DEVICES"], GPU0);
    assert_eq!(resp.envs["NVIDIA_VISIBLE_DEVICES"], GPU0);
    // Limits never travel in the environment, which the tenant controls.
    assert!(
        !resp.envs.contains_key("GPUSLICE_LEDGER"),
        "{:?}",
        resp.envs
    );
    assert_eq!(
        resp.envs["LD_PRELOAD"],
        "/usr/local/gpuslice/lib/libgpuslice.so"
    );
    let mount = |c: &str| {
        resp.mounts
            .iter()
            .find(|m| m.container_path == c)
            .unwrap_or_else(|| panic!("mount {c}"))
    };
    let preload = mount("/etc/ld.so.preload");
    assert!(preload.read_only);
    assert_eq!(
        std::fs::read_to_string(&preload.host_path).unwrap().trim(),
        "/usr/local/gpuslice/lib/libgpuslice.so"
    );
    assert!(mount("/usr/local/gpuslice/lib/libgpuslice.so").read_only);
    // Nothing of the machine's compute scheduling is mounted or named: the container reaches
    // the arbiter only through its own socket in its tenant directory.
    assert!(
        resp.mounts.iter().all(|m| !m.host_path.contains("compute")),
        "{:?}",
        resp.mounts
    );
    assert!(!resp.envs.contains_key("GPUSLICE_COMPUTE_DIR"));
    // The tenant's directory (its limits) is read-only; only the ledger is writable.
    assert!(mount("/var/run/gpuslice").read_only);
    assert!(!mount("/var/run/gpuslice/ledger").read_only);
    let tenant_dir = PathBuf::from(&mount("/var/run/gpuslice").host_path);
    // Every connection to the tenant's socket is a channel of this tenant, at its quota.
    let chan = gpuslice_compute::wire::connect_path(&tenant_dir.join("arbiter.sock")).unwrap();
    let (reply, page) = gpuslice_compute::wire::call(
        std::os::fd::AsRawFd::as_raw_fd(&chan),
        &gpuslice_compute::wire::Msg::Open {
            uuid: gpuslice_ledger::parse_uuid(GPU0).unwrap(),
        },
    )
    .unwrap();
    assert_eq!(reply, gpuslice_compute::wire::Msg::Opened);
    assert_eq!(page.len(), 1, "a grant page");
    drop(chan);
    let limits =
        gpuslice_ledger::Limits::decode(&std::fs::read(tenant_dir.join("limits")).unwrap())
            .unwrap();
    assert_eq!(limits.spec.memory_cap, 1 << 30);
    assert_eq!(limits.compute.unwrap().quota, 25);
    assert_eq!(resp.cdi_devices[0].name, "gpuslice.io/gpu=team.train.main");
    // Every path handed out lies under a host root the deploy manifests mount into the agent.
    for m in &resp.mounts {
        assert!(
            shared.paths.root_of(Path::new(&m.host_path)).is_some(),
            "{} is under no host root of {:?}",
            m.host_path,
            shared.paths.host_roots()
        );
    }
    // The ledger exists with the assigned cap, GPU and compute quota.
    let l = gpuslice_ledger::Ledger::open(&tenant_dir.join("ledger")).unwrap();
    assert_eq!(l.spec().memory_cap, 1 << 30);
    assert_eq!(
        l.spec().allowed,
        vec![gpuslice_ledger::parse_uuid(GPU0).unwrap()]
    );
    assert_eq!(l.compute().unwrap().unwrap().quota, 25);
    // The CDI spec names the same device with the same edits.
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.cdi.join("gpuslice.io-gpu_team.train.main.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(spec["cdiVersion"], "1.0.0");
    assert_eq!(spec["kind"], "gpuslice.io/gpu");
    assert_eq!(spec["devices"][0]["name"], "team.train.main");
    let env = spec["devices"][0]["containerEdits"]["env"]
        .as_array()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e == &serde_json::json!(format!("CUDA_VISIBLE_DEVICES={GPU0}")))
    );
    let cdi_mounts = spec["devices"][0]["containerEdits"]["mounts"]
        .as_array()
        .unwrap();
    assert!(
        cdi_mounts
            .iter()
            .any(|m| m["containerPath"] == "/etc/ld.so.preload")
    );
    for m in cdi_mounts {
        let h = m["hostPath"].as_str().unwrap();
        assert!(shared.paths.root_of(Path::new(h)).is_some(), "{h}");
    }
    assert!(shared.paths.root_of(&d.cdi).is_some());
    // The same pod is not allocated twice.
    let e = c
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![format!("{GPU0}::1")],
            }],
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("no pending pod"), "{}", e.message());

    // A tenant process using its memory shows up in /metrics.
    let slot = l.attach_process().unwrap();
    let dev = l
        .device_for(&gpuslice_ledger::parse_uuid(GPU0).unwrap())
        .unwrap();
    l.reserve(slot, dev, 300 << 20).unwrap();
    assert!(l.reserve(slot, dev, 800 << 20).is_err());
    let body = scrape(metrics_port).await;
    let line = |name: &str| {
        body.lines()
            .find(|x| x.starts_with(name) && x.contains("pod=\"train\""))
            .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
            .to_string()
    };
    assert!(
        line("gpuslice_tenant_memory_used_bytes").ends_with(&format!(" {}", (300u64 << 20) as f64))
            || line("gpuslice_tenant_memory_used_bytes").contains("314572800"),
        "{body}"
    );
    assert!(
        line("gpuslice_tenant_memory_limit_bytes").contains("1073741824"),
        "{body}"
    );
    assert!(
        line("gpuslice_tenant_oom_refusals_total").ends_with(" 1")
            || line("gpuslice_tenant_oom_refusals_total").ends_with(" 1.0"),
        "{body}"
    );
    assert!(
        line("gpuslice_tenant_compute_quota_ratio").ends_with(" 0.25"),
        "{body}"
    );
    assert!(body.contains(&format!("gpuslice_gpu_memory_total_bytes{{gpu=\"{GPU0}\",model=\"NVIDIA H100 80GB HBM3\"}} 85899345920")), "{body}");
    exposition_follows_accept(metrics_port).await;

    // Health: a device fault marks the GPU's slices unhealthy; an application XID does not;
    // recovery brings them back.
    events.lock().unwrap().push(HealthEvent::Xid {
        uuid: GPU0.into(),
        code: 13,
    });
    events.lock().unwrap().insert(
        0,
        HealthEvent::Xid {
            uuid: GPU0.into(),
            code: 79,
        },
    );
    let m = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(m.devices.iter().all(|x| x.health == "Unhealthy"), "{m:?}");
    events
        .lock()
        .unwrap()
        .push(HealthEvent::Recovered { uuid: GPU0.into() });
    let m = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(m.devices.iter().all(|x| x.health == "Healthy"), "{m:?}");

    // Kubelet restarts: its socket is recreated, and the agent registers every resource again.
    k.abort();
    let _ = k.await;
    std::fs::remove_file(d.sockets.join("kubelet.sock")).unwrap();
    let _k2 = kubelet(&d.sockets, tx);
    let again = registrations(&mut rx, 2).await;
    assert_eq!(
        again
            .iter()
            .map(|r| r.resource_name.as_str())
            .collect::<Vec<_>>(),
        names
    );
    let mut c2 = plugin(&d.sockets, "gpuslice.io/gpu").await;
    let l2 = c2
        .list_and_watch(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l2.devices.len(), 4);
    drop(l);
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    scrape_as(addr, None).await
}

/// The whole HTTP answer to `GET /metrics`, with `Accept: accept` when given.
async fn scrape_as(addr: std::net::SocketAddr, accept: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: x\r\n{accept}\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(
                out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
                "{out}"
            );
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics server never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent stops while a tenant runs; the next agent finds the allocation, the same ledger with
/// the tenant's usage, and the CDI spec (rewritten if the runtime directory was cleared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_a_running_tenant_loses_nothing() {
    let d = dirs();
    let assignments = d.state.join("assignments.json");
    std::fs::create_dir_all(&d.state).unwrap();
    assignment_file(&assignments, &[("infer", "uid-7", slice(GPU1, 2048, 50))]);
    let cfg = NodeConfig::parse("version: v1\nslices: 2\n").unwrap();
    let first = agent::start(
        &options(&d, None),
        cfg.clone(),
        Arc::new(StaticGpus(gpus())),
        Source::File(assignments.clone()),
    )
    .unwrap();
    let resp = first
        .allocate("gpuslice.io/gpu", &[format!("{GPU1}::1")])
        .await
        .unwrap();
    let host = PathBuf::from(
        &resp
            .mounts
            .iter()
            .find(|m| m.container_path == "/var/run/gpuslice")
            .unwrap()
            .host_path,
    );
    let ledger = gpuslice_ledger::Ledger::open(&host.join("ledger")).unwrap();
    let slot = ledger.attach_process().unwrap();
    let dev = ledger
        .device_for(&gpuslice_ledger::parse_uuid(GPU1).unwrap())
        .unwrap();
    ledger.reserve(slot, dev, 1500 << 20).unwrap();
    drop(first);
    std::fs::remove_dir_all(&d.cdi).unwrap();

    let second = agent::start(
        &options(&d, None),
        cfg,
        Arc::new(StaticGpus(gpus())),
        Source::File(assignments),
    )
    .unwrap();
    let a = second
        .store
        .lock()
        .unwrap()
        .find("team.infer.main")
        .cloned()
        .expect("allocation restored");
    assert_eq!(
        (a.pod_uid.as_str(), a.memory_bytes, a.compute_percent),
        ("uid-7", 2048 << 20, 50)
    );
    assert!(
        d.cdi.join("gpuslice.io-gpu_team.infer.main.json").exists(),
        "CDI spec rewritten"
    );
    let seen = gpuslice_ledger::Ledger::open(&host.join("ledger")).unwrap();
    assert_eq!(
        seen.used(dev),
        ledger.used(dev),
        "the running tenant's usage is intact"
    );
    assert!(seen.used(dev) >= 1500 << 20);
    // Still capped: the tenant cannot pass 2 GiB across the restart.
    assert!(ledger.reserve(slot, dev, 600 << 20).is_err());
    // The pod is not handed a second ledger.
    let e = second
        .allocate("gpuslice.io/gpu", &[format!("{GPU1}::0")])
        .await
        .unwrap_err();
    assert!(e.contains("no pending pod"), "{e}");
    let body = second.render_metrics();
    assert!(body.contains("pod=\"infer\""), "{body}");
}

/// Hot reload: a changed slice count reaches kubelet without a restart; a bad file keeps the
/// last good configuration and is reported in a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_and_time_slicing() {
    let d = dirs();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _k = kubelet(&d.sockets, tx);
    let cfg_path = d.sockets.parent().unwrap().join("node.yaml");
    std::fs::write(&cfg_path, "version: v1\nslices: 2\n").unwrap();
    let mut opts = options(&d, None);
    opts.config_path = Some(cfg_path.clone());
    let shared = agent::start(
        &opts,
        NodeConfig::load(&cfg_path).unwrap(),
        Arc::new(StaticGpus(gpus())),
        Source::File(d.state.join("a.json")),
    )
    .unwrap();
    tokio::spawn(agent::run(opts, shared.clone()));
    registrations(&mut rx, 2).await;
    let mut c = plugin(&d.sockets, "gpuslice.io/gpu").await;
    let mut s = c.list_and_watch(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().devices.len(), 4);

    std::fs::write(
        &cfg_path,
        "version: v1\nslices: 3\ngpus:\n  - {index: 1, mode: time-slicing}\n",
    )
    .unwrap();
    let m = tokio::time::timeout(DEADLINE, s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.devices.len(), 3);
    // The first time-sliced GPU brings the time-slicing resource's registration.
    assert_eq!(
        next_registration(&mut rx).await.resource_name,
        "nvidia.com/gpu"
    );

    std::fs::write(&cfg_path, "version: v1\nslices: -1\n").unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !shared
        .render_metrics()
        .contains("gpuslice_config_reload_errors_total 1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            shared.render_metrics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        shared
            .render_metrics()
            .contains("gpuslice_config_last_reload_ok 0")
    );
    assert_eq!(
        shared.cfg.read().unwrap().slices,
        3,
        "the last good configuration stays"
    );

    // Time-slicing replicas: each capped at an even share of the GPU, real isolation underneath.
    let mut ts = plugin(&d.sockets, "nvidia.com/gpu").await;
    let list = ts
        .list_and_watch(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(list.devices.len(), 4);
    let r = ts
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![format!("{GPU1}::2")],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let host = &r.container_responses[0]
        .mounts
        .iter()
        .find(|m| m.container_path == "/var/run/gpuslice")
        .unwrap()
        .host_path;
    let l = gpuslice_ledger::Ledger::open(&Path::new(host).join("ledger")).unwrap();
    assert_eq!(l.spec().memory_cap, (80u64 << 30) / 4);
    let e = ts
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![format!("{GPU0}::0"), format!("{GPU1}::0")],
            }],
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("one GPU"), "{}", e.message());

    // No GPU time-sliced any more: the time-slicing resource is withdrawn (its socket goes, so
    // kubelet drops it and it never registers again to contend with NVIDIA's device plugin),
    // and comes back with the next time-sliced GPU.
    let ts_sock = d.sockets.join(socket_name("nvidia.com/gpu"));
    std::fs::write(&cfg_path, "version: v1\nslices: 3\n").unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ts_sock.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the time-slicing resource is still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(
        &cfg_path,
        "version: v1\nslices: 3\ngpus:\n  - {index: 0, mode: time-slicing}\n",
    )
    .unwrap();
    loop {
        let r = next_registration(&mut rx).await;
        if r.resource_name == "nvidia.com/gpu" {
            break;
        }
    }
    assert!(ts_sock.exists());
}

/// Allocate latency through the socket with 8 GPUs and 100 pods; prints figures, asserts only
/// correctness. `cargo test -p gpuslice-node --test kubelet -- --ignored --nocapture`.
/// With GPUSLICE_BENCH_STATE=DIR the state (100 tenants) is kept there for measuring the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_allocate() {
    let d = dirs();
    let state = std::env::var_os("GPUSLICE_BENCH_STATE")
        .map(PathBuf::from)
        .unwrap_or(d.state.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _k = kubelet(&d.sockets, tx);
    let many: Vec<Gpu> = (0..8u32)
        .map(|i| Gpu {
            index: i,
            uuid: format!("GPU-5e1f{i:04x}-0000-4000-8000-5e1f{i:08x}"),
            numa: Some(i / 4),
            ..gpus()[0].clone()
        })
        .collect();
    let pods: Vec<(String, String, serde_json::Value)> = (0..100)
        .map(|i| {
            (
                format!("p{i}"),
                format!("uid-{i}"),
                slice(&many[i % 8].uuid, 4096, 10),
            )
        })
        .collect();
    std::fs::create_dir_all(&state).unwrap();
    let assignments = state.join("assignments.json");
    assignment_file(
        &assignments,
        &pods
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.clone()))
            .collect::<Vec<_>>(),
    );
    let mut opts = options(&d, None);
    opts.state_dir = state.clone();
    let shared = agent::start(
        &opts,
        NodeConfig::parse("version: v1\nslices: 16\n").unwrap(),
        Arc::new(StaticGpus(many.clone())),
        Source::File(assignments),
    )
    .unwrap();
    tokio::spawn(agent::run(opts, shared.clone()));
    registrations(&mut rx, 2).await;
    let mut c = plugin(&d.sockets, "gpuslice.io/gpu").await;
    let mut lat = Vec::new();
    for i in 0..100 {
        let id = format!("{}::{}", many[i % 8].uuid, i / 8);
        let t = std::time::Instant::now();
        c.allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![id],
            }],
        })
        .await
        .unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let t = std::time::Instant::now();
    let body = shared.render_metrics();
    let scrape = t.elapsed();
    assert_eq!(
        body.matches("gpuslice_tenant_memory_limit_bytes{").count(),
        100
    );
    println!(
        "Allocate over the socket, 8 GPUs, 100 pods: p50 {:?}  p99 {:?}  max {:?}; one /metrics render with 100 tenants: {scrape:?}",
        lat[49], lat[98], lat[99]
    );
}

/// `/metrics` answers per `Accept`: the Prometheus text format 0.0.4 unless OpenMetrics is
/// asked for, and in either form every family has HELP and TYPE naming what its samples are
/// called. Where promtool is installed, `promtool check metrics` must pass too.
async fn exposition_follows_accept(addr: std::net::SocketAddr) {
    let split = |r: String| -> (String, String) {
        let (h, b) = r.split_once("\r\n\r\n").unwrap();
        (h.to_ascii_lowercase(), b.to_string())
    };
    for accept in [None, Some("*/*"), Some("text/plain;version=0.0.4")] {
        let (head, text) = split(scrape_as(addr, accept).await);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{accept:?}: {head}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        check_text_format(&text);
        promtool_check(&text);
    }
    // What Prometheus sends: OpenMetrics preferred.
    let (head, om) = split(
        scrape_as(
            addr,
            Some("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
        )
        .await,
    );
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
}

/// The rules promtool's parser and linter enforce that a registry can break: each sample's
/// family has a HELP and a TYPE, named as the samples are; counters end in `_total`.
fn check_text_format(text: &str) {
    use std::collections::BTreeMap;
    let mut help: BTreeMap<&str, &str> = BTreeMap::new();
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    for l in text.lines() {
        if let Some(r) = l.strip_prefix("# HELP ") {
            let (n, h) = r.split_once(' ').unwrap_or((r, ""));
            assert!(!h.trim().is_empty(), "empty HELP: {l}");
            assert!(help.insert(n, h).is_none(), "HELP twice for {n}");
        } else if let Some(r) = l.strip_prefix("# TYPE ") {
            let (n, t) = r.split_once(' ').unwrap();
            assert!(types.insert(n, t).is_none(), "TYPE twice for {n}");
            if t == "counter" {
                assert!(n.ends_with("_total"), "counter {n} should end in _total");
            }
        }
    }
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(help.contains_key(name), "no HELP for {name}:\n{text}");
        assert!(types.contains_key(name), "no TYPE for {name}:\n{text}");
    }
    assert!(!help.is_empty());
}

/// `promtool check metrics` on the text, when promtool is at hand: `scripts/fetch-promtool.sh`
/// puts it in `.cache/promtool/`, or one on PATH is used.
fn promtool_check(text: &str) {
    use std::io::Write;
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/promtool/promtool");
    let promtool = if cached.exists() {
        cached
    } else {
        PathBuf::from("promtool")
    };
    let child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "skipped promtool check metrics: promtool not found ({e}); install Debian's prometheus package to run it"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

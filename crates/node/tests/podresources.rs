//! Reconciliation with kubelet's pod resources API: a fake `v1.PodResourcesLister` (the real
//! proto, tonic) on a Unix socket reports which devices running containers hold; a separate
//! process stands in for a running tenant holding memory in its ledger.

mod common;
use common::kubelet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuslice_node::agent::{self, Options, Shared};
use gpuslice_node::assign::Source;
use gpuslice_node::config::NodeConfig;
use gpuslice_node::gpu::{Gpu, StaticGpus};
use gpuslice_node::pb;
use gpuslice_node::plugin::{socket_name, unix_channel};
use gpuslice_node::podres::Reconciler;
use gpuslice_node::podres_pb as v1;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

const GPU0: &str = "GPU-5e1f0000-0000-4000-8000-5e1f00000000";
const GPU1: &str = "GPU-5e1f0001-0000-4000-8000-5e1f00000001";
const DEADLINE: Duration = Duration::from_secs(20);

/// What the fake kubelet reports: pods, or an error for every call.
#[derive(Default)]
struct Report {
    pods: Vec<v1::PodResources>,
    fail: bool,
}

#[derive(Clone, Default)]
struct FakeLister(Arc<Mutex<Report>>);

impl FakeLister {
    fn set(&self, pods: Vec<v1::PodResources>) {
        let mut r = self.0.lock().unwrap();
        r.pods = pods;
        r.fail = false;
    }
    fn fail(&self) {
        self.0.lock().unwrap().fail = true;
    }
}

#[tonic::async_trait]
impl v1::pod_resources_lister_server::PodResourcesLister for FakeLister {
    async fn list(
        &self,
        _: Request<v1::ListPodResourcesRequest>,
    ) -> Result<Response<v1::ListPodResourcesResponse>, Status> {
        let r = self.0.lock().unwrap();
        if r.fail {
            return Err(Status::unavailable("kubelet is restarting"));
        }
        Ok(Response::new(v1::ListPodResourcesResponse {
            pod_resources: r.pods.clone(),
        }))
    }
    async fn get_allocatable_resources(
        &self,
        _: Request<v1::AllocatableResourcesRequest>,
    ) -> Result<Response<v1::AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not used by the agent"))
    }
    async fn get(
        &self,
        _: Request<v1::GetPodResourcesRequest>,
    ) -> Result<Response<v1::GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not used by the agent"))
    }
}

fn serve_lister(sock: &Path, lister: FakeLister) -> tokio::task::JoinHandle<()> {
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let l = tokio::net::UnixListener::bind(sock).unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(v1::pod_resources_lister_server::PodResourcesListerServer::new(lister))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l))
            .await;
    })
}

/// A pod as kubelet lists it: one container holding `devices` of `resource`, plus CPUs and
/// memory so that the other fields travel too.
fn pod(name: &str, container: &str, resource: &str, devices: &[&str]) -> v1::PodResources {
    v1::PodResources {
        name: name.into(),
        namespace: "team".into(),
        containers: vec![v1::ContainerResources {
            name: container.into(),
            devices: vec![
                v1::ContainerDevices {
                    resource_name: resource.into(),
                    device_ids: devices.iter().map(|s| s.to_string()).collect(),
                    topology: Some(v1::TopologyInfo {
                        nodes: vec![v1::NumaNode { id: 1 }],
                    }),
                },
                v1::ContainerDevices {
                    resource_name: "example.com/nic".into(),
                    device_ids: vec!["eth7".into()],
                    topology: None,
                },
            ],
            cpu_ids: vec![2, 3],
            memory: vec![v1::ContainerMemory {
                memory_type: "memory".into(),
                size: 1 << 30,
                topology: None,
            }],
            dynamic_resources: vec![],
        }],
        cpu_ids: vec![],
        memory: vec![],
    }
}

/// A device-plugin kubelet on `dir/kubelet.sock`; the receiver gets registered resource names.
fn device_plugin_kubelet(dir: &Path) -> mpsc::UnboundedReceiver<String> {
    let (tx, mut regs) = mpsc::unbounded_channel();
    let (names, rx) = mpsc::unbounded_channel();
    kubelet(dir, tx);
    tokio::spawn(async move {
        while let Some(r) = regs.recv().await {
            let _ = names.send(r.resource_name);
        }
    });
    rx
}

async fn plugin(
    dir: &Path,
    resource: &str,
) -> pb::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
    let ch = unix_channel(&dir.join(socket_name(resource)))
        .await
        .unwrap();
    pb::device_plugin_client::DevicePluginClient::new(ch)
}

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
            ..Default::default()
        })
        .collect()
}

struct Dirs {
    tmp: tempfile::TempDir,
    sockets: PathBuf,
    cdi: PathBuf,
    state: PathBuf,
    /// Where kubelet's pod resources socket is (when a fake kubelet serves it).
    podres: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let d = Dirs {
        sockets: tmp.path().join("plugins"),
        cdi: tmp.path().join("cdi"),
        state: tmp.path().join("state"),
        podres: tmp.path().join("pod-resources").join("kubelet.sock"),
        tmp,
    };
    std::fs::create_dir_all(&d.sockets).unwrap();
    std::fs::create_dir_all(&d.state).unwrap();
    std::fs::write(d.tmp.path().join("libgpuslice.so"), b"\x7fELF stand-in").unwrap();
    d
}

fn options(d: &Dirs) -> Options {
    Options {
        node_name: "node-a".into(),
        config_path: None,
        socket_dir: d.sockets.clone(),
        cdi_dir: d.cdi.clone(),
        state_dir: d.state.clone(),
        metrics_addr: None,
        interposer: d.tmp.path().join("libgpuslice.so"),
        extra_tenant_dirs: vec![],
        health_quiet: Duration::from_secs(3600),
        reload_every: Duration::from_secs(3600),
        pod_resources_socket: d.podres.clone(),
        reconcile_every: Duration::from_millis(100),
        compute_dir: d.state.join("compute"),
    }
}

fn slice(gpu: &str, mib: u64, pct: u32) -> serde_json::Value {
    serde_json::json!({"version": 1, "node": "node-a", "containers": [
        {"name": "main", "gpus": [{"uuid": gpu, "memoryMiB": mib, "computePercent": pct}]}]})
}

/// Pods `infer` (GPU1, 2 GiB) and `batch` (GPU0, 1 GiB), allocated by a first agent that then
/// stops; returns infer's tenant directory.
async fn two_pods_then_stop(d: &Dirs, cfg: &NodeConfig) -> PathBuf {
    let pods = serde_json::json!({"pods": [
        {"namespace": "team", "name": "infer", "uid": "uid-a", "assignment": slice(GPU1, 2048, 50)},
        {"namespace": "team", "name": "batch", "uid": "uid-b", "assignment": slice(GPU0, 1024, 25)},
    ]});
    let file = d.state.join("assignments.json");
    std::fs::write(&file, serde_json::to_vec(&pods).unwrap()).unwrap();
    let first = agent::start(
        &options(d),
        cfg.clone(),
        Arc::new(StaticGpus(gpus())),
        Source::File(file),
    )
    .unwrap();
    let a = first
        .allocate("gpuslice.io/gpu", &[format!("{GPU1}::1")])
        .await
        .unwrap();
    first
        .allocate("gpuslice.io/gpu", &[format!("{GPU0}::0")])
        .await
        .unwrap();
    let tenants = first.paths.tenants.clone();
    assert!(tenants.join("team.batch.main").join("ledger").exists());
    assert!(d.cdi.join("gpuslice.io-gpu_team.batch.main.json").exists());
    assert_eq!(a.annotations["gpuslice.io/tenant"], "team.infer.main");
    tenants.join("team.infer.main")
}

fn second_agent(d: &Dirs, cfg: &NodeConfig) -> Arc<Shared> {
    agent::start(
        &options(d),
        cfg.clone(),
        Arc::new(StaticGpus(gpus())),
        Source::File(d.state.join("assignments.json")),
    )
    .unwrap()
}

fn tenants(s: &Shared) -> Vec<String> {
    let mut v: Vec<String> = s
        .store
        .lock()
        .unwrap()
        .state
        .allocations
        .iter()
        .map(|a| a.tenant.clone())
        .collect();
    v.sort();
    v
}

/// A running tenant: another process that attaches to the ledger and holds `bytes` on `gpu`
/// until its stdin closes. The test binary itself, run for `tenant_process` only.
struct Tenant(Child, BufReader<std::process::ChildStdout>);

impl Tenant {
    fn start(ledger: &Path, gpu: &str, bytes: u64) -> Tenant {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tenant_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "GPUSLICE_TEST_TENANT",
                format!("{}|{gpu}|{bytes}", ledger.display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the tenant process exited"
            );
            // The test harness prints its own words on the same line.
            if line.contains("tenant-holding") {
                break;
            }
            assert!(!line.contains("tenant-refused"), "{line}");
        }
        Tenant(c, out)
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        // Read to the end so the process never writes into a closed pipe.
        let _ = self.1.read_to_end(&mut Vec::new());
        let _ = self.0.wait();
    }
}

/// The body of [`Tenant`]'s process; does nothing in a normal test run.
#[test]
fn tenant_process() {
    let Ok(spec) = std::env::var("GPUSLICE_TEST_TENANT") else {
        return;
    };
    let mut parts = spec.split('|');
    let (path, gpu, bytes) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
    );
    let l = gpuslice_ledger::Ledger::open(Path::new(path)).unwrap();
    let slot = l.attach_process().unwrap();
    let dev = l
        .device_for(&gpuslice_ledger::parse_uuid(gpu).unwrap())
        .unwrap();
    match l.reserve(slot, dev, bytes) {
        Ok(_) => println!("tenant-holding"),
        Err(e) => println!("tenant-refused {e:?}"),
    }
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// The agent stops; while it is down pod `batch` is deleted and `infer` keeps running with a
/// process holding memory. The next agent asks kubelet: batch's allocation is released (record,
/// ledger, CDI spec), infer's is untouched (same record, same ledger, same usage and cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_releases_pods_kubelet_no_longer_runs_and_keeps_the_rest() {
    let d = dirs();
    let cfg = NodeConfig::parse("version: v1\nslices: 2\n").unwrap();
    let infer = two_pods_then_stop(&d, &cfg).await;
    let ledger_path = infer.join("ledger");
    let tenant = Tenant::start(&ledger_path, GPU1, 1500 << 20);
    let ledger = gpuslice_ledger::Ledger::open(&ledger_path).unwrap();
    let dev = ledger
        .device_for(&gpuslice_ledger::parse_uuid(GPU1).unwrap())
        .unwrap();
    let used_before = ledger.used(dev);
    assert!(used_before >= 1500 << 20);
    let record_before = gpuslice_node::state::Store::open(&d.state)
        .unwrap()
        .find("team.infer.main")
        .cloned()
        .unwrap();

    let lister = FakeLister::default();
    lister.set(vec![
        pod("infer", "main", "gpuslice.io/gpu", &[&format!("{GPU1}::1")]),
        // Not ours: left alone and not counted.
        pod("web", "nginx", "example.com/fpga", &["fpga0"]),
    ]);
    let _k = serve_lister(&d.podres, lister.clone());

    let second = second_agent(&d, &cfg);
    tokio::spawn(agent::run(options(&d), second.clone()));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tenants(&second).len() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            tenants(&second)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tenants(&second), ["team.infer.main"]);
    // Released the way a finished pod is: ledger, CDI spec and the record on disk.
    assert!(!second.paths.tenants.join("team.batch.main").exists());
    assert!(!d.cdi.join("gpuslice.io-gpu_team.batch.main.json").exists());
    let on_disk = gpuslice_node::state::Store::open(&d.state).unwrap();
    assert!(on_disk.find("team.batch.main").is_none());
    // Kept untouched: the record, the ledger with the running tenant's usage, its cap.
    assert_eq!(on_disk.find("team.infer.main"), Some(&record_before));
    assert!(d.cdi.join("gpuslice.io-gpu_team.infer.main.json").exists());
    let seen = gpuslice_ledger::Ledger::open(&ledger_path).unwrap();
    assert_eq!(
        seen.used(dev),
        used_before,
        "the running tenant's usage is intact"
    );
    assert_eq!(seen.spec().memory_cap, 2048 << 20);
    let me = ledger.attach_process().unwrap();
    assert!(
        ledger.reserve(me, dev, 600 << 20).is_err(),
        "still capped at 2 GiB across the restart"
    );
    // Later passes keep it too (kubelet still reports it).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(tenants(&second), ["team.infer.main"]);
    assert_eq!(
        gpuslice_ledger::Ledger::open(&ledger_path)
            .unwrap()
            .used(dev),
        used_before
    );
    let body = second.render_metrics();
    assert!(
        body.contains("gpuslice_reconcile_released_total 1\n"),
        "{body}"
    );
    assert!(
        body.contains("gpuslice_pod_resources_reachable 1\n"),
        "{body}"
    );
    assert!(
        !body.contains("gpuslice_kubelet_unknown_devices{"),
        "{body}"
    );
    drop(tenant);
}

/// No kubelet (a plain host), or a kubelet whose API fails: the store alone stands and nothing
/// is released. Once kubelet answers, an allocation it does not report is released only after
/// two passes in a row miss it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kubelet_nothing_is_released() {
    let d = dirs();
    let cfg = NodeConfig::parse("version: v1\nslices: 2\n").unwrap();
    two_pods_then_stop(&d, &cfg).await;
    let both = ["team.batch.main", "team.infer.main"];

    let second = second_agent(&d, &cfg);
    let mut r = Reconciler::new(d.podres.clone());
    let rep = r.pass(&second, true).await;
    assert!(!rep.reached && rep.released.is_empty(), "{rep:?}");
    assert_eq!(tenants(&second), both);
    assert!(
        second
            .paths
            .tenants
            .join("team.batch.main")
            .join("ledger")
            .exists()
    );
    assert!(d.cdi.join("gpuslice.io-gpu_team.batch.main.json").exists());
    assert!(
        second
            .render_metrics()
            .contains("gpuslice_pod_resources_reachable 0\n")
    );

    // A kubelet whose List fails.
    let lister = FakeLister::default();
    lister.fail();
    let _k = serve_lister(&d.podres, lister.clone());
    let rep = r.pass(&second, true).await;
    assert!(!rep.reached && rep.released.is_empty(), "{rep:?}");
    assert_eq!(tenants(&second), both);

    // Kubelet answers; batch is missing: once is not enough while the agent runs.
    lister.set(vec![pod(
        "infer",
        "main",
        "gpuslice.io/gpu",
        &[&format!("{GPU1}::1")],
    )]);
    let rep = r.pass(&second, false).await;
    assert!(rep.reached && rep.released.is_empty(), "{rep:?}");
    assert_eq!(tenants(&second), both);
    let rep = r.pass(&second, false).await;
    assert_eq!(rep.released, ["team.batch.main"]);
    assert_eq!(tenants(&second), ["team.infer.main"]);
    assert!(!second.paths.tenants.join("team.batch.main").exists());
}

/// Kubelet reports devices of our resources held by containers the agent has no allocation for
/// (its state was lost): they are counted, advertised unhealthy so kubelet hands them to no one
/// else, refused by Allocate, and never given a made-up cap. When kubelet stops reporting them
/// they come back. An allocation of a pod deleted while the agent runs is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_devices_are_counted_and_withheld() {
    let d = dirs();
    let cfg =
        NodeConfig::parse("version: v1\nslices: 4\ngpus:\n  - {index: 1, mode: whole}\n").unwrap();
    let lister = FakeLister::default();
    lister.set(vec![
        pod("ghost", "main", "gpuslice.io/gpu", &[&format!("{GPU0}::2")]),
        pod("ghost-w", "main", "gpuslice.io/whole-gpu", &[GPU1]),
    ]);
    let _k = serve_lister(&d.podres, lister.clone());
    let mut regs = device_plugin_kubelet(&d.sockets);
    let shared = second_agent(&d, &cfg);
    tokio::spawn(agent::run(options(&d), shared.clone()));
    for _ in 0..2 {
        tokio::time::timeout(DEADLINE, regs.recv())
            .await
            .unwrap()
            .unwrap();
    }

    let mut slices = plugin(&d.sockets, "gpuslice.io/gpu").await;
    let mut whole = plugin(&d.sockets, "gpuslice.io/whole-gpu").await;
    let health = |l: &pb::ListAndWatchResponse| -> Vec<(String, String)> {
        l.devices
            .iter()
            .map(|x| (x.id.clone(), x.health.clone()))
            .collect()
    };
    // The first list kubelet gets already withholds them: reconciliation runs before serving.
    let mut s = slices
        .list_and_watch(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(
        health(&first),
        [
            (format!("{GPU0}::0"), "Healthy".into()),
            (format!("{GPU0}::1"), "Healthy".into()),
            (format!("{GPU0}::2"), "Unhealthy".into()),
            (format!("{GPU0}::3"), "Healthy".into()),
        ]
    );
    let mut w = whole
        .list_and_watch(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health(&w.message().await.unwrap().unwrap()),
        [(GPU1.to_string(), "Unhealthy".to_string())]
    );
    let body = shared.render_metrics();
    assert!(
        body.contains("gpuslice_kubelet_unknown_devices{resource=\"gpuslice.io/gpu\"} 1\n")
            && body.contains(
                "gpuslice_kubelet_unknown_devices{resource=\"gpuslice.io/whole-gpu\"} 1\n"
            ),
        "{body}"
    );
    let e = whole
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![GPU1.into()],
            }],
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("team/ghost-w") && e.message().contains(GPU1),
        "{}",
        e.message()
    );
    assert!(
        tenants(&shared).is_empty(),
        "no allocation is made up for them"
    );
    assert!(
        std::fs::read_dir(&shared.paths.tenants)
            .unwrap()
            .next()
            .is_none()
    );

    // The ghost pods finish: the devices are free again.
    lister.set(vec![]);
    let m = tokio::time::timeout(DEADLINE, s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(m.devices.iter().all(|x| x.health == "Healthy"), "{m:?}");
    let m = tokio::time::timeout(DEADLINE, w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(health(&m), [(GPU1.to_string(), "Healthy".to_string())]);
    assert!(
        !shared
            .render_metrics()
            .contains("gpuslice_kubelet_unknown_devices{")
    );

    // A pod that runs, then is deleted while the agent runs: its allocation goes.
    let r = whole
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![GPU1.into()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let t = r.container_responses[0].annotations["gpuslice.io/tenant"].clone();
    lister.set(vec![pod("new", "main", "gpuslice.io/whole-gpu", &[GPU1])]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tenants(&shared),
        std::slice::from_ref(&t),
        "kept while kubelet reports it"
    );
    lister.set(vec![]);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !tenants(&shared).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            tenants(&shared)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!shared.paths.tenants.join(&t).exists());
}

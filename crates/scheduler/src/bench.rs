//! Filter + prioritize latency for one pod over a large cluster, and the cluster's memory.

use std::sync::Arc;
use std::time::Instant;

use gpuslice_core::protocol::{
    AssignedGpu, Assignment, ContainerAssignment, GpuInfo, GpuMode, Inventory,
};
use gpuslice_core::sched::{Cluster, Config, Demand, PodRecord, PodSpec};

use crate::extender::{Extender, MemoryBinder, system_clock};

/// Latency figures of one kind of round, in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub rounds: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Latency {
    fn of(mut lat: Vec<f64>) -> Self {
        if lat.is_empty() {
            return Self::default();
        }
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        Self {
            rounds: lat.len(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: lat[lat.len() - 1],
        }
    }
}

pub struct BenchReport {
    pub nodes: usize,
    pub gpus_per_node: usize,
    /// Nodes the fitting pod passes.
    pub passed: usize,
    /// Filter + prioritize of a pod that fits, called in process.
    pub in_process: Latency,
    /// The same over a cluster where every node has its own shape (see
    /// [`half_full_cluster`]): every node fitted.
    pub in_process_distinct: Latency,
    /// Filter of a pod that fits nowhere (every node refused with a reason), in process.
    pub refused_in_process: Latency,
    /// /filter then /prioritize over loopback HTTP on one kept-alive connection, as
    /// kube-scheduler calls a nodeCacheCapable extender: node names each way.
    pub http: Latency,
    /// The same over the cluster of distinct shapes.
    pub http_distinct: Latency,
    /// /filter of the pod that fits nowhere over HTTP: 5,000 reasons in the reply.
    pub refused_http: Latency,
    /// /filter then /prioritize carrying full Node objects (an extender without
    /// nodeCacheCapable), with the request size.
    pub http_objects: Latency,
    pub object_request_bytes: usize,
    /// Resident memory the cluster state added, in bytes (from /proc/self/statm), for the
    /// cluster of alike nodes and for the one of distinct shapes.
    pub cluster_bytes: u64,
    pub cluster_distinct_bytes: u64,
    pub build_ms: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = |f: &mut std::fmt::Formatter<'_>, what: &str, l: &Latency, note: &str| {
            writeln!(
                f,
                "  {what:<34} p50 {:>8.0} us   p99 {:>8.0} us   max {:>8.0} us   ({} rounds{note})",
                l.p50_us, l.p99_us, l.max_us, l.rounds
            )
        };
        writeln!(
            f,
            "gpuslice scheduler bench: one pod (1 slice, 20 GiB, 25 %) over {} nodes x {} GPUs, half the memory assigned; {} nodes pass",
            self.nodes, self.gpus_per_node, self.passed
        )?;
        row(f, "filter+prioritize, in process", &self.in_process, "")?;
        row(
            f,
            "  every node a distinct shape",
            &self.in_process_distinct,
            ", every node fitted",
        )?;
        row(
            f,
            "filter refusing every node, in proc",
            &self.refused_in_process,
            "",
        )?;
        row(
            f,
            "HTTP nodeCacheCapable (node names)",
            &self.http,
            ", loopback, both requests, one connection",
        )?;
        row(
            f,
            "  every node a distinct shape",
            &self.http_distinct,
            ", every node fitted",
        )?;
        row(
            f,
            "HTTP filter refusing every node",
            &self.refused_http,
            ", reasons for every node in the reply",
        )?;
        row(
            f,
            "HTTP with Node objects (no cache)",
            &self.http_objects,
            &format!(
                ", {:.1} MB per request",
                self.object_request_bytes as f64 / 1e6
            ),
        )?;
        writeln!(
            f,
            "  target (filter+prioritize)         p99 {:>8.0} us; HTTP/in-process p50 ratio {:.2}",
            2000.0,
            self.http.p50_us / self.in_process.p50_us.max(1.0)
        )?;
        write!(
            f,
            "  cluster state {:>8.1} MiB resident, {:.1} MiB with distinct shapes (target 200 MiB), built in {:.0} ms",
            self.cluster_bytes as f64 / 1048576.0,
            self.cluster_distinct_bytes as f64 / 1048576.0,
            self.build_ms
        )
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// `nodes` × `gpus` H100s, each GPU half its memory assigned to one pod. With `distinct`,
/// each GPU's share differs a little (still half on average), so that no two nodes have the
/// same shape and the filter fits every node: the worst case for its once-per-shape fitting.
pub fn half_full_cluster(nodes: usize, gpus: usize, distinct: bool) -> Cluster {
    let mut c = Cluster::new();
    for n in 0..nodes {
        let name = format!("gpu-node-{n:05}");
        let inv = Inventory::new(
            (0..gpus)
                .map(|i| GpuInfo {
                    uuid: format!("GPU-{n:05}-{i}"),
                    index: i as u32,
                    model: "NVIDIA H100 80GB HBM3".into(),
                    memory_mib: 81920,
                    sms: 132,
                    numa: Some(i as u32 / 4),
                    nvlink_peers: (0..gpus)
                        .filter(|&j| j != i)
                        .map(|j| format!("GPU-{n:05}-{j}"))
                        .collect(),
                    pcie_switch: Some(format!("sw{}", i / 2)),
                    slices: 4,
                    mode: GpuMode::Shared,
                    mig: vec![],
                    healthy: true,
                })
                .collect(),
        );
        c.upsert_node(&name, &inv);
        for i in 0..gpus {
            let uid = format!("pod-{n}-{i}");
            // 7 is prime to 5,000: GPU 0 alone tells the first 5,000 nodes apart.
            let memory_mib = if distinct {
                40960 - 2500 + ((7 * n + 613 * i) % 5000) as u64
            } else {
                40960
            };
            let a = Assignment::new(
                name.clone(),
                vec![ContainerAssignment {
                    name: "main".into(),
                    gpus: vec![AssignedGpu {
                        uuid: format!("GPU-{n:05}-{i}"),
                        memory_mib,
                        compute_percent: 50,
                        exclusive: false,
                        mig: None,
                    }],
                }],
            );
            c.add_pod(PodRecord {
                uid: uid.clone(),
                namespace: format!("team-{}", n % 10),
                name: uid,
                priority: 0,
                assignment: a,
                gang: None,
                demand: Demand {
                    memory_mib,
                    compute_percent: 50,
                },
            })
            .expect("bench cluster is consistent");
        }
    }
    c
}

/// A pod as kube-scheduler sends it: the scheduler reads a handful of its fields and must
/// skip the rest.
fn pod_json(memory_mib: u64) -> String {
    format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"bench","generateName":"bench-","namespace":"bench","uid":"bench-uid","resourceVersion":"123456","creationTimestamp":"2025-01-01T00:00:00Z","labels":{{"app":"bench","pod-template-hash":"5d8f7c9b6"}},"annotations":{{"kubectl.kubernetes.io/restartedAt":"2025-01-01T00:00:00Z"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"bench-5d8f7c9b6","uid":"0b9e2c1a-4c1e-4d7a-9a57-3b4f8e2d1c0f","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"volumes":[{{"name":"kube-api-access","projected":{{"sources":[{{"serviceAccountToken":{{"expirationSeconds":3607,"path":"token"}}}}],"defaultMode":420}}}}],"containers":[{{"name":"main","image":"registry.example.com/ml/train:1.4.2","command":["python","train.py"],"env":[{{"name":"EPOCHS","value":"10"}}],"resources":{{"limits":{{"cpu":"4","memory":"16Gi","gpuslice.io/gpu":"1","gpuslice.io/gpu-memory":"{memory_mib}","gpuslice.io/gpu-compute":"25"}},"requests":{{"cpu":"4","memory":"16Gi","gpuslice.io/gpu":"1","gpuslice.io/gpu-memory":"{memory_mib}","gpuslice.io/gpu-compute":"25"}}}},"volumeMounts":[{{"name":"kube-api-access","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}}],"terminationMessagePath":"/dev/termination-log","imagePullPolicy":"IfNotPresent"}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","schedulerName":"gpuslice","tolerations":[{{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"}},"status":{{"phase":"Pending","qosClass":"Guaranteed"}}}}"#
    )
}

/// A Node object of ordinary size (labels, conditions, addresses, images, the gpuslice
/// inventory annotation), as kube-scheduler sends it to an extender without nodeCacheCapable.
fn node_json(name: &str, gpus: usize) -> String {
    let inv: Vec<String> = (0..gpus)
        .map(|i| format!(r#"{{\"uuid\":\"GPU-{name}-{i}\",\"index\":{i},\"model\":\"NVIDIA H100 80GB HBM3\",\"memoryMiB\":81920,\"sms\":132,\"numa\":{},\"slices\":4,\"mode\":\"shared\"}}"#, i / 4))
        .collect();
    let images: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"names":["registry.example.com/team/image-{i}@sha256:{:064x}","registry.example.com/team/image-{i}:v1.{i}"],"sizeBytes":{}}}"#, i * 7919, 100_000_000 + i * 1_234_567))
        .collect();
    let cond = |t: &str, s: &str| {
        format!(
            r#"{{"type":"{t}","status":"{s}","lastHeartbeatTime":"2025-01-01T00:00:00Z","lastTransitionTime":"2025-01-01T00:00:00Z","reason":"Kubelet{t}","message":"kubelet reports {t} is {s}"}}"#
        )
    };
    format!(
        r#"{{"metadata":{{"name":"{name}","uid":"6f1c2a3b-{name}","resourceVersion":"987654","creationTimestamp":"2025-01-01T00:00:00Z","labels":{{"beta.kubernetes.io/arch":"amd64","beta.kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","kubernetes.io/hostname":"{name}","kubernetes.io/os":"linux","node.kubernetes.io/instance-type":"p5.48xlarge","topology.kubernetes.io/region":"us-east-1","topology.kubernetes.io/zone":"us-east-1a","nvidia.com/gpu.product":"NVIDIA-H100-80GB-HBM3"}},"annotations":{{"node.alpha.kubernetes.io/ttl":"0","volumes.kubernetes.io/controller-managed-attach-detach":"true","gpuslice.io/inventory":"{{\"version\":1,\"gpus\":[{}]}}"}}}},"spec":{{"podCIDR":"10.0.1.0/24","providerID":"aws:///us-east-1a/i-0123456789abcdef0"}},"status":{{"capacity":{{"cpu":"192","ephemeral-storage":"3750000000Ki","memory":"2097152000Ki","pods":"110","gpuslice.io/gpu":"32"}},"allocatable":{{"cpu":"191450m","ephemeral-storage":"3455000000Ki","memory":"2090000000Ki","pods":"110","gpuslice.io/gpu":"32"}},"conditions":[{},{},{},{},{}],"addresses":[{{"type":"InternalIP","address":"10.0.1.17"}},{{"type":"Hostname","address":"{name}"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":10250}}}},"nodeInfo":{{"machineID":"ec2a8b1c9d0e4f","systemUUID":"ec2a8b1c-9d0e-4f00","bootID":"7d1e2f3a","kernelVersion":"6.1.0","osImage":"Ubuntu 22.04.4 LTS","containerRuntimeVersion":"containerd://1.7.13","kubeletVersion":"v1.31.2","kubeProxyVersion":"v1.31.2","operatingSystem":"linux","architecture":"amd64"}},"images":[{}]}}}}"#,
        inv.join(","),
        cond("MemoryPressure", "False"),
        cond("DiskPressure", "False"),
        cond("PIDPressure", "False"),
        cond("NetworkUnavailable", "False"),
        cond("Ready", "True"),
        images.join(","),
    )
}

fn slice_pod(uid: &str, memory_mib: u64) -> PodSpec {
    let m = memory_mib.to_string();
    PodSpec::parse(
        uid,
        "bench",
        "bench",
        0,
        [(
            "main",
            vec![
                ("gpuslice.io/gpu", "1"),
                ("gpuslice.io/gpu-memory", m.as_str()),
                ("gpuslice.io/gpu-compute", "25"),
            ],
        )],
        [],
    )
    .expect("bench pod parses")
}

fn extender(cluster: Cluster) -> Arc<Extender> {
    Arc::new(Extender::new(
        cluster,
        Config {
            fair_share: false,
            ..Config::default()
        },
        Arc::new(MemoryBinder),
        system_clock(),
    ))
}

/// A cluster built and its resident cost, in ms and bytes.
fn build(nodes: usize, gpus: usize, distinct: bool) -> (Cluster, f64, u64) {
    let before = rss_bytes();
    let t = Instant::now();
    let cluster = half_full_cluster(nodes, gpus, distinct);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    (cluster, ms, rss_bytes().saturating_sub(before))
}

/// `rounds` of filter then prioritize over the nodes that passed, in process; the latencies
/// and how many nodes passed.
fn in_process(ext: &Extender, pod: &PodSpec, names: &[String], rounds: usize) -> (Vec<f64>, usize) {
    let mut lat = Vec::with_capacity(rounds);
    let mut passed = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let out = ext.filter(pod, names);
        let passing: Vec<&str> = out.passed.iter().map(|&k| names[k].as_str()).collect();
        let scores = ext.prioritize(pod, &passing);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        passed = out.passed.len();
        std::hint::black_box(scores);
    }
    (lat, passed)
}

/// `n` rounds of `body` to /filter (and with `follow`, /prioritize) on one connection.
fn http_rounds(http: Option<&Http>, n: usize, body: &str, follow: bool) -> Vec<f64> {
    let Some(mut c) = http.and_then(Http::connect) else {
        return Vec::new();
    };
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let Some(r) = c.filter_prioritize(body, follow) else {
            return Vec::new();
        };
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(r);
    }
    lat
}

/// Runs every figure of the report; `iterations` rounds of the in-process and node-name kinds,
/// fewer of the Node-object kind (each moves tens of megabytes).
pub fn run(nodes: usize, gpus: usize, iterations: usize) -> BenchReport {
    // Both built first, so that neither's resident figure counts memory the requests freed.
    let (cluster, build_ms, cluster_bytes) = build(nodes, gpus, false);
    let (distinct, _, cluster_distinct_bytes) = build(nodes, gpus, true);
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let ext = extender(cluster);
    let pod = slice_pod("bench-uid", 20480);
    // Half of every GPU's 80 GiB is taken: 60 GiB fits nowhere.
    let too_big = slice_pod("bench-big", 61440);
    let (lat, passed) = in_process(&ext, &pod, &names, iterations);
    let mut refused = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let out = ext.filter(&too_big, &names);
        refused.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    let http = Http::start(ext.clone());
    let names_json = serde_json::to_string(&names).unwrap_or_default();
    let fits = pod_json(20480);
    let big = pod_json(61440).replace("bench-uid", "bench-big");
    let fits_body = format!(r#"{{"Pod":{fits},"NodeNames":{names_json},"Nodes":null}}"#);
    let http_lat = http_rounds(http.as_ref(), iterations, &fits_body, true);
    let refused_http = http_rounds(
        http.as_ref(),
        iterations,
        &format!(r#"{{"Pod":{big},"NodeNames":{names_json},"Nodes":null}}"#),
        false,
    );
    let objects = {
        let items: Vec<String> = names.iter().map(|n| node_json(n, gpus)).collect();
        format!(
            r#"{{"Pod":{fits},"Nodes":{{"metadata":{{}},"items":[{}]}},"NodeNames":null}}"#,
            items.join(",")
        )
    };
    let object_request_bytes = objects.len();
    let http_objects = http_rounds(http.as_ref(), (iterations / 10).max(3), &objects, true);
    drop(objects);
    let ext = extender(distinct);
    let (lat_distinct, _) = in_process(&ext, &pod, &names, iterations);
    let http = Http::start(ext);
    let http_distinct = http_rounds(http.as_ref(), iterations, &fits_body, true);
    BenchReport {
        nodes,
        gpus_per_node: gpus,
        passed,
        in_process: Latency::of(lat),
        in_process_distinct: Latency::of(lat_distinct),
        refused_in_process: Latency::of(refused),
        http: Latency::of(http_lat),
        http_distinct: Latency::of(http_distinct),
        refused_http: Latency::of(refused_http),
        http_objects: Latency::of(http_objects),
        object_request_bytes,
        cluster_bytes,
        cluster_distinct_bytes,
        build_ms,
    }
}

/// The extender served on loopback from its own thread.
struct Http {
    addr: std::net::SocketAddr,
}

impl Http {
    fn start(ext: Arc<Extender>) -> Option<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        let addr = listener.local_addr().ok()?;
        listener.set_nonblocking(true).ok()?;
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(l) = tokio::net::TcpListener::from_std(listener) {
                    let _ = crate::server::serve(l, ext).await;
                }
            });
        });
        Some(Self { addr })
    }

    fn connect(&self) -> Option<Client> {
        let s = std::net::TcpStream::connect(self.addr).ok()?;
        s.set_nodelay(true).ok()?;
        Some(Client { s, buf: Vec::new() })
    }
}

/// A kept-alive HTTP/1.1 connection, as kube-scheduler's client keeps one.
struct Client {
    s: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn post(&mut self, path: &str, body: &[u8]) -> Option<Vec<u8>> {
        use std::io::{Read, Write};
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.s.write_all(head.as_bytes()).ok()?;
        self.s.write_all(body).ok()?;
        self.buf.clear();
        let mut chunk = [0u8; 65536];
        let (start, len) = loop {
            let n = self.s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])
                    .ok()?
                    .to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return None;
                }
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))?
                    .trim()
                    .parse::<usize>()
                    .ok()?;
                break (end + 4, len);
            }
        };
        while self.buf.len() < start + len {
            let n = self.s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Some(self.buf[start..start + len].to_vec())
    }

    /// /filter with `body`; with `follow`, /prioritize over the nodes that passed (as
    /// kube-scheduler does), built from the filter reply's text. Returns the reply bytes.
    fn filter_prioritize(&mut self, body: &str, follow: bool) -> Option<usize> {
        let r = self.post("/filter", body.as_bytes())?;
        if !follow {
            return Some(r.len());
        }
        // The reply starts {"Nodes":…,"NodeNames":…, in that order.
        let nodes_at = b"{\"Nodes\":".len();
        let nodes_end = crate::wire::skip_value(&r, nodes_at)?;
        let names_at = nodes_end + b",\"NodeNames\":".len();
        // Node names (DNS names) hold no bracket: the array ends at the first one.
        let names_end = match r.get(names_at) {
            Some(b'[') => names_at + memchr::memchr(b']', &r[names_at..])? + 1,
            _ => crate::wire::skip_value(&r, names_at)?,
        };
        let pod_at = body.find("\"Pod\":")? + 6;
        let pod_end = crate::wire::skip_value(body.as_bytes(), pod_at)?;
        let mut next = Vec::with_capacity(r.len() + pod_end);
        next.extend_from_slice(b"{\"Pod\":");
        next.extend_from_slice(&body.as_bytes()[pod_at..pod_end]);
        next.extend_from_slice(b",\"Nodes\":");
        next.extend_from_slice(&r[nodes_at..nodes_end]);
        next.extend_from_slice(b",\"NodeNames\":");
        next.extend_from_slice(&r[names_at..names_end]);
        next.push(b'}');
        let p = self.post("/prioritize", &next)?;
        Some(r.len() + p.len())
    }
}

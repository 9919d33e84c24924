//! Filter + prioritize latency for one pod over a large cluster, and the cluster's memory.

use std::sync::Arc;
use std::time::Instant;

use gpuslice_core::protocol::{
    AssignedGpu, Assignment, ContainerAssignment, GpuInfo, GpuMode, Inventory,
};
use gpuslice_core::sched::{Cluster, Config, Demand, PodRecord, PodSpec};

use crate::extender::{Extender, MemoryBinder, system_clock};

pub struct BenchReport {
    pub nodes: usize,
    pub gpus_per_node: usize,
    pub iterations: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub passed: usize,
    /// Resident memory the cluster state added, in bytes (from /proc/self/statm).
    pub cluster_bytes: u64,
    pub build_ms: f64,
    /// The same, as kube-scheduler sees it: /filter then /prioritize over loopback HTTP with
    /// the real JSON (5,000 node names each way).
    pub http_p50_us: f64,
    pub http_p99_us: f64,
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

/// `nodes` × `gpus` H100s, each GPU half its memory assigned to one pod.
pub fn half_full_cluster(nodes: usize, gpus: usize) -> Cluster {
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
            let a = Assignment::new(
                name.clone(),
                vec![ContainerAssignment {
                    name: "main".into(),
                    gpus: vec![AssignedGpu {
                        uuid: format!("GPU-{n:05}-{i}"),
                        memory_mib: 40960,
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
                    memory_mib: 40960,
                    compute_percent: 50,
                },
            })
            .expect("bench cluster is consistent");
        }
    }
    c
}

pub fn run(nodes: usize, gpus: usize, iterations: usize) -> BenchReport {
    let before = rss_bytes();
    let t = Instant::now();
    let cluster = half_full_cluster(nodes, gpus);
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let cluster_bytes = rss_bytes().saturating_sub(before);
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let ext = Arc::new(Extender::new(
        cluster,
        Config {
            fair_share: false,
            ..Config::default()
        },
        Arc::new(MemoryBinder),
        system_clock(),
    ));
    let pod = PodSpec::parse(
        "bench-uid",
        "bench",
        "bench",
        0,
        [(
            "main",
            vec![
                ("gpuslice.io/gpu", "1"),
                ("gpuslice.io/gpu-memory", "20480"),
                ("gpuslice.io/gpu-compute", "25"),
            ],
        )],
        [],
    )
    .expect("bench pod parses");
    let mut lat = Vec::with_capacity(iterations);
    let mut passed = 0;
    for _ in 0..iterations {
        let t = Instant::now();
        let out = ext.filter(pod.clone(), &names);
        let passing: Vec<String> = out.passed.iter().map(|&k| names[k].clone()).collect();
        let scores = ext.prioritize(&pod, &passing);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        passed = out.passed.len();
        std::hint::black_box(scores);
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let http = http_rounds(ext, &names, iterations.min(100));
    let hq = |p: f64| {
        if http.is_empty() {
            0.0
        } else {
            http[((http.len() - 1) as f64 * p).round() as usize]
        }
    };
    BenchReport {
        http_p50_us: hq(0.5),
        http_p99_us: hq(0.99),
        nodes,
        gpus_per_node: gpus,
        iterations,
        p50_us: q(0.5),
        p99_us: q(0.99),
        max_us: *lat.last().unwrap_or(&0.0),
        passed,
        cluster_bytes,
        build_ms,
    }
}

fn http_rounds(ext: Arc<Extender>, names: &[String], rounds: usize) -> Vec<f64> {
    use std::io::{Read, Write};
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
        return Vec::new();
    };
    let Ok(addr) = listener.local_addr() else {
        return Vec::new();
    };
    if listener.set_nonblocking(true).is_err() {
        return Vec::new();
    }
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
    let pod = serde_json::json!({"metadata": {"name": "bench", "namespace": "bench", "uid": "bench-uid"},
        "spec": {"containers": [{"name": "main", "resources": {"limits": {"gpuslice.io/gpu": "1", "gpuslice.io/gpu-memory": "20480", "gpuslice.io/gpu-compute": "25"}}}]}});
    let post = |path: &str, body: &str| -> Option<String> {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_nodelay(true).ok()?;
        write!(s, "POST {path} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out.split_once("\r\n\r\n")?.1.to_string())
    };
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let args = serde_json::json!({"Pod": pod, "NodeNames": names, "Nodes": null}).to_string();
        let Some(body) = post("/filter", &args) else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            return Vec::new();
        };
        let args =
            serde_json::json!({"Pod": pod, "NodeNames": v["NodeNames"], "Nodes": null}).to_string();
        let Some(body) = post("/prioritize", &args) else {
            return Vec::new();
        };
        std::hint::black_box(serde_json::from_str::<serde_json::Value>(&body).ok());
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    lat
}

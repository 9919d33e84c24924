//! `gpuslice scheduler`: the kube-scheduler extender. Thin: the logic lives in
//! `gpuslice-scheduler` and `gpuslice_core::sched`.

use std::path::PathBuf;
use std::sync::Arc;

use gpuslice_core::sched::Cluster;
use gpuslice_core::sched::sim::ClusterSpec;
use gpuslice_scheduler::extender::{Binder, Extender, MemoryBinder, system_clock};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Serve the extender here, e.g. 0.0.0.0:8888.
    #[arg(long, value_name = "ADDR", required_unless_present = "bench")]
    pub listen: Option<std::net::SocketAddr>,
    /// Watch nodes and pods and bind through the Kubernetes API with this kubeconfig.
    #[arg(long, value_name = "FILE", conflicts_with = "cluster_file")]
    pub kubeconfig: Option<PathBuf>,
    /// Take the cluster from this file instead (offline; binds stay in memory).
    #[arg(long, value_name = "FILE")]
    pub cluster_file: Option<PathBuf>,
    /// Scheduler config (JSON): nodePolicy, gpuPolicy, gangTimeoutSeconds, fairShare.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Instead of serving: time filter + prioritize for one pod over a large half-full cluster.
    #[arg(long)]
    pub bench: bool,
    /// Nodes in the benchmark cluster.
    #[arg(long, default_value_t = 5000)]
    pub bench_nodes: usize,
    /// Filter + prioritize rounds in the benchmark.
    #[arg(long, default_value_t = 200)]
    pub bench_iterations: usize,
}

fn read(what: &str, p: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{what} {}: {e}", p.display()))
}

pub fn main(a: Args) -> i32 {
    crate::init_logging();
    if a.bench {
        let r = gpuslice_scheduler::bench::run(a.bench_nodes, 8, a.bench_iterations.max(1));
        println!(
            "gpuslice scheduler bench: one pod (1 slice, 20 GiB, 25 %) over {} nodes x {} GPUs, half the memory assigned",
            r.nodes, r.gpus_per_node
        );
        println!(
            "  filter+prioritize   p50 {:>8.0} us   p99 {:>8.0} us   max {:>8.0} us   ({} rounds, {} nodes pass)",
            r.p50_us, r.p99_us, r.max_us, r.iterations, r.passed
        );
        println!(
            "  over HTTP + JSON    p50 {:>8.0} us   p99 {:>8.0} us   (loopback, both requests, client encode/decode included)",
            r.http_p50_us, r.http_p99_us
        );
        println!("  target              p99 {:>8.0} us", 2000.0);
        println!(
            "  cluster state       {:>8.1} MiB resident (target 200 MiB), built in {:.0} ms",
            r.cluster_bytes as f64 / 1048576.0,
            r.build_ms
        );
        return 0;
    }
    let cfg = match &a.config {
        Some(p) => match read("--config", p)
            .and_then(|s| gpuslice_scheduler::parse_config(&s).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("gpuslice scheduler: {e}");
                return 2;
            }
        },
        None => Default::default(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gpuslice scheduler: runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let (cluster, binder, client): (Cluster, Arc<dyn Binder>, _) = match &a.cluster_file {
            Some(p) => match read("--cluster-file", p).and_then(|s| {
                ClusterSpec::parse(&s)
                    .and_then(|c| c.build())
                    .map_err(|e| e.to_string())
            }) {
                Ok(c) => (c, Arc::new(MemoryBinder), None),
                Err(e) => {
                    eprintln!("gpuslice scheduler: {e}");
                    return 2;
                }
            },
            None => match gpuslice_scheduler::kube::client(a.kubeconfig.as_deref()).await {
                Ok(c) => (
                    Cluster::new(),
                    Arc::new(gpuslice_scheduler::kube::KubeBinder { client: c.clone() }),
                    Some(c),
                ),
                Err(e) => {
                    eprintln!("gpuslice scheduler: {e}");
                    return 2;
                }
            },
        };
        let ext = Arc::new(Extender::new(cluster, cfg, binder, system_clock()));
        if let Some(c) = client {
            tokio::spawn(gpuslice_scheduler::kube::watch_nodes(
                c.clone(),
                ext.clone(),
            ));
            tokio::spawn(gpuslice_scheduler::kube::watch_pods(c, ext.clone()));
        }
        let addr = a.listen.expect("clap requires --listen");
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("gpuslice scheduler: --listen {addr}: {e}");
                return 2;
            }
        };
        eprintln!(
            "gpuslice scheduler: serving the extender on {}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        match gpuslice_scheduler::server::serve(listener, ext).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("gpuslice scheduler: {e}");
                1
            }
        }
    })
}

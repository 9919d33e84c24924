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
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["bench", "webhook_listen"])]
    pub listen: Option<std::net::SocketAddr>,
    /// Watch nodes and pods and bind through the Kubernetes API with this kubeconfig.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "cluster_file",
        requires = "listen"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// Take the cluster from this file instead (offline; binds stay in memory).
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub cluster_file: Option<PathBuf>,
    /// Scheduler config (JSON): nodePolicy, gpuPolicy, gangTimeoutSeconds, fairShare.
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub config: Option<PathBuf>,
    /// Also (or only) serve the admission webhook that routes gpuslice pods to the
    /// gpuslice-scheduler profile, over HTTPS here, e.g. 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR", requires_all = ["webhook_tls_cert", "webhook_tls_key"])]
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// The webhook's serving certificate (PEM, then its chain); re-read when it changes.
    #[arg(long, value_name = "FILE", requires = "webhook_listen")]
    pub webhook_tls_cert: Option<PathBuf>,
    /// The webhook's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "webhook_listen")]
    pub webhook_tls_key: Option<PathBuf>,
    /// Pod specs written for another system that the webhook rewrites into gpuslice requests
    /// (`hami`: HAMi's nvidia.com/gpumem, gpucores and annotations; see docs/migration.md).
    #[arg(long, value_name = "SYSTEM", value_enum, requires = "webhook_listen")]
    pub webhook_compat: Vec<CompatSystem>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompatSystem {
    Hami,
}

pub fn main(a: Args) -> i32 {
    crate::init_logging();
    if a.bench {
        let r = gpuslice_scheduler::bench::run(a.bench_nodes, 8, a.bench_iterations.max(1));
        println!("{r}");
        return 0;
    }
    // Every file is checked before anything is served.
    let webhook = match (&a.webhook_listen, &a.webhook_tls_cert, &a.webhook_tls_key) {
        (Some(addr), Some(cert), Some(key)) => {
            match gpuslice_scheduler::webhook::tls_config(cert, key) {
                Ok(tls) => Some((*addr, tls)),
                Err(e) => {
                    eprintln!("gpuslice scheduler: {e}");
                    return 2;
                }
            }
        }
        _ => None,
    };
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
        let webhook = match webhook {
            Some((addr, tls)) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    eprintln!(
                        "gpuslice scheduler: serving the webhook on https://{}{}",
                        l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                        gpuslice_scheduler::webhook::PATH
                    );
                    Some(gpuslice_scheduler::webhook::serve(
                        l,
                        tls,
                        gpuslice_scheduler::webhook::DEFAULT_SCHEDULER_NAME,
                        gpuslice_scheduler::webhook::Compat {
                            hami: a.webhook_compat.contains(&CompatSystem::Hami),
                        },
                    ))
                }
                Err(e) => {
                    eprintln!("gpuslice scheduler: --webhook-listen {addr}: {e}");
                    return 2;
                }
            },
            None => None,
        };
        let extender = match a.listen {
            Some(addr) => match extender(&a, cfg, addr).await {
                Ok(f) => Some(f),
                Err(code) => return code,
            },
            None => None,
        };
        // Serve until either server fails; each one absent waits forever.
        let r = tokio::select! {
            r = async { extender.unwrap().await }, if extender.is_some() => r,
            r = async { webhook.unwrap().await }, if webhook.is_some() => r,
            else => Ok(()),
        };
        match r {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("gpuslice scheduler: {e}");
                1
            }
        }
    })
}

/// Builds the extender's cluster, starts its watches and binds its listener; the future serves
/// it. Errors are exit codes, already reported.
async fn extender(
    a: &Args,
    cfg: gpuslice_core::sched::Config,
    addr: std::net::SocketAddr,
) -> Result<impl std::future::Future<Output = std::io::Result<()>> + use<>, i32> {
    let (cluster, binder, client): (Cluster, Arc<dyn Binder>, _) = match &a.cluster_file {
        Some(p) => match read("--cluster-file", p).and_then(|s| {
            ClusterSpec::parse(&s)
                .and_then(|c| c.build())
                .map_err(|e| e.to_string())
        }) {
            Ok(c) => (c, Arc::new(MemoryBinder), None),
            Err(e) => {
                eprintln!("gpuslice scheduler: {e}");
                return Err(2);
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
                return Err(2);
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
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gpuslice scheduler: --listen {addr}: {e}");
            return Err(2);
        }
    };
    eprintln!(
        "gpuslice scheduler: serving the extender on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    Ok(gpuslice_scheduler::server::serve(listener, ext))
}

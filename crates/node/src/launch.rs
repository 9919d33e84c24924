//! Starting the agent from the command line's choices: configuration, discovery, the cluster
//! connection, then the runtime. Exit status 2 for bad input, 1 for failures.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{self, Options};
use crate::assign::Source;
use crate::config::NodeConfig;
use crate::gpu::{GpuSource, NvmlGpus};

pub enum Cluster {
    None { assignments: PathBuf },
    Kubeconfig(PathBuf),
    InCluster,
}

pub struct Launch {
    /// The simulator's `libnvidia_ml.so` (with `--sim`); the system's NVML otherwise.
    pub sim_nvml: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub cluster: Cluster,
    pub options: Options,
}

pub fn launch(l: Launch) -> i32 {
    let cfg = match &l.config {
        Some(p) => match NodeConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("gpuslice node: --config {}: {e}", p.display());
                return 2;
            }
        },
        None => NodeConfig::default(),
    };
    let found = match &l.sim_nvml {
        Some(lib) => NvmlGpus::simulated(lib).map_err(|e| format!("the simulated GPU: {e}")),
        None => NvmlGpus::system().map_err(|e| format!("NVML: {e}")),
    };
    let gpus: Arc<dyn GpuSource> = match found {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gpuslice node: {e}");
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gpuslice node: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let source = match l.cluster {
            Cluster::None { assignments } => Source::File(assignments),
            c => match client(c).await {
                Ok(client) => Source::Kube {
                    client,
                    node: l.options.node_name.clone(),
                },
                Err(e) => {
                    eprintln!("gpuslice node: {e}");
                    return 2;
                }
            },
        };
        let shared = match agent::start(&l.options, cfg, gpus, source) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gpuslice node: {e}");
                return 1;
            }
        };
        // An NVML without a usable event API leaves health unwatched, not the agent down.
        let events: Box<dyn crate::health::EventSource> =
            match crate::health::NvmlEvents::open(l.sim_nvml.as_deref()) {
                Ok(e) => Box::new(e),
                Err(e) => {
                    tracing::error!("GPU health events unavailable, health not watched: {e}");
                    Box::new(crate::health::Quiet)
                }
            };
        agent::spawn_health(shared.clone(), events);
        tokio::select! {
            r = agent::run(l.options, shared) => match r {
                Ok(()) => 0,
                Err(e) => { eprintln!("gpuslice node: {e}"); 1 }
            },
            _ = tokio::signal::ctrl_c() => 0,
        }
    })
}

async fn client(c: Cluster) -> Result<kube::Client, String> {
    let config = match c {
        Cluster::Kubeconfig(p) => {
            let kc = kube::config::Kubeconfig::read_from(&p)
                .map_err(|e| format!("--kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", p.display()))?
        }
        Cluster::InCluster => {
            kube::Config::incluster().map_err(|e| format!("--in-cluster: {e}"))?
        }
        Cluster::None { .. } => unreachable!(),
    };
    kube::Client::try_from(config).map_err(|e| format!("the Kubernetes client: {e}"))
}

/// The host name, the default node name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

pub const DEFAULT_SOCKET_DIR: &str = "/var/lib/kubelet/device-plugins";
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gpuslice";
/// Quiet time before a faulted device is re-probed, unless the configuration says
/// (`health.recoverAfterSeconds`).
pub const HEALTH_QUIET: Duration = Duration::from_secs(300);

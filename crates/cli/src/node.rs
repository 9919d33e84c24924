//! `gpuslice node`: the node agent (kubelet device plugin, CDI, health, metrics). Thin: the
//! agent lives in `gpuslice-node`.

use std::path::PathBuf;

use gpuslice_node::agent::Options;
use gpuslice_node::launch::{self, Cluster, Launch};

use crate::install::{Install, state_dir};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Discover the simulated GPU instead of real ones.
    #[arg(long)]
    pub sim: bool,
    /// Configuration file (YAML); reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kubelet's device plugin directory (holds kubelet.sock).
    #[arg(long, value_name = "DIR", default_value = launch::DEFAULT_SOCKET_DIR)]
    pub socket_dir: PathBuf,
    /// Kubelet's pod resources socket: at start and every 30 s, allocations no running container
    /// holds are released. Absent (a plain host): the agent's own store alone decides.
    #[arg(long, value_name = "FILE", default_value = gpuslice_node::podres::DEFAULT_SOCKET)]
    pub pod_resources_socket: PathBuf,
    /// Where CDI spec files are written.
    #[arg(long, value_name = "DIR", default_value = launch::DEFAULT_CDI_DIR)]
    pub cdi_dir: PathBuf,
    /// Persisted allocations, tenant ledgers and the interposer copy handed to containers.
    #[arg(long, value_name = "DIR", default_value = launch::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Serve /metrics and /healthz here, e.g. 0.0.0.0:9400.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// This node's name in the cluster (default: $NODE_NAME, else the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Reach the Kubernetes API with this kubeconfig.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["in_cluster", "no_kube"])]
    pub kubeconfig: Option<PathBuf>,
    /// Reach the Kubernetes API with the pod's service account.
    #[arg(long, conflicts_with = "no_kube")]
    pub in_cluster: bool,
    /// No cluster: assignments come from the local assignment file.
    #[arg(long)]
    pub no_kube: bool,
    /// The local assignment file (with --no-kube); default <state-dir>/assignments.json.
    #[arg(long, value_name = "FILE", requires = "no_kube")]
    pub assignments: Option<PathBuf>,
}

pub fn main(a: Args) -> i32 {
    crate::init_logging();
    // Bad input is reported before anything else is looked for.
    if let Some(p) = &a.config
        && let Err(e) = gpuslice_node::config::NodeConfig::load(p)
    {
        eprintln!("gpuslice node: --config {}: {e}", p.display());
        return 2;
    }
    if let Err(e) = gpuslice_node::podres::check_socket_path(&a.pod_resources_socket) {
        eprintln!("gpuslice node: --pod-resources-socket: {e}");
        return 2;
    }
    let install = match Install::locate() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("gpuslice node: {e}");
            return 2;
        }
    };
    let cluster = if a.no_kube {
        Cluster::None {
            assignments: a
                .assignments
                .clone()
                .unwrap_or_else(|| a.state_dir.join("assignments.json")),
        }
    } else if let Some(k) = a.kubeconfig.clone() {
        Cluster::Kubeconfig(k)
    } else if a.in_cluster {
        Cluster::InCluster
    } else {
        eprintln!(
            "gpuslice node: say how to reach the cluster: --kubeconfig FILE, --in-cluster or --no-kube"
        );
        return 2;
    };
    let node_name = a
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(launch::hostname);
    launch::launch(Launch {
        sim_nvml: a
            .sim
            .then(|| install.lib_dir.join(crate::install::SIM_NVML)),
        config: a.config.clone(),
        cluster,
        options: Options {
            node_name,
            config_path: a.config,
            socket_dir: a.socket_dir,
            cdi_dir: a.cdi_dir,
            state_dir: a.state_dir,
            metrics_addr: a.metrics_addr,
            interposer: install.interposer(),
            // Plain `gpuslice run` tenants of this host show up in the metrics too.
            extra_tenant_dirs: vec![state_dir().join("tenants")],
            compute_dir: crate::install::compute_dir(),
            health_quiet: launch::HEALTH_QUIET,
            reload_every: std::time::Duration::from_secs(2),
            pod_resources_socket: a.pod_resources_socket,
            reconcile_every: gpuslice_node::podres::DEFAULT_EVERY,
        },
    })
}

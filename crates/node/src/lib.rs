//! The gpuslice node agent: tells kubelet which GPU slices the node has, turns the scheduler's
//! assignment into a capped container (ledger, interposer, CDI device), keeps allocations across
//! restarts, follows GPU health and configuration changes, and exports metrics.

pub mod agent;
pub mod allocate;
pub mod arbiter;
pub mod assign;
pub mod cdi;
pub mod config;
pub mod devices;
pub mod exposition;
pub mod gpu;
pub mod health;
pub mod hostpaths;
pub mod launch;
pub mod metrics;
pub mod plugin;
pub mod podres;
pub mod state;
pub mod usage;
pub mod watchdog;

/// The kubelet device plugin API v1beta1 (client and server), generated from `proto/api.proto`.
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("v1beta1");
}

/// Kubelet's pod resources API v1 (client and server), generated from `proto/podresources.proto`.
#[allow(clippy::all)]
pub mod podres_pb {
    tonic::include_proto!("v1");
}

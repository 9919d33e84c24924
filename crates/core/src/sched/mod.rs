//! Cluster scheduling for GPU slices: fit, scoring, quotas, fair share, gangs, preemption and
//! the what-if simulator. Pure: no IO, no clock (callers pass `now` in milliseconds).
//!
//! The hot path (filter + prioritize over thousands of nodes) works on indices: GPU models are
//! interned per cluster so model include/exclude is decided once per pod and model, NVLink
//! adjacency is a bitmask per GPU, and per-GPU usage is a small `Copy` struct so a pod with
//! several containers is fitted against a scratch copy of one node's usage.

pub mod cluster;
pub mod fit;
pub mod gang;
pub mod hint;
pub mod preempt;
pub mod quota;
pub mod sim;

#[cfg(test)]
mod tests;

pub use cluster::{Cluster, ClusterError, GpuUsage, Node, PodRecord};
pub use fit::{
    Candidate, Config, Fit, PodSpec, Refusal, ShapeMemo, Take, Verdict, fit_node, fit_verdict,
    score,
};
pub use gang::{GangDecision, GangTracker, Reservation};
pub use hint::{MigHint, mig_hint, outstanding_mig};
pub use preempt::{Victim, select_victims};
pub use quota::{Demand, Quota, QuotaError, dominant_share};

//! The pure domain of gpuslice: quantities, tenant limits, MIG geometry, policies.
//!
//! Invariant: nothing in this crate does IO or reads a clock. Every edge (the CLI, the node
//! agent, the scheduler) uses it; it uses no edge.

pub mod compat;
pub mod compute;
pub mod mig;
pub mod protocol;
pub mod quantity;
pub mod sched;
pub mod tenant;
pub mod usage;
pub mod watchdog;

pub use quantity::{ByteSize, Quantity, QuantityError};
pub use tenant::{DeviceList, TenantLimits};

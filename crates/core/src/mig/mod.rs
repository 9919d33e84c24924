//! MIG geometry, layout validation and an optimal partition planner.
//!
//! A GPU is `memory_slices` memory slices (8; 4 on A30) and `compute_slices` compute slices
//! (7; 4 on A30). A GPU instance of a profile takes one of the profile's fixed placements
//! (a contiguous run of memory slices) plus its compute slices. Everything here is pure:
//! static tables, parsing, validation and search.

mod layout;
mod models;
mod parted;
mod plan;
mod reconcile;

#[cfg(test)]
mod tests;

pub use layout::{Instance, Requested, check_layout, parse_demand, parse_layout, validate};
pub use models::{
    A30_24GB, A100_40GB, A100_80GB, CiProfile, GiProfile, GpuModel, H100_80GB, H100_94GB,
    H200_141GB, MODELS, Placement,
};
pub use parted::{
    DeviceDesired, DeviceFilter, DeviceSelector, MigConfigEntry, MigPartedConfig, desired_state,
};
pub use plan::{Plan, Unplaced, plan, plan_keeping};
pub use reconcile::{FoundGpu, FoundInstance, export, mismatch, plan_exact};

/// A demand: how many instances of each profile are wanted.
pub type Demand = Vec<(String, u32)>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigError {
    #[error("unknown GPU model `{name}`; accepted: {accepted}")]
    UnknownModel { name: String, accepted: String },

    #[error("unknown MIG profile `{profile}` for {model}; accepted: {accepted}")]
    UnknownProfile {
        model: String,
        profile: String,
        accepted: String,
    },

    #[error("{profile} cannot start at memory slice {start}; allowed starts: {allowed}")]
    BadStart {
        profile: String,
        start: u8,
        allowed: String,
    },

    #[error("{profile} spans {expected} memory slices, not {size}")]
    BadSize {
        profile: String,
        size: u8,
        expected: u8,
    },

    #[error("{a} and {b} overlap")]
    Overlap { a: String, b: String },

    #[error("too many {profile}: {requested} requested, max {max} on {model}")]
    TooMany {
        model: String,
        profile: String,
        requested: u32,
        max: u8,
    },

    #[error(
        "{a} and {b} both need the GPU's single set of media engines; at most one `+me` instance fits"
    )]
    MediaConflict { a: String, b: String },

    #[error("not enough memory slices: the layout needs {needed}, {model} has {available}")]
    NotEnoughMemory {
        model: String,
        needed: u32,
        available: u8,
    },

    #[error("not enough compute slices: the layout needs {needed}, {model} has {available}")]
    NotEnoughCompute {
        model: String,
        needed: u32,
        available: u8,
    },

    #[error("no placement fits: {detail}")]
    NoPlacement { detail: String },

    #[error("cannot parse `{input}`: {reason}")]
    Parse { input: String, reason: String },

    #[error("unknown mig-parted config `{name}`; accepted: {accepted}")]
    UnknownConfig { name: String, accepted: String },

    #[error("mig-parted config `{config}`: {reason}")]
    Config { config: String, reason: String },
}

/// Finds a model by name or alias, ignoring case and treating ` `, `_` and `-` alike.
pub fn model(name: &str) -> Result<&'static GpuModel, MigError> {
    MODELS
        .iter()
        .copied()
        .find(|m| m.matches(name))
        .ok_or_else(|| MigError::UnknownModel {
            name: name.to_string(),
            accepted: accepted_models(),
        })
}

fn accepted_models() -> String {
    MODELS
        .iter()
        .map(|m| format!("{} ({})", m.name, m.aliases.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Looks a profile up on a model, or reports the names the model accepts.
pub(crate) fn lookup(model: &GpuModel, name: &str) -> Result<&'static GiProfile, MigError> {
    model.profile(name).ok_or_else(|| MigError::UnknownProfile {
        model: model.name.to_string(),
        profile: name.to_string(),
        accepted: model.profile_names().join(", "),
    })
}

pub(crate) fn normalize(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            ' ' | '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

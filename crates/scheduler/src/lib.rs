//! The gpuslice kube-scheduler extender: HTTP server, cluster state from a cluster file or
//! the Kubernetes API, and the benchmark. Scheduling decisions come from
//! `gpuslice_core::sched`; this crate adds IO, time and concurrency.

pub mod bench;
pub mod extender;
pub mod kube;
pub mod server;
pub mod webhook;
pub mod wire;

use gpuslice_core::protocol::{Policy, ProtocolError};
use gpuslice_core::sched::Config;
use serde::Deserialize;

/// The scheduler's config file (`--config`, JSON). Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    node_policy: Option<Policy>,
    #[serde(default)]
    gpu_policy: Option<Policy>,
    #[serde(default)]
    gang_timeout_seconds: Option<u64>,
    #[serde(default)]
    fair_share: Option<bool>,
}

/// Parses the config file; refusals name the field.
pub fn parse_config(s: &str) -> Result<Config, ProtocolError> {
    let de = &mut serde_json::Deserializer::from_str(s);
    let f: ConfigFile = serde_path_to_error::deserialize(de).map_err(|e| {
        ProtocolError::new(
            format!("scheduler config: {}", e.path()),
            e.into_inner().to_string(),
        )
    })?;
    let mut c = Config::default();
    if let Some(p) = f.node_policy {
        c.node_policy = p;
    }
    if let Some(p) = f.gpu_policy {
        c.gpu_policy = p;
    }
    if let Some(t) = f.gang_timeout_seconds {
        if t == 0 {
            return Err(ProtocolError::new(
                "scheduler config: gangTimeoutSeconds",
                "must be at least 1",
            ));
        }
        c.gang_timeout_seconds = t;
    }
    if let Some(b) = f.fair_share {
        c.fair_share = b;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_parses_and_refuses_naming_the_field() {
        let c =
            super::parse_config(r#"{"nodePolicy": "spread", "gangTimeoutSeconds": 60}"#).unwrap();
        assert_eq!(c.node_policy, gpuslice_core::protocol::Policy::Spread);
        assert_eq!(c.gang_timeout_seconds, 60);
        let e = super::parse_config(r#"{"gpuPolicy": "tight"}"#).unwrap_err();
        assert!(
            e.field.contains("gpuPolicy") && e.reason.contains("tight"),
            "{e}"
        );
        let e = super::parse_config(r#"{"gangTimeoutSeconds": 0}"#).unwrap_err();
        assert!(e.field.contains("gangTimeoutSeconds"), "{e}");
        assert!(super::parse_config(r#"{"nodePolcy": "spread"}"#).is_err());
    }
}

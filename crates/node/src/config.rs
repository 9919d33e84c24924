//! The agent's configuration file (YAML; JSON is accepted as YAML).
//!
//! ```yaml
//! version: v1
//! slices: 10                  # default units per shared GPU
//! defaultMode: shared         # shared | whole | time-slicing
//! timeSlicing:
//!   resourceName: nvidia.com/gpu
//!   replicas: 4
//! injection: both             # env | cdi | both
//! gpus:                       # per-GPU overrides, by uuid or index
//!   - uuid: GPU-…
//!     mode: whole
//!   - index: 1
//!     slices: 4
//! health:
//!   recoverAfterSeconds: 300  # quiet time before a faulted device is re-probed
//! watchdog:
//!   action: kill              # kill | report | off: tenants' processes breaking their limits
//!   unknownProcesses: report  # ignore | report | kill: processes on a GPU of no tenant
//!   slackMiB: 128             # per process, beyond the cap by the driver's count
//! ```
//!
//! Every refusal names the field (`gpus[1].slices`) and the accepted form.

use serde::Deserialize;

pub const DEFAULT_SLICES: u32 = 10;
pub const MAX_SLICES: u32 = 100;
pub const DEFAULT_TIME_SLICING_RESOURCE: &str = "nvidia.com/gpu";
/// Longest quiet period accepted before re-probing a faulted device: a week.
pub const MAX_RECOVER_AFTER_SECONDS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `gpuslice.io/gpu` slices, placed and sized by the gpuslice scheduler.
    Shared,
    /// `gpuslice.io/whole-gpu`: one device per GPU, capped at the GPU's memory.
    Whole,
    /// NVIDIA-style time-slicing replicas under a compatible resource name, each capped at an
    /// even share of the GPU's memory (real isolation, unlike plain time-slicing).
    TimeSlicing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Injection {
    /// Environment and mounts in the Allocate response only.
    Env,
    /// A CDI device only (the runtime applies the spec).
    Cdi,
    /// Both: works with runtimes with and without CDI support.
    #[default]
    Both,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeSlicing {
    #[serde(default = "default_ts_resource")]
    pub resource_name: String,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

fn default_ts_resource() -> String {
    DEFAULT_TIME_SLICING_RESOURCE.to_string()
}
fn default_replicas() -> u32 {
    4
}
fn default_slices() -> u32 {
    DEFAULT_SLICES
}
fn default_mode() -> Mode {
    Mode::Shared
}

impl Default for TimeSlicing {
    fn default() -> Self {
        TimeSlicing {
            resource_name: default_ts_resource(),
            replicas: default_replicas(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuOverride {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub slices: Option<u32>,
}

/// GPU health. NVML reports faults but never their end, so a faulted device is re-probed after
/// a quiet period without further faults and advertised healthy again if it answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds; the agent's default (300) when absent.
    #[serde(default)]
    pub recover_after_seconds: Option<u64>,
}

/// What the watchdog does about a tenant's process that escapes its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WatchdogAction {
    /// SIGKILL it.
    #[default]
    Kill,
    /// Log and count it only.
    Report,
    /// No watchdog.
    Off,
}

/// What the watchdog does about a process on a GPU that belongs to no tenant (a host tool, or
/// a container gpuslice did not make).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownProcesses {
    Ignore,
    #[default]
    Report,
    Kill,
}

/// Longest per-process slack accepted: the largest context a driver makes is well below it.
pub const MAX_WATCHDOG_SLACK_MIB: u64 = 4096;

/// The watchdog (see `crate::watchdog`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchdogConfig {
    #[serde(default)]
    pub action: WatchdogAction,
    #[serde(default)]
    pub unknown_processes: UnknownProcesses,
    /// MiB each process of a tenant may hold beyond the cap by the driver's count.
    #[serde(default = "default_slack_mib", rename = "slackMiB")]
    pub slack_mib: u64,
}

fn default_slack_mib() -> u64 {
    gpuslice_core::watchdog::DEFAULT_SLACK_PER_PROCESS >> 20
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            action: WatchdogAction::default(),
            unknown_processes: UnknownProcesses::default(),
            slack_mib: default_slack_mib(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    pub version: String,
    #[serde(default = "default_slices")]
    pub slices: u32,
    #[serde(default = "default_mode")]
    pub default_mode: Mode,
    #[serde(default)]
    pub time_slicing: TimeSlicing,
    #[serde(default)]
    pub injection: Injection,
    #[serde(default)]
    pub gpus: Vec<GpuOverride>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub watchdog: WatchdogConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            version: "v1".into(),
            slices: DEFAULT_SLICES,
            default_mode: Mode::Shared,
            time_slicing: TimeSlicing::default(),
            injection: Injection::Both,
            gpus: Vec::new(),
            health: HealthConfig::default(),
            watchdog: WatchdogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// How one GPU is offered, after overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuOffer {
    pub mode: Mode,
    /// Devices advertised for this GPU: slices, 1 (whole) or time-slicing replicas.
    pub units: u32,
}

impl NodeConfig {
    pub fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let cfg: NodeConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "config".to_string()
            } else {
                path
            };
            err(field, e.into_inner().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &std::path::Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path.display().to_string(), e.to_string()))?;
        NodeConfig::parse(&text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != "v1" {
            return Err(err(
                "version",
                format!("'{}' is not supported; accepted: v1", self.version),
            ));
        }
        let slices_ok = |n: u32| (1..=MAX_SLICES).contains(&n);
        if !slices_ok(self.slices) {
            return Err(err(
                "slices",
                format!("{} must be 1..={MAX_SLICES}", self.slices),
            ));
        }
        if !slices_ok(self.time_slicing.replicas) {
            return Err(err(
                "timeSlicing.replicas",
                format!("{} must be 1..={MAX_SLICES}", self.time_slicing.replicas),
            ));
        }
        if let Some(s) = self.health.recover_after_seconds
            && !(1..=MAX_RECOVER_AFTER_SECONDS).contains(&s)
        {
            return Err(err(
                "health.recoverAfterSeconds",
                format!("{s} must be 1..={MAX_RECOVER_AFTER_SECONDS} (seconds)"),
            ));
        }
        if self.watchdog.slack_mib > MAX_WATCHDOG_SLACK_MIB {
            return Err(err(
                "watchdog.slackMiB",
                format!(
                    "{} must be 0..={MAX_WATCHDOG_SLACK_MIB} (MiB per process)",
                    self.watchdog.slack_mib
                ),
            ));
        }
        let rn = &self.time_slicing.resource_name;
        if !valid_resource_name(rn) || rn.starts_with("gpuslice.io/") {
            return Err(err(
                "timeSlicing.resourceName",
                format!(
                    "'{rn}' is not an extended resource name outside gpuslice.io/ (e.g. nvidia.com/gpu)"
                ),
            ));
        }
        for (i, g) in self.gpus.iter().enumerate() {
            let f = |n: &str| format!("gpus[{i}].{n}");
            match (&g.uuid, g.index) {
                (None, None) | (Some(_), Some(_)) => {
                    return Err(err(
                        format!("gpus[{i}]"),
                        "give exactly one of uuid or index",
                    ));
                }
                (Some(u), None) if gpuslice_ledger::parse_uuid(u).is_none() => {
                    return Err(err(
                        f("uuid"),
                        format!("'{u}' is not a GPU UUID (GPU-xxxxxxxx-xxxx-…)"),
                    ));
                }
                _ => {}
            }
            if let Some(n) = g.slices {
                if !slices_ok(n) {
                    return Err(err(f("slices"), format!("{n} must be 1..={MAX_SLICES}")));
                }
                if g.mode.unwrap_or(self.default_mode) != Mode::Shared {
                    return Err(err(f("slices"), "applies only to mode: shared"));
                }
            }
            for (j, h) in self.gpus[..i].iter().enumerate() {
                if (g.uuid.is_some() && g.uuid == h.uuid)
                    || (g.index.is_some() && g.index == h.index)
                {
                    return Err(err(
                        format!("gpus[{i}]"),
                        format!("names the same GPU as gpus[{j}]"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The offer for GPU `index` with `uuid`.
    pub fn offer(&self, index: u32, uuid: &str) -> GpuOffer {
        let o = self.gpus.iter().find(|g| {
            g.index == Some(index)
                || g.uuid
                    .as_deref()
                    .and_then(gpuslice_ledger::parse_uuid)
                    .is_some_and(|u| Some(u) == gpuslice_ledger::parse_uuid(uuid))
        });
        let mode = o.and_then(|o| o.mode).unwrap_or(self.default_mode);
        let units = match mode {
            Mode::Shared => o.and_then(|o| o.slices).unwrap_or(self.slices),
            Mode::Whole => 1,
            Mode::TimeSlicing => self.time_slicing.replicas,
        };
        GpuOffer { mode, units }
    }
}

/// `domain/name` as Kubernetes accepts for extended resources.
pub fn valid_resource_name(s: &str) -> bool {
    let Some((d, n)) = s.split_once('/') else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    };
    ok(d) && ok(n) && d.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_applies_overrides() {
        let c = NodeConfig::parse(
            "version: v1\nslices: 8\ngpus:\n  - index: 1\n    slices: 4\n  - uuid: GPU-5e1f0002-0000-4000-8000-5e1f00000002\n    mode: whole\n",
        )
        .unwrap();
        assert_eq!(
            c.offer(0, "GPU-x"),
            GpuOffer {
                mode: Mode::Shared,
                units: 8
            }
        );
        assert_eq!(
            c.offer(1, "GPU-x"),
            GpuOffer {
                mode: Mode::Shared,
                units: 4
            }
        );
        assert_eq!(
            c.offer(2, "GPU-5e1f0002-0000-4000-8000-5e1f00000002"),
            GpuOffer {
                mode: Mode::Whole,
                units: 1
            }
        );
        let t = NodeConfig::parse(
            "version: v1\ndefaultMode: time-slicing\ntimeSlicing: {replicas: 3}\n",
        )
        .unwrap();
        assert_eq!(
            t.offer(0, "x"),
            GpuOffer {
                mode: Mode::TimeSlicing,
                units: 3
            }
        );
        assert_eq!(t.time_slicing.resource_name, "nvidia.com/gpu");
        assert_eq!(t.health.recover_after_seconds, None);
        let h = NodeConfig::parse("version: v1\nhealth: {recoverAfterSeconds: 90}\n").unwrap();
        assert_eq!(h.health.recover_after_seconds, Some(90));
        assert_eq!(h.watchdog, WatchdogConfig::default());
        assert_eq!(h.watchdog.action, WatchdogAction::Kill);
        assert_eq!(h.watchdog.unknown_processes, UnknownProcesses::Report);
        assert_eq!(h.watchdog.slack_mib, 128);
        let w = NodeConfig::parse(
            "version: v1\nwatchdog: {action: report, unknownProcesses: ignore, slackMiB: 0}\n",
        )
        .unwrap();
        assert_eq!(
            w.watchdog,
            WatchdogConfig {
                action: WatchdogAction::Report,
                unknown_processes: UnknownProcesses::Ignore,
                slack_mib: 0
            }
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (text, field) in [
            ("version: v2\n", "version"),
            ("version: v1\nslices: 0\n", "slices"),
            ("version: v1\nslices: many\n", "slices"),
            (
                "version: v1\ngpus:\n  - index: 0\n    slices: 500\n",
                "gpus[0].slices",
            ),
            (
                "version: v1\ngpus:\n  - index: 0\n    mode: whole\n    slices: 2\n",
                "gpus[0].slices",
            ),
            (
                "version: v1\ngpus:\n  - {index: 0}\n  - {index: 0}\n",
                "gpus[1]",
            ),
            ("version: v1\ngpus:\n  - uuid: nope\n", "gpus[0].uuid"),
            (
                "version: v1\ngpus:\n  - {index: 0, mode: fast}\n",
                "gpus[0].mode",
            ),
            (
                "version: v1\ntimeSlicing: {replicas: 0}\n",
                "timeSlicing.replicas",
            ),
            (
                "version: v1\ntimeSlicing: {resourceName: gpu}\n",
                "timeSlicing.resourceName",
            ),
            ("version: v1\nslicez: 3\n", "slicez"),
            (
                "version: v1\nhealth: {recoverAfterSeconds: 0}\n",
                "health.recoverAfterSeconds",
            ),
            (
                "version: v1\nhealth: {recoverAfterSeconds: 5m}\n",
                "health.recoverAfterSeconds",
            ),
            (
                "version: v1\nhealth: {recoverAfterSeconds: -1}\n",
                "health.recoverAfterSeconds",
            ),
            ("version: v1\nhealth: {quiet: 3}\n", "health.quiet"),
            ("version: v1\nwatchdog: {action: stop}\n", "watchdog.action"),
            (
                "version: v1\nwatchdog: {unknownProcesses: off}\n",
                "watchdog.unknownProcesses",
            ),
            (
                "version: v1\nwatchdog: {slackMiB: 5000}\n",
                "watchdog.slackMiB",
            ),
            (
                "version: v1\nwatchdog: {slackMiB: -1}\n",
                "watchdog.slackMiB",
            ),
            ("version: v1\nwatchdog: {kill: true}\n", "watchdog.kill"),
            ("slices: 3\n", "config"),
        ] {
            let e = NodeConfig::parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text:?} gave {e}");
        }
    }
}

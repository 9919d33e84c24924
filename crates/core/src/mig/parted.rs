//! mig-parted v1 configuration types and their meaning per device.
//!
//! Shape: `{version: v1, mig-configs: {NAME: [{devices: all | [i…], device-filter: s | [s…],
//! mig-enabled: bool, mig-devices: {"1g.10gb": 7}}]}}`. Types are serde-only so any serde
//! format (JSON here, YAML in the CLI) reads them.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::{MigError, lookup, model};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigPartedConfig {
    pub version: String,
    #[serde(rename = "mig-configs")]
    pub mig_configs: BTreeMap<String, Vec<MigConfigEntry>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigConfigEntry {
    pub devices: DeviceSelector,
    #[serde(
        rename = "device-filter",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_filter: Option<DeviceFilter>,
    #[serde(rename = "mig-enabled")]
    pub mig_enabled: bool,
    #[serde(
        rename = "mig-devices",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub mig_devices: BTreeMap<String, u32>,
}

/// `devices: all` or `devices: [0, 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    All,
    List(Vec<u32>),
}

impl DeviceSelector {
    pub fn selects(&self, index: u32) -> bool {
        match self {
            DeviceSelector::All => true,
            DeviceSelector::List(l) => l.contains(&index),
        }
    }
}

impl Serialize for DeviceSelector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DeviceSelector::All => s.serialize_str("all"),
            DeviceSelector::List(l) => l.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<u32>),
        }
        match Raw::deserialize(d).map_err(|_| {
            de::Error::custom("`devices` must be \"all\" or a list of device indices")
        })? {
            Raw::Word(w) if w == "all" => Ok(DeviceSelector::All),
            Raw::Word(w) => Err(de::Error::custom(format!(
                "`devices` must be \"all\" or a list of device indices, got \"{w}\""
            ))),
            Raw::List(l) => Ok(DeviceSelector::List(l)),
        }
    }
}

/// `device-filter`: one string or several; each is a PCI device ID (`0x233010DE`) or a
/// model name or alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeviceFilter {
    One(String),
    Many(Vec<String>),
}

impl DeviceFilter {
    fn items(&self) -> &[String] {
        match self {
            DeviceFilter::One(s) => std::slice::from_ref(s),
            DeviceFilter::Many(v) => v,
        }
    }

    /// True when any filter item names the device's model.
    pub fn matches(&self, model_name: &str) -> bool {
        let m = model(model_name).ok();
        self.items().iter().any(|f| match m {
            Some(m) => m.matches(f),
            None => super::normalize(f) == super::normalize(model_name),
        })
    }
}

/// What a config asks of one device. `mig_enabled: None` means no entry selects the device,
/// so it is left as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceDesired {
    pub index: u32,
    pub mig_enabled: Option<bool>,
    /// Canonical profile names and counts, in the model's profile order.
    pub demand: Vec<(String, u32)>,
}

/// Resolves config `name` for each `(device index, model name)`.
///
/// An entry applies to a device when `devices` selects its index and, if present,
/// `device-filter` names its model. A device selected by two entries is an error, as is a
/// MIG-enabled entry whose profiles the device's model lacks.
pub fn desired_state(
    config: &MigPartedConfig,
    name: &str,
    devices: &[(u32, &str)],
) -> Result<Vec<DeviceDesired>, MigError> {
    if config.version != "v1" {
        return Err(MigError::Config {
            config: name.into(),
            reason: format!("version must be \"v1\", got \"{}\"", config.version),
        });
    }
    let entries = config
        .mig_configs
        .get(name)
        .ok_or_else(|| MigError::UnknownConfig {
            name: name.into(),
            accepted: config
                .mig_configs
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let cfg_err = |reason: String| MigError::Config {
        config: name.into(),
        reason,
    };

    let mut out = Vec::with_capacity(devices.len());
    for &(index, model_name) in devices {
        let mut hit: Option<(usize, &MigConfigEntry)> = None;
        for (k, e) in entries.iter().enumerate() {
            let selected = e.devices.selects(index)
                && e.device_filter
                    .as_ref()
                    .is_none_or(|f| f.matches(model_name));
            if !selected {
                continue;
            }
            if let Some((first, _)) = hit {
                return Err(cfg_err(format!(
                    "device {index} is selected by entries {first} and {k}; each device may match one entry"
                )));
            }
            hit = Some((k, e));
        }
        let Some((k, e)) = hit else {
            out.push(DeviceDesired {
                index,
                mig_enabled: None,
                demand: Vec::new(),
            });
            continue;
        };
        let mut demand = Vec::new();
        if !e.mig_enabled {
            if e.mig_devices.values().any(|&n| n > 0) {
                return Err(cfg_err(format!(
                    "entry {k} has mig-enabled: false but lists mig-devices"
                )));
            }
        } else {
            let m = model(model_name)?;
            let mut counts = vec![0u32; m.profiles.len()];
            for (p, &n) in &e.mig_devices {
                let prof = lookup(m, p)?;
                counts[m.profile_index(prof)] += n;
            }
            for (i, p) in m.profiles.iter().enumerate() {
                if counts[i] > 0 {
                    demand.push((p.name.to_string(), counts[i]));
                }
            }
        }
        out.push(DeviceDesired {
            index,
            mig_enabled: Some(e.mig_enabled),
            demand,
        });
    }
    Ok(out)
}

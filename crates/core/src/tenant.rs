//! What a tenant is given: its memory cap per device and which devices it may use.

use crate::ByteSize;

/// Memory a CUDA context costs on the device, charged to the tenant for every context it
/// creates. Real contexts take a few hundred MiB that no `cuMemAlloc` reports; hiding that would
/// let a tenant's true footprint exceed its cap.
pub const DEFAULT_CONTEXT_OVERHEAD: ByteSize = ByteSize::mib(256);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLimits {
    /// Cap on device memory, per device the tenant uses.
    pub memory: ByteSize,
    /// Charged per live context on a device.
    pub context_overhead: ByteSize,
}

impl TenantLimits {
    pub fn new(memory: ByteSize) -> Self {
        Self {
            memory,
            context_overhead: DEFAULT_CONTEXT_OVERHEAD,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a device list; accepted: comma-separated device indices such as 0 or 0,2,3")]
pub struct DeviceListError(pub String);

/// A set of device indices, as in `--devices 0,2`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceList(pub Vec<u32>);

impl std::str::FromStr for DeviceList {
    type Err = DeviceListError;
    fn from_str(s: &str) -> Result<Self, DeviceListError> {
        let err = || DeviceListError(s.to_string());
        let mut out = Vec::new();
        for part in s.split(',') {
            let i: u32 = part.trim().parse().map_err(|_| err())?;
            if out.contains(&i) {
                return Err(err());
            }
            out.push(i);
        }
        Ok(DeviceList(out))
    }
}

impl std::fmt::Display for DeviceList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|i| i.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists() {
        assert_eq!("0,2, 3".parse::<DeviceList>().unwrap().0, vec![0, 2, 3]);
        for bad in ["", "a", "0,,1", "1,1", "-1", "0;1"] {
            assert!(bad.parse::<DeviceList>().is_err(), "{bad}");
        }
        assert_eq!(DeviceList(vec![1, 0]).to_string(), "1,0");
    }
}

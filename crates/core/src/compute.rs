//! What a tenant asks of the GPU's time: a compute quota, the device's share mode and a
//! priority, with their textual forms (command-line flags, later the node agent's annotations).

use std::fmt;
use std::str::FromStr;

/// Percentage of a GPU's time, 1 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComputeQuota(u8);

impl ComputeQuota {
    pub const FULL: ComputeQuota = ComputeQuota(100);

    pub fn new(pct: u8) -> Option<Self> {
        (1..=100).contains(&pct).then_some(Self(pct))
    }
    pub fn percent(self) -> u8 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    #[error(
        "'{0}' is not a compute quota; accepted: a whole percentage from 1 to 100, such as 30 or 30%"
    )]
    Quota(String),
    #[error("'{0}' is not a share mode; accepted: best-effort, fixed, equal")]
    Mode(String),
    #[error("'{0}' is not a priority; accepted: high, normal, low")]
    Priority(String),
}

impl FromStr for ComputeQuota {
    type Err = ComputeError;
    fn from_str(s: &str) -> Result<Self, ComputeError> {
        let t = s.trim();
        let t = t.strip_suffix('%').unwrap_or(t);
        // Digits only: no sign, no fraction, no exponent.
        if t.is_empty() || t.len() > 3 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ComputeError::Quota(s.to_string()));
        }
        t.parse::<u8>()
            .ok()
            .and_then(ComputeQuota::new)
            .ok_or_else(|| ComputeError::Quota(s.to_string()))
    }
}

impl fmt::Display for ComputeQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// How one device's time is split among its tenants. One mode per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ShareMode {
    /// Shares in proportion to quotas; idle time is lent to whoever has work.
    #[default]
    BestEffort,
    /// Nobody exceeds its quota, even on an otherwise idle GPU.
    Fixed,
    /// Active tenants split the GPU evenly; quotas are ignored.
    Equal,
}

impl ShareMode {
    pub const ALL: [ShareMode; 3] = [ShareMode::BestEffort, ShareMode::Fixed, ShareMode::Equal];
    pub fn as_str(self) -> &'static str {
        match self {
            ShareMode::BestEffort => "best-effort",
            ShareMode::Fixed => "fixed",
            ShareMode::Equal => "equal",
        }
    }
}

impl FromStr for ShareMode {
    type Err = ComputeError;
    fn from_str(s: &str) -> Result<Self, ComputeError> {
        ShareMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ComputeError::Mode(s.to_string()))
    }
}

impl fmt::Display for ShareMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who waits for whom on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl FromStr for Priority {
    type Err = ComputeError;
    fn from_str(s: &str) -> Result<Self, ComputeError> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ComputeError::Priority(s.to_string()))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's claim on GPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ComputeLimits {
    /// `None`: no quota given (a full share in best-effort and equal; refused in fixed).
    pub quota: Option<ComputeQuota>,
    pub mode: ShareMode,
    pub priority: Priority,
}

impl ComputeLimits {
    /// Whether these limits make sense together; the message names the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == ShareMode::Fixed && self.quota.is_none() {
            return Err("--share-mode fixed needs --gpu-compute PCT (1-100)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas() {
        assert_eq!("30".parse::<ComputeQuota>().unwrap().percent(), 30);
        assert_eq!("100%".parse::<ComputeQuota>().unwrap().percent(), 100);
        assert_eq!(" 1 ".parse::<ComputeQuota>().unwrap().percent(), 1);
        for bad in [
            "0", "101", "-5", "+5", "30.5", "", "%", "abc", "1e2", "1000", "255",
        ] {
            let e = bad.parse::<ComputeQuota>().unwrap_err().to_string();
            assert!(e.contains("1 to 100"), "{bad}: {e}");
        }
    }

    #[test]
    fn modes_and_priorities_round_trip() {
        for m in ShareMode::ALL {
            assert_eq!(m.to_string().parse::<ShareMode>().unwrap(), m);
        }
        for p in Priority::ALL {
            assert_eq!(p.to_string().parse::<Priority>().unwrap(), p);
        }
        let e = "fair".parse::<ShareMode>().unwrap_err().to_string();
        assert!(e.contains("best-effort, fixed, equal"), "{e}");
        let e = "urgent".parse::<Priority>().unwrap_err().to_string();
        assert!(e.contains("high, normal, low"), "{e}");
        assert!(
            "Fixed".parse::<ShareMode>().is_err(),
            "case matters, as in every other flag"
        );
    }

    #[test]
    fn fixed_needs_a_quota() {
        let l = ComputeLimits {
            mode: ShareMode::Fixed,
            ..Default::default()
        };
        assert!(l.validate().is_err());
        let l = ComputeLimits {
            quota: ComputeQuota::new(30),
            ..l
        };
        assert!(l.validate().is_ok());
    }
}

//! GPU health from NVML events. A device fault (an XID that is not an application error, or an
//! uncorrectable ECC error) marks the GPU unhealthy; it becomes healthy again when the event
//! source reports recovery, or after a quiet period without further faults.

use std::collections::{BTreeMap, BTreeSet};

/// XIDs caused by the application (bad kernel, bad address, reset by the app), not the GPU.
pub const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    Xid { uuid: String, code: u64 },
    EccUncorrectable { uuid: String },
    Recovered { uuid: String },
}

/// Where events come from: NVML's event set on a real GPU, a fake in tests. `next` blocks for at
/// most `timeout_ms` and returns `None` when nothing happened.
pub trait EventSource: Send {
    fn next(&mut self, timeout_ms: u64) -> Option<HealthEvent>;
}

/// A source that never reports anything (the simulator has no XIDs).
pub struct Quiet;
impl EventSource for Quiet {
    fn next(&mut self, timeout_ms: u64) -> Option<HealthEvent> {
        std::thread::sleep(std::time::Duration::from_millis(timeout_ms));
        None
    }
}

/// Pure bookkeeping: which GPUs are unhealthy since when. Times are caller-supplied milliseconds.
#[derive(Debug, Clone)]
pub struct Tracker {
    quiet_ms: u64,
    since: BTreeMap<String, u64>,
}

impl Tracker {
    pub fn new(quiet_ms: u64) -> Self {
        Tracker {
            quiet_ms,
            since: BTreeMap::new(),
        }
    }

    pub fn unhealthy(&self) -> BTreeSet<String> {
        self.since.keys().cloned().collect()
    }

    /// Returns true if the set of unhealthy GPUs changed.
    pub fn on_event(&mut self, ev: &HealthEvent, now_ms: u64) -> bool {
        match ev {
            HealthEvent::Xid { code, .. } if APPLICATION_XIDS.contains(code) => false,
            HealthEvent::Xid { uuid, .. } | HealthEvent::EccUncorrectable { uuid } => {
                self.since.insert(uuid.clone(), now_ms).is_none()
            }
            HealthEvent::Recovered { uuid } => self.since.remove(uuid).is_some(),
        }
    }

    /// Recovers GPUs quiet for the period; returns true if any did.
    pub fn tick(&mut self, now_ms: u64) -> bool {
        let before = self.since.len();
        let q = self.quiet_ms;
        self.since.retain(|_, t| now_ms.saturating_sub(*t) < q);
        before != self.since.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_xids_are_not_faults_and_gpus_recover() {
        let mut t = Tracker::new(1000);
        for code in APPLICATION_XIDS {
            assert!(!t.on_event(
                &HealthEvent::Xid {
                    uuid: "GPU-a".into(),
                    code
                },
                0
            ));
        }
        assert!(t.unhealthy().is_empty());
        assert!(t.on_event(
            &HealthEvent::Xid {
                uuid: "GPU-a".into(),
                code: 79
            },
            0
        ));
        assert!(!t.on_event(
            &HealthEvent::Xid {
                uuid: "GPU-a".into(),
                code: 48
            },
            500
        ));
        assert!(!t.tick(1400), "the second fault restarted the quiet period");
        assert!(t.tick(1500));
        assert!(t.unhealthy().is_empty());
        assert!(t.on_event(
            &HealthEvent::EccUncorrectable {
                uuid: "GPU-b".into()
            },
            0
        ));
        assert!(t.on_event(
            &HealthEvent::Recovered {
                uuid: "GPU-b".into()
            },
            1
        ));
        assert!(t.unhealthy().is_empty());
    }
}

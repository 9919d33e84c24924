//! GPU health from NVML events. A device fault (an XID that is not an application error, an
//! uncorrectable ECC error, a GPU fallen off the bus) marks the GPU, or the MIG device the fault
//! is attributable to, unhealthy. NVML never reports recovery: after a quiet period without
//! further faults the device is probed through NVML and advertised healthy again only if it
//! answers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use gpuslice_nvml::{EventKind, Nvml};

/// XIDs caused by the application (bad kernel, bad address, reset by the app), not the GPU.
pub const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// `uuid` is the GPU's, or the MIG device's the XID is attributable to.
    Xid {
        uuid: String,
        code: u64,
    },
    EccUncorrectable {
        uuid: String,
    },
    /// The GPU no longer answers (NVML's GPU_IS_LOST).
    Lost {
        uuid: String,
    },
    Recovered {
        uuid: String,
    },
}

impl HealthEvent {
    pub fn uuid(&self) -> &str {
        match self {
            HealthEvent::Xid { uuid, .. }
            | HealthEvent::EccUncorrectable { uuid }
            | HealthEvent::Lost { uuid }
            | HealthEvent::Recovered { uuid } => uuid,
        }
    }

    /// Whether the event is a device fault (application XIDs are not).
    pub fn is_fault(&self) -> bool {
        match self {
            HealthEvent::Xid { code, .. } => !APPLICATION_XIDS.contains(code),
            HealthEvent::EccUncorrectable { .. } | HealthEvent::Lost { .. } => true,
            HealthEvent::Recovered { .. } => false,
        }
    }
}

/// Where events come from: NVML's event set on a real GPU, a fake in tests. `next` blocks for at
/// most `timeout_ms` and returns `None` when nothing happened.
pub trait EventSource: Send {
    fn next(&mut self, timeout_ms: u64) -> Option<HealthEvent>;

    /// Whether the device with `uuid` answers now; asked before a quiet device is advertised
    /// healthy again. A source that cannot tell says yes.
    fn probe(&mut self, _uuid: &str) -> bool {
        true
    }
}

/// A source that never reports anything (NVML without event support).
pub struct Quiet;
impl EventSource for Quiet {
    fn next(&mut self, timeout_ms: u64) -> Option<HealthEvent> {
        std::thread::sleep(std::time::Duration::from_millis(timeout_ms));
        None
    }
}

/// Pure bookkeeping: which devices are unhealthy since when. Times are caller-supplied
/// milliseconds.
#[derive(Debug, Clone)]
pub struct Tracker {
    default_quiet_ms: u64,
    quiet_ms: u64,
    since: BTreeMap<String, u64>,
}

impl Tracker {
    pub fn new(quiet_ms: u64) -> Self {
        Tracker {
            default_quiet_ms: quiet_ms,
            quiet_ms,
            since: BTreeMap::new(),
        }
    }

    /// The configured quiet period, or the default given at creation.
    pub fn set_quiet(&mut self, quiet_ms: Option<u64>) {
        self.quiet_ms = quiet_ms.unwrap_or(self.default_quiet_ms);
    }

    pub fn unhealthy(&self) -> BTreeSet<String> {
        self.since.keys().cloned().collect()
    }

    /// Returns true if the set of unhealthy devices changed.
    pub fn on_event(&mut self, ev: &HealthEvent, now_ms: u64) -> bool {
        match ev {
            HealthEvent::Recovered { uuid } => self.since.remove(uuid).is_some(),
            e if e.is_fault() => self.since.insert(e.uuid().to_string(), now_ms).is_none(),
            _ => false,
        }
    }

    /// Devices quiet for the period: to be probed, then `recover`ed or `hold`en.
    pub fn due(&self, now_ms: u64) -> Vec<String> {
        self.since
            .iter()
            .filter(|(_, t)| now_ms.saturating_sub(**t) >= self.quiet_ms)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// `uuid` answered its probe; returns true if it was unhealthy.
    pub fn recover(&mut self, uuid: &str) -> bool {
        self.since.remove(uuid).is_some()
    }

    /// `uuid` failed its probe: it stays unhealthy for another quiet period.
    pub fn hold(&mut self, uuid: &str, now_ms: u64) {
        if let Some(t) = self.since.get_mut(uuid) {
            *t = now_ms;
        }
    }
}

/// Fault events wanted from NVML: XIDs and uncorrectable ECC errors. Corrected (single-bit)
/// ECC errors are not faults and are not asked for.
pub const FAULT_EVENTS: u64 =
    gpuslice_nvml::events::EVENT_XID | gpuslice_nvml::events::EVENT_ECC_DOUBLE_BIT;

/// Health events from NVML's event API, for every GPU that supports them.
pub struct NvmlEvents {
    nvml: Arc<Nvml>,
    set: gpuslice_nvml::EventSet,
    /// Events already decoded (one NVML event can name several MIG devices).
    pending: VecDeque<HealthEvent>,
    /// GPUs reported lost and not yet answering again: reported once, then left to the probe.
    lost: BTreeSet<String>,
}

impl NvmlEvents {
    /// NVML at `lib` (the simulator's), or the system's. Every GPU is registered for XID and
    /// double-bit ECC events; a GPU without event support is skipped with a log line.
    pub fn open(lib: Option<&std::path::Path>) -> Result<NvmlEvents, String> {
        let nvml = match lib {
            Some(p) => Nvml::from_path(p),
            None => Nvml::system(),
        }
        .map_err(|e| e.to_string())?;
        NvmlEvents::with(Arc::new(nvml))
    }

    pub fn with(nvml: Arc<Nvml>) -> Result<NvmlEvents, String> {
        let set = register_all(&nvml)?;
        Ok(NvmlEvents {
            nvml,
            set,
            pending: VecDeque::new(),
            lost: BTreeSet::new(),
        })
    }

    /// A new event set of the GPUs that answer now. While any registered GPU is lost, NVML's
    /// wait fails with GPU_IS_LOST and reports nothing for the others; a lost GPU fails to
    /// register, so the new set leaves it out until it answers again.
    fn rebuild(&mut self) {
        match register_all(&self.nvml) {
            Ok(set) => self.set = set,
            Err(e) => tracing::warn!("re-registering GPU health events: {e}"),
        }
    }

    /// The health events one NVML event stands for.
    fn translate(&self, ev: gpuslice_nvml::Event) -> Vec<HealthEvent> {
        match ev.kind {
            EventKind::Xid(code) => {
                let migs = ev
                    .gpu_instance
                    .map(|gi| self.mig_devices(ev.gpu, gi, ev.compute_instance))
                    .unwrap_or_default();
                let uuids = if migs.is_empty() { vec![ev.uuid] } else { migs };
                uuids
                    .into_iter()
                    .map(|uuid| HealthEvent::Xid { uuid, code })
                    .collect()
            }
            EventKind::EccDoubleBit => vec![HealthEvent::EccUncorrectable { uuid: ev.uuid }],
            EventKind::EccSingleBit | EventKind::Other(_) => Vec::new(),
        }
    }

    /// UUIDs of GPU `gpu`'s MIG devices in GPU instance `gi` (and compute instance `ci`).
    fn mig_devices(&self, gpu: u32, gi: u32, ci: Option<u32>) -> Vec<String> {
        match self.nvml.mig_devices(gpu) {
            Ok(list) => list
                .into_iter()
                .filter(|m| m.gpu_instance == gi && ci.is_none_or(|c| c == m.compute_instance))
                .map(|m| m.uuid)
                .collect(),
            Err(e) => {
                tracing::warn!(
                    gpu,
                    "MIG devices of a faulted instance: {e}; marking the GPU"
                );
                Vec::new()
            }
        }
    }

    /// The registered GPUs that stopped answering since last asked.
    fn newly_lost(&mut self) -> Vec<HealthEvent> {
        let uuids: Vec<String> = self.set.registered().map(|(_, u)| u.to_string()).collect();
        let mut out = Vec::new();
        for uuid in uuids {
            if !self.lost.contains(&uuid) && self.nvml.probe(&uuid).is_err() {
                self.lost.insert(uuid.clone());
                out.push(HealthEvent::Lost { uuid });
            }
        }
        out
    }
}

/// An event set with every GPU that answers registered for [`FAULT_EVENTS`]; a GPU without
/// event support is skipped with a log line.
fn register_all(nvml: &Arc<Nvml>) -> Result<gpuslice_nvml::EventSet, String> {
    let mut set = nvml.event_set().map_err(|e| e.to_string())?;
    for i in 0..nvml.device_count().map_err(|e| e.to_string())? {
        match set.register(i, FAULT_EVENTS) {
            Ok(0) => tracing::warn!(
                gpu = i,
                "GPU reports neither XID nor ECC events; its health is not watched"
            ),
            Ok(types) => tracing::info!(
                gpu = i,
                types = format!("{types:#x}"),
                "watching GPU health events"
            ),
            Err(e) => {
                tracing::warn!(gpu = i, "GPU health events unavailable, not watched: {e}")
            }
        }
    }
    Ok(set)
}

impl EventSource for NvmlEvents {
    fn next(&mut self, timeout_ms: u64) -> Option<HealthEvent> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        let ms = u32::try_from(timeout_ms).unwrap_or(u32::MAX);
        match self.set.wait(ms) {
            Ok(None) => {}
            Ok(Some(ev)) => {
                tracing::info!(gpu = %ev.uuid, kind = ?ev.kind, gi = ?ev.gpu_instance, ci = ?ev.compute_instance, "NVML event");
                let evs = self.translate(ev);
                self.pending.extend(evs);
            }
            Err(e) => {
                // A failed wait returns at once; pace the loop. GPU_IS_LOST names no GPU:
                // each is asked.
                tracing::warn!("waiting for NVML events: {e}");
                std::thread::sleep(std::time::Duration::from_millis(timeout_ms));
                if e.is_gpu_lost() {
                    let lost = self.newly_lost();
                    if !lost.is_empty() {
                        self.rebuild();
                    }
                    self.pending.extend(lost);
                }
            }
        }
        self.pending.pop_front()
    }

    fn probe(&mut self, uuid: &str) -> bool {
        match self.nvml.probe(uuid) {
            Ok(()) => {
                if self.lost.remove(uuid) {
                    // Watch it again.
                    self.rebuild();
                }
                true
            }
            // A MIG device removed since its fault has nothing left to advertise.
            Err(e) if uuid.starts_with("MIG-") && e.is_not_found() => true,
            Err(e) => {
                tracing::warn!(device = uuid, "still failing: {e}");
                false
            }
        }
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
        assert!(
            t.due(1400).is_empty(),
            "the second fault restarted the quiet period"
        );
        assert_eq!(t.due(1500), ["GPU-a"]);
        // A device that does not answer its probe stays unhealthy for another period.
        t.hold("GPU-a", 1500);
        assert_eq!(t.unhealthy().len(), 1);
        assert!(t.due(2400).is_empty());
        t.set_quiet(Some(100));
        assert_eq!(t.due(1600), ["GPU-a"]);
        assert!(t.recover("GPU-a"));
        assert!(!t.recover("GPU-a"));
        assert!(t.unhealthy().is_empty());
        t.set_quiet(None);
        assert!(t.on_event(
            &HealthEvent::Lost {
                uuid: "GPU-c".into()
            },
            0
        ));
        assert!(t.due(999).is_empty());
        assert_eq!(t.due(1000), ["GPU-c"]);
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
        // GPU-b recovered; GPU-c was never probed back.
        assert_eq!(t.unhealthy(), BTreeSet::from(["GPU-c".to_string()]));
    }
}

//! Per-namespace quotas and dominant-resource fair share.

use serde::{Deserialize, Serialize};

/// GPU memory (MiB) and compute (percent of one GPU, summed: 100 = one GPU's worth).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Demand {
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    pub compute_percent: u64,
}

impl Demand {
    pub fn add(&mut self, o: Demand) {
        self.memory_mib += o.memory_mib;
        self.compute_percent += o.compute_percent;
    }
    pub fn sub(&mut self, o: Demand) {
        self.memory_mib = self.memory_mib.saturating_sub(o.memory_mib);
        self.compute_percent = self.compute_percent.saturating_sub(o.compute_percent);
    }
}

/// A namespace's quota; an absent limit is no limit on that resource. `weight` scales the
/// namespace's fair share (default 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    pub namespace: String,
    #[serde(default, rename = "gpuMemoryMiB")]
    pub gpu_memory_mib: Option<u64>,
    #[serde(default)]
    pub gpu_compute_percent: Option<u64>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota {namespace}/{resource}: {used} used + {asked} asked > {limit} {unit}")]
pub struct QuotaError {
    pub namespace: String,
    pub resource: &'static str,
    pub used: u64,
    pub asked: u64,
    pub limit: u64,
    pub unit: &'static str,
}

impl Quota {
    /// Refuses `asked` on top of `used` when it passes a limit; the error names the quota.
    pub fn check(&self, used: Demand, asked: Demand) -> Result<(), QuotaError> {
        let e = |resource, used, asked, limit, unit| QuotaError {
            namespace: self.namespace.clone(),
            resource,
            used,
            asked,
            limit,
            unit,
        };
        if let Some(l) = self.gpu_memory_mib
            && used.memory_mib + asked.memory_mib > l
        {
            return Err(e("gpu-memory", used.memory_mib, asked.memory_mib, l, "MiB"));
        }
        if let Some(l) = self.gpu_compute_percent
            && used.compute_percent + asked.compute_percent > l
        {
            return Err(e(
                "gpu-compute",
                used.compute_percent,
                asked.compute_percent,
                l,
                "%",
            ));
        }
        Ok(())
    }
}

/// A namespace's dominant share: its largest fraction of any cluster resource, divided by its
/// weight.
pub fn dominant_share(used: Demand, capacity: Demand, weight: u32) -> f64 {
    let f = |u: u64, c: u64| if c == 0 { 0.0 } else { u as f64 / c as f64 };
    f(used.memory_mib, capacity.memory_mib).max(f(used.compute_percent, capacity.compute_percent))
        / weight.max(1) as f64
}

/// Fair-share gate for a contended cluster: may namespace `ns` (dominant share `share` after
/// placing the pod) take more while namespaces in `waiting` (with their current shares) have
/// pods that found no room? Yes unless some waiting namespace is below its fair share
/// (1 / number of active namespaces) and `ns` would end above it. Returns the namespace that
/// blocks, if any.
pub fn fair_share_blocker<'a>(
    share: f64,
    active: usize,
    waiting: impl IntoIterator<Item = (&'a str, f64)>,
) -> Option<&'a str> {
    let fair = 1.0 / active.max(1) as f64;
    if share <= fair {
        return None;
    }
    waiting
        .into_iter()
        .filter(|(_, s)| *s < fair)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n)
}

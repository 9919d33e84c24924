//! The partition planner: an exact search over placements.
//!
//! Any valid layout, its instances sorted by start, is a sequence of disjoint runs of memory
//! slices. The search walks the slices left to right; at slice `pos` it either leaves the
//! slice empty, keeps the existing instance that starts there, or creates a demanded instance
//! that may start there, then jumps past what it placed. Existing instances it jumps over are
//! destroyed. The state is `(pos, instances per profile)`: per-profile maxima, the single
//! media-extension set and the compute-slice total are all functions of those counts, so the
//! search is memoised on it and is exact.
//!
//! Objective, lexicographic: most demanded instances satisfied (an existing instance counts
//! toward its profile's demand), then fewest existing instances destroyed, then most memory
//! slices among the satisfied instances.

use std::collections::HashMap;

use serde::Serialize;

use super::layout::{Instance, check_layout, profile_index};
use super::{GpuModel, MigError, lookup};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unplaced {
    pub profile: String,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Every demanded instance is in `instances`.
    pub feasible: bool,
    /// The whole resulting layout (kept and new), sorted by start.
    pub instances: Vec<Instance>,
    /// Demanded instances that could not be placed.
    pub unplaced: Vec<Unplaced>,
    /// Existing instances that must go.
    pub destroy: Vec<Instance>,
}

// Weights that make one integer compare like the lexicographic objective: memory slices
// and kept instances are each at most 8 per GPU, so they never add up to the next weight.
const W_SATISFIED: i64 = 256;
const W_KEPT: i64 = 16;

const BITS: u32 = 4; // per-profile count in the packed state; max_instances <= 7

#[derive(Clone, Copy)]
enum Step {
    Skip,
    Keep(usize),
    New(usize),
    End,
}

struct Search<'a> {
    model: &'a GpuModel,
    /// Demand per profile index, capped at the profile's maximum.
    want: Vec<u32>,
    /// Existing instance (profile index, size) starting at each memory slice.
    existing_at: Vec<Option<(usize, u8)>>,
    /// An existing instance that must be kept starts at this memory slice.
    pinned_at: Vec<bool>,
    /// Profile indices that may be created, largest first.
    creatable: Vec<usize>,
    memo: HashMap<(u8, u32), (i64, Step)>,
}

impl Search<'_> {
    fn count(counts: u32, idx: usize) -> u32 {
        (counts >> (BITS * idx as u32)) & ((1 << BITS) - 1)
    }

    fn can_add(&self, counts: u32, idx: usize) -> bool {
        let p = &self.model.profiles[idx];
        if Self::count(counts, idx) >= u32::from(p.max_instances) {
            return false;
        }
        let mut compute = u32::from(p.compute_slices);
        let mut media = p.media_extension();
        for (i, q) in self.model.profiles.iter().enumerate() {
            let c = Self::count(counts, i);
            compute += c * u32::from(q.compute_slices);
            if c > 0 && q.media_extension() {
                if media {
                    return false;
                }
                media = true;
            }
        }
        compute <= u32::from(self.model.compute_slices)
    }

    fn terminal(&self, counts: u32) -> i64 {
        let mut v = 0;
        for (i, p) in self.model.profiles.iter().enumerate() {
            let got = i64::from(Self::count(counts, i).min(self.want[i]));
            v += got * (W_SATISFIED + i64::from(p.memory_slices));
        }
        v
    }

    fn best(&mut self, pos: u8, counts: u32) -> i64 {
        if pos >= self.model.memory_slices {
            return self.terminal(counts);
        }
        if let Some(&(v, _)) = self.memo.get(&(pos, counts)) {
            return v;
        }
        // `i64::MIN` marks a state from which a pinned instance cannot be kept.
        let mut best = (i64::MIN, Step::End);
        if let Some((idx, size)) = self.existing_at[usize::from(pos)]
            && self.can_add(counts, idx)
        {
            let v = self.best(pos + size, counts + (1 << (BITS * idx as u32)));
            if v > i64::MIN && W_KEPT + v > best.0 {
                best = (W_KEPT + v, Step::Keep(idx));
            }
        }
        if self.pinned_at[usize::from(pos)] {
            self.memo.insert((pos, counts), best);
            return best.0;
        }
        let v = self.best(pos + 1, counts);
        if v > best.0 {
            best = (v, Step::Skip);
        }
        for k in 0..self.creatable.len() {
            let idx = self.creatable[k];
            let p = &self.model.profiles[idx];
            if Self::count(counts, idx) >= self.want[idx] || !self.can_add(counts, idx) {
                continue;
            }
            let Some(pl) = p.placement_at(pos) else {
                continue;
            };
            let end = usize::from(pos + pl.size).min(self.pinned_at.len());
            if self.pinned_at[usize::from(pos)..end].iter().any(|&p| p) {
                continue;
            }
            let v = self.best(pos + pl.size, counts + (1 << (BITS * idx as u32)));
            if v > best.0 {
                best = (v, Step::New(idx));
            }
        }
        self.memo.insert((pos, counts), best);
        best.0
    }
}

/// Plans a layout for `demand` on `model`, starting from `current` if given.
///
/// Without `current` the result is a layout that satisfies the demand or, when that is
/// impossible, places as many demanded instances as possible (ties: most memory slices).
/// With `current` the demand is met while destroying as few existing instances as possible;
/// existing instances count toward the demand for their profile, and those beyond the
/// demand stay unless they are in the way.
pub fn plan<S: AsRef<str>>(
    model: &GpuModel,
    demand: &[(S, u32)],
    current: Option<&[Instance]>,
) -> Result<Plan, MigError> {
    plan_keeping(model, demand, current, &[])
}

/// [`plan`], with the instances of `current` that start at one of `keep` never destroyed
/// (they are in use). Such a plan always exists: keeping only them is a valid layout.
pub fn plan_keeping<S: AsRef<str>>(
    model: &GpuModel,
    demand: &[(S, u32)],
    current: Option<&[Instance]>,
    keep: &[u8],
) -> Result<Plan, MigError> {
    let n = model.profiles.len();
    assert!(
        n as u32 * BITS <= 32,
        "state packing holds at most 8 profiles"
    );
    let mut demanded = vec![0u32; n];
    let mut order: Vec<usize> = Vec::new();
    for (name, count) in demand {
        let p = lookup(model, name.as_ref())?;
        let idx = model.profile_index(p);
        if !order.contains(&idx) {
            order.push(idx);
        }
        demanded[idx] = demanded[idx].saturating_add(*count);
    }

    let current = current.unwrap_or(&[]);
    check_layout(model, current)?;
    let mut existing_at = vec![None; usize::from(model.memory_slices)];
    let mut pinned_at = vec![false; usize::from(model.memory_slices)];
    for inst in current {
        let idx = profile_index(model, &inst.profile).expect("checked above");
        existing_at[usize::from(inst.start)] = Some((idx, inst.size));
        pinned_at[usize::from(inst.start)] = keep.contains(&inst.start);
    }

    let mut creatable: Vec<usize> = (0..n).filter(|&i| demanded[i] > 0).collect();
    creatable.sort_by_key(|&i| std::cmp::Reverse(model.profiles[i].memory_slices));
    let mut s = Search {
        model,
        want: (0..n)
            .map(|i| demanded[i].min(u32::from(model.profiles[i].max_instances)))
            .collect(),
        existing_at,
        pinned_at,
        creatable,
        memo: HashMap::with_capacity(256),
    };
    s.best(0, 0);

    // Walk the recorded choices to rebuild the layout.
    let mut instances = Vec::new();
    let mut kept_starts = Vec::new();
    let (mut pos, mut counts) = (0u8, 0u32);
    while pos < model.memory_slices {
        let step = s
            .memo
            .get(&(pos, counts))
            .map(|&(_, st)| st)
            .unwrap_or(Step::End);
        match step {
            Step::Skip => pos += 1,
            Step::Keep(idx) | Step::New(idx) => {
                let p = &model.profiles[idx];
                let pl = p
                    .placement_at(pos)
                    .expect("placement recorded by the search");
                if matches!(step, Step::Keep(_)) {
                    kept_starts.push(pos);
                }
                instances.push(Instance {
                    profile: p.name.into(),
                    start: pos,
                    size: pl.size,
                });
                counts += 1 << (BITS * idx as u32);
                pos += pl.size;
            }
            Step::End => break,
        }
    }

    let mut destroy: Vec<Instance> = current
        .iter()
        .filter(|i| !kept_starts.contains(&i.start))
        .cloned()
        .collect();
    destroy.sort_by_key(|i| i.start);
    let mut unplaced = Vec::new();
    for &idx in &order {
        let got = Search::count(counts, idx);
        let missing = demanded[idx].saturating_sub(got);
        if missing > 0 {
            unplaced.push(Unplaced {
                profile: model.profiles[idx].name.into(),
                count: missing,
            });
        }
    }
    Ok(Plan {
        feasible: unplaced.is_empty(),
        instances,
        unplaced,
        destroy,
    })
}

//! Layouts: parsing the CLI and JSON forms, and validating them against a model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{GiProfile, GpuModel, MigError, Placement, lookup};

/// A placed GPU instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Instance {
    pub profile: String,
    pub start: u8,
    pub size: u8,
}

impl Instance {
    pub fn placement(&self) -> Placement {
        Placement {
            start: self.start,
            size: self.size,
        }
    }

    fn label(&self) -> String {
        format!("{}@{}", self.profile, self.start)
    }
}

/// A requested GPU instance, with or without a fixed placement. `size` is accepted so that an
/// [`Instance`] serialised as JSON reads back as a request; when given it must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u8>,
}

impl Requested {
    pub fn new(profile: &str, start: Option<u8>) -> Self {
        Requested {
            profile: profile.to_string(),
            start,
            size: None,
        }
    }
}

impl From<&Instance> for Requested {
    fn from(i: &Instance) -> Self {
        Requested {
            profile: i.profile.clone(),
            start: Some(i.start),
            size: Some(i.size),
        }
    }
}

/// Parses `3g.40gb@4,1g.10gb,1g.10gb@1` (placement optional, whitespace ignored).
pub fn parse_layout(s: &str) -> Result<Vec<Requested>, MigError> {
    let err = |reason: String| MigError::Parse {
        input: s.to_string(),
        reason,
    };
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return Err(err("empty entry; expected PROFILE or PROFILE@START".into()));
            }
            match item.split_once('@') {
                None => Ok(Requested::new(item, None)),
                Some((p, start)) => {
                    let p = p.trim();
                    if p.is_empty() {
                        return Err(err(format!("`{item}` has no profile before `@`")));
                    }
                    let start = start.trim().parse::<u8>().map_err(|_| {
                        err(format!(
                            "`{item}`: start must be a memory-slice index (0-7), got `{}`",
                            start.trim()
                        ))
                    })?;
                    Ok(Requested::new(p, Some(start)))
                }
            }
        })
        .collect()
}

/// Parses a demand `1g.10gb=3,3g.40gb=1`. Profile names are checked later, against a model.
pub fn parse_demand(s: &str) -> Result<Vec<(String, u32)>, MigError> {
    let err = |reason: String| MigError::Parse {
        input: s.to_string(),
        reason,
    };
    let mut out: Vec<(String, u32)> = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for item in s.split(',') {
        let item = item.trim();
        let (p, n) = item
            .split_once('=')
            .ok_or_else(|| err(format!("`{item}`: expected PROFILE=COUNT, e.g. 1g.10gb=3")))?;
        let p = p.trim();
        if p.is_empty() {
            return Err(err(format!("`{item}` has no profile before `=`")));
        }
        let n = n.trim().parse::<u32>().map_err(|_| {
            err(format!(
                "`{item}`: count must be a whole number, got `{}`",
                n.trim()
            ))
        })?;
        if out
            .iter()
            .any(|(q, _)| super::normalize(q) == super::normalize(p))
        {
            return Err(err(format!(
                "`{p}` is listed twice; give each profile once"
            )));
        }
        out.push((p.to_string(), n));
    }
    Ok(out)
}

struct Entry {
    profile: &'static GiProfile,
    index: usize,
    start: Option<u8>,
}

/// Checks a requested layout against `model` and returns it fully placed.
///
/// Entries with a start keep it; the others get placements found by search. Errors name the
/// first rule broken, in this order: unknown profile, bad start/size, too many of a profile,
/// two media-extension instances, not enough memory or compute slices in total, overlap of
/// two fixed instances, and finally no arrangement of the unplaced ones.
pub fn validate(model: &GpuModel, requested: &[Requested]) -> Result<Vec<Instance>, MigError> {
    let profiles = requested
        .iter()
        .map(|r| lookup(model, &r.profile))
        .collect::<Result<Vec<_>, _>>()?;
    let mut entries = Vec::with_capacity(requested.len());
    for (index, (r, &profile)) in requested.iter().zip(&profiles).enumerate() {
        if let Some(start) = r.start
            && !profile.allows_start(start)
        {
            return Err(bad_start(profile, start));
        }
        if let Some(size) = r.size
            && size != profile.memory_slices
        {
            return Err(MigError::BadSize {
                profile: profile.name.into(),
                size,
                expected: profile.memory_slices,
            });
        }
        entries.push(Entry {
            profile,
            index,
            start: r.start,
        });
    }

    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for e in &entries {
        *counts.entry(e.profile.name).or_default() += 1;
    }
    for p in model.profiles {
        let n = counts.get(p.name).copied().unwrap_or(0);
        if n > u32::from(p.max_instances) {
            return Err(MigError::TooMany {
                model: model.name.into(),
                profile: p.name.into(),
                requested: n,
                max: p.max_instances,
            });
        }
    }

    let media: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.profile.media_extension())
        .collect();
    if media.len() > 1 {
        return Err(MigError::MediaConflict {
            a: entry_label(media[0]),
            b: entry_label(media[1]),
        });
    }

    let mem: u32 = entries
        .iter()
        .map(|e| u32::from(e.profile.memory_slices))
        .sum();
    if mem > u32::from(model.memory_slices) {
        return Err(MigError::NotEnoughMemory {
            model: model.name.into(),
            needed: mem,
            available: model.memory_slices,
        });
    }
    let compute: u32 = entries
        .iter()
        .map(|e| u32::from(e.profile.compute_slices))
        .sum();
    if compute > u32::from(model.compute_slices) {
        return Err(MigError::NotEnoughCompute {
            model: model.name.into(),
            needed: compute,
            available: model.compute_slices,
        });
    }

    let mut placed: Vec<Option<Instance>> = vec![None; entries.len()];
    let mut used: u16 = 0;
    let mut owner: Vec<(u16, String)> = Vec::new();
    for e in entries.iter().filter(|e| e.start.is_some()) {
        let p = e
            .profile
            .placement_at(e.start.unwrap())
            .expect("start checked above");
        let inst = Instance {
            profile: e.profile.name.into(),
            start: p.start,
            size: p.size,
        };
        if let Some((_, other)) = owner.iter().find(|(m, _)| m & p.mask() != 0) {
            return Err(MigError::Overlap {
                a: other.clone(),
                b: inst.label(),
            });
        }
        used |= p.mask();
        owner.push((p.mask(), inst.label()));
        placed[e.index] = Some(inst);
    }

    // Largest first: they have the fewest placements, so the search fails fast.
    let mut free: Vec<&Entry> = entries.iter().filter(|e| e.start.is_none()).collect();
    free.sort_by_key(|e| {
        (
            std::cmp::Reverse(e.profile.memory_slices),
            e.profile.placements.len(),
        )
    });
    let mut chosen = vec![Placement { start: 0, size: 0 }; free.len()];
    if !place(&free, 0, used, &mut chosen) {
        let names: Vec<String> = free.iter().map(|e| e.profile.name.to_string()).collect();
        let free_slices: Vec<String> = (0..model.memory_slices)
            .filter(|i| used & (1 << i) == 0)
            .map(|i| i.to_string())
            .collect();
        return Err(MigError::NoPlacement {
            detail: format!(
                "{} cannot be arranged around the fixed instances (free memory slices: {})",
                names.join(", "),
                if free_slices.is_empty() {
                    "none".into()
                } else {
                    free_slices.join(",")
                }
            ),
        });
    }
    for (e, p) in free.iter().zip(&chosen) {
        placed[e.index] = Some(Instance {
            profile: e.profile.name.into(),
            start: p.start,
            size: p.size,
        });
    }
    Ok(placed
        .into_iter()
        .map(|i| i.expect("every entry placed"))
        .collect())
}

fn place(free: &[&Entry], i: usize, used: u16, chosen: &mut [Placement]) -> bool {
    let Some(e) = free.get(i) else { return true };
    for p in e.profile.placements {
        if used & p.mask() == 0 {
            chosen[i] = *p;
            if place(free, i + 1, used | p.mask(), chosen) {
                return true;
            }
        }
    }
    false
}

fn entry_label(e: &Entry) -> String {
    match e.start {
        Some(s) => format!("{}@{}", e.profile.name, s),
        None => e.profile.name.to_string(),
    }
}

fn bad_start(profile: &GiProfile, start: u8) -> MigError {
    MigError::BadStart {
        profile: profile.name.into(),
        start,
        allowed: profile
            .allowed_starts()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Checks an already placed layout (e.g. one read from a GPU) against `model`.
pub fn check_layout(model: &GpuModel, layout: &[Instance]) -> Result<(), MigError> {
    let requested: Vec<Requested> = layout.iter().map(Requested::from).collect();
    validate(model, &requested).map(|_| ())
}

/// Index of `profile` in `model.profiles`; `None` if the model lacks it.
pub(crate) fn profile_index(model: &GpuModel, profile: &str) -> Option<usize> {
    model.profile(profile).map(|p| model.profile_index(p))
}

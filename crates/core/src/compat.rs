//! Other systems' spellings of a tenant's limits, for users who bring them along.
//!
//! HAMi-core (the interposer HAMi and Volcano inject into containers) takes its limits from
//! `CUDA_DEVICE_MEMORY_LIMIT` and `CUDA_DEVICE_SM_LIMIT`, each optionally per device with a
//! `_<index>` suffix that wins over the plain one. Its memory grammar is a C `strtoul` number
//! (decimal, `0x` hex or leading-`0` octal) with an optional `k`, `m` or `g` (either case, powers
//! of 1024): `1g`, `1024m`, `1048576k`, `1073741824`. Zero means "no limit" there; here it is
//! refused, since gpuslice never falls back to unlimited.
//!
//! HAMi's scheduler takes a pod's vGPUs from Kubernetes resources (`nvidia.com/gpu` count,
//! `nvidia.com/gpumem` MiB, `nvidia.com/gpucores` percent, per vGPU) and steers them with
//! annotations (`nvidia.com/use-gputype`, `hami.io/node-scheduler-policy`, ...).
//! [`hami_resources`] and [`hami_annotations`] give the gpuslice request that means the same;
//! what has no gpuslice meaning is refused, naming it, rather than dropped.

use std::collections::BTreeMap;

use crate::protocol::{
    ANNOTATION_GPU_POLICY, ANNOTATION_MODEL_EXCLUDE, ANNOTATION_MODEL_INCLUDE,
    ANNOTATION_NODE_POLICY, ANNOTATION_UUID_EXCLUDE, ANNOTATION_UUID_PIN, RESOURCE_GPU,
    RESOURCE_GPU_COMPUTE, RESOURCE_GPU_MEMORY,
};
use crate::quantity::{ByteSize, Quantity};

/// HAMi-core's variable names.
pub const HAMI_MEMORY: &str = "CUDA_DEVICE_MEMORY_LIMIT";
pub const HAMI_SM: &str = "CUDA_DEVICE_SM_LIMIT";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    #[error(
        "{0}='{1}' is not a HAMi-core size; accepted: a whole number of bytes or one followed by k, m or g (binary), e.g. 1g, 1024m"
    )]
    Size(String, String),
    #[error("{0}='{1}' is not a HAMi-core SM limit; accepted: a whole percentage from 1 to 100")]
    Sm(String, String),
    #[error("{0}: gpuslice applies one limit to every GPU, and {1}")]
    Differ(String, String),
    /// A HAMi pod field (`field`: where, e.g. `containers[0].resources.limits[nvidia.com/gpumem]`).
    #[error("{field}: {reason}")]
    Hami { field: String, reason: String },
}

fn hami_err(field: impl Into<String>, reason: impl Into<String>) -> CompatError {
    CompatError::Hami {
        field: field.into(),
        reason: reason.into(),
    }
}

/// HAMi's resource names (its defaults: `resourceCountName` and the others).
pub const HAMI_GPU: &str = "nvidia.com/gpu";
pub const HAMI_GPUMEM: &str = "nvidia.com/gpumem";
pub const HAMI_GPUMEM_PERCENTAGE: &str = "nvidia.com/gpumem-percentage";
pub const HAMI_GPUCORES: &str = "nvidia.com/gpucores";
pub const HAMI_PRIORITY: &str = "nvidia.com/priority";
const HAMI_RESOURCES: [&str; 5] = [
    HAMI_GPU,
    HAMI_GPUMEM,
    HAMI_GPUMEM_PERCENTAGE,
    HAMI_GPUCORES,
    HAMI_PRIORITY,
];

/// HAMi's pod annotations that have a gpuslice equivalent, and that equivalent.
pub const HAMI_ANNOTATIONS: [(&str, &str); 6] = [
    ("nvidia.com/use-gputype", ANNOTATION_MODEL_INCLUDE),
    ("nvidia.com/nouse-gputype", ANNOTATION_MODEL_EXCLUDE),
    ("nvidia.com/use-gpuuuid", ANNOTATION_UUID_PIN),
    ("nvidia.com/nouse-gpuuuid", ANNOTATION_UUID_EXCLUDE),
    ("hami.io/node-scheduler-policy", ANNOTATION_NODE_POLICY),
    ("hami.io/gpu-scheduler-policy", ANNOTATION_GPU_POLICY),
];
const HAMI_VGPU_MODE: &str = "nvidia.com/vgpu-mode";
const HAMI_NUMA_BIND: &str = "nvidia.com/numa-bind";

/// Whether a container's resources (limits or requests) name any HAMi resource.
pub fn mentions_hami(res: &BTreeMap<String, String>) -> bool {
    res.keys().any(|k| HAMI_RESOURCES.contains(&k.as_str()))
}

fn whole(field: &str, v: &str) -> Result<u64, CompatError> {
    Quantity::parse_whole(v).map_err(|e| hami_err(field, e.to_string()))
}

/// One container's resources (`field` names the map, for messages) with HAMi's resources
/// replaced by gpuslice's; other resources are kept. `None` when it names none of HAMi's.
///
/// As HAMi's webhook does, memory or cores without a count ask for one vGPU. Cores of 0 (HAMi:
/// no reservation) ask for no compute share; 1-100 are the slice's compute percent.
/// `gpumem-percentage` and `priority` have no gpuslice meaning on Kubernetes yet and are refused.
pub fn hami_resources(
    field: &str,
    res: &BTreeMap<String, String>,
) -> Result<Option<BTreeMap<String, String>>, CompatError> {
    if !mentions_hami(res) {
        return Ok(None);
    }
    let f = |k: &str| format!("{field}[{k}]");
    for (k, why) in [
        (
            HAMI_GPUMEM_PERCENTAGE,
            "a share of the GPU's memory is not offered; give nvidia.com/gpumem in MiB",
        ),
        (
            HAMI_PRIORITY,
            "task priority is not offered to pods; remove it (every pod runs at normal priority)",
        ),
    ] {
        if res.contains_key(k) {
            return Err(hami_err(f(k), why));
        }
    }
    let mut out: BTreeMap<String, String> = res
        .iter()
        .filter(|(k, _)| !HAMI_RESOURCES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for k in [RESOURCE_GPU, RESOURCE_GPU_MEMORY, RESOURCE_GPU_COMPUTE] {
        if out.contains_key(k) {
            return Err(hami_err(
                f(k),
                "gpuslice and HAMi resources in one container; use one vocabulary",
            ));
        }
    }
    let count = match res.get(HAMI_GPU) {
        Some(v) => whole(&f(HAMI_GPU), v)?,
        None => 1,
    };
    if count == 0 {
        return Err(hami_err(f(HAMI_GPU), "must be at least 1"));
    }
    out.insert(RESOURCE_GPU.into(), count.to_string());
    if let Some(v) = res.get(HAMI_GPUMEM) {
        let mib = whole(&f(HAMI_GPUMEM), v)?;
        if mib == 0 {
            return Err(hami_err(
                f(HAMI_GPUMEM),
                "must be at least 1 (MiB); leave it out for the whole GPU's memory",
            ));
        }
        out.insert(RESOURCE_GPU_MEMORY.into(), mib.to_string());
    }
    if let Some(v) = res.get(HAMI_GPUCORES) {
        match whole(&f(HAMI_GPUCORES), v)? {
            0 => {}
            c @ 1..=100 => {
                out.insert(RESOURCE_GPU_COMPUTE.into(), c.to_string());
            }
            _ => return Err(hami_err(f(HAMI_GPUCORES), "a percentage, 0 to 100")),
        }
    }
    Ok(Some(out))
}

/// The gpuslice annotations HAMi's pod annotations stand for. HAMi's own stay (they steer
/// nothing here). `vgpu-mode` other than `hami-core`, `numa-bind: "true"` and a policy other
/// than binpack or spread are refused; so is a HAMi annotation whose gpuslice equivalent the
/// pod already sets to something else.
pub fn hami_annotations(
    ann: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, CompatError> {
    let field = |k: &str| format!("metadata.annotations[{k}]");
    match ann.get(HAMI_VGPU_MODE).map(|v| v.trim()) {
        None | Some("hami-core") => {}
        Some(v) => {
            return Err(hami_err(
                field(HAMI_VGPU_MODE),
                format!(
                    "'{v}' is not offered through HAMi's resources; ask for gpuslice.io/mig-<profile> for MIG"
                ),
            ));
        }
    }
    match ann.get(HAMI_NUMA_BIND).map(|v| v.trim()) {
        None | Some("false") => {}
        Some(_) => {
            return Err(hami_err(
                field(HAMI_NUMA_BIND),
                "a hard NUMA binding is not offered (gpuslice prefers one NUMA node); remove it",
            ));
        }
    }
    let mut out = BTreeMap::new();
    for (hami, ours) in HAMI_ANNOTATIONS {
        let Some(v) = ann.get(hami) else { continue };
        if let Some(mine) = ann.get(ours)
            && mine != v
        {
            return Err(hami_err(
                field(hami),
                format!("says '{v}' while {ours} says '{mine}'"),
            ));
        }
        out.insert(ours.to_string(), v.clone());
    }
    // Refused here, naming HAMi's annotation, rather than when the pod is placed.
    if let Err(e) =
        crate::protocol::PodAnnotations::parse(out.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        let hami = HAMI_ANNOTATIONS
            .iter()
            .find(|(_, ours)| e.field.ends_with(ours))
            .map_or("", |(h, _)| h);
        return Err(hami_err(field(hami), e.reason));
    }
    Ok(out)
}

/// A C `strtoul(s, _, 0)` over the whole of `digits`.
fn c_number(digits: &str) -> Option<u64> {
    if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        return u64::from_str_radix(h, 16).ok();
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return u64::from_str_radix(&digits[1..], 8).ok();
    }
    digits.parse().ok()
}

/// One HAMi-core memory value (`name` is for the message).
pub fn hami_size(name: &str, text: &str) -> Result<ByteSize, CompatError> {
    let bad = || CompatError::Size(name.to_string(), text.to_string());
    let t = text.trim();
    let (digits, scale) = match t.as_bytes().last() {
        Some(b'g' | b'G') => (&t[..t.len() - 1], ByteSize::GIB),
        Some(b'm' | b'M') => (&t[..t.len() - 1], ByteSize::MIB),
        Some(b'k' | b'K') => (&t[..t.len() - 1], ByteSize::KIB),
        _ => (t, 1),
    };
    let n = c_number(digits).ok_or_else(bad)?;
    let bytes = n.checked_mul(scale).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(bad());
    }
    Ok(ByteSize(bytes))
}

/// One HAMi-core SM limit: a percentage, 1 to 100.
pub fn hami_sm(name: &str, text: &str) -> Result<u8, CompatError> {
    match c_number(text.trim()) {
        Some(n @ 1..=100) => Ok(n as u8),
        _ => Err(CompatError::Sm(name.to_string(), text.to_string())),
    }
}

/// The one value that HAMi-core's variables `base` and `base_<i>` (read through `get`) give
/// every GPU, if any is set; `parse` reads one value. Per-device values that differ from each
/// other or from the plain one are refused, naming them.
pub fn hami_uniform<T: PartialEq + Copy>(
    base: &str,
    get: impl Fn(&str) -> Option<String>,
    parse: impl Fn(&str, &str) -> Result<T, CompatError>,
) -> Result<Option<T>, CompatError> {
    let mut seen: Vec<(String, String, T)> = Vec::new();
    let names = std::iter::once(base.to_string()).chain((0..64).map(|i| format!("{base}_{i}")));
    for name in names {
        if let Some(text) = get(&name) {
            let v = parse(&name, &text)?;
            seen.push((name, text, v));
        }
    }
    let Some((n0, t0, v0)) = seen.first().cloned() else {
        return Ok(None);
    };
    if let Some((n, t, _)) = seen.iter().find(|(_, _, v)| *v != v0) {
        return Err(CompatError::Differ(
            base.to_string(),
            format!("{n0}={t0} and {n}={t} differ"),
        ));
    }
    Ok(Some(v0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hami_core_sizes_read_as_hami_core_reads_them() {
        let g = |s| hami_size(HAMI_MEMORY, s).map(|b| b.bytes());
        assert_eq!(g("1g"), Ok(1 << 30));
        assert_eq!(g("1024m"), Ok(1 << 30));
        assert_eq!(g("1048576k"), Ok(1 << 30));
        assert_eq!(g("1073741824"), Ok(1 << 30));
        assert_eq!(g("4G"), Ok(4 << 30));
        assert_eq!(g("3000m"), Ok(3000 << 20));
        assert_eq!(g("0x400m"), Ok(1 << 30));
        for bad in [
            "0",
            "0m",
            "",
            "1gb",
            "1.5g",
            "-1g",
            "g",
            "99999999999999999999g",
        ] {
            assert!(
                matches!(g(bad), Err(CompatError::Size(..))),
                "{bad}: {:?}",
                g(bad)
            );
        }
        assert_eq!(hami_sm(HAMI_SM, "30"), Ok(30));
        assert!(hami_sm(HAMI_SM, "0").is_err() && hami_sm(HAMI_SM, "101").is_err());
    }

    #[test]
    fn per_device_values_must_agree() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        let one = hami_uniform(
            HAMI_MEMORY,
            env(&[("CUDA_DEVICE_MEMORY_LIMIT_0", "4000m")]),
            hami_size,
        );
        assert_eq!(one, Ok(Some(ByteSize(4000 << 20))));
        let same = hami_uniform(
            HAMI_MEMORY,
            env(&[
                ("CUDA_DEVICE_MEMORY_LIMIT", "4g"),
                ("CUDA_DEVICE_MEMORY_LIMIT_1", "4096m"),
            ]),
            hami_size,
        );
        assert_eq!(same, Ok(Some(ByteSize(4 << 30))));
        let differ = hami_uniform(
            HAMI_MEMORY,
            env(&[
                ("CUDA_DEVICE_MEMORY_LIMIT_0", "4g"),
                ("CUDA_DEVICE_MEMORY_LIMIT_1", "8g"),
            ]),
            hami_size,
        );
        assert!(
            matches!(&differ, Err(CompatError::Differ(_, m)) if m.contains("_0=4g") && m.contains("_1=8g")),
            "{differ:?}"
        );
        assert_eq!(hami_uniform(HAMI_MEMORY, env(&[]), hami_size), Ok(None));
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hami_resources_become_a_gpuslice_slice() {
        let t = |pairs: &[(&str, &str)]| hami_resources("limits", &map(pairs));
        assert_eq!(
            t(&[
                ("nvidia.com/gpu", "1"),
                ("nvidia.com/gpumem", "3000"),
                ("nvidia.com/gpucores", "30"),
                ("cpu", "2"),
            ]),
            Ok(Some(map(&[
                ("cpu", "2"),
                ("gpuslice.io/gpu", "1"),
                ("gpuslice.io/gpu-memory", "3000"),
                ("gpuslice.io/gpu-compute", "30"),
            ])))
        );
        // The API server's canonical forms; memory without a count is one vGPU; cores 0 is
        // no reservation.
        assert_eq!(
            t(&[("nvidia.com/gpumem", "16k"), ("nvidia.com/gpucores", "0")]),
            Ok(Some(map(&[
                ("gpuslice.io/gpu", "1"),
                ("gpuslice.io/gpu-memory", "16000"),
            ])))
        );
        assert_eq!(t(&[("cpu", "2")]), Ok(None));
        for (bad, names) in [
            (
                &[("nvidia.com/gpumem-percentage", "50")][..],
                "gpumem-percentage",
            ),
            (&[("nvidia.com/priority", "0")][..], "priority"),
            (&[("nvidia.com/gpu", "0")][..], "nvidia.com/gpu"),
            (&[("nvidia.com/gpucores", "101")][..], "gpucores"),
            (&[("nvidia.com/gpumem", "1.5")][..], "gpumem"),
            (
                &[("nvidia.com/gpu", "1"), ("gpuslice.io/gpu-memory", "10")][..],
                "gpu-memory",
            ),
        ] {
            let e = t(bad).unwrap_err().to_string();
            assert!(
                e.contains(names) && e.starts_with("limits["),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn hami_annotations_become_gpuslice_annotations() {
        let a = hami_annotations(&map(&[
            ("nvidia.com/use-gputype", "A100,H100"),
            ("nvidia.com/nouse-gpuuuid", "GPU-1"),
            ("hami.io/gpu-scheduler-policy", "binpack"),
            ("nvidia.com/vgpu-mode", "hami-core"),
            ("unrelated", "x"),
        ]))
        .unwrap();
        assert_eq!(
            a,
            map(&[
                ("gpuslice.io/gpu-model-include", "A100,H100"),
                ("gpuslice.io/gpu-uuid-exclude", "GPU-1"),
                ("gpuslice.io/gpu-policy", "binpack"),
            ])
        );
        // What the translation produces parses as gpuslice's own annotations.
        let parsed =
            crate::protocol::PodAnnotations::parse(a.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .unwrap();
        assert_eq!(parsed.uuid_exclude, vec!["GPU-1".to_string()]);
        for bad in [
            map(&[("nvidia.com/vgpu-mode", "mig")]),
            map(&[("nvidia.com/numa-bind", "true")]),
            map(&[("hami.io/gpu-scheduler-policy", "topology-aware")]),
            map(&[("nvidia.com/use-gpuuuid", "GPU-1,,GPU-2")]),
            map(&[
                ("nvidia.com/use-gputype", "A100"),
                ("gpuslice.io/gpu-model-include", "H100"),
            ]),
        ] {
            assert!(
                matches!(hami_annotations(&bad), Err(CompatError::Hami { .. })),
                "{bad:?}"
            );
        }
    }
}

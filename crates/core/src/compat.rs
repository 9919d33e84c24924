//! Other systems' spellings of a tenant's limits, for users who bring them along.
//!
//! HAMi-core (the interposer HAMi and Volcano inject into containers) takes its limits from
//! `CUDA_DEVICE_MEMORY_LIMIT` and `CUDA_DEVICE_SM_LIMIT`, each optionally per device with a
//! `_<index>` suffix that wins over the plain one. Its memory grammar is a C `strtoul` number
//! (decimal, `0x` hex or leading-`0` octal) with an optional `k`, `m` or `g` (either case, powers
//! of 1024): `1g`, `1024m`, `1048576k`, `1073741824`. Zero means "no limit" there; here it is
//! refused, since gpuslice never falls back to unlimited.

use crate::quantity::ByteSize;

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
}

//! Turns the parsed headers into the symbol list and the `cuGetProcAddress` version table.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::header::{CudaH, Typedefs};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    pub symbol: String,
    pub version: i32,
    pub per_thread: bool,
}

pub struct Model {
    pub cuda_version: i32,
    /// Exported symbols, sorted.
    pub symbols: Vec<String>,
    /// Base name -> variants sorted by (version, per_thread).
    pub table: BTreeMap<String, Vec<Variant>>,
    /// Exported default-stream symbols no base name resolves to (no PFN typedef covers them).
    pub unversioned: Vec<String>,
    /// Names with PFN typedefs whose functions are not declared for Linux.
    pub not_linux: Vec<String>,
}

const PT_SUFFIXES: [&str; 2] = ["_ptds", "_ptsz"];

pub fn build(h: &CudaH, t: &Typedefs) -> Result<Model, String> {
    let params: HashMap<&str, usize> = h
        .decls
        .iter()
        .map(|d| (d.symbol.as_str(), d.params))
        .collect();
    let mut errors = Vec::new();

    let mut by_base: BTreeMap<&str, Vec<&crate::header::Pfn>> = BTreeMap::new();
    for p in &t.pfns {
        by_base.entry(p.base.as_str()).or_default().push(p);
    }

    let mut table: BTreeMap<String, Vec<Variant>> = BTreeMap::new();
    let mut not_linux = Vec::new();
    for (&base, pfns) in &by_base {
        let own: BTreeSet<i32> = pfns
            .iter()
            .filter(|p| p.per_thread.is_empty())
            .map(|p| p.version)
            .collect();
        // The k-th default-stream typedef of a base is the k-th symbol of its `cuX`, `cuX_v2`,
        // `cuX_v3`, ... series: each new version of an entry point got the next suffix.
        let mut series: Vec<(u32, &str)> = h
            .decls
            .iter()
            .map(|d| d.symbol.as_str())
            .filter_map(|s| {
                let rest = s.strip_prefix(base)?;
                if rest.is_empty() {
                    return Some((1, s));
                }
                let n: u32 = rest.strip_prefix("_v")?.parse().ok()?;
                (n >= 2).then_some((n, s))
            })
            .collect();
        series.sort();
        // Declared in no header we have (the profiler's): one version, exported under its name.
        let undeclared = series.is_empty() && own.len() == 1 && pfns.iter().all(|p| p.undeclared);
        if undeclared {
            series.push((1, base));
        }
        if series.is_empty() {
            // Typed for cuGetProcAddress but declared only for another platform (cuWGLGetDevice
            // is Windows-only): a Linux driver neither exports nor resolves it.
            not_linux.push(base.to_string());
            continue;
        }
        if series.len() != own.len() {
            errors.push(format!(
                "{base}: typedef versions {own:?} but exported series {series:?}"
            ));
            continue;
        }
        let default: Vec<(i32, &str)> = own
            .iter()
            .copied()
            .zip(series.iter().map(|s| s.1))
            .collect();
        let mut variants = Vec::new();
        for p in pfns {
            let symbol = if p.per_thread.is_empty() {
                default
                    .iter()
                    .find(|d| d.0 == p.version)
                    .unwrap()
                    .1
                    .to_string()
            } else {
                // A per-thread variant is the newest default-stream symbol at its version, suffixed.
                match default.iter().rev().find(|d| d.0 <= p.version) {
                    Some(d) => format!("{}{}", d.1, p.per_thread),
                    None => {
                        errors.push(format!(
                            "{base}: per-thread typedef v{} predates every version",
                            p.version
                        ));
                        continue;
                    }
                }
            };
            match params.get(symbol.as_str()) {
                None if undeclared => {}
                None => errors.push(format!(
                    "{base} v{}{}: {symbol} is not exported",
                    p.version, p.per_thread
                )),
                Some(&n) if n != p.params => errors.push(format!(
                    "{base} v{}{}: typedef has {} parameters, {symbol} has {n}",
                    p.version, p.per_thread, p.params
                )),
                _ => {}
            }
            variants.push(Variant {
                symbol,
                version: p.version,
                per_thread: !p.per_thread.is_empty(),
            });
        }
        variants.sort_by_key(|v| (v.version, v.per_thread));
        variants.dedup();
        table.insert(base.to_string(), variants);
    }

    // `#define PFN_cuGraphInstantiate PFN_cuGraphInstantiateWithFlags_v11040`: the base name now
    // hands out another function. The typedef carries that function's own version, but headers
    // of the same major before the rename still mapped the base to its old variant, so the
    // redirect only holds from the next major release after the base's last own variant.
    for (from, (to, to_version)) in &t.aliases {
        // Only a name with versions of its own is one callers ask for; the rest are typing aids
        // (`PFN_cuMemAdvise_v2`) or misspellings.
        if !table.contains_key(from) {
            continue;
        }
        let Some(target) = table
            .get(to)
            .and_then(|v| v.iter().find(|v| v.version == *to_version && !v.per_thread))
        else {
            continue;
        };
        let symbol = target.symbol.clone();
        let own = table.entry(from.clone()).or_default();
        let last_own = own.iter().map(|v| v.version).max().unwrap_or(0);
        let version = (*to_version).max(if last_own > 0 {
            (last_own / 1000 + 1) * 1000
        } else {
            0
        });
        own.push(Variant {
            symbol,
            version,
            per_thread: false,
        });
        own.sort_by_key(|v| (v.version, v.per_thread));
    }

    if !errors.is_empty() {
        return Err(format!(
            "the headers do not fit the versioning rules:\n  {}",
            errors.join("\n  ")
        ));
    }

    let mut symbols: BTreeSet<String> = h.decls.iter().map(|d| d.symbol.clone()).collect();
    symbols.extend(table.values().flatten().map(|v| v.symbol.clone()));
    let reached: BTreeSet<&str> = table
        .values()
        .flatten()
        .map(|v| v.symbol.as_str())
        .collect();
    let unversioned = symbols
        .iter()
        .filter(|s| !reached.contains(s.as_str()) && !PT_SUFFIXES.iter().any(|p| s.ends_with(p)))
        .cloned()
        .collect();
    Ok(Model {
        cuda_version: h.cuda_version,
        symbols: symbols.into_iter().collect(),
        table,
        unversioned,
        not_linux,
    })
}

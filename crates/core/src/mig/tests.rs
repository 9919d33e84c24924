use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;

use super::*;

fn req(s: &str) -> Vec<Requested> {
    parse_layout(s).unwrap()
}

fn ok(model: &GpuModel, s: &str) -> Vec<Instance> {
    validate(model, &req(s)).unwrap_or_else(|e| panic!("{} `{s}` should be valid: {e}", model.name))
}

fn err(model: &GpuModel, s: &str) -> MigError {
    match validate(model, &req(s)) {
        Ok(l) => panic!("{} `{s}` should be invalid, got {l:?}", model.name),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------- data

#[test]
fn tables_are_self_consistent() {
    for m in MODELS {
        let names: HashSet<_> = m.profiles.iter().map(|p| p.name).collect();
        let ids: HashSet<_> = m.profiles.iter().map(|p| p.id).collect();
        assert_eq!(names.len(), m.profiles.len(), "{}: duplicate names", m.name);
        assert_eq!(ids.len(), m.profiles.len(), "{}: duplicate ids", m.name);
        assert!(m.profiles.len() <= 8, "state packing");
        for p in m.profiles {
            assert!(!p.placements.is_empty(), "{}", p.name);
            assert!(
                usize::from(p.max_instances) <= p.placements.len(),
                "{}",
                p.name
            );
            let (g, rest) = p.name.split_once('g').unwrap();
            assert_eq!(g.parse::<u8>().unwrap(), p.compute_slices, "{}", p.name);
            assert!(rest.starts_with('.') && p.name.contains("gb"), "{}", p.name);
            for pl in p.placements {
                assert_eq!(pl.size, p.memory_slices, "{} {pl:?}", p.name);
                assert!(pl.start + pl.size <= m.memory_slices, "{} {pl:?}", p.name);
                assert_eq!(pl.start % pl.size.min(4), 0, "{} aligned", p.name);
            }
            assert!(p.compute_slices <= m.compute_slices);
            assert!(p.memory_mib > 0 && p.sm_count > 0);
            // The last CI takes the whole GI and shares its name.
            let full = p.compute_profiles.last().unwrap();
            assert_eq!((full.name, full.compute_slices), (p.name, p.compute_slices));
            for ci in p.compute_profiles {
                assert!(
                    u32::from(ci.compute_slices) * u32::from(ci.max_instances)
                        <= u32::from(p.compute_slices)
                );
            }
        }
        let full = m
            .profiles
            .iter()
            .find(|p| p.memory_slices == m.memory_slices)
            .unwrap();
        assert_eq!(full.compute_slices, m.compute_slices);
        assert_eq!(full.id, 0);
        // Memory grows with memory slices within a model.
        for a in m.profiles {
            for b in m.profiles {
                if a.memory_slices < b.memory_slices {
                    assert!(a.memory_mib < b.memory_mib, "{} vs {}", a.name, b.name);
                }
            }
        }
    }
}

#[test]
fn model_lookup_accepts_aliases_and_reports_names() {
    for (alias, want) in [
        ("H100-80GB", "H100-80GB"),
        ("h100-sxm5-80gb", "H100-80GB"),
        ("NVIDIA H100 80GB HBM3", "H100-80GB"),
        ("nvidia_h100_80gb_hbm3", "H100-80GB"),
        ("H100 NVL", "H100-94GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("A100-PCIE-80GB", "A100-80GB"),
        ("a30", "A30-24GB"),
        ("NVIDIA H200 141GB HBM3e", "H200-141GB"),
        ("0x233010DE", "H100-80GB"),
        ("0x232110de", "H100-94GB"),
    ] {
        assert_eq!(model(alias).unwrap().name, want, "{alias}");
    }
    let e = model("V100").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("V100") && msg.contains("H100-80GB") && msg.contains("A30-24GB"),
        "{msg}"
    );
}

#[test]
fn profile_lookup() {
    let m = &H100_80GB;
    assert_eq!(m.profile("3g.40gb").unwrap().id, 9);
    assert_eq!(m.profile("1G.10GB+ME").unwrap().id, 20);
    assert_eq!(m.profile("MIG 1g.20gb").unwrap().id, 15);
    assert_eq!(m.profile("mig-7g.80gb").unwrap().id, 0);
    assert!(m.profile("1g.5gb").is_none());
    assert_eq!(m.profile_by_id(14).unwrap().name, "2g.20gb");
    let gi = m.profile("3g.40gb").unwrap();
    let cis: Vec<_> = gi.compute_profiles.iter().map(|c| c.name).collect();
    assert_eq!(cis, ["1c.3g.40gb", "2c.3g.40gb", "3g.40gb"]);
    assert_eq!(gi.compute_profile("2C.3g.40gb").unwrap().id, 1);
    let full = m.profile("7g.80gb").unwrap();
    assert_eq!(full.compute_profile("4c.7g.80gb").unwrap().max_instances, 1);
    assert_eq!(full.compute_profile("1c.7g.80gb").unwrap().max_instances, 7);
    assert_eq!(
        A30_24GB.profile("4g.24gb").unwrap().compute_profiles.len(),
        4
    );
}

#[test]
fn facts_from_the_guide_and_nvidia_smi() {
    let h = &H100_80GB;
    let row = |n: &str| {
        let p = h.profile(n).unwrap();
        (
            p.id,
            p.max_instances,
            p.sm_count,
            p.memory_mib,
            p.allowed_starts(),
        )
    };
    assert_eq!(row("1g.10gb"), (19, 7, 16, 9984, vec![0, 1, 2, 3, 4, 5, 6]));
    assert_eq!(
        row("1g.10gb+me"),
        (20, 1, 16, 9984, vec![0, 1, 2, 3, 4, 5, 6])
    );
    assert_eq!(row("1g.20gb"), (15, 4, 26, 20096, vec![0, 2, 4, 6]));
    assert_eq!(row("2g.20gb"), (14, 3, 32, 20096, vec![0, 2, 4]));
    assert_eq!(row("3g.40gb"), (9, 2, 60, 40448, vec![0, 4]));
    assert_eq!(row("4g.40gb"), (5, 1, 64, 40448, vec![0]));
    assert_eq!(row("7g.80gb"), (0, 1, 132, 81152, vec![0]));
    let a30: Vec<_> = A30_24GB
        .profiles
        .iter()
        .map(|p| (p.name, p.id, p.memory_slices))
        .collect();
    assert_eq!(
        a30,
        [
            ("1g.6gb", 14, 1),
            ("1g.6gb+me", 21, 1),
            ("2g.12gb", 5, 2),
            ("2g.12gb+me", 6, 2),
            ("4g.24gb", 0, 4)
        ]
    );
    assert_eq!(A100_40GB.profile("7g.40gb").unwrap().sm_count, 98);
    assert_eq!(
        H200_141GB.profile("7g.141gb").unwrap().memory_mib,
        140 * 1024
    );
    assert_eq!(H100_94GB.profile("3g.47gb").unwrap().memory_mib, 47488);
}

// ---------------------------------------------------------------- validation

#[test]
fn every_single_placement_is_valid_and_every_other_start_is_not() {
    for m in MODELS {
        for p in m.profiles {
            for pl in p.placements {
                let l = validate(m, &[Requested::new(p.name, Some(pl.start))]).unwrap();
                assert_eq!(
                    l,
                    [Instance {
                        profile: p.name.into(),
                        start: pl.start,
                        size: pl.size
                    }]
                );
            }
            for start in 0..m.memory_slices + 2 {
                if p.allows_start(start) {
                    continue;
                }
                match validate(m, &[Requested::new(p.name, Some(start))]).unwrap_err() {
                    MigError::BadStart { allowed, .. } => {
                        let want: Vec<String> =
                            p.allowed_starts().iter().map(|s| s.to_string()).collect();
                        assert_eq!(allowed, want.join(","));
                    }
                    e => panic!("{} {} @{start}: {e}", m.name, p.name),
                }
            }
            // Unplaced, it lands on its first listed placement.
            let l = validate(m, &[Requested::new(p.name, None)]).unwrap();
            assert_eq!(l[0].placement(), p.placements[0]);
        }
    }
}

#[test]
fn full_gpu_profile_excludes_everything_else() {
    for m in MODELS {
        let full = m
            .profiles
            .iter()
            .find(|p| p.memory_slices == m.memory_slices)
            .unwrap();
        for p in m.profiles {
            for pl in p.placements {
                let r = [
                    Requested::new(full.name, Some(0)),
                    Requested::new(p.name, Some(pl.start)),
                ];
                assert!(
                    validate(m, &r).is_err(),
                    "{} {} + {}@{}",
                    m.name,
                    full.name,
                    p.name,
                    pl.start
                );
                let r = [
                    Requested::new(full.name, None),
                    Requested::new(p.name, None),
                ];
                assert!(validate(m, &r).is_err());
            }
        }
    }
}

#[test]
fn known_valid_layouts() {
    let h = &H100_80GB;
    assert_eq!(
        ok(h, "1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb").len(),
        7
    );
    ok(h, "3g.40gb,2g.20gb,1g.10gb,1g.10gb");
    // 4g + 3g uses all 7 compute slices and all 8 memory slices: allowed.
    let l = ok(h, "4g.40gb,3g.40gb");
    assert_eq!((l[0].start, l[1].start), (0, 4));
    ok(h, "3g.40gb,3g.40gb");
    ok(h, "2g.20gb,2g.20gb,2g.20gb,1g.10gb");
    ok(h, "2g.20gb,2g.20gb,2g.20gb,1g.20gb");
    ok(h, "1g.20gb,1g.20gb,1g.20gb,1g.20gb");
    ok(h, "4g.40gb,2g.20gb,1g.10gb");
    ok(h, "4g.40gb,1g.10gb,1g.10gb,1g.20gb");
    ok(
        h,
        "1g.10gb+me,1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb",
    );
    ok(h, "1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.20gb");
    ok(h, "3g.40gb@4,1g.10gb@0,1g.10gb@1,2g.20gb@2");
    ok(h, "7g.80gb");
    ok(&A100_40GB, "4g.20gb,3g.20gb");
    ok(
        &A100_40GB,
        "1g.5gb,1g.5gb,1g.5gb,1g.5gb,1g.5gb,1g.5gb,1g.5gb",
    );
    ok(&A100_40GB, "3g.20gb,2g.10gb,1g.10gb");
    ok(&A30_24GB, "1g.6gb,1g.6gb,1g.6gb,1g.6gb");
    ok(&A30_24GB, "2g.12gb,1g.6gb,1g.6gb");
    ok(&A30_24GB, "2g.12gb+me,2g.12gb");
    ok(&H100_94GB, "3g.47gb,1g.24gb,1g.12gb");
    ok(&H200_141GB, "4g.71gb,3g.71gb");
}

#[test]
fn known_invalid_layouts_report_the_reason() {
    let h = &H100_80GB;
    assert!(matches!(
        err(
            h,
            "1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb,1g.10gb"
        ),
        MigError::TooMany {
            requested: 8,
            max: 7,
            ..
        }
    ));
    assert!(matches!(
        err(h, "4g.40gb,4g.40gb"),
        MigError::TooMany { max: 1, .. }
    ));
    assert!(matches!(
        err(h, "3g.40gb,3g.40gb,3g.40gb"),
        MigError::TooMany { max: 2, .. }
    ));
    assert!(matches!(
        err(h, "1g.10gb+me,1g.10gb+me"),
        MigError::TooMany { max: 1, .. }
    ));
    assert_eq!(
        err(h, "3g.40gb@4,1g.10gb@5"),
        MigError::Overlap {
            a: "3g.40gb@4".into(),
            b: "1g.10gb@5".into()
        }
    );
    assert_eq!(
        err(h, "3g.40gb@4,1g.10gb@5").to_string(),
        "3g.40gb@4 and 1g.10gb@5 overlap"
    );
    match err(h, "1g.10gb@7") {
        e @ MigError::BadStart { .. } => {
            assert_eq!(
                e.to_string(),
                "1g.10gb cannot start at memory slice 7; allowed starts: 0,1,2,3,4,5,6"
            )
        }
        e => panic!("{e}"),
    }
    match err(h, "3g.40gb,5g.50gb") {
        MigError::UnknownProfile {
            profile, accepted, ..
        } => {
            assert_eq!(profile, "5g.50gb");
            assert_eq!(
                accepted,
                "1g.10gb, 1g.10gb+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb"
            );
        }
        e => panic!("{e}"),
    }
    assert!(matches!(
        err(h, "7g.80gb,1g.10gb"),
        MigError::NotEnoughMemory {
            needed: 9,
            available: 8,
            ..
        }
    ));
    assert!(matches!(
        err(h, "3g.40gb,3g.40gb,1g.10gb"),
        MigError::NotEnoughMemory { .. }
    ));
    // Fits the 8 memory slices but needs 8 of 7 compute slices.
    assert!(matches!(
        err(h, "4g.40gb,2g.20gb,2g.20gb"),
        MigError::NotEnoughCompute {
            needed: 8,
            available: 7,
            ..
        }
    ));
    // Enough slices in total, but no arrangement: 2g starts only at 0, 2 or 4.
    assert!(matches!(
        err(h, "1g.10gb@1,1g.10gb@3,1g.10gb@5,2g.20gb"),
        MigError::NoPlacement { .. }
    ));
    assert!(matches!(
        err(h, "3g.40gb@0,4g.40gb"),
        MigError::NoPlacement { .. }
    ));
    assert!(matches!(
        err(&A30_24GB, "1g.6gb+me,2g.12gb+me"),
        MigError::MediaConflict { .. }
    ));
    assert!(matches!(
        err(&A30_24GB, "1g.6gb@4"),
        MigError::BadStart { .. }
    ));
    let e = validate(
        h,
        &[Requested {
            profile: "3g.40gb".into(),
            start: Some(0),
            size: Some(2),
        }],
    );
    assert!(matches!(e, Err(MigError::BadSize { expected: 4, .. })));
}

#[test]
fn layout_parsing() {
    let r = parse_layout(" 3g.40gb@4, 1g.10gb ,1g.10gb@1").unwrap();
    assert_eq!(
        r,
        [
            Requested::new("3g.40gb", Some(4)),
            Requested::new("1g.10gb", None),
            Requested::new("1g.10gb", Some(1))
        ]
    );
    assert!(parse_layout("").unwrap().is_empty());
    for bad in [
        "3g.40gb,,1g.10gb",
        "3g.40gb@x",
        "@4",
        "3g.40gb@-1",
        "3g.40gb@300",
    ] {
        let e = parse_layout(bad).unwrap_err();
        assert!(matches!(e, MigError::Parse { .. }), "{bad}");
    }
    assert!(
        parse_layout("3g.40gb@x")
            .unwrap_err()
            .to_string()
            .contains("memory-slice index")
    );

    let json = r#"[{"profile":"3g.40gb","start":4},{"profile":"1g.10gb"},{"profile":"1g.10gb","start":1,"size":1}]"#;
    let r: Vec<Requested> = serde_json::from_str(json).unwrap();
    let l = validate(&H100_80GB, &r).unwrap();
    assert_eq!(
        l[0],
        Instance {
            profile: "3g.40gb".into(),
            start: 4,
            size: 4
        }
    );
    assert_eq!(l[2].start, 1);
    let back = serde_json::to_string(&l).unwrap();
    let again: Vec<Requested> = serde_json::from_str(&back).unwrap();
    assert_eq!(validate(&H100_80GB, &again).unwrap(), l);
}

#[test]
fn demand_parsing() {
    assert_eq!(
        parse_demand("1g.10gb=3, 3g.40gb=1").unwrap(),
        [("1g.10gb".to_string(), 3), ("3g.40gb".to_string(), 1)]
    );
    assert!(parse_demand(" ").unwrap().is_empty());
    for (bad, needle) in [
        ("1g.10gb", "PROFILE=COUNT"),
        ("1g.10gb=x", "whole number"),
        ("1g.10gb=-1", "whole number"),
        ("=3", "no profile"),
        ("1g.10gb=1,1G.10GB=2", "listed twice"),
    ] {
        let e = parse_demand(bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
    let e = plan(&H100_80GB, &parse_demand("2g.10gb=1").unwrap(), None).unwrap_err();
    assert!(matches!(e, MigError::UnknownProfile { .. }));
}

// ---------------------------------------------------------------- planner vs brute force

const W_S: i64 = 256;
const W_K: i64 = 16;

type Layout = Vec<(usize, u8)>; // (profile index, start)

fn candidates(m: &GpuModel) -> Vec<(usize, Placement)> {
    let mut c = Vec::new();
    for (i, p) in m.profiles.iter().enumerate() {
        for pl in p.placements {
            c.push((i, *pl));
        }
    }
    c
}

/// Every valid layout, by include/exclude over every candidate placement, checked by the
/// rules directly (not by the planner's search).
fn all_layouts(m: &GpuModel) -> Vec<Layout> {
    fn rec(
        m: &GpuModel,
        c: &[(usize, Placement)],
        k: usize,
        cur: &mut Layout,
        out: &mut Vec<Layout>,
    ) {
        if k == c.len() {
            out.push(cur.clone());
            return;
        }
        rec(m, c, k + 1, cur, out);
        let (i, pl) = c[k];
        cur.push((i, pl.start));
        if rules_hold(m, cur) {
            rec(m, c, k + 1, cur, out);
        }
        cur.pop();
    }
    let mut out = Vec::new();
    rec(m, &candidates(m), 0, &mut Vec::new(), &mut out);
    out
}

fn rules_hold(m: &GpuModel, l: &Layout) -> bool {
    let mut used = 0u16;
    let mut counts = vec![0u32; m.profiles.len()];
    let (mut compute, mut media) = (0u32, 0);
    for &(i, start) in l {
        let p = &m.profiles[i];
        let mask = p.placement_at(start).unwrap().mask();
        if used & mask != 0 {
            return false;
        }
        used |= mask;
        counts[i] += 1;
        compute += u32::from(p.compute_slices);
        media += usize::from(p.media_extension());
    }
    media <= 1
        && compute <= u32::from(m.compute_slices)
        && counts
            .iter()
            .zip(m.profiles)
            .all(|(&c, p)| c <= u32::from(p.max_instances))
}

fn counts_of(m: &GpuModel, l: &[Instance]) -> Vec<u32> {
    let mut c = vec![0u32; m.profiles.len()];
    for i in l {
        c[m.profiles.iter().position(|p| p.name == i.profile).unwrap()] += 1;
    }
    c
}

fn satisfied_score(m: &GpuModel, counts: &[u32], demand: &[u32]) -> i64 {
    (0..m.profiles.len())
        .map(|i| {
            i64::from(counts[i].min(demand[i])) * (W_S + i64::from(m.profiles[i].memory_slices))
        })
        .sum()
}

fn to_instances(m: &GpuModel, l: &Layout) -> Vec<Instance> {
    l.iter()
        .map(|&(i, s)| {
            let p = &m.profiles[i];
            Instance {
                profile: p.name.into(),
                start: s,
                size: p.memory_slices,
            }
        })
        .collect()
}

fn demand_pairs(m: &GpuModel, d: &[u32]) -> Vec<(String, u32)> {
    d.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (m.profiles[i].name.to_string(), *n))
        .collect()
}

/// Every layout as (count per profile, instances shared with `cur`). Without `cur` only the
/// distinct count vectors matter.
fn scored(m: &GpuModel, layouts: &[Layout], cur: Option<&Layout>) -> Vec<(Vec<u32>, i64)> {
    let cur_keys: HashSet<(usize, u8)> =
        cur.map(|c| c.iter().copied().collect()).unwrap_or_default();
    let set: BTreeSet<(Vec<u32>, i64)> = layouts
        .iter()
        .map(|l| {
            let mut c = vec![0u32; m.profiles.len()];
            let mut k = 0;
            for &(i, s) in l {
                c[i] += 1;
                k += i64::from(cur_keys.contains(&(i, s)));
            }
            (c, k)
        })
        .collect();
    set.into_iter().collect()
}

/// Checks `plan` against brute force for one demand and optional current layout; `brute` is
/// `scored(m, all_layouts(m), cur)`.
fn check_optimal(m: &GpuModel, brute: &[(Vec<u32>, i64)], d: &[u32], cur: Option<&Layout>) {
    let pairs = demand_pairs(m, d);
    let current = cur.map(|c| to_instances(m, c));
    let p = plan(m, &pairs, current.as_deref()).unwrap();
    check_layout(m, &p.instances)
        .unwrap_or_else(|e| panic!("{}: plan invalid: {e}; {p:?}", m.name));
    let counts = counts_of(m, &p.instances);
    let total: u32 = d.iter().sum();
    let got_sat: u32 = (0..d.len()).map(|i| counts[i].min(d[i])).sum();
    assert_eq!(p.feasible, got_sat == total);
    let unplaced: u32 = p.unplaced.iter().map(|u| u.count).sum();
    assert_eq!(unplaced, total - got_sat);
    let mut score = satisfied_score(m, &counts, d);
    match &current {
        None => {
            assert!(p.destroy.is_empty());
            // Nothing beyond the demand is created.
            assert!(counts.iter().zip(d).all(|(c, d)| c <= d), "{p:?}");
        }
        Some(cur_inst) => {
            let cur_set: HashSet<&Instance> = cur_inst.iter().collect();
            let kept = p.instances.iter().filter(|i| cur_set.contains(i)).count();
            assert_eq!(kept + p.destroy.len(), cur_inst.len(), "{p:?}");
            for dd in &p.destroy {
                assert!(cur_set.contains(dd) && !p.instances.contains(dd));
            }
            score += W_K * kept as i64;
        }
    }
    let best = brute
        .iter()
        .map(|(c, k)| satisfied_score(m, c, d) + W_K * k)
        .max()
        .unwrap();
    assert_eq!(
        score, best,
        "{} demand {pairs:?} current {current:?}: {p:?}",
        m.name
    );
}

#[test]
fn planner_is_optimal_for_every_small_demand() {
    for m in MODELS {
        let brute = scored(m, &all_layouts(m), None);
        let n = m.profiles.len();
        // Every demand with 0..=2 of each profile, plus one of each at max + 1.
        let mut d = vec![0u32; n];
        loop {
            check_optimal(m, &brute, &d, None);
            let mut k = 0;
            while k < n && d[k] == 2 {
                d[k] = 0;
                k += 1;
            }
            if k == n {
                break;
            }
            d[k] += 1;
        }
        for i in 0..n {
            let mut d = vec![0u32; n];
            d[i] = u32::from(m.profiles[i].max_instances) + 1;
            check_optimal(m, &brute, &d, None);
            d.iter_mut().for_each(|x| *x = 7);
            check_optimal(m, &brute, &d, None);
        }
    }
}

#[test]
fn planner_with_current_is_optimal_for_sampled_layouts() {
    for m in MODELS {
        let layouts = all_layouts(m);
        let n = m.profiles.len();
        // A spread of current layouts against every demand of 0..=1 per profile.
        let step = (layouts.len() / 40).max(1);
        for cur in layouts.iter().step_by(step) {
            let brute = scored(m, &layouts, Some(cur));
            for bits in 0u32..(1 << n) {
                let d: Vec<u32> = (0..n).map(|i| (bits >> i) & 1).collect();
                check_optimal(m, &brute, &d, Some(cur));
            }
        }
    }
}

#[test]
fn planner_keeping_instances_is_optimal_among_layouts_that_keep_them() {
    for m in MODELS {
        let layouts = all_layouts(m);
        let n = m.profiles.len();
        let step = (layouts.len() / 15).max(1);
        for cur in layouts.iter().step_by(step).filter(|c| !c.is_empty()) {
            // Pin every other instance of the current layout.
            let pinned: Layout = cur.iter().copied().step_by(2).collect();
            let keep: Vec<u8> = pinned.iter().map(|&(_, s)| s).collect();
            let with_pinned: Vec<Layout> = layouts
                .iter()
                .filter(|l| pinned.iter().all(|x| l.contains(x)))
                .cloned()
                .collect();
            let brute = scored(m, &with_pinned, Some(cur));
            let current = to_instances(m, cur);
            for bits in 0u32..(1 << n) {
                let d: Vec<u32> = (0..n).map(|i| 2 * ((bits >> i) & 1)).collect();
                let p = plan_keeping(m, &demand_pairs(m, &d), Some(&current), &keep).unwrap();
                check_layout(m, &p.instances).unwrap();
                assert!(
                    p.destroy.iter().all(|i| !keep.contains(&i.start)),
                    "{} kept {keep:?} destroyed: {p:?}",
                    m.name
                );
                let kept = p.instances.iter().filter(|i| current.contains(i)).count();
                let score = satisfied_score(m, &counts_of(m, &p.instances), &d) + W_K * kept as i64;
                let best = brute
                    .iter()
                    .map(|(c, k)| satisfied_score(m, c, &d) + W_K * k)
                    .max()
                    .unwrap();
                assert_eq!(score, best, "{} {d:?} kept {keep:?}: {p:?}", m.name);
            }
        }
    }
}

fn model_strategy() -> impl Strategy<Value = &'static GpuModel> {
    (0..MODELS.len()).prop_map(|i| MODELS[i])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn planner_matches_brute_force(
        m in model_strategy(),
        raw in proptest::collection::vec(0u32..9, 8),
        pick in any::<prop::sample::Index>(),
        with_current in any::<bool>(),
    ) {
        let layouts = all_layouts(m);
        let d = &raw[..m.profiles.len()];
        let cur = with_current.then(|| pick.get(&layouts).clone());
        check_optimal(m, &scored(m, &layouts, cur.as_ref()), d, cur.as_ref());
    }

    #[test]
    fn validate_accepts_exactly_the_valid_layouts(
        m in model_strategy(),
        picks in proptest::collection::vec((0usize..8, 0usize..8, any::<bool>()), 0..6),
    ) {
        let cands = candidates(m);
        let reqs: Vec<Requested> = picks
            .iter()
            .map(|&(a, b, fixed)| {
                let (i, pl) = cands[(a * 8 + b) % cands.len()];
                Requested::new(m.profiles[i].name, fixed.then_some(pl.start))
            })
            .collect();
        let brute = all_layouts(m).into_iter().any(|l| {
            if l.len() != reqs.len() {
                return false;
            }
            // Some assignment of the layout's instances to the requests matches.
            let mut used = vec![false; l.len()];
            fn assign(reqs: &[Requested], k: usize, l: &Layout, used: &mut [bool], m: &GpuModel) -> bool {
                if k == reqs.len() {
                    return true;
                }
                for j in 0..l.len() {
                    let (i, s) = l[j];
                    if !used[j] && m.profiles[i].name == reqs[k].profile && reqs[k].start.is_none_or(|st| st == s) {
                        used[j] = true;
                        if assign(reqs, k + 1, l, used, m) {
                            return true;
                        }
                        used[j] = false;
                    }
                }
                false
            }
            assign(&reqs, 0, &l, &mut used, m)
        });
        let got = validate(m, &reqs);
        prop_assert_eq!(got.is_ok(), brute, "{:?} -> {:?}", reqs, got);
        if let Ok(l) = got {
            prop_assert!(check_layout(m, &l).is_ok());
        }
    }
}

// ---------------------------------------------------------------- planner behaviour

#[test]
fn planner_examples() {
    let h = &H100_80GB;
    let p = plan(h, &[("3g.40gb", 1), ("2g.20gb", 1), ("1g.10gb", 2)], None).unwrap();
    assert!(p.feasible);
    assert_eq!(p.instances.len(), 4);

    // Impossible demand: best partial keeps the most instances, then the most memory.
    let p = plan(h, &[("4g.40gb", 1), ("3g.40gb", 2)], None).unwrap();
    assert!(!p.feasible);
    assert_eq!(p.instances.len(), 2);
    // 4g+3g and 3g+3g tie (two instances, eight memory slices); either is optimal.
    assert_eq!(p.unplaced.iter().map(|u| u.count).sum::<u32>(), 1);

    let p = plan(h, &[("1g.10gb", 9)], None).unwrap();
    assert_eq!((p.instances.len(), p.unplaced[0].count), (7, 2));

    // Existing instances count toward the demand and are kept.
    let cur = ok(h, "3g.40gb@0,1g.10gb@4");
    let p = plan(h, &[("3g.40gb", 1), ("1g.10gb", 3)], Some(&cur)).unwrap();
    assert!(p.feasible && p.destroy.is_empty(), "{p:?}");
    assert_eq!(p.instances.len(), 4);

    // A 4g needs slices 0-3: the 3g there goes, the 1g elsewhere stays.
    let cur = ok(h, "3g.40gb@0,1g.10gb@6");
    let p = plan(h, &[("4g.40gb", 1)], Some(&cur)).unwrap();
    assert!(p.feasible);
    assert_eq!(
        p.destroy,
        [Instance {
            profile: "3g.40gb".into(),
            start: 0,
            size: 4
        }]
    );
    assert!(p.instances.contains(&Instance {
        profile: "1g.10gb".into(),
        start: 6,
        size: 1
    }));

    // Empty demand keeps everything.
    let cur = ok(h, "2g.20gb@0,2g.20gb@2");
    let p = plan(h, &[] as &[(&str, u32)], Some(&cur)).unwrap();
    assert!(p.feasible && p.destroy.is_empty() && p.instances == cur);

    // An invalid current layout is rejected.
    let bad = [
        Instance {
            profile: "3g.40gb".into(),
            start: 4,
            size: 4,
        },
        Instance {
            profile: "1g.10gb".into(),
            start: 5,
            size: 1,
        },
    ];
    assert!(matches!(
        plan(h, &[("1g.10gb", 1)], Some(&bad)),
        Err(MigError::Overlap { .. })
    ));
}

#[test]
fn plan_serialises_to_the_documented_shape() {
    let p = plan(&H100_80GB, &[("3g.40gb", 1), ("7g.80gb", 1)], None).unwrap();
    let v = serde_json::to_value(&p).unwrap();
    let want = serde_json::json!({
        "feasible": false,
        "instances": [{"profile": "7g.80gb", "start": 0, "size": 8}],
        "unplaced": [{"profile": "3g.40gb", "count": 1}],
        "destroy": []
    });
    assert_eq!(v, want);
}

/// Prints planner timings; run with `--release -- --ignored --nocapture`.
#[test]
#[ignore]
fn planner_speed() {
    for m in MODELS {
        let all: Vec<(String, u32)> = m.profiles.iter().map(|p| (p.name.to_string(), 7)).collect();
        let layouts = all_layouts(m);
        let full = to_instances(m, layouts.iter().max_by_key(|l| l.len()).unwrap());
        let t = std::time::Instant::now();
        let n = 1000;
        for _ in 0..n {
            std::hint::black_box(plan(m, &all, Some(&full)).unwrap());
        }
        let worst = t.elapsed() / n;
        let typical = [
            (m.profiles[0].name, 2),
            (m.profiles[m.profiles.len() - 2].name, 1),
        ];
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(plan(m, &typical, None).unwrap());
        }
        let typical = t.elapsed() / n;
        println!(
            "{}: {} layouts; worst demand {worst:?}; typical {typical:?}",
            m.name,
            layouts.len()
        );
    }
}

// ---------------------------------------------------------------- mig-parted

const PARTED: &str = r#"{
  "version": "v1",
  "mig-configs": {
    "all-disabled": [{"devices": "all", "mig-enabled": false}],
    "all-1g.10gb": [{"devices": "all", "mig-enabled": true, "mig-devices": {"1g.10gb": 7}}],
    "mixed": [
      {"devices": [0, 1], "device-filter": "0x233010DE", "mig-enabled": true,
       "mig-devices": {"3g.40gb": 1, "4g.40gb": 1}},
      {"devices": [0, 1], "device-filter": ["A100-SXM4-40GB", "A100-40GB"], "mig-enabled": true,
       "mig-devices": {"3g.20gb": 2}},
      {"devices": [2], "mig-enabled": false}
    ],
    "clash": [
      {"devices": "all", "mig-enabled": false},
      {"devices": [1], "mig-enabled": true, "mig-devices": {"7g.80gb": 1}}
    ]
  }
}"#;

#[test]
fn mig_parted_config_round_trips_and_resolves() {
    let cfg: MigPartedConfig = serde_json::from_str(PARTED).unwrap();
    assert_eq!(
        cfg.mig_configs["mixed"][0].devices,
        DeviceSelector::List(vec![0, 1])
    );
    assert_eq!(
        cfg.mig_configs["all-disabled"][0].devices,
        DeviceSelector::All
    );
    let back: MigPartedConfig =
        serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let v = serde_json::to_value(&cfg.mig_configs["all-disabled"][0]).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"devices": "all", "mig-enabled": false})
    );

    let devs = [
        (0, "NVIDIA H100 80GB HBM3"),
        (1, "NVIDIA A100-SXM4-40GB"),
        (2, "NVIDIA H100 80GB HBM3"),
        (3, "L40S"),
    ];
    let got = desired_state(&cfg, "mixed", &devs).unwrap();
    assert_eq!(got[0].mig_enabled, Some(true));
    assert_eq!(
        got[0].demand,
        [("3g.40gb".to_string(), 1), ("4g.40gb".to_string(), 1)]
    );
    assert_eq!(got[1].demand, [("3g.20gb".to_string(), 2)]);
    assert_eq!((got[2].mig_enabled, got[2].demand.len()), (Some(false), 0));
    assert_eq!(got[3].mig_enabled, None);
    // The demands plan.
    for g in &got[..2] {
        let m = model(devs[g.index as usize].1).unwrap();
        assert!(plan(m, &g.demand, None).unwrap().feasible);
    }

    let got = desired_state(&cfg, "all-1g.10gb", &devs[..1]).unwrap();
    assert_eq!(got[0].demand, [("1g.10gb".to_string(), 7)]);
    // A MIG config for a profile the model lacks names the accepted ones.
    let e = desired_state(&cfg, "all-1g.10gb", &[(4, "A30")]).unwrap_err();
    assert!(matches!(e, MigError::UnknownProfile { .. }), "{e}");
    let e = desired_state(&cfg, "all-1g.10gb", &devs[3..]).unwrap_err();
    assert!(matches!(e, MigError::UnknownModel { .. }), "{e}");
    // Disabling MIG needs no model knowledge.
    assert_eq!(
        desired_state(&cfg, "all-disabled", &devs[3..]).unwrap()[0].mig_enabled,
        Some(false)
    );

    let e = desired_state(&cfg, "clash", &devs).unwrap_err();
    assert!(
        e.to_string()
            .contains("device 1 is selected by entries 0 and 1"),
        "{e}"
    );
    let e = desired_state(&cfg, "nope", &devs).unwrap_err();
    assert!(
        e.to_string().contains("all-1g.10gb") && e.to_string().contains("mixed"),
        "{e}"
    );
}

#[test]
fn mig_parted_config_rejects_bad_shapes() {
    for bad in [
        r#"{"version":"v1","mig-configs":{"x":[{"devices":"some","mig-enabled":true}]}}"#,
        r#"{"version":"v1","mig-configs":{"x":[{"devices":[-1],"mig-enabled":true}]}}"#,
        r#"{"version":"v1","mig-configs":{"x":[{"devices":"all"}]}}"#,
    ] {
        assert!(
            serde_json::from_str::<MigPartedConfig>(bad).is_err(),
            "{bad}"
        );
    }
    let cfg: MigPartedConfig = serde_json::from_str(
        r#"{"version":"v2","mig-configs":{"x":[{"devices":"all","mig-enabled":false}]}}"#,
    )
    .unwrap();
    assert!(
        desired_state(&cfg, "x", &[(0, "A30")])
            .unwrap_err()
            .to_string()
            .contains("v1")
    );
    let cfg: MigPartedConfig = serde_json::from_str(
        r#"{"version":"v1","mig-configs":{"x":[{"devices":"all","mig-enabled":false,"mig-devices":{"1g.6gb":1}}]}}"#,
    )
    .unwrap();
    assert!(matches!(
        desired_state(&cfg, "x", &[(0, "A30")]),
        Err(MigError::Config { .. })
    ));
}

/// Every PCI device ID NVIDIA's mig-parted names in a `device-filter` of its
/// `deployments/systemd/config-default.yaml` (github.com/NVIDIA/mig-parted, commit 1400787),
/// with the profile table its group uses there, and the board name NVIDIA's
/// open-gpu-kernel-modules README ("Compatible GPUs") gives it. Groups that mix Ampere and
/// Hopper boards (`all-1g.10gb`, `all-balanced`) are split by that name. IDs for boards whose
/// geometry is not modelled (GH200, H20, H100-96GB, PG506, B200, GB200, RTX PRO 6000) are left
/// out on purpose: such a GPU is refused by name, never mistaken for another.
const UPSTREAM_PCI_IDS: &[(u32, &str, &str)] = &[
    (0x20B0_10DE, "A100-40GB", "NVIDIA A100-SXM4-40GB"),
    (0x20B1_10DE, "A100-40GB", "NVIDIA A100-PCIE-40GB"),
    (0x20F1_10DE, "A100-40GB", "NVIDIA A100-PCIE-40GB"),
    (0x20F6_10DE, "A100-40GB", "NVIDIA A800 40GB Active"),
    (0x20B2_10DE, "A100-80GB", "NVIDIA A100-SXM4-80GB"),
    (0x20B5_10DE, "A100-80GB", "NVIDIA A100 80GB PCIe"),
    (0x20F3_10DE, "A100-80GB", "NVIDIA A800-SXM4-80GB"),
    (0x20F5_10DE, "A100-80GB", "NVIDIA A800 80GB PCIe"),
    (0x20B7_10DE, "A30-24GB", "NVIDIA A30"),
    (0x2330_10DE, "H100-80GB", "NVIDIA H100 80GB HBM3"),
    (0x2331_10DE, "H100-80GB", "NVIDIA H100 PCIe"),
    (0x2322_10DE, "H100-80GB", "NVIDIA H800 PCIe"),
    (0x2324_10DE, "H100-80GB", "NVIDIA H800"),
    (0x2321_10DE, "H100-94GB", "NVIDIA H100 NVL"),
    (0x233A_10DE, "H100-94GB", "NVIDIA H800 NVL"),
    (0x2335_10DE, "H200-141GB", "NVIDIA H200"),
    (0x233B_10DE, "H200-141GB", "NVIDIA H200 NVL"),
];

#[test]
fn pci_ids_match_the_upstream_table_both_ways() {
    for &(id, want, board) in UPSTREAM_PCI_IDS {
        for spelling in [format!("0x{id:08X}"), format!("0x{id:08x}")] {
            assert_eq!(model(&spelling).unwrap().name, want, "{spelling} ({board})");
        }
        // The board's own name (what NVML reports) resolves to the same geometry.
        assert_eq!(model(board).unwrap().name, want, "{board}");
    }
    for m in MODELS {
        for id in m.pci_device_ids {
            assert!(
                UPSTREAM_PCI_IDS
                    .iter()
                    .any(|&(u, w, _)| u == *id && w == m.name),
                "{}: 0x{id:08X} is not in the upstream table",
                m.name
            );
        }
    }
}

/// mig-parted's `all-balanced` selects H200s by PCI ID only; with no IDs for the H200 the entry
/// selected nothing and `apply` reported "nothing to do" on an H200.
#[test]
fn device_filters_by_pci_id_select_h200_h800_and_a800() {
    // The same entries as JSON (core reads YAML only through its callers).
    let cfg: MigPartedConfig = serde_json::from_str(
        r#"{"version": "v1", "mig-configs": {"all-balanced": [
          {"device-filter": ["0x233510DE", "0x233B10DE"], "devices": "all", "mig-enabled": true,
           "mig-devices": {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}},
          {"device-filter": ["0x232110DE", "0x233A10DE"], "devices": "all", "mig-enabled": true,
           "mig-devices": {"1g.12gb": 2, "2g.24gb": 1, "3g.47gb": 1}},
          {"device-filter": ["0x233010DE", "0x233110DE", "0x232210DE", "0x20B210DE", "0x20B510DE",
                             "0x20F310DE", "0x20F510DE", "0x232410DE"],
           "devices": "all", "mig-enabled": true,
           "mig-devices": {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}},
          {"device-filter": ["0x20B010DE", "0x20B110DE", "0x20F110DE", "0x20F610DE"],
           "devices": "all", "mig-enabled": true,
           "mig-devices": {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}}
        ]}}"#,
    )
    .unwrap();
    for (board, first) in [
        ("NVIDIA H200", ("1g.18gb", 2)),
        ("NVIDIA H200 NVL", ("1g.18gb", 2)),
        ("NVIDIA H800 NVL", ("1g.12gb", 2)),
        ("NVIDIA H800", ("1g.10gb", 2)),
        ("NVIDIA A800-SXM4-80GB", ("1g.10gb", 2)),
        ("NVIDIA A800 40GB Active", ("1g.5gb", 2)),
    ] {
        let d = desired_state(&cfg, "all-balanced", &[(0, board)]).unwrap();
        assert_eq!(d[0].mig_enabled, Some(true), "{board}: not selected");
        assert_eq!(d[0].demand[0], (first.0.to_string(), first.1), "{board}");
    }
    // all-1g.35gb: the H200 table allows four 1g.35gb instances (two memory slices each).
    let p = H200_141GB.profile("1g.35gb").unwrap();
    assert_eq!(p.max_instances, 4);
}

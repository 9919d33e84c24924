//! The watchdog's decision: given what the driver says each process holds on each GPU, which
//! processes break their tenant's limits, and why.
//!
//! A user-space interposer governs only processes that load it and play by its ledger. The
//! watchdog runs outside the tenant (in the `gpuslice run` supervisor and the node agent) and
//! compares the driver's own per-process count (NVML) with each tenant's cap:
//!
//! * a process of a tenant on a GPU outside the tenant's allow-list is acted on
//!   ([`Reason::GpuNotAllowed`]);
//! * a process of a tenant that does not run under the interposer (no `libgpuslice.so` mapped,
//!   or no live slot in the tenant's ledger) is acted on ([`Reason::Unmanaged`]);
//! * a tenant whose processes together hold more than its cap on a GPU, by the driver's count,
//!   has processes acted on, largest first, until what is left is within the cap
//!   ([`Reason::OverCap`]). Unmanaged processes are already counted out by then.
//! * a process on a watched GPU that belongs to no tenant is reported as [`Reason::NoTenant`];
//!   the caller's policy decides what, if anything, to do about it (host tools are legitimate).
//!
//! Tolerance: the ledger charges every context a fixed amount, while a real context costs what
//! the driver decides (more on some GPUs and driver versions). So each process still counted
//! towards a tenant is allowed `slack_per_process` bytes beyond the cap's share, and a tenant is
//! over its cap on a GPU when `sum(used) > cap + slack_per_process × processes`.
//!
//! Pure: the caller reads NVML and `/proc`, and acts.

use std::collections::BTreeMap;
use std::fmt;

/// Bytes each counted process may hold beyond the cap by the driver's count before the tenant
/// is over its cap: the difference allowed between the ledger's fixed per-context charge
/// (256 MiB) and what a real context costs.
pub const DEFAULT_SLACK_PER_PROCESS: u64 = 128 << 20;

/// How often the watchdog looks, at most: a process escaping the cap is acted on within about
/// this period (plus the time to read NVML and `/proc`).
pub const PERIOD_MS: u64 = 200;

/// What the watchdog does about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// SIGKILL the process (the default for tenants' processes).
    Kill,
    /// Log and count it only.
    Report,
    /// Nothing (only for processes that belong to no tenant).
    Ignore,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Report => "report",
            Action::Ignore => "ignore",
        }
    }

    /// The action for a tenant's process: `kill` or `report`.
    pub fn parse_tenant(s: &str) -> Result<Action, String> {
        match s {
            "kill" => Ok(Action::Kill),
            "report" => Ok(Action::Report),
            _ => Err(format!(
                "'{s}' is not a watchdog action; accepted: kill, report"
            )),
        }
    }

    /// The action for a process of no tenant: `ignore`, `report` or `kill`.
    pub fn parse_no_tenant(s: &str) -> Result<Action, String> {
        match s {
            "kill" => Ok(Action::Kill),
            "report" => Ok(Action::Report),
            "ignore" => Ok(Action::Ignore),
            _ => Err(format!(
                "'{s}' is not a watchdog action for processes of no tenant; accepted: ignore, report, kill"
            )),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a process was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// On a GPU outside its tenant's allow-list.
    GpuNotAllowed,
    /// A tenant's process that does not run under the interposer.
    Unmanaged,
    /// Its tenant holds more than its cap on the GPU by the driver's count.
    OverCap,
    /// On a watched GPU, but of no tenant.
    NoTenant,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::GpuNotAllowed => "gpu-not-allowed",
            Reason::Unmanaged => "unmanaged",
            Reason::OverCap => "over-cap",
            Reason::NoTenant => "no-tenant",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's limits as the watchdog applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Bytes per GPU.
    pub cap: u64,
    /// GPU UUIDs the tenant may use; empty means every GPU.
    pub allowed: Vec<String>,
    /// See [`DEFAULT_SLACK_PER_PROCESS`].
    pub slack_per_process: u64,
}

impl Watched {
    fn allows(&self, gpu: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|a| a == gpu)
    }
}

/// One process on one GPU, as the driver reports it, with what the caller found out about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProcess {
    pub pid: u32,
    pub gpu: String,
    /// Bytes the driver says the process uses on the GPU.
    pub used: u64,
    /// Index into the tenants passed to [`decide`]; `None` for a process of no tenant.
    pub tenant: Option<usize>,
    /// Whether the process runs under the interposer and holds a live slot in its tenant's
    /// ledger.
    pub interposed: bool,
}

/// A process to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub pid: u32,
    pub gpu: String,
    pub tenant: Option<usize>,
    pub reason: Reason,
    /// What the process holds on the GPU.
    pub used: u64,
    /// What its tenant holds on the GPU, all its processes, before any action.
    pub tenant_used: u64,
    /// The tenant's cap (0 for a process of no tenant).
    pub cap: u64,
}

/// The processes to act on, in the order to act: per tenant and GPU, processes on a GPU not
/// allowed, then unmanaged ones, then the largest until the rest is within the cap. Processes
/// of no tenant come last. Entries for the same process and GPU are added up first.
pub fn decide(tenants: &[Watched], procs: &[GpuProcess]) -> Vec<Finding> {
    // (tenant, gpu) → pid → (used, interposed)
    type Group = BTreeMap<u32, (u64, bool)>;
    let mut groups: BTreeMap<(usize, &str), Group> = BTreeMap::new();
    let mut strangers: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    for p in procs {
        match p.tenant.filter(|&t| t < tenants.len()) {
            Some(t) => {
                let e = groups
                    .entry((t, p.gpu.as_str()))
                    .or_default()
                    .entry(p.pid)
                    .or_insert((0, true));
                e.0 = e.0.saturating_add(p.used);
                e.1 &= p.interposed;
            }
            None => {
                let e = strangers.entry((p.gpu.as_str(), p.pid)).or_default();
                *e = e.saturating_add(p.used);
            }
        }
    }
    let mut out = Vec::new();
    for ((t, gpu), group) in &groups {
        let w = &tenants[*t];
        let total: u64 = group.values().fold(0, |a, (u, _)| a.saturating_add(*u));
        let finding = |pid: u32, used: u64, reason: Reason| Finding {
            pid,
            gpu: gpu.to_string(),
            tenant: Some(*t),
            reason,
            used,
            tenant_used: total,
            cap: w.cap,
        };
        if !w.allows(gpu) {
            out.extend(
                group
                    .iter()
                    .map(|(&pid, &(used, _))| finding(pid, used, Reason::GpuNotAllowed)),
            );
            continue;
        }
        out.extend(
            group
                .iter()
                .filter(|(_, (_, interposed))| !interposed)
                .map(|(&pid, &(used, _))| finding(pid, used, Reason::Unmanaged)),
        );
        // Largest first; among equals the higher pid (usually the newer process) first.
        let mut rest: Vec<(u64, u32)> = group
            .iter()
            .filter(|(_, (_, interposed))| *interposed)
            .map(|(&pid, &(used, _))| (used, pid))
            .collect();
        rest.sort_unstable_by(|a, b| b.cmp(a));
        let mut sum: u64 = rest.iter().fold(0, |a, (u, _)| a.saturating_add(*u));
        let mut i = 0;
        while i < rest.len() && sum > allowance(w, rest.len() - i) {
            let (used, pid) = rest[i];
            out.push(finding(pid, used, Reason::OverCap));
            sum -= used;
            i += 1;
        }
    }
    out.extend(strangers.iter().map(|(&(gpu, pid), &used)| Finding {
        pid,
        gpu: gpu.to_string(),
        tenant: None,
        reason: Reason::NoTenant,
        used,
        tenant_used: used,
        cap: 0,
    }));
    out
}

/// What `n` processes of tenant `w` may hold together on one GPU by the driver's count.
pub fn allowance(w: &Watched, n: usize) -> u64 {
    w.cap
        .saturating_add(w.slack_per_process.saturating_mul(n as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn w(cap: u64) -> Watched {
        Watched {
            cap,
            allowed: vec![],
            slack_per_process: 0,
        }
    }

    fn p(pid: u32, gpu: &str, used: u64, tenant: Option<usize>, interposed: bool) -> GpuProcess {
        GpuProcess {
            pid,
            gpu: gpu.into(),
            used,
            tenant,
            interposed,
        }
    }

    #[test]
    fn unmanaged_first_then_largest() {
        let t = [w(1000 * MIB)];
        let procs = [
            p(10, "g", 300 * MIB, Some(0), true),
            p(11, "g", 600 * MIB, Some(0), true),
            p(12, "g", 200 * MIB, Some(0), false),
            p(13, "g", 100 * MIB, Some(0), true),
        ];
        let f = decide(&t, &procs);
        let got: Vec<(u32, Reason)> = f.iter().map(|f| (f.pid, f.reason)).collect();
        // 1200 MiB in all: the unmanaged one goes, and 1000 MiB is exactly the cap.
        assert_eq!(got, vec![(12, Reason::Unmanaged)]);
        let procs = [
            p(10, "g", 300 * MIB, Some(0), true),
            p(11, "g", 800 * MIB, Some(0), true),
            p(13, "g", 100 * MIB, Some(0), true),
        ];
        let f = decide(&t, &procs);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].pid, f[0].reason), (11, Reason::OverCap));
        assert_eq!(f[0].tenant_used, 1200 * MIB);
    }

    #[test]
    fn slack_is_per_counted_process() {
        let t = [Watched {
            slack_per_process: 100,
            ..w(1000)
        }];
        let two = [p(1, "g", 600, Some(0), true), p(2, "g", 600, Some(0), true)];
        assert!(decide(&t, &two).is_empty(), "1200 <= 1000 + 2 × 100");
        let two = [p(1, "g", 600, Some(0), true), p(2, "g", 601, Some(0), true)];
        let f = decide(&t, &two);
        assert_eq!(f.iter().map(|f| f.pid).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn not_allowed_gpu_and_strangers() {
        let t = [Watched {
            allowed: vec!["a".into()],
            ..w(1000)
        }];
        let procs = [
            p(1, "a", 10, Some(0), true),
            p(1, "b", 10, Some(0), true),
            p(7, "a", 5000, None, false),
        ];
        let f = decide(&t, &procs);
        let got: Vec<(u32, &str, Reason)> = f
            .iter()
            .map(|f| (f.pid, f.gpu.as_str(), f.reason))
            .collect();
        assert_eq!(
            got,
            vec![(1, "b", Reason::GpuNotAllowed), (7, "a", Reason::NoTenant)]
        );
    }

    #[test]
    fn parsing_names_the_accepted_values() {
        assert_eq!(Action::parse_tenant("kill"), Ok(Action::Kill));
        assert_eq!(Action::parse_tenant("report"), Ok(Action::Report));
        let e = Action::parse_tenant("ignore").unwrap_err();
        assert!(e.contains("kill, report"), "{e}");
        assert_eq!(Action::parse_no_tenant("ignore"), Ok(Action::Ignore));
        assert!(Action::parse_no_tenant("KILL").is_err());
    }

    fn procs_strategy() -> impl Strategy<Value = (Vec<Watched>, Vec<GpuProcess>)> {
        let tenants = prop::collection::vec(
            (
                1u64..4000,
                0u64..200,
                prop::collection::vec(0usize..3, 0..3),
            ),
            1..4,
        )
        .prop_map(|ts| {
            ts.into_iter()
                .map(|(cap, slack, allowed)| Watched {
                    cap,
                    slack_per_process: slack,
                    allowed: allowed.into_iter().map(|g| format!("g{g}")).collect(),
                })
                .collect::<Vec<_>>()
        });
        let procs = prop::collection::vec(
            (1u32..12, 0usize..3, 0u64..3000, prop::bool::weighted(0.8)),
            0..16,
        );
        (tenants, procs).prop_map(|(ts, ps)| {
            // A pid belongs to one tenant (or none), whatever GPUs it uses.
            let ps = ps
                .into_iter()
                .map(|(pid, g, used, i)| {
                    let tenant = Some(pid as usize % (ts.len() + 1)).filter(|&o| o < ts.len());
                    p(pid, &format!("g{g}"), used, tenant, i)
                })
                .collect();
            (ts, ps)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Tenants within their caps, interposed, on allowed GPUs: nothing to do.
        #[test]
        fn nothing_when_everyone_behaves((ts, ps) in procs_strategy()) {
            let ps: Vec<GpuProcess> = ps
                .into_iter()
                .filter(|p| p.tenant.is_some())
                .map(|p| GpuProcess { interposed: true, ..p })
                .filter(|p| ts[p.tenant.unwrap()].allows(&p.gpu))
                .collect();
            let mut sums: BTreeMap<(usize, String), (u64, BTreeMap<u32, ()>)> = BTreeMap::new();
            for p in &ps {
                let e = sums.entry((p.tenant.unwrap(), p.gpu.clone())).or_default();
                e.0 += p.used;
                e.1.insert(p.pid, ());
            }
            let within = sums
                .iter()
                .all(|((t, _), (s, pids))| *s <= allowance(&ts[*t], pids.len()));
            prop_assume!(within);
            prop_assert!(decide(&ts, &ps).is_empty());
        }

        /// Whatever the input, what is left after acting on every finding is interposed, on
        /// allowed GPUs and within each cap; each process and GPU is found at most once; and a
        /// process is found over the cap only while its tenant was over it.
        #[test]
        fn what_is_left_is_within_the_caps((ts, ps) in procs_strategy()) {
            let f = decide(&ts, &ps);
            let mut seen = std::collections::BTreeSet::new();
            for x in &f {
                prop_assert!(seen.insert((x.pid, x.gpu.clone())), "found twice: {x:?}");
            }
            let mut left: BTreeMap<(usize, String), BTreeMap<u32, (u64, bool)>> = BTreeMap::new();
            for p in ps.iter().filter(|p| p.tenant.is_some()) {
                if seen.contains(&(p.pid, p.gpu.clone())) {
                    continue;
                }
                let e = left
                    .entry((p.tenant.unwrap(), p.gpu.clone()))
                    .or_default()
                    .entry(p.pid)
                    .or_insert((0, true));
                e.0 += p.used;
                e.1 &= p.interposed;
            }
            for ((t, gpu), group) in &left {
                prop_assert!(ts[*t].allows(gpu));
                prop_assert!(group.values().all(|(_, i)| *i));
                let sum: u64 = group.values().map(|(u, _)| u).sum();
                prop_assert!(sum <= allowance(&ts[*t], group.len()), "{sum} over {:?}", ts[*t]);
            }
            // Every process of no tenant is reported, and none of a tenant is.
            for p in &ps {
                let reported = f
                    .iter()
                    .any(|x| x.pid == p.pid && x.gpu == p.gpu && x.reason == Reason::NoTenant);
                prop_assert_eq!(reported, p.tenant.is_none());
            }
            // Over-cap findings remove the largest first: none left is larger than one removed
            // from the same group.
            for x in f.iter().filter(|x| x.reason == Reason::OverCap) {
                if let Some(g) = left.get(&(x.tenant.unwrap(), x.gpu.clone())) {
                    prop_assert!(g.values().all(|(u, _)| *u <= x.used));
                }
            }
        }
    }
}

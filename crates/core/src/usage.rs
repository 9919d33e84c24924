//! Per-tenant GPU time and throttled time from the compute regions' per-process counters.
//!
//! Each process that launches on a GPU has an entry in that GPU's region, counting the GPU time
//! charged to it and the time the compute gate held it back. Entries belong to processes, not
//! tenants: a process that exits leaves its final counters in its entry until a new process
//! takes the entry, and taking it starts the counters at zero. Summing the entries at one
//! instant therefore goes backwards whenever a process is replaced. [`Usage`] instead follows
//! each entry's identity (GPU, entry, pid, tenant) from one reading to the next and adds only
//! the deltas, so a tenant's totals never decrease while they are kept.
//!
//! Bound: what a process accumulated after the last reading is lost only if the process dies
//! and another process takes its entry before the next reading. Readings come at least once a
//! sampling period, so at most that much of one process's time is lost per replacement.
//!
//! Pure: readings and the time they were taken are passed in.

use std::collections::{BTreeMap, BTreeSet};

/// One entry as read at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The GPU's UUID.
    pub gpu: String,
    pub entry: usize,
    pub pid: u32,
    /// The tenant the entry was taken for (also after its process died).
    pub tenant: u64,
    pub used_ns: u64,
    pub throttled_ns: u64,
}

/// GPU time and throttled time, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Times {
    pub used_ns: u64,
    pub throttled_ns: u64,
}

impl Times {
    fn add(&mut self, o: Times) {
        self.used_ns = self.used_ns.saturating_add(o.used_ns);
        self.throttled_ns = self.throttled_ns.saturating_add(o.throttled_ns);
    }
}

/// `(tenant, GPU UUID)`.
pub type Key = (u64, String);

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    pid: u32,
    tenant: u64,
    last: Times,
}

/// What the tenants did between two instants.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
    pub by: BTreeMap<Key, Times>,
}

impl Window {
    /// The fraction of the window's wall time that `key`'s work took on the GPU.
    pub fn share(&self, key: &Key) -> f64 {
        let len = self.end_ns.saturating_sub(self.start_ns);
        if len == 0 {
            return 0.0;
        }
        self.by.get(key).map_or(0, |t| t.used_ns) as f64 / len as f64
    }

    /// The fraction of the window's wall time the GPU was busy with anyone's work.
    pub fn busy(&self, gpu: &str) -> f64 {
        let len = self.end_ns.saturating_sub(self.start_ns);
        if len == 0 {
            return 0.0;
        }
        let used: u64 = self
            .by
            .iter()
            .filter(|(k, _)| k.1 == gpu)
            .map(|(_, t)| t.used_ns)
            .sum();
        used as f64 / len as f64
    }
}

/// Monotonic per-tenant totals and the last completed window of at least `window_ns`.
#[derive(Debug, Clone)]
pub struct Usage {
    window_ns: u64,
    seen: BTreeMap<(String, usize), Seen>,
    totals: BTreeMap<Key, Times>,
    open: Option<Window>,
    closed: Option<Window>,
}

impl Usage {
    /// `window_ns`: the shortest window a share is measured over (0: every reading closes one).
    pub fn new(window_ns: u64) -> Usage {
        Usage {
            window_ns,
            seen: BTreeMap::new(),
            totals: BTreeMap::new(),
            open: None,
            closed: None,
        }
    }

    /// Takes the readings of every region at `now_ns` (a monotonic clock).
    pub fn observe(&mut self, now_ns: u64, readings: impl IntoIterator<Item = Reading>) {
        // What the first reading finds was done before any window began.
        let first = self.open.is_none();
        let open = self.open.get_or_insert_with(|| Window {
            start_ns: now_ns,
            end_ns: now_ns,
            by: BTreeMap::new(),
        });
        for r in readings {
            let now = Times {
                used_ns: r.used_ns,
                throttled_ns: r.throttled_ns,
            };
            let slot = (r.gpu.clone(), r.entry);
            let delta = match self.seen.get(&slot) {
                // The same process: what it added since. Counters that went back were restarted
                // by a new attach whose identity is not published yet, so all they hold is new.
                Some(s) if s.pid == r.pid && s.tenant == r.tenant => Times {
                    used_ns: since(s.last.used_ns, now.used_ns),
                    throttled_ns: since(s.last.throttled_ns, now.throttled_ns),
                },
                // A process not seen before: its entry started at zero when it attached, so
                // everything it holds is its tenant's.
                _ => now,
            };
            self.seen.insert(
                slot,
                Seen {
                    pid: r.pid,
                    tenant: r.tenant,
                    last: now,
                },
            );
            if delta == Times::default() {
                continue;
            }
            let key = (r.tenant, r.gpu);
            self.totals.entry(key.clone()).or_default().add(delta);
            if !first {
                open.by.entry(key).or_default().add(delta);
            }
        }
        // Tenants seen but idle in this window show a share of zero, not none.
        for s in self.seen.iter() {
            open.by.entry((s.1.tenant, s.0.0.clone())).or_default();
        }
        open.end_ns = now_ns;
        if now_ns.saturating_sub(open.start_ns) >= self.window_ns.max(1) {
            self.closed = self.open.replace(Window {
                start_ns: now_ns,
                end_ns: now_ns,
                by: BTreeMap::new(),
            });
        }
    }

    /// Every tenant's totals since it was first read, per GPU.
    pub fn totals(&self) -> &BTreeMap<Key, Times> {
        &self.totals
    }

    /// The last completed window, if one has been.
    pub fn window(&self) -> Option<&Window> {
        self.closed.as_ref()
    }

    /// The tenant's share of the GPU over the last completed window; `None` before the first
    /// window has completed or for a tenant never read.
    pub fn share(&self, key: &Key) -> Option<f64> {
        let w = self.closed.as_ref()?;
        (w.by.contains_key(key) || self.totals.contains_key(key)).then(|| w.share(key))
    }

    /// Forgets the totals of tenants that are neither in `keep` nor own an entry still followed
    /// (an entry is followed until another process takes it).
    pub fn forget_except(&mut self, keep: &BTreeSet<u64>) {
        let owning: BTreeSet<u64> = self.seen.values().map(|s| s.tenant).collect();
        self.totals
            .retain(|(t, _), _| keep.contains(t) || owning.contains(t));
    }
}

fn since(last: u64, now: u64) -> u64 {
    if now >= last { now - last } else { now }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "GPU-0";
    const S: u64 = 1_000_000_000;

    fn r(entry: usize, pid: u32, tenant: u64, used_ns: u64, throttled_ns: u64) -> Reading {
        Reading {
            gpu: G.into(),
            entry,
            pid,
            tenant,
            used_ns,
            throttled_ns,
        }
    }

    fn total(u: &Usage, t: u64) -> Times {
        u.totals()
            .get(&(t, G.to_string()))
            .copied()
            .unwrap_or_default()
    }

    #[test]
    fn deltas_add_up_per_tenant_across_processes() {
        let mut u = Usage::new(S);
        u.observe(
            0,
            [r(0, 10, 1, 100, 5), r(1, 11, 1, 50, 0), r(2, 20, 2, 7, 9)],
        );
        assert_eq!(
            total(&u, 1),
            Times {
                used_ns: 150,
                throttled_ns: 5
            }
        );
        u.observe(
            S,
            [r(0, 10, 1, 160, 8), r(1, 11, 1, 50, 0), r(2, 20, 2, 9, 9)],
        );
        assert_eq!(
            total(&u, 1),
            Times {
                used_ns: 210,
                throttled_ns: 8
            }
        );
        assert_eq!(total(&u, 2).used_ns, 9);
    }

    #[test]
    fn a_replaced_process_never_takes_the_total_back() {
        let mut u = Usage::new(S);
        u.observe(0, [r(0, 10, 1, 1000, 400)]);
        // The process died with more counted; its entry keeps the final counters.
        u.observe(S, [r(0, 10, 1, 1500, 600)]);
        // A new process of the same tenant takes the entry: counters restart from zero.
        u.observe(2 * S, [r(0, 30, 1, 20, 10)]);
        assert_eq!(
            total(&u, 1),
            Times {
                used_ns: 1520,
                throttled_ns: 610
            }
        );
        // Another tenant takes it: tenant 1 keeps its total, tenant 2 starts at its counters.
        u.observe(3 * S, [r(0, 31, 2, 5, 1)]);
        assert_eq!(total(&u, 1).throttled_ns, 610);
        assert_eq!(total(&u, 2).throttled_ns, 1);
    }

    #[test]
    fn an_attach_seen_half_way_counts_nothing_twice() {
        let mut u = Usage::new(S);
        u.observe(0, [r(0, 10, 1, 1000, 400)]);
        // Attaching zeroes the counters before publishing the new pid: the old identity with
        // zeros is a restart with nothing in it yet.
        u.observe(S, [r(0, 10, 1, 0, 0)]);
        u.observe(2 * S, [r(0, 40, 1, 30, 3)]);
        assert_eq!(
            total(&u, 1),
            Times {
                used_ns: 1030,
                throttled_ns: 403
            }
        );
    }

    #[test]
    fn the_same_process_restarting_its_counters_keeps_what_it_counted() {
        // The same pid and tenant attaching again (pid reuse) restarts the counters.
        let mut u = Usage::new(S);
        u.observe(0, [r(0, 10, 1, 1000, 0)]);
        u.observe(S, [r(0, 10, 1, 300, 0)]);
        assert_eq!(total(&u, 1).used_ns, 1300);
    }

    #[test]
    fn share_is_gpu_time_over_the_last_completed_window() {
        let mut u = Usage::new(S);
        let k1 = (1, G.to_string());
        let k2 = (2, G.to_string());
        u.observe(0, [r(0, 10, 1, 5 * S, 0), r(1, 20, 2, 0, 0)]);
        assert_eq!(u.share(&k1), None, "no window yet");
        // Half a second later: the window is still open.
        u.observe(
            S / 2,
            [r(0, 10, 1, 5 * S + S / 10, 0), r(1, 20, 2, S / 5, 0)],
        );
        assert_eq!(u.share(&k1), None);
        u.observe(
            2 * S,
            [
                r(0, 10, 1, 5 * S + 6 * S / 10, 0),
                r(1, 20, 2, 14 * S / 10, 0),
            ],
        );
        let (a, b) = (u.share(&k1).unwrap(), u.share(&k2).unwrap());
        assert!((a - 0.3).abs() < 1e-9 && (b - 0.7).abs() < 1e-9, "{a} {b}");
        assert!((u.window().unwrap().busy(G) - 1.0).abs() < 1e-9);
        // An idle window: both at zero, not missing.
        u.observe(
            3 * S,
            [
                r(0, 10, 1, 5 * S + 6 * S / 10, 0),
                r(1, 20, 2, 14 * S / 10, 0),
            ],
        );
        assert_eq!(u.share(&k1), Some(0.0));
        assert_eq!(u.share(&(9, G.to_string())), None, "never read");
    }

    #[test]
    fn a_zero_window_closes_at_every_reading() {
        let mut u = Usage::new(0);
        u.observe(0, [r(0, 10, 1, 0, 0)]);
        u.observe(S / 10, [r(0, 10, 1, S / 20, S / 40)]);
        let w = u.window().unwrap();
        assert_eq!((w.start_ns, w.end_ns), (0, S / 10));
        assert!((w.share(&(1, G.to_string())) - 0.5).abs() < 1e-9);
        assert_eq!(w.by[&(1, G.to_string())].throttled_ns, S / 40);
    }

    #[test]
    fn tenants_are_forgotten_only_without_a_ledger_and_without_an_entry() {
        let mut u = Usage::new(S);
        u.observe(0, [r(0, 10, 1, 100, 10), r(1, 20, 2, 100, 10)]);
        // Both entries are taken by tenant 3's processes.
        u.observe(S, [r(0, 30, 3, 0, 0), r(1, 31, 3, 1, 0)]);
        u.forget_except(&BTreeSet::from([1]));
        assert_eq!(total(&u, 1).throttled_ns, 10, "kept: it has a ledger");
        assert!(!u.totals().contains_key(&(2, G.to_string())), "gone");
        assert!(u.totals().contains_key(&(3, G.to_string())), "owns entries");
    }

    #[test]
    fn gpus_are_kept_apart() {
        let mut u = Usage::new(S);
        let mut other = r(0, 10, 1, 70, 0);
        other.gpu = "GPU-1".into();
        u.observe(0, [r(0, 10, 1, 30, 0), other]);
        assert_eq!(total(&u, 1).used_ns, 30);
        assert_eq!(u.totals()[&(1, "GPU-1".to_string())].used_ns, 70);
    }

    proptest::proptest! {
        /// Whatever happens to the entries (processes counting, dying, being replaced, readings
        /// torn half-way through an attach), no tenant's totals ever go down; and when every
        /// process is read at its final counters, the totals are exact.
        #[test]
        fn totals_never_decrease_and_are_exact_when_nothing_is_missed(
            steps in proptest::collection::vec((0usize..3, 0u8..4, 1u64..4, 0u64..1000), 1..60)
        ) {
            let mut u = Usage::new(S);
            // (pid, tenant, used, throttled) per entry
            let mut live: Vec<Option<(u32, u64, u64, u64)>> = vec![None; 3];
            let mut exact: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            let mut pid = 100u32;
            let mut last: BTreeMap<Key, Times> = BTreeMap::new();
            for (n, (e, op, tenant, amount)) in steps.into_iter().enumerate() {
                match (op, live[e]) {
                    // A new process takes the entry (its predecessor was read at its end).
                    (0, _) | (_, None) => {
                        pid += 1;
                        live[e] = Some((pid, tenant, 0, 0));
                    }
                    (1, Some((p, t, used, thr))) => {
                        live[e] = Some((p, t, used + amount, thr + amount / 2));
                        let x = exact.entry(t).or_default();
                        x.0 += amount;
                        x.1 += amount / 2;
                    }
                    _ => {}
                }
                let readings: Vec<Reading> = live
                    .iter()
                    .enumerate()
                    .filter_map(|(i, l)| l.map(|(p, t, used, thr)| r(i, p, t, used, thr)))
                    .collect();
                u.observe(n as u64 * S / 3, readings);
                for (k, t) in u.totals() {
                    let before = last.get(k).copied().unwrap_or_default();
                    proptest::prop_assert!(t.used_ns >= before.used_ns);
                    proptest::prop_assert!(t.throttled_ns >= before.throttled_ns);
                }
                last = u.totals().clone();
            }
            for (t, (used, thr)) in exact {
                proptest::prop_assert_eq!(total(&u, t), Times { used_ns: used, throttled_ns: thr });
            }
        }
    }
}

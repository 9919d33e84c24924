//! Who gets the device next: pure decisions over a snapshot of the device's entries. No IO,
//! no clock (times are passed in), so every rule is unit-tested here.

/// Share modes and priorities as the ledger and region store them.
pub const MODE_BEST_EFFORT: u8 = 0;
pub const MODE_FIXED: u8 = 1;
pub const MODE_EQUAL: u8 = 2;
pub const PRIO_HIGH: u8 = 0;
pub const PRIO_NORMAL: u8 = 1;
pub const PRIO_LOW: u8 = 2;

pub fn mode_name(m: u8) -> &'static str {
    match m {
        MODE_BEST_EFFORT => "best-effort",
        MODE_FIXED => "fixed",
        MODE_EQUAL => "equal",
        _ => "?",
    }
}

pub fn priority_name(p: u8) -> &'static str {
    match p {
        PRIO_HIGH => "high",
        PRIO_NORMAL => "normal",
        PRIO_LOW => "low",
        _ => "?",
    }
}

/// One live process on the device, as the chooser sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub entry: usize,
    pub priority: u8,
    /// Virtual time: GPU time charged, scaled by 100 / weight.
    pub vt: u64,
    /// Has work waiting (or is the holder and still submitting).
    pub demand: bool,
    /// Fixed mode: may not run before this time (its credit is spent).
    pub eligible_at: u64,
}

/// The entry that should hold the device next, if anybody may: the highest priority with
/// demand, then the least virtual time, among those eligible now. Ties go to the lowest index.
pub fn choose(cands: &[Candidate], now: u64) -> Option<usize> {
    cands
        .iter()
        .filter(|c| c.demand && c.eligible_at <= now)
        .min_by_key(|c| (c.priority, c.vt, c.entry))
        .map(|c| c.entry)
}

/// Weight of one process in virtual time: the tenant's quota split among its live processes on
/// the device; in equal mode every tenant weighs the same.
pub fn weight(mode: u8, quota: u8, processes_of_tenant: u32) -> u64 {
    let q = if mode == MODE_EQUAL || quota == 0 {
        100
    } else {
        quota as u64
    };
    // In units of 1/1000 percent so that a split among processes keeps precision.
    (q * 1000 / processes_of_tenant.max(1) as u64).max(1)
}

/// Virtual time `charge_ns` of GPU time costs at `weight`.
pub fn vt_cost(charge_ns: u64, weight: u64) -> u64 {
    (charge_ns as u128 * 100_000 / weight as u128) as u64
}

/// Where a (re)activating entry's virtual time starts: not behind the least active one, so an
/// idle tenant cannot bank time and then monopolise the device.
pub fn catch_up(own_vt: u64, min_active_vt: Option<u64>) -> u64 {
    match min_active_vt {
        Some(m) => own_vt.max(m),
        None => own_vt,
    }
}

/// Fixed mode's token bucket: credit (ns of GPU time, may go negative) refilled at `quota`
/// percent of wall time, capped at `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    pub credit: i64,
    pub at: u64,
}

impl Credit {
    pub fn refill(&mut self, now: u64, quota: u8, burst: i64) {
        let dt = now.saturating_sub(self.at);
        self.at = now.max(self.at);
        let add = (dt as u128 * quota as u128 / 100) as i64;
        self.credit = self.credit.saturating_add(add).min(burst);
    }

    pub fn charge(&mut self, ns: u64) {
        self.credit = self.credit.saturating_sub(ns as i64);
    }

    /// When the credit is back to zero.
    pub fn eligible_at(&self, quota: u8) -> u64 {
        if self.credit >= 0 {
            self.at
        } else {
            self.at + ((-self.credit) as u128 * 100 / quota.max(1) as u128) as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(entry: usize, priority: u8, vt: u64, demand: bool) -> Candidate {
        Candidate {
            entry,
            priority,
            vt,
            demand,
            eligible_at: 0,
        }
    }

    #[test]
    fn priority_first_then_least_virtual_time() {
        let cs = [
            c(0, PRIO_NORMAL, 5, true),
            c(1, PRIO_NORMAL, 3, true),
            c(2, PRIO_LOW, 0, true),
        ];
        assert_eq!(choose(&cs, 10), Some(1));
        let cs = [c(0, PRIO_NORMAL, 5, true), c(1, PRIO_HIGH, 99, true)];
        assert_eq!(choose(&cs, 10), Some(1));
        let cs = [c(0, PRIO_NORMAL, 5, false), c(1, PRIO_HIGH, 99, false)];
        assert_eq!(choose(&cs, 10), None, "nobody without work gets the device");
    }

    #[test]
    fn ineligible_fixed_tenants_wait() {
        let mut a = c(0, PRIO_NORMAL, 0, true);
        a.eligible_at = 50;
        let b = c(1, PRIO_NORMAL, 9, true);
        assert_eq!(choose(&[a, b], 10), Some(1));
        assert_eq!(choose(&[a], 10), None, "fixed: idle rather than over quota");
        assert_eq!(choose(&[a], 50), Some(0));
    }

    #[test]
    fn shares_converge_to_quotas_under_the_chooser() {
        // Saturating tenants, slices of varying length: achieved time follows the weights.
        for quotas in [vec![30u8, 70], vec![10, 90], vec![10, 20, 30, 40]] {
            let w: Vec<u64> = quotas
                .iter()
                .map(|&q| weight(MODE_BEST_EFFORT, q, 1))
                .collect();
            let mut vt = vec![0u64; quotas.len()];
            let mut used = vec![0u64; quotas.len()];
            let lens = [50_000u64, 5_000_000, 200_000, 1_000_000, 2_000_000];
            for i in 0..20_000 {
                let cands: Vec<_> = (0..quotas.len())
                    .map(|e| c(e, PRIO_NORMAL, vt[e], true))
                    .collect();
                let e = choose(&cands, 0).unwrap();
                let slice = 20_000_000 + lens[i % lens.len()];
                used[e] += slice;
                vt[e] += vt_cost(slice, w[e]);
            }
            let total: u64 = used.iter().sum();
            for (e, &q) in quotas.iter().enumerate() {
                let share = used[e] as f64 * 100.0 / total as f64;
                assert!(
                    (share - q as f64).abs() < 1.0,
                    "{quotas:?}: {e} got {share}"
                );
            }
        }
    }

    #[test]
    fn equal_mode_ignores_quotas_and_processes_split_their_tenant() {
        assert_eq!(weight(MODE_EQUAL, 10, 1), weight(MODE_EQUAL, 90, 1));
        assert_eq!(
            weight(MODE_BEST_EFFORT, 60, 2),
            weight(MODE_BEST_EFFORT, 30, 1)
        );
        assert_eq!(catch_up(5, Some(100)), 100);
        assert_eq!(catch_up(500, Some(100)), 500);
    }

    #[test]
    fn credit_refills_at_the_quota_and_caps_at_the_burst() {
        let mut k = Credit { credit: 0, at: 0 };
        k.refill(1_000, 30, 1_000_000);
        assert_eq!(k.credit, 300);
        k.charge(900);
        assert_eq!(k.credit, -600);
        assert_eq!(k.eligible_at(30), 1_000 + 2_000);
        k.refill(10_000_000_000, 30, 1_000_000);
        assert_eq!(k.credit, 1_000_000);
    }
}

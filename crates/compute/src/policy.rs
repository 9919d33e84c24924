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

/// A tenant's weight in virtual time: its quota (a full share without one); in equal mode every
/// tenant weighs the same. In units of 1/1000 percent.
pub fn weight(mode: u8, quota: u8) -> u64 {
    let q = if mode == MODE_EQUAL || quota == 0 {
        100
    } else {
        quota as u64
    };
    q * 1000
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
        let q = quota.max(1) as u128;
        let add = (dt as u128 * q / 100) as i64;
        // Advance only by the time the whole nanoseconds of credit took, so that frequent
        // refills lose nothing to rounding.
        self.at += (add as u128 * 100 / q) as u64;
        self.credit = self.credit.saturating_add(add);
        if self.credit >= burst {
            self.credit = burst;
            self.at = now.max(self.at);
        }
    }

    pub fn charge(&mut self, ns: u64) {
        self.credit = self.credit.saturating_sub(ns as i64);
    }

    /// When the credit is back to zero.
    pub fn eligible_at(&self, quota: u8) -> u64 {
        if self.credit >= 0 {
            self.at
        } else {
            let q = quota.max(1) as u128;
            self.at + ((-self.credit) as u128 * 100).div_ceil(q) as u64
        }
    }
}

/// A turn lasts this long when others want the GPU.
pub const SLICE_NS: u64 = 20_000_000;
/// A revoked holder that has not released after this long is taken as released (stopped,
/// hung), charged for the time. The next holder does not wait for it (it is granted at the
/// revoke); this only bounds how long a drain is charged and keeps the drainer from a new turn.
/// Long, so that a long kernel's drain is charged in full.
pub const REVOKE_GRACE_NS: u64 = 1_000_000_000;
/// A tenant idle for longer than this comes back at the least active virtual time.
pub const IDLE_RESET_NS: u64 = 3 * SLICE_NS;
/// Fixed mode: credit a tenant may bank while idle.
pub const FIXED_BURST_NS: i64 = 4_000_000;
/// Launches a holder may keep in flight while others want the GPU; 1 while a tenant of higher
/// priority is present, so that it waits for at most one of ours.
pub const INFLIGHT: u32 = 2;

/// One tenant on one GPU, as the arbiter's scheduler sees it.
#[derive(Debug, Clone)]
pub struct TenantState {
    pub id: u64,
    pub quota: u8,
    pub mode: u8,
    pub priority: u8,
    pub weight: u64,
    pub vt: u64,
    /// Some process of the tenant has work (or is blocked wanting to launch).
    pub want: bool,
    pub credit: Credit,
    /// GPU time charged (wall time holding the GPU while busy), ns.
    pub charged_ns: u64,
    /// Time spent wanting the GPU while another tenant had it, ns.
    pub throttled_ns: u64,
    wait_since: Option<u64>,
    /// When it last stopped wanting the GPU.
    idle_since: u64,
    /// While holding or draining: when its current busy stretch began.
    busy_since: Option<u64>,
}

/// What a tenant's processes are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Wait,
    Granted { bound: u32 },
    Revoked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    tenant: u64,
    slice_end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Drain {
    tenant: u64,
    since: u64,
}

/// The turn-taking of one GPU: who holds it, who is draining after a revoke, and every
/// tenant's virtual time and credit. Pure: the arbiter feeds it events and the clock, and reads
/// back what each tenant's processes should be told.
#[derive(Debug, Clone, Default)]
pub struct Sched {
    pub tenants: Vec<TenantState>,
    holder: Option<Holder>,
    draining: Vec<Drain>,
    last_refill: u64,
    /// Tenants whose drain outlasted the grace since the host last asked, and when: the
    /// host charges the rest once the drain really ends ([`Sched::charge_late`]).
    overdue: Vec<(u64, u64)>,
}

impl Sched {
    pub fn add(&mut self, id: u64, quota: u8, mode: u8, priority: u8, now: u64) {
        if self.tenants.iter().any(|t| t.id == id) {
            return;
        }
        let vt = self.min_active_vt(None).unwrap_or(0);
        self.tenants.push(TenantState {
            id,
            quota,
            mode,
            priority,
            weight: weight(mode, quota),
            vt,
            want: false,
            credit: Credit { credit: 0, at: now },
            charged_ns: 0,
            throttled_ns: 0,
            wait_since: None,
            idle_since: 0,
            busy_since: None,
        });
    }

    pub fn remove(&mut self, id: u64, now: u64) {
        self.stop_busy(id, now);
        if self.holder.is_some_and(|h| h.tenant == id) {
            self.holder = None;
        }
        self.draining.retain(|d| d.tenant != id);
        self.tenants.retain(|t| t.id != id);
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    pub fn mode(&self) -> Option<u8> {
        self.tenants.first().map(|t| t.mode)
    }

    fn t(&mut self, id: u64) -> Option<&mut TenantState> {
        self.tenants.iter_mut().find(|t| t.id == id)
    }

    pub fn tenant(&self, id: u64) -> Option<&TenantState> {
        self.tenants.iter().find(|t| t.id == id)
    }

    pub fn holder(&self) -> Option<u64> {
        self.holder.map(|h| h.tenant)
    }

    fn min_active_vt(&self, except: Option<u64>) -> Option<u64> {
        let h = self.holder();
        self.tenants
            .iter()
            .filter(|t| Some(t.id) != except && (t.want || Some(t.id) == h))
            .map(|t| t.vt)
            .min()
    }

    fn charge(&mut self, id: u64, ns: u64) {
        if let Some(t) = self.t(id) {
            t.charged_ns += ns;
            t.vt += vt_cost(ns, t.weight);
            t.credit.charge(ns);
        }
    }

    fn stop_busy(&mut self, id: u64, now: u64) {
        let Some(t) = self.t(id) else { return };
        if let Some(s) = t.busy_since.take() {
            self.charge(id, now.saturating_sub(s));
        }
    }

    fn holds_or_drains(&self, id: u64) -> bool {
        self.holder() == Some(id) || self.draining.iter().any(|d| d.tenant == id)
    }

    /// Some process of tenant `id` has work (`true`) or all of them are idle (`false`).
    pub fn set_want(&mut self, id: u64, want: bool, now: u64) {
        let holding = self.holds_or_drains(id);
        let min = self.min_active_vt(Some(id));
        let Some(t) = self.t(id) else { return };
        if t.want == want {
            return;
        }
        t.want = want;
        if want {
            if holding {
                if t.busy_since.is_none() {
                    t.busy_since = Some(now);
                }
            } else {
                // Coming back from idle: no banked time. A pause shorter than a few slices
                // (a process between two bursts) is not idleness and keeps what it is owed.
                if now.saturating_sub(t.idle_since) > IDLE_RESET_NS {
                    t.vt = catch_up(t.vt, min);
                }
                t.wait_since = Some(now);
            }
        } else {
            t.idle_since = now;
            if let Some(w) = t.wait_since.take() {
                t.throttled_ns += now.saturating_sub(w);
            }
            if holding {
                self.stop_busy(id, now);
            }
        }
    }

    /// Every process of draining tenant `id` has released its work.
    pub fn released(&mut self, id: u64, now: u64) {
        if let Some(i) = self.draining.iter().position(|d| d.tenant == id) {
            let since = self.draining.remove(i).since;
            self.stop_busy(id, now);
            // The holder granted during this drain was waiting behind it until now.
            if let Some(h) = self.holder
                && let Some(t) = self.t(h.tenant)
                && let Some(b) = t.busy_since
                && b >= since
            {
                t.busy_since = Some(now);
            }
        }
    }

    /// Drains that outlasted the grace since the last call: `(tenant, when the grace ended)`.
    pub fn take_overdue(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.overdue)
    }

    /// Charges `ns` more to tenant `id`: the part of an overdue drain that ran past the grace
    /// (a long queue of long kernels), found when the tenant finally reports it drained.
    pub fn charge_late(&mut self, id: u64, ns: u64) {
        self.charge(id, ns);
    }

    fn eligible(t: &TenantState, now: u64) -> bool {
        t.mode != MODE_FIXED || t.credit.eligible_at(t.quota) <= now
    }

    /// The tenant that should hold the GPU next among those that want it, may run now, are
    /// not draining, and (if `above` is given) outrank that priority.
    fn pick(&self, now: u64, above: Option<u8>) -> Option<u64> {
        self.tenants
            .iter()
            .filter(|t| t.want && Self::eligible(t, now))
            .filter(|t| !self.draining.iter().any(|d| d.tenant == t.id))
            .filter(|t| above.is_none_or(|p| t.priority < p))
            .min_by_key(|t| (t.priority, t.vt, t.id))
            .map(|t| t.id)
    }

    fn grant(&mut self, id: u64, now: u64) {
        self.holder = Some(Holder {
            tenant: id,
            slice_end: now + SLICE_NS,
        });
        if let Some(t) = self.t(id) {
            if let Some(w) = t.wait_since.take() {
                t.throttled_ns += now.saturating_sub(w);
            }
            if t.want && t.busy_since.is_none() {
                t.busy_since = Some(now);
            }
        }
    }

    fn revoke(&mut self, now: u64) {
        if let Some(h) = self.holder.take() {
            self.draining.push(Drain {
                tenant: h.tenant,
                since: now,
            });
            // Still wanting the GPU, it now waits for its next turn: that is throttled time.
            if let Some(t) = self.t(h.tenant)
                && t.want
                && t.wait_since.is_none()
            {
                t.wait_since = Some(now);
            }
        }
    }

    fn refill(&mut self, now: u64) {
        for t in &mut self.tenants {
            if t.mode == MODE_FIXED {
                // Only an idle tenant's credit is capped: time it waited behind others, or is
                // using now (charged later), is still its own.
                let cap = if t.want { i64::MAX } else { FIXED_BURST_NS };
                t.credit.refill(now, t.quota, cap);
            }
        }
        self.last_refill = now;
    }

    /// Whether holder `h` is ahead of `n` by more than two of its own slices (its virtual time
    /// including the stretch it is using now): it was granted the GPU while `n` had no work,
    /// more than its share. A holder picked in turn is never that far ahead during its slice.
    fn lent_out(&self, h: u64, n: u64, now: u64) -> bool {
        let (Some(ht), Some(nt)) = (self.tenant(h), self.tenant(n)) else {
            return false;
        };
        let busy = ht.busy_since.map_or(0, |s| now.saturating_sub(s));
        let hv = ht.vt + vt_cost(busy, ht.weight);
        hv > nt.vt + vt_cost(2 * SLICE_NS, ht.weight)
    }

    /// Makes every decision due at `now`.
    pub fn step(&mut self, now: u64) {
        self.refill(now);
        // A drain that does not finish in time ends anyway, charged to its tenant.
        let overdue: Vec<u64> = self
            .draining
            .iter()
            .filter(|d| now >= d.since + REVOKE_GRACE_NS)
            .map(|d| d.tenant)
            .collect();
        for id in overdue {
            self.released(id, now);
            self.overdue.push((id, now));
        }
        for _ in 0..4 {
            match self.holder {
                None => {
                    // The next holder starts while the last one drains: its first work queues
                    // behind the few launches still in flight, so the GPU does not idle at the
                    // hand-over, and its charge starts only once that drain ends.
                    if let Some(next) = self.pick(now, None) {
                        self.grant(next, now);
                    }
                    return;
                }
                Some(h) => {
                    let (want, prio, fixed_over) = {
                        let t = self.tenant(h.tenant).expect("holder is a tenant");
                        let busy = t.busy_since.map_or(0, |s| now.saturating_sub(s)) as i64;
                        (
                            t.want,
                            t.priority,
                            t.mode == MODE_FIXED && t.credit.credit - busy < 0,
                        )
                    };
                    if !want {
                        // An idle holder keeps the GPU until someone else wants it.
                        if self.pick(now, None).is_some_and(|n| n != h.tenant) {
                            self.holder = None;
                            continue;
                        }
                        return;
                    }
                    if self.pick(now, Some(prio)).is_some() {
                        // Preemption: the higher priority starts at once.
                        self.revoke(now);
                        continue;
                    }
                    if let Some(n) = self.pick(now, None)
                        && n != h.tenant
                        && self.lent_out(h.tenant, n, now)
                    {
                        // The GPU was lent while `n` was idle: `n` takes it back at once.
                        self.revoke(now);
                        continue;
                    }
                    if now >= h.slice_end && !self.draining.is_empty() {
                        // Still queued behind the last holder's drain: its turn has not really
                        // started, and that time is not its own.
                        self.holder = Some(Holder {
                            slice_end: now + SLICE_NS,
                            ..h
                        });
                        return;
                    }
                    if now >= h.slice_end {
                        // Charge the turn so far, so the choice sees the time just used.
                        self.stop_busy(h.tenant, now);
                        if let Some(t) = self.t(h.tenant) {
                            t.busy_since = Some(now);
                        }
                        let fixed_over = fixed_over
                            || self
                                .tenant(h.tenant)
                                .is_some_and(|t| t.mode == MODE_FIXED && t.credit.credit < 0);
                        let others = self
                            .tenants
                            .iter()
                            .any(|t| t.id != h.tenant && t.want && Self::eligible(t, now));
                        if fixed_over || (others && self.pick(now, None) != Some(h.tenant)) {
                            self.revoke(now);
                            continue;
                        }
                        self.holder = Some(Holder {
                            slice_end: now + SLICE_NS,
                            ..h
                        });
                    }
                    return;
                }
            }
        }
    }

    /// When `step` must run next at the latest, if anything is pending.
    pub fn deadline(&self) -> Option<u64> {
        let mut d: Option<u64> = None;
        let mut at = |x: u64| d = Some(d.map_or(x, |y| y.min(x)));
        if let Some(h) = self.holder
            && self.tenant(h.tenant).is_some_and(|t| t.want)
        {
            at(h.slice_end);
        }
        for dr in &self.draining {
            at(dr.since + REVOKE_GRACE_NS);
        }
        for t in &self.tenants {
            if t.want && t.mode == MODE_FIXED {
                let e = t.credit.eligible_at(t.quota);
                if e > self.last_refill {
                    at(e);
                }
            }
        }
        d
    }

    /// What tenant `id`'s processes should be told now.
    pub fn view(&self, id: u64) -> View {
        if self.draining.iter().any(|d| d.tenant == id) {
            return View::Revoked;
        }
        let Some(h) = self.holder.filter(|h| h.tenant == id) else {
            return View::Wait;
        };
        let me = self.tenant(h.tenant).expect("holder is a tenant");
        let higher = self.tenants.iter().any(|t| t.priority < me.priority);
        let others = self.tenants.iter().any(|t| t.id != id && t.want);
        let bound = if higher {
            1
        } else if others {
            INFLIGHT
        } else {
            0
        };
        View::Granted { bound }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_mode_ignores_quotas_and_no_quota_is_a_full_share() {
        assert_eq!(weight(MODE_EQUAL, 10), weight(MODE_EQUAL, 90));
        assert_eq!(weight(MODE_BEST_EFFORT, 0), weight(MODE_BEST_EFFORT, 100));
        assert_eq!(
            3 * weight(MODE_BEST_EFFORT, 10),
            weight(MODE_BEST_EFFORT, 30)
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

    /// Drives a scheduler with saturating tenants whose turns end when revoked, each drain
    /// taking `drain_ns` (the kernel in flight), for `total_ns`; returns each tenant's GPU time.
    fn drive(s: &mut Sched, ids: &[u64], drain_ns: u64, total_ns: u64) -> Vec<u64> {
        let mut now = 1;
        for &i in ids {
            s.set_want(i, true, now);
        }
        let mut used = vec![0u64; ids.len()];
        let mut granted_at = std::collections::HashMap::new();
        // The GPU is serial: work granted during a drain starts when the drain ends.
        let mut free_at = 0u64;
        while now < total_ns {
            s.step(now);
            let mut drained = None;
            for (k, &i) in ids.iter().enumerate() {
                if let View::Revoked = s.view(i)
                    && let Some(g) = granted_at.remove(&i)
                {
                    // It drains its last kernel, then releases.
                    let start: u64 = g;
                    used[k] += now + drain_ns - start.max(free_at);
                    free_at = now + drain_ns;
                    drained = Some(i);
                }
            }
            for &i in ids {
                if let View::Granted { .. } = s.view(i) {
                    granted_at.entry(i).or_insert(now.max(free_at));
                }
            }
            if let Some(i) = drained {
                now += drain_ns;
                s.released(i, now);
            }
            now = s.deadline().unwrap_or(now + 1_000_000).max(now + 1);
        }
        used
    }

    #[test]
    fn turns_follow_quotas_whatever_the_kernel_length() {
        for drain in [0u64, 1_000_000, 200_000_000] {
            let mut s = Sched::default();
            s.add(1, 30, MODE_BEST_EFFORT, PRIO_NORMAL, 0);
            s.add(2, 70, MODE_BEST_EFFORT, PRIO_NORMAL, 0);
            let u = drive(&mut s, &[1, 2], drain, 60_000_000_000);
            let share = u[0] as f64 * 100.0 / (u[0] + u[1]) as f64;
            assert!((share - 30.0).abs() < 2.0, "drain {drain}: {share}");
            // Both always want the GPU: each waits while the other holds it, the 30 % tenant
            // about 70 % of the time.
            let waited: Vec<f64> = [1, 2]
                .iter()
                .map(|&i| s.tenant(i).unwrap().throttled_ns as f64 / 60e9)
                .collect();
            assert!(
                (0.6..0.8).contains(&waited[0]) && (0.2..0.4).contains(&waited[1]),
                "drain {drain}: throttled {waited:?}"
            );
        }
    }

    #[test]
    fn an_idle_holder_hands_over_and_a_returning_tenant_banks_nothing() {
        let mut s = Sched::default();
        s.add(1, 50, MODE_BEST_EFFORT, PRIO_NORMAL, 0);
        s.add(2, 50, MODE_BEST_EFFORT, PRIO_NORMAL, 0);
        s.set_want(1, true, 10);
        s.step(10);
        assert_eq!(s.view(1), View::Granted { bound: 0 }, "alone: unbounded");
        s.set_want(2, true, 20);
        s.step(20);
        assert_eq!(s.view(1), View::Granted { bound: INFLIGHT });
        s.set_want(1, false, 30);
        s.step(30);
        assert_eq!(
            s.view(2),
            View::Granted { bound: 0 },
            "idle holder hands over at once"
        );
        assert_eq!(s.view(1), View::Wait);
        assert_eq!(s.tenant(1).unwrap().charged_ns, 20);
        // Tenant 2 runs alone for a long time; tenant 1 comes back at its virtual time.
        s.step(10_000_000_000);
        s.set_want(2, false, 10_000_000_000);
        s.set_want(2, true, 10_000_000_001);
        s.set_want(1, true, 10_000_000_002);
        assert!(s.tenant(1).unwrap().vt >= s.tenant(2).unwrap().vt);
    }

    #[test]
    fn a_tenant_back_from_a_short_pause_takes_its_lent_time_back_at_once() {
        for (back_ms, revoked) in [(15u64, false), (50, true)] {
            let mut s = Sched::default();
            s.add(1, 30, MODE_BEST_EFFORT, PRIO_NORMAL, 0);
            s.add(2, 70, MODE_BEST_EFFORT, PRIO_NORMAL, 0);
            s.set_want(1, true, 0);
            s.step(0);
            // Tenant 1 runs alone; tenant 2 comes back (a pause shorter than the idle reset,
            // so it keeps what it is owed).
            let back = back_ms * 1_000_000;
            s.step(back / 2);
            s.set_want(2, true, back);
            s.step(back);
            if revoked {
                assert_eq!(s.view(1), View::Revoked, "back after {back_ms} ms");
                assert_eq!(s.view(2), View::Granted { bound: INFLIGHT });
            } else {
                assert_eq!(
                    s.view(1),
                    View::Granted { bound: INFLIGHT },
                    "back after {back_ms} ms: within two of its slices, the holder keeps its turn"
                );
            }
        }
    }

    #[test]
    fn higher_priority_preempts_at_once_and_a_stalled_drain_ends_after_the_grace() {
        let mut s = Sched::default();
        s.add(1, 100, MODE_BEST_EFFORT, PRIO_LOW, 0);
        s.add(2, 100, MODE_BEST_EFFORT, PRIO_HIGH, 0);
        s.set_want(1, true, 0);
        s.step(0);
        assert_eq!(
            s.view(1),
            View::Granted { bound: 1 },
            "a higher priority is present"
        );
        s.set_want(2, true, 100);
        s.step(100);
        assert_eq!(s.view(1), View::Revoked);
        assert_eq!(s.view(2), View::Granted { bound: INFLIGHT });
        // The low tenant never releases (stopped): it is charged up to the grace and no more.
        s.set_want(2, false, 200);
        s.step(200);
        assert_eq!(s.view(1), View::Revoked, "cannot be granted while draining");
        s.step(100 + REVOKE_GRACE_NS);
        assert_eq!(s.view(1), View::Granted { bound: 1 });
        assert_eq!(s.tenant(1).unwrap().charged_ns, 100 + REVOKE_GRACE_NS);
        // The host learns of the overdue drain once, and charges what ran past the grace when
        // the drain really ends (a queue of long kernels, not a stopped process).
        assert_eq!(s.take_overdue(), vec![(1, 100 + REVOKE_GRACE_NS)]);
        assert!(s.take_overdue().is_empty());
        s.charge_late(1, 600_000_000);
        assert_eq!(
            s.tenant(1).unwrap().charged_ns,
            100 + REVOKE_GRACE_NS + 600_000_000
        );
    }

    #[test]
    fn a_stalled_holder_loses_its_turn_at_its_slice_end() {
        let mut s = Sched::default();
        s.add(1, 50, MODE_BEST_EFFORT, PRIO_NORMAL, 0);
        s.add(2, 50, MODE_BEST_EFFORT, PRIO_NORMAL, 0);
        s.set_want(1, true, 0);
        s.set_want(2, true, 0);
        s.step(0);
        let first = s.holder().unwrap();
        let mut now = 0;
        while s.holder() == Some(first) || s.holder().is_none() {
            now = s.deadline().unwrap();
            s.step(now);
        }
        assert!(
            now <= SLICE_NS,
            "the next holder starts at the slice end: {now}"
        );
    }

    #[test]
    fn fixed_mode_caps_a_lone_tenant_and_lets_debt_be_repaid() {
        let mut s = Sched::default();
        s.add(1, 30, MODE_FIXED, PRIO_NORMAL, 0);
        let u = drive(&mut s, &[1], 0, 10_000_000_000);
        let share = u[0] as f64 * 100.0 / 10_000_000_000.0;
        assert!((share - 30.0).abs() < 2.0, "{share}");
        let mut s = Sched::default();
        s.add(1, 30, MODE_FIXED, PRIO_NORMAL, 0);
        s.add(2, 70, MODE_FIXED, PRIO_NORMAL, 0);
        let u = drive(&mut s, &[1, 2], 200_000_000, 60_000_000_000);
        let share = u[0] as f64 * 100.0 / (u[0] + u[1]) as f64;
        assert!((share - 30.0).abs() < 3.0, "{share}");
        let busy = (u[0] + u[1]) as f64 * 100.0 / 60_000_000_000.0;
        assert!(busy > 90.0, "the GPU stays busy: {busy}");
    }
}

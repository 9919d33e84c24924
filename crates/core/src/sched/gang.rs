//! Gang scheduling: members reserve their placement as they arrive; the gang is bound only
//! when all `size` members hold a reservation. A partial gang's reservations are released when
//! its deadline (set by the first member) passes. Time is passed in, in milliseconds.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Gang {
    size: u32,
    deadline_ms: u64,
    members: BTreeMap<String, Reservation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GangDecision {
    /// Reserved; the gang still lacks members.
    Waiting {
        have: u32,
        need: u32,
        deadline_ms: u64,
    },
    /// This member completed the gang: bind them all.
    Complete(Vec<Reservation>),
}

#[derive(Debug, Clone, Default)]
pub struct GangTracker {
    gangs: BTreeMap<String, Gang>,
}

impl GangTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `r` for gang `key`. A member already reserved is not counted twice.
    pub fn reserve(
        &mut self,
        key: &str,
        size: u32,
        timeout_ms: u64,
        now_ms: u64,
        r: Reservation,
    ) -> GangDecision {
        let g = self.gangs.entry(key.to_string()).or_insert_with(|| Gang {
            size,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            members: BTreeMap::new(),
        });
        g.members.insert(r.uid.clone(), r);
        if g.members.len() as u32 >= g.size {
            let g = self.gangs.remove(key).expect("present");
            GangDecision::Complete(g.members.into_values().collect())
        } else {
            GangDecision::Waiting {
                have: g.members.len() as u32,
                need: g.size,
                deadline_ms: g.deadline_ms,
            }
        }
    }

    /// Releases every gang whose deadline has passed; returns the reservations to give back.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Reservation> {
        let expired: Vec<String> = self
            .gangs
            .iter()
            .filter(|(_, g)| now_ms >= g.deadline_ms)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in expired {
            if let Some(g) = self.gangs.remove(&k) {
                out.extend(g.members.into_values());
            }
        }
        out
    }

    /// The reservation held for a pod, if any.
    pub fn reservation(&self, uid: &str) -> Option<&Reservation> {
        self.gangs.values().find_map(|g| g.members.get(uid))
    }

    /// Drops a member (its pod was deleted). Returns whether it was reserved.
    pub fn cancel(&mut self, uid: &str) -> bool {
        let mut hit = false;
        self.gangs.retain(|_, g| {
            hit |= g.members.remove(uid).is_some();
            !g.members.is_empty()
        });
        hit
    }

    pub fn waiting(&self) -> impl Iterator<Item = (&str, u32, u32)> {
        self.gangs
            .iter()
            .map(|(k, g)| (k.as_str(), g.members.len() as u32, g.size))
    }
}

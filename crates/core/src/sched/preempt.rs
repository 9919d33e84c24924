//! Preemption: the fewest, lowest-priority victims on one node that make room for a pod,
//! never evicting part of a gang.

use std::collections::BTreeMap;

use super::cluster::{Cluster, apply};
use super::fit::{Candidate, fit_node};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub priority: i32,
}

/// Victims on node `node` that make `c.pod` fit, or `None` when no set of lower-priority pods
/// does. Gang members are only eligible when their whole gang is on this node, and then only
/// together. The set is minimal in the sense that giving any unit of it back makes the pod
/// not fit; among such sets, the lowest priorities are chosen first.
pub fn select_victims(cluster: &Cluster, node: usize, c: &Candidate) -> Option<Vec<Victim>> {
    let n = &cluster.nodes[node];
    if fit_node(n, c).is_ok() {
        return Some(Vec::new());
    }
    // Units: a single pod, or a whole gang living entirely on this node.
    let mut units: BTreeMap<String, Vec<&super::cluster::PodRecord>> = BTreeMap::new();
    let mut gang_elsewhere: std::collections::BTreeSet<&str> = Default::default();
    for p in cluster.pods.values() {
        if p.assignment.node != n.name {
            if let Some(g) = &p.gang {
                gang_elsewhere.insert(g);
            }
            continue;
        }
        let key = match &p.gang {
            Some(g) => format!("g:{g}"),
            None => format!("p:{}", p.uid),
        };
        units.entry(key).or_default().push(p);
    }
    let mut units: Vec<Vec<&super::cluster::PodRecord>> = units
        .into_iter()
        .filter(|(k, members)| {
            let gang_ok = match k.strip_prefix("g:") {
                Some(g) => !gang_elsewhere.contains(g),
                None => true,
            };
            gang_ok && members.iter().all(|p| p.priority < c.pod.priority)
        })
        .map(|(_, v)| v)
        .collect();
    let prio = |u: &Vec<&super::cluster::PodRecord>| {
        u.iter().map(|p| p.priority).max().unwrap_or(i32::MIN)
    };
    // Most important first, so reprieves favour them; uid keeps the order deterministic.
    units.sort_by(|a, b| prio(b).cmp(&prio(a)).then_with(|| a[0].uid.cmp(&b[0].uid)));
    let mut scratch = n.clone();
    for u in &units {
        for p in u {
            apply(&mut scratch, &p.uid, &p.assignment, -1).ok()?;
        }
    }
    if fit_node(&scratch, c).is_err() {
        return None;
    }
    let mut victims = Vec::new();
    for u in &units {
        let mut trial = scratch.clone();
        let back = u
            .iter()
            .all(|p| apply(&mut trial, &p.uid, &p.assignment, 1).is_ok());
        if back && fit_node(&trial, c).is_ok() {
            scratch = trial;
        } else {
            victims.extend(u.iter().map(|p| Victim {
                uid: p.uid.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                priority: p.priority,
            }));
        }
    }
    Some(victims)
}

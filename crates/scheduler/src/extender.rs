//! The extender's decisions over shared cluster state: filter, prioritize, bind, preempt.
//! HTTP lives in `server`; this module knows nothing of sockets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use gpuslice_core::protocol::Assignment;
use gpuslice_core::sched::{
    Candidate, Cluster, Config, GangDecision, GangTracker, MigHint, PodSpec, Refusal, Reservation,
    ShapeMemo, Verdict, dominant_share, fit_node, fit_verdict, mig_hint, quota::fair_share_blocker,
    select_victims,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a bind writes: the assignment annotation, then the Binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindTarget {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub assignment: Assignment,
}

/// Makes a bind real. The cluster-file mode binds in memory only; the Kubernetes mode patches
/// the pod and creates the Binding.
pub trait Binder: Send + Sync {
    fn bind<'a>(&'a self, t: &'a BindTarget) -> BoxFuture<'a, Result<(), String>>;
}

/// Binds nothing outside the process.
pub struct MemoryBinder;

impl Binder for MemoryBinder {
    fn bind<'a>(&'a self, _t: &'a BindTarget) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Milliseconds on some monotonic or wall clock; injected so gang expiry can be tested.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    let start = std::time::Instant::now();
    Arc::new(move || start.elapsed().as_millis() as u64)
}

/// How long a namespace counts as waiting after its last pod found no node.
const WAITING_MS: u64 = 60_000;

/// How long a pod that found no node for its MIG devices counts as pending. kube-scheduler
/// retries unschedulable pods at least every 5 minutes, so a pod still waiting is seen again
/// well before this; a deleted one drops out.
const MIG_PENDING_MS: u64 = 10 * 60_000;

pub struct State {
    pub cluster: Cluster,
    pub gangs: GangTracker,
    pub cfg: Config,
    /// Pods seen by /filter, by uid: /bind and /preempt only carry names.
    pub seen: HashMap<String, PodSpec>,
    /// Namespaces whose pods recently found no node, for fair share.
    pub waiting_ns: HashMap<String, u64>,
    /// Pods asking for MIG devices that no node passed at their last /filter, by uid, with
    /// when: the demand behind `GET /mig-hint`.
    pub mig_pending: HashMap<String, (PodSpec, u64)>,
    /// Scores from the last /filter (pod uid, cluster generation, 0–10 per node index, -1 =
    /// not fitted): /prioritize for the same pod on an unchanged cluster reuses them.
    scores: Option<(String, u64, Vec<i8>)>,
}

/// The index of node `name`, trying position `k` first (callers pass the one after the last
/// found): kube-scheduler lists nodes in a stable order, mostly the cluster's, and one string
/// compare is cheaper than hashing the name.
fn node_at(c: &Cluster, k: usize, name: &str) -> Option<usize> {
    match c.nodes.get(k) {
        Some(n) if n.is_named(name) => Some(k),
        _ => c.node_index(name),
    }
}

/// How many nodes ahead of the one being looked at [`prefetch_node`] reaches.
const PREFETCH_AHEAD: usize = 4;

/// Starts loading what deciding node `i` reads: its name and shape, and its GPUs and usage
/// (inside the node record for up to 8 GPUs, a heap block beyond), which fitting a shape not
/// seen yet reads.
/// The pass over thousands of nodes is bound by memory, and loads started a few nodes ahead
/// overlap with the nodes before.
#[inline(always)]
fn prefetch_node(c: &Cluster, i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(n) = c.nodes.get(i) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        fn lines<T: ?Sized>(v: &T) {
            let p = v as *const T as *const i8;
            for off in (0..std::mem::size_of_val(v)).step_by(64) {
                // SAFETY: a prefetch is a hint; it never faults, and the address is in `v`.
                #[allow(unused_unsafe)]
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off))
                };
            }
        }
        lines(n);
        if n.gpus.spilled() {
            lines(&n.gpus[..]);
            lines(&n.usage[..]);
        }
    }
}

/// Below this many node shapes to fit, a second thread costs more than it saves.
const PARALLEL_MIN_SHAPES: usize = 1024;

/// The cluster index and fit verdict of each name, in order; `None` for a name without
/// inventory. Each node shape is fitted once ([`ShapeMemo`]). Fitting only reads the cluster,
/// so a cluster of many shapes is split over two threads, each half in order (the lookups'
/// guesses and the prefetches stay right).
fn fit_all<S: AsRef<str> + Sync>(
    c: &Cluster,
    cand: &Candidate,
    names: &[S],
) -> Vec<Option<(usize, Result<Verdict, Refusal>)>> {
    let run = |names: &[S]| {
        let mut memo = ShapeMemo::new(c, cand);
        let mut guess = 0usize;
        names
            .iter()
            .map(|n| {
                prefetch_node(c, guess + PREFETCH_AHEAD);
                let i = node_at(c, guess, n.as_ref())?;
                guess = i + 1;
                Some((i, memo.verdict(&c.nodes[i], cand)))
            })
            .collect::<Vec<_>>()
    };
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if cores < 2 || names.len().min(c.shape_bound()) < PARALLEL_MIN_SHAPES {
        return run(names);
    }
    let (a, b) = names.split_at(names.len() / 2);
    std::thread::scope(|s| {
        let h = s.spawn(|| run(b));
        let mut out = run(a);
        out.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        out
    })
}

pub struct Extender {
    pub state: Mutex<State>,
    pub binder: Arc<dyn Binder>,
    pub clock: Clock,
}

/// Why one node was refused: a fit refusal, made text only when written (most refusals of
/// one pod read the same), or one of the outcome's notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Fit(Refusal),
    /// Index into [`FilterOutcome::notes`].
    Note(u32),
}

#[derive(Debug, Default)]
pub struct FilterOutcome {
    /// Indices into the node names asked about.
    pub passed: Vec<usize>,
    /// (index into the names, why), in the order asked.
    pub failed: Vec<(usize, Reason)>,
    pub unresolvable: Vec<(usize, Reason)>,
    /// Texts that [`Reason::Note`]s point at; one per distinct reason, not per node.
    pub notes: Vec<String>,
}

impl FilterOutcome {
    /// A note for the reason text, reusing the last one when it reads the same.
    fn note(&mut self, text: String) -> Reason {
        if self.notes.last() != Some(&text) {
            self.notes.push(text);
        }
        Reason::Note(self.notes.len() as u32 - 1)
    }

    /// The text of a reason; `pod` is the pod filtered (fit refusals name its containers).
    pub fn text(&self, r: Reason, pod: Option<&PodSpec>) -> String {
        match (r, pod) {
            (Reason::Note(i), _) => self.notes[i as usize].clone(),
            (Reason::Fit(f), Some(p)) => f.describe(p).to_string(),
            (Reason::Fit(f), None) => format!("{f:?}"),
        }
    }

    /// Failed nodes by name with their reasons, as `FailedNodes` carries them.
    pub fn failed_by_name<S: AsRef<str>>(
        &self,
        names: &[S],
        pod: Option<&PodSpec>,
    ) -> BTreeMap<String, String> {
        self.by_name(&self.failed, names, pod)
    }

    /// Unresolvable nodes by name, as `FailedAndUnresolvableNodes` carries them.
    pub fn unresolvable_by_name<S: AsRef<str>>(
        &self,
        names: &[S],
        pod: Option<&PodSpec>,
    ) -> BTreeMap<String, String> {
        self.by_name(&self.unresolvable, names, pod)
    }

    fn by_name<S: AsRef<str>>(
        &self,
        list: &[(usize, Reason)],
        names: &[S],
        pod: Option<&PodSpec>,
    ) -> BTreeMap<String, String> {
        list.iter()
            .map(|&(k, r)| (names[k].as_ref().to_string(), self.text(r, pod)))
            .collect()
    }
}

impl Extender {
    pub fn new(cluster: Cluster, cfg: Config, binder: Arc<dyn Binder>, clock: Clock) -> Self {
        Self {
            state: Mutex::new(State {
                cluster,
                gangs: GangTracker::new(),
                cfg,
                seen: HashMap::new(),
                waiting_ns: HashMap::new(),
                mig_pending: HashMap::new(),
                scores: None,
            }),
            binder,
            clock,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not take scheduling down with it: the state is still
        // consistent (every mutation completes under the lock).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives back the reservations of gangs whose deadline passed.
    fn expire(&self, st: &mut State) {
        for r in st.gangs.expire((self.clock)()) {
            st.cluster.remove_pod(&r.uid);
        }
    }

    /// A pod with malformed gpuslice fields fails every node with the reason.
    pub fn refuse_all(nodes: usize, reason: &str) -> FilterOutcome {
        let mut out = FilterOutcome::default();
        let r = out.note(reason.to_string());
        out.unresolvable = (0..nodes).map(|k| (k, r)).collect();
        out
    }

    /// Decides every node named for the pod. Fitting reads the compact per-GPU records kept in
    /// each node and makes no text for refusals (see `docs/scheduler.md` for what a pass over
    /// 5,000 nodes costs).
    pub fn filter<S: AsRef<str> + Sync>(&self, pod: &PodSpec, names: &[S]) -> FilterOutcome {
        let mut st = self.lock();
        self.expire(&mut st);
        let mut out = FilterOutcome::default();
        if !pod.wants_gpus() {
            out.passed = (0..names.len()).collect();
            return out;
        }
        let st = &mut *st;
        // A gang member that already holds a reservation may only go where it holds it.
        let reserved = st.gangs.reservation(&pod.uid).map(|r| r.node.clone());
        let bound = st
            .cluster
            .pods
            .get(&pod.uid)
            .map(|p| p.assignment.node.clone());
        let cand = Candidate::new(&st.cluster, pod, &st.cfg);
        let quota = st.cluster.quotas.get(&pod.namespace).cloned();
        let used = st.cluster.namespace_usage(&pod.namespace);
        let mut first_demand = None;
        let mut scores = vec![-1i8; st.cluster.nodes.len()];
        if let Some(r) = reserved.as_ref().or(bound.as_ref()) {
            let why = out.note(format!("pod holds a reservation on {r}"));
            for (k, name) in names.iter().enumerate() {
                if name.as_ref() == r {
                    out.passed.push(k);
                } else {
                    out.failed.push((k, why));
                }
            }
        } else {
            let mut no_inventory = None;
            for (k, fit) in fit_all(&st.cluster, &cand, names).into_iter().enumerate() {
                let Some((i, fit)) = fit else {
                    let r = *no_inventory.get_or_insert_with(|| {
                        out.note("node publishes no gpuslice inventory".into())
                    });
                    out.unresolvable.push((k, r));
                    continue;
                };
                match fit {
                    Ok(f) => {
                        if let Some(q) = &quota
                            && let Err(e) = q.check(used, f.demand)
                        {
                            let r = out.note(e.to_string());
                            out.failed.push((k, r));
                            continue;
                        }
                        first_demand.get_or_insert(f.demand);
                        scores[i] = f.score10() as i8;
                        out.passed.push(k);
                    }
                    Err(e) => out.failed.push((k, Reason::Fit(e))),
                }
            }
        }
        let now = (self.clock)();
        st.waiting_ns
            .retain(|_, t| now.saturating_sub(*t) < WAITING_MS);
        if let (true, Some(d), None) = (st.cfg.fair_share, first_demand, &reserved) {
            let cap = st.cluster.capacity();
            let weight = |ns: &str| st.cluster.quotas.get(ns).map_or(1, |q| q.weight);
            let mut after = used;
            after.add(d);
            let share = dominant_share(after, cap, weight(&pod.namespace));
            let mut active: BTreeSet<&str> = st
                .cluster
                .ns_usage
                .iter()
                .filter(|(_, u)| u.memory_mib > 0)
                .map(|(n, _)| n.as_str())
                .collect();
            active.extend(st.waiting_ns.keys().map(String::as_str));
            active.insert(&pod.namespace);
            let waiting = st
                .waiting_ns
                .keys()
                .filter(|n| **n != pod.namespace)
                .map(|n| {
                    (
                        n.as_str(),
                        dominant_share(st.cluster.namespace_usage(n), cap, weight(n)),
                    )
                });
            if let Some(b) = fair_share_blocker(share, active.len(), waiting) {
                let reason = out.note(format!(
                    "fair share: namespace {} would hold a dominant share of {:.2} (fair {:.2}) while namespace {b} waits",
                    pod.namespace,
                    share,
                    1.0 / active.len() as f64
                ));
                let passed = std::mem::take(&mut out.passed);
                out.failed.extend(passed.into_iter().map(|k| (k, reason)));
                // In the order asked, as every other list.
                out.failed.sort_by_key(|&(k, _)| k);
            }
        }
        if out.passed.is_empty() {
            st.waiting_ns.insert(pod.namespace.clone(), now);
        } else if st.waiting_ns.contains_key(&pod.namespace) && out.passed.len() == names.len() {
            st.waiting_ns.remove(&pod.namespace);
        }
        if out.passed.is_empty() && pod.containers.iter().any(|c| !c.mig.is_empty()) {
            st.mig_pending.insert(pod.uid.clone(), (pod.clone(), now));
        } else {
            st.mig_pending.remove(&pod.uid);
        }
        st.scores = Some((pod.uid.clone(), st.cluster.generation, scores));
        st.seen.insert(pod.uid.clone(), pod.clone());
        out
    }

    /// Scores 0–10 per node, in the order asked; nodes where the pod does not fit get 0.
    pub fn prioritize<S: AsRef<str>>(&self, pod: &PodSpec, names: &[S]) -> Vec<i64> {
        let st = self.lock();
        let cached = st
            .scores
            .as_ref()
            .filter(|(u, g, _)| *u == pod.uid && *g == st.cluster.generation)
            .map(|(_, _, s)| s);
        let cand = Candidate::new(&st.cluster, pod, &st.cfg);
        let mut guess = 0usize;
        names
            .iter()
            .map(|n| {
                let Some(i) = node_at(&st.cluster, guess, n.as_ref()) else {
                    return 0;
                };
                guess = i + 1;
                match cached.map(|s| s[i]) {
                    Some(s) if s >= 0 => s as i64,
                    _ => fit_verdict(&st.cluster.nodes[i], &cand).map_or(0, |f| f.score10()),
                }
            })
            .collect()
    }

    /// Charges the pod on `node` (or completes its gang) under the lock, then makes the
    /// binds real outside it. A failed bind gives the devices back.
    pub async fn bind(&self, ns: &str, name: &str, uid: &str, node: &str) -> Result<(), String> {
        let targets: Vec<BindTarget> = {
            let mut st = self.lock();
            self.expire(&mut st);
            let st = &mut *st;
            // Bound already: by an earlier /bind whose answer kube-scheduler did not get, or
            // by another scheduler run. The same node again is success (the bind is done);
            // another node is an error naming where the pod is.
            if !st.seen.contains_key(uid)
                && st.gangs.reservation(uid).is_none()
                && let Some(p) = st.cluster.pods.get(uid)
            {
                let on = &p.assignment.node;
                return if on == node {
                    Ok(())
                } else {
                    Err(format!(
                        "pod {ns}/{name} ({uid}) is already bound to node {on}, not {node}"
                    ))
                };
            }
            let pod = st.seen.get(uid).cloned().ok_or_else(|| {
                format!("pod {ns}/{name} ({uid}) was not seen by /filter; retry scheduling")
            })?;
            let ni = st
                .cluster
                .node_index(node)
                .ok_or_else(|| format!("node {node} publishes no gpuslice inventory"))?;
            let reserved = st.gangs.reservation(uid).cloned();
            match (&reserved, st.cluster.pods.get(uid)) {
                (Some(r), _) if r.node != node => {
                    return Err(format!(
                        "pod {ns}/{name} holds a gang reservation on {}, not {node}",
                        r.node
                    ));
                }
                (Some(_), _) => {}
                (None, Some(p)) => {
                    return Err(format!(
                        "pod {ns}/{name} is already placed on {}",
                        p.assignment.node
                    ));
                }
                (None, None) => {
                    let cand = Candidate::new(&st.cluster, &pod, &st.cfg);
                    let fit = fit_node(&st.cluster.nodes[ni], &cand)
                        .map_err(|e| format!("{node}: {e}"))?;
                    if let Some(q) = st.cluster.quotas.get(&pod.namespace) {
                        let used = st.cluster.namespace_usage(&pod.namespace);
                        q.check(used, fit.demand).map_err(|e| e.to_string())?;
                    }
                    let rec = st.cluster.record(ni, &pod, &fit);
                    st.cluster.add_pod(rec).map_err(|e| e.to_string())?;
                }
            }
            let target = |st: &State, uid: &str| -> Option<BindTarget> {
                let p = st.cluster.pods.get(uid)?;
                Some(BindTarget {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    node: p.assignment.node.clone(),
                    assignment: p.assignment.clone(),
                })
            };
            match (pod.gang(), pod.gang_key()) {
                (Some(g), Some(key)) => {
                    let timeout = g.timeout_seconds.unwrap_or(st.cfg.gang_timeout_seconds) * 1000;
                    let r = Reservation {
                        uid: uid.into(),
                        namespace: ns.into(),
                        name: name.into(),
                        node: node.into(),
                    };
                    match st.gangs.reserve(&key, g.size, timeout, (self.clock)(), r) {
                        GangDecision::Waiting {
                            have,
                            need,
                            deadline_ms,
                        } => {
                            let left = deadline_ms.saturating_sub((self.clock)()) / 1000;
                            return Err(format!(
                                "gang {key}: {have} of {need} members reserved; waiting for the rest (reservations released in {left} s)"
                            ));
                        }
                        GangDecision::Complete(members) => {
                            members.iter().filter_map(|m| target(st, &m.uid)).collect()
                        }
                    }
                }
                _ => target(st, uid).into_iter().collect(),
            }
        };
        let mut errors = Vec::new();
        for t in &targets {
            if let Err(e) = self.binder.bind(t).await {
                self.lock().cluster.remove_pod(&t.uid);
                errors.push(format!("{}/{}: {e}", t.namespace, t.name));
            }
        }
        if errors.is_empty() {
            let mut st = self.lock();
            for t in &targets {
                st.seen.remove(&t.uid);
                st.mig_pending.remove(&t.uid);
            }
            Ok(())
        } else {
            Err(format!("bind failed: {}", errors.join("; ")))
        }
    }

    /// The MIG layouts that would fit the pods recently refused for lack of MIG devices, and
    /// how many such pods there are. Advice only: no GPU is changed.
    pub fn mig_hint(&self) -> (usize, Vec<MigHint>) {
        let mut st = self.lock();
        let now = (self.clock)();
        let st = &mut *st;
        let placed = &st.cluster.pods;
        st.mig_pending.retain(|uid, (_, t)| {
            now.saturating_sub(*t) < MIG_PENDING_MS && !placed.contains_key(uid)
        });
        let pending: Vec<PodSpec> = st.mig_pending.values().map(|(p, _)| p.clone()).collect();
        (pending.len(), mig_hint(&st.cluster, &pending))
    }

    /// For each node kube-scheduler proposes, the victims that make room for the pod's GPUs
    /// as well: kube's own victims plus the fewest lowest-priority GPU holders. A node where
    /// that would evict part of a gang, or where nothing makes room, is left out.
    pub fn preempt(
        &self,
        pod: &PodSpec,
        proposed: &BTreeMap<String, (Vec<String>, i64)>,
    ) -> BTreeMap<String, (Vec<String>, i64)> {
        let st = self.lock();
        let mut scratch = st.cluster.clone();
        for (uids, _) in proposed.values() {
            for u in uids {
                scratch.remove_pod(u);
            }
        }
        let mut out = BTreeMap::new();
        for (node, (uids, pdb)) in proposed {
            let Some(i) = scratch.node_index(node) else {
                continue;
            };
            let cand = Candidate::new(&scratch, pod, &st.cfg);
            let Some(extra) = select_victims(&scratch, i, &cand) else {
                continue;
            };
            let mut all: BTreeSet<String> = uids.iter().cloned().collect();
            all.extend(extra.into_iter().map(|v| v.uid));
            // Every gang touched must be evicted whole, on this node.
            let gangs: BTreeSet<&String> = all
                .iter()
                .filter_map(|u| st.cluster.pods.get(u)?.gang.as_ref())
                .collect();
            let whole = gangs.iter().all(|g| {
                st.cluster
                    .pods
                    .values()
                    .filter(|p| p.gang.as_ref() == Some(*g))
                    .all(|p| all.contains(&p.uid))
            });
            if whole {
                out.insert(node.clone(), (all.into_iter().collect(), *pdb));
            }
        }
        out
    }
}

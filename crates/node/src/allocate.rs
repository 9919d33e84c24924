//! Allocate: from kubelet's device IDs and the scheduler's assignment to a capped container.
//!
//! Every successful answer names a ledger the agent created with the cap, and loads the
//! interposer both through `LD_PRELOAD` and a mounted `/etc/ld.so.preload`; anything the agent
//! cannot honour is refused with the pod and the reason. There is no uncapped path: the one
//! grant without a ledger is a MIG device, whose limits are the hardware's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gpuslice_core::protocol;
use gpuslice_ledger::{ComputeSpec, Ledger, TenantSpec};

use crate::assign::{self, PendingPod};
use crate::cdi;
use crate::config::{Injection, Mode, NodeConfig};
use crate::devices::{self, gpu_of};
use crate::gpu::Gpu;
use crate::pb;
use crate::state::{Allocation, Store};

/// Where the container finds gpuslice's files.
pub const CONTAINER_LIB: &str = "/usr/local/gpuslice/lib/libgpuslice.so";
/// The tenant's directory, mounted read-only: the interposer takes the tenant's limits from the
/// `limits` file there (`gpuslice_warden`), which no process in the container can change.
pub const CONTAINER_TENANT_DIR: &str = gpuslice_warden::CONTAINER_DIR;
/// The ledger, the one writable file, mounted over its read-only twin.
pub const CONTAINER_LEDGER: &str = "/var/run/gpuslice/ledger";
pub const PRELOAD_FILE: &str = "/etc/ld.so.preload";
/// Memory charged per CUDA context, as for `gpuslice run`.
pub const CONTEXT_OVERHEAD: u64 = gpuslice_core::tenant::DEFAULT_CONTEXT_OVERHEAD.bytes();

#[derive(Debug, Clone)]
pub struct Paths {
    /// `<state>/tenants`: one directory per tenant, holding its ledger; mounted into the container.
    pub tenants: PathBuf,
    pub cdi: PathBuf,
    /// The interposer on the host, as kubelet will mount it.
    pub interposer: PathBuf,
    /// A file holding `CONTAINER_LIB`, mounted at `/etc/ld.so.preload`.
    pub preload: PathBuf,
    /// The machine's compute arbiter; each tenant gets a socket of its own in its directory.
    pub arbiter: std::sync::Arc<crate::arbiter::Arbiter>,
}

impl Paths {
    /// Lays out `<state>/lib` with the interposer and the preload file, and starts the compute
    /// arbiter serving `compute` (the machine-wide socket directory).
    pub fn prepare(
        state: &Path,
        cdi: &Path,
        interposer_src: &Path,
        compute: &Path,
    ) -> Result<Paths, String> {
        let lib = state.join("lib");
        std::fs::create_dir_all(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        let interposer = lib.join("libgpuslice.so");
        let bytes = std::fs::read(interposer_src)
            .map_err(|e| format!("the interposer {}: {e}", interposer_src.display()))?;
        crate::state::write_atomic(&interposer, &bytes)?;
        let preload = lib.join("ld.so.preload");
        crate::state::write_atomic(&preload, format!("{CONTAINER_LIB}\n").as_bytes())?;
        let tenants = state.join("tenants");
        std::fs::create_dir_all(&tenants).map_err(|e| format!("{}: {e}", tenants.display()))?;
        let arbiter = std::sync::Arc::new(crate::arbiter::Arbiter::start(compute)?);
        Ok(Paths {
            tenants,
            cdi: cdi.to_path_buf(),
            interposer,
            preload,
            arbiter,
        })
    }

    pub fn ledger(&self, tenant: &str) -> PathBuf {
        self.tenants.join(tenant).join("ledger")
    }
}

/// The decision for one container, before any file is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub alloc: Allocation,
}

/// Names usable as a directory and a CDI device name.
pub fn tenant_name(parts: &[&str]) -> String {
    let s: String = parts
        .join(".")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.chars().take(200).collect()
}

fn mig_short(uuid: &str) -> &str {
    let u = uuid.strip_prefix("MIG-").unwrap_or(uuid);
    &u[..u.len().min(8)]
}

fn short(uuid: &str) -> &str {
    let u = uuid.strip_prefix("GPU-").unwrap_or(uuid);
    &u[..u.len().min(8)]
}

/// Decides what a container gets. `pending` is consulted for scheduler-placed resources.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    cfg: &NodeConfig,
    gpus: &[Gpu],
    unhealthy: &std::collections::BTreeSet<String>,
    store: &Store,
    resource: &str,
    ids: &[String],
    pending: &assign::Pending,
    source: &str,
) -> Result<Grant, String> {
    if ids.is_empty() {
        return Err(format!("{resource}: kubelet asked for no devices"));
    }
    let by_uuid: BTreeMap<&str, &Gpu> = gpus.iter().map(|g| (g.uuid.as_str(), g)).collect();
    let gpu = |who: &str, u: &str| -> Result<&Gpu, String> {
        let g = by_uuid
            .get(u)
            .copied()
            .ok_or_else(|| format!("{who}: GPU {u} is not on this node"))?;
        if unhealthy.contains(u) {
            return Err(format!("{who}: GPU {u} is unhealthy"));
        }
        Ok(g)
    };
    let ts_resource = &cfg.time_slicing.resource_name;

    // MIG devices: hardware partitions handed out whole; kubelet's IDs (MIG UUIDs) decide.
    if let Some(profile) = protocol::mig_profile_of(resource) {
        let who = format!("{resource} devices {}", ids.join(","));
        let mut memory = 0u64;
        for id in ids {
            let (g, m) = devices::find_mig(gpus, id)
                .ok_or_else(|| format!("{who}: MIG device {id} is not on this node"))?;
            if m.profile != profile {
                return Err(format!(
                    "{who}: MIG device {id} is a {}, not a {profile}",
                    m.profile
                ));
            }
            if unhealthy.contains(&g.uuid) || unhealthy.contains(id) {
                return Err(format!("{who}: MIG device {id} is unhealthy"));
            }
            memory += m.memory_bytes;
        }
        let mut sorted = ids.to_vec();
        sorted.sort();
        return Ok(Grant {
            alloc: Allocation {
                tenant: tenant_name(&[
                    "mig",
                    &sorted
                        .iter()
                        .map(|u| mig_short(u))
                        .collect::<Vec<_>>()
                        .join("-"),
                ]),
                resource: resource.to_string(),
                namespace: String::new(),
                pod: String::new(),
                pod_uid: String::new(),
                container: String::new(),
                gpus: sorted,
                memory_bytes: memory,
                compute_percent: 100,
                device_ids: ids.to_vec(),
            },
        });
    }

    // Scheduler-placed: the assignment decides GPUs and sizes; kubelet's IDs only count.
    if resource == protocol::RESOURCE_GPU || resource == protocol::RESOURCE_WHOLE_GPU {
        if let Some((pod, c)) = pick(&pending.pods, store, resource, ids.len()) {
            let who = format!("pod {}/{} container {}", pod.namespace, pod.name, c.name);
            let mine: Vec<&protocol::AssignedGpu> = c
                .gpus
                .iter()
                .filter(|g| {
                    g.mig.is_none() && g.exclusive == (resource == protocol::RESOURCE_WHOLE_GPU)
                })
                .collect();
            let mut uuids = Vec::new();
            for a in &mine {
                let g = gpu(&who, &a.uuid)?;
                let offer = cfg.offer(g.index, &g.uuid);
                let want = if a.exclusive {
                    Mode::Whole
                } else {
                    Mode::Shared
                };
                if offer.mode != want {
                    return Err(format!(
                        "{who}: GPU {} is offered as {:?} on this node, the assignment asks for {want:?}",
                        g.uuid, offer.mode
                    ));
                }
                if a.memory_mib << 20 > g.memory_bytes {
                    return Err(format!(
                        "{who}: {} MiB assigned on GPU {}, which has {} MiB",
                        a.memory_mib,
                        g.uuid,
                        g.memory_bytes >> 20
                    ));
                }
                uuids.push(g.uuid.clone());
            }
            let mem = mine[0].memory_mib;
            let compute = mine[0].compute_percent;
            if mine
                .iter()
                .any(|a| a.memory_mib != mem || a.compute_percent != compute)
            {
                return Err(format!(
                    "{who}: slices of one container must have equal memory and compute (one cap per tenant)"
                ));
            }
            return Ok(Grant {
                alloc: Allocation {
                    tenant: tenant_name(&[&pod.namespace, &pod.name, &c.name]),
                    resource: resource.to_string(),
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    pod_uid: pod.uid.clone(),
                    container: c.name.clone(),
                    gpus: uuids,
                    memory_bytes: mem << 20,
                    compute_percent: compute,
                    device_ids: ids.to_vec(),
                },
            });
        }
        if resource == protocol::RESOURCE_GPU {
            let mut msg = format!(
                "no pending pod with a gpuslice assignment for {} {resource} unit(s) (devices {}) in {source}; slices are sized only by the gpuslice scheduler",
                ids.len(),
                ids.join(",")
            );
            for e in &pending.errors {
                msg.push_str("; ");
                msg.push_str(e);
            }
            return Err(msg);
        }
    }

    // Whole GPUs without an assignment, and time-slicing replicas: kubelet's IDs decide.
    let mut per_gpu: BTreeMap<&str, u32> = BTreeMap::new();
    for id in ids {
        *per_gpu.entry(gpu_of(id)).or_default() += 1;
    }
    let who = format!("devices {}", ids.join(","));
    if resource == protocol::RESOURCE_WHOLE_GPU {
        let gs: Vec<&Gpu> = per_gpu
            .keys()
            .map(|u| gpu(&who, u))
            .collect::<Result<_, _>>()?;
        let mem = gs.iter().map(|g| g.memory_bytes).min().unwrap();
        return Ok(Grant {
            alloc: Allocation {
                tenant: tenant_name(&[
                    "whole",
                    &gs.iter()
                        .map(|g| short(&g.uuid))
                        .collect::<Vec<_>>()
                        .join("-"),
                ]),
                resource: resource.to_string(),
                namespace: String::new(),
                pod: String::new(),
                pod_uid: String::new(),
                container: String::new(),
                gpus: gs.iter().map(|g| g.uuid.clone()).collect(),
                memory_bytes: mem,
                compute_percent: 100,
                device_ids: ids.to_vec(),
            },
        });
    }
    if resource == ts_resource {
        if per_gpu.len() != 1 {
            return Err(format!(
                "{who}: time-slicing replicas of one container must come from one GPU (kubelet picked {} GPUs)",
                per_gpu.len()
            ));
        }
        let (u, n) = per_gpu.into_iter().next().unwrap();
        let g = gpu(&who, u)?;
        let offer = cfg.offer(g.index, &g.uuid);
        if offer.mode != Mode::TimeSlicing {
            return Err(format!("{who}: GPU {u} is not offered for time-slicing"));
        }
        let replicas = offer.units as u64;
        let mem = g.memory_bytes / replicas * n as u64;
        let first = ids.iter().min().unwrap();
        return Ok(Grant {
            alloc: Allocation {
                tenant: tenant_name(&[
                    "ts",
                    short(u),
                    first.rsplit(devices::UNIT_SEP).next().unwrap_or("0"),
                ]),
                resource: resource.to_string(),
                namespace: String::new(),
                pod: String::new(),
                pod_uid: String::new(),
                container: String::new(),
                gpus: vec![g.uuid.clone()],
                memory_bytes: mem,
                compute_percent: ((100 * n as u64) / replicas).clamp(1, 100) as u32,
                device_ids: ids.to_vec(),
            },
        });
    }
    Err(format!("{resource}: not a resource this agent serves"))
}

/// The oldest pending pod with a container that holds `n` units of `resource` and has not been
/// allocated yet.
fn pick<'a>(
    pods: &'a [PendingPod],
    store: &Store,
    resource: &str,
    n: usize,
) -> Option<(&'a PendingPod, &'a protocol::ContainerAssignment)> {
    for p in pods {
        for c in &p.assignment.containers {
            if assign::units(c, resource) != n {
                continue;
            }
            let done = store
                .state
                .allocations
                .iter()
                .any(|a| a.pod_uid == p.uid && a.container == c.name && a.resource == resource);
            if !done {
                return Some((p, c));
            }
        }
    }
    None
}

/// True if a process of the tenant still holds its ledger.
fn has_live_processes(path: &Path) -> bool {
    match Ledger::open(path) {
        Ok(l) => {
            l.reclaim_dead(None);
            l.processes().iter().any(|p| p.pid != 0)
        }
        Err(_) => false,
    }
}

/// Creates (or, for the same pod, reuses) the tenant's ledger and CDI spec, and records the grant.
pub fn apply(
    cfg: &NodeConfig,
    gpus: &[Gpu],
    paths: &Paths,
    store: &mut Store,
    g: Grant,
) -> Result<pb::ContainerAllocateResponse, String> {
    let a = g.alloc;
    let who = if a.pod.is_empty() {
        format!("tenant {}", a.tenant)
    } else {
        format!("pod {}/{} container {}", a.namespace, a.pod, a.container)
    };
    if a.resource.starts_with(protocol::RESOURCE_MIG_PREFIX) {
        return apply_mig(cfg, gpus, paths, store, a, &who);
    }
    let ledger_path = paths.ledger(&a.tenant);
    let same = store.find(&a.tenant).is_some_and(|old| {
        old.pod_uid == a.pod_uid && old.memory_bytes == a.memory_bytes && old.gpus == a.gpus
    });
    if !same && ledger_path.exists() {
        // A previous holder of this name; its processes must be gone before the name is reused.
        if has_live_processes(&ledger_path) {
            return Err(format!(
                "{who}: the previous tenant {} still has running processes",
                a.tenant
            ));
        }
        let _ = std::fs::remove_dir_all(paths.tenants.join(&a.tenant));
    }
    if !ledger_path.exists() {
        std::fs::create_dir_all(paths.tenants.join(&a.tenant))
            .map_err(|e| format!("{who}: {e}"))?;
        let mut allowed = Vec::new();
        for u in &a.gpus {
            allowed.push(
                gpuslice_ledger::parse_uuid(u)
                    .ok_or_else(|| format!("{who}: GPU UUID '{u}' cannot be parsed"))?,
            );
        }
        let spec = TenantSpec {
            name: a.tenant.chars().take(63).collect(),
            memory_cap: a.memory_bytes,
            context_overhead: CONTEXT_OVERHEAD,
            allowed,
        };
        let l = Ledger::create(&ledger_path, &spec)
            .map_err(|e| format!("{who}: cannot create the ledger: {e}"))?;
        l.set_compute(ComputeSpec {
            quota: a.compute_percent.min(100) as u8,
            mode: 1,
            priority: 1,
        })
        .map_err(|e| format!("{who}: cannot set the compute quota: {e}"))?;
    }
    // The limits the interposer obeys, from the ledger the agent made (rewritten at every
    // re-application, always to the same bytes: the tenant id lives in the ledger).
    let limits = Ledger::open(&ledger_path)
        .and_then(|l| l.limits())
        .map_err(|e| format!("{who}: cannot read the ledger's limits: {e}"))?;
    let limits_path = paths
        .tenants
        .join(&a.tenant)
        .join(gpuslice_warden::LIMITS_FILE);
    crate::state::write_atomic(&limits_path, &limits.encode())
        .map_err(|e| format!("{who}: {e}"))?;
    set_mode(&limits_path, 0o444);
    // Every connection to this socket is a channel of this tenant; the container sees it at
    // `/var/run/gpuslice/arbiter.sock` inside its read-only tenant directory (a socket on a
    // read-only mount still accepts connections).
    match limits.compute {
        Some(c) => paths.arbiter.ensure(
            &a.tenant,
            &paths
                .tenants
                .join(&a.tenant)
                .join(gpuslice_warden::ARBITER_SOCKET),
            gpuslice_arbiter::Spec {
                name: a
                    .tenant
                    .chars()
                    .take(gpuslice_compute::wire::NAME_LEN)
                    .collect(),
                quota: c.quota,
                mode: c.mode,
                priority: c.priority,
                ledger_id: limits.tenant_id,
            },
        )?,
        None => paths.arbiter.remove(&a.tenant),
    }
    // The ledger is shared with the tenant's processes, which may run as any user in the
    // container; the directory is mounted read-only, so nothing else in it can be replaced.
    set_mode(&paths.tenants.join(&a.tenant), 0o755);
    set_mode(&ledger_path, 0o666);

    let visible = a.gpus.join(",");
    let mut env: Vec<(String, String)> = vec![
        ("CUDA_VISIBLE_DEVICES".into(), visible.clone()),
        ("NVIDIA_VISIBLE_DEVICES".into(), visible),
        ("GPUSLICE_TENANT".into(), a.tenant.clone()),
        ("LD_PRELOAD".into(), CONTAINER_LIB.into()),
    ];
    env.sort();
    let mounts = [
        (
            paths.tenants.join(&a.tenant),
            CONTAINER_TENANT_DIR.to_string(),
            true,
        ),
        (ledger_path.clone(), CONTAINER_LEDGER.to_string(), false),
        (paths.interposer.clone(), CONTAINER_LIB.to_string(), true),
        (paths.preload.clone(), PRELOAD_FILE.to_string(), true),
    ];
    let mut nodes: Vec<String> = Vec::new();
    for u in &a.gpus {
        if let Some(m) = gpus.iter().find(|g| &g.uuid == u).and_then(|g| g.minor) {
            nodes.push(format!("/dev/nvidia{m}"));
        }
    }
    if !nodes.is_empty() {
        for n in ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"] {
            nodes.push(n.to_string());
        }
    }

    respond(cfg, paths, a, store, &who, &env, &mounts, &nodes)
}

/// A MIG device is isolated by the hardware: its memory, SMs and bandwidth are its own, so no
/// ledger or interposer is needed and none is injected (its cap would equal the device's memory,
/// and the MIG UUID is not a GPU UUID the ledger's allow-list can name). The container sees only
/// its MIG device(s).
fn apply_mig(
    cfg: &NodeConfig,
    gpus: &[Gpu],
    paths: &Paths,
    store: &mut Store,
    a: Allocation,
    who: &str,
) -> Result<pb::ContainerAllocateResponse, String> {
    let visible = a.gpus.join(",");
    let mut env: Vec<(String, String)> = vec![
        ("CUDA_VISIBLE_DEVICES".into(), visible.clone()),
        ("NVIDIA_VISIBLE_DEVICES".into(), visible),
        ("GPUSLICE_TENANT".into(), a.tenant.clone()),
    ];
    env.sort();
    let mut nodes: Vec<String> = Vec::new();
    for u in &a.gpus {
        if let Some(m) = devices::find_mig(gpus, u).and_then(|(g, _)| g.minor) {
            let n = format!("/dev/nvidia{m}");
            if !nodes.contains(&n) {
                nodes.push(n);
            }
        }
    }
    if !nodes.is_empty() {
        for n in ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"] {
            nodes.push(n.to_string());
        }
    }
    respond(cfg, paths, a, store, who, &env, &[], &nodes)
}

/// The kubelet response and the CDI device for one container, from the same environment, mounts
/// and device nodes; the allocation is recorded before kubelet hears of it.
#[allow(clippy::too_many_arguments)]
fn respond(
    cfg: &NodeConfig,
    paths: &Paths,
    a: Allocation,
    store: &mut Store,
    who: &str,
    env: &[(String, String)],
    mounts: &[(PathBuf, String, bool)],
    nodes: &[String],
) -> Result<pb::ContainerAllocateResponse, String> {
    let mut resp = pb::ContainerAllocateResponse::default();
    if cfg.injection != Injection::Cdi {
        resp.envs = env.iter().cloned().collect();
        resp.mounts = mounts
            .iter()
            .map(|(h, c, ro)| pb::Mount {
                container_path: c.clone(),
                host_path: h.display().to_string(),
                read_only: *ro,
            })
            .collect();
        resp.devices = nodes
            .iter()
            .map(|n| pb::DeviceSpec {
                container_path: n.clone(),
                host_path: n.clone(),
                permissions: "rw".into(),
            })
            .collect();
    }
    if cfg.injection != Injection::Env {
        let edits = cdi::ContainerEdits {
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            device_nodes: nodes
                .iter()
                .map(|n| cdi::DeviceNode {
                    path: n.clone(),
                    host_path: None,
                    permissions: Some("rw".into()),
                })
                .collect(),
            mounts: mounts
                .iter()
                .map(|(h, c, ro)| cdi::Mount {
                    host_path: h.display().to_string(),
                    container_path: c.clone(),
                    options: if *ro {
                        vec!["ro".into(), "nosuid".into(), "nodev".into(), "bind".into()]
                    } else {
                        vec!["rw".into(), "nosuid".into(), "nodev".into(), "bind".into()]
                    },
                })
                .collect(),
        };
        cdi::write(&paths.cdi, &a.tenant, edits).map_err(|e| format!("{who}: {e}"))?;
        resp.cdi_devices = vec![pb::CdiDevice {
            name: cdi::qualified(&a.tenant),
        }];
    }
    resp.annotations
        .insert("gpuslice.io/tenant".into(), a.tenant.clone());
    store.upsert(a).map_err(|e| format!("{who}: {e}"))?;
    Ok(resp)
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// Drops allocations whose pods are gone and whose processes have all exited; returns their names.
pub fn collect_garbage(
    paths: &Paths,
    store: &mut Store,
    live_pod_uids: Option<&std::collections::BTreeSet<String>>,
) -> Vec<String> {
    let mut gone = Vec::new();
    for a in store.state.allocations.clone() {
        let pod_gone = match live_pod_uids {
            Some(live) => !a.pod_uid.is_empty() && !live.contains(&a.pod_uid),
            None => false,
        };
        if pod_gone && release(paths, store, &a.tenant) {
            gone.push(a.tenant);
        }
    }
    gone
}

/// Releases a finished container's allocation: its ledger directory, CDI spec and record.
/// Refused (`false`) while a process still holds the ledger.
pub fn release(paths: &Paths, store: &mut Store, tenant: &str) -> bool {
    if has_live_processes(&paths.ledger(tenant)) {
        return false;
    }
    paths.arbiter.remove(tenant);
    let _ = std::fs::remove_dir_all(paths.tenants.join(tenant));
    cdi::remove(&paths.cdi, tenant);
    let _ = store.remove(tenant);
    true
}

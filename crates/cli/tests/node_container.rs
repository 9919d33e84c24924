//! Kubelet to CUDA, end to end: the real `gpuslice node --sim` binary registers with a fake
//! kubelet speaking the device plugin API, answers Allocate for a pod the scheduler placed, and
//! a program run the way a container runtime would run it (the answer's environment, its mounts
//! bind-mounted at their container paths in a private mount namespace) is capped at exactly
//! what the pod was given, including when the program clears `LD_PRELOAD`.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use gpuslice_node::pb;
use gpuslice_node::plugin::{socket_name, unix_channel};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

const DEADLINE: Duration = Duration::from_secs(30);
const CAP_MIB: u64 = 1536;

struct FakeKubelet(mpsc::UnboundedSender<pb::RegisterRequest>);

#[tonic::async_trait]
impl pb::registration_server::Registration for FakeKubelet {
    async fn register(
        &self,
        r: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let _ = self.0.send(r.into_inner());
        Ok(Response::new(pb::Empty {}))
    }
}

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this machine lets an unprivileged user make a private mount namespace.
fn namespaces_available() -> bool {
    Command::new("unshare")
        .args(["-rm", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A shell script that sets up the container's filesystem view as a runtime would (fresh
/// `/run`, `/usr/local` and `/etc` holding only what the answer mounts, plus the loader cache),
/// then execs `args`.
fn container_script(mounts: &[pb::Mount], etc: &Path, args: &[String]) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut s =
        String::from("set -e\nmount -t tmpfs tmpfs /run\nmount -t tmpfs tmpfs /usr/local\n");
    for m in mounts {
        let c = m.container_path.replace("/var/run/", "/run/");
        let target = match c.strip_prefix("/etc/") {
            Some(rest) => etc.join(rest).display().to_string(),
            None => {
                assert!(
                    c.starts_with("/run/") || c.starts_with("/usr/local/"),
                    "mount at {c}: extend the test's container layout"
                );
                c
            }
        };
        if Path::new(&m.host_path).is_dir() {
            s += &format!("mkdir -p {}\n", q(&target));
        } else {
            let parent = Path::new(&target).parent().unwrap().display().to_string();
            // A file mounted over one inside an earlier (read-only) mount already exists.
            s += &format!(
                "mkdir -p {p}\n[ -e {t} ] || touch {t}\n",
                p = q(&parent),
                t = q(&target)
            );
        }
        s += &format!("mount --bind {} {}\n", q(&m.host_path), q(&target));
        if m.read_only {
            s += &format!("mount -o remount,bind,ro {}\n", q(&target));
        }
    }
    // --rbind: the files mounted into `etc` above must come along.
    s += &format!("mount --rbind {} /etc\nexec", q(&etc.display().to_string()));
    for a in args {
        s += &format!(" {}", q(a));
    }
    s + "\n"
}

/// Runs the probe as the container's process: only the answer's environment plus what the
/// node's driver installation provides (here: the simulator's libraries and its state).
fn in_container(
    m: &Machine,
    resp: &pb::ContainerAllocateResponse,
    etc: &Path,
    keep_preload_env: bool,
    args: &[&str],
) -> Output {
    let mut argv = vec![probe()];
    argv.extend(args.iter().map(|a| a.to_string()));
    in_container_argv(m, resp, etc, keep_preload_env, &argv)
}

fn in_container_argv(
    m: &Machine,
    resp: &pb::ContainerAllocateResponse,
    etc: &Path,
    keep_preload_env: bool,
    argv: &[String],
) -> Output {
    let mut c = Command::new("unshare");
    c.arg("-rm")
        .arg("sh")
        .arg("-c")
        .arg(container_script(&resp.mounts, etc, argv))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("LD_LIBRARY_PATH", m.sim_lib_dir())
        .env("GPUSLICE_SIM_STATE", m.dir.join("sim-gpu"));
    for (k, v) in &resp.envs {
        if k != "LD_PRELOAD" || keep_preload_env {
            c.env(k, v);
        }
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "container process failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `/etc` as the container sees it: the loader cache, and the answer's `/etc` mounts land here.
fn container_etc(dir: &Path) -> PathBuf {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    if Path::new("/etc/ld.so.cache").exists() {
        std::fs::copy("/etc/ld.so.cache", etc.join("ld.so.cache")).unwrap();
    }
    etc
}

#[test]
fn allocate_through_the_binary_caps_the_container() {
    assert!(
        namespaces_available(),
        "this test runs the container's process in a private mount namespace (`unshare -rm`); \
         enable unprivileged user namespaces (kernel.unprivileged_userns_clone=1)"
    );
    let m = Machine::new("node-container");
    let sockets = m.dir.join("plugins");
    let state = m.dir.join("agent");
    let assignments = m.dir.join("assignments.json");
    std::fs::create_dir_all(&sockets).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let l = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(sockets.join("kubelet.sock")).unwrap()
    };
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(pb::registration_server::RegistrationServer::new(
                FakeKubelet(tx),
            ))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l)),
    );

    let mut c = Command::new(gpuslice());
    c.arg("node")
        .arg("--sim")
        .arg("--no-kube")
        .arg("--node-name")
        .arg("node-a")
        .arg("--socket-dir")
        .arg(&sockets)
        .arg("--cdi-dir")
        .arg(m.dir.join("cdi"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--assignments")
        .arg(&assignments)
        // No kubelet pod resources here: the agent's own store decides.
        .arg("--pod-resources-socket")
        .arg(m.dir.join("pod-resources.sock"))
        .env("GPUSLICE_COMPUTE_DIR", m.dir.join("compute"))
        .stdout(Stdio::null());
    m.env(&mut c);
    let _agent = Agent(c.spawn().unwrap());

    rt.block_on(async {
        loop {
            let r = tokio::time::timeout(DEADLINE, rx.recv())
                .await
                .expect("the agent registers with kubelet in time")
                .unwrap();
            if r.resource_name == "gpuslice.io/gpu" {
                break;
            }
        }
    });
    let mut plugin = rt.block_on(async {
        pb::device_plugin_client::DevicePluginClient::new(
            unix_channel(&sockets.join(socket_name("gpuslice.io/gpu")))
                .await
                .unwrap(),
        )
    });
    let devices = rt.block_on(async {
        let mut s = plugin
            .list_and_watch(pb::Empty {})
            .await
            .unwrap()
            .into_inner();
        tokio::time::timeout(DEADLINE, s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .devices
    });
    let id = devices[0].id.clone();
    let uuid = id.split("::").next().unwrap().to_string();

    // The scheduler's decision, as the agent reads it without a cluster.
    let decision = serde_json::json!({"pods": [{"namespace": "team", "name": "trainer", "uid": "uid-1",
        "assignment": {"version": 1, "node": "node-a", "containers": [
            {"name": "main", "gpus": [{"uuid": uuid, "memoryMiB": CAP_MIB, "computePercent": 50}]}]}}]});
    std::fs::write(&assignments, serde_json::to_vec(&decision).unwrap()).unwrap();

    let resp = rt
        .block_on(plugin.allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_i_ds: vec![id.clone()],
            }],
        }))
        .unwrap()
        .into_inner()
        .container_responses
        .remove(0);
    let env = |k: &str| resp.envs.get(k).cloned().unwrap_or_default();
    assert_eq!(env("CUDA_VISIBLE_DEVICES"), uuid, "only the chosen GPU");
    assert!(!env("LD_PRELOAD").is_empty());
    assert_eq!(resp.cdi_devices.len(), 1, "{resp:?}");
    let cdi_name = resp.cdi_devices[0].name.rsplit('=').next().unwrap();
    let spec = std::fs::read_dir(m.dir.join("cdi"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .find(|s| s.contains(cdi_name))
        .expect("a CDI spec naming the device kubelet was told about");
    assert!(!spec.contains("GPUSLICE_LEDGER"), "{spec}");
    assert!(spec.contains("/var/run/gpuslice/ledger"), "{spec}");

    let etc = container_etc(&m.dir);
    let cap = CAP_MIB << 20;
    for keep_preload_env in [true, false] {
        let out = in_container(
            &m,
            &resp,
            &etc,
            keep_preload_env,
            &["fill", "alloc", "64MiB"],
        );
        let r = report(&out);
        assert_eq!(
            u(&r, "total"),
            cap,
            "the container sees its cap as the GPU's memory (LD_PRELOAD kept: {keep_preload_env}): {r}"
        );
        assert_eq!(
            u(&r, "error"),
            2,
            "refused with CUDA_ERROR_OUT_OF_MEMORY: {r}"
        );
        let got = u(&r, "bytes");
        assert!(
            got <= cap && got + (64 << 20) > cap - gpuslice_node::allocate::CONTEXT_OVERHEAD,
            "allocated {got} of a {cap}-byte cap: {r}"
        );
    }

    // A process in the container that tries to raise its cap: the limits file cannot be
    // replaced or written, and a rewritten ledger header changes nothing.
    let script = format!(
        "if echo x > /var/run/gpuslice/limits 2>/dev/null || mv /var/run/gpuslice/ledger /var/run/gpuslice/x 2>/dev/null; \
         then echo WRITABLE; exit 1; fi; \
         printf '\\000\\000\\000\\000\\020\\000\\000\\000' | dd of=/var/run/gpuslice/ledger bs=1 seek=16 conv=notrunc 2>/dev/null; \
         exec '{}' fill alloc 64MiB",
        probe()
    );
    let out = in_container_argv(
        &m,
        &resp,
        &etc,
        true,
        &["sh".to_string(), "-c".to_string(), script],
    );
    let r = report(&out);
    assert_eq!(u(&r, "total"), cap, "the mounted limits still hold: {r}");
    assert!(u(&r, "bytes") <= cap, "{r}");

    // Without the mounted preload file and without LD_PRELOAD nothing caps the program: the
    // check above is what made the difference.
    std::fs::remove_file(etc.join("ld.so.preload")).unwrap();
    let bare: Vec<pb::Mount> = resp
        .mounts
        .iter()
        .filter(|m| !m.container_path.starts_with("/etc/"))
        .cloned()
        .collect();
    let uncapped = pb::ContainerAllocateResponse {
        mounts: bare,
        ..resp.clone()
    };
    let r = report(&in_container(&m, &uncapped, &etc, false, &["info"]));
    assert!(u(&r, "total") > cap, "{r}");
}

//! The watchdog outside the tenant, end to end: processes that escape the interposer (a child
//! with a cleared environment or without `LD_PRELOAD`, reaching the simulated driver by
//! absolute path), a process pointing GPUSLICE_LEDGER at a forged ledger (refused by the
//! interposer: the environment grants nothing), and a tenant that zeroes its own ledger's
//! counters are caught by the driver's own count and killed (or reported), with a log line and
//! a row in `gpuslice top`; a tenant within its cap is never touched.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);
/// The watchdog looks every 200 ms; the guarantee is action within 1 s. The bound asserted
/// leaves room for a loaded CI machine (what was measured is printed).
const ACT_BOUND: Duration = Duration::from_millis(1500);

/// Compiled once: tests run in parallel, and a compiler rewriting the file while another test
/// starts it would make that start fail.
fn escape_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| compile_c("escape", "escape", &["-ldl"]))
        .clone()
}

/// Waits for the first JSON line in `path`.
fn wait_json(path: &Path) -> Value {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Some(v) = s
                .lines()
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            return v;
        }
        assert!(
            t.elapsed() < DEADLINE,
            "{} never got a line",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Gone or exited (a zombie waiting for its parent).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X'])),
    }
}

/// How long until `pid` is dead, at most `DEADLINE`.
fn wait_dead(pid: u32) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < DEADLINE {
        if dead(pid) {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn kill(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// A running `gpuslice run` tenant; its supervisor and the listed processes are killed on drop.
struct Tenant {
    child: Option<Child>,
    pids: Vec<u32>,
}

impl Tenant {
    fn start(m: &Machine, name: &str, cap: &str, watchdog: &str, script: &str) -> Tenant {
        let mut c = Command::new(gpuslice());
        c.args([
            "run",
            "--sim",
            "--watchdog",
            watchdog,
            "--gpu-memory",
            cap,
            "--name",
            name,
            "--",
            "sh",
            "-c",
            script,
        ]);
        m.env(&mut c);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        Tenant {
            child: Some(c.spawn().unwrap()),
            pids: Vec::new(),
        }
    }

    /// Kills what is left and returns the supervisor's output.
    fn finish(mut self) -> Output {
        for &p in &self.pids {
            kill(p);
        }
        let c = self.child.take().unwrap();
        kill(c.id());
        c.wait_with_output().unwrap()
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        for &p in &self.pids {
            kill(p);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn top_once(m: &Machine) -> String {
    let mut c = Command::new(gpuslice());
    c.args(["top", "--once", "--interval", "0.1"]);
    m.env(&mut c);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// A child of the tenant that holds 1.5 GiB of a 1 GiB cap without the interposer (started
/// through `prefix`) is killed within the bound, says so on stderr and shows in `top`.
fn escaped_child_is_killed(name: &str, prefix: &str) {
    let m = Machine::new(name);
    let out = m.dir.join("escape.json");
    let status = m.dir.join("status");
    let script = format!(
        "{prefix} {} {} {} > {}; echo $? > {}; exec sleep 60",
        sh_quote(&escape_bin()),
        sh_quote(&artifact("libcuda.so")),
        1536 * MIB,
        sh_quote(&out),
        sh_quote(&status),
    );
    let script = script.replace("$SIM", &sh_quote(&m.dir.join("sim-gpu")));
    let mut t = Tenant::start(&m, name, "1GiB", "kill", &script);
    let v = wait_json(&out);
    assert_eq!(v["error"], 0, "the child escaped the interposer: {v}");
    let pid = v["pid"].as_u64().unwrap() as u32;
    t.pids.push(pid);
    let took = wait_dead(pid).expect("the escaped child is killed");
    eprintln!("{name}: killed {took:?} after it held its memory");
    assert!(took < ACT_BOUND, "took {took:?}");
    let t0 = Instant::now();
    while std::fs::read_to_string(&status).map_or(true, |s| s.trim().is_empty()) {
        assert!(t0.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        std::fs::read_to_string(&status).unwrap().trim(),
        "137",
        "SIGKILL"
    );
    let top = top_once(&m);
    let row = top
        .lines()
        .find(|l| l.contains(&pid.to_string()))
        .unwrap_or_else(|| panic!("no row for pid {pid} in top:\n{top}"));
    assert!(
        row.contains("unmanaged") && row.contains("kill") && row.contains(name),
        "{row}"
    );
    let o = t.finish();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("watchdog: killed pid {pid} of tenant {name}"))
            && err.contains("without the interposer"),
        "{err}"
    );
}

#[test]
fn a_child_with_a_cleared_environment_is_killed() {
    escaped_child_is_killed("wd-envi", "env -i GPUSLICE_SIM_STATE=$SIM");
}

#[test]
fn a_child_without_ld_preload_is_killed() {
    escaped_child_is_killed("wd-nopreload", "env -u LD_PRELOAD");
}

#[test]
fn a_process_on_a_forged_ledger_gets_nothing_from_it() {
    let m = Machine::new("wd-forged");
    // A copy of the tenant's ledger with a larger cap, as a tenant could write one. Limits come
    // from `gpuslice run`, not from the environment: the process is held to the real cap by
    // the interposer, so the watchdog has nothing to do.
    let forged = m.dir.join("forged-ledger");
    gpuslice_ledger::Ledger::create(
        &forged,
        &gpuslice_ledger::TenantSpec {
            name: "wd-forged".into(),
            memory_cap: 8 * GIB,
            context_overhead: CTX,
            allowed: vec![],
        },
    )
    .unwrap();
    let out = m.dir.join("hold.json");
    let script = format!(
        "GPUSLICE_LEDGER={} {} hold {} > {}; exec sleep 60",
        sh_quote(&forged),
        sh_quote(Path::new(&probe())),
        1536 * MIB,
        sh_quote(&out)
    );
    let mut t = Tenant::start(&m, "wd-forged", "1GiB", "kill", &script);
    let v = wait_json(&out);
    let pid = v["pid"].as_u64().unwrap() as u32;
    t.pids.push(pid);
    assert_eq!(v["error"], 2, "refused past the real cap: {v}");
    std::thread::sleep(ACT_BOUND);
    let o = t.finish();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("killed pid"), "{err}");
}

#[test]
fn a_tenant_that_zeroes_its_counters_loses_the_largest_process() {
    let m = Machine::new("wd-zero");
    let (a_out, b_out, go) = (m.dir.join("a.json"), m.dir.join("b.json"), m.dir.join("go"));
    let p = sh_quote(Path::new(&probe()));
    // a fills the 1 GiB cap; once its counters are zeroed, b takes another 1 GiB, which the
    // ledger (now reading zero) grants.
    let script = format!(
        "{p} fill alloc 64MiB --hold > {a} & \
         while [ ! -e {go} ]; do sleep 0.02; done; \
         {p} hold {b_bytes} > {b}; exec sleep 60",
        a = sh_quote(&a_out),
        b = sh_quote(&b_out),
        go = sh_quote(&go),
        b_bytes = GIB - CTX,
    );
    let mut t = Tenant::start(&m, "wd-zero", "1GiB", "kill", &script);
    let a = wait_json(&a_out);
    assert_eq!(u(&a, "bytes"), GIB - CTX, "{a}");
    let ledger = m.ledger("wd-zero").unwrap();
    let pa = ledger.processes();
    assert_eq!(pa.len(), 1, "{pa:?}");
    t.pids.push(pa[0].pid);
    // What a hostile tenant process can do to the shared ledger it maps.
    for p in &pa {
        for d in 0..p.bytes.len() {
            ledger.release(
                gpuslice_ledger::SlotId(p.slot),
                gpuslice_ledger::Dev(d),
                u64::MAX,
            );
        }
    }
    assert_eq!(ledger.devices()[0].used, 0);
    std::fs::write(&go, b"").unwrap();
    let b = wait_json(&b_out);
    let pb = b["pid"].as_u64().unwrap() as u32;
    t.pids.push(pb);
    assert_eq!(b["error"], 0, "the zeroed ledger granted it: {b}");
    let took = wait_dead(pb).expect("one of the two is killed");
    eprintln!("zeroed counters: killed {took:?} after the tenant went over");
    assert!(took < ACT_BOUND, "took {took:?}");
    // 2 GiB by the driver's count against 1 GiB: one of the two equal processes goes (the
    // newer), and what is left is within the cap.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !dead(pa[0].pid),
        "the process left within the cap is spared"
    );
    let top = top_once(&m);
    assert!(
        top.lines()
            .any(|l| l.contains(&pb.to_string()) && l.contains("over-cap")),
        "{top}"
    );
    let o = t.finish();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("killed pid {pb} of tenant wd-zero")) && err.contains("over its cap"),
        "{err}"
    );
    assert_eq!(err.matches("watchdog:").count(), 1, "{err}");
}

#[test]
fn report_mode_reports_once_and_kills_nothing() {
    let m = Machine::new("wd-report");
    let out = m.dir.join("escape.json");
    let script = format!(
        "env -u LD_PRELOAD {} {} {} > {}",
        sh_quote(&escape_bin()),
        sh_quote(&artifact("libcuda.so")),
        1536 * MIB,
        sh_quote(&out),
    );
    let mut t = Tenant::start(&m, "wd-report", "1GiB", "report", &script);
    let v = wait_json(&out);
    let pid = v["pid"].as_u64().unwrap() as u32;
    t.pids.push(pid);
    // Several rounds of the watchdog.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!dead(pid), "report mode kills nothing");
    let top = top_once(&m);
    assert!(
        top.lines()
            .any(|l| l.contains(&pid.to_string()) && l.contains("report")),
        "{top}"
    );
    let o = t.finish();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("reporting pid {pid} of tenant wd-report")),
        "{err}"
    );
    assert_eq!(
        err.matches("watchdog:").count(),
        1,
        "a lasting finding is reported once: {err}"
    );
}

#[test]
fn a_tenant_within_its_cap_is_never_acted_on() {
    let m = Machine::new("wd-within");
    let p = sh_quote(Path::new(&probe()));
    let c_out = m.dir.join("c.json");
    // Several processes with kernels for two seconds; then the cap filled to the byte along
    // every allocation path in turn, each held for a few of the watchdog's rounds: the driver's
    // count of what the ledger granted never exceeds the cap plus the slack.
    let script = format!(
        "{p} fill alloc 64MiB --max 16 --hold > /dev/null & A=$!; \
         {p} hold 256MiB > /dev/null & B=$!; \
         {p} saturate 2 > /dev/null; \
         kill $A $B; wait $A $B; \
         for path in alloc_v1 pitch pitch_v1 managed async pool vmm array array3d mipmap graph context; do \
           {p} fill $path 64MiB --hold > {d}/$path.json & F=$!; \
           while [ ! -s {d}/$path.json ]; do sleep 0.02; done; sleep 0.5; kill $F; wait $F; \
         done; \
         {p} fill pitch 32MiB > {c}",
        c = sh_quote(&c_out),
        d = sh_quote(&m.dir),
    );
    let mut c = Command::new(gpuslice());
    c.args([
        "run",
        "--sim",
        "--gpu-memory",
        "3GiB",
        "--name",
        "wd-within",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    m.env(&mut c);
    let t0 = Instant::now();
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{o:?}");
    assert!(t0.elapsed() > Duration::from_secs(2));
    let r = wait_json(&c_out);
    assert_eq!(u(&r, "error"), 2, "the last process filled the cap: {r}");
    for path in ["alloc_v1", "managed", "pool", "vmm", "graph", "context"] {
        let r = wait_json(&m.dir.join(format!("{path}.json")));
        assert!(u(&r, "granted") > 0, "{path} held memory: {r}");
    }
    assert!(!err.contains("watchdog"), "no action: {err}");
}

fn pids(v: &Value, k: &str) -> Vec<u32> {
    let mut p: Vec<u32> = v[k]
        .as_array()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    p.sort();
    p
}

#[test]
fn nvml_shows_each_tenant_only_its_own_processes() {
    let m = Machine::new("wd-nvml");
    let lib = m.sim_lib_dir();
    let nv = compile_c(
        "nvml_procs",
        "nvml_procs",
        &["-L", lib.to_str().unwrap(), "-lnvidia-ml"],
    );
    let p = sh_quote(Path::new(&probe()));
    let go = m.dir.join("go");
    // Two tenants side by side, each with a process holding memory and one running kernels;
    // once all four are up, each lists the GPU's processes through NVML.
    let mut tenants = Vec::new();
    for (name, cap, hold) in [("nv-a", "2GiB", "512MiB"), ("nv-b", "3GiB", "1GiB")] {
        let script = format!(
            "{p} hold {hold} > {h} & H=$!; {p} saturate 20 > /dev/null & S=$!; echo $S > {s}; \
             while [ ! -e {go} ]; do sleep 0.02; done; {nv} > {out}; kill $H $S",
            h = sh_quote(&m.dir.join(format!("{name}.hold"))),
            s = sh_quote(&m.dir.join(format!("{name}.sat"))),
            go = sh_quote(&go),
            nv = sh_quote(&nv),
            out = sh_quote(&m.dir.join(format!("{name}.json"))),
        );
        tenants.push((name, Tenant::start(&m, name, cap, "kill", &script)));
    }
    let mut own: Vec<Vec<u32>> = Vec::new();
    for (name, t) in &mut tenants {
        let h = wait_json(&m.dir.join(format!("{name}.hold")));
        let hp = h["pid"].as_u64().unwrap() as u32;
        let sat = m.dir.join(format!("{name}.sat"));
        let t0 = Instant::now();
        let sp = loop {
            if let Some(p) = std::fs::read_to_string(&sat)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                break p;
            }
            assert!(t0.elapsed() < DEADLINE);
            std::thread::sleep(Duration::from_millis(10));
        };
        t.pids.extend([hp, sp]);
        let mut v = vec![hp, sp];
        v.sort();
        own.push(v);
    }
    // Until both kernel loops hold memory (their contexts) and have run: NVML outside any
    // tenant lists all four processes.
    let lib_env = |c: &mut Command| {
        m.env(c);
        c.env("LD_LIBRARY_PATH", &lib);
    };
    let everyone = || {
        let mut c = Command::new(&nv);
        lib_env(&mut c);
        report(&c.output().unwrap())
    };
    let all: Vec<u32> = own.concat();
    let t0 = Instant::now();
    loop {
        let v = everyone();
        let seen = pids(&v, "pids");
        let util = pids(&v, "util_pids");
        let detail = pids(&v, "detail_pids");
        if all.iter().all(|p| seen.contains(p) && detail.contains(p)) && util.len() >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "the simulated GPU never saw all four: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&go, b"").unwrap();
    for (i, (name, _)) in tenants.iter().enumerate() {
        let v = wait_json(&m.dir.join(format!("{name}.json")));
        assert_eq!(v["error"], 0, "{v}");
        assert_eq!(
            pids(&v, "pids"),
            own[i],
            "{name} sees its own processes only: {v}"
        );
        assert_eq!(pids(&v, "pids_v1"), own[i], "{v}");
        assert_eq!(v["detail_error"], 0, "{v}");
        assert_eq!(pids(&v, "detail_pids"), own[i], "{v}");
        // Asking for the size reveals no more than the list.
        assert_eq!(v["size_error"], 7, "INSUFFICIENT_SIZE: {v}");
        assert_eq!(v["asked"], 2, "{v}");
        let util = pids(&v, "util_pids");
        assert!(
            !util.is_empty() && util.iter().all(|p| own[i].contains(p)),
            "{name}'s utilization samples are its own: {v}"
        );
        let used: Vec<u64> = v["used"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert!(used.iter().all(|&u| u >= CTX), "{v}");
    }
    // (Outside any tenant, NVML listed all four above: the filter is what made the difference.)
}

// ---- the node agent's watchdog ----

mod node {
    use super::*;
    use gpuslice_node::pb;
    use gpuslice_node::plugin::{socket_name, unix_channel};
    use std::io::{Read, Write};
    use tokio::sync::mpsc;
    use tonic::{Request, Response, Status};

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

    fn namespaces_available() -> bool {
        Command::new("unshare")
            .args(["-rm", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Sets up the container's view as a runtime would (fresh `/run`, `/usr/local` and `/etc`
    /// holding what the answer mounts) and execs `args`, keeping the pid.
    fn container(
        m: &Machine,
        resp: &pb::ContainerAllocateResponse,
        etc: &Path,
        preload: bool,
        args: &[String],
    ) -> Child {
        let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut s =
            String::from("set -e\nmount -t tmpfs tmpfs /run\nmount -t tmpfs tmpfs /usr/local\n");
        for mnt in &resp.mounts {
            let c = mnt.container_path.replace("/var/run/", "/run/");
            let target = match c.strip_prefix("/etc/") {
                Some(rest) if preload => etc.join(rest).display().to_string(),
                Some(_) => continue,
                None => c,
            };
            if Path::new(&mnt.host_path).is_dir() {
                s += &format!("mkdir -p {}\n", q(&target));
            } else {
                let parent = Path::new(&target).parent().unwrap().display().to_string();
                s += &format!("mkdir -p {}\ntouch {}\n", q(&parent), q(&target));
            }
            s += &format!("mount --bind {} {}\n", q(&mnt.host_path), q(&target));
        }
        s += &format!("mount --rbind {} /etc\nexec", q(&etc.display().to_string()));
        for a in args {
            s += &format!(" {}", q(a));
        }
        let mut c = Command::new("unshare");
        c.arg("-rm")
            .arg("sh")
            .arg("-c")
            .arg(s + "\n")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("LD_LIBRARY_PATH", m.sim_lib_dir())
            .env("GPUSLICE_SIM_STATE", m.dir.join("sim-gpu"));
        for (k, v) in &resp.envs {
            if k != "LD_PRELOAD" || preload {
                c.env(k, v);
            }
        }
        c.stdout(Stdio::piped()).spawn().unwrap()
    }

    fn first_line(c: &mut Child) -> Value {
        let mut out = c.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8];
        while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)))
    }

    fn scrape(addr: std::net::SocketAddr) -> String {
        let t = Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                return out;
            }
            assert!(t.elapsed() < DEADLINE, "metrics server never came up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    struct Reap(Vec<Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    #[test]
    fn the_node_agent_kills_a_containers_unmanaged_process_and_counts_it() {
        assert!(
            namespaces_available(),
            "this test runs container processes in a private mount namespace (`unshare -rm`)"
        );
        let m = Machine::new("wd-node");
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
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let agent_log = m.dir.join("agent.log");
        let mut c = Command::new(gpuslice());
        c.args(["node", "--sim", "--no-kube", "--node-name", "node-a"])
            .arg("--socket-dir")
            .arg(&sockets)
            .arg("--cdi-dir")
            .arg(m.dir.join("cdi"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--assignments")
            .arg(&assignments)
            .arg("--pod-resources-socket")
            .arg(m.dir.join("pod-resources.sock"))
            .arg("--metrics-addr")
            .arg(addr.to_string())
            .env("GPUSLICE_COMPUTE_DIR", m.dir.join("compute"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap());
        m.env(&mut c);
        let mut procs = Reap(vec![c.spawn().unwrap()]);

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
        let decision = serde_json::json!({"pods": [{"namespace": "team", "name": "trainer", "uid": "uid-1",
            "assignment": {"version": 1, "node": "node-a", "containers": [
                {"name": "main", "gpus": [{"uuid": uuid, "memoryMiB": 1536, "computePercent": 50}]}]}}]});
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
        let etc = m.dir.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        if Path::new("/etc/ld.so.cache").exists() {
            std::fs::copy("/etc/ld.so.cache", etc.join("ld.so.cache")).unwrap();
        }

        // A governed process of the container, within its cap: left alone.
        let hold = |bytes: u64| vec![probe(), "hold".to_string(), bytes.to_string()];
        let mut good = container(&m, &resp, &etc, true, &hold(512 * MIB));
        let gv = first_line(&mut good);
        assert_eq!(gv["error"], 0, "{gv}");
        let good_pid = good.id();
        procs.0.push(good);
        // A process of the same container that does not load the interposer (no preload
        // file, no LD_PRELOAD): killed, whatever it holds.
        let mut bad = container(&m, &resp, &etc, false, &hold(256 * MIB));
        let bv = first_line(&mut bad);
        assert_eq!(bv["error"], 0, "{bv}");
        let bad_pid = bad.id();
        let took = wait_dead(bad_pid).expect("the unmanaged process is killed");
        eprintln!("node: unmanaged container process killed {took:?} after it held memory");
        assert!(took < ACT_BOUND, "took {took:?}");
        let status = bad.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // A host process on the GPU belongs to no tenant: reported, not killed (the default).
        let mut host = Command::new(probe());
        m.env(&mut host);
        host.args(["hold", &(64 * MIB).to_string()])
            .env("LD_LIBRARY_PATH", m.sim_lib_dir())
            .stdout(Stdio::piped());
        let mut host = host.spawn().unwrap();
        let hv = first_line(&mut host);
        assert_eq!(hv["error"], 0, "{hv}");
        let host_pid = host.id();
        procs.0.push(host);

        let t0 = Instant::now();
        let want_kill = format!(
            "gpuslice_watchdog_actions_total{{tenant=\"team.trainer.main\",gpu=\"{uuid}\",reason=\"unmanaged\",action=\"kill\"}} 1"
        );
        let want_report = format!(
            "gpuslice_watchdog_actions_total{{tenant=\"\",gpu=\"{uuid}\",reason=\"no-tenant\",action=\"report\"}} 1"
        );
        let body = loop {
            let body = scrape(addr);
            if body.contains(&want_kill) && body.contains(&want_report) {
                break body;
            }
            assert!(t0.elapsed() < DEADLINE, "{body}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            body.contains("# HELP gpuslice_watchdog_actions_total Processes the watchdog acted on"),
            "{body}"
        );
        // A few more rounds: the governed process and the host's are still there, and nothing
        // else was counted.
        std::thread::sleep(Duration::from_millis(800));
        assert!(!dead(good_pid) && !dead(host_pid));
        let body = scrape(addr);
        let actions: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("gpuslice_watchdog_actions_total{"))
            .collect();
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert!(
            body.contains(&want_kill) && body.contains(&want_report),
            "{body}"
        );

        let log = std::fs::read_to_string(&agent_log).unwrap();
        assert!(
            log.contains(&format!("killed pid {bad_pid} of tenant team.trainer.main")),
            "{log}"
        );
        let mut top = Command::new(gpuslice());
        top.args(["top", "--once", "--interval", "0.1"]);
        m.env(&mut top);
        let top = top.env("GPUSLICE_STATE_DIR", &state).output().unwrap();
        let top = String::from_utf8_lossy(&top.stdout);
        assert!(
            top.lines().any(|l| l.contains(&bad_pid.to_string())
                && l.contains("team.trainer.main")
                && l.contains("unmanaged")),
            "{top}"
        );
        assert!(
            top.lines()
                .any(|l| l.contains(&host_pid.to_string()) && l.contains("no-tenant")),
            "{top}"
        );

        // The container replaces its ledger (it is mounted writable) to shed its slots: its
        // processes still belong to it (the mount is the same) and now hold no live slot.
        let dir = state.join("tenants/team.trainer.main");
        std::fs::write(dir.join("junk"), vec![0u8; 4096]).unwrap();
        std::fs::rename(dir.join("junk"), dir.join("ledger")).unwrap();
        let took = wait_dead(good_pid).expect("the tenant's process is killed");
        assert!(took < ACT_BOUND, "took {took:?}");
        let t0 = Instant::now();
        let want = format!(
            "gpuslice_watchdog_actions_total{{tenant=\"team.trainer.main\",gpu=\"{uuid}\",reason=\"unmanaged\",action=\"kill\"}} 2"
        );
        loop {
            let body = scrape(addr);
            if body.contains(&want) {
                break;
            }
            assert!(t0.elapsed() < DEADLINE, "{body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_double_forked_orphan_stays_watched() {
    let m = Machine::new("wd-orphan");
    let out = m.dir.join("escape.json");
    // The subshell starts the escapee in the background and exits at once: the escapee is an
    // orphan, which the supervisor (a child subreaper) adopts instead of init.
    let script = format!(
        "( env -u LD_PRELOAD {} {} {} > {} & ); exec sleep 60",
        sh_quote(&escape_bin()),
        sh_quote(&artifact("libcuda.so")),
        1536 * MIB,
        sh_quote(&out),
    );
    let mut t = Tenant::start(&m, "wd-orphan", "1GiB", "kill", &script);
    let v = wait_json(&out);
    let pid = v["pid"].as_u64().unwrap() as u32;
    t.pids.push(pid);
    assert_eq!(v["error"], 0, "{v}");
    // Without the subreaper it would be init's, outside the tenant's tree, and never judged.
    let took = wait_dead(pid).expect("the orphan is killed");
    eprintln!("orphan: killed {took:?} after it held its memory");
    assert!(took < ACT_BOUND, "took {took:?}");
    // Its exit status is collected (by the supervisor, its parent now).
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            t0.elapsed() < DEADLINE,
            "the supervisor never reaped the orphan"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = t.finish();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("killed pid {pid} of tenant wd-orphan")),
        "{err}"
    );
}

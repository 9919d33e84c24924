//! The extender over a real socket with real extender JSON.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gpuslice_core::sched::Config;
use gpuslice_core::sched::sim::ClusterSpec;
use gpuslice_scheduler::extender::{BindTarget, Binder, BoxFuture, Clock, Extender, MemoryBinder};
use serde_json::{Value, json};

const CLUSTER: &str = r#"{"version": 1,
 "nodes": [
  {"name": "a", "gpus": [
    {"uuid": "a0", "index": 0, "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 80000, "sms": 132, "slices": 4, "mode": "shared"},
    {"uuid": "a1", "index": 1, "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 80000, "sms": 132, "slices": 4, "mode": "shared"}]},
  {"name": "b", "gpus": [
    {"uuid": "b0", "index": 0, "model": "NVIDIA A100-SXM4-40GB", "memoryMiB": 40000, "sms": 108, "slices": 4, "mode": "shared"}]}
 ],
 "pods": [{"namespace": "old", "name": "low", "uid": "u-low", "priority": 1, "node": "b",
           "containers": [{"name": "c", "gpus": [{"uuid": "b0", "memoryMiB": 30000, "computePercent": 50}]}]}],
 "quotas": [{"namespace": "capped", "gpuMemoryMiB": 10000}]
}"#;

struct Server {
    addr: SocketAddr,
    ext: Arc<Extender>,
}

fn start_with(binder: Arc<dyn Binder>, clock: Clock) -> Server {
    start_on(CLUSTER, binder, clock)
}

fn start_on(cluster: &str, binder: Arc<dyn Binder>, clock: Clock) -> Server {
    let cluster = ClusterSpec::parse(cluster).unwrap().build().unwrap();
    let ext = Arc::new(Extender::new(cluster, Config::default(), binder, clock));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let e = ext.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            gpuslice_scheduler::server::serve(l, e).await.unwrap();
        });
    });
    Server { addr, ext }
}

fn start() -> Server {
    start_with(
        Arc::new(MemoryBinder),
        gpuslice_scheduler::extender::system_clock(),
    )
}

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out[9..12].parse().unwrap();
    let (head, rest) = out.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (len, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(len.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

fn post(addr: SocketAddr, path: &str, v: &Value) -> Value {
    let (code, body) = http(addr, "POST", path, &v.to_string());
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn pod(name: &str, ns: &str, prio: i32, limits: Value, ann: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "annotations": ann},
           "spec": {"priority": prio, "containers": [{"name": "main", "resources": {"limits": limits}}]}})
}

fn slice(mem: u64) -> Value {
    json!({"gpuslice.io/gpu": "1", "gpuslice.io/gpu-memory": mem.to_string(), "nvidia.com/other": "0", "cpu": "500m"})
}

#[test]
fn filter_with_node_names_reports_passed_and_failed_with_reasons() {
    let s = start();
    let r = post(
        s.addr,
        "/filter",
        &json!({"Pod": pod("p", "ns", 0, slice(20000), json!({})), "NodeNames": ["a", "b", "ghost"]}),
    );
    assert_eq!(r["NodeNames"], json!(["a"]));
    assert!(r["Nodes"].is_null());
    assert!(
        r["FailedNodes"]["b"]
            .as_str()
            .unwrap()
            .contains("0 of 1 slices fit"),
        "{r}"
    );
    assert!(
        r["FailedAndUnresolvableNodes"]["ghost"]
            .as_str()
            .unwrap()
            .contains("inventory"),
        "{r}"
    );
    assert_eq!(r["Error"], "");
}

#[test]
fn filter_with_node_objects_echoes_the_passing_nodes() {
    let s = start();
    let nodes = json!({"metadata": {}, "items": [
        {"metadata": {"name": "a", "labels": {"x": "y"}}, "status": {}},
        {"metadata": {"name": "b"}}]});
    let r = post(
        s.addr,
        "/filter",
        &json!({"Pod": pod("p", "ns", 0, slice(20000), json!({})), "Nodes": nodes, "NodeNames": null}),
    );
    let items = r["Nodes"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["labels"]["x"], "y");
    assert!(r["NodeNames"].is_null());
}

#[test]
fn malformed_annotation_fails_filtering_naming_it() {
    let s = start();
    let p = pod(
        "p",
        "ns",
        0,
        slice(1000),
        json!({"gpuslice.io/gpu-policy": "tightly"}),
    );
    let r = post(s.addr, "/filter", &json!({"Pod": p, "NodeNames": ["a"]}));
    assert_eq!(r["NodeNames"], json!([]));
    let why = r["FailedAndUnresolvableNodes"]["a"].as_str().unwrap();
    assert!(
        why.contains("gpuslice.io/gpu-policy") && why.contains("binpack"),
        "{why}"
    );
    let p = pod(
        "p",
        "ns",
        0,
        json!({"gpuslice.io/gpu": "1", "gpuslice.io/gpu-compute": "250"}),
        json!({}),
    );
    let r = post(s.addr, "/filter", &json!({"Pod": p, "NodeNames": ["a"]}));
    assert!(
        r["FailedAndUnresolvableNodes"]["a"]
            .as_str()
            .unwrap()
            .contains("gpuslice.io/gpu-compute"),
        "{r}"
    );
}

#[test]
fn quota_failure_names_the_quota() {
    let s = start();
    let r = post(
        s.addr,
        "/filter",
        &json!({"Pod": pod("p", "capped", 0, slice(20000), json!({})), "NodeNames": ["a"]}),
    );
    let why = r["FailedNodes"]["a"].as_str().unwrap();
    assert!(
        why.contains("quota capped/gpu-memory") && why.contains("10000"),
        "{why}"
    );
}

#[test]
fn malformed_requests_get_400_with_the_reason() {
    let s = start();
    for (path, body, needle) in [
        ("/filter", "{not json", "not JSON"),
        ("/filter", "[]", "JSON object"),
        ("/filter", r#"{"NodeNames": ["a"]}"#, "ExtenderArgs.Pod"),
        (
            "/filter",
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "NodeNames": "a"}"#,
            "NodeNames must be an array",
        ),
        (
            "/filter",
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}}"#,
            "one of Nodes or NodeNames",
        ),
        (
            "/filter",
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "Nodes": 5}"#,
            "Nodes must be a v1.NodeList",
        ),
        (
            "/filter",
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "Nodes": [{"metadata": {"name": "a"}}]}"#,
            "Nodes must be a v1.NodeList",
        ),
        (
            "/prioritize",
            r#"{"Pod": {"metadata": {}, "spec": {}}, "NodeNames": []}"#,
            "metadata.name",
        ),
        (
            "/filter",
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"gpuslice.io/gpu": [1]}}}]}}, "NodeNames": []}"#,
            "quantity",
        ),
        (
            "/bind",
            r#"{"PodName": "p", "PodNamespace": "ns", "Node": "a"}"#,
            "PodUID",
        ),
        (
            "/preempt",
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}}"#,
            "NodeNameToVictims",
        ),
    ] {
        let (code, text) = http(s.addr, "POST", path, body);
        assert_eq!(code, 400, "{path} {body}: {text}");
        assert!(text.contains(needle), "{path} {body}: {text}");
    }
    let (code, text) = http(s.addr, "GET", "/healthz", "");
    assert_eq!((code, text.trim()), (200, "ok"));
}

#[test]
fn prioritize_scores_0_to_10_and_binpack_prefers_the_fuller_node() {
    let s = start();
    // Node b is 75 % full; a is empty. A small slice fits both; binpack prefers b.
    let p = pod("p", "ns", 0, slice(5000), json!({}));
    let r = post(
        s.addr,
        "/prioritize",
        &json!({"Pod": p, "NodeNames": ["a", "b", "ghost"]}),
    );
    let list = r.as_array().unwrap();
    let score = |h: &str| {
        list.iter().find(|e| e["Host"] == h).unwrap()["Score"]
            .as_i64()
            .unwrap()
    };
    assert!(
        list.iter()
            .all(|e| (0..=10).contains(&e["Score"].as_i64().unwrap()))
    );
    assert!(score("b") > score("a"), "{r}");
    assert_eq!(score("ghost"), 0);
    let p = pod(
        "p",
        "ns",
        0,
        slice(5000),
        json!({"gpuslice.io/node-policy": "spread"}),
    );
    let r = post(
        s.addr,
        "/prioritize",
        &json!({"Pod": p, "NodeNames": ["a", "b"]}),
    );
    let list = r.as_array().unwrap();
    let score = |h: &str| {
        list.iter().find(|e| e["Host"] == h).unwrap()["Score"]
            .as_i64()
            .unwrap()
    };
    assert!(score("a") > score("b"), "{r}");
}

#[test]
fn bind_records_the_assignment_and_a_second_bind_is_answered_by_where_the_pod_is() {
    let s = start();
    let p = pod(
        "p",
        "ns",
        0,
        json!({"gpuslice.io/gpu": "2", "gpuslice.io/gpu-compute": "30"}),
        json!({}),
    );
    post(s.addr, "/filter", &json!({"Pod": p, "NodeNames": ["a"]}));
    let b = json!({"PodName": "p", "PodNamespace": "ns", "PodUID": "uid-p", "Node": "a"});
    assert_eq!(post(s.addr, "/bind", &b), json!({"Error": ""}));
    {
        let st = s.ext.lock();
        let a = &st.cluster.pods["uid-p"].assignment;
        assert_eq!(a.node, "a");
        let gpus = &a.containers[0].gpus;
        assert_eq!(gpus.len(), 2);
        assert!(
            gpus.iter()
                .all(|g| g.compute_percent == 30 && g.memory_mib == 20000)
        );
    }
    // kube-scheduler may send the same bind again (its first answer lost): the pod is bound
    // there already, so that is success, and nothing is charged twice.
    let again = post(s.addr, "/bind", &b);
    assert_eq!(again, json!({"Error": ""}));
    let used = |s: &Server| -> Vec<u32> {
        let st = s.ext.lock();
        st.cluster
            .node("a")
            .unwrap()
            .usage
            .iter()
            .map(|u| u.compute as u32)
            .collect()
    };
    assert_eq!(used(&s), [30, 30]);
    // Asked to bind it elsewhere: an error that says where it is.
    let elsewhere = post(
        s.addr,
        "/bind",
        &json!({"PodName": "p", "PodNamespace": "ns", "PodUID": "uid-p", "Node": "b"}),
    );
    let e = elsewhere["Error"].as_str().unwrap();
    assert!(e.contains("already bound to node a"), "{elsewhere}");
    assert_eq!(used(&s), [30, 30]);
    // A bind for a pod the extender never filtered is refused, not guessed.
    let r = post(
        s.addr,
        "/bind",
        &json!({"PodName": "q", "PodNamespace": "ns", "PodUID": "uid-q", "Node": "a"}),
    );
    assert!(r["Error"].as_str().unwrap().contains("not seen"), "{r}");
}

/// The API server canonicalizes quantities: `gpu-memory: 16000` reaches the extender as `16k`
/// (and a user may write `1.6e4`). Both must schedule with the value they stand for.
#[test]
fn canonicalized_quantities_schedule_with_their_value() {
    let s = start();
    for (name, mem) in [("k", "16k"), ("e", "1.6e4")] {
        let p = pod(
            name,
            "ns",
            0,
            json!({"gpuslice.io/gpu": "1", "gpuslice.io/gpu-memory": mem}),
            json!({}),
        );
        let r = post(s.addr, "/filter", &json!({"Pod": p, "NodeNames": ["a"]}));
        assert_eq!(r["NodeNames"], json!(["a"]), "{mem}: {r}");
        let b = json!({"PodName": name, "PodNamespace": "ns", "PodUID": format!("uid-{name}"), "Node": "a"});
        assert_eq!(post(s.addr, "/bind", &b), json!({"Error": ""}), "{mem}");
        let st = s.ext.lock();
        let g = &st.cluster.pods[&format!("uid-{name}")]
            .assignment
            .containers[0]
            .gpus[0];
        assert_eq!(g.memory_mib, 16000, "{mem}");
    }
    // A fraction is refused for every node, naming the resource.
    let p = pod(
        "f",
        "ns",
        0,
        json!({"gpuslice.io/gpu": "1", "gpuslice.io/gpu-memory": "0.5"}),
        json!({}),
    );
    let r = post(s.addr, "/filter", &json!({"Pod": p, "NodeNames": ["a"]}));
    let why = r["FailedAndUnresolvableNodes"]["a"]
        .as_str()
        .unwrap_or_default()
        .to_string()
        + r["Error"].as_str().unwrap_or_default();
    assert!(why.contains("gpu-memory") && why.contains("0.5"), "{r}");
}

/// A binder that takes its time, so concurrent binds interleave.
struct SlowBinder;
impl Binder for SlowBinder {
    fn bind<'a>(&'a self, _t: &'a BindTarget) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok(())
        })
    }
}

#[test]
fn concurrent_binds_never_double_book() {
    let s = start_with(
        Arc::new(SlowBinder),
        gpuslice_scheduler::extender::system_clock(),
    );
    // 12 pods of 30 % compute each, all told node a fits: a has 2 GPUs → 3 per GPU at most.
    let n = 12;
    for i in 0..n {
        let p = pod(
            &format!("p{i}"),
            "ns",
            0,
            json!({"gpuslice.io/gpu": "1", "gpuslice.io/gpu-compute": "30", "gpuslice.io/gpu-memory": "1000"}),
            json!({}),
        );
        let r = post(s.addr, "/filter", &json!({"Pod": p, "NodeNames": ["a"]}));
        assert_eq!(r["NodeNames"], json!(["a"]));
    }
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let b = json!({"PodName": format!("p{i}"), "PodNamespace": "ns", "PodUID": format!("uid-p{i}"), "Node": "a"});
                post(addr, "/bind", &b)["Error"].as_str().unwrap().is_empty()
            })
        })
        .collect();
    let ok = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&b| b)
        .count();
    assert_eq!(ok, 6);
    let st = s.ext.lock();
    let node = st.cluster.node("a").unwrap();
    for u in &node.usage {
        assert_eq!(u.compute, 90);
    }
}

#[test]
fn gang_binds_all_or_nothing_and_partial_reservations_expire() {
    let now = Arc::new(AtomicU64::new(0));
    let n2 = now.clone();
    let s = start_with(
        Arc::new(MemoryBinder),
        Arc::new(move || n2.load(Ordering::SeqCst)),
    );
    let gang = json!({"gpuslice.io/gang": "train", "gpuslice.io/gang-size": "2", "gpuslice.io/gang-timeout-seconds": "30"});
    let member = |n: &str| {
        pod(
            n,
            "ml",
            0,
            json!({"gpuslice.io/gpu": "2", "gpuslice.io/gpu-memory": "60000"}),
            gang.clone(),
        )
    };
    let bind = |n: &str, node: &str| {
        post(
            s.addr,
            "/bind",
            &json!({"PodName": n, "PodNamespace": "ml", "PodUID": format!("uid-{n}"), "Node": node}),
        )
    };
    post(
        s.addr,
        "/filter",
        &json!({"Pod": member("w0"), "NodeNames": ["a", "b"]}),
    );
    let r = bind("w0", "a");
    assert!(
        r["Error"].as_str().unwrap().contains("1 of 2 members"),
        "{r}"
    );
    // The reservation holds node a: another pod does not get its memory.
    let other = pod("x", "ns", 0, slice(30000), json!({}));
    let f = post(
        s.addr,
        "/filter",
        &json!({"Pod": other, "NodeNames": ["a"]}),
    );
    assert_eq!(f["NodeNames"], json!([]), "{f}");
    // The deadline passes: the reservation is released and x fits again.
    now.store(31_000, Ordering::SeqCst);
    let f = post(
        s.addr,
        "/filter",
        &json!({"Pod": other, "NodeNames": ["a"]}),
    );
    assert_eq!(f["NodeNames"], json!(["a"]), "{f}");
    assert!(!s.ext.lock().cluster.pods.contains_key("uid-w0"));
    // Second attempt: both members arrive before the deadline.
    post(
        s.addr,
        "/filter",
        &json!({"Pod": member("w0"), "NodeNames": ["a"]}),
    );
    assert!(
        bind("w0", "a")["Error"]
            .as_str()
            .unwrap()
            .contains("waiting")
    );
    // A retried filter for a reserved member passes only its node.
    let f = post(
        s.addr,
        "/filter",
        &json!({"Pod": member("w0"), "NodeNames": ["a", "b"]}),
    );
    assert_eq!(f["NodeNames"], json!(["a"]), "{f}");
    assert!(
        bind("w0", "a")["Error"]
            .as_str()
            .unwrap()
            .contains("1 of 2")
    );
    let small = |n: &str| {
        pod(
            n,
            "ml",
            0,
            json!({"gpuslice.io/gpu": "1", "gpuslice.io/gpu-memory": "5000"}),
            gang.clone(),
        )
    };
    post(
        s.addr,
        "/filter",
        &json!({"Pod": small("w1"), "NodeNames": ["b"]}),
    );
    assert_eq!(bind("w1", "b"), json!({"Error": ""}));
    let st = s.ext.lock();
    assert_eq!(st.cluster.pods["uid-w0"].assignment.node, "a");
    assert_eq!(st.cluster.pods["uid-w1"].assignment.node, "b");
    assert_eq!(st.gangs.waiting().count(), 0);
}

#[test]
fn preempt_returns_lower_priority_victims_only() {
    let s = start();
    let hi = pod("hi", "ns", 10, slice(30000), json!({}));
    let r = post(
        s.addr,
        "/preempt",
        &json!({"Pod": hi, "NodeNameToMetaVictims": {"b": {"Pods": [], "NumPDBViolations": 0}}}),
    );
    assert_eq!(
        r["NodeNameToMetaVictims"]["b"]["Pods"],
        json!([{"UID": "u-low"}]),
        "{r}"
    );
    let lo = pod("lo", "ns", 0, slice(30000), json!({}));
    let r = post(
        s.addr,
        "/preempt",
        &json!({"Pod": lo, "NodeNameToVictims": {"b": {"Pods": [], "NumPDBViolations": 0}}}),
    );
    assert_eq!(r["NodeNameToMetaVictims"], json!({}), "{r}");
}

#[test]
fn fair_share_holds_back_a_dominant_namespace_while_another_waits() {
    let s = start();
    let big = |n: &str, slices: &str, mem: &str| {
        pod(
            n,
            "big",
            0,
            json!({"gpuslice.io/gpu": slices, "gpuslice.io/gpu-memory": mem}),
            json!({}),
        )
    };
    post(
        s.addr,
        "/filter",
        &json!({"Pod": big("big1", "2", "70000"), "NodeNames": ["a", "b"]}),
    );
    let r = post(
        s.addr,
        "/bind",
        &json!({"PodName": "big1", "PodNamespace": "big", "PodUID": "uid-big1", "Node": "a"}),
    );
    assert_eq!(r["Error"], "");
    // Before anyone waits, "big" may take more.
    let f = post(
        s.addr,
        "/filter",
        &json!({"Pod": big("big2", "1", "5000"), "NodeNames": ["a", "b"]}),
    );
    assert_eq!(f["NodeNames"].as_array().unwrap().len(), 2, "{f}");
    // A "small" pod finds no room and waits; now "big", far above its share, is held back.
    let f = post(
        s.addr,
        "/filter",
        &json!({"Pod": pod("s1", "small", 0, slice(50000), json!({})), "NodeNames": ["a", "b"]}),
    );
    assert_eq!(f["NodeNames"], json!([]));
    let f = post(
        s.addr,
        "/filter",
        &json!({"Pod": big("big2", "1", "5000"), "NodeNames": ["a", "b"]}),
    );
    assert_eq!(f["NodeNames"], json!([]), "{f}");
    let why = f["FailedNodes"]["a"].as_str().unwrap();
    assert!(
        why.contains("fair share") && why.contains("namespace small waits"),
        "{why}"
    );
}

/// An H100 in MIG mode as two 3g.40gb (at memory slices 0 and 4), the one at 0 in use.
const MIG_CLUSTER: &str = r#"{"version": 1,
 "nodes": [{"name": "m", "gpus": [
    {"uuid": "GPU-m", "index": 0, "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559, "sms": 132, "slices": 1, "mode": "mig",
     "mig": [{"uuid": "MIG-m0", "profile": "3g.40gb", "memoryMiB": 40448, "sms": 60, "start": 0},
             {"uuid": "MIG-m4", "profile": "3g.40gb", "memoryMiB": 40448, "sms": 60, "start": 4}]}]}],
 "pods": [{"namespace": "ns", "name": "busy", "uid": "uid-busy", "node": "m",
           "containers": [{"name": "c", "gpus": [{"uuid": "MIG-m0", "memoryMiB": 40448, "computePercent": 100, "exclusive": true, "mig": "3g.40gb"}]}]}]
}"#;

fn get(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = http(addr, "GET", path, "");
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn mig_hint_suggests_a_layout_for_pods_refused_for_lack_of_mig_devices() {
    let s = start_on(
        MIG_CLUSTER,
        Arc::new(MemoryBinder),
        gpuslice_scheduler::extender::system_clock(),
    );
    assert_eq!(
        get(s.addr, "/mig-hint"),
        json!({"pendingPods": 0, "hints": []})
    );

    let small = pod(
        "small",
        "ns",
        0,
        json!({"gpuslice.io/mig-1g.10gb": "2"}),
        json!({}),
    );
    let r = post(
        s.addr,
        "/filter",
        &json!({"Pod": small, "NodeNames": ["m"]}),
    );
    assert_eq!(r["NodeNames"], json!([]), "{r}");
    let h = get(s.addr, "/mig-hint");
    assert_eq!(h["pendingPods"], 1, "{h}");
    let hint = &h["hints"][0];
    assert_eq!(
        (hint["node"].as_str(), hint["gpu"].as_str()),
        (Some("m"), Some("GPU-m")),
        "{h}"
    );
    assert_eq!(hint["demand"], json!({"1g.10gb": 2}), "{h}");
    assert_eq!(hint["plan"]["feasible"], true, "{h}");
    // Only the free 3g.40gb at slice 4 may go; the one in use stays.
    assert_eq!(
        hint["plan"]["destroy"],
        json!([{"profile": "3g.40gb", "start": 4, "size": 4}]),
        "{h}"
    );
    let create = hint["create"].as_array().unwrap();
    assert_eq!(create.len(), 2, "{h}");
    for c in create {
        assert_eq!(c["profile"], "1g.10gb");
        assert!(c["start"].as_u64().unwrap() >= 4, "{h}");
    }

    // A pod the free device serves is not pending; once it is bound, both 3g.40gb are in
    // use and nothing may be destroyed, so there is no suggestion left.
    let big = pod(
        "big",
        "ns",
        0,
        json!({"gpuslice.io/mig-3g.40gb": "1"}),
        json!({}),
    );
    let r = post(s.addr, "/filter", &json!({"Pod": big, "NodeNames": ["m"]}));
    assert_eq!(r["NodeNames"], json!(["m"]), "{r}");
    let b = json!({"PodName": "big", "PodNamespace": "ns", "PodUID": "uid-big", "Node": "m"});
    assert_eq!(post(s.addr, "/bind", &b), json!({"Error": ""}));
    assert_eq!(
        get(s.addr, "/mig-hint"),
        json!({"pendingPods": 1, "hints": []})
    );
}

/// Over a cluster large enough to be fitted on two threads, with names in an order unlike the
/// cluster's and one unknown name, filter and prioritize decide node by node exactly as the
/// full fit does.
#[test]
fn filter_over_a_large_cluster_decides_each_node_like_the_full_fit() {
    use gpuslice_core::sched::{Candidate, PodSpec, fit_node};
    let mut cluster = gpuslice_scheduler::bench::half_full_cluster(1500, 1, true);
    for n in (0..1500).step_by(3) {
        cluster.remove_pod(&format!("pod-{n}-0"));
    }
    let mut names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    names.reverse();
    names.insert(700, "no-such-node".into());
    let ext = Extender::new(
        cluster,
        Config {
            fair_share: false,
            ..Config::default()
        },
        Arc::new(MemoryBinder),
        gpuslice_scheduler::extender::system_clock(),
    );
    let pod = PodSpec::parse(
        "u-big",
        "ns",
        "big",
        0,
        [(
            "main",
            vec![
                ("gpuslice.io/gpu", "1"),
                ("gpuslice.io/gpu-memory", "60000"),
            ],
        )],
        [],
    )
    .unwrap();
    let out = ext.filter(&pod, &names);
    assert_eq!(out.passed.len(), 500);
    let failed = out.failed_by_name(&names, Some(&pod));
    assert_eq!(failed.len(), 1000);
    assert!(
        out.unresolvable_by_name(&names, Some(&pod))
            .contains_key("no-such-node")
    );
    let passing: Vec<String> = out.passed.iter().map(|&k| names[k].clone()).collect();
    let scores = ext.prioritize(&pod, &passing);
    let st = ext.lock();
    let cand = Candidate::new(&st.cluster, &pod, &st.cfg);
    for (k, name) in names.iter().enumerate() {
        let Some(node) = st.cluster.node(name) else {
            continue;
        };
        match fit_node(node, &cand) {
            Ok(f) => {
                let p = out.passed.iter().position(|&x| x == k).expect("passed");
                assert_eq!(scores[p], f.score10(), "{name}");
            }
            Err(e) => assert_eq!(failed.get(name), Some(&e), "{name}"),
        }
    }
}

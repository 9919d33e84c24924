//! Watch and bind through kube-rs against a small fake API server that speaks the real
//! Kubernetes JSON shapes (lists, newline-delimited watch events, merge patches with a
//! resourceVersion precondition, the pods/binding subresource).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gpuslice_core::protocol::{ANNOTATION_ASSIGNMENT, Assignment};
use gpuslice_core::sched::{Cluster, Config, PodSpec};
use gpuslice_scheduler::extender::{Extender, system_clock};
use gpuslice_scheduler::kube::{KubeBinder, watch_nodes, watch_pods};
use serde_json::{Value, json};

#[derive(Default)]
struct Fake {
    rv: u64,
    pods: BTreeMap<String, Value>,
    conflicts_left: u32,
    patches: u32,
    bindings: Vec<Value>,
}

type S = Arc<Mutex<Fake>>;

fn inventory(prefix: &str) -> String {
    json!({"version": 1, "gpus": [
        {"uuid": format!("{prefix}-g0"), "index": 0, "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 80000, "sms": 132, "slices": 4, "mode": "shared"}]})
    .to_string()
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": "1",
        "annotations": {"gpuslice.io/inventory": inventory(name)}}})
}

fn assigned_pod(name: &str, node: &str, mem: u64) -> Value {
    let a = json!({"version": 1, "node": node, "containers": [{"name": "c", "gpus": [{"uuid": format!("{node}-g0"), "memoryMiB": mem, "computePercent": 25}]}]});
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "1",
                     "annotations": {"gpuslice.io/assignment": a.to_string()}},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running"}})
}

fn json_reply(code: StatusCode, v: Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn is_watch(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

async fn nodes(uri: Uri) -> Response {
    if is_watch(&uri) {
        // One event, then the stream ends (the watcher relists).
        let ev = json!({"type": "ADDED", "object": node("n2")});
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            format!("{ev}\n"),
        )
            .into_response();
    }
    json_reply(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "10"}, "items": [node("n1")]}),
    )
}

async fn pods(State(s): State<S>, uri: Uri) -> Response {
    if is_watch(&uri) {
        let ev = json!({"type": "MODIFIED", "object": assigned_pod("late", "n2", 30000)});
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            format!("{ev}\n"),
        )
            .into_response();
    }
    let mut items = vec![assigned_pod("early", "n1", 50000)];
    items.extend(s.lock().unwrap().pods.values().cloned());
    json_reply(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"}, "items": items}),
    )
}

async fn get_pod(State(s): State<S>, Path((_ns, name)): Path<(String, String)>) -> Response {
    match s.lock().unwrap().pods.get(&name) {
        Some(p) => json_reply(StatusCode::OK, p.clone()),
        None => json_reply(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
    }
}

async fn patch_pod(
    State(s): State<S>,
    Path((_ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let patch: Value = serde_json::from_slice(&body).unwrap();
    let mut f = s.lock().unwrap();
    f.patches += 1;
    if f.conflicts_left > 0 {
        // Someone else updated the pod in between.
        f.conflicts_left -= 1;
        f.rv += 1;
        let rv = f.rv.to_string();
        f.pods.get_mut(&name).unwrap()["metadata"]["resourceVersion"] = json!(rv);
    }
    let rv = f.rv.to_string();
    let pod = f.pods.get_mut(&name).unwrap();
    if patch["metadata"]["resourceVersion"] != pod["metadata"]["resourceVersion"] {
        return json_reply(
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
            "message": "Operation cannot be fulfilled on pods: the object has been modified"}),
        );
    }
    for (k, v) in patch["metadata"]["annotations"].as_object().unwrap() {
        pod["metadata"]["annotations"][k] = v.clone();
    }
    pod["metadata"]["resourceVersion"] = json!(rv);
    json_reply(StatusCode::OK, pod.clone())
}

async fn bind_pod(
    State(s): State<S>,
    Path((_ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let b: Value = serde_json::from_slice(&body).unwrap();
    let mut f = s.lock().unwrap();
    let pod = f.pods.get_mut(&name).unwrap();
    if !pod["spec"]["nodeName"].is_null() {
        return json_reply(
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "pod is already assigned"}),
        );
    }
    pod["spec"]["nodeName"] = b["target"]["name"].clone();
    f.bindings.push(b);
    json_reply(
        StatusCode::CREATED,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
    )
}

fn start_fake(s: S) -> String {
    let app = Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/pods", get(pods))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(get_pod).patch(patch_pod),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/binding",
            post(bind_pod),
        )
        .with_state(s);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            axum::serve(tokio::net::TcpListener::from_std(l).unwrap(), app)
                .await
                .unwrap();
        });
    });
    format!("http://{addr}")
}

fn client(url: &str) -> kube::Client {
    let cfg = kube::Config::new(url.parse().unwrap());
    kube::Client::try_from(cfg).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn watch_builds_the_cluster_from_inventories_and_assignments() {
    let fake: S = Default::default();
    let url = start_fake(fake.clone());
    let ext = Arc::new(Extender::new(
        Cluster::new(),
        Config::default(),
        Arc::new(gpuslice_scheduler::extender::MemoryBinder),
        system_clock(),
    ));
    rt().block_on(async {
        let c = client(&url);
        tokio::spawn(watch_nodes(c.clone(), ext.clone()));
        tokio::spawn(watch_pods(c, ext.clone()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let st = ext.lock();
                let ready = st.cluster.node("n1").is_some()
                    && st.cluster.node("n2").is_some()
                    && st.cluster.pods.contains_key("uid-early")
                    && st.cluster.pods.contains_key("uid-late");
                if ready {
                    assert_eq!(st.cluster.node("n1").unwrap().usage[0].memory_mib, 50000);
                    assert_eq!(st.cluster.node("n2").unwrap().usage[0].memory_mib, 30000);
                    assert_eq!(st.cluster.node("n1").unwrap().gpus[0].info.uuid, "n1-g0");
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "watch did not deliver nodes and pods"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

fn pending_pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "5", "annotations": {}},
        "spec": {"containers": [{"name": "c"}]}})
}

fn extender_on(url: &str) -> Extender {
    let mut c = Cluster::new();
    c.upsert_node(
        "n1",
        &gpuslice_core::protocol::Inventory::parse(&inventory("n1")).unwrap(),
    );
    Extender::new(
        c,
        Config::default(),
        Arc::new(KubeBinder {
            client: client(url),
        }),
        system_clock(),
    )
}

fn slice_pod(name: &str) -> PodSpec {
    PodSpec::parse(
        &format!("uid-{name}"),
        "ns",
        name,
        0,
        [(
            "c",
            vec![
                ("gpuslice.io/gpu", "1"),
                ("gpuslice.io/gpu-memory", "20000"),
            ],
        )],
        [],
    )
    .unwrap()
}

#[test]
fn bind_writes_the_assignment_with_a_precondition_then_creates_the_binding() {
    let fake: S = Default::default();
    {
        let mut f = fake.lock().unwrap();
        f.rv = 5;
        f.pods.insert("p".into(), pending_pod("p"));
        f.conflicts_left = 1;
    }
    let url = start_fake(fake.clone());
    let rt = rt();
    let _in_rt = rt.enter();
    let ext = extender_on(&url);
    let out = ext.filter(&slice_pod("p"), &["n1"]);
    assert_eq!(out.passed, vec![0]);
    rt.block_on(async { ext.bind("ns", "p", "uid-p", "n1").await })
        .unwrap();
    let f = fake.lock().unwrap();
    // The first patch lost the race and was retried against the fresh resourceVersion.
    assert_eq!(f.patches, 2);
    let a = Assignment::parse(
        f.pods["p"]["metadata"]["annotations"][ANNOTATION_ASSIGNMENT]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(a.node, "n1");
    assert_eq!(a.containers[0].gpus[0].memory_mib, 20000);
    assert_eq!(f.bindings.len(), 1);
    let b = &f.bindings[0];
    assert_eq!(
        (
            b["kind"].as_str(),
            b["target"]["kind"].as_str(),
            b["target"]["name"].as_str()
        ),
        (Some("Binding"), Some("Node"), Some("n1"))
    );
    assert_eq!(b["metadata"]["uid"], "uid-p");
    assert_eq!(
        ext.lock().cluster.node("n1").unwrap().usage[0].memory_mib,
        20000
    );
}

#[test]
fn a_pod_bound_elsewhere_is_reported_and_its_devices_given_back() {
    let fake: S = Default::default();
    {
        let mut f = fake.lock().unwrap();
        let mut p = pending_pod("q");
        p["spec"]["nodeName"] = json!("other");
        f.pods.insert("q".into(), p);
    }
    let url = start_fake(fake.clone());
    let rt = rt();
    let _in_rt = rt.enter();
    let ext = extender_on(&url);
    ext.filter(&slice_pod("q"), &["n1"]);
    let e = rt
        .block_on(async { ext.bind("ns", "q", "uid-q", "n1").await })
        .unwrap_err();
    assert!(e.contains("already bound to other"), "{e}");
    assert_eq!(fake.lock().unwrap().bindings.len(), 0);
    let st = ext.lock();
    assert_eq!(st.cluster.node("n1").unwrap().usage[0].memory_mib, 0);
    assert!(!st.cluster.pods.contains_key("uid-q"));
}

/// Against a real cluster, only when KUBECONFIG is set: list nodes through the same client.
#[test]
#[ignore = "needs a real cluster (set KUBECONFIG and run with --ignored)"]
fn real_cluster_lists_nodes() {
    let Some(path) = std::env::var_os("KUBECONFIG") else {
        return;
    };
    rt().block_on(async {
        let c = gpuslice_scheduler::kube::client(Some(std::path::Path::new(&path)))
            .await
            .unwrap();
        let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(c);
        api.list(&Default::default()).await.unwrap();
    });
}

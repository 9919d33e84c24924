//! The extender's HTTP face: `POST /filter`, `/prioritize`, `/bind`, `/preempt`, `GET /healthz`,
//! `GET /mig-hint` (MIG layouts that would fit the pods refused for lack of MIG devices).
//! Unreadable requests get 400 with the reason; decisions about readable pods are always 200
//! with the extender's own error fields.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::extender::Extender;
use crate::wire::{self, BadRequest};

fn reply(code: StatusCode, v: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn bad(e: BadRequest) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{e}\n"),
    )
        .into_response()
}

pub fn router(ext: Arc<Extender>) -> Router {
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .route("/bind", post(bind))
        .route("/preempt", post(preempt))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/mig-hint", get(mig_hint))
        .with_state(ext)
}

async fn filter(State(ext): State<Arc<Extender>>, body: Bytes) -> Response {
    let r = (|| {
        let args = wire::parse_body(&body)?;
        let (_, pod) = wire::pod(args.get("Pod"), "ExtenderArgs.Pod")?;
        let (names, objects) = wire::node_names(&args)?;
        Ok::<_, BadRequest>((pod, names, objects))
    })();
    let (pod, names, objects) = match r {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let out = match pod {
        Ok(pod) => ext.filter(pod, &names),
        Err(reason) => Extender::refuse_all(&names, &reason),
    };
    let passed: Vec<&str> = out.passed.iter().map(|&k| names[k].as_str()).collect();
    reply(
        StatusCode::OK,
        wire::filter_result(
            &passed,
            objects.as_deref(),
            &out.failed,
            &out.unresolvable,
            "",
        ),
    )
}

async fn prioritize(State(ext): State<Arc<Extender>>, body: Bytes) -> Response {
    let r = (|| {
        let args = wire::parse_body(&body)?;
        let (_, pod) = wire::pod(args.get("Pod"), "ExtenderArgs.Pod")?;
        let (names, _) = wire::node_names(&args)?;
        Ok::<_, BadRequest>((pod, names))
    })();
    let (pod, names) = match r {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let scores = match pod {
        Ok(pod) => ext.prioritize(&pod, &names),
        Err(_) => vec![0; names.len()],
    };
    let list: Vec<Value> = names
        .iter()
        .zip(scores)
        .map(|(h, s)| json!({"Host": h, "Score": s}))
        .collect();
    reply(StatusCode::OK, Value::Array(list))
}

async fn bind(State(ext): State<Arc<Extender>>, body: Bytes) -> Response {
    let args = match wire::parse_body(&body).and_then(|v| wire::binding_args(&v)) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let error = match ext
        .bind(
            &args.pod_namespace,
            &args.pod_name,
            &args.pod_uid,
            &args.node,
        )
        .await
    {
        Ok(()) => String::new(),
        Err(e) => e,
    };
    reply(StatusCode::OK, json!({"Error": error}))
}

async fn preempt(State(ext): State<Arc<Extender>>, body: Bytes) -> Response {
    let r = (|| {
        let args = wire::parse_body(&body)?;
        let (_, pod) = wire::pod(args.get("Pod"), "ExtenderPreemptionArgs.Pod")?;
        let proposed = wire::proposed_victims(&args)?;
        Ok::<_, BadRequest>((pod, proposed))
    })();
    let (pod, proposed) = match r {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let chosen = match pod {
        Ok(pod) => ext.preempt(&pod, &proposed),
        Err(_) => Default::default(),
    };
    let m: serde_json::Map<String, Value> = chosen
        .into_iter()
        .map(|(n, (uids, pdb))| {
            let pods: Vec<Value> = uids.into_iter().map(|u| json!({"UID": u})).collect();
            (n, json!({"Pods": pods, "NumPDBViolations": pdb}))
        })
        .collect();
    reply(StatusCode::OK, json!({"NodeNameToMetaVictims": m}))
}

async fn mig_hint(State(ext): State<Arc<Extender>>) -> Response {
    let (pending, hints) = ext.mig_hint();
    reply(
        StatusCode::OK,
        json!({"pendingPods": pending, "hints": hints}),
    )
}

/// Serves until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, ext: Arc<Extender>) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Replies are written in pieces; without NODELAY, Nagle holds the tail until the client's
    // delayed ACK, adding tens of milliseconds to a filter kube-scheduler waits on.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(ext)).await
}

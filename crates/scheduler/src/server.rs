//! The extender's HTTP face: `POST /filter`, `/prioritize`, `/bind`, `/preempt`, `GET /healthz`,
//! `GET /mig-hint` (MIG layouts that would fit the pods refused for lack of MIG devices).
//! Unreadable requests get 400 with the reason; decisions about readable pods are always 200
//! with the extender's own error fields.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
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

fn json_bytes(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
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

/// The largest request read: 10,000 Node objects of 25 KB each.
pub const MAX_BODY_BYTES: usize = 256 << 20;

pub fn router(ext: Arc<Extender>) -> Router {
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .route("/bind", post(bind))
        .route("/preempt", post(preempt))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/mig-hint", get(mig_hint))
        // Without nodeCacheCapable every request carries all candidate Node objects: tens of
        // megabytes on a large cluster, far past axum's 2 MB default.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ext)
}

async fn filter(State(ext): State<Arc<Extender>>, body: Bytes) -> Response {
    let args = match wire::extender_args(&body) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let out = match &args.pod {
        Ok(pod) => ext.filter(pod, &args.names),
        Err(reason) => Extender::refuse_all(args.names.len(), reason),
    };
    let mut buf = Vec::with_capacity(64 + args.names.len() * 24);
    wire::write_filter_result(
        &mut buf,
        &args.names,
        args.items.as_deref(),
        &out,
        args.pod.as_ref().ok(),
    );
    json_bytes(buf)
}

async fn prioritize(State(ext): State<Arc<Extender>>, body: Bytes) -> Response {
    let args = match wire::extender_args(&body) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let scores = match &args.pod {
        Ok(pod) => ext.prioritize(pod, &args.names),
        Err(_) => vec![0; args.names.len()],
    };
    let mut buf = Vec::with_capacity(2 + args.names.len() * 40);
    wire::write_priorities(&mut buf, &args.names, &scores);
    json_bytes(buf)
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

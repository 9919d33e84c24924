//! The mutating admission webhook that routes pods to the gpuslice scheduler: `POST
//! /mutate-pods` (AdmissionReview `admission.k8s.io/v1`) and `GET /healthz`, over HTTPS on a
//! listener of its own (the API server only calls webhooks over TLS).
//!
//! A pod created with a `gpuslice.io/` resource in any container or init container, whose
//! `schedulerName` is empty or `default-scheduler`, gets a JSONPatch that names the gpuslice
//! scheduler. A pod that names some other scheduler is left alone with a warning. Every pod is
//! allowed: the webhook routes, it never judges.
//!
//! With HAMi compatibility on ([`Compat::hami`], `--webhook-compat hami`), a pod written for
//! HAMi (`nvidia.com/gpu` with `nvidia.com/gpumem` and `nvidia.com/gpucores`, HAMi's
//! annotations) is rewritten into the gpuslice request that means the same
//! (`gpuslice_core::compat`) and then routed like any gpuslice pod. One that asks for what
//! gpuslice does not offer is denied, naming the field, rather than run without it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use gpuslice_core::compat;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

/// The scheduler pods are routed to unless `--webhook-scheduler-name` says otherwise: the
/// profile of the KubeSchedulerConfiguration shipped in `deploy/scheduler`.
pub const DEFAULT_SCHEDULER_NAME: &str = "gpuslice-scheduler";
/// Where the API server posts AdmissionReviews.
pub const PATH: &str = "/mutate-pods";
/// The name kube-apiserver defaults an empty `schedulerName` to.
const KUBE_DEFAULT_SCHEDULER: &str = "default-scheduler";
const PREFIX: &str = "gpuslice.io/";
/// An AdmissionReview carries one object; etcd refuses objects past 1.5 MiB, so a few MiB
/// leaves room for the review around it.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// What the webhook does with one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Not a gpuslice pod, or already on the gpuslice scheduler: no change.
    Leave,
    /// Set `spec.schedulerName` to the gpuslice scheduler.
    SetScheduler,
    /// A gpuslice pod that names another scheduler: no change, the warning says why that is
    /// probably wrong.
    Warn(String),
}

fn mentions_gpuslice(c: &Container) -> bool {
    c.resources.as_ref().is_some_and(|r| {
        [&r.requests, &r.limits]
            .into_iter()
            .flatten()
            .any(|m| m.keys().any(|k| k.starts_with(PREFIX)))
    })
}

/// Whether any container or init container requests or limits a `gpuslice.io/` resource.
/// Pod annotations alone do not count: they only steer a pod that asks for GPUs (the
/// extender is called only for pods with gpuslice resources), so routing on them would hand
/// plain pods to a second scheduler for nothing.
pub fn wants_gpuslice(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(mentions_gpuslice)
    })
}

/// Decides one pod; `scheduler` is the gpuslice scheduler's name.
pub fn route(pod: &Pod, scheduler: &str) -> Route {
    if !wants_gpuslice(pod) {
        return Route::Leave;
    }
    let named = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("");
    if named == scheduler {
        Route::Leave
    } else if named.is_empty() || named == KUBE_DEFAULT_SCHEDULER {
        Route::SetScheduler
    } else {
        // Kept short: clients may truncate warnings past 120 characters.
        Route::Warn(format!(
            "pod asks for gpuslice.io resources but names scheduler {named:?}, not {scheduler:?}"
        ))
    }
}

/// Pods written for other systems that the webhook rewrites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compat {
    pub hami: bool,
}

fn resource_maps(
    c: &mut Container,
) -> [(&'static str, Option<&mut BTreeMap<String, Quantity>>); 2] {
    let r = c.resources.get_or_insert_with(Default::default);
    [
        ("limits", r.limits.as_mut()),
        ("requests", r.requests.as_mut()),
    ]
}

/// Rewrites a HAMi pod in place into its gpuslice request; the JSONPatch operations that do
/// the same to the object as sent. No operations for a pod with nothing of HAMi's.
pub fn hami_rewrite(pod: &mut Pod) -> Result<Vec<Value>, String> {
    let mut ops = Vec::new();
    if let Some(spec) = pod.spec.as_mut() {
        let lists = [
            ("containers", Some(&mut spec.containers)),
            ("initContainers", spec.init_containers.as_mut()),
        ];
        for (list, cs) in lists {
            for (i, c) in cs.into_iter().flatten().enumerate() {
                for (which, m) in resource_maps(c) {
                    let Some(m) = m else { continue };
                    let plain: BTreeMap<String, String> =
                        m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
                    let field = format!("spec.{list}[{i}].resources.{which}");
                    let Some(new) =
                        compat::hami_resources(&field, &plain).map_err(|e| e.to_string())?
                    else {
                        continue;
                    };
                    *m = new
                        .iter()
                        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                        .collect();
                    ops.push(json!({"op": "add", "path": format!("/spec/{list}/{i}/resources/{which}"), "value": new}));
                }
            }
        }
    }
    let ann = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    let plain: BTreeMap<String, String> = ann.clone().into_iter().collect();
    let ours = compat::hami_annotations(&plain).map_err(|e| e.to_string())?;
    if !ours.is_empty() {
        ann.extend(ours);
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": ann}));
    }
    Ok(ops)
}

/// The JSONPatch that routes a pod. `add` also replaces a member that is already there,
/// which the defaulted `default-scheduler` always is.
pub fn patch(scheduler: &str) -> Value {
    json!([{"op": "add", "path": "/spec/schedulerName", "value": scheduler}])
}

/// An AdmissionReview that cannot be answered; the HTTP reply is 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadReview {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> BadReview {
    BadReview {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Answers one AdmissionReview body with the AdmissionReview to send back.
pub fn review(body: &[u8], scheduler: &str, compat: Compat) -> Result<Value, BadReview> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let rev: AdmissionReview<DynamicObject> =
        serde_path_to_error::deserialize(de).map_err(|e| {
            bad(
                format!("AdmissionReview.{}", e.path()),
                e.inner().to_string(),
            )
        })?;
    if rev.types.kind != META_KIND || rev.types.api_version != META_API_VERSION_V1 {
        return Err(bad(
            "AdmissionReview.apiVersion/kind",
            format!(
                "got {}/{}; accepted: {META_API_VERSION_V1}/{META_KIND}",
                rev.types.api_version, rev.types.kind
            ),
        ));
    }
    let req: AdmissionRequest<DynamicObject> = rev
        .try_into()
        .map_err(|_| bad("AdmissionReview.request", "missing"))?;
    let mut resp = AdmissionResponse::from(&req);
    let is_pod = req.kind.group.is_empty() && req.kind.version == "v1" && req.kind.kind == "Pod";
    // schedulerName is immutable after creation; only a new pod can be routed.
    if is_pod && req.operation == Operation::Create && req.sub_resource.is_none() {
        let obj = req
            .object
            .as_ref()
            .ok_or_else(|| bad("AdmissionReview.request.object", "missing on CREATE"))?;
        let v = serde_json::to_value(obj)
            .map_err(|e| bad("AdmissionReview.request.object", e.to_string()))?;
        let mut pod: Pod = serde_path_to_error::deserialize(v).map_err(|e| {
            bad(
                format!("AdmissionReview.request.object.{}", e.path()),
                e.inner().to_string(),
            )
        })?;
        let mut ops = Vec::new();
        if compat.hami {
            match hami_rewrite(&mut pod) {
                Ok(o) => ops = o,
                Err(e) => {
                    let mut out =
                        serde_json::to_value(resp.deny(format!("HAMi pod: {e}")).into_review())
                            .expect("an AdmissionReview serializes");
                    out["response"].as_object_mut().map(|r| r.remove("patch"));
                    return Ok(out);
                }
            }
        }
        match route(&pod, scheduler) {
            Route::Leave => {}
            Route::SetScheduler => {
                ops.extend(patch(scheduler).as_array().cloned().unwrap_or_default())
            }
            Route::Warn(w) => resp.warnings = Some(vec![w]),
        }
        if !ops.is_empty() {
            let p: json_patch::Patch =
                serde_json::from_value(Value::Array(ops)).expect("a valid JSONPatch");
            resp = resp
                .with_patch(p)
                .map_err(|e| bad("AdmissionResponse.patch", e.to_string()))?;
        }
    }
    let mut out = serde_json::to_value(resp.into_review()).expect("an AdmissionReview serializes");
    // kube's type holds the patch as bytes and serde writes bytes as an array of numbers;
    // the API server reads Go's []byte, which on the JSON wire is a base64 string.
    if let Some(p) = out.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(p.take()).expect("patch bytes");
        *p = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Ok(out)
}

async fn mutate(State((scheduler, compat)): State<(Arc<str>, Compat)>, body: Bytes) -> Response {
    match review(&body, &scheduler, compat) {
        Ok(v) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!("webhook: refused an AdmissionReview: {e}");
            (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{e}\n"),
            )
                .into_response()
        }
    }
}

pub fn router(scheduler: &str, compat: Compat) -> Router {
    Router::new()
        .route(PATH, post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state((Arc::<str>::from(scheduler), compat))
}

/// A serving certificate or key that cannot be used; `flag` names the file's flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {path}: {reason}")]
pub struct TlsError {
    pub flag: &'static str,
    pub path: String,
    pub reason: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError {
        flag: "--webhook-tls-cert",
        path: cert.display().to_string(),
        reason,
    };
    let key_err = |reason: String| TlsError {
        flag: "--webhook-tls-key",
        path: key.display().to_string(),
        reason,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| cert_err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "no certificate; accepted: PEM, the serving certificate first, then its chain".into(),
        ));
    }
    let key_pem = std::fs::read(key).map_err(|e| key_err(e.to_string()))?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        key_err(format!(
            "no usable private key ({e}); accepted: PEM, PKCS#8, PKCS#1 (RSA) or SEC1 (EC)"
        ))
    })?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            key_err("does not match the certificate's public key".into())
        }
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            cert_err(e.to_string())
        }
        e => key_err(e.to_string()),
    })
}

/// Serves the pair read at start and re-reads it when either file changes, so a certificate
/// rotated into the mounted Secret is picked up without a restart. A pair that does not
/// load (a rotation caught half-written) keeps the previous one in use.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let stamps = (mtime(&self.cert), mtime(&self.key));
        if (cur.0, cur.1) != stamps {
            match load_pair(&self.cert, &self.key) {
                Ok(k) => {
                    tracing::info!("webhook: reloaded {}", self.cert.display());
                    *cur = (stamps.0, stamps.1, Arc::new(k));
                }
                Err(e) => tracing::warn!("webhook: keeping the previous certificate: {e}"),
            }
        }
        Some(cur.2.clone())
    }
}

/// Reads the serving certificate (PEM chain) and key, refusing what rustls could not serve.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let stamps = (mtime(cert), mtime(key));
    let first = load_pair(cert, key)?;
    let resolver = Reloading {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        current: Mutex::new((stamps.0, stamps.1, Arc::new(first))),
    };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            flag: "--webhook-tls-cert",
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A listener whose connections have finished the TLS handshake. Handshakes run in tasks of
/// their own, so one slow client does not hold up the others.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<TcpStream>,
        std::net::SocketAddr,
    )>,
    addr: std::net::SocketAddr,
}

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    fn new(listener: TcpListener, tls: Arc<ServerConfig>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of descriptors and the like: back off rather than spin.
                            tracing::warn!("webhook: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("webhook: TLS handshake with {peer}: {e}"),
                        Err(_) => tracing::debug!("webhook: TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serves the webhook over TLS until the listener fails.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    scheduler: &str,
    compat: Compat,
) -> std::io::Result<()> {
    let l = TlsListener::new(listener, tls)?;
    axum::serve(l, router(scheduler, compat)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn gpu_pod(scheduler: Option<&str>) -> Pod {
        let mut v = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "main", "resources": {"limits": {"gpuslice.io/gpu": "1", "cpu": "1"}}}]}});
        if let Some(s) = scheduler {
            v["spec"]["schedulerName"] = json!(s);
        }
        pod(v)
    }

    #[test]
    fn routes_gpuslice_pods_on_the_default_scheduler() {
        let s = DEFAULT_SCHEDULER_NAME;
        assert_eq!(route(&gpu_pod(None), s), Route::SetScheduler);
        assert_eq!(route(&gpu_pod(Some("")), s), Route::SetScheduler);
        assert_eq!(
            route(&gpu_pod(Some("default-scheduler")), s),
            Route::SetScheduler
        );
        assert_eq!(route(&gpu_pod(Some(s)), s), Route::Leave);
        match route(&gpu_pod(Some("volcano")), s) {
            Route::Warn(w) => assert!(w.contains("\"volcano\"") && w.len() <= 120, "{w}"),
            r => panic!("{r:?}"),
        }
        // Another configured name is honoured, and then the shipped name is "another".
        assert_eq!(route(&gpu_pod(None), "gpu-sched"), Route::SetScheduler);
        assert!(matches!(
            route(&gpu_pod(Some(s)), "gpu-sched"),
            Route::Warn(_)
        ));
    }

    #[test]
    fn any_gpuslice_resource_in_any_container_counts() {
        let with = |containers: Value, init: Value| {
            wants_gpuslice(&pod(
                json!({"spec": {"containers": containers, "initContainers": init}}),
            ))
        };
        let c = |res: Value| json!([{"name": "c"}, {"name": "d", "resources": res}]);
        assert!(with(
            c(json!({"requests": {"gpuslice.io/gpu-memory": "4096"}})),
            json!([])
        ));
        assert!(with(
            c(json!({"limits": {"gpuslice.io/mig-1g.10gb": "1"}})),
            json!([])
        ));
        // Unknown names too: the extender then refuses them with a reason naming them.
        assert!(with(
            c(json!({"limits": {"gpuslice.io/gpus": "1"}})),
            json!([])
        ));
        assert!(with(
            c(json!({})),
            json!([{"name": "i", "resources": {"limits": {"gpuslice.io/whole-gpu": "1"}}}])
        ));
        assert!(!with(
            c(json!({"limits": {"nvidia.com/gpu": "1", "cpu": "2"}})),
            json!([])
        ));
        assert!(!with(c(json!({})), json!([])));
        // Placement annotations alone do not route.
        assert!(!wants_gpuslice(&pod(json!({
            "metadata": {"annotations": {"gpuslice.io/gang": "g", "gpuslice.io/gang-size": "2"}},
            "spec": {"containers": [{"name": "c"}]}}))));
        assert!(!wants_gpuslice(&pod(json!({}))));
    }

    fn review_of(kind: &str, op: &str, object: Value) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "ml", "operation": op,
                "userInfo": {"username": "alice"},
                "object": object, "oldObject": null, "dryRun": false
            }
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn review_patches_with_base64_and_echoes_the_uid() {
        let obj = serde_json::to_value(gpu_pod(Some("default-scheduler"))).unwrap();
        let out = review(
            &review_of("Pod", "CREATE", obj.clone()),
            "gpuslice-scheduler",
            Compat::default(),
        )
        .unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        let r = &out["response"];
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let p = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().expect("patch is a base64 string"))
            .unwrap();
        let p: Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(p, patch("gpuslice-scheduler"));
        // The patch applies to the pod as sent and names the scheduler.
        let mut patched = obj;
        let ops: json_patch::Patch = serde_json::from_value(p).unwrap();
        json_patch::patch(&mut patched, &ops).unwrap();
        assert_eq!(patched["spec"]["schedulerName"], "gpuslice-scheduler");

        // UPDATE cannot change schedulerName; other kinds are not ours.
        let obj = serde_json::to_value(gpu_pod(None)).unwrap();
        for (kind, op) in [("Pod", "UPDATE"), ("Deployment", "CREATE")] {
            let out = review(
                &review_of(kind, op, obj.clone()),
                "gpuslice-scheduler",
                Compat::default(),
            )
            .unwrap();
            assert_eq!(out["response"]["allowed"], true);
            assert!(out["response"].get("patch").is_none(), "{kind} {op}: {out}");
        }
    }

    #[test]
    fn malformed_reviews_are_refused_naming_the_field() {
        let e = review(b"{", "s", Compat::default()).unwrap_err();
        assert!(e.field.starts_with("AdmissionReview"), "{e}");
        let e = review(
            br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": null}"#,
            "s",
            Compat::default(),
        )
        .unwrap_err();
        assert!(e.reason.contains("admission.k8s.io/v1"), "{e}");
        let e = review(
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
            "s",
            Compat::default(),
        )
        .unwrap_err();
        assert_eq!(e.field, "AdmissionReview.request", "{e}");
        let mut v: Value = serde_json::from_slice(&review_of("Pod", "CREATE", json!({}))).unwrap();
        v["request"]["uid"] = json!(7);
        let e = review(v.to_string().as_bytes(), "s", Compat::default()).unwrap_err();
        assert!(e.field.contains("uid"), "{e}");
        let e = review(
            &review_of("Pod", "CREATE", json!({"spec": {"containers": "x"}})),
            "s",
            Compat::default(),
        )
        .unwrap_err();
        assert!(e.field.contains("request.object.spec.containers"), "{e}");
    }

    /// Applies the review's patch to the pod as sent.
    fn patched(out: &Value, mut obj: Value) -> Value {
        if let Some(p) = out["response"]["patch"].as_str() {
            let p = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
            let ops: json_patch::Patch = serde_json::from_slice(&p).unwrap();
            json_patch::patch(&mut obj, &ops).unwrap();
        }
        obj
    }

    /// HAMi's own examples (its README and configuration guide), as the API server sends them.
    #[test]
    fn hami_pods_become_gpuslice_pods_when_asked() {
        let hami = json!({
            "metadata": {"name": "gpu-pod", "annotations": {
                "nvidia.com/use-gputype": "A100,H100",
                "nvidia.com/nouse-gpuuuid": "GPU-03f69c50-207a-2038-9b45-23cac89cb67d",
                "hami.io/node-scheduler-policy": "spread"}},
            "spec": {
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [
                    {"name": "ubuntu-container", "image": "ubuntu:18.04",
                     "resources": {"limits": {
                        "nvidia.com/gpu": "2", "nvidia.com/gpumem": "3k",
                        "nvidia.com/gpucores": "30", "cpu": "1"}}},
                    {"name": "sidecar", "image": "busybox"}]}});
        let on = Compat { hami: true };
        let out = review(
            &review_of("Pod", "CREATE", hami.clone()),
            "gpuslice-scheduler",
            on,
        )
        .unwrap();
        assert_eq!(out["response"]["allowed"], true, "{out}");
        let pod = patched(&out, hami.clone());
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "1", "gpuslice.io/gpu": "2", "gpuslice.io/gpu-memory": "3000",
                   "gpuslice.io/gpu-compute": "30"})
        );
        assert!(
            pod["spec"]["containers"][1].get("resources").is_none(),
            "{pod}"
        );
        assert_eq!(pod["spec"]["schedulerName"], "gpuslice-scheduler");
        let ann = &pod["metadata"]["annotations"];
        assert_eq!(ann["gpuslice.io/gpu-model-include"], "A100,H100");
        assert_eq!(
            ann["gpuslice.io/gpu-uuid-exclude"],
            "GPU-03f69c50-207a-2038-9b45-23cac89cb67d"
        );
        assert_eq!(ann["gpuslice.io/node-policy"], "spread");
        assert_eq!(
            ann["nvidia.com/use-gputype"], "A100,H100",
            "HAMi's own stay"
        );
        // What the extender reads from the rewritten pod is a valid gpuslice request.
        let p: Pod = serde_json::from_value(pod).unwrap();
        let a = p.metadata.annotations.unwrap();
        gpuslice_core::protocol::PodAnnotations::parse(
            a.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .unwrap();

        // Off (the default), a HAMi pod is not ours.
        let out = review(
            &review_of("Pod", "CREATE", hami.clone()),
            "gpuslice-scheduler",
            Compat::default(),
        )
        .unwrap();
        assert!(out["response"].get("patch").is_none(), "{out}");

        // What gpuslice does not offer is denied, naming the field, not run without it.
        let mut pct = hami.clone();
        pct["spec"]["containers"][0]["resources"]["limits"] =
            json!({"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "50"});
        let out = review(&review_of("Pod", "CREATE", pct), "gpuslice-scheduler", on).unwrap();
        assert_eq!(out["response"]["allowed"], false, "{out}");
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("spec.containers[0].resources.limits[nvidia.com/gpumem-percentage]"),
            "{msg}"
        );
        assert!(out["response"].get("patch").is_none(), "{out}");
        let mut mode = hami;
        mode["metadata"]["annotations"]["nvidia.com/vgpu-mode"] = json!("mig");
        let out = review(&review_of("Pod", "CREATE", mode), "gpuslice-scheduler", on).unwrap();
        assert_eq!(out["response"]["allowed"], false, "{out}");

        // A plain pod with compatibility on is untouched.
        let plain = json!({"metadata": {"name": "web"}, "spec": {"containers": [
            {"name": "c", "resources": {"limits": {"cpu": "1"}}}]}});
        let out = review(&review_of("Pod", "CREATE", plain), "gpuslice-scheduler", on).unwrap();
        assert!(out["response"].get("patch").is_none(), "{out}");
    }
}

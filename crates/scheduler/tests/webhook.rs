//! The admission webhook over real TLS, as the API server calls it: a client that trusts only
//! the CA posts an AdmissionReview to `/mutate-pods` and gets the routing patch back; a
//! certificate rotated into the files is served to the next client without a restart; files
//! that cannot be served are refused naming the flag.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use gpuslice_scheduler::webhook;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A CA, and a serving certificate it signed for `localhost` written to `dir`.
fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn issue(ca: &CertifiedIssuer<'static, KeyPair>, dir: &Path) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &**ca)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem() + &ca.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    cert.der().clone()
}

fn client(ca: &CertifiedIssuer<'static, KeyPair>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let cfg = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut cfg = cfg;
    // Every request a full handshake: a resumed session would show the first certificate.
    cfg.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(cfg))
}

/// One HTTP/1.1 request over a fresh TLS connection: (status, body, the server's certificate).
async fn post(
    tls: &TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
) -> (u16, Vec<u8>, CertificateDer<'static>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the handshake succeeds with a client that trusts only the CA");
    let served = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    (status, out[split + 4..].to_vec(), served)
}

fn review(scheduler: Option<&str>) -> Vec<u8> {
    let mut pod = json!({"metadata": {"name": "trainer", "namespace": "ml"}, "spec": {"containers": [
        {"name": "main", "image": "x", "resources": {"limits": {"gpuslice.io/gpu": "1"}}}]}});
    if let Some(s) = scheduler {
        pod["spec"]["schedulerName"] = json!(s);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "0b5b5c62-34f6-4f4a-9d8c-1f2d3c4b5a69",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "ml", "operation": "CREATE", "userInfo": {"username": "alice"},
        "object": pod, "dryRun": false}})
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn routes_pods_over_tls_and_picks_up_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let first = issue(&ca, dir.path());
    let tls =
        webhook::tls_config(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        webhook::serve(
            listener,
            tls,
            webhook::DEFAULT_SCHEDULER_NAME,
            webhook::Compat::default(),
        )
        .await
        .unwrap()
    });
    let client = client(&ca);

    let (status, body, served) = post(&client, addr, webhook::PATH, &review(None)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(served, first);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["uid"], "0b5b5c62-34f6-4f4a-9d8c-1f2d3c4b5a69");
    assert_eq!(v["response"]["allowed"], true);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(v["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/spec/schedulerName", "value": "gpuslice-scheduler"}])
    );

    // A pod that names another scheduler is allowed unchanged, with a warning.
    let (status, body, _) = post(&client, addr, webhook::PATH, &review(Some("volcano"))).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["response"].get("patch").is_none(), "{v}");
    assert!(
        v["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("volcano"),
        "{v}"
    );

    // Garbage is a 400 naming the field, never an allowed-with-nothing.
    let (status, body, _) = post(&client, addr, webhook::PATH, b"{\"kind\": 3}").await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("AdmissionReview"));

    // Rotation: new files (mtime moves on) are served to the next connection.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = issue(&ca, dir.path());
    assert_ne!(first, second);
    let (status, _, served) = post(&client, addr, webhook::PATH, &review(None)).await;
    assert_eq!(status, 200);
    assert_eq!(
        served, second,
        "the rotated certificate is served without a restart"
    );

    // A rotation caught half-written keeps the last good pair in service.
    std::fs::write(dir.path().join("tls.key"), b"not a key").unwrap();
    let (status, _, served) = post(&client, addr, webhook::PATH, &review(None)).await;
    assert_eq!(status, 200);
    assert_eq!(served, second);
}

#[test]
fn unusable_files_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let e = webhook::tls_config(&crt, &key).unwrap_err();
    assert_eq!(e.flag, "--webhook-tls-cert", "{e}");
    let ca = ca();
    issue(&ca, dir.path());
    std::fs::write(
        &key,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = webhook::tls_config(&crt, &key).unwrap_err();
    assert_eq!(e.flag, "--webhook-tls-key", "{e}");
    // A key that is not the certificate's.
    std::fs::write(&key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let e = webhook::tls_config(&crt, &key).unwrap_err();
    assert!(e.reason.contains("does not match"), "{e}");
    std::fs::write(&crt, b"hello").unwrap();
    let e = webhook::tls_config(&crt, &key).unwrap_err();
    assert_eq!(e.flag, "--webhook-tls-cert", "{e}");
}

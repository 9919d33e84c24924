//! deploy/scheduler must stay valid: every object deserializes into its Kubernetes type, the
//! embedded extender config parses, and kube-scheduler's config points at the extender with
//! the scheduler-only resources ignored.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde_json::Value;

fn typed<T: serde::de::DeserializeOwned>(doc: &Value, what: &str) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn scheduler_manifests_are_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/scheduler/gpuslice-scheduler.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut kinds = Vec::new();
    let mut listen_port = None;
    let mut sched_cfg = None;
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let doc = Value::deserialize(de).unwrap();
        let kind = doc["kind"].as_str().unwrap().to_string();
        let what = format!("doc {i} {kind}");
        match kind.as_str() {
            "ServiceAccount" => drop(typed::<ServiceAccount>(&doc, &what)),
            "ClusterRole" => drop(typed::<ClusterRole>(&doc, &what)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&doc, &what)),
            "ConfigMap" => {
                let cm: ConfigMap = typed(&doc, &what);
                let data = cm.data.unwrap();
                gpuslice_scheduler::parse_config(&data["gpuslice.json"]).unwrap();
                sched_cfg =
                    Some(serde_yaml_ng::from_str::<Value>(&data["kube-scheduler.yaml"]).unwrap());
            }
            "Deployment" => {
                let d: Deployment = typed(&doc, &what);
                let pod = d.spec.unwrap().template.spec.unwrap();
                let ext = pod
                    .containers
                    .iter()
                    .find(|c| c.name == "extender")
                    .unwrap();
                let listen = ext
                    .args
                    .as_ref()
                    .unwrap()
                    .iter()
                    .find_map(|a| a.strip_prefix("--listen="))
                    .unwrap();
                listen_port = Some(listen.rsplit(':').next().unwrap().to_string());
            }
            other => panic!("{what}: no check for kind {other}"),
        }
        kinds.push(kind);
    }
    let cfg = sched_cfg.expect("a ConfigMap with kube-scheduler.yaml");
    assert_eq!(cfg["kind"], "KubeSchedulerConfiguration");
    assert_eq!(cfg["profiles"][0]["schedulerName"], "gpuslice-scheduler");
    let ext = &cfg["extenders"][0];
    assert!(
        ext["urlPrefix"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", listen_port.unwrap()))
    );
    for verb in ["filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb"] {
        assert!(ext[verb].is_string(), "{verb}");
    }
    let managed = ext["managedResources"].as_array().unwrap();
    let ignored = |n: &str| {
        managed
            .iter()
            .find(|m| m["name"] == n)
            .map(|m| m["ignoredByScheduler"].as_bool().unwrap())
    };
    // Exactly the resources the extender decides, MIG profiles of every modelled GPU included:
    // kube-scheduler asks the extender only about pods that request one of these.
    let listed: Vec<(String, bool)> = managed
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["ignoredByScheduler"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = gpuslice_core::protocol::managed_resources();
    if listed != want {
        let yaml: String = want
            .iter()
            .map(|(n, i)| format!("          - name: {n}\n            ignoredByScheduler: {i}\n"))
            .collect();
        panic!("managedResources differ from the protocol's; they should read:\n{yaml}");
    }
    assert_eq!(ignored("gpuslice.io/gpu-memory"), Some(true));
    assert_eq!(ignored("gpuslice.io/gpu-compute"), Some(true));
    assert_eq!(ignored("gpuslice.io/gpu"), Some(false));
    for k in ["Deployment", "ConfigMap", "ClusterRole", "ServiceAccount"] {
        assert!(kinds.iter().any(|x| x == k), "no {k}");
    }
}

/// deploy/scheduler/webhook.yaml: typed objects that survive a round trip, a Deployment that
/// starts the webhook with flags `gpuslice scheduler` accepts, a Service that reaches its port,
/// and a webhook configuration that calls the path it serves for new pods only.
#[test]
fn webhook_manifests_are_valid_and_agree() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Service;
    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> T {
        let t: T = typed(doc, what);
        assert_eq!(
            &serde_json::to_value(&t).unwrap(),
            doc,
            "{what}: fields lost in a round trip"
        );
        t
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/scheduler/webhook.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut args, mut svc, mut mwc) = (None, None, None);
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let doc = Value::deserialize(de).unwrap();
        let kind = doc["kind"].as_str().unwrap().to_string();
        let what = format!("webhook.yaml doc {i} {kind}");
        match kind.as_str() {
            "Deployment" => {
                let d: Deployment = round_trip(&doc, &what);
                let c = d.spec.unwrap().template.spec.unwrap().containers.remove(0);
                args = c.args;
            }
            "Service" => svc = Some(round_trip::<Service>(&doc, &what)),
            "MutatingWebhookConfiguration" => {
                mwc = Some(round_trip::<MutatingWebhookConfiguration>(&doc, &what))
            }
            other => panic!("{what}: no check for kind {other}"),
        }
    }
    let args = args.expect("a Deployment");
    assert_eq!(args[0], "scheduler");
    let flag = |f: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{f}=")))
            .unwrap_or_else(|| panic!("no --{f}"))
            .to_string()
    };
    assert!(
        !args.iter().any(|a| a.starts_with("--listen")),
        "the webhook needs no cluster state"
    );
    let port: i32 = flag("webhook-listen")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(flag("webhook-tls-cert").ends_with("tls.crt"));
    assert!(flag("webhook-tls-key").ends_with("tls.key"));
    let svc = svc.expect("a Service").spec.unwrap();
    let p = &svc.ports.unwrap()[0];
    assert_eq!(
        p.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port))
    );
    let w = &mwc
        .expect("a MutatingWebhookConfiguration")
        .webhooks
        .unwrap()[0];
    let to = w.client_config.service.as_ref().unwrap();
    assert_eq!(to.path.as_deref(), Some(gpuslice_scheduler::webhook::PATH));
    assert_eq!(to.port, Some(p.port));
    assert_eq!(w.admission_review_versions, ["v1"]);
    let rule = &w.rules.as_ref().unwrap()[0];
    assert_eq!(
        rule.operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
    // Down or slow, it must not stop pods from being created (see the manifest's comment).
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
}

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
    assert_eq!(ignored("gpuslice.io/gpu-memory"), Some(true));
    assert_eq!(ignored("gpuslice.io/gpu-compute"), Some(true));
    assert_eq!(ignored("gpuslice.io/gpu"), Some(false));
    for k in ["Deployment", "ConfigMap", "ClusterRole", "ServiceAccount"] {
        assert!(kinds.iter().any(|x| x == k), "no {k}");
    }
}

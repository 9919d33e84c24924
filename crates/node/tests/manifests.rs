//! Every manifest under deploy/node and every template of the Helm chart (rendered with its
//! default values) must deserialize into the Kubernetes type its `kind` names and survive a
//! round trip unchanged, so a misspelt or misplaced field fails here rather than in a cluster.

use std::path::{Path, PathBuf};

use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{what}: fields were lost in the round trip (misspelt or misplaced?)"
    );
}

fn check(text: &str, what: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc: Value =
            serde::Deserialize::deserialize(de).unwrap_or_else(|e| panic!("{what}[{i}]: {e}"));
        if doc.is_null() {
            continue;
        }
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}[{i}]: no kind"))
            .to_string();
        let w = format!("{what}[{i}] {kind}");
        match kind.as_str() {
            "Namespace" => round_trip::<core::Namespace>(&doc, &w),
            "ServiceAccount" => round_trip::<core::ServiceAccount>(&doc, &w),
            "ConfigMap" => {
                round_trip::<core::ConfigMap>(&doc, &w);
                if let Some(c) = doc["data"]["node.yaml"].as_str() {
                    gpuslice_node::config::NodeConfig::parse(c)
                        .unwrap_or_else(|e| panic!("{w}: node.yaml: {e}"));
                }
            }
            "DaemonSet" => {
                round_trip::<apps::DaemonSet>(&doc, &w);
                host_paths_reach_the_host(&doc, &w);
            }
            "ClusterRole" => round_trip::<rbac::ClusterRole>(&doc, &w),
            "ClusterRoleBinding" => round_trip::<rbac::ClusterRoleBinding>(&doc, &w),
            other => panic!("{w}: no check for kind {other}; add one"),
        }
        kinds.push(kind);
    }
    kinds
}

/// Every host directory behind a path the agent hands to containers (Allocate's mounts, CDI
/// specs; `gpuslice_node::hostpaths`) must be a writable hostPath volume mounted at the same
/// path in the agent: kubelet and the runtime resolve those paths on the host.
fn host_paths_reach_the_host(doc: &Value, what: &str) {
    let ds: apps::DaemonSet = serde_json::from_value(doc.clone()).unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let agent = pod
        .containers
        .iter()
        .find(|c| {
            c.args
                .as_ref()
                .is_some_and(|a| a.first().is_some_and(|x| x == "node"))
        })
        .unwrap_or_else(|| panic!("{what}: no container runs `gpuslice node`"));
    let args = agent.args.clone().unwrap_or_default();
    let flag = |f: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{f}=")))
            .unwrap_or_else(|| panic!("{what}: the agent has no --{f}"))
            .to_string()
    };
    let compute_env = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "GPUSLICE_COMPUTE_DIR")
        .and_then(|e| e.value.clone());
    let roots = gpuslice_node::hostpaths::host_roots(
        Path::new(&flag("state-dir")),
        Path::new(&flag("cdi-dir")),
        compute_env.as_deref(),
    );
    let volumes = pod.volumes.unwrap_or_default();
    for (root, holds) in roots {
        let mount = agent
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| root.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| {
                panic!(
                    "{what}: {} ({holds}) is not mounted into the agent; containers would get a bind source that is missing on the host",
                    root.display()
                )
            });
        assert_ne!(
            mount.read_only,
            Some(true),
            "{what}: {} ({holds}) is mounted read-only",
            root.display()
        );
        assert!(
            mount.sub_path.is_none() && mount.sub_path_expr.is_none(),
            "{what}: {}: a subPath would not be the same host path",
            mount.mount_path
        );
        let v = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("{what}: no volume {}", mount.name));
        let host = v.host_path.as_ref().unwrap_or_else(|| {
            panic!(
                "{what}: {} ({holds}) is on volume {}, which is not a hostPath",
                root.display(),
                v.name
            )
        });
        assert_eq!(
            host.path,
            mount.mount_path,
            "{what}: {} ({holds}): the agent must see it at its host path",
            root.display()
        );
    }
}

#[test]
fn plain_manifests_are_valid_kubernetes_objects() {
    let mut kinds = Vec::new();
    for e in std::fs::read_dir(deploy().join("node")).unwrap() {
        let p = e.unwrap().path();
        kinds.extend(check(
            &std::fs::read_to_string(&p).unwrap(),
            &p.display().to_string(),
        ));
    }
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    ] {
        assert!(kinds.iter().any(|x| x == k), "deploy/node has no {k}");
    }
}

/// The chart's templates use only `{{ .Release.Name }}`, `{{ .Values.X }}` and
/// `{{ toYaml .Values.X | indent N }}`; this renders exactly those.
fn render(template: &str, values: &serde_yaml_ng::Value) -> String {
    let mut out = String::new();
    for line in template.lines() {
        let t = line.trim();
        if let Some(rest) = t
            .strip_prefix("{{ toYaml .Values.")
            .and_then(|r| r.strip_suffix(" }}"))
        {
            let (key, indent) = rest.split_once(" | indent ").expect("toYaml … | indent N");
            let n: usize = indent.parse().unwrap();
            let y = serde_yaml_ng::to_string(&values[key]).unwrap();
            for l in y.lines() {
                out.push_str(&format!("{}{l}\n", " ".repeat(n)));
            }
            continue;
        }
        let mut l = line.replace("{{ .Release.Name }}", "gpuslice-node");
        while let Some(start) = l.find("{{ .Values.") {
            let end = l[start..].find(" }}").unwrap() + start;
            let key = &l[start + 11..end];
            let v = match &values[key] {
                serde_yaml_ng::Value::String(s) => s.clone(),
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                other => panic!("{key}: {other:?} is not a scalar"),
            };
            l = format!("{}{v}{}", &l[..start], &l[end + 3..]);
        }
        assert!(!l.contains("{{"), "unrendered template syntax: {l}");
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[test]
fn helm_chart_renders_to_valid_kubernetes_objects() {
    let chart = deploy().join("helm/gpuslice-node");
    let values: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap())
            .unwrap();
    let mut kinds = Vec::new();
    for e in std::fs::read_dir(chart.join("templates")).unwrap() {
        let p = e.unwrap().path();
        let text = render(&std::fs::read_to_string(&p).unwrap(), &values);
        kinds.extend(check(&text, &p.display().to_string()));
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "ServiceAccount"
        ]
    );
}

#[test]
fn grafana_dashboard_queries_exported_metrics() {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/gpuslice-node.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    for m in [
        "gpuslice_gpu_memory_used_bytes",
        "gpuslice_gpu_utilization_ratio",
        "gpuslice_tenant_memory_used_bytes",
        "gpuslice_tenant_memory_limit_bytes",
        "gpuslice_tenant_oom_refusals_total",
        "gpuslice_tenant_compute_share_ratio",
        "gpuslice_tenant_throttled_seconds_total",
    ] {
        assert!(exprs.iter().any(|e| e.contains(m)), "no panel queries {m}");
    }
}

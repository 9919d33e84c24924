//! The kube-scheduler extender v1 wire format. The Go types carry no json tags, so their field
//! names are the wire names (`Pod`, `NodeNames`, `FailedNodes`, `Host`, `Score`…); the objects
//! inside (`v1.Pod`, `v1.NodeList`) use Kubernetes' own camelCase JSON.
//!
//! Requests are read from `serde_json::Value` by hand so that every refusal names the field.

use std::collections::BTreeMap;

use gpuslice_core::sched::PodSpec;
use serde_json::{Value, json};

/// A request the extender cannot read: HTTP 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(s: impl Into<String>) -> BadRequest {
    BadRequest(s.into())
}

pub fn parse_body(body: &[u8]) -> Result<Value, BadRequest> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("request body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("request body must be a JSON object"));
    }
    Ok(v)
}

fn str_field<'a>(v: &'a Value, path: &str, key: &str) -> Result<Option<&'a str>, BadRequest> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("{path}.{key} must be a string"))),
    }
}

/// The pod's identity, needed even when its gpuslice fields are malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Reads `v1.Pod` JSON. The outer `Result` is a malformed request (HTTP 400); the inner one is
/// a pod whose gpuslice resources or annotations are malformed (it fails filtering with the
/// reason).
#[allow(clippy::type_complexity)]
pub fn pod(v: Option<&Value>, path: &str) -> Result<(PodId, Result<PodSpec, String>), BadRequest> {
    let v = v
        .filter(|v| v.is_object())
        .ok_or_else(|| bad(format!("{path} is required and must be a v1.Pod object")))?;
    let md = v
        .get("metadata")
        .filter(|m| m.is_object())
        .ok_or_else(|| bad(format!("{path}.metadata is required")))?;
    let name = str_field(md, &format!("{path}.metadata"), "name")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad(format!("{path}.metadata.name is required")))?;
    let namespace = str_field(md, &format!("{path}.metadata"), "namespace")?.unwrap_or("default");
    let uid = str_field(md, &format!("{path}.metadata"), "uid")?
        .map(str::to_string)
        .unwrap_or_else(|| format!("{namespace}/{name}"));
    let id = PodId {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: uid.clone(),
    };
    let mut annotations: Vec<(&str, &str)> = Vec::new();
    match md.get("annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, val) in m {
                let s = val.as_str().ok_or_else(|| {
                    bad(format!("{path}.metadata.annotations[{k}] must be a string"))
                })?;
                annotations.push((k, s));
            }
        }
        Some(_) => {
            return Err(bad(format!(
                "{path}.metadata.annotations must be an object"
            )));
        }
    }
    let spec = v
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| bad(format!("{path}.spec is required")))?;
    let priority = match spec.get("priority") {
        None | Some(Value::Null) => 0,
        Some(p) => p
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| bad(format!("{path}.spec.priority must be a 32-bit integer")))?,
    };
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("{path}.spec.containers must be an array")))?;
    let mut parsed: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let cp = format!("{path}.spec.containers[{i}]");
        let cname =
            str_field(c, &cp, "name")?.ok_or_else(|| bad(format!("{cp}.name is required")))?;
        let mut res: BTreeMap<String, String> = BTreeMap::new();
        // Limits win; requests fill in (Kubernetes requires them equal for extended resources).
        for part in ["requests", "limits"] {
            match c.get("resources").and_then(|r| r.get(part)) {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    for (k, q) in m {
                        let q = match q {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            _ => {
                                return Err(bad(format!(
                                    "{cp}.resources.{part}[{k}] must be a quantity string"
                                )));
                            }
                        };
                        res.insert(k.clone(), q);
                    }
                }
                Some(_) => return Err(bad(format!("{cp}.resources.{part} must be an object"))),
            }
        }
        parsed.push((cname.to_string(), res.into_iter().collect()));
    }
    let spec = PodSpec::parse(
        &uid,
        namespace,
        name,
        priority,
        parsed.iter().map(|(n, r)| {
            (
                n.as_str(),
                r.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            )
        }),
        annotations,
    )
    .map_err(|e| format!("pod {namespace}/{name}: {e}"));
    Ok((id, spec))
}

/// Node names of `ExtenderArgs`: `NodeNames` when the extender is nodeCacheCapable, else the
/// items of `Nodes`. Returns the names and, for the latter, the node objects to echo back.
pub fn node_names(args: &Value) -> Result<(Vec<String>, Option<Vec<Value>>), BadRequest> {
    if let Some(names) = args.get("NodeNames").filter(|v| !v.is_null()) {
        let arr = names
            .as_array()
            .ok_or_else(|| bad("ExtenderArgs.NodeNames must be an array of strings"))?;
        let names = arr
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("ExtenderArgs.NodeNames[{i}] must be a string")))
            })
            .collect::<Result<_, _>>()?;
        return Ok((names, None));
    }
    if let Some(nodes) = args.get("Nodes").filter(|v| !v.is_null()) {
        let items = match nodes.get("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(bad("ExtenderArgs.Nodes.items must be an array")),
        };
        let mut names = Vec::with_capacity(items.len());
        for (i, n) in items.iter().enumerate() {
            let name = n
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(format!(
                        "ExtenderArgs.Nodes.items[{i}].metadata.name is required"
                    ))
                })?;
            names.push(name.to_string());
        }
        return Ok((names, Some(items)));
    }
    Err(bad("ExtenderArgs: one of Nodes or NodeNames is required"))
}

/// `ExtenderFilterResult`.
pub fn filter_result(
    passed: &[&str],
    objects: Option<&[Value]>,
    failed: &BTreeMap<String, String>,
    unresolvable: &BTreeMap<String, String>,
    error: &str,
) -> Value {
    let (nodes, names) = match objects {
        Some(objs) => {
            let keep: Vec<&Value> = objs
                .iter()
                .filter(|o| {
                    o.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| passed.contains(&n))
                })
                .collect();
            (json!({"metadata": {}, "items": keep}), Value::Null)
        }
        None => (Value::Null, json!(passed)),
    };
    json!({
        "Nodes": nodes,
        "NodeNames": names,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": unresolvable,
        "Error": error,
    })
}

/// `ExtenderBindingArgs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingArgs {
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub node: String,
}

pub fn binding_args(v: &Value) -> Result<BindingArgs, BadRequest> {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                bad(format!(
                    "ExtenderBindingArgs.{k} is required (a non-empty string)"
                ))
            })
    };
    Ok(BindingArgs {
        pod_name: s("PodName")?,
        pod_namespace: s("PodNamespace")?,
        pod_uid: s("PodUID")?,
        node: s("Node")?,
    })
}

/// Victims kube-scheduler proposes per node, as pod UIDs: from `NodeNameToMetaVictims`
/// (nodeCacheCapable) or `NodeNameToVictims`.
pub fn proposed_victims(v: &Value) -> Result<BTreeMap<String, (Vec<String>, i64)>, BadRequest> {
    let mut out = BTreeMap::new();
    let (key, meta) = if v.get("NodeNameToMetaVictims").is_some_and(|m| !m.is_null()) {
        ("NodeNameToMetaVictims", true)
    } else if v.get("NodeNameToVictims").is_some_and(|m| !m.is_null()) {
        ("NodeNameToVictims", false)
    } else {
        return Err(bad(
            "ExtenderPreemptionArgs: one of NodeNameToVictims or NodeNameToMetaVictims is required",
        ));
    };
    let m = v[key]
        .as_object()
        .ok_or_else(|| bad(format!("ExtenderPreemptionArgs.{key} must be an object")))?;
    for (node, victims) in m {
        let p = format!("ExtenderPreemptionArgs.{key}[{node}]");
        let pods = match victims.get("Pods") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(bad(format!("{p}.Pods must be an array"))),
        };
        let mut uids = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let uid = if meta {
                pod.get("UID")
            } else {
                pod.pointer("/metadata/uid")
            };
            let uid = uid.and_then(Value::as_str).ok_or_else(|| {
                bad(format!(
                    "{p}.Pods[{i}].{} is required",
                    if meta { "UID" } else { "metadata.uid" }
                ))
            })?;
            uids.push(uid.to_string());
        }
        let pdb = victims
            .get("NumPDBViolations")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        out.insert(node.clone(), (uids, pdb));
    }
    Ok(out)
}

//! The kube-scheduler extender v1 wire format. The Go types carry no json tags, so their field
//! names are the wire names (`Pod`, `NodeNames`, `FailedNodes`, `Host`, `Score`…); the objects
//! inside (`v1.Pod`, `v1.NodeList`) use Kubernetes' own camelCase JSON.
//!
//! `ExtenderArgs` (what /filter and /prioritize get, the hot path) is read by a typed reader
//! that borrows strings from the body and skips every field it does not use; replies are
//! written straight into bytes. Anything that reader does not take as it stands (a malformed
//! request, but also legal oddities such as numeric quantities or malformed fields a valid
//! `NodeNames` makes irrelevant) goes to the general reader over `serde_json::Value`, which
//! decides and names the field of every refusal. The typed reader accepts only requests the
//! general one reads the same way (a test holds them to that).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use gpuslice_core::sched::PodSpec;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::extender::{FilterOutcome, Reason};

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
        if !nodes.is_object() {
            return Err(bad("ExtenderArgs.Nodes must be a v1.NodeList object"));
        }
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

/// `ExtenderArgs` as the extender uses it.
#[derive(Debug)]
pub struct ExtenderArgs<'a> {
    /// The pod, or why its gpuslice fields are malformed (it fails filtering with that).
    pub pod: Result<PodSpec, String>,
    /// The node names, from `NodeNames` or the items of `Nodes`.
    pub names: Vec<Cow<'a, str>>,
    /// The JSON text of each item of `Nodes`, when the request carried node objects; the
    /// passing ones are echoed back as they came.
    pub items: Option<Vec<Cow<'a, str>>>,
}

/// Reads `ExtenderArgs`; a refusal (HTTP 400) names the field.
pub fn extender_args(body: &[u8]) -> Result<ExtenderArgs<'_>, BadRequest> {
    if let Some(a) = fast_args(body) {
        return Ok(a);
    }
    general_args(body)
}

/// The general reader: every request, every refusal named.
pub fn general_args(body: &[u8]) -> Result<ExtenderArgs<'static>, BadRequest> {
    let args = parse_body(body)?;
    let (_, pod) = pod(args.get("Pod"), "ExtenderArgs.Pod")?;
    let (names, objects) = node_names(&args)?;
    Ok(ExtenderArgs {
        pod,
        names: names.into_iter().map(Cow::Owned).collect(),
        items: objects.map(|o| o.iter().map(|v| Cow::Owned(v.to_string())).collect()),
    })
}

/// The typed reader; `None` sends the request to the general one.
pub fn fast_args(body: &[u8]) -> Option<ExtenderArgs<'_>> {
    // Only an object: the general reader refuses anything else.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let w: ArgsWire = serde_json::from_slice(body).ok()?;
    let pod = pod_from_wire(w.pod?)?;
    if let Some(names) = w.node_names {
        return Some(ExtenderArgs {
            pod,
            names: names.0,
            items: None,
        });
    }
    let nodes = w.nodes?;
    let items = nodes.items.unwrap_or_default();
    let mut names = Vec::with_capacity(items.len());
    for it in items {
        names.push(it.metadata?.name?.0);
    }
    let spans = node_item_spans(body)?;
    if spans.len() != names.len() {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let items = spans
        .into_iter()
        .map(|(a, b)| Cow::Borrowed(&text[a..b]))
        .collect();
    Some(ExtenderArgs {
        pod,
        names,
        items: Some(items),
    })
}

/// A container's resource limits, as read from a pod.
type Limits<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

/// The pod as the general reader would read it, or `None` where it would refuse.
fn pod_from_wire(p: PodWire<'_>) -> Option<Result<PodSpec, String>> {
    let md = p.metadata?;
    let name = md.name?.0;
    if name.is_empty() {
        return None;
    }
    let namespace = md.namespace.map_or(Cow::Borrowed("default"), |s| s.0);
    let uid = match md.uid {
        Some(u) => u.0.into_owned(),
        None => format!("{namespace}/{name}"),
    };
    let spec = p.spec?;
    let priority = match spec.priority {
        None => 0,
        Some(p) => i32::try_from(p).ok()?,
    };
    let containers = spec.containers?;
    let mut parsed: Vec<(Cow<str>, Limits)> = Vec::with_capacity(containers.len());
    for c in containers {
        let cname = c.name?.0;
        let mut res = BTreeMap::new();
        // Limits win; requests fill in (Kubernetes requires them equal for extended resources).
        if let Some(r) = c.resources {
            for part in [r.requests, r.limits].into_iter().flatten() {
                res.extend(part.into_iter().map(|(k, v)| (k.0, v.0)));
            }
        }
        parsed.push((cname, res));
    }
    let annotations = md.annotations.unwrap_or_default();
    let spec = PodSpec::parse(
        &uid,
        &namespace,
        &name,
        priority,
        parsed.iter().map(|(n, r)| {
            (
                n.as_ref(),
                r.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect(),
            )
        }),
        annotations
            .iter()
            .map(|(k, v)| (k.0.as_ref(), v.0.as_ref())),
    )
    .map_err(|e| format!("pod {namespace}/{name}: {e}"));
    Some(spec)
}

/// A JSON string, borrowed from the body unless it has escapes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(s.to_string())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// `NodeNames`: thousands of short strings per request, on the path kube-scheduler waits on.
/// serde_json checks the array as one raw value (skipping strings is its fast loop); the
/// names are then cut out of it, borrowed ([`split_names`]), and an array that holds escapes
/// or anything but strings is read element by element.
#[derive(Debug)]
struct Names<'a>(Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Names<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <&'de serde_json::value::RawValue>::deserialize(d)?.get();
        if let Some(names) = split_names(text) {
            return Ok(Names(names.into_iter().map(Cow::Borrowed).collect()));
        }
        let names: Vec<Str<'de>> = serde_json::from_str(text).map_err(de::Error::custom)?;
        Ok(Names(names.into_iter().map(|s| s.0).collect()))
    }
}

/// The strings of `text`, a JSON array already checked to be valid, when it is a flat array
/// of strings without escapes; `None` otherwise. Without backslashes every quote opens or
/// closes a string, so the strings lie between pairs of quotes, and the gaps between them
/// decide the rest: `[`, then `,` between strings, then `]`, with whitespace around.
fn split_names(text: &str) -> Option<Vec<&str>> {
    let b = text.as_bytes();
    if memchr::memchr(b'\\', b).is_some() {
        return None;
    }
    let gap = |g: &[u8], want: u8| {
        let mut it = g.iter().filter(|c| !c.is_ascii_whitespace());
        it.next() == Some(&want) && it.next().is_none()
    };
    let mut names = Vec::with_capacity(b.len() / 16);
    let mut quotes = memchr::memchr_iter(b'"', b);
    let mut at = 0;
    while let Some(open) = quotes.next() {
        if !gap(&b[at..open], if at == 0 { b'[' } else { b',' }) {
            return None;
        }
        let close = quotes.next()?;
        names.push(&text[open + 1..close]);
        at = close + 1;
    }
    if at == 0 {
        // No strings: `[]` with whitespace is all the checked JSON can be here.
        let mut it = b.iter().filter(|c| !c.is_ascii_whitespace());
        return (it.next() == Some(&b'[') && it.next() == Some(&b']') && it.next().is_none())
            .then(Vec::new);
    }
    gap(&b[at..], b']').then_some(names)
}

/// A JSON object read into a struct of optional fields: `null` reads as absent, unknown
/// fields are skipped unread, a repeated field is an error. Unlike serde's derive it takes
/// objects only (derive also takes arrays, which the general reader refuses).
macro_rules! wire_object {
    ($name:ident { $($key:literal => $field:ident: $ty:ty),* $(,)? }) => {
        #[derive(Debug, Default)]
        struct $name<'a> {
            $($field: Option<$ty>,)*
            _body: PhantomData<&'a ()>,
        }

        impl<'de: 'a, 'a> Deserialize<'de> for $name<'a> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V<'a>(PhantomData<&'a ()>);
                impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                    type Value = $name<'a>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<$name<'a>, A::Error> {
                        $(let mut $field: Option<Option<$ty>> = None;)*
                        while let Some(k) = m.next_key::<Str<'de>>()? {
                            match k.0.as_ref() {
                                $($key => {
                                    if $field.is_some() {
                                        return Err(de::Error::duplicate_field($key));
                                    }
                                    $field = Some(m.next_value()?);
                                })*
                                _ => {
                                    m.next_value::<IgnoredAny>()?;
                                }
                            }
                        }
                        Ok($name { $($field: $field.flatten(),)* _body: PhantomData })
                    }
                }
                d.deserialize_map(V(PhantomData))
            }
        }
    };
}

wire_object!(ArgsWire {
    "Pod" => pod: PodWire<'a>,
    "Nodes" => nodes: NodesWire<'a>,
    "NodeNames" => node_names: Names<'a>,
});
wire_object!(PodWire {
    "metadata" => metadata: MetaWire<'a>,
    "spec" => spec: SpecWire<'a>,
});
wire_object!(MetaWire {
    "name" => name: Str<'a>,
    "namespace" => namespace: Str<'a>,
    "uid" => uid: Str<'a>,
    "annotations" => annotations: BTreeMap<Str<'a>, Str<'a>>,
});
wire_object!(SpecWire {
    "priority" => priority: i64,
    "containers" => containers: Vec<ContainerWire<'a>>,
});
wire_object!(ContainerWire {
    "name" => name: Str<'a>,
    "resources" => resources: ResourcesWire<'a>,
});
wire_object!(ResourcesWire {
    "requests" => requests: BTreeMap<Str<'a>, Str<'a>>,
    "limits" => limits: BTreeMap<Str<'a>, Str<'a>>,
});
wire_object!(NodesWire {
    "items" => items: Vec<NodeWire<'a>>,
});
wire_object!(NodeWire {
    "metadata" => metadata: NodeMetaWire<'a>,
});
wire_object!(NodeMetaWire {
    "name" => name: Str<'a>,
});

/// Byte ranges of the items of the top-level `Nodes.items` in a body already known to be
/// valid JSON. `None` for what a byte scan cannot follow (escaped keys): the general reader
/// takes those.
fn node_item_spans(b: &[u8]) -> Option<Vec<(usize, usize)>> {
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut out = None;
    for_each_member(b, &mut i, |b, key, i| {
        if key != b"Nodes" || b.get(*i) != Some(&b'{') {
            *i = skip_value(b, *i)?;
            return Some(());
        }
        *i += 1;
        for_each_member(b, i, |b, key, i| {
            if key != b"items" || b.get(*i) != Some(&b'[') {
                *i = skip_value(b, *i)?;
                return Some(());
            }
            *i += 1;
            let mut spans = Vec::new();
            loop {
                *i = ws(b, *i);
                match b.get(*i)? {
                    b']' => {
                        *i += 1;
                        break;
                    }
                    b',' => *i += 1,
                    _ => {
                        let end = skip_value(b, *i)?;
                        spans.push((*i, end));
                        *i = end;
                    }
                }
            }
            out = Some(spans);
            Some(())
        })
    })?;
    // No items (absent or null) reads as none, as in the general reader.
    Some(out.unwrap_or_default())
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// Calls `f(body, key, &mut at_value)` for each member of the object whose `{` is just
/// before `*i`; `f` leaves the index after the value. Ends after the `}`.
fn for_each_member(
    b: &[u8],
    i: &mut usize,
    mut f: impl FnMut(&[u8], &[u8], &mut usize) -> Option<()>,
) -> Option<()> {
    loop {
        *i = ws(b, *i);
        match b.get(*i)? {
            b'}' => {
                *i += 1;
                return Some(());
            }
            b',' => *i += 1,
            b'"' => {
                let end = skip_string(b, *i)?;
                let key = &b[*i + 1..end - 1];
                if key.contains(&b'\\') {
                    return None;
                }
                *i = ws(b, end);
                if b.get(*i) != Some(&b':') {
                    return None;
                }
                *i = ws(b, *i + 1);
                f(b, key, i)?;
            }
            _ => return None,
        }
    }
}

/// The index after the string that starts at `i`.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// The index after the value that starts at `i`, in valid JSON.
pub fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Appends `s` as a JSON string. Node names never need escaping (DNS names); they are copied
/// between quotes, and anything else goes through serde_json.
fn push_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Writes `ExtenderFilterResult`: node names (or the passing node objects, as they came),
/// and the refused nodes with their reasons. Nodes refused for the same reason share its
/// text: it is escaped once and copied.
pub fn write_filter_result<S: AsRef<str>>(
    out: &mut Vec<u8>,
    names: &[S],
    items: Option<&[Cow<'_, str>]>,
    o: &FilterOutcome,
    pod: Option<&PodSpec>,
) {
    out.extend_from_slice(b"{\"Nodes\":");
    match items {
        Some(items) => {
            out.extend_from_slice(b"{\"metadata\":{},\"items\":[");
            for (n, &k) in o.passed.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(items[k].as_bytes());
            }
            out.extend_from_slice(b"]},\"NodeNames\":null");
        }
        None => {
            out.extend_from_slice(b"null,\"NodeNames\":[");
            for (n, &k) in o.passed.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                push_str(out, names[k].as_ref());
            }
            out.push(b']');
        }
    }
    let mut text = String::new();
    for (key, list) in [
        ("FailedNodes", &o.failed),
        ("FailedAndUnresolvableNodes", &o.unresolvable),
    ] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":{");
        // The last reason written and where its escaped text lies in `out`.
        let mut last: Option<(Reason, std::ops::Range<usize>)> = None;
        for (n, &(k, r)) in list.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            push_str(out, names[k].as_ref());
            out.push(b':');
            match &last {
                Some((lr, range)) if *lr == r => out.extend_from_within(range.clone()),
                _ => {
                    let at = out.len();
                    match r {
                        Reason::Note(i) => push_str(out, &o.notes[i as usize]),
                        Reason::Fit(f) => {
                            text.clear();
                            match pod {
                                Some(p) => {
                                    let _ = fmt::Write::write_fmt(
                                        &mut text,
                                        format_args!("{}", f.describe(p)),
                                    );
                                }
                                None => text.push_str("does not fit"),
                            }
                            push_str(out, &text);
                        }
                    }
                    last = Some((r, at..out.len()));
                }
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(b",\"Error\":\"\"}");
}

/// Writes `HostPriorityList`.
pub fn write_priorities<S: AsRef<str>>(out: &mut Vec<u8>, names: &[S], scores: &[i64]) {
    out.push(b'[');
    for (n, (h, s)) in names.iter().zip(scores).enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"Host\":");
        push_str(out, h.as_ref());
        out.extend_from_slice(b",\"Score\":");
        match u8::try_from(*s) {
            // Scores are 0–10: one or two digits, without the formatter.
            Ok(d @ 0..=9) => out.push(b'0' + d),
            Ok(10) => out.extend_from_slice(b"10"),
            _ => {
                let _ = std::io::Write::write_fmt(out, format_args!("{s}"));
            }
        }
        out.push(b'}');
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reader made of a request, comparable across readers.
    fn seen(a: &ExtenderArgs) -> (Result<PodSpec, String>, Vec<String>, Option<Vec<Value>>) {
        (
            a.pod.clone(),
            a.names.iter().map(|n| n.to_string()).collect(),
            a.items.as_ref().map(|i| {
                i.iter()
                    .map(|t| serde_json::from_str(t).expect("an item is JSON"))
                    .collect()
            }),
        )
    }

    const POD: &str = r#"{"metadata": {"name": "p", "namespace": "ns", "uid": "u1",
        "annotations": {"gpuslice.io/gpu-policy": "spread", "other": "x"}, "labels": {"a": "b"}},
        "spec": {"priority": 7, "nodeName": null, "containers": [
          {"name": "main", "image": "i", "resources": {
            "requests": {"gpuslice.io/gpu": "1", "cpu": "1"},
            "limits": {"gpuslice.io/gpu": "2", "gpuslice.io/gpu-memory": "1000"}}},
          {"name": "side", "resources": {}}]},
        "status": {"phase": "Pending"}}"#;

    /// The typed reader takes a request only where the general reader reads it the same way,
    /// and leaves everything the general reader refuses to it.
    #[test]
    fn the_typed_reader_agrees_with_the_general_reader() {
        let pod = POD;
        let bodies = [
            format!(r#"{{"Pod": {pod}, "NodeNames": ["a", "b\u0063", "gpu-node-1"]}}"#),
            format!(r#"{{"Pod": {pod}, "NodeNames": [], "Nodes": null}}"#),
            // Names cut out of the text, or read one by one where quotes alone can't tell.
            format!(r#"{{"Pod": {pod}, "NodeNames": [ "a" ,"b",	"ñode" , "", "x y" ] }}"#),
            format!(r#"{{"Pod": {pod}, "NodeNames": [ ] }}"#),
            format!(r#"{{"Pod": {pod}, "NodeNames": ["a\"b", "c"]}}"#),
            format!(r#"{{"Pod": {pod}, "NodeNames": [["a"], "b"]}}"#),
            format!(r#"{{"Pod": {pod}, "NodeNames": ["a", ["b"]]}}"#),
            format!(r#"{{"Pod": {pod}, "NodeNames": ["a", null]}}"#),
            format!(r#"{{"Pod": {pod}, "NodeNames": ["a", {{"b": "c"}}]}}"#),
            format!(r#"{{"Pod": {pod}, "NodeNames": ["a",, "b"]}}"#),
            format!(r#"{{"Pod": {pod}, "NodeNames": ["a\u0000"]}}"#),
            format!("{{\"Pod\": {pod}, \"NodeNames\": [\"a\u{1}b\"]}}"),
            format!(r#"{{"Pod": {pod}, "NodeNames": null, "Nodes": {{"items": [
                {{"metadata": {{"name": "a", "labels": {{"x": "y \"q\" ]}}"}}}}, "status": {{"images": [[1, 2], {{}}]}}}},
                {{"metadata": {{"name": "b\n"}}, "spec": {{}}}}]}}}}"#),
            format!(r#"{{"Pod": {pod}, "Nodes": {{"metadata": {{}}, "items": null}}}}"#),
            format!(r#"{{"Pod": {pod}, "Nodes": {{}}}}"#),
            // NodeNames wins; malformed Nodes does not matter.
            format!(r#"{{"Pod": {pod}, "Nodes": 5, "NodeNames": ["a"]}}"#),
            format!(r#"{{"Pod": {pod}, "Nodes": [1], "NodeNames": null}}"#),
            // Legal oddities the general reader takes.
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"gpuslice.io/gpu": 1}}}]}}, "NodeNames": ["a"]}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": 5}]}}, "NodeNames": ["a"]}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p", "namespace": null, "uid": null, "annotations": null}, "spec": {"priority": null, "containers": []}}, "NodeNames": ["a"]}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p", "namespace": ""}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"gpuslice.io/gpu-memory": "lots"}}}]}}, "NodeNames": ["a"]}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p", "annotations": {"gpuslice.io/gpu-policy": "tightly"}}, "spec": {"containers": []}}, "NodeNames": []}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p", "name": "q"}, "spec": {"containers": []}}, "NodeNames": []}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": [], "priority": 5}, "spec": {"containers": []}}, "NodeNames": []}"#.into(),
            r#"{"P\u006fd": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "NodeNames": ["a"]}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "N\u006fdes": {"items": [{"metadata": {"name": "a"}}]}}"#.into(),
            r#"  {"Pod": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"gpuslice.io/gpu": "1"}, "limits": {"gpuslice.io/gpu": "3"}}}]}}, "NodeNames": ["a"]}  "#.into(),
            // Refused by both.
            r#"{"Pod": {"metadata": ["p", "ns", "uid", {}], "spec": {"containers": []}}, "NodeNames": []}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"priority": 3000000000, "containers": []}}, "NodeNames": []}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"priority": 1.5, "containers": []}}, "NodeNames": []}"#.into(),
            r#"{"Pod": {"metadata": {"name": ""}, "spec": {"containers": []}}, "NodeNames": []}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": [{"resources": {}}]}}, "NodeNames": []}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"x": ["1"]}}}]}}, "NodeNames": []}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p", "annotations": {"a": 1}}, "spec": {"containers": []}}, "NodeNames": []}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "NodeNames": ["a", 1]}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "Nodes": {"items": [{"metadata": {}}]}}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "Nodes": {"items": [3]}}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}}"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": {}}}, "NodeNames": []}"#.into(),
            r#"{"Pod": [], "NodeNames": []}"#.into(),
            r#"[{"metadata": {"name": "p"}, "spec": {"containers": []}}, null, []]"#.into(),
            r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "NodeNames": []} x"#.into(),
        ];
        let mut fast = 0;
        for b in &bodies {
            let general = general_args(b.as_bytes());
            match (fast_args(b.as_bytes()), &general) {
                (Some(f), Ok(g)) => {
                    fast += 1;
                    assert_eq!(seen(&f), seen(g), "{b}");
                }
                (Some(f), Err(e)) => {
                    panic!("typed reader took what the general refuses ({e}): {f:?}")
                }
                (None, _) => {}
            }
            // The one entry point agrees with the general reader, refusals included.
            match (extender_args(b.as_bytes()), general) {
                (Ok(a), Ok(g)) => assert_eq!(seen(&a), seen(&g), "{b}"),
                (Err(a), Err(g)) => assert_eq!(a, g, "{b}"),
                (a, g) => panic!("{b}: {a:?} vs {g:?}"),
            }
        }
        // The shapes kube-scheduler sends go the typed way.
        assert!(fast >= 10, "only {fast} requests took the typed reader");
    }

    #[test]
    fn names_are_cut_only_out_of_flat_arrays_of_plain_strings() {
        assert_eq!(
            split_names(r#" [ "a" , "b-1.x" ] "#),
            Some(vec!["a", "b-1.x"])
        );
        assert_eq!(split_names("[]"), Some(vec![]));
        assert_eq!(split_names(r#"["a\"b"]"#), None);
        assert_eq!(split_names(r#"[["a"]]"#), None);
        assert_eq!(split_names(r#"["a", 1]"#), None);
        assert_eq!(split_names(r#"[1, "a"]"#), None);
        assert_eq!(split_names(r#"["a" "b"]"#), None);
        assert_eq!(split_names("[1]"), None);
    }

    #[test]
    fn item_spans_cover_each_node_object_exactly() {
        let b = br#" { "x": [1, {"Nodes": 2}], "Nodes" : { "metadata": {}, "items" : [ {"a": "]}\\\""} , [ ], 3 ,"s"] } } "#;
        let spans = node_item_spans(b).unwrap();
        let got: Vec<&str> = spans
            .iter()
            .map(|&(a, e)| std::str::from_utf8(&b[a..e]).unwrap())
            .collect();
        assert_eq!(got, [r#"{"a": "]}\\\""}"#, "[ ]", "3", r#""s""#]);
    }
}

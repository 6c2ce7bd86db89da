//! Strategic merge patch: JSON merge semantics, plus lists merged by key for the fields Kubernetes marks with a
//! `patchMergeKey`, primitive lists merged as sets, and the `$patch`, `$retainKeys`, `$setElementOrder/…` and
//! `$deleteFromPrimitiveList/…` directives that `kubectl apply`, `set image` and `rollout restart` send.
//!
//! The merge metadata comes from the vendored Kubernetes types ([`crate::schema`]): the `patchStrategy`/
//! `patchMergeKey` of each field (and, where a field has none, its `listType`/`listMapKeys`), and each field's type
//! to walk into. Every other list is atomic (replaced whole), as in Kubernetes. The same metadata gives server-side
//! apply its list-map keys.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::schema::{MergeList, SCHEMA};

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole.
    Atomic,
    /// Elements are objects merged by these keys (the first is the strategic-merge `patchMergeKey`).
    Map(&'static [String]),
    /// Elements are primitives merged as a set.
    Set,
}

/// The merge metadata of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// How the field merges when it is a list.
    pub list: ListType,
    /// The schema type (protobuf message name) of the field, or of its list elements or map values.
    pub ty: Option<&'static str>,
}

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch is not a JSON object.
    #[error("the patch must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A directive is malformed.
    #[error("invalid patch directive at {path}: {message}")]
    Directive {
        /// Where in the object.
        path: String,
        /// What is wrong.
        message: String,
    },
}

const ATOMIC: Field = Field { list: ListType::Atomic, ty: None };
const OBJECT_META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The message of each built-in kind, by kind name: the first served version in the registry wins (the preferred
/// one: autoscaling/v2 for HorizontalPodAutoscaler).
static ROOTS: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    let mut roots = HashMap::new();
    for r in crate::registry::builtin() {
        if let Some(m) = SCHEMA.kind_message(&r.api_version(), &r.kind) {
            roots.entry(r.kind.clone()).or_insert(m);
        }
    }
    roots
});

/// The merge metadata of `field` in schema type `ty` (a protobuf message name); fields without metadata are atomic.
pub fn field(ty: Option<&str>, field: &str) -> Field {
    let Some(f) = ty.and_then(|t| SCHEMA.merge_field(t, field)) else { return ATOMIC };
    let list = match &f.list {
        MergeList::Atomic => ListType::Atomic,
        MergeList::Set => ListType::Set,
        MergeList::Map(keys) => ListType::Map(keys.as_slice()),
    };
    Field { list, ty: f.ty.as_deref() }
}

/// The merge metadata of a top-level field of a `kind` object. Kinds outside the built-in schema (custom
/// resources) merge atomically below their `metadata`.
pub fn root_field(kind: &str, name: &str) -> Field {
    match ROOTS.get(kind) {
        Some(root) => field(Some(root.as_str()), name),
        None if name == "metadata" => Field { list: ListType::Atomic, ty: Some(OBJECT_META) },
        None => ATOMIC,
    }
}

/// Where the merge walks: the root of a kind, or a schema type below it.
#[derive(Debug, Clone, Copy)]
enum At<'a> {
    Root(&'a str),
    Type(Option<&'static str>),
}

impl At<'_> {
    fn field(&self, name: &str) -> Field {
        match self {
            At::Root(kind) => root_field(kind, name),
            At::Type(ty) => field(*ty, name),
        }
    }
}

/// Applies a strategic merge patch to an object of `kind`.
pub fn apply(original: &Value, patch: &Value, kind: &str) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::NotAnObject(type_name(patch)));
    };
    let empty = Map::new();
    let o = original.as_object().unwrap_or(&empty);
    Ok(Value::Object(merge_map(o, p, At::Root(kind), "")?.unwrap_or_default()))
}

use crate::meta::describe_type as type_name;

fn directive<'a>(p: &'a Map<String, Value>, path: &str) -> Result<Option<&'a str>, PatchError> {
    match p.get("$patch") {
        None => Ok(None),
        Some(Value::String(s)) if matches!(s.as_str(), "replace" | "delete" | "merge") => Ok(Some(s)),
        Some(other) => {
            Err(PatchError::Directive { path: path.to_string(), message: format!("unknown $patch value {other}") })
        }
    }
}

/// Merges `patch` into `orig`; `None` means the map itself is deleted.
fn merge_map(
    orig: &Map<String, Value>,
    patch: &Map<String, Value>,
    at: At<'_>,
    path: &str,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match directive(patch, path)? {
        Some("replace") => return Ok(Some(clean_map(patch))),
        Some("delete") => return Ok(None),
        _ => {}
    }
    let mut out = orig.clone();
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (k, pv) in patch {
        let here = format!("{path}.{k}");
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(f) = k.strip_prefix("$setElementOrder/") {
            let Value::Array(order) = pv else {
                return Err(PatchError::Directive { path: here, message: "$setElementOrder needs a list".into() });
            };
            orders.push((f, order));
            continue;
        }
        if let Some(f) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let Value::Array(gone) = pv else {
                return Err(PatchError::Directive {
                    path: here,
                    message: "$deleteFromPrimitiveList needs a list".into(),
                });
            };
            if let Some(Value::Array(list)) = out.get_mut(f) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let f = at.field(k);
        let merged = match (out.get(k), pv) {
            (Some(Value::Object(o)), Value::Object(p)) => merge_map(o, p, At::Type(f.ty), &here)?.map(Value::Object),
            (Some(Value::Array(o)), Value::Array(p)) => Some(Value::Array(merge_list(o, p, f, &here)?)),
            (_, Value::Object(p)) => merge_map(&Map::new(), p, At::Type(f.ty), &here)?.map(Value::Object),
            (_, Value::Array(p)) => Some(Value::Array(merge_list(&[], p, f, &here)?)),
            (_, v) => Some(v.clone()),
        };
        match merged {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                out.remove(k);
            }
        }
    }
    for (f, order) in orders {
        let fi = at.field(f);
        if let Some(Value::Array(list)) = out.get_mut(f) {
            reorder(list, order, fi.list);
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let Value::Array(keys) = retain else {
            return Err(PatchError::Directive { path: path.to_string(), message: "$retainKeys needs a list".into() });
        };
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Some(out))
}

fn merge_list(orig: &[Value], patch: &[Value], f: Field, path: &str) -> Result<Vec<Value>, PatchError> {
    match f.list {
        ListType::Atomic => Ok(patch.iter().map(clean).collect()),
        ListType::Set => {
            let mut out = orig.to_vec();
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListType::Map(keys) => {
            let key = keys[0].as_str();
            if patch.iter().any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace")) {
                return Ok(patch
                    .iter()
                    .filter(|p| p.get("$patch").and_then(Value::as_str) != Some("replace"))
                    .map(clean)
                    .collect());
            }
            let mut out: Vec<Value> = orig.to_vec();
            for p in patch {
                let Value::Object(pm) = p else {
                    // a primitive in a keyed list: treat the list as atomic for this element
                    out.push(p.clone());
                    continue;
                };
                let Some(kv) = pm.get(key) else {
                    if directive(pm, path)? == Some("delete") {
                        continue;
                    }
                    out.push(clean(p));
                    continue;
                };
                let pos = out.iter().position(|o| o.get(key) == Some(kv));
                if directive(pm, path)? == Some("delete") {
                    out.retain(|o| o.get(key) != Some(kv));
                    continue;
                }
                let elem_path = format!("{path}[{key}={kv}]");
                match pos {
                    Some(i) => {
                        let current = out[i].as_object().cloned().unwrap_or_default();
                        match merge_map(&current, pm, At::Type(f.ty), &elem_path)? {
                            Some(m) => out[i] = Value::Object(m),
                            None => {
                                out.remove(i);
                            }
                        }
                    }
                    None => {
                        if let Some(m) = merge_map(&Map::new(), pm, At::Type(f.ty), &elem_path)? {
                            out.push(Value::Object(m));
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Orders `list` as `order` says; elements the order does not name keep their relative order, after the others.
fn reorder(list: &mut Vec<Value>, order: &[Value], lt: ListType) {
    let key_of = |v: &Value| -> Option<Value> {
        match lt {
            ListType::Map(keys) => v.get(&keys[0]).cloned(),
            _ => Some(v.clone()),
        }
    };
    let wanted: Vec<Value> = order.iter().filter_map(key_of).collect();
    let mut ranked: Vec<(usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, v)| {
            let rank = key_of(&v).and_then(|k| wanted.iter().position(|w| *w == k)).unwrap_or(wanted.len() + i);
            (rank, v)
        })
        .collect();
    ranked.sort_by_key(|(r, _)| *r);
    list.extend(ranked.into_iter().map(|(_, v)| v));
}

fn clean_map(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), clean(v))).collect()
}

/// Removes patch directives from a value that is inserted as a whole.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(clean_map(m)),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {
                "replicas": 2,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}, {"containerPort": 9090, "name": "metrics"}],
                     "env": [{"name": "A", "value": "1"}]},
                    {"name": "sidecar", "image": "busybox"}
                ]}}
            }
        })
    }

    #[test]
    fn set_image_merges_the_container_by_name() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
            "containers": [{"image": "nginx:1.27", "name": "web"}]}}}});
        let out = apply(&deployment(), &patch, "Deployment").expect("applies");
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "nginx:1.27");
        assert_eq!(c[0]["ports"][1]["name"], "metrics", "untouched fields stay");
        assert_eq!(c[1]["name"], "sidecar");
    }

    #[test]
    fn delete_directives_remove_list_elements() {
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}, "template": {"spec": {
            "containers": [{"name": "web", "ports": [{"$patch": "delete", "containerPort": 9090}]}, {"$patch": "delete", "name": "sidecar"}]}}}});
        let out = apply(&deployment(), &patch, "Deployment").expect("applies");
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let c = out["spec"]["template"]["spec"]["containers"].as_array().expect("list");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["ports"], json!([{"containerPort": 80}]));
    }

    #[test]
    fn null_deletes_and_new_elements_append() {
        let patch = json!({"metadata": {"labels": {"app": null, "tier": "frontend"}}, "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
            "containers": [{"$setElementOrder/ports": [{"containerPort": 80}, {"containerPort": 9090}, {"containerPort": 8443}],
                            "env": null, "name": "web", "ports": [{"containerPort": 8443, "name": "tls"}]}]}}}});
        let out = apply(&deployment(), &patch, "Deployment").expect("applies");
        assert_eq!(out["metadata"]["labels"], json!({"tier": "frontend"}));
        let web = &out["spec"]["template"]["spec"]["containers"][0];
        assert!(web.get("env").is_none());
        assert_eq!(web["ports"].as_array().expect("list").len(), 3);
        assert_eq!(web["ports"][2]["name"], "tls");
    }

    #[test]
    fn primitive_sets_and_their_delete_directive() {
        let out =
            apply(&deployment(), &json!({"metadata": {"finalizers": ["b", "a"]}}), "Deployment").expect("applies");
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        let out = apply(&out, &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}), "Deployment")
            .expect("applies");
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn atomic_lists_are_replaced_and_replace_directive_replaces_maps() {
        let cm = json!({"kind": "ConfigMap", "data": {"A": "1", "B": "2"}});
        let out = apply(&cm, &json!({"data": {"A": null, "C": "3"}}), "ConfigMap").expect("applies");
        assert_eq!(out["data"], json!({"B": "2", "C": "3"}));
        let out = apply(&cm, &json!({"data": {"$patch": "replace", "Z": "9"}}), "ConfigMap").expect("applies");
        assert_eq!(out["data"], json!({"Z": "9"}));
        let svc = json!({"spec": {"externalIPs": ["1.1.1.1", "2.2.2.2"], "ports": [{"port": 80}, {"port": 443}]}});
        let out = apply(
            &svc,
            &json!({"spec": {"externalIPs": ["3.3.3.3"], "ports": [{"port": 80, "name": "http"}]}}),
            "Service",
        )
        .expect("applies");
        assert_eq!(out["spec"]["externalIPs"], json!(["3.3.3.3"]));
        assert_eq!(out["spec"]["ports"], json!([{"port": 80, "name": "http"}, {"port": 443}]));
    }

    #[test]
    fn rollout_restart_adds_an_annotation_to_the_template() {
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-21T07:21:54Z"}}}}});
        let out = apply(&deployment(), &patch, "Deployment").expect("applies");
        assert_eq!(
            out["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
            "2026-11-21T07:21:54Z"
        );
        assert_eq!(out["spec"]["template"]["spec"]["containers"].as_array().expect("list").len(), 2);
    }

    #[test]
    fn merge_metadata_is_upstreams_from_the_vendored_types() {
        let pod_spec = root_field("Pod", "spec").ty;
        assert_eq!(pod_spec, Some("k8s.io.api.core.v1.PodSpec"));
        let containers = field(pod_spec, "containers");
        assert!(matches!(containers.list, ListType::Map(k) if k == ["name"]));
        let ports = field(containers.ty, "ports");
        assert!(matches!(ports.list, ListType::Map(k) if k == ["containerPort", "protocol"]));
        // the hand-kept table merged resizePolicy by resourceName; upstream keeps it atomic
        assert_eq!(field(containers.ty, "resizePolicy").list, ListType::Atomic);
        assert_eq!(field(pod_spec, "tolerations").list, ListType::Atomic);
        assert!(matches!(field(pod_spec, "hostAliases").list, ListType::Map(k) if k == ["ip"]));
        // embedded structs: a Volume's sources are its own fields
        let volumes = field(pod_spec, "volumes");
        assert_eq!(field(volumes.ty, "configMap").ty, Some("k8s.io.api.core.v1.ConfigMapVolumeSource"));
        assert_eq!(field(root_field("Deployment", "metadata").ty, "finalizers").list, ListType::Set);
        assert_eq!(root_field("Widget", "metadata").ty, Some(OBJECT_META), "custom resources keep metadata");
        assert_eq!(
            root_field("HorizontalPodAutoscaler", "spec").ty,
            Some("k8s.io.api.autoscaling.v2.HorizontalPodAutoscalerSpec")
        );
    }

    #[test]
    fn a_patch_that_is_not_an_object_is_rejected() {
        assert!(apply(&deployment(), &json!([1]), "Deployment").is_err());
        assert!(apply(&deployment(), &json!({"spec": {"$patch": "explode"}}), "Deployment").is_err());
    }
}

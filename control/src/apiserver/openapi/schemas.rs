//! The JSON schemas of the built-in kinds for the OpenAPI v3 documents (what `kubectl explain` reads, and what
//! kubectl's client-side apply takes its strategic-merge metadata from).
//!
//! The schemas themselves come from k8s-openapi, which generates them from the upstream OpenAPI document of the
//! served version (names such as `io.k8s.api.apps.v1.Deployment`, descriptions, types, required fields). What it
//! leaves out is added here from the vendored Go types (`api/vendor/kubernetes/json-fields.tsv`): the
//! `x-kubernetes-patch-strategy`/`-patch-merge-key`/`-list-type`/`-list-map-keys`/`-map-type` extensions, and
//! `x-kubernetes-group-version-kind` on each kind.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use skiff_api::schema::SCHEMA;

/// Registers the schema of one kind with the generator; returns its definition name.
type Register = fn(&mut SchemaGenerator) -> String;

fn register<T: schemars::JsonSchema>(g: &mut SchemaGenerator) -> String {
    g.subschema_for::<T>();
    T::schema_name().into_owned()
}

macro_rules! kinds {
    ($(($group:literal, $version:literal, $kind:literal) => $t:ty),* $(,)?) => {
        /// (group, version, kind) → how to register its schema.
        const KINDS: &[(&str, &str, &str, Register)] = &[$(($group, $version, $kind, register::<$t>)),*];
    };
}

kinds! {
    ("", "v1", "Pod") => api::core::v1::Pod,
    ("", "v1", "Service") => api::core::v1::Service,
    ("", "v1", "Endpoints") => api::core::v1::Endpoints,
    ("", "v1", "ConfigMap") => api::core::v1::ConfigMap,
    ("", "v1", "Secret") => api::core::v1::Secret,
    ("", "v1", "Namespace") => api::core::v1::Namespace,
    ("", "v1", "Node") => api::core::v1::Node,
    ("", "v1", "Event") => api::core::v1::Event,
    ("", "v1", "ServiceAccount") => api::core::v1::ServiceAccount,
    ("", "v1", "PersistentVolume") => api::core::v1::PersistentVolume,
    ("", "v1", "PersistentVolumeClaim") => api::core::v1::PersistentVolumeClaim,
    ("", "v1", "ResourceQuota") => api::core::v1::ResourceQuota,
    ("", "v1", "LimitRange") => api::core::v1::LimitRange,
    ("apps", "v1", "Deployment") => api::apps::v1::Deployment,
    ("apps", "v1", "ReplicaSet") => api::apps::v1::ReplicaSet,
    ("apps", "v1", "StatefulSet") => api::apps::v1::StatefulSet,
    ("apps", "v1", "DaemonSet") => api::apps::v1::DaemonSet,
    ("apps", "v1", "ControllerRevision") => api::apps::v1::ControllerRevision,
    ("batch", "v1", "Job") => api::batch::v1::Job,
    ("batch", "v1", "CronJob") => api::batch::v1::CronJob,
    ("autoscaling", "v2", "HorizontalPodAutoscaler") => api::autoscaling::v2::HorizontalPodAutoscaler,
    ("autoscaling", "v1", "HorizontalPodAutoscaler") => api::autoscaling::v1::HorizontalPodAutoscaler,
    ("networking.k8s.io", "v1", "Ingress") => api::networking::v1::Ingress,
    ("networking.k8s.io", "v1", "IngressClass") => api::networking::v1::IngressClass,
    ("networking.k8s.io", "v1", "NetworkPolicy") => api::networking::v1::NetworkPolicy,
    ("discovery.k8s.io", "v1", "EndpointSlice") => api::discovery::v1::EndpointSlice,
    ("coordination.k8s.io", "v1", "Lease") => api::coordination::v1::Lease,
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition") => apiextensions::CustomResourceDefinition,
    ("policy", "v1", "PodDisruptionBudget") => api::policy::v1::PodDisruptionBudget,
    ("storage.k8s.io", "v1", "StorageClass") => api::storage::v1::StorageClass,
    ("scheduling.k8s.io", "v1", "PriorityClass") => api::scheduling::v1::PriorityClass,
    ("rbac.authorization.k8s.io", "v1", "Role") => api::rbac::v1::Role,
    ("rbac.authorization.k8s.io", "v1", "RoleBinding") => api::rbac::v1::RoleBinding,
    ("rbac.authorization.k8s.io", "v1", "ClusterRole") => api::rbac::v1::ClusterRole,
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding") => api::rbac::v1::ClusterRoleBinding,
    ("authentication.k8s.io", "v1", "SelfSubjectReview") => api::authentication::v1::SelfSubjectReview,
    ("authorization.k8s.io", "v1", "SelfSubjectAccessReview") => api::authorization::v1::SelfSubjectAccessReview,
    ("authorization.k8s.io", "v1", "SelfSubjectRulesReview") => api::authorization::v1::SelfSubjectRulesReview,
    ("authorization.k8s.io", "v1", "SubjectAccessReview") => api::authorization::v1::SubjectAccessReview,
    ("authorization.k8s.io", "v1", "LocalSubjectAccessReview") => api::authorization::v1::LocalSubjectAccessReview,
}

/// The protobuf message name of an OpenAPI definition name (`io.k8s.api.apps.v1.Deployment` →
/// `k8s.io.api.apps.v1.Deployment`), the key of the vendored notes.
fn proto_name(definition: &str) -> Option<String> {
    let rest = definition.strip_prefix("io.k8s.")?;
    Some(format!("k8s.io.{}", rest.replace("apiextensions-apiserver", "apiextensions_apiserver")))
}

/// Adds the list/patch extensions to the properties of one definition.
fn annotate(name: &str, schema: &mut Value) {
    let Some(message) = proto_name(name) else { return };
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else { return };
    for (field, prop) in props.iter_mut() {
        let Some(meta) = SCHEMA.list_meta(&message, field) else { continue };
        let Some(p) = prop.as_object_mut() else { continue };
        let mut put = |k: &str, v: Value| {
            p.insert(k.to_string(), v);
        };
        if let Some(s) = &meta.strategy {
            put("x-kubernetes-patch-strategy", json!(s));
        }
        if let Some(k) = &meta.merge_key {
            put("x-kubernetes-patch-merge-key", json!(k));
        }
        if let Some(t) = &meta.list_type {
            put("x-kubernetes-list-type", json!(t));
        }
        if !meta.list_map_keys.is_empty() {
            put("x-kubernetes-list-map-keys", json!(meta.list_map_keys));
        }
        if let Some(t) = &meta.map_type {
            put("x-kubernetes-map-type", json!(t));
        }
    }
}

/// Every definition reachable from the built-in kinds, annotated, and which kind each top-level one is.
struct Generated {
    definitions: BTreeMap<String, Value>,
    /// (group, version, kind) → definition name.
    kinds: BTreeMap<(String, String, String), String>,
}

static GENERATED: LazyLock<Generated> = LazyLock::new(|| {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut kinds = BTreeMap::new();
    for (group, version, kind, reg) in KINDS {
        let name = reg(&mut g);
        kinds.insert((group.to_string(), version.to_string(), kind.to_string()), name);
    }
    let mut definitions: BTreeMap<String, Value> = g.take_definitions(true).into_iter().collect();
    for (name, schema) in &mut definitions {
        annotate(name, schema);
    }
    for ((group, version, kind), name) in &kinds {
        if let Some(Value::Object(def)) = definitions.get_mut(name) {
            def.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": version, "kind": kind}]),
            );
            // k8s-openapi marks `metadata` required because its field is not optional; Kubernetes does not
            if let Some(Value::Array(req)) = def.get_mut("required") {
                req.retain(|r| r != "metadata");
                if req.is_empty() {
                    def.remove("required");
                }
            }
        }
    }
    Generated { definitions, kinds }
});

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                out.push(r.to_string());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The schemas of the built-in kinds of one group-version and everything they refer to (`components.schemas`).
pub fn for_group_version(group: &str, version: &str) -> Map<String, Value> {
    let generated = &*GENERATED;
    let mut todo: Vec<String> = generated
        .kinds
        .iter()
        .filter(|((g, v, _), _)| g == group && v == version)
        .map(|(_, name)| name.clone())
        .collect();
    let mut out = Map::new();
    while let Some(name) = todo.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let Some(def) = generated.definitions.get(&name) else { continue };
        refs(def, &mut todo);
        out.insert(name, def.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_carries_its_gvk_descriptions_and_the_upstream_list_metadata() {
        let s = for_group_version("apps", "v1");
        let d = &s["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        assert!(d["description"].as_str().is_some_and(|t| t.contains("declarative updates")));
        assert!(d.get("required").is_none(), "metadata is not required: {d}");
        let containers = &s["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        let ports = &s["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-list-map-keys"], json!(["containerPort", "protocol"]));
        assert_eq!(
            s["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"]["x-kubernetes-patch-strategy"],
            "merge,retainKeys"
        );
        assert!(s.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"), "references are followed");
        assert!(!s.contains_key("io.k8s.api.batch.v1.Job"), "other groups stay out");
    }

    #[test]
    fn every_reference_resolves_within_the_document() {
        for (g, v) in [("", "v1"), ("apps", "v1"), ("apiextensions.k8s.io", "v1"), ("autoscaling", "v1")] {
            let s = for_group_version(g, v);
            let mut all = Vec::new();
            s.values().for_each(|d| refs(d, &mut all));
            for r in all {
                assert!(s.contains_key(&r), "{g}/{v}: {r} is referenced but missing");
            }
        }
    }
}

//! Normalization of a built-in object as the API server stores it: decoded into its k8s-openapi type (which rejects
//! malformed fields and drops unknown ones), defaulted, validated, and encoded back.
//!
//! # Guarantees
//! - Unknown fields are found by comparing the input with its typed round trip, and reported with their paths
//!   (for `fieldValidation=Strict` they are an error, for `Warn` a warning).
//! - Every validation error is reported at once, with its field path.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::defaults as d;
use crate::validation::{self as v, ErrorList, NameRule};

use k8s_openapi::api::{
    apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch, coordination::v1 as coordination,
    core::v1 as core, discovery::v1 as discovery, networking::v1 as networking, policy::v1 as policy, rbac::v1 as rbac,
    scheduling::v1 as scheduling, storage::v1 as storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;

/// Why an object cannot be stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NormalizeError {
    /// The JSON does not decode into the kind's type (400 BadRequest).
    #[error("{0}")]
    Decode(String),
    /// Unknown fields with `fieldValidation=Strict` (400 BadRequest).
    #[error("strict decoding error: {}", .0.iter().map(|f| format!("unknown field \"{f}\"")).collect::<Vec<_>>().join(", "))]
    UnknownFields(Vec<String>),
    /// Validation failed (422 Invalid).
    #[error("{}", .0.summary())]
    Invalid(ErrorList),
}

/// What to do about fields the type does not know (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn.
    #[default]
    Warn,
    /// Reject the request.
    Strict,
}

/// A normalized object.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The object as it will be stored.
    pub object: Value,
    /// Warnings for the `Warning` response header.
    pub warnings: Vec<String>,
}

/// Which steps to run.
#[derive(Debug, Clone, Copy)]
pub struct Steps {
    /// Apply defaults.
    pub defaults: bool,
    /// Validate.
    pub validate: bool,
    /// Unknown-field policy.
    pub fields: FieldValidation,
}

impl Default for Steps {
    fn default() -> Self {
        Steps { defaults: true, validate: true, fields: FieldValidation::Warn }
    }
}

fn run<T: DeserializeOwned + Serialize>(
    input: &Value,
    steps: Steps,
    default: fn(&mut T),
    validate: fn(&T, &mut ErrorList),
) -> Result<Normalized, NormalizeError> {
    // read from the borrowed value: no copy of the whole object per write
    let mut typed = T::deserialize(input).map_err(|e| NormalizeError::Decode(decode_message(&e)))?;
    let mut warnings = Vec::new();
    if steps.fields != FieldValidation::Ignore {
        let round = serde_json::to_value(&typed).map_err(|e| NormalizeError::Decode(e.to_string()))?;
        let mut unknown = Vec::new();
        unknown_fields(input, &round, "", &mut unknown);
        unknown.sort();
        if !unknown.is_empty() {
            if steps.fields == FieldValidation::Strict {
                return Err(NormalizeError::UnknownFields(unknown));
            }
            warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
        }
    }
    if steps.defaults {
        default(&mut typed);
    }
    if steps.validate {
        let mut errs = ErrorList::default();
        validate(&typed, &mut errs);
        if !errs.is_empty() {
            return Err(NormalizeError::Invalid(errs));
        }
    }
    let mut object = serde_json::to_value(&typed).map_err(|e| NormalizeError::Decode(e.to_string()))?;
    drop_nested_type_meta(input, &mut object);
    Ok(Normalized { object, warnings })
}

/// k8s-openapi writes `apiVersion`/`kind` into every resource it serializes, also when one is nested (a
/// StatefulSet's `volumeClaimTemplates`); Kubernetes omits them there unless the manifest had them.
fn drop_nested_type_meta(input: &Value, object: &mut Value) {
    if object.get("kind").and_then(Value::as_str) != Some("StatefulSet") {
        return;
    }
    let given = input.pointer("/spec/volumeClaimTemplates").and_then(Value::as_array);
    if let Some(Value::Array(claims)) = object.pointer_mut("/spec/volumeClaimTemplates") {
        for (n, claim) in claims.iter_mut().enumerate() {
            let had = |f: &str| given.and_then(|g| g.get(n)).is_some_and(|c| c.get(f).is_some());
            if let Value::Object(m) = claim {
                for f in ["apiVersion", "kind"] {
                    if !had(f) {
                        m.remove(f);
                    }
                }
            }
        }
    }
}

/// Go's base64 decoder, which Kubernetes uses for `[]byte` fields, skips line breaks: manifests often carry Secret
/// data as multi-line YAML blocks. The stored (canonical) form has none.
fn strip_base64_line_breaks(secret: &mut Value) {
    if let Some(Value::Object(data)) = secret.get_mut("data") {
        for v in data.values_mut() {
            if let Value::String(s) = v
                && s.contains(['\n', '\r'])
            {
                s.retain(|c| c != '\n' && c != '\r');
            }
        }
    }
}

fn decode_message(e: &serde_json::Error) -> String {
    format!("error decoding the object: {e}")
}

/// Collects paths present in `input` but absent from its typed round trip.
fn unknown_fields(input: &Value, round: &Value, path: &str, out: &mut Vec<String>) {
    match (input, round) {
        (Value::Object(i), Value::Object(r)) => {
            for (k, iv) in i {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match r.get(k) {
                    Some(rv) => unknown_fields(iv, rv, &p, out),
                    None if iv.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(r)) if i.len() == r.len() => {
            for (n, (iv, rv)) in i.iter().zip(r).enumerate() {
                unknown_fields(iv, rv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn meta_only<T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
    namespaced: bool,
) -> impl Fn(&T, &mut ErrorList) {
    move |o, errs| v::validate_object_meta(o.metadata(), namespaced, NameRule::Dns1123Subdomain, errs)
}

fn none<T>(_: &mut T) {}

/// RBAC objects are named as path segments, not DNS names: Kubernetes' own roles are `system:node`,
/// `system:controller:deployment-controller` (`ValidateRBACName` upstream).
fn rbac_meta<T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
    namespaced: bool,
) -> impl Fn(&T, &mut ErrorList) {
    move |o, errs| v::validate_object_meta(o.metadata(), namespaced, NameRule::PathSegment, errs)
}

macro_rules! rbac_validator {
    ($t:ty, $ns:expr) => {{
        fn f(o: &$t, errs: &mut ErrorList) {
            rbac_meta::<$t>($ns)(o, errs)
        }
        f as fn(&$t, &mut ErrorList)
    }};
}

macro_rules! meta_validator {
    ($t:ty, $ns:expr) => {{
        fn f(o: &$t, errs: &mut ErrorList) {
            meta_only::<$t>($ns)(o, errs)
        }
        f as fn(&$t, &mut ErrorList)
    }};
}

/// Normalizes a built-in object (chosen by its `apiVersion` and `kind`); returns `None` for kinds this crate does
/// not type (custom resources), which the caller stores as they are.
pub fn normalize(input: &Value, steps: Steps) -> Option<Result<Normalized, NormalizeError>> {
    let api_version = input.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = input.get("kind").and_then(Value::as_str).unwrap_or_default();
    let secret;
    let i = if api_version == "v1" && kind == "Secret" {
        let mut s = input.clone();
        strip_base64_line_breaks(&mut s);
        secret = s;
        &secret
    } else {
        input
    };
    let s = steps;
    Some(match (api_version, kind) {
        ("v1", "Pod") => run::<core::Pod>(
            i,
            s,
            |p| {
                if let Some(spec) = p.spec.as_mut() {
                    d::default_pod_spec(spec)
                }
            },
            v::validate_pod,
        ),
        ("v1", "Service") => run::<core::Service>(i, s, d::default_service, v::validate_service),
        ("v1", "Endpoints") => run::<core::Endpoints>(i, s, none, meta_validator!(core::Endpoints, true)),
        ("v1", "ConfigMap") => run::<core::ConfigMap>(i, s, none, v::validate_config_map),
        ("v1", "Secret") => run::<core::Secret>(i, s, d::default_secret, v::validate_secret),
        ("v1", "Namespace") => run::<core::Namespace>(i, s, d::default_namespace, v::validate_namespace),
        ("v1", "Node") => run::<core::Node>(i, s, none, v::validate_node),
        ("v1", "Event") => run::<core::Event>(i, s, none, v::validate_event),
        ("v1", "ServiceAccount") => run::<core::ServiceAccount>(i, s, none, v::validate_service_account),
        ("v1", "PersistentVolume") => run::<core::PersistentVolume>(i, s, none, v::validate_pv),
        ("v1", "PersistentVolumeClaim") => run::<core::PersistentVolumeClaim>(i, s, d::default_pvc, v::validate_pvc),
        ("v1", "ResourceQuota") => run::<core::ResourceQuota>(i, s, none, v::validate_resource_quota),
        ("v1", "LimitRange") => run::<core::LimitRange>(i, s, none, meta_validator!(core::LimitRange, true)),
        ("apps/v1", "Deployment") => run::<apps::Deployment>(i, s, d::default_deployment, v::validate_deployment),
        ("apps/v1", "ReplicaSet") => run::<apps::ReplicaSet>(i, s, d::default_replica_set, v::validate_replica_set),
        ("apps/v1", "StatefulSet") => run::<apps::StatefulSet>(i, s, d::default_stateful_set, v::validate_stateful_set),
        ("apps/v1", "DaemonSet") => run::<apps::DaemonSet>(i, s, d::default_daemon_set, v::validate_daemon_set),
        ("apps/v1", "ControllerRevision") => {
            run::<apps::ControllerRevision>(i, s, none, meta_validator!(apps::ControllerRevision, true))
        }
        ("batch/v1", "Job") => run::<batch::Job>(i, s, d::default_job, v::validate_job),
        ("batch/v1", "CronJob") => run::<batch::CronJob>(i, s, d::default_cron_job, v::validate_cron_job),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => {
            run::<autoscaling::HorizontalPodAutoscaler>(i, s, d::default_hpa, v::validate_hpa)
        }
        ("networking.k8s.io/v1", "Ingress") => run::<networking::Ingress>(i, s, none, v::validate_ingress),
        ("networking.k8s.io/v1", "IngressClass") => {
            run::<networking::IngressClass>(i, s, none, v::validate_ingress_class)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            run::<networking::NetworkPolicy>(i, s, none, v::validate_network_policy)
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            run::<discovery::EndpointSlice>(i, s, none, v::validate_endpoint_slice)
        }
        ("coordination.k8s.io/v1", "Lease") => run::<coordination::Lease>(i, s, none, v::validate_lease),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            run::<apiextensions::CustomResourceDefinition>(i, s, none, v::validate_crd)
        }
        ("policy/v1", "PodDisruptionBudget") => {
            run::<policy::PodDisruptionBudget>(i, s, none, meta_validator!(policy::PodDisruptionBudget, true))
        }
        ("storage.k8s.io/v1", "StorageClass") => {
            run::<storage::StorageClass>(i, s, none, meta_validator!(storage::StorageClass, false))
        }
        ("scheduling.k8s.io/v1", "PriorityClass") => {
            run::<scheduling::PriorityClass>(i, s, none, meta_validator!(scheduling::PriorityClass, false))
        }
        ("rbac.authorization.k8s.io/v1", "Role") => run::<rbac::Role>(i, s, none, rbac_validator!(rbac::Role, true)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            run::<rbac::RoleBinding>(i, s, none, rbac_validator!(rbac::RoleBinding, true))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            run::<rbac::ClusterRole>(i, s, none, rbac_validator!(rbac::ClusterRole, false))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            run::<rbac::ClusterRoleBinding>(i, s, none, rbac_validator!(rbac::ClusterRoleBinding, false))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}})
    }

    #[test]
    fn defaults_are_filled_in() {
        let n = normalize(&deployment(), Steps::default()).expect("typed").expect("valid");
        let spec = &n.object["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(spec["template"]["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    }

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        let mut d = deployment();
        d["spec"]["replicaz"] = json!(3);
        d["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("x");
        let strict = Steps { fields: FieldValidation::Strict, ..Steps::default() };
        match normalize(&d, strict).expect("typed") {
            Err(NormalizeError::UnknownFields(f)) => {
                assert_eq!(f, vec!["spec.replicaz".to_string(), "spec.template.spec.containers[0].imagee".to_string()])
            }
            other => panic!("expected unknown fields, got {other:?}"),
        }
        let warned = normalize(&d, Steps::default()).expect("typed").expect("warn only");
        assert_eq!(warned.warnings.len(), 2);
        assert!(warned.object["spec"].get("replicaz").is_none());
    }

    #[test]
    fn a_wrong_type_is_a_decode_error_and_invalid_specs_list_every_field() {
        let mut d = deployment();
        d["spec"]["replicas"] = json!("three");
        assert!(matches!(normalize(&d, Steps::default()), Some(Err(NormalizeError::Decode(_)))));
        let mut d = deployment();
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        match normalize(&d, Steps::default()).expect("typed") {
            Err(NormalizeError::Invalid(errs)) => {
                let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, vec!["spec.replicas", "spec.template.metadata.labels"]);
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn custom_kinds_are_not_typed() {
        assert!(normalize(&json!({"apiVersion": "example.com/v1", "kind": "Widget"}), Steps::default()).is_none());
    }
}

//! Validation of configuration, storage, cluster and extension kinds.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, ResourceQuota, Secret, ServiceAccount,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::ErrorList;
use super::common::{NameRule, is_dns1035_label, is_dns1123_subdomain, quantity, validate_object_meta};
use super::pod::check_enum;

/// At most this many bytes of data in a ConfigMap or Secret.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

fn config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_keys<'a>(keys: impl Iterator<Item = &'a String>, path: &str, errs: &mut ErrorList) {
    for k in keys {
        if !config_key(k) {
            errs.invalid(format!("{path}[{k}]"), k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
        }
    }
}

/// Validates a ConfigMap.
pub fn validate_config_map(c: &ConfigMap, errs: &mut ErrorList) {
    validate_object_meta(&c.metadata, true, NameRule::Dns1123Subdomain, errs);
    check_keys(c.data.iter().flat_map(|d| d.keys()), "data", errs);
    check_keys(c.binary_data.iter().flat_map(|d| d.keys()), "binaryData", errs);
    for k in c.data.iter().flat_map(|d| d.keys()) {
        if c.binary_data.as_ref().is_some_and(|b| b.contains_key(k)) {
            errs.invalid(format!("data[{k}]"), k, "duplicate of key present in binaryData");
        }
    }
    let size: usize = c.data.iter().flatten().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + c.binary_data.iter().flatten().map(|(k, v)| k.len() + v.0.len()).sum::<usize>();
    if size > MAX_CONFIG_BYTES {
        errs.push("data", super::ErrorKind::TooLong, None, format!("must have at most {MAX_CONFIG_BYTES} bytes"));
    }
}

/// Validates a Secret.
pub fn validate_secret(s: &Secret, errs: &mut ErrorList) {
    validate_object_meta(&s.metadata, true, NameRule::Dns1123Subdomain, errs);
    check_keys(s.data.iter().flat_map(|d| d.keys()), "data", errs);
    let size: usize = s.data.iter().flatten().map(|(k, v)| k.len() + v.0.len()).sum();
    if size > MAX_CONFIG_BYTES {
        errs.push("data", super::ErrorKind::TooLong, None, format!("must have at most {MAX_CONFIG_BYTES} bytes"));
    }
    let has = |k: &str| {
        s.data.as_ref().is_some_and(|d| d.contains_key(k)) || s.string_data.as_ref().is_some_and(|d| d.contains_key(k))
    };
    match s.type_.as_deref() {
        Some("kubernetes.io/tls") => {
            for k in ["tls.crt", "tls.key"] {
                if !has(k) {
                    errs.required(format!("data[{k}]"), "");
                }
            }
        }
        Some("kubernetes.io/dockerconfigjson") if !has(".dockerconfigjson") => {
            errs.required("data[.dockerconfigjson]", "")
        }
        Some("kubernetes.io/basic-auth") if !has("username") && !has("password") => {
            errs.required("data", "either username or password is required")
        }
        _ => {}
    }
}

/// Validates a Namespace.
pub fn validate_namespace(n: &Namespace, errs: &mut ErrorList) {
    validate_object_meta(&n.metadata, false, NameRule::Dns1123Label, errs);
}

/// Validates a Node.
pub fn validate_node(n: &Node, errs: &mut ErrorList) {
    validate_object_meta(&n.metadata, false, NameRule::Dns1123Subdomain, errs);
    for (i, t) in n.spec.iter().flat_map(|s| s.taints.iter().flatten()).enumerate() {
        check_enum(
            &t.effect,
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            &format!("spec.taints[{i}].effect"),
            errs,
        );
        if t.key.is_empty() {
            errs.required(format!("spec.taints[{i}].key"), "");
        }
    }
}

/// Validates a ServiceAccount.
pub fn validate_service_account(s: &ServiceAccount, errs: &mut ErrorList) {
    validate_object_meta(&s.metadata, true, NameRule::Dns1123Subdomain, errs);
}

/// Validates an Event.
pub fn validate_event(e: &Event, errs: &mut ErrorList) {
    validate_object_meta(&e.metadata, true, NameRule::PathSegment, errs);
    if e.involved_object.kind.as_deref().unwrap_or_default().is_empty()
        && e.involved_object.name.as_deref().unwrap_or_default().is_empty()
    {
        errs.required("involvedObject", "");
    }
}

/// Validates a Lease.
pub fn validate_lease(l: &Lease, errs: &mut ErrorList) {
    validate_object_meta(&l.metadata, true, NameRule::Dns1123Subdomain, errs);
    if let Some(d) = l.spec.as_ref().and_then(|s| s.lease_duration_seconds).filter(|d| *d <= 0) {
        errs.invalid("spec.leaseDurationSeconds", d, "must be greater than 0");
    }
}

/// Validates a ResourceQuota.
pub fn validate_resource_quota(q: &ResourceQuota, errs: &mut ErrorList) {
    validate_object_meta(&q.metadata, true, NameRule::Dns1123Subdomain, errs);
    for (k, v) in q.spec.iter().flat_map(|s| s.hard.iter().flatten()) {
        if let Some(parsed) = quantity(v, &format!("spec.hard[{k}]"), errs)
            && parsed.as_nanos() < 0
        {
            errs.invalid(format!("spec.hard[{k}]"), &v.0, "must be greater than or equal to 0");
        }
    }
}

const ACCESS_MODES: &[&str] = &["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];

/// Validates a PersistentVolumeClaim.
pub fn validate_pvc(c: &PersistentVolumeClaim, errs: &mut ErrorList) {
    validate_object_meta(&c.metadata, true, NameRule::Dns1123Subdomain, errs);
    let Some(spec) = &c.spec else { return errs.required("spec", "") };
    match &spec.access_modes {
        None => errs.required("spec.accessModes", "at least 1 access mode is required"),
        Some(m) if m.is_empty() => errs.required("spec.accessModes", "at least 1 access mode is required"),
        Some(m) => {
            for (i, a) in m.iter().enumerate() {
                check_enum(a, ACCESS_MODES, &format!("spec.accessModes[{i}]"), errs);
            }
        }
    }
    match spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")) {
        None => errs.required("spec.resources[storage]", ""),
        Some(q) => {
            quantity(q, "spec.resources.requests[storage]", errs);
        }
    }
}

/// Validates a PersistentVolume.
pub fn validate_pv(v: &PersistentVolume, errs: &mut ErrorList) {
    validate_object_meta(&v.metadata, false, NameRule::Dns1123Subdomain, errs);
    let Some(spec) = &v.spec else { return errs.required("spec", "") };
    if spec.capacity.as_ref().and_then(|c| c.get("storage")).is_none() {
        errs.required("spec.capacity[storage]", "");
    }
    if spec.host_path.is_none() && spec.local.is_none() && spec.nfs.is_none() && spec.csi.is_none() {
        errs.required("spec", "must specify a volume type");
    }
}

/// Validates a CustomResourceDefinition.
pub fn validate_crd(c: &CustomResourceDefinition, errs: &mut ErrorList) {
    validate_object_meta(&c.metadata, false, NameRule::Dns1123Subdomain, errs);
    let s = &c.spec;
    if s.group.is_empty() || !is_dns1123_subdomain(&s.group) || !s.group.contains('.') {
        errs.invalid("spec.group", &s.group, "should be a domain with at least one dot");
    }
    if !is_dns1035_label(&s.names.plural) {
        errs.invalid("spec.names.plural", &s.names.plural, "must be a DNS-1035 label");
    }
    if s.names.kind.is_empty() {
        errs.required("spec.names.kind", "");
    }
    let expected = format!("{}.{}", s.names.plural, s.group);
    if c.metadata.name.as_deref() != Some(expected.as_str()) {
        errs.invalid(
            "metadata.name",
            c.metadata.name.as_deref().unwrap_or_default(),
            format!("must be spec.names.plural+\".\"+spec.group ({expected})"),
        );
    }
    check_enum(&s.scope, &["Cluster", "Namespaced"], "spec.scope", errs);
    if s.versions.is_empty() {
        errs.required("spec.versions", "must have exactly one version marked as storage version");
    }
    if s.versions.iter().filter(|v| v.storage).count() != 1 {
        errs.invalid("spec.versions", s.versions.len(), "must have exactly one version marked as storage version");
    }
    for (i, v) in s.versions.iter().enumerate() {
        if !super::common::is_dns1123_label(&v.name) {
            errs.invalid(format!("spec.versions[{i}].name"), &v.name, "must be a DNS label");
        }
        let at = format!("spec.versions[{i}].schema.openAPIV3Schema");
        match v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()) {
            None => errs.required(at, "schemas are required"),
            Some(schema) => match serde_json::to_value(schema) {
                Ok(schema) => crate::structural::check_structural(&schema, &at, errs),
                Err(e) => errs.invalid(at, "schema", e.to_string()),
            },
        }
    }
}

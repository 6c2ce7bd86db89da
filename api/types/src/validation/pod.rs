//! Pod and pod template validation.

use std::collections::{BTreeSet, HashSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Volume};

use super::ErrorList;
use super::common::{NameRule, is_dns1123_label, is_iana_svc_name, quantity, validate_labels, validate_object_meta};

/// Validates a Pod.
pub fn validate_pod(pod: &Pod, errs: &mut ErrorList) {
    validate_object_meta(&pod.metadata, true, NameRule::Dns1123Subdomain, errs);
    match &pod.spec {
        Some(spec) => validate_pod_spec(spec, "spec", errs),
        None => errs.required("spec", ""),
    }
}

/// Validates a pod template (labels and spec) at `path`.
pub fn validate_pod_template(t: &PodTemplateSpec, path: &str, errs: &mut ErrorList) {
    validate_pod_template_with_claims(t, path, &[], errs);
}

/// Validates a pod template whose controller adds volumes named `claims` (a StatefulSet's volumeClaimTemplates).
pub fn validate_pod_template_with_claims(t: &PodTemplateSpec, path: &str, claims: &[String], errs: &mut ErrorList) {
    if let Some(md) = &t.metadata
        && let Some(labels) = &md.labels
    {
        validate_labels(labels, &format!("{path}.metadata.labels"), errs);
    }
    match &t.spec {
        Some(spec) => validate_spec(spec, &format!("{path}.spec"), claims, errs),
        None => errs.required(format!("{path}.spec"), ""),
    }
}

/// Validates a pod spec at `path`.
pub fn validate_pod_spec(spec: &PodSpec, path: &str, errs: &mut ErrorList) {
    validate_spec(spec, path, &[], errs);
}

fn validate_spec(spec: &PodSpec, path: &str, claims: &[String], errs: &mut ErrorList) {
    let mut volumes = validate_volumes(spec.volumes.as_deref().unwrap_or_default(), &format!("{path}.volumes"), errs);
    volumes.extend(claims.iter().cloned());
    if spec.containers.is_empty() {
        errs.required(format!("{path}.containers"), "");
    }
    let mut names = HashSet::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        validate_container(c, &format!("{path}.initContainers[{i}]"), &volumes, &mut names, errs);
    }
    for (i, c) in spec.containers.iter().enumerate() {
        validate_container(c, &format!("{path}.containers[{i}]"), &volumes, &mut names, errs);
    }
    if let Some(p) = &spec.restart_policy {
        check_enum(p, &["Always", "OnFailure", "Never"], &format!("{path}.restartPolicy"), errs);
    }
    if let Some(p) = &spec.dns_policy {
        check_enum(
            p,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
            &format!("{path}.dnsPolicy"),
            errs,
        );
    }
    errs.non_negative(format!("{path}.terminationGracePeriodSeconds"), spec.termination_grace_period_seconds);
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        errs.invalid(format!("{path}.activeDeadlineSeconds"), d, "must be between 1 and 2147483647, inclusive");
    }
    if let Some(sel) = &spec.node_selector {
        validate_labels(sel, &format!("{path}.nodeSelector"), errs);
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        let p = format!("{path}.tolerations[{i}]");
        if let Some(op) = &t.operator {
            check_enum(op, &["Exists", "Equal"], &format!("{p}.operator"), errs);
            if op == "Exists" && t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.invalid(format!("{p}.operator"), op, "value must be empty when `operator` is 'Exists'");
            }
        }
        if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
            check_enum(e, &["NoSchedule", "PreferNoSchedule", "NoExecute"], &format!("{p}.effect"), errs);
        }
        if t.key.as_deref().unwrap_or_default().is_empty() && t.operator.as_deref() != Some("Exists") {
            errs.invalid(
                format!("{p}.operator"),
                t.operator.as_deref().unwrap_or("Equal"),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            );
        }
    }
    if let Some(h) = &spec.hostname
        && !is_dns1123_label(h)
    {
        errs.invalid(format!("{path}.hostname"), h, "must be a DNS label");
    }
}

fn validate_volumes(volumes: &[Volume], path: &str, errs: &mut ErrorList) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if v.name.is_empty() {
            errs.required(format!("{p}.name"), "");
        } else if !is_dns1123_label(&v.name) {
            errs.invalid(format!("{p}.name"), &v.name, "must be a DNS label");
        } else if !names.insert(v.name.clone()) {
            errs.duplicate(format!("{p}.name"), &v.name);
        }
        let sources = [
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
            v.persistent_volume_claim.is_some(),
            v.downward_api.is_some(),
            v.projected.is_some(),
            v.nfs.is_some(),
            v.csi.is_some(),
            v.ephemeral.is_some(),
            v.image.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources == 0 {
            errs.required(p.clone(), "must specify a volume type");
        } else if sources > 1 {
            errs.forbidden(p.clone(), "may not specify more than 1 volume type");
        }
        if let Some(h) = &v.host_path
            && !h.path.starts_with('/')
        {
            errs.invalid(format!("{p}.hostPath.path"), &h.path, "must be an absolute path");
        }
        if let Some(c) = &v.persistent_volume_claim
            && c.claim_name.is_empty()
        {
            errs.required(format!("{p}.persistentVolumeClaim.claimName"), "");
        }
    }
    names
}

fn validate_container(
    c: &Container,
    path: &str,
    volumes: &BTreeSet<String>,
    names: &mut HashSet<String>,
    errs: &mut ErrorList,
) {
    if c.name.is_empty() {
        errs.required(format!("{path}.name"), "");
    } else if !is_dns1123_label(&c.name) {
        errs.invalid(format!("{path}.name"), &c.name, "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character");
    } else if !names.insert(c.name.clone()) {
        errs.duplicate(format!("{path}.name"), &c.name);
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        errs.required(format!("{path}.image"), "");
    }
    if let Some(p) = &c.image_pull_policy {
        check_enum(p, &["Always", "IfNotPresent", "Never"], &format!("{path}.imagePullPolicy"), errs);
    }
    let mut port_names = HashSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        if !(1..=65535).contains(&p.container_port) {
            errs.invalid(format!("{pp}.containerPort"), p.container_port, "must be between 1 and 65535, inclusive");
        }
        if let Some(hp) = p.host_port.filter(|hp| !(0..=65535).contains(hp)) {
            errs.invalid(format!("{pp}.hostPort"), hp, "must be between 1 and 65535, inclusive");
        }
        if let Some(proto) = &p.protocol {
            check_enum(proto, &["TCP", "UDP", "SCTP"], &format!("{pp}.protocol"), errs);
        }
        if let Some(n) = &p.name {
            if !is_iana_svc_name(n) {
                errs.invalid(format!("{pp}.name"), n, "must be no more than 15 characters, contain only lowercase alphanumerics and '-', and contain at least one letter");
            } else if !port_names.insert(n.clone()) {
                errs.duplicate(format!("{pp}.name"), n);
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let ep = format!("{path}.env[{i}]");
        if e.name.is_empty() {
            errs.required(format!("{ep}.name"), "");
        } else if e.name.contains('=') {
            errs.invalid(
                format!("{ep}.name"),
                &e.name,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            );
        }
        if e.value.is_some() && e.value_from.is_some() {
            errs.invalid(format!("{ep}.valueFrom"), "", "may not be specified when `value` is not empty");
        }
        if let Some(vf) = &e.value_from {
            let n = [
                vf.config_map_key_ref.is_some(),
                vf.secret_key_ref.is_some(),
                vf.field_ref.is_some(),
                vf.resource_field_ref.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n != 1 {
                errs.invalid(
                    format!("{ep}.valueFrom"),
                    "",
                    "must specify exactly one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                );
            }
        }
    }
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        if !volumes.contains(&m.name) {
            errs.push(
                format!("{mp}.name"),
                super::ErrorKind::NotSupported,
                Some(format!("\"{}\"", m.name)),
                "volume not found",
            );
        }
        if m.mount_path.is_empty() {
            errs.required(format!("{mp}.mountPath"), "");
        }
    }
    if let Some(r) = &c.resources {
        validate_resources(r, &format!("{path}.resources"), errs);
    }
    for (probe, name) in [
        (&c.liveness_probe, "livenessProbe"),
        (&c.readiness_probe, "readinessProbe"),
        (&c.startup_probe, "startupProbe"),
    ] {
        if let Some(p) = probe {
            validate_probe(p, &format!("{path}.{name}"), errs);
        }
    }
}

fn validate_resources(r: &ResourceRequirements, path: &str, errs: &mut ErrorList) {
    let mut parsed_limits = std::collections::BTreeMap::new();
    for (k, q) in r.limits.iter().flatten() {
        if let Some(v) = quantity(q, &format!("{path}.limits[{k}]"), errs) {
            if v.as_nanos() < 0 {
                errs.invalid(format!("{path}.limits[{k}]"), &q.0, "must be greater than or equal to 0");
            }
            parsed_limits.insert(k.clone(), v);
        }
    }
    for (k, q) in r.requests.iter().flatten() {
        if let Some(v) = quantity(q, &format!("{path}.requests[{k}]"), errs) {
            if v.as_nanos() < 0 {
                errs.invalid(format!("{path}.requests[{k}]"), &q.0, "must be greater than or equal to 0");
            }
            if let Some(l) = parsed_limits.get(k)
                && v > *l
            {
                errs.invalid(
                    format!("{path}.requests"),
                    &q.0,
                    format!("must be less than or equal to {k} limit of {l}"),
                );
            }
        }
    }
}

fn validate_probe(p: &Probe, path: &str, errs: &mut ErrorList) {
    let handlers = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if handlers == 0 {
        errs.required(path, "must specify a handler type");
    } else if handlers > 1 {
        errs.forbidden(path, "may not specify more than 1 handler type");
    }
    for (v, f) in [
        (p.period_seconds, "periodSeconds"),
        (p.timeout_seconds, "timeoutSeconds"),
        (p.success_threshold, "successThreshold"),
        (p.failure_threshold, "failureThreshold"),
    ] {
        if let Some(v) = v.filter(|v| *v < 1) {
            errs.invalid(format!("{path}.{f}"), v, "must be greater than or equal to 1");
        }
    }
    errs.non_negative(format!("{path}.initialDelaySeconds"), p.initial_delay_seconds.map(i64::from));
    if let Some(h) = &p.http_get
        && let Some(s) = &h.scheme
    {
        check_enum(s, &["HTTP", "HTTPS"], &format!("{path}.httpGet.scheme"), errs);
    }
}

pub(super) fn check_enum(v: &str, allowed: &[&str], path: &str, errs: &mut ErrorList) {
    if !allowed.contains(&v) {
        errs.not_supported(path, v, allowed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: serde_json::Value) -> ErrorList {
        let pod: Pod = serde_json::from_value(v).expect("a pod");
        let mut errs = ErrorList::default();
        validate_pod(&pod, &mut errs);
        errs
    }

    #[test]
    fn a_good_pod_has_no_errors() {
        let errs = errors(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80, "name": "http"}],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1", "memory": "128Mi"}},
                            "readinessProbe": {"httpGet": {"path": "/", "port": 80}}}]}}));
        assert!(errs.is_empty(), "{}", errs.summary());
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = errors(json!({"metadata": {"name": "Bad_Name", "namespace": "default"}, "spec": {
            "restartPolicy": "Sometimes",
            "containers": [{"name": "c", "ports": [{"containerPort": 70000}], "volumeMounts": [{"name": "nope", "mountPath": "/x"}],
                            "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}},
                           {"name": "c", "image": "x"}]}}));
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "metadata.name",
            "spec.containers[0].image",
            "spec.containers[0].ports[0].containerPort",
            "spec.containers[0].volumeMounts[0].name",
            "spec.containers[0].resources.requests",
            "spec.containers[1].name",
            "spec.restartPolicy",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }
}

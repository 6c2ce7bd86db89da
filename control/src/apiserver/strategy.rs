//! Per-kind behaviour around writes (Kubernetes' "REST strategies"): what a create resets, how the main resource
//! and the `status` subresource split an object between them, when `metadata.generation` moves, which fields are
//! immutable.

use serde_json::{Value, json};
use skiff_api::registry::ResourceInfo;
use skiff_api::validation::ErrorList;

/// Prepares a new object: server-owned status fields start empty (`{}`) or at their initial value.
pub fn prepare_for_create(info: &ResourceInfo, obj: &mut Value) {
    let Value::Object(m) = obj else { return };
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => {
            let qos = qos_class(m.get("spec"));
            m.insert("status".into(), json!({"phase": "Pending", "qosClass": qos}));
        }
        ("", "Namespace") | ("", "PersistentVolumeClaim") | ("", "Node") | ("", "PersistentVolume") => {
            // initial status comes from defaulting (phase) or from the writer (a node's own status)
        }
        ("", "Service") => {
            m.insert("status".into(), json!({"loadBalancer": {}}));
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            m.remove("status");
        }
        ("batch", "Job") => {
            m.insert("status".into(), json!({}));
            generate_job_selector(m);
        }
        // a built-in kind's status is a Go struct: the real API server answers a create with `status: {}`, and
        // clients read it right away (`d.status.ready_replicas` in the Python client)
        _ if info.has_status && !info.custom => {
            m.insert("status".into(), json!({}));
        }
        _ if info.custom => {
            m.remove("status");
        }
        _ => {}
    }
    if has_generation(info) {
        skiff_api::meta::metadata_mut(obj).insert("generation".into(), json!(1));
    }
}

/// Gives a Job without `manualSelector` the selector and pod labels that tie its pods to it (by uid), as the API
/// server does.
fn generate_job_selector(job: &mut serde_json::Map<String, Value>) {
    let uid = job.get("metadata").and_then(|m| m.get("uid")).and_then(Value::as_str).unwrap_or_default().to_string();
    let name = job.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default().to_string();
    let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if spec.get("manualSelector") == Some(&json!(true)) {
        return;
    }
    spec.insert("selector".into(), json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = json!({});
    }
    let md = &mut template["metadata"];
    if !md.get("labels").is_some_and(Value::is_object) {
        md["labels"] = json!({});
    }
    let labels = &mut md["labels"];
    labels["batch.kubernetes.io/controller-uid"] = json!(uid);
    labels["controller-uid"] = json!(uid);
    labels["batch.kubernetes.io/job-name"] = json!(name);
    labels["job-name"] = json!(name);
}

/// Whether `metadata.generation` is maintained for the kind.
pub fn has_generation(info: &ResourceInfo) -> bool {
    info.has_status || info.custom
}

/// Splits an update between the main resource and the `status` subresource: writes through one keep the other's
/// part from `old`. Bumps `metadata.generation` when the spec changed.
pub fn prepare_for_update(info: &ResourceInfo, old: &Value, new: &mut Value, subresource: Option<&str>) {
    let status_split = info.has_status || (info.custom && info.subresource("status").is_some());
    match subresource {
        Some("finalize") => {
            // only the namespace's spec.finalizers change through finalize
            let finalizers = new.pointer("/spec/finalizers").cloned().unwrap_or_else(|| json!([]));
            let mut merged = old.clone();
            merged["spec"]["finalizers"] = finalizers;
            *new = merged;
        }
        Some("approval") if super::csr::is_csr(info) => *new = super::csr::merge_approval(old, new),
        Some("status") => {
            if super::csr::is_csr(info) {
                super::csr::keep_decisions(old, new);
            }
            let status = new.get("status").cloned();
            let mut merged = old.clone();
            match status {
                Some(s) => merged["status"] = s,
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            // the status writer's view of metadata does not change the object's metadata, except managedFields
            if let Some(mf) = new.pointer("/metadata/managedFields").cloned() {
                skiff_api::meta::metadata_mut(&mut merged).insert("managedFields".into(), mf);
            }
            // …and its resourceVersion precondition
            if let Some(rv) = new.pointer("/metadata/resourceVersion").cloned() {
                skiff_api::meta::metadata_mut(&mut merged).insert("resourceVersion".into(), rv);
            }
            *new = merged;
        }
        // a binding writes the node name and the PodScheduled condition in one go
        Some("binding") => {}
        _ if status_split => {
            if let Some(m) = new.as_object_mut() {
                match old.get("status") {
                    Some(s) => {
                        m.insert("status".into(), s.clone());
                    }
                    None => {
                        m.remove("status");
                    }
                }
            }
        }
        _ => {}
    }
    // immutable metadata
    for f in ["uid", "creationTimestamp", "name", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds"] {
        let md = skiff_api::meta::metadata_mut(new);
        match old.pointer(&format!("/metadata/{f}")) {
            Some(v) => {
                md.insert(f.into(), v.clone());
            }
            None => {
                md.remove(f);
            }
        }
    }
}

/// Sets `metadata.generation`: one more than before when the spec (everything but metadata and status) changed
/// through the main resource. Call it on the defaulted object.
pub fn set_generation(info: &ResourceInfo, old: &Value, new: &mut Value, subresource: Option<&str>) {
    if has_generation(info) {
        let old_gen = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let spec_changed = strip_for_generation(old) != strip_for_generation(new);
        let generation = if spec_changed && subresource.is_none() { old_gen + 1 } else { old_gen };
        skiff_api::meta::metadata_mut(new).insert("generation".into(), json!(generation));
    }
}

/// Everything but `metadata` and `status`: what `generation` follows.
fn strip_for_generation(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

/// Checks fields that may not change after creation.
pub fn validate_update(info: &ResourceInfo, old: &Value, new: &Value) -> ErrorList {
    let mut errs = ErrorList::default();
    let immutable = |errs: &mut ErrorList, pointer: &str, field: &str| {
        if old.pointer(pointer) != new.pointer(pointer) {
            errs.invalid(field, new.pointer(pointer).map(render).unwrap_or_default(), "field is immutable");
        }
    };
    match (info.group.as_str(), info.kind.as_str()) {
        (super::csr::GROUP, "CertificateSigningRequest") => errs = super::csr::validate_update(old, new),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            immutable(&mut errs, "/spec/selector", "spec.selector");
        }
        ("batch", "Job") => {
            immutable(&mut errs, "/spec/selector", "spec.selector");
            immutable(&mut errs, "/spec/completions", "spec.completions");
            if old.pointer("/spec/template") != new.pointer("/spec/template") {
                errs.invalid("spec.template", "", "field is immutable");
            }
        }
        ("", "Service") => {
            let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default();
            let new_ip = new.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default();
            if !old_ip.is_empty() && old_ip != new_ip && !new_ip.is_empty() {
                errs.invalid("spec.clusterIP", new_ip, "field is immutable");
            }
        }
        ("", "Secret" | "ConfigMap")
            if old.get("immutable") == Some(&json!(true))
                && (old.get("data") != new.get("data") || old.get("binaryData") != new.get("binaryData")) =>
        {
            errs.forbidden("data", "field is immutable when `immutable` is set");
        }
        ("", "PersistentVolumeClaim") => {
            let strip = |v: &Value| {
                let mut s = v.pointer("/spec").cloned().unwrap_or_default();
                if let Some(m) = s.as_object_mut() {
                    m.remove("resources");
                    m.remove("volumeName");
                }
                s
            };
            if strip(old) != strip(new) {
                errs.forbidden("spec", "spec is immutable after creation except resources.requests and volumeName");
            }
        }
        ("", "Pod") => validate_pod_update(old, new, &mut errs),
        _ => {}
    }
    errs
}

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A pod's spec may change only in its images, activeDeadlineSeconds, tolerations (additions) and
/// terminationGracePeriodSeconds; `nodeName` is set once (through binding).
fn validate_pod_update(old: &Value, new: &Value, errs: &mut ErrorList) {
    let normalize = |v: &Value| {
        let mut s = v.get("spec").cloned().unwrap_or_default();
        if let Some(m) = s.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
            m.remove("terminationGracePeriodSeconds");
            for list in ["containers", "initContainers"] {
                if let Some(Value::Array(cs)) = m.get_mut(list) {
                    for c in cs {
                        if let Some(cm) = c.as_object_mut() {
                            cm.remove("image");
                        }
                    }
                }
            }
        }
        s
    };
    let (o, n) = (normalize(old), normalize(new));
    if o == n {
        return;
    }
    let old_node = old.pointer("/spec/nodeName");
    let mut o2 = o.clone();
    if old_node.is_none()
        && let Some(m) = o2.as_object_mut()
        && let Some(nn) = new.pointer("/spec/nodeName")
    {
        m.insert("nodeName".into(), nn.clone());
    }
    if o2 != n {
        errs.forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        );
    }
}

/// The QoS class of a pod spec (JSON), by [`skiff_api::qos::class`]; a spec that does not decode is BestEffort
/// (validation rejects it anyway).
pub fn qos_class(spec: Option<&Value>) -> &'static str {
    spec.and_then(|s| serde_json::from_value::<k8s_openapi::api::core::v1::PodSpec>(s.clone()).ok())
        .map_or("BestEffort", |s| skiff_api::qos::class(&s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::registry::Registry;

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        assert_eq!(qos_class(Some(&json!({"containers": [{"name": "a"}]}))), "BestEffort");
        assert_eq!(
            qos_class(Some(&json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(Some(&json!({"containers": [{"resources": {"requests": {"cpu": "100m"}}}]}))),
            "Burstable"
        );
    }

    #[test]
    fn the_main_resource_keeps_status_and_generation_follows_the_spec() {
        let r = Registry::with_builtins();
        let info = r.get("apps", "v1", "deployments").expect("served");
        let old = json!({"metadata": {"name": "d", "uid": "u", "generation": 3}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let mut new = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2}, "status": {"replicas": 99}});
        prepare_for_update(&info, &old, &mut new, None);
        set_generation(&info, &old, &mut new, None);
        assert_eq!(new["status"]["replicas"], 1);
        assert_eq!(new["metadata"]["generation"], 4);
        assert_eq!(new["metadata"]["uid"], "u");
        let mut st = json!({"metadata": {"name": "d"}, "spec": {"replicas": 5}, "status": {"replicas": 2}});
        prepare_for_update(&info, &old, &mut st, Some("status"));
        set_generation(&info, &old, &mut st, Some("status"));
        assert_eq!(st["spec"]["replicas"], 1);
        assert_eq!(st["status"]["replicas"], 2);
        assert_eq!(st["metadata"]["generation"], 3);
    }

    #[test]
    fn selectors_are_immutable() {
        let r = Registry::with_builtins();
        let info = r.get("apps", "v1", "deployments").expect("served");
        let old = json!({"spec": {"selector": {"matchLabels": {"a": "1"}}}});
        let new = json!({"spec": {"selector": {"matchLabels": {"a": "2"}}}});
        assert_eq!(validate_update(&info, &old, &new).0[0].field, "spec.selector");
    }
}

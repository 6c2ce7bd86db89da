//! The columns of each kind, as the Kubernetes API server's printers define them.

mod network;
mod other;
mod pods;
mod workloads;

use serde_json::{Value, json};

use super::table::{AGE, Column, NAME, age};
use skiff_api::registry::ResourceInfo;

/// A row renderer.
pub type Cells = Box<dyn Fn(&Value) -> Vec<Value> + Send + Sync>;

/// The column definitions and the row renderer for a kind.
pub fn for_kind(info: &ResourceInfo) -> (Vec<Column>, Cells) {
    if info.custom {
        return custom(info);
    }
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "Pod") => pods::pods(),
        ("", "Node") => pods::nodes(),
        ("apps", "Deployment") => workloads::deployments(),
        ("apps", "ReplicaSet") => workloads::replica_sets(),
        ("apps", "StatefulSet") => workloads::stateful_sets(),
        ("apps", "DaemonSet") => workloads::daemon_sets(),
        ("batch", "Job") => workloads::jobs(),
        ("batch", "CronJob") => workloads::cron_jobs(),
        ("autoscaling", "HorizontalPodAutoscaler") => workloads::hpas(),
        ("", "Service") => network::services(),
        ("", "Endpoints") => network::endpoints(),
        ("discovery.k8s.io", "EndpointSlice") => network::endpoint_slices(),
        ("networking.k8s.io", "Ingress") => network::ingresses(),
        ("networking.k8s.io", "IngressClass") => network::ingress_classes(),
        ("", "ConfigMap") => other::config_maps(),
        ("", "Secret") => other::secrets(),
        ("", "Namespace") => other::namespaces(),
        ("", "Event") => other::events(),
        ("", "ServiceAccount") => other::service_accounts(),
        ("", "PersistentVolume") => other::pvs(),
        ("", "PersistentVolumeClaim") => other::pvcs(),
        ("", "ResourceQuota") => other::quotas(),
        ("coordination.k8s.io", "Lease") => other::leases(),
        ("certificates.k8s.io", "CertificateSigningRequest") => other::csrs(),
        ("policy", "PodDisruptionBudget") => other::pdbs(),
        ("storage.k8s.io", "StorageClass") => other::storage_classes(),
        _ => default_columns(),
    }
}

/// `Name`, `Created At` (what the server prints for kinds without a printer).
pub fn default_columns() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, Column { name: "Created At".into(), type_: "date".into(), format: "", priority: 0 }];
    (
        cols,
        Box::new(|o| {
            vec![super::table::name(o), o.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null)]
        }),
    )
}

fn custom(info: &ResourceInfo) -> (Vec<Column>, Cells) {
    if info.printer_columns.is_empty() {
        let cols = vec![NAME, AGE];
        return (cols, Box::new(|o| vec![super::table::name(o), age(o)]));
    }
    let mut cols = vec![NAME];
    let pcs = info.printer_columns.clone();
    for pc in &pcs {
        let ty = if pc.type_ == "date" { "string".to_string() } else { pc.type_.clone() };
        cols.push(Column { name: pc.name.clone().into(), type_: ty.into(), format: "", priority: pc.priority });
    }
    let has_age = pcs.iter().any(|p| p.name == "Age");
    if !has_age {
        cols.push(AGE);
    }
    (
        cols,
        Box::new(move |o| {
            let mut cells = vec![super::table::name(o)];
            for pc in &pcs {
                let v = json_path(o, &pc.json_path).cloned().unwrap_or(Value::Null);
                cells.push(if pc.type_ == "date" {
                    super::table::since(Some(&v))
                        .map(|s| json!(super::table::human_duration(s)))
                        .unwrap_or(json!("<unknown>"))
                } else {
                    v
                });
            }
            if !has_age {
                cells.push(age(o));
            }
            cells
        }),
    )
}

/// Evaluates a simple JSONPath (`.spec.replicas`, `.status.conditions[0].type`).
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in path.trim_start_matches('.').split('.').filter(|p| !p.is_empty()) {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

/// `a,b,c` or `<none>`.
pub fn join_or_none(items: &[String]) -> String {
    if items.is_empty() { "<none>".into() } else { items.join(",") }
}

/// A label selector object rendered as a string.
pub fn selector_string(sel: Option<&Value>) -> String {
    sel.and_then(|s| serde_json::from_value(s.clone()).ok())
        .and_then(|ls| skiff_api::selector::Selector::from_label_selector(&ls).ok())
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into())
}

/// Container names and images of a pod template spec.
pub fn containers_and_images(spec: Option<&Value>) -> (String, String) {
    let cs: Vec<&Value> = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let names: Vec<String> =
        cs.iter().map(|c| c.get("name").and_then(Value::as_str).unwrap_or_default().to_string()).collect();
    let images: Vec<String> =
        cs.iter().map(|c| c.get("image").and_then(Value::as_str).unwrap_or_default().to_string()).collect();
    (names.join(","), images.join(","))
}

/// An integer field, 0 when missing.
pub fn i(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// A string field, empty when missing.
pub fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

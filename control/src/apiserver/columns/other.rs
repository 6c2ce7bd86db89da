//! Configuration, storage, cluster and coordination kinds.

use serde_json::{Value, json};

use super::{Cells, i, s};
use crate::apiserver::table::{AGE, Column, NAME, age, col, human_duration, int, name, since, wide};

fn count(v: Option<&Value>) -> usize {
    v.and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)
}

/// `kubectl get configmaps`.
pub fn config_maps() -> (Vec<Column>, Cells) {
    (
        vec![NAME, int("Data"), AGE],
        Box::new(|c| vec![name(c), json!(count(c.get("data")) + count(c.get("binaryData"))), age(c)]),
    )
}

/// `kubectl get secrets`.
pub fn secrets() -> (Vec<Column>, Cells) {
    (
        vec![NAME, col("Type"), int("Data"), AGE],
        Box::new(|c| vec![name(c), json!(s(c, "/type")), json!(count(c.get("data"))), age(c)]),
    )
}

/// `kubectl get namespaces`.
pub fn namespaces() -> (Vec<Column>, Cells) {
    (vec![NAME, col("Status"), AGE], Box::new(|n| vec![name(n), json!(s(n, "/status/phase")), age(n)]))
}

/// `kubectl get serviceaccounts`.
pub fn service_accounts() -> (Vec<Column>, Cells) {
    (
        vec![NAME, int("Secrets"), AGE],
        Box::new(|a| {
            vec![name(a), json!(a.get("secrets").and_then(Value::as_array).map(Vec::len).unwrap_or(0)), age(a)]
        }),
    )
}

/// `kubectl get events`.
pub fn events() -> (Vec<Column>, Cells) {
    let cols = vec![
        col("Last Seen"),
        col("Type"),
        col("Reason"),
        col("Object"),
        wide("Subobject"),
        wide("Source"),
        col("Message"),
        wide("First Seen"),
        Column { priority: 1, ..int("Count") },
        Column { priority: 1, ..NAME },
    ];
    (
        cols,
        Box::new(|e| {
            let last = e
                .get("lastTimestamp")
                .filter(|v| !v.is_null())
                .or(e.get("eventTime"))
                .or(e.pointer("/metadata/creationTimestamp"));
            let first = e.get("firstTimestamp").filter(|v| !v.is_null()).or(e.get("eventTime"));
            let ago = |t: Option<&Value>| since(t).map(human_duration).unwrap_or_else(|| "<unknown>".into());
            let object =
                format!("{}/{}", s(e, "/involvedObject/kind").to_ascii_lowercase(), s(e, "/involvedObject/name"));
            let source = {
                let c = s(e, "/source/component");
                let c = if c.is_empty() { s(e, "/reportingComponent") } else { c };
                let h = s(e, "/source/host");
                if h.is_empty() { c.to_string() } else { format!("{c}, {h}") }
            };
            vec![
                json!(ago(last)),
                json!(s(e, "/type")),
                json!(s(e, "/reason")),
                json!(object),
                json!(s(e, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(e, "/message").trim()),
                json!(ago(first)),
                json!(e.get("count").and_then(Value::as_i64).unwrap_or(1)),
                name(e),
            ]
        }),
    )
}

fn access_modes(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// `kubectl get pv`.
pub fn pvs() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        col("Capacity"),
        col("Access Modes"),
        col("Reclaim Policy"),
        col("Status"),
        col("Claim"),
        col("StorageClass"),
        col("VolumeAttributesClass"),
        col("Reason"),
        AGE,
        wide("VolumeMode"),
    ];
    (
        cols,
        Box::new(|p| {
            let claim = if s(p, "/spec/claimRef/name").is_empty() {
                String::new()
            } else {
                format!("{}/{}", s(p, "/spec/claimRef/namespace"), s(p, "/spec/claimRef/name"))
            };
            vec![
                name(p),
                json!(s(p, "/spec/capacity/storage")),
                json!(access_modes(p.pointer("/spec/accessModes"))),
                json!(s(p, "/spec/persistentVolumeReclaimPolicy")),
                json!(s(p, "/status/phase")),
                json!(claim),
                json!(s(p, "/spec/storageClassName")),
                json!("<unset>"),
                json!(s(p, "/status/reason")),
                age(p),
                json!(s(p, "/spec/volumeMode")),
            ]
        }),
    )
}

/// `kubectl get pvc`.
pub fn pvcs() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        col("Status"),
        col("Volume"),
        col("Capacity"),
        col("Access Modes"),
        col("StorageClass"),
        col("VolumeAttributesClass"),
        AGE,
        wide("VolumeMode"),
    ];
    (
        cols,
        Box::new(|c| {
            vec![
                name(c),
                json!(s(c, "/status/phase")),
                json!(s(c, "/spec/volumeName")),
                json!(s(c, "/status/capacity/storage")),
                json!(access_modes(c.pointer("/status/accessModes"))),
                json!(s(c, "/spec/storageClassName")),
                json!("<unset>"),
                age(c),
                json!(s(c, "/spec/volumeMode")),
            ]
        }),
    )
}

/// `kubectl get quota`.
pub fn quotas() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, AGE, col("Request"), col("Limit")];
    (
        cols,
        Box::new(|q| {
            let hard = q
                .pointer("/status/hard")
                .or(q.pointer("/spec/hard"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let used = q.pointer("/status/used").and_then(Value::as_object).cloned().unwrap_or_default();
            let (mut req, mut lim) = (Vec::new(), Vec::new());
            for (k, v) in &hard {
                let u = used.get(k).and_then(Value::as_str).unwrap_or("0");
                let entry = format!("{k}: {u}/{}", v.as_str().unwrap_or_default());
                if k.starts_with("limits.") { lim.push(entry) } else { req.push(entry) }
            }
            vec![name(q), age(q), json!(req.join(", ")), json!(lim.join(", "))]
        }),
    )
}

/// `kubectl get leases`.
pub fn leases() -> (Vec<Column>, Cells) {
    (vec![NAME, col("Holder"), AGE], Box::new(|l| vec![name(l), json!(s(l, "/spec/holderIdentity")), age(l)]))
}

/// `kubectl get csr`: the condition column lists the decisions and `Issued` once signed, or `Pending`.
pub fn csrs() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, AGE, col("SignerName"), col("Requestor"), col("RequestedDuration"), col("Condition")];
    (
        cols,
        Box::new(|c| {
            let mut conditions: Vec<String> = c
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|x| x.get("status").and_then(Value::as_str) != Some("False"))
                .filter_map(|x| x.get("type").and_then(Value::as_str).map(str::to_string))
                .collect();
            if c.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
                conditions.push("Issued".into());
            }
            let condition = if conditions.is_empty() { "Pending".to_string() } else { conditions.join(",") };
            let duration = c
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_i64)
                .map(crate::apiserver::table::human_duration)
                .unwrap_or_else(|| "<none>".into());
            vec![
                name(c),
                age(c),
                json!(s(c, "/spec/signerName")),
                json!(s(c, "/spec/username")),
                json!(duration),
                json!(condition),
            ]
        }),
    )
}

/// `kubectl get pdb`.
pub fn pdbs() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, col("Min Available"), col("Max Unavailable"), int("Allowed Disruptions"), AGE];
    (
        cols,
        Box::new(|p| {
            let v = |ptr: &str| {
                p.pointer(ptr)
                    .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                    .unwrap_or_else(|| "N/A".into())
            };
            vec![
                name(p),
                json!(v("/spec/minAvailable")),
                json!(v("/spec/maxUnavailable")),
                json!(i(p, "/status/disruptionsAllowed")),
                age(p),
            ]
        }),
    )
}

/// `kubectl get storageclasses`.
pub fn storage_classes() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        col("Provisioner"),
        col("ReclaimPolicy"),
        col("VolumeBindingMode"),
        col("AllowVolumeExpansion"),
        AGE,
    ];
    (
        cols,
        Box::new(|c| {
            let default =
                c.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class").and_then(Value::as_str)
                    == Some("true");
            let n = if default {
                format!("{} (default)", skiff_api::meta::name(c))
            } else {
                skiff_api::meta::name(c).to_string()
            };
            vec![
                json!(n),
                json!(s(c, "/provisioner")),
                json!(if s(c, "/reclaimPolicy").is_empty() { "Delete" } else { s(c, "/reclaimPolicy") }),
                json!(if s(c, "/volumeBindingMode").is_empty() { "Immediate" } else { s(c, "/volumeBindingMode") }),
                json!(c.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false)),
                age(c),
            ]
        }),
    )
}

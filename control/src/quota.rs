//! ResourceQuota accounting: what an object counts against a quota (pure), and what a namespace uses in total.
//!
//! The API server's admission check and the quota controller (which keeps `status.used` up to date) share it.

use std::collections::BTreeMap;

use serde_json::Value;
use skiff_api::quantity::Quantity;

/// Resource name → amount.
pub type Usage = BTreeMap<String, Quantity>;

fn add(u: &mut Usage, k: &str, q: Quantity) {
    let e = u.entry(k.to_string()).or_default();
    *e = *e + q;
}

fn parse(v: Option<&Value>) -> Quantity {
    v.and_then(Value::as_str).and_then(|s| s.parse().ok()).unwrap_or_default()
}

/// What one pod requests and is limited to (`max(sum of containers, largest init container)` per resource).
pub fn pod_resources(spec: &Value) -> Usage {
    let mut out = Usage::new();
    for (section, prefix) in [("requests", "requests."), ("limits", "limits.")] {
        for res in ["cpu", "memory", "ephemeral-storage"] {
            let sum: Quantity = spec
                .get("containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| parse(c.pointer(&format!("/resources/{section}/{res}"))))
                .sum();
            let init = spec
                .get("initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| parse(c.pointer(&format!("/resources/{section}/{res}"))))
                .max()
                .unwrap_or_default();
            let v = sum.max(init);
            if !v.is_zero() {
                out.insert(format!("{prefix}{res}"), v);
            }
        }
    }
    out
}

/// Whether a pod still counts against quota (not finished, not being deleted).
pub fn pod_counts(pod: &Value) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
    !matches!(phase, "Succeeded" | "Failed") && pod.pointer("/metadata/deletionTimestamp").is_none()
}

/// What one object of `plural.group` counts against a quota.
pub fn usage_of(group: &str, plural: &str, obj: &Value) -> Usage {
    let mut u = Usage::new();
    let count_key = if group.is_empty() { format!("count/{plural}") } else { format!("count/{plural}.{group}") };
    add(&mut u, &count_key, Quantity::from_units(1));
    match (group, plural) {
        ("", "pods") => {
            if !pod_counts(obj) {
                return Usage::new();
            }
            add(&mut u, "pods", Quantity::from_units(1));
            let spec = obj.get("spec").cloned().unwrap_or_default();
            for (k, v) in pod_resources(&spec) {
                add(&mut u, &k, v);
                if let Some(short) = k.strip_prefix("requests.") {
                    add(&mut u, short, v);
                }
            }
        }
        ("", "services") => {
            add(&mut u, "services", Quantity::from_units(1));
            let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
            if matches!(ty, "NodePort" | "LoadBalancer") {
                let n = obj.pointer("/spec/ports").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
                add(&mut u, "services.nodeports", Quantity::from_units(n as i64));
            }
            if ty == "LoadBalancer" {
                add(&mut u, "services.loadbalancers", Quantity::from_units(1));
            }
        }
        ("", "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas") => {
            add(&mut u, plural, Quantity::from_units(1))
        }
        ("", "persistentvolumeclaims") => {
            add(&mut u, "persistentvolumeclaims", Quantity::from_units(1));
            add(&mut u, "requests.storage", parse(obj.pointer("/spec/resources/requests/storage")));
        }
        _ => {}
    }
    u
}

/// Resources of a quota's `hard` that an object of this kind affects.
pub fn relevant(hard: &Usage, usage: &Usage) -> Vec<String> {
    hard.keys().filter(|k| usage.contains_key(*k)).cloned().collect()
}

/// The `hard` map of a ResourceQuota.
pub fn hard_of(quota: &Value) -> Usage {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.parse().ok()?))).collect())
        .unwrap_or_default()
}

/// Which resources of `hard` a pod must declare (a quota on `requests.cpu` needs every container to request cpu).
pub fn missing_declarations(hard: &Usage, pod_spec: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    for key in hard.keys() {
        let (section, res) = match key.as_str() {
            "requests.cpu" | "cpu" => ("requests", "cpu"),
            "requests.memory" | "memory" => ("requests", "memory"),
            "limits.cpu" => ("limits", "cpu"),
            "limits.memory" => ("limits", "memory"),
            _ => continue,
        };
        let all = pod_spec
            .get("containers")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().all(|c| c.pointer(&format!("/resources/{section}/{res}")).is_some()));
        if !all {
            missing.push(key.clone());
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_counts_its_containers_and_its_largest_init_container() {
        let pod = json!({"spec": {
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
            "containers": [{"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}},
                           {"resources": {"requests": {"cpu": "250m"}}}]}});
        let u = usage_of("", "pods", &pod);
        assert_eq!(u["pods"].as_units(), 1);
        assert_eq!(u["requests.cpu"].as_milli(), 2000, "the init container dominates");
        assert_eq!(u["requests.memory"].as_units(), 64 << 20);
        assert_eq!(u["limits.memory"].as_units(), 128 << 20);
        assert_eq!(u["count/pods"].as_units(), 1);
    }

    #[test]
    fn finished_pods_do_not_count() {
        assert!(usage_of("", "pods", &json!({"status": {"phase": "Succeeded"}})).is_empty());
    }

    #[test]
    fn missing_requests_are_reported() {
        let hard: Usage = [("requests.cpu".to_string(), "1".parse().expect("q"))].into();
        assert_eq!(missing_declarations(&hard, &json!({"containers": [{"name": "a"}]})), vec!["requests.cpu"]);
    }
}

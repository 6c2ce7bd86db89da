//! Versions of one built-in resource served side by side, stored in one (the storage version), converted at the
//! edge as the real API server does: objects are read in the version the request names and written in the storage
//! version. Today: `autoscaling/v1` HorizontalPodAutoscalers beside the storage version `autoscaling/v2`
//! (`kubectl autoscale` creates v1 objects).
//!
//! What v1 cannot say survives a round trip through it in annotations, as upstream keeps it: metrics other than a
//! CPU utilization target (`autoscaling.alpha.kubernetes.io/metrics`), `behavior`
//! (`autoscaling.alpha.kubernetes.io/behavior`), status conditions and current metrics
//! (`autoscaling.alpha.kubernetes.io/conditions`, `…/current-metrics`). Unlike upstream, whose annotations hold
//! the v2beta1 shapes, they hold the v2 shapes.
//!
//! Both directions are pure functions of one object; [`to_served`] and [`to_storage`] are idempotent (they look at
//! the object's own `apiVersion`).

use serde_json::{Map, Value, json};
use skiff_api::registry::ResourceInfo;

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

/// The storage version (`group`, `version`) of a resource served in another version, or `None` when `info` is
/// itself stored as served.
pub fn storage_version(info: &ResourceInfo) -> Option<(&'static str, &'static str)> {
    match (info.group.as_str(), info.version.as_str(), info.plural.as_str()) {
        ("autoscaling", "v1", "horizontalpodautoscalers") => Some(("autoscaling", "v2")),
        _ => None,
    }
}

/// `obj` (in the storage version, or already in `info`'s) in `info`'s version.
pub fn to_served(info: &ResourceInfo, obj: Value) -> Value {
    match storage_version(info) {
        Some(("autoscaling", "v2")) if obj["apiVersion"] == "autoscaling/v2" => hpa_v2_to_v1(obj),
        _ => obj,
    }
}

/// `obj` (in `info`'s version, or already in the storage version) in the storage version.
pub fn to_storage(info: &ResourceInfo, obj: Value) -> Value {
    match storage_version(info) {
        Some(("autoscaling", "v2")) if obj["apiVersion"] != "autoscaling/v2" => hpa_v1_to_v2(obj),
        _ => obj,
    }
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource" && m["resource"]["name"] == "cpu" && m["resource"]["target"]["type"] == "Utilization"
}

fn annotations(obj: &mut Value) -> &mut Map<String, Value> {
    let md = skiff_api::meta::metadata_mut(obj);
    let a = md.entry("annotations").or_insert_with(|| json!({}));
    if !a.is_object() {
        *a = json!({});
    }
    a.as_object_mut().expect("made an object above")
}

fn take_annotation(obj: &mut Value, key: &str) -> Option<Value> {
    let a = annotations(obj);
    let v = a.remove(key).and_then(|s| s.as_str().and_then(|s| serde_json::from_str(s).ok()));
    if a.is_empty() {
        skiff_api::meta::metadata_mut(obj).remove("annotations");
    }
    v
}

fn put_annotation(obj: &mut Value, key: &str, v: &Value) {
    annotations(obj).insert(key.to_string(), json!(v.to_string()));
}

/// autoscaling/v2 → autoscaling/v1.
pub fn hpa_v2_to_v1(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v1");
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    let (cpu, others): (Vec<Value>, Vec<Value>) = metrics.into_iter().partition(is_cpu_utilization);
    let mut v1 = Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(v) = spec.get(k) {
            v1.insert(k.into(), v.clone());
        }
    }
    if let Some(u) = cpu.first().map(|m| m["resource"]["target"]["averageUtilization"].clone()) {
        v1.insert("targetCPUUtilizationPercentage".into(), u);
    }
    obj["spec"] = Value::Object(v1);
    if !others.is_empty() {
        put_annotation(&mut obj, METRICS, &Value::Array(others));
    }
    if let Some(b) = spec.get("behavior").filter(|b| !b.is_null()) {
        put_annotation(&mut obj, BEHAVIOR, b);
    }
    if let Some(status) = obj.get("status").cloned().filter(Value::is_object) {
        // both counts are required in v1 (Go writes their zero values), and clients insist on them
        let mut v1 = Map::from_iter([("currentReplicas".into(), json!(0)), ("desiredReplicas".into(), json!(0))]);
        for k in ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"] {
            if let Some(v) = status.get(k) {
                v1.insert(k.into(), v.clone());
            }
        }
        let current = status["currentMetrics"].as_array().cloned().unwrap_or_default();
        let (cpu, others): (Vec<Value>, Vec<Value>) =
            current.into_iter().partition(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu");
        if let Some(u) = cpu.first().and_then(|m| m["resource"]["current"].get("averageUtilization")) {
            v1.insert("currentCPUUtilizationPercentage".into(), u.clone());
        }
        if !others.is_empty() {
            put_annotation(&mut obj, CURRENT, &Value::Array(others));
        }
        if let Some(c) = status.get("conditions").filter(|c| c.as_array().is_some_and(|a| !a.is_empty())) {
            put_annotation(&mut obj, CONDITIONS, c);
        }
        obj["status"] = Value::Object(v1);
    }
    obj
}

/// autoscaling/v1 → autoscaling/v2.
pub fn hpa_v1_to_v2(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v2");
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut v2 = Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(v) = spec.get(k) {
            v2.insert(k.into(), v.clone());
        }
    }
    // v1 defaults the target to 80% CPU
    let cpu = spec.get("targetCPUUtilizationPercentage").filter(|v| !v.is_null()).cloned().unwrap_or(json!(80));
    let mut metrics = vec![
        json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}),
    ];
    if let Some(Value::Array(others)) = take_annotation(&mut obj, METRICS) {
        metrics.extend(others.into_iter().filter(|m| !is_cpu_utilization(m)));
    }
    v2.insert("metrics".into(), Value::Array(metrics));
    if let Some(b) = take_annotation(&mut obj, BEHAVIOR) {
        v2.insert("behavior".into(), b);
    }
    obj["spec"] = Value::Object(v2);
    let conditions = take_annotation(&mut obj, CONDITIONS);
    let others = take_annotation(&mut obj, CURRENT);
    if let Some(status) = obj.get("status").cloned().filter(Value::is_object) {
        let mut v2 = Map::new();
        for k in ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"] {
            if let Some(v) = status.get(k) {
                v2.insert(k.into(), v.clone());
            }
        }
        let mut current = Vec::new();
        if let Some(u) = status.get("currentCPUUtilizationPercentage").filter(|v| !v.is_null()) {
            current
                .push(json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": u}}}));
        }
        if let Some(Value::Array(o)) = others {
            current.extend(o);
        }
        if !current.is_empty() {
            v2.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(c) = conditions {
            v2.insert("conditions".into(), c);
        }
        obj["status"] = Value::Object(v2);
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70, "averageValue": "140m"}}},
                    {"type": "Resource", "resource": {"name": "memory", "current": {"averageValue": "90Mi"}}}
                ],
                "conditions": [{"type": "AbleToScale", "status": "True"}]
            }
        })
    }

    #[test]
    fn v2_reads_as_v1_with_the_cpu_target_in_its_own_field() {
        let v1 = hpa_v2_to_v1(v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["spec"]["maxReplicas"], 5);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 70);
        assert_eq!(v1["status"]["desiredReplicas"], 3);
        assert!(v1["metadata"]["annotations"][METRICS].as_str().is_some_and(|s| s.contains("memory")));
    }

    #[test]
    fn a_round_trip_through_v1_loses_nothing() {
        let back = hpa_v1_to_v2(hpa_v2_to_v1(v2()));
        let mut want = v2();
        // v1 keeps only averageUtilization of the CPU's current value
        want["status"]["currentMetrics"][0]["resource"]["current"] = json!({"averageUtilization": 70});
        assert_eq!(back, want);
    }

    #[test]
    fn a_new_v1_object_gets_the_v1_default_target() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "w"},
                        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 3}});
        let v2 = hpa_v1_to_v2(v1);
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
        assert!(v2["metadata"].get("annotations").is_none());
        assert!(v2.get("status").is_none());
    }

    #[test]
    fn conversions_are_idempotent_and_only_for_converted_resources() {
        let reg = skiff_api::registry::Registry::with_builtins();
        let v1 = reg.get("autoscaling", "v1", "horizontalpodautoscalers").expect("served");
        let v2info = reg.get("autoscaling", "v2", "horizontalpodautoscalers").expect("served");
        let once = to_served(&v1, v2());
        assert_eq!(to_served(&v1, once.clone()), once);
        assert_eq!(to_storage(&v1, to_storage(&v1, once.clone())), to_storage(&v1, once));
        assert_eq!(to_served(&v2info, v2()), v2());
        assert!(storage_version(&v2info).is_none());
    }
}

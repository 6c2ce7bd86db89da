//! The pod QoS class, as Kubernetes computes it: `Guaranteed` when every container (init containers included) has
//! cpu and memory limits equal to its requests (a missing request defaults to the limit), `BestEffort` when no
//! container has any request or limit, `Burstable` otherwise. Used by the API server (`status.qosClass` at creation)
//! and the node agent (OOM score).

use k8s_openapi::api::core::v1::PodSpec;

use crate::quantity::Quantity;

/// The QoS class of `spec`.
pub fn class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = !spec.containers.is_empty();
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        if limits.is_some_and(|l| !l.is_empty()) || requests.is_some_and(|q| !q.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(res)).and_then(|q| q.0.parse::<Quantity>().ok());
            let q = requests.and_then(|q| q.get(res)).and_then(|q| q.0.parse::<Quantity>().ok()).or(l);
            if !matches!((l, q), (Some(l), Some(q)) if l.as_nanos() == q.as_nanos()) {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn classes_follow_requests_and_limits() {
        assert_eq!(class(&spec(serde_json::json!({"containers": [{"name": "a"}]}))), "BestEffort");
        let equal = serde_json::json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m"}}}]});
        assert_eq!(class(&spec(equal)), "Guaranteed", "equal quantities written differently");
        assert_eq!(
            class(&spec(
                serde_json::json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]})
            )),
            "Burstable"
        );
        let init = serde_json::json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}], "initContainers": [{"name": "i"}]});
        assert_eq!(class(&spec(init)), "Burstable", "an init container without limits");
    }
}

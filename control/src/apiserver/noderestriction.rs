//! What nodes may create, as Kubernetes' NodeRestriction admission limits it (the part that does not need a
//! per-node identity): a node creates only mirror pods of its static pods, bound to a node, and a mirror pod —
//! whoever creates it — may not use a service account, Secrets, ConfigMaps or claims (the API server could not
//! check the node's right to them).
//!
//! # Caveats
//! Nodes share one identity (`system:node-bootstrap`), so "bound to *this* node" is not checked yet.

use serde_json::Value;

use super::auth::User;
use super::serviceaccount::is_mirror;

/// Why a mirror pod's spec may not be admitted, if it may not.
pub fn mirror_pod_problem(pod: &Value) -> Option<String> {
    let spec = pod.get("spec")?;
    if spec.get("serviceAccountName").and_then(Value::as_str).is_some_and(|s| !s.is_empty() && s != "default")
        || spec.get("automountServiceAccountToken").and_then(Value::as_bool) == Some(true)
    {
        return Some("mirror pods may not reference service accounts".into());
    }
    for v in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
        if v.get("secret").is_some() {
            return Some("mirror pods may not reference secrets".into());
        }
        if v.get("configMap").is_some() {
            return Some("mirror pods may not reference configmaps".into());
        }
        if v.get("persistentVolumeClaim").is_some() {
            return Some("mirror pods may not reference persistentvolumeclaims".into());
        }
        for src in v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
            if src.get("secret").is_some() {
                return Some("mirror pods may not reference secrets".into());
            }
            if src.get("configMap").is_some() {
                return Some("mirror pods may not reference configmaps".into());
            }
            if src.get("serviceAccountToken").is_some() {
                return Some("mirror pods may not reference service accounts".into());
            }
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
            let env_refs =
                c.get("env").and_then(Value::as_array).into_iter().flatten().filter_map(|e| e.get("valueFrom"));
            let from_refs = c.get("envFrom").and_then(Value::as_array).into_iter().flatten();
            for r in env_refs.chain(from_refs) {
                if r.get("secretKeyRef").is_some() || r.get("secretRef").is_some() {
                    return Some("mirror pods may not reference secrets".into());
                }
                if r.get("configMapKeyRef").is_some() || r.get("configMapRef").is_some() {
                    return Some("mirror pods may not reference configmaps".into());
                }
            }
        }
    }
    None
}

/// Whether `user` may create `pod`: nodes only mirror pods bound to a node.
pub fn check_pod_create(user: Option<&User>, pod: &Value) -> Result<(), String> {
    let Some(user) = user.filter(|u| u.groups.iter().any(|g| g == "system:nodes")) else { return Ok(()) };
    if !is_mirror(pod) {
        return Err(format!(
            "pod does not have \"kubernetes.io/config.mirror\" annotation, node {:?} can only create mirror pods",
            user.name
        ));
    }
    if pod.pointer("/spec/nodeName").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(format!("node {:?} can only create pods with spec.nodeName set", user.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nodes_create_only_clean_mirror_pods() {
        let node = User { name: "system:node-bootstrap".into(), groups: vec!["system:nodes".into()] };
        let mirror = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}});
        assert!(check_pod_create(Some(&node), &mirror).is_ok());
        assert!(mirror_pod_problem(&mirror).is_none());
        let plain = json!({"metadata": {}, "spec": {"nodeName": "n1"}});
        assert!(check_pod_create(Some(&node), &plain).expect_err("refused").contains("can only create mirror pods"));
        assert!(check_pod_create(None, &plain).is_ok(), "the server's own writes");
        let cases = [
            (json!({"serviceAccountName": "admin"}), "service accounts"),
            (json!({"volumes": [{"name": "s", "secret": {"secretName": "x"}}]}), "secrets"),
            (
                json!({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
                "service accounts",
            ),
            (
                json!({"containers": [{"name": "c", "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "m", "key": "k"}}}]}]}),
                "configmaps",
            ),
            (
                json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}]}),
                "persistentvolumeclaims",
            ),
        ];
        for (spec, what) in cases {
            let p = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": spec});
            assert!(mirror_pod_problem(&p).is_some_and(|m| m.ends_with(what)), "{p}");
        }
    }
}

//! What a pod refers to by name in its own namespace: the Secrets, ConfigMaps and claims its volumes, environment
//! and image pulls use. The node agent watches exactly these objects for the pods bound to it, and the API server's
//! node authorizer lets a node read exactly these (kube-apiserver's node graph, from the same fields).

use std::collections::BTreeSet;

use serde_json::Value;

/// The objects one pod refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodReferences {
    /// Secrets (volumes, projected sources, env, envFrom, imagePullSecrets).
    pub secrets: BTreeSet<String>,
    /// ConfigMaps (volumes, projected sources, env, envFrom).
    pub config_maps: BTreeSet<String>,
    /// PersistentVolumeClaims.
    pub claims: BTreeSet<String>,
}

/// The references of a pod (JSON, as stored).
pub fn of_pod(pod: &Value) -> PodReferences {
    let mut r = PodReferences::default();
    let Some(spec) = pod.get("spec") else { return r };
    let name_at =
        |v: &Value, ptr: &str| v.pointer(ptr).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    for s in spec.get("imagePullSecrets").and_then(Value::as_array).into_iter().flatten() {
        r.secrets.extend(name_at(s, "/name"));
    }
    for v in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
        r.secrets.extend(name_at(v, "/secret/secretName"));
        r.config_maps.extend(name_at(v, "/configMap/name"));
        r.claims.extend(name_at(v, "/persistentVolumeClaim/claimName"));
        for src in v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
            r.secrets.extend(name_at(src, "/secret/name"));
            r.config_maps.extend(name_at(src, "/configMap/name"));
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                r.secrets.extend(name_at(e, "/valueFrom/secretKeyRef/name"));
                r.config_maps.extend(name_at(e, "/valueFrom/configMapKeyRef/name"));
            }
            for e in c.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
                r.secrets.extend(name_at(e, "/secretRef/name"));
                r.config_maps.extend(name_at(e, "/configMapRef/name"));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_place_a_pod_names_an_object_counts() {
        let pod = json!({"spec": {
            "imagePullSecrets": [{"name": "regcred"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "tls"}},
                {"name": "b", "configMap": {"name": "settings"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "p-sec"}}, {"configMap": {"name": "kube-root-ca.crt"}}, {"serviceAccountToken": {"path": "t"}}]}},
                {"name": "e", "emptyDir": {}}
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "m", "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-key", "key": "k"}}},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "sec-key", "key": "k"}}},
                {"name": "C", "value": "plain"}
            ], "envFrom": [{"configMapRef": {"name": "cm-all"}}]}]
        }});
        let r = of_pod(&pod);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(r.secrets, set(&["init-env", "p-sec", "regcred", "sec-key", "tls"]));
        assert_eq!(r.config_maps, set(&["cm-all", "cm-key", "kube-root-ca.crt", "settings"]));
        assert_eq!(r.claims, set(&["data"]));
        assert_eq!(of_pod(&json!({})), PodReferences::default());
    }
}

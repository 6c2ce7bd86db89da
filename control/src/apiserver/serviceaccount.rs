//! ServiceAccount admission, as Kubernetes' plugin does it on pod creation: the pod runs as `default` unless it
//! names another service account, which must exist; unless `automountServiceAccountToken` is false (on the pod,
//! else on the service account), a `kube-api-access-*` projected volume (a bound, expiring token, the cluster CA and
//! the namespace) is mounted read-only at [`MOUNT_PATH`] in every container, where client libraries' in-cluster
//! configuration looks; a pod without `imagePullSecrets` gets the account's.

use serde_json::{Value, json};

use super::Api;
use super::error::{ApiError, ApiResult};

/// Where client libraries look for the token, `ca.crt` and `namespace`.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Lifetime of the mounted token, as upstream (the agent refreshes it at 80%).
pub const TOKEN_SECONDS: i64 = 3607;
const MIRROR: &str = "kubernetes.io/config.mirror";
/// Letters of generated name suffixes (Kubernetes' `utilrand.String` alphabet).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The service account a pod runs as.
pub fn account_of(pod: &Value) -> String {
    pod.pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| pod.pointer("/spec/serviceAccount").and_then(Value::as_str).filter(|s| !s.is_empty()))
        .unwrap_or("default")
        .to_string()
}

/// Whether the pod is a static pod's mirror (which may not use service accounts).
pub fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR)).is_some()
}

/// The pod as admitted: its service account set, the account's image pull secrets when the pod names none, and
/// the token volume added and mounted unless automounting is off (on the pod, else on the account `sa`). `suffix`
/// names the volume.
pub fn admit(mut pod: Value, sa: &Value, suffix: &str) -> Value {
    let account = account_of(&pod);
    let sa_automount = sa.get("automountServiceAccountToken").and_then(Value::as_bool);
    let spec = &mut pod["spec"];
    spec["serviceAccountName"] = json!(account);
    spec["serviceAccount"] = json!(account);
    let has_pull_secrets = spec.get("imagePullSecrets").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if let Some(secrets) = sa.get("imagePullSecrets").filter(|s| s.as_array().is_some_and(|a| !a.is_empty()))
        && !has_pull_secrets
    {
        spec["imagePullSecrets"] = secrets.clone();
    }
    let automount = spec.get("automountServiceAccountToken").and_then(Value::as_bool).or(sa_automount).unwrap_or(true);
    if !automount {
        return pod;
    }
    let mounts_it = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH)))
    };
    let name = format!("kube-api-access-{suffix}");
    let mut added = false;
    for list in ["initContainers", "containers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if mounts_it(c) {
                continue;
            }
            if !c.get("volumeMounts").is_some_and(Value::is_array) {
                c["volumeMounts"] = json!([]);
            }
            if let Some(m) = c["volumeMounts"].as_array_mut() {
                m.push(json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH}));
                added = true;
            }
        }
    }
    if added {
        if !spec.get("volumes").is_some_and(Value::is_array) {
            spec["volumes"] = json!([]);
        }
        if let Some(v) = spec["volumes"].as_array_mut() {
            v.push(json!({"name": name, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}));
        }
    }
    pod
}

/// A random volume-name suffix of five letters.
pub fn suffix() -> String {
    let bytes: [u8; 5] = rand::random();
    bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

impl Api {
    /// Admits a new pod: its service account must exist (unless it is a mirror pod, which may not name one);
    /// returns the pod with the account's token mounted.
    pub(crate) async fn admit_service_account(&self, ns: &str, pod: Value) -> ApiResult<Value> {
        let name = skiff_api::meta::name(&pod).to_string();
        if is_mirror(&pod) {
            // the node that made it could not be checked for rights to what it names
            if let Some(problem) = super::noderestriction::mirror_pod_problem(&pod) {
                return Err(ApiError::forbidden(format!("pods {name:?} is forbidden: {problem}")));
            }
            return Ok(pod);
        }
        let account = account_of(&pod);
        let info = self.builtin("", "serviceaccounts");
        let mut sa = self.try_get(&info, Some(ns), &account).await?.map(|s| s.object);
        if sa.is_none() && account == "default" {
            // the namespace controller makes it moments after the namespace; a pod created in between waits for
            // nobody (upstream refuses it, a well-known race)
            let obj =
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
            let opts = super::writes::WriteOptions {
                field_manager: Some("serviceaccount-admission".into()),
                ..Default::default()
            };
            sa = match Box::pin(self.create(&info, Some(ns), obj, &opts)).await {
                Ok(w) => Some(w.object),
                Err(e) if e.code == 409 => self.try_get(&info, Some(ns), &account).await?.map(|s| s.object),
                Err(e) => return Err(e),
            };
        }
        let Some(sa) = sa else {
            return Err(ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found"
            )));
        };
        Ok(admit(pod, &sa, &suffix()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn the_token_is_mounted_in_every_container_unless_turned_off() {
        let p = admit(
            pod(
                json!({"containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}], "initContainers": [{"name": "i"}]}),
            ),
            &json!({}),
            "abcde",
        );
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["volumes"][0]["name"], "kube-api-access-abcde");
        assert_eq!(p["spec"]["volumes"][0]["projected"]["sources"].as_array().map(Vec::len), Some(3));
        for path in [
            "/spec/containers/0/volumeMounts/0",
            "/spec/containers/1/volumeMounts/1",
            "/spec/initContainers/0/volumeMounts/0",
        ] {
            assert_eq!(p.pointer(path).expect(path)["mountPath"], MOUNT_PATH, "{path}");
        }
        // off on the pod; off on the account unless the pod turns it on
        let off =
            admit(pod(json!({"automountServiceAccountToken": false, "containers": [{"name": "a"}]})), &json!({}), "x");
        assert!(off["spec"].get("volumes").is_none());
        let sa_off =
            admit(pod(json!({"containers": [{"name": "a"}]})), &json!({"automountServiceAccountToken": false}), "x");
        assert!(sa_off["spec"].get("volumes").is_none());
        let pod_on = admit(
            pod(json!({"automountServiceAccountToken": true, "containers": [{"name": "a"}]})),
            &json!({"automountServiceAccountToken": false}),
            "x",
        );
        assert!(pod_on["spec"].get("volumes").is_some());
        // a container that mounts something at the path already keeps it
        let own = admit(
            pod(
                json!({"serviceAccountName": "ci", "containers": [{"name": "a", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}]}),
            ),
            &json!({}),
            "x",
        );
        assert!(own["spec"].get("volumes").is_none());
        assert_eq!(own["spec"]["serviceAccount"], "ci");
    }

    #[test]
    fn the_accounts_pull_secrets_reach_pods_that_name_none() {
        let sa = json!({"imagePullSecrets": [{"name": "regcred"}]});
        let p = admit(pod(json!({"containers": [{"name": "a"}]})), &sa, "x");
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));
        let own = admit(pod(json!({"imagePullSecrets": [{"name": "mine"}], "containers": [{"name": "a"}]})), &sa, "x");
        assert_eq!(own["spec"]["imagePullSecrets"], json!([{"name": "mine"}]));
    }

    #[test]
    fn suffixes_use_the_kubernetes_alphabet() {
        let s = suffix();
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| ALPHABET.contains(&b)), "{s}");
    }
}

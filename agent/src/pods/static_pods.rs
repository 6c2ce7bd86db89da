//! Static pods: Pod manifests in a directory (`--manifests`), run by this agent without the API, and mirrored to it
//! as read-only "mirror pods" (annotation `kubernetes.io/config.mirror`) so `kubectl get pods` shows them. The
//! directory is read every 20 s; a changed file replaces its pod, a removed file stops it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use sha2::Digest as _;
use tokio::sync::mpsc;

use super::manager::MIRROR_ANNOTATION;

/// A change of the manifest directory.
#[derive(Debug)]
pub enum StaticEvent {
    /// Run (or update) this pod.
    Upsert(Pod),
    /// Stop the pod with this uid.
    Remove(String),
}

/// A uid-shaped identity from a hash.
fn uid_from(hash: &[u8]) -> String {
    let h = hex::encode(&hash[..16]);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The static pods of one manifest file's text: named `<name>-<node>`, with a uid and `config.hash` derived from
/// the node, the file and the content.
pub fn pods_of(text: &str, file: &str, node: &str) -> Result<Vec<Pod>, String> {
    let docs = skiff_api::yaml::parse_documents(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for doc in docs {
        if doc.get("kind").and_then(|k| k.as_str()) != Some("Pod") {
            continue;
        }
        let mut pod: Pod = serde_json::from_value(doc.clone()).map_err(|e| format!("{file}: {e}"))?;
        let base = pod.metadata.name.clone().ok_or_else(|| format!("{file}: a pod without a name"))?;
        let mut h = sha2::Sha256::new();
        h.update(node.as_bytes());
        h.update(file.as_bytes());
        h.update(doc.to_string().as_bytes());
        let digest = h.finalize();
        let hash = hex::encode(&digest[..8]);
        pod.metadata.name = Some(format!("{base}-{node}"));
        pod.metadata.namespace = Some(pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()));
        pod.metadata.uid = Some(uid_from(&digest));
        let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
        ann.insert("kubernetes.io/config.source".into(), "file".into());
        ann.insert("kubernetes.io/config.hash".into(), hash);
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.node_name = Some(node.to_string());
        out.push(pod);
    }
    Ok(out)
}

/// The mirror of a static pod as created in the API.
pub fn mirror_of(pod: &Pod, node_uid: Option<&str>, node: &str) -> Pod {
    let mut m = pod.clone();
    let hash =
        pod.metadata.annotations.as_ref().and_then(|a| a.get("kubernetes.io/config.hash")).cloned().unwrap_or_default();
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(MIRROR_ANNOTATION.into(), hash);
    if let Some(uid) = node_uid {
        m.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }]);
    }
    m.status = None;
    m
}

fn read_dir(dir: &Path, node: &str) -> BTreeMap<String, Pod> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json"))
        .collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        match pods_of(&text, &f.display().to_string(), node) {
            Ok(pods) => {
                for p in pods {
                    out.insert(p.metadata.uid.clone().unwrap_or_default(), p);
                }
            }
            Err(e) => tracing::warn!(file = %f.display(), error = %e, "ignoring an invalid static pod manifest"),
        }
    }
    out
}

async fn ensure_mirror(client: &kube::Client, pod: &Pod, node: &str) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let want = pod.metadata.annotations.as_ref().and_then(|a| a.get("kubernetes.io/config.hash")).cloned();
    match api.get_opt(&name).await {
        Ok(Some(existing)) => {
            let have = existing.metadata.annotations.as_ref().and_then(|a| a.get(MIRROR_ANNOTATION)).cloned();
            if have == want {
                return;
            }
            let _ = api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(error = %e, "reading a mirror pod failed");
            return;
        }
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node_uid = nodes.get_opt(node).await.ok().flatten().and_then(|n| n.metadata.uid);
    if let Err(e) = api.create(&PostParams::default(), &mirror_of(pod, node_uid.as_deref(), node)).await {
        tracing::debug!(pod = %name, error = %e, "creating the mirror pod failed; will retry");
    }
}

/// Watches `dir` and sends changes; keeps the mirror pods in the API.
pub async fn run(client: kube::Client, dir: std::path::PathBuf, node: String, tx: mpsc::UnboundedSender<StaticEvent>) {
    let mut known: BTreeMap<String, Pod> = BTreeMap::new();
    loop {
        let now = read_dir(&dir, &node);
        for (uid, pod) in &now {
            if !known.contains_key(uid) && tx.send(StaticEvent::Upsert(pod.clone())).is_err() {
                return;
            }
            ensure_mirror(&client, pod, &node).await;
        }
        for (uid, pod) in &known {
            if !now.contains_key(uid) {
                let _ = tx.send(StaticEvent::Remove(uid.clone()));
                let still_named = now
                    .values()
                    .any(|p| p.metadata.name == pod.metadata.name && p.metadata.namespace == pod.metadata.namespace);
                if !still_named {
                    let api: Api<Pod> =
                        Api::namespaced(client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
                    let _ = api
                        .delete(
                            pod.metadata.name.as_deref().unwrap_or_default(),
                            &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
                        )
                        .await;
                }
            }
        }
        known = now;
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn static_pods_are_named_after_the_node_and_get_a_content_hash() {
        let pods = pods_of(MANIFEST, "/m/web.yaml", "n1").expect("parses");
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.metadata.uid.as_ref().map(String::len), Some(36));
        assert_eq!(p.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("n1"));
        let changed = pods_of(&MANIFEST.replace("busybox", "skiff/echo:v1"), "/m/web.yaml", "n1").expect("parses");
        assert_ne!(changed[0].metadata.uid, p.metadata.uid, "a changed manifest is a new pod");
    }

    #[test]
    fn the_mirror_carries_the_hash_and_no_uid() {
        let pods = pods_of(MANIFEST, "/m/web.yaml", "n1").expect("parses");
        let m = mirror_of(&pods[0], Some("node-uid"), "n1");
        let ann = m.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(ann.get(MIRROR_ANNOTATION), ann.get("kubernetes.io/config.hash"));
        assert!(m.metadata.uid.is_none());
        assert_eq!(m.metadata.owner_references.as_ref().map(|o| o[0].kind.as_str()), Some("Node"));
    }
}

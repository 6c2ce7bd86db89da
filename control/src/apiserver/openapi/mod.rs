//! OpenAPI v3, generated from the registry: the operations of each kind, tagged with its group-version-kind and
//! declaring the `fieldValidation` parameter (what `kubectl apply` checks before it sends `fieldValidation=Strict`,
//! see shared/docs/kubectl-wire.md §2), and the schemas of the built-in kinds ([`schemas`]: what `kubectl explain`
//! reads and kubectl's client-side apply takes its merge metadata from).

mod schemas;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use skiff_api::registry::Registry;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// The document for one group-version.
pub fn group_version_doc(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    let prefix = format!("/{}", gv_path(group, version));
    let mut any = false;
    for r in reg.in_group_version(group, version) {
        any = true;
        let path = if r.namespaced() {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
        ]);
        let op = |id: &str| json!({"operationId": format!("{id}{}", r.kind), "x-kubernetes-action": id, "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {"200": {"description": "OK"}}});
        paths.insert(
            path,
            json!({"patch": op("patch"), "put": op("replace"), "get": op("read"), "delete": op("delete")}),
        );
        let coll = if r.namespaced() {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        paths.insert(coll, json!({"post": op("create"), "get": op("list")}));
    }
    any.then(|| json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": skiff_api::registry::KUBERNETES_VERSION}, "paths": paths, "components": {"schemas": schemas::for_group_version(group, version)}}))
}

/// The content hash of a document (cache key in the root's URLs).
pub fn hash(doc: &Value) -> String {
    let digest = Sha256::digest(doc.to_string().as_bytes());
    hex::encode(&digest[..16]).to_uppercase()
}

/// The root document `/openapi/v3`.
pub fn root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in reg.groups() {
        for v in versions {
            if let Some(doc) = group_version_doc(reg, &group, &v) {
                let p = gv_path(&group, &v);
                paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}));
            }
        }
    }
    json!({"paths": paths})
}

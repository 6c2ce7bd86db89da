//! Server-side apply (`application/apply-patch+yaml`): the applied configuration is merged into the live object,
//! the applier owns exactly the fields it applied, fields it stopped applying are removed (unless another manager
//! owns them), and changing a field another manager owns is a conflict unless `force=true`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::cas::{self, Attempt};
use super::error::{ApiError, ApiResult};
use super::managed::{self, Entry};
use super::writes::{WriteOptions, Written};
use super::{Api, fields};
use skiff_api::meta;
use skiff_api::registry::ResourceInfo;

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// Its apiVersion.
    pub api_version: String,
    /// The field, e.g. `.spec.replicas`.
    pub field: String,
    /// The field as set path segments (`f:spec`, `f:replicas`).
    pub segments: Vec<String>,
}

/// The pure part of server-side apply: merges `applied` into `live` for `manager`.
///
/// Returns the new object (with its managedFields) or the conflicts found when `force` is false.
pub fn merge(kind: &str, live: &Value, applied: &Value, manager: &str, force: bool) -> Result<Value, Vec<Conflict>> {
    let applied_set = fields::of_object(applied, kind);
    let mut entries = managed::read(live);
    let mut conflicts = Vec::new();
    for e in entries.iter_mut() {
        if e.manager == manager {
            continue;
        }
        let overlap = fields::intersection(&e.fields, &applied_set);
        let mut differing = json!({});
        let mut leaves = Vec::new();
        for leaf in fields::leaves(&overlap) {
            if fields::value_at(applied, &leaf, kind) != fields::value_at(live, &leaf, kind) {
                let mut cur = &mut differing;
                for seg in &leaf {
                    cur =
                        cur.as_object_mut().expect("built as objects").entry(seg.clone()).or_insert_with(|| json!({}));
                }
                leaves.push(leaf);
            }
        }
        if fields::is_empty(&differing) {
            continue;
        }
        if force {
            e.fields = fields::difference(&e.fields, &differing);
        } else {
            for leaf in leaves {
                let single = leaf.iter().rev().fold(json!({}), |acc, seg| json!({ seg.clone(): acc }));
                let field = fields::paths(&single).into_iter().next().unwrap_or_default();
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    field,
                    segments: leaf,
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let previous = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.fields.clone())
        .unwrap_or_else(|| json!({}));
    let others = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .fold(json!({}), |acc, e| fields::union(&acc, &e.fields));
    let removed = fields::difference(&fields::difference(&previous, &applied_set), &others);
    let mut new = live.clone();
    fields::remove_from(&mut new, &removed);
    let mut new = skiff_api::smp::apply(&new, applied, kind).unwrap_or(new);
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    entries.retain(|e| !fields::is_empty(&e.fields));
    let api_version = applied.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version,
        subresource: None,
        time: managed::now(),
        fields: applied_set,
    });
    managed::write(&mut new, &entries);
    Ok(new)
}

impl Api {
    /// Applies a configuration (creating the object if it does not exist).
    #[allow(clippy::too_many_arguments)]
    pub async fn server_side_apply(
        &self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        body: &[u8],
        force: bool,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let manager = opts.field_manager.clone().filter(|m| !m.is_empty()).ok_or_else(|| {
            ApiError::bad_request("PATCH, application/apply-patch+yaml requests require fieldManager to be set")
        })?;
        let text =
            std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the applied configuration is not UTF-8"))?;
        let mut docs = skiff_api::yaml::parse_documents(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if docs.len() != 1 {
            return Err(ApiError::bad_request("an applied configuration must be exactly one object"));
        }
        let mut applied = docs.remove(0);
        if !applied.is_object() {
            return Err(ApiError::bad_request(format!(
                "an applied configuration must be an object, not {}",
                meta::describe_type(&applied)
            )));
        }
        if meta::name(&applied) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta::name(&applied)
            )));
        }
        if let Some(m) = applied.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        let ns = if info.namespaced() { ns } else { None };
        cas::retry!(info, name, {
            let Some(cur) = self.try_get(info, ns, name).await? else {
                if subresource.is_some() {
                    return Err(ApiError::not_found(info, name));
                }
                self.authorize_implicit_create(info, ns, name, opts).await?;
                let mut obj = applied.clone();
                let entry = Entry {
                    manager: manager.clone(),
                    operation: "Apply".into(),
                    api_version: info.api_version(),
                    subresource: None,
                    time: managed::now(),
                    fields: fields::of_object(&applied, &info.kind),
                };
                managed::write(&mut obj, &[entry]);
                return self.create(info, ns, obj, opts).await.map(Attempt::Done);
            };
            let new = match merge(&info.kind, &cur.object, &applied, &manager, force) {
                Ok(v) => v,
                // `kubectl apply --server-side` over an object kubectl applied client-side: conflicts on fields
                // of the last-applied configuration are the same intent, and are taken over (as Kubernetes does)
                Err(conflicts) if manager == "kubectl" && within_last_applied(&cur.object, &info.kind, &conflicts) => {
                    merge(&info.kind, &cur.object, &applied, &manager, true).unwrap_or_else(|_| cur.object.clone())
                }
                Err(conflicts) => return Err(conflict_error(&conflicts)),
            };
            cas::settle(self.commit_update(info, ns, name, &cur, new, subresource, opts, &manager).await, true)
        })
    }
}

/// Whether every conflict is on a field of the object's `kubectl.kubernetes.io/last-applied-configuration`.
fn within_last_applied(live: &Value, kind: &str, conflicts: &[Conflict]) -> bool {
    let Some(text) = meta::annotation(live, "kubectl.kubernetes.io/last-applied-configuration") else { return false };
    let Ok(last) = serde_json::from_str::<Value>(text) else { return false };
    let allowed = fields::of_object(&last, kind);
    conflicts.iter().all(|c| {
        let mut cur = &allowed;
        c.segments.iter().all(|seg| match cur.get(seg) {
            Some(next) => {
                cur = next;
                true
            }
            None => false,
        })
    })
}

fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version), "field": c.field}))
        .collect();
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| format!("conflict with \"{}\" using {}: {}", c.manager, c.api_version, c.field))
        .collect();
    let message = if lines.len() == 1 {
        format!("Apply failed with 1 conflict: {}", lines[0])
    } else {
        format!("Apply failed with {} conflicts: {}", lines.len(), lines.join("\n"))
    };
    ApiError::conflict_message(message, Some(json!({"causes": causes})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}, "data": data})
    }

    #[test]
    fn apply_owns_its_fields_and_removes_what_it_stops_applying() {
        let live =
            merge("ConfigMap", &json!({}), &cm(json!({"a": "1", "b": "2"})), "alice", false).expect("no conflict");
        assert_eq!(live["data"], json!({"a": "1", "b": "2"}));
        let live = merge("ConfigMap", &live, &cm(json!({"a": "1"})), "alice", false).expect("no conflict");
        assert_eq!(live["data"], json!({"a": "1"}), "b is no longer applied by its only owner");
    }

    #[test]
    fn changing_another_managers_field_conflicts_unless_forced() {
        let live = merge("ConfigMap", &json!({}), &cm(json!({"a": "1"})), "alice", false).expect("no conflict");
        let same =
            merge("ConfigMap", &live, &cm(json!({"a": "1"})), "bob", false).expect("same value is shared ownership");
        assert_eq!(managed::read(&same).len(), 2);
        let err = merge("ConfigMap", &live, &cm(json!({"a": "2"})), "bob", false).expect_err("conflict");
        assert_eq!(err[0].manager, "alice");
        assert_eq!(err[0].field, ".data.a");
        let forced = merge("ConfigMap", &live, &cm(json!({"a": "2"})), "bob", true).expect("forced");
        assert_eq!(forced["data"]["a"], "2");
        let owners: Vec<String> = managed::read(&forced).into_iter().map(|e| e.manager).collect();
        assert_eq!(owners, vec!["bob".to_string()], "alice lost the field, and her now empty entry");
    }

    #[test]
    fn fields_owned_by_others_survive_an_applier_dropping_them() {
        let live = merge("ConfigMap", &json!({}), &cm(json!({"a": "1", "b": "2"})), "alice", false).expect("ok");
        let live = merge("ConfigMap", &live, &cm(json!({"b": "2"})), "bob", false).expect("ok");
        let live = merge("ConfigMap", &live, &cm(json!({"a": "1"})), "alice", false).expect("ok");
        assert_eq!(live["data"], json!({"a": "1", "b": "2"}));
    }
}

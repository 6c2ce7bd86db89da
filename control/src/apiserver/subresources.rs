//! Subresources with their own object types: `scale` (autoscaling/v1 Scale), `binding` (a pod to a node),
//! `eviction` (policy/v1 Eviction) and `token` (authentication.k8s.io/v1 TokenRequest).

use std::sync::Arc;

use serde_json::{Value, json};

use super::Api;
use super::auth::User;
use super::cas;
use super::error::{ApiError, ApiResult};
use super::objects::Stored;
use super::writes::{DeleteOptions, WriteOptions};
use skiff_api::meta;
use skiff_api::registry::ResourceInfo;
use skiff_api::selector::Selector;

/// The JSON pointer of the replica count and the label selector of a scalable kind.
fn scale_paths(info: &ResourceInfo) -> Option<(&'static str, &'static str)> {
    match (info.group.as_str(), info.plural.as_str()) {
        ("apps", "deployments" | "replicasets" | "statefulsets") => Some(("/spec/replicas", "/spec/selector")),
        _ if info.custom && info.subresource("scale").is_some() => Some(("/spec/replicas", "/status/selector")),
        _ => None,
    }
}

/// The Scale view of an object.
pub fn scale_of(info: &ResourceInfo, obj: &Value) -> ApiResult<Value> {
    let (replicas_at, selector_at) = scale_paths(info).ok_or_else(|| ApiError::no_route("scale"))?;
    let selector = match obj.pointer(selector_at) {
        Some(Value::String(s)) => s.clone(),
        Some(sel) => serde_json::from_value(sel.clone())
            .ok()
            .and_then(|ls| Selector::from_label_selector(&ls).ok())
            .map(|s| s.to_string())
            .unwrap_or_default(),
        None => String::new(),
    };
    let md = obj.get("metadata").cloned().unwrap_or_default();
    Ok(json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": md.get("name"), "namespace": md.get("namespace"), "uid": md.get("uid"),
            "resourceVersion": md.get("resourceVersion"), "creationTimestamp": md.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer(replicas_at).and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    }))
}

impl Api {
    /// Writes a Scale (PUT, or PATCH already applied to the current Scale) to its parent object.
    pub async fn write_scale(
        &self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        name: &str,
        scale: Value,
        opts: &WriteOptions,
        retry: bool,
    ) -> ApiResult<Value> {
        let (replicas_at, _) = scale_paths(info).ok_or_else(|| ApiError::no_route("scale"))?;
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::bad_request("spec.replicas of a Scale must be an integer"))?;
        let precondition = meta::resource_version(&scale).to_string();
        let written = cas::retry!(info, name, {
            let cur: Stored = self.get(info, ns, name).await?;
            if !precondition.is_empty() && precondition != cur.revision.to_string() {
                return Err(ApiError::conflict(info, name));
            }
            let mut obj = cur.object.clone();
            if let Some(slot) = obj.pointer_mut(replicas_at) {
                *slot = json!(replicas);
            } else if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("replicas".into(), json!(replicas));
            }
            cas::settle(
                self.commit_update(info, ns, name, &cur, obj, None, opts, "unknown").await,
                retry && precondition.is_empty(),
            )
        })?;
        scale_of(info, &written.object)
    }

    /// Binds a pod to a node (`pods/{name}/binding`), as the scheduler does.
    pub async fn bind(&self, ns: &str, name: &str, binding: &Value) -> ApiResult<()> {
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::bad_request("a Binding needs target.name"))?
            .to_string();
        let pods = self.builtin("", "pods");
        cas::retry!(&pods, name, {
            let cur = self.get(&pods, Some(ns), name).await?;
            // A binding for a pod that was deleted and made again under its name must not place the new one.
            if let Some(want) = binding.pointer("/metadata/uid").and_then(Value::as_str).filter(|u| !u.is_empty())
                && cur.object.pointer("/metadata/uid").and_then(Value::as_str) != Some(want)
            {
                return Err(ApiError::conflict_message(
                    format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {}",
                        cur.object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
                    ),
                    None,
                ));
            }
            if meta::is_terminating(&cur.object) {
                return Err(ApiError::conflict_message(
                    format!("pod {name} is being deleted, cannot be assigned to a host"),
                    None,
                ));
            }
            if let Some(existing) =
                cur.object.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
            {
                return Err(ApiError::conflict_message(
                    format!("pod {name} is already assigned to node \"{existing}\""),
                    None,
                ));
            }
            let mut obj = cur.object.clone();
            obj["spec"]["nodeName"] = json!(node);
            set_condition(&mut obj, "PodScheduled", "True", None, None);
            let written = self
                .commit_update(
                    &pods,
                    Some(ns),
                    name,
                    &cur,
                    obj,
                    Some("binding"),
                    &WriteOptions::default(),
                    "kube-scheduler",
                )
                .await;
            cas::settle(written.map(|_| ()), true)
        })
    }

    /// Evicts a pod (`pods/{name}/eviction`): deletes it unless a PodDisruptionBudget forbids it.
    pub async fn evict(&self, ns: &str, name: &str, eviction: &Value, user: Option<&User>) -> ApiResult<()> {
        let pods = self.builtin("", "pods");
        let pod = self.get(&pods, Some(ns), name).await?;
        let pdbs = self.builtin("policy", "poddisruptionbudgets");
        for pdb in self.list_all(&pdbs, Some(ns), Selector::everything()).await? {
            let Some(sel) = pdb.pointer("/spec/selector").and_then(|s| serde_json::from_value(s.clone()).ok()) else {
                continue;
            };
            let Ok(sel) = Selector::from_label_selector(&sel) else { continue };
            if !sel.matches_object(&pod.object) {
                continue;
            }
            let allowed = pdb.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
            if allowed <= 0 {
                return Err(ApiError::too_many_requests(format!(
                    "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {} needs {} healthy pods and has {} currently",
                    meta::name(&pdb),
                    pdb.pointer("/status/desiredHealthy").and_then(Value::as_i64).unwrap_or(0),
                    pdb.pointer("/status/currentHealthy").and_then(Value::as_i64).unwrap_or(0),
                )));
            }
        }
        let grace = eviction.pointer("/deleteOptions/gracePeriodSeconds").and_then(Value::as_i64);
        // the evicting user's deletion: NodeRestriction keeps a node to the pods bound to it
        let opts = DeleteOptions { grace_period: grace, user: user.cloned(), ..Default::default() };
        self.delete(&pods, Some(ns), name, &opts).await?;
        Ok(())
    }
}

/// Sets a condition in `status.conditions` (by type), keeping `lastTransitionTime` when the status is unchanged.
pub fn set_condition(obj: &mut Value, ty: &str, status: &str, reason: Option<&str>, message: Option<&str>) {
    let now = super::managed::now();
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    let conds = obj["status"].as_object_mut().expect("made an object").entry("conditions").or_insert_with(|| json!([]));
    let Some(list) = conds.as_array_mut() else { return };
    let mut cond = json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(r) = reason {
        cond["reason"] = json!(r);
    }
    if let Some(m) = message {
        cond["message"] = json!(m);
    }
    match list.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some(ty)) {
        Some(existing) => {
            if existing.get("status").and_then(Value::as_str) == Some(status) {
                cond["lastTransitionTime"] = existing.get("lastTransitionTime").cloned().unwrap_or(json!(now));
            }
            *existing = cond;
        }
        None => list.push(cond),
    }
}

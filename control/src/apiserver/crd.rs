//! CustomResourceDefinitions: every served version of a CRD becomes a resource in the registry (discovered,
//! served, watched) as soon as the CRD is stored; deleting the CRD deletes its objects.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use serde_json::{Value, json};

use super::Api;
use super::writes::WriteOptions;
use crate::storage::Revision;
use skiff_api::registry::{PrinterColumn, ResourceInfo, Scope, Subresource};

/// Orders versions as Kubernetes does: GA before beta before alpha, higher numbers first, others last.
pub fn version_priority(v: &str) -> (u8, i64, i64) {
    let Some(rest) = v.strip_prefix('v') else { return (0, 0, 0) };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Ok(major) = digits.parse::<i64>() else { return (0, 0, 0) };
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (stage, n) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (0, 0, 0);
    };
    match n.parse::<i64>() {
        Ok(minor) => (stage, major, minor),
        Err(_) => (0, 0, 0),
    }
}

/// The resources a CRD serves, preferred version first.
pub fn resources_of(crd: &Value) -> Vec<ResourceInfo> {
    let spec = crd.get("spec").cloned().unwrap_or_default();
    let s = |p: &str| spec.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    let list = |p: &str| -> Vec<String> {
        spec.pointer(p)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let group = s("/group");
    let kind = s("/names/kind");
    let plural = s("/names/plural");
    let singular = {
        let v = s("/names/singular");
        if v.is_empty() { kind.to_ascii_lowercase() } else { v }
    };
    let scope = if s("/scope") == "Cluster" { Scope::Cluster } else { Scope::Namespaced };
    let mut versions: Vec<Value> = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    versions.retain(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false));
    versions.sort_by_key(|v| {
        std::cmp::Reverse(version_priority(v.get("name").and_then(Value::as_str).unwrap_or_default()))
    });
    versions
        .iter()
        .map(|v| {
            let version = v.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let mut subresources = Vec::new();
            if v.pointer("/subresources/status").is_some() {
                subresources.push(Subresource {
                    name: "status".into(),
                    group: group.clone(),
                    version: version.clone(),
                    kind: kind.clone(),
                    verbs: vec!["get".into(), "patch".into(), "update".into()],
                });
            }
            if v.pointer("/subresources/scale").is_some() {
                subresources.push(Subresource {
                    name: "scale".into(),
                    group: "autoscaling".into(),
                    version: "v1".into(),
                    kind: "Scale".into(),
                    verbs: vec!["get".into(), "patch".into(), "update".into()],
                });
            }
            ResourceInfo {
                group: group.clone(),
                version,
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                scope,
                short_names: list("/names/shortNames"),
                categories: list("/names/categories"),
                has_status: v.pointer("/subresources/status").is_some(),
                subresources,
                selectable_fields: Vec::new(),
                verbs: ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                custom: true,
                schema: v
                    .pointer("/schema/openAPIV3Schema")
                    .filter(|s| s.is_object())
                    .cloned()
                    .map(std::sync::Arc::new),
                printer_columns: v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .map(|cols| {
                        cols.iter()
                            .map(|c| {
                                let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                                PrinterColumn {
                                    name: f("name"),
                                    type_: f("type"),
                                    json_path: f("jsonPath"),
                                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
                                    description: f("description"),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// The store revisions the served custom resources reflect.
#[derive(Debug, Default)]
pub(crate) struct CrdRevisions {
    /// The revision of the last reload of every CRD.
    listed: std::sync::atomic::AtomicI64,
    /// The latest revision of a CRD this server wrote and served at once.
    written: std::sync::atomic::AtomicI64,
}

impl Api {
    /// After this server wrote a CRD at `revision`: serves its resources at once (unless a reload of every CRD
    /// at a later revision, by [`Api::follow_crds`], is served already), marks it Established, and deletes the
    /// objects of a deleted one.
    pub(crate) async fn sync_crd(&self, old: Option<&Value>, new: Option<&Value>, revision: Revision) {
        let old_resources = old.map(resources_of).unwrap_or_default();
        let new_resources = new.map(resources_of).unwrap_or_default();
        {
            let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
            let revs = &self.crd_revisions;
            if revision > revs.listed.load(Ordering::SeqCst) {
                for r in &old_resources {
                    reg.remove_custom(&r.group, &r.plural);
                }
                for r in &new_resources {
                    reg.upsert(r.clone());
                }
                revs.written.fetch_max(revision, Ordering::SeqCst);
            }
        }
        match new {
            Some(crd) => {
                let established = crd.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
                    c.iter().any(|c| {
                        c.get("type") == Some(&json!("Established")) && c.get("status") == Some(&json!("True"))
                    })
                });
                if !established {
                    self.establish_crd(crd).await;
                }
            }
            None => {
                if let Some(r) = old_resources.first() {
                    let prefix = r.storage_prefix();
                    match self.store.list(&prefix, Default::default()).await {
                        Ok(list) => {
                            for kv in list.items {
                                let _ = self.store.delete(&kv.key, None).await;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, %prefix, "listing the objects of a deleted CRD failed"),
                    }
                }
            }
        }
    }

    async fn establish_crd(&self, crd: &Value) {
        let info = self.builtin("apiextensions.k8s.io", "customresourcedefinitions");
        let name = skiff_api::meta::name(crd).to_string();
        let Ok(cur) = self.get(&info, None, &name).await else { return };
        let mut obj = cur.object.clone();
        obj["status"] = json!({
            "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or_default(),
            "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).map(|vs| vs.iter()
                .filter(|v| v.get("storage") == Some(&json!(true))).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()).unwrap_or_default(),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": super::managed::now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": super::managed::now()},
            ],
        });
        let opts = WriteOptions { field_manager: Some("skiff-apiextensions".into()), ..Default::default() };
        if let Err(e) =
            Box::pin(self.commit_update(&info, None, &name, &cur, obj, Some("status"), &opts, "skiff-apiextensions"))
                .await
        {
            tracing::warn!(error = %e, crd = %name, "marking the CRD established failed");
        }
    }

    /// Serves exactly the custom resources of the CRDs stored at one revision (at start, then after every change
    /// from any server); returns how many CRDs there are and that revision.
    pub async fn load_crds(&self) -> Result<(usize, Revision), super::error::ApiError> {
        let info = self.builtin("apiextensions.k8s.io", "customresourcedefinitions");
        let page = self.list(&info, None, &super::objects::ListQuery::default()).await?;
        let resources: Vec<ResourceInfo> = page.items.iter().flat_map(resources_of).collect();
        let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
        let revs = &self.crd_revisions;
        // a list older than a CRD this server wrote since is not applied: that write's own event, still to come,
        // makes the next reload
        if page.revision > revs.listed.load(Ordering::SeqCst) && page.revision >= revs.written.load(Ordering::SeqCst) {
            reg.replace_custom(resources);
            revs.listed.store(page.revision, Ordering::SeqCst);
        }
        Ok((page.items.len(), page.revision))
    }

    /// Keeps the served custom resources in step with the CRDs in the datastore, whichever server wrote them:
    /// watches the CRDs from `from` (the revision [`Api::load_crds`] read) and reloads them all on every change.
    /// Runs for the life of the server; a broken or compacted watch is followed by a reload and a new watch.
    pub async fn follow_crds(self: std::sync::Arc<Self>, mut from: Revision) {
        let prefix = self.builtin("apiextensions.k8s.io", "customresourcedefinitions").storage_prefix();
        let mut backoff = std::time::Duration::from_millis(200);
        loop {
            match self.store.watch(&prefix, from).await {
                Ok(mut events) => {
                    while let Some(ev) = events.next().await {
                        let Ok(ev) = ev else { break };
                        if ev.revision() <= self.crd_revisions.listed.load(Ordering::SeqCst) {
                            continue; // a reload has read it already
                        }
                        match self.load_crds().await {
                            Ok((_, rev)) => from = rev,
                            Err(e) => {
                                // reloaded with back-off below, not at the next CRD change, whenever that is
                                tracing::warn!(error = %e, "reloading the CRDs failed");
                                break;
                            }
                        }
                        backoff = std::time::Duration::from_millis(200);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "watching the CRDs failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            match self.load_crds().await {
                Ok((_, rev)) => from = rev,
                Err(e) => tracing::warn!(error = %e, "reloading the CRDs failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_kubernetes_sorts_them() {
        let mut v = vec!["v1alpha1", "v2", "v1beta2", "v1", "v1beta1", "foo"];
        v.sort_by_key(|s| std::cmp::Reverse(version_priority(s)));
        assert_eq!(v, vec!["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }

    #[test]
    fn a_crd_serves_each_served_version() {
        let crd = json!({"spec": {"group": "stable.example.com", "scope": "Namespaced",
            "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
            "versions": [{"name": "v1beta1", "served": true, "storage": false}, {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                         {"name": "v0", "served": false, "storage": false}]}});
        let r = resources_of(&crd);
        assert_eq!(r.iter().map(|r| r.version.as_str()).collect::<Vec<_>>(), vec!["v1", "v1beta1"]);
        assert_eq!(r[0].storage_prefix(), "/registry/stable.example.com/crontabs/");
        assert!(r[0].subresource("status").is_some());
        assert_eq!(r[0].singular, "crontab");
    }
}

//! The garbage collector: dependents whose owners are all gone are deleted (background deletion); an owner
//! deleted with `propagationPolicy=Orphan` first has its dependents' references removed, and one deleted with
//! `Foreground` first has its dependents deleted. Owners are found by `metadata.ownerReferences` uid.
//!
//! It keeps a graph of every object's uid and owners, built from a full listing and then kept current from a watch
//! of the whole store; a periodic rescan catches anything missed. Before deleting, an owner's absence is confirmed
//! with a live read, so a dependent created just before the watch delivers its new owner is never collected.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::locate;
use crate::apiserver::Api;
use crate::apiserver::writes::DeleteOptions;
use crate::storage::EventKind;
use skiff_api::meta;
use skiff_api::registry::ResourceInfo;

/// One owner reference, shared by the dependents that name the same owner alike.
#[derive(Debug, PartialEq)]
struct OwnerRef {
    uid: Arc<str>,
    api_version: String,
    kind: String,
    name: String,
}

/// One object in the graph. The graph holds every object of the cluster but Events, so it is kept small: the
/// object's uid and storage key are one string each, shared between the maps that hold them, its name and namespace
/// are read from its key, and an owner's reference is one for all its dependents. As owned strings per node (a uid
/// three times, a reference's four strings per dependent) it took ~1 KB per pod at 10k pods in
/// `scripts/bench-scale`.
#[derive(Debug, Clone)]
struct Node {
    info: Arc<ResourceInfo>,
    /// Its storage key (`…/namespace/name` or `…/name`).
    key: Arc<str>,
    owners: Box<[Arc<OwnerRef>]>,
    finalizers: Box<[String]>,
    deleting: bool,
}

impl Node {
    /// Its namespace (if its kind has one) and name, read from its key as [`locate`] reads them: what follows the
    /// kind's storage prefix is `namespace/name`, or the name alone.
    fn namespace_and_name(&self) -> (Option<&str>, &str) {
        let rest = self.key.strip_prefix(self.info.storage_prefix().as_str()).unwrap_or(&self.key);
        match rest.split_once('/') {
            Some((ns, name)) if self.info.namespaced() => (Some(ns), name),
            _ => (None, rest),
        }
    }

    fn name(&self) -> &str {
        self.namespace_and_name().1
    }

    fn namespace(&self) -> Option<&str> {
        self.namespace_and_name().0
    }
}

/// The objects that name one owner, and the owner's reference as the first of them named it.
#[derive(Debug)]
struct Dependents {
    owner: Arc<OwnerRef>,
    uids: HashSet<Arc<str>>,
}

#[derive(Debug, Default)]
struct Graph {
    /// Every object by uid.
    nodes: HashMap<Arc<str>, Node>,
    /// The dependents of each owner, by the owner's uid.
    dependents: HashMap<Arc<str>, Dependents>,
    /// Each object's uid by its storage key.
    by_key: HashMap<Arc<str>, Arc<str>>,
}

/// A stored object with only its metadata (all the collector reads): the rest is skipped over, not built, so the
/// collector's watch of every object does not decode every pod change whole.
fn metadata_of(value: &[u8]) -> serde_json::Result<Value> {
    #[derive(serde::Deserialize)]
    struct Stored {
        #[serde(default)]
        metadata: Value,
    }
    let stored: Stored = serde_json::from_slice(value)?;
    Ok(Value::Object(serde_json::Map::from_iter([("metadata".to_string(), stored.metadata)])))
}

/// Kinds the collector leaves out of its graph: Events, as upstream's collector does by default (its
/// `ignoredResources`). They are the most numerous objects of a busy cluster (one or more per pod started), they
/// expire on their own (`event_expiry`), and nothing owns them through `ownerReferences`; each would otherwise cost
/// the graph a node and the collector a decode on every write.
fn ignored(info: &ResourceInfo) -> bool {
    info.plural == "events" && (info.group.is_empty() || info.group == "events.k8s.io")
}

fn owners_of(obj: &Value) -> Vec<OwnerRef> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| {
                    Some(OwnerRef {
                        uid: r.get("uid")?.as_str()?.into(),
                        api_version: r.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string(),
                        kind: r.get("kind").and_then(Value::as_str).unwrap_or_default().to_string(),
                        name: r.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Graph {
    /// Takes the object stored under `key` out of the graph: its uid and node, if it was in it.
    fn remove(&mut self, key: &str) -> Option<(Arc<str>, Node)> {
        let uid = self.by_key.remove(key)?;
        let node = self.nodes.remove(&uid)?;
        for o in &node.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.uids.remove(&uid);
                if d.uids.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
        Some((uid, node))
    }

    /// Puts the object stored under `key` in the graph (in place of what was there); its uid.
    fn upsert(&mut self, key: &str, info: Arc<ResourceInfo>, obj: &Value) -> Arc<str> {
        let key: Arc<str> = match self.remove(key) {
            Some((_, old)) => old.key,
            None => key.into(),
        };
        let uid: Arc<str> = meta::uid(obj).into();
        let owners: Box<[Arc<OwnerRef>]> = owners_of(obj)
            .into_iter()
            .map(|o| match self.dependents.get(&o.uid) {
                Some(d) if *d.owner == o => d.owner.clone(),
                _ => Arc::new(o),
            })
            .collect();
        for o in &owners {
            self.dependents
                .entry(o.uid.clone())
                .or_insert_with(|| Dependents { owner: o.clone(), uids: HashSet::new() })
                .uids
                .insert(uid.clone());
        }
        let node = Node {
            info,
            key: key.clone(),
            owners,
            finalizers: meta::finalizers(obj).into(),
            deleting: meta::is_terminating(obj),
        };
        self.by_key.insert(key, uid.clone());
        self.nodes.insert(uid.clone(), node);
        uid
    }

    /// The uids of the objects that name `owner` among their owners.
    fn dependents_of(&self, owner: &str) -> Vec<Arc<str>> {
        self.dependents.get(owner).map(|d| d.uids.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Runs the collector forever.
pub async fn run(api: Arc<Api>) {
    loop {
        if let Err(e) = run_once(&api).await {
            tracing::warn!(error = %e, "garbage collector restarting");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn run_once(api: &Arc<Api>) -> Result<(), String> {
    let rev = api.store.revision().await.map_err(|e| e.to_string())?;
    let mut graph = Graph::default();
    let all = api
        .store
        .list("/registry/", crate::storage::ListOptions { revision: Some(rev), ..Default::default() })
        .await
        .map_err(|e| e.to_string())?;
    for kv in &all.items {
        if let Some((info, _, _)) = locate(api, &kv.key)
            && !ignored(&info)
            && let Ok(obj) = metadata_of(&kv.value)
        {
            graph.upsert(&kv.key, info, &obj);
        }
    }
    let mut events = api.store.watch("/registry/", rev).await.map_err(|e| e.to_string())?;
    rescan(api, &graph).await;
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => rescan(api, &graph).await,
            ev = events.next() => {
                let ev = match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the watch ended".into()),
                };
                let Some((info, _, _)) = locate(api, &ev.kv.key) else { continue };
                if ignored(&info) {
                    continue;
                }
                match ev.kind {
                    EventKind::Delete => {
                        if let Some((uid, gone)) = graph.remove(&ev.kv.key) {
                            // an owner waiting in foreground deletion may have lost its last dependent
                            for o in &gone.owners {
                                if let Some(owner) = graph.nodes.get(&o.uid).cloned()
                                    && owner.deleting
                                {
                                    process(api, &graph, &o.uid, &owner).await;
                                }
                            }
                            for d in graph.dependents_of(&uid) {
                                if let Some(node) = graph.nodes.get(&d).cloned() {
                                    collect(api, &graph, &node).await;
                                }
                            }
                        }
                    }
                    EventKind::Put => {
                        let Ok(obj) = metadata_of(&ev.kv.value) else { continue };
                        let uid = graph.upsert(&ev.kv.key, info, &obj);
                        if let Some(node) = graph.nodes.get(&uid).cloned() {
                            process(api, &graph, &uid, &node).await;
                        }
                    }
                }
            }
        }
    }
}

async fn rescan(api: &Arc<Api>, graph: &Graph) {
    let nodes: Vec<(Arc<str>, Node)> = graph.nodes.iter().map(|(u, n)| (u.clone(), n.clone())).collect();
    for (uid, node) in nodes {
        process(api, graph, &uid, &node).await;
    }
}

/// Handles one present object: its deletion policy towards its dependents, and its own owners.
async fn process(api: &Arc<Api>, graph: &Graph, uid: &str, node: &Node) {
    let deps: Vec<Node> = graph
        .dependents
        .get(uid)
        .map(|d| d.uids.iter().filter_map(|u| graph.nodes.get(u).cloned()).collect())
        .unwrap_or_default();
    if node.deleting && node.finalizers.iter().any(|f| f == "orphan") {
        for d in &deps {
            let owner = uid.to_string();
            let r = api
                .update_with(&d.info, d.namespace(), d.name(), None, "garbage-collector", |o| {
                    let Some(refs) = o.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) else {
                        return false;
                    };
                    let before = refs.len();
                    refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner.as_str()));
                    refs.len() != before
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, dependent = %d.name(), "orphaning a dependent failed");
                return;
            }
        }
        remove_finalizer(api, node, "orphan").await;
    }
    if node.deleting && node.finalizers.iter().any(|f| f == "foregroundDeletion") {
        if deps.is_empty() {
            remove_finalizer(api, node, "foregroundDeletion").await;
        } else {
            for d in deps.iter().filter(|d| !d.deleting) {
                let opts = DeleteOptions { propagation: Some("Foreground".into()), ..Default::default() };
                if let Err(e) = api.delete(&d.info, d.namespace(), d.name(), &opts).await
                    && e.code != 404
                {
                    tracing::warn!(error = %e, dependent = %d.name(), "foreground deletion of a dependent failed");
                }
            }
        }
    }
    if !node.owners.is_empty() && node.owners.iter().any(|o| !graph.nodes.contains_key(&o.uid)) {
        collect(api, graph, node).await;
    }
}

async fn remove_finalizer(api: &Arc<Api>, node: &Node, finalizer: &str) {
    let r = api
        .update_with(&node.info, node.namespace(), node.name(), None, "garbage-collector", |o| {
            let Some(list) = o.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) else { return false };
            let before = list.len();
            list.retain(|f| f.as_str() != Some(finalizer));
            list.len() != before
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, object = %node.name(), finalizer, "removing a finalizer failed");
    }
}

/// Whether an owner still exists (checked live, by uid).
async fn owner_exists(api: &Arc<Api>, graph: &Graph, node: &Node, owner: &OwnerRef) -> bool {
    if graph.nodes.contains_key(&owner.uid) {
        return true;
    }
    let Some(info) = api.resource_for_kind(&owner.api_version, &owner.kind) else {
        return false;
    };
    let ns = if info.namespaced() { node.namespace() } else { None };
    match api.try_get(&info, ns, &owner.name).await {
        Ok(Some(s)) => meta::uid(&s.object) == &*owner.uid,
        Ok(None) => false,
        Err(_) => true, // unsure: keep the dependent
    }
}

/// Deletes a dependent whose owners are all gone, or drops the references to the owners that are gone.
async fn collect(api: &Arc<Api>, graph: &Graph, node: &Node) {
    if node.owners.is_empty() {
        return;
    }
    let mut dangling = Vec::new();
    for o in &node.owners {
        if !owner_exists(api, graph, node, o).await {
            dangling.push(o.uid.clone());
        }
    }
    if dangling.is_empty() {
        return;
    }
    if dangling.len() == node.owners.len() {
        if node.deleting {
            return;
        }
        tracing::debug!(kind = %node.info.kind, name = %node.name(), "collecting an object whose owners are gone");
        let opts = DeleteOptions { propagation: Some("Background".into()), ..Default::default() };
        if let Err(e) = api.delete(&node.info, node.namespace(), node.name(), &opts).await
            && e.code != 404
        {
            tracing::warn!(error = %e, object = %node.name(), "garbage collection failed");
        }
    } else {
        let r = api
            .update_with(&node.info, node.namespace(), node.name(), None, "garbage-collector", |o| {
                let Some(refs) = o.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) else {
                    return false;
                };
                refs.retain(|r| {
                    !r.get("uid").and_then(Value::as_str).is_some_and(|u| dangling.iter().any(|d| &**d == u))
                });
                true
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, object = %node.name(), "dropping dangling owner references failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_collector_reads_the_metadata_a_whole_decode_has() {
        let pod = json!({
            "kind": "Pod",
            "metadata": {"name": "p", "uid": "u1", "finalizers": ["orphan"], "deletionTimestamp": "2026-12-03T00:00:00Z",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u0"}]},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"},
        });
        let read = metadata_of(&serde_json::to_vec(&pod).expect("json")).expect("read");
        assert_eq!(read, json!({"metadata": pod["metadata"]}));
        assert_eq!(meta::uid(&read), "u1");
        assert!(meta::is_terminating(&read));
        assert_eq!(owners_of(&read).len(), 1);
        assert_eq!(metadata_of(b"{\"kind\": \"Namespace\"}").expect("no metadata"), json!({"metadata": null}));
        assert!(metadata_of(b"not json").is_err());
    }

    fn info(plural: &str) -> Arc<ResourceInfo> {
        let registry = skiff_api::registry::Registry::with_builtins();
        registry.all().iter().find(|r| r.group.is_empty() && r.plural == plural).cloned().expect("a builtin")
    }

    fn object(uid: &str, owners: &[(&str, &str)]) -> Value {
        let refs: Vec<Value> = owners
            .iter()
            .map(|(uid, name)| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": uid}))
            .collect();
        json!({"metadata": {"uid": uid, "ownerReferences": refs}})
    }

    fn dependents(graph: &Graph, owner: &str) -> Vec<String> {
        let mut uids: Vec<String> = graph.dependents_of(owner).iter().map(|u| u.to_string()).collect();
        uids.sort();
        uids
    }

    #[test]
    fn the_graph_follows_each_object_and_its_owners() {
        let (pods, nodes) = (info("pods"), info("nodes"));
        let mut graph = Graph::default();
        graph.upsert("/registry/pods/d/a", pods.clone(), &object("pa", &[("rs1", "web")]));
        graph.upsert("/registry/pods/d/b", pods.clone(), &object("pb", &[("rs1", "web"), ("rs2", "db")]));
        graph.upsert("/registry/nodes/n1", nodes, &object("n1", &[]));
        assert_eq!(
            (dependents(&graph, "rs1"), dependents(&graph, "rs2")),
            (vec!["pa".into(), "pb".into()], vec!["pb".into()])
        );
        let (a, n1) = (&graph.nodes["pa"], &graph.nodes["n1"]);
        assert_eq!((a.namespace(), a.name(), n1.namespace(), n1.name()), (Some("d"), "a", None, "n1"));
        // read as `locate` reads a key: the namespace is the first segment after the kind's prefix
        graph.upsert("/registry/pods/d/x/y", pods.clone(), &object("pxy", &[]));
        assert_eq!((graph.nodes["pxy"].namespace(), graph.nodes["pxy"].name()), (Some("d"), "x/y"));
        graph.remove("/registry/pods/d/x/y");
        // a new version: released by rs1, its uid unchanged
        graph.upsert("/registry/pods/d/b", pods.clone(), &object("pb", &[("rs2", "db")]));
        assert_eq!((dependents(&graph, "rs1"), dependents(&graph, "rs2")), (vec!["pa".into()], vec!["pb".into()]));
        // deleted: gone from its owners, and an owner with no dependents left is forgotten
        let (uid, gone) = graph.remove("/registry/pods/d/b").expect("in the graph");
        assert_eq!((&*uid, gone.name()), ("pb", "b"));
        assert!(!graph.dependents.contains_key("rs2") && graph.remove("/registry/pods/d/b").is_none());
        // recreated under the same name: a new uid in place of the old
        graph.upsert("/registry/pods/d/a", pods, &object("pa2", &[("rs1", "web")]));
        assert_eq!(dependents(&graph, "rs1"), ["pa2"]);
        assert!(!graph.nodes.contains_key("pa"));
        assert_eq!((graph.nodes.len(), graph.by_key.len()), (2, 2));
    }

    #[test]
    fn an_owner_reference_and_an_object_key_are_held_once() {
        let pods = info("pods");
        let mut graph = Graph::default();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            graph.upsert(
                &format!("/registry/pods/d/{name}"),
                pods.clone(),
                &object(&format!("p{i}"), &[("rs1", "web")]),
            );
        }
        // a dependent naming the same owner otherwise keeps its own reference
        graph.upsert("/registry/pods/d/odd", pods.clone(), &object("p9", &[("rs1", "other-name")]));
        let owner = |uid: &str| graph.nodes[uid].owners[0].clone();
        assert!(Arc::ptr_eq(&owner("p0"), &owner("p1")) && Arc::ptr_eq(&owner("p1"), &owner("p2")));
        assert!(!Arc::ptr_eq(&owner("p0"), &owner("p9")) && owner("p9").name == "other-name");
        graph.upsert("/registry/pods/d/a", pods, &object("p0", &[("rs1", "web")]));
        let (key, uid) = graph.by_key.get_key_value("/registry/pods/d/a").expect("known");
        assert!(Arc::ptr_eq(key, &graph.nodes[&**uid].key), "the key shared by the node and the index");
        let (node_uid, _) = graph.nodes.get_key_value("p0").expect("node");
        assert!(Arc::ptr_eq(uid, node_uid), "the uid shared by the index and the node");
    }

    #[test]
    fn events_are_left_out_of_the_graph_and_nothing_else_is() {
        let registry = skiff_api::registry::Registry::with_builtins();
        let left_out: Vec<String> =
            registry.all().iter().filter(|r| ignored(r)).map(|r| r.qualified_plural()).collect();
        assert!(!left_out.is_empty());
        assert!(left_out.iter().all(|p| p == "events" || p == "events.events.k8s.io"), "{left_out:?}");
        assert!(left_out.contains(&"events".to_string()));
    }
}

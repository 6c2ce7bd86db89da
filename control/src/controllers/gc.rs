//! The garbage collector: dependents whose owners are all gone are deleted (background deletion); an owner
//! deleted with `propagationPolicy=Orphan` first has its dependents' references removed, and one deleted with
//! `Foreground` first has its dependents deleted. Owners are found by `metadata.ownerReferences` uid.
//!
//! It keeps a graph of every object's uid and owners, built from a full listing and then kept current from a watch
//! of the whole store; a periodic rescan catches anything missed. Before deleting, an owner's absence is confirmed
//! with a live read, so a dependent created just before the watch delivers its new owner is never collected.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hashbrown::HashTable;
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

/// One object in the graph. The graph holds every object of the cluster but Events, so a node is kept small: 48 bytes
/// (asserted below) and one allocation of its own, its storage key followed by its uid (~80 bytes for a pod). Its name
/// and namespace are read from its key, an owner's reference is one for all the dependents that name it alike, and of
/// its finalizers it keeps only whether it has the two the collector acts on. The graph's indexes hold slot numbers
/// and hash the key and uid held here, so neither string is held twice. As owned strings per node (a uid three times,
/// a reference's four strings per dependent) it took ~1 KB per pod at 10k pods in `scripts/bench-scale`.
#[derive(Debug)]
struct Node {
    info: Arc<ResourceInfo>,
    /// Its storage key (`…/namespace/name` or `…/name`), then its uid.
    text: Box<str>,
    /// How many bytes of `text` are the key.
    key_len: u32,
    owners: Box<[Arc<OwnerRef>]>,
    deleting: bool,
    /// Whether it has the `orphan` finalizer.
    orphan: bool,
    /// Whether it has the `foregroundDeletion` finalizer.
    foreground: bool,
}

const _: () = assert!(std::mem::size_of::<Option<Node>>() <= 48, "a graph node's slot outgrew its 48 bytes");

impl Node {
    fn new(info: Arc<ResourceInfo>, key: &str, owners: Box<[Arc<OwnerRef>]>, obj: &Value) -> Node {
        let finalizers = meta::finalizers(obj);
        let has = |finalizer: &str| finalizers.iter().any(|f| f == finalizer);
        Node {
            info,
            text: [key, meta::uid(obj)].concat().into_boxed_str(),
            key_len: u32::try_from(key.len()).expect("a storage key (a prefix, a namespace, a name) is under 4 GiB"),
            owners,
            deleting: meta::is_terminating(obj),
            orphan: has("orphan"),
            foreground: has("foregroundDeletion"),
        }
    }

    /// Its storage key.
    fn key(&self) -> &str {
        &self.text[..self.key_len as usize]
    }

    fn uid(&self) -> &str {
        &self.text[self.key_len as usize..]
    }

    /// Its namespace (if its kind has one) and name, read from its key as [`locate`] reads them: what follows the
    /// kind's storage prefix is `namespace/name`, or the name alone.
    fn namespace_and_name(&self) -> (Option<&str>, &str) {
        let key = self.key();
        let rest = key.strip_prefix(self.info.storage_prefix().as_str()).unwrap_or(key);
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

/// The objects that name one owner, by slot, and the owner's reference as the first of them named it.
#[derive(Debug)]
struct Dependents {
    owner: Arc<OwnerRef>,
    slots: HashSet<u32>,
}

/// Every object, in a slab of slots, found by uid or by storage key, and the dependents of each owner.
///
/// Laid out for size, as it holds an entry per object of the cluster: an object costs its slot (48 bytes, ~79 with the
/// slab's spare room at 10k objects), its node's one allocation (~80 bytes for a pod), 8 bytes per owner, and its
/// slot number (4 bytes and a control byte, ~8 with spare room) in each index and in each of its owners' sets: ~195
/// bytes a pod at 10k pods, counted by allocator in mimalloc's size classes, where three maps of shared `Arc<str>`
/// uids and keys (a node slot of 80 bytes, a key's of 32, a uid's of 16 in each owner's set) took ~380. Owners are
/// few (one per ReplicaSet), so they stay keyed by uid.
///
/// # Guarantees
///
/// - Every taken slot is in `by_uid` once and in `by_key` once; a free slot is in neither and in no owner's set (a
///   node's slot leaves its owners' sets before it is freed), so a reused slot is never another object's dependent.
/// - Keys are unique: putting an object replaces what its key held. Uids are too in a cluster, but two objects with
///   one uid are each held and each removed by their own key (the uid finds one of them).
///
/// # Caveats
///
/// The slab, its free list and the tables never shrink: a cluster that shrank keeps its largest size's slots (48
/// bytes each) until the collector restarts, as the maps before it did.
#[derive(Debug, Default)]
struct Graph {
    /// Hashes uids and keys for the indexes, keyed at random per process (both come from users' objects).
    hasher: RandomState,
    /// The nodes by slot; a free slot is `None`, and listed in `free`.
    slots: Vec<Option<Node>>,
    free: Vec<u32>,
    /// Every taken slot, found by a hash of its node's uid.
    by_uid: HashTable<u32>,
    /// Every taken slot, found by a hash of its node's storage key.
    by_key: HashTable<u32>,
    /// The dependents of each owner, by the owner's uid.
    dependents: HashMap<Arc<str>, Dependents>,
}

/// The node in `slot`, if the slot is taken.
fn at(slots: &[Option<Node>], slot: u32) -> Option<&Node> {
    slots.get(slot as usize)?.as_ref()
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
    /// Takes the object stored under `key` out of the graph, if it was in it.
    fn remove(&mut self, key: &str) -> Option<Node> {
        let slots = &self.slots;
        let found =
            self.by_key.find_entry(self.hasher.hash_one(key), |&s| at(slots, s).is_some_and(|n| n.key() == key));
        let slot = found.ok()?.remove().0;
        let node = self.slots.get_mut(slot as usize)?.take()?;
        if let Ok(entry) = self.by_uid.find_entry(self.hasher.hash_one(node.uid()), |&s| s == slot) {
            entry.remove();
        }
        for o in &node.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.slots.remove(&slot);
                if d.slots.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
        self.free.push(slot);
        Some(node)
    }

    /// Puts the object stored under `key` in the graph (in place of what was there); its slot.
    fn upsert(&mut self, key: &str, info: Arc<ResourceInfo>, obj: &Value) -> u32 {
        self.remove(key);
        let owners: Box<[Arc<OwnerRef>]> = owners_of(obj)
            .into_iter()
            .map(|o| match self.dependents.get(&o.uid) {
                Some(d) if *d.owner == o => d.owner.clone(),
                _ => Arc::new(o),
            })
            .collect();
        let node = Node::new(info, key, owners, obj);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 objects in a cluster")
            }
        };
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_insert_with(|| Dependents { owner: o.clone(), slots: HashSet::new() })
                .slots
                .insert(slot);
        }
        let (uid_hash, key_hash) = (self.hasher.hash_one(node.uid()), self.hasher.hash_one(node.key()));
        self.slots[slot as usize] = Some(node);
        let (hasher, slots) = (&self.hasher, &self.slots);
        // every slot in the tables is taken (see the guarantees), so a rehash never meets an empty one
        let rehash = |s: &u32, text: fn(&Node) -> &str| at(slots, *s).map_or(0, |n| hasher.hash_one(text(n)));
        self.by_uid.insert_unique(uid_hash, slot, |s| rehash(s, Node::uid));
        self.by_key.insert_unique(key_hash, slot, |s| rehash(s, Node::key));
        slot
    }

    /// The node in `slot`, if the slot is taken.
    fn at(&self, slot: u32) -> Option<&Node> {
        at(&self.slots, slot)
    }

    /// The object with this uid.
    fn node(&self, uid: &str) -> Option<&Node> {
        let slots = &self.slots;
        let slot = self.by_uid.find(self.hasher.hash_one(uid), |&s| at(slots, s).is_some_and(|n| n.uid() == uid))?;
        self.at(*slot)
    }

    /// Every object.
    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.slots.iter().flatten()
    }

    /// The objects that name `owner` among their owners.
    fn dependents_of<'a>(&'a self, owner: &str) -> impl Iterator<Item = &'a Node> + use<'a> {
        let slots = self.dependents.get(owner).into_iter().flat_map(|d| d.slots.iter());
        slots.filter_map(|&s| self.at(s))
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
                        if let Some(gone) = graph.remove(&ev.kv.key) {
                            // an owner waiting in foreground deletion may have lost its last dependent
                            for o in &gone.owners {
                                if let Some(owner) = graph.node(&o.uid)
                                    && owner.deleting
                                {
                                    process(api, &graph, owner).await;
                                }
                            }
                            for d in graph.dependents_of(gone.uid()) {
                                collect(api, &graph, d).await;
                            }
                        }
                    }
                    EventKind::Put => {
                        let Ok(obj) = metadata_of(&ev.kv.value) else { continue };
                        let slot = graph.upsert(&ev.kv.key, info, &obj);
                        if let Some(node) = graph.at(slot) {
                            process(api, &graph, node).await;
                        }
                    }
                }
            }
        }
    }
}

/// Processes every object. The graph does not change meanwhile (only `run_once`'s loop changes it, and it waits for
/// this), so its nodes are read in place.
async fn rescan(api: &Arc<Api>, graph: &Graph) {
    for node in graph.nodes() {
        process(api, graph, node).await;
    }
}

/// Handles one present object: its deletion policy towards its dependents, and its own owners.
async fn process(api: &Arc<Api>, graph: &Graph, node: &Node) {
    let deps: Vec<&Node> = graph.dependents_of(node.uid()).collect();
    if node.deleting && node.orphan {
        for d in &deps {
            let owner = node.uid().to_string();
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
    if node.deleting && node.foreground {
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
    if !node.owners.is_empty() && node.owners.iter().any(|o| graph.node(&o.uid).is_none()) {
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
    if graph.node(&owner.uid).is_some() {
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
    use std::collections::{BTreeMap, BTreeSet};

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
        let mut uids: Vec<String> = graph.dependents_of(owner).map(|n| n.uid().to_string()).collect();
        uids.sort();
        uids
    }

    // === impl Graph (test-only views and checks) ===

    impl Graph {
        fn len(&self) -> usize {
            self.by_key.len()
        }

        /// The object stored under `key`.
        fn find_key(&self, key: &str) -> Option<&Node> {
            let slots = &self.slots;
            let slot =
                self.by_key.find(self.hasher.hash_one(key), |&s| at(slots, s).is_some_and(|n| n.key() == key))?;
            self.at(*slot)
        }

        /// Asserts the graph's guarantees: each taken slot in each index once, a free slot in none and in no owner's
        /// set, and each owner's set the slots of exactly the nodes that name it.
        fn assert_consistent(&self) {
            let count = u32::try_from(self.slots.len()).expect("a test's slots");
            let taken: Vec<u32> = (0..count).filter(|&s| self.at(s).is_some()).collect();
            let free: BTreeSet<u32> = self.free.iter().copied().collect();
            assert_eq!(free.len(), self.free.len(), "a slot freed twice");
            assert!(free.iter().all(|&s| s < count && self.at(s).is_none()), "a free slot is taken");
            assert_eq!(taken.len() + free.len(), self.slots.len(), "an empty slot not listed as free");
            assert_eq!((self.by_uid.len(), self.by_key.len()), (taken.len(), taken.len()));
            for &s in &taken {
                let node = self.at(s).expect("taken");
                assert!(self.by_uid.find(self.hasher.hash_one(node.uid()), |&i| i == s).is_some(), "{s} by uid");
                assert!(self.by_key.find(self.hasher.hash_one(node.key()), |&i| i == s).is_some(), "{s} by key");
                for o in &node.owners {
                    assert!(self.dependents.get(&o.uid).is_some_and(|d| d.slots.contains(&s)), "{s} of {}", o.uid);
                }
            }
            for (owner, d) in &self.dependents {
                assert!(!d.slots.is_empty() && d.owner.uid == *owner, "{owner}");
                for &s in &d.slots {
                    let names = self.at(s).is_some_and(|n| n.owners.iter().any(|o| o.uid == *owner));
                    assert!(names, "slot {s} a stale dependent of {owner}");
                }
            }
        }
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
        let (a, n1) = (graph.node("pa").expect("pa"), graph.node("n1").expect("n1"));
        assert_eq!((a.namespace(), a.name(), n1.namespace(), n1.name()), (Some("d"), "a", None, "n1"));
        assert_eq!((a.key(), a.uid()), ("/registry/pods/d/a", "pa"));
        // read as `locate` reads a key: the namespace is the first segment after the kind's prefix
        graph.upsert("/registry/pods/d/x/y", pods.clone(), &object("pxy", &[]));
        let xy = graph.node("pxy").expect("pxy");
        assert_eq!((xy.namespace(), xy.name()), (Some("d"), "x/y"));
        graph.remove("/registry/pods/d/x/y");
        // a new version: released by rs1, its uid unchanged
        graph.upsert("/registry/pods/d/b", pods.clone(), &object("pb", &[("rs2", "db")]));
        assert_eq!((dependents(&graph, "rs1"), dependents(&graph, "rs2")), (vec!["pa".into()], vec!["pb".into()]));
        // deleted: gone from its owners, and an owner with no dependents left is forgotten
        let gone = graph.remove("/registry/pods/d/b").expect("in the graph");
        assert_eq!((gone.uid(), gone.name()), ("pb", "b"));
        assert!(!graph.dependents.contains_key("rs2") && graph.remove("/registry/pods/d/b").is_none());
        // recreated under the same name: a new uid in place of the old
        graph.upsert("/registry/pods/d/a", pods, &object("pa2", &[("rs1", "web")]));
        assert_eq!(dependents(&graph, "rs1"), ["pa2"]);
        assert!(graph.node("pa").is_none());
        assert_eq!(graph.len(), 2);
        graph.assert_consistent();
    }

    #[test]
    fn an_owner_reference_is_shared_by_the_dependents_that_name_it_alike() {
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
        let owner = |graph: &Graph, uid: &str| graph.node(uid).expect("in the graph").owners[0].clone();
        assert!(Arc::ptr_eq(&owner(&graph, "p0"), &owner(&graph, "p1")));
        assert!(Arc::ptr_eq(&owner(&graph, "p1"), &owner(&graph, "p2")));
        assert!(!Arc::ptr_eq(&owner(&graph, "p0"), &owner(&graph, "p9")) && owner(&graph, "p9").name == "other-name");
        // a new version of a dependent takes the shared reference again
        graph.upsert("/registry/pods/d/a", pods, &object("p0", &[("rs1", "web")]));
        assert!(Arc::ptr_eq(&owner(&graph, "p0"), &owner(&graph, "p1")));
        // That an object's key and uid are held once is no longer tested here: it holds by construction, the node
        // holding both in its one string and the indexes only its slot number (a `HashTable<u32>` has no string to
        // compare pointers with).
    }

    #[test]
    fn objects_sharing_a_uid_are_each_held_and_removed_by_their_key() {
        // uids are unique in a cluster, but an object stored without one reads as `""`
        let pods = info("pods");
        let mut graph = Graph::default();
        graph.upsert("/registry/pods/d/a", pods.clone(), &object("", &[("rs1", "web")]));
        graph.upsert("/registry/pods/d/b", pods, &object("", &[("rs2", "db")]));
        assert_eq!(
            (graph.len(), dependents(&graph, "rs1"), dependents(&graph, "rs2")),
            (2, vec!["".into()], vec!["".into()])
        );
        assert_eq!(graph.remove("/registry/pods/d/a").map(|n| n.name().to_string()), Some("a".into()));
        assert_eq!(graph.node("").map(Node::name), Some("b"));
        assert!(!graph.dependents.contains_key("rs1") && dependents(&graph, "rs2") == [""]);
        graph.assert_consistent();
    }

    #[test]
    fn thousands_of_objects_through_removals_and_reused_slots_match_a_model() {
        #[derive(Clone, Copy)]
        enum Step {
            /// Puts each object, with the owners of `owned(i, shift)`, under a new uid or the one it has.
            Put { shift: usize, new_uid: bool },
            /// Removes each object.
            Remove,
        }
        let pods = info("pods");
        let owners = ["rs0", "rs1", "rs2", "rs3", "rs4"];
        // a fifth of the objects have no owner, a tenth two, the rest one
        let owned = |i: usize, shift: usize| -> Vec<&str> {
            match (i + shift) % 10 {
                0 | 5 => vec![],
                3 => vec![owners[i % 5], owners[(i + 1) % 5]],
                _ => vec![owners[(i + shift) % 5]],
            }
        };
        let key = |i: usize| format!("/registry/pods/n{}/p{i}", i % 3);
        let rounds: Vec<(&str, Vec<usize>, Step)> = vec![
            ("3,000 objects are put", (0..3000).collect(), Step::Put { shift: 0, new_uid: true }),
            ("every third is removed", (0..3000).step_by(3).collect(), Step::Remove),
            (
                "half of those come back, new uids in freed slots",
                (0..3000).step_by(6).collect(),
                Step::Put { shift: 0, new_uid: true },
            ),
            (
                "some change owners, their uids kept",
                (1..3000).step_by(4).collect(),
                Step::Put { shift: 1, new_uid: false },
            ),
            ("more are added than slots are free", (3000..3800).collect(), Step::Put { shift: 2, new_uid: true }),
            ("most are removed, newest first", (0..3800).rev().filter(|i| i % 5 != 2).collect(), Step::Remove),
            (
                "they come back with other owners",
                (0..3800).filter(|i| i % 5 != 2).collect(),
                Step::Put { shift: 3, new_uid: true },
            ),
        ];
        let mut graph = Graph::default();
        // each object's uid and owners' uids, by key; and every uid ever put
        let mut model: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        let (mut uids, mut most) = (BTreeSet::new(), 0);
        for (round, (what, objects, step)) in rounds.into_iter().enumerate() {
            for i in objects {
                match step {
                    Step::Remove => {
                        let gone = graph.remove(&key(i)).map(|n| n.uid().to_string());
                        assert_eq!(gone, model.remove(&key(i)).map(|(uid, _)| uid), "{what}: p{i}");
                    }
                    Step::Put { shift, new_uid } => {
                        let uid = match model.get(&key(i)) {
                            Some((uid, _)) if !new_uid => uid.clone(),
                            _ => format!("u{i}-{round}"),
                        };
                        let refs: Vec<(&str, &str)> = owned(i, shift).into_iter().map(|o| (o, "web")).collect();
                        graph.upsert(&key(i), pods.clone(), &object(&uid, &refs));
                        uids.insert(uid.clone());
                        model.insert(key(i), (uid, refs.iter().map(|(o, _)| o.to_string()).collect()));
                        most = most.max(model.len());
                    }
                }
            }
            assert_eq!(graph.len(), model.len(), "{what}");
            for i in 0..3800 {
                let got = graph.find_key(&key(i)).map(|n| (n.uid(), n.owners.iter().map(|o| &*o.uid).collect()));
                let want = model.get(&key(i)).map(|(uid, owned)| (uid.as_str(), owned.iter().map(String::as_str)));
                assert_eq!(got, want.map(|(uid, owned)| (uid, owned.collect::<Vec<_>>())), "{what}: by key p{i}");
            }
            let held: BTreeMap<&str, &str> = model.iter().map(|(k, (uid, _))| (uid.as_str(), k.as_str())).collect();
            for uid in &uids {
                assert_eq!(graph.node(uid).map(Node::key), held.get(uid.as_str()).copied(), "{what}: by uid {uid}");
            }
            for owner in owners {
                let mut want: Vec<String> = model
                    .values()
                    .filter(|(_, owned)| owned.iter().any(|o| o == owner))
                    .map(|(u, _)| u.clone())
                    .collect();
                want.sort();
                assert_eq!(dependents(&graph, owner), want, "{what}: the dependents of {owner}");
            }
            graph.assert_consistent();
        }
        // a slot is added only when none is free: as many as the most objects held at once
        assert_eq!(graph.slots.len(), most, "slots reused");
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

//! The controllers' pod cache: every pod the pods informer holds, found by namespace and name, and grouped by the uid
//! of its controller (the ownerReference with `controller: true`), so a controller reads the pods it owns and the
//! orphans it may adopt without going over every pod of the namespace (the ReplicaSet controller did: 10,000 pods for
//! each of 100 ReplicaSets).
//!
//! Of Skiff's own, not kube-runtime's reflector store, because it holds an entry per pod of the cluster: the reflector
//! keys each object by an `ObjectRef` of four owned strings (~100 bytes a slot, with the name and namespace copied),
//! and the groups kept beside it keyed each pod again. Here each table holds only the pod's `Arc` and finds it by a
//! hash of the namespace and name the pod itself holds, so an entry costs a pointer and a control byte per table.
//! The groups change under the same lock as the pods, so a reader never sees a pod in one and not the other.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;
use kube::runtime::watcher;

use super::util::{Cached, Meta, controller_of};

/// The pods (or other cached objects) and their groups; cheap to clone (one shared table), read by the controllers.
pub struct Store<K>(Arc<Inner<K>>);

/// The side that applies an informer's watch events to a [`Store`].
pub struct Writer<K> {
    store: Store<K>,
    /// The objects of a re-list so far, from its `Init` to its `InitDone`.
    relist: Option<Vec<Arc<K>>>,
    /// Whether the first full list is in (readers wait on it until this writer is gone).
    ready: tokio::sync::watch::Sender<bool>,
}

struct Inner<K> {
    objects: RwLock<Objects<K>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

struct Objects<K> {
    /// Hashes an object's namespace and name, keyed at random per process (names come from users).
    hasher: RandomState,
    all: HashTable<Arc<K>>,
    /// The objects by their controller's uid (`""`: no controller).
    groups: HashMap<Box<str>, HashTable<Arc<K>>>,
}

fn same<K: Cached>(obj: &K, ns: &str, name: &str) -> bool {
    let meta = obj.cached_meta();
    meta.namespace().unwrap_or_default() == ns && meta.name().unwrap_or_default() == name
}

fn namespace_and_name<K: Cached>(obj: &K) -> (&str, &str) {
    let meta = obj.cached_meta();
    (meta.namespace().unwrap_or_default(), meta.name().unwrap_or_default())
}

fn group_of<K: Cached>(obj: &K) -> &str {
    controller_of(obj.cached_meta()).map(|c| c.uid.as_str()).unwrap_or_default()
}

impl<K: Cached> Objects<K> {
    fn hash(&self, ns: &str, name: &str) -> u64 {
        self.hasher.hash_one((ns, name))
    }

    fn hash_of(&self, obj: &K) -> u64 {
        let (ns, name) = namespace_and_name(obj);
        self.hash(ns, name)
    }

    fn get(&self, ns: &str, name: &str) -> Option<&Arc<K>> {
        self.all.find(self.hash(ns, name), |o| same(o.as_ref(), ns, name))
    }

    /// Keeps `obj` in place of the object of its namespace and name; the object it replaced.
    fn put(&mut self, obj: Arc<K>) -> Option<Arc<K>> {
        let hash = self.hash_of(&obj);
        let (ns, name) = namespace_and_name(obj.as_ref());
        let old = match self.all.find_entry(hash, |o| same(o.as_ref(), ns, name)) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        };
        if let Some(old) = &old {
            self.ungroup(hash, old);
        }
        let hasher = &self.hasher;
        let rehash = |o: &Arc<K>| {
            let (ns, name) = namespace_and_name(o.as_ref());
            hasher.hash_one((ns, name))
        };
        let uid = group_of(obj.as_ref());
        match self.groups.get_mut(uid) {
            Some(group) => {
                group.insert_unique(hash, obj.clone(), rehash);
            }
            None => {
                let mut group = HashTable::new();
                group.insert_unique(hash, obj.clone(), rehash);
                self.groups.insert(uid.into(), group);
            }
        }
        self.all.insert_unique(hash, obj, rehash);
        old
    }

    /// Takes out the object of this namespace and name, if it holds one.
    fn take(&mut self, ns: &str, name: &str) -> Option<Arc<K>> {
        let hash = self.hash(ns, name);
        let old = self.all.find_entry(hash, |o| same(o.as_ref(), ns, name)).ok()?.remove().0;
        self.ungroup(hash, &old);
        Some(old)
    }

    fn ungroup(&mut self, hash: u64, old: &Arc<K>) {
        let uid = group_of(old.as_ref());
        let Some(group) = self.groups.get_mut(uid) else { return };
        if let Ok(entry) = group.find_entry(hash, |o| Arc::ptr_eq(o, old)) {
            entry.remove();
        }
        if group.is_empty() {
            self.groups.remove(uid);
        }
    }

    /// No objects, hashed as these are.
    fn empty_like(&self) -> Self {
        Objects { hasher: self.hasher.clone(), all: HashTable::new(), groups: HashMap::new() }
    }
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store(self.0.clone())
    }
}

impl<K: Cached> Store<K> {
    fn read(&self) -> RwLockReadGuard<'_, Objects<K>> {
        self.0.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Objects<K>> {
        self.0.objects.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The object named `name` in namespace `ns` (`""` for a kind without namespaces).
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        self.read().get(ns, name).cloned()
    }

    /// Every object.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.read().all.iter().cloned().collect()
    }

    /// The objects of namespace `ns`.
    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        self.read().all.iter().filter(|o| o.cached_meta().namespace() == Some(ns)).cloned().collect()
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.read().all.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The objects of namespace `ns` that the object with `uid` controls, and those no object controls (which it
    /// may adopt): every object of the namespace a controller's plan does not skip as another controller's.
    pub fn controlled_or_orphaned(&self, uid: &str, ns: &str) -> Vec<Arc<K>> {
        let objects = self.read();
        let in_ns = |o: &&Arc<K>| o.cached_meta().namespace() == Some(ns);
        let group = |u: &str| objects.groups.get(u).into_iter().flat_map(|g| g.iter());
        let mut out: Vec<Arc<K>> = group(uid).filter(in_ns).cloned().collect();
        if !uid.is_empty() {
            out.extend(group("").filter(in_ns).cloned());
        }
        out
    }

    /// Waits until the first full list is in, or until its writer is gone (as kube-runtime's store does, though
    /// that one says which).
    pub async fn wait_until_ready(&self) {
        let mut ready = self.0.ready.clone();
        // An error: the writer is gone, the list will never come.
        let _ = ready.wait_for(|r| *r).await;
    }
}

impl<K: Cached> Default for Writer<K> {
    fn default() -> Self {
        let objects = Objects { hasher: RandomState::new(), all: HashTable::new(), groups: HashMap::new() };
        let (ready, seen) = tokio::sync::watch::channel(false);
        Writer { store: Store(Arc::new(Inner { objects: RwLock::new(objects), ready: seen })), relist: None, ready }
    }
}

impl<K: Cached + Clone> Writer<K> {
    /// The store it writes, to read.
    pub fn as_reader(&self) -> Store<K> {
        self.store.clone()
    }

    /// Applies one watch event: an object applied or deleted, or a step of a re-list (whose objects replace all at
    /// its end, when the store also becomes ready). The event's object is kept as it comes, not copied; for an
    /// applied object it is handed back as kept, for a deleted one as its last state.
    pub fn apply(&mut self, event: watcher::Event<K>) -> Option<Arc<K>> {
        match event {
            watcher::Event::Apply(obj) => {
                let obj = Arc::new(obj);
                self.store.write().put(obj.clone());
                return Some(obj);
            }
            watcher::Event::Delete(obj) => {
                let (ns, name) = namespace_and_name(&obj);
                self.store.write().take(ns, name);
                return Some(Arc::new(obj));
            }
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(obj) => self.relist.get_or_insert_default().push(Arc::new(obj)),
            watcher::Event::InitDone => {
                // Built aside and swapped in, so readers wait for the swap alone, not for the whole list to be put
                // (and the old objects are dropped after the lock is released).
                let mut fresh = self.store.read().empty_like();
                for obj in self.relist.take().unwrap_or_default() {
                    fresh.put(obj);
                }
                let old = std::mem::replace(&mut *self.store.write(), fresh);
                drop(old);
                self.ready.send_replace(true);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::runtime::watcher::Event;

    fn pod(ns: &str, name: &str, owner: Option<(&str, bool)>) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.metadata.owner_references = owner.map(|(uid, controller)| {
            vec![OwnerReference { uid: uid.into(), controller: Some(controller), ..Default::default() }]
        });
        p
    }

    fn names(mut pods: Vec<Arc<Pod>>) -> Vec<String> {
        pods.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
        pods.iter().map(|p| p.metadata.name.clone().unwrap_or_default()).collect()
    }

    fn listed(pods: Vec<Pod>) -> Writer<Pod> {
        let mut w = Writer::default();
        w.apply(Event::Init);
        for p in pods {
            w.apply(Event::InitApply(p));
        }
        w.apply(Event::InitDone);
        w
    }

    #[test]
    fn each_pod_is_found_by_namespace_and_name_and_a_change_replaces_it() {
        let mut w = listed(vec![pod("d", "a", None), pod("e", "a", None), pod("d", "b", None)]);
        let store = w.as_reader();
        // (event, what `get("d", "a")` then holds as its owner's uid, pods in all)
        let table: Vec<(&str, Event<Pod>, Option<&str>, usize)> = vec![
            ("a new version replaces the old", Event::Apply(pod("d", "a", Some(("rs1", true)))), Some("rs1"), 3),
            ("a new pod is added", Event::Apply(pod("d", "c", None)), Some("rs1"), 4),
            ("the same name in another namespace is another pod", Event::Delete(pod("e", "a", None)), Some("rs1"), 3),
            ("deleted", Event::Delete(pod("d", "a", None)), None, 2),
            ("deleting what is gone changes nothing", Event::Delete(pod("d", "a", None)), None, 2),
        ];
        for (what, event, owner, len) in table {
            w.apply(event);
            let got = store.get("d", "a").map(|p| p.metadata.owner_references.clone().unwrap_or_default());
            let got_owner = got.as_ref().map(|o| o.first().map(|r| r.uid.as_str()).unwrap_or_default());
            assert_eq!((got_owner, store.len()), (owner, len), "{what}");
        }
        assert!(store.get("e", "a").is_none());
        assert_eq!(names(store.in_namespace("d")), ["b", "c"]);
    }

    #[test]
    fn a_controller_reads_its_own_and_the_orphans_of_its_namespace() {
        let mut w = listed(vec![
            pod("d", "mine", Some(("rs1", true))),
            pod("d", "other", Some(("rs2", true))),
            pod("d", "orphan", None),
            pod("d", "owned-not-controlled", Some(("rs1", false))),
            pod("e", "mine-elsewhere", Some(("rs1", true))),
            pod("e", "orphan-elsewhere", None),
        ]);
        let store = w.as_reader();
        assert_eq!(names(store.controlled_or_orphaned("rs1", "d")), ["mine", "orphan", "owned-not-controlled"]);
        assert_eq!(names(store.controlled_or_orphaned("rs2", "d")), ["orphan", "other", "owned-not-controlled"]);
        // adopted: it moves to its controller's group; released: back to the orphans; deleted: gone
        w.apply(Event::Apply(pod("d", "orphan", Some(("rs2", true)))));
        assert_eq!(names(store.controlled_or_orphaned("rs1", "d")), ["mine", "owned-not-controlled"]);
        w.apply(Event::Apply(pod("d", "mine", None)));
        w.apply(Event::Delete(pod("d", "other", None)));
        assert_eq!(names(store.controlled_or_orphaned("rs2", "d")), ["mine", "orphan", "owned-not-controlled"]);
        assert_eq!(names(store.controlled_or_orphaned("", "e")), ["orphan-elsewhere"]);
        // a re-list replaces everything, groups included
        w.apply(Event::Init);
        w.apply(Event::InitApply(pod("d", "new", Some(("rs1", true)))));
        assert_eq!(store.len(), 5, "the old objects stay until the re-list is done");
        w.apply(Event::InitDone);
        assert_eq!(names(store.controlled_or_orphaned("rs1", "d")), ["new"]);
        assert!(store.controlled_or_orphaned("rs2", "d").is_empty());
        assert_eq!(names(store.state()), ["new"]);
        let groups = store.read().groups.keys().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(groups, ["rs1"], "emptied groups are dropped");
    }

    #[test]
    fn thousands_of_pods_are_found_through_the_tables_growth_and_shrinking() {
        let owner = |i: usize| format!("rs{}", i % 7);
        let mut w = Writer::default();
        let store = w.as_reader();
        for i in 0..3000 {
            w.apply(Event::Apply(pod(&format!("n{}", i % 3), &format!("p{i}"), Some((owner(i).as_str(), true)))));
        }
        for i in (0..3000).step_by(2) {
            w.apply(Event::Delete(pod(&format!("n{}", i % 3), &format!("p{i}"), None)));
        }
        // the odd ones change controller: each group still holds exactly its own
        for i in (1..3000).step_by(2) {
            w.apply(Event::Apply(pod(&format!("n{}", i % 3), &format!("p{i}"), Some(("new", true)))));
        }
        assert_eq!(store.len(), 1500);
        for i in 0..3000 {
            let got = store.get(&format!("n{}", i % 3), &format!("p{i}"));
            assert_eq!(got.is_some(), i % 2 == 1, "p{i}");
        }
        let in_groups: usize = store.read().groups.values().map(HashTable::len).sum();
        assert_eq!(in_groups, 1500);
        assert_eq!(store.controlled_or_orphaned("new", "n0").len(), 500);
        assert!(store.controlled_or_orphaned("rs0", "n0").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn it_is_ready_once_the_first_list_is_in() {
        let mut w = Writer::<Pod>::default();
        let store = w.as_reader();
        w.apply(Event::Init);
        w.apply(Event::InitApply(pod("d", "a", None)));
        let wait = tokio::time::timeout(std::time::Duration::from_secs(60), store.wait_until_ready());
        assert!(wait.await.is_err(), "not ready during the first list");
        w.apply(Event::InitDone);
        let wait = tokio::time::timeout(std::time::Duration::from_secs(60), store.wait_until_ready());
        assert!(wait.await.is_ok(), "ready after it");
        assert_eq!(store.len(), 1);
        // a store whose writer is gone before its first list does not hold its readers forever
        let unlisted = Writer::<Pod>::default();
        let store = unlisted.as_reader();
        drop(unlisted);
        let wait = tokio::time::timeout(std::time::Duration::from_secs(60), store.wait_until_ready());
        assert!(wait.await.is_ok(), "not waiting for a writer that is gone");
    }
}

//! An informer's objects grouped by the uid of their controller (the ownerReference with `controller: true`), kept
//! with the store, so a controller reads the pods it owns and the orphans it may adopt without going over every pod
//! of the namespace on every pass (the ReplicaSet controller did: 10,000 pods for each of 100 ReplicaSets).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::util::{Cached, Meta, controller_of};

/// The groups; cheap to clone (one shared map).
pub struct ByController<K: Cached>(Arc<RwLock<Groups<K>>>);

impl<K: Cached> Clone for ByController<K> {
    fn clone(&self) -> Self {
        ByController(self.0.clone())
    }
}

impl<K: Cached> Default for ByController<K> {
    fn default() -> Self {
        ByController(Arc::new(RwLock::new(Groups { by_uid: HashMap::new(), uid_of: HashMap::new() })))
    }
}

/// The groups, kept small because they hold an entry per pod of the cluster: an object is known by one shared
/// `namespace/name` string and a group by one shared uid, where `kube`'s `ObjectRef` (four strings of its own, twice
/// per object) and a uid per object cost 0.8 KB per pod at 10k pods in `scripts/bench-scale`.
struct Groups<K: Cached> {
    /// Objects by their controller's uid (`""`: no controller), each by its key.
    by_uid: HashMap<Arc<str>, HashMap<Arc<str>, Arc<K>>>,
    /// Each object's group, by the object's key (the same string as in its group).
    uid_of: HashMap<Arc<str>, Arc<str>>,
}

/// An object's key in the groups: `namespace/name` (a namespace and a name hold no `/`).
fn key_of<M: Meta>(meta: &M) -> String {
    format!("{}/{}", meta.namespace().unwrap_or_default(), meta.name().unwrap_or_default())
}

impl<K: Cached> Groups<K> {
    /// Takes the object with `key` out of its group; its key, shared with the group, if it was in one.
    fn remove(&mut self, key: &str) -> Option<Arc<str>> {
        let (key, uid) = self.uid_of.remove_entry(key)?;
        if let Some(group) = self.by_uid.get_mut(&uid) {
            group.remove(&key);
            if group.is_empty() {
                self.by_uid.remove(&uid);
            }
        }
        Some(key)
    }

    fn apply(&mut self, obj: Arc<K>) {
        let key = key_of(obj.cached_meta());
        let key = self.remove(&key).unwrap_or_else(|| key.into());
        let uid = controller_of(obj.cached_meta()).map(|c| c.uid.as_str()).unwrap_or_default();
        let uid = match self.by_uid.get_key_value(uid) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(uid),
        };
        self.uid_of.insert(key.clone(), uid.clone());
        self.by_uid.entry(uid).or_default().insert(key, obj);
    }
}

impl<K: Cached> ByController<K> {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Groups<K>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an object's new state.
    pub fn apply(&self, obj: Arc<K>) {
        self.write().apply(obj);
    }

    /// Forgets a deleted object.
    pub fn remove(&self, obj: &K) {
        self.write().remove(&key_of(obj.cached_meta()));
    }

    /// Replaces every group with these objects' (after a re-list).
    pub fn reset(&self, objs: impl IntoIterator<Item = Arc<K>>) {
        let mut groups = self.write();
        groups.by_uid.clear();
        groups.uid_of.clear();
        for obj in objs {
            groups.apply(obj);
        }
    }

    /// The objects of namespace `ns` that the object with `uid` controls, and those no object controls (which it
    /// may adopt): every object of the namespace a controller's plan does not skip as another controller's.
    pub fn controlled_or_orphaned(&self, uid: &str, ns: &str) -> Vec<Arc<K>> {
        let groups = self.0.read().unwrap_or_else(|p| p.into_inner());
        let in_ns = |o: &&Arc<K>| o.cached_meta().namespace() == Some(ns);
        let group = |u: &str| groups.by_uid.get(u).into_iter().flat_map(|g| g.values());
        let mut out: Vec<Arc<K>> = group(uid).filter(in_ns).cloned().collect();
        if !uid.is_empty() {
            out.extend(group("").filter(in_ns).cloned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(ns: &str, name: &str, owner: Option<(&str, bool)>) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.metadata.owner_references = owner.map(|(uid, controller)| {
            vec![OwnerReference { uid: uid.into(), controller: Some(controller), ..Default::default() }]
        });
        Arc::new(p)
    }

    fn names(mut pods: Vec<Arc<Pod>>) -> Vec<String> {
        pods.sort_by_key(|p| p.metadata.name.clone());
        pods.iter().map(|p| p.metadata.name.clone().unwrap_or_default()).collect()
    }

    #[test]
    fn a_controller_reads_its_own_and_the_orphans_of_its_namespace() {
        let index = ByController::default();
        index.reset([
            pod("d", "mine", Some(("rs1", true))),
            pod("d", "other", Some(("rs2", true))),
            pod("d", "orphan", None),
            pod("d", "owned-not-controlled", Some(("rs1", false))),
            pod("e", "mine-elsewhere", Some(("rs1", true))),
            pod("e", "orphan-elsewhere", None),
        ]);
        assert_eq!(names(index.controlled_or_orphaned("rs1", "d")), ["mine", "orphan", "owned-not-controlled"]);
        assert_eq!(names(index.controlled_or_orphaned("rs2", "d")), ["orphan", "other", "owned-not-controlled"]);
        // adopted: it moves to its controller's group; released: back to the orphans; deleted: gone
        index.apply(pod("d", "orphan", Some(("rs2", true))));
        assert_eq!(names(index.controlled_or_orphaned("rs1", "d")), ["mine", "owned-not-controlled"]);
        index.apply(pod("d", "mine", None));
        index.remove(&pod("d", "other", None));
        assert_eq!(names(index.controlled_or_orphaned("rs2", "d")), ["mine", "orphan", "owned-not-controlled"]);
        // a re-list replaces everything
        index.reset([pod("d", "new", Some(("rs1", true)))]);
        assert_eq!(names(index.controlled_or_orphaned("rs1", "d")), ["new"]);
        assert!(index.controlled_or_orphaned("rs2", "d").is_empty());
    }

    #[test]
    fn the_members_of_a_group_share_its_uid_and_each_member_one_key() {
        let index = ByController::default();
        index.reset([pod("d", "a", Some(("rs1", true))), pod("d", "b", Some(("rs1", true))), pod("e", "a", None)]);
        index.apply(pod("d", "a", Some(("rs1", true)))); // a new version
        let groups = index.0.read().expect("lock");
        assert_eq!(groups.uid_of.len(), 3, "one entry per object: {:?}", groups.uid_of.keys().collect::<Vec<_>>());
        let (a, b) = (&groups.uid_of["d/a"], &groups.uid_of["d/b"]);
        assert!(Arc::ptr_eq(a, b), "one uid for the group");
        let (in_group, _) = groups.by_uid[a.as_ref()].get_key_value("d/a").expect("in its group");
        let (own, _) = groups.uid_of.get_key_value("d/a").expect("known");
        assert!(Arc::ptr_eq(in_group, own), "one key for the object");
        assert_eq!(groups.by_uid[""].len(), 1, "the orphan of another namespace keeps its own key");
    }
}

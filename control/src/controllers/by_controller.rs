//! An informer's objects grouped by the uid of their controller (the ownerReference with `controller: true`), kept
//! with the store, so a controller reads the pods it owns and the orphans it may adopt without going over every pod
//! of the namespace on every pass (the ReplicaSet controller did: 10,000 pods for each of 100 ReplicaSets).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::runtime::reflector::ObjectRef;

use super::util::controller_of;

/// The groups; cheap to clone (one shared map).
pub struct ByController<K: kube::Resource<DynamicType = ()>>(Arc<RwLock<Groups<K>>>);

impl<K: kube::Resource<DynamicType = ()>> Clone for ByController<K> {
    fn clone(&self) -> Self {
        ByController(self.0.clone())
    }
}

impl<K: kube::Resource<DynamicType = ()>> Default for ByController<K> {
    fn default() -> Self {
        ByController(Arc::new(RwLock::new(Groups { by_uid: HashMap::new(), uid_of: HashMap::new() })))
    }
}

struct Groups<K: kube::Resource<DynamicType = ()>> {
    /// Objects by their controller's uid (`""`: no controller).
    by_uid: HashMap<String, HashMap<ObjectRef<K>, Arc<K>>>,
    /// Each object's group.
    uid_of: HashMap<ObjectRef<K>, String>,
}

impl<K: kube::Resource<DynamicType = ()>> Groups<K> {
    fn remove(&mut self, r: &ObjectRef<K>) {
        let Some(uid) = self.uid_of.remove(r) else { return };
        if let Some(group) = self.by_uid.get_mut(&uid) {
            group.remove(r);
            if group.is_empty() {
                self.by_uid.remove(&uid);
            }
        }
    }

    fn apply(&mut self, obj: Arc<K>) {
        let r = ObjectRef::from_obj(obj.as_ref());
        self.remove(&r);
        let uid = controller_of(obj.meta()).map(|c| c.uid.clone()).unwrap_or_default();
        self.uid_of.insert(r.clone(), uid.clone());
        self.by_uid.entry(uid).or_default().insert(r, obj);
    }
}

impl<K: kube::Resource<DynamicType = ()>> ByController<K> {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Groups<K>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an object's new state.
    pub fn apply(&self, obj: Arc<K>) {
        self.write().apply(obj);
    }

    /// Forgets a deleted object.
    pub fn remove(&self, obj: &K) {
        self.write().remove(&ObjectRef::from_obj(obj));
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
        let in_ns = |o: &&Arc<K>| o.meta().namespace.as_deref() == Some(ns);
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
}

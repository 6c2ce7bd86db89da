//! A cached pod's metadata: the fields of `ObjectMeta` a controller reads, under the same names, with the two that
//! take most room held once for the pods that have them alike.
//!
//! The typed `ObjectMeta` took 1.2 KB of the 2.0 KB a cached pod held (`cargo bench -p skiff-control --bench
//! pod_memory`): 360 bytes of inline fields, most always empty for a pod (`generation`, `selfLink`,
//! `managedFields`, …), and its labels a `BTreeMap`, which allocates a node of half a kilobyte for two labels. Here
//! the labels are a sorted list and the owner references a list, each shared through a [`Table`] by the pods that
//! have the same (a ReplicaSet's pods all do), so a pod holds a pointer to each.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::ops::Deref;
use std::sync::{Arc, LazyLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use skiff_api::selector::Selector;

use super::shared::{Shareable, Table, hash_str, word};

/// What the controllers read of a pod's metadata (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodMeta {
    /// The pod's name.
    pub name: Option<String>,
    /// Its namespace (shared by the pods in it: [`word`]).
    pub namespace: Option<Arc<str>>,
    /// Its uid (set once: 16 bytes inline where a `String` takes 24).
    pub uid: Option<Box<str>>,
    /// The resource version it was read at.
    pub resource_version: Option<Box<str>>,
    /// Its labels.
    pub labels: Option<Labels>,
    /// Its annotations (a Job's completion index).
    pub annotations: Option<Box<BTreeMap<String, String>>>,
    /// Its owners.
    pub owner_references: Option<Owners>,
    /// When it was made.
    pub creation_timestamp: Option<Time>,
    /// When it was asked to go, if it was.
    pub deletion_timestamp: Option<Time>,
    /// What must happen before it goes (a Job's tracking finalizer).
    pub finalizers: Option<Box<[String]>>,
}

impl PodMeta {
    /// Whether its labels satisfy `selector`.
    pub fn selected_by(&self, selector: &Selector) -> bool {
        selector.matches_by(|key| self.labels.as_ref()?.get(key))
    }
}

impl From<ObjectMeta> for PodMeta {
    fn from(m: ObjectMeta) -> Self {
        PodMeta {
            name: m.name,
            namespace: m.namespace.as_deref().map(word),
            uid: m.uid.map(String::into_boxed_str),
            resource_version: m.resource_version.map(String::into_boxed_str),
            labels: m.labels.map(Labels::from),
            annotations: m.annotations.map(Box::new),
            owner_references: m.owner_references.map(Owners::from),
            creation_timestamp: m.creation_timestamp,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers.map(Vec::into_boxed_slice),
        }
    }
}

/// Labels: pairs sorted by key, shared by the pods that have the same.
#[derive(Clone, Debug, PartialEq)]
pub struct Labels(Arc<[(Box<str>, Box<str>)]>);

static LABELS: LazyLock<Table<[(Box<str>, Box<str>)]>> = LazyLock::new(Table::default);

impl Labels {
    /// The value of the label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().map(|i| &*self.0[i].1)
    }

    /// Whether the label `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Each label, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The labels as a map (what label selectors read).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }
}

impl Shareable for [(Box<str>, Box<str>)] {
    fn hash_into(&self, h: &mut dyn Hasher) {
        for (k, v) in self {
            hash_str(h, k);
            hash_str(h, v);
        }
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        let pairs: Vec<(Box<str>, Box<str>)> =
            map.into_iter().map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str())).collect();
        Labels(LABELS.share(&pairs, || pairs.clone().into()))
    }
}

/// Owner references, shared by the pods that have the same.
#[derive(Clone, Debug, PartialEq)]
pub struct Owners(Arc<[OwnerReference]>);

static OWNERS: LazyLock<Table<[OwnerReference]>> = LazyLock::new(Table::default);

impl Shareable for [OwnerReference] {
    fn hash_into(&self, h: &mut dyn Hasher) {
        for o in self {
            for s in [&o.uid, &o.name, &o.kind, &o.api_version] {
                hash_str(h, s);
            }
            for flag in [o.controller, o.block_owner_deletion] {
                h.write_u8(flag.map_or(2, u8::from));
            }
        }
    }
}

impl From<Vec<OwnerReference>> for Owners {
    fn from(list: Vec<OwnerReference>) -> Self {
        Owners(OWNERS.share(&list, || list.clone().into()))
    }
}

impl Deref for Owners {
    type Target = [OwnerReference];

    fn deref(&self) -> &[OwnerReference] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, labels: &[(&str, &str)], owner: &str) -> PodMeta {
        PodMeta::from(ObjectMeta {
            name: Some(name.into()),
            namespace: Some("d".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: owner.into(),
                uid: format!("uid-{owner}"),
                controller: Some(true),
                ..Default::default()
            }]),
            generate_name: Some(format!("{owner}-")),
            ..Default::default()
        })
    }

    #[test]
    fn labels_are_read_by_key_in_any_order() {
        let m = meta("a", &[("pod-template-hash", "7d9f"), ("app", "web"), ("tier", "front")], "rs");
        let l = m.labels.expect("labels");
        assert_eq!(
            (l.get("app"), l.get("pod-template-hash"), l.get("tier")),
            (Some("web"), Some("7d9f"), Some("front"))
        );
        assert_eq!(l.get("missing"), None);
        assert!(l.contains_key("tier") && !l.contains_key("ap"));
        assert_eq!(l.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["app", "pod-template-hash", "tier"]);
        assert_eq!(l.to_map().get("app").map(String::as_str), Some("web"));
    }

    #[test]
    fn pods_with_the_same_labels_or_owners_share_one_copy() {
        let a = meta("a", &[("app", "web")], "rs-1");
        let b = meta("b", &[("app", "web")], "rs-1");
        let c = meta("c", &[("app", "db")], "rs-2");
        let (la, lb, lc) = (a.labels.expect("a"), b.labels.expect("b"), c.labels.expect("c"));
        assert!(Arc::ptr_eq(&la.0, &lb.0) && !Arc::ptr_eq(&la.0, &lc.0));
        let (oa, ob, oc) =
            (a.owner_references.expect("a"), b.owner_references.expect("b"), c.owner_references.expect("c"));
        assert!(Arc::ptr_eq(&oa.0, &ob.0) && !Arc::ptr_eq(&oa.0, &oc.0));
        assert_eq!((oa[0].name.as_str(), oc[0].uid.as_str()), ("rs-1", "uid-rs-2"));
    }
}

//! The scheduler's view of the cluster, kept up to date one pod change at a time (as kube-scheduler's cache is):
//! what each node has committed (bound pods, and pods this scheduler bound that the informer has not shown bound yet,
//! "assumed"), and which pods wait for a node.
//!
//! Pure: the loop in `mod.rs` hands it the pod cache's current state of every key that changed, so a pass costs what
//! changed, not the number of pods in the cluster (a full recount of 10,000 pods on every pass was most of the
//! scheduler's time at scale).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use super::filter::{NodeUsage, add, remove, request_of};
use super::pending;
use crate::controllers::cached_pod::CachedPod;
use crate::controllers::util::is_terminal;

/// A pod whose request is counted on a node: the pod as it was counted (the same `Arc` the pod cache holds, so it
/// costs a pointer per pod, not a copy of the node's name, the owner's uid and the request), and the node when the
/// pod is only assumed there. Its request is read again from the pod when it is taken off (`request_of` is a pure
/// function of the pod, so it takes off exactly what was added).
#[derive(Debug, Clone)]
struct Placed {
    pod: Arc<CachedPod>,
    assumed_on: Option<Box<str>>,
}

impl Placed {
    fn node(&self) -> &str {
        self.assumed_on.as_deref().or_else(|| bound_node(&self.pod)).unwrap_or_default()
    }
}

/// Node usage and the pods waiting for a node.
#[derive(Debug, Default)]
pub struct Cache {
    /// The counted pods, found by a hash of their key, which each pod holds (as its namespace and name): the table
    /// keeps no key of its own.
    placed: HashTable<Placed>,
    hasher: RandomState,
    usage: HashMap<String, NodeUsage>,
    waiting: HashMap<String, Arc<CachedPod>>,
    /// pod key -> uid of the pod bound by us, not yet seen bound
    assumed: HashMap<String, Option<Box<str>>>,
    freed: bool,
}

fn hash_of(hasher: &RandomState, p: &CachedPod) -> u64 {
    let m = &p.metadata;
    hasher.hash_one((m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default()))
}

/// The key of a pod in the cache (`namespace/name`).
pub fn key(p: &CachedPod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

fn bound_node(p: &CachedPod) -> Option<&str> {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

impl Cache {
    /// Takes in the current state of the pod at `key` (`None`: it is gone).
    pub fn update(&mut self, key: &str, pod: Option<&Arc<CachedPod>>) {
        if let Some(uid) = self.assumed.get(key) {
            if pod.is_some_and(|p| pending(p) && p.metadata.uid == *uid) {
                // bound by us a moment ago; the informer has not caught up
                return;
            }
            // seen bound, gone, or another pod made under the same name
            self.assumed.remove(key);
        }
        let old = self.take_placed(key);
        if let Some(old) = &old {
            self.uncount(old);
        }
        self.waiting.remove(key);
        let now = pod.and_then(|p| bound_node(p).filter(|_| !is_terminal(p)).map(|node| (p, node)));
        // Capacity is freed only when a pod leaves its node or finishes, not on every change of a bound pod.
        if old.as_ref().is_some_and(|o| now.is_none_or(|(_, node)| node != o.node())) {
            self.freed = true;
        }
        if let Some((p, _)) = now {
            // a bound pod holds its resources until it finishes, terminating or not
            self.count(key, Placed { pod: p.clone(), assumed_on: None });
        } else if let Some(p) = pod.filter(|p| pending(p)) {
            self.waiting.insert(key.to_string(), p.clone());
        }
    }

    /// Counts `pod` on `node` before the API has it bound (its binding is on the way).
    pub fn assume(&mut self, key: &str, pod: &Arc<CachedPod>, node: &str) {
        self.waiting.remove(key);
        if let Some(old) = self.take_placed(key) {
            self.uncount(&old);
        }
        self.count(key, Placed { pod: pod.clone(), assumed_on: Some(node.into()) });
        self.assumed.insert(key.to_string(), pod.metadata.uid.clone());
    }

    /// The binding of an assumed pod failed: forget the assumption and take the pod's current state again.
    pub fn forget(&mut self, key: &str, pod: Option<&Arc<CachedPod>>) {
        self.assumed.remove(key);
        self.update(key, pod);
    }

    /// Counts a pod on its node; `key` is the pod's own (it is found again by it).
    fn count(&mut self, key: &str, placed: Placed) {
        debug_assert_eq!(key, self::key(&placed.pod), "a pod counted under another pod's key");
        let (node, request) = (placed.node(), request_of(&placed.pod));
        match self.usage.get_mut(node) {
            Some(usage) => add(usage, &request),
            None => add(self.usage.entry(node.to_string()).or_default(), &request),
        }
        let hasher = &self.hasher;
        self.placed.insert_unique(hash_of(hasher, &placed.pod), placed, |p| hash_of(hasher, &p.pod));
    }

    fn hash(&self, key: &str) -> u64 {
        let (ns, name) = key.split_once('/').unwrap_or_default();
        self.hasher.hash_one((ns, name))
    }

    fn take_placed(&mut self, key: &str) -> Option<Placed> {
        let hash = self.hash(key);
        let (ns, name) = key.split_once('/').unwrap_or_default();
        let is = |p: &Placed| {
            p.pod.metadata.namespace.as_deref().unwrap_or_default() == ns
                && p.pod.metadata.name.as_deref().unwrap_or_default() == name
        };
        Some(self.placed.find_entry(hash, is).ok()?.remove().0)
    }

    fn uncount(&mut self, old: &Placed) {
        let node = old.node();
        if let Some(u) = self.usage.get_mut(node) {
            remove(u, &request_of(&old.pod));
            if u.pods <= 0 {
                self.usage.remove(node);
            }
        }
    }

    /// Whether resources were freed since the last call (pods that did not fit may fit now).
    pub fn take_freed(&mut self) -> bool {
        std::mem::take(&mut self.freed)
    }

    /// What is committed on each node.
    pub fn usage(&self) -> &HashMap<String, NodeUsage> {
        &self.usage
    }

    /// The pod waiting for a node under `key`.
    pub fn waiting_pod(&self, key: &str) -> Option<&Arc<CachedPod>> {
        self.waiting.get(key)
    }

    /// Takes in the whole pod cache: every pod as it is now, and every key it no longer has as gone.
    pub fn resync(&mut self, pods: &[Arc<CachedPod>]) {
        let now: HashMap<String, &Arc<CachedPod>> = pods.iter().map(|p| (key(p), p)).collect();
        let gone: Vec<String> = self
            .placed
            .iter()
            .map(|p| key(&p.pod))
            .chain(self.waiting.keys().cloned())
            .filter(|k| !now.contains_key(k))
            .collect();
        for k in gone {
            self.forget(&k, None);
        }
        for (k, p) in now {
            self.update(&k, Some(p));
        }
    }

    /// The pods waiting for a node, highest priority first, then oldest first.
    pub fn waiting(&self) -> Vec<Arc<CachedPod>> {
        self.waiting_where(|_| true)
    }

    /// [`Self::waiting`], only the pods whose key `keep` accepts (chosen before sorting: pods that did not fit wait
    /// out most passes).
    pub fn waiting_where(&self, keep: impl Fn(&str) -> bool) -> Vec<Arc<CachedPod>> {
        let mut v: Vec<(&String, &Arc<CachedPod>)> = self.waiting.iter().filter(|(k, _)| keep(k)).collect();
        v.sort_by_key(|(k, p)| {
            (
                std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                *k,
            )
        });
        v.into_iter().map(|(_, p)| p.clone()).collect()
    }

    /// Whether a pod is counted on a node without the API having it bound yet.
    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, phase: &str, deleting: bool) -> Arc<CachedPod> {
        let mut v = json!({"metadata": {"name": name, "namespace": "d", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "o", "controller": true}]},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}, "status": {"phase": phase}});
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
        }
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(v).expect("pod"))
    }

    fn cpu(c: &Cache, node: &str) -> i64 {
        c.usage().get(node).map(|u| u.cpu_milli).unwrap_or(0)
    }

    #[test]
    fn each_change_moves_a_pods_request_where_it_now_counts() {
        // (change, cpu on n1, cpu on n2, waiting pods)
        let table: Vec<(&str, Option<Arc<CachedPod>>, i64, i64, usize)> = vec![
            ("created unbound: waits", Some(pod("a", None, "Pending", false)), 0, 0, 1),
            ("bound to n1", Some(pod("a", Some("n1"), "Pending", false)), 100, 0, 0),
            ("running", Some(pod("a", Some("n1"), "Running", false)), 100, 0, 0),
            ("terminating: still holds", Some(pod("a", Some("n1"), "Running", true)), 100, 0, 0),
            ("finished: frees", Some(pod("a", Some("n1"), "Succeeded", true)), 0, 0, 0),
            ("recreated on n2", Some(pod("a", Some("n2"), "Running", false)), 0, 100, 0),
            ("deleted", None, 0, 0, 0),
            ("unbound and deleting: does not wait", Some(pod("a", None, "Pending", true)), 0, 0, 0),
        ];
        let mut c = Cache::default();
        for (what, p, n1, n2, waiting) in table {
            c.update("d/a", p.as_ref());
            assert_eq!((cpu(&c, "n1"), cpu(&c, "n2"), c.waiting().len()), (n1, n2, waiting), "{what}");
        }
    }

    #[test]
    fn an_assumed_pod_counts_until_the_informer_shows_it_bound_or_the_binding_fails() {
        let mut c = Cache::default();
        let p = pod("a", None, "Pending", false);
        c.update("d/a", Some(&p));
        c.assume("d/a", &p, "n1");
        assert_eq!((cpu(&c, "n1"), c.waiting().len()), (100, 0));
        // a late copy of the unbound pod does not undo the assumption
        c.update("d/a", Some(&p));
        assert_eq!((cpu(&c, "n1"), c.waiting().len(), c.is_assumed("d/a")), (100, 0, true));
        // seen bound: counted once, no longer assumed
        c.update("d/a", Some(&pod("a", Some("n1"), "Pending", false)));
        assert_eq!((cpu(&c, "n1"), c.is_assumed("d/a")), (100, false));

        let b = pod("b", None, "Pending", false);
        c.update("d/b", Some(&b));
        c.assume("d/b", &b, "n2");
        c.take_freed();
        c.forget("d/b", Some(&b));
        assert_eq!((cpu(&c, "n2"), c.waiting().len(), c.take_freed()), (0, 1, true), "waits again");
    }

    #[test]
    fn a_pod_made_again_under_an_assumed_name_waits_and_frees_the_assumption() {
        let with_uid = |p: Arc<CachedPod>, uid: &str| {
            let mut p = (*p).clone();
            p.metadata.uid = Some(uid.into());
            Arc::new(p)
        };
        let mut c = Cache::default();
        let first = with_uid(pod("a", None, "Pending", false), "u1");
        c.update("d/a", Some(&first));
        c.assume("d/a", &first, "n1");
        c.take_freed();
        // deleted and made again between two passes: the cache sees only the new pod, unbound
        let again = with_uid(pod("a", None, "Pending", false), "u2");
        c.update("d/a", Some(&again));
        assert_eq!((cpu(&c, "n1"), c.waiting().len(), c.is_assumed("d/a"), c.take_freed()), (0, 1, false, true));
    }

    #[test]
    fn only_a_pod_leaving_its_node_or_finishing_frees_capacity() {
        let mut c = Cache::default();
        // (change, freed)
        let table = [
            ("bound", Some(pod("a", Some("n1"), "Pending", false)), false),
            ("running: a status change", Some(pod("a", Some("n1"), "Running", false)), false),
            ("terminating: still holds", Some(pod("a", Some("n1"), "Running", true)), false),
            ("finished", Some(pod("a", Some("n1"), "Succeeded", true)), true),
            ("made again on n2", Some(pod("a", Some("n2"), "Running", false)), false),
            ("deleted", None, true),
        ];
        for (what, p, freed) in table {
            c.update("d/a", p.as_ref());
            assert_eq!(c.take_freed(), freed, "{what}");
        }
    }

    #[test]
    fn an_assumed_pod_seen_bound_to_another_node_moves_there() {
        let mut c = Cache::default();
        let p = pod("a", None, "Pending", false);
        c.update("d/a", Some(&p));
        c.assume("d/a", &p, "n1");
        // another scheduler (or a retried binding) won: the pod is bound to n2
        c.update("d/a", Some(&pod("a", Some("n2"), "Pending", false)));
        assert_eq!((cpu(&c, "n1"), cpu(&c, "n2"), c.is_assumed("d/a"), c.take_freed()), (0, 100, false, true));
        // a resync while a pod is assumed keeps the assumption (the informer has not shown it bound yet)
        let b = pod("b", None, "Pending", false);
        c.update("d/b", Some(&b));
        c.assume("d/b", &b, "n1");
        c.resync(&[pod("a", Some("n2"), "Running", false), b.clone()]);
        assert_eq!((cpu(&c, "n1"), cpu(&c, "n2"), c.is_assumed("d/b"), c.waiting().len()), (100, 100, true, 0));
    }

    #[test]
    fn hundreds_of_pods_are_counted_and_taken_off_through_the_tables_growth() {
        let mut c = Cache::default();
        let pods: Vec<Arc<CachedPod>> = (0..600).map(|i| pod(&format!("p{i}"), Some("n1"), "Running", false)).collect();
        for p in &pods {
            c.update(&key(p), Some(p));
        }
        assert_eq!(cpu(&c, "n1"), 600 * 100);
        for p in pods.iter().step_by(2) {
            c.update(&key(p), None);
        }
        assert_eq!(cpu(&c, "n1"), 300 * 100);
        c.resync(&[]);
        assert!(c.usage().is_empty(), "every pod taken off: {:?}", c.usage());
    }

    #[test]
    fn a_resync_forgets_the_pods_gone_and_takes_in_the_rest_as_they_are() {
        let mut c = Cache::default();
        for (k, p) in [
            ("d/a", pod("a", Some("n1"), "Running", false)),
            ("d/b", pod("b", Some("n1"), "Running", false)),
            ("d/w", pod("w", None, "Pending", false)),
        ] {
            c.update(k, Some(&p));
        }
        let gone_waiting = pod("x", None, "Pending", false);
        c.update("d/x", Some(&gone_waiting));
        assert_eq!((cpu(&c, "n1"), c.waiting().len()), (200, 2));
        // b and x were deleted while the changes were missed; a moved on (finished); c is new on n2
        c.resync(&[
            pod("a", Some("n1"), "Succeeded", false),
            pod("w", None, "Pending", false),
            pod("c", Some("n2"), "Running", false),
        ]);
        assert_eq!((cpu(&c, "n1"), cpu(&c, "n2"), c.waiting().len()), (0, 100, 1));
        assert_eq!(c.usage().len(), 1, "a node with no pods left is dropped");
    }

    #[test]
    fn waiting_pods_come_by_priority_then_age() {
        let mk = |name: &str, prio: i32, created: &str| {
            let mut p = (*pod(name, None, "Pending", false)).clone();
            p.spec.as_mut().expect("spec").priority = Some(prio);
            p.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created.parse().expect("time")));
            Arc::new(p)
        };
        let mut c = Cache::default();
        for p in [
            mk("old", 0, "2026-01-01T00:00:00Z"),
            mk("new", 0, "2026-01-02T00:00:00Z"),
            mk("vip", 10, "2026-01-03T00:00:00Z"),
        ] {
            c.update(&key(&p), Some(&p));
        }
        let order: Vec<String> = c.waiting().iter().map(|p| p.metadata.name.clone().unwrap_or_default()).collect();
        assert_eq!(order, ["vip", "old", "new"]);
    }
}

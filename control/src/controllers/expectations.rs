//! Expectations: a controller that just created or deleted pods must not act again on a cache that has not seen
//! those changes yet (or it would create duplicates). It records what it expects to see and waits for it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pending creations and deletions per controller (keyed by its uid).
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug)]
struct Pending {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

/// How long an expectation is trusted before the controller acts anyway (a write may have failed silently).
const TIMEOUT: Duration = Duration::from_secs(30);

impl Expectations {
    /// Records that `creates` will appear and `deletes` will disappear (names).
    pub fn expect(
        &self,
        key: &str,
        creates: impl IntoIterator<Item = String>,
        deletes: impl IntoIterator<Item = String>,
    ) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let p = m.entry(key.to_string()).or_insert_with(|| Pending {
            creates: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        });
        p.creates.extend(creates);
        p.deletes.extend(deletes);
        p.since = Instant::now();
    }

    /// Whether everything expected for `key` is observed: every expected name is `present` (creates) or absent or
    /// being deleted (deletes).
    pub fn satisfied(&self, key: &str, present: impl Fn(&str) -> bool, gone: impl Fn(&str) -> bool) -> bool {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = m.get_mut(key) else { return true };
        p.creates.retain(|n| !present(n));
        p.deletes.retain(|n| !gone(n));
        if (p.creates.is_empty() && p.deletes.is_empty()) || p.since.elapsed() > TIMEOUT {
            m.remove(key);
            return true;
        }
        false
    }

    /// [`Self::satisfied`] for pods of namespace `ns` expected by the controller with uid `key`, looked up by key in
    /// the pod cache (a scan of the namespace per expected name cost 500 x 10,000 comparisons a pass at scale).
    pub fn pods_observed(
        &self,
        key: &str,
        pods: &super::pod_store::Store<super::cached_pod::CachedPod>,
        ns: &str,
    ) -> bool {
        let lookup = |n: &str| pods.get(ns, n);
        self.satisfied(
            key,
            |n| lookup(n).is_some(),
            |n| lookup(n).is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        )
    }

    /// Forgets a name that will not appear after all (its creation failed).
    pub fn creation_failed(&self, key: &str, name: &str) {
        if let Some(p) = self.inner.lock().unwrap_or_else(|p| p.into_inner()).get_mut(key) {
            p.creates.remove(name);
        }
    }

    /// Forgets everything about `key` (the controller object is gone).
    pub fn forget(&self, key: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_hold_until_the_cache_shows_the_changes() {
        let e = Expectations::default();
        e.expect("rs", ["p1".to_string(), "p2".to_string()], ["old".to_string()]);
        assert!(!e.satisfied("rs", |n| n == "p1", |_| false));
        assert!(!e.satisfied("rs", |n| n == "p2", |_| false), "p1 was seen before; old is still there");
        assert!(e.satisfied("rs", |_| false, |n| n == "old"));
        assert!(e.satisfied("other", |_| false, |_| false));
    }
}

//! Values that many cached objects hold alike, held once: the pods of one ReplicaSet have the same labels, the same
//! owner reference and (from admission) the same tolerations, and the controllers' informer keeps every pod of the
//! cluster. A [`Table`] hands out one shared copy of each distinct value that is alive.
//!
//! A table holds each value strongly and forgets those only it still holds when it sweeps, which it does when it
//! has grown to twice what was alive at the last sweep (at least [`FIRST_SWEEP`] values): the values it keeps for
//! nobody are at most as many as those in use, and the cost of a sweep is spread over the values added since.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex};

/// The fewest values a table holds before it first sweeps.
pub const FIRST_SWEEP: usize = 256;

/// Shared copies of values of type `T`, found by a hash of the value and compared whole.
pub struct Table<T: ?Sized> {
    inner: Mutex<Inner<T>>,
    // keyed at random per process: the values come from users' objects
    hasher: RandomState,
}

struct Inner<T: ?Sized> {
    by_hash: HashMap<u64, Vec<Arc<T>>>,
    len: usize,
    sweep_at: usize,
}

impl<T: ?Sized + PartialEq> Default for Table<T> {
    fn default() -> Self {
        Table {
            inner: Mutex::new(Inner { by_hash: HashMap::new(), len: 0, sweep_at: FIRST_SWEEP }),
            hasher: RandomState::new(),
        }
    }
}

impl<T: ?Sized + PartialEq> Table<T> {
    /// The shared copy of `value`, made with `make` (and kept) if no copy is alive. `key` is hashed to find it:
    /// values equal to each other must have equal keys.
    pub fn share(&self, key: impl Hash, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let hash = self.hasher.hash_one(key);
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(same) = t.by_hash.get(&hash).and_then(|v| v.iter().find(|s| ***s == *value)) {
            return same.clone();
        }
        if t.len >= t.sweep_at {
            t.sweep();
        }
        let shared = make();
        t.by_hash.entry(hash).or_default().push(shared.clone());
        t.len += 1;
        shared
    }

    /// How many values the table holds (some perhaps for nobody, until its next sweep).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: ?Sized> Inner<T> {
    /// Forgets the values nobody else holds.
    fn sweep(&mut self) {
        self.by_hash.retain(|_, v| {
            v.retain(|s| Arc::strong_count(s) > 1);
            !v.is_empty()
        });
        self.len = self.by_hash.values().map(Vec::len).sum();
        self.sweep_at = FIRST_SWEEP.max(2 * self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(words: &[&str]) -> Arc<[String]> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn share(t: &Table<[String]>, words: &[&str]) -> Arc<[String]> {
        let v = list(words);
        t.share(&*v, &v, || v.clone())
    }

    #[test]
    fn equal_values_share_one_copy_and_different_ones_do_not() {
        let t = Table::default();
        let a = share(&t, &["app", "web"]);
        let b = share(&t, &["app", "web"]);
        let c = share(&t, &["app", "db"]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_value_on_a_colliding_hash_is_still_told_apart() {
        let t: Table<[String]> = Table::default();
        let (a, b) = (list(&["a"]), list(&["b"]));
        let a = t.share(0, &a, || a.clone());
        let b = t.share(0, &b, || b.clone());
        assert_eq!((&*a[0], &*b[0]), ("a", "b"));
        assert!(Arc::ptr_eq(&t.share(0, &list(&["b"]), || unreachable!("b is held")), &b));
    }

    #[test]
    fn values_nobody_holds_are_forgotten_once_the_table_has_doubled() {
        let t = Table::default();
        let kept: Vec<_> = (0..10).map(|i| share(&t, &[&i.to_string()])).collect();
        for i in 10..FIRST_SWEEP {
            drop(share(&t, &[&i.to_string()]));
        }
        assert_eq!(t.len(), FIRST_SWEEP, "nothing swept before the first threshold");
        drop(share(&t, &["one more"]));
        assert_eq!(t.len(), kept.len() + 1, "the sweep kept the values in use, then added the new one");
        // the next sweep waits until the table holds FIRST_SWEEP again (twice the 10 in use is less)
        for i in 0..FIRST_SWEEP - kept.len() - 1 {
            drop(share(&t, &[&format!("x{i}")]));
        }
        assert_eq!(t.len(), FIRST_SWEEP);
        assert!(kept.iter().all(|k| Arc::ptr_eq(k, &t.share(&**k, k, || unreachable!("held")))));
    }
}

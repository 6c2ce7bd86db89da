//! Values that many cached objects hold alike, held once: the pods of one ReplicaSet have the same labels, the same
//! owner reference, the same requests and (from admission) the same tolerations, and the controllers' informer keeps
//! every pod of the cluster. A [`Table`] hands out one shared copy of each distinct value that is alive.
//!
//! A table holds each value strongly, in one slot of a hash table (a pointer), and forgets those only it still holds
//! when it sweeps. It sweeps when a value is added to a table grown to twice what was alive at its last sweep (and
//! to at least [`FIRST_SWEEP`] values), so the cost of a sweep is spread over the values added since, and the values
//! it keeps for nobody are bounded: it holds at most `max(FIRST_SWEEP, 2 × alive at the last sweep)` values until a
//! new one comes (a cluster that shrank keeps up to that many until then).

use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, LazyLock, Mutex};

use hashbrown::HashTable;
use serde::Deserializer;
use serde::de::{self, Visitor};

/// The fewest values a table holds before it first sweeps.
pub const FIRST_SWEEP: usize = 256;

/// A value a [`Table`] can share: equal values must feed equal hashes.
pub trait Shareable: PartialEq {
    /// Feeds what identifies the value to `h`.
    fn hash_into(&self, h: &mut dyn Hasher);
}

/// Shared copies of values of type `T`.
pub struct Table<T: ?Sized> {
    inner: Mutex<Inner<T>>,
    // keyed at random per process: the values come from users' objects
    hasher: RandomState,
}

struct Inner<T: ?Sized> {
    values: HashTable<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized + Shareable> Default for Table<T> {
    fn default() -> Self {
        Table {
            inner: Mutex::new(Inner { values: HashTable::new(), sweep_at: FIRST_SWEEP }),
            hasher: RandomState::new(),
        }
    }
}

impl<T: ?Sized + Shareable> Table<T> {
    fn hash(&self, value: &T) -> u64 {
        let mut h = self.hasher.build_hasher();
        value.hash_into(&mut h);
        h.finish()
    }

    /// The shared copy of `value`, made with `make` (and kept) if no copy is alive.
    pub fn share(&self, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let hash = self.hash(value);
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(same) = t.values.find(hash, |s| **s == *value) {
            return same.clone();
        }
        if t.values.len() >= t.sweep_at {
            t.values.retain(|s| Arc::strong_count(s) > 1);
            t.sweep_at = FIRST_SWEEP.max(2 * t.values.len());
        }
        let shared = make();
        t.values.insert_unique(hash, shared.clone(), |s| self.hash(s));
        shared
    }

    /// How many values the table holds (some perhaps for nobody, until its next sweep).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).values.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shareable for str {
    fn hash_into(&self, h: &mut dyn Hasher) {
        hash_str(h, self);
    }
}

/// Short strings that many cached objects hold alike (a pod's phase, its node's name, its condition's type and
/// status): 16 bytes inline and no allocation of its own per object, where a `String` takes 24 and an allocation of
/// 16 or more.
static WORDS: LazyLock<Table<str>> = LazyLock::new(Table::default);

/// The shared copy of `word`.
pub fn word(word: &str) -> Arc<str> {
    WORDS.share(word, || Arc::from(word))
}

/// Decodes a string as its shared copy ([`word`]), read from the decoder's own text where it can be (serde's
/// `String` or `Cow<str>` would allocate one per word decoded, only to look it up).
pub fn de_word<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    d.deserialize_str(Word)
}

/// Decodes an optional string as its shared copy ([`word`]).
pub fn de_opt_word<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    d.deserialize_option(OptionalWord)
}

/// Visits a string as its shared copy.
struct Word;

impl<'de> Visitor<'de> for Word {
    type Value = Arc<str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Arc<str>, E> {
        Ok(word(v))
    }
}

/// Visits an optional string as its shared copy.
struct OptionalWord;

impl<'de> Visitor<'de> for OptionalWord {
    type Value = Option<Arc<str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        de_word(d).map(Some)
    }
}

/// Feeds a string to a value's hash, ended so that no two lists of strings feed the same bytes (`0xff` is never part
/// of UTF-8).
pub fn hash_str(h: &mut dyn Hasher, s: &str) {
    h.write(s.as_bytes());
    h.write_u8(0xff);
}

/// Feeds an optional string to a value's hash, told apart from an empty one.
pub fn hash_opt_str(h: &mut dyn Hasher, s: Option<&str>) {
    h.write_u8(u8::from(s.is_some()));
    hash_str(h, s.unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Shareable for [String] {
        fn hash_into(&self, h: &mut dyn Hasher) {
            for s in self {
                hash_str(h, s);
            }
        }
    }

    fn list(words: &[&str]) -> Arc<[String]> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn share(t: &Table<[String]>, words: &[&str]) -> Arc<[String]> {
        let v = list(words);
        t.share(&v, || v.clone())
    }

    #[test]
    fn equal_values_share_one_copy_and_different_ones_do_not() {
        let t = Table::default();
        let a = share(&t, &["app", "web"]);
        let b = share(&t, &["app", "web"]);
        let c = share(&t, &["app", "db"]);
        let d = share(&t, &["appweb"]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c) && !Arc::ptr_eq(&a, &d));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn words_are_shared_as_decoded_from_text() {
        let decode = |text: &str| {
            let mut d = serde_json::Deserializer::from_str(text);
            de_word(&mut d).expect("a string")
        };
        let (a, b) = (decode(r#""shared-word-test""#), decode(r#""shared-word-test""#));
        // an escaped string is decoded into a buffer of its own, and still shared
        let escaped = decode(r#""shared-word-\u0074est""#);
        assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&a, &escaped), "one copy");
        assert_eq!(&*a, "shared-word-test");
        assert!(!Arc::ptr_eq(&a, &word("shared-word-other")));
        let mut d = serde_json::Deserializer::from_str("null");
        assert_eq!(de_opt_word(&mut d).expect("null"), None);
        let mut d = serde_json::Deserializer::from_str(r#""shared-word-test""#);
        assert!(de_opt_word(&mut d).expect("a string").is_some_and(|w| Arc::ptr_eq(&w, &a)));
        // anything but a string is refused, as a `String` field refuses it
        for bad in ["7", "null", "[]"] {
            let mut d = serde_json::Deserializer::from_str(bad);
            assert!(de_word(&mut d).is_err(), "{bad} taken as a word");
        }
    }

    /// A value whose hash is the same for all: only equality tells them apart.
    #[derive(PartialEq)]
    struct Colliding(&'static str);

    impl Shareable for Colliding {
        fn hash_into(&self, _: &mut dyn Hasher) {}
    }

    #[test]
    fn values_on_the_same_hash_are_told_apart_by_equality() {
        let t: Table<Colliding> = Table::default();
        let a = t.share(&Colliding("a"), || Arc::new(Colliding("a")));
        let b = t.share(&Colliding("b"), || Arc::new(Colliding("b")));
        assert_eq!((a.0, b.0), ("a", "b"));
        assert!(Arc::ptr_eq(&t.share(&Colliding("b"), || unreachable!("b is held")), &b));
        assert_eq!(t.len(), 2);
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
        assert!(kept.iter().all(|k| Arc::ptr_eq(k, &t.share(k, || unreachable!("held")))));
    }
}

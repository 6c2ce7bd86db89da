//! Stable numbers for identities and policies: a 64-bit digest of what they stand for, folded into the number
//! range, so the same cluster state gives the same numbers after an agent restart (nothing is rewritten that did not
//! change). The digest is SHA-256: a tenant cannot choose labels whose key equals another pod's (that would take a
//! second preimage of 64 bits, about 2^64 work). Collisions of the folded numbers are resolved by probing, in the
//! order of the keys; such a collision between a new key and an existing one can move the existing key's number
//! (about k²/2^33 per change for k identities, documented in docs/network-policy.md).

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

/// A digest fed piece by piece; each piece is length-prefixed, so `"ab" + "c"` and `"a" + "bc"` differ.
#[derive(Clone, Debug, Default)]
pub struct Key(Sha256);

impl Key {
    /// Feeds one piece.
    pub fn feed(mut self, bytes: &[u8]) -> Self {
        self.0.update((bytes.len() as u32).to_be_bytes());
        self.0.update(bytes);
        self
    }

    /// The key of one string.
    pub fn of(s: &str) -> u64 {
        Key::default().feed(s.as_bytes()).finish()
    }

    /// The first 64 bits of the digest.
    pub fn finish(self) -> u64 {
        let d = self.0.finalize();
        u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

/// Assigns numbers in `first..=u32::MAX` to 64-bit keys.
#[derive(Debug)]
pub struct Numbering {
    first: u32,
    keys: BTreeSet<u64>,
}

impl Numbering {
    /// An empty numbering whose numbers start at `first`.
    pub fn new(first: u32) -> Self {
        Self { first, keys: BTreeSet::new() }
    }

    /// Adds a key (again is fine).
    pub fn add(&mut self, key: u64) {
        self.keys.insert(key);
    }

    /// Numbers every key.
    pub fn assign(self) -> BTreeMap<u64, u32> {
        let span = u64::from(u32::MAX - self.first) + 1;
        let mut taken = BTreeSet::new();
        let mut out = BTreeMap::new();
        for key in self.keys {
            let mut n = key % span;
            while !taken.insert(n) {
                n = (n + 1) % span;
            }
            out.insert(key, self.first + n as u32);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_depend_only_on_the_key_and_stay_in_range() {
        let mut a = Numbering::new(256);
        a.add(Key::of("ns=a app=x"));
        a.add(Key::of("ns=b"));
        let mut b = Numbering::new(256);
        b.add(Key::of("ns=b"));
        b.add(Key::of("other"));
        b.add(Key::of("ns=a app=x"));
        let (a, b) = (a.assign(), b.assign());
        assert_eq!(a[&Key::of("ns=a app=x")], b[&Key::of("ns=a app=x")]);
        assert_eq!(a[&Key::of("ns=b")], b[&Key::of("ns=b")]);
        assert!(a.values().all(|n| *n >= 256));
    }

    #[test]
    fn collisions_get_distinct_numbers() {
        // A span of two numbers: whatever the keys, two keys get both.
        let mut n = Numbering::new(u32::MAX - 1);
        n.add(Key::of("a"));
        n.add(Key::of("b"));
        let got = n.assign();
        assert_ne!(got[&Key::of("a")], got[&Key::of("b")]);
    }

    #[test]
    fn pieces_are_separated() {
        assert_ne!(Key::default().feed(b"ab").feed(b"c").finish(), Key::default().feed(b"a").feed(b"bc").finish());
    }
}

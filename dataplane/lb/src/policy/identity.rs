//! Stable numbers for identities and policies: a 64-bit hash of what they stand for, folded into the number range,
//! so the same cluster state gives the same numbers after an agent restart (nothing is rewritten that did not
//! change) and a number never changes meaning while the tables are being rewritten. The rare collisions of the
//! folded numbers are resolved by probing, in the order of the 64-bit keys.

use std::collections::{BTreeMap, BTreeSet};

/// FNV-1a, 64 bits, fed piece by piece: stable across versions and platforms (unlike std's hasher).
#[derive(Clone, Copy, Debug)]
pub struct Key(u64);

impl Default for Key {
    fn default() -> Self {
        Key(0xcbf2_9ce4_8422_2325)
    }
}

impl Key {
    /// Feeds bytes, then a separator (so that `"ab" + "c"` and `"a" + "bc"` differ).
    pub fn feed(mut self, bytes: &[u8]) -> Self {
        for b in bytes.iter().chain(std::iter::once(&0xff)) {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// The key of one string.
    pub fn of(s: &str) -> u64 {
        Key::default().feed(s.as_bytes()).0
    }

    /// The hash so far.
    pub fn finish(self) -> u64 {
        self.0
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

//! Stable numbers for identities and policies: a hash of what they stand for, so the same cluster state gives the
//! same numbers after an agent restart (nothing is rewritten that did not change) and a number never changes meaning
//! while the tables are being rewritten. Collisions are resolved by probing, in the sorted order of the names.

use std::collections::{BTreeMap, BTreeSet};

/// Assigns numbers in `first..=u32::MAX` to names.
#[derive(Debug)]
pub struct Numbering {
    first: u32,
    names: BTreeSet<String>,
}

impl Numbering {
    /// An empty numbering whose numbers start at `first`.
    pub fn new(first: u32) -> Self {
        Self { first, names: BTreeSet::new() }
    }

    /// Adds a name (again is fine).
    pub fn add(&mut self, name: String) {
        self.names.insert(name);
    }

    /// Numbers every name.
    pub fn assign(self) -> BTreeMap<String, u32> {
        let span = u64::from(u32::MAX - self.first) + 1;
        let mut taken = BTreeSet::new();
        let mut out = BTreeMap::new();
        for name in self.names {
            let mut n = fnv1a(name.as_bytes()) % span;
            while !taken.insert(n) {
                n = (n + 1) % span;
            }
            out.insert(name, self.first + n as u32);
        }
        out
    }
}

/// FNV-1a, 64 bits: stable across versions and platforms (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_depend_only_on_the_name_and_stay_in_range() {
        let mut a = Numbering::new(256);
        a.add("ns=a app=x".into());
        a.add("ns=b".into());
        let mut b = Numbering::new(256);
        b.add("ns=b".into());
        b.add("other".into());
        b.add("ns=a app=x".into());
        let (a, b) = (a.assign(), b.assign());
        assert_eq!(a["ns=a app=x"], b["ns=a app=x"]);
        assert_eq!(a["ns=b"], b["ns=b"]);
        assert!(a.values().all(|n| *n >= 256));
    }

    #[test]
    fn collisions_get_distinct_numbers() {
        // A span of two numbers: whatever the hashes, two names get both.
        let mut n = Numbering::new(u32::MAX - 1);
        n.add("a".into());
        n.add("b".into());
        let got = n.assign();
        assert_ne!(got["a"], got["b"]);
    }
}

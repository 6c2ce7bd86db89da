//! Image garbage collection, as the kubelet's image GC: when the file system holding the image store is used above
//! the high threshold (85 % by default), the least recently used images that no container uses, that are older than
//! the minimum age (2 minutes) and that are not built in are removed until usage falls to the low threshold (80 %).
//!
//! [`plan`] is pure: from the store's images and the disk's figures to the images to remove and the blobs that go
//! with them (a blob shared with an image that stays, stays). [`super::gc_run::collect`] gathers those facts and
//! applies the plan.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

/// When and how much to collect (`--image-gc-high-threshold`, `--image-gc-low-threshold`,
/// `--image-minimum-gc-age`, as the kubelet's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// Disk usage, in percent, at or above which images are collected; 100 turns collection off.
    pub high_percent: u8,
    /// Disk usage, in percent, that collection brings the disk down to.
    pub low_percent: u8,
    /// Images used or stored more recently than this are kept.
    pub min_age: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy { high_percent: 85, low_percent: 80, min_age: Duration::from_secs(120) }
    }
}

impl GcPolicy {
    /// Checks the thresholds as the kubelet does: each in 0..=100, low not above high.
    pub fn validate(&self) -> Result<(), String> {
        if self.high_percent > 100 || self.low_percent > 100 {
            return Err(format!(
                "image GC thresholds are percentages: high {} and low {} must be at most 100",
                self.high_percent, self.low_percent
            ));
        }
        if self.low_percent > self.high_percent {
            return Err(format!(
                "the image GC low threshold ({}%) must not be above the high threshold ({}%)",
                self.low_percent, self.high_percent
            ));
        }
        Ok(())
    }

    /// Whether `disk` is used at or above the high threshold (never, when it is 100 %).
    pub fn triggered(&self, disk: Disk) -> bool {
        self.high_percent < 100
            && disk.capacity > 0
            && u128::from(disk.used) * 100 >= u128::from(disk.capacity) * u128::from(self.high_percent)
    }
}

/// The file system that holds the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Its size in bytes.
    pub capacity: u64,
    /// Bytes in use.
    pub used: u64,
}

/// One named image of the store, as the collector sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its reference (the index's name).
    pub reference: String,
    /// The blobs it needs (manifest, config, layers).
    pub blobs: Vec<String>,
    /// When it was last used by a container here, or stored, whichever is later.
    pub last_used: Timestamp,
    /// Whether a container (of any agent sharing the store) runs on it.
    pub in_use: bool,
    /// Built-in images are never collected: no registry holds them.
    pub builtin: bool,
}

/// What to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The images to untag, least recently used first.
    pub images: Vec<String>,
    /// The blobs (and their unpacked layers) no remaining image needs.
    pub blobs: Vec<String>,
    /// The bytes that frees.
    pub frees: u64,
    /// Bytes still to free after the plan (0 when the low threshold is reached).
    pub short: u64,
}

/// The images to remove so that `disk` falls to the low threshold, given the bytes each blob takes on disk
/// (`sizes`, the blob and its unpacked layer). Empty when usage is below the high threshold.
pub fn plan(
    candidates: &[Candidate],
    sizes: &BTreeMap<String, u64>,
    disk: Disk,
    policy: &GcPolicy,
    now: Timestamp,
) -> Plan {
    if !policy.triggered(disk) {
        return Plan::default();
    }
    let low = u128::from(disk.capacity) * u128::from(policy.low_percent) / 100;
    let need = u64::try_from(u128::from(disk.used).saturating_sub(low)).unwrap_or(u64::MAX);
    let mut users: BTreeMap<&str, usize> = BTreeMap::new();
    for c in candidates {
        for b in c.blobs.iter().collect::<BTreeSet<_>>() {
            *users.entry(b.as_str()).or_default() += 1;
        }
    }
    let min_age = jiff::SignedDuration::try_from(policy.min_age).unwrap_or(jiff::SignedDuration::MAX);
    let mut removable: Vec<&Candidate> =
        candidates.iter().filter(|c| !c.in_use && !c.builtin && now.duration_since(c.last_used) >= min_age).collect();
    removable.sort_by(|a, b| a.last_used.cmp(&b.last_used).then_with(|| a.reference.cmp(&b.reference)));
    let mut out = Plan::default();
    for c in removable {
        if out.frees >= need {
            break;
        }
        out.images.push(c.reference.clone());
        for b in c.blobs.iter().collect::<BTreeSet<_>>() {
            let left = users.get_mut(b.as_str()).map(|n| {
                *n -= 1;
                *n
            });
            if left == Some(0) {
                out.frees += sizes.get(b).copied().unwrap_or(0);
                out.blobs.push(b.clone());
            }
        }
    }
    out.short = need.saturating_sub(out.frees);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn t(secs_ago: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 - secs_ago).expect("valid")
    }

    fn image(reference: &str, blobs: &[&str], secs_ago: i64) -> Candidate {
        Candidate {
            reference: reference.into(),
            blobs: blobs.iter().map(|b| (*b).to_string()).collect(),
            last_used: t(secs_ago),
            in_use: false,
            builtin: false,
        }
    }

    fn sizes(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
        list.iter().map(|(b, s)| ((*b).to_string(), *s)).collect()
    }

    #[test]
    fn plans_follow_the_table() {
        let blobs = sizes(&[("a", GIB), ("b", GIB), ("c", GIB), ("shared", 2 * GIB), ("x", GIB)]);
        let old = 3_600;
        let cases: Vec<(&str, Vec<Candidate>, Disk, Plan)> = vec![
            (
                "below the high threshold: nothing",
                vec![image("one", &["a"], old)],
                Disk { capacity: 100 * GIB, used: 84 * GIB },
                Plan::default(),
            ),
            (
                "at the high threshold: least recently used first, down to the low threshold",
                vec![image("newer", &["b"], 600), image("oldest", &["a"], old), image("newest", &["c"], 300)],
                Disk { capacity: 20 * GIB, used: 17 * GIB + GIB / 2 },
                Plan {
                    images: vec!["oldest".into(), "newer".into()],
                    blobs: vec!["a".into(), "b".into()],
                    frees: 2 * GIB,
                    short: 0,
                },
            ),
            (
                "a blob another image needs stays until that image goes too",
                vec![image("one", &["shared", "a"], old), image("two", &["shared", "b"], old - 1)],
                Disk { capacity: 100 * GIB, used: 90 * GIB },
                Plan {
                    images: vec!["one".into(), "two".into()],
                    blobs: vec!["a".into(), "b".into(), "shared".into()],
                    frees: 4 * GIB,
                    short: 6 * GIB,
                },
            ),
            (
                "in use, built in or too young: kept, and the shortfall reported",
                vec![
                    Candidate { in_use: true, ..image("running", &["a"], old) },
                    Candidate { builtin: true, ..image("skiff/echo", &["b"], old) },
                    image("just-pulled", &["c"], 30),
                    image("old", &["x"], old),
                ],
                Disk { capacity: 100 * GIB, used: 95 * GIB },
                Plan { images: vec!["old".into()], blobs: vec!["x".into()], frees: GIB, short: 14 * GIB },
            ),
            (
                "exactly at the high threshold; stops as soon as enough is freed",
                vec![image("one", &["shared"], old), image("two", &["a"], old - 1)],
                Disk { capacity: 20 * GIB, used: 17 * GIB },
                Plan { images: vec!["one".into()], blobs: vec!["shared".into()], frees: 2 * GIB, short: 0 },
            ),
        ];
        for (name, candidates, disk, want) in cases {
            assert_eq!(plan(&candidates, &blobs, disk, &GcPolicy::default(), t(0)), want, "{name}");
        }
    }

    #[test]
    fn a_high_threshold_of_100_turns_collection_off() {
        let p = GcPolicy { high_percent: 100, low_percent: 90, ..GcPolicy::default() };
        let full = Disk { capacity: 10, used: 10 };
        assert_eq!(plan(&[image("one", &["a"], 3_600)], &sizes(&[("a", 5)]), full, &p, t(0)), Plan::default());
    }

    #[test]
    fn thresholds_are_checked() {
        assert!(GcPolicy::default().validate().is_ok());
        assert!(GcPolicy { high_percent: 101, ..GcPolicy::default() }.validate().is_err());
        assert!(GcPolicy { high_percent: 70, low_percent: 80, ..GcPolicy::default() }.validate().is_err());
    }
}

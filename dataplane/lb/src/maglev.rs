//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
//! NSDI 2016): a lookup table of prime size M in which every backend owns ⌊M/N⌋ or ⌈M/N⌉ entries, and a backend
//! change moves few entries of the others.
//!
//! Each backend's preference list is a permutation of the table derived from a hash of its address only, so every
//! node computes the same table for the same backend set, and the tc program (which hashes the 5-tuple with
//! [`skiff_ebpf_common::flow_hash`]) sends a flow to the same backend whichever node it arrives at.

use skiff_ebpf_common::mix64;

use crate::model::BackendAddr;

/// Whether `n` is prime (Maglev needs a prime table size so every skip visits every entry).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

fn permutation(b: &BackendAddr, m: u32) -> (u32, u32) {
    let key = (u64::from(u32::from(b.addr)) << 24) | (u64::from(b.port) << 8) | u64::from(b.protocol.number());
    let h1 = mix64(key ^ 0x5bd1_e995_c6a4_a793);
    let h2 = mix64(key ^ 0x27d4_eb2f_1656_67c5);
    let offset = (h1 % u64::from(m)) as u32;
    let skip = (h2 % u64::from(m - 1)) as u32 + 1;
    (offset, skip)
}

/// Builds the lookup table of size `m` for `backends` (which must be non-empty and sorted, so every node lists them
/// in the same order). Each entry is an index into `backends`.
///
/// # Panics
/// Never for `m >= 2` prime and a non-empty slice; callers check both (see [`crate::config::LbConfig::validate`]).
pub fn table(backends: &[BackendAddr], m: u32) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX;
    let n = backends.len();
    let mut entry = vec![EMPTY; m as usize];
    if n == 0 || m < 2 {
        return entry;
    }
    // Which entries are taken, as a bitset: 2 KiB for M = 16381, so the hot loop stays in L1.
    let mut taken = vec![0u64; (m as usize).div_ceil(64)];
    // pos[i]: the next candidate slot of backend i, advanced by skip[i] modulo m.
    let (mut pos, skip): (Vec<u32>, Vec<u32>) = backends.iter().map(|b| permutation(b, m)).unzip();
    let mut filled = 0u32;
    'fill: loop {
        for i in 0..n {
            let (mut c, step) = (pos[i], skip[i]);
            loop {
                let (word, bit) = ((c >> 6) as usize, 1u64 << (c & 63));
                c = if c + step >= m { c + step - m } else { c + step };
                if taken[word] & bit == 0 {
                    taken[word] |= bit;
                    entry[(word << 6) | bit.trailing_zeros() as usize] = i as u32;
                    break;
                }
            }
            pos[i] = c;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

/// A fingerprint of a table's content (the set of backend ids it was built from, in any order, and its size),
/// stored with the table so a restarted agent can tell whether a pinned table is current.
pub fn fingerprint(backend_ids: &[u32], m: u32) -> u32 {
    let mut ids = backend_ids.to_vec();
    ids.sort_unstable();
    let mut h = mix64(u64::from(m) ^ 0x9e37_79b9_7f4a_7c15);
    for id in &ids {
        h = mix64(h ^ u64::from(*id));
    }
    // 0 marks "no fingerprint"; never produce it.
    ((h ^ (h >> 32)) as u32).max(1)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use skiff_ebpf_common::{PROTO_TCP, flow_hash};

    use super::*;
    use crate::model::Protocol;

    fn backends(n: u32) -> Vec<BackendAddr> {
        let mut v: Vec<_> = (0..n)
            .map(|i| BackendAddr { addr: Ipv4Addr::from(0x0af4_0000 + i * 7 + 2), port: 8080, protocol: Protocol::Tcp })
            .collect();
        v.sort();
        v
    }

    fn counts(t: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for e in t {
            c[*e as usize] += 1;
        }
        c
    }

    #[test]
    fn the_default_table_size_and_common_sizes_are_prime() {
        for m in [251, 1021, 4093, 16_381, 65_521] {
            assert!(is_prime(m), "{m}");
        }
        for m in [0, 1, 4, 16_383, 65_536] {
            assert!(!is_prime(m), "{m}");
        }
    }

    #[test]
    fn every_entry_is_filled_and_each_backend_owns_within_one_of_an_even_share() {
        for n in [1u32, 2, 3, 4, 7, 10, 100] {
            let t = table(&backends(n), 16_381);
            assert!(t.iter().all(|e| *e < n));
            let c = counts(&t, n as usize);
            let (min, max) = (c.iter().min().copied().unwrap_or(0), c.iter().max().copied().unwrap_or(0));
            assert!(max - min <= 1, "n={n}: {min}..{max}");
        }
    }

    #[test]
    fn flows_hashed_like_the_tc_program_spread_within_one_percent_of_even() {
        let n = 4u32;
        let b = backends(n);
        let t = table(&b, 16_381);
        let mut hits = vec![0u64; n as usize];
        let flows = 2_000_000u32;
        for i in 0..flows {
            let client = 0x0a00_0000 + (i >> 12);
            let sport = (i & 0xfff) as u16 + 20_000;
            let h = flow_hash(client.to_be(), 0x0a60_0001u32.to_be(), sport.to_be(), 80u16.to_be(), PROTO_TCP);
            hits[t[(h % 16_381) as usize] as usize] += 1;
        }
        let even = f64::from(flows) / f64::from(n);
        for h in &hits {
            let dev = (*h as f64 - even).abs() / even;
            assert!(dev < 0.01, "deviation {dev:.4} in {hits:?}");
        }
    }

    fn moved(a: &[u32], b: &[u32], old: &[BackendAddr], new: &[BackendAddr]) -> usize {
        a.iter().zip(b).filter(|(x, y)| old[**x as usize] != new[**y as usize]).count()
    }

    #[test]
    fn removing_one_of_ten_backends_moves_little_more_than_its_own_share() {
        let m = 16_381u32;
        let old = backends(10);
        let mut new = old.clone();
        let removed = new.remove(3);
        let (a, b) = (table(&old, m), table(&new, m));
        let own = a.iter().filter(|e| old[**e as usize] == removed).count();
        let total = moved(&a, &b, &old, &new);
        let collateral = (total - own) as f64 / f64::from(m);
        assert!(collateral < 0.03, "entries of surviving backends that moved: {collateral:.4}");
    }

    #[test]
    fn adding_a_backend_takes_about_its_share_and_moves_little_else() {
        let m = 16_381u32;
        let old = backends(10);
        let mut new = backends(11);
        new.sort();
        let (a, b) = (table(&old, m), table(&new, m));
        let total = moved(&a, &b, &old, &new) as f64 / f64::from(m);
        let share = 1.0 / 11.0;
        assert!(total < share + 0.03, "moved {total:.4}, own share {share:.4}");
        assert!(total >= share * 0.95, "moved {total:.4}, own share {share:.4}");
    }

    #[test]
    fn the_table_depends_only_on_the_backend_set_so_every_node_computes_the_same() {
        assert_eq!(table(&backends(5), 1021), table(&backends(5), 1021));
    }

    #[test]
    fn fingerprints_differ_for_different_contents_and_are_never_zero() {
        let a = fingerprint(&[1, 2, 3], 16_381);
        assert_ne!(a, fingerprint(&[1, 2, 4], 16_381));
        assert_ne!(a, fingerprint(&[1, 2, 3], 1021));
        assert_ne!(a, 0);
        assert_eq!(a, fingerprint(&[1, 2, 3], 16_381));
        assert_eq!(a, fingerprint(&[3, 1, 2], 16_381), "the order of the ids does not matter");
    }
}

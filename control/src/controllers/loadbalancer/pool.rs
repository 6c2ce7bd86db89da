//! The LoadBalancer address pool: parsed from `skiff server --lb-pool` and from the `kube-system/skiff-lb-pool`
//! ConfigMap (`data.addresses`: CIDRs or `FIRST-LAST` ranges, separated by commas, spaces or lines), which anyone
//! allowed to edit ConfigMaps in kube-system may change; the controller reads it on every pass.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Namespace of the pool ConfigMap.
pub const POOL_NAMESPACE: &str = "kube-system";
/// Name of the pool ConfigMap.
pub const POOL_CONFIGMAP: &str = "skiff-lb-pool";
/// The key of the ConfigMap that lists the addresses.
pub const POOL_KEY: &str = "addresses";

/// Inclusive address ranges, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
}

impl Pool {
    /// Parses a pool and refuses one that overlaps `reserved` (the cluster and service CIDRs): addresses there
    /// would shadow pods or ClusterIPs.
    pub fn parse(text: &str, reserved: &[(&str, Ipv4Net)]) -> Result<Pool, String> {
        let mut ranges = Vec::new();
        for item in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
            let (first, last) = if let Some((a, b)) = item.split_once('-') {
                let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("{item:?}: {a:?} is not an IPv4 address"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("{item:?}: {b:?} is not an IPv4 address"))?;
                if u32::from(a) > u32::from(b) {
                    return Err(format!("{item:?}: the range ends before it starts"));
                }
                (a, b)
            } else if item.contains('/') {
                let n: Ipv4Net = item.parse().map_err(|_| format!("{item:?} is not a CIDR"))?;
                if n != n.trunc() {
                    // 10.0.0.200/24 would hand out the whole /24 (the router's address too): say so instead
                    return Err(format!("{item:?} has host bits set: write {} or a FIRST-LAST range", n.trunc()));
                }
                if n.prefix_len() >= 31 {
                    (n.network(), n.broadcast())
                } else {
                    // network and broadcast addresses are not handed out, as MetalLB does by default
                    (Ipv4Addr::from(u32::from(n.network()) + 1), Ipv4Addr::from(u32::from(n.broadcast()) - 1))
                }
            } else {
                let a: Ipv4Addr = item.parse().map_err(|_| format!("{item:?} is not an address, CIDR or range"))?;
                (a, a)
            };
            for a in [first, last] {
                if a.is_loopback() || a.is_multicast() || a.is_unspecified() || a.is_broadcast() || a.is_link_local() {
                    return Err(format!("{item}: {a} cannot be a LoadBalancer address"));
                }
            }
            for (what, net) in reserved {
                let (lo, hi) = (u32::from(net.network()), u32::from(net.broadcast()));
                if u32::from(first) <= hi && u32::from(last) >= lo {
                    return Err(format!("{item} overlaps the {what} {net}"));
                }
            }
            ranges.push((first, last));
        }
        if ranges.is_empty() {
            return Err("the pool lists no address".into());
        }
        Ok(Pool { ranges })
    }

    /// Whether `ip` is in the pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|(a, b)| (u32::from(*a)..=u32::from(*b)).contains(&u32::from(ip)))
    }

    /// Every address, in order (ranges are bounded by the IPv4 space; callers stop at the first free one).
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges.iter().flat_map(|(a, b)| (u32::from(*a)..=u32::from(*b)).map(Ipv4Addr::from))
    }

    /// How many distinct addresses the pool has (overlapping ranges count once).
    pub fn size(&self) -> u64 {
        let mut ranges: Vec<(u32, u32)> = self.ranges.iter().map(|(a, b)| (u32::from(*a), u32::from(*b))).collect();
        ranges.sort_unstable();
        let (mut total, mut covered_to) = (0u64, None::<u32>);
        for (a, b) in ranges {
            let start = match covered_to {
                Some(c) if c >= b => continue,
                Some(c) if c >= a => c + 1,
                _ => a,
            };
            total += u64::from(b - start) + 1;
            covered_to = Some(b);
        }
        total
    }
}

/// The CIDRs no pool may overlap.
pub fn reserved_cidrs() -> Vec<(&'static str, Ipv4Net)> {
    let net = |(a, l): (Ipv4Addr, u8)| Ipv4Net::new(a, l).expect("a valid constant");
    vec![
        ("cluster CIDR", net(crate::apiserver::alloc::CLUSTER_CIDR)),
        ("service CIDR", net(crate::apiserver::alloc::SERVICE_CIDR)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn cidrs_ranges_and_single_addresses_parse() {
        let p = Pool::parse("10.0.0.200/30, 10.0.0.240-10.0.0.241\n192.0.2.7", &reserved_cidrs()).expect("pool");
        let all: Vec<Ipv4Addr> = p.addresses().collect();
        assert_eq!(all, vec![ip("10.0.0.201"), ip("10.0.0.202"), ip("10.0.0.240"), ip("10.0.0.241"), ip("192.0.2.7")]);
        assert_eq!(p.size(), 5);
        let overlapping = Pool::parse("10.0.0.1-10.0.0.10, 10.0.0.5-10.0.0.12, 10.0.0.3", &[]).expect("pool");
        assert_eq!(overlapping.size(), 12, "overlaps count once");
        assert!(p.contains(ip("10.0.0.241")) && !p.contains(ip("10.0.0.200")));
        let one = Pool::parse("198.51.100.9/32", &[]).expect("pool");
        assert_eq!(one.addresses().collect::<Vec<_>>(), vec![ip("198.51.100.9")]);
    }

    #[test]
    fn bad_pools_are_refused_with_the_reason() {
        let r = reserved_cidrs();
        let err = |t: &str| Pool::parse(t, &r).expect_err(t);
        assert!(err("10.244.3.0/24").contains("overlaps the cluster CIDR 10.244.0.0/16"));
        assert!(err("10.96.0.10").contains("overlaps the service CIDR 10.96.0.0/12"));
        assert!(err("10.95.255.0-10.96.0.1").contains("service CIDR"), "a range that reaches into it");
        assert!(err("10.0.0.9-10.0.0.1").contains("ends before it starts"));
        assert!(err("10.0.0.0/33").contains("not a CIDR"));
        assert!(err("pool").contains("not an address"));
        assert!(err(" , ").contains("no address"));
        assert!(err("10.0.0.200/24").contains("host bits set: write 10.0.0.0/24"), "not silently the whole /24");
        for special in ["127.0.0.1", "224.0.0.5", "0.0.0.0", "255.255.255.255", "169.254.1.1"] {
            assert!(err(special).contains("cannot be a LoadBalancer address"), "{special}");
        }
    }
}

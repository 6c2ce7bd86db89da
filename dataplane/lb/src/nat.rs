//! Pod egress masquerade: the configuration the tc egress program reads, as pure functions of [`LbConfig`], and
//! the changes that bring the programmed exclusion list to the wanted one. [`crate::maps::LbMaps::write_nat`]
//! applies them.
//!
//! Pods' packets from the cluster CIDR to anywhere outside it (and outside every `--no-masquerade-to` prefix)
//! leave the node with its address, as kube-proxy's `--cluster-cidr` masquerade rule and ip-masq-agent do; traffic
//! between pods and to Service backends keeps the pod's address.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;
use skiff_ebpf_common::{NAT_F_ENABLED, NatConfig};

use crate::config::LbConfig;

/// What to masquerade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    /// Pod addresses of the whole cluster: sources that are translated, and destinations that are not.
    pub cluster_cidr: Ipv4Net,
    /// Further destinations that keep the pod's address (ip-masq-agent's `nonMasqueradeCIDRs`).
    pub exclude: Vec<Ipv4Net>,
}

/// One programmed exclusion: (prefix length, address bytes in network order, host bits zero).
pub type Exclusion = (u8, [u8; 4]);

/// The configuration value for the program: disabled without masquerade or without a node address.
pub fn config_value(config: &LbConfig) -> NatConfig {
    let (Some(m), Some(addr)) = (&config.masquerade, config.snat()) else {
        return NatConfig::default();
    };
    let net = m.cluster_cidr.trunc();
    NatConfig {
        addr: be(addr),
        src_net: be(net.network()),
        src_mask: be(net.netmask()),
        port_min: config.snat_ports.0,
        port_max: config.snat_ports.1,
        flags: NAT_F_ENABLED,
    }
}

/// The exclusion list: the cluster CIDR and every `exclude` prefix (empty without masquerade).
pub fn exclusions(config: &LbConfig) -> BTreeSet<Exclusion> {
    let Some(m) = &config.masquerade else { return BTreeSet::new() };
    std::iter::once(&m.cluster_cidr)
        .chain(&m.exclude)
        .map(|n| {
            let n = n.trunc();
            (n.prefix_len(), n.network().octets())
        })
        .collect()
}

/// The writes from `programmed` to `wanted`: entries to add, then entries to remove. Adding first means a
/// destination is never briefly translated that both lists exclude.
pub fn exclusion_changes(
    programmed: &BTreeSet<Exclusion>,
    wanted: &BTreeSet<Exclusion>,
) -> (Vec<Exclusion>, Vec<Exclusion>) {
    (wanted.difference(programmed).copied().collect(), programmed.difference(wanted).copied().collect())
}

fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::NodeIdentity;

    fn config(masq: Option<Masquerade>) -> LbConfig {
        let mut c = LbConfig::new(NodeIdentity { name: "n".into(), addresses: vec![Ipv4Addr::new(192, 168, 50, 11)] });
        c.masquerade = masq;
        c
    }

    fn masq(exclude: &[&str]) -> Masquerade {
        Masquerade {
            cluster_cidr: "10.244.7.9/16".parse().expect("cidr"),
            exclude: exclude.iter().map(|e| e.parse().expect("cidr")).collect(),
        }
    }

    #[test]
    fn the_program_sees_the_cluster_cidr_and_the_node_address() {
        let v = config_value(&config(Some(masq(&[]))));
        assert_eq!(v.flags, NAT_F_ENABLED);
        assert_eq!(v.addr.to_ne_bytes(), [192, 168, 50, 11]);
        assert_eq!(v.src_net.to_ne_bytes(), [10, 244, 0, 0], "host bits of the CIDR are dropped");
        assert_eq!(v.src_mask.to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!((v.port_min, v.port_max), (61_000, 65_535));
        assert!(v.candidate(be(Ipv4Addr::new(10, 244, 3, 4)), be(Ipv4Addr::new(198, 51, 100, 7))));
    }

    #[test]
    fn no_masquerade_or_no_address_disables_it() {
        assert_eq!(config_value(&config(None)), NatConfig::default());
        let mut c = config(Some(masq(&[])));
        c.node.addresses.clear();
        assert_eq!(config_value(&c).flags, 0);
        assert!(exclusions(&config(None)).is_empty());
    }

    #[test]
    fn exclusions_are_normalised_and_changes_add_before_they_remove() {
        let c = config(Some(masq(&["192.168.0.0/16", "172.16.5.5/12", "192.168.0.0/16"])));
        let wanted = exclusions(&c);
        let want: BTreeSet<Exclusion> =
            [(16, [10, 244, 0, 0]), (16, [192, 168, 0, 0]), (12, [172, 16, 0, 0])].into_iter().collect();
        assert_eq!(wanted, want);
        let programmed: BTreeSet<Exclusion> = [(16, [10, 244, 0, 0]), (8, [10, 0, 0, 0])].into_iter().collect();
        let (add, remove) = exclusion_changes(&programmed, &wanted);
        assert_eq!(add, vec![(12, [172, 16, 0, 0]), (16, [192, 168, 0, 0])]);
        assert_eq!(remove, vec![(8, [10, 0, 0, 0])]);
        assert_eq!(exclusion_changes(&wanted, &wanted), (vec![], vec![]), "a restart writes nothing");
    }
}

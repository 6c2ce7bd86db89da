//! What the policy compiler produces: the desired contents of the policy maps, in plain Rust types.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;
use skiff_ebpf_common::{DIR_EGRESS, DIR_INGRESS, RULE_PREFIX_ALL_PORTS, RULE_PREFIX_ALL_PROTOCOLS};

/// A direction of policy, as the pod sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic into the pod.
    Ingress,
    /// Traffic out of the pod.
    Egress,
}

impl Direction {
    /// The `DIR_*` value of the maps.
    pub fn wire(self) -> u8 {
        match self {
            Direction::Ingress => DIR_INGRESS,
            Direction::Egress => DIR_EGRESS,
        }
    }

    /// From the `DIR_*` value of the maps.
    pub fn from_wire(dir: u8) -> Option<Self> {
        match dir {
            DIR_INGRESS => Some(Direction::Ingress),
            DIR_EGRESS => Some(Direction::Egress),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Which ports of which protocols a rule entry covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    /// Every protocol and port.
    All,
    /// Every port of one IP protocol.
    Protocol(u8),
    /// An aligned block of ports of one protocol: `port` with its low `16 - bits` bits free.
    Block {
        /// IP protocol.
        proto: u8,
        /// First port of the block (host order).
        port: u16,
        /// How many leading bits of the port are fixed (16: exactly one port).
        bits: u8,
    },
}

impl PortMatch {
    /// The LPM prefix length of the entry.
    pub fn prefix_len(self) -> u32 {
        match self {
            PortMatch::All => RULE_PREFIX_ALL_PROTOCOLS,
            PortMatch::Protocol(_) => RULE_PREFIX_ALL_PORTS,
            PortMatch::Block { bits, .. } => RULE_PREFIX_ALL_PORTS + u32::from(bits),
        }
    }

    /// (protocol, first port) as stored in the key (zero where the prefix does not reach).
    pub fn proto_port(self) -> (u8, u16) {
        match self {
            PortMatch::All => (0, 0),
            PortMatch::Protocol(p) => (p, 0),
            PortMatch::Block { proto, port, .. } => (proto, port),
        }
    }

    /// Back from a stored key.
    pub fn from_key(prefix_len: u32, proto: u8, port: u16) -> Option<Self> {
        match prefix_len {
            RULE_PREFIX_ALL_PROTOCOLS => Some(PortMatch::All),
            RULE_PREFIX_ALL_PORTS => Some(PortMatch::Protocol(proto)),
            n if n > RULE_PREFIX_ALL_PORTS && n <= RULE_PREFIX_ALL_PORTS + 16 => {
                Some(PortMatch::Block { proto, port, bits: (n - RULE_PREFIX_ALL_PORTS) as u8 })
            }
            _ => None,
        }
    }
}

/// One entry of the rules map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// The endpoint's identity.
    pub endpoint: u32,
    /// The direction.
    pub dir: Direction,
    /// The peer identity (or `PEER_ANY`).
    pub peer: u32,
    /// Protocols and ports.
    pub ports: PortMatch,
}

/// A pod on this node that policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointEntry {
    /// Its identity.
    pub identity: u32,
    /// Selected by a policy of type Ingress.
    pub ingress_isolated: bool,
    /// Selected by a policy of type Egress.
    pub egress_isolated: bool,
}

/// The desired contents of the policy maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyTables {
    /// Address prefix → identity.
    pub ipcache: BTreeMap<Ipv4Net, u32>,
    /// Pod address (of a pod on this node) → endpoint.
    pub endpoints: BTreeMap<Ipv4Addr, EndpointEntry>,
    /// Rule → the id of the policy that allows it.
    pub rules: BTreeMap<RuleKey, u32>,
}

/// Names for the numbers in the tables, for metrics and verdict reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyNames {
    /// Policy id → `namespace/name`.
    pub policies: BTreeMap<u32, String>,
    /// Identity → what it stands for (`pod ns/name` list or `cidr ...`).
    pub identities: BTreeMap<u32, String>,
    /// Pod address → `namespace/name`.
    pub pods: BTreeMap<Ipv4Addr, String>,
    /// Pod address (on this node) → the policies that isolate it, per direction.
    pub isolating: BTreeMap<(Ipv4Addr, Direction), Vec<u32>>,
}

/// A policy, part of a policy or a pod the compiler had to leave out, and why (reported as warnings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// `namespace/name` of the object.
    pub object: String,
    /// Why.
    pub reason: String,
}

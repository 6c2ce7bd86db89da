//! NetworkPolicy maps shared by the policy programs and user space (see `docs/network-policy.md`).
//!
//! - [`crate::maps::POL_IPCACHE`]: LPM trie, IPv4 prefix → peer identity (`u32`). Every pod address of the cluster
//!   is a /32; every ipBlock CIDR and `except` prefix of a policy is an entry; the node's own addresses map to
//!   [`IDENTITY_HOST`]. An address with no entry is [`IDENTITY_WORLD`].
//! - [`crate::maps::POL_ENDPOINTS`]: host-side veth ifindex → [`PolEndpoint`] (the pod behind it, its identity and
//!   whether it is isolated for ingress/egress).
//! - [`crate::maps::POL_RULES`]: LPM trie over [`PolRuleData`] → [`PolRuleValue`]. An entry allows traffic of an
//!   endpoint identity, in one direction, with one peer identity (or [`PEER_ANY`]), for every protocol (prefix
//!   [`RULE_PREFIX_ALL_PROTOCOLS`]), one protocol's every port ([`RULE_PREFIX_ALL_PORTS`]) or a block of ports
//!   (longer prefixes: endPort ranges are split into aligned blocks).
//! - [`crate::maps::POL_CT`]: LRU, [`PolCtKey`] (tuple + direction) → [`PolCtValue`]: flows a hook allowed, so replies
//!   pass and established flows skip the rule lookup until the policy generation changes.
//! - [`crate::maps::POL_STATS`]: per-CPU new-flow verdict counters by [`PolStatsKey`].
//! - [`crate::maps::POL_VERDICTS`]: ring buffer of [`PolVerdict`] records of the flows a policy decided.
//! - [`crate::maps::POL_CONFIG`]: one [`PolConfig`].

/// Traffic into the pod (judged at the host-side veth's tc egress).
pub const DIR_INGRESS: u8 = 0;
/// Traffic out of the pod (judged at the host-side veth's tc ingress).
pub const DIR_EGRESS: u8 = 1;

/// The identity of an address that has no entry in the ip cache (anything outside the cluster and its policies).
pub const IDENTITY_WORLD: u32 = 2;
/// The identity of this node's own addresses: traffic between a pod and its node is always allowed.
pub const IDENTITY_HOST: u32 = 1;
/// The first identity user space allocates; lower ones are reserved.
pub const IDENTITY_FIRST_ALLOCATED: u32 = 256;
/// The peer identity of a rule that allows every peer.
pub const PEER_ANY: u32 = 0;

/// [`PolEndpoint::flags`]: the pod is selected by a policy with policyType Ingress.
pub const EP_F_INGRESS_ISOLATED: u32 = 1;
/// [`PolEndpoint::flags`]: the pod is selected by a policy with policyType Egress.
pub const EP_F_EGRESS_ISOLATED: u32 = 2;

/// Prefix length (bits) of a rule that allows every protocol and port.
pub const RULE_PREFIX_ALL_PROTOCOLS: u32 = 72;
/// Prefix length (bits) of a rule that allows every port of one protocol.
pub const RULE_PREFIX_ALL_PORTS: u32 = 80;
/// Prefix length (bits) of a rule for exactly one port.
pub const RULE_PREFIX_ONE_PORT: u32 = 96;

/// [`PolVerdict::verdict`]: a new flow allowed by a rule.
pub const VERDICT_ALLOWED: u8 = 0;
/// [`PolVerdict::verdict`]: a new flow allowed because the endpoint is not isolated in that direction.
pub const VERDICT_NOT_ISOLATED: u8 = 1;
/// [`PolVerdict::verdict`]: a new flow to or from the node itself (always allowed).
pub const VERDICT_HOST: u8 = 2;
/// [`PolVerdict::verdict`]: a new flow denied: the endpoint is isolated and no rule allows it.
pub const VERDICT_DENIED: u8 = 3;
/// [`PolVerdict::verdict`]: a packet from the pod with a source address that is not the pod's: dropped.
pub const VERDICT_SPOOFED: u8 = 4;
/// [`PolVerdict::verdict`]: an established flow re-judged after a policy change and now denied.
pub const VERDICT_REVOKED: u8 = 5;

/// A pod behind a host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolEndpoint {
    /// The pod's address, network order.
    pub addr: u32,
    /// Its identity (the endpoint half of [`PolRuleData`]).
    pub identity: u32,
    /// `EP_F_*`.
    pub flags: u32,
    /// Zero.
    pub pad: u32,
}

/// The key data of [`crate::maps::POL_RULES`], all bytes so that it has no padding and its bit order is the byte
/// order (the port is in network order, so port blocks are prefixes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolRuleData {
    /// Endpoint identity, big-endian.
    pub endpoint: [u8; 4],
    /// `DIR_*`.
    pub dir: u8,
    /// Peer identity (or [`PEER_ANY`]), big-endian.
    pub peer: [u8; 4],
    /// IP protocol.
    pub proto: u8,
    /// Port, network order.
    pub port: [u8; 2],
}

impl PolRuleData {
    /// The key data for a lookup or an entry.
    pub const fn new(endpoint: u32, dir: u8, peer: u32, proto: u8, port_be: [u8; 2]) -> Self {
        Self { endpoint: endpoint.to_be_bytes(), dir, peer: peer.to_be_bytes(), proto, port: port_be }
    }
}

/// What a rule entry says.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolRuleValue {
    /// The id of the policy that allows it (the first one in compile order when several do).
    pub policy: u32,
}

/// A flow as one hook saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolCtKey {
    /// Source address, network order.
    pub saddr: u32,
    /// Destination address, network order.
    pub daddr: u32,
    /// Source port (ICMP: 0), network order.
    pub sport: u16,
    /// Destination port (ICMP: 0), network order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// `DIR_*` of the hook that allowed it.
    pub dir: u8,
    /// Zero.
    pub pad: [u8; 2],
}

/// A tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolCtValue {
    /// The policy generation it was judged under ([`PolConfig::generation`]).
    pub generation: u32,
    /// The policy that allowed it (0: not isolated, or the node).
    pub policy: u32,
}

/// Counter key: new flows by endpoint, policy, direction and verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolStatsKey {
    /// The endpoint pod's address, network order.
    pub addr: u32,
    /// The policy that allowed it (0 for other verdicts).
    pub policy: u32,
    /// `DIR_*`.
    pub dir: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// Zero.
    pub pad: [u8; 2],
}

/// One judged flow, as the ring buffer carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolVerdict {
    /// Source address, network order.
    pub saddr: u32,
    /// Destination address, network order.
    pub daddr: u32,
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// `DIR_*`.
    pub dir: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// Zero.
    pub pad: u8,
    /// Endpoint identity.
    pub endpoint: u32,
    /// Peer identity.
    pub peer: u32,
    /// The deciding policy (0 when none did).
    pub policy: u32,
    /// The host-side veth.
    pub ifindex: u32,
}

/// Policy configuration written by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolConfig {
    /// Bumped by every table update that may deny something allowed before; tracked flows of an older generation are
    /// judged again on their next packet.
    pub generation: u32,
    /// Zero.
    pub flags: u32,
}

//! Map keys and values shared by Skiff's BPF programs (`skiff-ebpf`) and their user-space loader (`skiff-lb`).
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, so the kernel and user space agree on one layout.
//! Addresses and ports are stored in **network byte order** exactly as the kernel hands them to the programs
//! (`bpf_sock_addr.user_ip4`, the IPv4 header); everything else is in host order.
//!
//! # Map layout (see `docs/lb.md`)
//!
//! - [`maps::SERVICES`]: [`ServiceKey`] `(vip, port, proto, scope, slot)` → [`ServiceValue`]. Slot 0 is the
//!   service header (backend count, Maglev table id, affinity timeout, generation); slots `1..=count` name one backend
//!   each.
//! - [`maps::BACKENDS`]: backend id (`u32`) → [`Backend`].
//! - [`maps::MAGLEV_S`], [`maps::MAGLEV_M`], [`maps::MAGLEV_L`]: table id (`u32`) → a whole Maglev table
//!   ([`MaglevTable`]) of backend ids, one size class per map. A table is built completely in user space and
//!   published by one atomic element write. (A hash-of-maps would also be atomic, but every update of one makes the
//!   kernel wait for an RCU grace period, about 10 ms here; see docs/lb.md.)
//! - affinity, reverse socket translation, connection tracking and per-CPU counters, described on each type.
//!
//! The `user` feature adds `aya::Pod` implementations so user space can read and write the maps.
#![no_std]
#![deny(missing_docs)]

mod hash;
mod nat;
#[cfg(feature = "user")]
mod pod;
mod policy;
mod types;

pub use hash::{flow_hash, mix32, mix64};
pub use nat::*;
pub use policy::*;
pub use types::*;

/// Names of the maps in the BPF object, shared so the loader cannot misspell them.
pub mod maps {
    /// [`crate::ServiceKey`] → [`crate::ServiceValue`].
    pub const SERVICES: &str = "LB_SERVICES";
    /// Backend id → [`crate::Backend`].
    pub const BACKENDS: &str = "LB_BACKENDS";
    /// Table id → [`crate::MaglevTableS`].
    pub const MAGLEV_S: &str = "LB_MAGLEV_S";
    /// Table id → [`crate::MaglevTableM`].
    pub const MAGLEV_M: &str = "LB_MAGLEV_M";
    /// Table id → [`crate::MaglevTableL`].
    pub const MAGLEV_L: &str = "LB_MAGLEV_L";
    /// Table id → [`crate::MaglevMeta`] (user space only).
    pub const MAGLEV_META: &str = "LB_MAGLEV_META";
    /// [`crate::AffinityKey`] → [`crate::AffinityValue`] (LRU).
    pub const AFFINITY: &str = "LB_AFFINITY";
    /// [`crate::AffinityMatchKey`] → `u32` (present when the backend belongs to the service).
    pub const AFFINITY_MATCH: &str = "LB_AFFINITY_MATCH";
    /// [`crate::ReverseSkKey`] → [`crate::ReverseSkValue`] (LRU): socket-level reverse translation.
    pub const REVERSE_SK: &str = "LB_REVERSE_SK";
    /// [`crate::CtKey`] → [`crate::CtValue`] (LRU): connection tracking of the tc path.
    pub const CONNTRACK: &str = "LB_CT";
    /// Per-CPU [`crate::Counters`] indexed by service id.
    pub const SERVICE_STATS: &str = "LB_SERVICE_STATS";
    /// Per-CPU [`crate::Counters`] indexed by backend id.
    pub const BACKEND_STATS: &str = "LB_BACKEND_STATS";
    /// Per-CPU `u64` event counters indexed by [`crate::Event`].
    pub const EVENTS: &str = "LB_EVENTS";
    /// One [`crate::Config`] at index 0.
    pub const CONFIG: &str = "LB_CONFIG";
    /// LPM trie: IPv4 prefix → peer identity (NetworkPolicy).
    pub const POL_IPCACHE: &str = "POL_IPCACHE";
    /// Host-side veth ifindex → [`crate::PolEndpoint`].
    pub const POL_ENDPOINTS: &str = "POL_ENDPOINTS";
    /// LPM trie: [`crate::PolRuleData`] → [`crate::PolRuleValue`].
    pub const POL_RULES: &str = "POL_RULES";
    /// [`crate::PolCtKey`] → [`crate::PolCtValue`] (LRU).
    pub const POL_CT: &str = "POL_CT";
    /// Per-CPU [`crate::PolStatsKey`] → `u64` new flows.
    pub const POL_STATS: &str = "POL_STATS";
    /// Ring buffer of [`crate::PolVerdict`].
    pub const POL_VERDICTS: &str = "POL_VERDICTS";
    /// One [`crate::PolConfig`] at index 0.
    pub const POL_CONFIG: &str = "POL_CONFIG";
    /// [`crate::CtKey`] → [`crate::NatEntry`] (LRU): pod egress masquerade.
    pub const NAT: &str = "LB_NAT";
    /// LPM trie: IPv4 prefix → `u32` (1): destinations that keep the pod's address.
    pub const NAT_EXCLUDE: &str = "LB_NAT_EXCLUDE";
    /// One [`crate::NatConfig`] at index 0.
    pub const NAT_CONFIG: &str = "LB_NAT_CONFIG";
    /// Per-CPU `u64` counters indexed by [`crate::NatEvent`].
    pub const NAT_STATS: &str = "LB_NAT_STATS";
    /// LoadBalancer address (`u32`, network order) → [`crate::L2Entry`]: ARP answered by this node.
    pub const L2_ANNOUNCE: &str = "LB_L2_ANNOUNCE";

    /// Every map, in the order the loader pins them.
    pub const ALL: [&str; 26] = [
        SERVICES,
        BACKENDS,
        MAGLEV_S,
        MAGLEV_M,
        MAGLEV_L,
        MAGLEV_META,
        AFFINITY,
        AFFINITY_MATCH,
        REVERSE_SK,
        CONNTRACK,
        SERVICE_STATS,
        BACKEND_STATS,
        EVENTS,
        CONFIG,
        POL_IPCACHE,
        POL_ENDPOINTS,
        POL_RULES,
        POL_CT,
        POL_STATS,
        POL_VERDICTS,
        POL_CONFIG,
        NAT,
        NAT_EXCLUDE,
        NAT_CONFIG,
        NAT_STATS,
        L2_ANNOUNCE,
    ];
}

/// Names of the programs in the BPF object.
pub mod programs {
    /// cgroup `connect4`: rewrites a connect to a service address into a connect to a backend.
    pub const CONNECT4: &str = "skiff_connect4";
    /// cgroup `sendmsg4`: the same for unconnected UDP `sendto`.
    pub const SENDMSG4: &str = "skiff_sendmsg4";
    /// cgroup `connect4` on the node's cgroup: the same for ClusterIPs and NodePorts only.
    pub const CONNECT4_NODE: &str = "skiff_connect4_node";
    /// cgroup `sendmsg4` on the node's cgroup: the same for ClusterIPs and NodePorts only.
    pub const SENDMSG4_NODE: &str = "skiff_sendmsg4_node";
    /// cgroup `recvmsg4`: makes replies from a backend look like they come from the service address.
    pub const RECVMSG4: &str = "skiff_recvmsg4";
    /// cgroup `getpeername4`: reports the service address as the peer of a balanced socket.
    pub const GETPEERNAME4: &str = "skiff_getpeername4";
    /// tc ingress on the node interface: NodePort / LoadBalancer / externalIPs DNAT (+SNAT) and reverse SNAT.
    pub const TC_INGRESS: &str = "skiff_tc_ingress";
    /// tc egress on the node interface: reverse DNAT of replies from local backends, and pod egress masquerade.
    pub const TC_EGRESS: &str = "skiff_tc_egress";
    /// tc ingress on a pod's host-side veth: NetworkPolicy egress of the pod.
    pub const POL_FROM_POD: &str = "skiff_pol_from_pod";
    /// tc egress on a pod's host-side veth: NetworkPolicy ingress of the pod.
    pub const POL_TO_POD: &str = "skiff_pol_to_pod";
}

/// Limits shared by the programs and the loader.
pub mod limits {
    /// The most backend slots one frontend may have (slot numbers are `u16`, slot 0 is the header).
    pub const MAX_SLOTS: u16 = u16::MAX - 1;
    /// Default Maglev table size (a prime, as Maglev requires).
    pub const MAGLEV_DEFAULT_SIZE: u32 = 16_381;
    /// How many SNAT source ports the tc program tries before it gives up on a new flow.
    pub const SNAT_PORT_ATTEMPTS: u32 = 8;
}

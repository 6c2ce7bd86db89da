//! The map keys and values, each defined once.

/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Scope of a service entry looked up by the socket hooks: traffic that starts on this node (pods, the node itself).
/// Uses the internal traffic policy.
pub const SCOPE_INTERNAL: u8 = 0;
/// Scope of a service entry looked up by the tc program: traffic arriving from outside the node. Uses the external
/// traffic policy.
pub const SCOPE_EXTERNAL: u8 = 1;

/// [`ServiceValue::flags`]: the frontend is a NodePort on a node address.
pub const SVC_F_NODEPORT: u16 = 1;
/// [`ServiceValue::flags`]: the frontend is a LoadBalancer ingress address.
pub const SVC_F_LOADBALANCER: u16 = 2;
/// [`ServiceValue::flags`]: the frontend is one of `spec.externalIPs`.
pub const SVC_F_EXTERNAL_IP: u16 = 4;
/// [`ServiceValue::flags`]: only endpoints on this node are used (traffic policy `Local`).
pub const SVC_F_LOCAL_ONLY: u16 = 8;
/// [`ServiceValue::flags`]: the backends are serving-but-terminating endpoints (no ready endpoint exists).
pub const SVC_F_TERMINATING_FALLBACK: u16 = 16;

/// [`Backend::flags`]: the endpoint runs on this node (the tc path needs no SNAT to reach it).
pub const BACKEND_F_LOCAL: u8 = 1;
/// [`Backend::flags`]: the endpoint is terminating (used only as a fallback).
pub const BACKEND_F_TERMINATING: u8 = 2;
/// [`Backend::flags`]: no frontend selects the endpoint any more (it is terminating or not ready) and it is kept only
/// for the flows it has: the tc path balances a SYN that reuses the tuple of such a flow again.
pub const BACKEND_F_DRAINING: u8 = 4;

/// [`AffinityKey::kind`]: the client is identified by its network namespace cookie (socket hooks).
pub const AFFINITY_NETNS: u32 = 0;
/// [`AffinityKey::kind`]: the client is identified by its IPv4 address (tc path).
pub const AFFINITY_ADDR: u32 = 1;

/// [`CtValue::flags`]: after rewriting, send the packet out through a FIB lookup (`bpf_redirect_neigh`) instead of
/// passing it to the stack. Used where the rewritten packet has the node's own address as source, which the stack
/// would drop as martian.
pub const CT_F_REDIRECT: u8 = 1;
/// [`CtValue::flags`]: the entry translates packets leaving through egress (replies of local backends); entries
/// without it apply on ingress.
pub const CT_F_EGRESS: u8 = 2;

/// Key of [`crate::maps::SERVICES`]: one frontend (address, port, protocol, scope) and one slot of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend IPv4 address, network byte order.
    pub addr: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    /// 0 for the service header, `1..=count` for backend slots (host order).
    pub slot: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`SCOPE_INTERNAL`] or [`SCOPE_EXTERNAL`].
    pub scope: u8,
    /// Padding, always zero.
    pub pad: [u8; 2],
}

/// Value of [`crate::maps::SERVICES`]. Slot 0 (the header) fills every field but `backend_id`; slots `1..=count`
/// fill `backend_id` and `service_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Slot n: the backend in this slot. Header: 0.
    pub backend_id: u32,
    /// The service port this frontend belongs to: index into the stats map and part of affinity keys.
    pub service_id: u32,
    /// Header: the Maglev table (in the map of its size class), or 0 when `count <= 1` (no table needed).
    pub table_id: u32,
    /// Header: size M of that table (the program indexes it with `hash % M`; M also selects the size class).
    pub table_size: u32,
    /// Header: sessionAffinity ClientIP timeout in seconds, 0 without affinity.
    pub affinity_timeout: u32,
    /// Header: generation of the applier run that last wrote this frontend.
    pub generation: u32,
    /// Header: number of backend slots; 0 means "no endpoints: refuse".
    pub count: u16,
    /// Header: `SVC_F_*` flags.
    pub flags: u16,
    /// Padding, always zero.
    pub pad: u32,
}

/// Value of [`crate::maps::BACKENDS`]: one endpoint address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Endpoint IPv4 address, network byte order.
    pub addr: u32,
    /// Endpoint port, network byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// `BACKEND_F_*` flags.
    pub flags: u8,
}

/// Key of [`crate::maps::AFFINITY`]: a client of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Network namespace cookie ([`AFFINITY_NETNS`]) or IPv4 address in network order ([`AFFINITY_ADDR`]).
    pub client: u64,
    /// The service port.
    pub service_id: u32,
    /// [`AFFINITY_NETNS`] or [`AFFINITY_ADDR`].
    pub kind: u32,
}

/// Value of [`crate::maps::AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// The backend the client stays on.
    pub backend_id: u32,
    /// When the client last used it, in seconds of `bpf_ktime_get_ns`.
    pub last_used: u32,
}

/// Key of [`crate::maps::AFFINITY_MATCH`]: present while the backend belongs to the service, so an affinity entry
/// never sends a client to a backend that has left the service (or became unready).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityMatchKey {
    /// The backend.
    pub backend_id: u32,
    /// The service port.
    pub service_id: u32,
}

/// Key of [`crate::maps::REVERSE_SK`]: a balanced socket and the backend it was connected to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReverseSkKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Padding, always zero.
    pub pad: u16,
}

/// Value of [`crate::maps::REVERSE_SK`]: the service address the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReverseSkValue {
    /// Service IPv4 address, network byte order.
    pub addr: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// Padding, always zero.
    pub pad: u16,
}

/// Key of [`crate::maps::CONNTRACK`]: the 5-tuple of a packet as the tc program sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source IPv4 address, network byte order.
    pub saddr: u32,
    /// Destination IPv4 address, network byte order.
    pub daddr: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Padding, always zero.
    pub pad: [u8; 3],
}

/// Value of [`crate::maps::CONNTRACK`]: how to rewrite packets of this tuple. A zero address means "keep".
///
/// Three kinds of entries exist per flow: the forward entry (client → service, on ingress: DNAT and, for remote
/// backends, SNAT), the reply entry of a local backend (backend → client, on egress: source back to the service), and
/// the reply entry of an SNAT-ed flow (backend → node, on ingress: both addresses back, then redirect).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// New source address (network order), 0 to keep.
    pub saddr: u32,
    /// New destination address (network order), 0 to keep.
    pub daddr: u32,
    /// New source port (network order); used when `saddr != 0`.
    pub sport: u16,
    /// New destination port (network order); used when `daddr != 0`.
    pub dport: u16,
    /// The backend of the flow (for counters and to notice a removed backend).
    pub backend_id: u32,
    /// The service port of the flow (for counters).
    pub service_id: u32,
    /// `CT_F_*` flags.
    pub flags: u8,
    /// Padding, always zero.
    pub pad: [u8; 3],
}

/// Value of the Maglev table maps: a whole lookup table of up to `N` backend ids, of which the first `size` are
/// used (`hash % size`). Written as one value, so a program sees either the old or the new table, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevTable<const N: usize> {
    /// M, the number of entries in use (a prime `<= N`).
    pub size: u32,
    /// A fingerprint of the backend ids and M the table was built from (lets a restarted agent trust it).
    pub fingerprint: u32,
    /// Backend ids; entries from `size` on are zero.
    pub entries: [u32; N],
}

/// Value of [`crate::maps::MAGLEV_META`]: size and fingerprint of a published table, read back by a restarted agent
/// (tables themselves are too large to read cheaply). Programs do not use it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MaglevMeta {
    /// M.
    pub size: u32,
    /// [`MaglevTable::fingerprint`].
    pub fingerprint: u32,
}

/// Table capacity of the small Maglev class ([`crate::maps::MAGLEV_S`]).
pub const MAGLEV_S: usize = 1_021;
/// Table capacity of the default Maglev class ([`crate::maps::MAGLEV_M`]).
pub const MAGLEV_M: usize = 16_381;
/// Table capacity of the large Maglev class ([`crate::maps::MAGLEV_L`]).
pub const MAGLEV_L: usize = 65_521;

/// A small Maglev table (M <= 1021).
pub type MaglevTableS = MaglevTable<MAGLEV_S>;
/// A default-size Maglev table (M <= 16381).
pub type MaglevTableM = MaglevTable<MAGLEV_M>;
/// A large Maglev table (M <= 65521).
pub type MaglevTableL = MaglevTable<MAGLEV_L>;

/// Per-CPU counters of a service port or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    /// Packets forwarded by the tc path.
    pub packets: u64,
    /// Bytes (IP length) forwarded by the tc path.
    pub bytes: u64,
    /// New connections: connects/sendmsgs balanced by the socket hooks plus new flows of the tc path.
    pub connections: u64,
    /// Connections refused because the service had no endpoints.
    pub refused: u64,
}

/// The single value of [`crate::maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// Node IPv4 address used as the source when the tc path forwards to a backend on another node (network
    /// order); 0 disables forwarding to remote backends from the tc path.
    pub snat_addr: u32,
    /// First source port used for SNAT (host order).
    pub nat_port_min: u16,
    /// Last source port used for SNAT (host order).
    pub nat_port_max: u16,
    /// Generation of the last completed applier run.
    pub generation: u32,
    /// Reserved, always zero.
    pub flags: u32,
}

/// Indexes of the per-CPU event counters in [`crate::maps::EVENTS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A socket connect/sendmsg to a service was rewritten to a backend.
    SockBalanced = 0,
    /// A socket connect/sendmsg to a service without endpoints was refused.
    SockRefused = 1,
    /// A selected backend id had no backend entry (a concurrent update); the connect was refused.
    SockBackendMissing = 2,
    /// A reply address was translated back to the service address (recvmsg/getpeername).
    SockReverse = 3,
    /// The tc path opened a new flow (DNAT).
    TcNewFlow = 4,
    /// The tc path rewrote a packet of a known flow.
    TcTracked = 5,
    /// The tc path let an IPv4 fragment pass untouched.
    TcFragmentPassed = 6,
    /// The tc path let an ICMP packet pass untouched.
    TcIcmpPassed = 7,
    /// The tc path dropped a packet to a service without endpoints.
    TcNoEndpointDrop = 8,
    /// The tc path found no free SNAT port for a new flow and dropped it.
    TcSnatExhausted = 9,
    /// The FIB lookup for a redirected packet failed; the packet was dropped.
    TcFibFailed = 10,
    /// A conntrack entry could not be written.
    CtInsertFailed = 11,
    /// A client was sent to the backend remembered by session affinity.
    AffinityHit = 12,
    /// A remote backend was selected while SNAT is disabled (no node address); the packet was dropped.
    TcNoSnatAddress = 13,
}

impl Event {
    /// Number of event counters (size of the events map).
    pub const COUNT: u32 = 14;
    /// Every event, in index order.
    pub const ALL: [Event; 14] = [
        Event::SockBalanced,
        Event::SockRefused,
        Event::SockBackendMissing,
        Event::SockReverse,
        Event::TcNewFlow,
        Event::TcTracked,
        Event::TcFragmentPassed,
        Event::TcIcmpPassed,
        Event::TcNoEndpointDrop,
        Event::TcSnatExhausted,
        Event::TcFibFailed,
        Event::CtInsertFailed,
        Event::AffinityHit,
        Event::TcNoSnatAddress,
    ];

    /// A stable snake_case name, used as a metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Event::SockBalanced => "sock_balanced",
            Event::SockRefused => "sock_refused",
            Event::SockBackendMissing => "sock_backend_missing",
            Event::SockReverse => "sock_reverse",
            Event::TcNewFlow => "tc_new_flow",
            Event::TcTracked => "tc_tracked",
            Event::TcFragmentPassed => "tc_fragment_passed",
            Event::TcIcmpPassed => "tc_icmp_passed",
            Event::TcNoEndpointDrop => "tc_no_endpoint_drop",
            Event::TcSnatExhausted => "tc_snat_exhausted",
            Event::TcFibFailed => "tc_fib_failed",
            Event::CtInsertFailed => "ct_insert_failed",
            Event::AffinityHit => "affinity_hit",
            Event::TcNoSnatAddress => "tc_no_snat_address",
        }
    }
}

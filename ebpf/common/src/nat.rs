//! Pod egress masquerade (source NAT to the node address) shared by the tc programs and user space (see
//! `docs/lb.md`, "Pod egress").
//!
//! - [`crate::maps::NAT`]: LRU, [`crate::CtKey`] → [`NatEntry`]. Two entries per flow: the forward entry (the pod's
//!   tuple, on the node interface's egress: new source address and port) and the reply entry (the outside peer's
//!   tuple towards the node's translated port, on ingress: the pod's address and port back). The reply entry is the
//!   flow's record: it holds the last time either direction was seen and the TCP close state, and its key is what
//!   makes a translated port unique (inserted with `BPF_NOEXIST`).
//! - [`crate::maps::NAT_EXCLUDE`]: LPM trie of destinations that keep the pod's address (the cluster CIDR, and what
//!   the user lists with `--no-masquerade-to`).
//! - [`crate::maps::NAT_CONFIG`]: one [`NatConfig`].
//! - [`crate::maps::NAT_STATS`]: per-CPU counters indexed by [`NatEvent`].
//!
//! Only flows the pod opens are translated: a TCP flow from its SYN, an ICMP echo from its request, and a UDP flow
//! unless a peer outside the cluster opened it (ingress records such flows as [`NAT_KIND_PASS`] entries under the
//! pod's tuple). The pod's replies to NodePort traffic another node forwarded to it keep the pod's address, so the
//! forwarding node can translate them back.
//!
//! ICMP echo flows use the echo identifier as the pod-side "port": forward key `(pod, peer, id, 0)`, reply key
//! `(peer, node, 0, translated id)`.

/// [`NatConfig::flags`]: masquerade is on.
pub const NAT_F_ENABLED: u32 = 1;

/// [`NatEntry::kind`]: the pod's side of a flow (rewrites the source on egress).
pub const NAT_KIND_FORWARD: u8 = 0;
/// [`NatEntry::kind`]: the peer's side of a flow (rewrites the destination on ingress).
pub const NAT_KIND_REPLY: u8 = 1;

/// [`NatEntry::kind`]: a flow a peer outside the cluster opened towards the pod (UDP; TCP is told apart by its
/// SYN): the pod's packets of it are replies and keep the pod's address, until it idles out ([`NAT_TIMEOUT_UDP`]).
pub const NAT_KIND_PASS: u8 = 2;

/// [`NatEntry::state`]: the pod sent a FIN.
pub const NAT_ST_FIN_OUT: u8 = 1;
/// [`NatEntry::state`]: the peer sent a FIN.
pub const NAT_ST_FIN_IN: u8 = 2;
/// [`NatEntry::state`]: either side sent a RST.
pub const NAT_ST_RST: u8 = 4;
/// [`NatEntry::state`]: the peer answered at least once.
pub const NAT_ST_REPLIED: u8 = 8;

const SECOND: u64 = 1_000_000_000;
/// A TCP flow closed by both FINs frees its port for another pod after this long (ns), as Cilium's close timeout:
/// the peer may hold TIME_WAIT for the translated tuple (which side closed first cannot be told from the FINs alone
/// when they cross), and a SYN from a different pod (other timestamps) could be refused by it.
pub const NAT_TIMEOUT_TCP_CLOSED: u64 = 10 * SECOND;
/// A TCP flow reset, or closed and reopened by the same pod (its timestamps towards that peer keep increasing, so
/// a peer's TIME_WAIT accepts the new SYN: RFC 6191), frees its port after this long (ns): enough for a last ACK or
/// a retransmitted FIN to pass.
pub const NAT_TIMEOUT_TCP_QUICK: u64 = SECOND;
/// A TCP flow the peer never answered frees its port after this long idle (ns).
pub const NAT_TIMEOUT_TCP_OPENING: u64 = 60 * SECOND;
/// An established TCP flow frees its port after this long idle (ns), as Cilium's TCP lifetime.
pub const NAT_TIMEOUT_TCP: u64 = 6 * 3600 * SECOND;
/// A UDP flow frees its port after this long idle (ns).
pub const NAT_TIMEOUT_UDP: u64 = 60 * SECOND;
/// An ICMP echo flow frees its identifier after this long idle (ns).
pub const NAT_TIMEOUT_ICMP: u64 = 30 * SECOND;

/// The single value of [`crate::maps::NAT_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatConfig {
    /// The address pod traffic leaves with (network order).
    pub addr: u32,
    /// Sources that are masqueraded: the cluster CIDR's address (network order) …
    pub src_net: u32,
    /// … and mask (network order).
    pub src_mask: u32,
    /// First translated port or echo identifier (host order).
    pub port_min: u16,
    /// Last translated port or echo identifier (host order).
    pub port_max: u16,
    /// `NAT_F_*`.
    pub flags: u32,
}

impl NatConfig {
    /// Whether a packet from `saddr` to `daddr` (network order) leaving the node is a masquerade candidate, before
    /// the exclusion list is consulted: masquerade is on, the source is a pod, and the destination is not.
    #[inline(always)]
    pub fn candidate(&self, saddr: u32, daddr: u32) -> bool {
        self.flags & NAT_F_ENABLED != 0
            && saddr & self.src_mask == self.src_net
            && daddr & self.src_mask != self.src_net
            && self.addr != 0
            && self.port_max >= self.port_min
    }
}

/// Value of [`crate::maps::NAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatEntry {
    /// Forward entry: the new source address; reply entry: the pod's address (network order).
    pub addr: u32,
    /// Forward entry: the new source port or echo id; reply entry: the pod's (network order).
    pub port: u16,
    /// `NAT_KIND_*`.
    pub kind: u8,
    /// `NAT_ST_*` (kept on the reply entry).
    pub state: u8,
    /// `bpf_ktime_get_ns` when either direction was last seen (kept on the reply entry).
    pub last_seen: u64,
}

impl NatEntry {
    /// How long this entry may stay idle before its flow is over (closed TCP: [`NAT_TIMEOUT_TCP_CLOSED`]).
    pub fn lifetime(&self, proto: u8) -> u64 {
        let closed = self.state & (NAT_ST_FIN_OUT | NAT_ST_FIN_IN) == NAT_ST_FIN_OUT | NAT_ST_FIN_IN;
        match proto {
            crate::PROTO_TCP if self.state & NAT_ST_RST != 0 || closed => NAT_TIMEOUT_TCP_CLOSED,
            crate::PROTO_TCP if self.state & NAT_ST_REPLIED == 0 => NAT_TIMEOUT_TCP_OPENING,
            crate::PROTO_TCP => NAT_TIMEOUT_TCP,
            crate::PROTO_UDP => NAT_TIMEOUT_UDP,
            _ => NAT_TIMEOUT_ICMP,
        }
    }

    /// Whether a reply or pass entry's flow is over at `now` (ns): such an entry translates nothing any more (a
    /// node socket may use the same tuple later).
    pub fn expired(&self, proto: u8, now: u64) -> bool {
        now.saturating_sub(self.last_seen) > self.lifetime(proto)
    }

    /// Whether a reply entry's port may be given to a new flow of the pod at `pod` (network order) at `now` (ns):
    /// the flow it belonged to is closed or idle past its protocol's timeout. A forward entry is never reusable by
    /// itself.
    pub fn reusable(&self, proto: u8, now: u64, pod: u32) -> bool {
        if self.kind != NAT_KIND_REPLY {
            return false;
        }
        let idle = now.saturating_sub(self.last_seen);
        let closed = self.state & (NAT_ST_FIN_OUT | NAT_ST_FIN_IN) == NAT_ST_FIN_OUT | NAT_ST_FIN_IN;
        let timeout = match proto {
            crate::PROTO_TCP if self.state & NAT_ST_RST != 0 => NAT_TIMEOUT_TCP_QUICK,
            crate::PROTO_TCP if closed && self.addr == pod => NAT_TIMEOUT_TCP_QUICK,
            _ => self.lifetime(proto),
        };
        idle > timeout
    }
}

/// Value of [`crate::maps::L2_ANNOUNCE`]: a LoadBalancer address this node answers ARP for, on which interface,
/// until when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct L2Entry {
    /// `CLOCK_MONOTONIC` ns (`bpf_ktime_get_ns`) after which the entry is ignored: the agent extends it on every
    /// Lease renewal, so a killed or stuck agent stops answering by itself before another node takes over.
    pub expires: u64,
    /// The interface (ifindex) requests arrive on and replies leave by.
    pub ifindex: u32,
    /// That interface's MAC address.
    pub mac: [u8; 6],
    /// Padding, always zero.
    pub pad: [u8; 6],
}

/// Indexes of the per-CPU counters in [`crate::maps::NAT_STATS`] (masquerade, and ARP answers of L2 announcement).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatEvent {
    /// A new TCP flow was translated.
    NewTcp = 0,
    /// A new UDP flow was translated.
    NewUdp = 1,
    /// A new ICMP echo flow was translated.
    NewIcmp = 2,
    /// No free port was found for a new flow; its packet was dropped.
    PortExhausted = 3,
    /// A port of a closed or idle flow was given to a new one.
    PortReused = 4,
    /// An ICMP error about a translated flow was translated back to the pod.
    IcmpErrorTranslated = 5,
    /// A fragment of a pod's packet left untranslated (the tc path does not reassemble).
    FragmentUntranslated = 6,
    /// A map write failed; the packet was dropped.
    InsertFailed = 7,
    /// An ARP request for an announced LoadBalancer address was answered (L2 announcement).
    ArpAnswered = 8,
}

impl NatEvent {
    /// Number of counters.
    pub const COUNT: u32 = 9;
    /// Every counter, in index order.
    pub const ALL: [NatEvent; 9] = [
        NatEvent::NewTcp,
        NatEvent::NewUdp,
        NatEvent::NewIcmp,
        NatEvent::PortExhausted,
        NatEvent::PortReused,
        NatEvent::IcmpErrorTranslated,
        NatEvent::FragmentUntranslated,
        NatEvent::InsertFailed,
        NatEvent::ArpAnswered,
    ];

    /// A stable snake_case name, used as a metric label.
    pub const fn name(self) -> &'static str {
        match self {
            NatEvent::NewTcp => "new_tcp",
            NatEvent::NewUdp => "new_udp",
            NatEvent::NewIcmp => "new_icmp",
            NatEvent::PortExhausted => "port_exhausted",
            NatEvent::PortReused => "port_reused",
            NatEvent::IcmpErrorTranslated => "icmp_error_translated",
            NatEvent::FragmentUntranslated => "fragment_untranslated",
            NatEvent::InsertFailed => "insert_failed",
            NatEvent::ArpAnswered => "arp_answered",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PROTO_TCP, PROTO_UDP};

    fn reply(state: u8, last_seen: u64) -> NatEntry {
        NatEntry { addr: 1, port: 2, kind: NAT_KIND_REPLY, state, last_seen }
    }

    #[test]
    fn a_port_is_reused_only_after_its_flow_closed_or_idled_out() {
        let t0 = 1_000 * SECOND;
        // (state, proto, idle seconds, reusable)
        const R: u8 = NAT_ST_REPLIED;
        const CLOSED: u8 = NAT_ST_REPLIED | NAT_ST_FIN_OUT | NAT_ST_FIN_IN;
        let (same_pod, other_pod) = (1, 7); // reply() records pod address 1
        // (state, proto, idle ms, the new flow's pod, reusable)
        let table: &[(u8, u8, u64, u32, bool)] = &[
            (R, PROTO_TCP, 3_600_000, other_pod, false),
            (R, PROTO_TCP, 6 * 3_600_000 + 1, other_pod, true),
            (0, PROTO_TCP, 59_000, other_pod, false),
            (0, PROTO_TCP, 61_000, other_pod, true),
            (R | NAT_ST_FIN_OUT, PROTO_TCP, 11_000, other_pod, false),
            // the peer may hold TIME_WAIT: another pod waits 10 s, the same pod 1 s
            (CLOSED, PROTO_TCP, 9_000, other_pod, false),
            (CLOSED, PROTO_TCP, 11_000, other_pod, true),
            (CLOSED, PROTO_TCP, 900, same_pod, false),
            (CLOSED, PROTO_TCP, 1_100, same_pod, true),
            (R | NAT_ST_RST, PROTO_TCP, 900, other_pod, false),
            (R | NAT_ST_RST, PROTO_TCP, 1_100, other_pod, true),
            (R, PROTO_UDP, 59_000, other_pod, false),
            (R, PROTO_UDP, 61_000, other_pod, true),
            (R, 1, 29_000, other_pod, false),
            (R, 1, 31_000, other_pod, true),
        ];
        for &(state, proto, idle, pod, want) in table {
            let e = reply(state, t0);
            let now = t0 + idle * 1_000_000;
            assert_eq!(e.reusable(proto, now, pod), want, "state {state:#x} proto {proto} idle {idle} ms pod {pod}");
        }
        let forward = NatEntry { kind: NAT_KIND_FORWARD, ..reply(NAT_ST_RST, 0) };
        assert!(!forward.reusable(PROTO_TCP, t0, other_pod), "forward entries are not port records");
        // a clock that went backwards (last_seen written on another CPU a moment later) is not idle
        assert!(!reply(0, t0 + SECOND).reusable(PROTO_UDP, t0, other_pod));
    }

    #[test]
    fn only_pod_traffic_to_outside_the_cluster_is_a_candidate() {
        let be = |a: [u8; 4]| u32::from_ne_bytes(a);
        let cfg = NatConfig {
            addr: be([192, 168, 50, 11]),
            src_net: be([10, 244, 0, 0]),
            src_mask: be([255, 255, 0, 0]),
            port_min: 61_000,
            port_max: 65_535,
            flags: NAT_F_ENABLED,
        };
        assert!(cfg.candidate(be([10, 244, 0, 2]), be([192, 168, 50, 100])));
        assert!(!cfg.candidate(be([10, 244, 0, 2]), be([10, 244, 1, 5])), "pod to pod keeps its source");
        assert!(!cfg.candidate(be([192, 168, 50, 11]), be([192, 168, 50, 100])), "the node's own traffic");
        assert!(!NatConfig { flags: 0, ..cfg }.candidate(be([10, 244, 0, 2]), be([192, 168, 50, 100])));
        assert!(!NatConfig { addr: 0, ..cfg }.candidate(be([10, 244, 0, 2]), be([192, 168, 50, 100])));
    }
}

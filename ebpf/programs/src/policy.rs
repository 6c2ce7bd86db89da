//! NetworkPolicy on a pod's host-side veth: tc ingress judges what the pod sends (its egress policy), tc egress what
//! it receives (its ingress policy).
//!
//! Per packet: the endpoint behind the veth ([`POL_ENDPOINTS`]; none: not ours, pass). A flow this hook allowed
//! before passes, and so does a reply of a flow the other hook of the same pod allowed ([`POL_CT`]), unless the
//! policy generation moved since: then the flow is judged again and its entry removed when now denied. A new flow is
//! judged: the peer's identity from the ip cache (the node itself always passes), then, if the pod is isolated in
//! that direction, a rule for the peer's identity or for any peer, the protocol and the port ([`POL_RULES`]).
//! Allowed: tracked and passed; denied: dropped. Every new-flow verdict is counted; what a policy decided also goes
//! to the ring buffer.
//!
//! A packet out of the pod whose source is not the pod's address is dropped (no policy can be evaded by spoofing), and
//! so is an ARP packet claiming another address. An isolated pod sends and receives nothing but IPv4 and ARP, and no
//! IPv4 packet that is not addressed to it (broadcast, multicast). Only packets that can open a flow are tracked (for
//! TCP, a SYN); a stale tracked flow that is now denied is dropped in both directions. Non-first IPv4 fragments
//! carry no ports and pass after the source check: the first fragment was judged, and without it the rest cannot be
//! reassembled. Errors reading a packet drop it.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_SHOT},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use skiff_ebpf_common::{
    DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, IDENTITY_HOST, IDENTITY_WORLD, PEER_ANY,
    PROTO_TCP, PROTO_UDP, PolCtKey, PolCtValue, PolEndpoint, PolRuleData, PolStatsKey, PolVerdict,
    RULE_PREFIX_ONE_PORT, VERDICT_ALLOWED, VERDICT_DENIED, VERDICT_HOST, VERDICT_NOT_ISOLATED, VERDICT_REVOKED,
    VERDICT_SPOOFED,
};

use crate::{
    maps::{POL_CONFIG, POL_CT, POL_ENDPOINTS, POL_IPCACHE, POL_RULES, POL_STATS, POL_VERDICTS},
    packet::{ETH_HLEN, Ipv4Hdr, PROTO_ICMP},
    tc::NEXT,
};

const ETH_P_IP: u16 = 0x0800;
const PROTO_SCTP: u8 = 132;

/// Packets the pod sends.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    judge(ctx, DIR_EGRESS).unwrap_or(TC_ACT_SHOT)
}

/// Packets to the pod.
#[inline(always)]
pub fn to_pod(ctx: &TcContext) -> i32 {
    judge(ctx, DIR_INGRESS).unwrap_or(TC_ACT_SHOT)
}

/// A packet's tuple (ports 0 for protocols without ports).
struct Tuple {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    /// A non-first IPv4 fragment (no ports).
    fragment: bool,
    /// TCP with SYN and without ACK: the only packet that opens a tracked TCP flow.
    opens: bool,
}

/// What a frame is.
enum Frame {
    Ipv4(Tuple),
    /// ARP, with the sender's protocol address (network order).
    Arp(u32),
    /// Anything else (IPv6 among them; the cluster network is IPv4).
    Other,
}

const ETH_P_ARP: u16 = 0x0806;
const TCP_FLAGS: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Frame, i64> {
    let ethertype: u16 = ctx.load(12)?;
    let ethertype = u16::from_be(ethertype);
    if ethertype == ETH_P_ARP {
        // Ethernet/IPv4 ARP: the sender protocol address follows 8 bytes of header and the 6-byte sender MAC.
        let sender: u32 = ctx.load(ETH_HLEN + 14)?;
        return Ok(Frame::Arp(sender));
    }
    if ethertype != ETH_P_IP {
        return Ok(Frame::Other);
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN)?;
    if ip.vihl >> 4 != 4 {
        return Err(-1);
    }
    let mut t = Tuple {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: 0,
        dport: 0,
        proto: ip.proto,
        fragment: u16::from_be(ip.frag_off) & 0x1fff != 0,
        opens: false,
    };
    if t.fragment {
        return Ok(Frame::Ipv4(t));
    }
    if ip.proto == PROTO_TCP || ip.proto == PROTO_UDP || ip.proto == PROTO_SCTP {
        let ihl = ((ip.vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Err(-1);
        }
        let ports: [u16; 2] = ctx.load(ETH_HLEN + ihl)?;
        t.sport = ports[0];
        t.dport = ports[1];
        if ip.proto == PROTO_TCP {
            let flags: u8 = ctx.load(ETH_HLEN + ihl + TCP_FLAGS)?;
            t.opens = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        }
    }
    let _ = PROTO_ICMP;
    Ok(Frame::Ipv4(t))
}

/// What judging a flow found.
struct Decision {
    verdict: u8,
    policy: u32,
    peer: u32,
}

impl Decision {
    fn allowed(&self) -> bool {
        self.verdict != VERDICT_DENIED
    }
}

#[inline(always)]
fn judge(ctx: &TcContext, dir: u8) -> Result<i32, i64> {
    // SAFETY: the context pointer of this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied at once.
    let Some(ep) = (unsafe { POL_ENDPOINTS.get(&ifindex).copied() }) else {
        return Ok(NEXT);
    };
    let flag = if dir == DIR_INGRESS { EP_F_INGRESS_ISOLATED } else { EP_F_EGRESS_ISOLATED };
    let isolated = (ep.flags & flag) != 0;
    let t = match parse(ctx)? {
        Frame::Ipv4(t) => t,
        // A pod may answer and ask for its own address only.
        Frame::Arp(sender) if dir == DIR_EGRESS && sender != ep.addr => return Ok(TC_ACT_SHOT),
        Frame::Arp(_) => return Ok(NEXT),
        // Not IPv4 (IPv6 link-local, say): an isolated pod neither sends nor receives it.
        Frame::Other if isolated => return Ok(TC_ACT_SHOT),
        Frame::Other => return Ok(NEXT),
    };
    if dir == DIR_EGRESS && t.saddr != ep.addr {
        let spoofed = Decision { verdict: VERDICT_SPOOFED, policy: 0, peer: 0 };
        report(&t, dir, &ep, &spoofed, ifindex);
        return Ok(TC_ACT_SHOT);
    }
    if dir == DIR_INGRESS && t.daddr != ep.addr {
        // Broadcast, multicast or a frame the bridge flooded: an isolated pod gets none of it.
        return Ok(if isolated { TC_ACT_SHOT } else { NEXT });
    }
    if t.fragment {
        // No ports to judge: the first fragment was judged, and the rest cannot be reassembled without it.
        return Ok(NEXT);
    }
    let (peer, other) = if dir == DIR_EGRESS { (t.daddr, DIR_INGRESS) } else { (t.saddr, DIR_EGRESS) };
    let generation = POL_CONFIG.get(0).map(|c| c.generation).unwrap_or(0);

    let key =
        PolCtKey { saddr: t.saddr, daddr: t.daddr, sport: t.sport, dport: t.dport, proto: t.proto, dir, pad: [0; 2] };
    // A flow this hook allowed; then a reply of a flow the pod's other hook allowed (judged again as that hook judged
    // it: same pod, same peer, its port).
    if let Some(verdict) = tracked(&key, &ep, dir, peer, t.dport, generation) {
        return Ok(settle(verdict, &t, dir, &ep, ifindex));
    }
    let reply = PolCtKey {
        saddr: t.daddr,
        daddr: t.saddr,
        sport: t.dport,
        dport: t.sport,
        proto: t.proto,
        dir: other,
        pad: [0; 2],
    };
    if let Some(verdict) = tracked(&reply, &ep, other, peer, t.sport, generation) {
        // A revoked flow: this side may not carry it on either (nor restart it as a flow of its own).
        return Ok(settle(verdict, &t, dir, &ep, ifindex));
    }

    let d = decide(&ep, dir, peer, t.proto, t.dport);
    // Only a packet that can open a flow is tracked: for TCP a SYN. Other untracked packets (of a flow revoked or
    // evicted from the table) are judged one by one, so a revoked connection cannot come back as a new one.
    let opens = t.proto != PROTO_TCP || t.opens;
    if !d.allowed() || opens {
        report(&t, dir, &ep, &d, ifindex);
    }
    if !d.allowed() {
        return Ok(TC_ACT_SHOT);
    }
    if opens {
        // A full table only means the flow is judged again on its next packet.
        let _ = POL_CT.insert(&key, &PolCtValue { generation, policy: d.policy }, BPF_ANY as u64);
    }
    Ok(NEXT)
}

/// For a tracked flow (`key` in the table): `None` when untracked, else `Ok` to pass it (judged again and refreshed
/// when the policy generation moved) or `Err` with the denial (the entry is then removed: the flow is revoked).
#[inline(always)]
fn tracked(
    key: &PolCtKey,
    ep: &PolEndpoint,
    dir: u8,
    peer: u32,
    port: u16,
    generation: u32,
) -> Option<Result<(), Decision>> {
    let ct = POL_CT.get_ptr_mut(key)?;
    // SAFETY: an element of this map; a concurrent writer can at worst store the same generation.
    if unsafe { (*ct).generation } == generation {
        return Some(Ok(()));
    }
    let d = decide(ep, dir, peer, key.proto, port);
    if d.allowed() {
        // SAFETY: as above.
        unsafe {
            (*ct).generation = generation;
            (*ct).policy = d.policy;
        }
        return Some(Ok(()));
    }
    let _ = POL_CT.remove(key);
    Some(Err(Decision { verdict: VERDICT_REVOKED, ..d }))
}

/// The verdict for a tracked flow: pass, or report the revocation and drop.
#[inline(always)]
fn settle(verdict: Result<(), Decision>, t: &Tuple, dir: u8, ep: &PolEndpoint, ifindex: u32) -> i32 {
    match verdict {
        Ok(()) => NEXT,
        Err(d) => {
            report(t, dir, ep, &d, ifindex);
            TC_ACT_SHOT
        }
    }
}

/// Judges a new flow of endpoint `ep` with the peer at `peer_addr`.
#[inline(always)]
fn decide(ep: &PolEndpoint, dir: u8, peer_addr: u32, proto: u8, port: u16) -> Decision {
    let addr = Key::new(32, peer_addr.to_ne_bytes());
    let peer = POL_IPCACHE.get(&addr).copied().unwrap_or(IDENTITY_WORLD);
    if peer == IDENTITY_HOST {
        return Decision { verdict: VERDICT_HOST, policy: 0, peer };
    }
    let isolated = if dir == DIR_INGRESS { EP_F_INGRESS_ISOLATED } else { EP_F_EGRESS_ISOLATED };
    if ep.flags & isolated == 0 {
        return Decision { verdict: VERDICT_NOT_ISOLATED, policy: 0, peer };
    }
    let port = port.to_ne_bytes();
    for p in [peer, PEER_ANY] {
        let rule = Key::new(RULE_PREFIX_ONE_PORT, PolRuleData::new(ep.identity, dir, p, proto, port));
        if let Some(v) = POL_RULES.get(&rule) {
            return Decision { verdict: VERDICT_ALLOWED, policy: v.policy, peer };
        }
    }
    Decision { verdict: VERDICT_DENIED, policy: 0, peer }
}

/// Counts a new-flow verdict and sends it to the ring buffer.
#[inline(always)]
fn report(t: &Tuple, dir: u8, ep: &PolEndpoint, d: &Decision, ifindex: u32) {
    let key = PolStatsKey { addr: ep.addr, policy: d.policy, dir, verdict: d.verdict, pad: [0; 2] };
    match POL_STATS.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of an element of this map.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = POL_STATS.insert(&key, &1u64, BPF_NOEXIST as u64);
        }
    }
    // Flows of pods no policy restricts, and flows with the node, are only counted: they are most of the traffic
    // and say nothing about policy (the ring is for what a policy decided).
    if d.verdict == VERDICT_NOT_ISOLATED || d.verdict == VERDICT_HOST {
        return;
    }
    let record = PolVerdict {
        saddr: t.saddr,
        daddr: t.daddr,
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        dir,
        verdict: d.verdict,
        pad: 0,
        endpoint: ep.identity,
        peer: d.peer,
        policy: d.policy,
        ifindex,
    };
    // A full ring drops the record; the counters above still have it.
    let _ = POL_VERDICTS.output(&record, 0);
}

//! Pod egress masquerade on the node interface: a pod's packet to outside the cluster leaves with the node's address
//! and a port (or ICMP echo identifier) from the configured range; replies and ICMP errors about the flow are
//! translated back on ingress and handed to the stack, which routes them to the pod.
//!
//! A port is unique per (peer address, peer port, protocol): the reply entry is inserted with `BPF_NOEXIST`, and a
//! port the balancer's own SNAT holds in `LB_CT` is skipped. The pod's own source port is tried first (as the
//! kernel's MASQUERADE does), unless one of the node's own sockets uses it towards the same peer; then up to
//! [`ATTEMPTS`] ports of the configured range. A port whose flow closed or idled out ([`NatEntry::reusable`]) is
//! taken over, and the old flow's forward entry removed.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_F_CURRENT_NETNS, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{bpf_ktime_get_ns, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use skiff_ebpf_common::{
    CtKey, NAT_KIND_FORWARD, NAT_KIND_PASS, NAT_KIND_REPLY, NAT_ST_FIN_IN, NAT_ST_FIN_OUT, NAT_ST_REPLIED, NAT_ST_RST,
    NatConfig, NatEntry, NatEvent, PROTO_TCP, PROTO_UDP, flow_hash,
};

use crate::{
    maps::{LB_CT, LB_NAT, LB_NAT_CONFIG, LB_NAT_EXCLUDE, LB_NAT_STATS},
    packet::{Flow, Ip, Ipv4Hdr, PROTO_ICMP, rewrite, rewrite_icmp_u16, rewrite_ip_addr},
    tc::NEXT,
};

/// Ports tried for a new flow: the pod's own, then hashed probes of the range.
pub const ATTEMPTS: u32 = 32;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// The first 8 bytes of an ICMP header (echo: identifier and sequence; errors: unused).
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    id: u16,
    seq: u16,
}

fn stat(e: NatEvent) {
    if let Some(p) = LB_NAT_STATS.get_ptr_mut(e as u32) {
        // SAFETY: a per-CPU slot of this CPU; programs on one CPU do not run concurrently.
        unsafe { *p += 1 };
    }
}

fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The masquerade configuration, if masquerade applies to a packet from `saddr` to `daddr`.
#[inline(always)]
fn applies(saddr: u32, daddr: u32) -> Option<NatConfig> {
    let cfg = *LB_NAT_CONFIG.get(0)?;
    if !cfg.candidate(saddr, daddr) || LB_NAT_EXCLUDE.get(&Key::new(32, daddr.to_ne_bytes())).is_some() {
        return None;
    }
    Some(cfg)
}

/// The peer's tuple towards the translated `addr:port` of the flow whose pod-side tuple is `fk`.
#[inline(always)]
fn reply_key(fk: &CtKey, addr: u32, port: u16) -> CtKey {
    CtKey { saddr: fk.daddr, daddr: addr, sport: fk.dport, dport: port, proto: fk.proto, pad: [0; 3] }
}

/// TCP close-state bits a packet with `flags` adds to `state`; `out` for the pod's direction.
#[inline(always)]
fn tcp_state(state: u8, flags: u8, out: bool) -> u8 {
    let mut s = state;
    if flags & TCP_RST != 0 {
        s |= NAT_ST_RST;
    }
    if flags & TCP_FIN != 0 {
        s |= if out { NAT_ST_FIN_OUT } else { NAT_ST_FIN_IN };
    }
    s
}

/// `bpf_sock.state` of a listening TCP socket.
const TCP_LISTEN: u32 = 10;

/// Whether one of the node's own sockets (not a listener) has the tuple `addr:port` ↔ `peer:peer_port`: the pod's
/// port cannot be kept then, and a packet of that tuple from the peer is the node's, not a pod's.
#[inline(always)]
fn node_socket(ctx: &TcContext, proto: u8, peer: u32, peer_port: u16, addr: u32, port: u16) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: peer,
                daddr: addr,
                sport: peer_port,
                dport: port,
            },
        },
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the helpers read `size` bytes of `tuple`, a live stack value, and look the socket up in this
    // program's network namespace; a socket they return is read once and released at once.
    unsafe {
        let sk = if proto == PROTO_TCP {
            bpf_skc_lookup_tcp(ctx.as_ptr(), &mut tuple, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.as_ptr(), &mut tuple, size, netns, 0)
        };
        if sk.is_null() {
            return false;
        }
        let listening = proto == PROTO_TCP && (*sk).state == TCP_LISTEN;
        bpf_sk_release(sk.cast());
        !listening
    }
}

/// The flow's reply record, when it still belongs to the pod-side tuple `fk`: refreshed as seen from the pod.
#[inline(always)]
fn refresh(fk: &CtKey, rk: &CtKey, tcp_flags: u8, t: u64) -> bool {
    let Some(r) = LB_NAT.get_ptr_mut(rk) else { return false };
    // SAFETY: a map value pointer; plain integer fields, racing writers only lose a timestamp or a bit.
    unsafe {
        if (*r).kind != NAT_KIND_REPLY || (*r).addr != fk.saddr || (*r).port != fk.sport {
            return false;
        }
        (*r).last_seen = t;
        if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            // the pod opens a new connection on the same tuple: a fresh flow
            (*r).state = 0;
        }
        (*r).state = tcp_state((*r).state, tcp_flags, true);
    }
    true
}

/// The translated (address, port) for the pod-side tuple `fk`: the flow's, or a newly allocated one; `None` when
/// the packet keeps the pod's address (a reply of a flow the peer opened, or TCP that is not a new connection).
#[inline(always)]
fn translate(ctx: &TcContext, fk: &CtKey, cfg: &NatConfig, tcp_flags: u8) -> Result<Option<(u32, u16)>, NatEvent> {
    let t = now();
    let record = NatEntry {
        addr: fk.saddr,
        port: fk.sport,
        kind: NAT_KIND_REPLY,
        state: tcp_state(0, tcp_flags, true),
        last_seen: t,
    };
    let opens = fk.proto != PROTO_TCP || tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(e) = LB_NAT.get_ptr_mut(fk) {
        // SAFETY: a map value pointer; plain integer fields.
        let e = unsafe {
            if (*e).kind == NAT_KIND_PASS && !(*e).expired(fk.proto, t) {
                (*e).last_seen = t;
                return Ok(None);
            }
            *e
        };
        if e.kind == NAT_KIND_FORWARD {
            let rk = reply_key(fk, e.addr, e.port);
            if refresh(fk, &rk, tcp_flags, t) {
                return Ok(Some((e.addr, e.port)));
            }
            // The flow's record was evicted (or taken over after idling out): claim the same port again, so an
            // established flow keeps its tuple; if another flow holds it now, a non-opening packet cannot go on.
            if LB_NAT.insert(&rk, &record, BPF_NOEXIST as u64).is_ok() {
                return Ok(Some((e.addr, e.port)));
            }
            if !opens {
                return Err(NatEvent::InsertFailed);
            }
        }
    }
    if !opens {
        // Only a SYN opens a translated TCP flow: anything else is a reply of a flow the peer opened (a SYN-ACK to
        // NodePort traffic another node forwarded here) or of one older than the mapping.
        return Ok(None);
    }
    let range = (cfg.port_max - cfg.port_min) as u32 + 1;
    let hash = flow_hash(fk.saddr, fk.daddr, fk.sport, fk.dport, fk.proto);
    let mut port = 0u16;
    let mut i = 0u32;
    while i < ATTEMPTS {
        let candidate = if i == 0 {
            // The pod's own port, as the kernel's MASQUERADE keeps it, unless a node socket has that tuple. (ICMP
            // identifiers always come from the range: the node's own echo ids cannot be looked up.)
            if fk.proto == PROTO_ICMP || node_socket(ctx, fk.proto, fk.daddr, fk.dport, cfg.addr, fk.sport) {
                i += 1;
                continue;
            }
            fk.sport
        } else {
            let offset = hash.wrapping_add(i.wrapping_mul(7919));
            ((cfg.port_min as u32 + offset % range) as u16).to_be()
        };
        i += 1;
        if candidate == 0 {
            continue;
        }
        let rk = reply_key(fk, cfg.addr, candidate);
        // SAFETY: only tested for presence.
        if unsafe { LB_CT.get(&rk).is_some() } {
            continue; // the balancer's SNAT of a NodePort flow holds this port towards this peer
        }
        if LB_NAT.insert(&rk, &record, BPF_NOEXIST as u64).is_ok() {
            port = candidate;
            break;
        }
        // SAFETY: copied at once.
        let Some(old) = (unsafe { LB_NAT.get(&rk).copied() }) else { continue };
        if old.reusable(fk.proto, t, fk.saddr) {
            // Remove, then insert only if absent: of two CPUs taking over one port at once, one wins.
            let _ = LB_NAT.remove(&rk);
            if LB_NAT.insert(&rk, &record, BPF_NOEXIST as u64).is_ok() {
                let old_fk = CtKey {
                    saddr: old.addr,
                    daddr: rk.saddr,
                    sport: old.port,
                    dport: rk.sport,
                    proto: rk.proto,
                    pad: [0; 3],
                };
                let _ = LB_NAT.remove(&old_fk);
                stat(NatEvent::PortReused);
                port = candidate;
                break;
            }
        }
    }
    if port == 0 {
        return Err(NatEvent::PortExhausted);
    }
    let forward = NatEntry { addr: cfg.addr, port, kind: NAT_KIND_FORWARD, state: 0, last_seen: 0 };
    if LB_NAT.insert(fk, &forward, BPF_ANY as u64).is_err() {
        let _ = LB_NAT.remove(&reply_key(fk, cfg.addr, port));
        return Err(NatEvent::InsertFailed);
    }
    stat(match fk.proto {
        PROTO_TCP => NatEvent::NewTcp,
        PROTO_UDP => NatEvent::NewUdp,
        _ => NatEvent::NewIcmp,
    });
    Ok(Some((cfg.addr, port)))
}

/// Marks a reply entry as seen from the peer's side; returns the pod's (address, port). A record whose flow is
/// over translates nothing (and is removed): the node may use the tuple for itself by now. `claim` may still
/// refuse the packet, given the record.
#[inline(always)]
fn untranslate(rk: &CtKey, tcp_flags: u8, claim: impl FnOnce(&NatEntry) -> bool) -> Option<(u32, u16)> {
    let r = LB_NAT.get_ptr_mut(rk)?;
    let t = now();
    // SAFETY: a map value pointer; plain integer fields.
    unsafe {
        if (*r).kind != NAT_KIND_REPLY {
            return None;
        }
        if (*r).expired(rk.proto, t) {
            let _ = LB_NAT.remove(rk);
            return None;
        }
        if !claim(&*r) {
            return None;
        }
        (*r).last_seen = t;
        (*r).state = tcp_state((*r).state, tcp_flags, false) | NAT_ST_REPLIED;
        Some(((*r).addr, (*r).port))
    }
}

fn tcp_flags(ctx: &TcContext, flow: &Flow) -> u8 {
    if flow.key.proto == PROTO_TCP { ctx.load::<u8>(flow.l4 + 13).unwrap_or(0) } else { 0 }
}

/// Whether the packet opens a TCP connection (SYN without ACK).
#[inline(always)]
pub fn opens_tcp(ctx: &TcContext, flow: &Flow) -> bool {
    flow.key.proto == PROTO_TCP && tcp_flags(ctx, flow) & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Egress: a pod's TCP/UDP packet leaving the node that the balancer did not claim. `NEXT` when it is not
/// masqueraded.
#[inline(always)]
pub fn egress_flow(ctx: &mut TcContext, flow: &Flow) -> Result<i32, i64> {
    let Some(cfg) = applies(flow.key.saddr, flow.key.daddr) else {
        return Ok(NEXT);
    };
    match translate(ctx, &flow.key, &cfg, tcp_flags(ctx, flow)) {
        Ok(Some((addr, port))) => {
            rewrite(ctx, flow, true, addr, port)?;
            Ok(TC_ACT_OK)
        }
        Ok(None) => Ok(NEXT),
        Err(e) => {
            stat(e);
            Ok(TC_ACT_SHOT)
        }
    }
}

/// Ingress: a reply to a translated port. `NEXT` when the packet is not one.
#[inline(always)]
pub fn ingress_flow(ctx: &mut TcContext, flow: &Flow) -> Result<i32, i64> {
    let Some(cfg) = LB_NAT_CONFIG.get(0) else {
        return Ok(NEXT);
    };
    if cfg.flags == 0 || flow.key.daddr != cfg.addr {
        return Ok(NEXT);
    }
    let k = &flow.key;
    let dport = u16::from_be(k.dport);
    let kept = dport < cfg.port_min || dport > cfg.port_max;
    // A kept pod port that a node socket also uses towards the same peer: the node's own flow wins. Asked once per
    // flow, before its first answer (the node's traffic without a record never gets this far).
    let claim = |r: &NatEntry| {
        !(kept && r.state & NAT_ST_REPLIED == 0 && node_socket(ctx, k.proto, k.saddr, k.sport, k.daddr, k.dport))
    };
    let flags = tcp_flags(ctx, flow);
    let Some((addr, port)) = untranslate(&flow.key, flags, claim) else {
        return Ok(NEXT);
    };
    rewrite(ctx, flow, false, addr, port)?;
    Ok(TC_ACT_OK)
}

/// Ingress: a UDP packet from outside the cluster to a pod that no translation claimed opens a flow of the peer's:
/// recorded under the pod's tuple so that the pod's answers keep its address.
#[inline(always)]
pub fn track_inbound(flow: &Flow) {
    let k = &flow.key;
    if k.proto != PROTO_UDP {
        return;
    }
    let Some(cfg) = LB_NAT_CONFIG.get(0) else { return };
    if cfg.flags == 0 || k.daddr & cfg.src_mask != cfg.src_net || k.saddr & cfg.src_mask == cfg.src_net {
        return;
    }
    let fk = CtKey { saddr: k.daddr, daddr: k.saddr, sport: k.dport, dport: k.sport, proto: k.proto, pad: [0; 3] };
    let t = now();
    match LB_NAT.get_ptr_mut(&fk) {
        // SAFETY: a map value pointer; a plain integer field.
        Some(e) => unsafe {
            if (*e).kind == NAT_KIND_PASS {
                (*e).last_seen = t;
            }
        },
        None => {
            let pass = NatEntry { addr: 0, port: 0, kind: NAT_KIND_PASS, state: 0, last_seen: t };
            let _ = LB_NAT.insert(&fk, &pass, BPF_NOEXIST as u64);
        }
    }
}

/// Egress: a pod's fragment to outside the cluster cannot be translated (no ports in it); counted and passed.
#[inline(always)]
pub fn egress_fragment(ip: &Ip) {
    if applies(ip.saddr, ip.daddr).is_some() {
        stat(NatEvent::FragmentUntranslated);
    }
}

/// Egress: a pod's ICMP echo request to outside the cluster gets the node address and an identifier of the range.
#[inline(always)]
pub fn egress_icmp(ctx: &mut TcContext, ip: &Ip) -> Result<i32, i64> {
    let Some(cfg) = applies(ip.saddr, ip.daddr) else {
        return Ok(NEXT);
    };
    let icmp: IcmpHdr = ctx.load(ip.l4)?;
    if icmp.kind != ICMP_ECHO {
        return Ok(NEXT);
    }
    let fk = CtKey { saddr: ip.saddr, daddr: ip.daddr, sport: icmp.id, dport: 0, proto: PROTO_ICMP, pad: [0; 3] };
    match translate(ctx, &fk, &cfg, 0) {
        Ok(None) => Ok(NEXT),
        Ok(Some((addr, id))) => {
            rewrite_icmp_u16(ctx, ip.l4 + 2, ip.l4 + 4, icmp.id, id)?;
            rewrite_ip_addr(ctx, true, ip.saddr, addr)?;
            Ok(TC_ACT_OK)
        }
        Err(e) => {
            stat(e);
            Ok(TC_ACT_SHOT)
        }
    }
}

/// Ingress: an echo reply to a translated identifier, or an ICMP error about a translated flow, goes back to the
/// pod. `NEXT` when the packet is neither.
#[inline(always)]
pub fn ingress_icmp(ctx: &mut TcContext, ip: &Ip) -> Result<i32, i64> {
    let Some(cfg) = LB_NAT_CONFIG.get(0) else {
        return Ok(NEXT);
    };
    if cfg.flags == 0 || ip.daddr != cfg.addr {
        return Ok(NEXT);
    }
    let icmp: IcmpHdr = ctx.load(ip.l4)?;
    let csum = ip.l4 + 2;
    if icmp.kind == ICMP_ECHO_REPLY {
        let rk = CtKey { saddr: ip.saddr, daddr: ip.daddr, sport: 0, dport: icmp.id, proto: PROTO_ICMP, pad: [0; 3] };
        let Some((addr, id)) = untranslate(&rk, 0, |_| true) else {
            return Ok(NEXT);
        };
        rewrite_icmp_u16(ctx, csum, ip.l4 + 4, icmp.id, id)?;
        rewrite_ip_addr(ctx, false, ip.daddr, addr)?;
        return Ok(TC_ACT_OK);
    }
    if icmp.kind != ICMP_DEST_UNREACH && icmp.kind != ICMP_TIME_EXCEEDED && icmp.kind != ICMP_PARAMETER_PROBLEM {
        return Ok(NEXT);
    }
    // The packet the node sent, quoted: its source is the translated address and port.
    let inner_off = ip.l4 + 8;
    let inner: Ipv4Hdr = ctx.load(inner_off)?;
    let ihl = ((inner.vihl & 0x0f) as usize) * 4;
    if inner.vihl >> 4 != 4 || ihl < 20 || inner.saddr != cfg.addr {
        return Ok(NEXT);
    }
    let inner_l4 = inner_off + ihl;
    let (rk, port_off, old_port) = match inner.proto {
        PROTO_TCP | PROTO_UDP => {
            let ports: [u16; 2] = ctx.load(inner_l4)?;
            let rk = CtKey {
                saddr: inner.daddr,
                daddr: inner.saddr,
                sport: ports[1],
                dport: ports[0],
                proto: inner.proto,
                pad: [0; 3],
            };
            (rk, inner_l4, ports[0])
        }
        PROTO_ICMP => {
            let quoted: IcmpHdr = ctx.load(inner_l4)?;
            if quoted.kind != ICMP_ECHO {
                return Ok(NEXT);
            }
            let rk = CtKey {
                saddr: inner.daddr,
                daddr: inner.saddr,
                sport: 0,
                dport: quoted.id,
                proto: PROTO_ICMP,
                pad: [0; 3],
            };
            (rk, inner_l4 + 4, quoted.id)
        }
        _ => return Ok(NEXT),
    };
    // SAFETY: copied at once.
    let Some(r) = (unsafe { LB_NAT.get(&rk).copied() }) else {
        return Ok(NEXT);
    };
    if r.kind != NAT_KIND_REPLY {
        return Ok(NEXT);
    }
    // The ICMP checksum covers the quoted port. It also covers the quoted source address and header checksum, but
    // those two change together so that their one's-complement sum stays the same. The quoted L4 checksum is left
    // alone (receivers do not verify it; it is often not even quoted).
    rewrite_icmp_u16(ctx, csum, port_off, old_port, r.port)?;
    ctx.l3_csum_replace(inner_off + 10, inner.saddr as u64, r.addr as u64, 4)?;
    ctx.store(inner_off + 12, &r.addr, 0)?;
    rewrite_ip_addr(ctx, false, ip.daddr, r.addr)?;
    stat(NatEvent::IcmpErrorTranslated);
    Ok(TC_ACT_OK)
}

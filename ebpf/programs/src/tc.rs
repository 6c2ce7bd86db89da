//! The tc (tcx) path for traffic that reaches the node from outside: NodePort, LoadBalancer and externalIPs.
//!
//! Ingress: a packet of a known flow is rewritten as its conntrack entry says; a new flow to an external-scope
//! frontend gets a backend (affinity / Maglev over the 5-tuple), DNAT, and — for a backend on another node — SNAT to
//! the node address, then a FIB redirect. Replies of SNAT-ed flows come back to the node address and are translated
//! back on ingress; replies of local backends are translated back on egress. Fragments and ICMP pass untouched.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibLookup},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use skiff_ebpf_common::{
    AFFINITY_ADDR, BACKEND_F_DRAINING, BACKEND_F_LOCAL, CT_F_EGRESS, CT_F_REDIRECT, CtKey, CtValue, Event,
    SCOPE_EXTERNAL, ServiceKey, flow_hash, limits,
};

use crate::{
    arp,
    maps::{LB_CONFIG, LB_CT, LB_NAT, count, count_refused, event},
    nat,
    packet::{ETH_HLEN, Flow, Parsed, parse, rewrite},
    select::{backend, select, service},
};

/// tcx: let the next program (or the stack) decide.
pub const NEXT: i32 = -1;
const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;
/// `skb->pkt_type` of a frame addressed to this host.
const PACKET_HOST: u32 = 0;

/// Ingress on the node interface.
#[inline(always)]
pub fn ingress(mut ctx: TcContext) -> i32 {
    match try_ingress(&mut ctx) {
        Ok(verdict) => verdict,
        // A packet the program cannot read or rewrite is left to the stack rather than dropped.
        Err(_) => NEXT,
    }
}

/// Egress on the node interface.
#[inline(always)]
pub fn egress(mut ctx: TcContext) -> i32 {
    match try_egress(&mut ctx) {
        Ok(verdict) => verdict,
        Err(_) => NEXT,
    }
}

fn try_ingress(ctx: &mut TcContext) -> Result<i32, i64> {
    let ethertype: u16 = ctx.load(12)?;
    if u16::from_be(ethertype) == arp::ETH_P_ARP {
        return arp::answer(ctx);
    }
    // Frames for another host's MAC (a switch or bridge flooding unknown unicast) are not ours to balance: tc sees
    // them before the stack drops them, and two nodes answering one flow would break it.
    // SAFETY: the context pointer of this program.
    if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST {
        return Ok(NEXT);
    }
    let flow = match parse(ctx)? {
        Parsed::Flow(flow) => flow,
        Parsed::Fragment(_) => {
            event(Event::TcFragmentPassed);
            return Ok(NEXT);
        }
        Parsed::Icmp(ip) => {
            let verdict = nat::ingress_icmp(ctx, &ip)?;
            if verdict == NEXT {
                event(Event::TcIcmpPassed);
            }
            return Ok(verdict);
        }
        Parsed::Other => return Ok(NEXT),
    };
    // A tracked flow follows its entry while its backend exists (a terminating or unready pod keeps its
    // connections). A SYN that reuses the tuple of a flow to a pod no frontend selects any more (draining) opens a
    // new connection, which is balanced again.
    let mut reopened: Option<CtValue> = None;
    // SAFETY: copied at once.
    if let Some(ct) = unsafe { LB_CT.get(&flow.key).copied() }
        && ct.flags & CT_F_EGRESS == 0
    {
        let b = if ct.backend_id == 0 { None } else { backend(ct.backend_id) };
        if ct.backend_id == 0 || b.is_some() {
            let draining = b.is_some_and(|b| b.flags & BACKEND_F_DRAINING != 0);
            if !(draining && nat::opens_tcp(ctx, &flow)) {
                event(Event::TcTracked);
                return apply(ctx, &flow, &ct);
            }
            reopened = Some(ct);
        }
    }
    let verdict = nat::ingress_flow(ctx, &flow)?;
    if verdict != NEXT {
        return Ok(verdict);
    }
    let key = ServiceKey {
        addr: flow.key.daddr,
        port: flow.key.dport,
        slot: 0,
        proto: flow.key.proto,
        scope: SCOPE_EXTERNAL,
        pad: [0; 2],
    };
    let Some(svc) = service(&key) else {
        nat::track_inbound(&flow);
        return Ok(NEXT);
    };
    if svc.count == 0 {
        count_refused(svc.service_id);
        event(Event::TcNoEndpointDrop);
        return Ok(TC_ACT_SHOT);
    }
    let k = &flow.key;
    let hash = flow_hash(k.saddr, k.daddr, k.sport, k.dport, k.proto);
    let Some(backend_id) = select(&key, &svc, k.saddr as u64, AFFINITY_ADDR, hash) else {
        return Ok(NEXT);
    };
    if let Some(ct) = reopened.filter(|ct| ct.backend_id == backend_id) {
        // chosen again (the planner writes a backend's draining flag before it rewrites the slots, so for a moment a
        // draining backend can still be selected): it keeps its translation and SNAT port, so a retransmitted SYN
        // does not open a second half-open connection from another SNAT port
        event(Event::TcTracked);
        return apply(ctx, &flow, &ct);
    }
    let Some(b) = backend(backend_id) else {
        return Ok(NEXT);
    };
    let mut forward =
        CtValue { daddr: b.addr, dport: b.port, backend_id, service_id: svc.service_id, ..CtValue::default() };
    if b.flags & BACKEND_F_LOCAL != 0 {
        // Local backend: DNAT only; the reply leaves through egress and gets the service address back there.
        let reply_key =
            CtKey { saddr: b.addr, daddr: k.saddr, sport: b.port, dport: k.sport, proto: k.proto, pad: [0; 3] };
        let reply = CtValue {
            saddr: k.daddr,
            sport: k.dport,
            backend_id,
            service_id: svc.service_id,
            flags: CT_F_EGRESS,
            ..CtValue::default()
        };
        if LB_CT.insert(&reply_key, &reply, BPF_ANY as u64).is_err() {
            event(Event::CtInsertFailed);
        }
    } else {
        // Remote backend: SNAT to the node address so the reply comes back here.
        let snat = LB_CONFIG.get(0).map(|c| (c.snat_addr, c.nat_port_min, c.nat_port_max));
        let Some((snat_addr, min, max)) = snat.filter(|s| s.0 != 0 && s.2 >= s.1) else {
            event(Event::TcNoSnatAddress);
            return Ok(TC_ACT_SHOT);
        };
        let reply = CtValue {
            saddr: k.daddr,
            sport: k.dport,
            daddr: k.saddr,
            dport: k.sport,
            backend_id,
            service_id: svc.service_id,
            flags: CT_F_REDIRECT,
            ..CtValue::default()
        };
        let range = (max - min) as u32 + 1; // >= 1: max >= min was checked
        let mut port = 0u16;
        let mut i = 0u32;
        while i < limits::SNAT_PORT_ATTEMPTS {
            let offset = hash.wrapping_add(i.wrapping_mul(7919));
            let candidate = (min as u32 + if range != 0 { offset % range } else { 0 }) as u16;
            let reply_key = CtKey {
                saddr: b.addr,
                daddr: snat_addr,
                sport: b.port,
                dport: candidate.to_be(),
                proto: k.proto,
                pad: [0; 3],
            };
            // SAFETY: only tested for presence.
            if unsafe { LB_NAT.get(&reply_key).is_some() } {
                i += 1;
                continue; // a pod's masqueraded flow holds this port towards this backend
            }
            if LB_CT.insert(&reply_key, &reply, BPF_NOEXIST as u64).is_ok() {
                port = candidate.to_be();
                break;
            }
            i += 1;
        }
        if port == 0 {
            event(Event::TcSnatExhausted);
            return Ok(TC_ACT_SHOT);
        }
        forward.saddr = snat_addr;
        forward.sport = port;
        forward.flags = CT_F_REDIRECT;
    }
    if LB_CT.insert(&flow.key, &forward, BPF_ANY as u64).is_err() {
        event(Event::CtInsertFailed);
    }
    count(svc.service_id, backend_id, 0, 0, 1);
    event(Event::TcNewFlow);
    apply(ctx, &flow, &forward)
}

fn try_egress(ctx: &mut TcContext) -> Result<i32, i64> {
    let flow = match parse(ctx)? {
        Parsed::Flow(flow) => flow,
        Parsed::Icmp(ip) => return nat::egress_icmp(ctx, &ip),
        Parsed::Fragment(ip) => {
            nat::egress_fragment(&ip);
            return Ok(NEXT);
        }
        Parsed::Other => return Ok(NEXT),
    };
    // SAFETY: copied at once.
    match unsafe { LB_CT.get(&flow.key).copied() } {
        Some(ct) if ct.flags & CT_F_EGRESS != 0 => {
            event(Event::TcTracked);
            apply(ctx, &flow, &ct)
        }
        _ => nat::egress_flow(ctx, &flow),
    }
}

/// Rewrites the packet as `ct` says, counts it, and passes or redirects it.
#[inline(always)]
fn apply(ctx: &mut TcContext, flow: &Flow, ct: &CtValue) -> Result<i32, i64> {
    if ct.daddr != 0 {
        rewrite(ctx, flow, false, ct.daddr, ct.dport)?;
    }
    if ct.saddr != 0 {
        rewrite(ctx, flow, true, ct.saddr, ct.sport)?;
    }
    count(ct.service_id, ct.backend_id, 1, flow.len as u64, 0);
    if ct.flags & CT_F_REDIRECT == 0 {
        return Ok(TC_ACT_OK);
    }
    let new_saddr = if ct.saddr != 0 { ct.saddr } else { flow.key.saddr };
    let new_daddr = if ct.daddr != 0 { ct.daddr } else { flow.key.daddr };
    Ok(redirect(ctx, new_saddr, new_daddr, flow.len))
}

/// Sends a rewritten packet out of the interface the FIB says, filling in the Ethernet addresses.
#[inline(always)]
fn redirect(ctx: &mut TcContext, saddr: u32, daddr: u32, len: u16) -> i32 {
    // SAFETY: the context pointer of this program.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers and unions of integers).
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_1.tot_len = len;
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: the helper reads and writes `fib`, whose size is passed.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut fib, core::mem::size_of::<FibLookup>() as i32, 0) };
    if rc == FIB_SUCCESS {
        if ctx.store(0, &fib.dmac, 0).is_err() || ctx.store(6, &fib.smac, 0).is_err() {
            return TC_ACT_SHOT;
        }
        // SAFETY: a redirect helper; its return value is the verdict.
        return unsafe { bpf_redirect(fib.ifindex, 0) } as i32;
    }
    if rc == FIB_NO_NEIGH {
        // SAFETY: NULL neighbour parameters: the kernel resolves the next hop of the packet's destination itself.
        return unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    let _ = ETH_HLEN;
    event(Event::TcFibFailed);
    TC_ACT_SHOT
}

//! L2 announcement of LoadBalancer pool addresses: an ARP request for an address this node holds (user space wins
//! a Lease per address and writes `LB_L2_ANNOUNCE`) is turned into the reply in place and sent back out of the
//! interface it came in on, as MetalLB's and Cilium's responders do. The kernel never owns the address.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    programs::TcContext,
};
use skiff_ebpf_common::NatEvent;

use crate::{
    maps::{LB_L2_ANNOUNCE, LB_NAT_STATS},
    tc::NEXT,
};

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet after the Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpEth {
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// Answers an ARP request for an announced address; `NEXT` for every other ARP packet.
#[inline(always)]
pub fn answer(ctx: &mut TcContext) -> Result<i32, i64> {
    let arp: ArpEth = ctx.load(14)?;
    if u16::from_be(arp.op) != ARP_REQUEST
        || u16::from_be(arp.htype) != 1
        || u16::from_be(arp.ptype) != 0x0800
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Ok(NEXT);
    }
    let vip = u32::from_ne_bytes(arp.tpa);
    // SAFETY: copied at once.
    let Some(entry) = (unsafe { LB_L2_ANNOUNCE.get(&vip).copied() }) else {
        return Ok(NEXT);
    };
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() } > entry.expires {
        return Ok(NEXT); // the agent stopped renewing: another node may hold the address now
    }
    // SAFETY: the context pointer of this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if entry.ifindex != ifindex {
        return Ok(NEXT);
    }
    let reply = ArpEth { op: ARP_REPLY.to_be(), sha: entry.mac, spa: arp.tpa, tha: arp.sha, tpa: arp.spa, ..arp };
    ctx.store(14, &reply, 0)?;
    ctx.store(0, &arp.sha, 0)?;
    ctx.store(6, &entry.mac, 0)?;
    if let Some(p) = LB_NAT_STATS.get_ptr_mut(NatEvent::ArpAnswered as u32) {
        // SAFETY: a per-CPU slot of this CPU.
        unsafe { *p += 1 };
    }
    // SAFETY: a redirect helper; its return value is the verdict.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

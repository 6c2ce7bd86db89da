//! Reading and rewriting IPv4 TCP/UDP headers of an skb, with incremental checksum updates.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use skiff_ebpf_common::{CtKey, PROTO_TCP, PROTO_UDP};

/// Length of an Ethernet header.
pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Offset of the IPv4 header checksum.
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
/// Offset of the IPv4 source address.
pub const IP_SRC_OFF: usize = ETH_HLEN + 12;
/// Offset of the IPv4 destination address.
pub const IP_DST_OFF: usize = ETH_HLEN + 16;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
/// IANA protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;

/// The fixed part of an IPv4 header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    /// Version and header length.
    pub vihl: u8,
    /// Type of service.
    pub tos: u8,
    /// Total length, network order.
    pub tot_len: u16,
    /// Identification.
    pub id: u16,
    /// Flags and fragment offset, network order.
    pub frag_off: u16,
    /// Time to live.
    pub ttl: u8,
    /// L4 protocol.
    pub proto: u8,
    /// Header checksum.
    pub check: u16,
    /// Source address, network order.
    pub saddr: u32,
    /// Destination address, network order.
    pub daddr: u32,
}

/// What the tc path needs of a packet.
pub enum Parsed {
    /// Not IPv4, or not a protocol the balancer handles: leave it alone.
    Other,
    /// An IPv4 fragment (the balancer passes it untouched).
    Fragment(Ip),
    /// ICMP (the balancer passes it; masquerade translates echo and errors).
    Icmp(Ip),
    /// A TCP or UDP packet.
    Flow(Flow),
}

/// The addresses of an IPv4 packet and where its L4 header starts.
pub struct Ip {
    /// Source address, network order.
    pub saddr: u32,
    /// Destination address, network order.
    pub daddr: u32,
    /// Offset of the L4 header.
    pub l4: usize,
}

/// An IPv4 TCP/UDP packet's tuple and where its L4 header starts.
pub struct Flow {
    /// The tuple as a conntrack key.
    pub key: CtKey,
    /// Offset of the L4 header.
    pub l4: usize,
    /// IPv4 total length (host order), for byte counters.
    pub len: u16,
}

/// Parses the Ethernet + IPv4 + ports of a packet.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, i64> {
    let proto: u16 = ctx.load(12)?;
    if u16::from_be(proto) != ETH_P_IP {
        return Ok(Parsed::Other);
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN)?;
    if ip.vihl >> 4 != 4 {
        return Ok(Parsed::Other);
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Ok(Parsed::Other);
    }
    let l4 = ETH_HLEN + ihl;
    // More-fragments flag or a non-zero offset.
    if u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Ok(Parsed::Fragment(Ip { saddr: ip.saddr, daddr: ip.daddr, l4 }));
    }
    if ip.proto == PROTO_ICMP {
        return Ok(Parsed::Icmp(Ip { saddr: ip.saddr, daddr: ip.daddr, l4 }));
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Ok(Parsed::Other);
    }
    let ports: [u16; 2] = ctx.load(l4)?;
    let key =
        CtKey { saddr: ip.saddr, daddr: ip.daddr, sport: ports[0], dport: ports[1], proto: ip.proto, pad: [0; 3] };
    Ok(Parsed::Flow(Flow { key, l4, len: u16::from_be(ip.tot_len) }))
}

/// Rewrites the source (`src == true`) or destination address and port of a flow's packet, fixing the IP and L4
/// checksums.
#[inline(always)]
pub fn rewrite(ctx: &mut TcContext, flow: &Flow, src: bool, addr: u32, port: u16) -> Result<(), i64> {
    let (old_addr, old_port, addr_off, port_off) = if src {
        (flow.key.saddr, flow.key.sport, IP_SRC_OFF, flow.l4)
    } else {
        (flow.key.daddr, flow.key.dport, IP_DST_OFF, flow.l4 + 2)
    };
    let (csum_off, mangled) = if flow.key.proto == PROTO_TCP {
        (flow.l4 + TCP_CSUM, 0)
    } else {
        // A UDP checksum of 0 means "none" and must stay 0.
        (flow.l4 + UDP_CSUM, BPF_F_MARK_MANGLED_0 as u64)
    };
    if old_addr != addr {
        ctx.l4_csum_replace(csum_off, old_addr as u64, addr as u64, (BPF_F_PSEUDO_HDR as u64) | mangled | 4)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, addr as u64, 4)?;
        ctx.store(addr_off, &addr, 0)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, mangled | 2)?;
        ctx.store(port_off, &port, 0)?;
    }
    Ok(())
}

/// Rewrites the outer source (`src == true`) or destination address of an ICMP packet: only the IP checksum covers
/// it (ICMP has no pseudo-header).
#[inline(always)]
pub fn rewrite_ip_addr(ctx: &mut TcContext, src: bool, old: u32, new: u32) -> Result<(), i64> {
    if old != new {
        ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)?;
        ctx.store(if src { IP_SRC_OFF } else { IP_DST_OFF }, &new, 0)?;
    }
    Ok(())
}

/// Replaces a 16-bit field at `off` that the ICMP checksum at `csum_off` covers.
#[inline(always)]
pub fn rewrite_icmp_u16(ctx: &mut TcContext, csum_off: usize, off: usize, old: u16, new: u16) -> Result<(), i64> {
    if old != new {
        ctx.l4_csum_replace(csum_off, old as u64, new as u64, 2)?;
        ctx.store(off, &new, 0)?;
    }
    Ok(())
}

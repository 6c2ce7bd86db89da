//! Skiff's BPF programs (aya-ebpf), built only for `bpfel-unknown-none` by `dataplane/lb/build.rs`.
//!
//! - cgroup `sock_addr` hooks (`connect4`, `sendmsg4`, `recvmsg4`, `getpeername4`): socket-level load balancing
//!   for ClusterIP, NodePort-on-node-address, LoadBalancer and external IPs ([`sock`]).
//! - tc ingress/egress on the node interface: NodePort/LoadBalancer/externalIPs from outside the node ([`tc`]),
//!   pod egress masquerade ([`nat`]) and ARP answers for announced LoadBalancer addresses ([`arp`]).
//! - tc ingress/egress on each pod's host-side veth: NetworkPolicy ([`policy`]).
//!
//! Every entry point calls a function that maps errors to a verdict; nothing here panics.
#![no_std]
#![no_main]

mod arp;
mod maps;
mod nat;
mod packet;
mod policy;
mod select;
mod sock;
mod tc;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// cgroup connect4 (pods).
#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, sock::Scope::Pods)
}

/// cgroup sendmsg4 (pods' unconnected UDP).
#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, sock::Scope::Pods)
}

/// cgroup connect4 (the node's own processes: ClusterIPs and NodePorts).
#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4_node(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, sock::Scope::Node)
}

/// cgroup sendmsg4 (the node's own processes: ClusterIPs and NodePorts).
#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sendmsg4_node(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, sock::Scope::Node)
}

/// cgroup recvmsg4 (UDP replies).
#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

/// cgroup getpeername4.
#[cgroup_sock_addr(getpeername4)]
pub fn skiff_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

/// tc ingress on the node interface.
#[classifier]
pub fn skiff_tc_ingress(ctx: TcContext) -> i32 {
    tc::ingress(ctx)
}

/// tc egress on the node interface.
#[classifier]
pub fn skiff_tc_egress(ctx: TcContext) -> i32 {
    tc::egress(ctx)
}

/// tc ingress on a pod's host-side veth: the pod's egress policy.
#[classifier]
pub fn skiff_pol_from_pod(ctx: TcContext) -> i32 {
    policy::from_pod(&ctx)
}

/// tc egress on a pod's host-side veth: the pod's ingress policy.
#[classifier]
pub fn skiff_pol_to_pod(ctx: TcContext) -> i32 {
    policy::to_pod(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The kernel requires a GPL-compatible license for bpf_fib_lookup and friends.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

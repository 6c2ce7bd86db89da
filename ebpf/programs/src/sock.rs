//! Socket-level load balancing on the cgroup `sock_addr` hooks: a connect (or an unconnected UDP sendmsg) to a
//! service address is rewritten to a backend address before any packet exists, and the reverse hooks make the socket
//! see the service address as its peer. No per-packet work, no NAT.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_retval, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use skiff_ebpf_common::{
    AFFINITY_NETNS, Event, PROTO_TCP, PROTO_UDP, ReverseSkKey, ReverseSkValue, SCOPE_INTERNAL, SVC_F_EXTERNAL_IP,
    SVC_F_LOADBALANCER, ServiceKey, mix64,
};

use crate::{
    maps::{LB_REVERSE_SK, count, count_refused, event},
    select::{backend, select, service},
};

/// Verdict: let the syscall proceed.
pub const PROCEED: i32 = 1;
/// Verdict: fail the syscall (with the errno set through `bpf_set_retval`).
pub const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Which frontends a socket hook balances.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Pods: every frontend (ClusterIP, NodePort on node addresses, LoadBalancer and external IPs).
    Pods,
    /// The node's own processes: ClusterIPs and NodePorts (as kube-proxy gives them). LoadBalancer and external
    /// IPs are left to the stack, so a Service cannot capture the node's own traffic to an address and port it
    /// chooses (CVE-2020-8554): the API server's, a database's on the node.
    Node,
}

/// `connect4` and `sendmsg4`: rewrite a service address to a backend.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, scope: Scope) -> i32 {
    // A pod's socket runs the pods' program first; if that refused the connect, the node program has nothing to
    // add (and must not count the refusal twice).
    // SAFETY: a helper available to cgroup programs since 5.18; it reads the return value set so far.
    if scope == Scope::Node && unsafe { bpf_get_retval() } != 0 {
        return PROCEED;
    }
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context pointer the kernel passed; these fields are readable in connect4/sendmsg4.
    let (proto, addr, port) = unsafe { ((*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    let proto = proto as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return PROCEED;
    }
    // user_port holds the port in network order in its low 16 bits.
    let port = port as u16;
    let key = ServiceKey { addr, port, slot: 0, proto, scope: SCOPE_INTERNAL, pad: [0; 2] };
    let Some(svc) = service(&key) else {
        return PROCEED;
    };
    if scope == Scope::Node && svc.flags & (SVC_F_LOADBALANCER | SVC_F_EXTERNAL_IP) != 0 {
        return PROCEED;
    }
    if svc.count == 0 {
        return refuse(svc.service_id, Event::SockRefused);
    }
    // SAFETY: helpers called with the program's own context.
    let (cookie, netns) = unsafe { (bpf_get_socket_cookie(ctx.as_ptr()), bpf_get_netns_cookie(ctx.as_ptr())) };
    let hash = mix64(cookie) as u32;
    let Some(backend_id) = select(&key, &svc, netns, AFFINITY_NETNS, hash) else {
        return refuse(svc.service_id, Event::SockBackendMissing);
    };
    let Some(b) = backend(backend_id) else {
        return refuse(svc.service_id, Event::SockBackendMissing);
    };
    let rkey = ReverseSkKey { cookie, addr: b.addr, port: b.port, pad: 0 };
    let rval = ReverseSkValue { addr, port, pad: 0 };
    let _ = LB_REVERSE_SK.insert(&rkey, &rval, 0);
    // SAFETY: user_ip4/user_port are writable (4-byte stores) in connect4/sendmsg4.
    unsafe {
        (*sa).user_ip4 = b.addr;
        (*sa).user_port = b.port as u32;
    }
    count(svc.service_id, backend_id, 0, 0, 1);
    event(Event::SockBalanced);
    PROCEED
}

#[inline(always)]
fn refuse(service_id: u32, e: Event) -> i32 {
    count_refused(service_id);
    event(e);
    // SAFETY: a helper available to cgroup programs since 5.18; it sets the errno the syscall returns.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// `recvmsg4` and `getpeername4`: show the service address instead of the backend's.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer; these fields are readable in recvmsg4/getpeername4.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    // SAFETY: helper called with the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rkey = ReverseSkKey { cookie, addr, port: port as u16, pad: 0 };
    // SAFETY: copied at once.
    if let Some(v) = unsafe { LB_REVERSE_SK.get(&rkey).copied() } {
        // SAFETY: user_ip4/user_port are writable in recvmsg4/getpeername4.
        unsafe {
            (*sa).user_ip4 = v.addr;
            (*sa).user_port = v.port as u32;
        }
        event(Event::SockReverse);
    }
    PROCEED
}

//! Which endpoints of a Service port receive traffic, with kube-proxy's semantics: ready endpoints; when none is
//! ready, serving-but-terminating ones; the Local traffic policy restricts both to endpoints on this node.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::{core::v1::ServicePort, discovery::v1::EndpointSlice};

use crate::model::{BackendAddr, BackendInfo, Protocol};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One endpoint of a Service port with its conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Address and resolved port.
    pub addr: BackendAddr,
    /// `conditions.ready` (unset means ready).
    pub ready: bool,
    /// `conditions.serving` (unset means: same as ready).
    pub serving: bool,
    /// `conditions.terminating` (unset means not terminating).
    pub terminating: bool,
    /// The endpoint's node is this node.
    pub local: bool,
}

impl Candidate {
    /// The properties its backend entry carries.
    pub fn info(&self) -> BackendInfo {
        BackendInfo { local: self.local, terminating: self.terminating }
    }
}

/// The endpoints of `port` (of protocol `protocol`) in the IPv4 `slices` of its Service, deduplicated by address.
pub fn candidates(
    port: &ServicePort,
    protocol: Protocol,
    slices: &[&EndpointSlice],
    node_name: &str,
) -> Vec<Candidate> {
    let port_name = port.name.as_deref().unwrap_or("");
    let mut out: BTreeMap<BackendAddr, Candidate> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP").eq_ignore_ascii_case(&protocol.to_string())
        }) else {
            continue;
        };
        let Some(target_port) = target.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else {
            continue;
        };
        for ep in &slice.endpoints {
            // kube-proxy uses the first address of an endpoint.
            let Some(addr) = ep.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let local = !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name);
            let addr = BackendAddr { addr, port: target_port, protocol };
            let c = Candidate { addr, ready, serving, terminating, local };
            // A duplicate (the same endpoint in two slices during an update) keeps the "best" conditions.
            out.entry(addr)
                .and_modify(|old| {
                    if rank(&c) > rank(old) {
                        *old = c;
                    }
                })
                .or_insert(c);
        }
    }
    out.into_values().collect()
}

fn rank(c: &Candidate) -> u8 {
    match (c.ready, c.serving && c.terminating) {
        (true, _) => 2,
        (false, true) => 1,
        _ => 0,
    }
}

/// The endpoints that receive traffic among `candidates`, restricted to local ones if `local_only`.
/// Returns them sorted, with their properties, and whether they are the terminating fallback.
pub fn usable(candidates: &[Candidate], local_only: bool) -> (Vec<(BackendAddr, BackendInfo)>, bool) {
    let pool = || candidates.iter().filter(move |c| !local_only || c.local);
    let ready: Vec<_> = pool().filter(|c| c.ready).collect();
    let (chosen, fallback) = if ready.is_empty() {
        (pool().filter(|c| c.serving && c.terminating).collect::<Vec<_>>(), true)
    } else {
        (ready, false)
    };
    let fallback = fallback && !chosen.is_empty();
    let out = chosen.into_iter().map(|c| (c.addr, c.info())).collect();
    (out, fallback)
}

//! The pure function from Services, EndpointSlices and this node's identity to the desired map contents.
//!
//! [`service_tables`] computes one Service (the unit of incremental updates); [`desired_tables`] maps it over all
//! Services. Nothing here does I/O.
//!
//! # Semantics (kube-proxy's)
//! - ClusterIP frontends (internal scope) balance over the internal-policy endpoints (all, or local ones with
//!   `internalTrafficPolicy: Local`).
//! - NodePort (on every node address), LoadBalancer ingress IPs and external IPs get an internal-scope frontend over
//!   all endpoints (traffic from this node's pods, as kube-proxy short-circuits it) and an external-scope frontend
//!   over the external-policy endpoints (all, or local ones with `externalTrafficPolicy: Local`).
//! - Usable endpoints are the ready ones; when none is ready, the serving-but-terminating ones.
//! - Every endpoint listed is a backend (`ServiceTables::backends`), usable or not, so that a connection to an
//!   endpoint that stops being selected (it is terminating, or failed its readiness probe) keeps going to it, as
//!   kube-proxy's conntrack entries keep it, until the endpoint leaves the EndpointSlice.
//! - Headless and ExternalName Services have no frontends. IPv6 addresses are ignored (IPv4 only for now).

mod endpoints;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    discovery::v1::EndpointSlice,
};

pub use endpoints::{Candidate, SERVICE_NAME_LABEL, candidates, usable};

use crate::model::{
    Frontend, FrontendKey, FrontendKind, LbTables, Protocol, Scope, ServiceName, ServicePortName, ServiceTables,
    SkipReason,
};

/// Default sessionAffinity ClientIP timeout (Kubernetes' default, 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// This node, as the balancer needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's name (endpoints with this `nodeName` are local).
    pub name: String,
    /// The node's IPv4 addresses (NodePort frontends).
    pub addresses: Vec<Ipv4Addr>,
}

/// Limits that keep one Service from exhausting the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most ports per Service.
    pub max_ports: usize,
    /// Most endpoints per Service port.
    pub max_backends: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_ports: 256, max_backends: 4096 }
    }
}

/// The desired tables of every Service. `slices` may be in any order; they are matched to Services by their
/// `kubernetes.io/service-name` label and namespace.
pub fn desired_tables(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeIdentity,
    limits: &Limits,
) -> LbTables {
    let mut by_service: BTreeMap<ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if let Some(name) = slice_service(slice) {
            by_service.entry(name).or_default().push(slice);
        }
    }
    let mut tables = LbTables::default();
    for svc in services {
        let name = service_name(svc);
        let slices = by_service.get(&name).map(Vec::as_slice).unwrap_or(&[]);
        tables.services.insert(name, service_tables(svc, slices, node, limits));
    }
    tables
}

/// The namespace/name of a Service object.
pub fn service_name(svc: &Service) -> ServiceName {
    ServiceName::new(
        svc.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// The Service an EndpointSlice belongs to, from its label.
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceName> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceName::new(slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()), name.clone()))
}

/// The desired tables of one Service given its EndpointSlices.
pub fn service_tables(svc: &Service, slices: &[&EndpointSlice], node: &NodeIdentity, limits: &Limits) -> ServiceTables {
    let mut out = ServiceTables::default();
    let Some(spec) = svc.spec.as_ref() else {
        return out;
    };
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return out;
    }
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.len() > limits.max_ports {
        out.skipped.push(SkipReason::TooManyPorts { count: ports.len(), max: limits.max_ports });
        return out;
    }
    let name = service_name(svc);
    let cluster_ips = ipv4s(spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter()));
    let node_ports = svc_type == "NodePort"
        || (svc_type == "LoadBalancer" && spec.allocate_load_balancer_node_ports.unwrap_or(true));
    let lb_ips = if svc_type == "LoadBalancer" {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
        // ipMode Proxy: the cloud load balancer proxies to the nodes, so kube-proxy does not capture the address.
        ipv4s(
            ingress
                .into_iter()
                .flatten()
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_ref()),
        )
    } else {
        Vec::new()
    };
    let external_ips = ipv4s(spec.external_ips.iter().flatten());
    // kube-proxy applies the external policy to every external destination: NodePorts, LoadBalancer IPs and
    // external IPs.
    let etp_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    } else {
        0
    };

    for port in ports {
        let label = port.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| port.port.to_string());
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                out.skipped.push(SkipReason::UnsupportedProtocol { port: label, protocol: other.to_string() });
                continue;
            }
        };
        let Some(svc_port) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
            continue;
        };
        let cands = candidates(port, protocol, slices, &node.name);
        if cands.len() > limits.max_backends {
            out.skipped.push(SkipReason::TooManyBackends { port: label, count: cands.len(), max: limits.max_backends });
            continue;
        }
        let port_name =
            ServicePortName { service: name.clone(), port: port.name.clone().unwrap_or_default(), protocol };
        // Every endpoint the slices list is a backend, selected or not: one that stopped being selected
        // (terminating, not ready) keeps its established flows until it leaves the slice.
        for c in &cands {
            out.backends.insert(c.addr, c.info());
        }
        let mut add = |addr: Ipv4Addr, fport: u16, scope: Scope, kind: FrontendKind, local_only: bool| {
            let (backends, terminating_fallback) = usable(&cands, local_only);
            let key = FrontendKey { addr, port: fport, protocol, scope };
            out.frontends.entry(key).or_insert_with(|| Frontend {
                port: port_name.clone(),
                kind,
                backends: backends.into_iter().map(|(b, _)| b).collect(),
                affinity_timeout,
                local_only,
                terminating_fallback,
            });
        };
        for ip in &cluster_ips {
            add(*ip, svc_port, Scope::Internal, FrontendKind::ClusterIp, itp_local);
        }
        if let Some(np) = node_port(port).filter(|_| node_ports) {
            for ip in &node.addresses {
                add(*ip, np, Scope::Internal, FrontendKind::NodePort, false);
                add(*ip, np, Scope::External, FrontendKind::NodePort, etp_local);
            }
        }
        for (ips, kind) in [(&lb_ips, FrontendKind::LoadBalancer), (&external_ips, FrontendKind::ExternalIp)] {
            for ip in ips {
                add(*ip, svc_port, Scope::Internal, kind, false);
                add(*ip, svc_port, Scope::External, kind, etp_local);
            }
        }
    }
    out
}

fn node_port(port: &ServicePort) -> Option<u16> {
    port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
}

/// The IPv4 addresses among `ips` (headless "None", IPv6 and garbage are dropped), without duplicates.
fn ipv4s<'a>(ips: impl IntoIterator<Item = &'a String>) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for ip in ips {
        if let Ok(ip) = ip.parse::<Ipv4Addr>()
            && !ip.is_unspecified()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

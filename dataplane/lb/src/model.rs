//! The desired state of the load balancer, in API terms: frontends (address, port, protocol, scope) of each
//! Service and the backend addresses each one balances over. [`crate::desired`] computes it; the applier turns the
//! difference between two of them into map writes.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use skiff_ebpf_common as common;

/// A Service's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceName {
    /// Builds a name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of a Service (what kube-proxy calls a ServicePortName): the unit of counters and session affinity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    /// The Service.
    pub service: ServiceName,
    /// The port's name (empty for a single unnamed port).
    pub port: String,
    /// Its protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.service, self.port, self.protocol)
    }
}

/// The L4 protocols the balancer handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => common::PROTO_TCP,
            Protocol::Udp => common::PROTO_UDP,
        }
    }

    /// The protocol with this IANA number.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            common::PROTO_TCP => Some(Protocol::Tcp),
            common::PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// Where traffic to a frontend comes from, which decides the traffic policy that applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// From this node (its pods and processes), balanced by the socket hooks.
    Internal,
    /// From outside the node, balanced by the tc program.
    External,
}

impl Scope {
    /// The value in [`common::ServiceKey::scope`].
    pub const fn number(self) -> u8 {
        match self {
            Scope::Internal => common::SCOPE_INTERNAL,
            Scope::External => common::SCOPE_EXTERNAL,
        }
    }

    /// The scope with this map value.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            common::SCOPE_INTERNAL => Some(Scope::Internal),
            common::SCOPE_EXTERNAL => Some(Scope::External),
            _ => None,
        }
    }
}

/// A frontend: an address and port that clients use, per protocol and scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// The address (ClusterIP, node address, LoadBalancer ingress or external IP).
    pub addr: Ipv4Addr,
    /// The port (the Service port, or the NodePort).
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The scope.
    pub scope: Scope,
}

impl FrontendKey {
    /// The map key of slot `slot` of this frontend.
    pub fn map_key(&self, slot: u16) -> common::ServiceKey {
        common::ServiceKey {
            addr: u32::from(self.addr).to_be(),
            port: self.port.to_be(),
            slot,
            proto: self.protocol.number(),
            scope: self.scope.number(),
            pad: [0; 2],
        }
    }

    /// The frontend of a map key (ignoring its slot), if the key is well formed.
    pub fn from_map_key(key: &common::ServiceKey) -> Option<Self> {
        Some(Self {
            addr: Ipv4Addr::from(u32::from_be(key.addr)),
            port: u16::from_be(key.port),
            protocol: Protocol::from_number(key.proto)?,
            scope: Scope::from_number(key.scope)?,
        })
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            Scope::Internal => "internal",
            Scope::External => "external",
        };
        write!(f, "{}:{}/{} ({scope})", self.addr, self.port, self.protocol)
    }
}

/// What kind of address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// A ClusterIP.
    ClusterIp,
    /// A NodePort on one of this node's addresses.
    NodePort,
    /// A LoadBalancer ingress address.
    LoadBalancer,
    /// One of `spec.externalIPs`.
    ExternalIp,
}

/// An endpoint address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    /// The endpoint's address.
    pub addr: Ipv4Addr,
    /// The endpoint's port (the resolved target port).
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.protocol)
    }
}

/// Properties of an endpoint the programs need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendInfo {
    /// The endpoint runs on this node.
    pub local: bool,
    /// The endpoint is terminating (used only when no endpoint is ready).
    pub terminating: bool,
}

impl BackendInfo {
    /// The [`common::Backend::flags`] of this endpoint.
    pub fn flags(&self) -> u8 {
        (if self.local { common::BACKEND_F_LOCAL } else { 0 })
            | (if self.terminating { common::BACKEND_F_TERMINATING } else { 0 })
    }
}

/// One frontend of a Service and what it balances over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The Service port it belongs to.
    pub port: ServicePortName,
    /// What kind of address it is.
    pub kind: FrontendKind,
    /// The backends, sorted and without duplicates. Empty means "refuse connections".
    pub backends: Vec<BackendAddr>,
    /// sessionAffinity ClientIP timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
    /// Only endpoints on this node are used (traffic policy Local).
    pub local_only: bool,
    /// No endpoint is ready; these are serving-but-terminating ones.
    pub terminating_fallback: bool,
}

impl Frontend {
    /// The [`common::ServiceValue::flags`] of this frontend.
    pub fn flags(&self) -> u16 {
        let kind = match self.kind {
            FrontendKind::ClusterIp => 0,
            FrontendKind::NodePort => common::SVC_F_NODEPORT,
            FrontendKind::LoadBalancer => common::SVC_F_LOADBALANCER,
            FrontendKind::ExternalIp => common::SVC_F_EXTERNAL_IP,
        };
        kind | (if self.local_only { common::SVC_F_LOCAL_ONLY } else { 0 })
            | (if self.terminating_fallback { common::SVC_F_TERMINATING_FALLBACK } else { 0 })
    }
}

/// Why (part of) a Service is not programmed. Reported as a log line and a metric, and skipped without disturbing
/// other Services.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// The port uses a protocol the balancer does not handle (SCTP).
    #[error("port {port}: protocol {protocol} is not supported")]
    UnsupportedProtocol {
        /// The port's name or number.
        port: String,
        /// The protocol.
        protocol: String,
    },
    /// The Service has more ports than allowed.
    #[error("{count} ports exceed the limit of {max}")]
    TooManyPorts {
        /// How many ports it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A port has more endpoints than one frontend may have.
    #[error("port {port}: {count} endpoints exceed the limit of {max}")]
    TooManyBackends {
        /// The port's name or number.
        port: String,
        /// How many endpoints it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Another Service already owns this frontend.
    #[error("frontend {frontend} is already used by {owner}")]
    FrontendConflict {
        /// The frontend.
        frontend: FrontendKey,
        /// Who has it.
        owner: ServiceName,
    },
    /// The maps have no room for this Service.
    #[error("the {map} map is full ({capacity} entries)")]
    MapFull {
        /// Which map.
        map: &'static str,
        /// Its capacity.
        capacity: u32,
    },
    /// A map write failed; the Service is retried.
    #[error("programming failed: {0}")]
    Failed(String),
}

impl SkipReason {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::UnsupportedProtocol { .. } => "unsupported_protocol",
            SkipReason::TooManyPorts { .. } => "too_many_ports",
            SkipReason::TooManyBackends { .. } => "too_many_backends",
            SkipReason::FrontendConflict { .. } => "frontend_conflict",
            SkipReason::MapFull { .. } => "map_full",
            SkipReason::Failed(_) => "failed",
        }
    }
}

/// The desired state of one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTables {
    /// Its frontends.
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// Every endpoint its EndpointSlices list, with its properties: those its frontends select, and those they no
    /// longer select (terminating, not ready), whose established flows the balancer keeps following.
    pub backends: BTreeMap<BackendAddr, BackendInfo>,
    /// What of it is not programmed, and why.
    pub skipped: Vec<SkipReason>,
}

/// The desired state of the whole balancer: what [`crate::desired::desired_tables`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbTables {
    /// Per Service.
    pub services: BTreeMap<ServiceName, ServiceTables>,
}

impl LbTables {
    /// Number of frontends over all Services.
    pub fn frontend_count(&self) -> usize {
        self.services.values().map(|s| s.frontends.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::registry::backend_addr;

    fn arb_key() -> impl Strategy<Value = FrontendKey> {
        (
            any::<u32>(),
            any::<u16>(),
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
            prop_oneof![Just(Scope::Internal), Just(Scope::External)],
        )
            .prop_map(|(a, port, protocol, scope)| FrontendKey {
                addr: Ipv4Addr::from(a),
                port,
                protocol,
                scope,
            })
    }

    proptest! {
        #[test]
        fn frontend_keys_round_trip_through_the_map_encoding(key in arb_key(), slot in any::<u16>()) {
            let encoded = key.map_key(slot);
            prop_assert_eq!(encoded.slot, slot);
            prop_assert_eq!(encoded.pad, [0, 0]);
            prop_assert_eq!(FrontendKey::from_map_key(&encoded), Some(key));
        }

        #[test]
        fn map_keys_hold_address_and_port_in_network_order_as_the_kernel_does(key in arb_key()) {
            let encoded = key.map_key(0);
            // The kernel stores user_ip4/user_port as big-endian bytes in memory.
            prop_assert_eq!(encoded.addr.to_ne_bytes(), key.addr.octets());
            prop_assert_eq!(encoded.port.to_ne_bytes(), key.port.to_be_bytes());
        }

        #[test]
        fn backends_round_trip_through_the_map_encoding(a in any::<u32>(), port in any::<u16>(), udp in any::<bool>(), local in any::<bool>()) {
            let addr = BackendAddr { addr: Ipv4Addr::from(a), port, protocol: if udp { Protocol::Udp } else { Protocol::Tcp } };
            let info = BackendInfo { local, terminating: false };
            let value = skiff_ebpf_common::Backend {
                addr: u32::from(addr.addr).to_be(), port: addr.port.to_be(), proto: addr.protocol.number(), flags: info.flags(),
            };
            prop_assert_eq!(backend_addr(&value), Some(addr));
            prop_assert_eq!(value.flags & skiff_ebpf_common::BACKEND_F_LOCAL != 0, local);
        }

        #[test]
        fn malformed_map_keys_are_rejected_not_misread(proto in any::<u8>(), scope in any::<u8>()) {
            let k = skiff_ebpf_common::ServiceKey { proto, scope, ..Default::default() };
            let valid = Protocol::from_number(proto).is_some() && Scope::from_number(scope).is_some();
            prop_assert_eq!(FrontendKey::from_map_key(&k).is_some(), valid);
        }
    }
}

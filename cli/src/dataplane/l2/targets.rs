//! Which LoadBalancer addresses need announcing, and which of them this node may announce: a pure function of the
//! Services, Nodes and EndpointSlices.
//!
//! An address needs announcing when a LoadBalancer Service of Skiff's class has it in `status.loadBalancer.ingress`
//! and it is no node's own address (node addresses answer ARP by themselves). A node may announce it unless the node
//! is labelled `node.kubernetes.io/exclude-from-external-load-balancers`, or the Service has
//! `externalTrafficPolicy: Local` and no ready endpoint on this node (MetalLB's rules).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use skiff_api::loadbalancer::{EXCLUDE_LABEL, is_our_class, nodes_with_ready_endpoints};

/// Every address to announce → whether this node (`me`) may announce it.
pub fn targets(
    services: &[Arc<Service>],
    nodes: &[Arc<Node>],
    slices: &[Arc<EndpointSlice>],
    me: &str,
) -> BTreeMap<Ipv4Addr, bool> {
    let node_addrs: BTreeSet<Ipv4Addr> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
        .flatten()
        .filter_map(|a| a.address.parse().ok())
        .collect();
    let excluded = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(me))
        .is_some_and(|n| n.metadata.labels.as_ref().is_some_and(|l| l.contains_key(EXCLUDE_LABEL)));
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else { continue };
        if spec.type_.as_deref() != Some("LoadBalancer") || !is_our_class(spec.load_balancer_class.as_deref()) {
            continue;
        }
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let eligible = !excluded && (!local || nodes_with_ready_endpoints(svc, slices).contains(me));
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
        for ip in ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()) {
            if !node_addrs.contains(&ip) {
                *out.entry(ip).or_insert(false) |= eligible;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, spec: serde_json::Value, ips: &[&str]) -> Arc<Service> {
        let mut base = json!({"type": "LoadBalancer"});
        for (k, v) in spec.as_object().expect("object") {
            base[k] = v.clone();
        }
        let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": base,
                "status": {"loadBalancer": {"ingress": ingress}}}))
            .expect("service"),
        )
    }

    fn node(name: &str, ip: &str, labels: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))
            .expect("node"),
        )
    }

    #[test]
    fn pool_addresses_are_announced_by_eligible_nodes_only() {
        let slice: Arc<EndpointSlice> = Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "local-x", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "local"}}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.2.3"], "nodeName": "n2", "conditions": {"ready": true}}]}))
            .expect("slice"),
        );
        let services = vec![
            svc("pool", json!({}), &["10.0.0.200"]),
            svc("on-nodes", json!({}), &["10.0.0.11", "10.0.0.12"]),
            svc("local", json!({"externalTrafficPolicy": "Local"}), &["10.0.0.201"]),
            svc("metallb", json!({"loadBalancerClass": "metallb.io/metallb"}), &["10.0.0.202"]),
            svc("not-lb", json!({"type": "ClusterIP"}), &["10.0.0.203"]),
        ];
        let nodes = vec![
            node("n1", "10.0.0.11", json!({})),
            node("n2", "10.0.0.12", json!({})),
            node("n3", "10.0.0.13", json!({EXCLUDE_LABEL: ""})),
        ];
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        let n1 = targets(&services, &nodes, std::slice::from_ref(&slice), "n1");
        assert_eq!(n1, [(ip("10.0.0.200"), true), (ip("10.0.0.201"), false)].into_iter().collect());
        let n2 = targets(&services, &nodes, std::slice::from_ref(&slice), "n2");
        assert_eq!(n2, [(ip("10.0.0.200"), true), (ip("10.0.0.201"), true)].into_iter().collect());
        let n3 = targets(&services, &nodes, &[slice], "n3");
        assert_eq!(n3, [(ip("10.0.0.200"), false), (ip("10.0.0.201"), false)].into_iter().collect());
    }
}

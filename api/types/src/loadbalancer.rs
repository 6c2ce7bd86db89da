//! What the LoadBalancer controller (control plane), the agents' L2 announcement and the API server's NodeRestriction
//! share about LoadBalancer Services: the class Skiff implements, the node label that opts out, which nodes have a
//! ready endpoint of a Service, and the names of the per-address announcement Leases.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The `spec.loadBalancerClass` Skiff implements (as does an unset class).
pub const CLASS: &str = "skiff.dev/service-lb";
/// Nodes with this label never carry LoadBalancer addresses (the Kubernetes well-known label).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// Namespace of the announcement Leases.
pub const ANNOUNCE_NAMESPACE: &str = "kube-system";
/// Name prefix of the announcement Leases.
pub const ANNOUNCE_PREFIX: &str = "skiff-lb-";

/// Whether Skiff serves a Service of this `spec.loadBalancerClass`.
pub fn is_our_class(class: Option<&str>) -> bool {
    class.is_none_or(|c| c.is_empty() || c == CLASS)
}

/// The nodes with a ready (or readiness-unknown) endpoint of `svc` in `slices`.
pub fn nodes_with_ready_endpoints(svc: &Service, slices: &[Arc<EndpointSlice>]) -> BTreeSet<String> {
    let (ns, name) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref());
    slices
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == ns)
        .filter(|s| {
            s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")).map(String::as_str) == name
        })
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| e.node_name.clone())
        .collect()
}

/// The announcement Lease name of an address: `skiff-lb-A-B-C-D`.
pub fn announcement_lease(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{ANNOUNCE_PREFIX}{}-{}-{}-{}", o[0], o[1], o[2], o[3])
}

/// Whether `name` is exactly the announcement Lease name of some address (one name per address).
pub fn is_announcement_lease(name: &str) -> bool {
    name.strip_prefix(ANNOUNCE_PREFIX)
        .and_then(|rest| rest.replace('-', ".").parse::<Ipv4Addr>().ok())
        .is_some_and(|ip| announcement_lease(ip) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_lease_names_are_one_per_address() {
        assert_eq!(announcement_lease(Ipv4Addr::new(10, 0, 0, 200)), "skiff-lb-10-0-0-200");
        assert!(is_announcement_lease("skiff-lb-10-0-0-200"));
        for odd in ["skiff-lb-anything", "skiff-lb-010-0-0-1", "skiff-lb-10-0-0", "skiff-controller-manager"] {
            assert!(!is_announcement_lease(odd), "{odd}");
        }
    }

    #[test]
    fn classes() {
        assert!(is_our_class(None) && is_our_class(Some("")) && is_our_class(Some(CLASS)));
        assert!(!is_our_class(Some("example.com/other")));
    }

    #[test]
    fn ready_endpoints_by_node() {
        let svc: Service = serde_json::from_value(serde_json::json!({"metadata": {"name": "web", "namespace": "d"}}))
            .expect("service");
        let slice = |ns: &str, svc: &str, eps: serde_json::Value| -> Arc<EndpointSlice> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "s", "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
                    "addressType": "IPv4", "endpoints": eps
                }))
                .expect("slice"),
            )
        };
        let slices = [
            slice(
                "d",
                "web",
                serde_json::json!([
                    {"addresses": ["10.244.1.2"], "nodeName": "n1", "conditions": {"ready": true}},
                    {"addresses": ["10.244.2.2"], "nodeName": "n2", "conditions": {"ready": false}},
                    {"addresses": ["10.244.3.2"], "nodeName": "n3"}
                ]),
            ),
            slice("other", "web", serde_json::json!([{"addresses": ["10.244.4.2"], "nodeName": "n4"}])),
            slice("d", "api", serde_json::json!([{"addresses": ["10.244.5.2"], "nodeName": "n5"}])),
        ];
        let nodes: Vec<_> = nodes_with_ready_endpoints(&svc, &slices).into_iter().collect();
        assert_eq!(nodes, ["n1", "n3"]);
    }
}

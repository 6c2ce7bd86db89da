//! NetworkPolicy validation, as kube-apiserver's `ValidateNetworkPolicy` does it: selectors that parse, peers of one
//! kind, CIDRs and strict-subset exceptions, ports and ranges, known policy types. A policy that would be read
//! differently by different implementations is refused rather than stored.

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ErrorList;
use super::common::{NameRule, is_iana_svc_name, validate_object_meta};

/// Validates a NetworkPolicy.
pub fn validate_network_policy(p: &NetworkPolicy, errs: &mut ErrorList) {
    validate_object_meta(&p.metadata, true, NameRule::Dns1123Subdomain, errs);
    let Some(spec) = &p.spec else { return };
    if let Some(sel) = &spec.pod_selector {
        selector(sel, "spec.podSelector", errs);
    }
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            ports(port, &format!("spec.ingress[{i}].ports[{j}]"), errs);
        }
        for (j, peer) in rule.from.iter().flatten().enumerate() {
            peer_of(peer, &format!("spec.ingress[{i}].from[{j}]"), errs);
        }
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            ports(port, &format!("spec.egress[{i}].ports[{j}]"), errs);
        }
        for (j, peer) in rule.to.iter().flatten().enumerate() {
            peer_of(peer, &format!("spec.egress[{i}].to[{j}]"), errs);
        }
    }
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.len() > 2 {
        errs.invalid("spec.policyTypes", format!("{types:?}"), "may not specify more than two policyTypes");
    }
    for (i, t) in types.iter().enumerate() {
        if !matches!(t.as_str(), "Ingress" | "Egress") {
            errs.not_supported(format!("spec.policyTypes[{i}]"), t, &["Ingress", "Egress"]);
        } else if types[..i].contains(t) {
            errs.duplicate(format!("spec.policyTypes[{i}]"), t);
        }
    }
}

fn selector(sel: &LabelSelector, path: &str, errs: &mut ErrorList) {
    if let Err(e) = crate::selector::Selector::from_label_selector(sel) {
        errs.invalid(path, format!("{sel:?}"), e.to_string());
    }
}

fn ports(p: &NetworkPolicyPort, path: &str, errs: &mut ErrorList) {
    if let Some(proto) = p.protocol.as_deref()
        && !matches!(proto, "TCP" | "UDP" | "SCTP")
    {
        errs.not_supported(format!("{path}.protocol"), proto, &["TCP", "UDP", "SCTP"]);
    }
    match (&p.port, p.end_port) {
        (Some(IntOrString::Int(n)), end) => {
            if !(1..=65535).contains(n) {
                errs.invalid(format!("{path}.port"), n, "must be between 1 and 65535, inclusive");
            }
            if let Some(e) = end {
                if !(1..=65535).contains(&e) {
                    errs.invalid(format!("{path}.endPort"), e, "must be between 1 and 65535, inclusive");
                } else if e < *n {
                    errs.invalid(format!("{path}.endPort"), e, "must be greater than or equal to `port`");
                }
            }
        }
        (Some(IntOrString::String(name)), end) => {
            if !is_iana_svc_name(name) {
                errs.invalid(format!("{path}.port"), name, "must be a valid port name (an IANA_SVC_NAME)");
            }
            if let Some(e) = end {
                errs.invalid(format!("{path}.endPort"), e, "may not be specified when `port` is non-numeric");
            }
        }
        (None, Some(e)) => {
            errs.invalid(format!("{path}.endPort"), e, "may not be specified when `port` is not specified")
        }
        (None, None) => {}
    }
}

fn peer_of(peer: &NetworkPolicyPeer, path: &str, errs: &mut ErrorList) {
    let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match (&peer.ip_block, selectors) {
        (None, false) => errs.required(path, "must specify a peer"),
        (Some(_), true) => errs.forbidden(path, "may not specify more than 1 peer type"),
        (Some(b), false) => {
            let cidr = match cidr_of(&b.cidr) {
                Some(c) => c,
                None => return errs.invalid(format!("{path}.ipBlock.cidr"), &b.cidr, "must be a valid CIDR"),
            };
            for (k, e) in b.except.iter().flatten().enumerate() {
                let field = format!("{path}.ipBlock.except[{k}]");
                match cidr_of(e) {
                    None => errs.invalid(field, e, "must be a valid CIDR"),
                    Some(ex) if !(cidr.contains(&ex) && ex.prefix_len() > cidr.prefix_len()) => {
                        errs.invalid(field, e, "must be a strict subset of `cidr`")
                    }
                    Some(_) => {}
                }
            }
        }
        (None, true) => {
            if let Some(s) = &peer.pod_selector {
                selector(s, &format!("{path}.podSelector"), errs);
            }
            if let Some(s) = &peer.namespace_selector {
                selector(s, &format!("{path}.namespaceSelector"), errs);
            }
        }
    }
}

/// A CIDR (address/length; the address need not be the network's first).
fn cidr_of(s: &str) -> Option<ipnet::IpNet> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    ipnet::IpNet::new(addr, len.parse().ok()?).ok().map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: serde_json::Value) -> Vec<String> {
        let p: NetworkPolicy =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "d"}, "spec": spec}))
                .expect("a policy");
        let mut errs = ErrorList::default();
        validate_network_policy(&p, &mut errs);
        errs.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_valid_policy_passes() {
        let e = errors(
            serde_json::json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["web"]}]}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"port": 80, "endPort": 90}, {"port": "http"}, {"protocol": "UDP"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/8"}}]}]}),
        );
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn each_kind_of_mistake_is_named() {
        let cases = [
            (
                serde_json::json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Sometimes"}]}}),
                "spec.podSelector",
            ),
            (serde_json::json!({"policyTypes": ["ingress"]}), "spec.policyTypes[0]"),
            (serde_json::json!({"policyTypes": ["Ingress", "Ingress"]}), "spec.policyTypes[1]"),
            (serde_json::json!({"ingress": [{"from": [{}]}]}), "spec.ingress[0].from[0]"),
            (
                serde_json::json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "spec.ingress[0].from[0]",
            ),
            (
                serde_json::json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                serde_json::json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                serde_json::json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                serde_json::json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                serde_json::json!({"ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (serde_json::json!({"ingress": [{"ports": [{"endPort": 80}]}]}), "spec.ingress[0].ports[0].endPort"),
            (serde_json::json!({"ingress": [{"ports": [{"port": 0}]}]}), "spec.ingress[0].ports[0].port"),
            (
                serde_json::json!({"ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}),
                "spec.ingress[0].ports[0].protocol",
            ),
        ];
        for (spec, field) in cases {
            let e = errors(spec.clone());
            assert!(e.iter().any(|m| m.contains(field)), "{spec}: {e:?}");
        }
    }
}

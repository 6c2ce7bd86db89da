//! Table tests of the desired-state function.

use std::net::Ipv4Addr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;

use super::*;
use crate::model::{BackendAddr, FrontendKey, FrontendKind, Protocol, Scope, SkipReason};

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("a valid Service")
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).expect("a valid EndpointSlice")
}

fn node() -> NodeIdentity {
    NodeIdentity { name: "node-a".into(), addresses: vec![Ipv4Addr::new(192, 168, 0, 10)] }
}

fn web(spec: serde_json::Value) -> Service {
    let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}});
    if let (Some(base), Some(extra)) = (s["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    svc(s)
}

/// Endpoints as (ip, node, ready, serving, terminating).
fn endpoints(eps: &[(&str, &str, bool, bool, bool)]) -> EndpointSlice {
    let eps: Vec<_> = eps
        .iter()
        .map(|(ip, node, ready, serving, terminating)| {
            json!({"addresses": [ip], "nodeName": node,
                   "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
        })
        .collect();
    slice(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
}

fn tables(s: &Service, eps: &EndpointSlice) -> ServiceTables {
    service_tables(s, &[eps], &node(), &Limits::default())
}

fn key(ip: [u8; 4], port: u16, scope: Scope) -> FrontendKey {
    FrontendKey { addr: Ipv4Addr::from(ip), port, protocol: Protocol::Tcp, scope }
}

fn backends(t: &ServiceTables, k: &FrontendKey) -> Vec<String> {
    t.frontends.get(k).map(|f| f.backends.iter().map(|b| b.addr.to_string()).collect()).unwrap_or_default()
}

const READY: (bool, bool, bool) = (true, true, false);
const TERMINATING_SERVING: (bool, bool, bool) = (false, true, true);
const NOT_READY: (bool, bool, bool) = (false, false, false);

fn ep(ip: &'static str, node: &'static str, c: (bool, bool, bool)) -> (&'static str, &'static str, bool, bool, bool) {
    (ip, node, c.0, c.1, c.2)
}

#[test]
fn a_cluster_ip_service_balances_over_its_ready_endpoints_only() {
    let t = tables(
        &web(json!({})),
        &endpoints(&[
            ep("10.244.0.2", "node-a", READY),
            ep("10.244.1.2", "node-b", READY),
            ep("10.244.1.3", "node-b", NOT_READY),
        ]),
    );
    assert_eq!(t.frontends.len(), 1);
    let k = key([10, 96, 0, 10], 80, Scope::Internal);
    assert_eq!(backends(&t, &k), ["10.244.0.2", "10.244.1.2"]);
    let f = &t.frontends[&k];
    assert_eq!(f.kind, FrontendKind::ClusterIp);
    assert_eq!(f.backends[0], BackendAddr { addr: Ipv4Addr::new(10, 244, 0, 2), port: 8080, protocol: Protocol::Tcp });
    assert!(t.backends[&f.backends[0]].local);
    assert!(!t.backends[&f.backends[1]].local);
    assert!(t.skipped.is_empty());
}

#[test]
fn when_no_endpoint_is_ready_serving_terminating_ones_are_used_as_kube_proxy_does() {
    let t = tables(
        &web(json!({})),
        &endpoints(&[ep("10.244.0.2", "node-a", TERMINATING_SERVING), ep("10.244.0.3", "node-a", NOT_READY)]),
    );
    let f = &t.frontends[&key([10, 96, 0, 10], 80, Scope::Internal)];
    assert_eq!(f.backends.len(), 1);
    assert!(f.terminating_fallback);
    assert!(t.backends[&f.backends[0]].terminating);
}

#[test]
fn terminating_endpoints_get_no_traffic_while_a_ready_one_exists() {
    let t = tables(
        &web(json!({})),
        &endpoints(&[ep("10.244.0.2", "node-a", TERMINATING_SERVING), ep("10.244.0.3", "node-a", READY)]),
    );
    assert_eq!(backends(&t, &key([10, 96, 0, 10], 80, Scope::Internal)), ["10.244.0.3"]);
}

#[test]
fn every_listed_endpoint_is_a_backend_so_its_established_flows_keep_it() {
    let t = tables(
        &web(json!({})),
        &endpoints(&[
            ep("10.244.0.2", "node-a", TERMINATING_SERVING),
            ep("10.244.0.3", "node-a", READY),
            ep("10.244.1.4", "node-b", NOT_READY),
        ]),
    );
    let listed: Vec<(String, bool, bool)> =
        t.backends.iter().map(|(a, i)| (a.addr.to_string(), i.local, i.terminating)).collect();
    assert_eq!(
        listed,
        [("10.244.0.2".into(), true, true), ("10.244.0.3".into(), true, false), ("10.244.1.4".into(), false, false)]
    );
    assert_eq!(backends(&t, &key([10, 96, 0, 10], 80, Scope::Internal)), ["10.244.0.3"]);
}

#[test]
fn a_service_without_endpoints_keeps_its_frontend_with_no_backends_so_connections_are_refused() {
    let t = tables(&web(json!({})), &endpoints(&[]));
    let f = &t.frontends[&key([10, 96, 0, 10], 80, Scope::Internal)];
    assert!(f.backends.is_empty());
}

#[test]
fn a_node_port_service_gets_internal_and_external_frontends_on_every_node_address() {
    let s =
        web(json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}));
    let t = tables(&s, &endpoints(&[ep("10.244.0.2", "node-a", READY), ep("10.244.1.2", "node-b", READY)]));
    let keys: Vec<_> = t.frontends.keys().copied().collect();
    assert_eq!(
        keys,
        [
            key([10, 96, 0, 10], 80, Scope::Internal),
            key([192, 168, 0, 10], 30080, Scope::Internal),
            key([192, 168, 0, 10], 30080, Scope::External),
        ]
    );
    assert_eq!(t.frontends[&keys[2]].kind, FrontendKind::NodePort);
    assert_eq!(backends(&t, &keys[2]).len(), 2);
}

#[test]
fn external_traffic_policy_local_restricts_only_external_frontends_to_local_endpoints() {
    let s = web(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}));
    let t = tables(&s, &endpoints(&[ep("10.244.0.2", "node-a", READY), ep("10.244.1.2", "node-b", READY)]));
    let ext = &t.frontends[&key([192, 168, 0, 10], 30080, Scope::External)];
    assert_eq!(ext.backends.len(), 1);
    assert!(ext.local_only);
    // Pods on this node reaching the node port are short-circuited to all endpoints, as kube-proxy does.
    assert_eq!(backends(&t, &key([192, 168, 0, 10], 30080, Scope::Internal)).len(), 2);
    assert_eq!(backends(&t, &key([10, 96, 0, 10], 80, Scope::Internal)).len(), 2);
}

#[test]
fn external_traffic_policy_local_without_local_endpoints_has_nothing_to_balance_externally() {
    let s = web(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}));
    let t = tables(&s, &endpoints(&[ep("10.244.1.2", "node-b", READY)]));
    assert!(t.frontends[&key([192, 168, 0, 10], 30080, Scope::External)].backends.is_empty());
}

#[test]
fn internal_traffic_policy_local_restricts_the_cluster_ip_to_local_endpoints() {
    let s = web(json!({"internalTrafficPolicy": "Local"}));
    let t = tables(&s, &endpoints(&[ep("10.244.0.2", "node-a", READY), ep("10.244.1.2", "node-b", READY)]));
    assert_eq!(backends(&t, &key([10, 96, 0, 10], 80, Scope::Internal)), ["10.244.0.2"]);
}

#[test]
fn load_balancer_ingress_ips_and_external_ips_get_frontends_but_proxy_mode_ips_do_not() {
    let mut s = web(json!({"type": "LoadBalancer", "externalIPs": ["203.0.113.7"],
        "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}));
    s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "198.51.100.1"}, {"ip": "198.51.100.2", "ipMode": "Proxy"}, {"hostname": "lb.example"}]}}))
    .ok();
    let t = tables(&s, &endpoints(&[ep("10.244.0.2", "node-a", READY)]));
    assert!(t.frontends.contains_key(&key([198, 51, 100, 1], 80, Scope::External)));
    assert!(t.frontends.contains_key(&key([198, 51, 100, 1], 80, Scope::Internal)));
    assert!(!t.frontends.contains_key(&key([198, 51, 100, 2], 80, Scope::External)));
    assert_eq!(t.frontends[&key([203, 0, 113, 7], 80, Scope::External)].kind, FrontendKind::ExternalIp);
    assert!(t.frontends.contains_key(&key([192, 168, 0, 10], 30080, Scope::External)));
}

#[test]
fn a_load_balancer_without_node_port_allocation_has_no_node_port_frontends() {
    let s = web(json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
        "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}));
    let t = tables(&s, &endpoints(&[ep("10.244.0.2", "node-a", READY)]));
    assert!(t.frontends.keys().all(|k| k.port != 30080));
}

#[test]
fn session_affinity_client_ip_carries_its_timeout_or_the_default() {
    let s = web(json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}));
    let t = tables(&s, &endpoints(&[ep("10.244.0.2", "node-a", READY)]));
    assert_eq!(t.frontends.values().next().map(|f| f.affinity_timeout), Some(60));
    let s = web(json!({"sessionAffinity": "ClientIP"}));
    let t = tables(&s, &endpoints(&[ep("10.244.0.2", "node-a", READY)]));
    assert_eq!(t.frontends.values().next().map(|f| f.affinity_timeout), Some(DEFAULT_AFFINITY_TIMEOUT));
    let t = tables(&web(json!({})), &endpoints(&[ep("10.244.0.2", "node-a", READY)]));
    assert_eq!(t.frontends.values().next().map(|f| f.affinity_timeout), Some(0));
}

#[test]
fn sctp_ports_are_reported_and_skipped_while_other_ports_are_programmed() {
    let s = web(
        json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "sig", "port": 9, "protocol": "SCTP"}]}),
    );
    let t = tables(&s, &endpoints(&[ep("10.244.0.2", "node-a", READY)]));
    assert_eq!(t.frontends.len(), 1);
    assert_eq!(t.skipped, [SkipReason::UnsupportedProtocol { port: "sig".into(), protocol: "SCTP".into() }]);
}

#[test]
fn a_service_with_too_many_ports_is_skipped_entirely() {
    let ports: Vec<_> = (1..=3).map(|p| json!({"name": format!("p{p}"), "port": p, "protocol": "TCP"})).collect();
    let s = web(json!({ "ports": ports }));
    let t = service_tables(&s, &[], &node(), &Limits { max_ports: 2, max_backends: 10 });
    assert!(t.frontends.is_empty());
    assert_eq!(t.skipped, [SkipReason::TooManyPorts { count: 3, max: 2 }]);
}

#[test]
fn a_port_with_too_many_endpoints_is_skipped() {
    let eps = endpoints(&[ep("10.244.0.2", "node-a", READY), ep("10.244.0.3", "node-a", READY)]);
    let t = service_tables(&web(json!({})), &[&eps], &node(), &Limits { max_ports: 8, max_backends: 1 });
    assert!(t.frontends.is_empty());
    assert!(matches!(t.skipped[0], SkipReason::TooManyBackends { count: 2, max: 1, .. }));
}

#[test]
fn headless_and_external_name_services_have_no_frontends() {
    let headless = web(json!({"clusterIP": "None", "clusterIPs": ["None"]}));
    assert!(tables(&headless, &endpoints(&[ep("10.244.0.2", "node-a", READY)])).frontends.is_empty());
    let ext = web(json!({"type": "ExternalName", "externalName": "example.org"}));
    assert!(tables(&ext, &endpoints(&[])).frontends.is_empty());
}

#[test]
fn endpoint_ports_are_matched_by_port_name_and_protocol() {
    let s = web(
        json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    let e = slice(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.2"]}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}));
    let t = tables(&s, &e);
    let udp =
        FrontendKey { addr: Ipv4Addr::new(10, 96, 0, 10), port: 53, protocol: Protocol::Udp, scope: Scope::Internal };
    assert_eq!(t.frontends[&udp].backends[0].port, 5353);
    assert_eq!(t.frontends[&key([10, 96, 0, 10], 80, Scope::Internal)].backends[0].port, 8080);
}

#[test]
fn ipv6_slices_and_addresses_are_ignored_and_an_endpoint_listed_twice_counts_once() {
    let s = web(json!({"clusterIPs": ["10.96.0.10", "fd00::10"]}));
    let v6 = slice(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-v6", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv6", "endpoints": [{"addresses": ["fd00::2"]}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}));
    let a = endpoints(&[ep("10.244.0.2", "node-a", READY)]);
    let mut b = a.clone();
    b.metadata.name = Some("web-def".into());
    let t = service_tables(&s, &[&a, &b, &v6], &node(), &Limits::default());
    assert_eq!(t.frontends.len(), 1);
    assert_eq!(backends(&t, &key([10, 96, 0, 10], 80, Scope::Internal)), ["10.244.0.2"]);
}

#[test]
fn desired_tables_matches_slices_to_services_by_label_and_namespace() {
    let a = web(json!({}));
    let mut other_ns = endpoints(&[ep("10.244.0.9", "node-a", READY)]);
    other_ns.metadata.namespace = Some("other".into());
    let mine = endpoints(&[ep("10.244.0.2", "node-a", READY)]);
    let t = desired_tables(&[a], &[other_ns, mine], &node(), &Limits::default());
    let st = &t.services[&crate::model::ServiceName::new("default", "web")];
    assert_eq!(backends(st, &key([10, 96, 0, 10], 80, Scope::Internal)), ["10.244.0.2"]);
}

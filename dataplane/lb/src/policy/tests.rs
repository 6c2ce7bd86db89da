//! Table tests of the policy compiler and planner.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::{Value, json};
use skiff_ebpf_common::{IDENTITY_HOST, IDENTITY_WORLD, PEER_ANY};

use super::{
    compile::{NodeView, compile},
    model::{Direction, PortMatch, RuleKey},
    plan::{PolicyOp, Programmed, after, plan},
};

const TCP: u8 = 6;
const UDP: u8 = 17;

fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: Value, ports: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip},
    }))
    .expect("a pod")
}

fn namespace(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("a namespace")
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})).expect("a policy")
}

/// Namespaces x (team a / b), pods: x/a1 (app=a, local), x/b1 (app=b, local), y/a2 (app=a, other node),
/// y/c1 (app=c, local, named port "web" = 8080/TCP).
struct World {
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
    node: NodeView,
}

fn world() -> World {
    World {
        pods: vec![
            pod("x", "a1", "10.244.0.2", "n0", json!({"app": "a"}), json!([])),
            pod("x", "b1", "10.244.0.3", "n0", json!({"app": "b"}), json!([])),
            pod("y", "a2", "10.244.1.2", "n1", json!({"app": "a"}), json!([])),
            pod("y", "c1", "10.244.0.4", "n0", json!({"app": "c"}), json!([{"name": "web", "containerPort": 8080}])),
        ],
        namespaces: vec![namespace("x", json!({"team": "a"})), namespace("y", json!({"team": "b"}))],
        node: NodeView { name: "n0".into(), host_addresses: vec![Ipv4Addr::new(10, 244, 0, 1)] },
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("an address")
}

fn id_of(c: &super::Compiled, addr: &str) -> u32 {
    c.tables.ipcache[&Ipv4Net::from(ip(addr))]
}

fn one_port(proto: u8, port: u16) -> PortMatch {
    PortMatch::Block { proto, port, bits: 16 }
}

#[test]
fn without_policies_local_pods_are_tracked_but_not_isolated() {
    let w = world();
    let c = compile(&[] as &[NetworkPolicy], &w.pods, &w.namespaces, &w.node);
    assert_eq!(c.tables.endpoints.len(), 3, "the three pods of n0");
    assert!(c.tables.endpoints.values().all(|e| !e.ingress_isolated && !e.egress_isolated));
    assert!(c.tables.rules.is_empty());
    assert_eq!(c.tables.ipcache.len(), 5, "four pods and the host");
    assert_eq!(id_of(&c, "10.244.0.1"), IDENTITY_HOST);
    assert_ne!(id_of(&c, "10.244.0.2"), id_of(&c, "10.244.1.2"), "same labels, other namespace");
}

#[test]
fn deny_all_ingress_isolates_every_pod_of_the_namespace_and_allows_nothing() {
    let w = world();
    let p = policy("x", "deny", json!({"podSelector": {}}));
    let c = compile(&[p], &w.pods, &w.namespaces, &w.node);
    let e = &c.tables.endpoints;
    assert!(e[&ip("10.244.0.2")].ingress_isolated && e[&ip("10.244.0.3")].ingress_isolated);
    assert!(!e[&ip("10.244.0.2")].egress_isolated, "policyTypes defaults to Ingress only without egress rules");
    assert!(!e[&ip("10.244.0.4")].ingress_isolated, "another namespace");
    assert!(c.tables.rules.is_empty());
}

#[test]
fn egress_rules_make_the_default_policy_types_include_egress() {
    let w = world();
    let p = policy("x", "out", json!({"podSelector": {"matchLabels": {"app": "a"}}, "egress": [{}]}));
    let c = compile(&[p], &w.pods, &w.namespaces, &w.node);
    let a1 = c.tables.endpoints[&ip("10.244.0.2")];
    assert!(a1.ingress_isolated && a1.egress_isolated);
    let rules: Vec<_> = c.tables.rules.keys().collect();
    assert_eq!(
        rules,
        vec![&RuleKey { endpoint: a1.identity, dir: Direction::Egress, peer: PEER_ANY, ports: PortMatch::All }]
    );
}

#[test]
fn pod_and_namespace_selectors_in_one_peer_intersect_and_in_two_peers_unite() {
    let w = world();
    let both = policy(
        "y",
        "both",
        json!({"podSelector": {"matchLabels": {"app": "c"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "a"}}}]}]}),
    );
    let c = compile(&[both], &w.pods, &w.namespaces, &w.node);
    let peers: Vec<u32> = c.tables.rules.keys().map(|k| k.peer).collect();
    assert_eq!(peers, vec![id_of(&c, "10.244.0.2")], "only x/a1: app=a in a team=a namespace");

    let separate = policy(
        "y",
        "separate",
        json!({"podSelector": {"matchLabels": {"app": "c"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "a"}}}, {"podSelector": {"matchLabels": {"app": "a"}}}]}]}),
    );
    let c = compile(&[separate], &w.pods, &w.namespaces, &w.node);
    let mut peers: Vec<u32> = c.tables.rules.keys().map(|k| k.peer).collect();
    let mut want = vec![id_of(&c, "10.244.0.2"), id_of(&c, "10.244.0.3"), id_of(&c, "10.244.1.2")];
    peers.sort_unstable();
    want.sort_unstable();
    assert_eq!(peers, want, "every pod of x, and app=a of y (the policy's namespace)");
}

#[test]
fn the_namespace_name_label_is_always_there() {
    let w = world();
    let p = policy(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]}),
    );
    let c = compile(&[p], &w.pods, &w.namespaces, &w.node);
    let mut peers: Vec<u32> = c.tables.rules.keys().map(|k| k.peer).collect();
    peers.sort_unstable();
    peers.dedup();
    let mut want = vec![id_of(&c, "10.244.1.2"), id_of(&c, "10.244.0.4")];
    want.sort_unstable();
    assert_eq!(peers, want);
}

#[test]
fn ip_blocks_carve_the_address_space_and_cover_pod_addresses_inside_them() {
    let w = world();
    let p = policy(
        "x",
        "cidr",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"], "egress": [{"to": [
            {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}}],
            "ports": [{"port": 80, "protocol": "UDP"}]}]}),
    );
    let c = compile(&[p], &w.pods, &w.namespaces, &w.node);
    let block = c.tables.ipcache[&"10.244.0.0/16".parse::<Ipv4Net>().expect("cidr")];
    assert!(block >= 256);
    assert_eq!(c.tables.ipcache[&"10.244.1.0/24".parse::<Ipv4Net>().expect("cidr")], IDENTITY_WORLD);
    let peers: Vec<u32> = c.tables.rules.keys().map(|k| k.peer).collect();
    // The block's own identity and the three pods inside it, not y/a2 (in the except) nor the host.
    assert_eq!(peers.len(), 4, "{peers:?}");
    assert!(peers.contains(&block) && peers.contains(&id_of(&c, "10.244.0.4")));
    assert!(!peers.contains(&id_of(&c, "10.244.1.2")));
    assert!(c.tables.rules.keys().all(|k| k.ports == one_port(UDP, 80) && k.dir == Direction::Egress));
}

#[test]
fn named_ports_resolve_against_the_destination_pod() {
    let w = world();
    // Ingress: c1's own "web".
    let into = policy("y", "in", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]}));
    let c = compile(&[into], &w.pods, &w.namespaces, &w.node);
    let rules: Vec<_> = c.tables.rules.keys().collect();
    assert_eq!(rules.len(), 1, "a2 is not local and has no such port");
    assert_eq!(rules[0].ports, one_port(TCP, 8080));
    assert_eq!(rules[0].endpoint, id_of(&c, "10.244.0.4"));
    // Egress to any peer on "web": only the pods that have it.
    let out = policy(
        "x",
        "out",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "web"}]}]}),
    );
    let c = compile(&[out], &w.pods, &w.namespaces, &w.node);
    assert!(c.tables.rules.keys().all(|k| k.peer == id_of(&c, "10.244.0.4") && k.ports == one_port(TCP, 8080)));
    assert_eq!(c.tables.rules.len(), 2, "one per selected endpoint identity (a1, b1)");
    // A name no pod has allows nothing.
    let none = policy("x", "none", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "nope"}]}]}));
    assert!(compile(&[none], &w.pods, &w.namespaces, &w.node).tables.rules.is_empty());
}

#[test]
fn end_port_ranges_become_aligned_blocks() {
    let w = world();
    let p = policy(
        "x",
        "range",
        json!({"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{
        "ports": [{"port": 80, "endPort": 81}, {"protocol": "UDP"}]}]}),
    );
    let c = compile(&[p], &w.pods, &w.namespaces, &w.node);
    let ports: Vec<PortMatch> = c.tables.rules.keys().map(|k| k.ports).collect();
    assert_eq!(ports, vec![PortMatch::Protocol(UDP), PortMatch::Block { proto: TCP, port: 80, bits: 15 }]);
}

#[test]
fn bad_parts_are_reported_and_allow_nothing_while_the_policy_still_isolates() {
    let w = world();
    let p = policy(
        "x",
        "bad",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/8"}}]},
        {"ports": [{"port": 90, "endPort": 80}]}]}),
    );
    let c = compile(&[p], &w.pods, &w.namespaces, &w.node);
    assert_eq!(c.skipped.len(), 2, "{:?}", c.skipped);
    assert!(c.tables.endpoints[&ip("10.244.0.2")].ingress_isolated);
    // The peer list became empty but was given: it must not turn into "every peer".
    assert!(c.tables.rules.is_empty(), "{:?}", c.tables.rules);
}

#[test]
fn the_first_policy_by_name_is_credited_and_ids_are_stable() {
    let w = world();
    let a = policy("x", "a", json!({"podSelector": {}, "ingress": [{}]}));
    let b = policy("x", "b", json!({"podSelector": {}, "ingress": [{}]}));
    let c1 = compile(&[b.clone(), a.clone()], &w.pods, &w.namespaces, &w.node);
    let c2 = compile(&[a, b], &w.pods, &w.namespaces, &w.node);
    assert_eq!(c1.tables, c2.tables);
    let credited: Vec<&String> = c1.tables.rules.values().map(|id| &c1.names.policies[id]).collect();
    assert!(credited.iter().all(|n| n.as_str() == "x/a"));
}

/// x/b (app=b) lets in app=a pods of x.
fn b_from_a() -> NetworkPolicy {
    policy(
        "x",
        "from-a",
        json!({"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"app": "a"}}}]}]}),
    )
}

/// The veths of the three local pods.
fn veths() -> BTreeMap<Ipv4Addr, u32> {
    [("10.244.0.2", 12), ("10.244.0.3", 13), ("10.244.0.4", 14)].iter().map(|(a, i)| (ip(a), *i)).collect()
}

#[test]
fn a_label_change_touches_only_what_it_affects() {
    let w = world();
    let p = b_from_a();
    let before = compile(std::slice::from_ref(&p), &w.pods, &w.namespaces, &w.node);
    let mut pods = w.pods.clone();
    pods[0].metadata.labels = Some(BTreeMap::from([("app".to_string(), "z".to_string())]));
    let now = compile(&[p], &pods, &w.namespaces, &w.node);
    let veths = veths();
    let mut current = Programmed::default();
    after(&mut current, &plan(&Programmed::default(), &before.tables, &veths));
    let ops = plan(&current, &now.tables, &veths);
    // a1's address and endpoint get its new identity; b1's rule for the old one goes; nothing else is written.
    let new_id = id_of(&now, "10.244.0.2");
    let old_id = id_of(&before, "10.244.0.2");
    assert!(ops.contains(&PolicyOp::PutIp(Ipv4Net::from(ip("10.244.0.2")), new_id)));
    assert!(ops.iter().any(|o| matches!(o, PolicyOp::PutEndpoint(12, e) if e.identity == new_id)));
    assert!(ops.iter().any(|o| matches!(o, PolicyOp::DeleteRule(k) if k.peer == old_id)));
    assert_eq!(ops.last(), Some(&PolicyOp::BumpGeneration));
    assert_eq!(ops.len(), 4, "{ops:#?}");
}

#[test]
fn the_plan_adds_before_it_isolates_and_removes_last_and_is_empty_when_nothing_changed() {
    let w = world();
    let p = b_from_a();
    let veths = veths();
    let open = compile(&[] as &[NetworkPolicy], &w.pods, &w.namespaces, &w.node);
    let closed = compile(&[p], &w.pods, &w.namespaces, &w.node);
    let mut current = Programmed::default();
    let first = plan(&current, &open.tables, &veths);
    after(&mut current, &first);
    let ops = plan(&current, &closed.tables, &veths);
    let rule = ops.iter().position(|o| matches!(o, PolicyOp::PutRule(..))).expect("a rule is added");
    let isolate =
        ops.iter().position(|o| matches!(o, PolicyOp::PutEndpoint(13, e) if e.flags != 0)).expect("b1 isolated");
    assert!(rule < isolate, "{ops:#?}");
    after(&mut current, &ops);
    assert!(plan(&current, &closed.tables, &veths).is_empty());
    // Back to open: the endpoint opens before its rule goes.
    let ops = plan(&current, &open.tables, &veths);
    let open_ep = ops.iter().position(|o| matches!(o, PolicyOp::PutEndpoint(13, e) if e.flags == 0)).expect("opened");
    let removed = ops.iter().position(|o| matches!(o, PolicyOp::DeleteRule(_))).expect("rule removed");
    assert!(open_ep < removed);
    // A pod whose veth is unknown is not written; a veth that went away is removed.
    let fewer: BTreeMap<Ipv4Addr, u32> = veths.iter().filter(|(_, i)| **i != 14).map(|(a, i)| (*a, *i)).collect();
    let ops = plan(&current, &open.tables, &fewer);
    assert!(ops.contains(&PolicyOp::DeleteEndpoint(14)));
}

#[test]
fn unreadable_parts_fail_closed() {
    let w = world();
    // A bad exception does not widen the block: the peer matches nothing.
    let p = policy(
        "x",
        "bad-except",
        json!({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0"]}}]}]}),
    );
    let c = compile(&[p], &w.pods, &w.namespaces, &w.node);
    assert!(c.tables.rules.is_empty(), "{:?}", c.tables.rules);
    assert!(c.tables.endpoints[&ip("10.244.0.2")].ingress_isolated);
    // A selector that cannot be read isolates every pod of the namespace and allows nothing.
    let p = policy(
        "x",
        "bad-selector",
        json!({"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "Sometimes", "values": ["a"]}]}, "ingress": [{}]}),
    );
    let c = compile(&[p], &w.pods, &w.namespaces, &w.node);
    assert!(
        c.tables.endpoints[&ip("10.244.0.2")].ingress_isolated
            && c.tables.endpoints[&ip("10.244.0.3")].ingress_isolated
    );
    assert!(c.tables.rules.is_empty());
    assert_eq!(c.skipped.len(), 1);
    // An unknown policy type isolates both directions.
    let p = policy("x", "bad-type", json!({"podSelector": {}, "policyTypes": ["ingress"], "ingress": [{}]}));
    let c = compile(&[p], &w.pods, &w.namespaces, &w.node);
    let e = c.tables.endpoints[&ip("10.244.0.2")];
    assert!(e.ingress_isolated && e.egress_isolated);
}

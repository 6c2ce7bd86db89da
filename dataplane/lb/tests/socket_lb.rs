//! Socket-level load balancing (cgroup connect4/sendmsg4/recvmsg4/getpeername4) from a pod-like namespace whose
//! processes run in the test's cgroup. Runs as root; fails instead of skipping when CI=true.

mod common;

use std::collections::BTreeSet;

use common::{Cluster, apply, counters, ids, service, slice};
use serde_json::json;
use skiff_testkit::{probe, require_privileges};

#[test]
fn probe_entry() {
    probe::entry();
}

/// A cluster with a client pod (0) and three backend pods (1, 2 on node 0; 3 on node 1).
fn setup() -> Option<(Cluster, Vec<skiff_testkit::Child>)> {
    if !require_privileges("socket-level load balancing tests") {
        return None;
    }
    let mut c = Cluster::new(2).expect("building the cluster");
    for node in [0, 0, 0, 1] {
        c.add_pod(node).expect("adding a pod");
    }
    let mut servers = Vec::new();
    for (pod, id) in [(1, "b1"), (2, "b2"), (3, "b3")] {
        servers.push(c.serve(pod, "tcp", 8080, id));
        servers.push(c.serve(pod, "udp", 5353, id));
    }
    Some((c, servers))
}

fn eps(c: &Cluster, pods: &[(usize, bool)]) -> Vec<(std::net::Ipv4Addr, &'static str, bool)> {
    pods.iter()
        .map(|(p, ready)| (c.pods[*p].ip, if c.pods[*p].node == 0 { "node-0" } else { "node-1" }, *ready))
        .collect()
}

#[test]
fn cluster_ip_tcp_connects_straight_to_ready_backends_and_the_socket_sees_the_service_address() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    apply(
        &mut lb,
        vec![service("web", "10.96.0.10", json!({"ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}))],
        vec![slice("web", &eps(&c, &[(1, true), (2, true), (3, true)]), 8080, "TCP")],
    );
    let lines = c.run_in_pod(0, "tcp 30 10.96.0.10:80");
    assert_eq!(lines.len(), 30);
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
    // The socket's peer is the service address (getpeername4), while the backend saw the pod connect directly.
    assert!(lines.iter().all(|l| probe::field(l, "sockpeer") == Some("10.96.0.10:80")), "{lines:?}");
    let client_ip = c.pods[0].ip.to_string();
    assert!(lines.iter().all(|l| probe::field(l, "peer").is_some_and(|p| p.starts_with(&format!("{client_ip}:")))));
    let seen: BTreeSet<String> = ids(&lines).into_iter().collect();
    assert_eq!(seen, ["b1", "b2", "b3"].map(String::from).into(), "30 connections reach every backend");
    assert_eq!(counters(&lb, "web").connections, 30);
}

#[test]
fn cluster_ip_udp_replies_come_from_the_service_address_connected_or_not() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    apply(
        &mut lb,
        vec![service("dns", "10.96.0.53", json!({"ports": [{"name": "p", "port": 53, "protocol": "UDP"}]}))],
        vec![slice("dns", &eps(&c, &[(1, true), (3, true)]), 5353, "UDP")],
    );
    for mode in ["unconnected", "connected"] {
        let lines = c.run_in_pod(0, &format!("udp 5 10.96.0.53:53 {mode}"));
        assert_eq!(lines.len(), 5, "{mode}: {lines:?}");
        assert!(lines.iter().all(|l| l.starts_with("ok")), "{mode}: {lines:?}");
        // recvmsg4 (unconnected) and getpeername4 (connected) show the service address.
        assert!(lines.iter().all(|l| probe::field(l, "from") == Some("10.96.0.53:53")), "{mode}: {lines:?}");
        // One socket keeps one backend (the hash is of the socket cookie).
        let distinct: BTreeSet<String> = ids(&lines).into_iter().collect();
        assert_eq!(distinct.len(), 1, "{mode}: {lines:?}");
    }
}

#[test]
fn a_service_without_endpoints_refuses_connections_at_once_and_scaling_to_zero_does_too() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    apply(&mut lb, vec![service("empty", "10.96.0.20", json!({}))], vec![slice("empty", &[], 8080, "TCP")]);
    let lines = c.run_in_pod(0, "tcp 3 10.96.0.20:80");
    assert!(lines.iter().all(|l| probe::field(l, "kind") == Some("refused")), "{lines:?}");
    assert!(lines.iter().all(|l| probe::field(l, "ms").and_then(|m| m.parse::<u64>().ok()).is_some_and(|m| m < 500)));

    apply(
        &mut lb,
        vec![service("web", "10.96.0.10", json!({}))],
        vec![slice("web", &eps(&c, &[(1, true)]), 8080, "TCP")],
    );
    assert!(c.run_in_pod(0, "tcp 2 10.96.0.10:80").iter().all(|l| l.starts_with("ok")));
    apply(&mut lb, vec![], vec![slice("web", &[], 8080, "TCP")]);
    let lines = c.run_in_pod(0, "tcp 2 10.96.0.10:80");
    assert!(lines.iter().all(|l| probe::field(l, "kind") == Some("refused")), "{lines:?}");
    assert_eq!(counters(&lb, "web").refused, 2);
    assert_eq!(counters(&lb, "empty").refused, 3);
}

#[test]
fn an_endpoint_that_goes_not_ready_receives_no_new_connections() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    apply(
        &mut lb,
        vec![service("web", "10.96.0.10", json!({}))],
        vec![slice("web", &eps(&c, &[(1, true), (2, true)]), 8080, "TCP")],
    );
    let before: BTreeSet<String> = ids(&c.run_in_pod(0, "tcp 20 10.96.0.10:80")).into_iter().collect();
    assert_eq!(before.len(), 2);
    apply(&mut lb, vec![], vec![slice("web", &eps(&c, &[(1, true), (2, false)]), 8080, "TCP")]);
    let after = ids(&c.run_in_pod(0, "tcp 20 10.96.0.10:80"));
    assert_eq!(after.len(), 20);
    assert!(after.iter().all(|id| id == "b1"), "{after:?}");
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend_and_lets_it_go_when_the_backend_leaves() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    let svc = service(
        "sticky",
        "10.96.0.30",
        json!({"sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
    );
    apply(&mut lb, vec![svc], vec![slice("sticky", &eps(&c, &[(1, true), (2, true), (3, true)]), 8080, "TCP")]);
    let first: BTreeSet<String> = ids(&c.run_in_pod(0, "tcp 15 10.96.0.30:80")).into_iter().collect();
    assert_eq!(first.len(), 1, "one backend for the client: {first:?}");
    let again: BTreeSet<String> = ids(&c.run_in_pod(0, "tcp 5 10.96.0.30:80")).into_iter().collect();
    assert_eq!(first, again, "a new process in the same pod keeps the backend");
    // Remove the chosen backend: the client moves, and stays on its new one.
    let chosen = first.iter().next().cloned().unwrap_or_default();
    let remaining: Vec<(usize, bool)> =
        [(1, "b1"), (2, "b2"), (3, "b3")].iter().filter(|(_, id)| *id != chosen).map(|(p, _)| (*p, true)).collect();
    apply(&mut lb, vec![], vec![slice("sticky", &eps(&c, &remaining), 8080, "TCP")]);
    let moved: BTreeSet<String> = ids(&c.run_in_pod(0, "tcp 10 10.96.0.30:80")).into_iter().collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(!moved.contains(&chosen));
}

#[test]
fn processes_outside_the_attached_cgroup_are_not_balanced() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    apply(
        &mut lb,
        vec![service("web", "10.96.0.10", json!({}))],
        vec![slice("web", &eps(&c, &[(1, true)]), 8080, "TCP")],
    );
    let outside = probe::client(None, Some(&c.pods[0].ns), "tcp 1 10.96.0.10:80").expect("probe");
    assert!(outside.iter().all(|l| l.starts_with("err")), "{outside:?}");
}

#[test]
fn the_nodes_own_processes_reach_cluster_ips_and_node_ports_but_never_external_addresses() {
    let Some((c, _servers)) = setup() else { return };
    // Stands in for the node's root cgroup: the test never attaches to the machine's.
    let node_cgroup = skiff_testkit::Cgroup::new("skiff-lbnode").expect("cgroup");
    let mut cfg = c.config();
    cfg.node_cgroup = Some(node_cgroup.path().to_path_buf());
    let mut lb = c.start_lb(&cfg);
    apply(
        &mut lb,
        vec![service(
            "web",
            "10.96.0.10",
            json!({"type": "NodePort", "externalIPs": ["203.0.113.20"],
                   "ports": [{"name": "p", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
        )],
        vec![slice("web", &eps(&c, &[(1, true), (3, true)]), 8080, "TCP")],
    );
    let node = &c.nodes[0].ns;
    let on_node = |spec: &str| probe::client(Some(&node_cgroup), Some(node), spec).expect("probe");
    let cluster_ip = on_node("tcp 6 10.96.0.10:80");
    assert!(cluster_ip.iter().all(|l| l.starts_with("ok")), "ClusterIP from the node: {cluster_ip:?}");
    assert!(cluster_ip.iter().all(|l| probe::field(l, "sockpeer") == Some("10.96.0.10:80")), "{cluster_ip:?}");
    let node_port = on_node(&format!("tcp 3 {}:30080", common::node_ip(0)));
    assert!(node_port.iter().all(|l| l.starts_with("ok")), "NodePort on the node's address: {node_port:?}");
    // An external IP is an address a Service's author chose: the node's own traffic to it is never captured.
    let external = on_node("tcp 1 203.0.113.20:80");
    assert!(external.iter().all(|l| l.starts_with("err")), "{external:?}");
    // The pods still get everything.
    let from_pod = c.run_in_pod(0, "tcp 2 203.0.113.20:80");
    assert!(from_pod.iter().all(|l| l.starts_with("ok")), "{from_pod:?}");
    // And a process in neither cgroup is untouched.
    let elsewhere = probe::client(None, Some(node), "tcp 1 10.96.0.10:80").expect("probe");
    assert!(elsewhere.iter().all(|l| l.starts_with("err")), "{elsewhere:?}");
}

//! The tc path: NodePort, LoadBalancer and external IPs reached from a separate "client host" namespace through
//! node 0's interface, with backends on node 0 (DNAT only) and on node 1 (DNAT + SNAT, FIB redirect). Runs as root;
//! fails instead of skipping when CI=true.

mod common;

use std::collections::BTreeSet;

use common::{CLIENT_IP, Cluster, Conditions, apply, counters, exchange, ids, node_ip, service, slice, slice_with};
use serde_json::json;
use skiff_testkit::{probe, require_privileges};

#[test]
fn probe_entry() {
    probe::entry();
}

/// Backends: pod 0 (node 0, "local") and pod 1 (node 1, "remote").
fn setup() -> Option<(Cluster, Vec<skiff_testkit::Child>)> {
    if !require_privileges("NodePort tc path tests") {
        return None;
    }
    let mut c = Cluster::new(2).expect("building the cluster");
    c.add_pod(0).expect("pod");
    c.add_pod(1).expect("pod");
    let servers = vec![
        c.serve(0, "tcp", 8080, "local"),
        c.serve(1, "tcp", 8080, "remote"),
        c.serve(0, "udp", 5353, "local"),
        c.serve(1, "udp", 5353, "remote"),
    ];
    Some((c, servers))
}

fn both(c: &Cluster) -> Vec<(std::net::Ipv4Addr, &'static str, bool)> {
    vec![(c.pods[0].ip, "node-0", true), (c.pods[1].ip, "node-1", true)]
}

fn nodeport(extra: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
    let mut spec =
        json!({"type": "NodePort", "ports": [{"name": "p", "port": 80, "nodePort": 30080, "protocol": "TCP"}]});
    if let (Some(base), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    service("web", "10.96.0.10", spec)
}

#[test]
fn a_node_port_reaches_local_and_remote_backends_and_replies_come_from_the_node_port() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    apply(&mut lb, vec![nodeport(json!({}))], vec![slice("web", &both(&c), 8080, "TCP")]);
    let target = format!("{}:30080", node_ip(0));
    let lines = c.run_on_client(&format!("tcp 40 {target}"));
    assert_eq!(lines.len(), 40);
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
    assert!(lines.iter().all(|l| probe::field(l, "sockpeer") == Some(target.as_str())), "{lines:?}");
    let seen: BTreeSet<String> = ids(&lines).into_iter().collect();
    assert_eq!(seen, ["local", "remote"].map(String::from).into());
    for l in &lines {
        let peer_ip = probe::field(l, "peer").and_then(|p| p.split(':').next()).unwrap_or_default().to_string();
        match probe::field(l, "id") {
            // A local backend sees the client itself; a remote one sees node 0 (SNAT).
            Some("local") => assert_eq!(peer_ip, CLIENT_IP.to_string(), "{l}"),
            Some("remote") => assert_eq!(peer_ip, node_ip(0).to_string(), "{l}"),
            other => panic!("unexpected backend {other:?}"),
        }
    }
    let stats = counters(&lb, "web");
    assert_eq!(stats.connections, 40);
    assert!(stats.packets >= 40 * 4, "{stats:?}");
    assert!(stats.bytes > stats.packets * 40, "{stats:?}");
}

/// A connection over the tc path from the client to `target` held open by a `hold` probe, with the id of the pod
/// that answered it.
fn held(c: &Cluster, target: &str) -> (skiff_testkit::Child, String) {
    let mut conn = probe::spawn(None, Some(&c.client), &format!("hold {target}")).expect("probe");
    let hello = conn.read_line_starting(probe::MARK).expect("hello");
    assert!(hello.starts_with("connected"), "{hello}");
    let id = probe::field(&hello, "id").expect("the pod's id").to_string();
    (conn, id)
}

#[test]
fn an_open_connection_stays_with_its_pod_while_the_endpoint_terminates() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    apply(&mut lb, vec![nodeport(json!({}))], vec![slice("web", &both(&c), 8080, "TCP")]);
    let target = format!("{}:30080", node_ip(0));
    // One held connection to each pod: the local one (DNAT only) and the remote one (DNAT + SNAT). The hash picks
    // the pod; 40 tries all landing on one pod has a chance of 2^-39.
    let mut conns: Vec<(skiff_testkit::Child, String)> = Vec::new();
    for _ in 0..40 {
        let (conn, id) = held(&c, &target);
        if !conns.iter().any(|(_, seen)| *seen == id) {
            conns.push((conn, id));
        }
        if conns.len() == 2 {
            break;
        }
    }
    assert_eq!(conns.len(), 2, "no connection reached both pods");
    let terminating = |pod: usize| -> Vec<(std::net::Ipv4Addr, &'static str, Conditions)> {
        let names = ["node-0", "node-1"];
        (0..2)
            .map(|i| {
                let cond = if i == pod { Conditions::TERMINATING } else { Conditions::ready(true) };
                (c.pods[i].ip, names[i], cond)
            })
            .collect()
    };
    for (pod, id) in [(0, "local"), (1, "remote")] {
        // The pod starts terminating (still serving, as within its grace period): no new connection goes to it,
        // and the one it has keeps going to it.
        apply(&mut lb, vec![], vec![slice_with("web", &terminating(pod), 8080, "TCP")]);
        let (conn, _) = conns.iter_mut().find(|(_, seen)| seen == id).expect("a connection to the pod");
        let reply = exchange(conn, "during");
        assert_eq!(reply, format!("reply {id}:during"), "the open connection to the terminating {id} pod");
        let fresh = c.run_on_client(&format!("tcp 10 {target}"));
        assert!(fresh.iter().all(|l| l.starts_with("ok")), "{fresh:?}");
        assert!(ids(&fresh).iter().all(|seen| seen != id), "a new connection went to the terminating pod: {fresh:?}");
        apply(&mut lb, vec![], vec![slice("web", &both(&c), 8080, "TCP")]);
    }
    // Both connections are still with their pods.
    for (conn, id) in &mut conns {
        assert_eq!(exchange(conn, "after"), format!("reply {id}:after"));
    }
}

#[test]
fn a_new_connection_that_reuses_the_tuple_of_one_to_a_draining_pod_goes_elsewhere() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    let target = format!("{}:30080", node_ip(0));
    for (first, cond, what) in
        [(42000u16, Conditions::TERMINATING, "terminating"), (43000, Conditions::ready(false), "not ready")]
    {
        apply(&mut lb, vec![nodeport(json!({}))], vec![slice("web", &both(&c), 8080, "TCP")]);
        // Source ports whose connections the hash sends to the local pod (all 40 hashed to the remote one: a chance
        // of 2^-40). Three of them, because reconnecting from a port whose last connection this side closed first
        // fails with EADDRNOTAVAIL (TIME_WAIT), which says nothing about the balancer.
        let ports: Vec<u16> = (first..first + 40)
            .filter(|p| {
                let lines = c.run_on_client(&format!("tcp 1 {target} {p}"));
                ids(&lines).first().map(String::as_str) == Some("local")
            })
            .take(3)
            .collect();
        assert!(!ports.is_empty(), "no source port reached the local pod");
        let eps = [(c.pods[0].ip, "node-0", cond), (c.pods[1].ip, "node-1", Conditions::ready(true))];
        apply(&mut lb, vec![], vec![slice_with("web", &eps, 8080, "TCP")]);
        // The same client address and ports again: the flows' entries still name the local pod, which still serves.
        let lines: Vec<String> = ports.iter().flat_map(|p| c.run_on_client(&format!("tcp 1 {target} {p}"))).collect();
        let reached = ids(&lines);
        assert!(!reached.is_empty(), "no reconnection went through: {lines:?}");
        assert!(reached.iter().all(|id| id == "remote"), "a new connection went to the {what} pod: {lines:?}");
    }
}

#[test]
fn external_traffic_policy_local_uses_only_local_endpoints_and_preserves_the_client_address() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    apply(
        &mut lb,
        vec![nodeport(json!({"externalTrafficPolicy": "Local"}))],
        vec![slice("web", &both(&c), 8080, "TCP")],
    );
    let lines = c.run_on_client(&format!("tcp 20 {}:30080", node_ip(0)));
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
    assert!(ids(&lines).iter().all(|id| id == "local"), "{lines:?}");
    let client = format!("{CLIENT_IP}:");
    assert!(lines.iter().all(|l| probe::field(l, "peer").is_some_and(|p| p.starts_with(&client))), "{lines:?}");
}

#[test]
fn load_balancer_and_external_ips_are_balanced_from_outside() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    let mut svc = nodeport(json!({"type": "LoadBalancer", "externalIPs": ["203.0.113.20"]}));
    svc.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}})).ok();
    apply(&mut lb, vec![svc], vec![slice("web", &both(&c), 8080, "TCP")]);
    for vip in ["203.0.113.10:80", "203.0.113.20:80"] {
        let lines = c.run_on_client(&format!("tcp 10 {vip}"));
        assert!(lines.iter().all(|l| l.starts_with("ok")), "{vip}: {lines:?}");
        assert!(lines.iter().all(|l| probe::field(l, "sockpeer") == Some(vip)), "{vip}: {lines:?}");
    }
}

#[test]
fn udp_node_ports_work_through_the_tc_path_with_replies_from_the_node_port() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    let svc = service(
        "dns",
        "10.96.0.53",
        json!({"type": "NodePort",
        "ports": [{"name": "p", "port": 53, "nodePort": 30053, "protocol": "UDP"}]}),
    );
    apply(&mut lb, vec![svc], vec![slice("dns", &both(&c), 5353, "UDP")]);
    let target = format!("{}:30053", node_ip(0));
    let mut seen = BTreeSet::new();
    for _ in 0..16 {
        let lines = c.run_on_client(&format!("udp 2 {target} unconnected"));
        assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
        assert!(lines.iter().all(|l| probe::field(l, "from") == Some(target.as_str())), "{lines:?}");
        seen.extend(ids(&lines));
    }
    assert_eq!(seen, ["local", "remote"].map(String::from).into(), "new sockets spread over both backends");
}

#[test]
fn pods_on_the_node_reach_the_node_port_through_the_socket_hooks() {
    let Some((mut c, _servers)) = setup() else { return };
    let client_pod = c.add_pod(0).expect("pod");
    let mut lb = c.start_lb(&c.config());
    apply(&mut lb, vec![nodeport(json!({}))], vec![slice("web", &both(&c), 8080, "TCP")]);
    let target = format!("{}:30080", node_ip(0));
    let lines = c.run_in_pod(client_pod, &format!("tcp 10 {target}"));
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
    assert!(lines.iter().all(|l| probe::field(l, "sockpeer") == Some(target.as_str())), "{lines:?}");
}

/// (ifindex, MAC) of `dev` in `ns`.
fn link(ns: &skiff_testkit::NetNs, dev: &str) -> (u32, [u8; 6]) {
    let out = ns.ip(&["-j", "link", "show", dev]).expect("ip link");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    let ifindex = v[0]["ifindex"].as_u64().expect("ifindex") as u32;
    let mac: Vec<u8> = v[0]["address"]
        .as_str()
        .expect("address")
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    (ifindex, mac.try_into().expect("6 bytes"))
}

#[test]
fn an_announced_pool_address_is_answered_by_arp_on_the_lan_and_balanced() {
    let Some((c, _servers)) = setup() else { return };
    let mut lb = c.start_lb(&c.config());
    let vip = "192.168.50.200";
    let mut svc = nodeport(json!({"type": "LoadBalancer"}));
    svc.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": vip}]}})).ok();
    apply(&mut lb, vec![svc], vec![slice("web", &both(&c), 8080, "TCP")]);
    let target = format!("{vip}:80");

    // Nobody answers for the address yet: the client cannot even resolve it.
    let before = c.run_on_client(&format!("tcp 1 {target}"));
    assert!(before[0].starts_with("err"), "{before:?}");

    let (ifindex, mac) = c.nodes[0].ns.enter(|| link(&c.nodes[0].ns, "eth0")).expect("node 0");
    let mut maps = skiff_lb::loader::open_pinned(c.pins.path()).expect("pinned maps");
    let entry = skiff_ebpf_common::L2Entry { expires: u64::MAX, ifindex, mac, pad: [0; 6] };
    let wanted = [(vip.parse().expect("ip"), entry)].into_iter().collect();
    assert_eq!(maps.set_announced(&wanted).expect("announce"), 1);
    assert_eq!(maps.set_announced(&wanted).expect("announce"), 0, "nothing to write the second time");
    c.client.ip(&["neigh", "flush", "dev", "eth0"]).expect("flush the client's ARP cache");
    let lines = c.run_on_client(&format!("tcp 10 {target}"));
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
    let neigh = c.client.ip(&["neigh", "show", vip]).expect("neigh");
    let mac_text = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    assert!(neigh.contains(&mac_text), "the client resolved the address to node 0's MAC: {neigh}");
    let arp = lb.applier().maps().nat_events().expect("counters");
    assert!(arp.iter().any(|(e, v)| *e == skiff_ebpf_common::NatEvent::ArpAnswered && *v >= 1), "{arp:?}");

    // Expired (an agent that stopped renewing): no answer, although the entry is still there.
    let expired = skiff_ebpf_common::L2Entry { expires: 1, ..entry };
    let wanted_expired = [(vip.parse().expect("ip"), expired)].into_iter().collect();
    assert_eq!(maps.set_announced(&wanted_expired).expect("announce"), 1);
    c.client.ip(&["neigh", "flush", "dev", "eth0"]).expect("flush");
    let unanswered = c.run_on_client(&format!("tcp 1 {target}"));
    assert!(unanswered[0].starts_with("err"), "{unanswered:?}");

    // Withdrawn: new resolutions fail again.
    assert_eq!(maps.set_announced(&Default::default()).expect("withdraw"), 1);
    c.client.ip(&["neigh", "flush", "dev", "eth0"]).expect("flush");
    let after = c.run_on_client(&format!("tcp 1 {target}"));
    assert!(after[0].starts_with("err"), "{after:?}");
}

//! Pod egress masquerade on node 0's interface: a pod reaches the "outside" host (the client namespace, which has no
//! route to the pod network) with the node's address; TCP, UDP, ICMP echo and ICMP errors are translated both ways;
//! pod-to-pod traffic and excluded destinations keep the pod's address; ports of closed flows are reused and running
//! out of them is counted; a restart keeps translated flows. Runs as root; fails instead of skipping when CI=true.

mod common;

use std::time::Duration;

use common::{CLIENT_IP, Cluster, node_ip};
use ipnet::Ipv4Net;
use skiff_ebpf_common::NatEvent;
use skiff_lb::{Engine, LbConfig, nat::Masquerade};
use skiff_testkit::{Child, probe, require_privileges};

#[test]
fn probe_entry() {
    probe::entry();
}

/// Pod 0 on node 0 (the client of every test), pod 1 on node 1; servers on the outside host and on pod 1.
fn setup(what: &str) -> Option<(Cluster, Vec<Child>)> {
    if !require_privileges(what) {
        return None;
    }
    let mut c = Cluster::new(2).expect("building the cluster");
    c.add_pod(0).expect("pod");
    c.add_pod(1).expect("pod");
    let servers = vec![
        probe::server(&c.client, &format!("serve-tcp {CLIENT_IP}:8080 outside")).expect("server"),
        probe::server(&c.client, &format!("serve-udp {CLIENT_IP}:5353 outside")).expect("server"),
        c.serve(1, "tcp", 8080, "pod1"),
    ];
    Some((c, servers))
}

fn masquerading(c: &Cluster, exclude: &[&str]) -> LbConfig {
    let mut cfg = c.config();
    cfg.masquerade = Some(Masquerade {
        cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
        exclude: exclude.iter().map(|e| e.parse::<Ipv4Net>().expect("cidr")).collect(),
    });
    cfg
}

fn nat_count(lb: &Engine, which: NatEvent) -> u64 {
    let events = lb.applier().maps().nat_events().expect("reading the masquerade counters");
    events.into_iter().find(|(e, _)| *e == which).map_or(0, |(_, v)| v)
}

/// The peer address the server saw, split into address and port.
fn peer(line: &str) -> (String, u16) {
    let p = probe::field(line, "peer").unwrap_or_else(|| panic!("no peer in {line:?}"));
    let (ip, port) = p.rsplit_once(':').expect("IP:PORT");
    (ip.to_string(), port.parse().expect("port"))
}

#[test]
fn a_pod_reaches_an_outside_host_with_the_node_address_and_gets_replies_and_icmp_errors_back() {
    let Some((c, _servers)) = setup("pod egress masquerade") else { return };
    let outside_tcp = format!("{CLIENT_IP}:8080");

    // Without masquerade the outside host cannot answer a pod address: this is what users hit before.
    let lb = c.start_lb(&c.config());
    let before = c.run_in_pod(0, &format!("tcp 1 {outside_tcp}"));
    assert!(before.iter().all(|l| l.starts_with("err")), "no route back, so no answer: {before:?}");
    drop(lb);

    let lb = c.start_lb(&masquerading(&c, &[]));
    let node = node_ip(0).to_string();
    let tcp = c.run_in_pod(0, &format!("tcp 20 {outside_tcp}"));
    assert_eq!(tcp.len(), 20);
    for l in &tcp {
        assert!(l.starts_with("ok"), "{tcp:?}");
        assert_eq!(peer(l).0, node, "the outside host sees the node address: {l}");
        assert_eq!(probe::field(l, "sockpeer"), Some(outside_tcp.as_str()), "the pod sees the host it called");
    }
    // The pod's own source port is kept when nothing else uses it towards that peer, as MASQUERADE does.
    let kept = c.run_in_pod(0, &format!("tcp 1 {outside_tcp} 40100"));
    assert_eq!(peer(&kept[0]), (node.clone(), 40_100), "{kept:?}");
    let udp = c.run_in_pod(0, &format!("udp 5 {CLIENT_IP}:5353 connected"));
    assert!(udp.iter().all(|l| l.starts_with("ok") && peer(l).0 == node), "{udp:?}");
    assert!(udp.iter().all(|l| probe::field(l, "from") == Some(&*format!("{CLIENT_IP}:5353"))), "{udp:?}");

    let ping = c.run_in_pod(0, &format!("ping 3 {CLIENT_IP}"));
    assert_eq!(ping.len(), 3);
    assert!(
        ping.iter().all(|l| l.starts_with("ok") && probe::field(l, "from") == Some(&*CLIENT_IP.to_string())),
        "{ping:?}"
    );

    // A UDP port nobody listens on: the host's port-unreachable must reach the pod as ECONNREFUSED at once
    // (untranslated, the pod would wait for its 3 s timeout).
    let closed = c.run_in_pod(0, &format!("udp 1 {CLIENT_IP}:9 connected"));
    assert!(closed[0].starts_with("err kind=refused"), "the ICMP error came back: {closed:?}");

    // Pod to pod keeps the pod's address.
    let p2p = c.run_in_pod(0, &format!("tcp 3 {}:8080", c.pods[1].ip));
    assert!(p2p.iter().all(|l| l.starts_with("ok") && peer(l).0 == c.pods[0].ip.to_string()), "{p2p:?}");

    assert!(nat_count(&lb, NatEvent::NewTcp) >= 20, "translated TCP flows are counted");
    assert!(nat_count(&lb, NatEvent::NewUdp) >= 2);
    assert!(nat_count(&lb, NatEvent::NewIcmp) >= 1);
    assert!(nat_count(&lb, NatEvent::IcmpErrorTranslated) >= 1);
    assert_eq!(nat_count(&lb, NatEvent::PortExhausted), 0);
    let text = lb.metrics().encode();
    assert!(text.contains("skiff_lb_masquerade_flows_total{protocol=\"TCP\"}"), "{text}");
    assert!(text.contains("skiff_lb_masquerade_port_exhausted_total 0"), "{text}");
}

#[test]
fn excluded_destinations_keep_the_pod_address() {
    let Some((c, _servers)) = setup("masquerade exclusions") else { return };
    // The outside host can route back to pods now, so both ways work and the source it sees tells them apart.
    c.client.ip(&["route", "add", "10.244.0.0/16", "via", &node_ip(0).to_string()]).expect("route");
    let lb = c.start_lb(&masquerading(&c, &[&format!("{CLIENT_IP}/32")]));
    let lines = c.run_in_pod(0, &format!("tcp 3 {CLIENT_IP}:8080"));
    assert!(lines.iter().all(|l| l.starts_with("ok") && peer(l).0 == c.pods[0].ip.to_string()), "{lines:?}");
    drop(lb);
    let lb = c.start_lb(&masquerading(&c, &["198.51.100.0/24"]));
    let lines = c.run_in_pod(0, &format!("tcp 3 {CLIENT_IP}:8080"));
    assert!(lines.iter().all(|l| l.starts_with("ok") && peer(l).0 == node_ip(0).to_string()), "{lines:?}");
    let programmed = lb.applier().maps().nat_entries();
    assert!(!programmed.is_empty(), "translated flows are in the map");
}

#[test]
fn replies_to_flows_the_outside_opened_keep_the_pod_address() {
    let Some((c, _servers)) = setup("masquerade leaves replies alone") else { return };
    let _pod_servers = [c.serve(0, "tcp", 8080, "pod0"), c.serve(0, "udp", 5353, "pod0")];
    c.client.ip(&["route", "add", "10.244.0.0/16", "via", &node_ip(0).to_string()]).expect("route");
    let lb = c.start_lb(&masquerading(&c, &[]));
    // The outside host opens the flows: the pod's answers must come from the pod's address, or the client's
    // sockets would not take them (a connected UDP socket drops datagrams from another source).
    let pod = c.pods[0].ip;
    let tcp = c.run_on_client(&format!("tcp 3 {pod}:8080"));
    assert!(tcp.iter().all(|l| l.starts_with("ok") && peer(l).0 == CLIENT_IP.to_string()), "{tcp:?}");
    let udp = c.run_on_client(&format!("udp 3 {pod}:5353 connected"));
    assert!(udp.iter().all(|l| l.starts_with("ok")), "{udp:?}");
    assert!(udp.iter().all(|l| probe::field(l, "from") == Some(&*format!("{pod}:5353"))), "{udp:?}");
    assert_eq!(nat_count(&lb, NatEvent::NewTcp) + nat_count(&lb, NatEvent::NewUdp), 0, "nothing was translated");
}

#[test]
fn ports_of_closed_flows_are_reused_and_running_out_is_counted() {
    let Some((mut c, _servers)) = setup("masquerade port reuse") else { return };
    let (b, third) = (c.add_pod(0).expect("pod"), c.add_pod(0).expect("pod"));
    let mut cfg = masquerading(&c, &[]);
    cfg.snat_ports = (61_000, 61_003);
    let lb = c.start_lb(&cfg);
    let target = format!("{CLIENT_IP}:8080");
    let node = node_ip(0).to_string();
    // Pod 0 keeps its ports 40001-40004.
    let a = c.run_in_pod(0, &format!("tcp 4 {target} 40001"));
    let kept: Vec<(String, u16)> = a.iter().map(|l| peer(l)).collect();
    assert_eq!(kept, (40_001..=40_004).map(|p| (node.clone(), p)).collect::<Vec<_>>(), "{a:?}");
    // Pod b asks for the same ports towards the same server: they are taken, so it gets the range's four.
    let from_b = c.run_in_pod(b, &format!("tcp 4 {target} 40001"));
    assert!(from_b.iter().all(|l| l.starts_with("ok") && (61_000..=61_003).contains(&peer(l).1)), "{from_b:?}");
    // The server closed each of those flows first, so it holds TIME_WAIT for them: a third pod finds no port
    // (neither its own, which pod 0 used, nor one of the range) for 10 s.
    let stranger = c.run_in_pod(third, &format!("tcp 1 {target} 40001"));
    assert!(stranger[0].starts_with("err"), "{stranger:?}");
    assert!(nat_count(&lb, NatEvent::PortExhausted) >= 1, "running out is counted");
    std::thread::sleep(Duration::from_secs(11));
    let later = c.run_in_pod(third, &format!("tcp 1 {target} 40001"));
    assert!(later.iter().all(|l| l.starts_with("ok")), "closed flows' ports are reused after 10 s: {later:?}");
    assert!(nat_count(&lb, NatEvent::PortReused) >= 1);
}

#[test]
fn a_restart_keeps_translated_flows() {
    let Some((c, _servers)) = setup("masquerade restart") else { return };
    let cfg = masquerading(&c, &[]);
    let lb = c.start_lb(&cfg);
    let mut conn =
        probe::spawn(Some(&c.cgroup), Some(&c.pods[0].ns), &format!("hold {CLIENT_IP}:8080")).expect("probe");
    let hello = conn.read_line_starting(probe::MARK).expect("hello");
    assert!(hello.starts_with("connected") && peer(&hello).0 == node_ip(0).to_string(), "{hello}");
    drop(lb);
    conn.send_line("while-stopped").expect("write");
    assert_eq!(conn.read_line_starting(probe::MARK).expect("reply"), "reply outside:while-stopped");
    let lb = c.start_lb(&cfg);
    conn.send_line("after").expect("write");
    assert_eq!(conn.read_line_starting(probe::MARK).expect("reply"), "reply outside:after");
    assert_eq!(nat_count(&lb, NatEvent::PortExhausted), 0);
}

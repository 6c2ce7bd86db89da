//! The tc programs under BPF_PROG_TEST_RUN with crafted packets: DNAT, reverse NAT, SNAT, checksums, conntrack,
//! fragments, ICMP, truncated and random packets. The maps are programmed by the real applier. Runs as root; fails
//! instead of skipping when CI=true.

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use proptest::prelude::*;
use serde_json::json;
use skiff_ebpf_common::{CtKey, Event, programs};
use skiff_lb::{
    Engine, LbConfig,
    desired::NodeIdentity,
    loader::{self, Loaded},
    metrics::LbMetrics,
};
use skiff_testkit::{PinDir, require_privileges};

const OK: u32 = 0;
const SHOT: u32 = 2;
const NEXT: u32 = u32::MAX; // TCX_NEXT (-1)

const NODE: [u8; 4] = [192, 168, 50, 11];
const CLIENT: [u8; 4] = [192, 168, 50, 100];
const LOCAL: [u8; 4] = [10, 244, 0, 2];
const REMOTE: [u8; 4] = [10, 244, 1, 2];

struct Rig {
    engine: Engine,
    ingress: Loaded,
    egress: Loaded,
    _pins: PinDir,
}

fn service(name: &str, node_port: u16, proto: &str, extra: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
    let mut spec = json!({"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
        "ports": [{"name": "p", "port": 80, "nodePort": node_port, "protocol": proto}]});
    if let (Some(b), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec}))
    .expect("Service")
}

fn slice(svc: &str, eps: &[([u8; 4], &str)], proto: &str) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let eps: Vec<_> = eps
        .iter()
        .map(|(ip, node)| json!({"addresses": [Ipv4Addr::from(*ip).to_string()], "nodeName": node}))
        .collect();
    serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "p", "port": 8080, "protocol": proto}]}))
    .expect("EndpointSlice")
}

/// Services: "local" (NodePort 30001 → a backend on this node), "remote" (30002 → one on another node),
/// "udp" (30003/UDP → local), "empty" (30004, no endpoints), "pair" (30005 → two local backends).
fn rig() -> Option<Rig> {
    if !require_privileges("BPF_PROG_TEST_RUN tests") {
        return None;
    }
    let pins = PinDir::new("skiff-testrun").expect("pin dir");
    let mut cfg = LbConfig::new(NodeIdentity { name: "node-0".into(), addresses: vec![Ipv4Addr::from(NODE)] });
    cfg.pin_dir = pins.path().to_path_buf();
    cfg.cgroup = None;
    cfg.maglev_table_size = 1021;
    let mut engine = Engine::start(&cfg, LbMetrics::new(cfg.pin_dir.clone())).expect("engine");
    let objects = [
        (service("local", 30001, "TCP", json!({})), slice("local", &[(LOCAL, "node-0")], "TCP")),
        (service("remote", 30002, "TCP", json!({})), slice("remote", &[(REMOTE, "node-1")], "TCP")),
        (service("udp", 30003, "UDP", json!({})), slice("udp", &[(LOCAL, "node-0")], "UDP")),
        (service("empty", 30004, "TCP", json!({})), slice("empty", &[], "TCP")),
        (
            service("pair", 30005, "TCP", json!({})),
            slice("pair", &[(LOCAL, "node-0"), ([10, 244, 0, 3], "node-0")], "TCP"),
        ),
    ];
    let mut changed = std::collections::BTreeSet::new();
    for (s, e) in objects {
        changed.extend(engine.store_mut().apply_service(s));
        changed.extend(engine.store_mut().apply_slice(e));
    }
    engine.sync(changed, None);
    let load = |name: &'static str| {
        let mut l = loader::load(&cfg).expect("loading the object");
        let p: &mut SchedClassifier = loader::program(&mut l.ebpf, name).expect("program");
        p.load().expect("the verifier accepts the program");
        l
    };
    Some(Rig { ingress: load(programs::TC_INGRESS), egress: load(programs::TC_EGRESS), engine, _pins: pins })
}

impl Rig {
    fn run(&mut self, egress: bool, pkt: &[u8]) -> (u32, Vec<u8>) {
        let (l, name) =
            if egress { (&mut self.egress, programs::TC_EGRESS) } else { (&mut self.ingress, programs::TC_INGRESS) };
        let p: &mut SchedClassifier = loader::program(&mut l.ebpf, name).expect("program");
        let mut out = vec![0u8; pkt.len() + 256];
        let r = p
            .test_run(TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), ..TestRunOptions::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn event(&self, e: Event) -> u64 {
        self.engine.applier().maps().events().expect("events").into_iter().find(|(x, _)| *x == e).map_or(0, |(_, v)| v)
    }
}

// === packets ===

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn l4_sum(ip: &[u8], l4: &[u8]) -> u16 {
    let mut s = sum16(&ip[12..20]) + u32::from(ip[9]) + l4.len() as u32;
    s += sum16(l4);
    fold(s)
}

/// Ethernet + IPv4 + TCP/UDP with correct checksums (UDP checksum 0 if `udp_no_csum`).
fn packet(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, frag: u16, udp_no_csum: bool) -> Vec<u8> {
    let payload = b"hello";
    let l4_len = if proto == 6 { 20 } else { 8 } + payload.len();
    // Destination MAC: the test run's device (loopback, all zeros), so the frame is addressed to this host.
    let mut p = vec![0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = (20 + l4_len) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    if !(proto == 17 && udp_no_csum) {
        let off = if proto == 6 { 16 } else { 6 };
        let mut c = !l4_sum(&ip, &l4);
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&ip);
    p.extend_from_slice(&l4);
    p
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    packet(6, src, sport, dst, dport, 0, false)
}

/// (src, sport, dst, dport) of a packet.
fn tuple(p: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    let ip = &p[14..];
    let a = |o: usize| [ip[o], ip[o + 1], ip[o + 2], ip[o + 3]];
    (a(12), u16::from_be_bytes([ip[20], ip[21]]), a(16), u16::from_be_bytes([ip[22], ip[23]]))
}

/// Both checksums of a packet verify.
fn checksums_ok(p: &[u8]) -> bool {
    let ip = &p[14..34];
    let l4 = &p[34..];
    let ip_ok = fold(sum16(ip)) == 0xffff;
    let l4_ok = if p[23] == 17 && l4[6] == 0 && l4[7] == 0 { true } else { l4_sum(ip, l4) == 0xffff };
    ip_ok && l4_ok
}

#[test]
fn a_new_flow_to_a_node_port_with_a_local_backend_is_dnated_with_valid_checksums() {
    let Some(mut rig) = rig() else { return };
    let (v, out) = rig.run(false, &tcp(CLIENT, 40_000, NODE, 30001));
    assert_eq!(v, OK);
    assert_eq!(tuple(&out), (CLIENT, 40_000, LOCAL, 8080));
    assert!(checksums_ok(&out));
    assert_eq!(rig.event(Event::TcNewFlow), 1);
    // The reply of the local backend leaves through egress and gets the node port back as its source.
    let (v, out) = rig.run(true, &tcp(LOCAL, 8080, CLIENT, 40_000));
    assert_eq!(v, OK);
    assert_eq!(tuple(&out), (NODE, 30001, CLIENT, 40_000));
    assert!(checksums_ok(&out));
    // The next packet of the flow is tracked.
    let (v, out) = rig.run(false, &tcp(CLIENT, 40_000, NODE, 30001));
    assert_eq!((v, tuple(&out).2), (OK, LOCAL));
    assert_eq!(rig.event(Event::TcTracked), 2);
}

#[test]
fn a_flow_to_a_remote_backend_is_snated_to_the_node_and_its_reply_translated_back() {
    let Some(mut rig) = rig() else { return };
    let (v, out) = rig.run(false, &tcp(CLIENT, 40_001, NODE, 30002));
    // The rewritten packet is redirected through a FIB lookup, which has no route inside BPF_PROG_TEST_RUN.
    assert!(v == SHOT || v == 7, "verdict {v}");
    let (src, nat_port, dst, dport) = tuple(&out);
    assert_eq!((src, dst, dport), (NODE, REMOTE, 8080));
    assert!((61_000..=65_535).contains(&nat_port), "SNAT port {nat_port}");
    assert!(checksums_ok(&out));
    let ct_key = CtKey {
        saddr: u32::from_ne_bytes(REMOTE),
        daddr: u32::from_ne_bytes(NODE),
        sport: 8080u16.to_be(),
        dport: nat_port.to_be(),
        proto: 6,
        pad: [0; 3],
    };
    let reverse = rig.engine.applier().maps().conntrack_entry(&ct_key).expect("the reply's conntrack entry");
    assert_eq!((reverse.daddr, reverse.dport), (u32::from_ne_bytes(CLIENT), 40_001u16.to_be()));
    // The backend's reply to the node comes back on ingress and is translated to node port → client.
    let (_, out) = rig.run(false, &tcp(REMOTE, 8080, NODE, nat_port));
    assert_eq!(tuple(&out), (NODE, 30002, CLIENT, 40_001));
    assert!(checksums_ok(&out));
}

#[test]
fn udp_is_translated_and_a_zero_udp_checksum_stays_zero() {
    let Some(mut rig) = rig() else { return };
    let (v, out) = rig.run(false, &packet(17, CLIENT, 5000, NODE, 30003, 0, false));
    assert_eq!(v, OK);
    assert_eq!(tuple(&out), (CLIENT, 5000, LOCAL, 8080));
    assert!(checksums_ok(&out));
    let (v, out) = rig.run(false, &packet(17, CLIENT, 5001, NODE, 30003, 0, true));
    assert_eq!(v, OK);
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum 0 means none and must stay 0");
}

#[test]
fn a_node_port_without_endpoints_drops_and_counts_the_refusal() {
    let Some(mut rig) = rig() else { return };
    let (v, _) = rig.run(false, &tcp(CLIENT, 40_002, NODE, 30004));
    assert_eq!(v, SHOT);
    assert_eq!(rig.event(Event::TcNoEndpointDrop), 1);
}

#[test]
fn fragments_icmp_other_destinations_and_truncated_packets_pass_untouched() {
    let Some(mut rig) = rig() else { return };
    for (what, pkt) in [
        ("first fragment", packet(6, CLIENT, 40_003, NODE, 30001, 0x2000, false)),
        ("later fragment", packet(6, CLIENT, 40_003, NODE, 30001, 0x0010, false)),
        ("icmp", packet(1, CLIENT, 0, NODE, 0, 0, false)),
        ("not a service", tcp(CLIENT, 40_004, NODE, 22)),
        // BPF_PROG_TEST_RUN itself insists on a full IPv4 header; cut inside the ports.
        ("truncated", tcp(CLIENT, 40_005, NODE, 30001)[..36].to_vec()),
        ("a frame for another host's MAC (flooded by a switch)", {
            let mut p = tcp(CLIENT, 40_006, NODE, 30001);
            p[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
            p
        }),
    ] {
        let (v, out) = rig.run(false, &pkt);
        assert_eq!(v, NEXT, "{what}");
        assert_eq!(out, pkt, "{what} was modified");
    }
    assert_eq!(rig.event(Event::TcFragmentPassed), 2);
    assert_eq!(rig.event(Event::TcIcmpPassed), 1);
}

#[test]
fn maglev_picks_the_same_backend_for_a_flow_and_spreads_flows_over_backends() {
    let Some(mut rig) = rig() else { return };
    let mut seen = std::collections::BTreeMap::new();
    for sport in 41_000..41_200u16 {
        let (v, out) = rig.run(false, &tcp(CLIENT, sport, NODE, 30005));
        assert_eq!(v, OK);
        *seen.entry(tuple(&out).2).or_insert(0u32) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n > 60), "{seen:?}");
    // The table in the kernel is the one user space computed: same flow, same choice after the CT is gone.
    let table_id = rig.engine.applier().registry().tables.values().next().map(|t| t.id).expect("a table");
    let entries = rig.engine.applier().maps().table_entries(table_id).expect("table");
    assert_eq!(entries.len(), 1021);
    assert!(entries.iter().all(|id| *id != 0), "every slot names a backend");
}

#[test]
fn random_packets_never_break_the_program_and_unrelated_ones_pass_untouched() {
    let Some(rig) = rig() else { return };
    let rig = std::cell::RefCell::new(rig);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 512, ..ProptestConfig::default() });
    let strategy = (prop::collection::vec(any::<u8>(), 0..120), any::<bool>(), any::<u16>());
    let result = runner.run(&strategy, |(bytes, as_ipv4, port)| {
        let mut pkt = bytes;
        if pkt.len() < 14 {
            pkt.resize(14, 0);
        }
        if as_ipv4 {
            // A plausible IPv4 TCP header towards the node ports with random everything else.
            pkt.resize(pkt.len().max(38), 0);
            pkt[..6].fill(0);
            pkt[12..14].copy_from_slice(&[0x08, 0x00]);
            pkt[14] = 0x40 | (pkt[14] & 0x0f);
            pkt[23] = 6;
            pkt[30..34].copy_from_slice(&NODE);
            pkt[36..38].copy_from_slice(&(30_000 + port % 8).to_be_bytes());
        } else if pkt[12..14] == [0x08, 0x00] {
            pkt[13] = 0x01;
        }
        let (v, out) = rig.borrow_mut().run(false, &pkt);
        prop_assert!(v == NEXT || v == OK || v == SHOT || v == 7, "verdict {}", v);
        if v == NEXT {
            prop_assert_eq!(out, pkt);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

//! Cluster DNS forwarding (issue 12), over real UDP on loopback between two instances of the agent's DNS server:
//! the "corporate" one is authoritative for `corp.example` (its cluster domain), the cluster one forwards every
//! name outside `cluster.local` to it. Names outside the cluster resolve, unknown ones are NXDOMAIN, answers come
//! from the cache the second time (metrics say so), an ExternalName Service's target is resolved in the same answer,
//! and an unreachable upstream is SERVFAIL, not a hang.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{reflector, watcher};
use skiff_agent::dns::{self, View};
use skiff_agent::metrics::Metrics;

fn view(services: Vec<Service>) -> View {
    let (services_store, mut w) = reflector::store::<Service>();
    for s in services {
        w.apply_watcher_event(&watcher::Event::Apply(s));
    }
    let (slices, _) = reflector::store::<EndpointSlice>();
    View { services: services_store, slices }
}

fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .expect("service")
}

/// A port free for both UDP and TCP on loopback, below the kernel's ephemeral range (32768-60999) so that the
/// outgoing connections of tests running alongside cannot take it between this check and the bind (CI once failed
/// with "Address already in use" on a port picked from the ephemeral range).
fn free_port() -> u16 {
    for _ in 0..200 {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP in 200 tries");
}

/// One query over UDP, with a bounded wait.
async fn ask(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.send_to(&m.to_vec().expect("encode"), server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("an answer")
        .expect("recv");
    Message::from_vec(&buf[..n]).expect("decode")
}

fn rand_id() -> u16 {
    (std::process::id() as u16)
        .wrapping_add(std::time::SystemTime::now().elapsed().map(|d| d.subsec_nanos() as u16).unwrap_or(7))
}

fn addresses(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn names_outside_the_cluster_are_forwarded_cached_and_chased() {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // the "corporate" resolver: authoritative for corp.example (a Service db in namespace it there)
    let corp_port = free_port();
    let corp =
        view(vec![service("it", "db", serde_json::json!({"clusterIP": "192.0.2.10", "ports": [{"port": 5432}]}))]);
    let corp_task =
        dns::serve(vec![localhost], corp_port, corp, "corp.example".into(), Metrics::new(), None, Vec::new())
            .await
            .expect("corp DNS");

    // the cluster's DNS, forwarding to it; an ExternalName Service points at the corporate name
    let metrics = Metrics::new();
    let upstream =
        dns::upstream::Upstream::new(&[SocketAddr::new(localhost, corp_port)], metrics.clone()).expect("upstream");
    let cluster = view(vec![
        service("default", "web", serde_json::json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]})),
        service(
            "default",
            "database",
            serde_json::json!({"type": "ExternalName", "externalName": "db.it.svc.corp.example"}),
        ),
    ]);
    let port = free_port();
    let task = dns::serve(
        vec![localhost],
        port,
        cluster,
        "cluster.local".into(),
        metrics.clone(),
        Some(Arc::new(upstream)),
        Vec::new(),
    )
    .await
    .expect("cluster DNS");
    let at = SocketAddr::new(localhost, port);

    // a cluster name: answered here, authoritatively
    let m = ask(at, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!((m.metadata.response_code, addresses(&m)), (ResponseCode::NoError, vec![Ipv4Addr::new(10, 96, 0, 20)]));
    assert!(m.metadata.authoritative);

    // an outside name: forwarded, then from the cache
    for round in 0..2 {
        let m = ask(at, "db.it.svc.corp.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "round {round}");
        assert_eq!(addresses(&m), vec![Ipv4Addr::new(192, 0, 2, 10)], "round {round}");
        assert!(!m.metadata.authoritative && m.metadata.recursion_available);
    }
    // never ANY (amplification)
    let m = ask(at, "db.it.svc.corp.example.", RecordType::ANY).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // unknown outside names: NXDOMAIN, as the upstream said
    let m = ask(at, "nothing.it.svc.corp.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // the ExternalName: the CNAME and its target's address in one answer
    let m = ask(at, "database.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        m.answers.iter().any(|r| matches!(&r.data, RData::CNAME(c) if c.0.to_ascii() == "db.it.svc.corp.example.")),
        "{m:?}"
    );
    assert_eq!(addresses(&m), vec![Ipv4Addr::new(192, 0, 2, 10)]);

    let text = metrics.encode();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    // the first db lookup missed; the second and the ExternalName chase hit
    assert_eq!(value("skiff_agent_dns_cache_hits_total"), Some(2.0), "{text}");
    assert_eq!(value("skiff_agent_dns_cache_misses_total"), Some(2.0), "{text}");
    assert!(text.contains("skiff_agent_dns_forward_responses_total{rcode=\"NXDOMAIN\"} 1"), "{text}");

    // the upstream gone: SERVFAIL within the forwarder's time limits, and not cached as an answer
    corp_task.abort();
    let _ = corp_task.await;
    let m = ask(at, "other.it.svc.corp.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    task.abort();
}

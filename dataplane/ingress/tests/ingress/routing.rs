//! Routing by host and path to real upstreams, forwarding headers, errors, limits, HTTP/2 without TLS.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_by_host_and_path_to_the_right_upstream() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let yaml = [
        service_yaml("svc-a", &[&a]),
        service_yaml("svc-b", &[&b]),
        ingress_yaml(
            "web",
            "",
            &[("a.test", "/", "svc-a"), ("a.test", "/b", "svc-b"), ("*.wild.test", "/", "svc-b")],
            "",
        ),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    assert_eq!(ingress.get("a.test", "/").await.server(), "a");
    assert_eq!(ingress.get("a.test", "/b/c?x=1").await.server(), "b");
    assert_eq!(ingress.get("a.test", "/bc").await.server(), "a", "element-wise prefix");
    assert_eq!(ingress.get("A.Test:8080", "/").await.server(), "a", "host case and port ignored");
    assert_eq!(ingress.get("x.wild.test", "/").await.server(), "b");
    let missing = ingress.get("nope.test", "/").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("no Ingress rule"), "{}", missing.body);
    let echo = ingress.get("a.test", "/b/c?x=1").await.json();
    assert_eq!(echo["uri"], "/b/c?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_a_request_id_reach_the_upstream() {
    let a = Upstream::start("a").await;
    let ingress =
        Ingress::start(&[service_yaml("svc", &[&a]), ingress_yaml("web", "", &[("h.test", "/", "svc")], "")].concat())
            .await;
    let req = Request::get("/")
        .header("host", "h.test")
        .header("x-forwarded-for", "6.6.6.6")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let echo = ingress.request(req).await.json();
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "client-supplied X-Forwarded-For is not trusted");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "h.test");
    assert_eq!(h["x-forwarded-port"], ingress.http.port().to_string());
    assert_eq!(h["host"], "h.test", "the Host header is passed through");
    assert_eq!(h["x-request-id"].as_str().map(str::len), Some(32));
    let req = Request::get("/")
        .header("host", "h.test")
        .header("x-request-id", "trace-me")
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(ingress.request(req).await.json()["headers"]["x-request-id"], "trace-me");
    // the access log is written in the logging phase, after the response: wait (bounded) for the line
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut log = String::new();
    while !log.contains("trace-me") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        log = std::fs::read_to_string(ingress.dir.path().join("access.log")).unwrap_or_default();
    }
    let last = log.lines().find(|l| l.contains("trace-me")).expect("the request is logged");
    let line: serde_json::Value = serde_json::from_str(last).expect("JSON access log");
    assert_eq!(line["status"], 200);
    assert_eq!(line["host"], "h.test");
    assert_eq!(line["ingress"], "web");
    assert_eq!(line["request_id"], "trace-me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_endpoints_answers_503_with_a_clear_body() {
    let yaml = [
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec: {ports: [{name: http, port: 80}]}\n".to_string(),
        ingress_yaml("web", "", &[("e.test", "/", "empty"), ("e.test", "/gone", "gone")], ""),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    let r = ingress.get("e.test", "/").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("no endpoints available for service \"default/empty\""), "{}", r.body);
    let r = ingress.get("e.test", "/gone").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("service \"default/gone\" not found"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_endpoint_and_the_dead_one_is_ejected() {
    let a = Upstream::start("a").await;
    let dead = free_port();
    let yaml = [
        service_yaml("svc", &[&a]),
        slice_yaml("svc", 9, dead, true),
        ingress_yaml("web", "", &[("r.test", "/", "svc")], ""),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    for _ in 0..20 {
        let r = ingress.get("r.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let metrics = ingress.metrics_text().await;
    assert!(metrics.contains("skiff_ingress_upstream_retries_total{service=\"default/svc\"}"), "{metrics}");
    assert!(metrics.contains("skiff_ingress_upstream_ejections_total{service=\"default/svc\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_every_ready_endpoint() {
    let (a, b, c) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await);
    let yaml = [service_yaml("svc", &[&a, &b, &c]), ingress_yaml("web", "", &[("rr.test", "/", "svc")], "")].concat();
    let ingress = Ingress::start(&yaml).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..30 {
        *seen.entry(ingress.get("rr.test", "/").await.server()).or_insert(0) += 1;
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [("a".to_string(), 10), ("b".into(), 10), ("c".into(), 10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_gets_400_and_oversized_headers_431_and_the_ingress_keeps_serving() {
    let a = Upstream::start("a").await;
    let ingress =
        Ingress::start(&[service_yaml("svc", &[&a]), ingress_yaml("web", "", &[("m.test", "/", "svc")], "")].concat())
            .await;
    for garbage in [&b"GARBAGE\r\n\r\n"[..], b"GET / HTTP/1.1\r\nHost m.test\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"] {
        let mut s = tokio::net::TcpStream::connect(ingress.http).await.expect("connect");
        s.write_all(garbage).await.expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 400"), "{garbage:?} got {text:?}");
    }
    let big = "x".repeat(40 * 1024);
    let req =
        Request::get("/").header("host", "m.test").header("x-big", big).body(Full::new(Bytes::new())).expect("req");
    assert_eq!(ingress.request(req).await.status, 431);
    assert_eq!(ingress.get("m.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_without_tls_is_proxied_with_prior_knowledge() {
    let a = Upstream::start("a").await;
    let ingress = Ingress::start(
        &[service_yaml("svc", &[&a]), ingress_yaml("web", "", &[("h2c.test", "/", "svc")], "")].concat(),
    )
    .await;
    let stream = tokio::net::TcpStream::connect(ingress.http).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2c handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://h2c.test/x").body(Full::new(Bytes::new())).expect("req");
        let reply = read_reply(sender.send_request(req).await.expect("h2 response")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.server(), "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_method_and_status() {
    let a = Upstream::start("a").await;
    let ingress = Ingress::start(
        &[service_yaml("svc", &[&a]), ingress_yaml("web", "", &[("met.test", "/", "svc")], "")].concat(),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(ingress.get("met.test", "/").await.status, 200);
    }
    let line = "skiff_ingress_requests_total{namespace=\"default\",ingress=\"web\",host=\"met.test\",path=\"/\",service=\"svc\",method=\"GET\",status=\"200\"} 3";
    // the logging phase runs after the response is sent: wait (bounded) for the third request to be counted
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut m = ingress.metrics_text().await;
    while !m.contains(line) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = ingress.metrics_text().await;
    }
    assert!(m.contains(line), "{m}");
    for name in [
        "skiff_ingress_request_duration_seconds_bucket",
        "skiff_ingress_upstream_duration_seconds_count",
        "skiff_ingress_config_generation 1",
        "skiff_ingress_config_apply_duration_seconds_count 1",
        "skiff_ingress_active_connections",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
}

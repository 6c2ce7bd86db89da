//! Hot swaps: configuration changes under load never fail a request nor drop a WebSocket; the file source.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::harness::*;

/// 1,000 configuration changes (endpoints, routes, annotations) while keep-alive clients send requests and
/// WebSockets stay open: zero failed requests, zero dropped sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_config_changes_under_load_fail_no_request_and_drop_no_websocket() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (both, one) = ([&a, &b], [&b]);
    let config = |i: usize| {
        let extra = format!("nginx.ingress.kubernetes.io/proxy-read-timeout: \"{}\"", 30 + i % 50);
        [
            service_yaml("svc", if i.is_multiple_of(2) { &both[..] } else { &one[..] }),
            ingress_yaml(
                "web",
                &extra,
                &[("hs.test", "/", "svc"), ("hs.test", &format!("/extra{}", i % 7), "svc")],
                "",
            ),
        ]
        .concat()
    };
    let ingress = Ingress::start(&config(0)).await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(websocket(ingress.http, "hs.test").await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), ingress.http);
        clients.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
            tokio::spawn(conn);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let req = Request::get("/").header("host", "hs.test").body(Full::new(Bytes::new())).expect("req");
                if sender.ready().await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                let good = match sender.send_request(req).await {
                    Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    let started = Instant::now();
    for i in 1..=1000 {
        ingress.apply(&config(i));
        if i % 100 == 0 {
            for ws in &mut sockets {
                assert!(ws_roundtrip(ws, &format!("change {i}")).await, "WebSocket dropped at change {i}");
            }
        }
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let swap_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    for ws in &mut sockets {
        assert!(ws_roundtrip(ws, "after").await, "WebSocket dropped");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed requests of {}", ok + failed);
    assert!(ok > 100, "the load generator ran ({ok} requests in {swap_time:?})");
    let m = ingress.metrics_text().await;
    assert!(m.contains("skiff_ingress_config_generation 1001"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_objects_file_is_followed_and_an_invalid_version_keeps_the_live_table() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let first = [service_yaml("svc", &[&a]), ingress_yaml("web", "", &[("f.test", "/", "svc")], "")].concat();
    let ingress = Ingress::start_with(&first, true, |_| {}).await;
    let mut ws = websocket(ingress.http, "f.test").await;
    assert_eq!(ingress.get("f.test", "/").await.server(), "a");
    let second = [service_yaml("svc", &[&b]), ingress_yaml("web", "", &[("f.test", "/", "svc")], "")].concat();
    std::fs::write(ingress.file(), &second).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ingress.get("f.test", "/").await.server() != "b" {
        assert!(Instant::now() < deadline, "the file change was not applied within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ws_roundtrip(&mut ws, "survives a file change").await);
    std::fs::write(ingress.file(), "kind: [broken").expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ingress.metrics_text().await.contains("skiff_ingress_config_errors_total 1") {
        assert!(Instant::now() < deadline, "the invalid file was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ingress.get("f.test", "/").await.server(), "b", "the last good table stays live");
    ingress.stop().await;
}

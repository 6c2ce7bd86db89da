//! ingress-nginx annotations, end to end.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use crate::harness::*;

const P: &str = "nginx.ingress.kubernetes.io";

fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", host).body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_redirects_and_allowlists_behave_like_ingress_nginx() {
    let up = Upstream::start("a").await;
    let yaml = [
        service_yaml("svc", &[&up]),
        ingress_yaml("rw", &format!("{P}/rewrite-target: \"/$2\""), &[("rw.test", "/api(/|$)(.*)", "svc")], ""),
        ingress_yaml("root", &format!("{P}/app-root: /app"), &[("root.test", "/", "svc")], ""),
        ingress_yaml(
            "moved",
            &format!("{P}/permanent-redirect: https://example.org/new"),
            &[("moved.test", "/", "svc")],
            "",
        ),
        ingress_yaml("deny", &format!("{P}/whitelist-source-range: 10.0.0.0/8"), &[("deny.test", "/", "svc")], ""),
        ingress_yaml(
            "allow",
            &format!("{P}/whitelist-source-range: \"10.0.0.0/8, 127.0.0.0/8\""),
            &[("allow.test", "/", "svc")],
            "",
        ),
        // An allowlist that does not parse denies everyone (it used to admit everyone when no entry parsed).
        ingress_yaml(
            "broken",
            &format!("{P}/whitelist-source-range: \"127.0.0.1/33, loopback\""),
            &[("broken.test", "/", "svc")],
            "",
        ),
        ingress_yaml(
            "half",
            &format!("{P}/allowlist-source-range: \"127.0.0.0/8, 10.0.0.0/40\""),
            &[("half.test", "/", "svc")],
            "",
        ),
        ingress_yaml("vhost", &format!("{P}/upstream-vhost: internal.local"), &[("vhost.test", "/", "svc")], ""),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    assert_eq!(ingress.get("rw.test", "/api/users?id=7").await.json()["uri"], "/users?id=7");
    assert_eq!(ingress.get("rw.test", "/api").await.json()["uri"], "/");
    let r = ingress.get("root.test", "/").await;
    assert_eq!((r.status, r.header("location").as_deref()), (302, Some("/app")));
    assert_eq!(ingress.get("root.test", "/app").await.status, 200);
    let r = ingress.get("moved.test", "/x").await;
    assert_eq!((r.status, r.header("location").as_deref()), (301, Some("https://example.org/new")));
    assert_eq!(ingress.get("deny.test", "/").await.status, 403);
    assert_eq!(ingress.get("allow.test", "/").await.status, 200);
    for host in ["broken.test", "half.test"] {
        let r = ingress.get(host, "/").await;
        assert_eq!(r.status, 403, "{host}: an allowlist that does not parse must deny");
        assert!(r.body.contains("invalid"), "{host}: {}", r.body);
    }
    assert_eq!(ingress.get("vhost.test", "/").await.json()["headers"]["host"], "internal.local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_size_limits_and_custom_response_headers_apply_per_ingress() {
    let up = Upstream::start("a").await;
    let yaml = [
        service_yaml("svc", &[&up]),
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: hdrs, namespace: default}\ndata: {X-Frame-Options: DENY, X-Served-By: skiff, Transfer-Encoding: gzip}\n".to_string(),
        ingress_yaml("small", &format!("{P}/proxy-body-size: 1k, {P}/custom-headers: default/hdrs"), &[("small.test", "/", "svc")], ""),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    let post = |n: usize| {
        Request::post("/").header("host", "small.test").body(Full::new(Bytes::from(vec![b'x'; n]))).expect("req")
    };
    let ok = ingress.request(post(512)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body_bytes"], 512);
    assert_eq!(ok.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(ok.header("x-served-by").as_deref(), Some("skiff"));
    assert_eq!(ok.header("transfer-encoding"), None, "a framing header from the ConfigMap is not set");
    let big = ingress.request(post(4096)).await;
    assert_eq!((big.status, big.body.as_str()), (413, "413 request entity too large\n"));
    // a streamed upload (no declared length) over the limit: refused as its body arrives, with the same answer
    let (tx, body) = futures::channel::mpsc::unbounded::<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>();
    for _ in 0..4 {
        tx.unbounded_send(Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; 1024])))).expect("queued");
    }
    drop(tx);
    let streamed =
        Request::post("/").header("host", "small.test").body(http_body_util::StreamBody::new(body)).expect("req");
    let reply = send_streamed(ingress.http, streamed).await;
    assert_eq!((reply.0, reply.1.as_str()), (413, "413 request entity too large\n"));
}

/// One request with a streamed (chunked) body on a new HTTP/1.1 connection: status and body.
async fn send_streamed<B>(addr: std::net::SocketAddr, req: Request<B>) -> (u16, String)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_traffic_follows_header_cookie_and_weight() {
    let (main, canary) = (Upstream::start("main").await, Upstream::start("canary").await);
    let yaml = [
        service_yaml("main", &[&main]),
        service_yaml("canary", &[&canary]),
        ingress_yaml("main", "", &[("c.test", "/", "main")], ""),
        ingress_yaml(
            "canary",
            &format!("{P}/canary: \"true\", {P}/canary-by-header: X-Canary, {P}/canary-by-cookie: beta"),
            &[("c.test", "/", "canary")],
            "",
        ),
        ingress_yaml("main2", "", &[("w.test", "/", "main")], ""),
        ingress_yaml(
            "canary2",
            &format!("{P}/canary: \"true\", {P}/canary-weight: \"100\""),
            &[("w.test", "/", "canary")],
            "",
        ),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    assert_eq!(ingress.get("c.test", "/").await.server(), "main");
    let with = |k: &str, v: &str| {
        Request::get("/").header("host", "c.test").header(k, v).body(Full::new(Bytes::new())).expect("req")
    };
    assert_eq!(ingress.request(with("x-canary", "always")).await.server(), "canary");
    assert_eq!(ingress.request(with("x-canary", "never")).await.server(), "main");
    assert_eq!(ingress.request(with("cookie", "a=1; beta=always")).await.server(), "canary");
    for _ in 0..5 {
        assert_eq!(ingress.get("w.test", "/").await.server(), "canary", "weight 100 of 100");
    }
    let m = ingress.metrics_text().await;
    assert!(
        m.contains("ingress=\"canary2\",host=\"w.test\""),
        "canary requests are labelled with the canary Ingress:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_pins_a_client_to_one_endpoint() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let yaml = [
        service_yaml("svc", &[&a, &b]),
        ingress_yaml(
            "sticky",
            &format!("{P}/affinity: cookie, {P}/session-cookie-name: route, {P}/session-cookie-max-age: \"60\""),
            &[("s.test", "/", "svc")],
            "",
        ),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    let first = ingress.get("s.test", "/").await;
    let cookie = first.header("set-cookie").expect("affinity cookie set");
    assert!(cookie.starts_with("route=") && cookie.contains("Max-Age=60"), "{cookie}");
    let value = cookie.split(';').next().expect("pair").to_string();
    for _ in 0..10 {
        let r = ingress
            .request(
                Request::get("/")
                    .header("host", "s.test")
                    .header("cookie", &value)
                    .body(Full::new(Bytes::new()))
                    .expect("req"),
            )
            .await;
        assert_eq!(r.server(), first.server());
        assert!(r.header("set-cookie").is_none(), "a valid cookie is not re-issued");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_rps_rejects_a_client_over_its_burst() {
    let up = Upstream::start("a").await;
    let yaml = [
        service_yaml("svc", &[&up]),
        ingress_yaml("limited", &format!("{P}/limit-rps: \"1\""), &[("l.test", "/", "svc")], ""),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(ingress.request(get("l.test", "/")).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "a burst of 5 × 1 rps: {statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 503), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_protocol_grpc_speaks_http2_to_the_pods() {
    let up = Upstream::start("grpc").await;
    let yaml = [
        service_yaml("svc", &[&up]),
        ingress_yaml("g", &format!("{P}/backend-protocol: GRPC"), &[("g.test", "/", "svc")], ""),
    ]
    .concat();
    let ingress = Ingress::start(&yaml).await;
    let echo = ingress.get("g.test", "/pkg.Service/Method").await.json();
    assert_eq!(echo["version"], "HTTP/2.0");
    // gRPC's `te: trailers` reaches the pod; other hop-by-hop headers do not
    let req = Request::post("/pkg.Service/Method")
        .header("host", "g.test")
        .header("te", "trailers")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let echo = ingress.request(req).await.json();
    assert_eq!(echo["headers"]["te"], "trailers", "{echo}");
    assert!(echo["headers"].get("keep-alive").is_none(), "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_protocol_https_speaks_tls_to_the_pods_on_both_paths_and_reuses_the_connection() {
    let secure = Upstream::start_tls("secure").await;
    let plain = Upstream::start("plain").await;
    let yaml = [
        service_yaml("secure", &[&secure]),
        service_yaml("plain", &[&plain]),
        ingress_yaml("s", &format!("{P}/backend-protocol: HTTPS"), &[("s.test", "/", "secure")], ""),
        // a pod that does not speak TLS behind an HTTPS route
        ingress_yaml("p", &format!("{P}/backend-protocol: HTTPS"), &[("p.test", "/", "plain")], ""),
    ]
    .concat();
    let fast = Ingress::start(&yaml).await;
    let slow = Ingress::start_with(&yaml, false, |c| c.fast_path = false).await;
    for (path, ingress) in [("fast path", &fast), ("Pingora's path", &slow)] {
        let before = secure.connections.load(std::sync::atomic::Ordering::Relaxed);
        for i in 0..10 {
            let reply = ingress.get("s.test", &format!("/r{i}")).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
            let echo = reply.json();
            assert_eq!((echo["server"].as_str(), echo["uri"].as_str()), (Some("secure"), Some(&*format!("/r{i}"))));
            assert_eq!(echo["version"], "HTTP/1.1", "{path}");
            assert_eq!(echo["headers"]["x-forwarded-proto"], "http", "{path}: the client's scheme, not the pod's");
        }
        let opened = secure.connections.load(std::sync::atomic::Ordering::Relaxed) - before;
        // one pooled connection per proxy thread at most, not one per request
        assert!((1..=4).contains(&opened), "{path}: {opened} TLS connections for 10 requests");
        let reply = ingress.get("p.test", "/").await;
        assert_eq!(reply.status, 502, "{path}: a pod without TLS behind an HTTPS route: {}", reply.body);
    }
    assert_eq!(plain.requests.load(std::sync::atomic::Ordering::Relaxed), 0, "no request reached the plain pod");
    let m = fast.metrics_text().await;
    assert!(!m.contains("skiff_ingress_fast_path_handovers_total{"), "HTTPS routes were handed to Pingora:\n{m}");
}

//! The HTTP/1.1 fast path against upstreams that answer byte for byte as scripted: body framings, connection
//! reuse and pods closing idle connections, pipelining, hand-over to Pingora in the middle of a connection, upstream
//! errors, and the same forwarding headers as Pingora's path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// An upstream speaking raw HTTP/1.1: what it sends depends on the path. Every response names the upstream
/// connection (`conn=N`) so tests can see reuse.
pub struct Scripted {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// `/hold` requests whose connection the ingress closed before the pod answered.
    pub holds_cut: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    pub async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let holds_cut = Arc::new(AtomicUsize::new(0));
        let (count, cut) = (connections.clone(), holds_cut.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let id = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve_scripted(stream, id, cut.clone()));
            }
        });
        Scripted { addr, connections, holds_cut, task }
    }

    pub fn yaml(&self, host: &str, annotations: &str) -> String {
        let service = format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: raw, namespace: default}}\nspec:\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n{}",
            slice_yaml("raw", 0, self.addr.port(), true)
        );
        service + &ingress_yaml("raw", annotations, &[(host, "/", "raw")], "")
    }
}

async fn serve_scripted(mut s: TcpStream, id: usize, holds_cut: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        let Some(RawRequest { method, path, body, .. }) = read_raw_request(&mut s, &mut buf).await else { return };
        let text = format!("{method} {path} body={body} conn={id}");
        let result = match path.as_str() {
            "/chunked" => {
                let mut r = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel").await;
                for piece in [&b"lo\r\n"[..], b"6;ext=1\r\n world\r\n", b"0\r\nX-Trailer: t\r\n\r\n"] {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    r = r.and(s.write_all(piece).await);
                }
                r
            }
            "/close" => {
                // a body delimited by the close, in two segments
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil ").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = s.write_all(format!("close conn={id}").as_bytes()).await;
                return;
            }
            "/idle-close" => {
                // answers as if keeping the connection, then closes it: a pod's keep-alive timeout
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                return;
            }
            "/stray" => {
                // a broken pod: a body after the head of a HEAD response, in a later segment
                let r = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                r.and(s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged").await)
            }
            "/bad" => {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
                return;
            }
            "/named" => s.write_all(b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nContent-Length: 5\r\n\r\nnamed").await,
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                return;
            }
            "/hold" => {
                // thinks for 5 s unless the ingress closes the connection first (counted)
                let mut probe = [0u8; 1];
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = s.read(&mut probe) => drop(holds_cut.fetch_add(1, Ordering::SeqCst)),
                }
                return;
            }
            "/hint-then-close" => {
                let _ = s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n").await;
                return;
            }
            "/early-hints" => {
                s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n").await.and(
                    s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len()).as_bytes())
                        .await,
                )
            }
            _ => {
                let body = if method == "HEAD" { "" } else { text.as_str() };
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=60\r\n\r\n", text.len());
                s.write_all([head.as_bytes(), body.as_bytes()].concat().as_slice()).await
            }
        };
        if result.is_err() {
            return;
        }
    }
}

/// The `Content-Length` of a parsed head.
fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    let h = headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"))?;
    std::str::from_utf8(h.value).ok()?.parse().ok()
}

/// An HTTP/1.1 client connection sending several requests in turn.
async fn client(
    addr: SocketAddr,
) -> (hyper::client::conn::http1::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

async fn send(sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, method: &str, path: &str) -> Reply {
    send_to(sender, method, "raw.test", path).await
}

async fn send_to(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    host: &str,
    path: &str,
) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    tokio::time::timeout(Duration::from_secs(10), sender.ready())
        .await
        .expect("ready in 10 s")
        .expect("connection open");
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answer within 10 s")
        .expect("response");
    read_reply(resp).await
}

/// Reads from a raw client connection until `n` complete responses (Content-Length framed) arrived.
async fn read_responses(s: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(h)) = resp.parse(&buf) {
            let len = content_length(resp.headers).expect("Content-Length");
            if buf.len() >= h + len {
                out.push(format!("{} {}", resp.code.unwrap_or(0), String::from_utf8_lossy(&buf[h..h + len])));
                buf.drain(..h + len);
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let k =
            tokio::time::timeout_at(deadline, s.read(&mut chunk)).await.expect("responses within 10 s").expect("read");
        assert!(k > 0, "connection closed after {} of {n} responses", out.len());
        buf.extend_from_slice(&chunk[..k]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_framings_pass_through_and_the_upstream_connection_is_reused() {
    let up = Scripted::start().await;
    let ingress = Ingress::start(&up.yaml("raw.test", "")).await;
    let (mut c, _task) = client(ingress.http).await;
    let first = send(&mut c, "GET", "/echo").await;
    assert_eq!((first.status, first.body.as_str()), (200, "GET /echo body= conn=1"));
    assert!(first.header("keep-alive").is_none(), "hop-by-hop headers are not passed on");
    let chunked = send(&mut c, "GET", "/chunked").await;
    assert_eq!((chunked.status, chunked.body.as_str()), (200, "hello world"));
    let head = send(&mut c, "HEAD", "/echo").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("content-length").as_deref(), Some("23"));
    let hints = send(&mut c, "GET", "/early-hints").await;
    assert_eq!((hints.status, hints.body.as_str()), (200, "GET /early-hints body= conn=1"));
    let again = send(&mut c, "GET", "/echo").await;
    assert_eq!(again.body, "GET /echo body= conn=1", "one upstream connection served every request so far");
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    // a body the pod ends by closing reaches this keep-alive client in chunks, and the client's connection stays
    let close = send(&mut c, "GET", "/close").await;
    assert_eq!((close.status, close.body.as_str()), (200, "until close conn=1"));
    assert_eq!(close.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(close.header("connection").as_deref(), Some("keep-alive"), "the client's connection is kept");
    let after = send(&mut c, "GET", "/echo").await;
    assert_eq!(after.body, "GET /echo body= conn=2", "the same client connection, a new upstream one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_bodies_arrive_whole() {
    let up = Scripted::start().await;
    let ingress = Ingress::start(&up.yaml("raw.test", "")).await;
    let mut s = TcpStream::connect(ingress.http).await.expect("connect");
    let pipelined = "GET /one HTTP/1.1\r\nHost: raw.test\r\n\r\nPOST /two HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 5\r\n\r\nhelloGET /three HTTP/1.1\r\nHost: raw.test\r\n\r\n";
    s.write_all(pipelined.as_bytes()).await.expect("write");
    let got = read_responses(&mut s, 3).await;
    assert_eq!(got, ["200 GET /one body= conn=1", "200 POST /two body=hello conn=1", "200 GET /three body= conn=1"]);
    // a head and body trickling in byte by byte
    for b in "PUT /four HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 3\r\n\r\nabc".bytes() {
        s.write_all(&[b]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(read_responses(&mut s, 1).await, ["200 PUT /four body=abc conn=1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_to_pingora_for_a_request_the_fast_path_does_not_take() {
    let a = Upstream::start("a").await;
    let ingress =
        Ingress::start(&[service_yaml("svc", &[&a]), ingress_yaml("web", "", &[("h.test", "/", "svc")], "")].concat())
            .await;
    let mut s = TcpStream::connect(ingress.http).await.expect("connect");
    // fast: a plain GET; then a chunked upload (Pingora streams it); then another GET on the same connection, which
    // Pingora hands back to the fast path
    let mut got = Vec::new();
    for request in [
        "GET /fast HTTP/1.1\r\nHost: h.test\r\n\r\n",
        "POST /streamed HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /after HTTP/1.1\r\nHost: h.test\r\n\r\n",
    ] {
        s.write_all(request.as_bytes()).await.expect("write");
        got.extend(read_responses(&mut s, 1).await);
    }
    let uri = |r: &str| {
        let json: serde_json::Value = serde_json::from_str(r.split_once(' ').expect("status").1).expect("echo");
        (json["uri"].as_str().unwrap_or_default().to_owned(), json["body_bytes"].as_u64().unwrap_or_default())
    };
    assert_eq!(uri(&got[0]).0, "/fast");
    assert_eq!(uri(&got[1]), ("/streamed".to_owned(), 5));
    assert_eq!(uri(&got[2]).0, "/after");
    // malformed input is answered by Pingora's parser (400), not by the fast path
    let mut s = TcpStream::connect(ingress.http).await.expect("connect");
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: h.test\r\n\r\nGET / HTTP/1.1\r\nBad Header\r\n\r\n").await.expect("write");
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 400"), "{text}");
    let m = ingress.metrics_text().await;
    for reason in ["streamed body, upgrade or expectation", "not a well-formed HTTP/1.1 head"] {
        let series = format!("skiff_ingress_fast_path_handovers_total{{reason=\"{reason}\"}} 1");
        assert!(m.contains(&series), "no {series} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_closing_idle_connections_cost_no_request() {
    let up = Scripted::start().await;
    let ingress = Ingress::start(&up.yaml("raw.test", "")).await;
    let (mut c, _task) = client(ingress.http).await;
    for i in 0..20 {
        // each answer leaves a pooled connection the pod then closes; the next request must not fail on it
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = send(&mut c, method, "/idle-close").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "request {i} ({method})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 20, "a new upstream connection for each request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_slow_upstreams_answer_502_and_504_and_the_client_connection_survives() {
    let up = Scripted::start().await;
    let ingress = Ingress::start(&up.yaml("raw.test", "nginx.ingress.kubernetes.io/proxy-read-timeout: \"1\"")).await;
    let (mut c, _task) = client(ingress.http).await;
    let bad = send(&mut c, "GET", "/bad").await;
    assert_eq!(bad.status, 502, "{}", bad.body);
    let slow = send(&mut c, "GET", "/slow").await;
    assert_eq!(slow.status, 504, "{}", slow.body);
    let fine = send(&mut c, "GET", "/echo").await;
    assert_eq!(fine.status, 200, "the client connection is still usable");
    // a request is counted after its response is written: wait (bounded) for the last one
    let counted = |m: &str, status: &str| {
        m.lines().any(|l| l.starts_with("skiff_ingress_requests_total{") && l.contains(&format!("status=\"{status}\"")))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut m = ingress.metrics_text().await;
    while !["502", "504", "200"].iter().all(|s| counted(&m, s)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = ingress.metrics_text().await;
    }
    for status in ["502", "504", "200"] {
        assert!(counted(&m, status), "no {status} counted:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_and_pingoras_path_send_the_same_request_upstream() {
    let a = Upstream::start("a").await;
    let yaml = [
        service_yaml("svc", &[&a]),
        ingress_yaml("web", "nginx.ingress.kubernetes.io/upstream-vhost: inner.local", &[("h.test", "/", "svc")], ""),
    ]
    .concat();
    let fast = Ingress::start(&yaml).await;
    let slow = Ingress::start_with(&yaml, false, |c| c.fast_path = false).await;
    let seen = |ingress: &Ingress| {
        let addr = ingress.http;
        async move {
            let req = Request::post("/p?q=1")
                .header("host", "H.test")
                .header("x-request-id", "same")
                .header("x-forwarded-for", "6.6.6.6")
                .header("connection", "keep-alive")
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(b"payload")))
                .expect("req");
            let mut echo = send_h1(addr, req).await.json();
            let headers = echo["headers"].as_object_mut().expect("headers");
            headers.remove("x-forwarded-port");
            echo
        }
    };
    let (f, s) = (seen(&fast).await, seen(&slow).await);
    assert_eq!(f, s, "fast path and Pingora path differ");
    assert_eq!(f["headers"]["host"], "inner.local");
    assert_eq!(f["body_bytes"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_get_no_body_and_stray_upstream_bytes_reach_no_client() {
    let up = Scripted::start().await;
    let ingress = Ingress::start(&up.yaml("raw.test", "")).await;
    let (mut c, _task) = client(ingress.http).await;
    // the ingress's own answers: a HEAD gets the head only, and the connection stays in step
    let missing = send_to(&mut c, "HEAD", "nope.test", "/").await;
    assert_eq!((missing.status, missing.body.as_str()), (404, ""));
    assert!(missing.header("content-length").is_some_and(|l| l != "0"), "the length a GET would get");
    assert_eq!(send(&mut c, "GET", "/echo").await.body, "GET /echo body= conn=1");
    // a pod writing bytes after a HEAD response: that connection is never used for another request
    let head = send(&mut c, "HEAD", "/stray").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let (mut other, _t) = client(ingress.http).await;
        let r = send(&mut other, "GET", "/echo").await;
        assert_eq!(r.status, 200);
        assert!(r.body.starts_with("GET /echo body= conn=") && !r.body.contains("forged"), "{}", r.body);
        assert_ne!(r.body, "GET /echo body= conn=1", "the connection with stray bytes was dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_name_the_ingress_where_the_pod_did_not_and_answer_failures_alike() {
    let up = Scripted::start().await;
    let yaml = up.yaml("raw.test", "nginx.ingress.kubernetes.io/proxy-read-timeout: \"1\"");
    let fast = Ingress::start(&yaml).await;
    let slow = Ingress::start_with(&yaml, false, |c| c.fast_path = false).await;
    let mut seen = Vec::new();
    for ingress in [&fast, &slow] {
        let mut answers = Vec::new();
        let requests = [
            ("raw.test", "/echo"),
            ("raw.test", "/named"),
            ("nope.test", "/"),
            ("raw.test", "/bad"),
            ("raw.test", "/slow"),
        ];
        for (host, path) in requests {
            // a connection each: Pingora closes the client connection after a failure it answers
            let (mut c, _task) = client(ingress.http).await;
            let r = send_to(&mut c, "GET", host, path).await;
            let body = if path == "/echo" { String::new() } else { r.body.clone() };
            answers.push((r.status, r.header("server"), r.header("content-type"), body));
        }
        seen.push(answers);
    }
    let fast_answers = &seen[0];
    let skiff = Some("skiff".to_string());
    assert_eq!((fast_answers[0].0, &fast_answers[0].1), (200, &skiff), "a pod that sends no Server");
    assert_eq!((fast_answers[1].0, fast_answers[1].1.as_deref()), (200, Some("gunicorn")), "the pod's own is kept");
    assert_eq!((fast_answers[2].0, &fast_answers[2].1), (404, &skiff), "the ingress's own answer");
    assert_eq!((fast_answers[3].0, &fast_answers[3].1), (502, &skiff));
    assert_eq!(fast_answers[3].3, "502 bad gateway\n");
    assert_eq!((fast_answers[4].0, fast_answers[4].3.as_str()), (504, "504 gateway timeout\n"), "a pod too slow");
    assert_eq!(seen[0], seen[1], "the fast path and Pingora's path answer alike");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_after_a_hand_over_are_all_answered_in_order() {
    let a = Upstream::start("a").await;
    let ingress =
        Ingress::start(&[service_yaml("svc", &[&a]), ingress_yaml("web", "", &[("h.test", "/", "svc")], "")].concat())
            .await;
    let mut s = TcpStream::connect(ingress.http).await.expect("connect");
    // one write: a fast request, a chunked upload (handed to Pingora), a fast one, another upload, two fast ones
    let upload = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    };
    let pipelined = [
        "GET /1 HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(),
        upload("/2"),
        "GET /3 HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(),
        upload("/4"),
        "GET /5 HTTP/1.1\r\nHost: h.test\r\n\r\n".to_owned(),
        "POST /6 HTTP/1.1\r\nHost: h.test\r\nContent-Length: 3\r\n\r\nabc".to_owned(),
    ]
    .concat();
    s.write_all(pipelined.as_bytes()).await.expect("write");
    let got = read_responses(&mut s, 6).await;
    let uris: Vec<String> = got
        .iter()
        .map(|r| {
            let json: serde_json::Value = serde_json::from_str(r.split_once(' ').expect("status").1).expect("echo");
            format!("{} {}", json["uri"].as_str().unwrap_or_default(), json["body_bytes"])
        })
        .collect();
    assert_eq!(uris, ["/1 0", "/2 5", "/3 0", "/4 5", "/5 0", "/6 3"]);
    // Pingora handed the connection back after each upload: the fast path saw the second one and handed it over
    let m = ingress.metrics_text().await;
    let series = "skiff_ingress_fast_path_handovers_total{reason=\"streamed body, upgrade or expectation\"} 2";
    assert!(m.contains(series), "no {series} in\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_the_pod_thinks_frees_the_pod_and_the_limit_slot() {
    let up = Scripted::start().await;
    let ingress = Ingress::start(&up.yaml("raw.test", "nginx.ingress.kubernetes.io/limit-connections: \"1\"")).await;
    let mut gone = TcpStream::connect(ingress.http).await.expect("connect");
    gone.write_all(b"GET /hold HTTP/1.1\r\nHost: raw.test\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(gone);
    // the pod's connection is closed well before it would have answered (5 s)
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while up.holds_cut.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "the pod's connection is still open 3 s after the client left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // and the client's limit-connections slot is free for its next request
    let (mut c, _task) = client(ingress.http).await;
    let next = send(&mut c, "GET", "/echo").await;
    assert_eq!(next.status, 200, "{}", next.body);
    let m = ingress.metrics_text().await;
    assert!(
        m.lines().any(|l| l.starts_with("skiff_ingress_requests_total{") && l.contains("status=\"499\"")),
        "the abandoned request is counted as 499:\n{m}"
    );
}

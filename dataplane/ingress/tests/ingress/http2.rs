//! HTTP/2 clients on the fast path (h2c with prior knowledge here; h2 over TLS in `tls`): many streams of one
//! connection at once with every body framing a pod uses, a stream the fast path cannot carry going to Pingora
//! alone while its siblings stay, and a client resetting its stream freeing the pod and the limit slot.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::Request;
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::fast_path::Scripted;
use crate::harness::*;

type Body = BoxBody<Bytes, Infallible>;

/// An h2c connection (prior knowledge) to `addr`.
async fn h2c(addr: SocketAddr) -> SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2c handshake");
    tokio::spawn(conn);
    sender
}

/// An ingress routing `h.test` to one echoing pod, `a`.
async fn one_pod() -> (Upstream, Ingress) {
    let a = Upstream::start("a").await;
    let ingress =
        Ingress::start(&[service_yaml("svc", &[&a]), ingress_yaml("web", "", &[("h.test", "/", "svc")], "")].concat())
            .await;
    (a, ingress)
}

fn request(method: &str, host: &str, path: &str, body: Body) -> Request<Body> {
    Request::builder().method(method).uri(format!("http://{host}{path}")).body(body).expect("request")
}

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes())).boxed()
}

/// Sends a request and reads the whole answer within 10 s: status, `content-length`, body.
async fn send(sender: &mut SendRequest<Body>, req: Request<Body>) -> (u16, Option<String>, String) {
    let exchange = async {
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let length = resp.headers().get("content-length").map(|v| v.to_str().expect("ascii").to_owned());
        let body = resp.into_body().collect().await.expect("whole body").to_bytes();
        (status, length, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("answered within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_of_one_connection_are_proxied_at_once_in_every_body_framing() {
    let up = Scripted::start().await;
    let ingress = Ingress::start(&up.yaml("raw.test", "")).await;
    let sender = h2c(ingress.http).await;
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..40 {
        let mut sender = sender.clone();
        streams.spawn(async move {
            let (method, path, body) = match i % 5 {
                0 => ("GET", format!("/echo{i}"), ""),
                1 => ("GET", "/chunked".to_owned(), ""),
                2 => ("GET", "/close".to_owned(), ""),
                3 => ("HEAD", format!("/head{i}"), ""),
                _ => ("POST", format!("/post{i}"), "payload"),
            };
            let req = request(method, "raw.test", &path, full(body));
            (i, send(&mut sender, req).await)
        });
    }
    let mut answered = 0;
    while let Some(done) = streams.join_next().await {
        let (i, (status, length, body)) = done.expect("stream task");
        assert_eq!(status, 200, "stream {i}: {body}");
        match i % 5 {
            0 => assert!(body.starts_with(&format!("GET /echo{i} body= conn=")), "stream {i}: {body}"),
            // the pod's chunks and trailer section become DATA frames holding only the payload
            1 => assert_eq!(body, "hello world", "stream {i}"),
            // a body the pod ends by closing ends the stream
            2 => assert!(body.starts_with("until close conn="), "stream {i}: {body}"),
            3 => {
                assert_eq!(body, "", "stream {i}: a HEAD answer has no body");
                let text = format!("HEAD /head{i} body= conn=");
                assert!(length.is_some_and(|l| l.parse::<usize>().expect("number") >= text.len()), "stream {i}");
            }
            _ => assert!(body.starts_with(&format!("POST /post{i} body=payload conn=")), "stream {i}: {body}"),
        }
        answered += 1;
    }
    assert_eq!(answered, 40);
    let m = ingress.metrics_text().await;
    assert!(!m.contains("skiff_ingress_fast_path_handovers_total{"), "streams were handed to Pingora:\n{m}");
    let line = "skiff_ingress_requests_total{namespace=\"default\",ingress=\"raw\",host=\"raw.test\",path=\"/\",service=\"raw\",method=\"GET\",status=\"200\"} 24";
    assert!(m.contains(line), "every stream is counted once: no {line} in\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_fast_path_cannot_carry_goes_to_pingora_and_its_siblings_stay() {
    let (_pod, ingress) = one_pod().await; // bound: the pod lives until the test ends
    let mut sender = h2c(ingress.http).await;
    // a body of unknown length, sent in two frames: Pingora streams it to the pod
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    for piece in ["hello", "world"] {
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(piece.as_bytes())))).expect("queued");
    }
    drop(tx);
    let streamed = send(&mut sender, request("POST", "h.test", "/streamed", StreamBody::new(rx).boxed())).await;
    let after = send(&mut sender, request("GET", "h.test", "/after", full(""))).await;
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).expect("echo");
    assert_eq!((streamed.0, after.0), (200, 200), "{streamed:?} {after:?}");
    assert_eq!(json(&streamed.2)["uri"], "/streamed");
    assert_eq!(json(&streamed.2)["body_bytes"], 10);
    assert_eq!(json(&after.2)["uri"], "/after");
    let m = ingress.metrics_text().await;
    let series = "skiff_ingress_fast_path_handovers_total{reason=\"streamed body\"} 1";
    assert!(m.contains(series), "no {series} in\n{m}");
    let handovers = m.lines().filter(|l| l.starts_with("skiff_ingress_fast_path_handovers_total{")).count();
    assert_eq!(handovers, 1, "only the streamed upload was handed over:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_heads_are_dropped_and_a_pod_closing_after_one_is_answered_502() {
    let up = Scripted::start().await;
    let ingress = Ingress::start(&up.yaml("raw.test", "")).await;
    let mut sender = h2c(ingress.http).await;
    let (status, _, body) = send(&mut sender, request("GET", "raw.test", "/early-hints", full(""))).await;
    assert_eq!(status, 200, "the final response after the dropped 103: {body}");
    assert!(body.starts_with("GET /early-hints body= conn="), "{body}");
    // the client got nothing of the 103, so the failure after it is still answered (not a reset stream)
    let (status, _, body) = send(&mut sender, request("GET", "raw.test", "/hint-then-close", full(""))).await;
    assert_eq!((status, body.as_str()), (502, "502 bad gateway\n"));
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "a request the pod acknowledged with a 103 is not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_its_stream_frees_the_pod_and_the_limit_slot() {
    let up = Scripted::start().await;
    let ingress = Ingress::start(&up.yaml("raw.test", "nginx.ingress.kubernetes.io/limit-connections: \"1\"")).await;
    let sender = h2c(ingress.http).await;
    let mut held = sender.clone();
    let hold = tokio::spawn(async move { held.send_request(request("GET", "raw.test", "/hold", full(""))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.abort(); // drops the response future: RST_STREAM (CANCEL)
    // the pod's connection is closed well before it would have answered (5 s)
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while up.holds_cut.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "the pod's connection is still open 3 s after the reset");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the connection lives on, and its limit-connections slot is free for the next stream
    let mut sender = sender;
    let (status, _, body) = send(&mut sender, request("GET", "raw.test", "/echo", full(""))).await;
    assert_eq!(status, 200, "{body}");
    let m = ingress.metrics_text().await;
    assert!(
        m.lines().any(|l| l.starts_with("skiff_ingress_requests_total{") && l.contains("status=\"499\"")),
        "the abandoned stream is counted as 499:\n{m}"
    );
}

/// An HTTP/2 connection with no stream for the keep-alive timeout is closed with a GOAWAY, as nginx closes one
/// after `keepalive_timeout`; a stream that lasts longer keeps its connection (a request after it is still served
/// on it), and the idle time counts from the end of the last stream. Both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_keepalive_timeout_and_a_busy_one_is_not() {
    let up = Scripted::start().await;
    for fast_path in [true, false] {
        idle_and_busy_connections(&up, fast_path).await;
    }
}

async fn idle_and_busy_connections(up: &Scripted, fast_path: bool) {
    let timeout = Duration::from_secs(1);
    let yaml = up.yaml("raw.test", "nginx.ingress.kubernetes.io/proxy-read-timeout: \"3\"");
    let ingress = Ingress::start_with(&yaml, false, |c| {
        c.keepalive_timeout = timeout;
        c.fast_path = fast_path;
    })
    .await;
    let connect = || async {
        let stream = tokio::net::TcpStream::connect(ingress.http).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
        (sender, tokio::spawn(conn))
    };

    let (mut idle, closed) = connect().await;
    assert_eq!(send(&mut idle, request("GET", "raw.test", "/echo", full(""))).await.0, 200);
    let answered = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), closed).await;
    let after = answered.elapsed();
    assert!(ended.is_ok(), "fast path {fast_path}: an idle connection is still open 10 s after its last stream");
    assert!(
        after >= timeout - Duration::from_millis(100),
        "fast path {fast_path}: closed {after:?} after its last stream"
    );

    // `/slow` does not answer: its stream lasts the 3 s read timeout (then 504), three keep-alive timeouts
    let (mut busy, closed) = connect().await;
    let slow = send(&mut busy, request("GET", "raw.test", "/slow", full(""))).await;
    assert_eq!(slow.0, 504, "fast path {fast_path}: {slow:?}");
    assert!(!closed.is_finished(), "fast path {fast_path}: the connection was closed while its stream was in progress");
    let again = send(&mut busy, request("GET", "raw.test", "/echo", full(""))).await;
    assert_eq!(
        again.0, 200,
        "fast path {fast_path}: a request right after the long stream is served on the same connection"
    );
    tokio::time::timeout(Duration::from_secs(10), closed).await.expect("then it goes idle and is closed").ok();
}

/// With the h2c option off, a client speaking HTTP/2 with prior knowledge on the plain listener is not served, on
/// either transport (Pingora's server refuses it the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prior_knowledge_h2c_is_refused_when_the_option_is_off() {
    let up = Scripted::start().await;
    for fast_path in [true, false] {
        let ingress = Ingress::start_with(&up.yaml("raw.test", ""), false, |c| {
            c.h2c = false;
            c.fast_path = fast_path;
        })
        .await;
        let stream = tokio::net::TcpStream::connect(ingress.http).await.expect("connect");
        let refused = async {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender.send_request(request("GET", "raw.test", "/echo", full(""))).await
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), refused).await.expect("refused within 10 s");
        assert!(outcome.is_err(), "fast path {fast_path}: h2c served with the option off: {outcome:?}");
        // HTTP/1.1 on the same listener is served
        assert_eq!(ingress.get("raw.test", "/echo").await.status, 200, "fast path {fast_path}");
    }
}

/// `skiff_ingress_active_connections` counts an HTTP/2 connection once while one of its streams is on Pingora's
/// path (it counted the connection and the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_counts_once_while_a_stream_is_on_pingoras_path() {
    let (a, ingress) = one_pod().await;
    let active = |m: &str| {
        m.lines().find_map(|l| l.strip_prefix("skiff_ingress_active_connections ")).map(|v| v.trim().to_owned())
    };
    let mut sender = h2c(ingress.http).await;
    assert_eq!(send(&mut sender, request("GET", "h.test", "/first", full(""))).await.0, 200);
    assert_eq!(active(&ingress.metrics_text().await).as_deref(), Some("1"), "one connection");
    // an upload of unknown length still being sent: its stream stays on Pingora's path until the body ends
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"part")))).expect("queued");
    let mut upload = sender.clone();
    let streamed =
        tokio::spawn(
            async move { send(&mut upload, request("POST", "h.test", "/up", StreamBody::new(rx).boxed())).await },
        );
    // the pod has the upload's head: Pingora's phases have run for it
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.requests.load(Ordering::Relaxed) < 2 {
        assert!(std::time::Instant::now() < deadline, "the upload did not reach the pod within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = ingress.metrics_text().await;
    assert!(m.contains("skiff_ingress_fast_path_handovers_total{reason=\"streamed body\"} 1"), "{m}");
    assert_eq!(active(&m).as_deref(), Some("1"), "one connection while its stream is on Pingora's path:\n{m}");
    drop(tx);
    assert_eq!(streamed.await.expect("upload task").0, 200);
    drop(sender);
}

//! The test harness: real upstream servers on loopback, a real ingress on loopback ports, real clients.
//!
//! Upstreams are small hyper servers (HTTP/1.1 and h2c) that answer with a JSON echo of what they received and
//! echo WebSocket messages. Each test starts its own ingress ([`Ingress`], stopped on drop) so tests can change
//! configuration independently; everything listens on 127.0.0.1 only.

#![allow(dead_code)] // each test module uses part of the harness

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_ingress::config::AccessLog;
use skiff_ingress::runtime::{Embedded, ShutdownKind};
use skiff_ingress::{IngressConfig, Objects};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A free loopback port (bound, then released), never handed out twice in this process: tests run side by side,
/// and a port released here could otherwise be handed to a second ingress before the first one binds it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let port = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no unused loopback port in 1,000 tries");
}

/// A running upstream: answers every request with a JSON echo naming `name`.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    /// Connections accepted (TLS ones once their handshake completed).
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(
    name: Arc<str>,
    count: Arc<AtomicU64>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    count.fetch_add(1, Ordering::Relaxed);
    if ws_upstream::is_upgrade(&req) {
        return Ok(ws_upstream::accept(&mut req));
    }
    let headers: serde_json::Map<String, serde_json::Value> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().into())).collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let json = serde_json::json!({"server": &*name, "method": method, "uri": uri, "version": version,
        "headers": headers, "body_bytes": body});
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .expect("response"))
}

/// WebSocket upgrade on the upstream side, with hyper's upgrade API and tungstenite.
mod ws_upstream {
    use super::*;

    fn accept_key(key: &[u8]) -> String {
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
    }

    pub fn is_upgrade(req: &Request<Incoming>) -> bool {
        req.headers().get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    }

    pub fn accept(req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
        let key = req.headers().get("sec-websocket-key").map(|k| k.as_bytes().to_vec()).unwrap_or_default();
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if msg.is_text() || msg.is_binary() {
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    break;
                }
            }
        });
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept_key(&key))
            .body(Full::new(Bytes::new()))
            .expect("101")
    }
}

impl Upstream {
    /// Starts an upstream (HTTP/1.1 with upgrades, and h2c) on a new loopback port.
    pub async fn start(name: &str) -> Upstream {
        Self::start_with(name, None).await
    }

    /// Starts an upstream speaking HTTPS (HTTP/1.1 over TLS, a self-signed certificate, ALPN `http/1.1`), as a pod
    /// behind `backend-protocol: HTTPS`.
    pub async fn start_tls(name: &str) -> Upstream {
        let c = rcgen::generate_simple_self_signed(vec!["pod.local".to_owned()]).expect("rcgen");
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![c.cert.der().clone()], key)
                .expect("certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start_with(name, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let name: Arc<str> = name.into();
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (n, c, conns) = (name.clone(), requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (n, c, conns, tls) = (n.clone(), c.clone(), conns.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| echo(n.clone(), c.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            conns.fetch_add(1, Ordering::Relaxed);
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            conns.fetch_add(1, Ordering::Relaxed);
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Upstream { name: name.to_string(), addr, requests, connections, task }
    }
}

/// A Service named `name` with one port 80 → the upstreams' ports (one EndpointSlice per upstream).
pub fn service_yaml(name: &str, upstreams: &[&Upstream]) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n"
    );
    for (i, u) in upstreams.iter().enumerate() {
        out.push_str(&slice_yaml(name, i, u.addr.port(), true));
    }
    out
}

/// An EndpointSlice of `service` with one 127.0.0.1 endpoint on `port`.
pub fn slice_yaml(service: &str, i: usize, port: u16, ready: bool) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-{i}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports:\n- {{name: http, port: {port}}}\nendpoints:\n- addresses: [127.0.0.1]\n  conditions: {{ready: {ready}}}\n"
    )
}

/// An Ingress named `name` with `annotations` (YAML flow map body) and the given rules (host, path, service).
pub fn ingress_yaml(name: &str, annotations: &str, rules: &[(&str, &str, &str)], tls: &str) -> String {
    let mut out = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}\nspec:\n  ingressClassName: skiff\n{tls}  rules:\n"
    );
    for (host, path, svc) in rules {
        out.push_str(&format!(
            "  - host: \"{host}\"\n    http:\n      paths:\n      - {{path: \"{path}\", pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n"
        ));
    }
    out
}

/// A running ingress on free loopback ports.
pub struct Ingress {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    pub embedded: Option<Embedded>,
    pub dir: tempfile::TempDir,
}

impl Ingress {
    /// Starts an ingress serving `yaml` (published before the listeners open).
    pub async fn start(yaml: &str) -> Ingress {
        Self::start_with(yaml, false, |_| {}).await
    }

    /// Starts an ingress; with `follow_file` the YAML is written to a file the ingress follows.
    pub async fn start_with(yaml: &str, follow_file: bool, tweak: impl FnOnce(&mut IngressConfig)) -> Ingress {
        let dir = tempfile::tempdir().expect("tempdir");
        let (http, https, metrics) = (free_port(), free_port(), free_port());
        let mut config = IngressConfig {
            http_addr: format!("127.0.0.1:{http}"),
            https_addr: Some(format!("127.0.0.1:{https}")),
            metrics_addr: Some(format!("127.0.0.1:{metrics}")),
            access_log: AccessLog::File(dir.path().join("access.log")),
            upgrade_sock: dir.path().join("upgrade.sock"),
            pid_file: dir.path().join("pid"),
            // Pingora's single-threaded runtimes keep their handles in a process-global thread-local keyed by
            // thread id; with many servers started and stopped in one test process a reused thread id finds a
            // dead runtime. One server per process (the binary) has no such problem; tests use work stealing.
            work_stealing: true,
            ..IngressConfig::default()
        };
        tweak(&mut config);
        let file = dir.path().join("objects.yaml");
        std::fs::write(&file, yaml).expect("write objects");
        let embedded = tokio::task::spawn_blocking(move || {
            let e = Embedded::start(config, follow_file.then_some(file.clone())).expect("ingress starts");
            if !follow_file {
                let objects = Objects::from_yaml(&std::fs::read_to_string(&file).expect("read")).expect("objects");
                e.publisher.apply(&objects, Instant::now());
            }
            e
        })
        .await
        .expect("start task");
        let ingress = Ingress {
            http: format!("127.0.0.1:{http}").parse().expect("addr"),
            https: format!("127.0.0.1:{https}").parse().expect("addr"),
            metrics: format!("127.0.0.1:{metrics}").parse().expect("addr"),
            embedded: Some(embedded),
            dir,
        };
        ingress.wait_listening().await;
        ingress
    }

    async fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [self.http, self.https, self.metrics] {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                assert!(Instant::now() < deadline, "ingress did not listen on {addr} within 20 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Publishes a new configuration.
    pub fn apply(&self, yaml: &str) -> u64 {
        let objects = Objects::from_yaml(yaml).expect("objects parse");
        self.embedded.as_ref().expect("running").publisher.apply(&objects, Instant::now()).generation
    }

    /// The objects file (when following one).
    pub fn file(&self) -> PathBuf {
        self.dir.path().join("objects.yaml")
    }

    /// `GET` over HTTP/1.1 with a Host header; returns status, headers and body.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        self.request(Request::get(path).header("host", host).body(Full::new(Bytes::new())).expect("request")).await
    }

    /// Sends one request on a new HTTP/1.1 connection.
    pub async fn request(&self, req: Request<Full<Bytes>>) -> Reply {
        send_h1(self.http, req).await
    }

    /// Scrapes the metrics endpoint.
    pub async fn metrics_text(&self) -> String {
        send_h1(self.metrics, Request::get("/metrics").header("host", "m").body(Full::new(Bytes::new())).expect("req"))
            .await
            .body
    }

    /// Stops the ingress (graceful) and waits for it.
    pub async fn stop(mut self) {
        if let Some(e) = self.embedded.take() {
            tokio::task::spawn_blocking(move || e.stop(ShutdownKind::Graceful)).await.expect("stop");
        }
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        if let Some(e) = self.embedded.take() {
            e.stop(ShutdownKind::Fast);
        }
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The echo JSON of an upstream.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not an echo ({e}): {} {}", self.status, self.body))
    }

    /// Which upstream answered.
    pub fn server(&self) -> String {
        self.json()["server"].as_str().unwrap_or_default().to_owned()
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

/// One request on a new HTTP/1.1 connection to `addr`.
pub async fn send_h1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("reply in 10 s")
        .expect("response");
    read_reply(resp).await
}

/// Reads a hyper response into a [`Reply`].
pub async fn read_reply(resp: Response<Incoming>) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// A WebSocket through the ingress; checks it echoes.
pub async fn websocket(
    ingress: SocketAddr,
    host: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{ingress}/ws").into_client_request().expect("ws request");
    req.headers_mut().insert("host", host.parse().expect("host"));
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("websocket handshake through the ingress");
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `text` and expects it back.
pub async fn ws_roundtrip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(m))) => m.to_text().is_ok_and(|t| t == text),
        _ => false,
    }
}

/// Runs curl (a real client) with arguments; returns (exit ok, stdout).
pub async fn curl(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl runs (scripts/setup installs it)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// One request as a raw pod received it.
pub struct RawRequest {
    /// Method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// The body (`Content-Length` bytes), as text.
    pub body: String,
    /// Head and body as received, as text.
    pub raw: String,
}

/// Reads the next request (head and `Content-Length` body) from `s`, keeping bytes behind it in `buf`; `None` when
/// the connection ends first.
pub async fn read_raw_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= n + len {
                let out = RawRequest {
                    method: req.method.unwrap_or_default().to_owned(),
                    path: req.path.unwrap_or_default().to_owned(),
                    body: String::from_utf8_lossy(&buf[n..n + len]).into_owned(),
                    raw: String::from_utf8_lossy(&buf[..n + len]).into_owned(),
                };
                buf.drain(..n + len);
                return Some(out);
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

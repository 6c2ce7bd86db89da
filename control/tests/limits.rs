//! The API server against bad clients (issue 14): thousands of half-sent TLS handshakes and request heads are
//! closed in time while kubectl keeps answering, and a user over its share of requests in flight gets 429 with
//! `Retry-After` while other users are served.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use skiff_control::apiserver::limits::Limits;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const HALF_HANDSHAKES: usize = 1500;
const HALF_HEADS: usize = 500;

fn tls_client(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Waits until the peer closes (EOF or error); how long it took.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(mut s: S, started: Instant) -> Duration {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn half_sent_connections_are_closed_in_time_while_kubectl_answers() {
    let limits = Limits {
        handshake_timeout: Duration::from_secs(3),
        header_read_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let c = Cluster::start_with_limits(limits);
    let addr = c.server.addr;
    let connector = tls_client(&c.server.pki.ca.cert_pem);
    let started = Instant::now();
    let waits = c.runtime.block_on(async {
        let mut waits = Vec::new();
        // half a TLS record header: the handshake never completes
        for _ in 0..HALF_HANDSHAKES {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(&[0x16, 0x03, 0x01, 0x00]).await.expect("half a record");
            waits.push(tokio::spawn(closed_after(s, started)));
        }
        // a complete handshake, then half a request head
        for _ in 0..HALF_HEADS {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
            let mut s = connector.connect(name, tcp).await.expect("handshake");
            s.write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n").await.expect("half a head");
            s.flush().await.expect("flush");
            waits.push(tokio::spawn(closed_after(s, started)));
        }
        waits
    });
    // with all of them open, kubectl is served
    let ns = c.kubectl(&["get", "namespaces", "-o", "name"]);
    assert!(ns.contains("namespace/default"), "{ns}");
    let slowest = c.runtime.block_on(async {
        let mut slowest = Duration::ZERO;
        for w in waits {
            let took = tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("every half-sent connection is closed within 30 s")
                .expect("the reader ends");
            slowest = slowest.max(took);
        }
        slowest
    });
    assert!(slowest >= Duration::from_secs(2), "closed by the timeouts, not at once ({slowest:?})");
    eprintln!("{} half-sent connections closed; the last after {slowest:?}", HALF_HANDSHAKES + HALF_HEADS);
    c.kubectl(&["get", "namespaces"]);
}

/// A request whose body is still being sent: it stays in flight until `finish`. Written by hand over HTTP/1.1 so
/// that its head has surely left when `start` returns. It was a curl upload from an empty pipe over HTTP/2: on a
/// loaded machine (CI, 2 runs in 10 here with 6 busy loops) neither of two such requests held a place within 10 s;
/// curl's log showed the request built but not whether its HEADERS had left. This way: 0 in 10 alike.
struct Slow {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    body: String,
}

impl Slow {
    fn start(c: &Cluster, token: &str, name: &str) -> Slow {
        let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#);
        let head = format!(
            "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let connector = tls_client(&c.server.pki.ca.cert_pem);
        let addr = c.server.addr;
        let stream = c.runtime.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
            let mut s = connector.connect(name, tcp).await.expect("handshake");
            s.write_all(head.as_bytes()).await.expect("the head");
            s.flush().await.expect("flush");
            s
        });
        Slow { stream, body }
    }

    /// Sends the body; the answer's status code.
    fn finish(self, c: &Cluster) -> String {
        let Slow { mut stream, body } = self;
        c.runtime.block_on(async move {
            stream.write_all(body.as_bytes()).await.expect("the body");
            stream.flush().await.expect("flush");
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            // the status line is all that is needed; bounded by the answer's size and the timeout
            let read = async {
                while !answer.windows(2).any(|w| w == b"\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), read).await.expect("an answer within 10 s");
            String::from_utf8_lossy(&answer).split_whitespace().nth(1).unwrap_or_default().to_string()
        })
    }
}

fn status_and_retry_after(c: &Cluster, token: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "-H", &format!("Authorization: Bearer {token}")])
        .arg("--cacert")
        .arg(c.server.pki.dir.join("ca.crt"))
        .arg(format!("{}/api/v1/namespaces/default/configmaps", c.server.url))
        .output()
        .expect("curl runs");
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let code = head.split_whitespace().nth(1).unwrap_or_default().to_string();
    let retry = head.lines().find_map(|l| l.strip_prefix("retry-after:")).unwrap_or_default().trim().to_string();
    (code, retry)
}

#[test]
fn a_user_over_its_share_gets_429_and_others_are_served() {
    let c = Cluster::start_with_limits(Limits { inflight_per_user: 2, ..Limits::default() });
    for sa in ["flood", "calm"] {
        c.kubectl(&["create", "serviceaccount", sa]);
    }
    c.kubectl(&[
        "create",
        "rolebinding",
        "edit",
        "--clusterrole=edit",
        "--serviceaccount=default:flood",
        "--serviceaccount=default:calm",
    ]);
    let flood = c.kubectl(&["create", "token", "flood"]).trim().to_string();
    let calm = c.kubectl(&["create", "token", "calm"]).trim().to_string();
    assert_eq!(status_and_retry_after(&c, &flood).0, "200");

    let held = [Slow::start(&c, &flood, "slow-a"), Slow::start(&c, &flood, "slow-b")];
    // both heads have been sent; the server admits them as it reads them
    let mut answer = (String::new(), String::new());
    c.eventually("the flooding user is throttled", Duration::from_secs(10), || {
        answer = status_and_retry_after(&c, &flood);
        answer.0 == "429"
    });
    assert_eq!(answer.1, "1", "429 carries Retry-After");
    assert_eq!(status_and_retry_after(&c, &calm).0, "200", "another user is served");
    c.kubectl(&["get", "configmaps"]);
    let [a, b] = held;
    assert_eq!(a.finish(&c), "201");
    assert_eq!(b.finish(&c), "201");
    assert_eq!(status_and_retry_after(&c, &flood).0, "200", "places are released");
    let metrics = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(c.server.pki.dir.join("ca.crt"))
        .arg("--cert")
        .arg(c.server.pki.dir.join("admin.crt"))
        .arg("--key")
        .arg(c.server.pki.dir.join("admin.key"))
        .arg(format!("{}/metrics", c.server.url))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("skiff_apiserver_throttled_requests_total ") && !l.ends_with(" 0")),
        "{text}"
    );
}

//! `skiff ingress` replaced by a new binary under load (Pingora's graceful upgrade: the new process takes the
//! listening sockets, the old one drains) fails no request: keep-alive clients are told `Connection: close` by the
//! draining process and reconnect to the new one; requests in flight finish within the grace period. Loopback only; both processes are ours and stopped by pid.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A keep-alive upstream answering every request with `ok`.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

fn ingress(dir: &std::path::Path, port: u16, upgrade: bool) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["ingress", "--from-file"])
        .arg(dir.join("objects.yaml"))
        .args(["--http-addr", &format!("127.0.0.1:{port}"), "--https-addr", "none", "--metrics-addr", "none"])
        .args(["--access-log", "off", "--grace-period", "3", "--pid-file"])
        .arg(dir.join("ingress.pid"))
        .arg("--upgrade-sock")
        .arg(dir.join("upgrade.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if upgrade {
        cmd.arg("--upgrade");
    }
    Proc(cmd.spawn().expect("skiff ingress starts"))
}

/// One request on `conn` (connecting first if needed); the connection is dropped when the answer says close.
async fn request(conn: &mut Option<TcpStream>, addr: SocketAddr) -> Result<(), String> {
    if conn.is_none() {
        *conn = Some(TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?);
    }
    let s = conn.as_mut().expect("connected");
    s.write_all(b"GET / HTTP/1.1\r\nHost: up.test\r\n\r\n").await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let answer = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .map_err(|_| "no answer in 5 s".to_owned())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {} bytes of the answer", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if text.contains("\r\n\r\n") && text.ends_with("ok") {
            break text.into_owned();
        }
    };
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {answer}"));
    }
    if answer.to_ascii_lowercase().contains("connection: close") {
        *conn = None;
    }
    Ok(())
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "skiff ingress did not listen within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_load_fails_no_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = upstream().await;
    std::fs::write(
        dir.path().join("objects.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: up, namespace: default}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: up-1, namespace: default, labels: {{kubernetes.io/service-name: up}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: up, namespace: default}}\n\
             spec: {{ingressClassName: skiff, rules: [{{host: up.test, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: up, port: {{number: 80}}}}}}}}]}}}}]}}\n",
            up.port()
        ),
    )
    .expect("objects");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let old = ingress(dir.path(), port, false);
    wait_listening(port).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, reconnects) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, ok, reconnects) = (stop.clone(), ok.clone(), reconnects.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = None;
            let mut failures = Vec::new();
            // bounded: the test stops it after a few seconds; 200,000 requests is far beyond that
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let fresh = conn.is_none();
                match request(&mut conn, addr).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.push(e);
                        conn = None;
                        0
                    }
                };
                if fresh {
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 100, "the ingress serves before the upgrade ({before} requests)");
    let connects_before = reconnects.load(Ordering::Relaxed);

    // the new binary waits for the sockets, then the old one is told to hand them over and drain
    let new = ingress(dir.path(), port, true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = Command::new("kill").args(["-QUIT", &old.0.id().to_string()]).status().expect("kill runs");
    assert!(status.success(), "SIGQUIT to the old ingress");
    // Pingora lets both processes accept for 5 s, then the old one stops accepting and drains (grace period 3 s)
    tokio::time::sleep(Duration::from_secs(7)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.expect("client task"));
    }
    let served = ok.load(Ordering::Relaxed);
    assert!(failures.is_empty(), "{} of {served} requests failed across the upgrade: {failures:?}", failures.len());
    assert!(served > before + 100, "requests went on during the upgrade ({before} → {served})");
    assert!(
        reconnects.load(Ordering::Relaxed) > connects_before,
        "the draining ingress told its keep-alive clients to reconnect"
    );

    // the old process is gone for good: whatever answers now is the new binary
    drop(old);
    let mut conn = None;
    for i in 0..50 {
        request(&mut conn, addr).await.unwrap_or_else(|e| panic!("request {i} to the new binary: {e}"));
    }
    drop(new);
}

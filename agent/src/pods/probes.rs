//! Startup, liveness and readiness probes (exec, httpGet, tcpSocket, grpc) with every timing field. One task per
//! running container; it reports transitions to the pod's worker: readiness flips, startup success, and the
//! liveness/startup failures that restart the container.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::PodEvent;
use super::probe_schedule::{Attempt, Schedule};
use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// startupProbe.
    Startup,
    /// livenessProbe.
    Liveness,
    /// readinessProbe.
    Readiness,
}

impl ProbeKind {
    /// The Kubernetes name (`Startup`, `Liveness`, `Readiness`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// Where the probes of one container run.
#[derive(Clone)]
pub struct Target {
    /// The pod's address (httpGet/tcpSocket/grpc default host).
    pub pod_ip: IpAddr,
    /// The runc id of the container run (exec probes, and to tell runs apart).
    pub container_id: String,
    /// The runtime (exec probes).
    pub runtime: Arc<dyn Runtime>,
    /// Metrics.
    pub metrics: Metrics,
}

/// Timing of a probe with Kubernetes' defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// initialDelaySeconds.
    pub initial_delay: Duration,
    /// periodSeconds (10).
    pub period: Duration,
    /// timeoutSeconds (1).
    pub timeout: Duration,
    /// successThreshold (1).
    pub success_threshold: u32,
    /// failureThreshold (3).
    pub failure_threshold: u32,
}

fn secs(v: Option<i32>, default: u64, min: u64) -> Duration {
    Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default).max(min))
}

impl Timing {
    /// The timing of `p`.
    pub fn of(p: &Probe) -> Self {
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: p.success_threshold.and_then(|v| u32::try_from(v).ok()).unwrap_or(1).max(1),
            failure_threshold: p.failure_threshold.and_then(|v| u32::try_from(v).ok()).unwrap_or(3).max(1),
        }
    }
}

/// Counts consecutive results against the thresholds; `feed` returns the new verdict when it changes.
#[derive(Clone, Debug)]
pub struct Verdict {
    successes: u32,
    failures: u32,
    state: Option<bool>,
}

impl Verdict {
    /// Starts with no verdict.
    pub fn new() -> Self {
        Verdict { successes: 0, failures: 0, state: None }
    }

    /// Adds a result; returns `Some(verdict)` when the verdict changes.
    pub fn feed(&mut self, ok: bool, t: &Timing) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let new = if self.successes >= t.success_threshold {
            Some(true)
        } else if self.failures >= t.failure_threshold {
            Some(false)
        } else {
            self.state
        };
        if new != self.state {
            self.state = new;
            return new;
        }
        None
    }
}

impl Default for Verdict {
    fn default() -> Self {
        Self::new()
    }
}

fn port_of(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("named port {name} not found")),
    }
}

/// Runs a probe once: `Ok(())` on success, `Err(message)` on failure.
pub async fn probe_once(p: &Probe, c: &Container, target: &Target, timeout: Duration) -> Result<(), String> {
    let work = async {
        if let Some(e) = &p.exec {
            let argv = e.command.clone().unwrap_or_default();
            let mut cmd = target.runtime.exec(&target.container_id, &argv, None);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let out = cmd.output().await.map_err(|e| format!("exec: {e}"))?;
            if out.status.success() {
                return Ok(());
            }
            let mut msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if msg.is_empty() {
                msg = format!("command {argv:?} exited with {}", out.status.code().unwrap_or(-1));
            }
            return Err(msg);
        }
        if let Some(h) = &p.http_get {
            let host: IpAddr = h.host.as_deref().and_then(|h| h.parse().ok()).unwrap_or(target.pod_ip);
            let port = port_of(&h.port, c)?;
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for hd in h.http_headers.clone().unwrap_or_default() {
                req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
            }
            req.push_str("\r\n");
            let tcp = tokio::net::TcpStream::connect(SocketAddr::new(host, port))
                .await
                .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
            let head = if h.scheme.as_deref() == Some("HTTPS") {
                let tls = tokio_rustls::TlsConnector::from(insecure_tls());
                let name = rustls::pki_types::ServerName::IpAddress(host.into());
                let mut s = tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
                s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
                read_head(&mut s).await?
            } else {
                let mut s = tcp;
                s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
                read_head(&mut s).await?
            };
            let code: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad HTTP answer {head:?}"))?;
            return if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            };
        }
        if let Some(t) = &p.tcp_socket {
            let host: IpAddr = t.host.as_deref().and_then(|h| h.parse().ok()).unwrap_or(target.pod_ip);
            let port = port_of(&t.port, c)?;
            tokio::net::TcpStream::connect(SocketAddr::new(host, port))
                .await
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
            return Ok(());
        }
        if let Some(g) = &p.grpc {
            let port = u16::try_from(g.port).map_err(|_| "invalid port".to_string())?;
            return grpc_health(SocketAddr::new(target.pod_ip, port), g.service.as_deref().unwrap_or("")).await;
        }
        Err("the probe has no handler".into())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
    }
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<String, String> {
    let mut buf = vec![0u8; 256];
    let mut got = 0;
    while got < buf.len() {
        let n = s.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got].contains(&b'\n') {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf[..got]);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// A TLS client that accepts any certificate (HTTPS probes skip verification, as the kubelet's do).
pub fn insecure_tls() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct Any(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| b.dangerous().with_custom_certificate_verifier(Arc::new(Any(provider))).with_no_client_auth());
    Arc::new(cfg.unwrap_or_else(|_| {
        rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
    }))
}

/// `grpc.health.v1.Health/Check` over h2c: SERVING (1) is success.
async fn grpc_health(addr: SocketAddr, service: &str) -> Result<(), String> {
    use http_body_util::BodyExt as _;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("dial {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("h2 handshake with {addr}: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        msg.push(u8::try_from(service.len()).map_err(|_| "service name too long")?);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(&msg);
    let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("grpc request: {e}"))?;
    let collected = resp.into_body().collect().await.map_err(|e| format!("grpc answer: {e}"))?;
    driver.abort();
    if let Some(t) = collected.trailers()
        && let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok())
        && s != "0"
    {
        return Err(format!("rpc error: code = {s}"));
    }
    let data = collected.to_bytes();
    match data.get(5..7) {
        Some([0x08, 1]) => Ok(()),
        Some([0x08, s]) => {
            Err(format!("service unhealthy (responded with {})", if *s == 2 { "NOT_SERVING" } else { "UNKNOWN" }))
        }
        _ => Err("service unhealthy (responded with UNKNOWN)".into()),
    }
}

/// A probe result reported to the worker.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    /// Container name.
    pub container: String,
    /// Container run.
    pub container_id: String,
    /// Which probe.
    pub kind: ProbeKind,
    /// The new verdict.
    pub ok: bool,
    /// The last failure's message.
    pub message: String,
}

async fn probe_loop(
    kind: ProbeKind,
    p: Probe,
    c: Container,
    target: Target,
    tx: mpsc::UnboundedSender<PodEvent>,
) -> bool {
    let t = Timing::of(&p);
    tokio::time::sleep(t.initial_delay).await;
    let began = tokio::time::Instant::now();
    let mut schedule = Schedule::new(Schedule::warms_up(kind, &p), t.period);
    let mut attempt = Attempt::Regular;
    let mut verdict = Verdict::new();
    loop {
        let r = probe_once(&p, &c, &target, t.timeout).await;
        let ok = r.is_ok();
        let (next, next_attempt) = schedule.after(attempt, ok, began.elapsed());
        if Schedule::counts(attempt, ok) {
            target.metrics.probe(kind.as_str(), ok);
            let message = r.as_ref().err().cloned().unwrap_or_default();
            if let Err(m) = &r {
                tracing::debug!(container = %c.name, kind = kind.as_str(), message = %m, "probe failed");
                let _ = tx.send(PodEvent::ProbeFailed { container: c.name.clone(), kind, message: m.clone() });
            }
            if let Some(v) = verdict.feed(ok, &t) {
                let _ = tx.send(PodEvent::Probe(ProbeResult {
                    container: c.name.clone(),
                    container_id: target.container_id.clone(),
                    kind,
                    ok: v,
                    message,
                }));
                match (kind, v) {
                    (ProbeKind::Startup, true) => return true,
                    (ProbeKind::Startup | ProbeKind::Liveness, false) => return false,
                    _ => {}
                }
            }
        }
        attempt = next_attempt;
        tokio::time::sleep_until(began + next).await;
    }
}

/// Runs the probes of a container run until aborted (the handle aborts on drop).
pub fn spawn(
    c: &Container,
    target: Target,
    tx: mpsc::UnboundedSender<PodEvent>,
) -> Option<tokio::task::JoinHandle<()>> {
    if c.startup_probe.is_none() && c.liveness_probe.is_none() && c.readiness_probe.is_none() {
        return None;
    }
    let c = c.clone();
    Some(tokio::spawn(async move {
        if let Some(sp) = c.startup_probe.clone()
            && !probe_loop(ProbeKind::Startup, sp, c.clone(), target.clone(), tx.clone()).await
        {
            return;
        }
        let live =
            c.liveness_probe.clone().map(|p| probe_loop(ProbeKind::Liveness, p, c.clone(), target.clone(), tx.clone()));
        let ready = c
            .readiness_probe
            .clone()
            .map(|p| probe_loop(ProbeKind::Readiness, p, c.clone(), target.clone(), tx.clone()));
        match (live, ready) {
            (Some(l), Some(r)) => {
                tokio::select! {
                    _ = l => {}
                    _ = r => {}
                }
            }
            (Some(l), None) => {
                l.await;
            }
            (None, Some(r)) => {
                r.await;
            }
            (None, None) => {}
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_kubernetes() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
    }

    #[test]
    fn verdicts_change_only_at_the_thresholds() {
        let t = Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        };
        let mut v = Verdict::new();
        assert_eq!(v.feed(true, &t), None);
        assert_eq!(v.feed(true, &t), Some(true));
        assert_eq!(v.feed(false, &t), None);
        assert_eq!(v.feed(false, &t), None);
        assert_eq!(v.feed(true, &t), None, "a success resets the failure count");
        assert_eq!(v.feed(false, &t), None);
        assert_eq!(v.feed(false, &t), None);
        assert_eq!(v.feed(false, &t), Some(false));
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        use k8s_openapi::api::core::v1::ContainerPort;
        let c = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
            ..Default::default()
        };
        assert_eq!(port_of(&IntOrString::String("http".into()), &c), Ok(8080));
        assert_eq!(port_of(&IntOrString::Int(90), &c), Ok(90));
        assert!(port_of(&IntOrString::String("nope".into()), &c).is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_probes_judge_a_real_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if req.starts_with("GET /ok") { "200 OK" } else { "503 Service Unavailable" };
                let _ = s.write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let target = Target {
            pod_ip: "127.0.0.1".parse().expect("ip"),
            container_id: "x".into(),
            runtime: Arc::new(crate::runtime::runc::Runc::new(
                "runc".into(),
                "/nonexistent".into(),
                crate::config::ShimCommand { program: "true".into(), args: vec![] },
                "/nonexistent".into(),
                1 << 20,
            )),
            metrics: Metrics::new(),
        };
        let http = |path: &str| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(i32::from(port)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = Container::default();
        assert_eq!(probe_once(&http("/ok"), &c, &target, Duration::from_secs(2)).await, Ok(()));
        assert_eq!(
            probe_once(&http("/bad"), &c, &target, Duration::from_secs(2)).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        let tcp = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(i32::from(port)),
                host: None,
            }),
            ..Default::default()
        };
        assert_eq!(probe_once(&tcp, &c, &target, Duration::from_secs(2)).await, Ok(()));
    }
}

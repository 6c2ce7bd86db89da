//! The one typed configuration of the ingress controller.

use std::path::PathBuf;
use std::time::Duration;

use crate::compile::CompileConfig;

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// One JSON object per line on stdout.
    Stdout,
    /// One JSON object per line appended to a file.
    File(PathBuf),
}

/// Everything the controller is told at start.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Plain HTTP listener (`0.0.0.0:80`).
    pub http_addr: String,
    /// HTTPS listener (`0.0.0.0:443`); `None` for no TLS listener.
    pub https_addr: Option<String>,
    /// Prometheus metrics listener; `None` for none.
    pub metrics_addr: Option<String>,
    /// Class selection and annotation defaults.
    pub compile: CompileConfig,
    /// Worker threads of the proxy (Pingora `threads`).
    pub threads: usize,
    /// Use one work-stealing tokio runtime for the proxy threads (Pingora's default) instead of one
    /// single-threaded runtime per thread. Off by default: measured 0.47× → 0.66× nginx requests/s on one thread
    /// (no cross-thread wake-ups per request); see docs/ingress.md.
    pub work_stealing: bool,
    /// Serve plain HTTP/1.1 requests on the fast path ([`crate::fast`]) and only the rest through Pingora's proxy
    /// phases. On by default: it is what puts the ingress ahead of nginx (docs/ingress.md#benchmarks).
    pub fast_path: bool,
    /// Access log destination.
    pub access_log: AccessLog,
    /// Addresses written to `status.loadBalancer.ingress` in API mode (IPs or host names).
    pub status_addresses: Vec<String>,
    /// Largest request header section (all header lines) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request header or a chunk of body (slow clients are cut off).
    pub client_timeout: Duration,
    /// Idle time after which a keep-alive client connection is closed.
    pub keepalive_timeout: Duration,
    /// Connect attempts per request on other endpoints after a connect failure.
    pub max_retries: u32,
    /// Accept HTTP/2 without TLS (h2c, prior knowledge) on the plain listener.
    pub h2c: bool,
    /// After SIGTERM (or after handing the sockets to a new binary), how long requests in flight and keep-alive
    /// clients get to finish before the remaining connections are cut; listeners close at once (Pingora's
    /// `grace_period_seconds`). `skiff ingress` uses 5 s.
    pub grace_period: Duration,
    /// Then wait this long for in-flight requests.
    pub graceful_shutdown_timeout: Duration,
    /// Take the listening sockets over from a running instance (binary upgrade, `-u` in Pingora).
    pub upgrade: bool,
    /// Unix socket used to hand listening sockets to a new binary.
    pub upgrade_sock: PathBuf,
    /// Where the pid is written.
    pub pid_file: PathBuf,
    /// Name put in the generated default certificate.
    pub default_cert_name: String,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            http_addr: "0.0.0.0:80".into(),
            https_addr: Some("0.0.0.0:443".into()),
            metrics_addr: Some("127.0.0.1:10254".into()),
            compile: CompileConfig::default(),
            threads: 1,
            work_stealing: false,
            fast_path: true,
            access_log: AccessLog::Stdout,
            status_addresses: Vec::new(),
            max_header_bytes: 32 * 1024,
            client_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            max_retries: 2,
            h2c: true,
            grace_period: Duration::from_secs(0),
            graceful_shutdown_timeout: Duration::from_secs(10),
            upgrade: false,
            upgrade_sock: PathBuf::from("/tmp/skiff-ingress-upgrade.sock"),
            pid_file: PathBuf::from("/tmp/skiff-ingress.pid"),
            default_cert_name: "skiff-ingress-default".into(),
        }
    }
}

impl IngressConfig {
    /// The port clients use for HTTPS, for redirect locations (omitted from the URL when 443).
    pub fn https_port(&self) -> Option<u16> {
        self.https_addr.as_ref().and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| p.parse().ok())
    }
}

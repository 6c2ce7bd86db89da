//! JSON access logs: one object per request, written with one `write` call.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use crate::table::RouteLabels;

/// An access-log sink.
pub struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

/// One finished request, as both request paths describe it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Client address.
    pub client: Option<IpAddr>,
    /// Request method.
    pub method: &'a str,
    /// Host as the client sent it, without port.
    pub host: &'a str,
    /// Request target (path and query).
    pub uri: &'a str,
    /// Protocol, e.g. `HTTP/1.1`.
    pub protocol: &'a str,
    /// Status sent (0 when none was).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Request body bytes received.
    pub request_bytes: u64,
    /// Seconds from the request header to the end of the response.
    pub seconds: f64,
    /// The endpoint that answered.
    pub upstream: Option<SocketAddr>,
    /// Endpoints that failed to connect first.
    pub failed_upstreams: &'a [SocketAddr],
    /// Seconds until the upstream response header arrived.
    pub upstream_seconds: Option<f64>,
    /// Route labels, when a route matched.
    pub labels: Option<&'a RouteLabels>,
    /// `X-Request-ID` sent upstream.
    pub request_id: Option<&'a str>,
    /// `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// Arrived over TLS.
    pub tls: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

impl AccessLog {
    /// Logs to any writer (stdout, a file).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        AccessLog { out: Mutex::new(out) }
    }

    /// Writes the line for one finished request.
    pub fn write(&self, e: &Entry<'_>) {
        let line = serde_json::json!({
            "time": jiff::Timestamp::now().to_string(),
            "client": e.client.map(|c| c.to_string()),
            "method": e.method,
            "host": e.host,
            "uri": e.uri,
            "protocol": e.protocol,
            "status": e.status,
            "bytes_sent": e.bytes_sent,
            "request_bytes": e.request_bytes,
            "duration_seconds": e.seconds,
            "upstream": e.upstream.map(|a| a.to_string()),
            "failed_upstreams": e.failed_upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "upstream_seconds": e.upstream_seconds,
            "namespace": e.labels.map(|l| l.namespace.as_str()),
            "ingress": e.labels.map(|l| l.ingress.as_str()),
            "service": e.labels.map(|l| l.service.as_str()),
            "request_id": e.request_id,
            "user_agent": e.user_agent,
            "tls": e.tls,
            "error": e.error,
        });
        let mut text = line.to_string();
        text.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

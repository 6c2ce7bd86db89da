//! JSON access logs: one object per request, written with one `write` call.

use std::io::Write;
use std::sync::Mutex;

use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::RequestCtx;

/// An access-log sink.
pub struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessLog {
    /// Logs to any writer (stdout, a file).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        AccessLog { out: Mutex::new(out) }
    }

    /// Writes the line for one finished request.
    pub fn write(&self, session: &Session, ctx: &RequestCtx, status: u16, sent: u64, seconds: f64, e: Option<&Error>) {
        let req = session.req_header();
        let labels = ctx.labels.as_deref();
        let line = serde_json::json!({
            "time": jiff::Timestamp::now().to_string(),
            "client": ctx.client.map(|c| c.to_string()),
            "method": req.method.as_str(),
            "host": ctx.host,
            "uri": req.uri.to_string(),
            "protocol": format!("{:?}", req.version),
            "status": status,
            "bytes_sent": sent,
            "request_bytes": ctx.body_bytes,
            "duration_seconds": seconds,
            "upstream": ctx.endpoint.as_ref().map(|e| e.addr.to_string()),
            "failed_upstreams": ctx.tried.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "upstream_seconds": ctx.upstream_seconds,
            "namespace": labels.map(|l| l.namespace.as_str()),
            "ingress": labels.map(|l| l.ingress.as_str()),
            "service": labels.map(|l| l.service.as_str()),
            "request_id": ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
            "user_agent": req.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()),
            "tls": ctx.tls,
            "error": e.map(|e| e.to_string()),
        });
        let mut text = line.to_string();
        text.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

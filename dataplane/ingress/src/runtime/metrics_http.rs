//! The metrics endpoint: `GET /metrics` in the Prometheus text format, on its own port, as a Pingora service.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::metrics::Metrics;

/// Serves the registry.
#[derive(Debug)]
pub struct MetricsApp {
    metrics: Arc<Metrics>,
}

impl MetricsApp {
    /// Serves `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MetricsApp { metrics }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, content_type, body) = match path {
            "/metrics" => (200, skiff_client::metrics::CONTENT_TYPE, self.metrics.encode()),
            "/healthz" | "/readyz" => (200, "text/plain", "ok\n".to_owned()),
            _ => (404, "text/plain", "not found: try /metrics\n".to_owned()),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body.into_bytes())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

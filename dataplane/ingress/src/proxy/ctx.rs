//! Per-request state carried through Pingora's phases.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use crate::decide::Chosen;
use crate::runtime::metrics::Metrics;
use crate::table::{Backend, Endpoint, Route, RouteLabels, RouteTable, Slot};

/// Counts one open client connection (HTTP/1) or stream (HTTP/2) while alive.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Metrics>);

impl ConnectionGuard {
    /// Counts a new connection.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.active_connections.inc();
        ConnectionGuard(metrics)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.active_connections.dec();
    }
}

/// Everything one request's phases share. Fields are filled as phases run.
#[derive(Debug)]
pub struct RequestCtx {
    /// When the request started (after its header was read).
    pub start: Instant,
    /// The table snapshot this request reads: loaded once, in `request_filter`.
    pub table: Option<Arc<RouteTable>>,
    /// The matched route.
    pub route: Option<Arc<Route>>,
    /// The chosen backend (main or canary).
    pub backend: Option<Arc<Backend>>,
    /// Labels for metrics and logs (the canary's when the canary was chosen).
    pub labels: Option<Arc<RouteLabels>>,
    /// The canary backend was chosen.
    pub canary: bool,
    /// The endpoint of the current attempt (its in-flight count includes this request).
    pub endpoint: Option<Arc<Endpoint>>,
    /// Endpoints that failed to connect for this request.
    pub tried: Vec<SocketAddr>,
    /// When the current upstream attempt started.
    pub upstream_start: Option<Instant>,
    /// Seconds until the upstream response header arrived.
    pub upstream_seconds: Option<f64>,
    /// Client IP.
    pub client: Option<IpAddr>,
    /// Arrived over TLS.
    pub tls: bool,
    /// Host as the client sent it, without port.
    pub host: String,
    /// `X-Request-ID` sent upstream.
    pub request_id: Option<HeaderValue>,
    /// `Set-Cookie` for session affinity, added to the response.
    pub set_cookie: Option<HeaderValue>,
    /// The `limit-connections` slot, released when the request ends.
    pub conn_slot: Option<Slot>,
    /// The endpoint the request's affinity cookie names.
    pub pinned: Option<Arc<Endpoint>>,
    /// New path (and query) from `rewrite-target`.
    pub rewritten: Option<http::Uri>,
    /// Request body bytes seen.
    pub body_bytes: u64,
    /// Keeps the connection counted; carried across keep-alive requests.
    pub connection: Option<Arc<ConnectionGuard>>,
}

impl RequestCtx {
    /// A fresh context.
    pub fn new() -> Self {
        RequestCtx {
            start: Instant::now(),
            table: None,
            route: None,
            backend: None,
            labels: None,
            canary: false,
            endpoint: None,
            tried: Vec::new(),
            upstream_start: None,
            upstream_seconds: None,
            client: None,
            tls: false,
            host: String::new(),
            request_id: None,
            set_cookie: None,
            conn_slot: None,
            pinned: None,
            rewritten: None,
            body_bytes: 0,
            connection: None,
        }
    }
}

impl RequestCtx {
    /// Keeps the route and backend a decision chose, for the later phases, metrics and logs.
    pub fn chose(&mut self, chosen: &Chosen<'_>) {
        self.route = Some(chosen.route.clone());
        self.backend = Some(chosen.backend().clone());
        self.labels = Some(chosen.labels().clone());
        self.canary = chosen.canary;
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

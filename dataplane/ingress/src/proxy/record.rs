//! Recording a finished request in the metrics: one function for both request paths (Pingora's phases and the
//! HTTP/1.1 fast path), so both export exactly the same series.

use std::sync::{Arc, OnceLock};

use crate::runtime::metrics::{Metrics, RequestLabels, RouteHandles, ServiceLabel};
use crate::table::{Backend, RouteLabels};

/// What is known about a request when it ends.
#[derive(Debug)]
pub struct Finished<'a> {
    /// Route labels (the canary's when the canary served it; empty labels when no route matched).
    pub labels: &'a Arc<RouteLabels>,
    /// The route's cached metric handles, when a route matched.
    pub handles: Option<&'a OnceLock<RouteHandles>>,
    /// Bounded method label.
    pub method: &'static str,
    /// Status sent to the client (0 when none was).
    pub status: u16,
    /// Seconds from the request header to the end of the response.
    pub seconds: f64,
    /// Seconds until the upstream response header arrived, with the backend that answered.
    pub upstream: Option<(f64, &'a Backend)>,
    /// Request body bytes received.
    pub request_bytes: u64,
    /// Response body bytes sent.
    pub response_bytes: u64,
}

/// Adds a finished request to the counters and histograms.
pub fn record(m: &Metrics, f: Finished<'_>) {
    m.requests.get_or_create(&RequestLabels { route: f.labels.clone(), method: f.method, status: f.status }).inc();
    let fresh;
    let handles = match f.handles {
        Some(cell) => cell.get_or_init(|| m.route_handles(f.labels)),
        None => {
            fresh = m.route_handles(f.labels);
            &fresh
        }
    };
    handles.duration.observe(f.seconds);
    if let Some((seconds, backend)) = f.upstream {
        let h = backend
            .upstream_histogram
            .get_or_init(|| m.upstream_duration.get_or_create_owned(&ServiceLabel(backend.service.clone())));
        h.observe(seconds);
    }
    if f.request_bytes > 0 {
        handles.request_bytes.inc_by(f.request_bytes);
    }
    if f.response_bytes > 0 {
        handles.response_bytes.inc_by(f.response_bytes);
    }
}

/// Counts a failed connect to `endpoint` of `backend`; returns whether to retry on another endpoint.
///
/// The endpoint is ejected after repeated failures (or at once on a timeout: a dead node makes every connect wait
/// the full timeout); a retry is allowed while another active endpoint is untried and retries are left.
pub fn connect_failed(
    m: &Metrics,
    backend: &Backend,
    endpoint: &crate::table::Endpoint,
    tried: &mut Vec<std::net::SocketAddr>,
    timed_out: bool,
    max_retries: u32,
) -> bool {
    endpoint.stats.finish(None);
    let service = ServiceLabel(backend.service.clone());
    if endpoint.stats.connect_failed(crate::table::now_ns(), timed_out) {
        tracing::warn!(endpoint = %endpoint.addr, service = %service.0, "endpoint ejected after repeated connect failures");
        m.upstream_ejections.get_or_create(&service).inc();
    }
    tried.push(endpoint.addr);
    let others_left = backend.pool().is_some_and(|p| p.active().iter().any(|e| !tried.contains(&e.addr)));
    let retry = others_left && tried.len() <= max_retries as usize;
    if retry {
        m.upstream_retries.get_or_create(&service).inc();
    }
    retry
}

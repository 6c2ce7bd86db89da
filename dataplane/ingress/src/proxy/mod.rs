//! The Pingora proxy: one [`IngressProxy`] serves every listener, reading one table snapshot per request.
//!
//! Phases (one concern each, in files named after them):
//! - `request_filter`: load the snapshot and carry out the decision core's [`Decision`] (redirects, denials,
//!   limits, 503 without endpoints, or the plan: backend, pinned endpoint, rewrite, limit slot);
//! - `upstream_peer` ([`peer`]): choose an endpoint (affinity cookie, round robin or peak EWMA), skip ejected and
//!   already-failed ones;
//! - `upstream_request_filter` ([`headers`]): `X-Forwarded-*`, `X-Request-ID`, rewrite, `upstream-vhost`;
//! - `fail_to_connect`: count the failure (ejecting after repeated ones) and retry on another endpoint;
//! - `logging`: metrics, endpoint latency, access log.
//!
//! # Errors
//! Upstream failures are 502 (504 on timeouts), client errors 4xx, our own faults 500 — Pingora's mapping, which
//! records who failed and whether a retry is safe.

pub mod access_log;
pub mod ctx;
pub mod headers;
pub mod peer;
pub mod record;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use self::ctx::{ConnectionGuard, RequestCtx};
use crate::decide::{Answer, Chosen, Decision, Facts, decide};
use crate::runtime::metrics::Metrics;
use crate::table::{RouteLabels, RouteTable, now_ns, random};

/// Settings of the proxy that are fixed at start.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Port announced in HTTPS redirects.
    pub https_port: Option<u16>,
    /// Largest header section accepted.
    pub max_header_bytes: usize,
    /// Downstream read timeout (slow clients).
    pub client_timeout: Duration,
    /// Keep-alive idle timeout.
    pub keepalive_timeout: Duration,
    /// Retries on other endpoints after connect failures.
    pub max_retries: u32,
    /// The fast path accepts the client connections and counts them, HTTP/2 ones included (it hands this proxy
    /// single HTTP/2 streams); without it this proxy counts HTTP/2 streams, having no per-connection hook.
    pub fast_path: bool,
}

/// The ingress proxy.
pub struct IngressProxy {
    table: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<access_log::AccessLog>>,
    settings: ProxySettings,
    unmatched: Arc<RouteLabels>,
}

impl IngressProxy {
    /// A proxy reading `table`.
    pub fn new(
        table: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<Metrics>,
        access_log: Option<Arc<access_log::AccessLog>>,
        settings: ProxySettings,
    ) -> Self {
        let unmatched = Arc::new(RouteLabels::default());
        IngressProxy { table, metrics, access_log, settings, unmatched }
    }

    async fn answer(&self, session: &mut Session, answer: Answer) -> Result<bool> {
        let mut resp = ResponseHeader::build(answer.status, Some(4))?;
        if let Some(location) = answer.location {
            resp.insert_header("Location", location)?;
        }
        resp.insert_header(http::header::SERVER, headers::SERVER)?;
        resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len())?;
        // a HEAD answer ends with its head: over HTTP/2 a body would be sent as DATA frames, a protocol error
        let end = answer.body.is_empty() || session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), end).await?;
        if !end {
            session.write_response_body(Some(Bytes::from(answer.body)), true).await?;
        }
        Ok(true)
    }
}

fn is_tls(digest: Option<&Digest>) -> bool {
    digest.is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for IngressProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // no response compression module (Pingora adds a disabled one by default, costing work per request)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.metrics.active_requests.inc();
        // an HTTP/2 stream the fast path hands over belongs to a connection it already counts
        if ctx.connection.is_none() && !(self.settings.fast_path && session.is_http2()) {
            ctx.connection = Some(Arc::new(ConnectionGuard::new(self.metrics.clone())));
        }
        if session.is_process_shutting_down() {
            // draining (SIGTERM, or SIGQUIT during a binary upgrade): answer with `Connection: close` so keep-alive
            // clients reconnect to the new process instead of racing a closed socket
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.settings.keepalive_timeout.as_secs()));
        }
        session.set_read_timeout(Some(self.settings.client_timeout));
        ctx.tls = is_tls(session.digest());
        ctx.client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let table = self.table.load_full();
        let req = session.req_header();
        let header_bytes: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if header_bytes > self.settings.max_header_bytes {
            return self
                .answer(
                    session,
                    Answer { status: 431, location: None, body: "431 request header fields too large\n".into() },
                )
                .await;
        }
        let Some(host) = headers::request_host(req) else {
            return self
                .answer(session, Answer { status: 400, location: None, body: "400 bad request: no Host\n".into() })
                .await;
        };
        let path = req.uri.path();
        let content_length = req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
        let facts = Facts {
            host: &host,
            path,
            query: req.uri.query(),
            tls: ctx.tls,
            client: ctx.client,
            https_port: self.settings.https_port,
            content_length: content_length.and_then(|v| v.parse().ok()),
            headers: &req.headers,
            roll: random(),
            now_ns: now_ns(),
        };
        if self.access_log.is_some() {
            ctx.host = host.to_string();
        }
        ctx.request_id = Some(headers::request_id(req));
        match decide(&table, &facts) {
            Decision::Answer { answer, route } => {
                if let Some(chosen) = route {
                    ctx.chose(&chosen);
                }
                self.answer(session, answer).await
            }
            Decision::Proxy(plan) => {
                ctx.chose(&plan.chosen);
                ctx.pinned = plan.pinned.cloned();
                ctx.rewritten = plan.target.and_then(|t| t.parse().ok());
                ctx.conn_slot = plan.slot;
                ctx.table = Some(table.clone());
                Ok(false)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if let Some(max) = ctx.route.as_ref().and_then(|r| r.policy.max_body_bytes)
                && ctx.body_bytes > max
            {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body larger than proxy-body-size");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        peer::select(ctx)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(e) = &ctx.endpoint {
            e.stats.connected();
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(endpoint) = ctx.endpoint.take() else { return e };
        let Some(backend) = ctx.backend.clone() else { return e };
        let timed_out = matches!(e.etype(), pingora::ErrorType::ConnectTimedout);
        if record::connect_failed(
            &self.metrics,
            &backend,
            &endpoint,
            &mut ctx.tried,
            timed_out,
            self.settings.max_retries,
        ) {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        headers::forward(session, upstream, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(start) = ctx.upstream_start {
            ctx.upstream_seconds = Some(start.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // an informational (1xx) head is followed by the final one: the route's headers, the cookie and the name
        // go on that
        if resp.status.is_informational() {
            return Ok(());
        }
        if let Some(route) = &ctx.route {
            for (k, v) in &route.policy.response_headers {
                resp.insert_header(k.to_string(), v.clone())?;
            }
        }
        if let Some(cookie) = ctx.set_cookie.take() {
            resp.append_header(http::header::SET_COOKIE, cookie)?;
        }
        if resp.headers.get(http::header::SERVER).is_none() {
            resp.insert_header(http::header::SERVER, headers::SERVER)?;
        }
        Ok(())
    }

    /// Answers a request that could not be proxied as the fast path does (a plain-text body, the ingress's `Server`)
    /// rather than with Pingora's own error page. The status is Pingora's mapping, with the fast path's 504 for a
    /// pod that timed out: a status an earlier phase chose (413, 503), 504 after a timeout towards the pod, 502 for
    /// any other failure on the pod's side, 400 for a request that could not be read, 500 for a fault here, none
    /// when the client is gone.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut RequestCtx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::ConnectTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout
                    | ErrorType::TLSHandshakeTimedout => 504,
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let body = headers::failure_body(code);
            let head_request = session.req_header().method == http::Method::HEAD;
            let written = match ResponseHeader::build(code, Some(4)) {
                Ok(mut resp) => {
                    let _ = resp.insert_header(http::header::SERVER, headers::SERVER);
                    let _ = resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
                    let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len());
                    // a HEAD request gets the head a GET would get, and no body
                    let body = if head_request { Bytes::new() } else { Bytes::from(body) };
                    session.write_error_response(resp, body).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::debug!(error = %e, status = code, "answering a request that could not be proxied failed");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.metrics.active_requests.dec();
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or_else(|| match e {
            Some(e) => match e.etype() {
                ErrorType::HTTPStatus(code) => *code,
                _ => 0,
            },
            None => 0,
        });
        drop(ctx.conn_slot.take());
        let labels = ctx.labels.clone().unwrap_or_else(|| self.unmatched.clone());
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            let uri = req.uri.to_string();
            log.write(&access_log::Entry {
                client: ctx.client,
                method: req.method.as_str(),
                host: &ctx.host,
                uri: &uri,
                protocol: headers::version_label(req.version),
                status,
                bytes_sent: session.body_bytes_sent() as u64,
                request_bytes: ctx.body_bytes,
                seconds: ctx.start.elapsed().as_secs_f64(),
                upstream: ctx.endpoint.as_ref().map(|e| e.addr),
                failed_upstreams: &ctx.tried,
                upstream_seconds: ctx.upstream_seconds,
                labels: ctx.labels.as_deref(),
                request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
                user_agent: req.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()),
                tls: ctx.tls,
                error: e.map(|e| e.to_string()),
            });
        }
        if let Some(endpoint) = ctx.endpoint.take() {
            let latency = ctx.upstream_seconds.map(|s| (s * 1e9) as u64);
            endpoint.stats.finish(latency);
        }
        let cached = ctx.route.as_ref().map(|r| Chosen { route: r, canary: ctx.canary }.handles());
        record::record(
            &self.metrics,
            record::Finished {
                labels: &labels,
                handles: cached,
                method: headers::method_label(session.req_header().method.as_str()),
                status,
                seconds: ctx.start.elapsed().as_secs_f64(),
                upstream: ctx.upstream_seconds.zip(ctx.backend.as_deref()),
                request_bytes: ctx.body_bytes,
                response_bytes: session.body_bytes_sent() as u64,
            },
        );
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        ctx.connection.clone().map(|c| Box::new(c) as Box<dyn std::any::Any + Send + Sync>)
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(guard) = prev.downcast::<Arc<ConnectionGuard>>() {
            ctx.connection = Some(*guard);
        }
    }
}

//! The fast path: proxied requests handled directly on Pingora's connections (HTTP/1.1, and HTTP/2 streams through
//! [`h2`]), everything else by Pingora's proxy.
//!
//! Pingora runs the server (listeners, TLS with certificates by SNI, HTTP/2, graceful shutdown and binary upgrade)
//! and its proxy framework implements every ingress feature in phases ([`crate::proxy`]). That framework costs
//! about 30 µs of CPU per request here (header maps, a task pair and channels per request, boxed phase futures),
//! which kept the ingress at half of nginx's requests/s. The fast path is a [`ServerApp`] in front of it: for each
//! client connection (HTTP/1.1, plain or TLS) it parses requests in place, looks the route up in the same table,
//! carries out the same decision ([`crate::decide`]: answers, canary, rewrite, limits, the affinity cookie's
//! endpoint), sends the head upstream with the same edits on a pooled connection and relays the response bytes,
//! recording the same metrics and access log ([`crate::proxy::record`], [`crate::proxy::access_log`]).
//!
//! It takes only what it fully implements ([`request`] lists it); the first request it does not take — WebSocket
//! upgrades, streamed or large uploads, `Expect`, HTTP/1.0, malformed input, and routes whose backend protocol is
//! gRPC (the compiler decides, [`crate::decide::transport`]) — hands the connection to Pingora's proxy
//! with the bytes already read put back ([`replay`]), so those requests behave exactly as without it. An HTTP/2
//! connection (ALPN `h2`, or the h2c preface) is served stream by stream: the fast path takes the streams it can
//! carry and gives Pingora's proxy the others ([`h2`]); the pods are reached over pooled HTTP/1.1 either way
//! ([`downstream`] turns the response into HTTP/2). `--no-fast-path` turns it off.

pub mod chunked;
pub mod conn;
pub mod downstream;
pub mod exchange;
pub mod h2;
pub mod pool;
pub mod replay;
pub mod request;
pub mod response;
pub mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use crate::proxy::access_log::AccessLog;
use crate::proxy::{IngressProxy, ProxySettings};
use crate::runtime::metrics::Metrics;
use crate::table::{RouteLabels, RouteTable};

/// The fast path in front of Pingora's proxy.
pub struct FastPath {
    proxy: Arc<HttpProxy<IngressProxy>>,
    table: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    settings: ProxySettings,
    unmatched: Arc<RouteLabels>,
    /// HTTP/2 without TLS (prior knowledge) is served ([`pingora::apps::HttpServerOptions::h2c`] of the proxy).
    h2c: bool,
}

impl FastPath {
    /// The fast path reading `table`, handing what it does not take to `proxy`.
    pub fn new(
        proxy: HttpProxy<IngressProxy>,
        table: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<Metrics>,
        access_log: Option<Arc<AccessLog>>,
        settings: ProxySettings,
    ) -> Self {
        let h2c = proxy.server_options.as_ref().is_some_and(|o| o.h2c);
        FastPath {
            h2c,
            proxy: Arc::new(proxy),
            table,
            metrics,
            access_log,
            settings,
            unmatched: Arc::new(RouteLabels::default()),
        }
    }
}

#[async_trait]
impl ServerApp for FastPath {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            h2::serve(self, stream, shutdown).await;
            return None;
        }
        let mut stream = stream;
        loop {
            let handed = match conn::serve(self, stream, shutdown).await {
                conn::Served::Closed => return None,
                conn::Served::Delegate(handed) => handed,
            };
            if handed.h2c && self.h2c {
                h2::serve(self, handed.stream, shutdown).await;
                return None;
            }
            if handed.h2c {
                // refused as Pingora's server refuses it without h2c
                return self.proxy.process_new(handed.stream, shutdown).await;
            }
            // one HTTP/1.1 request (or an upgrade) for Pingora's proxy; the connection comes back when it is done
            let mut session = ServerSession::new_http1(handed.stream);
            let keepalive = self.settings.keepalive_timeout.as_secs();
            session.set_keepalive(if *shutdown.borrow() { None } else { Some(keepalive) });
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            stream = replay::Replay::resume(reused.consume().0);
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await
    }
}

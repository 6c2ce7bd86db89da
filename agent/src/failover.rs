//! Several API servers behind one client: every request goes to the current server; a request that cannot
//! connect to it (refused, timed out, TLS handshake failed) moves the client on to the next server, so the retry
//! every caller makes (watchers, status writes) reaches a live one. Nothing was sent on a failed connection, so
//! no request is ever applied twice. A server that vanishes without closing its connections (a crashed host) is
//! noticed by HTTP/2 and TCP keep-alives on the client ([`crate::bootstrap::client_with`]): the connection is
//! dropped, and the next request's new connection fails over. The client does not move back to an earlier server
//! by itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

/// The servers and which one is in use.
#[derive(Debug)]
pub struct Servers {
    uris: Vec<http::Uri>,
    current: AtomicUsize,
}

impl Servers {
    /// The servers (`https://host:port`), in order of preference; the first is used first.
    pub fn new(servers: &[String]) -> Result<Arc<Self>, String> {
        if servers.is_empty() {
            return Err("no API server given".into());
        }
        let uris = servers
            .iter()
            .map(|s| {
                let uri: http::Uri = s.parse().map_err(|e| format!("API server {s:?}: {e}"))?;
                let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty());
                match (uri.scheme_str(), uri.authority()) {
                    (Some("https"), Some(_)) if bare => Ok(uri),
                    _ => Err(format!("API server {s:?}: expected https://host:port (no path)")),
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Arc::new(Servers { uris, current: AtomicUsize::new(0) }))
    }

    /// The index of the server in use.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst) % self.uris.len()
    }

    /// The server in use.
    pub fn current_uri(&self) -> &http::Uri {
        &self.uris[self.current()]
    }

    /// A connection to server `index` failed: move on to the next, unless another request already did.
    pub fn failed(&self, index: usize) {
        let next = (index + 1) % self.uris.len();
        if self.current.compare_exchange(index, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() && self.uris.len() > 1
        {
            tracing::warn!(failed = %self.uris[index], next = %self.uris[next], "API server unreachable; using the next");
        }
    }
}

/// `uri`'s path and query on `base`'s scheme and authority.
pub fn rebase(base: &http::Uri, uri: &http::Uri) -> http::Uri {
    let mut parts = uri.clone().into_parts();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    http::Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// Whether a client error means the connection was never made (so the request was not sent).
pub trait ConnectFailure {
    /// True for connection failures.
    fn is_connect_failure(&self) -> bool;
}

impl ConnectFailure for hyper_util::client::legacy::Error {
    fn is_connect_failure(&self) -> bool {
        self.is_connect()
    }
}

/// The tower layer sending requests to [`Servers`]' current server.
#[derive(Debug, Clone)]
pub struct FailoverLayer(pub Arc<Servers>);

impl<S> tower::Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Failover<S> {
        Failover { inner, servers: self.0.clone() }
    }
}

/// See [`FailoverLayer`].
#[derive(Debug, Clone)]
pub struct Failover<S> {
    inner: S,
    servers: Arc<Servers>,
}

impl<S, B> tower::Service<http::Request<B>> for Failover<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: ConnectFailure,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let index = self.servers.current();
        *req.uri_mut() = rebase(&self.servers.uris[index], req.uri());
        let sent = self.inner.call(req);
        let servers = self.servers.clone();
        Box::pin(async move {
            let result = sent.await;
            if let Err(e) = &result
                && e.is_connect_failure()
            {
                servers.failed(index);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_path_on_the_current_server() {
        let base: http::Uri = "https://10.0.0.2:6443".parse().expect("uri");
        let req: http::Uri = "/api/v1/pods?watch=1".parse().expect("uri");
        assert_eq!(rebase(&base, &req).to_string(), "https://10.0.0.2:6443/api/v1/pods?watch=1");
        let full: http::Uri = "https://10.0.0.9:6443/apis".parse().expect("uri");
        assert_eq!(rebase(&base, &full).to_string(), "https://10.0.0.2:6443/apis");
    }

    #[test]
    fn a_failure_moves_on_once_and_wraps_around() {
        let s = Servers::new(&["https://a:1".into(), "https://b:1".into(), "https://c:1".into()]).expect("valid");
        assert_eq!(s.current(), 0);
        s.failed(0);
        s.failed(0); // a second request that failed on a: already moved on
        assert_eq!(s.current_uri().to_string(), "https://b:1/");
        s.failed(1);
        s.failed(2);
        assert_eq!(s.current(), 0, "wraps around");
        assert!(Servers::new(&[]).is_err());
        assert!(Servers::new(&["http://a:1".into()]).is_err(), "plain HTTP refused");
        assert!(Servers::new(&["a:1".into()]).is_err());
        assert!(Servers::new(&["https://lb/prefix".into()]).is_err(), "a path would be dropped");
        assert!(Servers::new(&["https://a:1/".into()]).is_ok());
    }
}

//! HTTP/2 from clients on the fast path: h2 over TLS (ALPN) and h2c with prior knowledge.
//!
//! The connection is Pingora's HTTP/2 server (handshake, flow control, stream acceptance with its checks of the
//! request target, `Content-Length` and authority). Each stream is then the fast path's or Pingora's: a request
//! the fast path takes ([`take`]: an origin-form request with a known body of at most [`MAX_BODY`] bytes, not
//! gRPC, on a route the compiler marked fast) is read whole, decided and proxied to the pod over a pooled
//! HTTP/1.1 connection exactly as an HTTP/1.1 client's ([`super::conn::handle`]), its response sent back as
//! HTTP/2 ([`H2`]); any other stream goes to Pingora's proxy as it would without the fast path. The streams of
//! one connection run as tasks of their own, as Pingora runs them.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::apps::HttpServerApp;
use pingora::http::RequestHeader;
use pingora::protocols::Digest;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{H2Accept, HttpSession, handshake};
use pingora::server::ShutdownWatch;

use super::FastPath;
use super::conn::{Conn, Scratch, handle};
use super::downstream::H2;
use super::request::{Head, MAX_BODY, MAX_HEADERS, content_length};
use crate::proxy::ctx::ConnectionGuard;
use crate::proxy::headers;
use crate::runtime::metrics::HandoverLabels;

/// Buffers of finished streams kept per thread for the next ones.
const SCRATCH_KEPT: usize = 64;

/// A kept buffer larger than this is dropped rather than kept.
const SCRATCH_MAX: usize = 256 * 1024;

thread_local! {
    /// Buffers of finished streams, reused by the next streams on this thread (an HTTP/1.1 connection keeps its
    /// own for all its requests; a stream is a task of its own).
    static SCRATCH: RefCell<Vec<Scratch>> = const { RefCell::new(Vec::new()) };
}

/// Streams refused during acceptance (malformed targets, framing, authority) before the connection is closed, as
/// Pingora's own accept loop bounds them.
const MAX_REJECTED: usize = 32;

/// What the fast path knows of an HTTP/2 request it takes.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken<'r> {
    /// `:authority`, else `Host`: routed on and sent upstream as `Host`.
    pub host: &'r str,
    /// Path and query.
    pub target: &'r str,
    /// Body length (`Content-Length`, 0 without).
    pub body_len: u64,
}

/// Whether the fast path takes this HTTP/2 request (`body_empty`: the stream ended with its headers), and the
/// reason to hand it to Pingora when not.
pub fn take(req: &RequestHeader, body_empty: bool) -> Result<Taken<'_>, &'static str> {
    if req.method == http::Method::CONNECT {
        return Err("HTTP/2 CONNECT");
    }
    let Some(target) = req.uri.path_and_query().map(|p| p.as_str()).filter(|t| t.starts_with('/')) else {
        return Err("not origin-form");
    };
    if req.headers.len() >= MAX_HEADERS {
        return Err("too many headers");
    }
    if req.headers.contains_key(http::header::EXPECT) {
        return Err("expectation"); // the client waits for a 100 the fast path does not send
    }
    if req.headers.contains_key(http::header::TE)
        || req.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        return Err("gRPC or trailers");
    }
    let mut body_len = None;
    for v in req.headers.get_all(http::header::CONTENT_LENGTH) {
        let Some(n) = content_length(v.as_bytes()) else { return Err("bad Content-Length") };
        if body_len.is_some_and(|m| m != n) {
            return Err("conflicting Content-Length");
        }
        body_len = Some(n);
    }
    let body_len = match body_len {
        Some(n) if n > MAX_BODY => return Err("large body"),
        Some(n) => n,
        None if body_empty => 0,
        None => return Err("streamed body"),
    };
    let host = match req.uri.authority() {
        Some(a) => a.as_str(),
        None => match req.headers.get(http::header::HOST).map(|v| v.to_str()) {
            Some(Ok(h)) => h,
            _ => return Err("not exactly one Host"),
        },
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)) {
        return Err("Host is not host[:port]");
    }
    Ok(Taken { host, target, body_len })
}

/// Serves an HTTP/2 connection until the client closes it, an error, or the end of a graceful shutdown.
pub async fn serve(app: &Arc<FastPath>, stream: Stream, shutdown: &ShutdownWatch) {
    let conn = Conn::of(&stream, "HTTP/2.0");
    let _guard = ConnectionGuard::new(app.metrics.clone());
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut h2 = match handshake(stream, None).await {
        Ok(h2) => h2,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let mut watch = shutdown.clone();
    let (mut draining, mut rejected) = (false, 0);
    let open = Arc::new(Open::default());
    let idle_timeout = app.settings.keepalive_timeout;
    // after an idle timeout, how long the GOAWAY exchange may take (a peer that is gone would never end it)
    let mut drain_until = None;
    loop {
        let next = if draining {
            let accept = HttpSession::from_h2_conn(&mut h2, digest.clone());
            match drain_until {
                Some(at) => match tokio::time::timeout_at(at, accept).await {
                    Ok(next) => next,
                    Err(_) => return,
                },
                None => accept.await,
            }
        } else {
            let check_at = open.idle_deadline(idle_timeout);
            tokio::select! {
                biased;
                // a closed watch means the server is gone: drain as well
                _ = watch.changed() => {
                    // GOAWAY; streams the client opened before it learns of it are still served
                    h2.graceful_shutdown();
                    draining = true;
                    continue;
                }
                next = HttpSession::from_h2_conn(&mut h2, digest.clone()) => next,
                _ = tokio::time::sleep_until(check_at.into()) => {
                    if open.idle_deadline(idle_timeout) <= Instant::now() {
                        tracing::debug!(?idle_timeout, "idle HTTP/2 connection closed");
                        h2.graceful_shutdown();
                        draining = true;
                        drain_until = Some(tokio::time::Instant::now() + idle_timeout);
                    }
                    continue;
                }
            }
        };
        match next {
            Ok(Some(H2Accept::Session(session))) => {
                let (app, shutdown) = (app.clone(), shutdown.clone());
                let stream = Open::enter(&open);
                tokio::spawn(async move {
                    serve_stream(&app, conn, session, &shutdown).await;
                    drop(stream);
                });
            }
            Ok(Some(H2Accept::Rejected)) => {
                rejected += 1;
                if rejected > MAX_REJECTED {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                // clients commonly close the TCP connection without a GOAWAY
                tracing::debug!(error = %e, "HTTP/2 connection ended");
                return;
            }
        }
    }
}

/// The streams of one connection still being served, and since when none has been: a connection with no stream
/// for the keep-alive timeout is closed with a GOAWAY, as nginx closes an idle HTTP/2 connection after
/// `keepalive_timeout` (a stream in progress, however long, keeps it).
#[derive(Debug)]
struct Open {
    count: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Default for Open {
    fn default() -> Self {
        Open { count: AtomicUsize::new(0), idle_since: Mutex::new(Instant::now()) }
    }
}

/// One stream of [`Open`], counted until dropped.
struct OpenStream(Arc<Open>);

impl Open {
    fn enter(open: &Arc<Open>) -> OpenStream {
        open.count.fetch_add(1, Ordering::AcqRel);
        OpenStream(open.clone())
    }

    /// When the connection is idle for `timeout` if nothing changes: a timeout from now while a stream is open.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.count.load(Ordering::Acquire) > 0 {
            Instant::now() + timeout
        } else {
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) + timeout
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// One stream: the fast path's when it takes it, else Pingora's.
async fn serve_stream(app: &FastPath, conn: Conn, mut session: HttpSession, shutdown: &ShutdownWatch) {
    let table = app.table.load_full();
    // the request header leaves the session, which then only sends the response (it goes back for Pingora)
    let req = std::mem::replace(session.req_header_mut(), placeholder());
    let taken = take(&req, session.is_body_empty()).and_then(|t| {
        let host = headers::host_key(t.host);
        let path = t.target.split_once('?').map_or(t.target, |(p, _)| p);
        match table.lookup(&host, path).route {
            Some(r) if !r.fast => Err("route needs Pingora's proxy"),
            _ => Ok(t),
        }
    });
    let t = match taken {
        Ok(t) => t,
        Err(why) => {
            *session.req_header_mut() = req;
            tracing::trace!(reason = why, "HTTP/2 stream handed to Pingora's proxy");
            app.metrics.fast_path_handovers.get_or_create(&HandoverLabels { reason: why }).inc();
            app.proxy.process_new_http(ServerSession::new_http2(session), shutdown).await;
            return;
        }
    };
    let Some(body) = read_body(&mut session, t.body_len, app.settings.client_timeout).await else {
        return; // the client reset the stream or was too slow: nothing to answer
    };
    let mut lines: Vec<httparse::Header<'_>> = Vec::with_capacity(req.headers.len() + 2);
    // HTTP/1.1 pods expect `Host` first; a client's own `Host` gives way to `:authority` (RFC 9113 §8.3.1)
    lines.push(httparse::Header { name: "Host", value: t.host.as_bytes() });
    let (mut request_id, mut user_agent) = (None, None);
    for (name, value) in &req.headers {
        let name = name.as_str();
        if name == "host" {
            continue;
        }
        if name == "x-request-id" {
            request_id = value.to_str().ok().filter(|v| !v.is_empty() && v.len() <= 200);
        } else if name == "user-agent" {
            user_agent = value.to_str().ok();
        }
        lines.push(httparse::Header { name, value: value.as_bytes() });
    }
    let head = Head {
        method: req.method.as_str(),
        target: t.target,
        host: t.host,
        headers: &lines,
        head_len: 0,
        body_len: body.len(),
        close: false,
        request_id,
        user_agent,
    };
    let mut d = H2::new(&mut session, app.settings.client_timeout);
    let mut scratch = SCRATCH.with_borrow_mut(Vec::pop).unwrap_or_default();
    handle(app, &table, &conn, &head, &body, &mut d, &mut scratch, shutdown).await;
    give_back(scratch);
}

/// Keeps `s` for the next stream on this thread, emptied, unless enough are kept or it grew large.
fn give_back(mut s: Scratch) {
    let Scratch { out, head, up, early } = &mut s;
    if [&*out, &*head, &*up, &*early].iter().any(|b| b.capacity() > SCRATCH_MAX) {
        return;
    }
    for b in [out, head, up, early] {
        b.clear();
    }
    SCRATCH.with_borrow_mut(|kept| {
        if kept.len() < SCRATCH_KEPT {
            kept.push(s);
        }
    });
}

/// Reads a request body of `len` bytes (HTTP/2 checks it against `Content-Length`) within `timeout`.
async fn read_body(session: &mut HttpSession, len: u64, timeout: std::time::Duration) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(len as usize);
    let read = async {
        while let Some(data) = session.read_body_bytes().await.ok()? {
            if body.len() + data.len() > MAX_BODY as usize {
                return None;
            }
            body.extend_from_slice(&data);
        }
        Some(())
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()?;
    Some(body)
}

/// What the session keeps as its request once the fast path has taken it.
fn placeholder() -> RequestHeader {
    RequestHeader::build_no_case(http::Method::GET, b"/", Some(0)).expect("a constant request line")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).expect("request");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("header");
        }
        r
    }

    fn authority(r: &mut RequestHeader, a: &str) {
        let uri = format!("https://{a}{}", r.uri.path_and_query().map_or("/", |p| p.as_str()));
        r.set_uri(uri.parse().expect("uri"));
    }

    #[test]
    fn a_plain_request_is_taken_with_its_authority() {
        let mut r = req("GET", "/a?b=1", &[("host", "other.example")]);
        authority(&mut r, "shop.example:8443");
        assert_eq!(take(&r, true), Ok(Taken { host: "shop.example:8443", target: "/a?b=1", body_len: 0 }));
        let r = req("POST", "/form", &[("host", "shop.example"), ("content-length", "12")]);
        assert_eq!(take(&r, false), Ok(Taken { host: "shop.example", target: "/form", body_len: 12 }));
    }

    #[test]
    fn what_the_fast_path_cannot_carry_goes_to_pingora() {
        let host = ("host", "shop.example");
        let cases = [
            (req("POST", "/up", &[host]), false, "streamed body"),
            (req("POST", "/up", &[host, ("content-length", "70000")]), false, "large body"),
            (req("POST", "/up", &[host, ("content-length", "1"), ("content-length", "2")]), false, "conflicting"),
            (req("POST", "/up", &[host, ("content-length", "-1")]), false, "bad Content-Length"),
            (req("POST", "/svc.Greeter/Hi", &[host, ("content-type", "application/grpc")]), true, "gRPC"),
            (req("GET", "/", &[host, ("te", "trailers")]), true, "gRPC or trailers"),
            (req("PUT", "/up", &[host, ("content-length", "3"), ("expect", "100-continue")]), false, "expect"),
            (req("GET", "/", &[]), true, "no Host"),
            (req("GET", "/", &[("host", "a b")]), true, "bad Host"),
            (req("GET", "*", &[host]), true, "asterisk"),
        ];
        for (r, empty, what) in cases {
            assert!(take(&r, empty).is_err(), "{what} was taken");
        }
        let many: Vec<(String, &str)> = (0..MAX_HEADERS).map(|i| (format!("x-h{i}"), "v")).collect();
        let mut r = req("GET", "/", &[host]);
        for (n, v) in &many {
            r.append_header(n.clone(), *v).expect("header");
        }
        assert_eq!(take(&r, true), Err("too many headers"));
    }
}

//! One client connection on the fast path: read a request, route it, proxy it, repeat — until the client closes,
//! a timeout, shutdown, or a request the fast path does not take (then Pingora gets the connection).

use std::net::IpAddr;
use std::time::Instant;

use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::downstream::{Downstream, H1};
use super::exchange::{self, Exchange};
use super::request::{self, MAX_HEADERS, Parsed};
use super::response;
use super::{FastPath, replay::Replay};
use crate::decide::forward::Forwarding;
use crate::decide::{Decision, Facts, decide_found};
use crate::proxy::ctx::ConnectionGuard;
use crate::proxy::record::{self, Finished};
use crate::proxy::{access_log, headers};
use crate::runtime::metrics::HandoverLabels;
use crate::table::{RouteTable, now_ns, random};

/// Bytes read from the client at a time.
const READ_CHUNK: usize = 8 * 1024;

/// Longest wait for a closing connection's last bytes to leave.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// While shutting down, how long an idle keep-alive connection waits for one last request.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// What became of a connection.
pub enum Served {
    /// Closed (or the client went away).
    Closed,
    /// Hand it to Pingora, the bytes read so far put back in front.
    Delegate(Handed),
}

/// A connection handed to Pingora's proxy.
pub struct Handed {
    /// The connection, the bytes read so far put back in front ([`Replay`]).
    pub stream: Stream,
    /// It starts with the HTTP/2 preface (h2c prior knowledge): the connection is served as HTTP/2
    /// ([`super::h2`]), not handed over.
    pub h2c: bool,
}

/// Facts about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// Client address.
    pub client: Option<IpAddr>,
    /// Local port (for `X-Forwarded-Port`).
    pub port: Option<u16>,
    /// TLS connection.
    pub tls: bool,
    /// `HTTP/1.1` or `HTTP/2.0` (access log).
    pub protocol: &'static str,
}

impl Conn {
    /// The facts of the client connection `io`, speaking `protocol`.
    pub fn of(io: &Stream, protocol: &'static str) -> Self {
        let socket = io.get_socket_digest();
        Conn {
            client: socket.as_ref().and_then(|d| d.peer_addr()).and_then(|a| a.as_inet()).map(|a| a.ip()),
            port: socket.as_ref().and_then(|d| d.local_addr()).and_then(|a| a.as_inet()).map(|a| a.port()),
            tls: io.get_ssl_digest().is_some(),
            protocol,
        }
    }
}

/// Buffers reused by every request of a connection.
#[derive(Default)]
pub struct Scratch {
    /// The request sent upstream (kept until the response arrives: a retry sends it again).
    pub out: Vec<u8>,
    /// Bytes for the client: a response head and the body bytes that came with it, or an answer.
    pub head: Vec<u8>,
    /// Bytes read from the upstream.
    pub up: Vec<u8>,
    /// Bytes the client sent while its request was with the pod (pipelined requests), for the connection loop.
    pub early: Vec<u8>,
}

/// What to do after a request.
pub enum Flow {
    /// The connection takes the next request.
    Keep,
    /// The connection ends (the client asked, shutdown, or a response that could not be completed).
    Close,
    /// The route needs Pingora's proxy: nothing was sent.
    Delegate,
}

/// Serves the connection until it ends or must go to Pingora.
pub async fn serve(app: &FastPath, mut io: Stream, shutdown: &ShutdownWatch) -> Served {
    let mut shutdown = shutdown.clone();
    let conn = Conn::of(&io, "HTTP/1.1");
    let _guard = ConnectionGuard::new(app.metrics.clone());
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut scratch = Scratch::default();
    let head_limit = app.settings.max_header_bytes;
    // a request (head and body) must arrive within the client timeout of its first byte: slow clients are cut off
    let mut deadline = None;
    loop {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let idle = match request::parse(&buf, &mut storage) {
            Parsed::Fast(h) if h.head_len > head_limit => return delegate(app, io, buf, "head larger than the limit"),
            Parsed::Fast(h) if buf.len() >= h.head_len + h.body_len => {
                let total = h.head_len + h.body_len;
                let table = app.table.load_full();
                let mut d = H1 { io: &mut io, timeout: app.settings.client_timeout };
                let body = &buf[h.head_len..total];
                let flow = handle(app, &table, &conn, &h, body, &mut d, &mut scratch, &shutdown).await;
                match flow {
                    Flow::Keep => {}
                    Flow::Close => return close(io).await,
                    Flow::Delegate => return delegate(app, io, buf, "route needs Pingora's proxy"),
                }
                if total == buf.len() {
                    buf.clear();
                } else {
                    buf.drain(..total);
                }
                buf.append(&mut scratch.early);
                deadline = None;
                continue;
            }
            Parsed::Fast(_) => false,
            Parsed::Partial if buf.len() > head_limit => return delegate(app, io, buf, "head larger than the limit"),
            Parsed::Partial => buf.is_empty(),
            Parsed::Delegate(why) => return delegate(app, io, buf, why),
        };
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        let read = if idle && *shutdown.borrow() {
            // draining: a busy client's next request is microseconds away; answer it (with `Connection: close`)
            // rather than close under it, which would fail a request a client had already sent
            tokio::time::timeout(DRAIN_IDLE, io.read_buf(&mut buf)).await
        } else if idle {
            tokio::select! {
                r = tokio::time::timeout(app.settings.keepalive_timeout, io.read_buf(&mut buf)) => r,
                // reading is cancel-safe: nothing is lost, the loop reads again in draining mode
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return close(io).await, // the server is gone
                },
            }
        } else {
            let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + app.settings.client_timeout);
            tokio::time::timeout_at(until, io.read_buf(&mut buf)).await
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Served::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

fn delegate(app: &FastPath, io: Stream, buf: Vec<u8>, why: &'static str) -> Served {
    let h2c = buf.starts_with(b"PRI * HTTP/2");
    if !h2c {
        tracing::trace!(reason = why, "request handed to Pingora's proxy");
        app.metrics.fast_path_handovers.get_or_create(&HandoverLabels { reason: why }).inc();
    }
    Served::Delegate(Handed { stream: Box::new(Replay::new(io, buf)), h2c })
}

/// Flushes and closes (TLS `close_notify`), giving a client that no longer reads at most [`CLOSE_WAIT`].
async fn close(mut io: Stream) -> Served {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        let _ = io.flush().await;
        let _ = io.shutdown().await;
    })
    .await;
    Served::Closed
}

/// Routes one request read whole (`h` and its `body`), answers it or proxies it to `d`, and records it.
#[allow(clippy::too_many_arguments)]
pub async fn handle<D: Downstream>(
    app: &FastPath,
    table: &RouteTable,
    conn: &Conn,
    h: &request::Head<'_>,
    body: &[u8],
    d: &mut D,
    s: &mut Scratch,
    shutdown: &ShutdownWatch,
) -> Flow {
    let start = Instant::now();
    let host = headers::host_key(h.host);
    let path = h.path();
    let found = table.lookup(&host, path);
    if found.route.is_some_and(|r| !r.fast) {
        return Flow::Delegate;
    }
    app.metrics.active_requests.inc();
    let close = h.close || *shutdown.borrow();
    let facts = Facts {
        host: &host,
        path,
        query: h.query(),
        tls: conn.tls,
        client: conn.client,
        https_port: app.settings.https_port,
        content_length: Some(body.len() as u64),
        headers: h.headers,
        roll: random(),
        now_ns: now_ns(),
    };
    let mut id_buf = [0u8; 32];
    let request_id = match h.request_id {
        Some(id) => id,
        None => headers::new_request_id(&mut id_buf),
    };
    let decision = decide_found(found, &facts);
    let chosen = match &decision {
        Decision::Answer { route, .. } => *route,
        Decision::Proxy(plan) => Some(plan.chosen),
    };
    let outcome = match decision {
        Decision::Answer { answer: a, .. } => {
            s.head.clear();
            response::answer(&mut s.head, a.status, a.location.as_deref(), &a.body, close, h.method == "HEAD");
            let ok = d.answer(&s.head).await;
            exchange::Outcome::answered(a.status, ok, close)
        }
        Decision::Proxy(plan) => {
            let route = plan.chosen.route;
            s.out.clear();
            let fwd = Forwarding {
                client: conn.client,
                tls: conn.tls,
                port: conn.port,
                host: h.host.as_bytes(),
                request_id: request_id.as_bytes(),
                vhost: route.policy.upstream_vhost.as_ref().map(|v| v.as_bytes()),
            };
            request::write_upstream_head(&mut s.out, h, plan.target.as_deref().unwrap_or(h.target), &fwd);
            s.out.extend_from_slice(body);
            let ex = Exchange {
                head: h,
                policy: &route.policy,
                backend: plan.chosen.backend(),
                pinned: plan.pinned,
                tls: conn.tls,
                client_close: close,
                metrics: &app.metrics,
                max_retries: app.settings.max_retries,
                client_timeout: app.settings.client_timeout,
            };
            let outcome = ex.run(d, s).await;
            drop(plan.slot);
            outcome
        }
    };
    app.metrics.active_requests.dec();
    let seconds = start.elapsed().as_secs_f64();
    let labels = chosen.map_or(&app.unmatched, |c| c.labels());
    record::record(
        &app.metrics,
        Finished {
            labels,
            handles: chosen.map(|c| c.handles()),
            method: headers::method_label(h.method),
            status: outcome.status,
            seconds,
            upstream: outcome.upstream_seconds.zip(chosen.map(|c| &**c.backend())),
            request_bytes: body.len() as u64,
            response_bytes: outcome.body_bytes,
        },
    );
    if let Some(log) = &app.access_log {
        log.write(&access_log::Entry {
            client: conn.client,
            method: h.method,
            host: &host,
            uri: h.target,
            protocol: conn.protocol,
            status: outcome.status,
            bytes_sent: outcome.body_bytes,
            request_bytes: body.len() as u64,
            seconds,
            upstream: outcome.endpoint,
            failed_upstreams: &outcome.tried,
            upstream_seconds: outcome.upstream_seconds,
            labels: chosen.map(|c| &**c.labels()),
            request_id: Some(request_id),
            user_agent: h.user_agent,
            tls: conn.tls,
            error: outcome.error.map(|e| e.to_string()),
        });
    }
    if outcome.keep { Flow::Keep } else { Flow::Close }
}

/// Writes `bytes` to the client and flushes; false when the client is gone or does not read for `timeout`.
pub async fn write(io: &mut Stream, bytes: &[u8], timeout: std::time::Duration) -> bool {
    let all = async { io.write_all(bytes).await.is_ok() && io.flush().await.is_ok() };
    tokio::time::timeout(timeout, all).await.unwrap_or(false)
}

//! One request's trip upstream: pick an endpoint, get a connection (idle one or new), send, relay the response.
//!
//! Failures follow the Pingora path's rules: a failed connect counts against the endpoint (ejecting it after
//! repeated failures) and is retried on another endpoint; a pooled connection is used only when it is still open
//! with nothing unread on it, and if the pod closes it under the request anyway, an idempotent request is resent on
//! a fresh connection (others are not: the pod may have acted on them); an error
//! before the response head answers 502 (504 on a timeout); after it, the client connection is closed, as nginx
//! does, since the response can no longer be completed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::chunked::Chunked;
use super::conn::Scratch;
use super::downstream::Downstream;
use super::pool;
use super::request::Head;
use super::response::{self, Client, Framing};
use super::upstream::{Peer, Upstream};
use crate::compile::annotations::BackendProtocol;
use crate::decide::pick;
use crate::proxy::record;
use crate::runtime::metrics::Metrics;
use crate::table::{Backend, Endpoint, Policy, now_ns};

/// Room kept free in the upstream read buffer before each read.
const READ_ROOM: usize = 16 * 1024;

/// What happened first while waiting for the pod.
enum Watched {
    /// The pod's read finished (or failed, or timed out).
    Upstream(Result<usize, Failure>),
    /// The client closed its connection.
    ClientGone,
}

/// How a request ended, for metrics, logs and the connection loop.
#[derive(Debug)]
pub struct Outcome {
    /// Status sent to the client (0 when nothing was).
    pub status: u16,
    /// Response body bytes sent.
    pub body_bytes: u64,
    /// Seconds until the upstream response head arrived.
    pub upstream_seconds: Option<f64>,
    /// The endpoint that answered (or was last tried).
    pub endpoint: Option<SocketAddr>,
    /// Endpoints that failed to connect.
    pub tried: Vec<SocketAddr>,
    /// The client connection can take another request.
    pub keep: bool,
    /// What went wrong.
    pub error: Option<Failure>,
}

impl Outcome {
    /// A response the ingress wrote itself.
    pub fn answered(status: u16, written: bool, close: bool) -> Self {
        Outcome {
            status,
            body_bytes: 0,
            upstream_seconds: None,
            endpoint: None,
            tried: Vec::new(),
            keep: written && !close,
            error: None,
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No endpoint could be connected to.
    #[error("every endpoint failed to connect")]
    NoEndpoint,
    /// The upstream did not answer in time.
    #[error("upstream timed out ({0})")]
    Timeout(&'static str),
    /// Reading from or writing to the upstream failed.
    #[error("upstream {0}: {1}")]
    Upstream(&'static str, io::Error),
    /// The upstream's response could not be passed on.
    #[error(transparent)]
    Bad(#[from] response::BadResponse),
    /// The chunked body was malformed.
    #[error(transparent)]
    Chunked(#[from] super::chunked::ChunkError),
    /// The client went away while the response was being written.
    #[error("client closed the connection")]
    ClientGone,
}

/// Where an attempt failed.
enum Stage {
    /// Nothing of the response arrived: the request may be sent again on a fresh connection.
    BeforeResponse(Failure),
    /// Something arrived but no head was sent to the client yet: answer 502/504.
    BeforeHead(Failure),
    /// The client already has (part of) the response: close the connection.
    AfterHead(Failure, Partial),
}

/// What reached the client before an exchange broke off.
#[derive(Debug, Clone, Copy, Default)]
struct Partial {
    /// Status sent (0: only 1xx heads, or nothing, before the client went away).
    status: u16,
    /// Body bytes sent.
    body_bytes: u64,
    /// Seconds until the response head arrived.
    upstream_seconds: Option<f64>,
}

/// One request going upstream.
pub struct Exchange<'a> {
    /// The request.
    pub head: &'a Head<'a>,
    /// The route's policy (timeouts).
    pub policy: &'a Policy,
    /// Where it goes.
    pub backend: &'a Arc<Backend>,
    /// The endpoint the request's affinity cookie names (first attempt).
    pub pinned: Option<&'a Arc<Endpoint>>,
    /// The client connection is TLS (the affinity cookie is `Secure`).
    pub tls: bool,
    /// Close the client connection after the response.
    pub client_close: bool,
    /// Metrics (retries, ejections).
    pub metrics: &'a Metrics,
    /// Connect retries on other endpoints.
    pub max_retries: u32,
    /// How long a client may take to accept response bytes (slow readers are cut off).
    pub client_timeout: Duration,
}

/// Progress of one response towards the client.
struct Relayed {
    status: u16,
    body_bytes: u64,
    upstream_seconds: f64,
    reusable: bool,
    close_client: bool,
}

impl Exchange<'_> {
    /// Sends `s.out` (head and body, already written) to an endpoint and relays the response to `d`.
    pub async fn run<D: Downstream>(&self, d: &mut D, s: &mut Scratch) -> Outcome {
        let mut tried = Vec::new();
        let Some(pool) = self.backend.pool() else {
            return self.fail(d, s, Failure::NoEndpoint, tried, None).await;
        };
        loop {
            let affinity = self.policy.affinity.as_ref();
            let Some(picked) = pick(pool, affinity, self.pinned, &tried, self.tls, now_ns()) else {
                return self.fail(d, s, Failure::NoEndpoint, tried, None).await;
            };
            let (endpoint, cookie) = (picked.endpoint.clone(), picked.set_cookie);
            endpoint.stats.start();
            let started = Instant::now();
            let mut fresh_only = false;
            let peer = Peer { addr: endpoint.addr, tls: self.policy.protocol == BackendProtocol::Https };
            let attempt = loop {
                let pooled = if fresh_only { None } else { pool::take(peer) };
                let reused = pooled.is_some();
                let mut up = match pooled {
                    Some(mut up) => {
                        if !up.still_open() {
                            continue; // closed by the pod, or stray bytes: never used again
                        }
                        up
                    }
                    None => match Upstream::connect(peer, self.policy.connect_timeout).await {
                        Ok(up) => up,
                        Err(timed_out) => break Err(timed_out),
                    },
                };
                endpoint.stats.connected();
                match self.attempt(&mut up, d, s, started, cookie.as_deref()).await {
                    Ok(r) => break Ok((up, r)),
                    Err(Stage::BeforeResponse(_)) if reused && self.head.idempotent() => {
                        // the pod closed this idle connection: resend on a fresh one
                        fresh_only = true;
                        continue;
                    }
                    Err(Stage::BeforeResponse(e) | Stage::BeforeHead(e)) => {
                        endpoint.stats.finish(None);
                        return self.fail(d, s, e, tried, Some(endpoint.addr)).await;
                    }
                    Err(Stage::AfterHead(e, partial)) => {
                        endpoint.stats.finish(partial.upstream_seconds.map(|s| (s * 1e9) as u64));
                        return Outcome {
                            // nginx's 499 when the client left before any answer
                            status: if partial.status == 0 { 499 } else { partial.status },
                            body_bytes: partial.body_bytes,
                            upstream_seconds: partial.upstream_seconds,
                            endpoint: Some(endpoint.addr),
                            tried,
                            keep: false,
                            error: Some(e),
                        };
                    }
                }
            };
            match attempt {
                Ok((up, r)) => {
                    endpoint.stats.finish(Some((r.upstream_seconds * 1e9) as u64));
                    if r.reusable {
                        pool::put(peer, up);
                    }
                    return Outcome {
                        status: r.status,
                        body_bytes: r.body_bytes,
                        upstream_seconds: Some(r.upstream_seconds),
                        endpoint: Some(endpoint.addr),
                        tried,
                        keep: !r.close_client,
                        error: None,
                    };
                }
                Err(timed_out) => {
                    if !self.connect_failed(&endpoint, &mut tried, timed_out) {
                        let e = if timed_out { Failure::Timeout("connect") } else { Failure::NoEndpoint };
                        return self.fail(d, s, e, tried, Some(endpoint.addr)).await;
                    }
                }
            }
        }
    }

    fn connect_failed(&self, endpoint: &Endpoint, tried: &mut Vec<SocketAddr>, timed_out: bool) -> bool {
        record::connect_failed(self.metrics, self.backend, endpoint, tried, timed_out, self.max_retries)
    }

    /// Answers 502 (504 after a timeout) when nothing was sent to the client yet.
    async fn fail<D: Downstream>(
        &self,
        d: &mut D,
        s: &mut Scratch,
        e: Failure,
        tried: Vec<SocketAddr>,
        endpoint: Option<SocketAddr>,
    ) -> Outcome {
        let status = if matches!(e, Failure::Timeout(_)) { 504 } else { 502 };
        let body = crate::proxy::headers::failure_body(status);
        s.head.clear();
        response::answer(&mut s.head, status, None, &body, self.client_close, self.head.method == "HEAD");
        let written = d.answer(&s.head).await;
        Outcome { endpoint, tried, error: Some(e), ..Outcome::answered(status, written, self.client_close) }
    }

    /// Sends the request on `up` and relays the response.
    async fn attempt<D: Downstream>(
        &self,
        up: &mut Upstream,
        d: &mut D,
        s: &mut Scratch,
        started: Instant,
        cookie: Option<&str>,
    ) -> Result<Relayed, Stage> {
        let send = tokio::time::timeout(self.policy.send_timeout, up.write_all(&s.out)).await;
        match send {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Stage::BeforeResponse(Failure::Upstream("write", e))),
            Err(_) => return Err(Stage::BeforeHead(Failure::Timeout("send"))),
        }
        let client = Client {
            head_request: self.head.method == "HEAD",
            close: self.client_close,
            set: &self.policy.response_headers,
            cookie,
        };
        s.up.clear();
        // the head (after any 1xx heads, which are passed on as they come); `s.out` keeps the request for a retry
        // a 1xx head came (the pod has the request: it is never sent again), and the client got it (a failure can
        // no longer be answered with 502/504)
        let (mut interim_seen, mut interim_sent) = (false, false);
        let resp = loop {
            if !s.up.is_empty() {
                s.head.clear();
                match response::relay_head(&s.up, &client, &mut s.head) {
                    Ok(Some(r)) if r.interim => {
                        interim_seen = true;
                        match d.interim(&s.head).await {
                            Some(true) => interim_sent = true,
                            Some(false) => return Err(Stage::AfterHead(Failure::ClientGone, Partial::default())),
                            None => {}
                        }
                        s.up.drain(..r.head_len);
                        continue;
                    }
                    Ok(Some(r)) => break r,
                    Ok(None) => {}
                    Err(e) if interim_sent => return Err(Stage::AfterHead(e.into(), Partial::default())),
                    Err(e) => return Err(Stage::BeforeHead(e.into())),
                }
            }
            // nothing of the response seen yet: the pod may have closed an idle connection under the request
            let first = s.up.is_empty() && !interim_seen;
            let read = match self.read_watching(up, &mut s.up, d, &mut s.early).await {
                Watched::Upstream(read) => read,
                Watched::ClientGone => return Err(Stage::AfterHead(Failure::ClientGone, Partial::default())),
            };
            match read {
                Ok(0) if first => {
                    let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed before responding");
                    return Err(Stage::BeforeResponse(Failure::Upstream("read", eof)));
                }
                Ok(0) if interim_seen => {
                    let bad = response::BadResponse("closed after an informational response");
                    let partial = Partial::default();
                    return Err(if interim_sent {
                        Stage::AfterHead(bad.into(), partial)
                    } else {
                        Stage::BeforeHead(bad.into())
                    });
                }
                Ok(0) => return Err(Stage::BeforeHead(response::BadResponse("closed inside the head").into())),
                Ok(_) => {}
                Err(e) if first && !matches!(e, Failure::Timeout(_)) => return Err(Stage::BeforeResponse(e)),
                Err(e) if interim_sent => return Err(Stage::AfterHead(e, Partial::default())),
                Err(e) => return Err(Stage::BeforeHead(e)),
            }
        };
        let upstream_seconds = started.elapsed().as_secs_f64();
        let mut reusable = resp.upstream_reusable;
        let avail = &s.up[resp.head_len..];
        let mut left = 0u64;
        let mut chunked = Chunked::new();
        let mut done = true;
        let first_body = match resp.framing {
            Framing::Empty => 0,
            Framing::Length(n) => {
                let take = n.min(avail.len() as u64) as usize;
                left = n - take as u64;
                done = left == 0;
                take
            }
            Framing::Chunked => {
                let take = chunked.feed(avail).map_err(|e| Stage::BeforeHead(e.into()))?;
                done = chunked.is_done();
                take
            }
            Framing::UntilClose => {
                done = false;
                avail.len()
            }
        };
        if first_body < avail.len() {
            reusable = false; // bytes beyond the response: the connection is out of step
        }
        let mut sent = Partial { status: resp.status, body_bytes: 0, upstream_seconds: Some(upstream_seconds) };
        if !d.head(&mut s.head, &resp, &avail[..first_body], done).await {
            return Err(Stage::AfterHead(Failure::ClientGone, sent));
        }
        sent.body_bytes = first_body as u64;
        while !done {
            s.up.clear();
            let n = self.read(up, &mut s.up).await.map_err(|e| Stage::AfterHead(e, sent))?;
            let take = match resp.framing {
                Framing::UntilClose if n == 0 => {
                    done = true;
                    0
                }
                _ if n == 0 => {
                    let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed inside the body");
                    return Err(Stage::AfterHead(Failure::Upstream("read", eof), sent));
                }
                Framing::Length(_) => {
                    let take = left.min(n as u64) as usize;
                    left -= take as u64;
                    done = left == 0;
                    take
                }
                Framing::Chunked => {
                    let take = chunked.feed(&s.up).map_err(|e| Stage::AfterHead(e.into(), sent))?;
                    done = chunked.is_done();
                    take
                }
                Framing::UntilClose | Framing::Empty => n,
            };
            if take < n {
                reusable = false;
            }
            if (take > 0 || done) && !d.body(&mut s.head, &resp, &s.up[..take], done).await {
                return Err(Stage::AfterHead(Failure::ClientGone, sent));
            }
            sent.body_bytes += take as u64;
        }
        Ok(Relayed {
            status: resp.status,
            body_bytes: sent.body_bytes,
            upstream_seconds,
            reusable,
            close_client: resp.close_client,
        })
    }

    /// One read from the upstream within the read timeout, watching the client meanwhile: a client that goes away
    /// while it waits for the response head ends the exchange (nginx's 499), so the pod's connection and the
    /// request's limit slot are freed at once instead of when the pod answers. Bytes an HTTP/1.1 client sends
    /// meanwhile (pipelined requests) are kept in `early` for the connection loop ([`Downstream::gone`]).
    async fn read_watching<D: Downstream>(
        &self,
        up: &mut Upstream,
        buf: &mut Vec<u8>,
        d: &mut D,
        early: &mut Vec<u8>,
    ) -> Watched {
        let deadline = tokio::time::Instant::now() + self.policy.read_timeout;
        if buf.capacity() - buf.len() < READ_ROOM / 4 {
            buf.reserve(READ_ROOM);
        }
        // both are cancel-safe: a read that loses the race has consumed nothing
        tokio::select! {
            read = tokio::time::timeout_at(deadline, up.read_buf(buf)) => Watched::Upstream(match read {
                Ok(Ok(n)) => Ok(n),
                Ok(Err(e)) => Err(Failure::Upstream("read", e)),
                Err(_) => Err(Failure::Timeout("read")),
            }),
            () = d.gone(early) => Watched::ClientGone,
        }
    }

    /// One read from the upstream within the read timeout.
    async fn read(&self, up: &mut Upstream, buf: &mut Vec<u8>) -> Result<usize, Failure> {
        if buf.capacity() - buf.len() < READ_ROOM / 4 {
            buf.reserve(READ_ROOM);
        }
        match tokio::time::timeout(self.policy.read_timeout, up.read_buf(buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(Failure::Upstream("read", e)),
            Err(_) => Err(Failure::Timeout("read")),
        }
    }
}

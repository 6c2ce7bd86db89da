//! Where the fast path's responses go: an HTTP/1.1 client connection ([`H1`]) or one HTTP/2 stream ([`H2`]).
//!
//! The exchange with the pod is the same for both ([`super::exchange`]): the ingress's own answers and the head
//! sent on to the client are written as HTTP/1.1 bytes with every edit already made ([`super::response`]), and
//! the body arrives as the pod framed it. [`H1`] passes those bytes on (re-chunking a body the pod ends by
//! closing). [`H2`] turns the head into an HTTP/2 response (no connection-specific fields, as RFC 9113 §8.2.2
//! requires), sends the body as DATA frames with the chunked framing removed, and ends the stream with the body.
//! Informational (1xx) heads are dropped on HTTP/2, as Pingora's HTTP/2 server does.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use pingora::protocols::http::v2::server::HttpSession;
use tokio::io::AsyncReadExt;

use super::chunked::Chunked;
use super::conn::write;
use super::response::{self, Framing, Response};

/// Most client bytes (pipelined requests) read while waiting for a response head.
pub const EARLY_MAX: usize = 64 * 1024;

/// A client the fast path answers.
pub trait Downstream {
    /// Sends a response the ingress made itself: `bytes` hold an HTTP/1.1 head and the whole body. False when the
    /// client is gone.
    fn answer(&mut self, bytes: &[u8]) -> impl Future<Output = bool> + Send;

    /// Passes on an informational (1xx) head from the pod: `Some(written)`, or `None` when this client gets none
    /// (then a failure after it is still answered with 502/504).
    fn interim(&mut self, head: &[u8]) -> impl Future<Output = Option<bool>> + Send;

    /// Sends the response head (`out`, HTTP/1.1 bytes as [`response::relay_head`] wrote them; it may be appended
    /// to) and the body bytes that came with it, as the pod framed them; `done`: the body ends with them.
    fn head(
        &mut self,
        out: &mut Vec<u8>,
        resp: &Response,
        body: &[u8],
        done: bool,
    ) -> impl Future<Output = bool> + Send;

    /// Sends more body bytes, as the pod framed them (`scratch` is a buffer to use); `done`: the body ends with
    /// them (a body delimited by the pod's close ends with an empty call).
    fn body(
        &mut self,
        scratch: &mut Vec<u8>,
        resp: &Response,
        body: &[u8],
        done: bool,
    ) -> impl Future<Output = bool> + Send;

    /// Resolves when the client goes away while its request is with the pod. An HTTP/1.1 client's pipelined bytes
    /// read meanwhile are kept in `early` (up to [`EARLY_MAX`]; beyond that it is no longer read). Cancel-safe.
    fn gone(&mut self, early: &mut Vec<u8>) -> impl Future<Output = ()> + Send;
}

/// An HTTP/1.1 client connection.
pub struct H1<'a> {
    /// The connection.
    pub io: &'a mut Stream,
    /// How long the client may take to accept bytes.
    pub timeout: Duration,
}

impl Downstream for H1<'_> {
    async fn answer(&mut self, bytes: &[u8]) -> bool {
        write(self.io, bytes, self.timeout).await
    }

    async fn interim(&mut self, head: &[u8]) -> Option<bool> {
        Some(write(self.io, head, self.timeout).await)
    }

    async fn head(&mut self, out: &mut Vec<u8>, resp: &Response, body: &[u8], _done: bool) -> bool {
        // the head and the body bytes that came with it, in one write
        if resp.rechunk {
            response::chunk(out, body);
        } else {
            out.extend_from_slice(body);
        }
        write(self.io, out, self.timeout).await
    }

    async fn body(&mut self, scratch: &mut Vec<u8>, resp: &Response, body: &[u8], done: bool) -> bool {
        if body.is_empty() {
            return !(done && resp.rechunk) || write(self.io, response::LAST_CHUNK, self.timeout).await;
        }
        if !resp.rechunk {
            return write(self.io, body, self.timeout).await;
        }
        scratch.clear();
        response::chunk(scratch, body);
        write(self.io, scratch, self.timeout).await
    }

    async fn gone(&mut self, early: &mut Vec<u8>) {
        loop {
            if early.len() >= EARLY_MAX {
                return std::future::pending().await;
            }
            if early.capacity() - early.len() < 1024 {
                early.reserve(4096);
            }
            // cancel-safe: a read that loses a race has consumed nothing
            match self.io.read_buf(early).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// One HTTP/2 stream (Pingora's HTTP/2 server session).
pub struct H2<'a> {
    /// The stream.
    pub session: &'a mut HttpSession,
    /// How long the client may take to accept bytes (HTTP/2 flow control).
    pub timeout: Duration,
    /// Decodes a chunked body.
    chunked: Chunked,
}

impl<'a> H2<'a> {
    /// The stream `session`, whose client may take `timeout` to accept bytes.
    pub fn new(session: &'a mut HttpSession, timeout: Duration) -> Self {
        H2 { session, timeout, chunked: Chunked::new() }
    }

    /// Sends `data` (decoded), ending the stream when `end`.
    async fn data(&mut self, data: Bytes, end: bool) -> bool {
        if data.is_empty() && !end {
            return true;
        }
        let write = self.session.write_body(data, end);
        matches!(tokio::time::timeout(self.timeout, write).await, Ok(Ok(())))
    }

    /// The body bytes as the pod framed them, without the chunked framing.
    fn decode(&mut self, resp: &Response, body: &[u8]) -> Bytes {
        if resp.framing != Framing::Chunked {
            return Bytes::copy_from_slice(body);
        }
        let mut out = Vec::with_capacity(body.len());
        // the exchange has checked the framing of these bytes with its own scanner
        let _ = self.chunked.feed_with(body, |d| out.extend_from_slice(d));
        Bytes::from(out)
    }
}

impl Downstream for H2<'_> {
    async fn answer(&mut self, bytes: &[u8]) -> bool {
        let Some((head, len)) = h2_head(bytes) else { return false };
        let body = &bytes[len..];
        if self.session.write_response_header(head, body.is_empty()).is_err() {
            return false;
        }
        body.is_empty() || self.data(Bytes::copy_from_slice(body), true).await
    }

    async fn interim(&mut self, _head: &[u8]) -> Option<bool> {
        None // HTTP/2 responses here carry no 1xx heads (Pingora's HTTP/2 server drops them alike)
    }

    async fn head(&mut self, out: &mut Vec<u8>, resp: &Response, body: &[u8], done: bool) -> bool {
        let Some((head, _)) = h2_head(out) else { return false };
        let data = self.decode(resp, body);
        let end = done && data.is_empty();
        if self.session.write_response_header(head, end).is_err() {
            return false;
        }
        end || self.data(data, done).await
    }

    async fn body(&mut self, _scratch: &mut Vec<u8>, resp: &Response, body: &[u8], done: bool) -> bool {
        let data = self.decode(resp, body);
        self.data(data, done).await
    }

    async fn gone(&mut self, _early: &mut Vec<u8>) {
        // resolves when the client resets the stream or closes the connection
        let _ = self.session.idle().await;
    }
}

/// Header fields an HTTP/2 response must not carry (RFC 9113 §8.2.2), left out of the HTTP/1.1 head.
const CONNECTION_SPECIFIC: [&str; 5] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"];

/// Header lines parsed without allocating; a head with more (the relay passes up to [`response::MAX_HEADERS`] of
/// the pod's and adds its own) is parsed into a buffer sized for it.
const HEAD_LINES: usize = 64;

/// The HTTP/2 response for an HTTP/1.1 head the ingress wrote (status and fields, same order, without the
/// connection-specific ones), and the head's length. `None` if `bytes` do not start with a complete head.
pub fn h2_head(bytes: &[u8]) -> Option<(Box<ResponseHeader>, usize)> {
    let mut storage = [httparse::EMPTY_HEADER; HEAD_LINES];
    match convert(bytes, &mut storage) {
        Err(httparse::Error::TooManyHeaders) => {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count();
            convert(bytes, &mut vec![httparse::EMPTY_HEADER; lines])
        }
        converted => converted,
    }
    .ok()
    .flatten()
}

fn convert<'b>(
    bytes: &'b [u8],
    storage: &mut [httparse::Header<'b>],
) -> Result<Option<(Box<ResponseHeader>, usize)>, httparse::Error> {
    let mut parsed = httparse::Response::new(storage);
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    let httparse::Status::Complete(len) = config.parse_response(&mut parsed, bytes)? else { return Ok(None) };
    Ok(head_of(&parsed).map(|head| (head, len)))
}

fn head_of(parsed: &httparse::Response<'_, '_>) -> Option<Box<ResponseHeader>> {
    let mut head = ResponseHeader::build(parsed.code?, Some(parsed.headers.len())).ok()?;
    for h in parsed.headers.iter() {
        if CONNECTION_SPECIFIC.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            continue;
        }
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        head.append_header(h.name.to_ascii_lowercase(), value).ok()?;
    }
    Some(Box::new(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_head_has_the_same_fields_without_the_connection_specific_ones() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
            Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nServer: skiff\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
            Upgrade: h2c\r\nProxy-Connection: x\r\n\r\nBODY";
        let (head, len) = h2_head(raw).expect("a head");
        assert_eq!(&raw[len..], b"BODY");
        assert_eq!(head.status.as_u16(), 404);
        let fields: Vec<_> = head.headers.iter().map(|(n, v)| format!("{n}: {}", v.to_str().expect("ascii"))).collect();
        assert_eq!(fields, ["content-type: text/plain", "set-cookie: a=1", "set-cookie: b=2", "server: skiff"]);
    }

    #[test]
    fn a_head_with_more_lines_than_the_relay_takes_from_a_pod_converts() {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..response::MAX_HEADERS + 10 {
            raw.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let (head, len) = h2_head(&raw).expect("a head");
        assert_eq!((len, head.headers.len()), (raw.len(), response::MAX_HEADERS + 10));
    }

    #[test]
    fn an_incomplete_or_broken_head_is_none() {
        assert!(h2_head(b"HTTP/1.1 200 OK\r\nServer: x\r\n").is_none());
        assert!(h2_head(b"HTTP/1.1 200 OK\r\nBad\x01Name: x\r\n\r\n").is_none());
    }
}

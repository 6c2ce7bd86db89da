//! The request side of the fast path: which requests it takes, and the head it sends upstream. Pure functions of
//! the bytes received.
//!
//! Taken: HTTP/1.1 requests in origin form (`GET /path?q HTTP/1.1`) with exactly one `Host`, no
//! `Transfer-Encoding`, no `Upgrade`, no `Expect`, a `Connection` header naming only `keep-alive`/`close`, and a
//! body of at most [`MAX_BODY`] bytes given by one `Content-Length`. Everything else — HTTP/1.0, chunked or large
//! uploads, WebSocket upgrades, `100-continue`, malformed requests, h2c — is handed to Pingora's proxy with the
//! bytes already read, so it is answered exactly as before; the fast path never guesses.

use crate::decide::forward::Forwarding;

/// Largest request body the fast path buffers (bigger bodies stream through Pingora).
pub const MAX_BODY: u64 = 64 * 1024;

/// Most header lines parsed (more goes to Pingora, which applies its own limits).
pub const MAX_HEADERS: usize = 64;

/// A request the fast path will proxy.
#[derive(Debug)]
pub struct Head<'b> {
    /// Method token.
    pub method: &'b str,
    /// Request target as received (path and query).
    pub target: &'b str,
    /// Raw `Host` header value.
    pub host: &'b str,
    /// Header lines (name, value) as received.
    pub headers: &'b [httparse::Header<'b>],
    /// Length of the head, up to and including the empty line.
    pub head_len: usize,
    /// Body length (`Content-Length`, 0 without).
    pub body_len: usize,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// A usable `X-Request-ID` from the client.
    pub request_id: Option<&'b str>,
    /// `User-Agent`.
    pub user_agent: Option<&'b str>,
}

impl Head<'_> {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The query without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// Whether repeating the request is safe (RFC 9110 §9.2.2): a request on a reused upstream connection that the
    /// upstream closed before answering is retried on a fresh one only then.
    pub fn idempotent(&self) -> bool {
        matches!(self.method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
    }
}

/// What to do with the bytes received so far.
#[derive(Debug)]
pub enum Parsed<'b> {
    /// A complete head the fast path proxies (its body may still be arriving: see `head_len + body_len`).
    Fast(Head<'b>),
    /// Not complete yet.
    Partial,
    /// Hand the connection to Pingora (the reason is for traces).
    Delegate(&'static str),
}

/// Parses a request head from the start of `buf` and decides whether the fast path takes it.
pub fn parse<'b>(buf: &'b [u8], storage: &'b mut [httparse::Header<'b>; MAX_HEADERS]) -> Parsed<'b> {
    let mut req = httparse::Request::new(storage);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Delegate("not a well-formed HTTP/1.1 head"),
    };
    if req.version != Some(1) {
        return Parsed::Delegate("HTTP/1.0");
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Delegate("incomplete request line");
    };
    if !target.starts_with('/') || method == "CONNECT" {
        return Parsed::Delegate("not origin-form");
    }
    let headers: &'b [httparse::Header<'b>] = req.headers;
    let mut host = None;
    let mut hosts = 0;
    let mut body_len: Option<u64> = None;
    let mut close = false;
    let mut request_id = None;
    let mut user_agent = None;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = std::str::from_utf8(h.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = content_length(h.value) else {
                return Parsed::Delegate("bad Content-Length");
            };
            if body_len.is_some_and(|m| m != n) {
                return Parsed::Delegate("conflicting Content-Length");
            }
            body_len = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Parsed::Delegate("streamed body, upgrade or expectation");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    return Parsed::Delegate("Connection names other headers");
                }
            }
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = std::str::from_utf8(h.value).ok().filter(|v| !v.is_empty() && v.len() <= 200);
        } else if name.eq_ignore_ascii_case("user-agent") {
            user_agent = std::str::from_utf8(h.value).ok();
        }
    }
    let (Some(host), 1) = (host, hosts) else {
        return Parsed::Delegate("not exactly one Host");
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)) {
        return Parsed::Delegate("Host is not host[:port]"); // userinfo, spaces, …: Pingora validates and answers
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BODY {
        return Parsed::Delegate("large body");
    }
    Parsed::Fast(Head {
        method,
        target,
        host,
        headers,
        head_len,
        body_len: body_len as usize,
        close,
        request_id,
        user_agent,
    })
}

/// Where the first request in `buf` ends (its head and body), when `buf` holds all of it and its framing is
/// clear (one `Content-Length`, chunked, or no body); `None` otherwise — and for upgrades and `CONNECT`, whose
/// connection becomes a tunnel after the head, so nothing behind it is a next request.
pub fn request_end(buf: &[u8]) -> Option<usize> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let Ok(httparse::Status::Complete(head)) = req.parse(buf) else { return None };
    if req.method == Some("CONNECT") {
        return None;
    }
    let (mut chunked, mut length) = (false, None);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            return None;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().map(<[u8]>::trim_ascii).unwrap_or_default();
            if !last.eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = content_length(h.value)?;
            if length.is_some_and(|m| m != n) {
                return None;
            }
            length = Some(n);
        }
    }
    if chunked && length.is_some() {
        return None; // framing a proxy may read either way: Pingora decides, nothing is fenced
    }
    if chunked {
        let mut body = super::chunked::Chunked::new();
        let n = body.feed(&buf[head..]).ok()?;
        return body.is_done().then_some(head + n);
    }
    let end = head.checked_add(usize::try_from(length.unwrap_or(0)).ok()?)?;
    (end <= buf.len()).then_some(end)
}

/// A `Content-Length` value: digits only (no sign, no list), surrounding blanks allowed, at most 18 digits.
pub fn content_length(v: &[u8]) -> Option<u64> {
    let v = std::str::from_utf8(v).ok()?.trim_matches([' ', '\t']);
    if v.is_empty() || v.len() > 18 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Writes the head sent upstream into `out`: the request line (with `target`, the client's or the rewritten one)
/// and headers as received (same case, same order) without those the ingress drops, then the ones it adds
/// ([`Forwarding`]). The connection to the pod stays alive (HTTP/1.1).
pub fn write_upstream_head(out: &mut Vec<u8>, head: &Head<'_>, target: &str, fwd: &Forwarding<'_>) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in head.headers {
        if !fwd.drops(h.name) {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    fwd.each(|name, value| header(out, name.as_bytes(), value));
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::{host_key, new_request_id};

    fn with_parsed<R>(raw: &[u8], f: impl FnOnce(Parsed<'_>) -> R) -> R {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        f(parse(raw, &mut storage))
    }

    fn delegated(raw: &str) -> bool {
        with_parsed(raw.as_bytes(), |p| matches!(p, Parsed::Delegate(_)))
    }

    #[test]
    fn a_plain_get_is_taken_with_its_facts() {
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nX-Request-ID: abc\r\nUser-Agent: t\r\n\r\nNEXT";
        with_parsed(raw, |p| {
            let Parsed::Fast(h) = p else { panic!("not fast: {p:?}") };
            assert_eq!((h.method, h.path(), h.query()), ("GET", "/a/b", Some("x=1")));
            assert_eq!(h.head_len, raw.len() - 4);
            assert_eq!((h.body_len, h.close), (0, false));
            assert_eq!((h.request_id, h.user_agent), (Some("abc"), Some("t")));
            assert_eq!(host_key(h.host), "example.com");
        });
    }

    #[test]
    fn bodies_up_to_the_limit_are_taken() {
        with_parsed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", |p| {
            let Parsed::Fast(h) = p else { panic!("not fast") };
            assert_eq!(h.body_len, 5);
            assert!(!h.idempotent());
        });
        assert!(delegated(&format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1)));
    }

    #[test]
    fn everything_unusual_goes_to_pingora() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: evil@victim.example\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: \r\n\r\n",
        ] {
            assert!(delegated(raw), "{raw:?} should be delegated");
        }
    }

    #[test]
    fn the_end_of_a_whole_first_request_is_found() {
        let get = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let post = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n";
        for first in [get, post, chunked] {
            assert_eq!(request_end(format!("{first}{get}").as_bytes()), Some(first.len()), "{first:?}");
            assert_eq!(request_end(first.as_bytes()), Some(first.len()), "{first:?}");
            assert_eq!(request_end(&first.as_bytes()[..first.len() - 1]), None, "incomplete: {first:?}");
        }
        for unclear in [
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // a tunnel after the head: the bytes behind it are the client's, not a next request
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframe",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nTLS",
        ] {
            assert_eq!(request_end(unclear.as_bytes()), None, "{unclear:?}");
        }
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(with_parsed(b"GET / HTTP/1.1\r\nHost: a\r\n", |p| matches!(p, Parsed::Partial)));
        assert!(with_parsed(b"", |p| matches!(p, Parsed::Partial)));
    }

    #[test]
    fn connection_close_is_noticed() {
        with_parsed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, close\r\n\r\n", |p| {
            let Parsed::Fast(h) = p else { panic!("not fast") };
            assert!(h.close);
        });
    }

    #[test]
    fn the_upstream_head_keeps_the_request_and_replaces_forwarding_headers() {
        let raw = b"GET /x?y HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive\r\nX-Forwarded-For: 6.6.6.6\r\nAccept: */*\r\n\r\n";
        with_parsed(raw, |p| {
            let Parsed::Fast(h) = p else { panic!("not fast") };
            let mut out = Vec::new();
            let fwd = Forwarding {
                client: Some("10.0.0.9".parse().expect("ip")),
                tls: true,
                port: Some(443),
                host: h.host.as_bytes(),
                request_id: b"r1",
                vhost: None,
            };
            write_upstream_head(&mut out, &h, h.target, &fwd);
            let text = String::from_utf8(out).expect("ascii");
            assert_eq!(
                text,
                "GET /x?y HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.9\r\n\
                 X-Real-IP: 10.0.0.9\r\nX-Forwarded-Proto: https\r\nX-Scheme: https\r\n\
                 X-Forwarded-Host: shop.example\r\nX-Forwarded-Port: 443\r\nX-Request-ID: r1\r\n\r\n"
            );
            let mut out = Vec::new();
            write_upstream_head(&mut out, &h, "/new?y", &Forwarding { vhost: Some(b"inner.svc"), client: None, ..fwd });
            let text = String::from_utf8(out).expect("ascii");
            assert!(text.starts_with("GET /new?y HTTP/1.1\r\n"), "the rewritten target: {text}");
            assert!(text.contains("\r\nHost: inner.svc\r\n") && !text.contains("\r\nHost: shop.example"), "{text}");
            assert!(!text.contains("X-Forwarded-For"), "{text}");
        });
    }

    #[test]
    fn ids_are_formatted_without_allocating() {
        let mut id = [0u8; 32];
        let a = new_request_id(&mut id).to_string();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_request_id(&mut id));
    }
}

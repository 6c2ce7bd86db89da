//! The response side of the fast path: how the upstream's response is framed, whether both connections stay
//! alive, and the head sent to the client. Pure functions of the bytes received.
//!
//! The head is passed on as received (status line normalised to HTTP/1.1) without the hop-by-hop headers; the
//! route's custom headers replace same-named ones; `Server: skiff` is added when neither names a server;
//! `Connection: close` is added when the client connection ends after this response. Bodies pass through byte for
//! byte, chunked ones included — except one the pod ends by closing, which a keep-alive client gets re-chunked.

/// Largest response head accepted from an upstream (Pingora's limit).
pub const MAX_HEAD: usize = 1024 * 1024;

/// Most response header lines accepted (Pingora's limit).
pub const MAX_HEADERS: usize = 256;

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD request, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Length of the head in the upstream's bytes.
    pub head_len: usize,
    /// How the body ends.
    pub framing: Framing,
    /// An informational (1xx) response: another head follows.
    pub interim: bool,
    /// The upstream connection can take another request once this body is read.
    pub upstream_reusable: bool,
    /// The client connection ends after this response.
    pub close_client: bool,
    /// A body delimited by the pod's close, sent to the client in chunks ([`chunk`], then [`LAST_CHUNK`]) so the
    /// client's connection stays open for its next request.
    pub rechunk: bool,
}

/// The chunk ending a body re-chunked for the client.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `data` to `out` as one chunk of a chunked body (nothing for no data: an empty chunk would end it).
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut digits = [0u8; 16];
    let mut n = data.len();
    let mut i = digits.len();
    while n > 0 {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// An upstream response the proxy cannot pass on (answered with 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream response: {0}")]
pub struct BadResponse(pub &'static str);

/// What the client side asks of the response.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The request was HEAD (the response has no body whatever its headers say).
    pub head_request: bool,
    /// Close the client connection after this response (client asked, or the proxy is shutting down).
    pub close: bool,
    /// Headers to set (replacing upstream headers of the same name), names as configured.
    pub set: &'a [(Box<str>, http::HeaderValue)],
    /// A `Set-Cookie` value to add (the session affinity cookie).
    pub cookie: Option<&'a str>,
}

/// Parses the response head at the start of `buf` and writes the client's head into `out`. `Ok(None)`: incomplete.
pub fn relay_head(buf: &[u8], client: &Client<'_>, out: &mut Vec<u8>) -> Result<Option<Response>, BadResponse> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let mut config = httparse::ParserConfig::default();
    // `Name : value` is tolerated as Pingora does (the name is written back without the space); obs-fold is not
    config.allow_spaces_after_header_name_in_responses(true);
    let head_len = match config.parse_response(&mut resp, buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(BadResponse("head too large")),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse("malformed head")),
    };
    let status = resp.code.ok_or(BadResponse("no status"))?;
    if status < 100 {
        // three digits, but no status (`000`): Pingora's path refuses it as well (found by the fuzz target)
        return Err(BadResponse("status code below 100"));
    }
    if status == 101 {
        return Err(BadResponse("101 Switching Protocols to a request without Upgrade"));
    }
    let interim = (100..200).contains(&status);
    let http11 = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let (mut said_close, mut said_keep_alive) = (false, false);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = super::request::content_length(h.value).ok_or(BadResponse("bad Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(BadResponse("conflicting Content-Length"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // chunked must be the last coding; anything else is delimited by close (RFC 9112 §6.3)
            let last = h.value.rsplit(|b| *b == b',').next().map(<[u8]>::trim_ascii).unwrap_or_default();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                said_close |= token.eq_ignore_ascii_case(b"close");
                said_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let upstream_close = said_close || (!http11 && !said_keep_alive);
    let framing = if interim || client.head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    // a response with both Content-Length and Transfer-Encoding may be an attack on the connection: use it once
    let upstream_reusable =
        !upstream_close && framing != Framing::UntilClose && !(chunked.is_some() && length.is_some());
    // a body that ends with the pod's close goes to a keep-alive client in chunks (its connection stays); one under
    // a transfer coding other than chunked is passed as it is, and ends the client's connection
    let rechunk = framing == Framing::UntilClose && chunked.is_none() && !client.close;
    let close_client = client.close || (framing == Framing::UntilClose && !rechunk);

    out.extend_from_slice(b"HTTP/1.1 ");
    let mut digits = [0u8; 8];
    out.extend_from_slice(crate::decide::forward::format_u64(u64::from(status), &mut digits));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut has_server, mut has_date) = (false, false);
    for h in resp.headers.iter() {
        let hop = ["connection", "keep-alive", "proxy-connection"].iter().any(|n| h.name.eq_ignore_ascii_case(n));
        let dropped_length = chunked.is_some() && h.name.eq_ignore_ascii_case("content-length");
        let replaced = !interim && client.set.iter().any(|(n, _)| h.name.eq_ignore_ascii_case(n));
        if hop || dropped_length || replaced {
            continue;
        }
        has_server |= h.name.eq_ignore_ascii_case("server");
        has_date |= h.name.eq_ignore_ascii_case("date");
        push_header(out, h.name.as_bytes(), h.value);
    }
    if !interim {
        // the order Pingora's path writes them in: framing, the route's headers, the cookie, the ingress's name,
        // then the date and the connection's fate
        if rechunk {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        for (name, value) in client.set {
            has_server |= name.eq_ignore_ascii_case("server");
            push_header(out, name.as_bytes(), value.as_bytes());
        }
        if let Some(cookie) = client.cookie {
            push_header(out, b"Set-Cookie", cookie.as_bytes());
        }
        if !has_server {
            push_header(out, b"Server", crate::proxy::headers::SERVER.as_bytes());
        }
        if !has_date {
            push_header(out, b"Date", date().as_bytes());
        }
        connection(out, close_client);
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response { status, head_len, framing, interim, upstream_reusable, close_client, rechunk }))
}

/// The `Date` of a response now: Pingora's per-thread cache, formatted once a second (RFC 9110 §6.6.1: a proxy
/// adds one to a response that has none).
fn date() -> http::HeaderValue {
    pingora::protocols::http::date::get_cached_date()
}

/// `Connection: close` when the client connection ends after this response, else `keep-alive` (as nginx and
/// Pingora's path say it).
fn connection(out: &mut Vec<u8>, close: bool) {
    out.extend_from_slice(if close { b"Connection: close\r\n" } else { b"Connection: keep-alive\r\n" });
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A response the ingress writes itself (404, 503, redirects, limits): one buffer, head and body (no body bytes
/// for a HEAD request: its `Content-Length` is the one a GET would get).
pub fn answer(out: &mut Vec<u8>, status: u16, location: Option<&str>, body: &str, close: bool, head_request: bool) {
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut digits = [0u8; 20];
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(crate::decide::forward::format_u64(u64::from(status), &mut digits));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(l) = location {
        push_header(out, b"Location", l.as_bytes());
    }
    push_header(out, b"Server", crate::proxy::headers::SERVER.as_bytes());
    push_header(out, b"Content-Type", b"text/plain; charset=utf-8");
    push_header(out, b"Content-Length", crate::decide::forward::format_u64(body.len() as u64, &mut digits));
    push_header(out, b"Date", date().as_bytes());
    connection(out, close);
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Client<'static> = Client { head_request: false, close: false, set: &[], cookie: None };

    fn relay(raw: &str, client: &Client<'_>) -> (Response, String) {
        let mut out = Vec::new();
        let r = relay_head(raw.as_bytes(), client, &mut out).expect("valid").expect("complete");
        (r, undated(String::from_utf8(out).expect("ascii")))
    }

    /// The head with the ingress's `Date` value (checked to be an IMF-fixdate of now) replaced by `D`.
    fn undated(head: String) -> String {
        let Some(at) = head.find("\r\nDate: ") else { return head };
        let value = &head[at + 8..at + 8 + 29];
        let parsed = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(value);
        let age = jiff::Timestamp::now().duration_since(parsed.expect("an IMF-fixdate"));
        assert!(age.as_secs().abs() <= 5, "the Date is now: {value}");
        format!("{}\r\nDate: D{}", &head[..at], &head[at + 8 + 29..])
    }

    #[test]
    fn a_keep_alive_response_passes_without_hop_by_hop_headers() {
        let (r, out) =
            relay("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\nX-A: b\r\n\r\nok\n", &PLAIN);
        assert_eq!(r.framing, Framing::Length(3));
        assert!(r.upstream_reusable && !r.close_client && !r.interim);
        assert_eq!(r.head_len, 69);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\nServer: skiff\r\nDate: D\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn the_ingress_names_itself_only_where_the_pod_did_not() {
        let pods =
            "HTTP/1.1 200 OK\r\nServer: gunicorn\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nContent-Length: 0\r\n\r\n";
        let mut own = Vec::new();
        relay_head(pods.as_bytes(), &PLAIN, &mut own).expect("valid");
        let own = String::from_utf8(own).expect("ascii");
        assert_eq!(own, format!("{}Connection: keep-alive\r\n\r\n", &pods[..pods.len() - 2]), "the pod's own are kept");
        let set = [("Server".into(), http::HeaderValue::from_static("edge"))];
        let (_, routed) = relay("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &Client { set: &set, ..PLAIN });
        assert_eq!(
            routed, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nServer: edge\r\nDate: D\r\nConnection: keep-alive\r\n\r\n",
            "a route's wins, once"
        );
        let (_, sticky) =
            relay("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &Client { cookie: Some("S=1; Path=/"), ..PLAIN });
        assert!(sticky.contains("\r\nSet-Cookie: S=1; Path=/\r\nServer: skiff\r\n"), "{sticky}");
        let (_, interim) = relay("HTTP/1.1 100 Continue\r\n\r\n", &PLAIN);
        assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n", "interim responses carry none");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", PLAIN, Framing::Chunked, true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", PLAIN, Framing::Chunked, true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", PLAIN, Framing::UntilClose, false),
            ("HTTP/1.1 200 OK\r\n\r\n", PLAIN, Framing::UntilClose, false),
            ("HTTP/1.1 204 No Content\r\n\r\n", PLAIN, Framing::Empty, true),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", PLAIN, Framing::Empty, true),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                Client { head_request: true, ..PLAIN },
                Framing::Empty,
                true,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n", PLAIN, Framing::Length(1), false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", PLAIN, Framing::Length(1), false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n", PLAIN, Framing::Length(1), true),
        ];
        for (raw, client, framing, reusable) in cases {
            let (r, _) = relay(raw, &client);
            assert_eq!((r.framing, r.upstream_reusable), (framing, reusable), "{raw:?}");
        }
    }

    #[test]
    fn content_length_next_to_chunked_is_dropped_and_the_connection_not_reused() {
        let (r, out) = relay("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", &PLAIN);
        assert_eq!(r.framing, Framing::Chunked);
        assert!(!r.upstream_reusable);
        assert!(!out.contains("Content-Length"), "{out}");
    }

    #[test]
    fn close_delimited_bodies_are_rechunked_for_keep_alive_clients() {
        let (r, out) = relay("HTTP/1.1 200 OK\r\n\r\n", &PLAIN);
        assert!(r.rechunk && !r.close_client && !r.upstream_reusable);
        assert!(out.contains("\r\nTransfer-Encoding: chunked\r\nServer: skiff\r\n"), "{out}");
        assert!(out.ends_with("Connection: keep-alive\r\n\r\n"), "{out}");
        // the client closes anyway: passed as it is
        let (r, out) = relay("HTTP/1.1 200 OK\r\n\r\n", &Client { close: true, ..PLAIN });
        assert!(!r.rechunk && r.close_client);
        assert!(out.ends_with("Connection: close\r\n\r\n"), "{out}");
        // a transfer coding other than chunked: passed as it is, and the client's connection ends with the body
        let (r, out) = relay("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", &PLAIN);
        assert!(!r.rechunk && r.close_client);
        assert!(out.contains("Transfer-Encoding: gzip\r\n") && out.ends_with("Connection: close\r\n\r\n"), "{out}");
        let (r, _) = relay("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &Client { close: true, ..PLAIN });
        assert!(r.close_client && !r.rechunk);
    }

    #[test]
    fn chunks_are_sized_in_hex_and_never_empty() {
        let mut out = Vec::new();
        chunk(&mut out, b"");
        chunk(&mut out, &[b'a'; 26]);
        chunk(&mut out, b"b");
        out.extend_from_slice(LAST_CHUNK);
        let mut expected = b"1a\r\n".to_vec();
        expected.extend_from_slice(&[b'a'; 26]);
        expected.extend_from_slice(b"\r\n1\r\nb\r\n0\r\n\r\n");
        assert_eq!(out, expected);
        // and a chunk parser reads them back
        let mut parser = super::super::chunked::Chunked::new();
        assert_eq!(parser.feed(&out).expect("valid"), out.len());
        assert!(parser.is_done());
    }

    #[test]
    fn route_headers_replace_upstream_ones() {
        let set = [("X-Frame-Options".into(), http::HeaderValue::from_static("DENY"))];
        let client = Client { set: &set, ..PLAIN };
        let (_, out) = relay("HTTP/1.1 200 OK\r\nx-frame-options: ALLOW\r\nContent-Length: 0\r\n\r\n", &client);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Frame-Options: DENY\r\nServer: skiff\r\nDate: D\r\n\
             Connection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn interim_responses_are_passed_and_another_head_follows() {
        let (r, out) = relay("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", &PLAIN);
        assert!(r.interim);
        assert_eq!(r.framing, Framing::Empty);
        assert_eq!(out, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n");
    }

    #[test]
    fn bad_responses_are_errors_and_partial_ones_wait() {
        let mut out = Vec::new();
        assert_eq!(relay_head(b"HTTP/1.1 200 OK\r\nContent-Le", &PLAIN, &mut out), Ok(None));
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 000\n\r\n",
            "HTTP/1.1 099 Nearly\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(relay_head(raw.as_bytes(), &PLAIN, &mut out).is_err(), "{raw:?}");
        }
        let (_, spaced) = relay("HTTP/1.1 200 OK\r\nX-Spaced : 1\r\nContent-Length: 0\r\n\r\n", &PLAIN);
        assert!(spaced.contains("\r\nX-Spaced: 1\r\n"), "{spaced}");
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(relay_head(huge.as_bytes(), &PLAIN, &mut out).is_err());
    }

    #[test]
    fn answers_are_complete_responses() {
        let mut out = Vec::new();
        answer(&mut out, 308, Some("https://a/"), "", false, false);
        assert_eq!(
            undated(String::from_utf8(out).expect("ascii")),
            "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://a/\r\nServer: skiff\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 0\r\nDate: D\r\nConnection: keep-alive\r\n\r\n"
        );
        let mut out = Vec::new();
        answer(&mut out, 404, None, "not here\n", true, true);
        assert_eq!(
            undated(String::from_utf8(out).expect("ascii")),
            "HTTP/1.1 404 Not Found\r\nServer: skiff\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 9\r\nDate: D\r\nConnection: close\r\n\r\n",
            "no body after a HEAD request"
        );
    }
}

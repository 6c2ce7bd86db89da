//! Request headers: the host a request is for, what is added on the way upstream, and labels; and what the ingress
//! says of itself in answers (`Server`, the failure bodies), the same on both request paths.
//!
//! What is added on the way upstream is the decision core's [`Forwarding`], written here into Pingora's head.

use std::borrow::Cow;

use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::compile::annotations::BackendProtocol;
use crate::decide::forward::Forwarding;
use crate::table::random;

/// The `Server` header of every answer the ingress gives itself, and of proxied responses whose pod sent none (as
/// nginx and Envoy add theirs).
pub const SERVER: &str = "skiff";

/// The plain-text body of an answer to a request the ingress could not proxy: the status and its reason, lower
/// case (`502 bad gateway`, `504 gateway timeout`, `413 request entity too large`, …).
pub fn failure_body(status: u16) -> String {
    let reason = match status {
        413 => "request entity too large", // nginx's wording, as the answer to a declared length says
        _ => http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("error"),
    };
    format!("{status} {}\n", reason.to_ascii_lowercase())
}

/// The request's host, lower case, without port: the `Host` header, or the URI authority (HTTP/2).
pub fn request_host(req: &RequestHeader) -> Option<Cow<'_, str>> {
    let raw = match req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()) {
        Some(h) => h,
        None => req.uri.authority()?.as_str(),
    };
    Some(host_key(raw))
}

/// The host of a raw `Host` value: lower case, without port or trailing dot (the routing table's key).
pub fn host_key(raw: &str) -> Cow<'_, str> {
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(h, _)| h),
        None => raw.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(raw, |(h, _)| h),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The client's `X-Request-ID`, or a new random one ([`new_request_id`]).
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(v) = req.headers.get("x-request-id").filter(|v| !v.is_empty() && v.len() <= 200) {
        return v.clone();
    }
    let mut buf = [0u8; 32];
    HeaderValue::from_str(new_request_id(&mut buf)).expect("hex digits are a valid header value")
}

/// A new random request id: 32 hexadecimal digits (ingress-nginx `$req_id`), written into `buf`.
pub fn new_request_id(buf: &mut [u8; 32]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (a, b) = (random(), random());
    for (i, byte) in a.to_be_bytes().iter().chain(b.to_be_bytes().iter()).enumerate() {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 15)];
    }
    std::str::from_utf8(buf).expect("hex digits are ASCII")
}

/// Applies the rewrite and the forwarding edits ([`Forwarding`]) to the head Pingora sends upstream.
pub fn forward(session: &Session, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
    if let Some(uri) = ctx.rewritten.take() {
        up.set_uri(uri);
    }
    let req = session.req_header();
    // HTTP/2 names the host in the URI: an HTTP/1.1 pod gets it as Host
    let authority = req.uri.authority().map(|a| a.as_str().as_bytes());
    let host = req.headers.get(http::header::HOST).map(HeaderValue::as_bytes).or(authority).unwrap_or_default();
    let fwd = Forwarding {
        client: ctx.client,
        tls: ctx.tls,
        port: session.server_addr().and_then(|a| a.as_inet()).map(|a| a.port()),
        host,
        request_id: ctx.request_id.as_ref().map(HeaderValue::as_bytes).unwrap_or_default(),
        vhost: ctx.route.as_ref().and_then(|r| r.policy.upstream_vhost.as_ref()).map(HeaderValue::as_bytes),
    };
    for name in fwd.dropped() {
        up.remove_header(name);
    }
    if up.headers.get(http::header::HOST).is_none() && fwd.vhost.is_none() && !host.is_empty() {
        up.append_header(http::header::HOST, host)?;
    }
    let mut added = Ok(());
    fwd.each(|name, value| {
        if added.is_ok() {
            added = up.append_header(name, value).map(drop);
        }
    });
    added?;
    // gRPC needs the client's `te: trailers` at the pod (HTTP/2 allows that one value of a hop-by-hop header);
    // Pingora strips it before this phase, so it is put back
    let grpc =
        ctx.route.as_ref().is_some_and(|r| matches!(r.policy.protocol, BackendProtocol::Grpc | BackendProtocol::Grpcs));
    if grpc && req.headers.get(http::header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        up.insert_header(http::header::TE, "trailers")?;
    }
    Ok(())
}

/// The protocol as access logs write it.
pub fn version_label(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

/// A bounded label for the request method.
pub fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, uri: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).expect("request");
        if let Some(h) = host {
            r.insert_header("Host", h).expect("host");
        }
        r
    }

    #[test]
    fn the_host_loses_its_port_and_case() {
        assert_eq!(request_host(&req(Some("Example.COM:8080"), "/")).as_deref(), Some("example.com"));
        assert_eq!(request_host(&req(Some("[::1]:80"), "/")).as_deref(), Some("::1"));
        assert_eq!(request_host(&req(Some("a.example.com."), "/")).as_deref(), Some("a.example.com"));
        let mut h2 = req(None, "/x");
        h2.set_uri("https://h2.example.com/x".parse().expect("uri"));
        assert_eq!(request_host(&h2).as_deref(), Some("h2.example.com"));
        assert!(request_host(&req(None, "/")).is_none());
    }

    #[test]
    fn request_ids_are_kept_or_generated_fresh() {
        let mut r = req(Some("a"), "/");
        let a = request_id(&r);
        assert_eq!(a.len(), 32);
        assert_ne!(a, request_id(&r));
        r.insert_header("X-Request-ID", "abc").expect("header");
        assert_eq!(request_id(&r), "abc");
    }

    #[test]
    fn failure_bodies_name_their_status() {
        assert_eq!(failure_body(502), "502 bad gateway\n");
        assert_eq!(failure_body(504), "504 gateway timeout\n");
        assert_eq!(failure_body(413), "413 request entity too large\n");
        assert_eq!(failure_body(599), "599 error\n");
    }
}

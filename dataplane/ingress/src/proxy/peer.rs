//! Choosing the endpoint of an attempt and describing it to Pingora.
//!
//! The Pingora connection pool is keyed by the peer (address, TLS, SNI, ALPN), so keep-alive connections to a pod
//! are reused across requests and across table generations; connections to pods that left the table are simply
//! never asked for again and expire idle.

use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

use super::admission::cookie;
use super::ctx::RequestCtx;
use crate::compile::annotations::BackendProtocol;
use crate::table::now_ns;

/// How long an idle upstream connection stays in the keep-alive pool.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// Picks the endpoint for this attempt and builds its peer.
pub fn select(session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let (Some(route), Some(backend)) = (&ctx.route, &ctx.backend) else {
        return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
    };
    let Some(pool) = backend.pool() else {
        return Error::e_explain(ErrorType::HTTPStatus(503), "backend has no endpoints");
    };
    let now = now_ns();
    let policy = &route.policy;
    let pinned = match (&policy.affinity, ctx.tried.is_empty()) {
        (Some(a), true) => cookie(&session.req_header().headers, &a.name).and_then(|v| pool.by_cookie(v, now)),
        _ => None,
    };
    let endpoint = match pinned {
        Some(e) => e,
        None => {
            let Some(e) = pool.pick(&ctx.tried, now) else {
                return Error::e_explain(ErrorType::ConnectNoRoute, "every endpoint failed to connect");
            };
            if let Some(a) = &policy.affinity {
                let mut cookie = format!("{}={}; Path={}; HttpOnly", a.name, e.cookie, a.path);
                if let Some(age) = a.max_age {
                    cookie.push_str(&format!("; Max-Age={age}"));
                }
                if ctx.tls {
                    cookie.push_str("; Secure");
                }
                ctx.set_cookie = HeaderValue::from_str(&cookie).ok();
            }
            e
        }
    };
    endpoint.stats.start();
    let addr = endpoint.addr;
    ctx.endpoint = Some(endpoint.clone());
    ctx.upstream_start = Some(Instant::now());
    let tls = matches!(policy.protocol, BackendProtocol::Https | BackendProtocol::Grpcs);
    let mut peer = HttpPeer::new(addr, tls, String::new());
    let o = &mut peer.options;
    o.connection_timeout = Some(policy.connect_timeout);
    o.read_timeout = Some(policy.read_timeout);
    o.write_timeout = Some(policy.send_timeout);
    o.idle_timeout = Some(UPSTREAM_IDLE);
    o.verify_cert = false;
    o.verify_hostname = false;
    o.alpn = match policy.protocol {
        BackendProtocol::Grpc | BackendProtocol::Grpcs => ALPN::H2,
        BackendProtocol::Https => ALPN::H2H1,
        BackendProtocol::Http => ALPN::H1,
    };
    Ok(Box::new(peer))
}

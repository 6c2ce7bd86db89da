//! Choosing the endpoint of an attempt and describing it to Pingora.
//!
//! The Pingora connection pool is keyed by the peer (address, TLS, SNI, ALPN), so keep-alive connections to a pod
//! are reused across requests and across table generations; connections to pods that left the table are simply
//! never asked for again and expire idle.

use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use super::ctx::RequestCtx;
use crate::compile::annotations::BackendProtocol;
use crate::decide::pick;
use crate::table::now_ns;

/// How long an idle upstream connection stays in the keep-alive pool.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// Picks the endpoint for this attempt and builds its peer.
pub fn select(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let (Some(route), Some(backend)) = (&ctx.route, &ctx.backend) else {
        return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
    };
    let Some(pool) = backend.pool() else {
        return Error::e_explain(ErrorType::HTTPStatus(503), "backend has no endpoints");
    };
    let policy = &route.policy;
    let pinned = ctx.pinned.as_ref();
    let Some(picked) = pick(pool, policy.affinity.as_ref(), pinned, &ctx.tried, ctx.tls, now_ns()) else {
        return Error::e_explain(ErrorType::ConnectNoRoute, "every endpoint failed to connect");
    };
    if let Some(cookie) = picked.set_cookie {
        ctx.set_cookie = HeaderValue::from_str(&cookie).ok();
    }
    let endpoint = picked.endpoint;
    endpoint.stats.start();
    let addr = endpoint.addr;
    ctx.endpoint = Some(endpoint.clone());
    ctx.upstream_start = Some(Instant::now());
    let tls = matches!(policy.protocol, BackendProtocol::Https | BackendProtocol::Grpcs);
    // Pingora's TLS connector needs a server name to start a handshake (an empty one failed every connection,
    // answering 502): the pod's address, for which rustls sends no SNI (ingress-nginx's `proxy-ssl-server-name:
    // off`); the certificate is not verified (`proxy-ssl-verify: off`)
    let sni = if tls { addr.ip().to_string() } else { String::new() };
    let mut peer = HttpPeer::new(addr, tls, sni);
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

//! Which transport carries a route's requests, decided by the compiler from everything the route asks for.
//!
//! Every field of [`Route`] and [`Policy`] is named below, without `..`: a new policy field does not compile until
//! someone decides whether the fast path carries it out.

use crate::compile::annotations::BackendProtocol;
use crate::table::{Canary, Policy, Route};

/// Whether the fast path ([`crate::fast`]) carries out every policy of `route`; otherwise its requests go to
/// Pingora's phases.
pub fn fast_path_takes(route: &Route) -> bool {
    let Route { path: _, labels: _, backend: _, canary, policy, rewrite: _, handles: _, fast: _ } = route;
    // the decision core chooses the canary; the fast path sends to it like to the main backend
    if let Some(Canary { backend: _, labels: _, spec: _, handles: _ }) = canary {}
    let Policy {
        // answers of the decision core, written by either transport
        ssl_redirect: _,
        force_ssl_redirect: _,
        redirect: _,
        app_root: _,
        allow: _,
        rate: _,
        conns: _,
        max_body_bytes: _,
        // carried out by the fast path's exchange: timeouts, the endpoint an affinity cookie pins (and the cookie
        // naming a new one), head edits
        connect_timeout: _,
        read_timeout: _,
        send_timeout: _,
        affinity: _,
        response_headers: _,
        upstream_vhost: _,
        // the fast path speaks HTTP/1.1 to pods, plain or over TLS; HTTP/2 to pods (gRPC) is Pingora's
        protocol,
    } = &**policy;
    matches!(protocol, BackendProtocol::Http | BackendProtocol::Https)
}

//! The decision core: what the ingress does with a request, as a function of the routing table and the facts of the
//! request. Both transports — the fast path ([`crate::fast`]) and Pingora's phases ([`crate::proxy`]) — only carry
//! a [`Decision`] out, so every policy is written once and both apply it alike.
//!
//! The order is ingress-nginx's: route lookup (404), allowlist (403), `permanent-redirect`/`temporal-redirect`,
//! HTTPS redirect (308), `app-root` (302); then the backend choice (canary by header, cookie or weight), the declared
//! body size (413), rate and connection limits (503), and a backend without endpoints (503). A request that is
//! proxied gets a [`Plan`]: the backend, the endpoint an affinity cookie pins, the `rewrite-target` path, and the
//! connection-limit slot held while it runs. The head edits are [`forward::Forwarding`] (upstream) and the route's
//! response headers plus the affinity cookie of [`pick`] (client).
//!
//! Only the limiters' counters change as a decision is made; randomness (the canary weight) and time come in as
//! facts, so a decision is repeatable in tests.

pub mod forward;
pub mod headers;
pub mod transport;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

pub use self::headers::RequestHeaders;
use crate::compile::annotations::Affinity;
use crate::compile::policy::rewrite;
use crate::runtime::metrics::RouteHandles;
use crate::table::{Backend, Canary, Endpoint, Lookup, Pool, Route, RouteLabels, RouteTable, Slot};

/// A response the ingress writes itself instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Location` header for redirects.
    pub location: Option<String>,
    /// Plain-text body.
    pub body: String,
}

impl Answer {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Answer { status, location: None, body: body.into() }
    }

    fn redirect(status: u16, location: String) -> Self {
        Answer { status, location: Some(location), body: String::new() }
    }
}

/// Facts about a request that the rules look at.
#[derive(Debug)]
pub struct Facts<'a, H: ?Sized> {
    /// Host without port, lower case (the table's key).
    pub host: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Query string without `?`, if any.
    pub query: Option<&'a str>,
    /// Whether it arrived over TLS.
    pub tls: bool,
    /// Client address.
    pub client: Option<IpAddr>,
    /// Port clients use for HTTPS, for redirect locations.
    pub https_port: Option<u16>,
    /// The body length the request declares (`Content-Length`), if it does.
    pub content_length: Option<u64>,
    /// The request headers (canary header and cookie, affinity cookie).
    pub headers: &'a H,
    /// A random number (the canary weight's roll).
    pub roll: u64,
    /// Now, in [`crate::table::now_ns`]'s clock (rate limits, endpoint ejection).
    pub now_ns: u64,
}

/// The route (and which of its backends) a request was decided for.
#[derive(Debug, Clone, Copy)]
pub struct Chosen<'t> {
    /// The matched route.
    pub route: &'t Arc<Route>,
    /// Its canary backend was chosen.
    pub canary: bool,
}

impl<'t> Chosen<'t> {
    fn canary(&self) -> Option<&'t Canary> {
        self.route.canary.as_ref().filter(|_| self.canary)
    }

    /// The backend requests go to.
    pub fn backend(&self) -> &'t Arc<Backend> {
        self.canary().map_or(&self.route.backend, |c| &c.backend)
    }

    /// Metric labels and access-log fields: the canary Ingress's when the canary was chosen.
    pub fn labels(&self) -> &'t Arc<RouteLabels> {
        self.canary().map_or(&self.route.labels, |c| &c.labels)
    }

    /// The metric handles of [`Self::labels`].
    pub fn handles(&self) -> &'t OnceLock<RouteHandles> {
        self.canary().map_or(&self.route.handles, |c| &c.handles)
    }
}

/// What to do with a request.
#[derive(Debug)]
pub enum Decision<'t> {
    /// Write this answer; `route` is the route it was decided for, if one matched (metrics and logs name it).
    Answer {
        /// The answer.
        answer: Answer,
        /// The route.
        route: Option<Chosen<'t>>,
    },
    /// Proxy the request.
    Proxy(Plan<'t>),
}

/// How to proxy a request.
#[derive(Debug)]
pub struct Plan<'t> {
    /// Route and backend.
    pub chosen: Chosen<'t>,
    /// The endpoint named by the request's affinity cookie (first attempt only; ejected endpoints are not pinned).
    pub pinned: Option<&'t Arc<Endpoint>>,
    /// The path and query sent upstream instead of the client's (`rewrite-target`).
    pub target: Option<String>,
    /// The `limit-connections` slot, released when dropped.
    pub slot: Option<Slot>,
}

/// Decides what to do with a request.
pub fn decide<'t, H: RequestHeaders + ?Sized>(table: &'t RouteTable, facts: &Facts<'_, H>) -> Decision<'t> {
    decide_found(table.lookup(facts.host, facts.path), facts)
}

/// [`decide`] for a route already looked up (the fast path looks first, to hand routes it does not carry to
/// Pingora before any limit counts the request).
pub fn decide_found<'t, H: RequestHeaders + ?Sized>(found: Lookup<'t>, facts: &Facts<'_, H>) -> Decision<'t> {
    let Some(route) = found.route else {
        let answer = Answer::text(404, "404 page not found: no Ingress rule matches this host and path\n");
        return Decision::Answer { answer, route: None };
    };
    let answered = |answer, chosen| Decision::Answer { answer, route: Some(chosen) };
    if let Err(answer) = admit(route, found.tls, facts) {
        return answered(answer, Chosen { route, canary: false });
    }
    let chosen = Chosen { route, canary: route.canary.as_ref().is_some_and(|c| wants_canary(c, facts)) };
    let policy = &route.policy;
    if let (Some(max), Some(len)) = (policy.max_body_bytes, facts.content_length)
        && len > max
    {
        return answered(Answer::text(413, crate::proxy::headers::failure_body(413)), chosen);
    }
    let target = route.rewrite.as_ref().and_then(|(re, target)| {
        let path = rewrite(re, target, facts.path)?;
        Some(match facts.query {
            Some(q) if path.contains('?') => format!("{path}&{q}"),
            Some(q) => format!("{path}?{q}"),
            None => path,
        })
    });
    let slot = match limit(route, facts) {
        Ok(slot) => slot,
        Err(answer) => return answered(answer, chosen),
    };
    let backend = chosen.backend();
    let Some(pool) = backend.pool() else {
        let body = format!("503 service unavailable: {}\n", backend.unavailable_reason());
        return answered(Answer::text(503, body), chosen);
    };
    let pinned = policy
        .affinity
        .as_ref()
        .and_then(|a| facts.headers.cookie(&a.name))
        .and_then(|v| pool.by_cookie(v, facts.now_ns));
    Decision::Proxy(Plan { chosen, pinned, target, slot })
}

/// The access rules and redirects: `Err` is the answer.
fn admit<H: RequestHeaders + ?Sized>(route: &Route, host_tls: bool, req: &Facts<'_, H>) -> Result<(), Answer> {
    let policy = &route.policy;
    if let Some(allow) = &policy.allow {
        if allow.is_empty() {
            return Err(Answer::text(
                403,
                "403 forbidden: the route's whitelist-source-range is invalid; no client is allowed\n",
            ));
        }
        if !req.client.is_some_and(|ip| allow.iter().any(|net| net.contains(&ip))) {
            return Err(Answer::text(403, "403 forbidden: client address not allowed by whitelist-source-range\n"));
        }
    }
    if let Some(r) = &policy.redirect {
        return Err(Answer::redirect(r.code, r.url.clone()));
    }
    if !req.tls && (policy.force_ssl_redirect || (host_tls && policy.ssl_redirect)) {
        let port = match req.https_port {
            Some(443) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let query = req.query.map(|q| format!("?{q}")).unwrap_or_default();
        return Err(Answer::redirect(308, format!("https://{}{port}{}{query}", req.host, req.path)));
    }
    if let Some(root) = &policy.app_root
        && req.path == "/"
    {
        return Err(Answer::redirect(302, root.to_string()));
    }
    Ok(())
}

/// Whether the canary takes the request: its header, then its cookie, then its weight — and only when it has
/// endpoints (ingress-nginx falls back to the main backend).
fn wants_canary<H: RequestHeaders + ?Sized>(c: &Canary, facts: &Facts<'_, H>) -> bool {
    if c.backend.pool().is_none() {
        return false;
    }
    if let Some(name) = &c.spec.header
        && let Some(v) = facts.headers.value(name)
    {
        match &c.spec.header_value {
            Some(want) if v == want => return true,
            Some(_) => {}
            None if v == "always" => return true,
            None if v == "never" => return false,
            None => {}
        }
    }
    if let Some(name) = &c.spec.cookie {
        match facts.headers.cookie(name) {
            Some("always") => return true,
            Some("never") => return false,
            _ => {}
        }
    }
    c.spec.weight > 0 && (facts.roll % u64::from(c.spec.weight_total.max(1))) < u64::from(c.spec.weight)
}

/// The rate and connection limits; on success, the connection slot to hold while the request runs.
fn limit<H: RequestHeaders + ?Sized>(route: &Route, facts: &Facts<'_, H>) -> Result<Option<Slot>, Answer> {
    let Some(ip) = facts.client else { return Ok(None) };
    if let Some(rate) = &route.policy.rate
        && !rate.allow(ip, facts.now_ns)
    {
        return Err(Answer::text(
            503,
            "503 service temporarily unavailable: request rate limit (limit-rps) exceeded\n",
        ));
    }
    match &route.policy.conns {
        Some(conns) => match conns.hold(ip) {
            Some(slot) => Ok(Some(slot)),
            None => Err(Answer::text(
                503,
                "503 service temporarily unavailable: concurrent request limit (limit-connections) exceeded\n",
            )),
        },
        None => Ok(None),
    }
}

/// The endpoint of one attempt and, with session affinity, the `Set-Cookie` value naming it when it was chosen
/// anew.
#[derive(Debug)]
pub struct Picked<'p> {
    /// The endpoint.
    pub endpoint: &'p Arc<Endpoint>,
    /// The affinity cookie for the response (none when the request's cookie pinned the endpoint).
    pub set_cookie: Option<String>,
}

/// Picks the endpoint of an attempt: the pinned one on the first attempt, otherwise the pool's choice (skipping
/// `tried` and ejected endpoints).
pub fn pick<'p>(
    pool: &'p Pool,
    affinity: Option<&Affinity>,
    pinned: Option<&'p Arc<Endpoint>>,
    tried: &[SocketAddr],
    tls: bool,
    now_ns: u64,
) -> Option<Picked<'p>> {
    if let Some(endpoint) = pinned.filter(|_| tried.is_empty()) {
        return Some(Picked { endpoint, set_cookie: None });
    }
    let endpoint = pool.pick(tried, now_ns)?;
    let set_cookie = affinity.map(|a| {
        let mut cookie = format!("{}={}; Path={}; HttpOnly", a.name, endpoint.cookie, a.path);
        if let Some(age) = a.max_age {
            cookie.push_str(&format!("; Max-Age={age}"));
        }
        if tls {
            cookie.push_str("; Secure");
        }
        cookie
    });
    Some(Picked { endpoint, set_cookie })
}

#[cfg(test)]
mod tests;

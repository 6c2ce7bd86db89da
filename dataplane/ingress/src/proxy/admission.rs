//! What to do with a request before it goes upstream: the ingress-nginx access rules, redirects and limits, and
//! the choice between the main and the canary backend. Pure functions of the route and the request.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::table::{Backend, Canary, Lookup, Route, now_ns, random};

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
    fn text(status: u16, body: impl Into<String>) -> Self {
        Answer { status, location: None, body: body.into() }
    }

    fn redirect(status: u16, location: String) -> Self {
        Answer { status, location: Some(location), body: String::new() }
    }
}

/// Facts about a request that the rules look at.
#[derive(Debug)]
pub struct Request<'a> {
    /// Host without port, lower case.
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
}

/// Applies the route's policy. `Err` is the answer to write; `Ok` means proxy (rate and connection limits are
/// checked by the caller, which must release a connection slot).
pub fn admit(found: &Lookup<'_>, req: &Request<'_>) -> Result<(), Answer> {
    let Some(route) = found.route else {
        return Err(Answer::text(404, "404 page not found: no Ingress rule matches this host and path\n"));
    };
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
    if !req.tls && (policy.force_ssl_redirect || (found.tls && policy.ssl_redirect)) {
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

/// The backend a request goes to: the canary's when its header, cookie or weight says so and it has endpoints.
pub fn choose_backend<'a>(route: &'a Route, headers: &HeaderMap) -> (&'a Arc<Backend>, bool) {
    match &route.canary {
        Some(c) if c.backend.pool().is_some() && wants_canary(c, headers) => (&c.backend, true),
        _ => (&route.backend, false),
    }
}

fn wants_canary(c: &Canary, headers: &HeaderMap) -> bool {
    if let Some(name) = &c.spec.header
        && let Some(v) = headers.get(name.as_str()).and_then(|v| v.to_str().ok())
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
        match cookie(headers, name) {
            Some("always") => return true,
            Some("never") => return false,
            _ => {}
        }
    }
    c.spec.weight > 0 && (random() % u64::from(c.spec.weight_total)) < u64::from(c.spec.weight)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Checks the rate and connection limits; on success returns the connection limiter to release later.
pub fn limit(route: &Route, client: Option<IpAddr>) -> Result<Option<Arc<crate::table::ConnLimiter>>, Answer> {
    let Some(ip) = client else { return Ok(None) };
    if let Some(rate) = &route.policy.rate
        && !rate.allow(ip, now_ns())
    {
        return Err(Answer::text(
            503,
            "503 service temporarily unavailable: request rate limit (limit-rps) exceeded\n",
        ));
    }
    match &route.policy.conns {
        Some(conns) if !conns.acquire(ip) => Err(Answer::text(
            503,
            "503 service temporarily unavailable: concurrent request limit (limit-connections) exceeded\n",
        )),
        Some(conns) => Ok(Some(conns.clone())),
        None => Ok(None),
    }
}

//! The routing table: what the compiler produces and what every request reads, immutable once built.
//!
//! A request loads one `Arc<RouteTable>` and reads everything from it — hosts, routes, backends, endpoint pools,
//! policies and certificates — so it never sees two generations.

mod certs;
#[cfg(test)]
pub(crate) use self::certs::tests as certs_tests;
mod limits;
mod state;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use regex::Regex;

pub use self::certs::{CertError, CertStore, Certificate};
pub use self::limits::{ConnLimiter, RateLimiter, Slot};
pub use self::state::State;
pub(crate) use self::upstream::random;
pub use self::upstream::{Balance, EJECT_AFTER_FAILURES, EJECTION, Endpoint, EndpointStats, Pool, now_ns};
use crate::compile::annotations::{Affinity, BackendProtocol, CanarySpec, Redirect};
use crate::compile::paths::PathMatch;
use crate::runtime::metrics::RouteHandles;

/// One compiled generation of the whole configuration.
#[derive(Debug)]
pub struct RouteTable {
    /// Increases by one with every table published.
    pub generation: u64,
    pub(crate) exact: HashMap<Box<str>, HostRoutes>,
    pub(crate) wildcard: HashMap<Box<str>, HostRoutes>,
    pub(crate) any_host: Option<HostRoutes>,
    pub(crate) default_backend: Option<Arc<Route>>,
    /// Certificates by SNI.
    pub certs: CertStore,
}

/// The routes of one host (or of the rules without a host).
#[derive(Debug, Default)]
pub struct HostRoutes {
    /// Sorted by precedence: the first that matches wins.
    pub routes: Vec<Arc<Route>>,
    /// The `defaultBackend` of the (oldest) Ingress defining this host, for paths no rule matches.
    pub fallback: Option<Arc<Route>>,
    /// The host is listed in a `tls` section: plain HTTP is redirected to HTTPS unless `ssl-redirect: "false"`.
    pub tls: bool,
}

/// Where a request goes and under which policy.
#[derive(Debug)]
pub struct Route {
    /// How the rule path matches.
    pub path: PathMatch,
    /// Metric labels (and access-log fields) of this route.
    pub labels: Arc<RouteLabels>,
    /// The Service port it sends to.
    pub backend: Arc<Backend>,
    /// An alternative backend from a canary Ingress.
    pub canary: Option<Canary>,
    /// What the annotations ask for.
    pub policy: Arc<Policy>,
    /// `rewrite-target`: the rule path as an anchored regex and the replacement.
    pub rewrite: Option<(Regex, Box<str>)>,
    /// Metric handles of this route, looked up once (on first use) instead of once per request.
    pub handles: OnceLock<RouteHandles>,
    /// The fast path carries every policy of this route ([`crate::decide::transport::fast_path_takes`], set by the
    /// compiler); otherwise its requests go to Pingora's phases.
    pub fast: bool,
}

/// Labels that identify a route in metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RouteLabels {
    /// Namespace of the Ingress.
    pub namespace: String,
    /// Name of the Ingress.
    pub ingress: String,
    /// Rule host (`""` for any host).
    pub host: String,
    /// Rule path.
    pub path: String,
    /// Service name.
    pub service: String,
}

/// A Service port and the pods behind it.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/name` of the Service.
    pub service: Arc<str>,
    /// The port as the Ingress named it (number or name).
    pub port: Box<str>,
    /// Its endpoints, or why there are none.
    pub state: BackendState,
    /// The upstream latency histogram of this Service, looked up once.
    pub upstream_histogram: OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

/// Whether a backend can take requests.
#[derive(Debug)]
pub enum BackendState {
    /// A pool of pod endpoints (possibly empty: answered with 503).
    Pool(Pool),
    /// The Service or port is missing or unusable: 503 with this reason.
    Unavailable(Box<str>),
}

/// A canary backend of a route (ingress-nginx `canary*` annotations on another Ingress).
#[derive(Debug)]
pub struct Canary {
    /// Where canary requests go.
    pub backend: Arc<Backend>,
    /// Labels of the canary Ingress.
    pub labels: Arc<RouteLabels>,
    /// Header name, value, cookie and weight rules.
    pub spec: CanarySpec,
    /// Metric handles of the canary's labels.
    pub handles: OnceLock<RouteHandles>,
}

/// The per-route policy compiled from annotations, with the shared limiter state it needs.
#[derive(Debug)]
pub struct Policy {
    /// Redirect plain HTTP to HTTPS when the host has TLS.
    pub ssl_redirect: bool,
    /// Redirect plain HTTP to HTTPS always.
    pub force_ssl_redirect: bool,
    /// Upstream protocol.
    pub protocol: BackendProtocol,
    /// Largest request body.
    pub max_body_bytes: Option<u64>,
    /// Upstream connect timeout.
    pub connect_timeout: std::time::Duration,
    /// Upstream read timeout.
    pub read_timeout: std::time::Duration,
    /// Upstream write timeout.
    pub send_timeout: std::time::Duration,
    /// Cookie affinity.
    pub affinity: Option<Affinity>,
    /// Requests per second per client.
    pub rate: Option<Arc<RateLimiter>>,
    /// Concurrent requests per client.
    pub conns: Option<Arc<ConnLimiter>>,
    /// Allowed client networks: `None` is everyone, `Some` only these (an empty list is nobody).
    pub allow: Option<Vec<ipnet::IpNet>>,
    /// Redirect every request.
    pub redirect: Option<Redirect>,
    /// Redirect `/` to this path.
    pub app_root: Option<Box<str>>,
    /// Headers added to every final response, replacing the pod's of the same name; names as the ConfigMap
    /// spells them (valid header names, checked by the compiler).
    pub response_headers: Vec<(Box<str>, http::HeaderValue)>,
    /// Host header sent upstream.
    pub upstream_vhost: Option<http::HeaderValue>,
}

/// The result of looking a request up.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// The route to use, if any.
    pub route: Option<&'a Arc<Route>>,
    /// Whether the request's host has TLS configured.
    pub tls: bool,
}

impl RouteTable {
    /// An empty table (everything answers 404) with the given certificates.
    pub fn empty(generation: u64, certs: CertStore) -> Self {
        RouteTable {
            generation,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any_host: None,
            default_backend: None,
            certs,
        }
    }

    /// Finds the route for a host (lower case, no port) and a path (no query).
    ///
    /// The host is matched exactly, then against `*.` wildcards of one label, then against rules without a host; the
    /// first host found decides. Within it the first matching rule wins, then the host's `defaultBackend`, then
    /// the controller-wide default backend.
    pub fn lookup(&self, host: &str, path: &str) -> Lookup<'_> {
        let found = self
            .exact
            .get(host)
            .or_else(|| host.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)))
            .or(self.any_host.as_ref());
        match found {
            Some(h) => Lookup {
                route: h
                    .routes
                    .iter()
                    .find(|r| r.path.matches(path))
                    .or(h.fallback.as_ref())
                    .or(self.default_backend.as_ref()),
                tls: h.tls,
            },
            None => Lookup { route: self.default_backend.as_ref(), tls: false },
        }
    }

    /// Every route of the table, for introspection and tests.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.any_host.iter())
            .flat_map(|h| h.routes.iter().chain(h.fallback.iter()))
            .chain(self.default_backend.iter())
    }

    /// The hosts the table routes, exact and wildcard (`*.example.com`).
    pub fn hosts(&self) -> Vec<String> {
        let mut out: Vec<String> = self.exact.keys().map(|h| h.to_string()).collect();
        out.extend(self.wildcard.keys().map(|h| format!("*.{h}")));
        out.sort();
        out
    }
}

impl Backend {
    /// The pool, if the backend has endpoints to send to.
    pub fn pool(&self) -> Option<&Pool> {
        match &self.state {
            BackendState::Pool(p) if !p.is_empty() => Some(p),
            _ => None,
        }
    }

    /// Why the backend cannot take a request (the 503 body).
    pub fn unavailable_reason(&self) -> String {
        match &self.state {
            BackendState::Pool(_) => format!("no endpoints available for service \"{}\"", self.service),
            BackendState::Unavailable(reason) => reason.to_string(),
        }
    }
}

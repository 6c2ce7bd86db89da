//! State that outlives table generations: per-endpoint counters, per-Ingress limiters, the default certificate.
//!
//! The compiler interns through [`State`] so two generations that name the same endpoint address share one
//! [`EndpointStats`]; entries are held weakly and vanish when no generation refers to them any more.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use super::{Certificate, ConnLimiter, EndpointStats, RateLimiter};

/// Shared, long-lived state the compiler links tables to.
#[derive(Debug)]
pub struct State {
    endpoints: Mutex<HashMap<SocketAddr, Weak<EndpointStats>>>,
    rates: Mutex<HashMap<(String, u32), Weak<RateLimiter>>>,
    conns: Mutex<HashMap<(String, u32), Weak<ConnLimiter>>>,
    /// Served for SNI names no Secret covers.
    pub default_cert: Certificate,
}

impl State {
    /// State with the given default certificate.
    pub fn new(default_cert: Certificate) -> Self {
        State { endpoints: Mutex::default(), rates: Mutex::default(), conns: Mutex::default(), default_cert }
    }

    /// The counters of an endpoint address.
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        intern(&self.endpoints, addr, Arc::default)
    }

    /// The rate limiter of an Ingress (`namespace/name`) at `rps`.
    pub fn rate_limiter(&self, ingress: &str, rps: u32) -> Arc<RateLimiter> {
        intern(&self.rates, (ingress.to_owned(), rps), || Arc::new(RateLimiter::new(rps)))
    }

    /// The connection limiter of an Ingress at `max`.
    pub fn conn_limiter(&self, ingress: &str, max: u32) -> Arc<ConnLimiter> {
        intern(&self.conns, (ingress.to_owned(), max), || Arc::new(ConnLimiter::new(max)))
    }
}

fn intern<K: std::hash::Hash + Eq, V>(
    map: &Mutex<HashMap<K, Weak<V>>>,
    key: K,
    make: impl FnOnce() -> Arc<V>,
) -> Arc<V> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = map.get(&key).and_then(Weak::upgrade) {
        return v;
    }
    if map.len() > 1024 {
        map.retain(|_, w| w.strong_count() > 0);
    }
    let v = make();
    map.insert(key, Arc::downgrade(&v));
    v
}

//! Upstream pools: the endpoints of one Service port and how a request picks one.
//!
//! A [`Pool`] is immutable and belongs to one table generation; the per-endpoint counters it reads
//! ([`EndpointStats`]: requests in flight, peak-EWMA latency, consecutive connect failures, ejection deadline) are
//! interned by address in [`crate::table::State`] and shared by every generation, so a table swap neither forgets an
//! ejected endpoint nor resets its latency estimate.
//!
//! # Guarantees
//! - Only ready endpoints are picked; when a Service has none, its serving-but-terminating endpoints take the
//!   traffic (as kube-proxy does), so a rollout never sends a request to nowhere while something still serves.
//! - An ejected endpoint is skipped while any other endpoint is not ejected (fail open: if all are, all are used).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Consecutive connect failures after which an endpoint is ejected.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// How long an ejection lasts.
pub const EJECTION: Duration = Duration::from_secs(10);
/// Decay time of the peak-EWMA latency estimate.
const EWMA_DECAY_NS: f64 = 10e9;
/// Latency assumed for an endpoint that has answered nothing yet (so new endpoints get tried).
const EWMA_START_NS: u64 = 1_000_000;

/// How a pool chooses among its endpoints (ingress-nginx `load-balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each endpoint in turn.
    RoundRobin,
    /// Power of two random choices by peak-EWMA latency × (requests in flight + 1).
    PeakEwma,
}

/// Counters of one endpoint address, shared across table generations.
#[derive(Debug, Default)]
pub struct EndpointStats {
    in_flight: AtomicU32,
    ewma_ns: AtomicU64,
    ewma_stamp_ns: AtomicU64,
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
}

/// Milliseconds or nanoseconds since the first call, a cheap monotonic clock for the counters.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds on the process-monotonic clock.
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl EndpointStats {
    /// Whether the endpoint is ejected at `now_ns`.
    pub fn is_ejected(&self, now_ns: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now_ns / 1_000_000
    }

    /// A request starts using this endpoint.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// A request that called [`Self::start`] ended after `latency_ns` (None when it never got a response).
    pub fn finish(&self, latency_ns: Option<u64>) {
        self.in_flight.fetch_sub(1, Relaxed);
        if let Some(rtt) = latency_ns {
            self.observe(rtt);
        }
    }

    fn observe(&self, rtt: u64) {
        let now = now_ns();
        let prev = self.ewma_ns.load(Relaxed);
        let stamp = self.ewma_stamp_ns.swap(now, Relaxed);
        let next = if prev == 0 || rtt > prev {
            rtt // peak: jump up at once
        } else {
            let w = (-(now.saturating_sub(stamp) as f64) / EWMA_DECAY_NS).exp();
            (prev as f64 * w + rtt as f64 * (1.0 - w)) as u64
        };
        self.ewma_ns.store(next.max(1), Relaxed);
    }

    /// The load-aware cost of sending one more request here.
    fn cost(&self) -> u64 {
        let ewma = match self.ewma_ns.load(Relaxed) {
            0 => EWMA_START_NS,
            v => v,
        };
        ewma.saturating_mul(u64::from(self.in_flight.load(Relaxed)) + 1)
    }

    /// Records a connect failure; returns true when this one ejected the endpoint. A connect that timed out ejects
    /// at once: inside a cluster a live pod answers a SYN in microseconds, so a timeout means a dead node or a
    /// partition, and every further request sent there would wait the whole connect timeout again.
    pub fn connect_failed(&self, now_ns: u64, timed_out: bool) -> bool {
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if failures >= EJECT_AFTER_FAILURES || timed_out {
            self.failures.store(0, Relaxed);
            let until = (now_ns + EJECTION.as_nanos() as u64) / 1_000_000;
            self.ejected_until_ms.store(until, Relaxed);
            return true;
        }
        false
    }

    /// Records a successful connection (ends a run of failures).
    pub fn connected(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }
}

/// One pod endpoint of a pool.
#[derive(Debug)]
pub struct Endpoint {
    /// Pod IP and target port.
    pub addr: SocketAddr,
    /// Its counters, shared across generations.
    pub stats: Arc<EndpointStats>,
    /// The value of the session-affinity cookie that pins a client to this endpoint.
    pub cookie: Box<str>,
}

impl Endpoint {
    /// An endpoint with the given shared counters.
    pub fn new(addr: SocketAddr, stats: Arc<EndpointStats>) -> Self {
        Endpoint { addr, stats, cookie: affinity_cookie(addr).into() }
    }
}

/// A stable, opaque cookie value for an endpoint (FNV-1a of its address).
fn affinity_cookie(addr: SocketAddr) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The endpoints of one Service port in one table generation.
#[derive(Debug)]
pub struct Pool {
    ready: Box<[Arc<Endpoint>]>,
    terminating: Box<[Arc<Endpoint>]>,
    next: AtomicUsize,
    balance: Balance,
}

impl Pool {
    /// A pool; `ready` get traffic, `terminating` (serving but terminating) only when nothing is ready.
    pub fn new(ready: Vec<Arc<Endpoint>>, terminating: Vec<Arc<Endpoint>>, balance: Balance) -> Self {
        Pool { ready: ready.into(), terminating: terminating.into(), next: AtomicUsize::new(0), balance }
    }

    /// The endpoints that take new requests.
    pub fn active(&self) -> &[Arc<Endpoint>] {
        if self.ready.is_empty() { &self.terminating } else { &self.ready }
    }

    /// Whether no endpoint can take a request.
    pub fn is_empty(&self) -> bool {
        self.active().is_empty()
    }

    /// The balancing policy.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// The endpoint a session-affinity cookie names, if it is still active and not ejected.
    pub fn by_cookie(&self, value: &str, now_ns: u64) -> Option<&Arc<Endpoint>> {
        self.active().iter().find(|e| &*e.cookie == value && !e.stats.is_ejected(now_ns))
    }

    /// Picks an endpoint for a request, skipping those in `tried` (earlier attempts of the same request) and ejected
    /// ones while anything else is left.
    pub fn pick(&self, tried: &[SocketAddr], now_ns: u64) -> Option<&Arc<Endpoint>> {
        let all = self.active();
        let usable = |e: &&Arc<Endpoint>| !tried.contains(&e.addr) && !e.stats.is_ejected(now_ns);
        let untried = |e: &&Arc<Endpoint>| !tried.contains(&e.addr);
        match self.balance {
            Balance::RoundRobin => self.round_robin(all, usable).or_else(|| self.round_robin(all, untried)),
            Balance::PeakEwma => p2c(all, usable).or_else(|| p2c(all, untried)),
        }
    }

    fn round_robin<'a>(
        &self,
        all: &'a [Arc<Endpoint>],
        ok: impl Fn(&&Arc<Endpoint>) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        if all.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        (0..all.len()).map(|i| &all[(start + i) % all.len()]).find(|e| ok(e))
    }
}

/// Power of two choices: two distinct random candidates that pass `ok`, the cheaper one wins.
fn p2c(all: &[Arc<Endpoint>], ok: impl Fn(&&Arc<Endpoint>) -> bool) -> Option<&Arc<Endpoint>> {
    let n = all.len();
    if n == 0 {
        return None;
    }
    let r = random();
    let a = (r as usize) % n;
    let b = if n > 1 { (a + 1 + ((r >> 32) as usize) % (n - 1)) % n } else { a };
    match (ok(&&all[a]), ok(&&all[b])) {
        (true, true) => Some(if all[b].stats.cost() < all[a].stats.cost() { &all[b] } else { &all[a] }),
        (true, false) => Some(&all[a]),
        (false, true) => Some(&all[b]),
        (false, false) => all.iter().filter(|e| ok(e)).min_by_key(|e| e.stats.cost()),
    }
}

/// A fast per-thread xorshift generator (load balancing needs spread, not secrecy).
pub(crate) fn random() -> u64 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = Cell::new(now_ns() | 1));
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16, balance: Balance) -> Pool {
        let eps = (0..n)
            .map(|i| Arc::new(Endpoint::new(SocketAddr::from(([10, 0, 0, 1], 8000 + i)), Arc::default())))
            .collect();
        Pool::new(eps, vec![], balance)
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let p = pool(3, Balance::RoundRobin);
        let ports: Vec<u16> = (0..6).map(|_| p.pick(&[], 0).expect("endpoints").addr.port()).collect();
        assert_eq!(ports, [8000, 8001, 8002, 8000, 8001, 8002]);
    }

    #[test]
    fn a_retry_never_picks_an_endpoint_already_tried() {
        for balance in [Balance::RoundRobin, Balance::PeakEwma] {
            let p = pool(2, balance);
            for _ in 0..50 {
                let first = p.pick(&[], 0).expect("endpoints").addr;
                let second = p.pick(&[first], 0).expect("another endpoint").addr;
                assert_ne!(first, second);
                assert!(p.pick(&[first, second], 0).is_none());
            }
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_the_ejection_ends_and_used_if_nothing_else_is_left() {
        let p = pool(2, Balance::RoundRobin);
        let bad = p.active()[0].clone();
        assert!(!bad.stats.connect_failed(0, false) && !bad.stats.connect_failed(0, false));
        assert!(bad.stats.connect_failed(0, false), "the third refused connect ejects");
        for _ in 0..10 {
            assert_eq!(p.pick(&[], 1).expect("endpoint").addr.port(), 8001);
        }
        let other = p.active()[1].addr;
        assert_eq!(p.pick(&[other], 1).expect("fail open").addr, bad.addr);
        let after = EJECTION.as_nanos() as u64 + 1_000_000;
        assert!(!bad.stats.is_ejected(after));
    }

    #[test]
    fn a_connect_timeout_ejects_at_once() {
        let p = pool(2, Balance::RoundRobin);
        let dead = p.active()[0].clone();
        assert!(dead.stats.connect_failed(0, true), "one timed-out connect ejects");
        assert!(dead.stats.is_ejected(1));
        assert!((0..10).all(|_| p.pick(&[], 1).expect("endpoint").addr != dead.addr));
    }

    #[test]
    fn peak_ewma_prefers_the_faster_endpoint() {
        let p = pool(2, Balance::PeakEwma);
        let (fast, slow) = (&p.active()[0], &p.active()[1]);
        fast.stats.observe(100_000);
        slow.stats.observe(50_000_000);
        let fast_picks = (0..200).filter(|_| p.pick(&[], 0).expect("endpoint").addr == fast.addr).count();
        assert_eq!(fast_picks, 200, "with two endpoints both are always candidates");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let t = Arc::new(Endpoint::new(SocketAddr::from(([10, 0, 0, 9], 80)), Arc::default()));
        let drained = Pool::new(pool(1, Balance::RoundRobin).active().to_vec(), vec![t.clone()], Balance::RoundRobin);
        assert_ne!(drained.pick(&[], 0).expect("ready").addr, t.addr);
        let only = Pool::new(vec![], vec![t.clone()], Balance::RoundRobin);
        assert_eq!(only.pick(&[], 0).expect("fallback").addr, t.addr);
    }

    #[test]
    fn affinity_cookies_name_endpoints_stably() {
        let p = pool(3, Balance::RoundRobin);
        let e = &p.active()[2];
        assert_eq!(p.by_cookie(&e.cookie, 0).expect("found").addr, e.addr);
        assert!(p.by_cookie("nope", 0).is_none());
        assert_eq!(affinity_cookie(e.addr), &*e.cookie);
    }
}

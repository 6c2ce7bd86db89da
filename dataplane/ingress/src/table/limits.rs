//! Per-client limits from the ingress-nginx `limit-rps` and `limit-connections` annotations.
//!
//! Both are keyed by client IP, like ingress-nginx's `limit_req`/`limit_conn` zones on `$binary_remote_addr`, and
//! live in [`crate::table::State`] so a table swap does not reset them.
//!
//! # Caveats
//! Memory is bounded: a limiter that tracks more than [`MAX_CLIENTS`] addresses forgets the idle ones first, and if
//! all are busy it starts over (a burst of new clients cannot exhaust memory; at worst limits restart).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Most client addresses one limiter remembers.
pub const MAX_CLIENTS: usize = 65_536;
/// ingress-nginx allows bursts of five times the rate.
pub const BURST_MULTIPLIER: u32 = 5;

/// A token bucket per client: `rps` per second, bursts up to `rps × 5`.
#[derive(Debug)]
pub struct RateLimiter {
    rps: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    stamp_ns: u64,
}

impl RateLimiter {
    /// A limiter of `rps` requests per second per client.
    pub fn new(rps: u32) -> Self {
        RateLimiter { rps: rps.max(1), buckets: Mutex::default() }
    }

    /// The configured rate.
    pub fn rps(&self) -> u32 {
        self.rps
    }

    /// Takes a token for `client` at `now_ns`; false when the client is over its limit.
    pub fn allow(&self, client: IpAddr, now_ns: u64) -> bool {
        let burst = f64::from(self.rps * BURST_MULTIPLIER);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            let full = |b: &Bucket| b.tokens + f64::from(self.rps) * (now_ns - b.stamp_ns.min(now_ns)) as f64 / 1e9;
            buckets.retain(|_, b| full(b) < burst);
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let b = buckets.entry(client).or_insert(Bucket { tokens: burst, stamp_ns: now_ns });
        let elapsed = now_ns.saturating_sub(b.stamp_ns) as f64 / 1e9;
        b.tokens = (b.tokens + elapsed * f64::from(self.rps)).min(burst);
        b.stamp_ns = now_ns;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One request counted by a [`ConnLimiter`], until dropped.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<ConnLimiter>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release(self.client);
    }
}

/// Concurrent requests per client.
#[derive(Debug)]
pub struct ConnLimiter {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnLimiter {
    /// At most `max` concurrent requests per client.
    pub fn new(max: u32) -> Self {
        ConnLimiter { max: max.max(1), open: Mutex::default() }
    }

    /// The configured maximum.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Counts one more request of `client`; false (and nothing counted) when it already has `max` open.
    pub fn acquire(&self, client: IpAddr) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(client).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts one more request of `client` as [`Self::acquire`] does; the slot ends it when dropped.
    pub fn hold(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        self.acquire(client).then(|| Slot { limiter: self.clone(), client })
    }

    /// Ends a request counted by a successful [`Self::acquire`].
    pub fn release(&self, client: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn a_client_gets_a_burst_of_five_times_the_rate_then_the_rate() {
        let l = RateLimiter::new(2);
        let allowed = (0..20).filter(|_| l.allow(A, 0)).count();
        assert_eq!(allowed, 10);
        assert!(l.allow(B, 0), "other clients have their own bucket");
        assert!(!l.allow(A, 100_000_000), "0.1 s refills 0.2 tokens");
        assert!(l.allow(A, 600_000_000), "0.6 s refills more than one token");
    }

    #[test]
    fn concurrent_requests_are_limited_per_client_and_released() {
        let l = ConnLimiter::new(2);
        assert!(l.acquire(A) && l.acquire(A));
        assert!(!l.acquire(A));
        assert!(l.acquire(B));
        l.release(A);
        assert!(l.acquire(A));
    }

    #[test]
    fn a_slot_is_released_when_dropped() {
        let l = Arc::new(ConnLimiter::new(1));
        let slot = l.hold(A).expect("free");
        assert!(l.hold(A).is_none());
        drop(slot);
        assert!(l.hold(A).is_some());
    }
}

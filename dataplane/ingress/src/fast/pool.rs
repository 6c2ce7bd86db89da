//! Idle keep-alive connections to pods, per worker thread.
//!
//! The proxy runs one single-threaded runtime per worker thread (or one work-stealing runtime), and a socket
//! belongs to the runtime that registered it, so each thread keeps its own idle list: taking and returning a
//! connection is a `Vec` push/pop with no lock and no atomic. Connections idle longer than [`IDLE`] are dropped
//! when met, and swept every [`SWEEP_EVERY`]: on the next return to the pool, and by a timer task on the thread
//! while its pool holds any (so a pool that traffic left behind closes its connections too; the task ends when the
//! pool is empty and starts again with the next connection returned).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::upstream::{Peer, Upstream};

/// How long a connection may stay idle in the pool.
pub const IDLE: Duration = Duration::from_secs(60);

/// Most idle connections kept per pod and thread: ingress-nginx's default `upstream-keepalive-connections`, also
/// per worker. HTTP/2 clients keep many requests in flight on one connection, each on a pod connection of its own;
/// a smaller pool closed and reopened pod connections under such load (128 per thread: ~10% of the CPU in
/// `connect`, `socket` and `close` with 64 h2 clients of 8 streams each).
pub const PER_ENDPOINT: usize = 320;

/// Minimum time between two sweeps of the whole pool.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Idle {
    stream: Upstream,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<Peer, Vec<Idle>>,
    swept: Option<Instant>,
}

impl Pool {
    /// Drops the connections idle for [`IDLE`] or more at `now`.
    fn sweep(&mut self, now: Instant) {
        self.swept = Some(now);
        self.idle.retain(|_, list| {
            list.retain(|i| now.duration_since(i.since) < IDLE);
            !list.is_empty()
        });
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
    /// Whether this thread's sweeping task runs.
    static SWEEPER: Cell<bool> = const { Cell::new(false) };
}

/// Sweeps this thread's pool every [`SWEEP_EVERY`] until it is empty. On the proxy's per-thread runtimes the task
/// stays on the thread whose pool it sweeps (with work stealing it may sweep another thread's; the returns to the
/// pool still sweep each thread's own).
async fn sweep_until_empty() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let empty = POOL.with_borrow_mut(|p| {
            p.sweep(Instant::now());
            p.idle.is_empty()
        });
        if empty {
            SWEEPER.set(false);
            return;
        }
    }
}

/// An idle connection to `peer`, most recently used first (the one least likely to have been closed by the pod).
pub fn take(peer: Peer) -> Option<Upstream> {
    let now = Instant::now();
    POOL.with_borrow_mut(|p| {
        let list = p.idle.get_mut(&peer)?;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) < IDLE {
                return Some(idle.stream);
            }
        }
        None
    })
}

/// Returns a connection whose last response was read completely.
pub fn put(peer: Peer, stream: Upstream) {
    let now = Instant::now();
    POOL.with_borrow_mut(|p| {
        let list = p.idle.entry(peer).or_default();
        if list.len() < PER_ENDPOINT {
            list.push(Idle { stream, since: now });
        }
        if p.swept.is_none_or(|s| now.duration_since(s) >= SWEEP_EVERY) {
            p.sweep(now);
        }
    });
    if !SWEEPER.get() && tokio::runtime::Handle::try_current().is_ok() {
        SWEEPER.set(true);
        tokio::spawn(sweep_until_empty());
    }
}

/// Idle connections of this thread (for tests and debugging).
pub fn idle_count(peer: Peer) -> usize {
    POOL.with_borrow(|p| p.idle.get(&peer).map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connection(listener: &tokio::net::TcpListener) -> Upstream {
        let addr = listener.local_addr().expect("addr");
        let (client, _) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        Upstream::Plain(client.expect("connect"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_left_behind_by_traffic_is_swept_by_its_timer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = Peer { addr: listener.local_addr().expect("addr"), tls: false };
        put(addr, connection(&listener).await);
        put(addr, connection(&listener).await);
        assert_eq!(idle_count(addr), 2);
        // still fresh after a while: kept
        tokio::time::sleep(IDLE / 2).await;
        assert_eq!(idle_count(addr), 2);
        // past the idle time with no request at all: the timer closes them, and stops with the pool empty
        tokio::time::sleep(IDLE / 2 + SWEEP_EVERY * 2).await;
        assert_eq!(idle_count(addr), 0);
        assert!(!SWEEPER.get(), "the sweeping task ended with the pool empty");
        // the next connection returned starts it again
        put(addr, connection(&listener).await);
        assert!(SWEEPER.get());
        assert!(take(addr).is_some());
    }
}

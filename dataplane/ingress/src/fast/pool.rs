//! Idle keep-alive connections to pods, per worker thread.
//!
//! The proxy runs one single-threaded runtime per worker thread (or one work-stealing runtime), and a socket
//! belongs to the runtime that registered it, so each thread keeps its own idle list: taking and returning a
//! connection is a `Vec` push/pop with no lock and no atomic. Connections idle longer than [`IDLE`] are dropped
//! when met, and a sweep at most every [`SWEEP_EVERY`] closes those of pods no longer asked for.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// How long a connection may stay idle in the pool.
pub const IDLE: Duration = Duration::from_secs(60);

/// Most idle connections kept per pod and thread.
pub const PER_ENDPOINT: usize = 128;

/// Minimum time between two sweeps of the whole pool.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Idle {
    stream: TcpStream,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    swept: Option<Instant>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An idle connection to `addr`, most recently used first (the one least likely to have been closed by the pod).
pub fn take(addr: SocketAddr) -> Option<TcpStream> {
    let now = Instant::now();
    POOL.with_borrow_mut(|p| {
        let list = p.idle.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) < IDLE {
                return Some(idle.stream);
            }
        }
        None
    })
}

/// Returns a connection whose last response was read completely.
pub fn put(addr: SocketAddr, stream: TcpStream) {
    let now = Instant::now();
    POOL.with_borrow_mut(|p| {
        let list = p.idle.entry(addr).or_default();
        if list.len() < PER_ENDPOINT {
            list.push(Idle { stream, since: now });
        }
        if p.swept.is_none_or(|s| now.duration_since(s) >= SWEEP_EVERY) {
            p.swept = Some(now);
            p.idle.retain(|_, list| {
                list.retain(|i| now.duration_since(i.since) < IDLE);
                !list.is_empty()
            });
        }
    })
}

/// Idle connections of this thread (for tests and debugging).
pub fn idle_count(addr: SocketAddr) -> usize {
    POOL.with_borrow(|p| p.idle.get(&addr).map_or(0, Vec::len))
}

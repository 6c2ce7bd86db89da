//! What keeps the API server serving while a client misbehaves: connection and time limits on the listener, and a
//! cap on each user's requests in flight (a simple form of API Priority and Fairness: one user's flood is answered
//! 429 with `Retry-After` while other users, the nodes and the controllers are still served).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rbac::Attributes;

/// The limits of the API server's listener and request handling.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; further ones are closed at once.
    pub max_connections: usize,
    /// Time to complete a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to send the first bytes after the handshake and, on HTTP/1.1, each request's head (which also closes
    /// idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings; a peer that does not answer one within the same time is dropped.
    pub h2_keepalive: Duration,
    /// Requests one user may have in flight (watches and streams not counted).
    pub inflight_per_user: usize,
    /// Requests in flight over all users not exempt (members of `system:masters` are exempt, as upstream's
    /// `exempt` priority level).
    pub inflight_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(20),
            h2_keepalive: Duration::from_secs(30),
            inflight_per_user: 100,
            inflight_total: 600,
        }
    }
}

/// Whether a request holds its connection for long by design (watches, logs that follow, exec, attach,
/// port-forward, proxy): those are not counted in flight.
pub fn is_long_running(attrs: &Attributes, follow: bool) -> bool {
    match attrs {
        Attributes::Resource { verb, subresource, .. } => {
            verb == "watch"
                || matches!(subresource.as_str(), "exec" | "attach" | "portforward" | "proxy")
                || (subresource == "log" && follow)
        }
        Attributes::NonResource { .. } => false,
    }
}

#[derive(Debug, Default)]
struct Counts {
    per_user: HashMap<String, usize>,
    total: usize,
}

/// Whether one more request of `user` fits.
fn fits(counts: &Counts, user: &str, limits: &Limits) -> bool {
    counts.total < limits.inflight_total && counts.per_user.get(user).copied().unwrap_or(0) < limits.inflight_per_user
}

/// Requests in flight, per user.
#[derive(Debug)]
pub struct InFlight {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// A request's place in flight; released when dropped.
#[derive(Debug)]
pub struct Permit {
    owner: Arc<InFlight>,
    user: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(&self.user);
            }
        }
    }
}

impl InFlight {
    /// Counts nothing yet.
    pub fn new(limits: Limits) -> Arc<InFlight> {
        Arc::new(InFlight { limits, counts: Mutex::new(Counts::default()) })
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A place for one more request of `user`, or `None` when the user (or everyone) is at the limit.
    pub fn admit(self: &Arc<Self>, user: &str) -> Option<Permit> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if !fits(&c, user, &self.limits) {
            return None;
        }
        c.total += 1;
        *c.per_user.entry(user.to_string()).or_default() += 1;
        Some(Permit { owner: self.clone(), user: user.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_its_own_share_within_the_total() {
        let f = InFlight::new(Limits { inflight_per_user: 2, inflight_total: 3, ..Limits::default() });
        let a1 = f.admit("a").expect("first");
        let _a2 = f.admit("a").expect("second");
        assert!(f.admit("a").is_none(), "a third request of the same user waits");
        let b1 = f.admit("b").expect("another user is served");
        assert!(f.admit("c").is_none(), "the total is reached");
        drop(a1);
        let c = f.admit("c").expect("a freed place is reused");
        drop(b1);
        let _a3 = f.admit("a").expect("a has one place left");
        assert!(f.admit("b").is_none(), "the total is reached again");
        drop(c);
        assert!(f.admit("a").is_none(), "a is at its own limit");
        assert!(f.admit("b").is_some());
    }

    #[test]
    fn streams_are_long_running() {
        let r = |verb: &str, sub: &str| Attributes::Resource {
            verb: verb.into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: sub.into(),
            namespace: "d".into(),
            name: "p".into(),
        };
        assert!(is_long_running(&r("watch", ""), false));
        assert!(is_long_running(&r("create", "exec"), false));
        assert!(is_long_running(&r("get", "log"), true));
        assert!(!is_long_running(&r("get", "log"), false));
        assert!(!is_long_running(&r("list", ""), false));
    }
}

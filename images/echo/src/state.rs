//! Who this server is (from the environment) and its flippable health and readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Identity and switches shared by all requests.
#[derive(Debug)]
pub struct State {
    /// `POD_NAME` (or the host name).
    pub pod: String,
    /// `POD_NAMESPACE`.
    pub namespace: String,
    /// `POD_IP`.
    pub ip: String,
    /// `NODE_NAME`.
    pub node: String,
    /// `ECHO_VERSION` (the image sets v1 or v2).
    pub version: String,
    /// The kernel's host name (the pod name inside Skiff).
    pub hostname: String,
    healthy: AtomicBool,
    ready: AtomicBool,
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_default()
}

impl State {
    /// Reads the identity from the environment; healthy and ready at start.
    pub fn from_env() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let pod = std::env::var("POD_NAME").unwrap_or_else(|_| hostname.clone());
        State {
            pod,
            namespace: env("POD_NAMESPACE"),
            ip: env("POD_IP"),
            node: env("NODE_NAME"),
            version: std::env::var("ECHO_VERSION").unwrap_or_else(|_| "dev".into()),
            hostname,
            healthy: AtomicBool::new(true),
            ready: AtomicBool::new(std::env::var("ECHO_START_UNREADY").is_err()),
        }
    }

    /// Whether `/healthz` answers 200.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether `/readyz` answers 200 (and gRPC health says SERVING).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Flips `/healthz`.
    pub fn set_healthy(&self, v: bool) {
        self.healthy.store(v, Ordering::Relaxed);
    }

    /// Flips `/readyz`.
    pub fn set_ready(&self, v: bool) {
        self.ready.store(v, Ordering::Relaxed);
    }
}

/// Parses `250ms`, `2s`, `1m` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "ms"), |i| s.split_at(i));
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

/// A duration from an environment variable, if set and valid.
pub fn duration_env(key: &str) -> Option<Duration> {
    std::env::var(key).ok().and_then(|v| parse_duration(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_milliseconds() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("40"), Some(Duration::from_millis(40)));
        assert_eq!(parse_duration("2h"), None);
        assert_eq!(parse_duration("x"), None);
    }
}

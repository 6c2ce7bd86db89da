//! Restart back-off (CrashLoopBackOff, ImagePullBackOff) as a pure function, the way the kubelet keys it: an entry
//! per container holding the current window; the first restart is immediate and opens a window of `initial`; a
//! failure inside the window waits until `finished + window`, and the restart after it doubles the window (capped at
//! `max`). An entry not renewed for `reset_after` (a container that ran that long) starts over.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::BackoffPolicy;

/// The back-off entry of one container (or one image pull).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The current window.
    pub window: Duration,
    /// When the window was last set (the last restart).
    pub updated: Timestamp,
}

/// What to do with a container that ended and should run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Restart now, with this entry from now on.
    RestartNow(Entry),
    /// Wait until this time; the window (for the `back-off 20s` message) is given.
    Wait {
        /// When the restart may happen.
        until: Timestamp,
        /// The window being waited out.
        window: Duration,
    },
}

fn since(later: Timestamp, earlier: Timestamp) -> Duration {
    let d = later.as_millisecond().saturating_sub(earlier.as_millisecond());
    Duration::from_millis(u64::try_from(d).unwrap_or(0))
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::ZERO)).unwrap_or(t)
}

/// Decides, at `now`, about a container that finished at `finished` with back-off `entry`.
pub fn decide(entry: Option<Entry>, finished: Timestamp, now: Timestamp, policy: &BackoffPolicy) -> Decision {
    let live = entry.filter(|e| since(now, e.updated) <= policy.reset_after);
    match live {
        Some(e) if since(now, finished) < e.window => {
            Decision::Wait { until: plus(finished, e.window), window: e.window }
        }
        Some(e) => Decision::RestartNow(Entry { window: (e.window * 2).min(policy.max), updated: now }),
        None => Decision::RestartNow(Entry { window: policy.initial, updated: now }),
    }
}

/// The successive waits of a container that fails at once every time (for documentation and tests).
pub fn schedule(policy: &BackoffPolicy, restarts: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut entry = None;
    let mut now = Timestamp::UNIX_EPOCH;
    for _ in 0..restarts {
        let finished = now;
        match decide(entry, finished, now, policy) {
            Decision::RestartNow(e) => {
                out.push(Duration::ZERO);
                entry = Some(e);
            }
            Decision::Wait { until, .. } => {
                out.push(since(until, now));
                now = until;
                if let Decision::RestartNow(e) = decide(entry, finished, now, policy) {
                    entry = Some(e);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_crash_loop_waits_0_10_20_40_and_is_capped_at_five_minutes() {
        let waits = schedule(&BackoffPolicy::default(), 10);
        let expect: Vec<Duration> = [0, 10, 20, 40, 80, 160, 300, 300, 300, 300].into_iter().map(secs).collect();
        assert_eq!(waits, expect);
    }

    #[test]
    fn the_wait_counts_from_when_the_container_finished() {
        let p = BackoffPolicy::default();
        let t0 = Timestamp::from_second(1_000).expect("ts");
        let entry = Entry { window: secs(40), updated: t0 };
        let finished = Timestamp::from_second(1_100).expect("ts");
        let now = Timestamp::from_second(1_120).expect("ts");
        assert_eq!(
            decide(Some(entry), finished, now, &p),
            Decision::Wait { until: Timestamp::from_second(1_140).expect("ts"), window: secs(40) }
        );
        let later = Timestamp::from_second(1_141).expect("ts");
        assert_eq!(
            decide(Some(entry), finished, later, &p),
            Decision::RestartNow(Entry { window: secs(80), updated: later })
        );
    }

    #[test]
    fn a_container_that_ran_longer_than_the_reset_time_starts_over() {
        let p = BackoffPolicy::default();
        let entry = Entry { window: secs(300), updated: Timestamp::from_second(0).expect("ts") };
        let now = Timestamp::from_second(700).expect("ts");
        assert_eq!(decide(Some(entry), now, now, &p), Decision::RestartNow(Entry { window: secs(10), updated: now }));
    }
}

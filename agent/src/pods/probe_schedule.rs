//! When a probe runs next, and whether a result counts.
//!
//! A probe runs when its container starts (after `initialDelaySeconds`) and then one period after each regular
//! attempt, as the kubelet's prober does. Until a startup or readiness probe first succeeds, a failed attempt is also
//! retried sooner (a *warm-up* attempt): 25 ms later, then at doubling gaps while they end before the next regular
//! attempt. A warm-up attempt counts only when it succeeds: its failures are neither counted against
//! `failureThreshold` nor reported, so a container that is slow to listen is judged exactly as with the period alone,
//! and one that listens a few milliseconds after it starts is Ready then, not one period later. A probe of a
//! 1 s period makes at most 5 warm-up attempts, one of 10 s at most 8. Exec probes do not warm up: each attempt is a
//! `runc exec`, which costs tens of milliseconds of CPU.

use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;

use super::probes::ProbeKind;

/// The first warm-up gap; each next one doubles.
pub const FIRST_WARM_UP: Duration = Duration::from_millis(25);

/// What an attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// On the period: its result counts either way.
    Regular,
    /// Between regular attempts before the first success: only a success counts.
    WarmUp,
}

/// The probe's timetable, in time since the probe began (after the initial delay).
#[derive(Clone, Debug)]
pub struct Schedule {
    period: Duration,
    next_regular: Duration,
    gap: Option<Duration>,
    warming: bool,
}

impl Schedule {
    /// A timetable with `period` that warms up when `warm_up` says so; the first attempt, at 0, is regular.
    pub fn new(warm_up: bool, period: Duration) -> Self {
        Schedule { period, next_regular: Duration::ZERO, gap: None, warming: warm_up }
    }

    /// Whether probe `p` of `kind` warms up: startup and readiness probes that are not exec probes.
    pub fn warms_up(kind: ProbeKind, p: &Probe) -> bool {
        kind != ProbeKind::Liveness && p.exec.is_none()
    }

    /// Records the result of an attempt of kind `attempt` that ended at `ended`; returns when the next attempt runs
    /// and what it is.
    pub fn after(&mut self, attempt: Attempt, ok: bool, ended: Duration) -> (Duration, Attempt) {
        if attempt == Attempt::Regular {
            self.next_regular = ended + self.period;
        }
        if ok {
            self.warming = false;
        }
        if self.warming {
            let gap = self.gap.map_or(FIRST_WARM_UP, |g| g.saturating_mul(2));
            self.gap = Some(gap);
            let at = ended + gap;
            if at < self.next_regular {
                return (at, Attempt::WarmUp);
            }
        }
        (self.next_regular, Attempt::Regular)
    }

    /// Whether the result of an attempt of kind `attempt` is fed to the verdict and reported.
    pub fn counts(attempt: Attempt, ok: bool) -> bool {
        attempt == Attempt::Regular || ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Runs a schedule of `kind` and period `period_ms` over `results` (each attempt ends when it begins) and returns
    /// each attempt's (start in ms, kind).
    fn timetable(kind: ProbeKind, period_ms: u64, results: &[bool]) -> Vec<(u64, Attempt)> {
        let tcp = Probe { tcp_socket: Some(Default::default()), ..Default::default() };
        let mut s = Schedule::new(Schedule::warms_up(kind, &tcp), ms(period_ms));
        let (mut at, mut attempt) = (Duration::ZERO, Attempt::Regular);
        let mut out = Vec::new();
        for ok in results {
            out.push((u64::try_from(at.as_millis()).unwrap_or(u64::MAX), attempt));
            (at, attempt) = s.after(attempt, *ok, at);
        }
        out
    }

    #[test]
    fn attempts_follow_the_table() {
        use Attempt::{Regular as R, WarmUp as W};
        use ProbeKind::{Liveness, Readiness, Startup};
        type Case<'a> = (&'a str, ProbeKind, u64, &'a [bool], &'a [(u64, Attempt)]);
        let cases: &[Case<'_>] = &[
            (
                "readiness: warm-up attempts at doubling gaps until the next regular one",
                Readiness,
                1000,
                &[false, false, false, false, false, false, false, false],
                &[(0, R), (25, W), (75, W), (175, W), (375, W), (775, W), (1000, R), (2000, R)],
            ),
            (
                "readiness: a warm-up success ends the warm-up; the period goes on from the last regular attempt",
                Readiness,
                1000,
                &[false, false, true, true, true],
                &[(0, R), (25, W), (75, W), (1000, R), (2000, R)],
            ),
            (
                "readiness: a first success needs no warm-up",
                Readiness,
                1000,
                &[true, false, false],
                &[(0, R), (1000, R), (2000, R)],
            ),
            ("startup probes warm up too", Startup, 1000, &[false, true, true], &[(0, R), (25, W), (1000, R)]),
            ("liveness never warms up", Liveness, 1000, &[false, false, false], &[(0, R), (1000, R), (2000, R)]),
            (
                "a 10 s period: 8 warm-up attempts at most",
                Readiness,
                10_000,
                &[false; 12],
                &[
                    (0, R),
                    (25, W),
                    (75, W),
                    (175, W),
                    (375, W),
                    (775, W),
                    (1575, W),
                    (3175, W),
                    (6375, W),
                    (10_000, R),
                    (20_000, R),
                    (30_000, R),
                ],
            ),
        ];
        for (name, kind, period, results, want) in cases {
            assert_eq!(timetable(*kind, *period, results), *want, "{name}");
        }
    }

    #[test]
    fn a_slow_attempt_pushes_the_next_ones_back() {
        let mut s = Schedule::new(true, ms(1000));
        // the first attempt timed out after 1 s: the next regular one is a period after it ended
        assert_eq!(s.after(Attempt::Regular, false, ms(1000)), (ms(1025), Attempt::WarmUp));
        assert_eq!(s.after(Attempt::WarmUp, false, ms(2025)), (ms(2000), Attempt::Regular));
    }

    #[test]
    fn exec_probes_do_not_warm_up() {
        let exec = Probe { exec: Some(Default::default()), ..Default::default() };
        assert!(!Schedule::warms_up(ProbeKind::Readiness, &exec));
        assert!(!Schedule::warms_up(ProbeKind::Startup, &exec));
        let http = Probe { http_get: Some(Default::default()), ..Default::default() };
        assert!(Schedule::warms_up(ProbeKind::Readiness, &http));
        assert!(!Schedule::warms_up(ProbeKind::Liveness, &http));
        let mut s = Schedule::new(false, ms(1000));
        assert_eq!(s.after(Attempt::Regular, false, ms(0)), (ms(1000), Attempt::Regular));
    }

    #[test]
    fn only_regular_attempts_and_successes_count() {
        assert!(Schedule::counts(Attempt::Regular, false));
        assert!(Schedule::counts(Attempt::Regular, true));
        assert!(Schedule::counts(Attempt::WarmUp, true));
        assert!(!Schedule::counts(Attempt::WarmUp, false));
    }
}

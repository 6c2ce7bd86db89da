//! Leader election through a `coordination.k8s.io/v1` Lease, so several control-plane instances run one active
//! set of controllers.
//!
//! Expiry is judged as client-go's leader election judges it: from when *this* candidate last saw the Lease change
//! (its `resourceVersion`), on this candidate's monotonic clock, never from the holder's `renewTime`, so clock skew
//! between servers cannot make two leaders. Every write carries the `resourceVersion` it was decided on, so two
//! candidates that both see an expired Lease cannot both take it. The holder renews every [`RENEW_EVERY`] and stops
//! its work once it has not renewed for [`RENEW_DEADLINE`], counted from the *start* of its last successful renewal,
//! which is no later than when any other candidate can have seen that renewal: it has stopped before another
//! candidate's [`LEASE_DURATION`] can run out. The decision is the pure [`decide`]; [`run_as_leader`] carries it out.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// How long a Lease is valid without renewal (as seen by the other candidates).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews and the others look.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A holder that has not renewed for this long stops its work (well before [`LEASE_DURATION`]).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// The longest one Lease read or write may take.
const API_TIMEOUT: Duration = Duration::from_secs(4);

/// The election's timings (kube-controller-manager's `--leader-elect-lease-duration`, `--leader-elect-renew-deadline`
/// and `--leader-elect-retry-period`). Shorter ones hand over sooner after a leader dies and make a loaded leader
/// more likely to lose its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a Lease is valid without renewal, as the other candidates see it.
    pub lease_duration: Duration,
    /// A holder that has not renewed for this long stops its work.
    pub renew_deadline: Duration,
    /// How often the holder renews and the others look.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings { lease_duration: LEASE_DURATION, renew_deadline: RENEW_DEADLINE, retry_period: RENEW_EVERY }
    }
}

impl Timings {
    /// Checks lease duration > renew deadline > retry period (each at least 100 ms), as kube-controller-manager
    /// does: the holder must stop before anyone may take over.
    pub fn validate(&self) -> Result<(), String> {
        let ms = Duration::from_millis(100);
        if self.retry_period < ms || self.renew_deadline <= self.retry_period {
            return Err(format!(
                "the renew deadline ({:?}) must be longer than the retry period ({:?}, at least 100 ms)",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "the lease duration ({:?}) must be longer than the renew deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// What to do about the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it as holder.
    Create,
    /// We hold it: renew.
    Renew,
    /// Released, or its holder has not renewed for a lease duration as we saw it: take it over.
    TakeOver,
    /// Someone else holds it: wait.
    Wait,
}

/// Decides for `identity` from the Lease as read and how long this candidate has seen its current version unchanged.
pub fn decide(lease: Option<&Lease>, identity: &str, unchanged_for: Duration) -> Step {
    let Some(lease) = lease else { return Step::Create };
    let spec = lease.spec.as_ref();
    match spec.and_then(|s| s.holder_identity.as_deref()) {
        Some(holder) if holder == identity => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(_) => {
            let duration = spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(LEASE_DURATION, Duration::from_secs);
            if unchanged_for > duration { Step::TakeOver } else { Step::Wait }
        }
    }
}

/// When this candidate first saw the Lease's current version.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(String, Instant)>,
}

impl Observer {
    /// Records the version read at `now` (`None`: no Lease); returns how long it has been unchanged.
    pub fn observe(&mut self, version: Option<&str>, now: Instant) -> Duration {
        let Some(version) = version else {
            self.seen = None;
            return Duration::ZERO;
        };
        match &self.seen {
            Some((v, since)) if v == version => now.saturating_duration_since(*since),
            _ => {
                self.seen = Some((version.to_string(), now));
                Duration::ZERO
            }
        }
    }
}

/// Whether this instance holds the Lease after `step`'s write (false when the write lost a race).
fn write_outcome(r: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The Lease `identity` writes to hold it, built on `current` (whose `resourceVersion` guards the write).
fn held_lease(current: Option<&Lease>, name: &str, identity: &str, duration: Duration, now: jiff::Timestamp) -> Lease {
    let spec = current.and_then(|l| l.spec.as_ref());
    let was_ours = spec.and_then(|s| s.holder_identity.as_deref()) == Some(identity);
    let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("kube-system".into()),
            resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
            acquire_time: if was_ours { spec.and_then(|s| s.acquire_time.clone()) } else { Some(MicroTime(now)) },
            // For people reading the Lease; no candidate judges expiry by it.
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if was_ours { transitions } else { transitions + 1 }),
            ..Default::default()
        }),
    }
}

/// One election round: reads the Lease, decides, writes; `Ok(true)` when we hold it afterwards.
async fn try_hold(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
    observer: &mut Observer,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    let unchanged_for =
        observer.observe(current.as_ref().and_then(|l| l.metadata.resource_version.as_deref()), Instant::now());
    let step = decide(current.as_ref(), identity, unchanged_for);
    if step == Step::TakeOver {
        tracing::info!(lease = name, identity, ?unchanged_for, "the leader lease expired as seen here; taking it over");
    }
    let lease = || held_lease(current.as_ref(), name, identity, duration, jiff::Timestamp::now());
    match step {
        Step::Wait => Ok(false),
        Step::Create => write_outcome(api.create(&PostParams::default(), &lease()).await),
        Step::Renew | Step::TakeOver => write_outcome(api.replace(name, &PostParams::default(), &lease()).await),
    }
}

/// [`try_hold`] bounded by `limit`.
async fn attempt(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
    observer: &mut Observer,
    limit: Duration,
) -> Result<bool, String> {
    match tokio::time::timeout(limit, try_hold(api, name, identity, duration, observer)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Runs `work` whenever this instance holds the Lease `kube-system/<name>`; stops it when the lease is lost. `work`'s
/// future is dropped (and awaited) before another round of the election: whatever it owns, such as a
/// [`tokio::task::JoinSet`] of its tasks, is gone with it.
pub async fn run_as_leader<F, Fut>(client: kube::Client, name: &str, identity: &str, timings: Timings, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, "kube-system");
    let mut observer = Observer::default();
    loop {
        let started = Instant::now();
        let lease = timings.lease_duration;
        match attempt(&api, name, identity, lease, &mut observer, API_TIMEOUT.min(timings.renew_deadline)).await {
            Ok(true) => {
                tracing::info!(lease = name, identity, "became the leader");
                let mut task = tokio::spawn(work());
                // Leadership ends at this instant unless a renewal that starts before it succeeds; nothing waits past it.
                let mut deadline = started + timings.renew_deadline;
                let lost = loop {
                    tokio::select! {
                        _ = &mut task => break "the controllers ended",
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline.min(Instant::now() + timings.retry_period))) => {}
                    }
                    let attempt_started = Instant::now();
                    let Some(left) = deadline.checked_duration_since(attempt_started).filter(|d| !d.is_zero()) else {
                        break "the lease could not be renewed in time";
                    };
                    match attempt(&api, name, identity, lease, &mut observer, left.min(API_TIMEOUT)).await {
                        Ok(true) => deadline = attempt_started + timings.renew_deadline,
                        Ok(false) => break "another instance holds the lease",
                        Err(e) => tracing::warn!(error = %e, "renewing the leader lease failed"),
                    }
                };
                task.abort();
                let _ = task.await;
                tracing::warn!(lease = name, identity, reason = lost, "lost the leader lease; controllers stopped");
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(timings.retry_period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(holder: &str, version: &str, renewed: &str) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "l", "resourceVersion": version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed}
        }))
        .expect("lease")
    }

    #[test]
    fn the_decision_table() {
        let s = Duration::from_secs;
        let other = lease("other", "7", "2026-01-01T00:00:00.000000Z");
        let released = lease("", "7", "2026-01-01T00:00:00.000000Z");
        for (lease, me, unchanged, want) in [
            (None, "me", s(0), Step::Create),
            (Some(&other), "other", s(0), Step::Renew),
            (Some(&other), "other", s(60), Step::Renew),
            (Some(&other), "me", s(0), Step::Wait),
            (Some(&other), "me", s(15), Step::Wait),
            (Some(&other), "me", s(16), Step::TakeOver),
            (Some(&released), "me", s(0), Step::TakeOver),
        ] {
            assert_eq!(decide(lease, me, unchanged), want, "{me} {unchanged:?} {lease:?}");
        }
    }

    #[test]
    fn expiry_counts_from_when_this_candidate_saw_the_version_not_from_the_holders_clock() {
        // Clock skew: the holder's clock runs an hour behind ours, so its renewTime is always an hour old here (the
        // election this replaces took that as expired and made a second leader). The holder keeps renewing, so the
        // version keeps changing and the Lease never expires, whatever renewTime says.
        let t0 = Instant::now();
        let mut seen = Observer::default();
        for (i, at) in [0u64, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 40].into_iter().enumerate() {
            let l = lease("other", &format!("{}", 100 + i), "2026-01-01T00:00:00.000000Z");
            let unchanged = seen.observe(l.metadata.resource_version.as_deref(), t0 + Duration::from_secs(at));
            assert_eq!(decide(Some(&l), "me", unchanged), Step::Wait, "renewed at {at} s");
        }
        // Now the holder stops (its last version, seen at 40 s, stays): it may be taken over only a lease duration after we saw that
        // version, even though its renewTime is in the future here (a holder whose clock runs ahead).
        let last = lease("other", "111", "2099-01-01T00:00:00.000000Z");
        for (at, want) in [(41, Step::Wait), (55, Step::Wait), (56, Step::TakeOver)] {
            let unchanged = seen.observe(Some("111"), t0 + Duration::from_secs(at));
            assert_eq!(decide(Some(&last), "me", unchanged), want, "at {at} s");
        }
        assert_eq!(seen.observe(None, t0 + Duration::from_secs(58)), Duration::ZERO, "a deleted Lease is forgotten");
    }

    #[test]
    fn the_holder_stops_before_any_other_candidate_may_take_over() {
        // The holder counts from the start of its renewal, which is no later than anyone else can see its effect, and
        // no attempt runs past its deadline; the margin covers stopping the work and clocks that tick at different
        // rates.
        assert!(RENEW_DEADLINE + Duration::from_secs(3) < LEASE_DURATION);
        assert!(RENEW_DEADLINE > RENEW_EVERY * 2 + API_TIMEOUT, "one failed renewal does not end leadership");
    }

    #[test]
    fn timings_must_let_the_holder_stop_first() {
        let s = Duration::from_secs;
        assert_eq!(Timings::default().validate(), Ok(()));
        let t = |l, d, r| Timings { lease_duration: s(l), renew_deadline: s(d), retry_period: s(r) };
        assert_eq!(t(4, 3, 1).validate(), Ok(()));
        assert!(t(3, 3, 1).validate().is_err(), "deadline not below the lease");
        assert!(t(4, 1, 1).validate().is_err(), "retry not below the deadline");
        assert!(t(4, 3, 0).validate().is_err(), "no retry period");
    }

    #[test]
    fn holding_keeps_the_acquire_time_and_counts_transitions() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let mut mine = lease("me", "9", "2026-01-01T00:00:00.000000Z");
        mine.spec.as_mut().expect("spec").acquire_time = Some(MicroTime("2026-01-01T00:00:00Z".parse().expect("t")));
        mine.spec.as_mut().expect("spec").lease_transitions = Some(3);
        let renewed = held_lease(Some(&mine), "l", "me", LEASE_DURATION, now);
        let spec = renewed.spec.as_ref().expect("spec");
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("9"), "the write is guarded by what was read");
        assert_eq!(spec.acquire_time, mine.spec.as_ref().expect("spec").acquire_time);
        assert_eq!(spec.lease_transitions, Some(3));
        let taken = held_lease(Some(&mine), "l", "other", LEASE_DURATION, now);
        let spec = taken.spec.as_ref().expect("spec");
        assert_eq!((spec.acquire_time.as_ref().map(|t| t.0), spec.lease_transitions), (Some(now), Some(4)));
    }
}

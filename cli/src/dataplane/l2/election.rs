//! Who announces a LoadBalancer pool address: one Lease per address (`kube-system/skiff-lb-A-B-C-D`), held by one
//! eligible node and renewed several times per lease duration. Expiry is judged as client-go's leader election
//! does: from when *this* agent last saw the Lease change, never from the holder's timestamps, so clock skew between
//! nodes cannot make two holders. Writes carry the resourceVersion they were decided on, so two nodes that both see
//! an expired Lease cannot both take it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub use skiff_api::loadbalancer::ANNOUNCE_NAMESPACE as LEASE_NAMESPACE;
/// A holder that has not renewed for this long (as seen by the others) loses the address.
pub const LEASE_DURATION: Duration = Duration::from_secs(1);
/// How often the holder renews and the others look.
pub const TICK: Duration = Duration::from_millis(250);
/// A holder that has not renewed for this long stops announcing (before [`LEASE_DURATION`], when others may take
/// over); the kernel side stops answering at the same moment (`L2Entry::expires`).
pub const RENEW_DEADLINE: Duration = Duration::from_millis(750);
/// The longest one Lease read or write may take before the pass treats the API server as unreachable.
pub const API_TIMEOUT: Duration = Duration::from_millis(400);

/// The Lease name of an address.
pub fn lease_name(ip: Ipv4Addr) -> String {
    skiff_api::loadbalancer::announcement_lease(ip)
}

/// What this agent sees of a Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// `spec.holderIdentity` (empty: released).
    pub holder: String,
    /// `metadata.resourceVersion`: changes on every renewal.
    pub version: String,
}

/// What to do about one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it as holder.
    Create,
    /// This node holds it: renew.
    Renew,
    /// Released, or its holder stopped renewing: take it over.
    TakeOver,
    /// This node holds it but may no longer announce it: give it up.
    Release,
    /// Someone else holds it (or nobody needs it): nothing to write.
    Wait,
}

/// The decision for one address. `unchanged_for`: how long this agent has seen the Lease's current version.
pub fn decide(me: &str, eligible: bool, lease: Option<&LeaseView>, unchanged_for: Duration) -> Step {
    match (eligible, lease) {
        (true, None) => Step::Create,
        (true, Some(l)) if l.holder == me => Step::Renew,
        (true, Some(l)) if l.holder.is_empty() || unchanged_for > LEASE_DURATION => Step::TakeOver,
        (false, Some(l)) if l.holder == me => Step::Release,
        _ => Step::Wait,
    }
}

/// When this agent first saw each Lease's current version.
#[derive(Debug, Default)]
pub struct Observations {
    seen: BTreeMap<String, (String, Instant)>,
}

impl Observations {
    /// Records what was read at `now`; returns how long the version has been unchanged.
    pub fn observe(&mut self, name: &str, version: Option<&str>, now: Instant) -> Duration {
        let Some(version) = version else {
            self.seen.remove(name);
            return Duration::ZERO;
        };
        let entry = self.seen.entry(name.to_string()).or_insert_with(|| (version.to_string(), now));
        if entry.0 != version {
            *entry = (version.to_string(), now);
        }
        now.saturating_duration_since(entry.1)
    }

    /// Forgets Leases no longer looked at.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.seen.retain(|name, _| keep(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str) -> LeaseView {
        LeaseView { holder: holder.into(), version: "1".into() }
    }

    #[test]
    fn the_decision_table() {
        let fresh = Duration::from_millis(300);
        let stale = LEASE_DURATION + Duration::from_millis(1);
        let cases: &[(bool, Option<LeaseView>, Duration, Step)] = &[
            (true, None, fresh, Step::Create),
            (true, Some(lease("n1")), stale, Step::Renew),
            (true, Some(lease("n2")), fresh, Step::Wait),
            (true, Some(lease("n2")), stale, Step::TakeOver),
            (true, Some(lease("")), fresh, Step::TakeOver),
            (false, Some(lease("n1")), fresh, Step::Release),
            (false, Some(lease("n2")), stale, Step::Wait),
            (false, None, fresh, Step::Wait),
        ];
        for (eligible, l, age, want) in cases {
            assert_eq!(decide("n1", *eligible, l.as_ref(), *age), *want, "{eligible} {l:?} {age:?}");
        }
        assert_eq!(lease_name("10.0.0.200".parse().expect("ip")), "skiff-lb-10-0-0-200");
    }

    #[test]
    fn expiry_counts_from_when_this_agent_saw_the_version_change() {
        let t0 = Instant::now();
        let mut obs = Observations::default();
        assert_eq!(obs.observe("l", Some("5"), t0), Duration::ZERO);
        assert_eq!(obs.observe("l", Some("5"), t0 + Duration::from_secs(3)), Duration::from_secs(3));
        // a renewal (new version) restarts the clock, whatever time the holder wrote into it
        assert_eq!(obs.observe("l", Some("6"), t0 + Duration::from_secs(4)), Duration::ZERO);
        assert_eq!(obs.observe("l", Some("6"), t0 + Duration::from_millis(4500)), Duration::from_millis(500));
        assert_eq!(obs.observe("l", None, t0 + Duration::from_secs(5)), Duration::ZERO);
        assert_eq!(obs.observe("l", Some("6"), t0 + Duration::from_secs(6)), Duration::ZERO, "gone, then seen anew");
    }
}

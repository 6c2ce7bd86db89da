//! Leader election through a `coordination.k8s.io/v1` Lease, so several control-plane instances run one active
//! set of controllers: the holder renews the Lease every 2 s; another instance takes it over once it has not been
//! renewed for its duration; an instance that cannot renew stops its work before the Lease can expire.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// What a Lease says about `identity` now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// We hold it (or may take it): renew/acquire.
    Acquire,
    /// Someone else holds a valid lease.
    Follower,
}

/// Decides from the current Lease whether `identity` may hold it at `now`.
pub fn standing(lease: Option<&Lease>, identity: &str, now: jiff::Timestamp) -> Standing {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else { return Standing::Acquire };
    if spec.holder_identity.as_deref().is_none_or(|h| h == identity || h.is_empty()) {
        return Standing::Acquire;
    }
    let duration = spec.lease_duration_seconds.map(i64::from).unwrap_or(LEASE_DURATION.as_secs() as i64);
    match spec.renew_time.as_ref() {
        Some(t) if now.duration_since(t.0).as_secs() <= duration => Standing::Follower,
        _ => Standing::Acquire,
    }
}

/// Tries to acquire or renew the lease; `Ok(true)` when we hold it afterwards.
async fn try_hold(api: &Api<Lease>, name: &str, identity: &str) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let current = api.get_opt(name).await?;
    if standing(current.as_ref(), identity, now) == Standing::Follower {
        return Ok(false);
    }
    let was_ours = current.as_ref().and_then(|l| l.spec.as_ref()?.holder_identity.as_deref()) == Some(identity);
    let transitions = current.as_ref().and_then(|l| l.spec.as_ref()?.lease_transitions).unwrap_or(0);
    let acquire_time = if was_ours {
        current.as_ref().and_then(|l| l.spec.as_ref()?.acquire_time.clone())
    } else {
        Some(MicroTime(now))
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("kube-system".into()),
            resource_version: current.as_ref().and_then(|l| l.metadata.resource_version.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time,
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if was_ours { transitions } else { transitions + 1 }),
            ..Default::default()
        }),
    };
    let r = match current {
        Some(_) => api.replace(name, &PostParams::default(), &lease).await,
        None => api.create(&PostParams::default(), &lease).await,
    };
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `work` whenever this instance holds the Lease `kube-system/<name>`; stops it when the lease is lost.
pub async fn run_as_leader<F, Fut>(client: kube::Client, name: &str, identity: &str, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, "kube-system");
    loop {
        match try_hold(&api, name, identity).await {
            Ok(true) => {
                tracing::info!(lease = name, identity, "became the leader");
                let task = tokio::spawn(work());
                let mut last_renewal = std::time::Instant::now();
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    match try_hold(&api, name, identity).await {
                        Ok(true) => last_renewal = std::time::Instant::now(),
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "renewing the leader lease failed");
                            if last_renewal.elapsed() > LEASE_DURATION - RENEW_EVERY * 2 {
                                break;
                            }
                        }
                    }
                }
                task.abort();
                tracing::warn!(lease = name, identity, "lost the leader lease; controllers stopped");
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(holder: &str, renewed: &str) -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed}})).expect("lease")
    }

    #[test]
    fn a_valid_lease_of_another_holder_makes_us_a_follower_until_it_expires() {
        let now: jiff::Timestamp = "2026-01-01T00:00:20Z".parse().expect("time");
        assert_eq!(standing(None, "me", now), Standing::Acquire);
        assert_eq!(standing(Some(&lease("me", "2026-01-01T00:00:19.000000Z")), "me", now), Standing::Acquire);
        assert_eq!(standing(Some(&lease("other", "2026-01-01T00:00:10.000000Z")), "me", now), Standing::Follower);
        assert_eq!(standing(Some(&lease("other", "2026-01-01T00:00:01.000000Z")), "me", now), Standing::Acquire);
    }
}

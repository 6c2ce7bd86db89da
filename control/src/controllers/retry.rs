//! What a controller does with a failed reconcile: retry the object with a per-object exponential back-off (as
//! client-go's workqueue rate limiter does), count the failure by controller, operation and reason
//! (`skiff_controller_reconcile_errors_total`), and tell the user with a Warning Event on the object, where
//! `kubectl describe` shows it. A success resets the object's back-off.
//!
//! The decisions are pure ([`backoff`], [`reason`], [`event_of`]); [`reconciler`] and [`policy`] wrap a
//! controller's reconcile for kube-runtime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::runtime::controller::Action;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use skiff_client::events::EventType;

use super::ctx::{Ctx, ReconcileError};

/// The wait before the first retry of an object.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between retries of an object.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Labels of `skiff_controller_reconcile_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller, as its Events name it (`replicaset-controller`).
    pub controller: String,
    /// What failed: `sync` (an action) or `status` (the status write).
    pub operation: String,
    /// Why: the API's answer (`Conflict`, `NotFound`, `Forbidden`, `Invalid`, `TooManyRequests`, `ServerError`,
    /// `BadRequest`), `Unreachable` when there was none, or `InvalidSpec`.
    pub reason: String,
}

/// The failure counter family and each object's consecutive failures.
#[derive(Debug, Default)]
pub struct Retries {
    /// `skiff_controller_reconcile_errors_total` (registered by the API server's metrics).
    pub errors: Family<ErrorLabels, Counter>,
    failures: Mutex<HashMap<(&'static str, String), u32>>,
}

impl Retries {
    /// Counts into `errors`.
    pub fn new(errors: Family<ErrorLabels, Counter>) -> Self {
        Retries { errors, failures: Mutex::default() }
    }

    /// Records one more failure of `key` under `controller` and answers how many in a row it has had.
    fn failed(&self, controller: &'static str, key: String) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry((controller, key)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Counts a failure of a controller that is not run by kube-runtime (it retries on its own next pass).
    pub fn count(&self, controller: &'static str, err: &ReconcileError) {
        let (operation, reason) = reason(err);
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                operation: operation.into(),
                reason: reason.into(),
            })
            .inc();
        tracing::warn!(controller, error = %err, "controller pass failed; retrying on the next pass");
    }

    /// Forgets the failures of `key` (it reconciled).
    fn succeeded(&self, controller: &'static str, key: String) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.remove(&(controller, key));
    }
}

/// The wait before retrying an object that failed `failures` times in a row: 250 ms doubling up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1u32 << doublings).min(MAX_RETRY)
}

/// The metric's `operation` and `reason` of an error.
pub fn reason(err: &ReconcileError) -> (&'static str, &'static str) {
    let api_reason = |e: &kube::Error| match e {
        kube::Error::Api(s) => match s.code {
            409 => "Conflict",
            404 => "NotFound",
            403 => "Forbidden",
            422 => "Invalid",
            429 => "TooManyRequests",
            500..=599 => "ServerError",
            _ => "BadRequest",
        },
        _ => "Unreachable",
    };
    match err {
        ReconcileError::Api(e) => ("sync", api_reason(e)),
        ReconcileError::Status(e) => ("status", api_reason(e)),
        ReconcileError::Invalid(_) => ("sync", "InvalidSpec"),
    }
}

/// The Warning Event a failure is shown as: reason and message. None when the object itself is gone.
pub fn event_of(err: &ReconcileError) -> Option<(&'static str, String)> {
    match err {
        ReconcileError::Api(kube::Error::Api(s)) | ReconcileError::Status(kube::Error::Api(s)) if s.code == 404 => None,
        ReconcileError::Status(e) => Some(("FailedUpdateStatus", format!("Error updating status: {e}"))),
        ReconcileError::Api(e) => Some(("FailedSync", format!("Error syncing: {e}"))),
        ReconcileError::Invalid(m) => Some(("FailedSync", format!("Invalid spec: {m}"))),
    }
}

fn key<K: kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    kube::runtime::reflector::ObjectRef::from_obj(obj).to_string()
}

/// Wraps a reconcile so that a success resets the object's back-off.
pub fn reconciler<K, F, Fut>(
    controller: &'static str,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<Ctx>) -> BoxFuture<'static, Result<Action, ReconcileError>>
where
    K: kube::Resource<DynamicType = ()> + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Ctx>) -> Fut,
    Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
{
    move |obj, ctx| {
        let key = key(obj.as_ref());
        let run = reconcile(obj, ctx.clone());
        async move {
            let result = run.await;
            if result.is_ok() {
                ctx.retries.succeeded(controller, key);
            }
            result
        }
        .boxed()
    }
}

/// The error policy of `controller`: count, tell, and retry after the object's back-off.
pub fn policy<K>(controller: &'static str) -> impl Fn(Arc<K>, &ReconcileError, Arc<Ctx>) -> Action
where
    K: kube::Resource<DynamicType = ()> + Send + Sync + 'static,
{
    move |obj, err, ctx| {
        let failures = ctx.retries.failed(controller, key(obj.as_ref()));
        let (operation, reason) = reason(err);
        ctx.retries
            .errors
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                operation: operation.into(),
                reason: reason.into(),
            })
            .inc();
        let wait = backoff(failures);
        tracing::warn!(controller, object = %key(obj.as_ref()), error = %err, failures, retry_in = ?wait, "reconcile failed");
        if let Some((event_reason, message)) = event_of(err) {
            let recorder = ctx.recorders.get(controller);
            let oref = skiff_client::events::reference(obj.as_ref());
            tokio::spawn(async move { recorder.record(&oref, EventType::Warning, event_reason, &message).await });
        }
        Action::requeue(wait)
    }
}

/// A status write's outcome as a reconcile result: the object being gone is no failure.
pub fn status_written<T>(r: Result<T, kube::Error>) -> Result<(), ReconcileError> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(ReconcileError::Status(e)),
    }
}

/// A write's outcome when its target being gone already (404) means it is done.
pub fn unless_gone<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status::failure("boom", "Reason").with_code(code)))
    }

    #[test]
    fn backoff_doubles_from_a_quarter_second_and_stops_at_five_minutes() {
        let table = [
            (0, 250),
            (1, 250),
            (2, 500),
            (3, 1_000),
            (5, 4_000),
            (11, 256_000),
            (12, 300_000),
            (40, 300_000),
            (u32::MAX, 300_000),
        ];
        for (failures, ms) in table {
            assert_eq!(backoff(failures), Duration::from_millis(ms), "after {failures} failures");
        }
    }

    #[test]
    fn reasons_name_the_operation_and_the_apis_answer() {
        let table: Vec<(ReconcileError, (&str, &str), Option<&str>)> = vec![
            (ReconcileError::Status(api(409)), ("status", "Conflict"), Some("FailedUpdateStatus")),
            (ReconcileError::Status(api(503)), ("status", "ServerError"), Some("FailedUpdateStatus")),
            (ReconcileError::Status(api(404)), ("status", "NotFound"), None),
            (ReconcileError::Api(api(403)), ("sync", "Forbidden"), Some("FailedSync")),
            (ReconcileError::Api(api(422)), ("sync", "Invalid"), Some("FailedSync")),
            (ReconcileError::Api(api(429)), ("sync", "TooManyRequests"), Some("FailedSync")),
            (ReconcileError::Api(api(400)), ("sync", "BadRequest"), Some("FailedSync")),
            (ReconcileError::Api(api(404)), ("sync", "NotFound"), None),
            (ReconcileError::Invalid("no pod template".into()), ("sync", "InvalidSpec"), Some("FailedSync")),
        ];
        for (err, want, event) in table {
            assert_eq!(reason(&err), want, "{err}");
            assert_eq!(event_of(&err).map(|(r, _)| r), event, "{err}");
        }
        let (_, message) = event_of(&ReconcileError::Status(api(500))).expect("an event");
        assert!(message.starts_with("Error updating status: ") && message.contains("boom"), "{message}");
    }

    #[test]
    fn a_failure_counts_until_a_success_resets_it() {
        let r = Retries::default();
        assert_eq!(r.failed("rs", "d/a".into()), 1);
        assert_eq!(r.failed("rs", "d/a".into()), 2);
        assert_eq!(r.failed("ds", "d/a".into()), 1, "per controller");
        assert_eq!(r.failed("rs", "d/b".into()), 1, "per object");
        r.succeeded("rs", "d/a".into());
        assert_eq!(r.failed("rs", "d/a".into()), 1);
    }

    #[test]
    fn only_a_gone_target_turns_an_error_into_success() {
        assert!(status_written(Err::<(), _>(api(404))).is_ok());
        assert!(matches!(status_written(Err::<(), _>(api(409))), Err(ReconcileError::Status(_))));
        assert!(unless_gone(Err::<(), _>(api(404))).is_ok());
        assert!(unless_gone(Err::<(), _>(api(500))).is_err());
        assert!(unless_gone(Ok::<_, kube::Error>(1)).is_ok());
    }
}

//! Compare-and-swap writes, retried when they lose a race: every read-modify-write of the API server (update,
//! patch, apply, scale, binding, delete, and the server's own `update_with`) reads the object, computes the new one,
//! and stores it only if the stored revision is still the one it read. Losing that race to another writer is not
//! the client's error; the write is recomputed on the newer object, up to [`ATTEMPTS`] times, as kube-apiserver's
//! `GuaranteedUpdate` does. A client that pinned a `resourceVersion` gets the 409 at once instead.

use super::error::{ApiError, ApiResult};

/// How many times a write that lost a race is recomputed before the client is answered 409.
pub const ATTEMPTS: usize = 16;

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Finished: this is the answer.
    Done(T),
    /// Another writer got there first: read again and recompute.
    LostRace,
}

/// Runs the block (an attempt: `ApiResult<Attempt<T>>`, in which `return` and `?` end the attempt) until it
/// finishes or fails, at most [`ATTEMPTS`] times; then a 409 Conflict for `name` of `info`. A macro rather than a
/// function taking an async closure: the attempt borrows the request's state, and a future borrowing through an
/// async closure cannot be shown to be `Send` to the HTTP server.
macro_rules! retry {
    ($info:expr, $name:expr, $attempt:block) => {{
        let mut outcome = Err($crate::apiserver::error::ApiError::conflict($info, $name));
        for _ in 0..$crate::apiserver::cas::ATTEMPTS {
            match (async $attempt).await {
                Ok($crate::apiserver::cas::Attempt::Done(v)) => {
                    outcome = Ok(v);
                    break;
                }
                Ok($crate::apiserver::cas::Attempt::LostRace) => {}
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        outcome
    }};
}
pub(crate) use retry;

/// Whether `e` is a lost compare-and-swap: a 409 Conflict without causes (server-side apply's field-manager
/// conflicts carry causes, and are the client's to resolve).
pub fn lost_race(e: &ApiError) -> bool {
    e.code == 409 && e.reason == "Conflict" && e.details.as_ref().is_none_or(|d| d.get("causes").is_none())
}

/// A commit's result as an attempt: a lost race is retried when `may_retry` (the client pinned no version), any
/// other outcome is final.
pub fn settle<T>(result: ApiResult<T>, may_retry: bool) -> ApiResult<Attempt<T>> {
    match result {
        Ok(v) => Ok(Attempt::Done(v)),
        Err(e) if may_retry && lost_race(&e) => Ok(Attempt::LostRace),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::registry::ResourceInfo;

    fn pods() -> ResourceInfo {
        skiff_api::registry::builtin().into_iter().find(|r| r.group.is_empty() && r.plural == "pods").expect("pods")
    }

    #[tokio::test]
    async fn a_lost_race_is_retried_a_bounded_number_of_times() {
        let info = pods();
        let mut calls = 0;
        let got: ApiResult<usize> = retry!(&info, "p", {
            calls += 1;
            Ok(if calls < 3 { Attempt::LostRace } else { Attempt::Done(calls) })
        });
        assert_eq!(got.expect("done on the third"), 3);
        let mut calls = 0;
        let never: ApiResult<()> = retry!(&info, "p", {
            calls += 1;
            Ok(Attempt::LostRace)
        });
        assert_eq!((never.expect_err("gives up").code, calls), (409, ATTEMPTS));
        let failed: ApiResult<()> = retry!(&info, "p", {
            if calls > 0 {
                return Err(ApiError::bad_request("no"));
            }
            Ok(Attempt::LostRace)
        });
        assert_eq!(failed.expect_err("an error ends it").code, 400);
    }

    #[test]
    fn only_plain_conflicts_are_races_and_only_unpinned_writes_retry() {
        let info = pods();
        let race = ApiError::conflict(&info, "p");
        assert!(lost_race(&race));
        assert!(matches!(settle::<()>(Err(race.clone()), true), Ok(Attempt::LostRace)));
        assert!(settle::<()>(Err(race), false).is_err(), "a pinned resourceVersion gets the 409");
        let mut apply_conflict = ApiError::conflict(&info, "p");
        apply_conflict.details = Some(serde_json::json!({"causes": [{"field": ".spec.replicas"}]}));
        assert!(!lost_race(&apply_conflict));
        assert!(!lost_race(&ApiError::bad_request("no")));
        assert!(matches!(settle(Ok(1), true), Ok(Attempt::Done(1))));
    }
}

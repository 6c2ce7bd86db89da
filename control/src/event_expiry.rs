//! Events expire on the SQLite datastore as they do on etcd (where a lease does it, see
//! [`crate::storage::etcd::Expiry`]): a sweep deletes every Event whose last write is older than the TTL. The last
//! write is read from the Event itself: the latest of its `metadata.creationTimestamp`, `lastTimestamp`,
//! `eventTime` and `series.lastObservedTime` (what the recorders set when they write). Each Event is deleted only
//! at the revision the sweep read, so one updated meanwhile is kept. Deleted through the store, so watchers see
//! the deletions, as with etcd's leases.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use crate::storage::{KeyValue, ListOptions, Revision, Storage, StorageError};

/// Where Events are stored.
pub const EVENTS_PREFIX: &str = "/registry/events/";
/// How often the sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Events read per page.
const PAGE: usize = 500;

/// When a stored Event was last written, by its own timestamps (`None` when it has none that parse).
pub fn last_written(event: &Value) -> Option<Timestamp> {
    [
        "/metadata/creationTimestamp",
        "/lastTimestamp",
        "/eventTime",
        "/series/lastObservedTime",
        "/deprecatedLastTimestamp",
    ]
    .into_iter()
    .filter_map(|p| event.pointer(p).and_then(Value::as_str))
    .filter_map(|t| t.parse::<Timestamp>().ok())
    .max()
}

/// The Events of `page` whose last write is more than `ttl` before `now`, with the revision each was read at. An
/// Event that cannot be read, or has no timestamp, is kept.
pub fn expired(page: &[KeyValue], ttl: Duration, now: Timestamp) -> Vec<(String, Revision)> {
    let Ok(ttl) = jiff::SignedDuration::try_from(ttl) else { return Vec::new() };
    let Ok(cutoff) = now.checked_sub(ttl) else { return Vec::new() };
    page.iter()
        .filter(|kv| {
            serde_json::from_slice::<Value>(&kv.value).ok().and_then(|v| last_written(&v)).is_some_and(|t| t < cutoff)
        })
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect()
}

/// One sweep: the number of Events deleted.
pub async fn sweep(store: &dyn Storage, ttl: Duration, now: Timestamp) -> Result<usize, StorageError> {
    let mut deleted = 0;
    let mut start = None;
    // bounded: every page moves `start` past its last key
    loop {
        let page =
            store.list(EVENTS_PREFIX, ListOptions { start: start.clone(), limit: Some(PAGE), revision: None }).await?;
        for (key, revision) in expired(&page.items, ttl, now) {
            match store.delete(&key, Some(revision)).await {
                Ok(_) => deleted += 1,
                // written or deleted since it was read: the next sweep looks again
                Err(StorageError::Conflict { .. } | StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        match page.items.last() {
            Some(last) if page.more => start = Some(format!("{}\0", last.key)),
            _ => return Ok(deleted),
        }
    }
}

/// Sweeps every [`SWEEP_EVERY`] until the task is dropped.
pub async fn run(store: Arc<dyn Storage>, ttl: Duration) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(store.as_ref(), ttl, Timestamp::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired Events removed"),
            Err(e) => tracing::warn!(error = %e, "removing expired Events failed (retried at the next sweep)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;
    use bytes::Bytes;

    fn event(created: &str, last: Option<&str>) -> Bytes {
        let mut v = serde_json::json!({"metadata": {"name": "e", "creationTimestamp": created}, "reason": "R"});
        if let Some(l) = last {
            v["lastTimestamp"] = Value::from(l);
        }
        Bytes::from(serde_json::to_vec(&v).expect("json"))
    }

    #[test]
    fn the_last_write_is_the_latest_timestamp_of_the_event() {
        let t = |s: &str| s.parse::<Timestamp>().expect("timestamp");
        let cases: [(Value, Option<Timestamp>); 4] = [
            (
                serde_json::json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}}),
                Some(t("2026-01-01T00:00:00Z")),
            ),
            (
                serde_json::json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "lastTimestamp": "2026-01-01T01:00:00Z"}),
                Some(t("2026-01-01T01:00:00Z")),
            ),
            (
                serde_json::json!({"eventTime": "2026-01-01T00:00:00.500000Z", "series": {"lastObservedTime": "2026-01-02T00:00:00.000001Z"}}),
                Some(t("2026-01-02T00:00:00.000001Z")),
            ),
            (serde_json::json!({"metadata": {"creationTimestamp": "not a time"}}), None),
        ];
        for (event, want) in cases {
            assert_eq!(last_written(&event), want, "{event}");
        }
    }

    #[tokio::test]
    async fn a_sweep_deletes_only_events_past_their_ttl() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStorage::open(dir.path().join("state.db")).expect("sqlite");
        let now: Timestamp = "2026-06-01T12:00:00Z".parse().expect("now");
        let hour = Duration::from_secs(3600);
        store.create("/registry/events/ns/old", event("2026-06-01T10:00:00Z", None)).await.expect("old");
        store
            .create("/registry/events/ns/renewed", event("2026-06-01T10:00:00Z", Some("2026-06-01T11:30:00Z")))
            .await
            .expect("renewed");
        store.create("/registry/events/ns/new", event("2026-06-01T11:59:00Z", None)).await.expect("new");
        store.create("/registry/events/ns/unreadable", Bytes::from_static(b"{")).await.expect("unreadable");
        store.create("/registry/configmaps/ns/old", event("2026-06-01T10:00:00Z", None)).await.expect("not an event");
        for i in 0..(PAGE + 3) {
            store
                .create(&format!("/registry/events/many/e{i:04}"), event("2026-06-01T09:00:00Z", None))
                .await
                .expect("many");
        }
        let deleted = sweep(&store, hour, now).await.expect("sweep");
        assert_eq!(deleted, 1 + PAGE + 3, "the old event and every one of the many, across pages");
        let left: Vec<String> = store
            .list("/registry/", ListOptions::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(
            left,
            [
                "/registry/configmaps/ns/old",
                "/registry/events/ns/new",
                "/registry/events/ns/renewed",
                "/registry/events/ns/unreadable"
            ]
        );
        assert_eq!(sweep(&store, hour, now).await.expect("sweep again"), 0);
    }
}

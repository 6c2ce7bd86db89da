//! The watch cache: one storage watch per resource type per server, fanned out to every client watch of that type,
//! as kube-apiserver's cacher does — 1,000 watchers of pods are one etcd watch, and each event is decrypted and
//! decoded once for all of them.
//!
//! Each type's *feed* follows the store from the first watch of that type on and keeps its last [`HISTORY`]
//! events. A client watch from a revision the history covers replays it and then follows the feed live; one from an
//! older revision is served by the store itself (which answers `Compacted`, 410 Gone to clients, when that is
//! gone too); a watcher that falls behind the live feed catches up from the history, or from the store. A gap in a
//! feed (its own watch compacted away while reconnecting) ends its watchers with `Compacted`, so they relist rather
//! than miss a change.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{Revision, SharedEvent, Storage, StorageError, WatchStream};

/// Events kept per resource type for watchers that start behind or fall behind.
pub const HISTORY: usize = 1024;

/// What a feed broadcasts: an event, a gap (watchers must relist), or its storage watch's error (watchers end
/// with it, as they did on their own storage watch, and watch again).
#[derive(Clone)]
enum Item {
    Event(Arc<SharedEvent>),
    Gap,
    Failed(Arc<str>),
}

/// One resource type's shared watch.
struct Feed {
    state: Mutex<FeedState>,
    live: broadcast::Sender<Item>,
}

struct FeedState {
    /// Every event of the type with a revision above `covers_after` is in `history` (or still to come).
    covers_after: Revision,
    history: VecDeque<Arc<SharedEvent>>,
}

/// The store, and a count of the storage watches open on it.
#[derive(Clone)]
struct Source {
    store: Arc<dyn Storage>,
    open: Arc<AtomicUsize>,
}

impl Source {
    /// A storage watch, counted while `events` lives (the caller ends it with [`Source::closed`]).
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StorageError> {
        let events = self.store.watch(prefix, after).await?;
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(events)
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The watch cache of one server.
pub struct WatchCache {
    source: Source,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let feeds = self.feeds.lock().map(|f| f.len()).unwrap_or_default();
        f.debug_struct("WatchCache").field("feeds", &feeds).finish_non_exhaustive()
    }
}

impl WatchCache {
    /// A cache over `store`.
    pub fn new(store: Arc<dyn Storage>) -> Self {
        WatchCache { source: Source { store, open: Arc::default() }, feeds: Mutex::default() }
    }

    /// Storage watches open now (the feeds', plus watchers served by the store directly).
    pub fn storage_watches(&self) -> usize {
        self.source.open.load(Ordering::SeqCst)
    }

    /// Changes under `prefix` after revision `after`, from the feed of the resource type stored under
    /// `type_prefix` (which `prefix` starts with).
    pub async fn watch(&self, type_prefix: &str, prefix: &str, after: Revision) -> Result<WatchStream, StorageError> {
        debug_assert!(prefix.starts_with(type_prefix));
        let feed = self.feed(type_prefix, after).await?;
        let (tx, rx) = mpsc::channel::<Result<Arc<SharedEvent>, StorageError>>(256);
        let (source, prefix) = (self.source.clone(), prefix.to_string());
        tokio::spawn(async move { follow(feed, source, prefix, after, tx).await });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// The feed of `type_prefix`, started from `after` (the first watcher's revision) when there is none yet.
    async fn feed(&self, type_prefix: &str, after: Revision) -> Result<Arc<Feed>, StorageError> {
        if let Some(f) = self.feeds.lock().unwrap_or_else(|p| p.into_inner()).get(type_prefix) {
            return Ok(f.clone());
        }
        // the first watch of this type: its storage watch is opened here, so a refusal (compacted) reaches the
        // caller and no feed is left behind; a revision from the future starts it now (the store's revision), so
        // the watchers after it are still served by the feed
        let after = after.min(self.source.store.revision().await?);
        let upstream = self.source.watch(type_prefix, after).await?;
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = feeds.get(type_prefix) {
            return Ok(f.clone()); // another watcher started one meanwhile: ours is dropped
        }
        let feed = Arc::new(Feed {
            state: Mutex::new(FeedState { covers_after: after, history: VecDeque::new() }),
            live: broadcast::channel(1024).0,
        });
        feeds.insert(type_prefix.to_string(), feed.clone());
        tokio::spawn(run_feed(feed.clone(), self.source.clone(), type_prefix.to_string(), after, upstream));
        Ok(feed)
    }
}

/// Follows the store for one resource type for the life of the server, reconnecting from the last revision seen.
async fn run_feed(feed: Arc<Feed>, source: Source, prefix: String, mut last: Revision, mut upstream: WatchStream) {
    let mut backoff = Duration::from_millis(100);
    loop {
        while let Some(ev) = upstream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    // an event that cannot be read (a value that does not decrypt): every watcher hears of it
                    let _ = feed.live.send(Item::Failed(e.to_string().into()));
                    break;
                }
            };
            last = ev.revision();
            let mut state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
            state.history.push_back(ev.clone());
            if state.history.len() > HISTORY
                && let Some(old) = state.history.pop_front()
            {
                state.covers_after = old.revision();
            }
            // sent under the lock: a watcher that subscribes while holding it sees each event once, either in
            // the history or live
            let _ = feed.live.send(Item::Event(ev));
            backoff = Duration::from_millis(100);
        }
        source.closed();
        upstream = loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match source.watch(&prefix, last).await {
                Ok(w) => break w,
                Err(StorageError::Compacted { .. }) => {
                    // the changes since `last` are gone: every watcher must relist; the feed starts again now
                    let now = match source.store.revision().await {
                        Ok(r) => r,
                        Err(_) => continue,
                    };
                    let mut state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.history.clear();
                    state.covers_after = now;
                    last = now;
                    let _ = feed.live.send(Item::Gap);
                }
                Err(e) => tracing::debug!(error = %e, %prefix, "the watch cache's storage watch failed; retrying"),
            }
        };
    }
}

/// One client watch: the history after `last`, then the live feed; from the store when the history does not
/// reach back far enough.
async fn follow(
    feed: Arc<Feed>,
    source: Source,
    prefix: String,
    mut last: Revision,
    tx: mpsc::Sender<Result<Arc<SharedEvent>, StorageError>>,
) {
    loop {
        // subscribe and copy the history under the feed's lock: nothing falls between the two
        let covered = {
            let state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
            (last >= state.covers_after).then(|| {
                let replay: Vec<Arc<SharedEvent>> =
                    state.history.iter().filter(|e| e.revision() > last).cloned().collect();
                (replay, feed.live.subscribe())
            })
        };
        let Some((replay, mut live)) = covered else {
            // too far behind for the history: the store serves this watcher from here on
            return from_store(&source, &prefix, last, &tx).await;
        };
        for ev in &replay {
            if !forward(&tx, &prefix, ev, &mut last).await {
                return;
            }
        }
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return,
                item = live.recv() => item,
            };
            match item {
                Ok(Item::Event(ev)) => {
                    if !forward(&tx, &prefix, &ev, &mut last).await {
                        return;
                    }
                }
                Ok(Item::Gap) => {
                    let _ = tx.send(Err(StorageError::Compacted { requested: last, compacted: last })).await;
                    return;
                }
                Ok(Item::Failed(reason)) => {
                    let source = Box::new(std::io::Error::other(reason.to_string()));
                    let _ = tx
                        .send(Err(StorageError::Backend { backend: "watch cache", operation: "watch", source }))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break, // catch up from the history again
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Sends `ev` to the watcher if it is new to it and under its prefix; false once the watcher is gone.
async fn forward(
    tx: &mpsc::Sender<Result<Arc<SharedEvent>, StorageError>>,
    prefix: &str,
    ev: &Arc<SharedEvent>,
    last: &mut Revision,
) -> bool {
    if ev.revision() <= *last {
        return true;
    }
    *last = ev.revision();
    !ev.kv.key.starts_with(prefix) || tx.send(Ok(ev.clone())).await.is_ok()
}

/// Forwards the store's own watch from `last` (a watcher the history cannot serve).
async fn from_store(
    source: &Source,
    prefix: &str,
    last: Revision,
    tx: &mpsc::Sender<Result<Arc<SharedEvent>, StorageError>>,
) {
    let mut events = match source.watch(prefix, last).await {
        Ok(w) => w,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tx.closed() => break,
            ev = events.next() => {
                let Some(ev) = ev else { break };
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        }
    }
    source.closed();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;
    use bytes::Bytes;

    async fn next(w: &mut WatchStream) -> Arc<SharedEvent> {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("not an error")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_storage_watch_serves_every_watcher_of_a_type() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Storage> = Arc::new(SqliteStorage::open(tmp.path().join("s.db")).expect("sqlite"));
        let cache = WatchCache::new(store.clone());
        let start = store.revision().await.expect("revision");
        let mut all: Vec<WatchStream> = Vec::new();
        for _ in 0..50 {
            all.push(cache.watch("/registry/pods/", "/registry/pods/", start).await.expect("watch"));
        }
        let mut in_a = cache.watch("/registry/pods/", "/registry/pods/a/", start).await.expect("watch");
        let mut cms = cache.watch("/registry/configmaps/", "/registry/configmaps/", start).await.expect("watch");
        assert_eq!(cache.storage_watches(), 2, "one per type, not one per watcher");
        let a = store.create("/registry/pods/a/p1", Bytes::from_static(b"1")).await.expect("create");
        store.create("/registry/pods/b/p2", Bytes::from_static(b"2")).await.expect("create");
        store.create("/registry/configmaps/a/c", Bytes::from_static(b"3")).await.expect("create");
        for w in &mut all {
            assert_eq!(next(w).await.kv.key, "/registry/pods/a/p1");
            assert_eq!(next(w).await.kv.key, "/registry/pods/b/p2");
        }
        assert_eq!(next(&mut in_a).await.kv.key, "/registry/pods/a/p1");
        assert_eq!(next(&mut cms).await.kv.key, "/registry/configmaps/a/c");
        store.create("/registry/pods/a/p3", Bytes::from_static(b"4")).await.expect("create");
        assert_eq!(next(&mut in_a).await.kv.key, "/registry/pods/a/p3", "the other namespace was skipped");
        // one event shared by every watcher: decoded once
        let shared = next(&mut all[0]).await;
        let p3 = next(&mut all[1]).await;
        assert!(Arc::ptr_eq(&shared, &p3));

        // a watcher starting back in the history replays it
        let mut late = cache.watch("/registry/pods/", "/registry/pods/", a.mod_revision).await.expect("watch");
        assert_eq!(next(&mut late).await.kv.key, "/registry/pods/b/p2");
        assert_eq!(next(&mut late).await.kv.key, "/registry/pods/a/p3");
        // one from before the feed began is served by the store itself
        let mut early = cache.watch("/registry/pods/", "/registry/pods/", 0).await.expect("watch");
        assert_eq!(next(&mut early).await.kv.key, "/registry/pods/a/p1");
        assert_eq!(cache.storage_watches(), 3);
        drop(early);
        store.create("/registry/pods/a/p4", Bytes::from_static(b"5")).await.expect("create");
        assert_eq!(next(&mut late).await.kv.key, "/registry/pods/a/p4");
        for _ in 0..100 {
            if cache.storage_watches() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cache.storage_watches(), 2, "the store's watch ends with its watcher");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_that_falls_behind_misses_nothing() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Storage> = Arc::new(SqliteStorage::open(tmp.path().join("s.db")).expect("sqlite"));
        let cache = WatchCache::new(store.clone());
        let start = store.revision().await.expect("revision");
        let mut slow = cache.watch("/registry/pods/", "/registry/pods/", start).await.expect("watch");
        let mut fast = cache.watch("/registry/pods/", "/registry/pods/", start).await.expect("watch");
        let n = 3 * HISTORY;
        let reader = tokio::spawn(async move {
            for i in 0..n {
                assert_eq!(next(&mut fast).await.kv.key, format!("/registry/pods/a/p{i}"));
            }
        });
        for i in 0..n {
            store.create(&format!("/registry/pods/a/p{i}"), Bytes::from(i.to_string())).await.expect("create");
        }
        reader.await.expect("the fast watcher saw every event in order");
        // the slow one read nothing while three histories' worth went by: it still gets each event once, in order
        for i in 0..n {
            assert_eq!(next(&mut slow).await.kv.key, format!("/registry/pods/a/p{i}"));
        }
    }
}

//! The watch cache: one storage watch per resource type per server, fanned out to every client watch of that type,
//! as kube-apiserver's cacher does — 1,000 watchers of pods are one etcd watch, and each event is decrypted and
//! decoded once for all of them.
//!
//! Each type's *feed* follows the store from the first watch of that type on and keeps its events of the last
//! [`FRESH`] (at most [`HISTORY`], and the last [`MIN_HISTORY`] however old), as kube-apiserver's cacher sizes its
//! window by the same freshness. A client watch from a revision the history covers replays it and then follows the feed live; one from an
//! older revision is served by the store itself (which answers `Compacted`, 410 Gone to clients, when that is
//! gone too) until it has caught up with the history, and then joins the feed; a watcher that falls behind the live
//! feed catches up the same way. A gap in a feed (its own watch compacted away while reconnecting) ends its
//! watchers with `Compacted`, so they relist rather than miss a change. A feed nobody has watched for its idle time
//! (a deleted custom resource type, a type watched once) closes its storage watch and is forgotten.
//!
//! A watcher of part of a type (one namespace) also hears, as [`Change::Progress`], how far the feed has gone past
//! its last event, so its bookmarks carry the feed's revision rather than that of its own last event.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::{Revision, SharedEvent, Storage, StorageError, Trigger, WatchStream};

/// Events kept per resource type for watchers that start behind or fall behind, at most.
pub const HISTORY: usize = 1024;

/// Events kept per resource type however old they are (the upstream cacher's lower bound).
pub const MIN_HISTORY: usize = 100;

/// How long an event stays in the history beyond the last [`MIN_HISTORY`] (the upstream cacher's
/// `eventFreshDuration`): a watcher that reconnects within it resumes from the history, one from further back is
/// served by the store until it catches up. A full history of a busy type held ~5 MB of stored objects (each event
/// keeps its object and the previous one), and five types' histories ~25 MB of the idle server at 10k pods in
/// `scripts/bench-scale`, for as long as the server lived.
pub const FRESH: Duration = Duration::from_secs(75);

/// How many of a type's newest events keep what readers derived from them (their [`SharedEvent::memo`]) in any case;
/// an older one in the history is trimmed once no watcher holds it any more (every live watcher has passed it), so
/// watchers that lag are not made to derive again, and a quiet feed keeps only this many.
pub const DECODED_FOR: usize = 128;

/// How often a feed trims the events its watchers passed since its last event.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// How long a feed nobody watches lives on (watchers that reconnect within it keep their feed and its history).
pub const IDLE: Duration = Duration::from_secs(300);

/// How often a watcher hears of the feed's progress past its own last event, at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a cached watch yields.
#[derive(Debug, Clone)]
pub enum Change {
    /// A change under the watched prefix.
    Event(Arc<SharedEvent>),
    /// Every change of the type up to this revision has been seen, and none more under the prefix was sent: a
    /// bookmark may carry it.
    Progress(Revision),
}

/// A stream of [`Change`]s, in revision order.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<Change, StorageError>> + Send>>;

type Sender = mpsc::Sender<Result<Change, StorageError>>;

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
    /// Watchers that took the feed so far (a watch that came and went between two idle checks counts too).
    taken: AtomicUsize,
}

impl Feed {
    /// Whether the history holds every event after `last`.
    fn covers(&self, last: Revision) -> bool {
        last >= self.state.lock().unwrap_or_else(|p| p.into_inner()).covers_after
    }
}

struct FeedState {
    /// Every event of the type with a revision above `covers_after` is in `history` (or still to come).
    covers_after: Revision,
    history: VecDeque<Arc<SharedEvent>>,
    /// When each event of the history arrived (in the same order).
    arrived: VecDeque<Instant>,
    /// How many of the history's first events are trimmed.
    trimmed: usize,
}

impl FeedState {
    /// An empty history of the events after `after`.
    fn after(after: Revision) -> Self {
        FeedState { covers_after: after, history: VecDeque::new(), arrived: VecDeque::new(), trimmed: 0 }
    }

    /// Adds the newest event, arrived `now`, dropping the oldest beyond [`HISTORY`].
    fn push(&mut self, ev: Arc<SharedEvent>, now: Instant) {
        self.history.push_back(ev);
        self.arrived.push_back(now);
        if self.history.len() > HISTORY {
            self.pop_oldest();
        }
    }

    /// Drops the events that arrived more than `fresh` ([`FRESH`]) before `now`, but for the last [`MIN_HISTORY`].
    fn expire(&mut self, now: Instant, fresh: Duration) {
        while self.history.len() > MIN_HISTORY
            && self.arrived.front().is_some_and(|t| now.saturating_duration_since(*t) > fresh)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        self.arrived.pop_front();
        if let Some(old) = self.history.pop_front() {
            self.covers_after = old.revision();
            self.trimmed = self.trimmed.saturating_sub(1);
        }
    }

    /// Forgets every event: the history starts again after `now`.
    fn restart(&mut self, now: Revision) {
        *self = FeedState::after(now);
    }

    /// Trims the events more than [`DECODED_FOR`] behind the newest that only the history still holds: every watcher
    /// has passed them, and one that replays them later derives again.
    fn trim_passed(&mut self) {
        let end = self.history.len().saturating_sub(DECODED_FOR);
        let mut all_trimmed = true;
        for i in self.trimmed..end {
            let ev = &self.history[i];
            if !ev.is_trimmed() && Arc::strong_count(ev) == 1 {
                ev.trim();
            }
            all_trimmed &= ev.is_trimmed();
            if all_trimmed {
                self.trimmed = i + 1;
            }
        }
    }
}

type Feeds = Arc<Mutex<HashMap<String, Arc<Feed>>>>;

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
    feeds: Feeds,
    idle: Duration,
    fresh: Duration,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCache").field("feeds", &self.feeds()).finish_non_exhaustive()
    }
}

impl WatchCache {
    /// A cache over `store`.
    pub fn new(store: Arc<dyn Storage>) -> Self {
        WatchCache { source: Source { store, open: Arc::default() }, feeds: Feeds::default(), idle: IDLE, fresh: FRESH }
    }

    /// The same cache with feeds forgotten after `idle` without watchers instead of [`IDLE`] (40 ms at least).
    pub fn with_idle(mut self, idle: Duration) -> Self {
        self.idle = idle.max(Duration::from_millis(40));
        self
    }

    /// The same cache with events kept for `fresh` beyond the last [`MIN_HISTORY`] instead of [`FRESH`].
    pub fn with_fresh(mut self, fresh: Duration) -> Self {
        self.fresh = fresh;
        self
    }

    /// How many events the history of the type stored under `type_prefix` holds, if it has a feed.
    #[cfg(test)]
    fn history_len(&self, type_prefix: &str) -> Option<usize> {
        let feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        feeds.get(type_prefix).map(|f| f.state.lock().unwrap_or_else(|p| p.into_inner()).history.len())
    }

    /// Storage watches open now (the feeds', plus watchers served by the store directly).
    pub fn storage_watches(&self) -> usize {
        self.source.open.load(Ordering::SeqCst)
    }

    /// Feeds alive now.
    pub fn feeds(&self) -> usize {
        self.feeds.lock().map(|f| f.len()).unwrap_or_default()
    }

    /// Changes under `prefix` after revision `after`, from the feed of the resource type stored under
    /// `type_prefix` (which `prefix` starts with).
    /// With a trigger, only the events it [may concern](SharedEvent::may_trigger) are sent (the others count as
    /// progress).
    pub async fn watch(
        &self,
        type_prefix: &str,
        prefix: &str,
        after: Revision,
        trigger: Option<Trigger>,
    ) -> Result<ChangeStream, StorageError> {
        debug_assert!(prefix.starts_with(type_prefix));
        let feed = self.feed(type_prefix, after).await?;
        let (tx, rx) = mpsc::channel::<Result<Change, StorageError>>(256);
        let (source, type_prefix, prefix) = (self.source.clone(), type_prefix.to_string(), prefix.to_string());
        tokio::spawn(async move {
            let watcher = Watcher { tx: &tx, type_prefix: &type_prefix, prefix: &prefix, trigger: trigger.as_ref() };
            follow(feed, source, watcher, after).await
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// The feed of `type_prefix`, started from `after` (the first watcher's revision) when there is none yet.
    async fn feed(&self, type_prefix: &str, after: Revision) -> Result<Arc<Feed>, StorageError> {
        if let Some(f) = self.feeds.lock().unwrap_or_else(|p| p.into_inner()).get(type_prefix) {
            f.taken.fetch_add(1, Ordering::SeqCst);
            return Ok(f.clone());
        }
        // the first watch of this type: its storage watch is opened here, so a refusal (compacted) reaches the
        // caller and no feed is left behind; a revision from the future starts it now (the store's revision), so
        // the watchers after it are still served by the feed
        let after = after.min(self.source.store.revision().await?);
        let upstream = self.source.watch(type_prefix, after).await?;
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = feeds.get(type_prefix) {
            self.source.closed();
            f.taken.fetch_add(1, Ordering::SeqCst);
            return Ok(f.clone()); // another watcher started one meanwhile: ours is dropped
        }
        let feed = Arc::new(Feed {
            state: Mutex::new(FeedState::after(after)),
            live: broadcast::channel(1024).0,
            taken: AtomicUsize::new(1),
        });
        feeds.insert(type_prefix.to_string(), feed.clone());
        let run = Run {
            feed: feed.clone(),
            feeds: self.feeds.clone(),
            source: self.source.clone(),
            idle: self.idle,
            fresh: self.fresh,
        };
        tokio::spawn(run.follow_store(type_prefix.to_string(), after, upstream));
        Ok(feed)
    }
}

/// A feed's own task.
struct Run {
    feed: Arc<Feed>,
    feeds: Feeds,
    source: Source,
    idle: Duration,
    fresh: Duration,
}

impl Run {
    /// Follows the store for one resource type, reconnecting from the last revision seen, until nobody has watched
    /// the type for the idle time.
    async fn follow_store(self, prefix: String, mut last: Revision, mut upstream: WatchStream) {
        let feed = &self.feed;
        let mut backoff = Duration::from_millis(100);
        let mut idle_check = tokio::time::interval(self.idle / 4);
        let mut trim = tokio::time::interval(TRIM_EVERY);
        let mut unwatched_since = None;
        let mut taken = feed.taken.load(Ordering::SeqCst);
        loop {
            loop {
                let ev = tokio::select! {
                    ev = upstream.next() => ev,
                    _ = trim.tick() => {
                        let mut state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
                        state.expire(Instant::now(), self.fresh);
                        state.trim_passed();
                        continue;
                    }
                    _ = idle_check.tick() => {
                        let now_taken = feed.taken.load(Ordering::SeqCst);
                        if now_taken != taken {
                            (taken, unwatched_since) = (now_taken, None); // watched since the last check
                        }
                        if self.forgotten(&prefix, &mut unwatched_since) {
                            self.source.closed();
                            return;
                        }
                        continue;
                    }
                };
                let ev = match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => {
                        // an event that cannot be read (a value that does not decrypt): every watcher hears of it
                        let _ = feed.live.send(Item::Failed(e.to_string().into()));
                        break;
                    }
                    None => break,
                };
                last = ev.revision();
                let mut state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
                state.push(ev.clone(), Instant::now());
                state.trim_passed();
                // sent under the lock: a watcher that subscribes while holding it sees each event once, either in
                // the history or live
                let _ = feed.live.send(Item::Event(ev));
                backoff = Duration::from_millis(100);
            }
            self.source.closed();
            upstream = loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                match self.source.watch(&prefix, last).await {
                    Ok(w) => break w,
                    Err(StorageError::Compacted { .. }) => {
                        // the changes since `last` are gone: every watcher must relist; the feed starts again now
                        let now = match self.source.store.revision().await {
                            Ok(r) => r,
                            Err(_) => continue,
                        };
                        let mut state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
                        state.restart(now);
                        last = now;
                        let _ = feed.live.send(Item::Gap);
                    }
                    Err(e) => tracing::debug!(error = %e, %prefix, "the watch cache's storage watch failed; retrying"),
                }
            };
        }
    }

    /// Whether the feed has had no watcher for the idle time, in which case it is taken out of the map here.
    fn forgotten(&self, prefix: &str, unwatched_since: &mut Option<tokio::time::Instant>) -> bool {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        // the map and this task hold the feed; a watcher holds another, and gets it only from the map, under this
        // lock: so the count cannot rise while it is read here
        if Arc::strong_count(&self.feed) > 2 {
            *unwatched_since = None;
            return false;
        }
        let since = *unwatched_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < self.idle {
            return false;
        }
        feeds.remove(prefix);
        true
    }
}

/// One client watch: the history after `last`, then the live feed; from the store while the history does not
/// reach back far enough.
async fn follow(feed: Arc<Feed>, source: Source, watcher: Watcher<'_>, mut last: Revision) {
    let tx = watcher.tx;
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // the revision of the last event of the type this watcher skipped (not under its prefix) and was not told of
    let mut unsent: Option<Revision> = None;
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
            // too far behind for the history: the store serves this watcher until it has caught up with it
            match from_store(&feed, &source, &watcher, last, &mut unsent).await {
                Some(caught_up) => {
                    last = caught_up;
                    continue;
                }
                None => return,
            }
        };
        for ev in &replay {
            match forward(&watcher, ev, &mut last).await {
                Forwarded::Sent => unsent = None,
                Forwarded::Skipped => unsent = Some(last),
                Forwarded::Gone => return,
            }
        }
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return,
                _ = progress.tick(), if unsent.is_some() => {
                    if let Some(r) = unsent.take()
                        && tx.send(Ok(Change::Progress(r))).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
                item = live.recv() => item,
            };
            match item {
                Ok(Item::Event(ev)) => match forward(&watcher, &ev, &mut last).await {
                    Forwarded::Sent => unsent = None,
                    Forwarded::Skipped => unsent = Some(last),
                    Forwarded::Gone => return,
                },
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

/// Who a client watch sends to, and what it selects.
struct Watcher<'a> {
    tx: &'a Sender,
    /// The resource type's prefix (its feed's).
    type_prefix: &'a str,
    /// The watched part of it.
    prefix: &'a str,
    /// The indexed value it selects, if any.
    trigger: Option<&'a Trigger>,
}

/// What became of one event for one watcher.
enum Forwarded {
    /// Sent to it.
    Sent,
    /// Already seen, not under its prefix, or not of its trigger.
    Skipped,
    /// The watcher is gone.
    Gone,
}

/// Sends `ev` to the watcher if it is new to it, under its prefix and may concern its trigger.
async fn forward(watcher: &Watcher<'_>, ev: &Arc<SharedEvent>, last: &mut Revision) -> Forwarded {
    if ev.revision() <= *last {
        return Forwarded::Skipped;
    }
    *last = ev.revision();
    if !ev.kv.key.starts_with(watcher.prefix) || watcher.trigger.is_some_and(|t| !ev.may_trigger(t)) {
        return Forwarded::Skipped;
    }
    match watcher.tx.send(Ok(Change::Event(ev.clone()))).await {
        Ok(()) => Forwarded::Sent,
        Err(_) => Forwarded::Gone,
    }
}

/// Forwards the store's own watch of the whole type from `last` until the feed's history covers the watcher
/// again (every event of the type counts towards that, so a watcher of a quiet namespace catches up too); returns
/// the revision it has been served up to then, or `None` once the watcher is gone or its watch failed.
async fn from_store(
    feed: &Feed,
    source: &Source,
    watcher: &Watcher<'_>,
    mut last: Revision,
    unsent: &mut Option<Revision>,
) -> Option<Revision> {
    let mut events = match source.watch(watcher.type_prefix, last).await {
        Ok(w) => w,
        Err(e) => {
            let _ = watcher.tx.send(Err(e)).await;
            return None;
        }
    };
    let caught_up = loop {
        tokio::select! {
            _ = watcher.tx.closed() => break None,
            ev = events.next() => {
                let Some(ev) = ev else { break None };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        let _ = watcher.tx.send(Err(e)).await;
                        break None;
                    }
                };
                match forward(watcher, &ev, &mut last).await {
                    Forwarded::Sent => *unsent = None,
                    Forwarded::Skipped => *unsent = Some(last),
                    Forwarded::Gone => break None,
                }
                if feed.covers(last) {
                    break Some(last);
                }
            }
        }
    };
    source.closed();
    caught_up
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;
    use bytes::Bytes;

    #[test]
    fn the_history_keeps_the_fresh_events_at_most_its_size_and_at_least_the_last_hundred() {
        use crate::storage::{Event, EventKind, KeyValue};
        let event = |rev: Revision| {
            let kv = KeyValue {
                key: format!("/registry/pods/a/p{rev}"),
                value: Bytes::from_static(b"1"),
                create_revision: rev,
                mod_revision: rev,
            };
            SharedEvent::new(Event { kind: EventKind::Put, kv, prev: None })
        };
        let t0 = Instant::now();
        let secs = |s: u64| t0 + Duration::from_secs(s);
        // (events, when the n-th arrived, checked at, events kept)
        let cases: [(i64, fn(i64) -> u64, u64, usize); 6] = [
            (300, |_| 300, 300, 300),          // a burst just now: all fresh
            (300, |_| 300, 376, 100),          // the same burst 76 s later: the last hundred
            (300, |n| n as u64, 300, 100),     // one a second: 76 fresh, but a hundred kept
            (300, |n| n as u64 / 2, 150, 151), // two a second: those of the last 75 s
            (1500, |_| 10, 10, HISTORY),       // more than it holds at once
            (50, |_| 0, 1000, 50),             // fewer than a hundred, however old
        ];
        for (n, arrival, at, kept) in cases {
            let mut state = FeedState::after(0);
            for rev in 1..=n {
                state.push(event(rev), secs(arrival(rev)));
            }
            state.trim_passed();
            state.expire(secs(at), FRESH);
            state.trim_passed();
            assert_eq!(state.history.len(), kept, "{n} events checked at {at} s");
            // the trimmed events are the oldest, and all but the newest DECODED_FOR are (no watcher holds them)
            assert_eq!(state.trimmed, kept.saturating_sub(DECODED_FOR), "{n} events checked at {at} s");
            assert!(state.history.iter().enumerate().all(|(i, e)| e.is_trimmed() == (i < state.trimmed)));
            assert_eq!(state.arrived.len(), kept);
            let first = state.history.front().map(|e| e.revision()).expect("events");
            assert_eq!(first, n - kept as i64 + 1, "the newest are kept");
            assert_eq!(state.covers_after, first - 1, "it covers every event after the last dropped");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_from_before_the_fresh_window_gets_every_event_once_from_the_store_then_the_feed() {
        let (_tmp, store, cache, start) = sqlite_cache().await;
        let cache = cache.with_fresh(Duration::from_millis(100));
        let mut first = cache.watch("/registry/pods/", "/registry/pods/", start, None).await.expect("watch");
        let n = 3 * MIN_HISTORY;
        let mut want = Vec::new();
        for i in 0..n {
            let key = format!("/registry/pods/a/p{i}");
            store.create(&key, Bytes::from_static(b"1")).await.expect("create");
            want.push(key);
        }
        for _ in 0..n {
            next(&mut first).await;
        }
        // the feed's trim tick (every second) lets the events older than the window go, but for the last hundred
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.history_len("/registry/pods/") != Some(MIN_HISTORY) {
            assert!(Instant::now() < deadline, "history still at {:?}", cache.history_len("/registry/pods/"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // a watcher from the start: the store serves what the history no longer has, then it joins the feed
        let mut late = cache.watch("/registry/pods/", "/registry/pods/", start, None).await.expect("watch");
        let last = store.create("/registry/pods/a/last", Bytes::from_static(b"1")).await.expect("create");
        want.push(last.key.clone());
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(next(&mut late).await.kv.key.clone());
        }
        assert_eq!(got, want, "each event once, in order");
        assert_eq!(next(&mut first).await.revision(), last.mod_revision, "the first watcher goes on too");
    }

    /// A watch cache over a new SQLite store (alive while the directory is), and the store's revision.
    async fn sqlite_cache() -> (tempfile::TempDir, Arc<dyn Storage>, WatchCache, Revision) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Storage> = Arc::new(SqliteStorage::open(tmp.path().join("s.db")).expect("sqlite"));
        let cache = WatchCache::new(store.clone());
        let start = store.revision().await.expect("revision");
        (tmp, store, cache, start)
    }

    async fn next(w: &mut ChangeStream) -> Arc<SharedEvent> {
        loop {
            let change = tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .expect("not an error");
            if let Change::Event(ev) = change {
                return ev;
            }
        }
    }

    /// A reader's memo holding a share of a test-owned value, to count the memos still holding it.
    #[derive(Debug, Default)]
    struct Held(std::sync::Mutex<Option<Arc<()>>>);

    impl crate::storage::Memo for Held {
        fn trim(&self) {
            self.0.lock().expect("lock").take();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_every_watcher_passed_further_than_decoded_for_behind_let_go_of_their_memos() {
        let (_tmp, store, cache, start) = sqlite_cache().await;
        let mut w = cache.watch("/registry/pods/", "/registry/pods/", start, None).await.expect("watch");
        let value = Arc::new(());
        let n = DECODED_FOR + 5;
        let mut seen = Vec::new();
        let mut held = None;
        for i in 0..n {
            store.create(&format!("/registry/pods/a/p{i}"), Bytes::from_static(b"1")).await.expect("create");
            let ev = next(&mut w).await;
            // the reader derives something from each event as it arrives (the API server: its decoded objects)
            *ev.memo::<Held>().expect("a new event has its slot").0.lock().expect("lock") = Some(value.clone());
            seen.push(Arc::downgrade(&ev));
            // a watcher still busy with the second event (a slow client's) holds it
            if i == 1 {
                held = Some(ev);
            }
        }
        // every event more than DECODED_FOR behind the newest that no watcher holds let go of its memo, and a
        // reader coming to it late gets no slot to fill again; the held one keeps its memo
        assert_eq!(Arc::strong_count(&value) - 1, DECODED_FOR + 1, "the newest {DECODED_FOR} and the held one");
        for (i, ev) in seen.iter().enumerate() {
            let ev = ev.upgrade().expect("in the history");
            let trimmed = i < n - DECODED_FOR && i != 1;
            assert_eq!(ev.memo::<Held>().is_none(), trimmed, "event {i} of {n}");
        }
        // once the watcher lets go, the next event trims it too (or the feed's timer, on a quiet feed)
        drop(held);
        store.create("/registry/pods/a/last", Bytes::from_static(b"1")).await.expect("create");
        next(&mut w).await;
        assert!(seen[1].upgrade().expect("in the history").is_trimmed());
        assert_eq!(Arc::strong_count(&value) - 1, DECODED_FOR - 1, "the newest event has no memo set");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_storage_watch_serves_every_watcher_of_a_type() {
        let (_tmp, store, cache, start) = sqlite_cache().await;
        let mut all: Vec<ChangeStream> = Vec::new();
        for _ in 0..50 {
            all.push(cache.watch("/registry/pods/", "/registry/pods/", start, None).await.expect("watch"));
        }
        let mut in_a = cache.watch("/registry/pods/", "/registry/pods/a/", start, None).await.expect("watch");
        let mut cms = cache.watch("/registry/configmaps/", "/registry/configmaps/", start, None).await.expect("watch");
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
        let mut late = cache.watch("/registry/pods/", "/registry/pods/", a.mod_revision, None).await.expect("watch");
        assert_eq!(next(&mut late).await.kv.key, "/registry/pods/b/p2");
        assert_eq!(next(&mut late).await.kv.key, "/registry/pods/a/p3");
        // one from before the feed began is served by the store itself
        let mut early = cache.watch("/registry/pods/", "/registry/pods/", 0, None).await.expect("watch");
        assert_eq!(next(&mut early).await.kv.key, "/registry/pods/a/p1");
        // ...until it reaches the history: then it is back on the feed
        assert!(settles(|| cache.storage_watches() == 2).await, "{} storage watches", cache.storage_watches());
        assert_eq!(next(&mut early).await.kv.key, "/registry/pods/b/p2");
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
        let (_tmp, store, cache, start) = sqlite_cache().await;
        let mut slow = cache.watch("/registry/pods/", "/registry/pods/", start, None).await.expect("watch");
        let mut fast = cache.watch("/registry/pods/", "/registry/pods/", start, None).await.expect("watch");
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
        // and, caught up, it is back on the shared feed: one storage watch again
        assert!(settles(|| cache.storage_watches() == 1).await, "{} storage watches", cache.storage_watches());
        store.create("/registry/pods/a/last", Bytes::from_static(b"x")).await.expect("create");
        assert_eq!(next(&mut slow).await.kv.key, "/registry/pods/a/last");
    }

    /// A test index: a value `node=X` has X, anything else cannot be read.
    fn node_of(value: &[u8]) -> Option<String> {
        std::str::from_utf8(value).ok()?.strip_prefix("node=").map(str::to_string)
    }

    fn on_node(value: &str) -> Option<Trigger> {
        Some(Trigger { index: super::super::Index { field: "node", value_of: node_of }, value: value.into() })
    }

    /// The next `n` events of a watch, as kind and name.
    async fn keys(w: &mut ChangeStream, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let ev = next(w).await;
            out.push(format!("{:?} {}", ev.kind, ev.kv.key.rsplit('/').next().unwrap_or_default()));
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_triggered_watcher_hears_only_the_events_of_its_value_from_the_history_and_live() {
        let (_tmp, store, cache, start) = sqlite_cache().await;
        let mut all = cache.watch("/registry/pods/", "/registry/pods/", start, None).await.expect("watch");
        let mut on_a = cache.watch("/registry/pods/", "/registry/pods/", start, on_node("a")).await.expect("watch");
        let p1 = store.create("/registry/pods/d/p1", Bytes::from_static(b"node=a")).await.expect("create");
        store.create("/registry/pods/d/p2", Bytes::from_static(b"node=b")).await.expect("create");
        // moved from a to b: a watcher of either hears it (the one of a as its object leaving)
        store.update("/registry/pods/d/p1", Bytes::from_static(b"node=b"), p1.mod_revision).await.expect("update");
        // a value the index cannot read reaches every watcher, whose own selector decides
        store.create("/registry/pods/d/p3", Bytes::from_static(b"{unreadable")).await.expect("create");
        store.delete("/registry/pods/d/p2", None).await.expect("delete");
        store.create("/registry/pods/d/p4", Bytes::from_static(b"node=a")).await.expect("create");
        assert_eq!(keys(&mut all, 6).await, ["Put p1", "Put p2", "Put p1", "Put p3", "Delete p2", "Put p4"]);
        assert_eq!(keys(&mut on_a, 4).await, ["Put p1", "Put p1", "Put p3", "Put p4"]);
        // the same from the history, for a watcher of b that starts late
        let mut on_b = cache.watch("/registry/pods/", "/registry/pods/", start, on_node("b")).await.expect("watch");
        assert_eq!(keys(&mut on_b, 4).await, ["Put p2", "Put p1", "Put p3", "Delete p2"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_triggered_watcher_that_falls_behind_misses_none_of_its_events() {
        let (_tmp, store, cache, start) = sqlite_cache().await;
        let mut on_a = cache.watch("/registry/pods/", "/registry/pods/", start, on_node("a")).await.expect("watch");
        let mut on_b = cache.watch("/registry/pods/", "/registry/pods/", start, on_node("b")).await.expect("watch");
        // three histories' worth while neither reads: every third pod on a, the others on b
        let n = 3 * HISTORY;
        let node = |i: usize| if i.is_multiple_of(3) { "a" } else { "b" };
        for i in 0..n {
            store
                .create(&format!("/registry/pods/d/p{i}"), Bytes::from(format!("node={}", node(i))))
                .await
                .expect("create");
        }
        for (w, value) in [(&mut on_a, "a"), (&mut on_b, "b")] {
            let want: Vec<String> = (0..n).filter(|i| node(*i) == value).map(|i| format!("Put p{i}")).collect();
            assert_eq!(keys(w, want.len()).await, want, "the watcher of {value}");
        }
        store.create("/registry/pods/d/last", Bytes::from_static(b"node=a")).await.expect("create");
        assert_eq!(keys(&mut on_a, 1).await, ["Put last"]);
    }

    /// Whether `cond` holds within 5 s.
    async fn settles(cond: impl Fn() -> bool) -> bool {
        for _ in 0..250 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_of_a_quiet_namespace_rejoins_the_feed_and_hears_its_progress() {
        let (_tmp, store, cache, start) = sqlite_cache().await;
        // a watcher that starts the feed and goes (it would only be read here, and its lag is not this test's)
        drop(cache.watch("/registry/pods/", "/registry/pods/busy/", start, None).await.expect("watch"));
        store.create("/registry/pods/quiet/q", Bytes::from_static(b"q")).await.expect("create");
        for i in 0..2 * HISTORY {
            store.create(&format!("/registry/pods/busy/p{i}"), Bytes::from(i.to_string())).await.expect("create");
        }
        let now = store.revision().await.expect("revision");
        // a watcher of the quiet namespace, from before the history: served by the store, it catches up through the
        // other namespace's events and goes back to the feed
        let mut quiet = cache.watch("/registry/pods/", "/registry/pods/quiet/", start, None).await.expect("watch");
        assert_eq!(next(&mut quiet).await.kv.key, "/registry/pods/quiet/q");
        assert!(settles(|| cache.storage_watches() == 1).await, "{} storage watches", cache.storage_watches());
        // then it hears the feed's progress, up to the busy namespace's last write, and no event
        let deadline = tokio::time::Instant::now() + PROGRESS_EVERY * 4;
        loop {
            let change = tokio::time::timeout_at(deadline, quiet.next()).await.expect("progress up to now in time");
            match change.expect("open").expect("no error") {
                Change::Progress(rev) if rev == now => break,
                Change::Progress(rev) => assert!(rev < now, "progress {rev} past the store's {now}"),
                Change::Event(ev) => panic!("no event expected: {}", ev.kv.key),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_feed_nobody_watches_is_closed_and_a_new_watcher_starts_another() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Storage> = Arc::new(SqliteStorage::open(tmp.path().join("s.db")).expect("sqlite"));
        let cache = WatchCache::new(store.clone()).with_idle(Duration::from_millis(200));
        let start = store.revision().await.expect("revision");
        let mut w = cache.watch("/registry/widgets/", "/registry/widgets/", start, None).await.expect("watch");
        store.create("/registry/widgets/a/w", Bytes::from_static(b"w")).await.expect("create");
        assert_eq!(next(&mut w).await.kv.key, "/registry/widgets/a/w");
        // still watched: kept well past the idle time
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!((cache.feeds(), cache.storage_watches()), (1, 1));
        drop(w);
        assert!(settles(|| cache.feeds() == 0 && cache.storage_watches() == 0).await, "the feed was not closed");
        let mut again = cache.watch("/registry/widgets/", "/registry/widgets/", start, None).await.expect("watch");
        assert_eq!(next(&mut again).await.kv.key, "/registry/widgets/a/w", "a new feed, from the watcher's revision");
        assert_eq!(cache.storage_watches(), 1);
    }
}

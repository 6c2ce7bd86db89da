//! Watch: a chunked stream of newline-delimited `{"type", "object"}` events, from a resourceVersion (or from the
//! current state, sent first as ADDED events), filtered by selectors, with bookmarks, a timeout, and a 410 ERROR
//! event when the resourceVersion has been compacted.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Api;
use super::error::{ApiError, ApiResult};
use super::objects::{ListQuery, collection_prefix};
use super::request::Representation;
use super::table::{self, Include};
use crate::storage::watch_cache::Change;
use crate::storage::{EventKind, Revision, StorageError};
use skiff_api::registry::ResourceInfo;
use skiff_api::selector::{FieldSelector, Selector};

/// What a watch request asked for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// Namespace, or all.
    pub namespace: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `labelSelector`.
    pub labels: Selector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents`.
    pub send_initial_events: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// Representation of each event's object.
    pub representation: Representation,
    /// `includeObject` for Tables.
    pub include: Include,
}

const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
/// At most this many bytes of event lines go out as one chunk. The events already queued for a watcher when it
/// sends go out together (one HTTP/2 DATA frame, one write to the socket), as kube-apiserver flushes a watch only
/// once nothing more is queued for it: a write per event per watcher was the server's largest cost with 50 watchers
/// of every pod (`writev` 18% of its CPU in `scripts/bench-scale`, docs/benchmarks.md).
const MAX_CHUNK: usize = 32 * 1024;
/// At most this many changes go into one chunk (the depth of a watcher's queue in the watch cache), so a watcher whose
/// selector skips most changes still hands its connection a chunk, and its worker thread to others, between them.
const MAX_CHUNK_CHANGES: usize = 256;
/// Chunks a watch holds for its connection before it waits: with [`MAX_CHUNK`], at most 1 MiB per slow watcher.
const QUEUED_CHUNKS: usize = 32;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

struct Encoder {
    info: Arc<ResourceInfo>,
    representation: Representation,
    include: Include,
    sent_columns: bool,
}

impl Encoder {
    /// Appends an event line to `out`; the whole object's JSON is shared by every watcher (encoded once).
    fn shared_event(&mut self, ty: &str, obj: &super::decoded::Object, out: &mut Vec<u8>) {
        if !matches!(self.representation, Representation::Object) {
            out.extend_from_slice(&self.event(ty, obj.value()));
            return;
        }
        let json = obj.json();
        out.reserve(json.len() + 32);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(ty.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        out.extend_from_slice(json);
        out.extend_from_slice(b"}\n");
    }

    fn event(&mut self, ty: &str, obj: &Value) -> Bytes {
        let object = match self.representation {
            Representation::Object => obj.clone(),
            Representation::Metadata => table::partial_metadata(obj),
            Representation::Table => {
                let rv = skiff_api::meta::resource_version(obj).to_string();
                let t =
                    table::table(&self.info, std::slice::from_ref(obj), &rv, None, self.include, !self.sent_columns);
                self.sent_columns = true;
                t
            }
        };
        line(&json!({"type": ty, "object": object}))
    }

    fn bookmark(&self, rv: Revision, initial_end: bool) -> Bytes {
        let mut md = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            &json!({"type": "BOOKMARK", "object": {"kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": md}}),
        )
    }
}

fn error_event(e: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.status()}))
}

/// Why [`fill_chunk`] stopped.
#[derive(Debug)]
enum ChunkEnd {
    /// Nothing more was queued, or the chunk is full: the watch goes on.
    More,
    /// The changes ended.
    Ended,
    /// The changes failed: the watcher hears why and the watch ends.
    Failed(StorageError),
}

/// Appends to `chunk`, with `line`, the event lines of `first` and of every change already queued behind it in
/// `events` (up to [`MAX_CHUNK`] bytes and [`MAX_CHUNK_CHANGES`] changes), without waiting for more; `last` follows
/// the changes taken.
fn fill_chunk(
    first: Option<Result<Change, StorageError>>,
    events: &mut crate::storage::watch_cache::ChangeStream,
    last: &mut Revision,
    chunk: &mut Vec<u8>,
    mut line: impl FnMut(&crate::storage::SharedEvent, &mut Vec<u8>),
) -> ChunkEnd {
    let mut next = first;
    // bounded: every pass takes a change, and at most MAX_CHUNK_CHANGES are taken
    for taken in 1.. {
        match next {
            None => return ChunkEnd::Ended,
            Some(Err(e)) => return ChunkEnd::Failed(e),
            Some(Ok(Change::Progress(rev))) => *last = rev,
            Some(Ok(Change::Event(ev))) => {
                *last = ev.revision();
                line(&ev, chunk);
            }
        }
        if chunk.len() >= MAX_CHUNK || taken >= MAX_CHUNK_CHANGES {
            break;
        }
        match events.next().now_or_never() {
            Some(n) => next = n,
            None => break,
        }
    }
    ChunkEnd::More
}

/// What a watch selects.
struct Selection {
    labels: Selector,
    fields: FieldSelector,
}

impl Selection {
    fn matches(&self, o: &Value) -> bool {
        self.labels.matches_object(o) && self.fields.matches(o)
    }

    fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

/// The event type a watcher of `selection` sees for `ev` (an object entering the selection is ADDED, one leaving it
/// DELETED) and the object to send, or `None` when the change is not visible to it.
fn typed(
    api: &Api,
    info: &ResourceInfo,
    ev: &crate::storage::SharedEvent,
    selection: &Selection,
) -> Option<(&'static str, Arc<super::decoded::Object>)> {
    let Ok(Some(obj)) = api.decoded.of_event(info, ev, false) else { return None };
    // Without selectors every object matches: the previous one need not be decoded.
    let prev_match = match &ev.prev {
        None => false,
        Some(_) if selection.is_everything() => true,
        Some(_) => api.decoded.of_event(info, ev, true).ok().flatten().is_some_and(|p| selection.matches(p.facts())),
    };
    let ty = match ev.kind {
        EventKind::Delete => prev_match.then_some("DELETED"),
        EventKind::Put if ev.is_create() => selection.matches(obj.facts()).then_some("ADDED"),
        EventKind::Put => match (prev_match, selection.matches(obj.facts())) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    };
    ty.map(|ty| (ty, obj))
}

impl Api {
    /// Starts a watch and returns the streaming response.
    pub async fn watch(self: &Arc<Self>, info: Arc<ResourceInfo>, req: WatchRequest) -> ApiResult<Response> {
        for f in req.fields.fields() {
            if !info.selectable(f) {
                return Err(ApiError::bad_request(format!("\"{f}\" is not a known field selector")));
            }
        }
        let rv = req.resource_version.clone().filter(|v| !v.is_empty());
        let initial = rv.as_deref().is_none_or(|v| v == "0") || req.send_initial_events;
        let start: Option<Revision> = match rv.as_deref() {
            None | Some("0") => None,
            Some(v) => Some(v.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?),
        };
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUED_CHUNKS);
        let api = self.clone();
        let ns = if info.namespaced() { req.namespace.clone() } else { None };
        let prefix = collection_prefix(&info, ns.as_deref());
        let content_type = match req.representation {
            Representation::Table => "application/json;as=Table;v=v1;g=meta.k8s.io",
            _ => "application/json",
        };
        let trigger = super::indexes::trigger(&info, &req.fields);
        let mut enc = Encoder {
            info: info.clone(),
            representation: req.representation,
            include: req.include,
            sent_columns: false,
        };
        self.metrics.watches.inc();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + req.timeout.unwrap_or(DEFAULT_TIMEOUT);
            let selection = Selection { labels: req.labels.clone(), fields: req.fields.clone() };
            let mut from = match start {
                Some(r) => r,
                None => api.store.revision().await.unwrap_or(0),
            };
            if initial {
                let q = ListQuery { labels: req.labels.clone(), fields: req.fields.clone(), ..Default::default() };
                // each object encoded as its event line as the listing matches it, not held decoded
                match api.list_as(&info, ns.as_deref(), &q, |o| Ok(enc.event("ADDED", &o))).await {
                    Ok(page) => {
                        if start.is_none() {
                            from = page.revision;
                        }
                        for line in page.items {
                            if tx.send(Ok(line)).await.is_err() {
                                metrics.watches.dec();
                                return;
                            }
                        }
                        if req.send_initial_events && req.bookmarks {
                            let _ = tx.send(Ok(enc.bookmark(page.revision, true))).await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Ok(error_event(&e))).await;
                        metrics.watches.dec();
                        return;
                    }
                }
            }
            let mut events = match api.watch_cache.watch(&info.storage_prefix(), &prefix, from, trigger).await {
                Ok(s) => s,
                Err(e) => {
                    let err = match e {
                        StorageError::Compacted { requested, .. } => {
                            ApiError::expired(format!("too old resource version: {requested}"))
                        }
                        e => ApiError::from_storage(&info, "", e),
                    };
                    let _ = tx.send(Ok(error_event(&err))).await;
                    metrics.watches.dec();
                    return;
                }
            };
            let mut last = from;
            let mut bookmark_timer =
                tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = bookmark_timer.tick(), if req.bookmarks => {
                        if tx.send(Ok(enc.bookmark(last, false))).await.is_err() { break; }
                    }
                    next = events.next() => {
                        let mut chunk = Vec::new();
                        let end = fill_chunk(next, &mut events, &mut last, &mut chunk, |ev, out| {
                            if let Some((ty, obj)) = typed(&api, &info, ev, &selection) {
                                enc.shared_event(ty, &obj, out);
                            }
                        });
                        if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                            break;
                        }
                        match end {
                            ChunkEnd::More => {}
                            ChunkEnd::Ended => break,
                            ChunkEnd::Failed(e) => {
                                let err = match e {
                                    StorageError::Compacted { requested, .. } => ApiError::expired(format!("too old resource version: {requested}")),
                                    e => ApiError::from_storage(&info, "", e),
                                };
                                let _ = tx.send(Ok(error_event(&err))).await;
                                break;
                            }
                        }
                    }
                }
            }
            metrics.watches.dec();
        });
        let body = Body::from_stream(ReceiverStream::new(rx));
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-cache, private")
            .body(body)
            .map_err(|e| ApiError::internal("building the watch response", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::registry::Registry;

    fn change(rev: Revision, bytes: usize) -> Result<Change, StorageError> {
        let kv = crate::storage::KeyValue {
            key: format!("/registry/configmaps/d/c{rev}"),
            value: Bytes::from(vec![b'x'; bytes]),
            create_revision: rev,
            mod_revision: rev,
        };
        let ev = crate::storage::Event { kind: EventKind::Put, kv, prev: None };
        Ok(Change::Event(crate::storage::SharedEvent::new(ev)))
    }

    /// Lines as `fill_chunk` would write them: the event's value and a newline.
    fn value_line(ev: &crate::storage::SharedEvent, out: &mut Vec<u8>) {
        out.extend_from_slice(&ev.kv.value);
        out.push(b'\n');
    }

    fn stream(items: Vec<Result<Change, StorageError>>, then_wait: bool) -> crate::storage::watch_cache::ChangeStream {
        let ready = futures::stream::iter(items);
        if then_wait { Box::pin(ready.chain(futures::stream::pending())) } else { Box::pin(ready) }
    }

    #[test]
    fn the_changes_queued_behind_an_event_go_out_with_it_as_one_chunk() {
        let mut events = stream(vec![change(2, 10), Ok(Change::Progress(5)), change(7, 10)], true);
        let (mut last, mut chunk) = (0, Vec::new());
        let end = fill_chunk(Some(change(1, 10)), &mut events, &mut last, &mut chunk, value_line);
        assert!(matches!(end, ChunkEnd::More), "{end:?}");
        assert_eq!(chunk.len(), 3 * 11, "three events in one chunk");
        assert_eq!(last, 7);
        // nothing queued: the chunk holds the one event, and the watch goes on without waiting
        let mut chunk = Vec::new();
        let end = fill_chunk(Some(change(8, 10)), &mut events, &mut last, &mut chunk, value_line);
        assert!(matches!(end, ChunkEnd::More), "{end:?}");
        assert_eq!((chunk.len(), last), (11, 8));
    }

    #[test]
    fn a_chunk_stops_at_its_size_and_the_rest_waits_for_the_next() {
        let big = MAX_CHUNK / 2;
        let mut events = stream(vec![change(2, big), change(3, big), change(4, 1)], true);
        let (mut last, mut chunk) = (0, Vec::new());
        let end = fill_chunk(Some(change(1, big)), &mut events, &mut last, &mut chunk, value_line);
        assert!(matches!(end, ChunkEnd::More), "{end:?}");
        assert_eq!((chunk.len(), last), (2 * (big + 1), 2), "two halves fill it");
        let mut chunk = Vec::new();
        let next = futures::executor::block_on(events.next());
        fill_chunk(next, &mut events, &mut last, &mut chunk, value_line);
        assert_eq!((chunk.len(), last), (big + 1 + 2, 4));
    }

    #[test]
    fn a_chunk_takes_at_most_its_count_of_changes_even_when_they_write_nothing() {
        let queued: Vec<_> = (2..=MAX_CHUNK_CHANGES as i64 + 10).map(|r| change(r, 10)).collect();
        let mut events = stream(queued, true);
        let (mut last, mut chunk, mut seen) = (0, Vec::new(), 0);
        let end = fill_chunk(Some(change(1, 10)), &mut events, &mut last, &mut chunk, |_, _| seen += 1);
        assert!(matches!(end, ChunkEnd::More), "{end:?}");
        assert_eq!((seen, last, chunk.len()), (MAX_CHUNK_CHANGES, MAX_CHUNK_CHANGES as i64, 0));
        // the rest waits for the next chunk
        let next = futures::executor::block_on(events.next());
        fill_chunk(next, &mut events, &mut last, &mut chunk, |_, _| {});
        assert_eq!(last, MAX_CHUNK_CHANGES as i64 + 10);
    }

    #[test]
    fn the_lines_before_an_error_or_the_end_are_kept_and_the_reason_returned() {
        let compacted = Err(StorageError::Compacted { requested: 3, compacted: 9 });
        let mut events = stream(vec![change(2, 10), compacted, change(4, 10)], true);
        let (mut last, mut chunk) = (0, Vec::new());
        let end = fill_chunk(Some(change(1, 10)), &mut events, &mut last, &mut chunk, value_line);
        assert!(matches!(end, ChunkEnd::Failed(StorageError::Compacted { requested: 3, .. })), "{end:?}");
        assert_eq!((chunk.len(), last), (22, 2));
        let mut events = stream(vec![change(2, 10)], false);
        let mut chunk = Vec::new();
        let end = fill_chunk(Some(change(1, 10)), &mut events, &mut last, &mut chunk, value_line);
        assert!(matches!(end, ChunkEnd::Ended), "{end:?}");
        assert_eq!(chunk.len(), 22);
    }

    #[test]
    fn a_shared_event_line_says_what_a_watchers_own_encoding_says() {
        let pods = Registry::with_builtins().get("", "v1", "pods").expect("pods");
        let value = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "resourceVersion": "3"}});
        let kv = crate::storage::KeyValue {
            key: "/registry/pods/d/p".into(),
            value: serde_json::to_vec(&value).expect("json").into(),
            create_revision: 3,
            mod_revision: 3,
        };
        let obj = super::super::decoded::Decoded::default().get(&pods, &kv).expect("decoded");
        let mut enc = Encoder {
            info: pods,
            representation: Representation::Object,
            include: Include::Metadata,
            sent_columns: false,
        };
        let mut shared = Vec::new();
        enc.shared_event("MODIFIED", &obj, &mut shared);
        let own = enc.event("MODIFIED", obj.value());
        assert!(shared.ends_with(b"\n"));
        let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).expect("one JSON line");
        assert_eq!(parse(&shared), parse(&own));
        assert_eq!(parse(&shared)["object"]["metadata"]["name"], "p");
    }
}

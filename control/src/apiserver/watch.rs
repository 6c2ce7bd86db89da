//! Watch: a chunked stream of newline-delimited `{"type", "object"}` events, from a resourceVersion (or from the
//! current state, sent first as ADDED events), filtered by selectors, with bookmarks, a timeout, and a 410 ERROR
//! event when the resourceVersion has been compacted.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
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
    /// An event line; the whole object's JSON is shared by every watcher (encoded once).
    fn shared_event(&mut self, ty: &str, obj: &super::decoded::Object) -> Bytes {
        if !matches!(self.representation, Representation::Object) {
            return self.event(ty, obj.value());
        }
        let json = obj.json();
        let mut b = Vec::with_capacity(json.len() + 32);
        b.extend_from_slice(b"{\"type\":\"");
        b.extend_from_slice(ty.as_bytes());
        b.extend_from_slice(b"\",\"object\":");
        b.extend_from_slice(json);
        b.extend_from_slice(b"}\n");
        Bytes::from(b)
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
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
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
            let matches = |o: &Value| req.labels.matches_object(o) && req.fields.matches(o);
            let selects_all = req.labels.is_empty() && req.fields.is_empty();
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
                    ev = events.next() => {
                        let Some(ev) = ev else { break };
                        let ev = match ev {
                            Ok(Change::Event(ev)) => ev,
                            Ok(Change::Progress(rev)) => {
                                last = rev;
                                continue;
                            }
                            Err(e) => {
                                let err = match e {
                                    StorageError::Compacted { requested, .. } => ApiError::expired(format!("too old resource version: {requested}")),
                                    e => ApiError::from_storage(&info, "", e),
                                };
                                let _ = tx.send(Ok(error_event(&err))).await;
                                break;
                            }
                        };
                        last = ev.revision();
                        let Ok(Some(obj)) = api.decoded.of_event(&info, &ev, false) else { continue };
                        // Without selectors every object matches: the previous one need not be decoded.
                        let prev_match = match &ev.prev {
                            None => false,
                            Some(_) if selects_all => true,
                            Some(_) => api.decoded.of_event(&info, &ev, true).ok().flatten().is_some_and(|p| matches(p.facts())),
                        };
                        let ty = match ev.kind {
                            EventKind::Delete => prev_match.then_some("DELETED"),
                            EventKind::Put if ev.is_create() => matches(obj.facts()).then_some("ADDED"),
                            EventKind::Put => match (prev_match, matches(obj.facts())) {
                                (true, true) => Some("MODIFIED"),
                                (false, true) => Some("ADDED"),
                                (true, false) => Some("DELETED"),
                                (false, false) => None,
                            },
                        };
                        if let Some(ty) = ty
                            && tx.send(Ok(enc.shared_event(ty, &obj))).await.is_err()
                        {
                            break;
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
        let shared = enc.shared_event("MODIFIED", &obj);
        let own = enc.event("MODIFIED", obj.value());
        assert!(shared.ends_with(b"\n"));
        let parse = |b: &Bytes| serde_json::from_slice::<Value>(b).expect("one JSON line");
        assert_eq!(parse(&shared), parse(&own));
        assert_eq!(parse(&shared)["object"]["metadata"]["name"], "p");
    }
}

//! Objects decoded for watchers, shared between them: an event's stored bytes are parsed once per served version,
//! not once per watcher, and encoded as JSON once for all watchers that send the whole object. With 250 watches on
//! pods (a kubelet's each, kubectl's, the controllers'), decoding every event in every watch was 56% of the server's
//! CPU in `scripts/bench-scale`, and encoding it for every watcher another 5%.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use serde_json::Value;
use skiff_api::registry::ResourceInfo;

use super::error::{ApiError, ApiResult};
use super::objects::decode;
use crate::storage::{KeyValue, Revision, SharedEvent};

/// How many decoded objects are kept (watchers further behind decode again).
const KEEP: usize = 1024;

/// Recently decoded objects by (revision, key, served version).
#[derive(Debug, Default)]
pub struct Decoded {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_revision: HashMap<Revision, Vec<(String, Served, Arc<Object>)>>,
    order: VecDeque<Revision>,
}

/// An object as a watcher is served it, kept compact: its JSON (what a watcher of whole objects sends) and the few
/// fields a watch's selectors can read. The whole decoded object is made again from the JSON only when a watcher
/// asks for it (a Table or metadata-only watch, such as `kubectl get -w`): as a `serde_json::Value` a 2.3 KB pod
/// takes 25.6 KB, and holding the memo's and the recent events' objects decoded was the largest part of the idle
/// server's heap (75 MB at 5k pods in `scripts/bench-scale`, docs/benchmarks.md).
#[derive(Debug)]
pub struct Object {
    json: Bytes,
    facts: Value,
    value: OnceLock<Value>,
}

impl Object {
    /// `value` as `info` serves it: encoded once, and the fields its selectors can read copied out.
    fn new(info: &ResourceInfo, value: &Value) -> ApiResult<Object> {
        let json = serde_json::to_vec(value).map_err(|e| ApiError::internal("encoding a watched object", &e))?;
        Ok(Object { json: super::objects::exact(json), facts: facts(info, value), value: OnceLock::new() })
    }

    /// The object as JSON.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The object's labels and every field a field selector on its resource may name (and nothing else): what a
    /// watch's selectors match against, as they would against the whole object.
    pub fn facts(&self) -> &Value {
        &self.facts
    }

    /// The whole object, decoded from its JSON by the first watcher that asks and then shared.
    pub fn value(&self) -> &Value {
        // the JSON was encoded from a `Value` just above, so it decodes; `Null` only if that ever broke
        self.value.get_or_init(|| serde_json::from_slice(&self.json).unwrap_or_default())
    }
}

/// The paths of `obj` that a watch's selectors may read, copied into an object of the same shape: its labels,
/// name, namespace and the resource's selectable fields ([`ResourceInfo::selectable`]).
fn facts(info: &ResourceInfo, obj: &Value) -> Value {
    let mut out = Value::Object(serde_json::Map::new());
    let fixed = ["metadata.labels", "metadata.name", "metadata.namespace"];
    for path in fixed.into_iter().chain(info.selectable_fields.iter().map(String::as_str)) {
        copy_path(obj, &mut out, path);
    }
    out
}

/// Copies the value at the dotted `path` of `from` (read as a field selector reads it) to the same path of `to`.
fn copy_path(from: &Value, to: &mut Value, path: &str) {
    let mut src = from;
    for part in path.split('.') {
        match src.get(part) {
            Some(v) => src = v,
            None => return,
        }
    }
    let mut dst = to;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = dst else { return };
        if parts.peek().is_none() {
            map.insert(part.to_string(), src.clone());
            return;
        }
        dst = map.entry(part).or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
}

/// The served version an object was decoded for: group, version and resource.
#[derive(Debug, PartialEq)]
struct Served(String, String, String);

impl Served {
    fn is(&self, info: &ResourceInfo) -> bool {
        self.0 == info.group && self.1 == info.version && self.2 == info.plural
    }
}

/// The objects of one event as each served version has them, decoded once for every watcher of the event (kept in
/// the event's own slot: no lookup in the shared memo per watcher). The slot holds them until the watch cache trims
/// the event: more than [`DECODED_FOR`](crate::storage::watch_cache::DECODED_FOR) events behind its type's newest and
/// held by no watcher any more. So a watcher that lags does not decode again (holding them weakly cost a quarter more
/// server CPU at 5k pods in `scripts/bench-scale`: 268 pods/s against 347), and the type's history of up to 1,024
/// events does not keep 1,024 decoded objects (then ~40 KB each as `serde_json::Value`; idle RSS at 5k pods 587 ->
/// 431 MiB). A trimmed event's objects come from the memo by revision and are not kept in the slot.
#[derive(Debug, Default)]
pub struct EventObjects {
    inner: Mutex<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    entries: Vec<EventEntry>,
    trimmed: bool,
}

impl crate::storage::Memo for EventObjects {
    fn trim(&self) {
        let mut slot = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        slot.trimmed = true;
        slot.entries = Vec::new();
    }
}

#[derive(Debug)]
struct EventEntry {
    served: Served,
    new: Option<Arc<Object>>,
    prev: Option<Arc<Object>>,
}

impl Decoded {
    /// The object of `ev` (`prev`: the object before it, `None` when the event has none) as `info` serves it,
    /// decoded by the first watcher that asks and shared with the others.
    pub fn of_event(&self, info: &ResourceInfo, ev: &SharedEvent, prev: bool) -> ApiResult<Option<Arc<Object>>> {
        let kv = match (prev, &ev.prev) {
            (false, _) => &ev.kv,
            (true, Some(p)) => p,
            (true, None) => return Ok(None),
        };
        let Some(memo) = ev.memo::<EventObjects>() else { return self.get(info, kv).map(Some) };
        let mut slot = memo.inner.lock().unwrap_or_else(|p| p.into_inner());
        if slot.trimmed {
            drop(slot);
            return self.get(info, kv).map(Some);
        }
        let entries = &mut slot.entries;
        let i = match entries.iter().position(|e| e.served.is(info)) {
            Some(i) => i,
            None => {
                let served = Served(info.group.clone(), info.version.clone(), info.plural.clone());
                entries.push(EventEntry { served, new: None, prev: None });
                entries.len() - 1
            }
        };
        let slot = if prev { &mut entries[i].prev } else { &mut entries[i].new };
        if let Some(o) = slot {
            return Ok(Some(o.clone()));
        }
        // through the memo by revision: this event's object is the previous object of the key's next event
        let o = self.get(info, kv)?;
        *slot = Some(o.clone());
        Ok(Some(o))
    }

    /// `kv` decoded as `info` serves it: from the memo when another watcher decoded it already.
    pub fn get(&self, info: &ResourceInfo, kv: &KeyValue) -> ApiResult<Arc<Object>> {
        {
            let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let hit = inner
                .by_revision
                .get(&kv.mod_revision)
                .and_then(|objs| objs.iter().find(|(k, v, _)| *k == kv.key && v.is(info)));
            if let Some((_, _, obj)) = hit {
                return Ok(obj.clone());
            }
        }
        let obj = Arc::new(Object::new(info, &decode(info, kv)?)?);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner { by_revision, order } = &mut *inner;
        let objs = by_revision.entry(kv.mod_revision).or_default();
        if !objs.iter().any(|(k, v, _)| *k == kv.key && v.is(info)) {
            let served = Served(info.group.clone(), info.version.clone(), info.plural.clone());
            objs.push((kv.key.clone(), served, obj.clone()));
            order.push_back(kv.mod_revision);
        }
        while order.len() > KEEP {
            let Some(old) = order.pop_front() else { break };
            if let Some(objs) = by_revision.get_mut(&old) {
                objs.remove(0);
                if objs.is_empty() {
                    by_revision.remove(&old);
                }
            }
        }
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::registry::Registry;

    fn kv(key: &str, rev: Revision, name: &str) -> KeyValue {
        let value =
            serde_json::to_vec(&serde_json::json!({"metadata": {"name": name, "namespace": "d"}})).expect("json");
        KeyValue { key: key.into(), value: value.into(), create_revision: 1, mod_revision: rev }
    }

    fn put(kv: KeyValue, prev: Option<KeyValue>) -> Arc<SharedEvent> {
        SharedEvent::new(crate::storage::Event { kind: crate::storage::EventKind::Put, kv, prev })
    }

    #[test]
    fn an_object_is_decoded_once_and_shared_until_it_falls_out() {
        let reg = Registry::with_builtins();
        let pods = reg.get("", "v1", "pods").expect("pods");
        let d = Decoded::default();
        let a = d.get(&pods, &kv("/registry/pods/d/a", 5, "a")).expect("a");
        assert_eq!(a.value()["metadata"]["resourceVersion"], "5");
        assert_eq!(a.value()["kind"], "Pod");
        let again = d.get(&pods, &kv("/registry/pods/d/a", 5, "a")).expect("a");
        assert!(Arc::ptr_eq(&a, &again), "the second watcher gets the first one's decoding");
        // same revision, another key (one transaction, several keys): its own object
        let b = d.get(&pods, &kv("/registry/pods/d/b", 5, "b")).expect("b");
        assert_eq!(b.value()["metadata"]["name"], "b");
        for rev in 6..(6 + KEEP as Revision) {
            d.get(&pods, &kv("/registry/pods/d/x", rev, "x")).expect("x");
        }
        let later = d.get(&pods, &kv("/registry/pods/d/a", 5, "a")).expect("a");
        assert!(!Arc::ptr_eq(&a, &later), "evicted after {KEEP} newer objects");
        assert_eq!(later.value(), a.value());
        assert_eq!(serde_json::from_slice::<Value>(a.json()).expect("json"), *a.value(), "encoded as decoded");
        let inner = d.inner.lock().expect("lock");
        assert_eq!(inner.order.len(), KEEP);
        assert_eq!(inner.by_revision.values().map(Vec::len).sum::<usize>(), KEEP);
    }

    /// Objects of several resources as stored, with a value (or none) for each field a selector on them may name.
    fn selectable_objects() -> Vec<(&'static str, &'static str, Value)> {
        let labels = serde_json::json!({"app": "web", "tier": "edge"});
        vec![
            (
                "",
                "pods",
                serde_json::json!({"kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": "p", "namespace": "d", "labels": labels, "resourceVersion": "4"},
                "spec": {"nodeName": "n1", "restartPolicy": "Always", "hostNetwork": true,
                    "containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "1"}]}]},
                "status": {"phase": "Running", "podIP": "10.0.0.5", "conditions": [{"type": "Ready"}]}}),
            ),
            (
                "",
                "events",
                serde_json::json!({"kind": "Event", "apiVersion": "v1",
                "metadata": {"name": "e", "namespace": "d"}, "reason": "Started", "type": "Normal",
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "d", "uid": "u"},
                "source": {"component": "kubelet"}, "message": "m"}),
            ),
            (
                "",
                "nodes",
                serde_json::json!({"kind": "Node", "apiVersion": "v1",
                "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
                "spec": {"unschedulable": false, "taints": [{"key": "k", "effect": "NoSchedule"}]}}),
            ),
            (
                "",
                "secrets",
                serde_json::json!({"kind": "Secret", "apiVersion": "v1",
                "metadata": {"name": "s", "namespace": "d"}, "type": "Opaque", "data": {"k": "dg=="}}),
            ),
        ]
    }

    #[test]
    fn selectors_match_an_objects_facts_as_they_match_the_whole_object() {
        use skiff_api::selector::{FieldSelector, Selector, field_value};
        let reg = Registry::with_builtins();
        let labels = ["app=web", "app!=web", "app=db", "!app", "app", "tier in (edge, core)", "tier notin (edge)", "x"];
        let mut checked = 0;
        for (group, plural, obj) in selectable_objects() {
            let info = reg.get(group, "v1", plural).expect("resource");
            let mut fields = vec!["metadata.name".to_string(), "metadata.namespace".to_string()];
            fields.extend(info.selectable_fields.iter().cloned());
            let value = serde_json::to_vec(&obj).expect("json");
            let kv = KeyValue {
                key: format!("/registry/{plural}/x"),
                value: value.into(),
                create_revision: 1,
                mod_revision: 4,
            };
            let decoded = Decoded::default().get(&info, &kv).expect("decodes");
            let whole = decode(&info, &kv).expect("decodes");
            assert!(decoded.facts().get("data").is_none() && decoded.facts().pointer("/spec/containers").is_none());
            for l in labels {
                let sel = Selector::parse(l).expect("label selector");
                assert_eq!(sel.matches_object(decoded.facts()), sel.matches_object(&whole), "{plural}: {l}");
                checked += 1;
            }
            for f in &fields {
                let actual = field_value(&whole, f);
                for term in [format!("{f}={actual}"), format!("{f}!={actual}"), format!("{f}=other"), format!("{f}=")] {
                    let sel = FieldSelector::parse(&term).expect("field selector");
                    assert_eq!(sel.matches(decoded.facts()), sel.matches(&whole), "{plural}: {term}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "{checked}");
    }

    #[test]
    fn the_whole_object_is_decoded_again_only_for_a_watcher_that_asks() {
        let reg = Registry::with_builtins();
        let pods = reg.get("", "v1", "pods").expect("pods");
        let (_, _, pod) = selectable_objects().remove(0);
        let value = serde_json::to_vec(&pod).expect("json");
        let kv =
            KeyValue { key: "/registry/pods/d/p".into(), value: value.into(), create_revision: 1, mod_revision: 4 };
        let obj = Decoded::default().get(&pods, &kv).expect("decodes");
        assert!(obj.value.get().is_none(), "held as JSON and facts only");
        assert_eq!(obj.facts().pointer("/spec/nodeName"), Some(&serde_json::json!("n1")));
        assert_eq!(obj.facts().pointer("/metadata/labels/app"), Some(&serde_json::json!("web")));
        assert!(obj.facts().pointer("/status/conditions").is_none(), "no field a selector cannot name");
        let whole = decode(&pods, &kv).expect("decodes");
        assert_eq!(*obj.value(), whole, "the whole object on demand");
        assert_eq!(serde_json::from_slice::<Value>(obj.json()).expect("json"), whole);
        assert!(obj.value.get().is_some(), "kept for the next watcher that asks");
        let own = Object::new(&pods, &whole).expect("encodes");
        let len = own.json.len();
        assert_eq!(own.json.try_into_mut().expect("the only reference").capacity(), len, "no spare room held");
    }

    #[test]
    fn a_trimmed_event_lets_go_of_its_objects_and_is_not_filled_again() {
        let reg = Registry::with_builtins();
        let pods = reg.get("", "v1", "pods").expect("pods");
        let d = Decoded::default();
        let (before, after) = (kv("/registry/pods/d/a", 5, "a"), kv("/registry/pods/d/a", 6, "a"));
        let ev = put(after, Some(before));
        let first = d.of_event(&pods, &ev, false).expect("decodes").expect("object");
        let prev = d.of_event(&pods, &ev, true).expect("decodes").expect("previous object");
        assert_eq!(Arc::strong_count(&first), 3, "held here, by the event's slot and by the memo by revision");
        ev.trim();
        assert_eq!(Arc::strong_count(&first), 2, "the slot let go");
        assert_eq!(Arc::strong_count(&prev), 2, "of the previous object too");
        // a watcher coming late gets the memo's object, and the slot stays empty
        let late = d.of_event(&pods, &ev, false).expect("decodes").expect("object");
        assert!(Arc::ptr_eq(&first, &late));
        assert_eq!(Arc::strong_count(&first), 3, "held here twice and by the memo: not by the slot again");
        assert!(ev.memo::<EventObjects>().is_none());
        // an event trimmed before anyone read it: decoded from its bytes as usual
        let (x5, x6) = (kv("/registry/pods/d/x", 7, "x"), kv("/registry/pods/d/x", 8, "x"));
        let unread = put(x6, Some(x5));
        unread.trim();
        let x = d.of_event(&pods, &unread, false).expect("decodes").expect("object");
        assert_eq!(x.value()["metadata"]["resourceVersion"], "8");
        let x_prev = d.of_event(&pods, &unread, true).expect("decodes").expect("previous object");
        assert_eq!(x_prev.value()["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn an_events_objects_are_decoded_once_for_all_its_watchers() {
        let reg = Registry::with_builtins();
        let pods = reg.get("", "v1", "pods").expect("pods");
        let d = Decoded::default();
        let (before, after) = (kv("/registry/pods/d/a", 5, "a"), kv("/registry/pods/d/a", 6, "a"));
        let ev = put(after.clone(), Some(before.clone()));
        let first = d.of_event(&pods, &ev, false).expect("decodes").expect("object");
        let second = d.of_event(&pods, &ev, false).expect("decodes").expect("object");
        assert!(Arc::ptr_eq(&first, &second), "the second watcher gets the first one's object");
        assert_eq!(first.value()["metadata"]["resourceVersion"], "6");
        let prev = d.of_event(&pods, &ev, true).expect("decodes").expect("previous object");
        assert_eq!(prev.value()["metadata"]["resourceVersion"], "5");
        assert!(Arc::ptr_eq(&prev, &d.of_event(&pods, &ev, true).expect("decodes").expect("previous")));
        // the next event of the key finds this event's object as its previous one, without decoding again
        let next = SharedEvent::new(crate::storage::Event {
            kind: crate::storage::EventKind::Put,
            kv: kv("/registry/pods/d/a", 7, "a"),
            prev: Some(after),
        });
        assert!(Arc::ptr_eq(&first, &d.of_event(&pods, &next, true).expect("decodes").expect("previous")));
        let created =
            SharedEvent::new(crate::storage::Event { kind: crate::storage::EventKind::Put, kv: before, prev: None });
        assert!(d.of_event(&pods, &created, true).expect("no error").is_none());
    }
}

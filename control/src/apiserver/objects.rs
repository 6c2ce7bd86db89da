//! Objects in storage: the codec (JSON, with `resourceVersion` taken from the store's revision), reads and listings
//! with selectors and pagination.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use super::Api;
use super::error::{ApiError, ApiResult};
use crate::storage::{KeyValue, ListOptions, Revision};
use skiff_api::registry::ResourceInfo;
use skiff_api::selector::{FieldSelector, Selector};

/// An object as stored, with the revision it was read at.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object, with `metadata.resourceVersion` set.
    pub object: Value,
    /// Its `mod_revision`.
    pub revision: Revision,
}

/// Decodes a stored value as an object of `info`.
pub fn decode(info: &ResourceInfo, kv: &KeyValue) -> ApiResult<Value> {
    let obj: Value =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal("decoding a stored object", &e))?;
    Ok(served(info, obj, kv.mod_revision))
}

/// `obj`, in the storage version, as clients are served it once stored at `revision`: what [`decode`] makes of
/// its [encoding](encode), without encoding and parsing it again.
pub fn served(info: &ResourceInfo, obj: Value, revision: Revision) -> Value {
    let mut obj = super::conversion::to_served(info, obj);
    let md = skiff_api::meta::metadata_mut(&mut obj);
    // last, as in an object read back from storage (which holds none)
    md.shift_remove("resourceVersion");
    md.insert("resourceVersion".into(), Value::from(revision.to_string()));
    if let Value::Object(m) = &mut obj {
        // objects of every served version share storage; present them in the requested version
        m.insert("apiVersion".into(), Value::from(info.api_version()));
        m.insert("kind".into(), Value::from(info.kind.clone()));
    }
    obj
}

/// Encodes an object for storage (without `resourceVersion`, which the store's revision provides; the object is
/// not copied to leave it out).
pub fn encode(obj: &Value) -> ApiResult<Bytes> {
    serde_json::to_vec(&WithoutResourceVersion(obj))
        .map(exact)
        .map_err(|e| ApiError::internal("encoding an object", &e))
}

/// Whether `a` and `b` are the same object but for `metadata.resourceVersion` (compared without copying either).
pub fn same_but_resource_version(a: &Value, b: &Value) -> bool {
    let (Value::Object(a), Value::Object(b)) = (a, b) else { return a == b };
    a.len() == b.len()
        && a.iter().all(|(k, v)| match (k.as_str(), v, b.get(k)) {
            (_, _, None) => false,
            ("metadata", Value::Object(ma), Some(Value::Object(mb))) => {
                let rest =
                    |m: &serde_json::Map<String, Value>| m.len() - usize::from(m.contains_key("resourceVersion"));
                rest(ma) == rest(mb) && ma.iter().all(|(k, v)| k == "resourceVersion" || mb.get(k) == Some(v))
            }
            (_, v, Some(w)) => v == w,
        })
}

/// An object serialized as it is but for `metadata.resourceVersion`.
struct WithoutResourceVersion<'a>(&'a Value);

impl serde::Serialize for WithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let Value::Object(top) = self.0 else { return self.0.serialize(s) };
        let mut map = s.serialize_map(Some(top.len()))?;
        for (k, v) in top {
            match (k.as_str(), v) {
                ("metadata", Value::Object(md)) => map.serialize_entry(k, &MetadataWithoutResourceVersion(md))?,
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

struct MetadataWithoutResourceVersion<'a>(&'a serde_json::Map<String, Value>);

impl serde::Serialize for MetadataWithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().filter(|(k, _)| *k != "resourceVersion"))
    }
}

/// `json` as `Bytes` holding no spare room. Encoding grows its buffer by doubling, and `Bytes::from(Vec)` keeps the
/// whole buffer: a 2.5 KB pod held 4 KB in every event the watch cache's histories and the memo of decoded objects
/// keep (~6,000 events and ~3,000 objects at 10k pods in `scripts/bench-scale`).
pub fn exact(json: Vec<u8>) -> Bytes {
    Bytes::from(json.into_boxed_slice())
}

/// Parameters of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// `labelSelector`.
    pub labels: Selector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (0: no limit).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion` for the listing (None: the latest).
    pub resource_version: Option<String>,
}

/// One page of a listing, each matching object as the caller keeps it.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// Matching objects.
    pub items: Vec<T>,
    /// The revision the listing reflects.
    pub revision: Revision,
    /// A token for the next page, if there is one.
    pub continue_token: Option<String>,
}

/// One page of a listing, the objects decoded.
pub type ListPage = Page<Value>;

fn encode_continue(revision: Revision, start: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": revision, "start": start}).to_string())
}

fn decode_continue(token: &str) -> ApiResult<(Revision, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let raw = base64::engine::general_purpose::STANDARD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?.to_string();
    Ok((rv, start))
}

/// The storage prefix of a collection: every namespace, or one.
pub fn collection_prefix(info: &ResourceInfo, namespace: Option<&str>) -> String {
    match namespace.filter(|_| info.namespaced()) {
        Some(ns) => format!("{}{ns}/", info.storage_prefix()),
        None => info.storage_prefix(),
    }
}

impl Api {
    /// Reads one object.
    pub async fn get(&self, info: &ResourceInfo, namespace: Option<&str>, name: &str) -> ApiResult<Stored> {
        let key = info.storage_key(namespace, name);
        let kv = self.store.get(&key).await.map_err(|e| ApiError::from_storage(info, name, e))?;
        let kv = kv.ok_or_else(|| ApiError::not_found(info, name))?;
        Ok(Stored { object: decode(info, &kv)?, revision: kv.mod_revision })
    }

    /// Reads one object, `None` when it does not exist.
    pub async fn try_get(&self, info: &ResourceInfo, namespace: Option<&str>, name: &str) -> ApiResult<Option<Stored>> {
        match self.get(info, namespace, name).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists objects of `info` (in one namespace, or all), filtered by selectors, one page at a time.
    pub async fn list(&self, info: &ResourceInfo, namespace: Option<&str>, q: &ListQuery) -> ApiResult<ListPage> {
        self.list_as(info, namespace, q, Ok).await
    }

    /// Lists as [`Api::list`] does, handing each matching object to `keep` as soon as it is decoded and matched,
    /// so that the listing holds what `keep` makes of each object (its JSON, say) rather than every object
    /// decoded: a decoded pod takes about 11 times its JSON, so a list of 10,000 pods held ~250 MB of
    /// `serde_json::Value`s until it was encoded.
    pub async fn list_as<T>(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        q: &ListQuery,
        mut keep: impl FnMut(Value) -> ApiResult<T>,
    ) -> ApiResult<Page<T>> {
        for f in q.fields.fields() {
            if !info.selectable(f) {
                return Err(ApiError::bad_request(format!(
                    "\"{f}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                )));
            }
        }
        let prefix = collection_prefix(info, namespace);
        // A name selector in a namespace (how kubectl wait/rollout/delete follow one object) is a point read.
        if let Some(name) = q.fields.equality("metadata.name")
            && (namespace.is_some() || !info.namespaced())
            && q.continue_token.is_none()
        {
            let revision = self.store.revision().await.map_err(|e| ApiError::from_storage(info, name, e))?;
            let items = match self.try_get(info, namespace, name).await? {
                Some(s) if q.labels.matches_object(&s.object) && q.fields.matches(&s.object) => vec![keep(s.object)?],
                _ => Vec::new(),
            };
            return Ok(Page { items, revision, continue_token: None });
        }
        let (mut revision, mut start) = match &q.continue_token {
            Some(t) => {
                let (rv, start) = decode_continue(t)?;
                (Some(rv), Some(start))
            }
            None => (None, None),
        };
        if let Some(rv) = q.resource_version.as_deref().filter(|rv| !rv.is_empty() && *rv != "0")
            && revision.is_none()
        {
            let rv: Revision =
                rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            let current = self.store.revision().await.map_err(|e| ApiError::internal("revision", &e))?;
            if rv > current {
                return Err(ApiError::timeout(format!("Too large resource version: {rv}, current: {current}")));
            }
            // "not older than rv": the latest state satisfies it
        }
        let filtered = !q.labels.is_empty() || !q.fields.is_empty();
        let page = if q.limit == 0 { None } else { Some(q.limit.max(if filtered { 500 } else { 0 })) };
        let mut items = Vec::new();
        loop {
            let res = self
                .store
                .list(&prefix, ListOptions { start: start.clone(), limit: page, revision })
                .await
                .map_err(|e| match e {
                    crate::storage::StorageError::Compacted { .. } => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results.",
                    ),
                    e => ApiError::from_storage(info, "", e),
                })?;
            revision = Some(res.revision);
            let n = res.items.len();
            let mut last_key = None;
            for kv in &res.items {
                last_key = Some(kv.key.clone());
                let obj = decode(info, kv)?;
                if q.labels.matches_object(&obj) && q.fields.matches(&obj) {
                    items.push(keep(obj)?);
                    if q.limit > 0 && items.len() == q.limit {
                        break;
                    }
                }
            }
            let rev = res.revision;
            if q.limit > 0 && items.len() == q.limit {
                // more may follow the last key we looked at
                let scanned_all_of_page = last_key.as_ref() == res.items.last().map(|kv| &kv.key);
                let more = res.more || !scanned_all_of_page;
                let token = more.then(|| encode_continue(rev, &format!("{}\0", last_key.unwrap_or_default())));
                return Ok(Page { items, revision: rev, continue_token: token });
            }
            if !res.more || n == 0 {
                return Ok(Page { items, revision: rev, continue_token: None });
            }
            start = last_key.map(|k| format!("{k}\0"));
        }
    }

    /// Lists every object of `info` in a namespace (or all) matching `labels` (for controllers inside the server).
    pub async fn list_all(
        &self,
        info: &ResourceInfo,
        namespace: Option<&str>,
        labels: Selector,
    ) -> ApiResult<Vec<Value>> {
        let q = ListQuery { labels, ..Default::default() };
        Ok(self.list(info, namespace, &q).await?.items)
    }

    /// The resource registered for `group/version/plural`.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).get(group, version, plural)
    }

    /// The resource for an `apiVersion` and `kind`.
    /// The resource `info`'s objects are stored as, when `info` is a version converted at the edge.
    pub fn storage_info(&self, info: &ResourceInfo) -> Option<Arc<ResourceInfo>> {
        super::conversion::storage_version(info).and_then(|(g, v)| self.resource(g, v, &info.plural))
    }

    /// The resource for an object's apiVersion and kind.
    pub fn resource_for_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).by_kind(api_version, kind)
    }

    /// The built-in resource `plural` of `group` (its only served version).
    pub fn builtin(&self, group: &str, plural: &str) -> Arc<ResourceInfo> {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        reg.all()
            .iter()
            .find(|r| r.group == group && r.plural == plural && !r.custom)
            .cloned()
            .unwrap_or_else(|| panic!("built-in resource {plural}.{group} is registered"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_object_holds_no_spare_room() {
        let labels: serde_json::Map<String, Value> = (0..40).map(|i| (format!("label-{i}"), json_str(i))).collect();
        let obj = serde_json::json!({"metadata": {"name": "p", "resourceVersion": "7", "labels": labels}});
        let bytes = encode(&obj).expect("encodes");
        assert!(!bytes.windows(15).any(|w| w == b"resourceVersion"), "the store's revision stands for it");
        let len = bytes.len();
        let held = bytes.try_into_mut().expect("the only reference").capacity();
        assert_eq!(held, len, "room held beyond the encoded object");
    }

    #[test]
    fn an_encoded_object_keeps_the_order_of_its_fields_and_decodes_to_what_served_gives() {
        let pods = skiff_api::registry::Registry::with_builtins().get("", "v1", "pods").expect("pods");
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "resourceVersion": "7",
            "namespace": "d", "uid": "u", "labels": {"a": "b"}}, "spec": {"nodeName": "n1"}});
        let bytes = encode(&obj).expect("encodes");
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        assert!(
            text.contains(r#""metadata":{"name":"p","namespace":"d","uid":"u","labels":{"a":"b"}}"#),
            "the fields after resourceVersion keep their places: {text}"
        );
        let kv = KeyValue { key: "/registry/pods/d/p".into(), value: bytes, create_revision: 5, mod_revision: 9 };
        let decoded = decode(&pods, &kv).expect("decodes");
        let direct = served(&pods, obj, 9);
        assert_eq!(decoded, direct);
        assert_eq!(serde_json::to_string(&decoded).ok(), serde_json::to_string(&direct).ok(), "same order too");
        assert_eq!(direct["metadata"]["resourceVersion"], "9");
    }

    #[test]
    fn objects_differing_only_in_their_resource_version_are_the_same() {
        let a = json!({"metadata": {"name": "p", "resourceVersion": "7", "labels": {"a": "b"}}, "spec": {"x": 1}});
        let same = |b: Value| same_but_resource_version(&a, &b);
        assert!(same(json!({"spec": {"x": 1}, "metadata": {"labels": {"a": "b"}, "name": "p"}})));
        assert!(same(
            json!({"metadata": {"name": "p", "resourceVersion": "9", "labels": {"a": "b"}}, "spec": {"x": 1}})
        ));
        assert!(!same(
            json!({"metadata": {"name": "p", "resourceVersion": "7", "labels": {"a": "c"}}, "spec": {"x": 1}})
        ));
        assert!(!same(json!({"metadata": {"name": "p", "resourceVersion": "7"}, "spec": {"x": 1}})));
        assert!(!same(
            json!({"metadata": {"name": "p", "resourceVersion": "7", "labels": {"a": "b"}}, "spec": {"x": 2}})
        ));
        assert!(!same(json!({"metadata": {"name": "p", "resourceVersion": "7", "labels": {"a": "b"}}})));
        assert!(!same(json!({"metadata": {"name": "p", "labels": {"a": "b"}, "uid": "u"}, "spec": {"x": 1}})));
        assert!(!same(json!({"spec": {"x": 1}, "status": {}, "metadata": {}})));
        assert!(!same(json!("p")));
    }

    fn json_str(i: usize) -> Value {
        Value::String(format!("value-{i}"))
    }
}

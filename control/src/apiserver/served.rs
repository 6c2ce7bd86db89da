//! An object's served JSON made from its stored JSON without decoding the whole object: only its top-level fields
//! and its metadata's fields are split, every other value is copied as the stored bytes. This is what
//! [`decode`](super::objects::decode) followed by encoding gives, for the resources served in their storage version,
//! and it is how a list of whole objects is answered: decoding a pod into a `serde_json::Value` and encoding it again
//! was most of the CPU of listing 10,000 pods.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use skiff_api::registry::ResourceInfo;

use super::conversion;
use super::error::{ApiError, ApiResult};
use super::objects::decode;
use crate::storage::KeyValue;

/// `kv` as `info` serves it, encoded as JSON: equal to encoding [`decode`]'s object.
pub fn json(info: &ResourceInfo, kv: &KeyValue) -> ApiResult<Vec<u8>> {
    match fields_of(info, kv) {
        Some(out) => out,
        None => serde_json::to_vec(&decode(info, kv)?).map_err(|e| internal(&e)),
    }
}

/// The served JSON from the stored fields, `None` where only a whole decoding gives the same answer: a converted
/// version, or stored bytes that are not an object with an object (or no) `metadata`.
fn fields_of(info: &ResourceInfo, kv: &KeyValue) -> Option<ApiResult<Vec<u8>>> {
    if conversion::storage_version(info).is_some() {
        return None;
    }
    let mut top: Fields = serde_json::from_slice(&kv.value).ok()?;
    let mut md: Fields = match top.get("metadata") {
        Some(raw) => serde_json::from_str(raw.get()).ok()?,
        None => Fields::default(),
    };
    let built = (|| {
        md.set("resourceVersion", raw(&kv.mod_revision.to_string())?);
        top.set("metadata", RawValue::from_string(md.encode()?).map_err(|e| internal(&e))?);
        top.set("apiVersion", raw(&info.api_version())?);
        top.set("kind", raw(&info.kind)?);
        top.encode()
    })();
    Some(built.and_then(|s| Ok(s.into_bytes())))
}

fn internal(e: &serde_json::Error) -> ApiError {
    ApiError::internal("encoding a listed object", e)
}

/// A JSON string as a raw value.
fn raw(s: &str) -> ApiResult<Box<RawValue>> {
    serde_json::value::to_raw_value(s).map_err(|e| internal(&e))
}

/// A JSON object's fields in order, each value as its bytes. A key given twice keeps its first place and its last
/// value, as `serde_json`'s ordered map does.
#[derive(Default)]
struct Fields(Vec<(String, Box<RawValue>)>);

impl Fields {
    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    /// Sets `key`, in its place if present, else last (as inserting into `serde_json`'s ordered map does).
    fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    fn encode(&self) -> ApiResult<String> {
        let mut out = String::with_capacity(self.0.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>() + 2);
        out.push('{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k).map_err(|e| internal(&e))?);
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
                let mut fields = Fields::default();
                while let Some((k, v)) = m.next_entry::<String, Box<RawValue>>()? {
                    fields.set(&k, v);
                }
                Ok(fields)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use skiff_api::registry::Registry;

    fn kv(value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: "/registry/x/d/a".into(),
            value: value.as_bytes().to_vec().into(),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    #[test]
    fn the_served_json_is_what_decoding_and_encoding_give() {
        let reg = Registry::with_builtins();
        let stored = [
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"d","labels":{"x":"é \"q\" \u2713"}},"spec":{"containers":[{"name":"c","image":"i","resources":{"limits":{"cpu":1.5}}}]},"status":{}}"#,
            r#"{"metadata":{"name":"a"},"data":{"k":"v"}}"#,
            r#"{"data":{"k":"v"}}"#,
            r#"{"kind":"Other","metadata":{"resourceVersion":"3","name":"a","name":"b"},"kind":"Again","x":[1,2,{"y":null}]}"#,
            r#"{"metadata":{},"apiVersion":"wrong/v9"}"#,
            r#"{"metadata":null}"#,
            r#"{"metadata":[1]}"#,
            r#"[1,2]"#,
            r#"{}"#,
        ];
        for (group, version, plural) in [
            ("", "v1", "pods"),
            ("", "v1", "configmaps"),
            ("apps", "v1", "deployments"),
            ("autoscaling", "v1", "horizontalpodautoscalers"),
            ("autoscaling", "v2", "horizontalpodautoscalers"),
        ] {
            let info = reg.get(group, version, plural).expect("resource");
            for s in stored {
                // byte for byte for what the store holds (JSON as this server encodes it), and equal as JSON for
                // any other spelling (an escape such as \u2713 is kept as it was stored)
                let normalized = serde_json::to_string(&serde_json::from_str::<Value>(s).expect("json")).expect("json");
                for (stored, bytes) in [(s.to_string(), false), (normalized, true)] {
                    let kv = kv(&stored, 42);
                    let whole = serde_json::to_vec(&decode(&info, &kv).expect("decodes")).expect("json");
                    let served = json(&info, &kv).expect("served");
                    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).expect("json");
                    assert_eq!(parse(&served), parse(&whole), "{plural} {version}: {stored}");
                    if bytes {
                        assert_eq!(String::from_utf8(served).expect("utf-8"), String::from_utf8(whole).expect("utf-8"));
                    }
                }
            }
        }
        // and the fast path is the one taken for a plain object
        let pods = reg.get("", "v1", "pods").expect("pods");
        assert!(fields_of(&pods, &kv(stored[0], 42)).is_some());
        assert!(fields_of(&pods, &kv(r#"{"metadata":[1]}"#, 42)).is_none(), "left to the whole decoding");
    }

    #[test]
    fn bytes_that_are_not_json_are_refused_as_decoding_refuses_them() {
        let pods = Registry::with_builtins().get("", "v1", "pods").expect("pods");
        for bad in [r#"{"metadata":"#, "not json", r#"{"a":1}x"#] {
            assert!(decode(&pods, &kv(bad, 1)).is_err());
            assert!(json(&pods, &kv(bad, 1)).is_err(), "{bad}");
        }
    }
}

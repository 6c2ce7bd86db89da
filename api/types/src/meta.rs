//! Helpers over the `metadata` of untyped (JSON) objects, as the API server and generic tools handle them.

use serde_json::{Map, Value};

/// The object's `metadata` map, if present.
pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// The object's `metadata` map, created if absent (the object must be a JSON object).
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("made an object above");
    let md = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !md.is_object() {
        *md = Value::Object(Map::new());
    }
    md.as_object_mut().expect("made an object above")
}

/// A string field of `metadata` (`name`, `namespace`, `uid`, `resourceVersion`, …), empty when missing.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    metadata(obj).and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or_default()
}

/// `metadata.name`.
pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name")
}

/// `metadata.namespace`.
pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace")
}

/// `metadata.uid`.
pub fn uid(obj: &Value) -> &str {
    meta_str(obj, "uid")
}

/// `metadata.resourceVersion`.
pub fn resource_version(obj: &Value) -> &str {
    meta_str(obj, "resourceVersion")
}

/// A string map of `metadata` (`labels` or `annotations`) as pairs; non-string values are skipped.
pub fn string_map<'a>(obj: &'a Value, field: &str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    metadata(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v))))
}

/// The value of one label.
pub fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    metadata(obj).and_then(|m| m.get("labels")).and_then(|l| l.get(key)).and_then(Value::as_str)
}

/// The value of one annotation.
pub fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    metadata(obj).and_then(|m| m.get("annotations")).and_then(|l| l.get(key)).and_then(Value::as_str)
}

/// Sets (or with `None` removes) one annotation.
pub fn set_annotation(obj: &mut Value, key: &str, value: Option<&str>) {
    set_in_string_map(obj, "annotations", key, value);
}

/// Sets (or with `None` removes) one label.
pub fn set_label(obj: &mut Value, key: &str, value: Option<&str>) {
    set_in_string_map(obj, "labels", key, value);
}

fn set_in_string_map(obj: &mut Value, field: &str, key: &str, value: Option<&str>) {
    let md = metadata_mut(obj);
    match value {
        Some(v) => {
            let m = md.entry(field).or_insert_with(|| Value::Object(Map::new()));
            if !m.is_object() {
                *m = Value::Object(Map::new());
            }
            if let Some(m) = m.as_object_mut() {
                m.insert(key.to_string(), Value::String(v.to_string()));
            }
        }
        None => {
            if let Some(m) = md.get_mut(field).and_then(Value::as_object_mut) {
                m.remove(key);
            }
        }
    }
}

/// The `controller: true` owner reference, if any: `(kind, name, uid)`.
pub fn controller_ref(obj: &Value) -> Option<(&str, &str, &str)> {
    metadata(obj)?
        .get("ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|r| {
            let s = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default();
            (s("kind"), s("name"), s("uid"))
        })
}

/// Whether `metadata.deletionTimestamp` is set.
pub fn is_terminating(obj: &Value) -> bool {
    metadata(obj).and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null())
}

/// `metadata.finalizers` as strings.
pub fn finalizers(obj: &Value) -> Vec<String> {
    metadata(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Splits an `apiVersion` into `(group, version)`; the core group is `""`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// A JSON value's type with its article, for messages: `an array`, `a string`, `null`.
pub fn describe_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotations_are_set_and_removed() {
        let mut o = json!({"metadata": {"name": "x"}});
        set_annotation(&mut o, "a", Some("1"));
        assert_eq!(annotation(&o, "a"), Some("1"));
        set_annotation(&mut o, "a", None);
        assert_eq!(annotation(&o, "a"), None);
    }

    #[test]
    fn controller_reference_is_found() {
        let o = json!({"metadata": {"ownerReferences": [
            {"kind": "X", "name": "n0", "uid": "u0"},
            {"kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true}]}});
        assert_eq!(controller_ref(&o), Some(("ReplicaSet", "rs", "u1")));
    }

    #[test]
    fn api_versions_split_into_group_and_version() {
        assert_eq!(split_api_version("apps/v1"), ("apps", "v1"));
        assert_eq!(split_api_version("v1"), ("", "v1"));
    }
}

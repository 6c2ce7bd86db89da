//! `metadata.managedFields`: who set which field, recorded on every write.
//!
//! An `Update` operation (create, update, patch) takes ownership of the fields whose values it changed, away from
//! other managers; an `Apply` operation owns exactly the fields of its applied configuration (see [`super::apply`]).
//! Entries shrink to the fields that still exist and disappear when empty.

use serde_json::{Map, Value, json};

use super::fields;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `manager`.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `apiVersion` the fields were set through.
    pub api_version: String,
    /// `subresource`, if the write went through one.
    pub subresource: Option<String>,
    /// When.
    pub time: String,
    /// The field set (FieldsV1).
    pub fields: Value,
}

/// Reads the entries of an object.
pub fn read(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                    Entry {
                        manager: s("manager"),
                        operation: s("operation"),
                        api_version: s("apiVersion"),
                        subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                        time: s("time"),
                        fields: e.get("fieldsV1").cloned().unwrap_or_else(|| json!({})),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes the entries into an object (removing the field when there are none).
pub fn write(obj: &mut Value, entries: &[Entry]) {
    let md = skiff_api::meta::metadata_mut(obj);
    if entries.is_empty() {
        md.remove("managedFields");
        return;
    }
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), Value::from(e.manager.clone()));
            m.insert("operation".into(), Value::from(e.operation.clone()));
            m.insert("apiVersion".into(), Value::from(e.api_version.clone()));
            m.insert("time".into(), Value::from(e.time.clone()));
            m.insert("fieldsType".into(), Value::from("FieldsV1"));
            m.insert("fieldsV1".into(), e.fields.clone());
            if let Some(s) = &e.subresource {
                m.insert("subresource".into(), Value::from(s.clone()));
            }
            Value::Object(m)
        })
        .collect();
    md.insert("managedFields".into(), Value::Array(list));
}

/// The current time as Kubernetes writes it (RFC 3339, seconds).
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The leaves of `new` whose values differ from `old` (all of them when there is no `old`).
pub fn changed_fields(old: Option<&Value>, new: &Value, kind: &str) -> Value {
    match old {
        Some(old) => fields::changed(old, new, kind),
        None => fields::of_object(new, kind),
    }
}

/// Records an `Update` by `manager` that turned `old` into `new` (in place, on `new`).
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, kind: &str, subresource: Option<&str>) {
    let old_entries = old.map(read).unwrap_or_default();
    // A client that changed managedFields itself (e.g. kubectl's migration to server-side apply, or an apply that
    // computed them) is taken as is.
    let requested = read(new);
    if requested != old_entries {
        return;
    }
    let changed = changed_fields(old, new, kind);
    let present = fields::of_object(new, kind);
    let api_version = new.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut entries: Vec<Entry> = Vec::new();
    let mut mine: Option<Entry> = None;
    for mut e in old_entries {
        if e.manager == manager && e.operation == "Update" && e.subresource.as_deref() == subresource {
            mine = Some(e);
            continue;
        }
        e.fields = fields::intersection(&fields::difference(&e.fields, &changed), &present);
        if !fields::is_empty(&e.fields) {
            entries.push(e);
        }
    }
    if !fields::is_empty(&changed) || mine.is_some() {
        let prev = mine.map(|m| m.fields).unwrap_or_else(|| json!({}));
        let f = fields::intersection(&fields::union(&prev, &changed), &present);
        if !fields::is_empty(&f) {
            entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version,
                subresource: subresource.map(str::to_string),
                time: now(),
                fields: f,
            });
        }
    }
    write(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::fields::changed_leaf_by_leaf as changed_by_leaves;

    #[test]
    fn the_one_walk_diff_finds_exactly_the_changed_leaves() {
        let pod = |image: &str, ready: &str, extra_env: bool, finalizers: &[&str]| {
            let mut env = vec![json!({"name": "A", "value": "1"})];
            if extra_env {
                env.push(json!({"name": "B", "value": "2"}));
            }
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "d", "resourceVersion": "7", "labels": {"app": "web"}, "finalizers": finalizers},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": image, "env": env, "ports": [{"containerPort": 80, "protocol": "TCP"}]}],
                         "tolerations": [{"key": "k", "operator": "Exists"}], "volumes": []},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}], "podIPs": [{"ip": "10.0.0.1"}]}})
        };
        let base = pod("i:1", "True", false, &["a"]);
        let dup = |env: &[(&str, &str)]| {
            let mut p = base.clone();
            p["spec"]["containers"][0]["env"] = env.iter().map(|(n, v)| json!({"name": n, "value": v})).collect();
            p
        };
        let ports = |ports: &[Value]| {
            let mut p = base.clone();
            p["spec"]["containers"][0]["ports"] = Value::Array(ports.to_vec());
            p
        };
        let table = [
            ("identical", base.clone()),
            ("image", pod("i:2", "True", false, &["a"])),
            ("condition", pod("i:1", "False", false, &["a"])),
            ("list-map element added", pod("i:1", "True", true, &["a"])),
            ("set element added", pod("i:1", "True", false, &["a", "b"])),
            ("set element removed", pod("i:1", "True", false, &[])),
            ("everything", pod("i:9", "False", true, &["z"])),
            ("duplicate keys, same", dup(&[("A", "1"), ("A", "2")])),
            ("duplicate keys, second changed", dup(&[("A", "1"), ("A", "3")])),
            ("duplicate keys, first changed", dup(&[("A", "9"), ("A", "2")])),
            (
                "an element lacking a key",
                ports(&[json!({"containerPort": 53, "protocol": "UDP"}), json!({"containerPort": 53})]),
            ),
            (
                "an element lacking a key, changed",
                ports(&[json!({"containerPort": 53, "protocol": "UDP"}), json!({"containerPort": 53, "name": "x"})]),
            ),
            (
                "list-map emptied",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "web"}, "finalizers": ["a"]}, "spec": {"nodeName": "n1", "containers": [], "tolerations": [{"key": "k", "operator": "Exists"}], "volumes": []}}),
            ),
            (
                "status gone, scalars became objects",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {}}, "spec": {"nodeName": {"x": 1}, "containers": "c"}}),
            ),
        ];
        for (what, new) in &table {
            for old in [&base, new] {
                assert_eq!(
                    changed_fields(Some(old), new, "Pod"),
                    changed_by_leaves(old, new, "Pod"),
                    "{what} (old {})",
                    if std::ptr::eq(old, &base) { "base" } else { "itself" }
                );
            }
            assert_eq!(
                changed_fields(Some(new), &base, "Pod"),
                changed_by_leaves(new, &base, "Pod"),
                "{what} reversed"
            );
        }
        assert_ne!(changed_fields(Some(&base), &table[1].1, "Pod"), json!({}), "a change is found");
    }

    #[test]
    fn an_update_takes_the_fields_it_changed() {
        let mut created =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        record_update(None, &mut created, "kubectl-create", "ConfigMap", None);
        let e = read(&created);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].fields, json!({"f:data": {"f:a": {}, "f:b": {}}}));
        let mut edited = created.clone();
        edited["data"]["b"] = json!("3");
        edited["data"]["c"] = json!("4");
        record_update(Some(&created), &mut edited, "editor", "ConfigMap", None);
        let e = read(&edited);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].manager, "kubectl-create");
        assert_eq!(e[0].fields, json!({"f:data": {"f:a": {}}}));
        assert_eq!(e[1].fields, json!({"f:data": {"f:b": {}, "f:c": {}}}));
    }
}

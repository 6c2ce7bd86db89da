//! Field sets in the `FieldsV1` format of `metadata.managedFields`: `{"f:spec": {"f:replicas": {}}}`, list-map
//! elements as `k:{"name":"web"}` (with `.` for the element itself), set elements as `v:<json>`.
//!
//! The sets are derived from objects with the merge metadata of [`skiff_api::smp`], so that server-side apply
//! tracks list elements by the same keys strategic merge patch merges them by.

use serde_json::{Map, Value};
use skiff_api::smp::{self, ListType};

/// Fields never tracked in managed fields.
const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generateName",
];

/// The field set of an object of `kind`.
pub fn of_object(obj: &Value, kind: &str) -> Value {
    root_set(obj, None, kind, |_, v, f| Some(of_value(v, f)))
}

/// A set over the tracked fields at the top of an object (not `apiVersion` or `kind`; in `metadata`, not the fields
/// no manager owns), with `set` giving each field's part from its value in `obj` and in `old` (`None` leaves the
/// field out); `f:metadata` appears only when one of its fields is in.
fn root_set(
    obj: &Value,
    old: Option<&Value>,
    kind: &str,
    mut set: impl FnMut(Option<&Value>, &Value, smp::Field) -> Option<Value>,
) -> Value {
    let mut out = Map::new();
    if let Value::Object(m) = obj {
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            let f = smp::root_field(kind, k);
            let was = old.and_then(|o| o.get(k));
            if k == "metadata" {
                if let Value::Object(md) = v {
                    let mut mset = Map::new();
                    for (mk, mv) in md {
                        if UNTRACKED_META.contains(&mk.as_str()) {
                            continue;
                        }
                        if let Some(c) = set(was.and_then(|w| w.get(mk)), mv, smp::field(f.ty, mk)) {
                            mset.insert(format!("f:{mk}"), c);
                        }
                    }
                    if !mset.is_empty() {
                        out.insert("f:metadata".into(), Value::Object(mset));
                    }
                }
                continue;
            }
            if let Some(c) = set(was, v, f) {
                out.insert(format!("f:{k}"), c);
            }
        }
    }
    Value::Object(out)
}

fn of_value(v: &Value, f: smp::Field) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, child) in m {
                out.insert(format!("f:{k}"), of_value(child, smp::field(f.ty, k)));
            }
            Value::Object(out)
        }
        Value::Array(items) => match f.list {
            ListType::Map(keys) => {
                let mut out = Map::new();
                for item in items {
                    let Some(key) = element_key(item, keys) else { continue };
                    let mut inner = match of_value(item, smp::Field { list: ListType::Atomic, ty: f.ty }) {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                    inner.insert(".".into(), Value::Object(Map::new()));
                    out.insert(key, Value::Object(inner));
                }
                Value::Object(out)
            }
            ListType::Set => {
                let mut out = Map::new();
                for item in items {
                    out.insert(format!("v:{item}"), Value::Object(Map::new()));
                }
                Value::Object(out)
            }
            ListType::Atomic => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

/// The field set of the leaves of `new` whose values differ in `old` (an object of `kind`), in one walk of both:
/// what [`of_object`] of `new` holds, less every leaf whose value is the same at the same path of `old`
/// ([`changed_leaf_by_leaf`], which a list-map whose elements repeat a key, or lack one, still goes through: there
/// a path names the first element that matches it, not each element).
pub fn changed(old: &Value, new: &Value, kind: &str) -> Value {
    let mut ambiguous = false;
    let out = changed_walk(old, new, kind, &mut ambiguous);
    if ambiguous { changed_leaf_by_leaf(old, new, kind) } else { out }
}

/// [`changed`] by its definition: every leaf of `new`'s field set looked up in both objects (slow).
pub fn changed_leaf_by_leaf(old: &Value, new: &Value, kind: &str) -> Value {
    let all = of_object(new, kind);
    let mut unchanged = Value::Object(Map::new());
    for leaf in leaves(&all) {
        if value_at(old, &leaf, kind) == value_at(new, &leaf, kind) {
            let mut cur = &mut unchanged;
            for seg in &leaf {
                let Some(m) = cur.as_object_mut() else { break };
                cur = m.entry(seg.clone()).or_insert_with(|| Value::Object(Map::new()));
            }
        }
    }
    difference(&all, &unchanged)
}

fn changed_walk(old: &Value, new: &Value, kind: &str, ambiguous: &mut bool) -> Value {
    root_set(new, Some(old), kind, |was, v, f| changed_value(was, v, f, ambiguous))
}

/// The changed part of [`of_value`]`(new)`, given the value `old` at the same path (`None`: nothing changed).
fn changed_value(old: Option<&Value>, new: &Value, f: smp::Field, ambiguous: &mut bool) -> Option<Value> {
    let leaf = || (old != Some(new)).then(|| Value::Object(Map::new()));
    match new {
        Value::Object(m) if !m.is_empty() => {
            let out = changed_children(old, m, f.ty, ambiguous);
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => match f.list {
            ListType::Map(keys) => {
                let mut out = Map::new();
                let mut elements = 0;
                for (i, item) in items.iter().enumerate() {
                    let Some(key) = element_key(item, keys) else { continue };
                    elements += 1;
                    let same_key = |x: &Value| keys.iter().all(|k| item.get(k).is_none_or(|v| x.get(k) == Some(v)));
                    if items.iter().position(same_key) != Some(i) {
                        // its path names an earlier element
                        *ambiguous = true;
                    }
                    let was = old.and_then(Value::as_array).and_then(|a| a.iter().find(|x| same_key(x)));
                    let mut inner = match item {
                        Value::Object(m) => changed_children(was, m, f.ty, ambiguous),
                        _ => Map::new(),
                    };
                    if was != Some(item) {
                        inner.insert(".".into(), Value::Object(Map::new()));
                    }
                    if !inner.is_empty() {
                        out.insert(key, Value::Object(inner));
                    }
                }
                // a list with no keyed element is a leaf of its own, as in `of_value`
                if elements == 0 {
                    return leaf();
                }
                (!out.is_empty()).then_some(Value::Object(out))
            }
            ListType::Set if items.is_empty() => leaf(),
            ListType::Set => {
                let before = old.and_then(Value::as_array);
                let mut out = Map::new();
                for item in items.iter().filter(|i| before.is_none_or(|b| !b.contains(i))) {
                    out.insert(format!("v:{item}"), Value::Object(Map::new()));
                }
                (!out.is_empty()).then_some(Value::Object(out))
            }
            ListType::Atomic => leaf(),
        },
        _ => leaf(),
    }
}

fn changed_children(
    old: Option<&Value>,
    m: &Map<String, Value>,
    ty: Option<&'static str>,
    ambiguous: &mut bool,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, child) in m {
        if let Some(c) = changed_value(old.and_then(|o| o.get(k)), child, smp::field(ty, k), ambiguous) {
            out.insert(format!("f:{k}"), c);
        }
    }
    out
}

/// The `k:{…}` path element of a list-map element.
pub fn element_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut k = Map::new();
    for key in keys {
        if let Some(v) = item.get(key) {
            k.insert(key.clone(), v.clone());
        }
    }
    if k.is_empty() {
        return None;
    }
    Some(format!("k:{}", Value::Object(k)))
}

/// `a ∪ b`.
pub fn union(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut out = x.clone();
            for (k, v) in y {
                let merged = match out.get(k) {
                    Some(existing) => union(existing, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (x, _) => x.clone(),
    }
}

/// `a ∖ b`: the leaves of `a` that are not leaves of `b` (an empty result is `{}`).
pub fn difference(a: &Value, b: &Value) -> Value {
    let (Value::Object(x), Value::Object(y)) = (a, b) else { return a.clone() };
    let mut out = Map::new();
    for (k, v) in x {
        match y.get(k) {
            None => {
                out.insert(k.clone(), v.clone());
            }
            Some(w) => {
                let vm = v.as_object().map(Map::is_empty).unwrap_or(true);
                if vm {
                    continue; // a leaf present in both
                }
                let d = difference(v, w);
                if d.as_object().is_some_and(|m| !m.is_empty()) {
                    out.insert(k.clone(), d);
                }
            }
        }
    }
    Value::Object(out)
}

/// `a ∩ b` (leaves in both).
pub fn intersection(a: &Value, b: &Value) -> Value {
    let (Value::Object(x), Value::Object(y)) = (a, b) else { return Value::Object(Map::new()) };
    let mut out = Map::new();
    for (k, v) in x {
        let Some(w) = y.get(k) else { continue };
        let v_leaf = v.as_object().is_none_or(Map::is_empty);
        let w_leaf = w.as_object().is_none_or(Map::is_empty);
        if v_leaf && w_leaf {
            out.insert(k.clone(), Value::Object(Map::new()));
        } else if !v_leaf && !w_leaf {
            let i = intersection(v, w);
            if i.as_object().is_some_and(|m| !m.is_empty()) {
                out.insert(k.clone(), i);
            }
        }
    }
    Value::Object(out)
}

/// Whether the set has no fields.
pub fn is_empty(set: &Value) -> bool {
    set.as_object().is_none_or(Map::is_empty)
}

/// The leaves of a set as readable paths (`.spec.replicas`, `.spec.containers[name="web"].image`).
pub fn paths(set: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_paths(set, String::new(), &mut out);
    out
}

fn walk_paths(set: &Value, prefix: String, out: &mut Vec<String>) {
    let Some(m) = set.as_object() else { return };
    if m.is_empty() {
        out.push(prefix);
        return;
    }
    for (k, v) in m {
        if k == "." {
            continue;
        }
        let seg = if let Some(f) = k.strip_prefix("f:") {
            format!("{prefix}.{f}")
        } else if let Some(key) = k.strip_prefix("k:") {
            let rendered = serde_json::from_str::<Map<String, Value>>(key)
                .map(|m| m.iter().map(|(a, b)| format!("{a}={b}")).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|_| key.to_string());
            format!("{prefix}[{rendered}]")
        } else if let Some(val) = k.strip_prefix("v:") {
            format!("{prefix}[={val}]")
        } else {
            format!("{prefix}.{k}")
        };
        walk_paths(v, seg, out);
    }
}

/// The value at a set path in `obj`, for comparing what two objects hold at the same field.
pub fn value_at<'a>(obj: &'a Value, path: &[String], kind: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut f = smp::Field { list: ListType::Atomic, ty: None };
    let mut at_root = true;
    for seg in path {
        if seg == "." {
            continue;
        }
        if let Some(name) = seg.strip_prefix("f:") {
            f = if at_root { smp::root_field(kind, name) } else { smp::field(f.ty, name) };
            at_root = false;
            cur = cur.get(name)?;
        } else if let Some(key) = seg.strip_prefix("k:") {
            let want: Map<String, Value> = serde_json::from_str(key).ok()?;
            cur = cur.as_array()?.iter().find(|item| want.iter().all(|(k, v)| item.get(k) == Some(v)))?;
        } else if let Some(val) = seg.strip_prefix("v:") {
            let want: Value = serde_json::from_str(val).ok()?;
            cur = cur.as_array()?.iter().find(|item| **item == want)?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Every leaf path of a set as segment lists.
pub fn leaves(set: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    walk_leaves(set, &mut Vec::new(), &mut out);
    out
}

fn walk_leaves(set: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(m) = set.as_object() else { return };
    if m.is_empty() {
        out.push(prefix.clone());
        return;
    }
    for (k, v) in m {
        prefix.push(k.clone());
        walk_leaves(v, prefix, out);
        prefix.pop();
    }
}

/// Removes the fields of `set` from `obj` (the fields an applier stopped applying).
pub fn remove_from(obj: &mut Value, set: &Value) {
    let Some(m) = set.as_object() else { return };
    for (k, child) in m {
        if k == "." {
            continue;
        }
        let leaf = child.as_object().is_none_or(Map::is_empty);
        let only_self = child.as_object().is_some_and(|c| c.len() == 1 && c.contains_key("."));
        if let Some(name) = k.strip_prefix("f:") {
            let Some(o) = obj.as_object_mut() else { continue };
            if leaf {
                o.remove(name);
            } else if let Some(inner) = o.get_mut(name) {
                remove_from(inner, child);
                // a map or list whose every owned member was removed goes too
                if inner.as_object().is_some_and(Map::is_empty) || inner.as_array().is_some_and(Vec::is_empty) {
                    o.remove(name);
                }
            }
        } else if let Some(key) = k.strip_prefix("k:") {
            let Ok(want) = serde_json::from_str::<Map<String, Value>>(key) else { continue };
            let Some(list) = obj.as_array_mut() else { continue };
            let matches = |item: &Value| want.iter().all(|(k, v)| item.get(k) == Some(v));
            if child.as_object().is_some_and(|c| c.contains_key(".")) || only_self {
                list.retain(|item| !matches(item));
            } else if let Some(item) = list.iter_mut().find(|i| matches(i)) {
                remove_from(item, child);
            }
        } else if let Some(val) = k.strip_prefix("v:") {
            let Ok(want) = serde_json::from_str::<Value>(val) else { continue };
            if let Some(list) = obj.as_array_mut() {
                list.retain(|item| *item != want);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sets_track_list_elements_by_key() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w", "labels": {"app": "w"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "i"}]}}}});
        let set = of_object(&d, "Deployment");
        assert_eq!(set["f:metadata"], json!({"f:labels": {"f:app": {}}}));
        assert_eq!(
            set["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"],
            json!({".": {}, "f:name": {}, "f:image": {}})
        );
        let mut p = paths(&set);
        p.sort();
        assert!(p.contains(&".spec.replicas".to_string()));
        assert!(p.iter().any(|x| x.starts_with(".spec.template.spec.containers[name=\"web\"].image")));
    }

    #[test]
    fn set_algebra_and_removal() {
        let a = json!({"f:spec": {"f:replicas": {}, "f:paused": {}}});
        let b = json!({"f:spec": {"f:replicas": {}}});
        assert_eq!(difference(&a, &b), json!({"f:spec": {"f:paused": {}}}));
        assert_eq!(intersection(&a, &b), b);
        assert_eq!(union(&b, &json!({"f:data": {}})), json!({"f:spec": {"f:replicas": {}}, "f:data": {}}));
        let mut obj = json!({"spec": {"replicas": 1, "paused": true, "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}});
        remove_from(
            &mut obj,
            &json!({"f:spec": {"f:paused": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"b\"}": {".": {}}}}}}}),
        );
        assert_eq!(obj, json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}]}}}}));
    }

    #[test]
    fn values_are_found_by_set_paths() {
        let d = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "i:1"}]}}}});
        let path: Vec<String> = ["f:spec", "f:template", "f:spec", "f:containers", "k:{\"name\":\"web\"}", "f:image"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(value_at(&d, &path, "Deployment"), Some(&json!("i:1")));
    }
}

//! Custom resources against their CRD's structural schema (`openAPIV3Schema`), as the apiextensions server treats
//! them on every write: [`prune`] drops fields the schema does not know, [`default`] fills in `default` values,
//! and [`validate`] checks what is left, with Kubernetes' field paths and wording
//! (`spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"`).
//!
//! # Caveats
//! Formats other than `int32`/`int64`/`byte`/`date-time` are not checked, and `x-kubernetes-validations` (CEL) rules
//! are not evaluated.

use serde_json::{Map, Value};

use crate::validation::{ErrorKind, ErrorList};

/// Checks that a CRD's schema is structural, as the apiextensions server requires before it serves the CRD: an
/// object at the root, and a `type` on every node below `properties`, `items` and `additionalProperties` unless
/// the node is `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields` (the value validations
/// under `allOf`/`anyOf`/`oneOf`/`not` need none).
pub fn check_structural(schema: &Value, path: &str, errs: &mut ErrorList) {
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {}
        Some(other) => errs.invalid(format!("{path}.type"), other, "must be object at the root"),
        None if preserves_unknown(schema) => {}
        None => errs.required(format!("{path}.type"), "must not be empty at the root"),
    }
    structural_children(schema, path, errs);
}

fn structural_children(schema: &Value, path: &str, errs: &mut ErrorList) {
    let mut node = |s: &Value, at: String| {
        let typed = s.get("type").and_then(Value::as_str).is_some_and(|t| !t.is_empty());
        let exempt = preserves_unknown(s) || s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        if !typed && !exempt {
            errs.required(format!("{at}.type"), "must not be empty for specified object fields");
        }
        structural_children(s, &at, errs);
    };
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            node(s, format!("{path}.properties[{k}]"));
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        node(items, format!("{path}.items"));
    }
    if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        node(add, format!("{path}.additionalProperties"));
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

/// Removes the fields of `obj` that `schema` does not specify (kept under `x-kubernetes-preserve-unknown-fields`);
/// returns their paths (`spec.junk`), sorted. At the root, `apiVersion`, `kind` and `metadata` always stay.
pub fn prune(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut removed = Vec::new();
    prune_at(obj, schema, true, "", &mut removed);
    removed.sort();
    removed
}

fn prune_at(v: &mut Value, schema: &Value, root: bool, path: &str, removed: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let embedded = root || schema.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true));
            let keep_unknown = preserves_unknown(schema);
            m.retain(|k, _| {
                let keep = keep_unknown
                    || additional.is_some()
                    || schema.get("additionalProperties") == Some(&Value::Bool(true))
                    || props.is_some_and(|p| p.contains_key(k))
                    || (embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
                if !keep {
                    removed.push(join(path, k));
                }
                keep
            });
            for (k, child) in m.iter_mut() {
                if root && k == "metadata" {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                    prune_at(child, s, false, &join(path, k), removed);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(item, s, false, &format!("{path}[{i}]"), removed);
                }
            }
        }
        _ => {}
    }
}

/// Fills in the `default` of every property missing from an object that is present, deepest last (a defaulted
/// object gets its own properties' defaults too).
pub fn default(obj: &mut Value, schema: &Value) {
    match obj {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    if !m.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                }
                for (k, child) in m.iter_mut() {
                    if let Some(s) = props.get(k) {
                        default(child, s);
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                m.values_mut().for_each(|c| default(c, s));
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                items.iter_mut().for_each(|i| default(i, s));
            }
        }
        _ => {}
    }
}

/// Checks `obj` against `schema`; every error has its field path (`spec.items[2].name`).
pub fn validate(obj: &Value, schema: &Value) -> ErrorList {
    let mut errs = ErrorList::default();
    let Some(root) = obj.as_object() else {
        errs.invalid("", "object", "must be an object");
        return errs;
    };
    // metadata is the API server's to check; the schema describes the rest
    let props = schema.get("properties").and_then(Value::as_object);
    for (k, v) in root {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = props.and_then(|p| p.get(k)) {
            check(v, s, k, &mut errs);
        }
    }
    required(root, schema, "", &mut errs);
    errs
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as `ErrorList::invalid` renders it (it quotes what is not a number).
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(_) => "object".into(),
        Value::Array(_) => "array".into(),
        other => other.to_string(),
    }
}

/// A value quoted as Kubernetes lists it (`"red"`, `1`).
fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn required(m: &Map<String, Value>, schema: &Value, path: &str, errs: &mut ErrorList) {
    for r in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !m.contains_key(r) {
            errs.push(join(path, r), ErrorKind::Required, None, "");
        }
    }
}

fn type_matches(v: &Value, ty: &str, schema: &Value) -> bool {
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return matches!(v, Value::String(_)) || type_name(v) == "integer";
    }
    match (ty, v) {
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        (t, v) => t == type_name(v),
    }
}

fn check(v: &Value, schema: &Value, path: &str, errs: &mut ErrorList) {
    if v.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) && schema.get("type").is_some() {
            let ty = schema["type"].as_str().unwrap_or_default();
            errs.invalid(path, "null", format!("{path} in body must be of type {ty}: \"null\""));
        }
        return;
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !type_matches(v, ty, schema)
    {
        errs.invalid(path, shown(v), format!("{path} in body must be of type {ty}: \"{}\"", type_name(v)));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(quoted).collect();
        errs.push(path, ErrorKind::NotSupported, Some(quoted(v)), format!("supported values: {}", list.join(", ")));
    }
    match v {
        Value::Number(n) => number(n.as_f64().unwrap_or_default(), schema, path, errs),
        Value::String(s) => string(s, schema, path, errs),
        Value::Array(items) => array(items, schema, path, errs),
        Value::Object(m) => object(m, schema, path, errs),
        _ => {}
    }
    for (key, all) in [("allOf", true), ("anyOf", false), ("oneOf", false)] {
        let Some(subs) = schema.get(key).and_then(Value::as_array) else { continue };
        let passing = subs
            .iter()
            .filter(|s| {
                let mut e = ErrorList::default();
                check(v, s, path, &mut e);
                e.is_empty()
            })
            .count();
        let ok = match (key, all) {
            (_, true) => passing == subs.len(),
            ("oneOf", _) => passing == 1,
            _ => passing >= 1,
        };
        if !ok {
            errs.invalid(
                path,
                shown(v),
                format!("{path} in body must match {} of the schemas in {key}", if all { "all" } else { "one" }),
            );
        }
    }
    if let Some(not) = schema.get("not") {
        let mut e = ErrorList::default();
        check(v, not, path, &mut e);
        if e.is_empty() {
            errs.invalid(path, shown(v), format!("{path} in body must not match the schema in not"));
        }
    }
}

fn number(n: f64, schema: &Value, path: &str, errs: &mut ErrorList) {
    let excl = |k: &str| schema.get(k) == Some(&Value::Bool(true));
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && (n < min || (excl("exclusiveMinimum") && n == min))
    {
        let op = if excl("exclusiveMinimum") { "greater than" } else { "greater than or equal to" };
        errs.invalid(path, n, format!("{path} in body should be {op} {min}"));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && (n > max || (excl("exclusiveMaximum") && n == max))
    {
        let op = if excl("exclusiveMaximum") { "less than" } else { "less than or equal to" };
        errs.invalid(path, n, format!("{path} in body should be {op} {max}"));
    }
    if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64).filter(|m| *m > 0.0)
        && (n / m).fract() != 0.0
    {
        errs.invalid(path, n, format!("{path} in body should be a multiple of {m}"));
    }
    match schema.get("format").and_then(Value::as_str) {
        Some("int32") if n < f64::from(i32::MIN) || n > f64::from(i32::MAX) => {
            errs.invalid(path, n, format!("{path} in body must be of type int32"));
        }
        _ => {}
    }
}

fn string(s: &str, schema: &Value, path: &str, errs: &mut ErrorList) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64).filter(|m| len < *m) {
        errs.invalid(path, s, format!("{path} in body should be at least {min} chars long"));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64).filter(|m| len > *m) {
        errs.push(path, ErrorKind::TooLong, None, format!("may not be more than {max} bytes"));
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(p) {
            Ok(re) if !re.is_match(s) => {
                errs.invalid(path, s, format!("{path} in body should match '{p}'"));
            }
            Ok(_) => {}
            Err(_) => errs.invalid(path, s, format!("the schema's pattern '{p}' is not a valid regular expression")),
        }
    }
    let bad_format = match schema.get("format").and_then(Value::as_str) {
        Some("date-time") => {
            jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%:z", s).is_err() && s.parse::<jiff::Timestamp>().is_err()
        }
        Some("byte") => {
            !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
                || !s.len().is_multiple_of(4)
        }
        _ => false,
    };
    if bad_format {
        let f = schema["format"].as_str().unwrap_or_default();
        errs.invalid(path, s, format!("{path} in body must be of type {f}: {s:?}"));
    }
}

fn array(items: &[Value], schema: &Value, path: &str, errs: &mut ErrorList) {
    let n = items.len() as u64;
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64).filter(|m| n < *m) {
        errs.invalid(path, n, format!("{path} in body should have at least {min} items"));
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64).filter(|m| n > *m) {
        errs.push(path, ErrorKind::TooMany, Some(n.to_string()), format!("must have at most {max} items"));
    }
    let set = schema.get("uniqueItems") == Some(&Value::Bool(true))
        || schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set");
    if set {
        for (i, a) in items.iter().enumerate() {
            if items[..i].contains(a) {
                errs.duplicate(format!("{path}[{i}]"), shown(a));
            }
        }
    }
    if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
        for (i, item) in items.iter().enumerate() {
            check(item, s, &format!("{path}[{i}]"), errs);
        }
    }
}

fn object(m: &Map<String, Value>, schema: &Value, path: &str, errs: &mut ErrorList) {
    let n = m.len() as u64;
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64).filter(|x| n < *x) {
        errs.invalid(path, n, format!("{path} in body should have at least {min} properties"));
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64).filter(|x| n > *x) {
        errs.push(path, ErrorKind::TooMany, Some(n.to_string()), format!("must have at most {max} properties"));
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let embedded = schema.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true));
    for (k, v) in m {
        if embedded && k == "metadata" {
            continue;
        }
        if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
            check(v, s, &join(path, k), errs);
        }
    }
    required(m, schema, path, errs);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                        "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "port": {"x-kubernetes-int-or-string": true},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "nested": {"type": "object", "default": {}, "properties": {"mode": {"type": "string", "default": "auto"}}}
                    }
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        })
    }

    #[test]
    fn only_structural_schemas_are_accepted() {
        let mut errs = ErrorList::default();
        check_structural(&schema(), "s", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let bad = json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}, "b": {}}},
                                                         "list": {"type": "array", "items": {}}}});
        let mut errs = ErrorList::default();
        check_structural(&bad, "s", &mut errs);
        let text: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "s.properties[spec].type: Required value: must not be empty for specified object fields",
                "s.properties[spec].properties[b].type: Required value: must not be empty for specified object fields",
                "s.properties[list].items.type: Required value: must not be empty for specified object fields",
            ]
        );
        let mut errs = ErrorList::default();
        check_structural(&json!({"type": "string"}), "s", &mut errs);
        assert_eq!(errs.0[0].to_string(), r#"s.type: Invalid value: "string": must be object at the root"#);
    }

    #[test]
    fn unknown_fields_are_pruned_unless_preserved() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"}, "junk": 1,
                           "spec": {"size": 1, "unknown": true, "extra": {"anything": {"goes": 1}}, "limits": {"cpu": 2}}});
        assert_eq!(prune(&mut o, &schema()), ["junk", "spec.unknown"]);
        assert_eq!(
            o,
            json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
                             "spec": {"size": 1, "extra": {"anything": {"goes": 1}}, "limits": {"cpu": 2}}})
        );
    }

    #[test]
    fn defaults_fill_missing_fields_including_inside_defaulted_objects() {
        let mut o = json!({"spec": {"size": 2}});
        default(&mut o, &schema());
        assert_eq!(o["spec"]["color"], "red");
        assert_eq!(o["spec"]["nested"], json!({"mode": "auto"}));
        let mut set = json!({"spec": {"size": 2, "color": "blue"}});
        default(&mut set, &schema());
        assert_eq!(set["spec"]["color"], "blue", "a set value wins");
        let mut no_spec = json!({"metadata": {}});
        default(&mut no_spec, &schema());
        assert!(no_spec.get("spec").is_none(), "no parent, no defaults below it");
    }

    #[test]
    fn errors_have_kubernetes_paths_and_wording() {
        let o = json!({"spec": {"size": "big", "color": "green", "name": "Has-Caps-Too-Long", "tags": ["a", "a"],
                                "limits": {"cpu": "x"}, "port": 8080}});
        let errs = validate(&o, &schema());
        let text: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(
                &r#"spec.size: Invalid value: "big": spec.size in body must be of type integer: "string""#.to_string()
            ),
            "{text:#?}"
        );
        assert!(text.iter().any(|t| t.starts_with(r#"spec.color: Unsupported value: "green""#)), "{text:#?}");
        assert!(text.iter().any(|t| t.contains("spec.name in body should match '^[a-z]+$'")), "{text:#?}");
        assert!(text.iter().any(|t| t.starts_with("spec.name: Too long")), "{text:#?}");
        assert!(text.iter().any(|t| t.starts_with("spec.tags[1]: Duplicate value")), "{text:#?}");
        assert!(text.iter().any(|t| t.starts_with(r#"spec.limits.cpu: Invalid value: "x""#)), "{text:#?}");
        assert_eq!(text.len(), 6, "int-or-string takes a number: {text:#?}");
        let missing = validate(&json!({"spec": {}}), &schema());
        assert_eq!(missing.0[0].to_string(), "spec.size: Required value");
        assert!(
            validate(&json!({"spec": {"size": 11}}), &schema()).0[0].to_string().contains("less than or equal to 10")
        );
        assert!(
            validate(&json!({"spec": {"size": 3, "port": "http"}, "status": {"ready": true}}), &schema()).is_empty()
        );
    }
}

//! Label selectors (equality- and set-based) and field selectors.
//!
//! The string syntax is the one `kubectl -l` and `?labelSelector=` use: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
//! `a notin (x,y)`, `a`, `!a`, joined by commas. The structured form is `metav1.LabelSelector`
//! (`matchLabels` + `matchExpressions`).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (v1,v2)`.
    In(String, Vec<String>),
    /// `key notin (v1,v2)` (also true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
    /// A selector that matches nothing (a `LabelSelector` that is `null` in contexts where that means nothing).
    nothing: bool,
}

/// Why a selector could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {message} (in {input:?})")]
pub struct SelectorError {
    /// The selector text.
    pub input: String,
    /// What is wrong.
    pub message: String,
}

impl Requirement {
    fn matches<'a>(&self, labels: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => labels(k) != Some(v.as_str()),
            Requirement::In(k, vs) => labels(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => labels(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => labels(k).is_some(),
            Requirement::DoesNotExist(k) => labels(k).is_none(),
        }
    }

    fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }
}

impl Selector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Selector::default()
    }

    /// The selector that matches nothing.
    pub fn nothing() -> Self {
        Selector { requirements: Vec::new(), nothing: true }
    }

    /// Whether this selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty() && !self.nothing
    }

    /// The requirements, in order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Parses the string syntax.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        let err = |m: &str| SelectorError { input: input.to_string(), message: m.to_string() };
        for term in split_terms(input) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(valid_key(key.trim()).map_err(|m| err(&m))?)
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(
                    valid_key(k.trim()).map_err(|m| err(&m))?,
                    valid_value(v.trim()).map_err(|m| err(&m))?,
                )
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(
                    valid_key(k.trim()).map_err(|m| err(&m))?,
                    valid_value(v.trim()).map_err(|m| err(&m))?,
                )
            } else if let Some((k, rest)) = split_set_op(term, " notin ") {
                Requirement::NotIn(valid_key(k).map_err(|m| err(&m))?, parse_set(rest).map_err(|m| err(&m))?)
            } else if let Some((k, rest)) = split_set_op(term, " in ") {
                Requirement::In(valid_key(k).map_err(|m| err(&m))?, parse_set(rest).map_err(|m| err(&m))?)
            } else {
                Requirement::Exists(valid_key(term).map_err(|m| err(&m))?)
            };
            requirements.push(req);
        }
        Ok(Selector { requirements, nothing: false })
    }

    /// Converts a structured `LabelSelector`. An empty one matches everything.
    pub fn from_label_selector(ls: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        let err = |m: String| SelectorError { input: format!("{ls:?}"), message: m };
        for (k, v) in ls.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for e in ls.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(err(format!("for 'in', 'notin' operators, values set can't be empty (key {})", e.key)));
                }
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                op => return Err(err(format!("{op:?} is not a valid label selector operator"))),
            };
            requirements.push(req);
        }
        Ok(Selector { requirements, nothing: false })
    }

    /// Builds an equality selector from a map (a Service's or ReplicationController's `selector`).
    pub fn from_map<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        Selector {
            requirements: map.into_iter().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect(),
            nothing: false,
        }
    }

    /// Whether a label map satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_by(|k| labels.get(k).map(String::as_str))
    }

    /// Whether the labels `label` looks up by key satisfy every requirement (labels held other than as a map).
    pub fn matches_by<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(&label))
    }

    /// Whether an untyped object's `metadata.labels` satisfy every requirement.
    pub fn matches_object(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        !self.nothing
            && self.requirements.iter().all(|r| r.matches(&|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str)))
    }

    /// The keys the selector constrains.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().map(Requirement::key)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(input: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&input[start..]);
    out
}

fn split_set_op<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let idx = term.find(op)?;
    Some((term[..idx].trim(), term[idx + op.len()..].trim()))
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesized set of values, found {rest:?}"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    for v in &values {
        valid_value(v)?;
    }
    Ok(values)
}

fn valid_key(k: &str) -> Result<String, String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty()
            || p.len() > 253
            || !p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'))
    {
        return Err(format!("invalid label key prefix {p:?}"));
    }
    if name.is_empty() || name.len() > 63 || !is_label_chars(name) {
        return Err(format!(
            "invalid label key {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(k.to_string())
}

fn valid_value(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Ok(String::new());
    }
    if v.len() > 63 || !is_label_chars(v) {
        return Err(format!(
            "invalid label value {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(v.to_string())
}

fn is_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A field selector: `field=value`, `field==value` or `field!=value` terms joined by commas.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses the string syntax.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for term in input.split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError {
                    input: input.to_string(),
                    message: format!("invalid field selector term {term:?}"),
                });
            };
            terms.push((field.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    /// The fields the selector mentions.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(f, _, _)| f.as_str())
    }

    /// Whether the selector is empty.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value a term requires with `=` for a field (e.g. `metadata.name` for a single-object watch).
    pub fn equality(&self, field: &str) -> Option<&str> {
        self.terms.iter().find(|(f, eq, _)| f == field && *eq).map(|(_, _, v)| v.as_str())
    }

    /// Whether an object satisfies every term; fields are dotted paths into the object, missing ones read as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(field, eq, value)| {
            let actual = field_value(obj, field);
            (actual == *value) == *eq
        })
    }
}

/// Reads a dotted path of an object as the string a field selector compares with.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equality_and_set_based_requirements_combine() {
        let s = Selector::parse("app=web, tier in (frontend, edge),env!=prod,!canary,release").expect("valid");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "edge"), ("release", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "edge")])), "release missing");
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "edge"), ("release", "1"), ("canary", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db"), ("release", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "edge"), ("release", "1"), ("env", "prod")])));
    }

    #[test]
    fn notin_matches_absent_keys() {
        let s = Selector::parse("env notin (prod)").expect("valid");
        assert!(s.matches(&labels(&[])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn the_empty_selector_matches_everything_and_nothing_matches_nothing() {
        assert!(Selector::parse("").expect("valid").matches(&labels(&[("a", "b")])));
        assert!(!Selector::nothing().matches(&labels(&[])));
    }

    #[test]
    fn structured_selectors_convert() {
        let ls: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .expect("valid");
        let s = Selector::from_label_selector(&ls).expect("valid");
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert_eq!(s.to_string(), "app=web,tier notin (db)");
    }

    #[test]
    fn invalid_selectors_are_rejected() {
        for s in ["a in x", "-bad=1", "a=b c", "a in (x y)"] {
            assert!(Selector::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("metadata.name=p,status.phase!=Failed").expect("valid").matches(&pod));
        assert!(!FieldSelector::parse("spec.nodeName=n2").expect("valid").matches(&pod));
        assert!(FieldSelector::parse("spec.schedulerName=").expect("valid").matches(&pod), "missing reads as empty");
        assert_eq!(FieldSelector::parse("metadata.name==p").expect("valid").equality("metadata.name"), Some("p"));
    }
}

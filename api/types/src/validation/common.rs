//! Validation shared by every kind: names, labels, annotations, object metadata.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ErrorList;

/// Which format a kind's `metadata.name` must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters (most kinds).
    Dns1123Subdomain,
    /// RFC 1123 label: lowercase alphanumerics and `-`, at most 63 characters (Namespace).
    Dns1123Label,
    /// RFC 1035 label: a DNS-1123 label that starts with a letter (Service).
    Dns1035Label,
    /// Any path segment: no `/`, not `.` or `..` (Event, and other kinds with free-form names).
    PathSegment,
}

/// An RFC 1123 label.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0] != b'-'
        && s.as_bytes()[s.len() - 1] != b'-'
}

/// An RFC 1035 label.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// An RFC 1123 subdomain.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// An IANA service name (named ports): at most 15 lowercase alphanumerics or `-`, with a letter, no `--`.
pub fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn name_problem(rule: NameRule, name: &str) -> Option<&'static str> {
    let ok = match rule {
        NameRule::Dns1123Subdomain => is_dns1123_subdomain(name),
        NameRule::Dns1123Label => is_dns1123_label(name),
        NameRule::Dns1035Label => is_dns1035_label(name),
        NameRule::PathSegment => !name.contains('/') && !name.contains('%') && name != "." && name != "..",
    };
    if ok {
        return None;
    }
    Some(match rule {
        NameRule::Dns1123Subdomain => {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        }
        NameRule::Dns1123Label => {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        }
        NameRule::Dns1035Label => {
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
        }
        NameRule::PathSegment => "may not contain '/' or '%' and may not be '.' or '..'",
    })
}

/// Validates a label map (keys and values).
pub fn validate_labels(labels: &BTreeMap<String, String>, path: &str, errs: &mut ErrorList) {
    for (k, v) in labels {
        if !is_qualified_name(k) {
            errs.invalid(path, k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')");
        }
        if !is_label_value(v) {
            errs.invalid(path, v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')");
        }
    }
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
pub fn is_qualified_name(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && name.len() <= 63 && is_label_value(name)
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
pub fn is_label_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let b = v.as_bytes();
    v.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Validates `metadata`: name (or generateName), namespace presence, labels, annotations.
pub fn validate_object_meta(meta: &ObjectMeta, namespaced: bool, rule: NameRule, errs: &mut ErrorList) {
    match meta.name.as_deref() {
        None | Some("") => {
            if meta.generate_name.as_deref().unwrap_or_default().is_empty() {
                errs.required("metadata.name", "name or generateName is required");
            }
        }
        Some(name) => {
            if let Some(problem) = name_problem(rule, name) {
                errs.invalid("metadata.name", name, problem);
            }
        }
    }
    if namespaced {
        if meta.namespace.as_deref().unwrap_or_default().is_empty() {
            errs.required("metadata.namespace", "");
        }
    } else if meta.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
        errs.forbidden("metadata.namespace", "not allowed on this type");
    }
    if let Some(labels) = &meta.labels {
        validate_labels(labels, "metadata.labels", errs);
    }
    if let Some(annotations) = &meta.annotations {
        let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > 256 * 1024 {
            errs.push("metadata.annotations", super::ErrorKind::TooLong, None, "must have at most 262144 bytes");
        }
        for k in annotations.keys() {
            if !is_qualified_name(&k.to_ascii_lowercase()) {
                errs.invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
            }
        }
    }
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        if !is_qualified_name(f) {
            errs.invalid(
                format!("metadata.finalizers[{i}]"),
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            );
        }
    }
}

/// Validates a quantity string at `path`; returns it parsed.
pub fn quantity(
    q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    path: &str,
    errs: &mut ErrorList,
) -> Option<crate::quantity::Quantity> {
    match crate::quantity::parse(q) {
        Ok(v) => Some(v),
        Err(e) => {
            errs.invalid(path, &q.0, e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_follow_rfc_1123() {
        assert!(is_dns1123_subdomain("web.example-1.com"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(!is_dns1123_label("a.b"));
        assert!(is_dns1123_label("123-abc"));
        assert!(!is_dns1035_label("1abc"));
        assert!(is_iana_svc_name("http-alt"));
        assert!(!is_iana_svc_name("8080"));
    }

    #[test]
    fn qualified_names_allow_a_prefix() {
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(is_qualified_name("app"));
        assert!(!is_qualified_name("bad/prefix/x"));
        assert!(!is_qualified_name("-x"));
    }
}

//! Path matching exactly as the Kubernetes Ingress specification describes it.
//!
//! - `Exact` matches the URL path case-sensitively and completely (`/foo` does not match `/foo/`).
//! - `Prefix` matches element by element on the path split by `/`; a trailing `/` in the rule or the request is
//!   ignored, and `/foo/bar` does not match `/foo/barbaz`.
//! - `ImplementationSpecific` is `Prefix` here. When the ingress-nginx `use-regex` (or `rewrite-target`) annotation
//!   asks for regular expressions, `Prefix` and `ImplementationSpecific` paths become case-insensitive regular
//!   expressions anchored at the start (nginx `location ~*`), as in ingress-nginx; `Exact` stays exact.
//!
//! Precedence inside a host is decided by [`PathMatch::precedence`]: the longest rule path first, `Exact` before
//! `Prefix` on equal length. Taking the first rule that matches in that order is the Kubernetes "longest match"
//! rule, because every matching prefix of a request path is a prefix of the longest matching one.

use regex::Regex;

/// How one rule path matches request paths.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The request path equals this string.
    Exact(Box<str>),
    /// The request path starts with these elements; stored without the trailing `/` (empty for `/`).
    Prefix(Box<str>),
    /// A regular expression (ingress-nginx `use-regex`), anchored at the start, case-insensitive.
    Regex(Regex),
}

/// Why a rule path cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `Exact` and `Prefix` paths must be absolute.
    #[error("path {0:?} must start with '/'")]
    NotAbsolute(String),
    /// The path is not a valid regular expression.
    #[error("path {path:?} is not a valid regular expression: {message}")]
    BadRegex {
        /// The rule path.
        path: String,
        /// What the regex parser said.
        message: String,
    },
    /// `pathType` is not one of the three the API defines.
    #[error("unknown pathType {0:?} (want Exact, Prefix or ImplementationSpecific)")]
    UnknownType(String),
}

impl PathMatch {
    /// Builds the matcher for a rule path. `regex` is true when the ingress asked for regular expressions.
    pub fn new(path_type: &str, path: &str, regex: bool) -> Result<Self, PathError> {
        let path = if path.is_empty() { "/" } else { path };
        match path_type {
            "Exact" => absolute(path).map(|p| PathMatch::Exact(p.into())),
            "Prefix" | "ImplementationSpecific" if regex => Regex::new(&format!("(?i)^{path}"))
                .map(PathMatch::Regex)
                .map_err(|e| PathError::BadRegex { path: path.to_owned(), message: e.to_string() }),
            "Prefix" | "ImplementationSpecific" => {
                absolute(path).map(|p| PathMatch::Prefix(p.trim_end_matches('/').into()))
            }
            other => Err(PathError::UnknownType(other.to_owned())),
        }
    }

    /// Whether the request path (without the query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == &**p,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    /// Sort key: rules are tried in ascending order of this key.
    pub fn precedence(&self) -> (std::cmp::Reverse<usize>, u8) {
        match self {
            PathMatch::Exact(p) => (std::cmp::Reverse(p.len()), 0),
            PathMatch::Prefix(p) => (std::cmp::Reverse(p.len()), 1),
            PathMatch::Regex(r) => (std::cmp::Reverse(r.as_str().len().saturating_sub(5)), 2),
        }
    }

    /// The rule path as written in the table key (for conflicts between Ingresses and for metric labels).
    pub fn key(&self) -> String {
        match self {
            PathMatch::Exact(p) => format!("Exact:{p}"),
            PathMatch::Prefix(p) => format!("Prefix:{p}/"),
            PathMatch::Regex(r) => format!("Regex:{}", r.as_str()),
        }
    }
}

fn absolute(path: &str) -> Result<&str, PathError> {
    if path.starts_with('/') { Ok(path) } else { Err(PathError::NotAbsolute(path.to_owned())) }
}

/// Element-wise prefix match; `prefix` has no trailing `/`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return path.starts_with('/') || path.is_empty();
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Picks the first matching rule in precedence order, as the router does.
    fn choose<'a>(rules: &'a [(&'a str, &'a str)], request: &str) -> Option<(&'a str, &'a str)> {
        let mut built: Vec<_> =
            rules.iter().map(|(t, p)| (PathMatch::new(t, p, false).expect("valid rule"), (*t, *p))).collect();
        built.sort_by_key(|(m, _)| m.precedence());
        built.into_iter().find(|(m, _)| m.matches(request)).map(|(_, r)| r)
    }

    /// The table "Examples" in https://kubernetes.io/docs/concepts/services-networking/ingress/#examples, row by row.
    #[test]
    fn the_kubernetes_path_matching_table_holds() {
        let p = "Prefix";
        let e = "Exact";
        type Rule<'a> = (&'a str, &'a str);
        let rows: &[(&[Rule<'_>], &str, Option<Rule<'_>>)] = &[
            (&[(p, "/")], "/", Some((p, "/"))),
            (&[(p, "/")], "/anything/at/all", Some((p, "/"))),
            (&[(e, "/foo")], "/foo", Some((e, "/foo"))),
            (&[(e, "/foo")], "/bar", None),
            (&[(e, "/foo")], "/foo/", None),
            (&[(e, "/foo/")], "/foo", None),
            (&[(p, "/foo")], "/foo", Some((p, "/foo"))),
            (&[(p, "/foo")], "/foo/", Some((p, "/foo"))),
            (&[(p, "/foo/")], "/foo", Some((p, "/foo/"))),
            (&[(p, "/foo/")], "/foo/", Some((p, "/foo/"))),
            (&[(p, "/aaa/bb")], "/aaa/bbb", None),
            (&[(p, "/aaa/bbb")], "/aaa/bbb", Some((p, "/aaa/bbb"))),
            (&[(p, "/aaa/bbb/")], "/aaa/bbb", Some((p, "/aaa/bbb/"))),
            (&[(p, "/aaa/bbb")], "/aaa/bbb/", Some((p, "/aaa/bbb"))),
            (&[(p, "/aaa/bbb")], "/aaa/bbb/ccc", Some((p, "/aaa/bbb"))),
            (&[(p, "/aaa/bbb")], "/aaa/bbbxyz", None),
            (&[(p, "/"), (p, "/aaa")], "/aaa/ccc", Some((p, "/aaa"))),
            (&[(p, "/"), (p, "/aaa"), (p, "/aaa/bbb")], "/aaa/bbb", Some((p, "/aaa/bbb"))),
            (&[(p, "/"), (p, "/aaa"), (p, "/aaa/bbb")], "/ccc", Some((p, "/"))),
            (&[(p, "/aaa")], "/ccc", None),
            (&[(e, "/foo"), (p, "/foo")], "/foo", Some((e, "/foo"))),
            (&[(e, "/foo"), (p, "/foo")], "/foo/bar", Some((p, "/foo"))),
        ];
        for (rules, request, want) in rows {
            assert_eq!(choose(rules, request), *want, "rules {rules:?}, request {request}");
        }
    }

    #[test]
    fn prefix_matching_is_case_sensitive_and_element_wise() {
        let m = PathMatch::new("Prefix", "/Foo", false).expect("valid");
        assert!(!m.matches("/foo"));
        assert!(m.matches("/Foo/x"));
        assert!(!m.matches("/Foox"));
    }

    #[test]
    fn implementation_specific_is_a_prefix_unless_regex_is_asked_for() {
        let plain = PathMatch::new("ImplementationSpecific", "/api", false).expect("valid");
        assert!(plain.matches("/api/v1") && !plain.matches("/apiv1"));
        let regex = PathMatch::new("ImplementationSpecific", "/api/v[0-9]+", true).expect("valid");
        assert!(regex.matches("/API/V2/users"));
        assert!(!regex.matches("/x/api/v2"), "anchored at the start");
    }

    #[test]
    fn relative_paths_bad_regexes_and_unknown_types_are_errors() {
        assert!(matches!(PathMatch::new("Exact", "foo", false), Err(PathError::NotAbsolute(_))));
        assert!(matches!(PathMatch::new("ImplementationSpecific", "/(", true), Err(PathError::BadRegex { .. })));
        assert!(matches!(PathMatch::new("Glob", "/", false), Err(PathError::UnknownType(_))));
    }

    #[test]
    fn an_empty_path_means_the_root() {
        assert!(PathMatch::new("Prefix", "", false).expect("valid").matches("/x"));
    }
}

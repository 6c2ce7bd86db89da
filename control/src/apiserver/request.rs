//! Requests parsed into what they address: the URL path into a [`Target`], the query into [`Query`], the headers
//! into what the client accepts and sends.

use axum::http::HeaderMap;

/// What a URL under `/api` or `/apis` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api`.
    CoreRoot,
    /// `/apis`.
    GroupsRoot,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`.
    GroupVersion {
        /// Group (`""` for core).
        group: String,
        /// Version.
        version: String,
    },
    /// A collection, object or subresource.
    Resource(ResourcePath),
}

/// A resource path: `…/[namespaces/{ns}/]{plural}[/{name}[/{subresource}]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// Group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace from the path, if any.
    pub namespace: Option<String>,
    /// Plural resource name.
    pub plural: String,
    /// Object name, if the path names one.
    pub name: Option<String>,
    /// Subresource, if any.
    pub subresource: Option<String>,
    /// For the `proxy` subresource: the path after it (`/policy/verdicts` of `.../nodes/n1/proxy/policy/verdicts`,
    /// `/` when there is none).
    pub proxy_path: Option<String>,
}

/// Parses a request path.
pub fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let (group, version, rest) = match segs.first().map(String::as_str) {
        Some("api") => match segs.len() {
            1 => return Some(Target::CoreRoot),
            _ => (String::new(), segs[1].clone(), &segs[2..]),
        },
        Some("apis") => match segs.len() {
            1 => return Some(Target::GroupsRoot),
            2 => return Some(Target::Group(segs[1].clone())),
            _ => (segs[1].clone(), segs[2].clone(), &segs[3..]),
        },
        _ => return None,
    };
    if rest.is_empty() {
        return Some(Target::GroupVersion { group, version });
    }
    let mk = |namespace: Option<String>, plural: &str, tail: &[String]| {
        let sub = tail.get(1);
        let proxy_path = (sub.map(String::as_str) == Some("proxy")).then(|| format!("/{}", tail[2..].join("/")));
        Some(Target::Resource(ResourcePath {
            group: group.clone(),
            version: version.clone(),
            namespace,
            plural: plural.to_string(),
            name: tail.first().cloned(),
            subresource: sub.cloned(),
            proxy_path,
        }))
    };
    // Only `proxy` takes a path of its own after the subresource (`nodes/NAME/proxy/metrics`).
    let fits = |tail: &[String]| tail.len() <= 2 || tail[1] == "proxy";
    let is_namespace_sub = |s: &str| matches!(s, "status" | "finalize");
    match rest {
        [ns, ..] if ns == "namespaces" && group.is_empty() && rest.len() == 3 && is_namespace_sub(&rest[2]) => {
            mk(None, "namespaces", &rest[1..])
        }
        [ns, namespace, plural, tail @ ..] if ns == "namespaces" => {
            if !fits(tail) {
                return None;
            }
            mk(Some(namespace.clone()), plural, tail)
        }
        [plural, tail @ ..] => {
            if !fits(tail) {
                return None;
            }
            mk(None, plural, tail)
        }
        [] => None,
    }
}

/// Query parameters, with repeated keys kept (`command=a&command=b`).
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        Query(url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect())
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    }

    /// Every parameter, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// A boolean parameter (`true`/`1`).
    pub fn flag(&self, key: &str) -> bool {
        // Go's strconv.ParseBool, as the real API server parses flags; the Python client sends `watch=True`
        matches!(self.get(key), Some("true" | "True" | "TRUE" | "t" | "T" | "1" | ""))
    }

    /// An integer parameter.
    pub fn int(&self, key: &str) -> Result<Option<i64>, super::error::ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| super::error::ApiError::bad_request(format!("invalid value for {key}: {v:?}")))
            })
            .transpose()
    }
}

/// What representation the client asked for in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The object or list itself.
    Object,
    /// A `meta.k8s.io/v1` Table.
    Table,
    /// `PartialObjectMetadata` / `PartialObjectMetadataList`.
    Metadata,
}

/// Reads the `Accept` header.
pub fn representation(headers: &HeaderMap) -> Representation {
    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    // the first acceptable alternative wins
    for alt in accept.split(',') {
        let alt = alt.trim();
        if alt.contains("as=Table") {
            return Representation::Table;
        }
        if alt.contains("as=PartialObjectMetadata") {
            return Representation::Metadata;
        }
        if alt.starts_with("application/json") || alt.starts_with("*/*") || alt.starts_with("application/yaml") {
            return Representation::Object;
        }
    }
    Representation::Object
}

/// The media type of the request body, without parameters.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(group: &str, ns: Option<&str>, plural: &str, name: Option<&str>, sub: Option<&str>) -> Option<Target> {
        Some(Target::Resource(ResourcePath {
            group: group.into(),
            version: "v1".into(),
            namespace: ns.map(Into::into),
            plural: plural.into(),
            name: name.map(Into::into),
            subresource: sub.map(Into::into),
            proxy_path: (sub == Some("proxy")).then(|| "/".to_string()),
        }))
    }

    #[test]
    fn paths_parse_into_targets() {
        assert_eq!(parse_path("/api"), Some(Target::CoreRoot));
        assert_eq!(parse_path("/apis/apps"), Some(Target::Group("apps".into())));
        assert_eq!(parse_path("/api/v1"), Some(Target::GroupVersion { group: "".into(), version: "v1".into() }));
        assert_eq!(parse_path("/api/v1/pods"), res("", None, "pods", None, None));
        assert_eq!(parse_path("/api/v1/namespaces"), res("", None, "namespaces", None, None));
        assert_eq!(parse_path("/api/v1/namespaces/default"), res("", None, "namespaces", Some("default"), None));
        assert_eq!(
            parse_path("/api/v1/namespaces/x/finalize"),
            res("", None, "namespaces", Some("x"), Some("finalize"))
        );
        assert_eq!(parse_path("/api/v1/namespaces/default/pods"), res("", Some("default"), "pods", None, None));
        assert_eq!(
            parse_path("/apis/apps/v1/namespaces/d/deployments/web/scale"),
            res("apps", Some("d"), "deployments", Some("web"), Some("scale"))
        );
        assert_eq!(parse_path("/api/v1/nodes/n1/status"), res("", None, "nodes", Some("n1"), Some("status")));
        assert_eq!(parse_path("/healthz"), None);
        let Some(Target::Resource(rp)) = parse_path("/api/v1/nodes/n1/proxy/policy/verdicts") else {
            panic!("a node proxy path parses")
        };
        assert_eq!((rp.name.as_deref(), rp.subresource.as_deref()), (Some("n1"), Some("proxy")));
        assert_eq!(rp.proxy_path.as_deref(), Some("/policy/verdicts"));
        assert_eq!(parse_path("/api/v1/nodes/n1/proxy"), res("", None, "nodes", Some("n1"), Some("proxy")));
        assert_eq!(parse_path("/api/v1/nodes/n1/status/more"), None, "only proxy takes a path");
    }

    #[test]
    fn accept_headers_pick_the_representation() {
        let mut h = HeaderMap::new();
        h.insert("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json".parse().expect("valid"));
        assert_eq!(representation(&h), Representation::Table);
        h.insert("accept", "application/vnd.kubernetes.protobuf,application/json".parse().expect("valid"));
        assert_eq!(representation(&h), Representation::Object);
    }
}

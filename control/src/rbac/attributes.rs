//! What a request would do, as Kubernetes' authorizers see it, and how an HTTP request maps to it.

use crate::apiserver::request::{Target, parse_path};

/// A request's authorization attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    /// A request on a resource.
    Resource {
        /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or a special verb
        /// (`impersonate`, `bind`, `escalate`).
        verb: String,
        /// The API group (`""` for core).
        group: String,
        /// The resource (`pods`).
        resource: String,
        /// The subresource (`log`), if any.
        subresource: String,
        /// The namespace (`""` for all or for cluster-scoped resources).
        namespace: String,
        /// The object's name (`""` for collections and creates).
        name: String,
    },
    /// A request on a path outside the resource API (`/healthz`, `/version`, discovery).
    NonResource {
        /// `get`, `post`, `put`, `delete`, …
        verb: String,
        /// The path.
        path: String,
    },
}

impl Attributes {
    /// A resource request's attributes.
    pub fn resource(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A subresource request's attributes.
    pub fn subresource(verb: &str, group: &str, resource: &str, sub: &str, namespace: &str, name: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A list or watch of one object by a `metadata.name` field selector names that object, as kube-apiserver's
    /// request info does (so a watch of one Secret is authorized as that Secret).
    pub fn with_selected_name(self, field_selector: Option<&str>) -> Attributes {
        match self {
            Attributes::Resource { verb, group, resource, subresource, namespace, name }
                if name.is_empty() && matches!(verb.as_str(), "list" | "watch") =>
            {
                let selected = field_selector
                    .and_then(|f| skiff_api::selector::FieldSelector::parse(f).ok())
                    .and_then(|f| f.equality("metadata.name").map(str::to_string))
                    .unwrap_or_default();
                Attributes::Resource { verb, group, resource, subresource, namespace, name: selected }
            }
            other => other,
        }
    }

    /// The verb.
    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        }
    }
}

/// The attributes of an HTTP request, as the API server's request-info resolver derives them: the verb from the
/// method (a GET of a collection is `list`, or `watch` with `watch=true`; a DELETE of a collection is
/// `deletecollection`), and for `exec`/`attach`/`portforward` always `create` (Kubernetes 1.31+ also asks `create` of
/// their WebSocket GETs). Paths that are not under `/api/VERSION/…` or `/apis/GROUP/VERSION/…` are non-resource.
pub fn of_request(method: &str, path: &str, watch: bool) -> Attributes {
    let lower = method.to_ascii_lowercase();
    let non_resource = || Attributes::NonResource { verb: lower.clone(), path: path.to_string() };
    let Some(Target::Resource(rp)) = parse_path(path) else { return non_resource() };
    let sub = rp.subresource.clone().unwrap_or_default();
    let verb = match (method, rp.name.is_some()) {
        _ if matches!(sub.as_str(), "exec" | "attach" | "portforward") && rp.group.is_empty() => "create",
        // `watch=true` makes a watch of a collection or (deprecated) of one object, never of a subresource that
        // proxies (`nodes/NAME/proxy/...?watch` is a `get` of nodes/proxy, as upstream resolves it).
        ("GET" | "HEAD", _) if watch && matches!(sub.as_str(), "" | "status" | "approval") => "watch",
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => {
            return Attributes::Resource {
                verb: lower.clone(),
                group: rp.group,
                resource: rp.plural,
                subresource: sub,
                namespace: rp.namespace.unwrap_or_default(),
                name: rp.name.unwrap_or_default(),
            };
        }
    };
    // a namespace is its own namespace (so a RoleBinding in `team` can grant `get namespaces` on `team`)
    let namespace = match (&rp.namespace, rp.group.as_str(), rp.plural.as_str(), &rp.name) {
        (None, "", "namespaces", Some(n)) => n.clone(),
        (ns, ..) => ns.clone().unwrap_or_default(),
    };
    Attributes::Resource {
        verb: verb.into(),
        group: rp.group,
        resource: rp.plural,
        subresource: sub,
        namespace,
        name: rp.name.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Attributes as A;

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        A::subresource(verb, group, resource, sub, ns, name)
    }

    #[test]
    fn requests_map_to_upstream_attributes() {
        let cases = [
            ("GET", "/api/v1/pods", false, res("list", "", "pods", "", "", "")),
            ("GET", "/api/v1/namespaces/a/pods", true, res("watch", "", "pods", "", "a", "")),
            ("GET", "/api/v1/namespaces/a/pods/p", false, res("get", "", "pods", "", "a", "p")),
            ("GET", "/api/v1/namespaces/a/pods/p/log", false, res("get", "", "pods", "log", "a", "p")),
            ("GET", "/api/v1/namespaces/a/pods/p/exec", false, res("create", "", "pods", "exec", "a", "p")),
            (
                "POST",
                "/api/v1/namespaces/a/pods/p/portforward",
                false,
                res("create", "", "pods", "portforward", "a", "p"),
            ),
            (
                "POST",
                "/apis/apps/v1/namespaces/a/deployments",
                false,
                res("create", "apps", "deployments", "", "a", ""),
            ),
            (
                "PUT",
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                false,
                res("update", "apps", "deployments", "scale", "a", "d"),
            ),
            ("PATCH", "/api/v1/nodes/n1/status", false, res("patch", "", "nodes", "status", "", "n1")),
            ("DELETE", "/api/v1/namespaces/a/secrets/s", false, res("delete", "", "secrets", "", "a", "s")),
            ("DELETE", "/api/v1/namespaces/a/secrets", false, res("deletecollection", "", "secrets", "", "a", "")),
            ("GET", "/api/v1/namespaces/team", false, res("get", "", "namespaces", "", "team", "team")),
            ("GET", "/api/v1/nodes/n1/proxy/exec/a/p/c", true, res("get", "", "nodes", "proxy", "", "n1")),
            ("POST", "/api/v1/nodes/n1/proxy/exec/a/p/c", true, res("create", "", "nodes", "proxy", "", "n1")),
        ];
        for (method, path, watch, want) in cases {
            assert_eq!(of_request(method, path, watch), want, "{method} {path}");
        }
    }

    #[test]
    fn discovery_and_other_paths_are_non_resource() {
        for path in ["/api", "/apis", "/apis/apps", "/api/v1", "/apis/apps/v1", "/version", "/openapi/v3"] {
            assert_eq!(
                of_request("GET", path, false),
                Attributes::NonResource { verb: "get".into(), path: path.into() },
                "{path}"
            );
        }
    }
}

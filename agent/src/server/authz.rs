//! Who may use the node endpoint, as kubelet's webhook authorization decides: the caller's client certificate
//! (CN the user, O the groups) names it; members of `system:masters` (the API server's own identity) may do
//! everything; anyone else is asked about with a SubjectAccessReview on `nodes/<subresource>` of this node, the
//! subresource and verb following the path and method as kubelet maps them. `/healthz` is open to every
//! certificate the cluster CA signed.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::{Shared, text};

/// The identity in a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// CN.
    pub name: String,
    /// Each O.
    pub groups: Vec<String>,
}

/// The caller named by a DER certificate.
pub fn caller_of(der: &[u8]) -> Option<Caller> {
    let (name, groups) = skiff_client::identity::subject_of(der)?;
    Some(Caller { name, groups })
}

/// The verb and `nodes` subresource a request asks for (kubelet's mapping): `/metrics` → `metrics`,
/// `/stats` and the resource metrics → `stats`, `/logs` → `log`, everything else (container logs, exec) → `proxy`.
pub fn node_attributes(method: &str, path: &str) -> (&'static str, &'static str) {
    let verb = match method {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "get",
    };
    let sub = if path == "/metrics" || path.starts_with("/metrics/") {
        "metrics"
    } else if path.starts_with("/stats") || path.starts_with("/apis/metrics.k8s.io/") {
        "stats"
    } else if path.starts_with("/logs") {
        "log"
    } else {
        "proxy"
    };
    (verb, sub)
}

async fn review(s: &Shared, caller: &Caller, verb: &str, sub: &str) -> Result<bool, String> {
    let client = s.client.as_ref().ok_or("no API client to ask")?;
    let body = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": caller.name, "groups": caller.groups,
                 "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": sub, "name": s.node}}
    });
    let req = http::Request::post("/apis/authorization.k8s.io/v1/subjectaccessreviews")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let answer: serde_json::Value = client.request(req).await.map_err(|e| e.to_string())?;
    Ok(answer.pointer("/status/allowed").and_then(serde_json::Value::as_bool) == Some(true))
}

/// The middleware: refuses callers who may not make the request.
pub async fn authorize(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return next.run(req).await;
    }
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    if caller.groups.iter().any(|g| g == "system:masters") {
        return next.run(req).await;
    }
    let (verb, sub) = node_attributes(req.method().as_str(), &path);
    match review(&s, &caller, verb, sub).await {
        Ok(true) => next.run(req).await,
        Ok(false) => text(
            StatusCode::FORBIDDEN,
            format!("Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})", caller.name),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "asking the API server about a caller failed");
            text(StatusCode::FORBIDDEN, format!("Forbidden: the authorization check failed ({e})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_node_subresources_as_kubelet_maps_them() {
        let cases = [
            ("GET", "/containerLogs/ns/p/c", ("get", "proxy")),
            ("POST", "/exec/ns/p/c", ("create", "proxy")),
            ("GET", "/exec/ns/p/c", ("get", "proxy")),
            ("GET", "/metrics", ("get", "metrics")),
            ("GET", "/apis/metrics.k8s.io/v1beta1/pods", ("get", "stats")),
            ("GET", "/logs/syslog", ("get", "log")),
        ];
        for (m, p, want) in cases {
            assert_eq!(node_attributes(m, p), want, "{m} {p}");
        }
    }
}

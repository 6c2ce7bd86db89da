//! API errors: every failure is answered with a `metav1.Status` carrying the reason and code kubectl expects.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::storage::StorageError;
use skiff_api::normalize::NormalizeError;
use skiff_api::registry::ResourceInfo;
use skiff_api::validation::ErrorList;

/// A failed API request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason`.
    pub reason: &'static str,
    /// A sentence for people.
    pub message: String,
    /// `details` (name, group, kind, causes), when known.
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Result of an API operation.
pub type ApiResult<T> = Result<T, ApiError>;

fn details(info: &ResourceInfo, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": info.plural});
    if !info.group.is_empty() {
        d["group"] = Value::from(info.group.clone());
    }
    d
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 404 for a missing object.
    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        ApiError {
            details: Some(details(info, name)),
            ..Self::new(404, "NotFound", format!("{} \"{name}\" not found", info.qualified_plural()))
        }
    }

    /// 404 for an unknown path.
    pub fn no_route(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 409 AlreadyExists.
    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        ApiError {
            details: Some(details(info, name)),
            ..Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", info.qualified_plural()))
        }
    }

    /// 409 Conflict for a stale resourceVersion.
    pub fn conflict(info: &ResourceInfo, name: &str) -> Self {
        ApiError {
            details: Some(details(info, name)),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    info.qualified_plural()
                ),
            )
        }
    }

    /// 409 Conflict with a custom message (precondition failures, server-side apply conflicts).
    pub fn conflict_message(message: impl Into<String>, details: Option<Value>) -> Self {
        ApiError { details, ..Self::new(409, "Conflict", message) }
    }

    /// 410 Expired.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("the request body is larger than the limit of {limit} bytes"))
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    /// 422 Invalid, with one cause per field error.
    pub fn invalid(info: &ResourceInfo, kind: &str, name: &str, errs: &ErrorList) -> Self {
        let causes: Vec<Value> = errs
            .0
            .iter()
            .map(|e| json!({"reason": e.kind.reason(), "message": e.message(), "field": e.field}))
            .collect();
        let qualified_kind = if info.group.is_empty() { kind.to_string() } else { format!("{kind}.{}", info.group) };
        let mut d = json!({"name": name, "kind": kind, "causes": causes});
        if !info.group.is_empty() {
            d["group"] = Value::from(info.group.clone());
        }
        ApiError {
            details: Some(d),
            ..Self::new(422, "Invalid", format!("{qualified_kind} \"{name}\" is invalid: {}", errs.summary()))
        }
    }

    /// 422 for a request that is well-formed but cannot be carried out (a JSON patch test that fails).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 429 TooManyRequests.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequests", message)
    }

    /// 429 for a client over its share, with `Retry-After` (and `details.retryAfterSeconds`), as Kubernetes'
    /// priority and fairness answers.
    pub fn throttled(retry_after_seconds: u64) -> Self {
        ApiError {
            details: Some(serde_json::json!({"retryAfterSeconds": retry_after_seconds})),
            ..Self::too_many_requests("Too many requests, please try again later.")
        }
    }

    /// 500 InternalError; the cause is logged, not shown.
    pub fn internal(context: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "{context}");
        Self::new(500, "InternalError", format!("Internal error occurred: {context}"))
    }

    /// 504 Timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// Maps a normalization failure for `info`/`name`.
    pub fn from_normalize(info: &ResourceInfo, kind: &str, name: &str, e: NormalizeError) -> Self {
        match e {
            NormalizeError::Invalid(errs) => Self::invalid(info, kind, name, &errs),
            other => Self::bad_request(other.to_string()),
        }
    }

    /// Maps a storage failure for `info`/`name`.
    pub fn from_storage(info: &ResourceInfo, name: &str, e: StorageError) -> Self {
        match e {
            StorageError::NotFound { .. } => Self::not_found(info, name),
            StorageError::AlreadyExists { .. } => Self::already_exists(info, name),
            StorageError::Conflict { .. } => Self::conflict(info, name),
            StorageError::Compacted { requested, .. } => {
                Self::expired(format!("too old resource version: {requested}"))
            }
            StorageError::FutureRevision { requested, current } => {
                Self::timeout(format!("Too large resource version: {requested}, current: {current}"))
            }
            other => Self::internal("storage", &other),
        }
    }

    /// The `metav1.Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let mut r = (code, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(s) = self.details.as_ref().and_then(|d| d.get("retryAfterSeconds")).and_then(Value::as_u64) {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

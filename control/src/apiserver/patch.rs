//! PATCH: JSON patch (RFC 6902), merge patch (RFC 7386), strategic merge patch, and server-side apply.

use std::sync::Arc;

use serde_json::Value;

use super::Api;
use super::cas;
use super::error::{ApiError, ApiResult};
use super::writes::{WriteOptions, Written};
use skiff_api::meta;
use skiff_api::registry::ResourceInfo;

/// The patch formats the server accepts.
pub const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// Applies a non-apply patch document to `base`.
pub fn apply_patch(info: &ResourceInfo, content_type: &str, base: &Value, patch: &Value) -> ApiResult<Value> {
    match content_type {
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            let mut out = base.clone();
            json_patch::patch(&mut out, &p)
                .map_err(|e| ApiError::unprocessable(format!("the JSON patch could not be applied: {e}")))?;
            if !out.is_object() {
                return Err(ApiError::unprocessable(format!(
                    "the JSON patch made the object {}",
                    meta::describe_type(&out)
                )));
            }
            Ok(out)
        }
        "application/merge-patch+json" => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut out = base.clone();
            json_patch::merge(&mut out, patch);
            Ok(out)
        }
        "application/strategic-merge-patch+json" => {
            if info.custom {
                return Err(ApiError::unsupported_media_type(
                    content_type,
                    &["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"],
                ));
            }
            skiff_api::smp::apply(base, patch, &info.kind).map_err(|e| ApiError::bad_request(e.to_string()))
        }
        other => Err(ApiError::unsupported_media_type(other, PATCH_TYPES)),
    }
}

impl Api {
    /// Patches an object (or its `status`).
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        content_type: &str,
        body: &[u8],
        force: bool,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        if content_type == "application/apply-patch+yaml" {
            return self.server_side_apply(info, ns, name, subresource, body, force, opts).await;
        }
        let patch: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
        let ns = if info.namespaced() { ns } else { None };
        cas::retry!(info, name, {
            let cur = self.get(info, ns, name).await?;
            let patched = apply_patch(info, content_type, &cur.object, &patch)?;
            let rv = meta::resource_version(&patched).to_string();
            let pinned = !rv.is_empty() && rv != cur.revision.to_string();
            if pinned {
                return Err(ApiError::conflict(info, name));
            }
            if meta::name(&patched) != name {
                return Err(ApiError::bad_request("the name of the object may not be changed by a patch"));
            }
            let explicit_rv = patch.pointer("/metadata/resourceVersion").is_some()
                || (content_type == "application/json-patch+json"
                    && body.windows(16).any(|w| w == b"resourceVersion\""));
            cas::settle(
                self.commit_update(info, ns, name, &cur, patched, subresource, opts, "unknown").await,
                !explicit_rv,
            )
        })
    }
}

//! Pod Security Admission applied: the namespace's labels are read, pods that violate its `enforce` level are
//! refused, and requests that would violate its `enforce`/`warn` levels (pods, and the pod templates of workloads)
//! get warnings; `audit` violations are logged. The checks are pure functions in [`crate::podsecurity`].

use serde_json::Value;
use skiff_api::registry::ResourceInfo;

use super::Api;
use super::error::{ApiError, ApiResult};
use crate::podsecurity::{self, Level, NamespacePolicy};

impl Api {
    async fn namespace_security(&self, ns: &str) -> ApiResult<NamespacePolicy> {
        let Some(n) = self.try_get(&self.builtin("", "namespaces"), None, ns).await? else {
            return Ok(NamespacePolicy::default());
        };
        // labels that slipped past validation (written before it existed) fail closed, as upstream does
        Ok(podsecurity::namespace_policy(n.object.pointer("/metadata/labels")).unwrap_or(NamespacePolicy {
            enforce: Some(Level::Restricted),
            warn: None,
            audit: None,
        }))
    }

    /// Admits a write of a pod (refused under `enforce`) or a workload's template (warned); returns warnings.
    /// Updates that do not change the pod's spec are not judged again.
    pub(crate) async fn admit_pod_security(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        new: &Value,
        old: Option<&Value>,
        subresource: Option<&str>,
    ) -> ApiResult<Vec<String>> {
        if let ("", "namespaces", None) = (info.group.as_str(), info.plural.as_str(), subresource) {
            return self.admit_namespace_labels(new, old).await;
        }
        let (Some(ns), None) = (ns, subresource) else { return Ok(Vec::new()) };
        let is_pod = info.group.is_empty() && info.plural == "pods";
        let template = if is_pod { Some("") } else { podsecurity::template_pointer(&info.group, &info.plural) };
        let Some(pointer) = template else { return Ok(Vec::new()) };
        let (meta, spec) = match (new.pointer(&format!("{pointer}/metadata")), new.pointer(&format!("{pointer}/spec")))
        {
            (m, Some(s)) => (m.cloned().unwrap_or(Value::Null), s),
            _ => return Ok(Vec::new()),
        };
        if old.and_then(|o| o.pointer(&format!("{pointer}/spec"))) == Some(spec) {
            return Ok(Vec::new());
        }
        let policy = self.namespace_security(ns).await?;
        let mut warnings = Vec::new();
        if let Some(level) = policy.enforce {
            let v = podsecurity::evaluate(level, &meta, spec);
            if !v.is_empty() {
                if is_pod {
                    return Err(ApiError::forbidden(format!(
                        "pods {:?} is forbidden: {}",
                        skiff_api::meta::name(new),
                        podsecurity::describe("violates", level, &v)
                    )));
                }
                warnings.push(podsecurity::describe("would violate", level, &v));
            }
        }
        if let Some(level) = policy.warn.filter(|w| Some(*w) != policy.enforce || !is_pod) {
            let v = podsecurity::evaluate(level, &meta, spec);
            let w = podsecurity::describe("would violate", level, &v);
            if !v.is_empty() && !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        if let Some(level) = policy.audit {
            let v = podsecurity::evaluate(level, &meta, spec);
            if !v.is_empty() {
                tracing::info!(namespace = ns, name = skiff_api::meta::name(new), kind = %info.kind,
                    audit = %podsecurity::describe("would violate", level, &v), "pod security audit");
            }
        }
        Ok(warnings)
    }

    /// Namespace labels must name valid levels; a stricter `enforce` level warns about the pods already there
    /// that violate it.
    async fn admit_namespace_labels(&self, new: &Value, old: Option<&Value>) -> ApiResult<Vec<String>> {
        let name = skiff_api::meta::name(new);
        let policy = podsecurity::namespace_policy(new.pointer("/metadata/labels"))
            .map_err(|e| ApiError::unprocessable(format!("Namespace {name:?} is invalid: {e}")))?;
        let before = old.and_then(|o| podsecurity::namespace_policy(o.pointer("/metadata/labels")).ok());
        let Some(level) = policy.enforce.filter(|l| before.and_then(|b| b.enforce) != Some(*l) && old.is_some()) else {
            return Ok(Vec::new());
        };
        let pods =
            self.list_all(&self.builtin("", "pods"), Some(name), skiff_api::selector::Selector::everything()).await?;
        let mut per_pod = Vec::new();
        for p in &pods {
            let v = podsecurity::evaluate(level, p.get("metadata").unwrap_or(&Value::Null), &p["spec"]);
            if !v.is_empty() {
                let reasons: Vec<&str> = v.iter().map(|x| x.reason).collect();
                per_pod.push(format!("{}: {}", skiff_api::meta::name(p), reasons.join(", ")));
            }
        }
        if per_pod.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = vec![format!(
            "existing pods in namespace {name:?} violate the new PodSecurity enforce level \"{level}:latest\""
        )];
        w.extend(per_pod);
        Ok(w)
    }
}

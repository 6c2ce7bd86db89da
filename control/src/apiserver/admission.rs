//! Admission that needs other objects: ResourceQuota enforcement.

use serde_json::Value;

use super::Api;
use super::error::{ApiError, ApiResult};
use crate::quota::{self, Usage};
use skiff_api::registry::ResourceInfo;
use skiff_api::selector::Selector;

impl Api {
    /// Rejects a write that would take a namespace over one of its ResourceQuotas.
    pub(crate) async fn admit_quota(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        new: &Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        let Some(ns) = ns else { return Ok(()) };
        if matches!(info.plural.as_str(), "resourcequotas" | "events" | "leases" | "endpointslices" | "endpoints") {
            return Ok(());
        }
        let quotas_info = self.builtin("", "resourcequotas");
        let quotas = self.list_all(&quotas_info, Some(ns), Selector::everything()).await?;
        if quotas.is_empty() {
            return Ok(());
        }
        let new_usage = quota::usage_of(&info.group, &info.plural, new);
        let old_usage = old.map(|o| quota::usage_of(&info.group, &info.plural, o)).unwrap_or_default();
        let delta: Usage = new_usage
            .iter()
            .filter_map(|(k, v)| {
                let d = *v - old_usage.get(k).copied().unwrap_or_default();
                (d.as_nanos() > 0).then(|| (k.clone(), d))
            })
            .collect();
        if delta.is_empty() {
            return Ok(());
        }
        let mut used_cache: Option<Usage> = None;
        for q in &quotas {
            let hard = quota::hard_of(q);
            let name = skiff_api::meta::name(q);
            if info.group.is_empty() && info.plural == "pods" && old.is_none() {
                let missing = quota::missing_declarations(&hard, new.get("spec").unwrap_or(&Value::Null));
                if !missing.is_empty() {
                    return Err(ApiError::forbidden(format!(
                        "{} \"{}\" is forbidden: failed quota: {name}: must specify {}",
                        info.plural,
                        skiff_api::meta::name(new),
                        missing.join(",")
                    )));
                }
            }
            let relevant = quota::relevant(&hard, &delta);
            if relevant.is_empty() {
                continue;
            }
            if used_cache.is_none() {
                used_cache = Some(self.namespace_usage(ns, &relevant).await?);
            }
            let used = used_cache.as_ref().expect("filled above");
            let mut over = Vec::new();
            for r in &relevant {
                let u = used.get(r).copied().unwrap_or_default();
                let d = delta[r];
                if u + d > hard[r] {
                    over.push((r.clone(), d, u, hard[r]));
                }
            }
            if !over.is_empty() {
                let fmt = |f: &dyn Fn(&(String, _, _, _)) -> String| over.iter().map(f).collect::<Vec<_>>().join(",");
                return Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                    info.plural,
                    skiff_api::meta::name(new),
                    fmt(&|(r, d, _, _)| format!("{r}={d}")),
                    fmt(&|(r, _, u, _)| format!("{r}={u}")),
                    fmt(&|(r, _, _, h)| format!("{r}={h}")),
                )));
            }
        }
        Ok(())
    }

    /// What a namespace uses of the `resources` named (quota resource names), counting only the kinds that can
    /// use them.
    pub async fn namespace_usage(&self, ns: &str, resources: &[String]) -> ApiResult<Usage> {
        let mut total = Usage::new();
        let affects = |r: &ResourceInfo| {
            let count = if r.group.is_empty() {
                format!("count/{}", r.plural)
            } else {
                format!("count/{}.{}", r.plural, r.group)
            };
            resources.iter().any(|k| {
                *k == count
                    || match (r.group.as_str(), r.plural.as_str()) {
                        ("", "pods") => {
                            k == "pods"
                                || k.starts_with("requests.") && k != "requests.storage"
                                || k.starts_with("limits.")
                                || k == "cpu"
                                || k == "memory"
                        }
                        ("", "services") => k.starts_with("services"),
                        ("", "persistentvolumeclaims") => k == "persistentvolumeclaims" || k == "requests.storage",
                        ("", p) => k == p,
                        _ => false,
                    }
            })
        };
        let kinds: Vec<_> = {
            let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
            reg.all().iter().filter(|r| r.namespaced() && affects(r)).cloned().collect()
        };
        for info in kinds {
            // count/* covers every kind; only a few kinds have more
            for obj in self.list_all(&info, Some(ns), Selector::everything()).await? {
                for (k, v) in quota::usage_of(&info.group, &info.plural, &obj) {
                    let e = total.entry(k).or_default();
                    *e = *e + v;
                }
            }
        }
        Ok(total)
    }
}

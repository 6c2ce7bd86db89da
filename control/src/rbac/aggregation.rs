//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` holds the union of the rules of every other
//! ClusterRole whose labels match one of its selectors (how `admin`, `edit` and `view` grow with CRDs).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;
use skiff_api::selector::Selector;

fn labels(o: &Value) -> BTreeMap<String, String> {
    o.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

fn selectors(role: &Value) -> Option<Vec<Selector>> {
    let list = role.pointer("/aggregationRule/clusterRoleSelectors")?.as_array()?;
    Some(
        list.iter()
            .filter_map(|s| serde_json::from_value::<LabelSelector>(s.clone()).ok())
            .filter_map(|s| Selector::from_label_selector(&s).ok())
            .collect(),
    )
}

/// The aggregated ClusterRoles among `roles` whose `rules` differ from what their selectors gather, with the rules
/// they should have (in name order of the sources, each rule once).
pub fn plan(roles: &[Value]) -> Vec<(String, Vec<Value>)> {
    let mut sorted: Vec<&Value> = roles.iter().collect();
    sorted.sort_by_key(|r| skiff_api::meta::name(r).to_string());
    let mut out = Vec::new();
    for role in &sorted {
        let Some(selectors) = selectors(role) else { continue };
        let name = skiff_api::meta::name(role);
        let mut rules: Vec<Value> = Vec::new();
        for source in &sorted {
            if skiff_api::meta::name(source) == name {
                continue;
            }
            let l = labels(source);
            // an empty selector list selects nothing; an empty selector would select everything, as upstream
            if !selectors.iter().any(|s| s.matches(&l)) {
                continue;
            }
            for r in source.get("rules").and_then(Value::as_array).into_iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
        let current = role.get("rules").and_then(Value::as_array).cloned().unwrap_or_default();
        if current != rules {
            out.push((name.to_string(), rules));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn aggregated_roles_gather_matching_rules_and_converge() {
        let mut roles: Vec<Value> =
            super::super::defaults::objects().into_iter().filter(|o| o["kind"] == "ClusterRole").collect();
        roles.push(json!({"kind": "ClusterRole", "metadata": {"name": "crontabs-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
            "rules": [{"apiGroups": ["stable.example.com"], "resources": ["crontabs"], "verbs": ["get"]}]}));
        // apply plans until nothing changes: view, then edit (which includes view), then admin
        let mut passes = 0;
        loop {
            let p = plan(&roles);
            if p.is_empty() {
                break;
            }
            passes += 1;
            assert!(passes < 5, "aggregation converges");
            for (name, rules) in p {
                let r = roles.iter_mut().find(|r| r["metadata"]["name"] == name).expect("the role");
                r["rules"] = Value::Array(rules);
            }
        }
        let rules_of = |n: &str| roles.iter().find(|r| r["metadata"]["name"] == n).expect("role")["rules"].clone();
        let has = |n: &str, res: &str| {
            rules_of(n)
                .as_array()
                .expect("rules")
                .iter()
                .any(|r| r["resources"].as_array().is_some_and(|a| a.contains(&json!(res))))
        };
        assert!(has("view", "crontabs") && has("edit", "crontabs") && has("admin", "crontabs"));
        assert!(has("edit", "secrets") && has("admin", "secrets") && !has("view", "secrets"));
        assert!(has("admin", "rolebindings") && !has("edit", "rolebindings"));
        assert!(has("cluster-admin", "*"), "a role without an aggregation rule is untouched");
    }
}

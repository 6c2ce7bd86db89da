//! Which nodes a pod may go to: taints and tolerations, node selectors and required node affinity. Shared by the
//! scheduler, the DaemonSet controller and the node lifecycle controller. A pod's spec is read as the controllers
//! cache it (`cached_pod::Spec`); a template's goes through `Spec::from`.

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};

use super::cached_pod::Spec;

/// Whether `t` tolerates `taint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => key == taint.key && t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    }
}

/// The first NoSchedule or NoExecute taint of `node` that `spec` does not tolerate.
pub fn untolerated_taint<'a>(node: &'a Node, spec: &Spec) -> Option<&'a Taint> {
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    node.spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) =
                (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if r.operator == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Whether a node selector term matches a node.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| requirement_matches(r, (r.key == "metadata.name").then_some(name)))
}

/// Whether a node satisfies the pod's `nodeSelector` and required node affinity.
pub fn selector_and_affinity_match(node: &Node, spec: &Spec) -> bool {
    let labels = node.metadata.labels.as_ref();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    {
        return false;
    }
    if let Some(req) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        && !req.node_selector_terms.iter().any(|t| term_matches(t, node))
    {
        return false;
    }
    true
}

/// The sum of preferred node affinity weights a node earns.
pub fn preferred_affinity_score(node: &Node, spec: &Spec) -> i64 {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.preferred_during_scheduling_ignored_during_execution.as_ref())
        .map(|prefs| prefs.iter().filter(|p| term_matches(&p.preference, node)).map(|p| i64::from(p.weight)).sum())
        .unwrap_or(0)
}

/// Whether a node is Ready.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).expect("node")
    }

    fn spec(v: serde_json::Value) -> Spec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn tolerations_match_taints_by_key_value_and_effect() {
        let taint: Taint =
            serde_json::from_value(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})).expect("taint");
        let t = |v| serde_json::from_value::<Toleration>(v).expect("toleration");
        assert!(tolerates(
            &t(json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"})),
            &taint
        ));
        assert!(tolerates(&t(json!({"key": "dedicated", "operator": "Exists"})), &taint));
        assert!(tolerates(&t(json!({"operator": "Exists"})), &taint), "an empty key with Exists tolerates everything");
        assert!(!tolerates(&t(json!({"key": "dedicated", "value": "cpu"})), &taint));
        assert!(!tolerates(&t(json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"})), &taint));
    }

    #[test]
    fn selectors_and_required_affinity_filter_nodes() {
        let n = node(json!({"metadata": {"name": "n1", "labels": {"zone": "a", "gen": "5"}}}));
        assert!(selector_and_affinity_match(&n, &spec(json!({"containers": [], "nodeSelector": {"zone": "a"}}))));
        assert!(!selector_and_affinity_match(&n, &spec(json!({"containers": [], "nodeSelector": {"zone": "b"}}))));
        let aff = |op: &str, vals: serde_json::Value| {
            spec(
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": op, "values": vals}]}]}}}}),
            )
        };
        assert!(selector_and_affinity_match(&n, &aff("Gt", json!(["4"]))));
        assert!(!selector_and_affinity_match(&n, &aff("Lt", json!(["4"]))));
        assert!(selector_and_affinity_match(&n, &aff("NotIn", json!(["1"]))));
        let by_name = spec(
            json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}),
        );
        assert!(selector_and_affinity_match(&n, &by_name));
    }
}

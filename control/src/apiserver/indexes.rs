//! The fields the watch cache indexes for the watches that select on them: a pod's `spec.nodeName`, which every
//! kubelet watches (the upstream watch cache indexes the same field). With 200 nodes, a pod's change then wakes the
//! watch of its node, not 200 watches that each decode the pod and compare the field to drop it.

use std::borrow::Cow;

use serde::Deserialize;
use skiff_api::registry::ResourceInfo;
use skiff_api::selector::FieldSelector;

use crate::storage::{Index, Trigger};

/// A pod's `spec.nodeName`.
const POD_NODE_NAME: Index = Index { field: "spec.nodeName", value_of: pod_node_name };

/// The trigger of a watch of `info` selecting on `fields`: the value its `field=value` term requires of an
/// indexed field, if it has one.
pub fn trigger(info: &ResourceInfo, fields: &FieldSelector) -> Option<Trigger> {
    if !(info.group.is_empty() && info.plural == "pods") {
        return None;
    }
    let value = fields.equality(POD_NODE_NAME.field)?;
    Some(Trigger { index: POD_NODE_NAME, value: value.to_string() })
}

/// A stored pod's `spec.nodeName` as a field selector reads it (`""` when absent or null), or `None` when the
/// stored value is not a pod with a string there (the watch's own selector decides then).
fn pod_node_name(value: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Pod<'a> {
        #[serde(borrow, default)]
        spec: Option<Spec<'a>>,
    }
    #[derive(Deserialize)]
    struct Spec<'a> {
        #[serde(borrow, default, rename = "nodeName")]
        node_name: Option<Cow<'a, str>>,
    }
    let pod: Pod<'_> = serde_json::from_slice(value).ok()?;
    Some(pod.spec.and_then(|s| s.node_name).map(Cow::into_owned).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use skiff_api::registry::Registry;
    use skiff_api::selector::field_value;

    #[test]
    fn the_index_reads_what_the_field_selector_compares() {
        let cases = [
            json!({"spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}}),
            json!({"spec": {"nodeName": "n\u{e9}\"1"}}),
            json!({"spec": {"nodeName": null}}),
            json!({"spec": {}}),
            json!({"spec": null}),
            json!({"metadata": {"name": "p"}}),
        ];
        for pod in cases {
            let bytes = serde_json::to_vec(&pod).expect("json");
            assert_eq!(pod_node_name(&bytes), Some(field_value(&pod, "spec.nodeName")), "{pod}");
        }
        // what it cannot read reaches the watch, whose selector decides
        assert_eq!(pod_node_name(b"{\"spec\": {\"nodeName\": 7}}"), None);
        assert_eq!(pod_node_name(b"not json"), None);
    }

    #[test]
    fn only_an_equality_on_a_pods_node_name_triggers() {
        let registry = Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").expect("pods");
        let nodes = registry.get("", "v1", "nodes").expect("nodes");
        let sel = |s: &str| FieldSelector::parse(s).expect("selector");
        let value = |t: Option<Trigger>| t.map(|t| t.value);
        assert_eq!(value(trigger(&pods, &sel("spec.nodeName=n1,status.phase!=Failed"))), Some("n1".into()));
        assert_eq!(value(trigger(&pods, &sel("spec.nodeName="))), Some(String::new()), "unscheduled pods");
        assert_eq!(value(trigger(&pods, &sel("spec.nodeName!=n1"))), None);
        assert_eq!(value(trigger(&pods, &sel("metadata.name=p"))), None);
        assert_eq!(value(trigger(&nodes, &sel("spec.nodeName=n1"))), None);
    }
}

//! What nodes may write, as Kubernetes' NodeRestriction admission limits it. Each node has its own identity
//! (`system:node:NAME` in `system:nodes`, from its client certificate), and:
//! - changes only its own Node object and its own Lease;
//! - changes and deletes only pods bound to it, and creates only mirror pods of its static pods, bound to it;
//! - does not change its taints, nor labels of the `kubernetes.io`/`k8s.io` namespaces beyond kubelet's own;
//! - a mirror pod, whoever creates it, may not use a service account, Secrets (pull secrets included),
//!   ConfigMaps or claims (the node authorizer would let its node read them).
//!
//! Which Secrets and ConfigMaps a node may *read* is the node authorizer's (`super::authz`): those its pods name.

use serde_json::Value;

use super::auth::User;
use super::serviceaccount::is_mirror;

/// Why a mirror pod's spec may not be admitted, if it may not.
pub fn mirror_pod_problem(pod: &Value) -> Option<String> {
    let spec = pod.get("spec")?;
    // whatever a pod names, its node may read (the node authorizer): a node's own pods may name nothing
    let refs = skiff_api::references::of_pod(pod);
    if !refs.secrets.is_empty() {
        return Some("mirror pods may not reference secrets".into());
    }
    if !refs.config_maps.is_empty() {
        return Some("mirror pods may not reference configmaps".into());
    }
    if !refs.claims.is_empty() {
        return Some("mirror pods may not reference persistentvolumeclaims".into());
    }
    if spec.get("serviceAccountName").and_then(Value::as_str).is_some_and(|s| !s.is_empty() && s != "default")
        || spec.get("automountServiceAccountToken").and_then(Value::as_bool) == Some(true)
    {
        return Some("mirror pods may not reference service accounts".into());
    }
    for v in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
        if v.get("secret").is_some() {
            return Some("mirror pods may not reference secrets".into());
        }
        if v.get("configMap").is_some() {
            return Some("mirror pods may not reference configmaps".into());
        }
        if v.get("persistentVolumeClaim").is_some() {
            return Some("mirror pods may not reference persistentvolumeclaims".into());
        }
        for src in v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
            if src.get("secret").is_some() {
                return Some("mirror pods may not reference secrets".into());
            }
            if src.get("configMap").is_some() {
                return Some("mirror pods may not reference configmaps".into());
            }
            if src.get("serviceAccountToken").is_some() {
                return Some("mirror pods may not reference service accounts".into());
            }
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
            let env_refs =
                c.get("env").and_then(Value::as_array).into_iter().flatten().filter_map(|e| e.get("valueFrom"));
            let from_refs = c.get("envFrom").and_then(Value::as_array).into_iter().flatten();
            for r in env_refs.chain(from_refs) {
                if r.get("secretKeyRef").is_some() || r.get("secretRef").is_some() {
                    return Some("mirror pods may not reference secrets".into());
                }
                if r.get("configMapKeyRef").is_some() || r.get("configMapRef").is_some() {
                    return Some("mirror pods may not reference configmaps".into());
                }
            }
        }
    }
    None
}

/// The labels in the `kubernetes.io` and `k8s.io` namespaces a node may set on itself (upstream kubelet's list);
/// every other label of those namespaces (`node-role.kubernetes.io/…`, `node-restriction.kubernetes.io/…`) is an
/// administrator's, so a workload can be kept to nodes it vouches for.
const NODE_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// Whether a label key is one only an administrator may set on a Node.
pub fn is_reserved_label(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else { return false };
    let in_namespace = |ns: &str| prefix == ns || prefix.ends_with(&format!(".{ns}"));
    let node_prefix = prefix == "kubelet.kubernetes.io" || prefix == "node.kubernetes.io";
    (in_namespace("kubernetes.io") || in_namespace("k8s.io")) && !node_prefix && !NODE_LABELS.contains(&key)
}

fn reserved_labels(node: &Value) -> Vec<(String, String)> {
    node.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter(|(k, _)| is_reserved_label(k))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn changed_reserved(old: &Value, new: &Value) -> Vec<String> {
    let (a, b) = (reserved_labels(old), reserved_labels(new));
    let mut keys: Vec<String> = a
        .iter()
        .filter(|x| !b.contains(x))
        .chain(b.iter().filter(|x| !a.contains(x)))
        .map(|(k, _)| k.clone())
        .collect();
    keys.dedup();
    keys
}

/// The namespace of node Leases.
const NODE_LEASES: &str = "kube-node-lease";
use skiff_api::loadbalancer::{ANNOUNCE_NAMESPACE, ANNOUNCE_PREFIX, is_announcement_lease};

fn holder(lease: &Value) -> &str {
    lease.pointer("/spec/holderIdentity").and_then(Value::as_str).unwrap_or_default()
}

/// Whether a Lease is an announcement Lease: well-formed name in the announcement namespace. Any other Lease there,
/// even one whose name merely starts with the prefix, stays off limits to nodes.
fn is_announcement(name: &str, lease: &Value) -> bool {
    is_announcement_lease(name) && skiff_api::meta::namespace(lease) == ANNOUNCE_NAMESPACE
}

/// Whether node `me` may write an announcement Lease from `old` to `new` (`None`: delete): it may claim one for
/// itself (create, renew, take over) and release or delete its own, but never name another node as holder, nor
/// release or delete another node's.
fn announcement_write(me: Option<&str>, old: Option<&Value>, new: Option<&Value>) -> bool {
    let Some(me) = me else { return false };
    let old_holder = old.map(holder).unwrap_or_default();
    match new.map(holder) {
        Some(h) if h == me => true,
        Some("") | None => old_holder == me || old_holder.is_empty(),
        Some(_) => false,
    }
}

/// Whether `user` is in the nodes' group.
fn is_node(user: &User) -> bool {
    user.groups.iter().any(|g| g == crate::certificates::NODES_GROUP)
}

/// The node `user` is (`system:node:NAME`), if it is one; a member of `system:nodes` without such a name is a
/// node of no name, which owns nothing.
pub fn node_name(user: &User) -> Option<&str> {
    user.name.strip_prefix(crate::certificates::NODE_USER_PREFIX).filter(|n| !n.is_empty())
}

fn bound_to(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default()
}

/// Whether `user` may create `pod`: nodes only mirror pods bound to themselves.
pub fn check_pod_create(user: Option<&User>, pod: &Value) -> Result<(), String> {
    let Some(user) = user.filter(|u| is_node(u)) else { return Ok(()) };
    if !is_mirror(pod) {
        return Err(format!(
            "pod does not have \"kubernetes.io/config.mirror\" annotation, node {:?} can only create mirror pods",
            user.name
        ));
    }
    if bound_to(pod).is_empty() || Some(bound_to(pod)) != node_name(user) {
        return Err(format!("node {:?} can only create pods with spec.nodeName set to itself", user.name));
    }
    Ok(())
}

/// Whether node `user` may change or delete (`new` is `None`) the object `old` of `group`/`plural` named `name`
/// (through `subresource`); anyone else is not this admission's business.
pub fn check_node_write(
    user: Option<&User>,
    group: &str,
    plural: &str,
    name: &str,
    old: &Value,
    new: Option<&Value>,
) -> Result<(), String> {
    let Some(user) = user.filter(|u| is_node(u)) else { return Ok(()) };
    let me = node_name(user);
    match (group, plural) {
        ("", "nodes") if me != Some(name) => {
            Err(format!("node {:?} is not allowed to modify node {name:?}", user.name))
        }
        ("", "nodes") if new.is_some_and(|n| reserved_labels(n) != reserved_labels(old)) => Err(format!(
            "node {:?} is not allowed to modify labels {:?} (labels in the kubernetes.io and k8s.io namespaces other than kubelet's are an admin's, so workloads can be kept to nodes it vouches for)",
            user.name,
            changed_reserved(old, new.unwrap_or(old))
        )),
        ("", "nodes") if new.is_some_and(|n| n.pointer("/spec/taints") != old.pointer("/spec/taints")) => {
            Err(format!("node {:?} is not allowed to modify taints", user.name))
        }
        ("coordination.k8s.io", "leases") if is_announcement(name, old) => {
            if announcement_write(me, Some(old), new) {
                Ok(())
            } else {
                Err(format!(
                    "node {:?} may only hold, renew or release announcement lease {name:?} for itself",
                    user.name
                ))
            }
        }
        ("coordination.k8s.io", "leases") if me != Some(name) || skiff_api::meta::namespace(old) != NODE_LEASES => {
            Err(format!("node {:?} is not allowed to modify lease {name:?}", user.name))
        }
        ("", "pods") => {
            let theirs = [Some(old), new].into_iter().flatten().any(|p| Some(bound_to(p)) != me);
            if theirs {
                return Err(format!("node {:?} can only modify pods with spec.nodeName set to itself", user.name));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// [`check_node_write`] as the API's 403.
pub fn admit_node_write(
    user: Option<&User>,
    info: &skiff_api::registry::ResourceInfo,
    name: &str,
    old: &Value,
    new: Option<&Value>,
) -> Result<(), super::error::ApiError> {
    check_node_write(user, &info.group, &info.plural, name, old, new)
        .map_err(|m| super::error::ApiError::forbidden(format!("{} {name:?} is forbidden: {m}", info.plural)))
}

/// Whether node `user` may create `obj` (a Node or Lease of its own name only; pods: [`check_pod_create`]).
pub fn check_node_create(user: Option<&User>, group: &str, plural: &str, obj: &Value) -> Result<(), String> {
    let Some(user) = user.filter(|u| is_node(u)) else { return Ok(()) };
    let name = skiff_api::meta::name(obj);
    match (group, plural) {
        ("", "pods") => check_pod_create(Some(user), obj),
        ("", "nodes") if node_name(user) != Some(name) => {
            Err(format!("node {:?} is not allowed to create {plural} {name:?}", user.name))
        }
        ("", "nodes") if !reserved_labels(obj).is_empty() => Err(format!(
            "node {:?} is not allowed to set labels {:?}",
            user.name,
            reserved_labels(obj).into_iter().map(|(k, _)| k).collect::<Vec<_>>()
        )),
        ("coordination.k8s.io", "leases")
            if name.starts_with(ANNOUNCE_PREFIX) && skiff_api::meta::namespace(obj) == ANNOUNCE_NAMESPACE =>
        {
            // only the exact name of an address, held by the creating node itself
            if is_announcement_lease(name) && node_name(user).is_some_and(|me| holder(obj) == me) {
                Ok(())
            } else {
                Err(format!("node {:?} may only create announcement lease {name:?} as its holder", user.name))
            }
        }
        ("coordination.k8s.io", "leases")
            if node_name(user) != Some(name) || skiff_api::meta::namespace(obj) != NODE_LEASES =>
        {
            Err(format!("node {:?} is not allowed to create {plural} {name:?}", user.name))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str) -> User {
        User { name: format!("system:node:{name}"), groups: vec!["system:nodes".into(), "system:authenticated".into()] }
    }

    #[test]
    fn nodes_hold_announcement_leases_only_for_themselves() {
        let (n1, n2) = (node("n1"), node("n2"));
        let lease = |holder: &str| {
            json!({"metadata": {"name": "skiff-lb-10-0-0-200", "namespace": "kube-system"},
                   "spec": {"holderIdentity": holder}})
        };
        let name = "skiff-lb-10-0-0-200";
        let create = |u: &User, l: &Value| check_node_create(Some(u), "coordination.k8s.io", "leases", l);
        let write = |u: &User, old: &Value, new: Option<&Value>| {
            check_node_write(Some(u), "coordination.k8s.io", "leases", name, old, new)
        };
        assert!(create(&n1, &lease("n1")).is_ok());
        let odd = json!({"metadata": {"name": "skiff-lb-anything", "namespace": "kube-system"},
                         "spec": {"holderIdentity": "n1"}});
        assert!(create(&n1, &odd).is_err(), "only skiff-lb-A-B-C-D names");
        let padded = json!({"metadata": {"name": "skiff-lb-010-0-0-1", "namespace": "kube-system"},
                            "spec": {"holderIdentity": "n1"}});
        assert!(create(&n1, &padded).is_err(), "one name per address");
        assert!(create(&n1, &lease("n2")).is_err(), "not on behalf of another node");
        assert!(write(&n1, &lease("n1"), Some(&lease("n1"))).is_ok(), "renew");
        assert!(write(&n1, &lease("n2"), Some(&lease("n1"))).is_ok(), "take over (expiry is the claimant's call)");
        assert!(write(&n1, &lease("n1"), Some(&lease(""))).is_ok(), "release its own");
        assert!(write(&n1, &lease("n2"), Some(&lease(""))).is_err(), "not release another's");
        assert!(write(&n1, &lease("n2"), Some(&lease("n3"))).is_err(), "not hand it to a third");
        assert!(write(&n2, &lease("n1"), None).is_err(), "not delete another's");
        assert!(write(&n1, &lease("n1"), None).is_ok());
        // other Leases in kube-system stay off limits
        let other = json!({"metadata": {"name": "skiff-controller-manager", "namespace": "kube-system"},
                           "spec": {"holderIdentity": "n1"}});
        assert!(
            check_node_write(
                Some(&n1),
                "coordination.k8s.io",
                "leases",
                "skiff-controller-manager",
                &other,
                Some(&other)
            )
            .is_err()
        );
        assert!(check_node_create(Some(&n1), "coordination.k8s.io", "leases", &other).is_err());
        // nor may a node take a kube-system Lease that only looks like an announcement (made by someone else)
        for odd_name in ["skiff-lb-anything", "skiff-lb-010-0-0-1"] {
            let odd =
                json!({"metadata": {"name": odd_name, "namespace": "kube-system"}, "spec": {"holderIdentity": ""}});
            let mine = json!({"metadata": {"name": odd_name, "namespace": "kube-system"},
                              "spec": {"holderIdentity": "n1"}});
            let w = check_node_write(Some(&n1), "coordination.k8s.io", "leases", odd_name, &odd, Some(&mine));
            assert!(w.is_err(), "{odd_name}");
        }
    }

    #[test]
    fn a_node_changes_only_itself_and_its_own_pods() {
        let (n1, n2) = (node("n1"), node("n2"));
        let pod_on = |n: &str| json!({"metadata": {"name": "p"}, "spec": {"nodeName": n}});
        let nothing = json!({});
        assert!(check_node_write(Some(&n1), "", "nodes", "n1", &nothing, Some(&nothing)).is_ok());
        assert!(check_node_write(Some(&n1), "", "nodes", "n2", &nothing, None).is_err(), "another node");
        let labelled = |v: &str| json!({"metadata": {"name": "n1", "labels": {"node-restriction.kubernetes.io/pci": v, "zone": "a"}}});
        for (key, reserved) in [
            ("node-role.kubernetes.io/control-plane", true),
            ("node-restriction.kubernetes.io/pci", true),
            ("example.k8s.io/x", true),
            ("kubernetes.io/hostname", false),
            ("topology.kubernetes.io/zone", false),
            ("node.kubernetes.io/exclude", false),
            ("kubelet.kubernetes.io/x", false),
            ("zone", false),
            ("example.com/x", false),
        ] {
            assert_eq!(is_reserved_label(key), reserved, "{key}");
        }
        let tainted =
            json!({"metadata": {"name": "n1"}, "spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}});
        let untainted = json!({"metadata": {"name": "n1"}, "spec": {}});
        assert!(check_node_write(Some(&n1), "", "nodes", "n1", &tainted, Some(&untainted)).is_err(), "taints");
        let plain = json!({"metadata": {"name": "n1", "labels": {"zone": "b"}}});
        assert!(check_node_write(Some(&n1), "", "nodes", "n1", &labelled("yes"), Some(&labelled("yes"))).is_ok());
        assert!(check_node_write(Some(&n1), "", "nodes", "n1", &plain, Some(&labelled("yes"))).is_err(), "adding");
        assert!(check_node_write(Some(&n1), "", "nodes", "n1", &labelled("yes"), Some(&plain)).is_err(), "removing");
        assert!(check_node_create(Some(&n1), "", "nodes", &labelled("yes")).is_err());
        assert!(check_node_write(Some(&n1), "coordination.k8s.io", "leases", "n2", &nothing, Some(&nothing)).is_err());
        let lease = |ns: &str| json!({"metadata": {"name": "n1", "namespace": ns}});
        assert!(
            check_node_write(Some(&n1), "coordination.k8s.io", "leases", "n1", &lease("kube-node-lease"), None).is_ok()
        );
        assert!(
            check_node_write(Some(&n1), "coordination.k8s.io", "leases", "n1", &lease("kube-system"), None).is_err()
        );
        assert!(check_node_create(Some(&n1), "coordination.k8s.io", "leases", &lease("default")).is_err());
        assert!(check_node_write(Some(&n1), "", "pods", "p", &pod_on("n1"), Some(&pod_on("n1"))).is_ok());
        assert!(check_node_write(Some(&n2), "", "pods", "p", &pod_on("n1"), Some(&pod_on("n1"))).is_err());
        assert!(check_node_write(Some(&n1), "", "pods", "p", &pod_on("n1"), Some(&pod_on("n2"))).is_err(), "moving it");
        assert!(check_node_write(Some(&n2), "", "pods", "p", &pod_on("n1"), None).is_err(), "deleting another's");
        assert!(check_node_write(Some(&n1), "", "services", "s", &nothing, None).is_ok(), "RBAC's business");
        let admin = User { name: "admin".into(), groups: vec!["system:masters".into()] };
        assert!(check_node_write(Some(&admin), "", "nodes", "n2", &nothing, None).is_ok());
        let nameless = User { name: "system:node-bootstrap".into(), groups: vec!["system:nodes".into()] };
        assert!(check_node_write(Some(&nameless), "", "nodes", "n1", &nothing, None).is_err(), "owns nothing");
        assert!(check_node_create(Some(&n1), "", "nodes", &json!({"metadata": {"name": "n2"}})).is_err());
        assert!(check_node_create(Some(&n1), "", "nodes", &json!({"metadata": {"name": "n1"}})).is_ok());
        let mirror_on = |n: &str| json!({"metadata": {"name": "m", "annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": {"nodeName": n}});
        assert!(check_node_create(Some(&n1), "", "pods", &mirror_on("n1")).is_ok());
        assert!(check_node_create(Some(&n1), "", "pods", &mirror_on("n2")).is_err(), "a mirror pod of another node");
    }

    #[test]
    fn nodes_create_only_clean_mirror_pods() {
        let node = node("n1");
        let mirror = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}});
        assert!(check_pod_create(Some(&node), &mirror).is_ok());
        assert!(mirror_pod_problem(&mirror).is_none());
        let plain = json!({"metadata": {}, "spec": {"nodeName": "n1"}});
        assert!(check_pod_create(Some(&node), &plain).expect_err("refused").contains("can only create mirror pods"));
        assert!(check_pod_create(None, &plain).is_ok(), "the server's own writes");
        let cases = [
            (json!({"serviceAccountName": "admin"}), "service accounts"),
            (json!({"volumes": [{"name": "s", "secret": {"secretName": "x"}}]}), "secrets"),
            (
                json!({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
                "service accounts",
            ),
            (
                json!({"containers": [{"name": "c", "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "m", "key": "k"}}}]}]}),
                "configmaps",
            ),
            (
                json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}]}),
                "persistentvolumeclaims",
            ),
        ];
        for (spec, what) in cases {
            let p = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": spec});
            assert!(mirror_pod_problem(&p).is_some_and(|m| m.ends_with(what)), "{p}");
        }
    }
}

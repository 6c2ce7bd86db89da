//! The roles and bindings every cluster starts with (Kubernetes' bootstrap policy, plus the role of Skiff's node
//! agents), and how an existing cluster is brought up to date with them.
//!
//! As upstream, the defaults are reconciled at every start: missing objects are created, missing rules and
//! subjects added; an object annotated `rbac.authorization.kubernetes.io/autoupdate: "false"` is left alone.

use serde_json::{Value, json};

use super::rule::Rule;

/// The annotation that stops reconciliation of a default object.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const AGG: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

fn meta(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    json!({"name": name, "labels": l, "annotations": {AUTOUPDATE: "true"}})
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name, labels), "rules": rules})
}

fn aggregated(name: &str, labels: &[(&str, &str)], to: &str) -> Value {
    let mut r = cluster_role(name, labels, Vec::new());
    r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {format!("{AGG}{to}"): "true"}}]});
    r
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, n)| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": n}))
        .collect();
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(name, &[]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": subjects})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// What `view` grants: reading everything in a namespace except Secrets (and RBAC).
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
                "namespaces",
            ],
            READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
        rule(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
        rule(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
        rule(&["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"], READ),
    ]
}

/// What `edit` adds: changing workloads, Secrets and Services, exec and port-forward; not RBAC or quotas.
fn edit_rules() -> Vec<Value> {
    vec![
        rule(&[""], &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"], READ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &[""],
            &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
            &["create", "delete", "deletecollection", "patch", "update"],
        ),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
        rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
        rule(&["coordination.k8s.io"], &["leases"], ALL_VERBS),
    ]
}

/// What `admin` adds: RBAC within the namespace, and access reviews.
fn admin_rules() -> Vec<Value> {
    vec![
        rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
        rule(&["rbac.authorization.k8s.io"], &["rolebindings", "roles"], ALL_VERBS),
    ]
}

/// What Skiff's node agents need: their Node and Lease, the pods bound to them and their status, what those pods
/// mount, the Service tables of the load balancer and DNS, the DNS EndpointSlice, local volumes, events.
fn node_rules() -> Vec<Value> {
    vec![
        rule(&[""], &["nodes"], &["create", "get", "list", "watch", "patch", "update", "delete"]),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(&[""], &["pods"], &["get", "list", "watch", "create", "delete"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(&[""], &["services", "endpoints", "namespaces"], READ),
        // Secrets and ConfigMaps: the node authorizer, for the objects of the node's own pods only
        rule(
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
            &["get", "list", "watch", "create", "patch", "update"],
        ),
        rule(&[""], &["persistentvolumeclaims/status"], &["patch", "update"]),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
        rule(&["coordination.k8s.io"], &["leases"], &["get", "create", "update", "patch", "delete"]),
        rule(&["discovery.k8s.io"], &["endpointslices"], &["get", "list", "watch", "create", "patch", "update"]),
        rule(&["networking.k8s.io"], &["networkpolicies", "ingresses", "ingressclasses"], READ),
        rule(&["storage.k8s.io"], &["csidrivers", "storageclasses"], READ),
        // the node endpoint asks the API server about its callers, as kubelet's delegated authorization does
        rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        // renewing its own client certificate
        rule(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"]),
    ]
}

const DISCOVERY: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/readyz",
    "/openapi",
    "/openapi/*",
    "/version",
    "/version/",
];

/// Every default ClusterRole and ClusterRoleBinding, as objects to create.
pub fn objects() -> Vec<Value> {
    vec![
        cluster_role("cluster-admin", &[], vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        aggregated("admin", &[], "admin"),
        aggregated("edit", &[(&format!("{AGG}admin"), "true")], "edit"),
        aggregated("view", &[(&format!("{AGG}edit"), "true")], "view"),
        cluster_role("system:aggregate-to-admin", &[(&format!("{AGG}admin"), "true")], admin_rules()),
        cluster_role("system:aggregate-to-edit", &[(&format!("{AGG}edit"), "true")], edit_rules()),
        cluster_role("system:aggregate-to-view", &[(&format!("{AGG}view"), "true")], view_rules()),
        cluster_role(
            "system:aggregated-metrics-reader",
            &[(&format!("{AGG}view"), "true"), (&format!("{AGG}edit"), "true"), (&format!("{AGG}admin"), "true")],
            vec![rule(&["metrics.k8s.io"], &["pods", "nodes"], READ)],
        ),
        cluster_role("system:discovery", &[], vec![urls(DISCOVERY, &["get"])]),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(&["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(&["/healthz", "/livez", "/readyz", "/version", "/version/"], &["get"])],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![urls(&["/healthz", "/healthz/*", "/livez", "/livez/*", "/readyz", "/readyz/*", "/metrics"], &["get"])],
        ),
        cluster_role("system:node", &[], node_rules()),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"])],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests/nodeclient"], &["create"])],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests/selfnodeclient"], &["create"])],
        ),
        binding("cluster-admin", "cluster-admin", &[("Group", "system:masters")]),
        binding("system:discovery", "system:discovery", &[("Group", "system:authenticated")]),
        binding("system:basic-user", "system:basic-user", &[("Group", "system:authenticated")]),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[("Group", "system:authenticated"), ("Group", "system:unauthenticated")],
        ),
        binding("system:monitoring", "system:monitoring", &[("Group", "system:monitoring")]),
        binding("system:node", "system:node", &[("Group", "system:nodes")]),
        // the join token's group may ask for a node certificate, which is then approved (kubeadm's bindings)
        binding("system:node-bootstrapper", "system:node-bootstrapper", &[("Group", "system:bootstrappers")]),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", "system:nodes")],
        ),
    ]
}

/// What reconciling one default object needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconcile {
    /// It is missing: create it.
    Create(Value),
    /// It lacks rules, subjects, labels or its aggregation rule: update it to this.
    Update(Value),
    /// Its `roleRef` differs (which is immutable): delete and create it.
    Recreate(Value),
}

fn array_union(existing: &mut Value, desired: &Value, field: &str) -> bool {
    let want = desired.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
    let have = existing.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut merged = have.clone();
    for w in want {
        let covered = match field {
            "rules" => Rule::from_value(&w).is_some_and(|w| {
                w.atoms().iter().all(|a| have.iter().filter_map(Rule::from_value).any(|h| h.covers(a)))
            }),
            _ => have.iter().any(|h| h.get("kind") == w.get("kind") && h.get("name") == w.get("name")),
        };
        if !covered {
            merged.push(w);
        }
    }
    let changed = merged.len() != have.len();
    if changed {
        existing[field] = Value::Array(merged);
    }
    changed
}

/// How to bring `existing` in line with the default `desired` (`None`: nothing to do).
pub fn reconcile(desired: &Value, existing: Option<&Value>) -> Option<Reconcile> {
    let Some(existing) = existing else { return Some(Reconcile::Create(desired.clone())) };
    if existing.pointer(&format!("/metadata/annotations/{}", AUTOUPDATE.replace('/', "~1"))) == Some(&json!("false")) {
        return None;
    }
    if existing.get("roleRef").is_some() && existing.get("roleRef") != desired.get("roleRef") {
        return Some(Reconcile::Recreate(desired.clone()));
    }
    let mut out = existing.clone();
    let mut changed = false;
    if let Some(labels) = desired.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if out.pointer("/metadata/labels").and_then(|l| l.get(k)) != Some(v) {
                if !out["metadata"].get("labels").is_some_and(Value::is_object) {
                    out["metadata"]["labels"] = json!({});
                }
                out["metadata"]["labels"][k] = v.clone();
                changed = true;
            }
        }
    }
    match desired.get("kind").and_then(Value::as_str) {
        Some("ClusterRole") if desired.get("aggregationRule").is_some() => {
            if out.get("aggregationRule") != desired.get("aggregationRule") {
                out["aggregationRule"] = desired["aggregationRule"].clone();
                changed = true;
            }
        }
        Some("ClusterRole") => changed |= array_union(&mut out, desired, "rules"),
        _ => changed |= array_union(&mut out, desired, "subjects"),
    }
    changed.then_some(Reconcile::Update(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
        objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name).expect("a default")
    }

    #[test]
    fn defaults_name_the_upstream_roles_and_parse() {
        let objects = objects();
        for name in [
            "cluster-admin",
            "admin",
            "edit",
            "view",
            "system:basic-user",
            "system:discovery",
            "system:public-info-viewer",
            "system:node",
        ] {
            named(&objects, "ClusterRole", name);
        }
        for o in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
            let n = o["rules"].as_array().expect("rules").len();
            assert_eq!(Rule::list_of(o).len(), n, "every rule of {} parses", o["metadata"]["name"]);
        }
        let view = Rule::list_of(named(&objects, "ClusterRole", "system:aggregate-to-view"));
        assert!(!view.iter().any(|r| r.resources.iter().any(|x| x == "secrets")), "view never reads Secrets");
    }

    #[test]
    fn reconcile_creates_adds_and_respects_autoupdate_false() {
        let objects = objects();
        let desired = named(&objects, "ClusterRole", "system:basic-user");
        assert_eq!(reconcile(desired, None), Some(Reconcile::Create(desired.clone())));
        assert_eq!(reconcile(desired, Some(desired)), None);
        let mut trimmed = desired.clone();
        trimmed["rules"].as_array_mut().expect("rules").pop();
        trimmed["rules"].as_array_mut().expect("rules").push(rule(&["x.io"], &["things"], &["get"]));
        let Some(Reconcile::Update(updated)) = reconcile(desired, Some(&trimmed)) else { panic!("an update") };
        assert_eq!(updated["rules"].as_array().expect("rules").len(), 3, "kept the user's rule, added the missing one");
        let mut frozen = trimmed.clone();
        frozen["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        assert_eq!(reconcile(desired, Some(&frozen)), None);

        let b = named(&objects, "ClusterRoleBinding", "system:discovery");
        let mut no_subjects = b.clone();
        no_subjects["subjects"] = json!([{"kind": "User", "name": "extra"}]);
        let Some(Reconcile::Update(u)) = reconcile(b, Some(&no_subjects)) else { panic!("an update") };
        assert_eq!(u["subjects"].as_array().expect("subjects").len(), 2);
        let mut other_role = b.clone();
        other_role["roleRef"]["name"] = json!("view");
        assert_eq!(reconcile(b, Some(&other_role)), Some(Reconcile::Recreate(b.clone())));
    }
}

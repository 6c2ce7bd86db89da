//! The RBAC authorizer: a pure function of the policy, the user and the request.

use super::attributes::Attributes;
use super::policy::Policy;
use super::rule::Rule;
use crate::apiserver::auth::User;

/// Members of this group may do everything, whatever the policy says (as Kubernetes' privileged-group authorizer).
pub const SUPERUSER_GROUP: &str = "system:masters";

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Why (the grant that allowed it); empty for a denial, as RBAC words it.
    pub reason: String,
}

/// Whether `user` may do what `attrs` describe.
pub fn decide(policy: &Policy, user: &User, attrs: &Attributes) -> Decision {
    if user.groups.iter().any(|g| g == SUPERUSER_GROUP) {
        return Decision { allowed: true, reason: format!("member of the {SUPERUSER_GROUP} group") };
    }
    let namespace = match attrs {
        Attributes::Resource { namespace, .. } => namespace.as_str(),
        Attributes::NonResource { .. } => "",
    };
    let mut reason = None;
    policy.visit(user, namespace, |why, rule| {
        if rule.allows(attrs) {
            reason = Some(format!("RBAC: allowed by {why}"));
            return false;
        }
        true
    });
    match reason {
        Some(reason) => Decision { allowed: true, reason },
        None => Decision { allowed: false, reason: String::new() },
    }
}

/// Every rule granted to `user` in `namespace` (cluster-wide grants included), in binding order.
pub fn rules(policy: &Policy, user: &User, namespace: &str) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    policy.visit(user, namespace, |_, r| {
        if !out.contains(r) {
            out.push(r.clone());
        }
        true
    });
    out
}

/// The sentence of a 403, as Kubernetes' `forbiddenMessage` words it.
pub fn forbidden_message(user: &User, attrs: &Attributes) -> String {
    match attrs {
        Attributes::NonResource { verb, path } => format!("User {:?} cannot {verb} path {path:?}", user.name),
        Attributes::Resource { verb, group, resource, subresource, namespace, .. } => {
            let resource = if subresource.is_empty() { resource.clone() } else { format!("{resource}/{subresource}") };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {namespace:?}")
            };
            format!("User {:?} cannot {verb} resource {resource:?} in API group {group:?} {scope}", user.name)
        }
    }
}

/// The rules of `requested` that `user` does not hold in `namespace` (`""`: cluster-wide), as atomic rules.
/// Empty when the user could grant all of them (the RBAC escalation check).
pub fn not_held(policy: &Policy, user: &User, namespace: &str, requested: &[Rule]) -> Vec<Rule> {
    if user.groups.iter().any(|g| g == SUPERUSER_GROUP) {
        return Vec::new();
    }
    let owned = rules(policy, user, namespace);
    requested.iter().flat_map(Rule::atoms).filter(|atom| !owned.iter().any(|o| o.covers(atom))).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    fn policy() -> Policy {
        let objects = [
            json!({"kind": "ClusterRole", "metadata": {"name": "view"}, "rules": [
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "secret-a"}, "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"], "verbs": ["get"]}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "health"}, "rules": [
                {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]}),
            json!({"kind": "Role", "metadata": {"name": "deployer", "namespace": "team"}, "rules": [
                {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": ["*"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "ci", "namespace": "team"},
                "roleRef": {"kind": "Role", "name": "deployer"},
                "subjects": [{"kind": "ServiceAccount", "name": "ci"}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "viewers", "namespace": "team"},
                "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "Group", "name": "devs"}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "one-secret", "namespace": "team"},
                "roleRef": {"kind": "ClusterRole", "name": "secret-a"},
                "subjects": [{"kind": "User", "name": "alice"}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "health"},
                "roleRef": {"kind": "ClusterRole", "name": "health"},
                "subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
            // a ClusterRoleBinding cannot grant a Role, and a binding to a missing role grants nothing
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "bad"},
                "roleRef": {"kind": "Role", "name": "deployer"}, "subjects": [{"kind": "User", "name": "mallory"}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "dangling", "namespace": "team"},
                "roleRef": {"kind": "ClusterRole", "name": "gone"}, "subjects": [{"kind": "User", "name": "mallory"}]}),
        ];
        Policy::from_objects(objects.iter())
    }

    use Attributes as A;

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        A::subresource(verb, group, resource, sub, ns, name)
    }

    #[test]
    fn decisions() {
        let p = policy();
        let ci = user("system:serviceaccount:team:ci", &["system:serviceaccounts", "system:authenticated"]);
        let other_ci = user("system:serviceaccount:other:ci", &["system:authenticated"]);
        let dev = user("bob", &["devs", "system:authenticated"]);
        let alice = user("alice", &["system:authenticated"]);
        let mallory = user("mallory", &["system:authenticated"]);
        let admin = user("root", &["system:masters"]);
        let cases = [
            (&ci, res("create", "apps", "deployments", "", "team", ""), true),
            (&ci, res("update", "apps", "deployments", "scale", "team", "w"), true),
            (&ci, res("create", "apps", "deployments", "", "prod", ""), false),
            (&ci, res("list", "apps", "deployments", "", "", ""), false),
            (&ci, res("list", "", "pods", "", "team", ""), false),
            (&other_ci, res("create", "apps", "deployments", "", "team", ""), false),
            (&dev, res("list", "", "pods", "", "team", ""), true),
            (&dev, res("get", "", "pods", "log", "team", "p"), true),
            (&dev, res("list", "", "pods", "", "", ""), false),
            (&dev, res("get", "", "secrets", "", "team", "a"), false),
            (&alice, res("get", "", "secrets", "", "team", "a"), true),
            (&alice, res("get", "", "secrets", "", "team", "b"), false),
            (&alice, res("list", "", "secrets", "", "team", ""), false),
            (&mallory, res("create", "apps", "deployments", "", "team", ""), false),
            (&mallory, res("get", "", "secrets", "", "team", "a"), false),
            (&admin, res("delete", "", "nodes", "", "", "n1"), true),
            (&dev, Attributes::NonResource { verb: "get".into(), path: "/healthz".into() }, true),
            (&dev, Attributes::NonResource { verb: "get".into(), path: "/metrics".into() }, false),
        ];
        for (i, (u, a, want)) in cases.iter().enumerate() {
            assert_eq!(decide(&p, u, a).allowed, *want, "case {i}: {} {a:?}", u.name);
        }
        let d = decide(&p, &dev, &res("list", "", "pods", "", "team", ""));
        assert_eq!(d.reason, r#"RBAC: allowed by RoleBinding "team/viewers" of ClusterRole "view" to Group "devs""#);
    }

    #[test]
    fn rules_list_grants_in_a_namespace() {
        let p = policy();
        let dev = user("bob", &["devs", "system:authenticated"]);
        assert_eq!(rules(&p, &dev, "team").len(), 2, "view and the health check");
        assert_eq!(rules(&p, &dev, "prod").len(), 1, "only the cluster-wide grant");
    }

    #[test]
    fn forbidden_messages_are_upstreams() {
        let u = user("system:serviceaccount:team:ci", &[]);
        assert_eq!(
            forbidden_message(&u, &res("list", "", "secrets", "", "", "")),
            r#"User "system:serviceaccount:team:ci" cannot list resource "secrets" in API group "" at the cluster scope"#
        );
        assert_eq!(
            forbidden_message(&u, &res("create", "", "pods", "exec", "team", "p")),
            r#"User "system:serviceaccount:team:ci" cannot create resource "pods/exec" in API group "" in the namespace "team""#
        );
        assert_eq!(
            forbidden_message(&u, &Attributes::NonResource { verb: "get".into(), path: "/metrics".into() }),
            r#"User "system:serviceaccount:team:ci" cannot get path "/metrics""#
        );
    }

    #[test]
    fn escalation_lists_what_is_not_held() {
        let p = policy();
        let dev = user("bob", &["devs", "system:authenticated"]);
        let want = |json: serde_json::Value| Rule::from_value(&json).expect("a rule");
        let pods = want(json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}));
        assert!(not_held(&p, &dev, "team", std::slice::from_ref(&pods)).is_empty());
        assert_eq!(not_held(&p, &dev, "prod", std::slice::from_ref(&pods)).len(), 2);
        let secrets = want(json!({"apiGroups": [""], "resources": ["secrets", "pods"], "verbs": ["get"]}));
        let missing = not_held(&p, &dev, "team", &[secrets]);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].to_string(), r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#);
        assert!(
            not_held(
                &p,
                &user("root", &["system:masters"]),
                "",
                &[want(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}))]
            )
            .is_empty()
        );
    }
}

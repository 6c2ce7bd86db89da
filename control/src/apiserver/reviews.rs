//! The review resources: objects that are only ever created, answered and never stored.
//!
//! - `authentication.k8s.io/v1` SelfSubjectReview: who am I (`kubectl auth whoami`);
//! - `authorization.k8s.io/v1` SelfSubjectAccessReview, SubjectAccessReview, LocalSubjectAccessReview: may this
//!   user do this (`kubectl auth can-i`);
//! - `authorization.k8s.io/v1` SelfSubjectRulesReview: everything I may do in a namespace (`kubectl auth can-i --list`).
//!
//! Each answer echoes the request with `status` filled in from [`super::authz`], as the real API server does.

use serde_json::{Value, json};
use skiff_api::registry::ResourceInfo;

use super::auth::User;
use super::error::{ApiError, ApiResult};
use crate::rbac::{self, Attributes, Policy, Rule};

/// The kinds answered here, by (group, plural).
pub fn is_review(info: &ResourceInfo) -> bool {
    matches!(
        (info.group.as_str(), info.plural.as_str()),
        ("authentication.k8s.io", "selfsubjectreviews")
            | (
                "authorization.k8s.io",
                "selfsubjectaccessreviews"
                    | "subjectaccessreviews"
                    | "localsubjectaccessreviews"
                    | "selfsubjectrulesreviews"
            )
    )
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn text(v: &Value, pointer: &str) -> String {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// The attributes in a SubjectAccessReviewSpec (`resourceAttributes` or `nonResourceAttributes`).
fn attributes(spec: &Value) -> ApiResult<Attributes> {
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes::Resource {
            verb: text(r, "/verb"),
            group: text(r, "/group"),
            resource: text(r, "/resource"),
            subresource: text(r, "/subresource"),
            namespace: text(r, "/namespace"),
            name: text(r, "/name"),
        });
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes::NonResource { verb: text(n, "/verb"), path: text(n, "/path") });
    }
    Err(ApiError::unprocessable("exactly one of nonResourceAttributes or resourceAttributes must be specified"))
}

fn rules_status(rules: &[Rule]) -> Value {
    let (mut resource, mut non_resource) = (Vec::new(), Vec::new());
    for r in rules {
        if r.non_resource_urls.is_empty() {
            let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            resource.push(v);
        } else {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false})
}

/// Answers a review created by `user` at `namespace` (LocalSubjectAccessReview only).
pub fn answer(
    info: &ResourceInfo,
    user: &User,
    namespace: Option<&str>,
    mut obj: Value,
    policy: &Policy,
) -> ApiResult<Value> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind != info.kind {
        return Err(ApiError::bad_request(format!("the body is a {kind:?}, not a {}", info.kind)));
    }
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match info.plural.as_str() {
        "selfsubjectreviews" => json!({"userInfo": {"username": user.name, "groups": user.groups}}),
        "selfsubjectaccessreviews" => {
            let d = rbac::decide(policy, user, &attributes(&spec)?);
            json!({"allowed": d.allowed, "reason": d.reason})
        }
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let subject = User { name: text(&spec, "/user"), groups: strings(spec.get("groups")) };
            if subject.name.is_empty() && subject.groups.is_empty() {
                return Err(ApiError::unprocessable("at least one of user or group must be specified"));
            }
            let attrs = attributes(&spec)?;
            if let (Some(ns), Attributes::Resource { namespace, .. }) = (namespace, &attrs)
                && namespace != ns
            {
                return Err(ApiError::unprocessable(format!(
                    "spec.resourceAttributes.namespace must match metadata.namespace ({ns})"
                )));
            }
            let d = rbac::decide(policy, &subject, &attrs);
            json!({"allowed": d.allowed, "reason": d.reason})
        }
        "selfsubjectrulesreviews" => {
            let ns = text(&spec, "/namespace");
            rules_status(&rbac::rules(policy, user, &ns))
        }
        other => return Err(ApiError::no_route(other)),
    };
    obj["status"] = status;
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(group: &str, kind: &str, plural: &str) -> ResourceInfo {
        skiff_api::registry::Registry::with_builtins()
            .all()
            .iter()
            .find(|r| r.group == group && r.plural == plural && r.kind == kind)
            .map(|r| (**r).clone())
            .expect("a served review resource")
    }

    /// alice may read pods in `default`; everyone may check their own access.
    fn policy() -> Policy {
        let objects = [
            json!({"kind": "Role", "metadata": {"name": "pods", "namespace": "default"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "alice", "namespace": "default"},
                "roleRef": {"kind": "Role", "name": "pods"}, "subjects": [{"kind": "User", "name": "alice"}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "self"},
                "rules": [{"nonResourceURLs": ["/version"], "verbs": ["get"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "self"},
                "roleRef": {"kind": "ClusterRole", "name": "self"}, "subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
        ];
        Policy::from_objects(objects.iter())
    }

    fn alice() -> User {
        User { name: "alice".into(), groups: vec!["dev".into(), "system:authenticated".into()] }
    }

    #[test]
    fn whoami_answers_with_the_callers_identity() {
        let i = info("authentication.k8s.io", "SelfSubjectReview", "selfsubjectreviews");
        let req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {}});
        let out = answer(&i, &alice(), None, req, &policy()).expect("answered");
        assert_eq!(out["status"]["userInfo"], json!({"username": "alice", "groups": ["dev", "system:authenticated"]}));
    }

    #[test]
    fn access_reviews_need_exactly_the_attributes_kubernetes_needs() {
        let i = info("authorization.k8s.io", "SelfSubjectAccessReview", "selfsubjectaccessreviews");
        let ask = |ns: &str, resource: &str| {
            let req = json!({"kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"verb": "get", "resource": resource, "namespace": ns}}});
            answer(&i, &alice(), None, req, &policy()).expect("answered")["status"].clone()
        };
        let yes = ask("default", "pods");
        assert_eq!(yes["allowed"], true);
        assert_eq!(yes["reason"], r#"RBAC: allowed by RoleBinding "default/alice" of Role "pods" to User "alice""#);
        assert_eq!(ask("other", "pods")["allowed"], false);
        assert_eq!(ask("default", "secrets")["allowed"], false);
        let bad = json!({"kind": "SelfSubjectAccessReview", "spec": {}});
        assert_eq!(answer(&i, &alice(), None, bad, &policy()).expect_err("no attributes").code, 422);
        let wrong = json!({"kind": "SubjectAccessReview", "spec": {}});
        assert_eq!(answer(&i, &alice(), None, wrong, &policy()).expect_err("wrong kind").code, 400);
        let s = info("authorization.k8s.io", "SubjectAccessReview", "subjectaccessreviews");
        let nobody = json!({"kind": "SubjectAccessReview", "spec": {"resourceAttributes": {"verb": "get"}}});
        assert_eq!(answer(&s, &alice(), None, nobody, &policy()).expect_err("no subject").code, 422);
    }

    #[test]
    fn rules_reviews_list_rules_in_kubernetes_shape() {
        let i = info("authorization.k8s.io", "SelfSubjectRulesReview", "selfsubjectrulesreviews");
        let req = json!({"kind": "SelfSubjectRulesReview", "spec": {"namespace": "default"}});
        let out = answer(&i, &alice(), None, req, &policy()).expect("answered");
        assert_eq!(
            out["status"]["resourceRules"],
            json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}])
        );
        assert_eq!(out["status"]["nonResourceRules"], json!([{"verbs": ["get"], "nonResourceURLs": ["/version"]}]));
        assert_eq!(out["status"]["incomplete"], false);
    }
}

//! Authorization decisions: who may do what. Every review resource (`kubectl auth can-i`, SubjectAccessReview)
//! asks this module, so its answers are the server's own.
//!
//! # Caveats
//! RBAC is not enforced yet (issue 14): every authenticated user may do everything, and this module says so — in
//! the `reason` of each decision — rather than pretending otherwise. The RBAC authorizer replaces [`decide`] and
//! [`rules`] without changing their callers.

use super::auth::User;

/// What a request would do, as Kubernetes' authorizers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    /// A request on a resource.
    Resource {
        /// `get`, `list`, `create`, …
        verb: String,
        /// The API group (`""` for core).
        group: String,
        /// The resource (`pods`).
        resource: String,
        /// The subresource (`log`), if any.
        subresource: String,
        /// The namespace (`""` for all or for cluster-scoped resources).
        namespace: String,
        /// The object's name (`""` for all).
        name: String,
    },
    /// A request on a path outside the resource API (`/healthz`, `/version`).
    NonResource {
        /// `get`, `post`, …
        verb: String,
        /// The path.
        path: String,
    },
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Why, in words.
    pub reason: String,
}

const NO_RBAC: &str = "RBAC is not enforced yet: every authenticated user may do everything";

/// Whether `user` may do what `attrs` describe.
pub fn decide(user: &User, attrs: &Attributes) -> Decision {
    let _ = (user, attrs);
    Decision { allowed: true, reason: NO_RBAC.to_string() }
}

/// One rule of what a user may do (the shape of SelfSubjectRulesReview's `resourceRules`/`nonResourceRules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Verbs on resources of API groups, optionally limited to some names.
    Resource {
        /// Verbs (`*` for all).
        verbs: Vec<String>,
        /// API groups (`*` for all).
        groups: Vec<String>,
        /// Resources (`*` for all).
        resources: Vec<String>,
        /// Names (empty for all).
        names: Vec<String>,
    },
    /// Verbs on non-resource paths.
    NonResource {
        /// Verbs (`*` for all).
        verbs: Vec<String>,
        /// Paths (`*` for all).
        urls: Vec<String>,
    },
}

/// Everything `user` may do in `namespace`.
pub fn rules(user: &User, namespace: &str) -> Vec<Rule> {
    let _ = (user, namespace);
    let all = || vec!["*".to_string()];
    vec![
        Rule::Resource { verbs: all(), groups: all(), resources: all(), names: Vec::new() },
        Rule::NonResource { verbs: all(), urls: all() },
    ]
}

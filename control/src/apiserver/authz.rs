//! Authorization as the API server applies it: a cached [`Policy`] (re-read after any RBAC write through this
//! server, and at least every second so that writes through other servers are seen), the check of every request
//! before it reaches a handler, impersonation, and the RBAC escalation check of Role and binding writes. The
//! decisions themselves are pure functions in [`crate::rbac`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use skiff_api::registry::ResourceInfo;
use skiff_api::selector::Selector;

use super::Api;
use super::auth::User;
use super::error::{ApiError, ApiResult};
use crate::rbac::{self, Attributes, Policy, Rule};

/// The API group of the RBAC kinds.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const RBAC_KINDS: [&str; 4] = ["clusterroles", "roles", "clusterrolebindings", "rolebindings"];
/// How old a cached policy may be before it is read again.
const MAX_AGE: Duration = Duration::from_secs(1);

struct Cached {
    policy: Arc<Policy>,
    generation: u64,
    loaded: Instant,
}

/// The authorizer's cached view of the RBAC objects.
pub struct Authz {
    current: ArcSwap<Cached>,
    generation: AtomicU64,
    reload: tokio::sync::Mutex<()>,
    /// Node authorizer decisions of the last second, by (node, resource, namespace, name): a node retrying a read
    /// does not make the server read every pod of the namespace each time.
    node_graph: std::sync::Mutex<std::collections::HashMap<GraphKey, (bool, Instant)>>,
}

/// (node, resource, namespace, name).
type GraphKey = (String, String, String, String);

/// How long a node authorizer decision is reused (a pod bound or unbound takes at most this long to count).
const NODE_GRAPH_FOR: Duration = Duration::from_secs(1);

/// Node authorizer decisions kept at most (all are dropped when full).
const NODE_GRAPH_ENTRIES: usize = 10_000;

impl Default for Authz {
    fn default() -> Self {
        Authz {
            current: ArcSwap::from_pointee(Cached {
                policy: Arc::new(Policy::default()),
                generation: u64::MAX,
                loaded: Instant::now(),
            }),
            generation: AtomicU64::new(0),
            reload: tokio::sync::Mutex::new(()),
            node_graph: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl Authz {
    /// Marks the cached policy stale (after an RBAC write).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn fresh(&self) -> Option<Arc<Policy>> {
        let c = self.current.load();
        (c.generation == self.generation.load(Ordering::SeqCst) && c.loaded.elapsed() < MAX_AGE)
            .then(|| c.policy.clone())
    }
}

/// The `Forbidden` Status of a denied request, worded as Kubernetes does.
pub fn forbidden(user: &User, attrs: &Attributes, reason: &str) -> ApiError {
    let mut msg = rbac::forbidden_message(user, attrs);
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    match attrs {
        Attributes::NonResource { .. } => ApiError::forbidden(format!("forbidden: {msg}")),
        Attributes::Resource { group, resource, name, .. } => {
            let qualified = if group.is_empty() { resource.clone() } else { format!("{resource}.{group}") };
            let subject = if name.is_empty() { qualified } else { format!("{qualified} \"{name}\"") };
            let mut e = ApiError::forbidden(format!("{subject} is forbidden: {msg}"));
            e.details = Some(json!({"name": name, "group": group, "kind": resource}));
            e
        }
    }
}

const IMPERSONATE_USER: &str = "impersonate-user";
const IMPERSONATE_GROUP: &str = "impersonate-group";
const IMPERSONATE_UID: &str = "impersonate-uid";
const IMPERSONATE_EXTRA: &str = "impersonate-extra-";

/// What impersonation headers ask for, and the checks each needs (`impersonate` on users, groups, service
/// accounts, uids or user extras), as Kubernetes' impersonation filter does.
pub fn impersonation_checks(headers: &HeaderMap) -> ApiResult<Option<(User, Vec<Attributes>)>> {
    let values = |name: &str| -> Vec<String> {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect()
    };
    let user = values(IMPERSONATE_USER).into_iter().next();
    let groups = values(IMPERSONATE_GROUP);
    let uid = values(IMPERSONATE_UID).into_iter().next();
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix(IMPERSONATE_EXTRA)?;
            Some((key.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    let Some(name) = user else {
        if groups.is_empty() && uid.is_none() && extras.is_empty() {
            return Ok(None);
        }
        return Err(ApiError::bad_request(format!(
            "requested {:?} without impersonating a user",
            groups.iter().chain(uid.iter()).collect::<Vec<_>>()
        )));
    };
    let mut checks = Vec::new();
    let mut result_groups = groups.clone();
    // a well-formed service-account name is checked as that account; anything else as a user
    let account = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
    if let Some((ns, sa)) = account {
        checks.push(Attributes::resource("impersonate", "", "serviceaccounts", ns, sa));
        if groups.is_empty() {
            result_groups = vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}")];
        }
    } else {
        checks.push(Attributes::resource("impersonate", "", "users", "", &name));
    }
    for g in &groups {
        checks.push(Attributes::resource("impersonate", "", "groups", "", g));
    }
    if let Some(u) = &uid {
        checks.push(Attributes::resource("impersonate", "authentication.k8s.io", "uids", "", u));
    }
    for (key, value) in &extras {
        checks.push(Attributes::Resource {
            verb: "impersonate".into(),
            group: "authentication.k8s.io".into(),
            resource: "userextras".into(),
            subresource: key.clone(),
            namespace: String::new(),
            name: value.clone(),
        });
    }
    let implied = if name == "system:anonymous" { "system:unauthenticated" } else { "system:authenticated" };
    if !result_groups.iter().any(|g| g == implied) {
        result_groups.push(implied.into());
    }
    Ok(Some((User { name, groups: result_groups }, checks)))
}

impl Api {
    /// The current RBAC policy (read again when an RBAC write made it stale, or after a second).
    pub async fn policy(&self) -> ApiResult<Arc<Policy>> {
        if let Some(p) = self.authz.fresh() {
            return Ok(p);
        }
        let _one_reader = self.authz.reload.lock().await;
        if let Some(p) = self.authz.fresh() {
            return Ok(p);
        }
        let generation = self.authz.generation.load(Ordering::SeqCst);
        let mut objects = Vec::new();
        for plural in RBAC_KINDS {
            objects.extend(self.list_all(&self.builtin(RBAC_GROUP, plural), None, Selector::everything()).await?);
        }
        let policy = Arc::new(Policy::from_objects(objects.iter()));
        self.authz.current.store(Arc::new(Cached { policy: policy.clone(), generation, loaded: Instant::now() }));
        Ok(policy)
    }

    /// Authorizes a request of `user` (after impersonation, which it also authorizes): the user the request runs
    /// as, or the 403 to answer.
    pub async fn authorize(&self, user: User, headers: &HeaderMap, attrs: &Attributes) -> ApiResult<User> {
        let policy = self.policy().await?;
        let user = match impersonation_checks(headers)? {
            None => user,
            Some((target, checks)) => {
                for check in &checks {
                    if !rbac::decide(&policy, &user, check).allowed {
                        return Err(forbidden(&user, check, ""));
                    }
                }
                target
            }
        };
        if let Some(verdict) = self.node_graph(&user, attrs).await? {
            return match verdict {
                Ok(()) => Ok(user),
                Err(reason) => Err(forbidden(&user, attrs, &reason)),
            };
        }
        let d = rbac::decide(&policy, &user, attrs);
        if d.allowed { Ok(user) } else { Err(forbidden(&user, attrs, &d.reason)) }
    }

    /// The node authorizer (kube-apiserver's `Node` mode): a node (`system:node:NAME` in `system:nodes`) reads a
    /// Secret or ConfigMap only if a pod bound to it refers to it ([`skiff_api::references`]), one object at a time
    /// (get, or a list/watch of it by name), and never writes one. `None`: not this authorizer's question.
    async fn node_graph(&self, user: &User, attrs: &Attributes) -> ApiResult<Option<Result<(), String>>> {
        let Attributes::Resource { verb, group, resource, subresource, namespace, name } = attrs else {
            return Ok(None);
        };
        let watched =
            group.is_empty() && subresource.is_empty() && matches!(resource.as_str(), "secrets" | "configmaps");
        let is_node = user.groups.iter().any(|g| g == crate::certificates::NODES_GROUP);
        if !watched || !is_node {
            return Ok(None);
        }
        let Some(node) = super::noderestriction::node_name(user) else {
            return Ok(Some(Err("a node without a name has no relationship with any object".into())));
        };
        let refusal = || format!("no relationship found between node '{node}' and this object");
        if !matches!(verb.as_str(), "get" | "list" | "watch") || name.is_empty() || namespace.is_empty() {
            return Ok(Some(Err(refusal())));
        }
        let key = (node.to_string(), resource.clone(), namespace.clone(), name.clone());
        let cached = {
            let cache = self.authz.node_graph.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(&key).filter(|(_, at)| at.elapsed() < NODE_GRAPH_FOR).map(|(related, _)| *related)
        };
        if let Some(related) = cached {
            return Ok(Some(if related { Ok(()) } else { Err(refusal()) }));
        }
        let pods = self.builtin("", "pods");
        let bound = self.list_all(&pods, Some(namespace), Selector::everything()).await?;
        let related = bound
            .iter()
            .filter(|p| p.pointer("/spec/nodeName").and_then(serde_json::Value::as_str) == Some(node))
            .any(|p| {
                let r = skiff_api::references::of_pod(p);
                if resource == "secrets" { r.secrets.contains(name) } else { r.config_maps.contains(name) }
            });
        {
            let mut cache = self.authz.node_graph.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= NODE_GRAPH_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (related, Instant::now()));
        }
        Ok(Some(if related { Ok(()) } else { Err(refusal()) }))
    }

    /// An update or apply that would create the object needs `create` too (as upstream's
    /// `createAuthorizerAttributes`): `patch` or `update` alone never creates.
    pub(crate) async fn authorize_implicit_create(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &super::writes::WriteOptions,
    ) -> ApiResult<()> {
        let Some(user) = opts.user.as_ref() else { return Ok(()) };
        let attrs = Attributes::resource("create", &info.group, &info.plural, ns.unwrap_or_default(), name);
        let d = rbac::decide(&*self.policy().await?, user, &attrs);
        if d.allowed { Ok(()) } else { Err(forbidden(user, &attrs, &d.reason)) }
    }

    /// The RBAC escalation check of a write of a Role, ClusterRole or binding by `user`: the rules it grants must
    /// be held by the user (in its namespace, or cluster-wide), unless the user may `escalate` (roles) or `bind`
    /// (the role a binding refers to).
    pub(crate) async fn admit_rbac(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        new: &Value,
        old: Option<&Value>,
        user: Option<&User>,
    ) -> ApiResult<()> {
        if info.group != RBAC_GROUP {
            return Ok(());
        }
        if let Some(old) = old
            && old.get("roleRef").is_some()
            && old.get("roleRef") != new.get("roleRef")
        {
            return Err(ApiError::unprocessable(format!(
                "{} {:?} is invalid: roleRef: Invalid value: {}: cannot change roleRef",
                info.kind,
                skiff_api::meta::name(new),
                new.get("roleRef").cloned().unwrap_or_default()
            )));
        }
        let Some(user) = user else { return Ok(()) };
        let policy = self.policy().await?;
        let namespace = ns.unwrap_or_default();
        let name = skiff_api::meta::name(new);
        let (requested, special) = match info.plural.as_str() {
            "roles" | "clusterroles" => {
                let mut rules = Rule::list_of(new);
                // an aggregation rule can gather any rule of any ClusterRole: setting or changing one takes holding
                // everything (as upstream: "must have cluster-admin privileges to use the aggregationRule")
                let aggregation = new.get("aggregationRule");
                if aggregation.is_some_and(|a| !a.is_null())
                    && old.and_then(|o| o.get("aggregationRule")) != aggregation
                {
                    let all = || vec![rbac::rule::ALL.to_string()];
                    rules.push(Rule { verbs: all(), api_groups: all(), resources: all(), ..Rule::default() });
                    rules.push(Rule { verbs: all(), non_resource_urls: all(), ..Rule::default() });
                }
                (rules, Attributes::resource("escalate", RBAC_GROUP, &info.plural, namespace, name))
            }
            "rolebindings" | "clusterrolebindings" => {
                let role_ref: rbac::policy::RoleRef =
                    serde_json::from_value(new.get("roleRef").cloned().unwrap_or_default()).unwrap_or_default();
                let plural = if role_ref.kind == "Role" { "roles" } else { "clusterroles" };
                let bind = Attributes::resource("bind", RBAC_GROUP, plural, namespace, &role_ref.name);
                if rbac::decide(&policy, user, &bind).allowed {
                    return Ok(());
                }
                match policy.role_rules(namespace, &role_ref) {
                    Some(rules) => (rules.to_vec(), bind),
                    None => {
                        return Err(ApiError::forbidden(format!(
                            "{}.{RBAC_GROUP} {name:?} is forbidden: {} {:?} not found and user {:?} may not bind it",
                            info.plural, role_ref.kind, role_ref.name, user.name
                        )));
                    }
                }
            }
            _ => return Ok(()),
        };
        if rbac::decide(&policy, user, &special).allowed {
            return Ok(());
        }
        let missing = rbac::not_held(&policy, user, namespace, &requested);
        if missing.is_empty() {
            return Ok(());
        }
        let groups = user.groups.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(" ");
        let rules = missing.iter().map(Rule::to_string).collect::<Vec<_>>().join("\n");
        Err(ApiError::forbidden(format!(
            "{}.{RBAC_GROUP} {name:?} is forbidden: user {:?} (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n{rules}",
            info.plural, user.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn impersonation_asks_for_each_part() {
        let mut h = HeaderMap::new();
        assert_eq!(impersonation_checks(&h).expect("no headers"), None);
        h.insert("impersonate-group", HeaderValue::from_static("devs"));
        assert!(impersonation_checks(&h).is_err(), "groups without a user are refused");
        h.insert("impersonate-user", HeaderValue::from_static("bob"));
        h.append("impersonate-group", HeaderValue::from_static("ops"));
        let (u, checks) = impersonation_checks(&h).expect("valid").expect("impersonating");
        assert_eq!(u.name, "bob");
        assert_eq!(u.groups, vec!["devs", "ops", "system:authenticated"]);
        assert_eq!(checks.len(), 3);
        assert_eq!(checks[0], Attributes::resource("impersonate", "", "users", "", "bob"));

        let mut sa = HeaderMap::new();
        sa.insert("impersonate-user", HeaderValue::from_static("system:serviceaccount:team:ci"));
        let (u, checks) = impersonation_checks(&sa).expect("valid").expect("impersonating");
        assert_eq!(checks, vec![Attributes::resource("impersonate", "", "serviceaccounts", "team", "ci")]);
        assert!(u.groups.contains(&"system:serviceaccounts:team".to_string()));
        // a malformed account name is a user name, which needs the cluster-wide right
        let mut bad = HeaderMap::new();
        bad.insert("impersonate-user", HeaderValue::from_static("system:serviceaccount:team"));
        let (_, checks) = impersonation_checks(&bad).expect("valid").expect("impersonating");
        assert_eq!(checks, vec![Attributes::resource("impersonate", "", "users", "", "system:serviceaccount:team")]);
    }

    #[test]
    fn forbidden_statuses_are_worded_as_upstream() {
        let u = User { name: "bob".into(), groups: vec![] };
        let e = forbidden(&u, &Attributes::resource("get", "", "secrets", "team", "s"), "");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            r#"secrets "s" is forbidden: User "bob" cannot get resource "secrets" in API group "" in the namespace "team""#
        );
        let e = forbidden(&u, &Attributes::resource("list", "apps", "deployments", "", ""), "");
        assert!(e.message.starts_with("deployments.apps is forbidden: User \"bob\" cannot list"), "{}", e.message);
    }
}

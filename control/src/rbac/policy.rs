//! The RBAC objects of a cluster, indexed for authorization: roles by name, bindings by namespace.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::rule::Rule;
use crate::apiserver::auth::User;

/// A binding's `roleRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RoleRef {
    /// `Role` or `ClusterRole`.
    pub kind: String,
    /// The role's name.
    pub name: String,
}

/// A binding's subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    /// The name.
    pub name: String,
    /// A service account's namespace (a RoleBinding's own when empty).
    pub namespace: String,
}

/// A RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The binding's name.
    pub name: String,
    /// Its namespace (`""` for a ClusterRoleBinding).
    pub namespace: String,
    /// The role it grants.
    pub role_ref: RoleRef,
    /// Who it grants it to.
    pub subjects: Vec<Subject>,
}

impl Binding {
    fn from_value(v: &Value) -> Binding {
        let parse = |p: &str| v.get(p).cloned().unwrap_or(Value::Null);
        Binding {
            name: skiff_api::meta::name(v).to_string(),
            namespace: skiff_api::meta::namespace(v).to_string(),
            role_ref: serde_json::from_value(parse("roleRef")).unwrap_or_default(),
            subjects: serde_json::from_value(parse("subjects")).unwrap_or_default(),
        }
    }

    /// The subject of this binding that names `user`, if any (as upstream's `appliesTo`).
    pub fn subject_for(&self, user: &User) -> Option<&Subject> {
        self.subjects.iter().find(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.groups.contains(&s.name),
            "ServiceAccount" => {
                let ns = if s.namespace.is_empty() { &self.namespace } else { &s.namespace };
                !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", s.name)
            }
            _ => false,
        })
    }

    /// Upstream's description of a grant: `ClusterRoleBinding "b" of ClusterRole "r" to Group "g"`.
    pub fn describe(&self, subject: &Subject) -> String {
        let (kind, name) = if self.namespace.is_empty() {
            ("ClusterRoleBinding", self.name.clone())
        } else {
            ("RoleBinding", format!("{}/{}", self.namespace, self.name))
        };
        let who = match subject.kind.as_str() {
            "ServiceAccount" => {
                let ns = if subject.namespace.is_empty() { &self.namespace } else { &subject.namespace };
                format!("{}/{ns}", subject.name)
            }
            _ => subject.name.clone(),
        };
        format!("{kind} {name:?} of {} {:?} to {} {who:?}", self.role_ref.kind, self.role_ref.name, subject.kind)
    }
}

/// Bindings by the subjects they name: user names (service accounts as their user names) and group names, each to
/// the positions of the bindings that name it.
#[derive(Debug, Clone, Default)]
struct SubjectIndex {
    users: HashMap<String, Vec<usize>>,
    groups: HashMap<String, Vec<usize>>,
}

impl SubjectIndex {
    fn build(bindings: &[Binding]) -> SubjectIndex {
        let mut ix = SubjectIndex::default();
        for (i, b) in bindings.iter().enumerate() {
            for s in &b.subjects {
                let (map, key) = match s.kind.as_str() {
                    "User" => (&mut ix.users, s.name.clone()),
                    "Group" => (&mut ix.groups, s.name.clone()),
                    "ServiceAccount" => {
                        let ns = if s.namespace.is_empty() { &b.namespace } else { &s.namespace };
                        if ns.is_empty() {
                            continue;
                        }
                        (&mut ix.users, format!("system:serviceaccount:{ns}:{}", s.name))
                    }
                    _ => continue,
                };
                let list = map.entry(key).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        ix
    }

    /// The positions of the bindings that may name `user`, in binding order.
    fn candidates(&self, user: &User) -> Vec<usize> {
        let mut v: Vec<usize> = self.users.get(&user.name).into_iter().flatten().copied().collect();
        for g in &user.groups {
            v.extend(self.groups.get(g).into_iter().flatten().copied());
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Every Role, ClusterRole, RoleBinding and ClusterRoleBinding, indexed (bindings also by subject, so a decision
/// looks only at the bindings that name the user or one of its groups).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Vec<Rule>>,
    roles: HashMap<(String, String), Vec<Rule>>,
    cluster_bindings: Vec<Binding>,
    bindings: HashMap<String, Vec<Binding>>,
    cluster_index: SubjectIndex,
    indexes: HashMap<String, SubjectIndex>,
}

impl Policy {
    /// Indexes RBAC objects (told apart by `kind`; other kinds are ignored).
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Policy {
        let mut p = Policy::default();
        for o in objects {
            let name = skiff_api::meta::name(o).to_string();
            match o.get("kind").and_then(Value::as_str) {
                Some("ClusterRole") => {
                    p.cluster_roles.insert(name, Rule::list_of(o));
                }
                Some("Role") => {
                    p.roles.insert((skiff_api::meta::namespace(o).to_string(), name), Rule::list_of(o));
                }
                Some("ClusterRoleBinding") => p.cluster_bindings.push(Binding::from_value(o)),
                Some("RoleBinding") => {
                    let b = Binding::from_value(o);
                    p.bindings.entry(b.namespace.clone()).or_default().push(b);
                }
                _ => {}
            }
        }
        p.cluster_index = SubjectIndex::build(&p.cluster_bindings);
        p.indexes = p.bindings.iter().map(|(ns, b)| (ns.clone(), SubjectIndex::build(b))).collect();
        p
    }

    /// The rules of the role a binding refers to (a RoleBinding's `Role` is in the binding's namespace; a
    /// ClusterRoleBinding may only refer to a ClusterRole). `None` if it does not exist.
    pub fn role_rules(&self, binding_namespace: &str, role_ref: &RoleRef) -> Option<&[Rule]> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&role_ref.name).map(Vec::as_slice),
            "Role" if !binding_namespace.is_empty() => {
                self.roles.get(&(binding_namespace.to_string(), role_ref.name.clone())).map(Vec::as_slice)
            }
            _ => None,
        }
    }

    /// Calls `visit` with each rule granted to `user` in `namespace` (cluster-wide grants always; a namespace's
    /// RoleBindings when `namespace` is not empty) and the grant's description, until `visit` returns `false`.
    pub fn visit(&self, user: &User, namespace: &str, mut visit: impl FnMut(&str, &Rule) -> bool) {
        let cluster = self.cluster_index.candidates(user).into_iter().map(|i| &self.cluster_bindings[i]);
        let namespaced: Vec<&Binding> =
            match (namespace.is_empty(), self.bindings.get(namespace), self.indexes.get(namespace)) {
                (false, Some(list), Some(ix)) => ix.candidates(user).into_iter().map(|i| &list[i]).collect(),
                _ => Vec::new(),
            };
        for b in cluster.chain(namespaced) {
            let Some(subject) = b.subject_for(user) else { continue };
            let Some(rules) = self.role_rules(&b.namespace, &b.role_ref) else { continue };
            let why = b.describe(subject);
            for r in rules {
                if !visit(&why, r) {
                    return;
                }
            }
        }
    }
}

//! One RBAC rule (`PolicyRule`) and how it matches a request, as Kubernetes' `RuleAllows` does.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::attributes::Attributes;

/// The wildcard of every list in a rule.
pub const ALL: &str = "*";

/// A `PolicyRule`: verbs on resources of API groups (optionally only some names), or verbs on non-resource URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    /// Verbs (`get`, `list`, `*`, …).
    pub verbs: Vec<String>,
    /// API groups (`""` for core, `*` for all).
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/log`, `*/scale`, `*`).
    pub resources: Vec<String>,
    /// Object names; empty means every name.
    pub resource_names: Vec<String>,
    /// Non-resource paths (`/healthz`, `/apis/*`, `*`).
    #[serde(rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == item)
}

fn has_or_all(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == ALL || x == item)
}

/// Whether a rule's resources cover `resource` with `subresource` (`""` for none): `*`, the exact
/// `resource[/subresource]`, or `*/subresource`.
fn resource_matches(rule_resources: &[String], resource: &str, subresource: &str) -> bool {
    let combined = if subresource.is_empty() { resource.to_string() } else { format!("{resource}/{subresource}") };
    rule_resources
        .iter()
        .any(|r| r == ALL || *r == combined || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource)))
}

/// Whether a rule's URL patterns cover `path`: `*`, the exact path, or a pattern ending in `*` that is its prefix.
fn url_matches(patterns: &[String], path: &str) -> bool {
    patterns.iter().any(|p| p == ALL || p == path || p.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix)))
}

impl Rule {
    /// Reads a `PolicyRule` object; a missing list is empty.
    pub fn from_value(v: &Value) -> Option<Rule> {
        serde_json::from_value(v.clone()).ok()
    }

    /// Reads the `rules` of a Role or ClusterRole (rules that do not parse are skipped: they grant nothing).
    pub fn list_of(role: &Value) -> Vec<Rule> {
        role.get("rules")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Rule::from_value).collect())
            .unwrap_or_default()
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, attrs: &Attributes) -> bool {
        match attrs {
            Attributes::Resource { verb, group, resource, subresource, name, .. } => {
                has_or_all(&self.verbs, verb)
                    && has_or_all(&self.api_groups, group)
                    && resource_matches(&self.resources, resource, subresource)
                    && (self.resource_names.is_empty() || has(&self.resource_names, name))
            }
            Attributes::NonResource { verb, path } => {
                has_or_all(&self.verbs, verb) && url_matches(&self.non_resource_urls, path)
            }
        }
    }

    /// Whether this (owner's) rule covers all of `other`, which must be atomic (one verb, and one group, resource
    /// and name or one URL), as in the escalation check.
    pub fn covers(&self, other: &Rule) -> bool {
        let verbs = has_or_all(&self.verbs, &other.verbs[0]);
        if !other.non_resource_urls.is_empty() {
            return verbs && url_matches(&self.non_resource_urls, &other.non_resource_urls[0]);
        }
        let resource = &other.resources[0];
        let resources = has_or_all(&self.resources, resource)
            || resource
                .split_once('/')
                .is_some_and(|(_, sub)| self.resources.iter().any(|r| r.strip_prefix("*/") == Some(sub)));
        verbs
            && has_or_all(&self.api_groups, &other.api_groups[0])
            && resources
            && (self.resource_names.is_empty()
                || other.resource_names.first().is_some_and(|n| has(&self.resource_names, n)))
    }

    /// This rule as atomic rules: one per verb × group × resource × name, or per verb × URL.
    pub fn atoms(&self) -> Vec<Rule> {
        let one = |s: &String| vec![s.clone()];
        let mut out = Vec::new();
        for verb in &self.verbs {
            for url in &self.non_resource_urls {
                out.push(Rule { verbs: one(verb), non_resource_urls: one(url), ..Rule::default() });
            }
            for group in &self.api_groups {
                for resource in &self.resources {
                    let names: Vec<Vec<String>> = if self.resource_names.is_empty() {
                        vec![Vec::new()]
                    } else {
                        self.resource_names.iter().map(one).collect()
                    };
                    for resource_names in names {
                        out.push(Rule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(resource),
                            resource_names,
                            non_resource_urls: Vec::new(),
                        });
                    }
                }
            }
        }
        out
    }
}

/// Upstream's compact form, used in escalation errors: `{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |l: &[String]| l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
        let mut parts = Vec::new();
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:[{}]", list(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:[{}]", list(&self.resources)));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:[{}]", list(&self.resource_names)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!("NonResourceURLs:[{}]", list(&self.non_resource_urls)));
        }
        parts.push(format!("Verbs:[{}]", list(&self.verbs)));
        write!(f, "{{{}}}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Rule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            ..Rule::default()
        }
    }

    fn req(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn matching_follows_rule_allows() {
        // (rule, request, allowed)
        let cases = [
            (rule(&["get"], &[""], &["pods"], &[]), req("get", "", "pods", "", "a"), true),
            (rule(&["get"], &[""], &["pods"], &[]), req("list", "", "pods", "", ""), false),
            (rule(&["*"], &[""], &["pods"], &[]), req("delete", "", "pods", "", "a"), true),
            (rule(&["get"], &["apps"], &["pods"], &[]), req("get", "", "pods", "", "a"), false),
            (rule(&["get"], &["*"], &["pods"], &[]), req("get", "x.io", "pods", "", "a"), true),
            // a resource does not cover its subresources, nor the reverse
            (rule(&["get"], &[""], &["pods"], &[]), req("get", "", "pods", "log", "a"), false),
            (rule(&["get"], &[""], &["pods/log"], &[]), req("get", "", "pods", "", "a"), false),
            (rule(&["get"], &[""], &["pods/log"], &[]), req("get", "", "pods", "log", "a"), true),
            (rule(&["update"], &["apps"], &["*/scale"], &[]), req("update", "apps", "deployments", "scale", "w"), true),
            (rule(&["update"], &["apps"], &["*/scale"], &[]), req("update", "apps", "deployments", "", "w"), false),
            (rule(&["get"], &[""], &["*"], &[]), req("get", "", "secrets", "", "s"), true),
            // resourceNames limit to names, and never allow a request without a name (list, create)
            (rule(&["get"], &[""], &["secrets"], &["s"]), req("get", "", "secrets", "", "s"), true),
            (rule(&["get"], &[""], &["secrets"], &["s"]), req("get", "", "secrets", "", "t"), false),
            (rule(&["list"], &[""], &["secrets"], &["s"]), req("list", "", "secrets", "", ""), false),
        ];
        for (i, (r, a, want)) in cases.iter().enumerate() {
            assert_eq!(r.allows(a), *want, "case {i}: {r} on {a:?}");
        }
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_trailing_star() {
        let r = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz".into(), "/apis/*".into()],
            ..Rule::default()
        };
        let get = |p: &str| Attributes::NonResource { verb: "get".into(), path: p.into() };
        assert!(r.allows(&get("/healthz")));
        assert!(r.allows(&get("/apis/apps/v1")));
        assert!(!r.allows(&get("/apis")));
        assert!(!r.allows(&get("/healthz/etcd")));
        assert!(!r.allows(&Attributes::NonResource { verb: "post".into(), path: "/healthz".into() }));
        // a resource rule never matches a non-resource request
        assert!(!rule(&["*"], &["*"], &["*"], &[]).allows(&get("/healthz")));
    }

    #[test]
    fn coverage_of_atoms() {
        let owner = rule(&["get", "list"], &[""], &["pods", "*/status"], &[]);
        let covered = rule(&["get"], &[""], &["pods", "services/status"], &[]);
        assert!(covered.atoms().iter().all(|a| owner.covers(a)));
        let wider = rule(&["*"], &[""], &["pods"], &[]);
        assert!(!wider.atoms().iter().all(|a| owner.covers(a)), "a wildcard needs a wildcard");
        let named = rule(&["get"], &[""], &["secrets"], &["a"]);
        assert!(!named.atoms().iter().all(|a| rule(&["get"], &[""], &["secrets"], &["b"]).covers(a)));
        assert!(named.atoms().iter().all(|a| rule(&["get"], &[""], &["secrets"], &[]).covers(a)));
        assert_eq!(rule(&["get", "list"], &["", "apps"], &["a", "b"], &["x", "y"]).atoms().len(), 16);
    }

    #[test]
    fn displays_as_upstream_does() {
        assert_eq!(
            rule(&["get"], &[""], &["secrets"], &[]).to_string(),
            r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#
        );
    }
}

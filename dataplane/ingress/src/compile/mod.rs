//! The compiler: a pure function from Kubernetes objects to an immutable [`RouteTable`].
//!
//! [`compile`] reads [`Objects`] and returns the table plus every [`Problem`] it worked around. It does no I/O;
//! the only thing it touches besides its input is [`State`], to link the table to the long-lived per-endpoint and
//! per-limiter counters.
//!
//! # Guarantees
//! - Ingresses are processed oldest first (creation time, then namespace/name), so conflicts always resolve the
//!   same way: the oldest Ingress keeps a host+path, a TLS host, the default backend.
//! - Anything wrong with one Ingress, Service or Secret affects only the routes that use it.

pub mod annotations;
pub mod backends;
pub mod class;
pub mod paths;
pub mod policy;
pub mod problems;
mod tls;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use self::annotations::{Annotations, Defaults};
use self::backends::Index;
use self::paths::PathMatch;
use self::problems::{ObjectRef, Problem};
use crate::decide::transport::fast_path_takes;
use crate::objects::Objects;
use crate::table::{Canary, CertStore, HostRoutes, Policy, Route, RouteLabels, RouteTable, State};

/// What the compiler needs besides the objects.
#[derive(Debug, Clone)]
pub struct CompileConfig {
    /// `spec.controller` of the IngressClasses this controller serves.
    pub controller: String,
    /// Class served when no IngressClass object of that name exists.
    pub class_name: String,
    /// Annotation defaults.
    pub defaults: Defaults,
}

impl Default for CompileConfig {
    fn default() -> Self {
        CompileConfig {
            controller: "skiff.dev/ingress-controller".into(),
            class_name: "skiff".into(),
            defaults: Defaults::default(),
        }
    }
}

/// The compiler's output.
#[derive(Debug)]
pub struct Compiled {
    /// The table to publish.
    pub table: RouteTable,
    /// What was skipped or worked around, sorted.
    pub problems: Vec<Problem>,
    /// The Ingresses this controller serves (their status gets our addresses).
    pub ingresses: Vec<ObjectRef>,
}

/// A host's routes while compiling (routes stay plain values until canaries are attached).
#[derive(Default)]
struct HostBuild {
    routes: Vec<Route>,
    owners: HashMap<String, ObjectRef>,
    fallback: Option<Arc<Route>>,
}

/// Compiles the objects into generation `generation` of the routing table.
pub fn compile(objects: &Objects, config: &CompileConfig, state: &State, generation: u64) -> Compiled {
    let filter = class::ClassFilter::new(&objects.classes, &config.controller, &config.class_name);
    let mut ours: Vec<&Ingress> = objects.ingresses.iter().filter(|i| filter.accepts(i)).collect();
    ours.sort_by(|a, b| {
        let key = |i: &Ingress| (i.metadata.creation_timestamp.clone().map(|t| t.0), object_ref(i));
        key(a).cmp(&key(b))
    });
    let secrets = objects.secrets.iter().map(|s| (ns_name(&s.metadata), s)).collect();
    let config_maps = objects.config_maps.iter().map(|c| (ns_name(&c.metadata), c)).collect();
    let mut index = Index::new(objects);
    let mut c = Compiler { state, index: &mut index, problems: Vec::new() };

    let mut hosts: HashMap<String, HostBuild> = HashMap::new();
    let mut tls_hosts = BTreeSet::new();
    let mut certs = CertStore::new(state.default_cert.clone());
    let mut cert_owners = HashMap::new();
    let mut default_backend: Option<Arc<Route>> = None;
    let mut canaries = Vec::new();

    for ingress in &ours {
        let who = object_ref(ingress);
        let empty = Default::default();
        let (ann, ann_problems) =
            annotations::parse(ingress.metadata.annotations.as_ref().unwrap_or(&empty), &config.defaults);
        for p in ann_problems {
            let reason = if p.message.contains("unsupported") { "UnsupportedAnnotation" } else { "InvalidAnnotation" };
            c.problem(&who, reason, format!("{}: {}", p.key, p.message));
        }
        if ann.canary.is_some() {
            canaries.push((ingress, who, ann));
            continue;
        }
        let id = format!("{}/{}", who.namespace, who.name);
        let mut policy_problems = Vec::new();
        let policy = Arc::new(policy::build(&ann, &id, &who.namespace, &config_maps, state, &mut policy_problems));
        for (reason, message) in policy_problems {
            c.problem(&who, reason, message);
        }
        let spec = ingress.spec.clone().unwrap_or_default();
        let own_default = spec
            .default_backend
            .as_ref()
            .and_then(|b| c.route(&who, "", "", PathMatch::Prefix("".into()), b, &ann, &policy).map(Arc::new));
        if let Some(d) = &own_default
            && default_backend.is_none()
        {
            default_backend = Some(d.clone());
        }
        let mut rule_hosts = Vec::new();
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.clone().unwrap_or_default().to_ascii_lowercase();
            if let Err(message) = valid_host(&host) {
                c.problem(&who, "InvalidHost", message);
                continue;
            }
            rule_hosts.push(host.clone());
            let entry = hosts.entry(host.clone()).or_default();
            if entry.fallback.is_none() {
                entry.fallback = own_default.clone();
            }
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let path = p.path.clone().unwrap_or_else(|| "/".into());
                let matcher = match PathMatch::new(&p.path_type, &path, ann.use_regex) {
                    Ok(m) => m,
                    Err(e) => {
                        c.problem(&who, "InvalidPath", format!("host {host:?}: {e}"));
                        continue;
                    }
                };
                let key = matcher.key();
                if let Some(owner) = entry.owners.get(&key) {
                    c.problem(
                        &who,
                        "HostPathConflict",
                        format!(
                            "host {host:?} path {path:?} ({}) is already routed by {owner}; ignored here",
                            p.path_type
                        ),
                    );
                    continue;
                }
                let Some(route) = c.route(&who, &host, &path, matcher, &p.backend, &ann, &policy) else { continue };
                entry.owners.insert(key, who.clone());
                entry.routes.push(route);
            }
        }
        tls_hosts.extend(tls::add(ingress, &who, &rule_hosts, &secrets, &mut certs, &mut cert_owners, &mut c.problems));
    }

    for (ingress, who, ann) in canaries {
        c.attach_canary(ingress, &who, &ann, &mut hosts);
    }

    let mut table = RouteTable::empty(generation, certs);
    for (host, build) in hosts {
        let mut routes: Vec<Arc<Route>> = build.routes.into_iter().map(Arc::new).collect();
        routes.sort_by_key(|r| r.path.precedence());
        let tls = tls_hosts.contains(&host);
        let h = HostRoutes { routes, fallback: build.fallback, tls };
        match host.strip_prefix("*.") {
            _ if host.is_empty() => table.any_host = Some(h),
            Some(parent) => drop(table.wildcard.insert(parent.into(), h)),
            None => drop(table.exact.insert(host.into(), h)),
        }
    }
    table.default_backend = default_backend;
    let mut problems = c.problems;
    problems.sort();
    problems.dedup();
    Compiled { table, problems, ingresses: ours.iter().map(|i| object_ref(i)).collect() }
}

struct Compiler<'s, 'i, 'o> {
    state: &'s State,
    index: &'i mut Index<'o>,
    problems: Vec<Problem>,
}

impl Compiler<'_, '_, '_> {
    fn problem(&mut self, who: &ObjectRef, reason: &'static str, message: String) {
        self.problems.push(Problem { ingress: who.clone(), reason, message });
    }

    /// One route to a backend; `None` (with a problem) when the backend cannot be used at all.
    #[allow(clippy::too_many_arguments)] // the parts of one route, named at the call site
    fn route(
        &mut self,
        who: &ObjectRef,
        host: &str,
        path: &str,
        matcher: PathMatch,
        backend: &IngressBackend,
        ann: &Annotations,
        policy: &Arc<Policy>,
    ) -> Option<Route> {
        if let Some(r) = &backend.resource {
            let what = format!("{}/{}", r.kind, r.name);
            self.problem(
                who,
                "UnsupportedBackend",
                format!(
                    "resource backend {what} is not supported (host {host:?} path {path:?}); use a service backend"
                ),
            );
            return None;
        }
        let Some(svc) = &backend.service else {
            self.problem(who, "InvalidBackend", format!("host {host:?} path {path:?}: backend names no service"));
            return None;
        };
        let (backend, problem) = self.index.resolve(&who.namespace, svc, ann.balance, self.state);
        if let Some((reason, message)) = problem {
            self.problem(who, reason, message);
        }
        let rewrite = match &ann.rewrite_target {
            Some(target) => match regex::Regex::new(&format!("(?i)^{path}")) {
                Ok(re) => Some((re, target.as_str().into())),
                Err(e) => {
                    self.problem(who, "InvalidPath", format!("rewrite of path {path:?}: {e}"));
                    None
                }
            },
            None => None,
        };
        let labels = Arc::new(RouteLabels {
            namespace: who.namespace.clone(),
            ingress: who.name.clone(),
            host: host.to_owned(),
            path: path.to_owned(),
            service: svc.name.clone(),
        });
        let mut route = Route {
            path: matcher,
            labels,
            backend,
            canary: None,
            policy: policy.clone(),
            rewrite,
            handles: Default::default(),
            fast: false,
        };
        route.fast = fast_path_takes(&route);
        Some(route)
    }

    fn attach_canary(
        &mut self,
        ingress: &Ingress,
        who: &ObjectRef,
        ann: &Annotations,
        hosts: &mut HashMap<String, HostBuild>,
    ) {
        let Some(spec) = ann.canary.clone() else { return };
        for rule in ingress.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
            let host = rule.host.clone().unwrap_or_default().to_ascii_lowercase();
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let path = p.path.clone().unwrap_or_else(|| "/".into());
                let Ok(matcher) = PathMatch::new(&p.path_type, &path, ann.use_regex) else { continue };
                let key = matcher.key();
                let main = hosts.get_mut(&host).and_then(|h| h.routes.iter_mut().find(|r| r.path.key() == key));
                let Some(main) = main else {
                    self.problem(
                        who,
                        "CanaryWithoutMain",
                        format!("no main Ingress routes host {host:?} path {path:?}; canary ignored"),
                    );
                    continue;
                };
                let Some(svc) = &p.backend.service else { continue };
                let (backend, problem) = self.index.resolve(&who.namespace, svc, ann.balance, self.state);
                if let Some((reason, message)) = problem {
                    self.problem(who, reason, message);
                }
                let labels = Arc::new(RouteLabels {
                    namespace: who.namespace.clone(),
                    ingress: who.name.clone(),
                    host: host.clone(),
                    path: path.clone(),
                    service: svc.name.clone(),
                });
                main.canary = Some(Canary { backend, labels, spec: spec.clone(), handles: Default::default() });
                main.fast = fast_path_takes(main);
            }
        }
    }
}

fn ns_name(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    (m.namespace.as_deref().unwrap_or("default"), m.name.as_deref().unwrap_or_default())
}

fn object_ref(i: &Ingress) -> ObjectRef {
    ObjectRef {
        kind: "Ingress",
        namespace: i.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: i.metadata.name.clone().unwrap_or_default(),
    }
}

/// A rule host: empty (any host), a DNS name, or `*.` followed by a DNS name (the wildcard covers one label).
fn valid_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        Err(format!("host {host:?} is an IP address; rules name hosts by DNS name"))
    } else if host.is_empty() || (name.len() <= 253 && name.split('.').all(label_ok)) {
        Ok(())
    } else {
        Err(format!("host {host:?} is not a valid DNS name or \"*.\" wildcard; rule skipped"))
    }
}

#[cfg(test)]
mod tests;

//! Table tests of the compiler: every Ingress rule the controller implements, from YAML to lookups.

use std::sync::Arc;

use super::*;
use crate::table::{BackendState, Certificate, Lookup};

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: admin, port: 9000, targetPort: admin}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: admin, port: 9090}
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
- addresses: [10.0.0.2]
- addresses: [10.0.0.3]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.4]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  ports:
  - {port: 80, targetPort: 3000}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports:
- {name: "", port: 3000}
endpoints:
- addresses: [10.0.1.1]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  ports:
  - {port: 80}
"#;

fn ingress(name: &str, created: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  ingressClassName: skiff\n{spec}\n"
    )
}

fn compiled(yaml: &str) -> Compiled {
    let objects = Objects::from_yaml(&format!("{SERVICES}{yaml}")).expect("test objects parse");
    let state = State::new(Certificate::self_signed("default").expect("cert"));
    compile(&objects, &CompileConfig::default(), &state, 1)
}

fn routed(l: Lookup<'_>) -> Option<(String, String)> {
    l.route.map(|r| (r.labels.ingress.clone(), format!("{}:{}", r.backend.service, r.backend.port)))
}

fn simple_rule(host: &str, path_type: &str, path: &str, svc: &str) -> String {
    format!(
        "  rules:\n  - host: \"{host}\"\n    http:\n      paths:\n      - {{path: \"{path}\", pathType: {path_type}, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}"
    )
}

fn reasons(c: &Compiled) -> Vec<&'static str> {
    c.problems.iter().map(|p| p.reason).collect()
}

#[test]
fn hosts_match_exactly_then_by_one_label_wildcard_then_rules_without_host() {
    let c = compiled(&[
        ingress("exact", "2024-01-01T00:00:00Z", &simple_rule("foo.bar.com", "Prefix", "/", "web")),
        ingress("wild", "2024-01-01T00:00:01Z", &simple_rule("*.bar.com", "Prefix", "/", "api")),
        ingress("any", "2024-01-01T00:00:02Z", "  rules:\n  - http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: empty, port: {number: 80}}}}"),
    ]
    .concat());
    let t = &c.table;
    assert_eq!(routed(t.lookup("foo.bar.com", "/")).map(|r| r.0), Some("exact".into()));
    assert_eq!(routed(t.lookup("baz.bar.com", "/")).map(|r| r.0), Some("wild".into()));
    assert_eq!(routed(t.lookup("x.baz.bar.com", "/")).map(|r| r.0), Some("any".into()), "one label only");
    assert_eq!(routed(t.lookup("bar.com", "/")).map(|r| r.0), Some("any".into()), "the wildcard needs a label");
    assert_eq!(t.hosts(), ["*.bar.com", "foo.bar.com"]);
}

#[test]
fn paths_follow_precedence_longest_first_and_exact_before_prefix() {
    let spec = "  rules:\n  - host: a.com\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}\n      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}\n      - {path: /api, pathType: Exact, backend: {service: {name: empty, port: {number: 80}}}}";
    let c = compiled(&ingress("i", "2024-01-01T00:00:00Z", spec));
    let t = &c.table;
    let svc = |p: &str| routed(t.lookup("a.com", p)).map(|r| r.1);
    assert_eq!(svc("/api").as_deref(), Some("default/empty:80"));
    assert_eq!(svc("/api/").as_deref(), Some("default/api:80"));
    assert_eq!(svc("/api/v1").as_deref(), Some("default/api:80"));
    assert_eq!(svc("/apis").as_deref(), Some("default/web:http"));
    assert_eq!(svc("/").as_deref(), Some("default/web:http"));
}

#[test]
fn ingresses_for_one_host_merge_and_the_oldest_wins_a_conflict() {
    let c = compiled(
        &[
            ingress("newer", "2024-02-01T00:00:00Z", &simple_rule("a.com", "Prefix", "/", "api")),
            ingress("older", "2024-01-01T00:00:00Z", &simple_rule("a.com", "Prefix", "/", "web")),
            ingress("more", "2024-03-01T00:00:00Z", &simple_rule("a.com", "Prefix", "/more", "empty")),
        ]
        .concat(),
    );
    assert_eq!(routed(c.table.lookup("a.com", "/x")).map(|r| r.0), Some("older".into()));
    assert_eq!(routed(c.table.lookup("a.com", "/more/x")).map(|r| r.0), Some("more".into()));
    let conflict = c.problems.iter().find(|p| p.reason == "HostPathConflict").expect("conflict reported");
    assert_eq!(conflict.ingress.name, "newer");
    assert!(conflict.message.contains("Ingress default/older"), "{}", conflict.message);
}

#[test]
fn default_backends_serve_unmatched_paths_of_their_hosts_and_unknown_hosts() {
    let spec = format!(
        "  defaultBackend: {{service: {{name: api, port: {{number: 80}}}}}}\n{}",
        simple_rule("a.com", "Exact", "/only", "web")
    );
    let c = compiled(&ingress("i", "2024-01-01T00:00:00Z", &spec));
    assert_eq!(routed(c.table.lookup("a.com", "/only")).map(|r| r.1).as_deref(), Some("default/web:80"));
    assert_eq!(routed(c.table.lookup("a.com", "/other")).map(|r| r.1).as_deref(), Some("default/api:80"));
    assert_eq!(routed(c.table.lookup("unknown.com", "/")).map(|r| r.1).as_deref(), Some("default/api:80"));
    let none = compiled(&ingress("i", "2024-01-01T00:00:00Z", &simple_rule("a.com", "Exact", "/only", "web")));
    assert!(none.table.lookup("a.com", "/other").route.is_none(), "404 without a default backend");
}

#[test]
fn resource_backends_are_rejected_clearly_and_the_rest_still_routes() {
    let spec = "  rules:\n  - host: a.com\n    http:\n      paths:\n      - {path: /static, pathType: Prefix, backend: {resource: {apiGroup: k8s.example.com, kind: StorageBucket, name: assets}}}\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}";
    let c = compiled(&ingress("i", "2024-01-01T00:00:00Z", spec));
    assert_eq!(reasons(&c), ["UnsupportedBackend"]);
    assert!(c.problems[0].message.contains("StorageBucket/assets"));
    assert_eq!(routed(c.table.lookup("a.com", "/static")).map(|r| r.1).as_deref(), Some("default/web:80"));
}

#[test]
fn service_ports_resolve_by_number_and_by_name_to_the_endpoint_slice_port() {
    let spec = "  rules:\n  - host: a.com\n    http:\n      paths:\n      - {path: /admin, pathType: Prefix, backend: {service: {name: web, port: {name: admin}}}}\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}";
    let c = compiled(&ingress("i", "2024-01-01T00:00:00Z", spec));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let ports = |p: &str| -> Vec<String> {
        let pool = c.table.lookup("a.com", p).route.expect("route").backend.pool().expect("endpoints");
        pool.active().iter().map(|e| e.addr.to_string()).collect()
    };
    assert_eq!(ports("/"), ["10.0.0.1:8080", "10.0.0.2:8080"], "ready and unset-ready endpoints; not terminating ones");
    assert_eq!(ports("/admin"), ["10.0.0.1:9090", "10.0.0.2:9090"]);
}

#[test]
fn missing_services_ports_and_endpoints_answer_503_and_are_reported() {
    let spec = "  rules:\n  - host: a.com\n    http:\n      paths:\n      - {path: /gone, pathType: Prefix, backend: {service: {name: gone, port: {number: 80}}}}\n      - {path: /port, pathType: Prefix, backend: {service: {name: web, port: {number: 81}}}}\n      - {path: /empty, pathType: Prefix, backend: {service: {name: empty, port: {number: 80}}}}\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}";
    let c = compiled(&ingress("i", "2024-01-01T00:00:00Z", spec));
    assert_eq!(reasons(&c), ["MissingService", "MissingServicePort", "NoEndpoints"]);
    let reason = |p: &str| c.table.lookup("a.com", p).route.expect("route").backend.unavailable_reason();
    assert_eq!(reason("/gone"), "service \"default/gone\" not found");
    assert!(reason("/port").contains("has no port \"81\""));
    assert_eq!(reason("/empty"), "no endpoints available for service \"default/empty\"");
    assert!(c.table.lookup("a.com", "/").route.expect("route").backend.pool().is_some(), "the rest keeps serving");
}

#[test]
fn terminating_endpoints_take_traffic_only_when_none_is_ready() {
    let yaml = r#"
---
apiVersion: v1
kind: Service
metadata: {name: draining, namespace: default}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: d, namespace: default, labels: {kubernetes.io/service-name: draining}}
addressType: IPv4
ports: [{port: 80}]
endpoints:
- addresses: [10.9.0.1]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.9.0.2]
  conditions: {ready: false, serving: false, terminating: true}
"#;
    let c = compiled(&format!(
        "{yaml}{}",
        ingress("i", "2024-01-01T00:00:00Z", &simple_rule("a.com", "Prefix", "/", "draining"))
    ));
    let pool = c.table.lookup("a.com", "/").route.expect("route").backend.pool().expect("fallback");
    let addrs: Vec<_> = pool.active().iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(addrs, ["10.9.0.1:80"]);
}

#[test]
fn only_ingresses_of_our_class_are_served() {
    let yaml = [
        "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: nginx}\nspec: {controller: k8s.io/ingress-nginx}\n".to_string(),
        ingress("ours", "2024-01-01T00:00:00Z", &simple_rule("a.com", "Prefix", "/", "web")),
        ingress("theirs", "2024-01-01T00:00:00Z", &simple_rule("b.com", "Prefix", "/", "web")).replace("ingressClassName: skiff", "ingressClassName: nginx"),
    ]
    .concat();
    let c = compiled(&yaml);
    assert_eq!(c.ingresses.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["ours"]);
    assert!(c.table.lookup("b.com", "/").route.is_none());
}

#[test]
fn tls_secrets_fill_the_certificate_store_and_mark_hosts_for_redirect() {
    let (crt, key) = crate::table::certs_tests::pem_pair(&["a.com"]);
    let indent = |s: &str| s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: a-tls, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(&crt),
        indent(&key)
    );
    let spec = format!(
        "  tls:\n  - {{hosts: [a.com], secretName: a-tls}}\n  - {{hosts: [b.com], secretName: missing}}\n{}\n  - host: b.com\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n  - host: c.com\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}",
        simple_rule("a.com", "Prefix", "/", "web")
    );
    let c = compiled(&format!("{secret}{}", ingress("i", "2024-01-01T00:00:00Z", &spec)));
    assert_eq!(reasons(&c), ["MissingSecret"]);
    assert_eq!(&*c.table.certs.resolve(Some("a.com")).secret, "default/a-tls");
    assert_eq!(&*c.table.certs.resolve(Some("b.com")).secret, "", "missing secret: default certificate");
    assert!(c.table.lookup("a.com", "/").tls && c.table.lookup("b.com", "/").tls);
    assert!(!c.table.lookup("c.com", "/").tls);
}

#[test]
fn a_canary_ingress_attaches_to_the_main_route_of_the_same_host_and_path() {
    let canary = ingress("canary", "2024-01-02T00:00:00Z", &simple_rule("a.com", "Prefix", "/", "api")).replace(
        "creationTimestamp",
        "annotations: {nginx.ingress.kubernetes.io/canary: \"true\", nginx.ingress.kubernetes.io/canary-weight: \"20\"}, creationTimestamp",
    );
    let orphan = ingress("orphan", "2024-01-02T00:00:00Z", &simple_rule("z.com", "Prefix", "/", "api"))
        .replace("creationTimestamp", "annotations: {nginx.ingress.kubernetes.io/canary: \"true\"}, creationTimestamp");
    let c = compiled(
        &[ingress("main", "2024-01-01T00:00:00Z", &simple_rule("a.com", "Prefix", "/", "web")), canary, orphan]
            .concat(),
    );
    let route = c.table.lookup("a.com", "/").route.expect("main route");
    let canary = route.canary.as_ref().expect("canary attached");
    assert_eq!(&*canary.backend.service, "default/api");
    assert_eq!(canary.spec.weight, 20);
    assert_eq!(reasons(&c), ["CanaryWithoutMain"]);
    assert!(c.table.lookup("z.com", "/").route.is_none(), "a canary never routes on its own");
}

#[test]
fn bad_hosts_paths_and_annotations_are_reported_and_skipped_not_fatal() {
    let spec = "  rules:\n  - host: \"10.0.0.1\"\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n  - host: \"a.*.com\"\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n  - host: ok.com\n    http: {paths: [{path: relative, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}, {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}";
    let yaml = ingress("i", "2024-01-01T00:00:00Z", spec).replace(
        "creationTimestamp",
        "annotations: {nginx.ingress.kubernetes.io/configuration-snippet: \"x\", nginx.ingress.kubernetes.io/proxy-body-size: \"huge\"}, creationTimestamp",
    );
    let c = compiled(&yaml);
    let mut r = reasons(&c);
    r.sort();
    assert_eq!(r, ["InvalidAnnotation", "InvalidHost", "InvalidHost", "InvalidPath", "UnsupportedAnnotation"]);
    assert!(c.table.lookup("ok.com", "/").route.is_some());
}

#[test]
fn rewrite_target_turns_paths_into_regexes_with_a_rewrite() {
    let spec = "  rules:\n  - host: a.com\n    http: {paths: [{path: \"/something(/|$)(.*)\", pathType: ImplementationSpecific, backend: {service: {name: web, port: {number: 80}}}}]}";
    let yaml = ingress("i", "2024-01-01T00:00:00Z", spec).replace(
        "creationTimestamp",
        "annotations: {nginx.ingress.kubernetes.io/rewrite-target: \"/$2\"}, creationTimestamp",
    );
    let c = compiled(&yaml);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let route = c.table.lookup("a.com", "/something/new").route.expect("regex route");
    let (re, target) = route.rewrite.as_ref().expect("rewrite");
    assert_eq!(policy::rewrite(re, target, "/something/new").as_deref(), Some("/new"));
    assert!(c.table.lookup("a.com", "/other").route.is_none());
}

#[test]
fn one_service_port_is_one_backend_shared_by_its_routes_and_linked_to_shared_state() {
    let spec = "  rules:\n  - host: a.com\n    http: {paths: [{path: /a, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}, {path: /b, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}";
    let objects =
        Objects::from_yaml(&format!("{SERVICES}{}", ingress("i", "2024-01-01T00:00:00Z", spec))).expect("parse");
    let state = State::new(Certificate::self_signed("d").expect("cert"));
    let one = compile(&objects, &CompileConfig::default(), &state, 1);
    let two = compile(&objects, &CompileConfig::default(), &state, 2);
    let a = one.table.lookup("a.com", "/a").route.expect("a").backend.clone();
    let b = one.table.lookup("a.com", "/b").route.expect("b").backend.clone();
    assert!(Arc::ptr_eq(&a, &b));
    let later = two.table.lookup("a.com", "/a").route.expect("a").backend.clone();
    let (BackendState::Pool(p1), BackendState::Pool(p2)) = (&a.state, &later.state) else { panic!("pools") };
    assert!(Arc::ptr_eq(&p1.active()[0].stats, &p2.active()[0].stats), "endpoint counters survive generations");
    assert_eq!(two.table.generation, 2);
}

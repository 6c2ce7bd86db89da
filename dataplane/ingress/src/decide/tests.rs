//! Table tests of the decision core: one route per policy kind, requests in, decisions out.

use std::net::IpAddr;

use super::*;
use crate::compile::{CompileConfig, compile};
use crate::objects::Objects;
use crate::table::{Certificate, State};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: "", port: 8080}]
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec: {ports: [{port: 80, targetPort: 3000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: "", port: 3000}]
endpoints: [{addresses: [10.0.1.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec: {ports: [{port: 80}]}
"#;

/// An Ingress `name` routing `host` (path `/`, or `path` as a regex) to `svc`, with annotations (without prefix).
fn ingress(name: &str, host: &str, path: &str, svc: &str, annotations: &[(&str, &str)]) -> String {
    let ann: Vec<String> = annotations.iter().map(|(k, v)| format!("nginx.ingress.kubernetes.io/{k}: {v:?}")).collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"2024-01-01T00:00:00Z\", annotations: {{{}}}}}\nspec:\n  ingressClassName: skiff\n  rules:\n  - host: {host}\n    http:\n      paths:\n      - {{path: {path:?}, pathType: ImplementationSpecific, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n",
        ann.join(", ")
    )
}

fn table() -> RouteTable {
    let yaml = [
        OBJECTS.to_owned(),
        ingress("plain", "plain.test", "/", "web", &[]),
        ingress("allow", "allow.test", "/", "web", &[("whitelist-source-range", "10.0.0.0/8")]),
        ingress("bad-allow", "bad-allow.test", "/", "web", &[("whitelist-source-range", "10.0.0.0/8, nonsense")]),
        ingress("moved", "moved.test", "/", "web", &[("permanent-redirect", "https://new.example/")]),
        ingress("secure", "secure.test", "/", "web", &[("force-ssl-redirect", "true")]),
        ingress("root", "root.test", "/", "web", &[("app-root", "/app")]),
        ingress("small", "small.test", "/", "web", &[("proxy-body-size", "10")]),
        ingress("rps", "rps.test", "/", "web", &[("limit-rps", "1")]),
        ingress("conns", "conns.test", "/", "web", &[("limit-connections", "1")]),
        ingress("rewrite", "rewrite.test", "/api(/|$)(.*)", "web", &[("rewrite-target", "/$2")]),
        ingress("main", "canary.test", "/", "web", &[]),
        ingress(
            "canary",
            "canary.test",
            "/",
            "api",
            &[("canary", "true"), ("canary-by-header", "x-canary"), ("canary-by-cookie", "c"), ("canary-weight", "30")],
        ),
        ingress("dark", "dark.test", "/", "web", &[]),
        ingress("dark-canary", "dark.test", "/", "empty", &[("canary", "true"), ("canary-weight", "100")]),
        ingress("sticky", "sticky.test", "/", "web", &[("affinity", "cookie"), ("session-cookie-name", "S")]),
        ingress("empty", "empty.test", "/", "empty", &[]),
        ingress("grpc", "grpc.test", "/", "web", &[("backend-protocol", "GRPC")]),
        ingress("tls-pod", "tls-pod.test", "/", "web", &[("backend-protocol", "HTTPS")]),
    ]
    .concat();
    let objects = Objects::from_yaml(&yaml).expect("test objects parse");
    let state = State::new(Certificate::self_signed("default").expect("cert"));
    let compiled = compile(&objects, &CompileConfig::default(), &state, 1);
    let expected = |p: &crate::compile::problems::Problem| {
        p.ingress.name == "bad-allow" || (p.reason == "NoEndpoints" && p.message.contains("default/empty"))
    };
    assert!(compiled.problems.iter().all(expected), "{:?}", compiled.problems);
    compiled.table
}

const INSIDE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));
const OUTSIDE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

/// A request: host, path and query, and header lines.
struct Req {
    host: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    client: IpAddr,
    tls: bool,
    length: Option<u64>,
    roll: u64,
}

fn req(host: &'static str, target: &'static str) -> Req {
    Req { host, target, headers: Vec::new(), client: INSIDE, tls: false, length: None, roll: 99 }
}

/// What a decision came to, in words a table can hold: the answer's status and location, or where it is proxied.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Answer(u16, Option<String>, &'static str),
    Proxy { service: String, canary: bool, target: Option<String>, pinned: Option<String> },
}

fn decided(t: &RouteTable, r: &Req) -> (Got, Option<String>) {
    let lines: Vec<httparse::Header<'_>> =
        r.headers.iter().map(|(n, v)| httparse::Header { name: n, value: v.as_bytes() }).collect();
    let (path, query) = r.target.split_once('?').map_or((r.target, None), |(p, q)| (p, Some(q)));
    let facts = Facts {
        host: r.host,
        path,
        query,
        tls: r.tls,
        client: Some(r.client),
        https_port: Some(8443),
        content_length: r.length,
        headers: &lines[..],
        roll: r.roll,
        now_ns: 1,
    };
    match decide(t, &facts) {
        Decision::Answer { answer, route } => {
            let ingress = route.map(|c| c.labels().ingress.clone());
            let kind = match answer.status {
                404 => "no route",
                403 => "denied",
                413 => "too large",
                503 if answer.body.contains("limit") => "limited",
                503 => "no endpoints",
                _ => "redirect",
            };
            (Got::Answer(answer.status, answer.location, kind), ingress)
        }
        Decision::Proxy(plan) => {
            let ingress = Some(plan.chosen.labels().ingress.clone());
            let got = Got::Proxy {
                service: plan.chosen.backend().service.to_string(),
                canary: plan.chosen.canary,
                target: plan.target,
                pinned: plan.pinned.map(|e| e.addr.to_string()),
            };
            (got, ingress)
        }
    }
}

fn proxied(service: &str, canary: bool) -> Got {
    Got::Proxy { service: service.into(), canary, target: None, pinned: None }
}

#[test]
fn every_policy_kind_decides_as_ingress_nginx() {
    let t = table();
    let web_cookie = {
        let route = t.lookup("sticky.test", "/").route.expect("route");
        route.backend.pool().expect("pool").active()[1].cookie.to_string()
    };
    let sticky_cookie: &'static str = Box::leak(format!("S={web_cookie}").into_boxed_str());
    let cases: Vec<(&str, Req, Got, Option<&str>)> = vec![
        ("a plain route", req("plain.test", "/x"), proxied("default/web", false), Some("plain")),
        ("no route", req("nowhere.test", "/"), Got::Answer(404, None, "no route"), None),
        ("allowed client", req("allow.test", "/"), proxied("default/web", false), Some("allow")),
        (
            "client outside the allowlist",
            Req { client: OUTSIDE, ..req("allow.test", "/") },
            Got::Answer(403, None, "denied"),
            Some("allow"),
        ),
        (
            "an allowlist with a bad entry denies all",
            req("bad-allow.test", "/"),
            Got::Answer(403, None, "denied"),
            Some("bad-allow"),
        ),
        (
            "permanent redirect",
            req("moved.test", "/a?b"),
            Got::Answer(301, Some("https://new.example/".into()), "redirect"),
            Some("moved"),
        ),
        (
            "HTTPS redirect keeps path, query and the HTTPS port",
            req("secure.test", "/a?b=1"),
            Got::Answer(308, Some("https://secure.test:8443/a?b=1".into()), "redirect"),
            Some("secure"),
        ),
        (
            "no redirect over TLS",
            Req { tls: true, ..req("secure.test", "/a") },
            proxied("default/web", false),
            Some("secure"),
        ),
        ("app-root", req("root.test", "/"), Got::Answer(302, Some("/app".into()), "redirect"), Some("root")),
        ("app-root only for /", req("root.test", "/x"), proxied("default/web", false), Some("root")),
        (
            "body within the limit",
            Req { length: Some(10), ..req("small.test", "/") },
            proxied("default/web", false),
            Some("small"),
        ),
        (
            "body over the limit",
            Req { length: Some(11), ..req("small.test", "/") },
            Got::Answer(413, None, "too large"),
            Some("small"),
        ),
        (
            "rewrite keeps the query",
            req("rewrite.test", "/api/users?x=1"),
            Got::Proxy {
                service: "default/web".into(),
                canary: false,
                target: Some("/users?x=1".into()),
                pinned: None,
            },
            Some("rewrite"),
        ),
        (
            "canary by header",
            Req { headers: vec![("X-Canary", "always")], ..req("canary.test", "/") },
            proxied("default/api", true),
            Some("canary"),
        ),
        (
            "header never beats the cookie and the weight",
            Req { headers: vec![("x-canary", "never"), ("Cookie", "c=always")], roll: 0, ..req("canary.test", "/") },
            proxied("default/web", false),
            Some("main"),
        ),
        (
            "canary by cookie",
            Req { headers: vec![("Cookie", "a=b; c=always")], ..req("canary.test", "/") },
            proxied("default/api", true),
            Some("canary"),
        ),
        (
            "canary by weight: a roll under it",
            Req { roll: 129, ..req("canary.test", "/") },
            proxied("default/api", true),
            Some("canary"),
        ),
        (
            "canary by weight: a roll over it",
            Req { roll: 130, ..req("canary.test", "/") },
            proxied("default/web", false),
            Some("main"),
        ),
        (
            "a canary without endpoints is skipped",
            Req { roll: 0, ..req("dark.test", "/") },
            proxied("default/web", false),
            Some("dark"),
        ),
        (
            "affinity cookie pins its endpoint",
            Req { headers: vec![("cookie", sticky_cookie)], ..req("sticky.test", "/") },
            Got::Proxy {
                service: "default/web".into(),
                canary: false,
                target: None,
                pinned: Some("10.0.0.2:8080".into()),
            },
            Some("sticky"),
        ),
        (
            "an unknown affinity cookie pins nothing",
            Req { headers: vec![("cookie", "S=0000")], ..req("sticky.test", "/") },
            proxied("default/web", false),
            Some("sticky"),
        ),
        ("no endpoints", req("empty.test", "/"), Got::Answer(503, None, "no endpoints"), Some("empty")),
    ];
    let mut failed = Vec::new();
    for (name, r, want, ingress) in &cases {
        let got = decided(&t, r);
        if (&got.0, got.1.as_deref()) != (want, *ingress) {
            failed.push(format!("{name}: got {got:?}, want {want:?} named {ingress:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn limits_count_per_client_and_a_slot_is_held_while_the_plan_lives() {
    let t = table();
    let burst = (0..10).filter(|_| matches!(decided(&t, &req("rps.test", "/")).0, Got::Proxy { .. })).count();
    assert_eq!(burst, 5, "limit-rps 1: a burst of five, then 503");
    assert_eq!(decided(&t, &req("rps.test", "/")).0, Got::Answer(503, None, "limited"));
    assert!(matches!(decided(&t, &Req { client: OUTSIDE, ..req("rps.test", "/") }).0, Got::Proxy { .. }));

    let lines: [httparse::Header<'_>; 0] = [];
    let facts = Facts {
        host: "conns.test",
        path: "/",
        query: None,
        tls: false,
        client: Some(INSIDE),
        https_port: None,
        content_length: None,
        headers: &lines[..],
        roll: 0,
        now_ns: 1,
    };
    let Decision::Proxy(first) = decide(&t, &facts) else { panic!("the first request is proxied") };
    assert!(first.slot.is_some());
    assert!(matches!(decide(&t, &facts), Decision::Answer { answer, .. } if answer.status == 503));
    drop(first);
    assert!(matches!(decide(&t, &facts), Decision::Proxy(_)), "the slot was released with the plan");
}

#[test]
fn the_compiler_sends_only_http1_backends_to_the_fast_path() {
    let t = table();
    let fast = |host: &str| t.lookup(host, "/api/x").route.expect("route").fast;
    for host in ["plain.test", "canary.test", "rewrite.test", "sticky.test", "rps.test", "moved.test", "tls-pod.test"] {
        assert!(fast(host), "{host} is carried by the fast path");
    }
    assert!(!fast("grpc.test"), "gRPC to pods is Pingora's");
}

#[test]
fn a_new_endpoint_gets_the_affinity_cookie_and_a_pinned_one_does_not() {
    let t = table();
    let route = t.lookup("sticky.test", "/").route.expect("route");
    let pool = route.backend.pool().expect("pool");
    let affinity = route.policy.affinity.as_ref();
    let fresh = pick(pool, affinity, None, &[], true, 1).expect("an endpoint");
    let cookie = fresh.set_cookie.expect("a new choice is named");
    assert_eq!(cookie, format!("S={}; Path=/; HttpOnly; Secure", fresh.endpoint.cookie));
    let pinned = &pool.active()[0];
    let again = pick(pool, affinity, Some(pinned), &[], false, 1).expect("pinned");
    assert_eq!((again.endpoint.addr, again.set_cookie), (pinned.addr, None));
    let retry = pick(pool, affinity, Some(pinned), &[pinned.addr], false, 1).expect("another");
    assert_ne!(retry.endpoint.addr, pinned.addr, "a retry leaves the pinned endpoint that failed");
    assert!(retry.set_cookie.is_some_and(|c| !c.contains("Secure")), "the retry's endpoint is named");
    assert!(pick(pool, None, None, &[], false, 1).expect("plain").set_cookie.is_none());
}

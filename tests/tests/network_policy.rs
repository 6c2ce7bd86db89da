//! NetworkPolicy end to end on three nodes, with the real kubectl: enforcement across nodes on the destination
//! side (the server's node) and the source side (the client's node), ClusterIP traffic judged against the backend the
//! balancer chose, verdicts and counters readable through the API server, and enforcement that outlives the agent
//! (killed, then restarted without rewriting anything).
//!
//! Needs root (network namespaces, runc, BPF) and the built-in images of `scripts/setup`.

use std::time::Duration;

use skiff_e2e::*;

fn pod(ns: &str, name: &str, node: &str, app: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: docker.io/skiff/echo:v1
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}
"#
    )
}

/// A log line without its ANSI colour sequences.
fn without_colours(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// `kubectl -n NS exec POD -- argv` → (success, stdout).
fn run_in(c: &Cluster, ns: &str, pod: &str, argv: &[&str]) -> (bool, String) {
    let mut cmd = c.server_ns.command("kubectl");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(["-n", ns, "exec", pod, "--"]).args(argv);
    let out = cmd.output().expect("kubectl runs");
    let text = if out.status.success() { &out.stdout } else { &out.stderr };
    (out.status.success(), String::from_utf8_lossy(text).into_owned())
}

/// Whether `pod` (in `ns`) gets an answer from `url` within 3 s (busybox `timeout`: its `wget -T` crashes).
fn reaches(c: &Cluster, ns: &str, pod: &str, url: &str) -> bool {
    run_in(c, ns, pod, &["timeout", "3", "wget", "-q", "-O-", url]).0
}

/// Asserts who reaches `url`, each (namespace, pod, expected) in turn, waiting up to 20 s for the policy to land.
fn expect(c: &Cluster, what: &str, url: &str, cases: &[(&str, &str, bool)]) {
    let settled = wait_for(Duration::from_secs(20), what, || {
        cases.iter().all(|(ns, pod, want)| reaches(c, ns, pod, url) == *want).then_some(())
    });
    if settled.is_err() {
        let got: Vec<String> = cases
            .iter()
            .map(|(ns, pod, want)| {
                let (ok, out) = run_in(c, ns, pod, &["timeout", "3", "wget", "-q", "-O-", url]);
                format!("{ns}/{pod}: expected {want}, reaches {ok}: {}", out.trim())
            })
            .collect();
        let verdicts =
            c.kubectl(&["get", "--raw", "/api/v1/nodes/n1/proxy/policy/verdicts"]).unwrap_or_else(|e| e.to_string());
        fail(c, &format!("{what} ({url}):\n{}\nverdicts on n1:\n{verdicts}", got.join("\n")));
    }
    step(&format!("{what}: as expected"));
}

#[test]
fn network_policy_across_nodes_with_kubectl() {
    let Some(mut c) = cluster("the NetworkPolicy end-to-end test", 3) else { return };
    step("two namespaces, a server on n1 and clients on n1, n2 and n3");
    apply(&c, "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: shop}}\n");
    apply(&c, "apiVersion: v1\nkind: Namespace\nmetadata: {name: web, labels: {team: web}}\n");
    for (ns, name, node, app) in [
        ("shop", "db", "n1", "db"),
        ("shop", "neighbour", "n1", "client"),
        ("web", "frontend", "n2", "client"),
        ("web", "stranger", "n3", "other"),
    ] {
        apply(&c, &pod(ns, name, node, app));
    }
    for (ns, name) in [("shop", "db"), ("shop", "neighbour"), ("web", "frontend"), ("web", "stranger")] {
        kubectl(&c, &["-n", ns, "wait", "--for=condition=Ready", &format!("pod/{name}"), "--timeout=90s"]);
    }
    apply(
        &c,
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec:\n  selector: {app: db}\n  ports: [{port: 80, targetPort: http}]\n",
    );
    let db_ip = kubectl(&c, &["-n", "shop", "get", "pod", "db", "-o", "jsonpath={.status.podIP}"]);
    let direct = format!("http://{db_ip}:8080/");
    let service = "http://db.shop.svc.cluster.local/".to_string();
    let everyone = [("shop", "neighbour", true), ("web", "frontend", true), ("web", "stranger", true)];
    expect(&c, "without policies everyone reaches the db", &direct, &everyone);

    step("kubectl apply: the db takes 8080 only from app=client pods of team=web namespaces");
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web-clients, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: web}}
      podSelector: {matchLabels: {app: client}}
    ports: [{port: http}]
"#;
    apply(&c, policy);
    let only_frontend = [("shop", "neighbour", false), ("web", "frontend", true), ("web", "stranger", false)];
    expect(&c, "destination side (n1): only web/frontend reaches the db by pod IP", &direct, &only_frontend);
    expect(&c, "the ClusterIP is judged against the chosen backend", &service, &only_frontend);

    step("source side: web's clients may only talk to the cluster DNS (no rule for the db)");
    apply(
        &c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients-dns-only, namespace: web}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#,
    );
    expect(&c, "frontend (n2) is stopped at its own node", &direct, &[("web", "frontend", false)]);
    // Names still resolve: the cluster DNS runs on the node, and traffic with the node is always allowed.
    let (_, out) = run_in(&c, "web", "frontend", &["nslookup", "db.shop.svc.cluster.local"]);
    assert!(out.contains("Name:\tdb.shop.svc.cluster.local"), "{out}");
    kubectl(&c, &["-n", "web", "delete", "networkpolicy", "clients-dns-only"]);
    expect(&c, "frontend reaches the db again once its egress policy is gone", &direct, &[("web", "frontend", true)]);

    step("verdicts and counters through the API server (nodes/proxy), and only for those allowed nodes/proxy");
    let refused = c.kubectl(&["get", "--raw", "/api/v1/nodes/n1/proxy/policy/verdicts", "--as", "alice"]);
    match refused {
        Err(e) => assert!(e.to_string().contains("Forbidden") || e.to_string().contains("forbidden"), "{e}"),
        Ok(out) => fail(&c, &format!("a user without nodes/proxy read the verdicts: {out}")),
    }
    let verdicts = kubectl(&c, &["get", "--raw", "/api/v1/nodes/n1/proxy/policy/verdicts"]);
    let denied = verdicts
        .lines()
        .find(|l| l.contains("denied ingress tcp") && l.contains("(web/stranger)") && l.contains("(shop/db)"))
        .unwrap_or_else(|| fail(&c, &format!("no denied verdict for web/stranger -> shop/db in:\n{verdicts}")));
    assert!(
        denied.contains("shop/db is isolated for ingress by shop/db-from-web-clients and no rule allows it"),
        "{denied}"
    );
    assert!(
        verdicts.lines().any(|l| l.contains("(web/frontend)") && l.ends_with("allowed by shop/db-from-web-clients")),
        "{verdicts}"
    );
    let metrics = kubectl(&c, &["get", "--raw", "/api/v1/nodes/n1/proxy/metrics"]);
    let counter = metrics
        .lines()
        .find(|l| {
            l.starts_with("skiff_agent_network_policy_flows_total{")
                && l.contains("pod=\"db\"")
                && l.contains("verdict=\"denied\"")
        })
        .unwrap_or_else(|| fail(&c, &format!("no denied counter for shop/db in:\n{metrics}")));
    let n: f64 = counter.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!(n >= 2.0, "{counter}");

    step("fail-static: with n1's agent killed the policy holds; restarted, it rewrites nothing");
    c.kill_agent(0);
    expect(&c, "the policy holds with no agent on n1", &direct, &only_frontend);
    c.start_agent(0).expect("restarting the agent");
    wait(&c, Duration::from_secs(60), "the restarted agent to put its policy in place", || {
        c.agent_log(0).lines().filter(|l| l.contains("network policy in place")).nth(1).map(|_| ())
    });
    let log = without_colours(&c.agent_log(0));
    let line = log.lines().filter(|l| l.contains("network policy in place")).nth(1).unwrap_or_default().to_string();
    assert!(line.contains("writes=0"), "a restart with nothing changed must write nothing: {line}");
    expect(&c, "the policy holds after the restart", &direct, &only_frontend);

    step("deleting the policy opens the db again");
    kubectl(&c, &["-n", "shop", "delete", "networkpolicy", "db-from-web-clients"]);
    expect(&c, "without policies everyone reaches the db again", &direct, &everyone);
}

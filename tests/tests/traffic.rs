//! Seed scenarios 1, 3 and 7 on one three-node cluster:
//! 1. one YAML file (Deployment of three `skiff/echo:v1`, Service, Ingress) applied with `kubectl apply -f`; the
//!    ingress reaches all three pods by host name; the Service answers on its ClusterIP and its DNS name from a pod,
//!    and on its NodePort from the client namespace;
//! 3. `kubectl set image` to v2 under load through the ingress: no failed request, only v1/v2 answers, then only v2;
//!    `kubectl rollout undo` back to v1, again without failures;
//! 7. a real Prometheus scrapes every component; `promtool check metrics` passes on every endpoint; PromQL returns
//!    the request rate per ingress host and the eBPF per-service counters.
//!
//! Needs root (network namespaces, runc, BPF) and the built-in images of `scripts/setup`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use skiff_e2e::*;

const INGRESS: &str = "10.0.0.11:80";
const HOST: &str = "echo.example";

fn ingress() -> SocketAddr {
    INGRESS.parse().expect("address")
}

#[test]
fn echo_app_through_ingress_services_rollouts_and_prometheus() {
    let Some(c) = cluster("the traffic scenarios", 3) else { return };
    scenario_1_one_file_reaches_every_pod_every_way(&c);
    scenario_3_rolling_update_and_undo_under_load(&c);
    scenario_7_prometheus_scrapes_everything(&c);
}

fn scenario_1_one_file_reaches_every_pod_every_way(c: &Cluster) {
    step("scenario 1: kubectl apply -f manifests/scenarios/echo.yaml");
    let file = repo_root().join("manifests/scenarios/echo.yaml");
    kubectl(c, &["apply", "-f", &file.display().to_string()]);
    kubectl(c, &["rollout", "status", "deployment/echo", "--timeout=90s"]);
    let pods: BTreeSet<String> = ready_pods(c, "app=echo").into_iter().collect();
    assert_eq!(pods.len(), 3, "{pods:?}");
    let nodes = kubectl(c, &["get", "pods", "-l", "app=echo", "-o", "jsonpath={.items[*].spec.nodeName}"]);
    step(&format!("pods {pods:?} on nodes {nodes}"));

    step("the ingress reaches all three pods by host name");
    let mut seen = BTreeSet::new();
    let reached = wait_for(Duration::from_secs(30), "answers from all three pods through the ingress", || {
        let body = c
            .on_client(
                "curl",
                &["-s", "--max-time", "2", "-H", &format!("Host: {HOST}"), &format!("http://{INGRESS}/")],
            )
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        seen.insert(v["pod"].as_str()?.to_string());
        (seen == pods).then_some(())
    });
    if let Err(e) = reached {
        fail(c, &format!("{e}: seen {seen:?} of {pods:?}"));
    }
    let status = kubectl(c, &["get", "ingress", "echo", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"]);
    assert_eq!(status, "10.0.0.11", "the ingress publishes its address");
    let unknown = c.on_client(
        "curl",
        &["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: nobody.example", &format!("http://{INGRESS}/")],
    );
    assert_eq!(unknown.ok().as_deref(), Some("404"), "an unknown host gets 404");

    step("the Service by ClusterIP and by DNS name from a pod");
    let cluster_ip = kubectl(c, &["get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    let client_pod = pods.iter().next().expect("a pod").clone();
    let mut by_ip = BTreeSet::new();
    for _ in 0..12 {
        // (busybox's `wget -T` crashes in busybox-static 1.35, so no -T: the balancer answers at once anyway)
        let (code, out) = exec(c, &client_pod, &["wget", "-qO-", &format!("http://{cluster_ip}/")]);
        assert_eq!(code, 0, "wget http://{cluster_ip}/ from {client_pod}: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| fail(c, &format!("{out:?}: {e}")));
        by_ip.insert(v["pod"].as_str().unwrap_or_default().to_string());
    }
    assert!(by_ip.len() >= 2, "ClusterIP connections are spread over the backends: {by_ip:?}");
    let (code, out) = exec(c, &client_pod, &["wget", "-qO-", "http://echo.default.svc.cluster.local/"]);
    assert_eq!(code, 0, "by DNS name: {out}");
    assert!(out.contains("\"namespace\":\"default\""), "{out}");
    let (code, out) = exec(c, &client_pod, &["wget", "-qO-", "http://echo/"]);
    assert_eq!(code, 0, "by short name through the search path: {out}");

    step("the Service by NodePort from the client namespace, on every node");
    for ip in ["10.0.0.11", "10.0.0.12", "10.0.0.13"] {
        let out = c.on_client("curl", &["-s", "--max-time", "3", &format!("http://{ip}:30080/")]);
        let out = out.unwrap_or_else(|e| fail(c, &format!("NodePort on {ip}: {e}")));
        assert!(out.contains("\"version\":\"v1\""), "NodePort on {ip}: {out}");
    }
}

/// Waits until every Ready echo pod runs `version` and there are three of them.
fn wait_all_on(c: &Cluster, version: &str) {
    kubectl(c, &["rollout", "status", "deployment/echo", "--timeout=120s"]);
    wait(c, Duration::from_secs(30), &format!("only {version} answering through the ingress"), || {
        let answers: Vec<String> = (0..6)
            .filter_map(|_| {
                let (_, body) = http_get_from_client(c, "/")?;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                Some(v["version"].as_str()?.to_string())
            })
            .collect();
        (answers.len() == 6 && answers.iter().all(|v| v == version)).then_some(())
    });
}

fn http_get_from_client(c: &Cluster, path: &str) -> Option<(u16, String)> {
    let ns = c.client.as_ref()?;
    ns.enter(|| http_get(ingress(), HOST, path, Duration::from_secs(2)).ok()).ok().flatten()
}

fn rollout_under_load(c: &Cluster, what: &str, change: &[&str], from: &str, to: &str) {
    step(&format!("scenario 3: {what} under load through the ingress"));
    let load = Load::start(c, ingress(), HOST, "/", Duration::from_millis(5), Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    let changed = Instant::now();
    kubectl(c, change);
    wait_all_on(c, to);
    let took = changed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let samples = load.finish();
    let report = summary(&samples);
    step(&format!("{what}: {report}; rollout took {:.1} s", took.as_secs_f64()));
    let failed = failures(&samples);
    assert!(failed.is_empty(), "{what}: {report}; failures: {:?}", failed.iter().take(5).collect::<Vec<_>>());
    let versions: BTreeSet<&str> =
        samples.iter().filter_map(|s| s.result.as_ref().ok()).map(|(v, _)| v.as_str()).collect();
    assert!(versions.iter().all(|v| *v == from || *v == to), "only {from} or {to} answered: {versions:?}");
    let last_from = samples.iter().rposition(|s| s.result.as_ref().is_ok_and(|(v, _)| v == from));
    let first_only_to = samples.iter().rposition(|s| s.result.as_ref().is_ok_and(|(v, _)| v == to));
    assert!(last_from < first_only_to, "the run ends on {to}");
    assert!(samples.len() > 100, "the load ran: {report}");
}

fn scenario_3_rolling_update_and_undo_under_load(c: &Cluster) {
    rollout_under_load(
        c,
        "kubectl set image echo=skiff/echo:v2",
        &["set", "image", "deployment/echo", "echo=skiff/echo:v2"],
        "v1",
        "v2",
    );
    let history = kubectl(c, &["rollout", "history", "deployment/echo"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    rollout_under_load(c, "kubectl rollout undo", &["rollout", "undo", "deployment/echo"], "v2", "v1");
}

fn scenario_7_prometheus_scrapes_everything(c: &Cluster) {
    step("scenario 7: promtool check metrics on every endpoint");
    let pki = c.dir.join("server/pki");
    let mut endpoints = vec![("apiserver".to_string(), "https://10.0.0.2:6443/metrics".to_string())];
    for n in &c.nodes {
        endpoints.push((format!("agent {}", n.name), format!("http://{}:10255/metrics", n.ip)));
        endpoints.push((format!("lb {}", n.name), format!("http://{}:10249/metrics", n.ip)));
    }
    endpoints.push(("ingress".into(), "http://10.0.0.11:10254/metrics".into()));
    for (what, url) in &endpoints {
        let ca = pki.join("ca.crt").display().to_string();
        // the API server's metrics need a grant (system:monitoring or an admin): scrape with the admin certificate
        let (crt, key) = (pki.join("admin.crt").display().to_string(), pki.join("admin.key").display().to_string());
        let text =
            c.server_ns.exec("curl", &["-sf", "--max-time", "5", "--cacert", &ca, "--cert", &crt, "--key", &key, url]);
        let text = text.unwrap_or_else(|e| fail(c, &format!("{what} at {url}: {e}")));
        let mut check = c.server_ns.command("promtool");
        check
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = check.spawn().expect("promtool runs");
        {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feeding promtool");
        }
        let out = child.wait_with_output().expect("promtool ends");
        assert!(
            out.status.success(),
            "promtool check metrics on {what} ({url}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    step("a real Prometheus scrapes every component");
    let dir = c.dir.join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let nodes = |port: u16| c.nodes.iter().map(|n| format!("'{}:{port}'", n.ip)).collect::<Vec<_>>().join(", ");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n\
         - job_name: apiserver\n  scheme: https\n  tls_config: {{ca_file: '{}', cert_file: '{}', key_file: '{}'}}\n  static_configs: [{{targets: ['10.0.0.2:6443']}}]\n\
         - job_name: agent\n  static_configs: [{{targets: [{}]}}]\n\
         - job_name: lb\n  static_configs: [{{targets: [{}]}}]\n\
         - job_name: ingress\n  static_configs: [{{targets: ['10.0.0.11:10254']}}]\n",
        pki.join("ca.crt").display(),
        pki.join("admin.crt").display(),
        pki.join("admin.key").display(),
        nodes(10255),
        nodes(10249)
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("writing the config");
    let mut cmd = c.server_ns.command("prometheus");
    cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg("--web.listen-address=10.0.0.2:9090")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log file"));
    let _prometheus = skiff_testkit::Child::spawn(cmd, "prometheus").expect("starting prometheus");
    let query = |q: &str| -> Option<serde_json::Value> {
        let out = c
            .server_ns
            .exec(
                "curl",
                &[
                    "-s",
                    "--max-time",
                    "3",
                    "--data-urlencode",
                    &format!("query={q}"),
                    "http://10.0.0.2:9090/api/v1/query",
                ],
            )
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let result = v["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then_some(serde_json::Value::Array(result))
    };
    wait(c, Duration::from_secs(30), "every target up", || {
        let up = query("sum(up)")?;
        let n = up[0]["value"][1].as_str()?.parse::<f64>().ok()?;
        (n as usize == endpoints.len()).then_some(())
    });
    step("traffic through the ingress and the ClusterIP, then PromQL");
    let load = Load::start(c, ingress(), HOST, "/", Duration::from_millis(10), Duration::from_secs(60));
    let pod = ready_pods(c, "app=echo").into_iter().next().expect("an echo pod");
    let cluster_ip = kubectl(c, &["get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    for _ in 0..5 {
        exec(c, &pod, &["wget", "-qO-", &format!("http://{cluster_ip}/")]);
    }
    let mut by_host = serde_json::Value::Null;
    wait(c, Duration::from_secs(30), "the request rate per ingress host", || {
        by_host = query("sum by (host) (rate(skiff_ingress_requests_total[10s]))")?;
        let series = by_host.as_array()?.iter().find(|s| s["metric"]["host"] == HOST)?;
        (series["value"][1].as_str()?.parse::<f64>().ok()? > 1.0).then_some(())
    });
    let samples = load.finish();
    step(&format!("requests per second by host: {by_host}; load: {}", summary(&samples)));
    let mut per_service = serde_json::Value::Null;
    wait(c, Duration::from_secs(30), "the eBPF per-service connection counter", || {
        per_service = query("sum by (namespace, service) (skiff_lb_service_connections_total)")?;
        let series = per_service
            .as_array()?
            .iter()
            .find(|s| s["metric"]["namespace"] == "default" && s["metric"]["service"] == "echo")?;
        (series["value"][1].as_str()?.parse::<f64>().ok()? >= 5.0).then_some(())
    });
    step(&format!("eBPF connections by service: {per_service}"));
}

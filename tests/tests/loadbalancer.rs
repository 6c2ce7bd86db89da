//! LoadBalancer Services end to end with the real kubectl: on node addresses by default (k3s ServiceLB's way, the
//! eBPF tc path answering on each node's address at the Service's port), collisions left pending with an Event,
//! and a rolling update behind the address without a failed request.
//!
//! Needs root (network namespaces, runc, BPF) and the built-in images of `scripts/setup`.

use std::net::SocketAddr;
use std::time::Duration;

use skiff_e2e::*;

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: echo
        image: skiff/echo:v1
        ports: [{name: http, containerPort: 8080}]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        # As with kube-proxy, a pod must keep serving for a moment after SIGTERM, until every node's balancer has
        # taken it out (the same race Kubernetes users close with a preStop sleep).
        - {name: ECHO_SHUTDOWN_DELAY, value: 2s}
        readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{name: http, port: 8088, targetPort: http}]
"#;

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: LoadBalancer\n  selector: {{app: echo}}\n  ports: [{{port: {port}, targetPort: 8080}}]\n"
    )
}

fn ingress_ips(c: &Cluster, svc: &str) -> String {
    c.jsonpath(&["service", svc], "{.status.loadBalancer.ingress[*].ip}").unwrap_or_default().trim().to_string()
}

/// Waits for a Warning Event on Service `svc` whose message contains `needle`; returns the message.
fn pending_event(c: &Cluster, svc: &str, needle: &str) -> String {
    let selector = format!("involvedObject.name={svc},reason=AllocationFailed");
    let mut seen = String::new();
    let found = wait_for(Duration::from_secs(30), &format!("an AllocationFailed event on {svc}"), || {
        seen =
            c.kubectl(&["get", "events", "--field-selector", &selector, "-o", "jsonpath={.items[*].message}"]).ok()?;
        seen.contains(needle).then_some(())
    });
    if found.is_err() {
        fail(c, &format!("no event on {svc} mentioning {needle:?}; events: {seen:?}"));
    }
    seen
}

#[test]
fn load_balancer_services_answer_on_node_addresses_and_collisions_stay_pending() {
    let Some(c) = cluster("LoadBalancer Services on node addresses", 3) else { return };
    let nodes: Vec<String> = c.nodes.iter().map(|n| n.ip.to_string()).collect();
    apply(&c, APP);
    kubectl(&c, &["rollout", "status", "deployment/echo", "--timeout=90s"]);

    step("a LoadBalancer Service gets the address of every node");
    wait(&c, Duration::from_secs(30), "the Service's addresses", || {
        (ingress_ips(&c, "web") == nodes.join(" ")).then_some(())
    });
    let row = kubectl(&c, &["get", "service", "web", "--no-headers"]);
    assert!(row.contains(&nodes.join(",")), "kubectl shows the addresses as EXTERNAL-IP: {row}");

    step("the outside client reaches it on each node's address at the Service's port");
    for ip in &nodes {
        let addr: SocketAddr = format!("{ip}:8088").parse().expect("address");
        let got = wait_for(Duration::from_secs(20), &format!("an answer on {addr}"), || {
            let out = c.on_client("curl", &["-sf", "--max-time", "2", &format!("http://{addr}/")]).ok()?;
            out.contains("\"pod\"").then_some(out)
        });
        if let Err(e) = got {
            fail(&c, &format!("{addr}: {e}"));
        }
    }

    step("a second Service on the same port, and one on the ingress's port 80, stay pending with an Event");
    apply(&c, &service("web-again", 8088));
    apply(&c, &service("on-80", 80));
    let msg = pending_event(&c, "web-again", "is held by Service default/web");
    assert!(msg.contains("port 8088/TCP"), "{msg}");
    pending_event(&c, "on-80", "port 80/TCP is taken on the node address");
    assert_eq!(ingress_ips(&c, "web-again"), "");
    let row = kubectl(&c, &["get", "service", "on-80", "--no-headers"]);
    assert!(row.contains("<pending>"), "{row}");

    step("deleting the holder lets the pending Service take the port");
    kubectl(&c, &["delete", "service", "web"]);
    wait(&c, Duration::from_secs(30), "web-again to get the addresses", || {
        (ingress_ips(&c, "web-again") == nodes.join(" ")).then_some(())
    });

    let addr: SocketAddr = format!("{}:8088", nodes[1]).parse().expect("address");
    let answered = wait_for(Duration::from_secs(20), "web-again to answer", || {
        let out = c.on_client("curl", &["-sf", "--max-time", "1", &format!("http://{addr}/")]).ok()?;
        out.contains("\"pod\"").then_some(())
    });
    if let Err(e) = answered {
        fail(&c, &e.to_string());
    }

    step("a rolling update behind the LoadBalancer address drops no request");
    let load = Load::start(&c, addr, "lb.example", "/", Duration::from_millis(5), Duration::from_secs(150));
    std::thread::sleep(Duration::from_secs(1));
    kubectl(&c, &["set", "image", "deployment/echo", "echo=skiff/echo:v2"]);
    kubectl(&c, &["rollout", "status", "deployment/echo", "--timeout=120s"]);
    std::thread::sleep(Duration::from_secs(1));
    let samples = load.finish();
    let report = summary(&samples);
    step(&format!("rolling update behind {addr}: {report}"));
    let failed = failures(&samples);
    assert!(failed.is_empty(), "{report}; failures: {:?}", failed.iter().take(5).collect::<Vec<_>>());
    assert!(samples.iter().any(|s| matches!(&s.result, Ok((v, _)) if v == "v2")), "the new version answered");
}

fn holder(c: &Cluster, lease: &str) -> String {
    c.kubectl(&["-n", "kube-system", "get", "lease", lease, "-o", "jsonpath={.spec.holderIdentity}"])
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn pool_addresses_are_announced_on_the_link_and_move_when_the_holder_dies() {
    if !skiff_testkit::require_privileges("LoadBalancer pool with L2 announcement") {
        return;
    }
    let mut cfg = ClusterConfig::full(skiff_binary(), 3);
    cfg.ingress_node = None;
    cfg.server_args = vec!["--lb-pool".into(), "10.0.0.200-10.0.0.201".into()];
    step("starting a 3-node cluster with the LoadBalancer pool 10.0.0.200-10.0.0.201");
    let mut c = Cluster::start(cfg).expect("starting the cluster");
    // n3 runs the app but never announces: killing the announcing node does not kill the backend.
    kubectl(&c, &["label", "node", "n3", "node.kubernetes.io/exclude-from-external-load-balancers="]);
    apply(
        &c,
        &APP.replace("replicas: 2", "replicas: 1").replace(
            "    spec:\n      terminationGracePeriodSeconds",
            "    spec:\n      nodeName: n3\n      terminationGracePeriodSeconds",
        ),
    );
    kubectl(&c, &["rollout", "status", "deployment/echo", "--timeout=90s"]);

    step("the Service gets the pool's first address; the client reaches it through ARP answered by its holder");
    wait(&c, Duration::from_secs(30), "a pool address", || (ingress_ips(&c, "web") == "10.0.0.200").then_some(()));
    let url = "http://10.0.0.200:8088/";
    let reached = wait_for(Duration::from_secs(20), "an answer on 10.0.0.200:8088", || {
        c.on_client("curl", &["-sf", "--max-time", "1", url]).ok().filter(|o| o.contains("\"pod\""))
    });
    if let Err(e) = reached {
        fail(&c, &e.to_string());
    }
    let first = holder(&c, "skiff-lb-10-0-0-200");
    assert!(first == "n1" || first == "n2", "an eligible node holds the address: {first:?}");

    step("addresses are unique; an exhausted pool leaves the Service pending until the pool is edited");
    apply(&c, &service("second", 9000));
    apply(&c, &service("third", 9001));
    wait(&c, Duration::from_secs(30), "the second address", || {
        (ingress_ips(&c, "second") == "10.0.0.201").then_some(())
    });
    pending_event(&c, "third", "no free address in the LoadBalancer pool (2 addresses");
    kubectl(
        &c,
        &[
            "-n",
            "kube-system",
            "patch",
            "configmap",
            "skiff-lb-pool",
            "--type=merge",
            "-p",
            r#"{"data":{"addresses":"10.0.0.200-10.0.0.201, 10.0.0.210"}}"#,
        ],
    );
    wait(&c, Duration::from_secs(30), "the edited pool's address", || {
        (ingress_ips(&c, "third") == "10.0.0.210").then_some(())
    });

    step(&format!("the holder {first} dies (agent killed, link down) under load"));
    let addr: SocketAddr = "10.0.0.200:8088".parse().expect("address");
    let load = Load::start_with_timeout(
        &c,
        addr,
        "lb.example",
        "/",
        Duration::from_millis(20),
        Duration::from_secs(60),
        Duration::from_millis(300),
    );
    std::thread::sleep(Duration::from_secs(1));
    let i = if first == "n1" { 0 } else { 1 };
    let killed_at = load.started.elapsed();
    c.kill_agent(i);
    c.set_link(i, false).expect("link down");
    let other = if first == "n1" { "n2" } else { "n1" };
    wait(&c, Duration::from_secs(20), "the other node to take the address over", || {
        (holder(&c, "skiff-lb-10-0-0-200") == other).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let samples = load.finish();
    let failed = failures(&samples);
    // The gap: from the kill to the first answer after the last failed request.
    let last_failure = failed.iter().map(|s| s.at).max().unwrap_or(killed_at);
    let resumed = samples.iter().find(|s| s.at > last_failure && s.result.is_ok()).map(|s| s.at - killed_at);
    step(&format!(
        "failover: {}; answers resumed {:.2} s after the kill ({} failed requests)",
        summary(&samples),
        resumed.map_or(f64::NAN, |d| d.as_secs_f64()),
        failed.len()
    ));
    assert!(failed.iter().all(|s| s.at >= killed_at), "nothing failed before the kill: {failed:?}");
    let resumed = resumed.unwrap_or_else(|| fail(&c, "no answer after the holder died"));
    assert!(resumed < Duration::from_secs(10), "the address moved: answers resumed after {resumed:?}");
    assert!(samples.last().is_some_and(|s| s.result.is_ok()), "and keep coming");
}

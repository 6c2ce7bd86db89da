//! The cluster's way out, end to end: an "outside" host (the client namespace with a documentation-range address,
//! 198.51.100.10, which has no route to the pod network) that also serves DNS for one name the cluster does not own.
//! The nodes route 198.51.100.0/24 to it, as they would a default gateway. A pod fetches from it by IP, by the
//! outside name (cluster DNS forwards to the upstream), and through an ExternalName Service (CNAME and address in
//! one answer); the outside host sees the node's address (eBPF masquerade), and the agent counts the flows.
//!
//! Needs root (network namespaces, runc, BPF) and the built-in images of `scripts/setup`.

use std::time::Duration;

use skiff_e2e::*;
use skiff_testkit::probe;

const OUTSIDE: &str = "198.51.100.10";

#[test]
fn probe_entry() {
    probe::entry();
}

/// `kubectl exec POD -- wget …` with a 3 s limit → (success, output).
fn fetch(c: &Cluster, pod: &str, url: &str) -> (bool, String) {
    let mut cmd = c.server_ns.command("kubectl");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(["exec", pod, "--", "timeout", "3", "wget", "-q", "-O-", url]);
    let out = cmd.output().expect("kubectl runs");
    let text = if out.status.success() { &out.stdout } else { &out.stderr };
    (out.status.success(), String::from_utf8_lossy(text).into_owned())
}

#[test]
fn pods_reach_the_outside_by_address_by_upstream_name_and_through_an_external_name_service() {
    if !skiff_testkit::require_privileges("pod egress end to end") {
        return;
    }
    let mut cfg = ClusterConfig::full(skiff_binary(), 3);
    cfg.ingress_node = None;
    cfg.agent_args = vec!["--dns-upstream".into(), format!("{CLIENT_IP}:53")];
    step("starting a 3-node cluster whose agents forward DNS to the outside host");
    let c = Cluster::start(cfg).expect("starting the cluster");
    let outside = c.client.as_ref().expect("the client namespace");
    outside.ip(&["addr", "add", &format!("{OUTSIDE}/32"), "dev", "eth0"]).expect("outside address");
    for n in &c.nodes {
        n.ns.ip(&["route", "add", "198.51.100.0/24", "via", &CLIENT_IP.to_string()]).expect("route to the outside");
    }
    let _web = probe::server(outside, &format!("serve-tcp {OUTSIDE}:8080 outside")).expect("outside web server");
    let _dns = probe::server(outside, &format!("serve-dns {CLIENT_IP}:53 egress.example {OUTSIDE}"))
        .expect("outside DNS server");

    apply(
        &c,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: caller, labels: {app: caller}}
spec:
  nodeName: n2
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: docker.io/skiff/echo:v1
---
apiVersion: v1
kind: Service
metadata: {name: legacy-db}
spec: {type: ExternalName, externalName: egress.example}
"#,
    );
    wait(&c, Duration::from_secs(60), "the caller pod to run", || {
        let phase = c.jsonpath(&["pod", "caller"], "{.status.phase}").ok()?;
        (phase.trim() == "Running").then_some(())
    });

    let node = c.nodes[1].ip.to_string();
    for (what, url) in [
        ("by address", format!("http://{OUTSIDE}:8080/")),
        ("by a name only the upstream resolver knows", "http://egress.example:8080/".to_string()),
        ("through an ExternalName Service", "http://legacy-db.default.svc.cluster.local:8080/".to_string()),
    ] {
        step(&format!("the pod fetches from the outside host {what}"));
        let (ok, body) = fetch(&c, "caller", &url);
        if !ok {
            fail(&c, &format!("{url}: {body}"));
        }
        let peer = probe::field(body.trim(), "peer").unwrap_or_default().to_string();
        assert!(body.contains("id=outside"), "{body}");
        assert!(peer.starts_with(&format!("{node}:")), "the outside host sees the node address, not the pod's: {body}");
    }

    step("the agent's load balancer counts the translated flows");
    let metrics = c
        .on_node(1, "curl", &["-sf", &format!("http://{node}:{}/metrics", skiff_testkit::cluster::LB_METRICS_PORT)])
        .expect("lb metrics");
    let flows: f64 = metrics
        .lines()
        .find(|l| l.starts_with("skiff_lb_masquerade_flows_total{protocol=\"TCP\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(flows >= 3.0, "three fetches, at least three translated flows: {flows}");
}

//! The HA control plane with real nodes (issue 15): three etcd members and three `skiff server`s (joined with the
//! server token, leader election with a 4 s lease) in the server namespace, two node agents given all three servers.
//! The leader server is killed with SIGKILL — and the agents' first server too, when that is another one — and then:
//! the pods keep running (the same containers, not restarted), both nodes keep renewing their Leases through a
//! surviving server and stay Ready, a Deployment scaled through a survivor gets its new pods scheduled, started and
//! Ready, and kubectl keeps working.
//!
//! Needs root (network namespaces, runc, cgroups), etcd and the built-in images of `scripts/setup`.

mod agent_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agent_support::*;
use serde_json::Value;
use skiff_testkit::cluster::{Cluster, server_ip, wait_for};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: skiff/echo:v1
        readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
"#;

/// The web pods by name: (uid, container id, restarts, ready).
fn web_pods(c: &Cluster) -> BTreeMap<String, (String, String, i64, bool)> {
    let out = kubectl(c, &["get", "pods", "-l", "app=web", "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap_or_else(|e| fail(c, &format!("{e}: {out}")));
    let mut pods = BTreeMap::new();
    for p in list["items"].as_array().into_iter().flatten() {
        let name = p.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let uid = p.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
        let status = container_status(p, "web").unwrap_or_default();
        let id = status["containerID"].as_str().unwrap_or_default().to_string();
        let restarts = status["restartCount"].as_i64().unwrap_or(-1);
        let ready = condition(p, "Ready").as_deref() == Some("True");
        pods.insert(name, (uid, id, restarts, ready));
    }
    pods
}

fn ready_count(c: &Cluster) -> usize {
    web_pods(c).values().filter(|p| p.3).count()
}

fn node_lease_version(c: &Cluster, node: &str) -> String {
    kubectl(c, &["get", "lease", "-n", "kube-node-lease", node, "-o", "jsonpath={.metadata.resourceVersion}"])
}

#[test]
fn pods_keep_running_and_nodes_fail_over_when_the_leader_server_dies() {
    let Some(mut c) = cluster_configured("the HA cluster test", 2, |cfg| {
        cfg.servers = 3;
        cfg.etcd_members = 3;
        cfg.server_args.extend(
            ["--leader-elect-lease-duration", "4s", "--leader-elect-renew-deadline", "3s"]
                .into_iter()
                .chain(["--leader-elect-retry-period", "1s"])
                .map(String::from),
        );
    }) else {
        return;
    };
    step("a Deployment of two pods runs on the nodes");
    apply(&c, DEPLOYMENT);
    wait_for(Duration::from_secs(120), "two web pods Ready", || (ready_count(&c) == 2).then_some(()))
        .unwrap_or_else(|e| fail(&c, &e.to_string()));
    let before = web_pods(&c);
    let holder = kubectl(
        &c,
        &["get", "lease", "-n", "kube-system", "skiff-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"],
    );
    let leader = (0..3)
        .find(|i| holder.ends_with(&format!("_{}:6443", server_ip(*i))))
        .unwrap_or_else(|| fail(&c, &format!("the leader {holder:?} names no server")));
    // the agents use the first server they were given until it fails: it dies too
    let killed: Vec<usize> = if leader == 0 { vec![0] } else { vec![leader, 0] };
    let survivor = (0..3).find(|i| !killed.contains(i)).expect("one survives");
    eprintln!("leader: server {leader}; killing {killed:?}, kubectl through server {survivor}");
    let leases_before: Vec<String> = ["n1", "n2"].iter().map(|n| node_lease_version(&c, n)).collect();

    step("the leader server dies (SIGKILL)");
    c.kubeconfig = c.server_dir(survivor).join("kubeconfig");
    let t0 = Instant::now();
    for i in &killed {
        c.kill_server(*i);
    }
    wait_for(Duration::from_secs(20), "the scale accepted by a surviving server", || {
        c.kubectl_output(&["scale", "deployment", "web", "--replicas=4"], None).ok().filter(|o| o.0).map(|_| ())
    })
    .unwrap_or_else(|e| fail(&c, &e.to_string()));
    wait_for(Duration::from_secs(120), "four web pods Ready after the kill", || (ready_count(&c) == 4).then_some(()))
        .unwrap_or_else(|e| fail(&c, &format!("{e}: {:?}", web_pods(&c))));
    eprintln!("four pods Ready {:?} after the kill (scheduled by the new leader, started by the agents)", t0.elapsed());

    step("the first pods kept running, untouched");
    let after = web_pods(&c);
    for (name, (uid, id, restarts, _)) in &before {
        let now = after.get(name).unwrap_or_else(|| fail(&c, &format!("pod {name} is gone: {after:?}")));
        assert_eq!((&now.0, &now.1), (uid, id), "pod {name}: the same pod and container");
        assert_eq!((now.2, *restarts, now.3), (0, 0, true), "pod {name}: not restarted, still Ready");
    }

    step("both nodes renew their Leases through a surviving server and stay Ready");
    for (i, node) in ["n1", "n2"].iter().enumerate() {
        wait_for(Duration::from_secs(30), &format!("{node}'s Lease renewed after the kill"), || {
            (node_lease_version(&c, node) != leases_before[i]).then_some(())
        })
        .unwrap_or_else(|e| fail(&c, &e.to_string()));
        let ready =
            kubectl(&c, &["get", "node", node, "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#]);
        assert_eq!(ready, "True", "{node} Ready");
    }
    for i in 0..2 {
        assert!(c.agent_running(i), "agent {i} still runs");
    }
}

//! The HA control plane with real nodes (issue 15): three etcd members and three `skiff server`s (joined with the
//! server token, leader election with a 4 s lease) in the server namespace, two node agents given all three servers.
//! The leader server is killed with SIGKILL — and the agents' first server too, when that is another one — and then:
//! the pods keep running (the same containers, not restarted), both nodes keep renewing their Leases through a
//! surviving server and stay Ready, a Deployment scaled through a survivor gets its new pods scheduled, started and
//! Ready, and kubectl keeps working. Then 100 simulated nodes join the two real ones (five of them tainted) and a
//! DaemonSet is scheduled by the new leader: one pod on every schedulable node, real and simulated, none on a
//! tainted one, and the two on the real nodes run.
//!
//! Needs root (network namespaces, runc, cgroups), etcd and the built-in images of `scripts/setup`.

mod agent_support;
mod simulated_nodes;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agent_support::*;
use serde_json::Value;
use skiff_testkit::cluster::{Cluster, server_ip, wait_for};

/// A workload of echo pods labelled `app: <name>` with a 1 s readiness probe: a Deployment of `replicas`, or (with
/// `None`) a DaemonSet.
fn echo_workload(name: &str, replicas: Option<u32>) -> String {
    let (kind, replicas) = match replicas {
        Some(n) => ("Deployment", format!("\n  replicas: {n}")),
        None => ("DaemonSet", String::new()),
    };
    format!(
        r#"
apiVersion: apps/v1
kind: {kind}
metadata: {{name: {name}}}
spec:{replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: skiff/echo:v1
        readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}
"#
    )
}

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
        // the agents join through a follower (server 0 starts first and leads): their certificate requests are
        // written there and must reach the leader's approver
        cfg.agents_first_server = 1;
        cfg.server_args.extend(
            ["--leader-elect-lease-duration", "4s", "--leader-elect-renew-deadline", "3s"]
                .into_iter()
                .chain(["--leader-elect-retry-period", "1s"])
                .map(String::from),
        );
    }) else {
        return;
    };
    step("the nodes joined through a follower: the leader approved their requests as they came");
    for node in ["n1", "n2"] {
        let out = kubectl(&c, &["get", "csr", "-o", "json"]);
        let list: Value = serde_json::from_str(&out).unwrap_or_else(|e| fail(&c, &format!("{e}: {out}")));
        let csr = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.starts_with(&format!("node-csr-{node}-")))
            })
            .unwrap_or_else(|| fail(&c, &format!("no certificate request of {node}: {out}")));
        let created = csr.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or_default();
        let approved = csr["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Approved")
            .and_then(|c| c["lastUpdateTime"].as_str())
            .unwrap_or_default();
        let secs = |t: &str| t.parse::<jiff::Timestamp>().map(|t| t.as_second()).unwrap_or(i64::MAX);
        let waited = secs(approved).saturating_sub(secs(created));
        eprintln!("{node}'s certificate request approved {waited} s after it was written through a follower");
        // the leader's fallback pass comes every 30 s: a request written elsewhere must not wait for it
        if waited >= 10 {
            fail(&c, &format!("{node}'s request waited {waited} s for the leader's approver"));
        }
    }

    step("a Deployment of two pods runs on the nodes");
    apply(&c, &echo_workload("web", Some(2)));
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
    let first = 1;
    let killed: Vec<usize> = if leader == first { vec![first] } else { vec![leader, first] };
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

    step("100 simulated nodes join the real ones; a DaemonSet lands on every schedulable one");
    let (simulated, tainted) = (100usize, 5usize);
    let nodes: Vec<Value> =
        (0..simulated).map(|i| simulated_nodes::node(&format!("sim-{i:03}"), i < tainted)).collect();
    // their Leases first, as a kubelet's heartbeat (the node lifecycle controller gives a node 8 s here)
    let names: Vec<String> = (0..simulated).map(|i| format!("sim-{i:03}")).collect();
    let kubelets = SimulatedKubelets::start(&c, names);
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": nodes}).to_string();
    match c.kubectl_output(&["create", "-f", "-"], Some(list.as_bytes())) {
        Ok((true, ..)) => {}
        other => fail(&c, &format!("creating the simulated nodes: {other:?}")),
    }
    let t1 = Instant::now();
    apply(&c, &echo_workload("everywhere", None));
    let expected: Vec<String> = ["n1".to_string(), "n2".to_string()]
        .into_iter()
        .chain((tainted..simulated).map(|i| format!("sim-{i:03}")))
        .collect();
    let placed = wait_for(Duration::from_secs(120), "a daemon pod bound to every schedulable node", || {
        let out = c.kubectl_output(&["get", "pods", "-l", "app=everywhere", "-o", "json"], None).ok()?.1;
        let list: Value = serde_json::from_str(&out).ok()?;
        let on: Vec<String> = list["items"]
            .as_array()?
            .iter()
            .filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str).map(String::from))
            .collect();
        (on.len() >= expected.len()).then_some(on)
    })
    .unwrap_or_else(|e| {
        let pods = c.kubectl_output(&["get", "pods", "-l", "app=everywhere", "-o", "wide"], None);
        let ds = c.kubectl_output(&["get", "daemonset", "everywhere", "-o", "yaml"], None);
        let sim = c.kubectl_output(&["get", "node", "sim-050", "-o", "yaml"], None);
        fail(&c, &format!("{e}\n{pods:?}\n{ds:?}\n{sim:?}"))
    });
    eprintln!("{} daemon pods bound {:?} after the DaemonSet was created", placed.len(), t1.elapsed());
    let mut sorted = placed.clone();
    sorted.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(sorted, want, "one pod per schedulable node, none on a tainted one");
    for node in ["n1", "n2"] {
        wait_for(Duration::from_secs(60), &format!("the daemon pod on {node} Ready"), || {
            let out = c
                .kubectl_output(
                    &[
                        "get",
                        "pods",
                        "-l",
                        "app=everywhere",
                        "--field-selector",
                        &format!("spec.nodeName={node}"),
                        "-o",
                        "json",
                    ],
                    None,
                )
                .ok()?
                .1;
            let list: Value = serde_json::from_str(&out).ok()?;
            let pod = list["items"].as_array()?.first()?.clone();
            (condition(&pod, "Ready").as_deref() == Some("True")).then_some(())
        })
        .unwrap_or_else(|e| fail(&c, &e.to_string()));
    }
    let renewals = kubelets.stop();
    assert!(renewals >= simulated, "the simulated kubelets renewed their Leases ({renewals} renewals)");
}

/// What a kubelet does to stay Ready, for nodes with no kubelet: a Lease in `kube-node-lease` per node, renewed
/// every 2 s (the node lifecycle controller's grace here is 8 s), from a thread inside the server namespace.
struct SimulatedKubelets {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl SimulatedKubelets {
    /// Starts renewing, and returns once every Lease has been written once.
    fn start(c: &Cluster, names: Vec<String>) -> Self {
        let (first_round, done) = std::sync::mpsc::channel::<()>();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ns, kubeconfig, flag) = (c.server_ns.path().to_path_buf(), c.kubeconfig.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).expect("the server namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the server namespace");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let client = skiff_client::connect(&kubeconfig).await.expect("a client of the surviving server");
                simulated_nodes::keep_leases(client, &names, flag, || {
                    let _ = first_round.send(());
                })
                .await
            })
        });
        done.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|e| fail(c, &format!("the first Lease round: {e}")));
        SimulatedKubelets { stop, thread: Some(thread) }
    }

    /// Stops renewing; the number of renewals made.
    fn stop(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for SimulatedKubelets {
    /// A failed test stops the renewals too: the thread ends at its next round (within a few seconds) and takes
    /// nothing else with it.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            for _ in 0..100 {
                if t.is_finished() {
                    let _ = t.join();
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

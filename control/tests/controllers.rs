//! Controllers and scheduler against simulated nodes, driven by the real kubectl.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use common::simnode::SimNodes;
use serde_json::Value;
use skiff_control::controllers::ctx::{Clock, ControllerConfig, FakeClock};
use skiff_control::controllers::hpa::InjectedMetrics;
use skiff_control::controllers::manager::ManagerOptions;

fn fast() -> ControllerConfig {
    ControllerConfig { hpa_sync_period: Duration::from_secs(1), resync: Duration::from_secs(1), ..Default::default() }
}

fn cluster_with(nodes: &[&str], opts: ManagerOptions) -> (Cluster, SimNodes) {
    let c = Cluster::start_with(Some(opts));
    let client = c.client();
    let sim = c.runtime.block_on(SimNodes::start(client, nodes, "4", "8Gi"));
    (c, sim)
}

fn cluster(nodes: &[&str]) -> (Cluster, SimNodes) {
    cluster_with(nodes, ManagerOptions { config: fast(), ..Default::default() })
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: skiff/echo:v1
        resources: {requests: {cpu: 100m, memory: 64Mi}}
"#;

fn pods_of(c: &Cluster, selector: &str) -> Vec<Value> {
    c.get_json(&["pods", "-l", selector])["items"].as_array().cloned().unwrap_or_default()
}

/// `kubectl rollout status deploy/web`, failing with the ReplicaSets, pods and Deployment when it times out.
fn rollout_done(c: &Cluster) {
    let o = c.kubectl_output(&["rollout", "status", "deploy/web", "--timeout=60s"], None);
    if !o.status.success() {
        panic!(
            "rollout did not finish: {}\nRS: {}\nPODS: {}\nDEPLOY: {}",
            String::from_utf8_lossy(&o.stdout),
            c.kubectl(&["get", "rs", "-o", "yaml"]),
            c.kubectl(&["get", "pods", "-o", "wide"]),
            c.kubectl(&["get", "deploy", "web", "-o", "yaml"])
        );
    }
}

#[test]
fn a_deployment_rolls_out_updates_rolls_back_and_restarts() {
    let (c, _sim) = cluster(&["node-a", "node-b", "node-c"]);
    c.kubectl_in(&["apply", "-f", "-"], WEB);
    let out = c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = pods_of(&c, "app=web");
    assert_eq!(pods.len(), 3);
    let mut nodes: Vec<&str> = pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "the scheduler spreads the replicas");
    let d = c.get_json(&["deploy", "web"]);
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    assert!(
        d["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "Available" && c["status"] == "True")
    );

    c.kubectl(&["set", "image", "deploy/web", "web=skiff/echo:v2"]);
    rollout_done(&c);
    let images: Vec<String> = pods_of(&c, "app=web")
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(images, vec!["skiff/echo:v2"; 3]);
    let history = c.kubectl(&["rollout", "history", "deploy/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    let out = c.kubectl(&["rollout", "undo", "deploy/web"]);
    assert!(out.contains("rolled back"), "{out}");
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let d = c.get_json(&["deploy", "web"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "skiff/echo:v1");
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");

    c.kubectl(&["rollout", "restart", "deploy/web"]);
    rollout_done(&c);
    assert_eq!(
        c.get_json(&["rs", "-l", "app=web"])["items"].as_array().expect("items").len(),
        3,
        "v1 (restarted), v1, v2"
    );

    c.kubectl(&["scale", "deploy/web", "--replicas=5"]);
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    c.eventually("5 ready pods", Duration::from_secs(30), || {
        c.get_json(&["deploy", "web"])["status"]["availableReplicas"] == 5
    });
    let describe = c.kubectl(&["describe", "deploy", "web"]);
    assert!(describe.contains("ScalingReplicaSet") && describe.contains("NewReplicaSet:"), "{describe}");
}

/// Issue 18's stress (`scripts/stress-rollout` runs it under CPU load; not in CI): ROLLOUTS (100) rolling updates
/// of a 3-replica Deployment on 3 simulated nodes. A rollout that takes over 20 s is a stall: nothing re-reads a
/// ReplicaSet sooner than its 300 s resync, so a missed pod event shows as one.
#[test]
#[ignore = "a stress run: scripts/stress-rollout"]
fn rollout_stress() {
    let rollouts: usize = std::env::var("ROLLOUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100).max(1);
    let (c, _sim) = cluster(&["node-a", "node-b", "node-c"]);
    c.kubectl_in(&["apply", "-f", "-"], WEB);
    rollout_done(&c);
    let mut took = Vec::new();
    let mut stalls = Vec::new();
    for i in 0..rollouts {
        c.kubectl(&["set", "image", "deploy/web", &format!("web=skiff/echo:v{}", i + 2)]);
        let started = std::time::Instant::now();
        let out = c.kubectl_output(&["rollout", "status", "deploy/web", "--timeout=20s"], None);
        if !out.status.success() {
            eprintln!(
                "STALL in rollout {i}:\nRS: {}\nPODS: {}",
                c.kubectl(&["get", "rs", "-o", "wide"]),
                c.kubectl(&["get", "pods", "-o", "wide"])
            );
            stalls.push(i);
            // let the resync finish it, so the next rollout starts clean
            c.kubectl(&["rollout", "status", "deploy/web", "--timeout=330s"]);
        }
        took.push(started.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    println!(
        "rollouts: {rollouts}, stalls: {}, rollout time p50 {:?} p99 {:?} max {:?}",
        stalls.len(),
        at(0.5),
        at(0.99),
        took[took.len() - 1]
    );
    assert!(stalls.is_empty(), "rollouts that stalled: {stalls:?}");
}

#[test]
fn replica_sets_replace_lost_pods() {
    let (c, _sim) = cluster(&["node-a"]);
    c.kubectl_in(&["apply", "-f", "-"], WEB);
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let victim = pods_of(&c, "app=web")[0]["metadata"]["name"].as_str().expect("name").to_string();
    c.kubectl(&["delete", "pod", &victim, "--wait=true", "--timeout=30s"]);
    c.eventually("3 pods again", Duration::from_secs(30), || {
        let pods = pods_of(&c, "app=web");
        pods.len() == 3
            && pods.iter().all(|p| p["metadata"]["name"] != victim.as_str() && p["status"]["phase"] == "Running")
    });
}

/// A pod deleted at once (no graceful phase, so its only watch event is the deletion) is replaced by its
/// ReplicaSet within seconds, not at the next resync: the shared informers pass deletions on (they did not).
#[test]
fn a_force_deleted_pod_is_replaced_at_once() {
    let (c, _sim) = cluster(&["node-a"]);
    c.kubectl_in(&["apply", "-f", "-"], WEB);
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    // let the ReplicaSet settle: its status written, nothing left to look again for
    c.eventually("the ReplicaSet reports 3 available", Duration::from_secs(30), || {
        c.get_json(&["rs", "-l", "app=web"])["items"][0]["status"]["availableReplicas"] == 3
    });
    std::thread::sleep(Duration::from_secs(3));
    let victim = pods_of(&c, "app=web")[0]["metadata"]["name"].as_str().expect("name").to_string();
    let started = std::time::Instant::now();
    c.kubectl(&["delete", "pod", &victim, "--grace-period=0", "--force"]);
    c.eventually("a replacement pod", Duration::from_secs(10), || {
        let pods = pods_of(&c, "app=web");
        pods.len() == 3 && pods.iter().all(|p| p["metadata"]["name"] != victim.as_str())
    });
    eprintln!("replacement created {:?} after the forced deletion", started.elapsed());
}

#[test]
fn jobs_complete_or_fail_after_their_backoff_limit() {
    let (c, _sim) = cluster(&["node-a", "node-b"]);
    let ok = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: ok}\nspec:\n  completions: 3\n  parallelism: 2\n  template:\n    metadata: {annotations: {sim.skiff.dev/exit: '0'}}\n    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}\n";
    c.kubectl_in(&["apply", "-f", "-"], ok);
    let out = c.kubectl(&["wait", "--for=condition=Complete", "job/ok", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    assert_eq!(c.get_json(&["job", "ok"])["status"]["succeeded"], 3);
    let t = c.kubectl(&["get", "job", "ok"]);
    assert!(t.contains("Complete") && t.contains("3/3"), "{t}");

    let failing = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: bad}\nspec:\n  backoffLimit: 1\n  template:\n    metadata: {annotations: {sim.skiff.dev/exit: '1'}}\n    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}\n";
    c.kubectl_in(&["apply", "-f", "-"], failing);
    let out = c.kubectl(&["wait", "--for=condition=Failed", "job/bad", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    let j = c.get_json(&["job", "bad"]);
    assert_eq!(j["status"]["failed"], 2, "the first try and one retry");
    assert!(
        j["status"]["conditions"].as_array().expect("conditions").iter().any(|c| c["reason"] == "BackoffLimitExceeded")
    );
    assert_eq!(pods_of(&c, "job-name=bad").len(), 2);
}

#[test]
fn cron_jobs_fire_on_schedule_with_an_injected_clock_and_keep_history_limits() {
    let start = jiff::Timestamp::now();
    let clock = Arc::new(FakeClock::new(start));
    let (c, _sim) = cluster_with(
        &["node-a"],
        ManagerOptions { config: fast(), schedule_clock: clock.clone(), ..Default::default() },
    );
    let cj = "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tick}\nspec:\n  schedule: '*/5 * * * *'\n  successfulJobsHistoryLimit: 2\n  jobTemplate:\n    spec:\n      template:\n        metadata: {annotations: {sim.skiff.dev/exit: '0'}}\n        spec: {restartPolicy: OnFailure, containers: [{name: c, image: busybox}]}\n";
    c.kubectl_in(&["apply", "-f", "-"], cj);
    let created: jiff::Timestamp = c.get_json(&["cronjob", "tick"])["metadata"]["creationTimestamp"]
        .as_str()
        .expect("created")
        .parse()
        .expect("time");
    // the first five-minute boundary after creation, then every five minutes
    let first = (created.as_second() / 300 + 1) * 300;
    std::thread::sleep(Duration::from_secs(2));
    if start.as_second() < first - 5 {
        assert!(
            c.get_json(&["jobs"])["items"].as_array().expect("items").is_empty(),
            "nothing is due before the first boundary"
        );
    }
    let mut names: Vec<String> = Vec::new();
    for i in 0..3 {
        // move the controller's clock just past the next boundary
        let target = first + 300 * i + 1;
        let now = clock.now().as_second();
        if target > now {
            clock.advance(Duration::from_secs((target - now) as u64));
        }
        c.eventually("a job for the next schedule", Duration::from_secs(20), || {
            let jobs = c.get_json(&["jobs"]);
            let now: Vec<String> = jobs["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|j| j["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            match now.iter().find(|n| !names.contains(*n)).cloned() {
                Some(f) => {
                    names.push(f);
                    true
                }
                None => false,
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !c.get_json(&["jobs"])["items"].as_array().expect("items").iter().all(|j| j["status"]["succeeded"] == 1) {
            if std::time::Instant::now() > deadline {
                eprintln!("JOBS {}", c.kubectl(&["get", "jobs", "-o", "yaml"]));
                eprintln!("PODS {}", c.kubectl(&["get", "pods", "-o", "yaml"]));
                panic!("the job did not complete");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(
        names,
        (0..3).map(|i| format!("tick-{}", (first + 300 * i) / 60)).collect::<Vec<_>>(),
        "one job per scheduled minute"
    );
    c.eventually("history is trimmed to 2", Duration::from_secs(20), || {
        c.get_json(&["jobs"])["items"].as_array().expect("items").len() == 2
    });
    let last = jiff::Timestamp::from_second(first + 600).expect("time").strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(c.get_json(&["cronjob", "tick"])["status"]["lastScheduleTime"], last.as_str());
}

#[test]
fn the_hpa_scales_up_under_load_and_down_after_its_window() {
    let metrics = Arc::new(InjectedMetrics::default());
    let (c, _sim) = cluster_with(
        &["node-a", "node-b"],
        ManagerOptions { config: fast(), metrics: metrics.clone(), ..Default::default() },
    );
    let d = WEB.replace("replicas: 3", "replicas: 1").replace("cpu: 100m", "cpu: 200m");
    c.kubectl_in(&["apply", "-f", "-"], &d);
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let hpa = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 1\n  maxReplicas: 4\n  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}}]\n  behavior: {scaleDown: {stabilizationWindowSeconds: 3}}\n";
    c.kubectl_in(&["apply", "-f", "-"], hpa);
    metrics.set((190, 0)); // 95% of the request
    c.eventually("scaled up to 4", Duration::from_secs(40), || c.get_json(&["deploy", "web"])["spec"]["replicas"] == 4);
    let h = c.get_json(&["hpa", "web"]);
    assert_eq!(h["status"]["desiredReplicas"], 4);
    let t = c.kubectl(&["get", "hpa", "web"]);
    assert!(t.contains("cpu: 95%/50%") && t.contains("Deployment/web"), "{t}");
    metrics.set((10, 0)); // 5%
    c.eventually("scaled down to 1", Duration::from_secs(40), || {
        c.get_json(&["deploy", "web"])["spec"]["replicas"] == 1
    });
    let events = c.kubectl(&["get", "events", "--field-selector", "reason=SuccessfulRescale"]);
    assert!(events.contains("New size: 4") && events.contains("New size: 1"), "{events}");
}

/// A clock whose first reading after it is armed holds the reader's task (as a controller busy with CPU work
/// does) until released, or for 60 s at most. It holds through `block_in_place`, which hands the worker's other
/// work to another thread first: a worker thread held outright for the whole test strands what tokio had queued on
/// it (the task in its LIFO slot, wake-ups the I/O driver dispatched there), so the API server itself once missed a
/// kubectl TLS handshake in CI. This test is about the controllers' tasks, not tokio's threads: with the controllers
/// polled in one task the held reader still holds up all of them.
#[derive(Debug, Default)]
struct HoldingClock {
    armed: std::sync::atomic::AtomicBool,
    entered: std::sync::atomic::AtomicBool,
    released: std::sync::atomic::AtomicBool,
}

impl Clock for HoldingClock {
    fn now(&self) -> jiff::Timestamp {
        use std::sync::atomic::Ordering::SeqCst;
        if self.armed.load(SeqCst) && !self.entered.swap(true, SeqCst) {
            tokio::task::block_in_place(|| {
                for _ in 0..600 {
                    if self.released.load(SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        jiff::Timestamp::now()
    }
}

/// Releases the held task when the test ends, passed or failed (before the cluster's runtime waits for it).
struct Release(Arc<HoldingClock>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.released.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_controller_busy_on_its_thread_does_not_hold_up_the_others() {
    use std::sync::atomic::Ordering::SeqCst;
    let clock = Arc::new(HoldingClock::default());
    let (c, _sim) =
        cluster_with(&["node-a"], ManagerOptions { config: fast(), clock: clock.clone(), ..Default::default() });
    let _release = Release(clock.clone());
    // nothing to reconcile yet: the next reading is the scheduler's, writing when a pod did not fit (or the node
    // lifecycle controller's periodic one); that controller keeps its task from then on
    clock.armed.store(true, SeqCst);
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: huge}\nspec: {containers: [{name: c, image: busybox, resources: {requests: {cpu: '64'}}}]}\n");
    c.eventually("a controller reads the clock", Duration::from_secs(30), || clock.entered.load(SeqCst));
    // meanwhile the Deployment and ReplicaSet controllers make a Deployment's pods (polled in one task with the
    // scheduler and the node lifecycle loop, as they were through `join!`, they did nothing until it returned)
    c.kubectl_in(&["apply", "-f", "-"], WEB);
    c.eventually("the Deployment's 3 pods", Duration::from_secs(30), || pods_of(&c, "app=web").len() == 3);
    assert!(!clock.released.load(SeqCst), "the task was still held");
}

#[test]
fn the_leader_lease_is_renewed_on_a_client_of_its_own_while_the_controllers_client_is_stuck() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::Api;
    use skiff_control::controllers::leader::RENEW_EVERY;

    let c = Cluster::start_with(None); // the API server alone: this test runs the manager
    let client = c.client();
    let renew_time = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.renew_time.clone()).map(|t| t.0);
    c.runtime.block_on(async move {
        // the controllers' client talks to a server that takes every request and answers none (a client whose
        // requests wait in line behind a burst, at its worst)
        let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
        let url = format!("http://{}", stuck.local_addr().expect("address"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = stuck.accept().await {
                held.push(conn);
            }
        });
        let stuck_client =
            kube::Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("the stuck client");
        let opts = ManagerOptions {
            identity: "own-election-client".into(),
            election_client: Some(client.clone()),
            ..Default::default()
        };
        tokio::spawn(skiff_control::controllers::manager::run(stuck_client, opts, None));

        let leases: Api<Lease> = Api::namespaced(client, "kube-system");
        let mut renewals = Vec::new();
        for _ in 0..60 {
            if let Some(l) = leases.get_opt("skiff-controller-manager").await.expect("read the Lease") {
                let spec = l.spec.clone().unwrap_or_default();
                assert_eq!(spec.holder_identity.as_deref(), Some("own-election-client"));
                if let Some(t) = renew_time(&l)
                    && renewals.last() != Some(&t)
                {
                    renewals.push(t);
                }
            }
            if renewals.len() >= 3 {
                break;
            }
            tokio::time::sleep(RENEW_EVERY / 2).await;
        }
        assert!(renewals.len() >= 3, "the lease was taken and renewed twice: renewals seen {renewals:?}");
    });
}

#[test]
fn endpoint_slices_follow_readiness_and_named_ports() {
    let (c, _sim) = cluster(&["node-a"]);
    let d = WEB
        .replace("replicas: 3", "replicas: 2")
        .replace("        resources:", "        ports: [{name: http, containerPort: 8080}]\n        resources:");
    c.kubectl_in(&["apply", "-f", "-"], &d);
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n");
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let ready_endpoints = || -> usize {
        c.get_json(&["endpointslices", "-l", "kubernetes.io/service-name=web"])["items"]
            .as_array()
            .expect("items")
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .count()
    };
    c.eventually("2 ready endpoints", Duration::from_secs(20), || ready_endpoints() == 2);
    let slice = &c.get_json(&["endpointslices", "-l", "kubernetes.io/service-name=web"])["items"][0];
    assert_eq!(slice["ports"][0]["port"], 8080, "the named target port resolves to the container port");
    assert_eq!(slice["endpoints"][0]["nodeName"], "node-a");
    assert_eq!(slice["endpoints"][0]["zone"], "zone-0");
    let pod = pods_of(&c, "app=web")[0]["metadata"]["name"].as_str().expect("name").to_string();
    c.kubectl(&[
        "patch",
        "pod",
        &pod,
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    ]);
    c.eventually("1 ready endpoint", Duration::from_secs(20), || ready_endpoints() == 1);
    let eps = c.kubectl(&["get", "endpoints", "web"]);
    assert!(eps.contains(":8080"), "{eps}");
}

#[test]
fn a_silent_node_loses_its_pods_to_the_others_within_thirty_seconds() {
    let (c, sim) = cluster(&["node-a", "node-b", "node-c"]);
    c.kubectl_in(&["apply", "-f", "-"], WEB);
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let on_a = || {
        pods_of(&c, "app=web")
            .iter()
            .filter(|p| p["spec"]["nodeName"] == "node-a" && p["metadata"].get("deletionTimestamp").is_none())
            .count()
    };
    assert_eq!(on_a(), 1);
    let started = std::time::Instant::now();
    sim.silence("node-a");
    c.eventually("3 available replicas on the other nodes", Duration::from_secs(30), || {
        let pods = pods_of(&c, "app=web");
        let healthy = pods
            .iter()
            .filter(|p| {
                p["metadata"].get("deletionTimestamp").is_none()
                    && p["spec"]["nodeName"] != "node-a"
                    && p["status"]["phase"] == "Running"
            })
            .count();
        healthy == 3 && c.get_json(&["deploy", "web"])["status"]["availableReplicas"] == 3
    });
    eprintln!("replicas restored {:.1} s after the node went silent", started.elapsed().as_secs_f64());
    let node = c.get_json(&["node", "node-a"]);
    assert!(
        node["spec"]["taints"].as_array().expect("taints").iter().any(|t| t["key"] == "node.kubernetes.io/unreachable")
    );
    let status = c.kubectl(&["get", "node", "node-a"]);
    assert!(status.contains("NotReady"), "{status}");
}

#[test]
fn unschedulable_pods_say_why() {
    let (c, _sim) = cluster(&["node-a", "node-b"]);
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: huge}\nspec: {containers: [{name: c, image: busybox, resources: {requests: {cpu: '64'}}}]}\n");
    c.eventually("a FailedScheduling event", Duration::from_secs(20), || {
        c.kubectl(&["get", "events", "--field-selector", "involvedObject.name=huge"])
            .contains("0/2 nodes are available: 2 Insufficient cpu.")
    });
    let p = c.get_json(&["pod", "huge"]);
    assert_eq!(p["status"]["phase"], "Pending");
    assert!(
        p["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
    );
    // cordon one node: new pods go to the other
    c.kubectl(&["cordon", "node-a"]);
    c.kubectl_in(&["apply", "-f", "-"], &WEB.replace("replicas: 3", "replicas: 2"));
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert!(pods_of(&c, "app=web").iter().all(|p| p["spec"]["nodeName"] == "node-b"));
}

#[test]
fn stateful_sets_start_in_order_and_daemon_sets_cover_every_node() {
    let (c, _sim) = cluster(&["node-a", "node-b", "node-c"]);
    let sts = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  serviceName: db\n  replicas: 3\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: c, image: busybox, volumeMounts: [{name: data, mountPath: /data}]}]}\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n";
    c.kubectl_in(&["apply", "-f", "-"], sts);
    let out = c.kubectl(&["rollout", "status", "sts/db", "--timeout=60s"]);
    assert!(out.contains("roll out complete") || out.contains("rolled out"), "{out}");
    let mut names: Vec<String> =
        pods_of(&c, "app=db").iter().filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string)).collect();
    names.sort();
    assert_eq!(names, vec!["db-0", "db-1", "db-2"]);
    let pvcs = c.kubectl(&["get", "pvc", "-o", "name"]);
    assert!(pvcs.contains("data-db-0") && pvcs.contains("data-db-2"), "{pvcs}");
    let ds = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec: {containers: [{name: c, image: busybox}]}\n";
    c.kubectl_in(&["apply", "-f", "-"], ds);
    let out = c.kubectl(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let mut nodes: Vec<String> =
        pods_of(&c, "app=agent").iter().filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string)).collect();
    nodes.sort();
    assert_eq!(nodes, vec!["node-a", "node-b", "node-c"]);
}

#[test]
fn invalid_controller_specs_are_rejected_with_field_paths() {
    let c = Cluster::start_with(None);
    let err = c.kubectl_fails(&["apply", "-f", "-"], Some("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: x}\nspec:\n  schedule: 'every day'\n  jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: c, image: i}]}}}}\n"));
    assert!(err.contains("spec.schedule"), "{err}");
    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(&WEB.replace("replicas: 3", "replicas: -2")));
    assert!(err.contains("spec.replicas"), "{err}");
}

/// Leader election under clock skew: a holder whose clock runs an hour behind keeps renewing (so its renewTime is
/// always an hour old here). This candidate must not take over while the Lease keeps changing, and must once it has
/// stopped changing for a lease duration. The election this replaces judged expiry from renewTime and took over at
/// once: two leaders. A leader whose Lease is taken stops its work, tasks it owns included.
#[test]
fn leader_election_judges_expiry_from_observed_changes_not_the_holders_clock() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::{Api, PostParams};
    use skiff_control::controllers::leader::{LEASE_DURATION, RENEW_EVERY, run_as_leader};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let c = Cluster::start();
    let client = c.client();
    c.runtime.block_on(async move {
        let api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
        let skewed = || MicroTime(jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1));
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "skew-test", "namespace": "kube-system"},
            "spec": {"holderIdentity": "skewed-server", "leaseDurationSeconds": 15}
        }))
        .expect("lease");
        api.create(&PostParams::default(), &lease).await.expect("create the Lease");
        let (renewing, holder) = (api.clone(), "skewed-server");
        let renewer = tokio::spawn(async move {
            for _ in 0..600 {
                let mut l = renewing.get("skew-test").await.expect("read the Lease");
                let spec = l.spec.as_mut().expect("spec");
                spec.holder_identity = Some(holder.into());
                spec.renew_time = Some(skewed());
                renewing.replace("skew-test", &PostParams::default(), &l).await.expect("renew");
                tokio::time::sleep(RENEW_EVERY).await;
            }
        });

        let (started, ticks) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, t) = (started.clone(), ticks.clone());
        let election = tokio::spawn(async move {
            run_as_leader(client, "skew-test", "candidate", Default::default(), move || {
                let (s, t) = (s.clone(), t.clone());
                async move {
                    s.store(true, Ordering::SeqCst);
                    let mut owned = tokio::task::JoinSet::new();
                    owned.spawn(async move {
                        loop {
                            t.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    });
                    std::future::pending::<()>().await;
                }
            })
            .await
        });

        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(!started.load(Ordering::SeqCst), "took over a Lease its holder keeps renewing (clock skew)");

        renewer.abort();
        let _ = renewer.await;
        let stopped = std::time::Instant::now();
        for _ in 0..300 {
            if started.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let waited = stopped.elapsed();
        assert!(started.load(Ordering::SeqCst), "never took over a Lease nobody renews");
        assert!(
            waited >= LEASE_DURATION - RENEW_EVERY && waited < LEASE_DURATION + RENEW_EVERY * 4,
            "took over {waited:?} after the holder stopped; the lease lasts {LEASE_DURATION:?}"
        );
        let l = api.get("skew-test").await.expect("read the Lease");
        assert_eq!(l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()), Some("candidate"));

        // Another instance takes the Lease (as one that judged it expired would): the leader stops its work.
        let mut stolen = false;
        for _ in 0..10 {
            let mut l = api.get("skew-test").await.expect("read the Lease");
            l.spec.as_mut().expect("spec").holder_identity = Some("thief".into());
            match api.replace("skew-test", &PostParams::default(), &l).await {
                Ok(_) => {
                    stolen = true;
                    break;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue, // the leader renewed in between
                Err(e) => panic!("steal the Lease: {e}"),
            }
        }
        assert!(stolen, "could not write the Lease");
        tokio::time::sleep(RENEW_EVERY * 3).await;
        let before = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(before > 0, "the work never ran");
        assert_eq!(ticks.load(Ordering::SeqCst), before, "the work's own task kept running after the lease was lost");
        election.abort();
    });
}

/// The retry policy every controller runs with, on kube-runtime against the real API: a reconcile that fails is
/// retried after 250 ms, 500 ms, 1 s, …, each failure counted in `skiff_controller_reconcile_errors_total` (served
/// on /metrics) and shown as one Warning Event on the object whose count grows; a success ends the retries.
#[test]
fn a_failing_reconcile_is_retried_with_back_off_counted_and_shown_as_an_event() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::controller::{Action, Controller};
    use skiff_control::controllers::ctx::{Ctx, ReconcileError, SystemClock};
    use skiff_control::controllers::informers::Informers;
    use skiff_control::controllers::retry;
    use std::sync::Mutex;

    let c = Cluster::start_with(None);
    c.kubectl(&["create", "configmap", "flaky", "--from-literal=k=v"]);
    let client = c.client();
    let ctx = Arc::new(Ctx::new(
        client.clone(),
        &Informers::new(),
        Arc::new(SystemClock),
        Arc::new(SystemClock),
        ControllerConfig::default(),
        Arc::new(InjectedMetrics::default()),
        retry::Retries::new(c.server.api.metrics.controller_errors.clone()),
    ));
    let attempts: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let seen = attempts.clone();
    let reconcile = move |cm: Arc<ConfigMap>, _ctx: Arc<Ctx>| {
        let seen = seen.clone();
        async move {
            if cm.metadata.name.as_deref() != Some("flaky") {
                return Ok(Action::await_change());
            }
            let n = {
                let mut a = seen.lock().expect("lock");
                a.push(std::time::Instant::now());
                a.len()
            };
            if n <= 4 {
                let conflict = kube::core::Status::failure("the object has been modified", "Conflict").with_code(409);
                return Err(ReconcileError::Status(kube::Error::Api(Box::new(conflict))));
            }
            Ok(Action::await_change())
        }
    };
    let controller = Controller::new(kube::Api::<ConfigMap>::namespaced(client, "default"), Default::default())
        .run(retry::reconciler("flaky-controller", reconcile), retry::policy("flaky-controller"), ctx)
        .for_each(|_| async {});
    let task = c.runtime.spawn(controller);
    c.eventually("five attempts", Duration::from_secs(20), || attempts.lock().expect("lock").len() >= 5);
    std::thread::sleep(Duration::from_secs(2));
    task.abort();
    let times = attempts.lock().expect("lock").clone();
    let after_start: Vec<Duration> = times.iter().map(|t| *t - times[0]).collect();
    assert_eq!(times.len(), 5, "a success ends the retries: attempts at {after_start:?}");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, least) in gaps.iter().zip([250u64, 500, 1_000, 2_000]) {
        assert!(
            *gap >= Duration::from_millis(least) && *gap < Duration::from_millis(least * 3),
            "back-off {gaps:?}: wanted about {least} ms"
        );
    }
    let metrics = c.kubectl(&["get", "--raw", "/metrics"]);
    let line = r#"skiff_controller_reconcile_errors_total{controller="flaky-controller",operation="status",reason="Conflict"} 4"#;
    assert!(metrics.lines().any(|l| l == line), "no {line} in:\n{metrics}");
    c.eventually("one Warning Event counting four failures", Duration::from_secs(10), || {
        let events = c.get_json(&["events", "--field-selector", "involvedObject.name=flaky"]);
        events["items"].as_array().is_some_and(|items| {
            items.len() == 1
                && items[0]["type"] == "Warning"
                && items[0]["reason"] == "FailedUpdateStatus"
                && items[0]["count"] == 4
                && items[0]["source"]["component"] == "flaky-controller"
                && items[0]["message"].as_str().is_some_and(|m| m.contains("the object has been modified"))
        })
    });
}

#[test]
fn a_binding_names_the_pod_it_was_decided_for() {
    // the API server alone: nothing else binds
    let c = Cluster::start_with(None);
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default}\nspec: {containers: [{name: c, image: i}]}\n");
    let uid = c.get_json(&["pod", "p"])["metadata"]["uid"].as_str().expect("uid").to_string();
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(c.client(), "default");
    let bind = |uid: &str| {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
        c.runtime.block_on(api.create_subresource::<Value, Value>("binding", "p", &Default::default(), &body))
    };
    // a binding decided for an earlier pod of the same name
    match bind("0b1d-not-this-pod") {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 409, "{e:?}");
            assert!(e.message.contains("Precondition failed: UID in precondition: 0b1d-not-this-pod"), "{}", e.message);
        }
        other => panic!("a binding for another pod's uid was accepted: {other:?}"),
    }
    assert_eq!(c.get_json(&["pod", "p"])["spec"].get("nodeName"), None, "left unbound");
    bind(&uid).expect("the binding for this pod");
    assert_eq!(c.get_json(&["pod", "p"])["spec"]["nodeName"], "n1");
    match bind(&uid) {
        Err(kube::Error::Api(e)) => assert!(e.message.contains("already assigned to node \"n1\""), "{}", e.message),
        other => panic!("a second binding was accepted: {other:?}"),
    }
}

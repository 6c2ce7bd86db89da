//! Lifecycle hooks and graceful termination on a real node, as kubelet does them: containers start in order and a
//! postStart hook holds back the containers after it; a failing postStart hook kills and restarts its container; a
//! deleted pod runs its preStop hook before SIGTERM; a container that ignores SIGTERM is killed when the grace
//! period runs out, and not before; a second delete with a shorter grace period brings the kill forward.
//!
//! Needs root (network namespaces, runc) and the built-in images of `scripts/setup`.

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::*;

fn pods(host_dir: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: ordered}}
spec:
  volumes: [{{name: shared, emptyDir: {{}}}}]
  containers:
  - name: first
    image: busybox
    command: [sleep, "3600"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    lifecycle: {{postStart: {{exec: {{command: [sh, -c, "sleep 2; touch /shared/hook-done"]}}}}}}
  - name: second
    image: busybox
    command: [sh, -c, "if [ -e /shared/hook-done ]; then echo after; else echo before; fi > /shared/second; sleep 3600"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: badhook}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: [sleep, "3600"]
    lifecycle: {{postStart: {{exec: {{command: [sh, -c, "exit 3"]}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: graceful}}
spec:
  volumes: [{{name: host, hostPath: {{path: {host_dir}, type: DirectoryOrCreate}}}}]
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "trap 'echo term >> /host/log; exit 0' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: host, mountPath: /host}}]
    lifecycle: {{preStop: {{exec: {{command: [sh, -c, "echo prestop >> /host/log"]}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "trap '' TERM; while true; do sleep 0.1; done"]
---
apiVersion: v1
kind: Pod
metadata: {{name: hurried}}
spec:
  terminationGracePeriodSeconds: 120
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "trap '' TERM; while true; do sleep 0.1; done"]
"#
    )
}

fn events_of(c: &skiff_testkit::cluster::Cluster, pod: &str) -> Vec<(String, String)> {
    let selector = format!("involvedObject.name={pod}");
    let out = kubectl(c, &["get", "events", "--field-selector", &selector, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("events JSON");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["reason"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn hooks_and_graceful_termination_follow_kubelet() {
    let Some(c) = cluster("the lifecycle hook test", 1) else { return };
    let host_dir = c.nodes[0].data_dir.join("hook-test");
    apply(&c, &pods(&host_dir.display().to_string()));

    step("a postStart hook holds back the containers after it");
    wait_ready(&c, "ordered");
    let (code, out, err) = exec(&c, "ordered", "second", &["cat", "/shared/second"], None);
    assert_eq!((code, out.trim()), (0, "after"), "the second container started after the first one's hook: {err}");

    step("a failing postStart hook kills the container, which restarts");
    let p = wait_pod(&c, "badhook", Duration::from_secs(60), "a restart after the failed hook", |p| {
        container_status(p, "c").and_then(|s| s["restartCount"].as_i64()).is_some_and(|n| n >= 1)
    });
    let last = container_status(&p, "c").map(|s| s["lastState"].clone()).unwrap_or_default();
    assert!(last.pointer("/terminated").is_some(), "the killed run is the last state: {last}");
    let events = events_of(&c, "badhook");
    assert!(
        events.iter().any(|(r, m)| r == "FailedPostStartHook" && m.contains("PostStartHook failed")),
        "a FailedPostStartHook event: {events:?}"
    );

    step("deletion runs preStop, then SIGTERM");
    wait_ready(&c, "graceful");
    kubectl(&c, &["delete", "pod", "graceful", "--wait=false"]);
    wait_gone(&c, "graceful", Duration::from_secs(30));
    let log = std::fs::read_to_string(host_dir.join("log")).unwrap_or_default();
    assert_eq!(log, "prestop\nterm\n", "the preStop hook ran before the container got SIGTERM");

    step("a container that ignores SIGTERM is killed when the grace period ends, not before");
    wait_ready(&c, "stubborn");
    let asked = Instant::now();
    kubectl(&c, &["delete", "pod", "stubborn", "--wait=false"]);
    wait_gone(&c, "stubborn", Duration::from_secs(30));
    let took = asked.elapsed();
    assert!(took >= Duration::from_secs(3), "the pod had its 3 s grace period: gone after {took:?}");

    step("deleted again with a shorter grace period, a stopping container is killed when the shorter one ends");
    wait_ready(&c, "hurried");
    kubectl(&c, &["delete", "pod", "hurried", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    kubectl(&c, &["delete", "pod", "hurried", "--grace-period=3", "--wait=false"]);
    wait_gone(&c, "hurried", Duration::from_secs(40));
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "3 s from the second delete, not the first delete's 120 s: gone after {took:?}"
    );

    kubectl(&c, &["delete", "pod", "ordered", "badhook", "--wait=false"]);
}

//! Seed scenario 2: a node dies (its agent killed, its containers gone, its link down) while a client sends
//! requests through the ingress. Reported: the failed requests and when they happened (goal: none after the first
//! second); required: the Deployment back at three Ready replicas on the remaining nodes within 30 s.
//!
//! Needs root (network namespaces, runc, BPF) and the built-in images of `scripts/setup`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use skiff_e2e::*;

#[test]
fn a_dead_node_is_replaced_within_30_seconds() {
    let Some(mut c) = cluster("the node failure scenario", 3) else { return };
    step("three replicas spread over the nodes");
    kubectl(&c, &["apply", "-f", &repo_root().join("manifests/scenarios/echo.yaml").display().to_string()]);
    kubectl(&c, &["rollout", "status", "deployment/echo", "--timeout=90s"]);
    // The ingress runs on n1; the victim is the last node that holds an echo pod.
    let placement = kubectl(
        &c,
        &[
            "get",
            "pods",
            "-l",
            "app=echo",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        ],
    );
    let victim = ["n3", "n2"]
        .into_iter()
        .find(|n| placement.lines().any(|l| l.ends_with(&format!(" {n}"))))
        .unwrap_or_else(|| fail(&c, &format!("no pod off the ingress node: {placement}")));
    let index = c.nodes.iter().position(|n| n.name == victim).expect("the victim node");
    step(&format!("placement:\n{placement}victim: {victim}"));

    let ingress: SocketAddr = "10.0.0.11:80".parse().expect("address");
    // A client that waits up to 10 s for an answer: the ingress's connect timeout (5 s, as ingress-nginx) plus a retry
    // on another endpoint fits in it.
    let load = Load::start_with_timeout(
        &c,
        ingress,
        "echo.example",
        "/",
        Duration::from_millis(10),
        Duration::from_secs(90),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(2));
    step(&format!("killing node {victim}: agent (SIGKILL), containers, link"));
    let killed = Instant::now();
    c.kill_agent(index);
    c.set_link(index, false).expect("link down");
    c.reset_node(index);
    let killed_at = load.started.elapsed();

    let mut restored = None;
    let limit = Duration::from_secs(60);
    let back = wait_for(limit, "three Ready replicas on the surviving nodes", || {
        let jp = r#"{range .items[*]}{.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status} {.metadata.deletionTimestamp}{"\n"}{end}"#;
        let out = c.kubectl(&["get", "pods", "-l", "app=echo", "-o", &format!("jsonpath={jp}")]).ok()?;
        let good = out
            .lines()
            .filter(|l| {
                !l.starts_with(victim)
                    && l.split(' ').nth(1) == Some("True")
                    && l.split(' ').nth(2).is_none_or(str::is_empty)
            })
            .count();
        (good >= 3).then(|| restored = Some(killed.elapsed()))
    });
    if let Err(e) = back {
        let pods = kubectl(&c, &["get", "pods", "-o", "wide"]);
        fail(&c, &format!("{e}\n{pods}"));
    }
    let restored = restored.expect("set when the wait ended");
    std::thread::sleep(Duration::from_secs(3));
    let samples = load.finish();
    let failed = failures(&samples);
    let late: Vec<&&Sample> = failed.iter().filter(|s| s.at > killed_at + Duration::from_secs(1)).collect();
    step(&format!(
        "node {victim} killed at {:.1} s of the load; Deployment back at 3 Ready replicas after {:.1} s; {}; failed more than 1 s after the kill: {}",
        killed_at.as_secs_f64(),
        restored.as_secs_f64(),
        summary(&samples),
        late.len()
    ));
    let node_status = kubectl(&c, &["get", "node", victim, "-o", "jsonpath={.spec.taints[*].key}"]);
    assert!(node_status.contains("node.kubernetes.io/unreachable"), "the dead node is tainted: {node_status}");
    assert!(restored <= Duration::from_secs(30), "the Deployment came back after {restored:?} (limit 30 s)");
    assert!(
        late.is_empty(),
        "requests failed more than a second after the kill: {:?}",
        late.iter().take(5).collect::<Vec<_>>()
    );
}

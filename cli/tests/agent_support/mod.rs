//! Helpers shared by the node agent's end-to-end tests: a cluster in network namespaces (skiff-testkit), pods read
//! back as JSON, waits with time limits, kubectl exec/logs.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;
use skiff_testkit::cluster::{Cluster, ClusterConfig, wait_for};

/// The built-in images the tests run (made by `scripts/setup`).
pub const ECHO: &str = "skiff/echo:v1";
/// busybox.
pub const BUSYBOX: &str = "busybox";

/// A cluster of `nodes` nodes, or `None` (with the reason printed) when the test cannot run here.
pub fn cluster(what: &str, nodes: usize) -> Option<Cluster> {
    cluster_with(what, nodes, &[])
}

/// As [`cluster`], with extra flags for every agent.
pub fn cluster_with(what: &str, nodes: usize, agent_args: &[&str]) -> Option<Cluster> {
    cluster_configured(what, nodes, |cfg| cfg.agent_args.extend(agent_args.iter().map(|a| a.to_string())))
}

/// As [`cluster`], configured further by `configure`.
pub fn cluster_configured(what: &str, nodes: usize, configure: impl FnOnce(&mut ClusterConfig)) -> Option<Cluster> {
    if !skiff_testkit::require_privileges(what) {
        return None;
    }
    let store = std::path::Path::new("/var/lib/skiff/images/index.json");
    let text = std::fs::read_to_string(store).unwrap_or_default();
    assert!(
        text.contains("docker.io/skiff/echo:v1") && text.contains("docker.io/library/busybox:latest"),
        "the built-in images are missing from /var/lib/skiff/images: run scripts/setup"
    );
    let mut cfg = ClusterConfig::new(env!("CARGO_BIN_EXE_skiff").into(), nodes);
    configure(&mut cfg);
    Some(Cluster::start(cfg).expect("starting the cluster"))
}

/// Fails with the cluster's recent logs attached.
pub fn fail(c: &Cluster, msg: &str) -> ! {
    panic!("{msg}\n\n{}", c.logs_tail(60));
}

/// The pod as JSON.
pub fn pod(c: &Cluster, name: &str) -> Option<Value> {
    let (ok, out, _) = c.kubectl_output(&["get", "pod", name, "-o", "json"], None).ok()?;
    if !ok {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// A container's status.
pub fn container_status(p: &Value, container: &str) -> Option<Value> {
    p.pointer("/status/containerStatuses")?.as_array()?.iter().find(|s| s["name"] == container).cloned()
}

/// The pod's condition status (`True`/`False`).
pub fn condition(p: &Value, ty: &str) -> Option<String> {
    p.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// Waits until `check` holds for the pod (read every 100 ms), returning it.
pub fn wait_pod(c: &Cluster, name: &str, limit: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    match wait_for(limit, what, || pod(c, name).filter(|p| check(p))) {
        Ok(p) => p,
        Err(e) => {
            let last = pod(c, name)
                .map(|p| serde_json::to_string_pretty(&p["status"]).unwrap_or_default())
                .unwrap_or_default();
            fail(c, &format!("pod {name}: {e}\nlast status: {last}"))
        }
    }
}

/// Waits until the pod is Ready.
pub fn wait_ready(c: &Cluster, name: &str) -> Value {
    wait_pod(c, name, Duration::from_secs(60), "Ready", |p| condition(p, "Ready").as_deref() == Some("True"))
}

/// Waits until the pod is gone from the API.
pub fn wait_gone(c: &Cluster, name: &str, limit: Duration) {
    if let Err(e) = wait_for(limit, &format!("pod {name} to be deleted"), || pod(c, name).is_none().then_some(())) {
        fail(c, &e.to_string());
    }
}

/// `kubectl exec POD -c CONTAINER -- argv` → (exit code, stdout, stderr).
pub fn exec(c: &Cluster, name: &str, container: &str, argv: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut args = vec!["exec"];
    if stdin.is_some() {
        args.push("-i");
    }
    args.extend([name, "-c", container, "--"]);
    args.extend_from_slice(argv);
    let mut cmd = c.server_ns.command("kubectl");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(&args);
    cmd.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let (Some(data), Some(mut s)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        s.write_all(data).expect("writing stdin");
    }
    let out = child.wait_with_output().expect("kubectl ends");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Applies YAML or fails with the logs.
pub fn apply(c: &Cluster, yaml: &str) {
    if let Err(e) = c.apply(yaml) {
        fail(c, &format!("{e}\n{yaml}"));
    }
}

/// Runs kubectl or fails with the logs.
pub fn kubectl(c: &Cluster, args: &[&str]) -> String {
    match c.kubectl_output(args, None) {
        Ok((true, out, _)) => out,
        Ok((false, out, err)) => fail(c, &format!("kubectl {args:?} failed: {out}{err}")),
        Err(e) => fail(c, &format!("kubectl {args:?}: {e}")),
    }
}

/// Prints a step of a long scenario.
pub fn step(what: &str) {
    eprintln!("--- {what}");
}

//! Pod security on a real node (issue 14): the RuntimeDefault seccomp filter (from the node's default, or asked
//! for), Unconfined, a Localhost profile from the node's directory, the pod's pids limit stopping a fork bomb, and
//! a clear refusal of `hostUsers: false`.
//!
//! Needs root (network namespaces, runc) and the built-in images of `scripts/setup`.

mod agent_support;

use std::time::Duration;

use agent_support::*;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: confined}
spec:
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: unconfined}
spec:
  securityContext: {seccompProfile: {type: Unconfined}}
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: local}
spec:
  containers:
  - name: c
    image: busybox
    command: [sleep, "3600"]
    securityContext: {seccompProfile: {type: Localhost, localhostProfile: no-mkdir.json}}
---
apiVersion: v1
kind: Pod
metadata: {name: userns}
spec:
  hostUsers: false
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
"#;

/// Allows everything but mkdir/mkdirat, which fail with EPERM.
const NO_MKDIR: &str = r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
  "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#;

fn seccomp_mode(c: &skiff_testkit::cluster::Cluster, pod: &str) -> String {
    let (code, out, err) = exec(c, pod, "c", &["grep", "Seccomp:", "/proc/self/status"], None);
    assert_eq!(code, 0, "{pod}: {err}");
    out.split_whitespace().nth(1).unwrap_or_default().to_string()
}

#[test]
fn seccomp_pids_and_user_namespaces() {
    let Some(c) = cluster_with("the pod security agent test", 1, &["--seccomp-default", "--pod-max-pids", "40"]) else {
        return;
    };
    let dir = c.nodes[0].data_dir.join("seccomp");
    std::fs::create_dir_all(&dir).expect("the seccomp directory");
    std::fs::write(dir.join("no-mkdir.json"), NO_MKDIR).expect("a Localhost profile");
    apply(&c, PODS);
    for p in ["confined", "unconfined", "local"] {
        wait_ready(&c, p);
    }

    step("RuntimeDefault (the node's default): a filter, and unshare refused");
    assert_eq!(seccomp_mode(&c, "confined"), "2", "filter mode");
    let (code, _, err) = exec(&c, "confined", "c", &["unshare", "-U", "true"], None);
    assert_ne!(code, 0, "a user namespace is refused under RuntimeDefault: {err}");
    let (code, out, _) = exec(&c, "confined", "c", &["sh", "-c", "echo ok > /tmp/f && cat /tmp/f"], None);
    assert_eq!((code, out.trim()), (0, "ok"), "ordinary work goes on");

    step("no capability is inheritable or ambient (a process that execs keeps only what its user gets)");
    let (code, out, err) = exec(&c, "confined", "c", &["grep", "-E", "^Cap(Inh|Amb):", "/proc/self/status"], None);
    assert_eq!(code, 0, "{err}");
    for line in out.lines() {
        assert!(line.ends_with("0000000000000000"), "no inheritable or ambient capabilities: {out}");
    }
    assert_eq!(out.lines().count(), 2, "{out}");

    step("Unconfined: no filter");
    assert_eq!(seccomp_mode(&c, "unconfined"), "0");

    step("Localhost: the node's profile");
    assert_eq!(seccomp_mode(&c, "local"), "2");
    let (code, _, err) = exec(&c, "local", "c", &["mkdir", "/tmp/d"], None);
    assert!(code != 0 && err.contains("Operation not permitted"), "mkdir is refused: {code} {err}");
    let (code, _, _) = exec(&c, "local", "c", &["ls", "/"], None);
    assert_eq!(code, 0);

    step("the pod's pids limit stops a fork bomb");
    // the sleepers must not hold the exec's output open
    let bomb =
        "i=0; while [ $i -lt 100 ]; do sleep 120 </dev/null >/dev/null 2>&1 & i=$((i+1)); done 2>&1; echo started";
    let (_, out, err) = exec(&c, "confined", "c", &["sh", "-c", bomb], None);
    let said = format!("{out}{err}");
    assert!(said.contains("can't fork") || said.contains("Resource temporarily unavailable"), "{said}");

    step("hostUsers: false is refused, saying why");
    let p = wait_pod(&c, "userns", Duration::from_secs(60), "a config error", |p| {
        container_status(p, "c").and_then(|s| s.pointer("/state/waiting/reason").cloned())
            == Some(serde_json::json!("CreateContainerConfigError"))
    });
    let msg = container_status(&p, "c").and_then(|s| s.pointer("/state/waiting/message").cloned()).unwrap_or_default();
    assert!(msg.to_string().contains("user namespace"), "{msg}");
    kubectl(&c, &["delete", "pod", "confined", "unconfined", "local", "userns", "--wait=false"]);
}

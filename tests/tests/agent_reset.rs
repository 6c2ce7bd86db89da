//! `skiff agent reset` removes one agent's pods and nothing of another agent's on the same machine, even when both
//! use the same cgroup root (issue 17: a reset of one agent killed the other's containers, which came back with exit
//! code 137 and a restart).
//!
//! Needs root (network namespaces, runc, cgroups) and the built-in images of `scripts/setup`.

use std::time::Duration;

use skiff_e2e::*;
use skiff_testkit::cluster::cgroup_dirs;

fn pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers: [{{name: c, image: busybox, command: [sleep, "3600"]}}]
"#
    )
}

/// `<containerID> <restartCount> <phase>` of a pod.
fn state(c: &Cluster, pod: &str) -> String {
    let jp = "{.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount} {.status.phase}";
    c.kubectl(&["get", "pod", pod, "-o", &format!("jsonpath={jp}")]).unwrap_or_default()
}

/// The processes in the cgroups of the pod `uid` under the cluster's shared root, in every hierarchy.
fn processes_of(c: &Cluster, uid: &str) -> Vec<String> {
    let mut todo: Vec<_> =
        cgroup_dirs(&c.nodes[0].cgroup_root).into_iter().map(|d| d.join(format!("pod{uid}"))).collect();
    let mut out = Vec::new();
    for _ in 0..1024 {
        let Some(dir) = todo.pop() else { break };
        out.extend(std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().map(String::from));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            todo.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn resetting_one_agent_leaves_another_agents_pods_running() {
    if !skiff_testkit::require_privileges("the agent reset scenario") {
        return;
    }
    let cfg = ClusterConfig { shared_cgroup_root: true, ..ClusterConfig::new(skiff_binary(), 2) };
    let c = Cluster::start(cfg).expect("starting two agents with one cgroup root");
    assert_eq!(c.nodes[0].cgroup_root, c.nodes[1].cgroup_root);
    step(&format!("two agents, one cgroup root {} ({})", c.nodes[0].cgroup_root, c.dir.display()));
    apply(&c, &pod("doomed", "n1"));
    apply(&c, &pod("survivor", "n2"));
    wait(&c, Duration::from_secs(90), "both pods Running", || {
        (state(&c, "doomed").ends_with(" 0 Running") && state(&c, "survivor").ends_with(" 0 Running")).then_some(())
    });
    let uid = |p: &str| kubectl(&c, &["get", "pod", p, "-o", "jsonpath={.metadata.uid}"]);
    let (doomed, survivor) = (uid("doomed"), uid("survivor"));
    let before = state(&c, "survivor");
    let survivor_pids = processes_of(&c, &survivor);
    assert!(!survivor_pids.is_empty(), "the survivor's container runs in its pod cgroup");
    assert!(!processes_of(&c, &doomed).is_empty(), "the doomed pod's container runs in its pod cgroup");

    step("n1's agent killed and reset");
    let mut c = c;
    c.kill_agent(0);
    let status = c.reset_node_status(0).expect("running skiff agent reset");
    let log = std::fs::read_to_string(c.dir.join("n1.reset.log")).unwrap_or_default();
    assert!(status.success(), "skiff agent reset failed: {log}");
    assert!(processes_of(&c, &doomed).is_empty(), "the reset node's container is gone");
    assert!(!c.nodes[0].data_dir.exists(), "the reset agent's data directory is removed");

    // the survivor's agent would notice a killed container within a second and restart it: give it three
    std::thread::sleep(Duration::from_secs(3));
    for pid in &survivor_pids {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the other agent's process {pid} was killed");
    }
    assert_eq!(processes_of(&c, &survivor), survivor_pids, "the other agent's pod cgroup is untouched");
    assert_eq!(state(&c, "survivor"), before, "the other agent's container did not restart");
    assert!(
        cgroup_dirs(&c.nodes[1].cgroup_root).iter().any(|d| d.exists()),
        "the shared cgroup root stays while another agent's pods use it"
    );
}

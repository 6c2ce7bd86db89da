//! Everyday kubectl commands against the API server, its controllers and simulated kubelets (issue 11): `wait
//! --for=jsonpath`, `get all -A`, `events`, `diff`, `drain` with evictions that honour a PodDisruptionBudget.

#[macro_use]
mod common;

use std::time::Duration;

use common::Cluster;
use common::simnode::SimNodes;
use serde_json::Value;

fn web_pods(c: &Cluster) -> Vec<Value> {
    let pods = c.get_json(&["pods", "-l", "app=web"]);
    pods["items"].as_array().cloned().unwrap_or_default()
}

fn wait_get_all_events_diff_and_drain_work_as_in_kubernetes(kubectl: &'static str) {
    let mut c = Cluster::start();
    c.kubectl_bin = kubectl;
    let sim = c.runtime.block_on(SimNodes::start(c.client(), &["n1", "n2"], "4", "8Gi"));
    c.kubectl(&["create", "deployment", "web", "--image=busybox", "--replicas=3"]);
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);

    let out = c.kubectl(&["wait", "--for=jsonpath={.status.readyReplicas}=3", "deploy/web", "--timeout=30s"]);
    assert!(out.contains("condition met"), "{out}");

    let all = c.kubectl(&["get", "all", "-A"]);
    for want in ["deployment.apps/web", "replicaset.apps/web-", "pod/web-", "service/kubernetes"] {
        assert!(all.contains(want), "`get all -A` lists {want}:\n{all}");
    }

    let events = c.kubectl(&["events"]);
    assert!(events.contains("ScalingReplicaSet") && events.contains("Deployment/web"), "{events}");

    // diff: exit 0 when nothing would change, 1 with the change shown
    let live = c.kubectl(&["get", "deploy", "web", "-o", "yaml"]);
    let same = c.kubectl_output(&["diff", "-f", "-"], Some(&live));
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stderr));
    let changed = live.replace("replicas: 3", "replicas: 4");
    let d = c.kubectl_output(&["diff", "-f", "-"], Some(&changed));
    let text = String::from_utf8_lossy(&d.stdout);
    assert_eq!(d.status.code(), Some(1), "{text}{}", String::from_utf8_lossy(&d.stderr));
    assert!(text.contains("-  replicas: 3") && text.contains("+  replicas: 4"), "{text}");
    assert_eq!(c.get_json(&["deploy", "web"])["spec"]["replicas"], 3, "diff changed nothing");

    // a budget that allows no disruption refuses an eviction with 429, as Kubernetes words it
    c.kubectl(&["create", "pdb", "web", "--selector=app=web", "--min-available=3"]);
    c.eventually("the budget's status", Duration::from_secs(20), || {
        c.get_json(&["pdb", "web"])["status"]["currentHealthy"] == 3
    });
    let victim = web_pods(&c)[0]["metadata"]["name"].as_str().expect("a pod").to_string();
    let eviction = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{victim}","namespace":"default"}}}}"#
    );
    let refused = c.kubectl_fails(
        &["create", "--raw", &format!("/api/v1/namespaces/default/pods/{victim}/eviction"), "-f", "-"],
        Some(&eviction),
    );
    assert!(refused.contains("disruption budget"), "{refused}");
    assert!(c.get_json(&["pod", &victim])["metadata"]["deletionTimestamp"].is_null(), "the pod was not evicted");

    // drain: with one disruption allowed, the node empties one eviction at a time as replacements become ready
    c.kubectl(&["patch", "pdb", "web", "--type=merge", "-p", r#"{"spec":{"minAvailable":2}}"#]);
    c.eventually("one disruption allowed", Duration::from_secs(20), || {
        c.get_json(&["pdb", "web"])["status"]["disruptionsAllowed"] == 1
    });
    let on = |node: &str| web_pods(&c).iter().filter(|p| p["spec"]["nodeName"] == node).count();
    let node = if on("n1") >= on("n2") { "n1" } else { "n2" };
    let out = c.kubectl(&["drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=90s"]);
    assert!(out.contains(&format!("node/{node} drained")), "{out}");
    assert_eq!(c.get_json(&["node", node])["spec"]["unschedulable"], true, "drain cordons");
    c.eventually("the pods left the drained node", Duration::from_secs(30), || {
        web_pods(&c)
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .all(|p| p["spec"]["nodeName"] != node)
    });
    c.kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    drop(sim);
}

per_kubectl_version!(wait_get_all_events_diff_and_drain_work_as_in_kubernetes => everyday_commands_work_with_kubectl_1_31, everyday_commands_work_with_kubectl_1_32, everyday_commands_work_with_kubectl_1_33);

//! Nodes with no kubelet behind them, for tests and benches of the control plane at a size this machine cannot run
//! for real: the Node object a kubelet registers (capacity, a Ready condition) and the heartbeat it keeps (its Lease
//! in `kube-node-lease`, renewed every 2 s; the node lifecycle controller's grace is 8 s).

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

/// The label every simulated node carries.
pub const LABEL: &str = "skiff.test/simulated";

/// How much each simulated node offers.
pub const CPU: &str = "4";

/// A simulated node `name` as a kubelet registers it (4 CPUs, 8 GiB, 110 pods); `tainted` adds a NoSchedule taint
/// nothing tolerates.
pub fn node(name: &str, tainted: bool) -> Value {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let taints = if tainted { json!([{"key": "skiff.test/off", "effect": "NoSchedule"}]) } else { json!([]) };
    let resources = json!({"cpu": CPU, "memory": "8Gi", "pods": "110"});
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, LABEL: "true"}},
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
}

/// Writes the Lease of every node in `names`, calls `first_round` once all were written, and renews them every 2 s
/// until `stop` is set (10 minutes at most); returns the number of successful renewals.
pub async fn keep_leases(
    client: kube::Client,
    names: &[String],
    stop: Arc<AtomicBool>,
    first_round: impl FnOnce(),
) -> usize {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut first_round = Some(first_round);
    let mut renewals = 0;
    for _ in 0..300 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        for name in names {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
            let params = PatchParams::apply("simulated-kubelet").force();
            match leases.patch(name, &params, &Patch::Apply(&lease)).await {
                Ok(_) => renewals += 1,
                Err(e) if renewals == 0 => eprintln!("renewing the Lease of {name}: {e}"),
                Err(_) => {}
            }
        }
        if let Some(f) = first_round.take() {
            f();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    renewals
}

//! Node lifecycle: a node whose Lease is not renewed within the monitor grace period becomes Unknown, gets the
//! `node.kubernetes.io/unreachable:NoExecute` taint and its pods are marked NotReady (so Services stop sending them
//! traffic); pods that do not tolerate the taint long enough are evicted so their controllers replace them on other
//! nodes. Cordoned nodes carry `node.kubernetes.io/unschedulable:NoSchedule`.
//!
//! Defaults (see [`super::ctx::ControllerConfig`]): 8 s monitor grace, 5 s eviction timeout for pods without their
//! own toleration — together with the agent's 3 s lease renewal, a Deployment is back at full strength on the other
//! nodes well within 30 s of a node dying.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch};
use serde_json::json;
use skiff_client::events::EventType;

use super::cached_pod::CachedPod;
use super::ctx::Ctx;
use super::placement::tolerates;

/// The taint of a node that stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node that reports it is not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a cordoned node.
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// What the controller concludes about a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeVerdict {
    /// The taints the node should carry (those this controller manages; others are kept).
    pub taints: Vec<Taint>,
    /// Whether its Ready condition must be set to Unknown.
    pub mark_unknown: bool,
}

fn ready_status(node: &Node) -> Option<String> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

/// Decides the managed taints and condition of a node from its last heartbeat.
pub fn verdict(
    node: &Node,
    last_heartbeat: Option<jiff::Timestamp>,
    grace: Duration,
    now: jiff::Timestamp,
) -> NodeVerdict {
    let silent = last_heartbeat.is_none_or(|t| (now.duration_since(t).as_millis() as i64) > grace.as_millis() as i64);
    let ready = ready_status(node);
    let existing: Vec<Taint> = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let keep_time = |key: &str, effect: &str| {
        existing
            .iter()
            .find(|t| t.key == key && t.effect == effect)
            .and_then(|t| t.time_added.clone())
            .unwrap_or(Time(now))
    };
    let mut taints: Vec<Taint> = existing
        .iter()
        .filter(|t| ![UNREACHABLE, NOT_READY, UNSCHEDULABLE].contains(&t.key.as_str()))
        .cloned()
        .collect();
    if silent {
        taints.push(Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(keep_time(UNREACHABLE, "NoExecute")),
            value: None,
        });
        taints.push(Taint {
            key: UNREACHABLE.into(),
            effect: "NoSchedule".into(),
            time_added: Some(keep_time(UNREACHABLE, "NoSchedule")),
            value: None,
        });
    } else if ready.as_deref() != Some("True") {
        taints.push(Taint {
            key: NOT_READY.into(),
            effect: "NoExecute".into(),
            time_added: Some(keep_time(NOT_READY, "NoExecute")),
            value: None,
        });
        taints.push(Taint {
            key: NOT_READY.into(),
            effect: "NoSchedule".into(),
            time_added: Some(keep_time(NOT_READY, "NoSchedule")),
            value: None,
        });
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        taints.push(Taint {
            key: UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            time_added: Some(keep_time(UNSCHEDULABLE, "NoSchedule")),
            value: None,
        });
    }
    NodeVerdict { taints, mark_unknown: silent && ready.as_deref() != Some("Unknown") }
}

/// Whether a pod on a node with `taints` must be evicted now.
pub fn should_evict(pod: &CachedPod, taints: &[Taint], default_timeout: Duration, now: jiff::Timestamp) -> bool {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    taints.iter().filter(|t| t.effect == "NoExecute").any(|taint| {
        let since = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let elapsed = now.duration_since(since).as_millis() as i64;
        match tolerations
            .iter()
            .filter(|t| tolerates(t, taint))
            .map(|t| t.toleration_seconds)
            .min_by_key(|s| s.unwrap_or(i64::MAX))
        {
            None => elapsed >= default_timeout.as_millis() as i64,
            Some(None) => false,
            Some(Some(secs)) => elapsed >= secs * 1000,
        }
    })
}

fn same_taints(a: &[Taint], b: &[Taint]) -> bool {
    let key = |t: &Taint| (t.key.clone(), t.effect.clone(), t.value.clone());
    let mut x: Vec<_> = a.iter().map(key).collect();
    let mut y: Vec<_> = b.iter().map(key).collect();
    x.sort();
    y.sort();
    x == y
}

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "node-controller";

/// Runs the controller (a periodic pass over every node).
pub async fn run(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        // A failed pass is counted and tried again, whole, on the next tick.
        if let Err(e) = pass(&ctx).await {
            ctx.retries.count(CONTROLLER, &super::ctx::ReconcileError::Api(e));
        }
    }
}

async fn pass(ctx: &Arc<Ctx>) -> Result<(), kube::Error> {
    let now = ctx.now();
    let napi: Api<Node> = Api::all(ctx.client.clone());
    let recorder = ctx.recorders.get(CONTROLLER);
    let pods = ctx.pods.state();
    for node in ctx.nodes.state() {
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = ctx.leases.state().into_iter().find(|l| {
            l.metadata.namespace.as_deref() == Some("kube-node-lease")
                && l.metadata.name.as_deref() == Some(name.as_str())
        });
        let heartbeat = lease
            .as_ref()
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0))
            .or_else(|| node.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let v = verdict(&node, heartbeat, ctx.config.node_monitor_grace, now);
        let current: Vec<Taint> = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        if !same_taints(&current, &v.taints) {
            napi.patch(&name, &super::util::pp(), &Patch::Merge(&json!({"spec": {"taints": v.taints}}))).await?;
        }
        if v.mark_unknown {
            let conds: Vec<serde_json::Value> = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.", "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": Time(now)}))
                .collect();
            // Pods there can no longer be trusted to serve. They are marked first: if that fails, the node is not
            // marked either, and the next pass does both.
            for p in pods.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
            {
                let papi: Api<Pod> =
                    Api::namespaced(ctx.client.clone(), p.metadata.namespace.as_deref().unwrap_or_default());
                let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NodeNotReady", "lastTransitionTime": Time(now)}]}});
                super::retry::unless_gone(
                    papi.patch_status(
                        p.metadata.name.as_deref().unwrap_or_default(),
                        &super::util::pp(),
                        &Patch::Strategic(&patch),
                    )
                    .await,
                )?;
            }
            napi.patch_status(&name, &super::util::pp(), &Patch::Strategic(&json!({"status": {"conditions": conds}})))
                .await?;
            recorder
                .record(
                    &skiff_client::events::reference(node.as_ref()),
                    EventType::Normal,
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                )
                .await;
        }
        for p in pods.iter().filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                && p.metadata.deletion_timestamp.is_none()
        }) {
            if should_evict(p, &v.taints, ctx.config.default_eviction_timeout, now) {
                let pname = p.metadata.name.clone().unwrap_or_default();
                let papi: Api<Pod> =
                    Api::namespaced(ctx.client.clone(), p.metadata.namespace.as_deref().unwrap_or_default());
                match papi.delete(&pname, &DeleteParams::default()).await {
                    Ok(_) => {
                        recorder
                            .record(
                                &p.reference(),
                                EventType::Normal,
                                "TaintManagerEviction",
                                &format!(
                                    "Marking for deletion Pod {}/{pname}",
                                    p.metadata.namespace.as_deref().unwrap_or_default()
                                ),
                            )
                            .await
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().expect("time")
    }

    fn ready_node() -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .expect("node")
    }

    #[test]
    fn a_silent_node_is_tainted_unreachable_and_marked_unknown() {
        let v =
            verdict(&ready_node(), Some(t("2026-01-01T00:00:00Z")), Duration::from_secs(8), t("2026-01-01T00:00:10Z"));
        assert!(v.mark_unknown);
        assert!(v.taints.iter().any(|x| x.key == UNREACHABLE && x.effect == "NoExecute"));
        let fresh =
            verdict(&ready_node(), Some(t("2026-01-01T00:00:05Z")), Duration::from_secs(8), t("2026-01-01T00:00:10Z"));
        assert!(!fresh.mark_unknown && fresh.taints.is_empty());
    }

    #[test]
    fn pods_are_evicted_after_their_toleration() {
        let taints = vec![Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(t("2026-01-01T00:00:00Z"))),
        }];
        let plain: CachedPod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": []}})).expect("pod");
        assert!(!should_evict(&plain, &taints, Duration::from_secs(5), t("2026-01-01T00:00:04Z")));
        assert!(should_evict(&plain, &taints, Duration::from_secs(5), t("2026-01-01T00:00:05Z")));
        let patient: CachedPod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]}})).expect("pod");
        assert!(!should_evict(&patient, &taints, Duration::from_secs(5), t("2026-01-01T00:00:30Z")));
        assert!(should_evict(&patient, &taints, Duration::from_secs(5), t("2026-01-01T00:01:00Z")));
        let forever: CachedPod = serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": [{"operator": "Exists"}]}}),
        )
        .expect("pod");
        assert!(!should_evict(&forever, &taints, Duration::from_secs(5), t("2027-01-01T00:00:00Z")));
    }
}

//! The scheduler: binds each pending pod to the best feasible node (filters: unschedulable, taints and
//! tolerations, readiness, node selector and required affinity, resources, host ports; scores: least allocated,
//! spreading an owner's pods, preferred affinity), or marks it Unschedulable with a FailedScheduling event that says
//! why.
//!
//! Decisions are made one pod at a time against an in-memory view of each node that includes pods bound moments
//! ago and not yet seen by the informer ("assumed"); bindings go out concurrently.

pub mod filter;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::controllers::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PostParams};
use serde_json::json;
use skiff_client::events::EventType;
use tokio::sync::Notify;

use super::ctx::Ctx;
use super::util::{is_deleting, is_terminal};
use filter::{NodeUsage, add, filter, request_of, score, unschedulable_message};

/// A decision for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind to this node.
    Bind(String),
    /// No node fits; the message says why.
    Unschedulable(String),
}

fn key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default())
}

/// Whether the default scheduler should place this pod.
pub fn pending(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty)
        && spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|n| n == "default-scheduler" || n.is_empty())
        && !is_deleting(p)
        && !is_terminal(p)
}

/// Schedules `pending` pods (in order) onto `nodes`, given current `usage`; pure.
pub fn decide(
    nodes: &[Arc<Node>],
    usage: &mut HashMap<String, NodeUsage>,
    pending: &[Arc<Pod>],
) -> Vec<(Arc<Pod>, Decision)> {
    let mut out = Vec::with_capacity(pending.len());
    let nothing = NodeUsage::default();
    let no_spec = k8s_openapi::api::core::v1::PodSpec::default();
    for p in pending {
        let spec = p.spec.as_ref().unwrap_or(&no_spec);
        let req = request_of(p);
        let max_owner = req
            .owner
            .as_ref()
            .map(|o| usage.values().map(|u| u.by_owner.get(o).copied().unwrap_or(0)).max().unwrap_or(0))
            .unwrap_or(0);
        let mut best: Option<(i64, &str)> = None;
        let mut reasons = Vec::new();
        for n in nodes {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            let u = usage.get(name).unwrap_or(&nothing);
            match filter(n, spec, &req, u) {
                Some(reason) => reasons.push(reason),
                None => {
                    let s = score(n, spec, &req, u, max_owner);
                    if best.is_none_or(|(bs, bn)| s > bs || (s == bs && name < bn)) {
                        best = Some((s, name));
                    }
                }
            }
        }
        match best.map(|(_, n)| n.to_string()) {
            Some(node) => {
                add(usage.entry(node.clone()).or_default(), &req);
                out.push((p.clone(), Decision::Bind(node)));
            }
            None => out.push((p.clone(), Decision::Unschedulable(unschedulable_message(nodes.len(), &reasons)))),
        }
    }
    out
}

/// What is committed on each node: every bound pod that has not finished (terminating pods still hold their
/// resources).
pub fn usage_of(pods: &[Arc<Pod>], assumed: &HashMap<String, (String, Arc<Pod>)>) -> HashMap<String, NodeUsage> {
    let mut usage: HashMap<String, NodeUsage> = HashMap::new();
    for p in pods {
        if is_terminal(p) {
            continue;
        }
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) {
            add(usage.entry(node).or_default(), &request_of(p));
        }
    }
    for (node, p) in assumed.values() {
        add(usage.entry(node.clone()).or_default(), &request_of(p));
    }
    usage
}

/// The scheduler's name in Events and metrics.
pub const CONTROLLER: &str = "default-scheduler";

/// Runs the scheduler.
pub async fn run(ctx: Arc<Ctx>, pods: Subscription<Pod>, nodes: Subscription<Node>) {
    let kick = Arc::new(Notify::new());
    // Dropped (and so stopped) with this future when the leader loses its lease.
    let mut triggers = tokio::task::JoinSet::new();
    let k = kick.clone();
    triggers.spawn(pods.for_each(move |_| {
        k.notify_one();
        async {}
    }));
    let k = kick.clone();
    triggers.spawn(nodes.for_each(move |_| {
        k.notify_one();
        async {}
    }));
    // pod key -> (node, pod): bound by us, not yet seen bound in the informer
    let mut assumed: HashMap<String, (String, Arc<Pod>)> = HashMap::new();
    // pod key -> last unschedulable message reported
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        // let a burst of events settle into one pass
        tokio::time::sleep(Duration::from_millis(5)).await;
        schedule_once(&ctx, &mut assumed, &mut reported).await;
    }
}

async fn schedule_once(
    ctx: &Arc<Ctx>,
    assumed: &mut HashMap<String, (String, Arc<Pod>)>,
    reported: &mut BTreeMap<String, String>,
) {
    let pods = ctx.pods.state();
    let by_key: HashMap<String, &Arc<Pod>> = pods.iter().map(|p| (key(p), p)).collect();
    assumed.retain(|k, _| by_key.get(k).is_some_and(|p| pending(p)));
    reported.retain(|k, _| by_key.get(k).is_some_and(|p| pending(p)));
    let mut todo: Vec<Arc<Pod>> =
        pods.iter().filter(|p| pending(p) && !assumed.contains_key(&key(p))).cloned().collect();
    if todo.is_empty() {
        return;
    }
    todo.sort_by_key(|p| {
        (
            std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            key(p),
        )
    });
    let nodes = ctx.nodes.state();
    let mut usage = usage_of(&pods, assumed);
    let decisions = decide(&nodes, &mut usage, &todo);
    let recorder = ctx.recorders.get(CONTROLLER);
    let mut binds = Vec::new();
    for (pod, d) in decisions {
        let k = key(&pod);
        match d {
            Decision::Bind(node) => {
                assumed.insert(k.clone(), (node.clone(), pod.clone()));
                binds.push((k, pod, node));
            }
            Decision::Unschedulable(msg) => {
                if reported.get(&k) == Some(&msg) {
                    continue;
                }
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastProbeTime": null, "lastTransitionTime": ctx.now()}]}});
                let written = crate::controllers::retry::status_written(
                    api.patch_status(
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        &crate::controllers::util::pp(),
                        &Patch::Strategic(&patch),
                    )
                    .await,
                );
                match written {
                    // Reported once per message; a failed write is tried again on the next pass.
                    Ok(()) => {
                        reported.insert(k, msg.clone());
                    }
                    Err(e) => ctx.retries.count(CONTROLLER, &e),
                }
                failed_scheduling(&recorder, &pod, &msg).await;
            }
        }
    }
    let client = ctx.client.clone();
    let results: Vec<(String, Arc<Pod>, String, Result<(), kube::Error>)> = futures::stream::iter(binds)
        .map(|(k, pod, node)| {
            let client = client.clone();
            async move {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client, &ns);
                let body = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                let r = api
                    .create_subresource::<serde_json::Value, serde_json::Value>("binding", &name, &PostParams::default(), &body)
                    .await
                    .map(|_| ());
                (k, pod, node, r)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (k, pod, node, r) in results {
        match r {
            Ok(()) => {
                let msg = format!("Successfully assigned {k} to {node}");
                recorder
                    .record(&skiff_client::events::reference(pod.as_ref()), EventType::Normal, "Scheduled", &msg)
                    .await;
            }
            Err(e) => {
                // Tried again on the next pass (the pod is still unbound in the cache).
                assumed.remove(&k);
                let message = format!("Binding rejected: {e}");
                ctx.retries.count(CONTROLLER, &crate::controllers::ctx::ReconcileError::Api(e));
                failed_scheduling(&recorder, &pod, &message).await;
            }
        }
    }
}

/// The Warning Event of a pod that could not be scheduled or bound.
async fn failed_scheduling(recorder: &skiff_client::events::Recorder, pod: &Pod, message: &str) {
    let oref = skiff_client::events::reference(pod);
    recorder.record(&oref, EventType::Warning, "FailedScheduling", message).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}}))
                .expect("node"),
        )
    }

    fn pod(name: &str, cpu: &str, owner: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": owner, "controller": true}]},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
            .expect("pod"),
        )
    }

    #[test]
    fn replicas_spread_across_nodes_and_capacity_is_respected() {
        let nodes = vec![node("n1", "1"), node("n2", "1"), node("n3", "1")];
        let pods: Vec<Arc<Pod>> = (0..3).map(|i| pod(&format!("p{i}"), "400m", "rs1")).collect();
        let mut usage = HashMap::new();
        let d = decide(&nodes, &mut usage, &pods);
        let mut chosen: Vec<String> =
            d.iter().filter_map(|(_, d)| if let Decision::Bind(n) = d { Some(n.clone()) } else { None }).collect();
        chosen.sort();
        assert_eq!(chosen, vec!["n1", "n2", "n3"], "one replica per node");
        // three more fit (800m per node), the seventh does not
        let more: Vec<Arc<Pod>> = (3..7).map(|i| pod(&format!("p{i}"), "400m", "rs1")).collect();
        let d = decide(&nodes, &mut usage, &more);
        assert!(
            matches!(&d[3].1, Decision::Unschedulable(m) if m == "0/3 nodes are available: 3 Insufficient cpu."),
            "{:?}",
            d[3].1
        );
    }

    #[test]
    fn bound_terminating_pods_still_hold_their_resources() {
        let mut p = (*pod("old", "900m", "x")).clone();
        p.spec.as_mut().expect("spec").node_name = Some("n1".into());
        p.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        let usage = usage_of(&[Arc::new(p)], &HashMap::new());
        assert_eq!(usage["n1"].cpu_milli, 900);
    }
}

//! The DaemonSet controller: one pod on every eligible node (node selector, required affinity, taints tolerated,
//! with the tolerations DaemonSet pods get by default), removed from nodes that no longer qualify, rolled to a new
//! template at most `maxUnavailable` nodes at a time, and status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Toleration};
use kube::api::{Api, DeleteParams, Patch, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use skiff_client::events::EventType;

use super::cached_pod::CachedPod;
use super::ctx::{Ctx, ReconcileError};
use super::placement::{selector_and_affinity_match, untolerated_taint};
use super::util::{controlled_by, is_active, is_available, is_ready, owner_ref, random_suffix, template_hash};

/// The label carrying a pod's template hash.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// The tolerations every DaemonSet pod gets (so it stays on not-ready, unreachable, pressured, cordoned nodes).
pub fn default_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

fn with_defaults(spec: &PodSpec) -> PodSpec {
    let mut s = spec.clone();
    let list = s.tolerations.get_or_insert_with(Vec::new);
    for t in default_tolerations() {
        if !list.iter().any(|x| x.key == t.key && x.effect == t.effect) {
            list.push(t);
        }
    }
    s
}

/// Whether the DaemonSet should run on `node`.
pub fn eligible(ds: &DaemonSet, node: &Node) -> bool {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.clone()).unwrap_or_default();
    let spec = super::cached_pod::Spec::from(&with_defaults(&spec));
    selector_and_affinity_match(node, &spec) && untolerated_taint(node, &spec).is_none()
}

/// One action.
#[derive(Debug, Clone, PartialEq)]
pub enum DsAction {
    /// Create a pod on this node.
    Create(String),
    /// Delete this pod.
    Delete(String),
}

/// Plans pods per node and the status.
pub fn plan(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    pods: &[Arc<CachedPod>],
    now: jiff::Timestamp,
) -> (Vec<DsAction>, DaemonSetStatus) {
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let hash = template_hash(&spec.template, ds.status.as_ref().and_then(|s| s.collision_count));
    let mut by_node: BTreeMap<String, Vec<&Arc<CachedPod>>> = BTreeMap::new();
    for p in pods.iter().filter(|p| controlled_by(&p.metadata, &uid) && is_active(p)) {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            by_node.entry(n.to_string()).or_default().push(p);
        }
    }
    let mut actions = Vec::new();
    let (mut desired, mut scheduled, mut misscheduled, mut ready, mut available, mut updated) = (0, 0, 0, 0, 0, 0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut outdated: Vec<&Arc<CachedPod>> = Vec::new();
    let mut unavailable = 0;
    for node in nodes {
        let n = node.metadata.name.clone().unwrap_or_default();
        let here = by_node.remove(&n).unwrap_or_default();
        if eligible(ds, node) {
            desired += 1;
            match here.as_slice() {
                [] => {
                    actions.push(DsAction::Create(n));
                    unavailable += 1;
                }
                [first, rest @ ..] => {
                    scheduled += 1;
                    for extra in rest {
                        actions.push(DsAction::Delete(extra.metadata.name.clone().unwrap_or_default()));
                    }
                    let is_updated = first.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash);
                    if is_updated {
                        updated += 1;
                    } else {
                        outdated.push(first);
                    }
                    if is_ready(first) {
                        ready += 1;
                    }
                    if is_available(first, min_ready, now) {
                        available += 1;
                    } else {
                        unavailable += 1;
                    }
                }
            }
        } else {
            misscheduled += here.len() as i32;
            actions.extend(here.iter().map(|p| DsAction::Delete(p.metadata.name.clone().unwrap_or_default())));
        }
    }
    for (_, orphaned) in by_node {
        actions.extend(orphaned.iter().map(|p| DsAction::Delete(p.metadata.name.clone().unwrap_or_default())));
    }
    if spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate" {
        let max_unavailable = super::util::scaled_value(
            spec.update_strategy
                .as_ref()
                .and_then(|u| u.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref()),
            desired,
            true,
            "1",
        )
        .max(1);
        let budget = (max_unavailable - unavailable).max(0) as usize;
        // old pods that are not available go first, then available ones within the budget
        outdated.sort_by_key(|p| is_available(p, min_ready, now));
        for p in outdated.iter().take(budget) {
            actions.push(DsAction::Delete(p.metadata.name.clone().unwrap_or_default()));
        }
    }
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: scheduled,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    (actions, status)
}

/// Reconciles one DaemonSet.
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if !ctx.expectations.pods_observed(&uid, &ctx.pods, &ns) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let pods = ctx.pods.in_namespace(&ns);
    let (actions, status) = plan(&ds, &ctx.nodes.state(), &pods, ctx.now());
    let spec = ds.spec.clone().unwrap_or_default();
    let hash = template_hash(&spec.template, ds.status.as_ref().and_then(|s| s.collision_count));
    let papi: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let recorder = ctx.recorders.get(CONTROLLER);
    let oref = skiff_client::events::reference(ds.as_ref());
    for a in &actions {
        match a {
            DsAction::Create(node) => {
                let pod_name = format!("{name}-{}", random_suffix());
                let mut meta = spec.template.metadata.clone().unwrap_or_default();
                meta.name = Some(pod_name.clone());
                meta.namespace = Some(ns.clone());
                meta.owner_references = Some(vec![owner_ref(ds.as_ref())]);
                meta.labels.get_or_insert_with(BTreeMap::new).insert(HASH_LABEL.into(), hash.clone());
                let mut pspec = with_defaults(&spec.template.spec.clone().unwrap_or_default());
                pspec.node_name = Some(node.clone());
                ctx.expectations.expect(&uid, [pod_name.clone()], Vec::new());
                match papi
                    .create(&PostParams::default(), &Pod { metadata: meta, spec: Some(pspec), status: None })
                    .await
                {
                    Ok(_) => {
                        recorder
                            .record(&oref, EventType::Normal, "SuccessfulCreate", &format!("Created pod: {pod_name}"))
                            .await
                    }
                    Err(e) => {
                        ctx.expectations.creation_failed(&uid, &pod_name);
                        recorder
                            .record(&oref, EventType::Warning, "FailedCreate", &format!("Error creating: {e}"))
                            .await;
                    }
                }
            }
            DsAction::Delete(pod_name) => {
                ctx.expectations.expect(&uid, Vec::new(), [pod_name.clone()]);
                match papi.delete(pod_name, &DeleteParams::default()).await {
                    Ok(_) => {
                        recorder
                            .record(&oref, EventType::Normal, "SuccessfulDelete", &format!("Deleted pod: {pod_name}"))
                            .await
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    if ds.status.as_ref() != Some(&status) {
        let dapi: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        super::retry::status_written(
            dapi.patch_status(&name, &super::util::pp(), &Patch::Merge(&json!({"status": status}))).await,
        )?;
    }
    Ok(Action::requeue(Duration::from_secs(if actions.is_empty() { 300 } else { 2 })))
}

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "daemonset-controller";

/// Runs the controller: DaemonSet and pod changes, and every node change (which may make any DaemonSet apply).
pub async fn run(
    ctx: Arc<Ctx>,
    sets: Subscription<DaemonSet>,
    pods: Subscription<CachedPod>,
    nodes: Subscription<Node>,
) {
    let store = ctx.daemon_sets.clone();
    Controller::for_shared_stream(sets, ctx.daemon_sets.clone())
        .reconcile_on(super::informers::owners_of(pods))
        .watches_shared_stream(nodes, move |_node: Arc<Node>| {
            store.state().iter().map(|d| ObjectRef::from_obj(d.as_ref())).collect::<Vec<_>>()
        })
        .run(super::retry::reconciler(CONTROLLER, reconcile), super::retry::policy(CONTROLLER), ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(selector: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({"metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"nodeSelector": selector, "containers": [{"name": "c", "image": "i"}]}}}}))
        .expect("ds")
    }

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
                .expect("node"),
        )
    }

    #[test]
    fn one_pod_per_eligible_node_including_unreachable_ones() {
        let nodes = vec![
            node("n1", json!({"disk": "ssd"}), json!([])),
            node("n2", json!({"disk": "hdd"}), json!([])),
            node(
                "n3",
                json!({"disk": "ssd"}),
                json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
            ),
            node("n4", json!({"disk": "ssd"}), json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])),
        ];
        let (actions, status) = plan(&ds(json!({"disk": "ssd"})), &nodes, &[], jiff::Timestamp::now());
        assert_eq!(actions, vec![DsAction::Create("n1".into()), DsAction::Create("n3".into())]);
        assert_eq!(status.desired_number_scheduled, 2);
    }
}

//! The ReplicaSet controller: keeps `replicas` pods matching the selector, adopting orphans and releasing pods that
//! no longer match, deleting the least valuable pods first, and reporting status.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Patch, PostParams};
use kube::runtime::controller::{Action, Controller};
use serde_json::json;
use skiff_api::selector::Selector;
use skiff_client::events::EventType;

use super::cached_pod::CachedPod;
use super::ctx::{Ctx, ReconcileError};
use super::util::{controller_of, is_active, is_available, is_ready, owner_ref, random_suffix};

/// What one reconcile of a ReplicaSet should do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Pods to create.
    pub create: usize,
    /// Pods to delete (names), most deletable first.
    pub delete: Vec<String>,
    /// Orphan pods to adopt.
    pub adopt: Vec<String>,
    /// Owned pods to release (they no longer match the selector).
    pub release: Vec<String>,
    /// The status to report.
    pub status: ReplicaSetStatus,
}

fn phase_rank(p: &CachedPod) -> u8 {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn restarts(p: &CachedPod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// Orders pods most deletable first: unscheduled, then pending/unknown, then not ready, then ready more recently,
/// then with more restarts, then newer.
pub fn deletion_order(a: &CachedPod, b: &CachedPod) -> Ordering {
    let assigned = |p: &CachedPod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
    assigned(a)
        .cmp(&assigned(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        .then_with(|| super::util::ready_since(b).cmp(&super::util::ready_since(a)))
        .then(restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let t = |p: &CachedPod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(b).cmp(&t(a))
        })
}

/// Computes what to do for `rs` given the pods of its namespace.
pub fn plan(rs: &ReplicaSet, pods: &[Arc<CachedPod>], now: jiff::Timestamp) -> Plan {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    let selector = Selector::from_label_selector(&spec.selector).unwrap_or_else(|_| Selector::nothing());
    let mut plan = Plan::default();
    let mut owned: Vec<&CachedPod> = Vec::new();
    for p in pods {
        // Another controller's pod is none of this one's business (most pods of a namespace, checked first and
        // cheaply: this runs over every pod of the namespace on every pass).
        let controller = controller_of(&p.metadata);
        if controller.is_some_and(|r| r.uid != uid) {
            continue;
        }
        let matches = !selector.is_empty() && p.metadata.selected_by(&selector);
        if controller.is_some() {
            if matches {
                owned.push(p);
            } else if is_active(p) {
                plan.release.push(p.metadata.name.clone().unwrap_or_default());
            }
        } else if matches && is_active(p) && rs.metadata.deletion_timestamp.is_none() {
            plan.adopt.push(p.metadata.name.clone().unwrap_or_default());
            owned.push(p);
        }
    }
    let mut active: Vec<&CachedPod> = owned.iter().copied().filter(|p| is_active(p)).collect();
    if rs.metadata.deletion_timestamp.is_none() {
        if active.len() < replicas {
            plan.create = replicas - active.len();
        } else if active.len() > replicas {
            active.sort_by(|a, b| deletion_order(a, b));
            plan.delete =
                active[..active.len() - replicas].iter().map(|p| p.metadata.name.clone().unwrap_or_default()).collect();
        }
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec.template.as_ref().map(super::util::template_labels).unwrap_or_default();
    let all_active: Vec<&CachedPod> = owned.iter().copied().filter(|p| is_active(p)).collect();
    plan.status = ReplicaSetStatus {
        replicas: all_active.len() as i32,
        fully_labeled_replicas: Some(
            all_active
                .iter()
                .filter(|p| {
                    template_labels
                        .iter()
                        .all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v.as_str()))
                })
                .count() as i32,
        ),
        ready_replicas: Some(all_active.iter().filter(|p| is_ready(p)).count() as i32),
        available_replicas: Some(all_active.iter().filter(|p| is_available(p, min_ready, now)).count() as i32),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    plan
}

fn reference(rs: &ReplicaSet) -> ObjectReference {
    skiff_client::events::reference(rs)
}

/// Reconciles one ReplicaSet.
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    if !ctx.expectations.pods_observed(&uid, &ctx.pods, &ns) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    // the plan skips another controller's pods: only this set's and the orphans are read
    let pods = ctx.pods.controlled_or_orphaned(&uid, &ns);
    let p = plan(&rs, &pods, ctx.now());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let recorder = ctx.recorders.get(CONTROLLER);
    let oref = owner_ref(rs.as_ref());
    for pod in &p.adopt {
        let patch = json!({"metadata": {"ownerReferences": [oref]}});
        api.patch(pod, &super::util::pp(), &Patch::Strategic(&patch)).await?;
    }
    for pod in &p.release {
        let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}]}});
        super::retry::unless_gone(api.patch(pod, &super::util::pp(), &Patch::Strategic(&patch)).await)?;
    }
    if p.create > 0 {
        let template = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .ok_or_else(|| ReconcileError::Invalid("no pod template".into()))?;
        let names: Vec<String> = (0..p.create.min(500)).map(|_| format!("{name}-{}", random_suffix())).collect();
        ctx.expectations.expect(&uid, names.clone(), Vec::new());
        let creates = names.iter().map(|pod_name| {
            let mut meta = template.metadata.clone().unwrap_or_default();
            meta.name = Some(pod_name.clone());
            meta.namespace = Some(ns.clone());
            meta.owner_references = Some(vec![oref.clone()]);
            let pod = Pod { metadata: meta, spec: template.spec.clone(), status: None };
            let api = api.clone();
            async move { (pod_name.clone(), api.create(&PostParams::default(), &pod).await) }
        });
        for (pod_name, r) in futures::future::join_all(creates).await {
            match r {
                Ok(_) => {
                    recorder
                        .record(
                            &reference(&rs),
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {pod_name}"),
                        )
                        .await
                }
                Err(e) => {
                    ctx.expectations.creation_failed(&uid, &pod_name);
                    recorder
                        .record(&reference(&rs), EventType::Warning, "FailedCreate", &format!("Error creating: {e}"))
                        .await;
                }
            }
        }
    }
    if !p.delete.is_empty() {
        ctx.expectations.expect(&uid, Vec::new(), p.delete.clone());
        for pod in &p.delete {
            match api.delete(pod, &DeleteParams::default()).await {
                Ok(_) => {
                    recorder
                        .record(&reference(&rs), EventType::Normal, "SuccessfulDelete", &format!("Deleted pod: {pod}"))
                        .await
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if rs.status.as_ref() != Some(&p.status) {
        let rsapi: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": p.status});
        super::retry::status_written(rsapi.patch_status(&name, &super::util::pp(), &Patch::Merge(&patch)).await)?;
    }
    // No look-again timer here: the changes of this pass's creates and deletes, and every later pod change, come
    // back as pod events (informers.rs says why some once did not).
    // requeue while pods wait for minReadySeconds to count as available
    let min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    if min_ready > 0 && p.status.available_replicas != p.status.ready_replicas {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // The resync every Kubernetes controller has: a safety net measured in minutes, not the way changes arrive.
    Ok(Action::requeue(RESYNC))
}

/// How often a ReplicaSet is looked at with no change to trigger it.
pub const RESYNC: Duration = Duration::from_secs(300);

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "replicaset-controller";

/// Runs the controller.
pub async fn run(ctx: Arc<Ctx>, trigger: Subscription<ReplicaSet>, pods: Subscription<CachedPod>) {
    Controller::for_shared_stream(trigger, ctx.replica_sets.clone())
        .reconcile_on(super::informers::owners_of(pods))
        .run(super::retry::reconciler(CONTROLLER, reconcile), super::retry::policy(CONTROLLER), ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d", "uid": "rs-uid", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}))
        .expect("rs")
    }

    fn pod(name: &str, owner: Option<&str>, node: Option<&str>, ready: bool, created: &str) -> Arc<CachedPod> {
        let mut v = json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": "web"}, "creationTimestamp": created},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": if node.is_some() { "Running" } else { "Pending" }}});
        if let Some(o) = owner {
            v["metadata"]["ownerReferences"] =
                json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": o, "controller": true}]);
        }
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
        }
        if ready {
            v["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        }
        Arc::new(serde_json::from_value(v).expect("pod"))
    }

    fn now() -> jiff::Timestamp {
        "2026-06-01T00:00:00Z".parse().expect("time")
    }

    #[test]
    fn missing_replicas_are_created_and_orphans_adopted() {
        let pods = vec![
            pod("a", Some("rs-uid"), Some("n1"), true, "2026-01-01T00:00:00Z"),
            pod("orphan", None, Some("n1"), true, "2026-01-01T00:00:00Z"),
        ];
        let p = plan(&rs(4), &pods, now());
        assert_eq!(p.adopt, vec!["orphan"]);
        assert_eq!(p.create, 2);
        assert_eq!(p.status.replicas, 2);
        assert_eq!(p.status.ready_replicas, Some(2));
        assert_eq!(p.status.observed_generation, Some(2));
    }

    #[test]
    fn scale_down_deletes_the_least_valuable_pods_first() {
        let pods = vec![
            pod("ready-old", Some("rs-uid"), Some("n1"), true, "2026-01-01T00:00:00Z"),
            pod("unscheduled", Some("rs-uid"), None, false, "2026-01-01T00:00:00Z"),
            pod("not-ready", Some("rs-uid"), Some("n1"), false, "2026-01-01T00:00:00Z"),
            pod("ready-new", Some("rs-uid"), Some("n1"), true, "2026-02-01T00:00:00Z"),
        ];
        assert_eq!(plan(&rs(1), &pods, now()).delete, vec!["unscheduled", "not-ready", "ready-new"]);
    }

    #[test]
    fn pods_of_other_owners_and_terminating_pods_are_left_alone() {
        let mut deleting = (*pod("dying", Some("rs-uid"), Some("n1"), true, "2026-01-01T00:00:00Z")).clone();
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        let pods = vec![pod("theirs", Some("other"), Some("n1"), true, "2026-01-01T00:00:00Z"), Arc::new(deleting)];
        let p = plan(&rs(1), &pods, now());
        assert_eq!(p.create, 1, "a terminating pod is not a replica");
        assert!(p.adopt.is_empty());
        assert_eq!(p.status.replicas, 0);
    }
}

//! The StatefulSet controller: pods with stable names `name-0..N-1` (hostname and subdomain set for per-pod DNS),
//! a PersistentVolumeClaim per pod and claim template, OrderedReady (one at a time, in order, gated on readiness)
//! or Parallel management, rolling updates by descending ordinal down to `partition`, revisions tracked in
//! ControllerRevisions, and status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PostParams};
use kube::runtime::controller::{Action, Controller};
use serde_json::json;
use skiff_client::events::EventType;

use super::cached_pod::CachedPod;
use super::ctx::{Ctx, ReconcileError};
use super::util::{controlled_by, is_active, is_ready, is_terminal, owner_ref, template_hash};

/// The label carrying a pod's revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The label carrying a pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying a pod's ordinal.
pub const INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// One action.
#[derive(Debug, Clone, PartialEq)]
pub enum StsAction {
    /// Create the pod with this ordinal (at the update revision).
    Create(i32),
    /// Delete this pod (scale down, failed, or to update it).
    Delete(String),
}

fn ordinal(sts: &str, pod: &CachedPod) -> Option<i32> {
    pod.metadata.name.as_deref()?.strip_prefix(&format!("{sts}-"))?.parse().ok()
}

fn revision(pod: &CachedPod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(REVISION_LABEL)
}

/// The update revision of a StatefulSet: `name-<template hash>`.
pub fn update_revision(sts: &StatefulSet) -> String {
    let t = sts.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    format!(
        "{}-{}",
        sts.metadata.name.clone().unwrap_or_default(),
        template_hash(&t, sts.status.as_ref().and_then(|s| s.collision_count))
    )
}

/// Plans the next actions (at most one at a time under OrderedReady) and the status.
pub fn plan(sts: &StatefulSet, pods: &[Arc<CachedPod>], now: jiff::Timestamp) -> (Vec<StsAction>, StatefulSetStatus) {
    let spec = sts.spec.clone().unwrap_or_default();
    let name = sts.metadata.name.clone().unwrap_or_default();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let update_rev = update_revision(sts);
    let current_rev =
        sts.status.as_ref().and_then(|s| s.current_revision.clone()).unwrap_or_else(|| update_rev.clone());
    let mut by_ordinal: BTreeMap<i32, &Arc<CachedPod>> = BTreeMap::new();
    for p in pods.iter().filter(|p| controlled_by(&p.metadata, &uid)) {
        if let Some(o) = ordinal(&name, p) {
            by_ordinal.insert(o, p);
        }
    }
    let mut actions = Vec::new();
    let healthy = |p: &CachedPod| {
        is_active(p) && is_ready(p) && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    };
    // replace failed pods; create missing ones
    for o in 0..replicas {
        match by_ordinal.get(&o) {
            Some(p) if is_terminal(p) && p.metadata.deletion_timestamp.is_none() => {
                actions.push(StsAction::Delete(p.metadata.name.clone().unwrap_or_default()));
                if !parallel {
                    break;
                }
            }
            Some(p) if !parallel && !healthy(p) => break,
            Some(_) => {}
            None => {
                actions.push(StsAction::Create(o));
                if !parallel {
                    break;
                }
            }
        }
    }
    let all_healthy = (0..replicas).all(|o| by_ordinal.get(&o).is_some_and(|p| healthy(p)));
    // scale down from the highest ordinal
    let mut condemned: Vec<&Arc<CachedPod>> =
        by_ordinal.iter().filter(|(o, _)| **o >= replicas).map(|(_, p)| *p).collect();
    condemned.sort_by_key(|p| std::cmp::Reverse(ordinal(&name, p)));
    for p in condemned {
        if p.metadata.deletion_timestamp.is_some() {
            if !parallel {
                break;
            }
            continue;
        }
        if !parallel && !all_healthy {
            break;
        }
        actions.push(StsAction::Delete(p.metadata.name.clone().unwrap_or_default()));
        if !parallel {
            break;
        }
    }
    // rolling update, highest ordinal first, one at a time once everything is healthy
    let rolling =
        spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition =
        spec.update_strategy.as_ref().and_then(|u| u.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0);
    if rolling
        && actions.is_empty()
        && all_healthy
        && let Some(p) = (partition..replicas)
            .rev()
            .filter_map(|o| by_ordinal.get(&o))
            .find(|p| revision(p) != Some(update_rev.as_str()))
    {
        actions.push(StsAction::Delete(p.metadata.name.clone().unwrap_or_default()));
    }
    let live: Vec<&&Arc<CachedPod>> = by_ordinal.values().filter(|p| is_active(p)).collect();
    let updated = live.iter().filter(|p| revision(p) == Some(update_rev.as_str())).count() as i32;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let done = updated == replicas && live.len() as i32 == replicas;
    let status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|p| is_ready(p)).count() as i32),
        available_replicas: Some(live.iter().filter(|p| super::util::is_available(p, min_ready, now)).count() as i32),
        current_replicas: Some(if done {
            updated
        } else {
            live.iter().filter(|p| revision(p) == Some(current_rev.as_str())).count() as i32
        }),
        updated_replicas: Some(updated),
        current_revision: Some(if done { update_rev.clone() } else { current_rev }),
        update_revision: Some(update_rev),
        collision_count: sts.status.as_ref().and_then(|s| s.collision_count),
        conditions: sts.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    (actions, status)
}

/// The pod of ordinal `o`.
pub fn pod_for(sts: &StatefulSet, o: i32, revision: &str) -> Pod {
    let spec = sts.spec.clone().unwrap_or_default();
    let name = sts.metadata.name.clone().unwrap_or_default();
    let pod_name = format!("{name}-{o}");
    let mut meta = spec.template.metadata.clone().unwrap_or_default();
    meta.name = Some(pod_name.clone());
    meta.namespace = sts.metadata.namespace.clone();
    meta.owner_references = Some(vec![owner_ref(sts)]);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_LABEL.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
    labels.insert(INDEX_LABEL.into(), o.to_string());
    let mut pspec = spec.template.spec.clone().unwrap_or_default();
    pspec.hostname = Some(pod_name.clone());
    if let Some(svc) = spec.service_name.clone().filter(|s| !s.is_empty()) {
        pspec.subdomain = Some(svc);
    }
    for claim in spec.volume_claim_templates.iter().flatten() {
        let cname = claim.metadata.name.clone().unwrap_or_default();
        let vols = pspec.volumes.get_or_insert_with(Vec::new);
        vols.retain(|v| v.name != cname);
        vols.push(Volume {
            name: cname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{cname}-{pod_name}"),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    Pod { metadata: meta, spec: Some(pspec), status: None }
}

/// Reconciles one StatefulSet.
pub async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = sts.metadata.namespace.clone().unwrap_or_default();
    let name = sts.metadata.name.clone().unwrap_or_default();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if !ctx.expectations.pods_observed(&uid, &ctx.pods, &ns) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let pods = ctx.pods.in_namespace(&ns);
    let (actions, status) = plan(&sts, &pods, ctx.now());
    let update_rev = status.update_revision.clone().unwrap_or_default();
    let recorder = ctx.recorders.get(CONTROLLER);
    let oref = skiff_client::events::reference(sts.as_ref());
    // the revision object
    let rapi: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    if !ctx.revisions.state().iter().any(|r| {
        r.metadata.namespace.as_deref() == Some(ns.as_str()) && r.metadata.name.as_deref() == Some(update_rev.as_str())
    }) {
        let next = ctx
            .revisions
            .state()
            .iter()
            .filter(|r| controlled_by(&r.metadata, &uid))
            .map(|r| r.revision)
            .max()
            .unwrap_or(0)
            + 1;
        let rev = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(update_rev.clone()),
                namespace: Some(ns.clone()),
                owner_references: Some(vec![owner_ref(sts.as_ref())]),
                labels: sts.spec.as_ref().and_then(|s| s.selector.match_labels.clone()),
                ..Default::default()
            },
            data: Some(RawExtension(json!({"spec": {"template": sts.spec.as_ref().map(|s| s.template.clone())}}))),
            revision: next,
        };
        match rapi.create(&PostParams::default(), &rev).await {
            // an earlier pass made it
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let papi: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let capi: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for a in &actions {
        match a {
            StsAction::Create(o) => {
                let pod = pod_for(&sts, *o, &update_rev);
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                for claim in sts.spec.as_ref().and_then(|s| s.volume_claim_templates.clone()).unwrap_or_default() {
                    let cname = format!("{}-{pod_name}", claim.metadata.name.clone().unwrap_or_default());
                    if capi.get_opt(&cname).await?.is_none() {
                        let mut pvc = claim.clone();
                        pvc.metadata = ObjectMeta {
                            name: Some(cname.clone()),
                            namespace: Some(ns.clone()),
                            labels: sts.spec.as_ref().and_then(|s| s.selector.match_labels.clone()),
                            ..Default::default()
                        };
                        pvc.status = None;
                        match capi.create(&PostParams::default(), &pvc).await {
                            Ok(_) => {
                                recorder
                                    .record(
                                        &oref,
                                        EventType::Normal,
                                        "SuccessfulCreate",
                                        &format!("create Claim {cname} Pod {pod_name} in StatefulSet {name} success"),
                                    )
                                    .await
                            }
                            Err(kube::Error::Api(e)) if e.code == 409 => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                ctx.expectations.expect(&uid, [pod_name.clone()], Vec::new());
                match papi.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        recorder
                            .record(
                                &oref,
                                EventType::Normal,
                                "SuccessfulCreate",
                                &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                            )
                            .await
                    }
                    Err(e) => {
                        ctx.expectations.creation_failed(&uid, &pod_name);
                        recorder
                            .record(
                                &oref,
                                EventType::Warning,
                                "FailedCreate",
                                &format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                            )
                            .await;
                    }
                }
            }
            StsAction::Delete(pod_name) => {
                ctx.expectations.expect(&uid, Vec::new(), [pod_name.clone()]);
                match papi.delete(pod_name, &DeleteParams::default()).await {
                    Ok(_) => {
                        recorder
                            .record(
                                &oref,
                                EventType::Normal,
                                "SuccessfulDelete",
                                &format!("delete Pod {pod_name} in StatefulSet {name} successful"),
                            )
                            .await
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    if sts.status.as_ref() != Some(&status) {
        let sapi: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        super::retry::status_written(
            sapi.patch_status(&name, &super::util::pp(), &Patch::Merge(&json!({"status": status}))).await,
        )?;
    }
    Ok(Action::requeue(Duration::from_secs(if actions.is_empty() { 300 } else { 2 })))
}

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "statefulset-controller";

/// Runs the controller.
pub async fn run(ctx: Arc<Ctx>, sets: Subscription<StatefulSet>, pods: Subscription<CachedPod>) {
    Controller::for_shared_stream(sets, ctx.stateful_sets.clone())
        .reconcile_on(super::informers::owners_of(pods))
        .run(super::retry::reconciler(CONTROLLER, reconcile), super::retry::policy(CONTROLLER), ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: i32, policy: &str, image: &str) -> StatefulSet {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d", "uid": "s-uid", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "nginx", "podManagementPolicy": policy, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}))
        .expect("sts")
    }

    fn pod(s: &StatefulSet, o: i32, ready: bool, rev: &str) -> Arc<CachedPod> {
        let mut p = crate::controllers::cached_pod::cached(&pod_for(s, o, rev));
        p.status = serde_json::from_value(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]})).expect("status");
        Arc::new(p)
    }

    #[test]
    fn ordered_ready_creates_one_pod_at_a_time_in_order() {
        let s = sts(3, "OrderedReady", "v1");
        let rev = update_revision(&s);
        assert_eq!(plan(&s, &[], jiff::Timestamp::now()).0, vec![StsAction::Create(0)]);
        assert!(
            plan(&s, &[pod(&s, 0, false, &rev)], jiff::Timestamp::now()).0.is_empty(),
            "wait for web-0 to be ready"
        );
        assert_eq!(plan(&s, &[pod(&s, 0, true, &rev)], jiff::Timestamp::now()).0, vec![StsAction::Create(1)]);
        let parallel = sts(3, "Parallel", "v1");
        assert_eq!(
            plan(&parallel, &[], jiff::Timestamp::now()).0,
            vec![StsAction::Create(0), StsAction::Create(1), StsAction::Create(2)]
        );
    }

    #[test]
    fn pods_have_stable_names_hostnames_and_claims() {
        let s = sts(1, "OrderedReady", "v1");
        let p = pod_for(&s, 0, "rev");
        assert_eq!(p.metadata.name.as_deref(), Some("web-0"));
        let spec = p.spec.expect("spec");
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("web-0"), Some("nginx")));
        assert_eq!(
            spec.volumes.expect("volumes")[0].persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()),
            Some("www-web-0")
        );
    }

    #[test]
    fn scale_down_and_rolling_update_go_from_the_highest_ordinal() {
        let s = sts(2, "OrderedReady", "v1");
        let rev = update_revision(&s);
        let pods: Vec<Arc<CachedPod>> = (0..3).map(|o| pod(&s, o, true, &rev)).collect();
        assert_eq!(plan(&s, &pods, jiff::Timestamp::now()).0, vec![StsAction::Delete("web-2".into())]);
        let v2 = sts(2, "OrderedReady", "v2");
        let old: Vec<Arc<CachedPod>> = (0..2).map(|o| pod(&s, o, true, &rev)).collect();
        let (actions, status) = plan(&v2, &old, jiff::Timestamp::now());
        assert_eq!(actions, vec![StsAction::Delete("web-1".into())]);
        assert_eq!(status.updated_replicas, Some(0));
    }
}

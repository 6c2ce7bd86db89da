//! The Deployment controller: one ReplicaSet per pod template, rolled with RollingUpdate (maxSurge/maxUnavailable,
//! gated on availability) or Recreate, with revisions, rollback, pause, history cleanup, status and conditions.

pub mod plan;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::controllers::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, DeleteParams, Patch, PostParams};
use kube::runtime::controller::{Action, Controller};
use serde_json::json;
use skiff_api::selector::Selector;
use skiff_client::events::EventType;

use super::ctx::{Ctx, ReconcileError};
use super::util::{controlled_by, controller_of, owner_ref};
use plan::{DESIRED, MAX, REVISION, RsAction, limits};

/// Reconciles one Deployment.
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let rsapi: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    // a ReplicaSet created moments ago may not be in the cache yet: wait for it rather than create it twice
    let cached = super::informers::in_namespace(&ctx.replica_sets, &ns);
    let present = |n: &str| cached.iter().any(|r| r.metadata.name.as_deref() == Some(n));
    if !ctx.expectations.satisfied(&uid, present, |_| true) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let recorder = ctx.recorders.get(CONTROLLER);
    let oref = skiff_client::events::reference(d.as_ref());
    let selector = d
        .spec
        .as_ref()
        .map(|s| Selector::from_label_selector(&s.selector))
        .transpose()
        .map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    let all = super::informers::in_namespace(&ctx.replica_sets, &ns);
    let mut owned: Vec<Arc<ReplicaSet>> = Vec::new();
    for rs in all {
        if controlled_by(&rs.metadata, &uid) {
            owned.push(rs);
        } else if controller_of(&rs.metadata).is_none()
            && selector
                .as_ref()
                .is_some_and(|s| !s.is_empty() && s.matches(&rs.metadata.labels.clone().unwrap_or_default()))
        {
            // adopt an orphaned ReplicaSet that matches
            let patch = json!({"metadata": {"ownerReferences": [owner_ref(d.as_ref())]}});
            let rs_name = rs.metadata.name.clone().unwrap_or_default();
            if rsapi.patch(&rs_name, &crate::controllers::util::pp(), &Patch::Strategic(&patch)).await.is_ok() {
                owned.push(rs);
            }
        }
    }
    let p = plan::plan(&d, &owned);
    let (surge, _) = limits(&d);
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let mut progressed = false;
    for action in &p.actions {
        match action {
            RsAction::Create(rs) => {
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                ctx.expectations.expect(&uid, [rs_name.clone()], Vec::new());
                match rsapi.create(&PostParams::default(), rs).await {
                    Ok(_) => {
                        let to = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                        recorder
                            .record(
                                &oref,
                                EventType::Normal,
                                "ScalingReplicaSet",
                                &format!("Scaled up replica set {rs_name} from 0 to {to}"),
                            )
                            .await;
                        progressed = true;
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        // ours already (created by an earlier pass)? then there is nothing to do
                        let existing = rsapi.get_opt(&rs_name).await?;
                        let same = existing.as_ref().is_some_and(|x| {
                            x.spec.as_ref().and_then(|s| s.template.as_ref()).map(super::util::without_hash)
                                == rs.spec.as_ref().and_then(|s| s.template.as_ref()).map(super::util::without_hash)
                        });
                        if same {
                            return Ok(Action::requeue(Duration::from_millis(200)));
                        }
                        ctx.expectations.forget(&uid);
                        // a ReplicaSet of that name with another template: a hash collision
                        let count = d.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0) + 1;
                        let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                        crate::controllers::retry::status_written(
                            dapi.patch_status(
                                &name,
                                &crate::controllers::util::pp(),
                                &Patch::Merge(&json!({"status": {"collisionCount": count}})),
                            )
                            .await,
                        )?;
                        return Ok(Action::requeue(Duration::from_millis(200)));
                    }
                    Err(e) => {
                        ctx.expectations.creation_failed(&uid, &rs_name);
                        return Err(e.into());
                    }
                }
            }
            RsAction::Scale { name: rs_name, from, to } => {
                let patch = json!({"metadata": {"annotations": {DESIRED: desired.to_string(), MAX: (desired + surge).to_string()}}, "spec": {"replicas": to}});
                rsapi.patch(rs_name, &crate::controllers::util::pp(), &Patch::Merge(&patch)).await?;
                let verb = if to > from { "up" } else { "down" };
                recorder
                    .record(
                        &oref,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        &format!("Scaled {verb} replica set {rs_name} from {from} to {to}"),
                    )
                    .await;
                progressed = true;
            }
            RsAction::Annotate { name: rs_name, annotations } => {
                let mut a: BTreeMap<String, String> = annotations.clone();
                if let Some(cause) = d.metadata.annotations.as_ref().and_then(|x| x.get(plan::CHANGE_CAUSE)) {
                    a.insert(plan::CHANGE_CAUSE.into(), cause.clone());
                }
                rsapi
                    .patch(
                        rs_name,
                        &crate::controllers::util::pp(),
                        &Patch::Merge(&json!({"metadata": {"annotations": a}})),
                    )
                    .await?;
            }
            RsAction::Delete(rs_name) => {
                crate::controllers::retry::unless_gone(rsapi.delete(rs_name, &DeleteParams::background()).await)?
            }
        }
    }
    // the Deployment carries its current revision
    if let Some(rev) = &p.revision
        && d.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)) != Some(rev)
    {
        let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        dapi.patch(
            &name,
            &crate::controllers::util::pp(),
            &Patch::Merge(&json!({"metadata": {"annotations": {REVISION: rev}}})),
        )
        .await?;
    }
    let previous = d.status.clone().unwrap_or_default();
    let status = status::compute(
        &d,
        &owned,
        p.new_rs.as_deref(),
        progressed || changed_counts(&previous, &d, &owned, p.new_rs.as_deref()),
        ctx.now(),
    );
    if d.status.as_ref() != Some(&status) {
        let was_timed_out = previous
            .conditions
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")));
        let now_timed_out = status
            .conditions
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")));
        if now_timed_out && !was_timed_out {
            recorder
                .record(
                    &oref,
                    EventType::Warning,
                    "ProgressDeadlineExceeded",
                    &format!("Deployment {name} has timed out progressing"),
                )
                .await;
        }
        let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        crate::controllers::retry::status_written(
            dapi.patch_status(&name, &crate::controllers::util::pp(), &Patch::Merge(&json!({"status": status}))).await,
        )?;
    }
    let done = status
        .conditions
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable")));
    let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).unwrap_or(600);
    Ok(Action::requeue(if done {
        Duration::from_secs(300)
    } else {
        Duration::from_secs((deadline as u64).clamp(1, 30))
    }))
}

fn changed_counts(
    previous: &k8s_openapi::api::apps::v1::DeploymentStatus,
    d: &Deployment,
    owned: &[Arc<ReplicaSet>],
    new_rs: Option<&str>,
) -> bool {
    let s = status::compute(d, owned, new_rs, false, jiff::Timestamp::UNIX_EPOCH);
    previous.updated_replicas != s.updated_replicas
        || previous.available_replicas != s.available_replicas
        || previous.replicas != s.replicas
}

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "deployment-controller";

/// Runs the controller.
pub async fn run(ctx: Arc<Ctx>, trigger: Subscription<Deployment>, replica_sets: Subscription<ReplicaSet>) {
    Controller::for_shared_stream(trigger, ctx.deployments.clone())
        .owns_shared_stream(replica_sets)
        .run(
            crate::controllers::retry::reconciler(CONTROLLER, reconcile),
            crate::controllers::retry::policy(CONTROLLER),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

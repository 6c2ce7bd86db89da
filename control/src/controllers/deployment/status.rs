//! A Deployment's status and its Available / Progressing conditions, with the reasons `kubectl rollout status`
//! and `kubectl describe` print.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::limits;

fn cond(
    ty: &str,
    status: &str,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
    previous: Option<&DeploymentCondition>,
) -> DeploymentCondition {
    let same_status = previous.is_some_and(|p| p.status == status);
    let same = previous.is_some_and(|p| {
        p.status == status && p.reason.as_deref() == Some(reason) && p.message.as_deref() == Some(message.as_str())
    });
    DeploymentCondition {
        type_: ty.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: if same_status {
            previous.and_then(|p| p.last_transition_time.clone())
        } else {
            Some(Time(now))
        },
        last_update_time: if same { previous.and_then(|p| p.last_update_time.clone()) } else { Some(Time(now)) },
    }
}

/// Computes the status of `d` from its ReplicaSets (`new_rs` is the current template's).
pub fn compute(
    d: &Deployment,
    owned: &[Arc<ReplicaSet>],
    new_rs: Option<&str>,
    progressed: bool,
    now: jiff::Timestamp,
) -> DeploymentStatus {
    let spec = d.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| owned.iter().map(|r| f(r)).sum::<i32>();
    let replicas = sum(&|r| r.status.as_ref().map(|s| s.replicas).unwrap_or(0));
    let ready = sum(&|r| r.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0));
    let available = sum(&|r| r.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0));
    let new = new_rs.and_then(|n| owned.iter().find(|r| r.metadata.name.as_deref() == Some(n)));
    let updated = new.map(|r| r.status.as_ref().map(|s| s.replicas).unwrap_or(0)).unwrap_or(0);
    let previous = d.status.clone().unwrap_or_default();
    let prev_cond = |t: &str| previous.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == t)).cloned();
    let (_, max_unavailable) = limits(d);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let min_available = if recreate { desired } else { desired - max_unavailable };
    let available_cond = if available >= min_available {
        cond(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            now,
            prev_cond("Available").as_ref(),
        )
    } else {
        cond(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            now,
            prev_cond("Available").as_ref(),
        )
    };
    let rs_name = new_rs.unwrap_or_default();
    let prev_progress = prev_cond("Progressing");
    let complete = updated == desired && replicas == desired && available == desired && new.is_some();
    let deadline = spec.progress_deadline_seconds.unwrap_or(600);
    let progressing_cond = if spec.paused == Some(true) {
        cond("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), now, prev_progress.as_ref())
    } else if complete {
        cond(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            now,
            prev_progress.as_ref(),
        )
    } else if progressed
        || prev_progress.as_ref().is_none_or(|p| {
            p.reason.as_deref() == Some("NewReplicaSetAvailable") || p.reason.as_deref() == Some("DeploymentPaused")
        })
    {
        let mut c = cond(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs_name}\" is progressing."),
            now,
            prev_progress.as_ref(),
        );
        c.last_update_time = Some(Time(now));
        c
    } else {
        let last = prev_progress.as_ref().and_then(|p| p.last_update_time.as_ref()).map(|t| t.0).unwrap_or(now);
        let timed_out = now.duration_since(last).as_secs() > i64::from(deadline);
        match prev_progress {
            Some(p) if p.reason.as_deref() == Some("ProgressDeadlineExceeded") => p,
            _ if timed_out => cond(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                now,
                prev_progress.as_ref(),
            ),
            Some(p) => p,
            None => cond(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
                now,
                None,
            ),
        }
    };
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((desired.max(replicas) - available).max(0)),
        conditions: Some(vec![available_cond, progressing_cond]),
        collision_count: previous.collision_count,
    }
}

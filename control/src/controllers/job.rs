//! The Job controller: runs pods to completion (`completions`, `parallelism`, NonIndexed and Indexed), retries
//! failures with exponential back-off up to `backoffLimit`, enforces `activeDeadlineSeconds`, honours `suspend`,
//! sets the Complete / Failed conditions kubectl shows, and deletes finished Jobs after `ttlSecondsAfterFinished`.
//!
//! Finished pods are counted exactly once, as Kubernetes does: each pod carries the
//! `batch.kubernetes.io/job-tracking` finalizer; a finished pod's uid is first recorded in
//! `status.uncountedTerminatedPods`, then its finalizer is removed, then it moves to the `succeeded`/`failed` counters.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PostParams};
use kube::runtime::controller::{Action, Controller};
use serde_json::json;
use skiff_client::events::EventType;

use super::cached_pod::CachedPod;
use super::ctx::{Ctx, ReconcileError};
use super::util::{controlled_by, is_active, is_ready, owner_ref, random_suffix};

/// The finalizer that keeps a finished pod until the Job has counted it.
pub const TRACKING: &str = "batch.kubernetes.io/job-tracking";
/// The completion index annotation of Indexed jobs.
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// What one reconcile does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Pods to create, each with its completion index (Indexed jobs).
    pub create: Vec<Option<i32>>,
    /// Active pods to delete.
    pub delete: Vec<String>,
    /// Pods whose tracking finalizer can go (after the status is written).
    pub release: Vec<String>,
    /// The new status.
    pub status: JobStatus,
    /// Events: (type, reason, message).
    pub events: Vec<(EventType, String, String)>,
    /// Check again after this long (back-off, deadline, TTL).
    pub requeue: Option<Duration>,
    /// Delete the Job itself (TTL after finishing).
    pub delete_job: bool,
}

fn phase(p: &CachedPod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn has_tracking(p: &CachedPod) -> bool {
    p.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|x| x == TRACKING))
}

fn finished(job: &Job) -> Option<(String, Option<jiff::Timestamp>)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| (c.type_.clone(), c.last_transition_time.as_ref().map(|t| t.0)))
}

/// The back-off before the next pod after `failures` failures: 10 s, doubling, at most 6 minutes.
pub fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let secs = 10u64.saturating_mul(1u64 << (failures - 1).min(10));
    Duration::from_secs(secs.min(360))
}

fn index_of(p: &CachedPod) -> Option<i32> {
    p.metadata.annotations.as_ref()?.get(INDEX)?.parse().ok()
}

/// Renders completed indexes as Kubernetes does (`0-2,4`).
pub fn ranges(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = indexes.iter().peekable();
    while let Some(&start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&&(end + 1)) {
            end += 1;
            it.next();
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

fn parse_ranges(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(v) = part.parse() {
                    out.insert(v);
                }
            }
        }
    }
    out
}

fn cond(ty: &str, reason: &str, message: &str, now: jiff::Timestamp) -> JobCondition {
    JobCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Plans one reconcile of `job` given the pods it owns.
pub fn plan(job: &Job, pods: &[Arc<CachedPod>], now: jiff::Timestamp) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let mut status = job.status.clone().unwrap_or_default();
    let mut p = Plan::default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let owned: Vec<&Arc<CachedPod>> = pods.iter().filter(|x| controlled_by(&x.metadata, &uid)).collect();

    // 1. counting: uids whose finalizer is gone move to the counters; finished pods are recorded as uncounted
    let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let (mut us, mut uf): (Vec<String>, Vec<String>) =
        (uncounted.succeeded.clone().unwrap_or_default(), uncounted.failed.clone().unwrap_or_default());
    let tracked = |u: &str| owned.iter().any(|x| x.metadata.uid.as_deref() == Some(u) && has_tracking(x));
    let mut succeeded = status.succeeded.unwrap_or(0);
    let mut failed = status.failed.unwrap_or(0);
    us.retain(|u| {
        let keep = tracked(u);
        if !keep {
            succeeded += 1;
        }
        keep
    });
    uf.retain(|u| {
        let keep = tracked(u);
        if !keep {
            failed += 1;
        }
        keep
    });
    let mut completed: BTreeSet<i32> = parse_ranges(status.completed_indexes.as_deref().unwrap_or_default());
    for x in &owned {
        let u = x.metadata.uid.as_deref().unwrap_or_default().to_string();
        if !has_tracking(x) {
            continue;
        }
        match phase(x) {
            "Succeeded" => {
                if !us.contains(&u) {
                    us.push(u);
                }
                if let Some(i) = index_of(x) {
                    completed.insert(i);
                }
                p.release.push(x.metadata.name.clone().unwrap_or_default());
            }
            "Failed" => {
                if !uf.contains(&u) {
                    uf.push(u);
                }
                p.release.push(x.metadata.name.clone().unwrap_or_default());
            }
            _ if x.metadata.deletion_timestamp.is_some() => {
                // a pod deleted before finishing counts as failed
                if !uf.contains(&u) {
                    uf.push(u);
                }
                p.release.push(x.metadata.name.clone().unwrap_or_default());
            }
            _ => {}
        }
    }
    let total_succeeded = succeeded + us.len() as i32;
    let restarts: i32 = if spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure") {
        owned
            .iter()
            .filter(|x| is_active(x))
            .flat_map(|x| x.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };
    let total_failed = failed + uf.len() as i32;
    uncounted.succeeded = Some(us);
    uncounted.failed = Some(uf);
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    status.uncounted_terminated_pods = Some(uncounted);
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    if indexed {
        status.completed_indexes = Some(ranges(&completed));
    }

    let active: Vec<&&Arc<CachedPod>> = owned.iter().filter(|x| is_active(x)).collect();
    status.active = Some(active.len() as i32);
    status.ready = Some(active.iter().filter(|x| is_ready(x)).count() as i32);

    if let Some((kind, at)) = finished(job) {
        // done: only counting and the TTL remain
        p.delete = active.iter().map(|x| x.metadata.name.clone().unwrap_or_default()).collect();
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let done_at = status.completion_time.as_ref().map(|t| t.0).or(at).unwrap_or(now);
            let left = i64::from(ttl) - now.duration_since(done_at).as_secs();
            if left <= 0 {
                p.delete_job = true;
            } else {
                p.requeue = Some(Duration::from_secs(left as u64));
            }
        }
        let _ = kind;
        p.status = status;
        return p;
    }
    if status.start_time.is_none() && spec.suspend != Some(true) {
        status.start_time = Some(Time(now));
    }
    // A reached target (SuccessCriteriaMet / FailureTarget) becomes the final condition once every finished pod is
    // counted and nothing runs any more.
    let all_counted = status
        .uncounted_terminated_pods
        .as_ref()
        .is_none_or(|u| u.succeeded.as_ref().is_none_or(Vec::is_empty) && u.failed.as_ref().is_none_or(Vec::is_empty));
    let target = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "SuccessCriteriaMet" || c.type_ == "FailureTarget") && c.status == "True")
        .cloned();
    if let Some(t) = target {
        p.delete = active.iter().map(|x| x.metadata.name.clone().unwrap_or_default()).collect();
        if all_counted && active.is_empty() && p.release.is_empty() {
            let ty = if t.type_ == "SuccessCriteriaMet" { "Complete" } else { "Failed" };
            if ty == "Complete" {
                status.completion_time = Some(Time(now));
            }
            status.conditions.get_or_insert_with(Vec::new).push(cond(
                ty,
                t.reason.as_deref().unwrap_or_default(),
                t.message.as_deref().unwrap_or_default(),
                now,
            ));
        } else {
            p.requeue = Some(Duration::from_millis(500));
        }
        p.status = status;
        return p;
    }
    let finish = |status: &mut JobStatus, p: &mut Plan, ty: &str, reason: &str, message: &str| {
        let conds = status.conditions.get_or_insert_with(Vec::new);
        conds.push(cond(if ty == "Failed" { "FailureTarget" } else { "SuccessCriteriaMet" }, reason, message, now));
        p.delete = active.iter().map(|x| x.metadata.name.clone().unwrap_or_default()).collect();
        p.events.push((
            if ty == "Failed" { EventType::Warning } else { EventType::Normal },
            reason.to_string(),
            message.to_string(),
        ));
        p.requeue = Some(Duration::from_millis(500));
    };
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    if total_failed + restarts > backoff_limit {
        finish(&mut status, &mut p, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit");
        p.status = status;
        return p;
    }
    if let (Some(deadline), Some(start)) = (spec.active_deadline_seconds, status.start_time.as_ref()) {
        let elapsed = now.duration_since(start.0).as_secs();
        if elapsed >= deadline {
            finish(&mut status, &mut p, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline");
            p.status = status;
            return p;
        }
        p.requeue = Some(Duration::from_secs((deadline - elapsed) as u64));
    }
    let complete = match completions {
        Some(c) if indexed => completed.len() as i32 >= c,
        Some(c) => total_succeeded >= c,
        None => total_succeeded > 0 && active.is_empty(),
    };
    if complete {
        finish(&mut status, &mut p, "Complete", "CompletionsReached", "Reached expected number of succeeded pods");
        status.ready = Some(0);
        p.status = status;
        return p;
    }
    if spec.suspend == Some(true) {
        p.delete = active.iter().map(|x| x.metadata.name.clone().unwrap_or_default()).collect();
        let conds = status.conditions.get_or_insert_with(Vec::new);
        if !conds.iter().any(|c| c.type_ == "Suspended" && c.status == "True") {
            conds.retain(|c| c.type_ != "Suspended");
            conds.push(cond("Suspended", "JobSuspended", "Job suspended", now));
        }
        p.status = status;
        return p;
    }
    if let Some(conds) = status.conditions.as_mut() {
        conds.retain(|c| c.type_ != "Suspended");
    }
    let want_active = match completions {
        Some(c) if indexed => parallelism.min(c - completed.len() as i32),
        Some(c) => parallelism.min(c - total_succeeded),
        None if total_succeeded > 0 => 0,
        None => parallelism,
    }
    .max(0);
    let n_active = active.len() as i32;
    if n_active < want_active {
        let wait = backoff(total_failed);
        let last_failure = owned
            .iter()
            .filter(|x| phase(x) == "Failed")
            .filter_map(|x| {
                x.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|cs| {
                    cs.iter()
                        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
                        .max()
                })
            })
            .max();
        let ready_at = last_failure.map(|t| t + jiff::SignedDuration::try_from(wait).unwrap_or_default());
        match ready_at {
            Some(t) if t > now && total_failed > 0 => {
                p.requeue = Some(Duration::from_millis((t.duration_since(now).as_millis() as i64).max(100) as u64))
            }
            _ => {
                if indexed {
                    let running: BTreeSet<i32> = active.iter().filter_map(|x| index_of(x)).collect();
                    let c = completions.unwrap_or(1);
                    p.create = (0..c)
                        .filter(|i| !completed.contains(i) && !running.contains(i))
                        .take((want_active - n_active) as usize)
                        .map(Some)
                        .collect();
                } else {
                    p.create = vec![None; (want_active - n_active) as usize];
                }
            }
        }
    } else if n_active > want_active {
        let mut extra: Vec<&&Arc<CachedPod>> = active.clone();
        extra.sort_by(|a, b| super::replicaset::deletion_order(a, b));
        p.delete = extra[..(n_active - want_active) as usize]
            .iter()
            .map(|x| x.metadata.name.clone().unwrap_or_default())
            .collect();
    }
    p.status = status;
    p
}

/// Reconciles one Job.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if !ctx.expectations.pods_observed(&uid, &ctx.pods, &ns) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let pods = ctx.pods.in_namespace(&ns);
    let p = plan(&job, &pods, ctx.now());
    let japi: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let papi: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let recorder = ctx.recorders.get(CONTROLLER);
    let oref = skiff_client::events::reference(job.as_ref());
    if p.delete_job {
        super::retry::unless_gone(japi.delete(&name, &DeleteParams::background()).await)?;
        return Ok(Action::await_change());
    }
    // status first: finished pods are recorded before their finalizers go
    if job.status.as_ref() != Some(&p.status) {
        super::retry::status_written(
            japi.patch_status(&name, &super::util::pp(), &Patch::Merge(&json!({"status": p.status}))).await,
        )?;
    }
    for pod in &p.release {
        let cur = pods.iter().find(|x| x.metadata.name.as_deref() == Some(pod.as_str()));
        let remaining: Vec<String> = cur
            .and_then(|x| x.metadata.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != TRACKING)
            .collect();
        let r =
            papi.patch(pod, &super::util::pp(), &Patch::Merge(&json!({"metadata": {"finalizers": remaining}}))).await;
        if let Err(e) = r
            && !matches!(&e, kube::Error::Api(s) if s.code == 404)
        {
            return Err(e.into());
        }
    }
    for (ty, reason, message) in &p.events {
        recorder.record(&oref, *ty, reason, message).await;
    }
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    if !p.create.is_empty() {
        let names: Vec<(String, Option<i32>)> = p
            .create
            .iter()
            .map(|i| {
                (
                    match i {
                        Some(i) => format!("{name}-{i}-{}", random_suffix()),
                        None => format!("{name}-{}", random_suffix()),
                    },
                    *i,
                )
            })
            .collect();
        ctx.expectations.expect(&uid, names.iter().map(|(n, _)| n.clone()), Vec::new());
        for (pod_name, index) in names {
            let mut meta = template.metadata.clone().unwrap_or_default();
            meta.name = Some(pod_name.clone());
            meta.namespace = Some(ns.clone());
            meta.owner_references = Some(vec![owner_ref(job.as_ref())]);
            meta.finalizers = Some(vec![TRACKING.into()]);
            let mut spec = template.spec.clone().unwrap_or_default();
            if let Some(i) = index {
                meta.annotations.get_or_insert_with(Default::default).insert(INDEX.into(), i.to_string());
                meta.labels.get_or_insert_with(Default::default).insert(INDEX.into(), i.to_string());
                for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                    c.env.get_or_insert_with(Vec::new).push(
                        serde_json::from_value(json!({"name": "JOB_COMPLETION_INDEX", "value": i.to_string()}))
                            .expect("a valid EnvVar"),
                    );
                }
            }
            let pod = Pod { metadata: meta, spec: Some(spec), status: None };
            match papi.create(&PostParams::default(), &pod).await {
                Ok(_) => {
                    recorder
                        .record(&oref, EventType::Normal, "SuccessfulCreate", &format!("Created pod: {pod_name}"))
                        .await
                }
                Err(e) => {
                    ctx.expectations.creation_failed(&uid, &pod_name);
                    recorder.record(&oref, EventType::Warning, "FailedCreate", &format!("Error creating: {e}")).await;
                }
            }
        }
    }
    if !p.delete.is_empty() {
        ctx.expectations.expect(&uid, Vec::new(), p.delete.clone());
        for pod in &p.delete {
            match papi.delete(pod, &DeleteParams::default()).await {
                Ok(_) => {
                    recorder.record(&oref, EventType::Normal, "SuccessfulDelete", &format!("Deleted pod: {pod}")).await
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(p.requeue.map(Action::requeue).unwrap_or_else(|| Action::requeue(Duration::from_secs(300))))
}

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "job-controller";

/// Runs the controller.
pub async fn run(ctx: Arc<Ctx>, jobs: Subscription<Job>, pods: Subscription<CachedPod>) {
    Controller::for_shared_stream(jobs, ctx.jobs.clone())
        .reconcile_on(super::informers::owners_of(pods))
        .run(super::retry::reconciler(CONTROLLER, reconcile), super::retry::policy(CONTROLLER), ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: serde_json::Value, status: serde_json::Value) -> Job {
        let mut s =
            json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}});
        if let Some(m) = spec.as_object() {
            for (k, v) in m {
                s[k] = v.clone();
            }
        }
        serde_json::from_value(
            json!({"metadata": {"name": "j", "namespace": "d", "uid": "j-uid"}, "spec": s, "status": status}),
        )
        .expect("job")
    }

    fn pod(name: &str, phase: &str, tracked: bool, finished_at: Option<&str>) -> Arc<CachedPod> {
        let mut v = json!({"metadata": {"name": name, "namespace": "d", "uid": format!("u-{name}"),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "j-uid", "controller": true}]},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": phase}});
        if tracked {
            v["metadata"]["finalizers"] = json!([TRACKING]);
        }
        if let Some(t) = finished_at {
            v["status"]["containerStatuses"] = json!([{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 1, "finishedAt": t}}}]);
        }
        Arc::new(serde_json::from_value(v).expect("pod"))
    }

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().expect("time")
    }

    #[test]
    fn a_new_job_starts_parallelism_pods() {
        let p = plan(&job(json!({"completions": 5, "parallelism": 2}), json!({})), &[], t("2026-01-01T00:00:00Z"));
        assert_eq!(p.create.len(), 2);
        assert!(p.status.start_time.is_some());
    }

    #[test]
    fn finished_pods_are_counted_once_through_the_uncounted_list() {
        let j = job(json!({"completions": 2}), json!({}));
        let pods = vec![pod("a", "Succeeded", true, None)];
        let p = plan(&j, &pods, t("2026-01-01T00:00:00Z"));
        assert_eq!(
            p.status.uncounted_terminated_pods.as_ref().and_then(|u| u.succeeded.clone()),
            Some(vec!["u-a".to_string()])
        );
        assert_eq!(p.release, vec!["a"]);
        assert_eq!(p.create.len(), 1, "one more completion is needed");
        // next round: the finalizer is gone, the pod is counted
        let j2 = job(json!({"completions": 2}), serde_json::to_value(&p.status).expect("status"));
        let p2 = plan(&j2, &[pod("a", "Succeeded", false, None)], t("2026-01-01T00:00:01Z"));
        assert_eq!(p2.status.succeeded, Some(1));
        assert_eq!(p2.status.uncounted_terminated_pods.as_ref().and_then(|u| u.succeeded.clone()), Some(vec![]));
    }

    #[test]
    fn failures_back_off_and_stop_at_the_backoff_limit() {
        let j = job(json!({"backoffLimit": 2}), json!({"failed": 1, "startTime": "2026-01-01T00:00:00Z"}));
        let pods = vec![pod("a", "Failed", false, Some("2026-01-01T00:00:05Z"))];
        let early = plan(&j, &pods, t("2026-01-01T00:00:10Z"));
        assert!(early.create.is_empty(), "10 s back-off after the first failure");
        assert!(early.requeue.is_some());
        let later = plan(&j, &pods, t("2026-01-01T00:00:16Z"));
        assert_eq!(later.create.len(), 1);
        let j3 = job(json!({"backoffLimit": 2}), json!({"failed": 3, "startTime": "2026-01-01T00:00:00Z"}));
        let target = plan(&j3, &[], t("2026-01-01T00:01:00Z"));
        let j4 = job(json!({"backoffLimit": 2}), serde_json::to_value(&target.status).expect("status"));
        let done = plan(&j4, &[], t("2026-01-01T00:01:01Z"));
        assert!(
            done.status
                .conditions
                .as_ref()
                .expect("conditions")
                .iter()
                .any(|c| c.type_ == "Failed" && c.reason.as_deref() == Some("BackoffLimitExceeded"))
        );
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(20), Duration::from_secs(360));
    }

    #[test]
    fn a_job_completes_when_enough_pods_succeeded_and_indexes_render_as_ranges() {
        let j = job(json!({"completions": 1}), json!({"succeeded": 1}));
        let p = plan(&j, &[], t("2026-01-01T00:00:00Z"));
        assert!(p.status.conditions.as_ref().expect("conditions").iter().any(|c| c.type_ == "SuccessCriteriaMet"));
        let j2 = job(json!({"completions": 1}), serde_json::to_value(&p.status).expect("status"));
        let p2 = plan(&j2, &[], t("2026-01-01T00:00:01Z"));
        assert!(
            p2.status.conditions.as_ref().expect("conditions").iter().any(|c| c.type_ == "Complete"),
            "Complete once everything is counted"
        );
        assert!(p2.status.completion_time.is_some());
        assert_eq!(ranges(&[0, 1, 2, 4, 6, 7].into_iter().collect()), "0-2,4,6-7");
        assert_eq!(parse_ranges("0-2,4"), [0, 1, 2, 4].into_iter().collect());
    }

    #[test]
    fn the_deadline_fails_the_job() {
        let j = job(json!({"activeDeadlineSeconds": 30}), json!({"startTime": "2026-01-01T00:00:00Z"}));
        let p = plan(&j, &[pod("a", "Running", true, None)], t("2026-01-01T00:00:31Z"));
        assert!(
            p.status
                .conditions
                .as_ref()
                .expect("conditions")
                .iter()
                .any(|c| c.type_ == "FailureTarget" && c.reason.as_deref() == Some("DeadlineExceeded"))
        );
        assert_eq!(p.delete, vec!["a"]);
    }
}

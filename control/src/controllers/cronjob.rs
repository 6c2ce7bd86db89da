//! The CronJob controller: creates a Job for each scheduled time (standard cron syntax and `@hourly`-style macros,
//! in `timeZone`), honours `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds` and `suspend`,
//! keeps `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` finished Jobs, and reports active Jobs and the last
//! schedule and success times.

use std::sync::Arc;
use std::time::Duration;

use super::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PostParams};
use kube::runtime::controller::{Action, Controller};
use serde_json::json;
use skiff_client::events::EventType;

use super::ctx::{Ctx, ReconcileError};
use super::util::{controlled_by, owner_ref};

/// The annotation recording a Job's scheduled time.
pub const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// The most recent scheduled time in `(after, now]`, the number of times missed in that interval (capped), and the
/// next scheduled time after `now`.
pub fn schedule_times(
    schedule: &str,
    tz: Option<&str>,
    after: jiff::Timestamp,
    now: jiff::Timestamp,
) -> Result<(Option<jiff::Timestamp>, usize, jiff::Timestamp), String> {
    let cron = skiff_api::validation::parse_schedule(schedule)?;
    let zone = match tz {
        Some(name) => jiff::tz::TimeZone::get(name).map_err(|e| e.to_string())?,
        None => jiff::tz::TimeZone::UTC,
    };
    let mut cursor = after.to_zoned(zone.clone());
    let now_z = now.to_zoned(zone);
    let mut last = None;
    let mut missed = 0usize;
    loop {
        let next = cron.find_next_occurrence(&cursor, false).map_err(|e| e.to_string())?;
        if next > now_z {
            return Ok((last, missed, next.timestamp()));
        }
        last = Some(next.timestamp());
        missed += 1;
        cursor = next;
        if missed > 100 {
            // too many missed schedules: jump to the most recent one, as Kubernetes does
            let prev = cron.find_previous_occurrence(&now_z, true).map_err(|e| e.to_string())?;
            let next = cron.find_next_occurrence(&now_z, false).map_err(|e| e.to_string())?;
            return Ok((Some(prev.timestamp()), missed, next.timestamp()));
        }
    }
}

fn job_finished(j: &Job) -> Option<bool> {
    let conds = j.status.as_ref()?.conditions.as_ref()?;
    if conds.iter().any(|c| c.type_ == "Complete" && c.status == "True") {
        Some(true)
    } else if conds.iter().any(|c| c.type_ == "Failed" && c.status == "True") {
        Some(false)
    } else {
        None
    }
}

fn reference(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job a CronJob creates for `scheduled`.
pub fn job_for(cj: &CronJob, scheduled: jiff::Timestamp) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let tmpl = spec.job_template;
    let mut meta = tmpl.metadata.clone().unwrap_or_default();
    let name = format!("{}-{}", cj.metadata.name.clone().unwrap_or_default(), scheduled.as_second() / 60);
    meta.name = Some(name);
    meta.namespace = cj.metadata.namespace.clone();
    meta.owner_references = Some(vec![owner_ref(cj)]);
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(SCHEDULED.into(), scheduled.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    Job { metadata: ObjectMeta { ..meta }, spec: Some(tmpl.spec.unwrap_or_default()), status: None }
}

/// Reconciles one CronJob.
pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = cj.metadata.namespace.clone().unwrap_or_default();
    let name = cj.metadata.name.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let now = ctx.schedule_clock.now();
    let japi: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let capi: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let recorder = ctx.recorders.get(CONTROLLER);
    let oref = skiff_client::events::reference(cj.as_ref());
    let mut jobs: Vec<Arc<Job>> = super::informers::in_namespace(&ctx.jobs, &ns)
        .into_iter()
        .filter(|j| controlled_by(&j.metadata, &uid))
        .collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let mut active: Vec<Arc<Job>> =
        jobs.iter().filter(|j| job_finished(j).is_none() && j.metadata.deletion_timestamp.is_none()).cloned().collect();
    let mut status = cj.status.clone().unwrap_or_default();
    // history limits
    let mut successful: Vec<&Arc<Job>> = jobs.iter().filter(|j| job_finished(j) == Some(true)).collect();
    let mut failed: Vec<&Arc<Job>> = jobs.iter().filter(|j| job_finished(j) == Some(false)).collect();
    if let Some(last) = successful.last().and_then(|j| j.status.as_ref()?.completion_time.clone()) {
        status.last_successful_time = Some(last);
    }
    for (list, limit) in [
        (&mut successful, spec.successful_jobs_history_limit.unwrap_or(3)),
        (&mut failed, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let limit = limit.max(0) as usize;
        if list.len() > limit {
            for j in &list[..list.len() - limit] {
                let jn = j.metadata.name.clone().unwrap_or_default();
                match japi.delete(&jn, &DeleteParams::background()).await {
                    Ok(_) => {
                        recorder
                            .record(&oref, EventType::Normal, "SuccessfulDelete", &format!("Deleted job {jn}"))
                            .await
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let after = status
        .last_schedule_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let (due, missed, next) = match schedule_times(&spec.schedule, spec.time_zone.as_deref(), after, now) {
        Ok(v) => v,
        Err(e) => {
            recorder
                .record(
                    &oref,
                    EventType::Warning,
                    "UnparseableSchedule",
                    &format!("unparseable schedule {:?}: {e}", spec.schedule),
                )
                .await;
            return Ok(Action::await_change());
        }
    };
    if missed > 100 {
        recorder
            .record(
                &oref,
                EventType::Warning,
                "TooManyMissedTimes",
                "too many missed start times, the most recent one is used",
            )
            .await;
    }
    if let Some(scheduled) = due
        && spec.suspend != Some(true)
    {
        let late = now.duration_since(scheduled).as_secs();
        let too_late = spec.starting_deadline_seconds.is_some_and(|d| late > d);
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        if too_late {
            recorder
                .record(
                    &oref,
                    EventType::Warning,
                    "MissSchedule",
                    &format!("Missed scheduled time to start a job: {}", scheduled.strftime("%Y-%m-%dT%H:%M:%SZ")),
                )
                .await;
            status.last_schedule_time = Some(Time(scheduled));
        } else if policy == "Forbid" && !active.is_empty() {
            recorder
                .record(
                    &oref,
                    EventType::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                )
                .await;
        } else {
            if policy == "Replace" {
                for j in &active {
                    let jn = j.metadata.name.clone().unwrap_or_default();
                    match japi.delete(&jn, &DeleteParams::background()).await {
                        Ok(_) => {
                            recorder
                                .record(&oref, EventType::Normal, "SuccessfulDelete", &format!("Deleted job {jn}"))
                                .await
                        }
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                active.clear();
            }
            let job = job_for(&cj, scheduled);
            let jn = job.metadata.name.clone().unwrap_or_default();
            match japi.create(&PostParams::default(), &job).await {
                Ok(created) => {
                    recorder.record(&oref, EventType::Normal, "SuccessfulCreate", &format!("Created job {jn}")).await;
                    active.push(Arc::new(created));
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    recorder
                        .record(&oref, EventType::Warning, "FailedCreate", &format!("Error creating job: {e}"))
                        .await;
                    return Err(e.into());
                }
            }
            status.last_schedule_time = Some(Time(scheduled));
        }
    }
    let refs: Vec<ObjectReference> = active.iter().map(|j| reference(j)).collect();
    status.active = (!refs.is_empty()).then_some(refs);
    if cj.status.as_ref() != Some(&status) {
        super::retry::status_written(
            capi.patch_status(&name, &super::util::pp(), &Patch::Merge(&json!({"status": status}))).await,
        )?;
    }
    let wait = (next.duration_since(now).as_millis() as i64).max(100) as u64;
    Ok(Action::requeue(Duration::from_millis(wait.min(ctx.config.resync.as_millis() as u64).max(100))))
}

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "cronjob-controller";

/// Runs the controller.
pub async fn run(ctx: Arc<Ctx>, cron_jobs: Subscription<CronJob>, jobs: Subscription<Job>) {
    Controller::for_shared_stream(cron_jobs, ctx.cron_jobs.clone())
        .owns_shared_stream(jobs)
        .run(super::retry::reconciler(CONTROLLER, reconcile), super::retry::policy(CONTROLLER), ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().expect("time")
    }

    #[test]
    fn every_minute_fires_once_per_minute() {
        let (due, missed, next) =
            schedule_times("* * * * *", None, t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:30Z")).expect("valid");
        assert_eq!((due, missed), (None, 0));
        assert_eq!(next, t("2026-01-01T00:01:00Z"));
        let (due, missed, _) =
            schedule_times("* * * * *", None, t("2026-01-01T00:00:00Z"), t("2026-01-01T00:03:10Z")).expect("valid");
        assert_eq!(due, Some(t("2026-01-01T00:03:00Z")));
        assert_eq!(missed, 3);
    }

    #[test]
    fn macros_and_time_zones() {
        let (_, _, next) =
            schedule_times("@hourly", None, t("2026-01-01T00:10:00Z"), t("2026-01-01T00:10:00Z")).expect("valid");
        assert_eq!(next, t("2026-01-01T01:00:00Z"));
        // 09:00 in New York (UTC-5 in January) is 14:00 UTC
        let (_, _, next) =
            schedule_times("0 9 * * *", Some("America/New_York"), t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:00Z"))
                .expect("valid");
        assert_eq!(next, t("2026-01-01T14:00:00Z"));
        assert!(schedule_times("not a schedule", None, t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:00Z")).is_err());
    }

    #[test]
    fn jobs_are_named_after_their_scheduled_minute() {
        let cj: CronJob = serde_json::from_value(json!({"metadata": {"name": "hello", "namespace": "d", "uid": "c"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}}}}}))
        .expect("cronjob");
        let j = job_for(&cj, t("2026-01-01T00:01:00Z"));
        assert_eq!(j.metadata.name.as_deref(), Some("hello-29453761"));
        assert_eq!(
            j.metadata.annotations.as_ref().and_then(|a| a.get(SCHEDULED)).map(String::as_str),
            Some("2026-01-01T00:01:00Z")
        );
    }
}

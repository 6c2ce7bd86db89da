//! Validation of workload controllers: Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, HPA.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ErrorList;
use super::common::{NameRule, validate_object_meta};
use super::pod::{check_enum, validate_pod_template};
use crate::selector::Selector;

/// Checks that `selector` is non-empty and selects the template's labels.
fn selector_matches_template(
    selector: Option<&LabelSelector>,
    template: &PodTemplateSpec,
    path: &str,
    errs: &mut ErrorList,
) {
    let Some(sel) = selector else {
        errs.required(format!("{path}.selector"), "");
        return;
    };
    match Selector::from_label_selector(sel) {
        Err(e) => errs.invalid(format!("{path}.selector"), "", e.message),
        Ok(s) if s.is_empty() => {
            errs.invalid(format!("{path}.selector"), "{}", "empty selector is invalid for deployment")
        }
        Ok(s) => {
            let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            if !s.matches(&labels) {
                let rendered: Vec<String> = labels.iter().map(|(k, v)| format!("\"{k}\":\"{v}\"")).collect();
                errs.invalid(
                    format!("{path}.template.metadata.labels"),
                    format!("map[string]string{{{}}}", rendered.join(", ")),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
}

fn restart_always(template: &PodTemplateSpec, path: &str, errs: &mut ErrorList) {
    if let Some(p) = template.spec.as_ref().and_then(|s| s.restart_policy.as_deref())
        && p != "Always"
    {
        errs.not_supported(format!("{path}.template.spec.restartPolicy"), p, &["Always"]);
    }
}

fn int_or_percent(v: &IntOrString, path: &str, errs: &mut ErrorList) -> bool {
    match v {
        IntOrString::Int(i) => {
            errs.non_negative(path, Some(i64::from(*i)));
            *i == 0
        }
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
            Some(n) if (0..=100).contains(&n) => n == 0,
            Some(n) if n > 100 => {
                errs.invalid(path, s, "must not be greater than 100%");
                false
            }
            _ => {
                errs.invalid(path, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')");
                false
            }
        },
    }
}

/// Validates a Deployment.
pub fn validate_deployment(d: &Deployment, errs: &mut ErrorList) {
    validate_object_meta(&d.metadata, true, NameRule::Dns1123Subdomain, errs);
    let Some(spec) = &d.spec else { return errs.required("spec", "") };
    errs.non_negative("spec.replicas", spec.replicas.map(i64::from));
    errs.non_negative("spec.revisionHistoryLimit", spec.revision_history_limit.map(i64::from));
    errs.non_negative("spec.minReadySeconds", spec.min_ready_seconds.map(i64::from));
    selector_matches_template(Some(&spec.selector), &spec.template, "spec", errs);
    validate_pod_template(&spec.template, "spec.template", errs);
    restart_always(&spec.template, "spec", errs);
    if let Some(strategy) = &spec.strategy {
        let t = strategy.type_.as_deref().unwrap_or("RollingUpdate");
        check_enum(t, &["Recreate", "RollingUpdate"], "spec.strategy.type", errs);
        if t == "Recreate" && strategy.rolling_update.is_some() {
            errs.forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'");
        }
        if let Some(ru) = &strategy.rolling_update {
            let surge0 =
                ru.max_surge.as_ref().is_some_and(|v| int_or_percent(v, "spec.strategy.rollingUpdate.maxSurge", errs));
            let unavail0 = ru
                .max_unavailable
                .as_ref()
                .is_some_and(|v| int_or_percent(v, "spec.strategy.rollingUpdate.maxUnavailable", errs));
            if surge0 && unavail0 {
                errs.invalid("spec.strategy.rollingUpdate.maxUnavailable", 0, "may not be 0 when `maxSurge` is 0");
            }
        }
    }
    if let Some(p) = spec.progress_deadline_seconds
        && p <= spec.min_ready_seconds.unwrap_or(0)
    {
        errs.invalid("spec.progressDeadlineSeconds", p, "must be greater than minReadySeconds");
    }
}

/// Validates a ReplicaSet.
pub fn validate_replica_set(rs: &ReplicaSet, errs: &mut ErrorList) {
    validate_object_meta(&rs.metadata, true, NameRule::Dns1123Subdomain, errs);
    let Some(spec) = &rs.spec else { return errs.required("spec", "") };
    errs.non_negative("spec.replicas", spec.replicas.map(i64::from));
    match &spec.template {
        Some(t) => {
            selector_matches_template(Some(&spec.selector), t, "spec", errs);
            validate_pod_template(t, "spec.template", errs);
            restart_always(t, "spec", errs);
        }
        None => errs.required("spec.template", ""),
    }
}

/// Validates a StatefulSet.
pub fn validate_stateful_set(s: &StatefulSet, errs: &mut ErrorList) {
    validate_object_meta(&s.metadata, true, NameRule::Dns1123Subdomain, errs);
    let Some(spec) = &s.spec else { return errs.required("spec", "") };
    errs.non_negative("spec.replicas", spec.replicas.map(i64::from));
    selector_matches_template(Some(&spec.selector), &spec.template, "spec", errs);
    let claims: Vec<String> =
        spec.volume_claim_templates.iter().flatten().filter_map(|c| c.metadata.name.clone()).collect();
    super::pod::validate_pod_template_with_claims(&spec.template, "spec.template", &claims, errs);
    restart_always(&spec.template, "spec", errs);
    if let Some(p) = &spec.pod_management_policy {
        check_enum(p, &["OrderedReady", "Parallel"], "spec.podManagementPolicy", errs);
    }
    if let Some(t) = spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()) {
        check_enum(t, &["RollingUpdate", "OnDelete"], "spec.updateStrategy.type", errs);
    }
    for (i, c) in spec.volume_claim_templates.iter().flatten().enumerate() {
        if c.metadata.name.as_deref().unwrap_or_default().is_empty() {
            errs.required(format!("spec.volumeClaimTemplates[{i}].metadata.name"), "");
        }
    }
}

/// Validates a DaemonSet.
pub fn validate_daemon_set(d: &DaemonSet, errs: &mut ErrorList) {
    validate_object_meta(&d.metadata, true, NameRule::Dns1123Subdomain, errs);
    let Some(spec) = &d.spec else { return errs.required("spec", "") };
    selector_matches_template(Some(&spec.selector), &spec.template, "spec", errs);
    validate_pod_template(&spec.template, "spec.template", errs);
    restart_always(&spec.template, "spec", errs);
    if let Some(t) = spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()) {
        check_enum(t, &["RollingUpdate", "OnDelete"], "spec.updateStrategy.type", errs);
    }
}

/// Validates a Job spec at `path`.
pub fn validate_job_spec(spec: &JobSpec, path: &str, errs: &mut ErrorList) {
    errs.non_negative(format!("{path}.parallelism"), spec.parallelism.map(i64::from));
    errs.non_negative(format!("{path}.completions"), spec.completions.map(i64::from));
    errs.non_negative(format!("{path}.backoffLimit"), spec.backoff_limit.map(i64::from));
    errs.non_negative(format!("{path}.ttlSecondsAfterFinished"), spec.ttl_seconds_after_finished.map(i64::from));
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        errs.invalid(format!("{path}.activeDeadlineSeconds"), d, "must be greater than 0");
    }
    if let Some(m) = &spec.completion_mode {
        check_enum(m, &["NonIndexed", "Indexed"], &format!("{path}.completionMode"), errs);
    }
    validate_pod_template(&spec.template, &format!("{path}.template"), errs);
    match spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("OnFailure" | "Never") => {}
        Some(p) => errs.not_supported(format!("{path}.template.spec.restartPolicy"), p, &["OnFailure", "Never"]),
        None => errs.required(format!("{path}.template.spec.restartPolicy"), "valid values: \"OnFailure\", \"Never\""),
    }
    if spec.manual_selector == Some(true) {
        selector_matches_template(spec.selector.as_ref(), &spec.template, path, errs);
    }
}

/// Validates a Job.
pub fn validate_job(j: &Job, errs: &mut ErrorList) {
    validate_object_meta(&j.metadata, true, NameRule::Dns1123Subdomain, errs);
    match &j.spec {
        Some(spec) => validate_job_spec(spec, "spec", errs),
        None => errs.required("spec", ""),
    }
}

/// Validates a cron schedule the way the CronJob controller will read it (standard 5 fields or `@hourly`-style).
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, String> {
    let s = schedule.trim();
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    let expanded = match s {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other => other,
    };
    if expanded.split_whitespace().count() != 5 {
        return Err(format!("expected exactly 5 fields, found {}: {s}", expanded.split_whitespace().count()));
    }
    croner::parser::CronParser::new().parse(expanded).map_err(|e| e.to_string())
}

/// Validates a CronJob.
pub fn validate_cron_job(c: &CronJob, errs: &mut ErrorList) {
    validate_object_meta(&c.metadata, true, NameRule::Dns1123Subdomain, errs);
    if c.metadata.name.as_deref().is_some_and(|n| n.len() > 52) {
        errs.invalid(
            "metadata.name",
            c.metadata.name.as_deref().unwrap_or_default(),
            "must be no more than 52 characters",
        );
    }
    let Some(spec) = &c.spec else { return errs.required("spec", "") };
    if spec.schedule.is_empty() {
        errs.required("spec.schedule", "");
    } else if let Err(e) = parse_schedule(&spec.schedule) {
        errs.invalid("spec.schedule", &spec.schedule, e);
    }
    if let Some(tz) = &spec.time_zone
        && jiff::tz::TimeZone::get(tz).is_err()
    {
        errs.invalid("spec.timeZone", tz, "unknown time zone");
    }
    if let Some(p) = &spec.concurrency_policy {
        check_enum(p, &["Allow", "Forbid", "Replace"], "spec.concurrencyPolicy", errs);
    }
    errs.non_negative("spec.startingDeadlineSeconds", spec.starting_deadline_seconds);
    errs.non_negative("spec.successfulJobsHistoryLimit", spec.successful_jobs_history_limit.map(i64::from));
    errs.non_negative("spec.failedJobsHistoryLimit", spec.failed_jobs_history_limit.map(i64::from));
    match &spec.job_template.spec {
        Some(js) => validate_job_spec(js, "spec.jobTemplate.spec", errs),
        None => errs.required("spec.jobTemplate.spec", ""),
    }
}

/// Validates a HorizontalPodAutoscaler.
pub fn validate_hpa(h: &HorizontalPodAutoscaler, errs: &mut ErrorList) {
    validate_object_meta(&h.metadata, true, NameRule::Dns1123Subdomain, errs);
    let Some(spec) = &h.spec else { return errs.required("spec", "") };
    if spec.scale_target_ref.kind.is_empty() {
        errs.required("spec.scaleTargetRef.kind", "");
    }
    if spec.scale_target_ref.name.is_empty() {
        errs.required("spec.scaleTargetRef.name", "");
    }
    let min = spec.min_replicas.unwrap_or(1);
    if min < 1 {
        errs.invalid("spec.minReplicas", min, "must be greater than or equal to 1");
    }
    if spec.max_replicas < min {
        errs.invalid("spec.maxReplicas", spec.max_replicas, "must be greater than or equal to `minReplicas`");
    }
    for (i, m) in spec.metrics.iter().flatten().enumerate() {
        let p = format!("spec.metrics[{i}]");
        check_enum(
            &m.type_,
            &["Resource", "ContainerResource", "Pods", "Object", "External"],
            &format!("{p}.type"),
            errs,
        );
        if m.type_ == "Resource" {
            match &m.resource {
                None => errs.required(format!("{p}.resource"), "must populate information for the given metric source"),
                Some(r) => {
                    check_enum(
                        &r.target.type_,
                        &["Utilization", "Value", "AverageValue"],
                        &format!("{p}.resource.target.type"),
                        errs,
                    );
                    if let Some(u) = r.target.average_utilization.filter(|u| *u <= 0) {
                        errs.invalid(format!("{p}.resource.target.averageUtilization"), u, "must be greater than 0");
                    }
                }
            }
        }
    }
}

//! Workload controllers.

use serde_json::{Value, json};

use super::{Cells, containers_and_images, i, s, selector_string};
use crate::apiserver::table::{AGE, Column, NAME, age, col, human_duration, int, name, since, wide};

/// `kubectl get deployments`.
pub fn deployments() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        col("Ready"),
        int("Up-to-date"),
        int("Available"),
        AGE,
        wide("Containers"),
        wide("Images"),
        wide("Selector"),
    ];
    (
        cols,
        Box::new(|d| {
            let (c, im) = containers_and_images(d.pointer("/spec/template/spec"));
            vec![
                name(d),
                json!(format!("{}/{}", i(d, "/status/readyReplicas"), i(d, "/spec/replicas"))),
                json!(i(d, "/status/updatedReplicas")),
                json!(i(d, "/status/availableReplicas")),
                age(d),
                json!(c),
                json!(im),
                json!(selector_string(d.pointer("/spec/selector"))),
            ]
        }),
    )
}

/// `kubectl get replicasets`.
pub fn replica_sets() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        int("Desired"),
        int("Current"),
        int("Ready"),
        AGE,
        wide("Containers"),
        wide("Images"),
        wide("Selector"),
    ];
    (
        cols,
        Box::new(|r| {
            let (c, im) = containers_and_images(r.pointer("/spec/template/spec"));
            vec![
                name(r),
                json!(i(r, "/spec/replicas")),
                json!(i(r, "/status/replicas")),
                json!(i(r, "/status/readyReplicas")),
                age(r),
                json!(c),
                json!(im),
                json!(selector_string(r.pointer("/spec/selector"))),
            ]
        }),
    )
}

/// `kubectl get statefulsets`.
pub fn stateful_sets() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, col("Ready"), AGE, wide("Containers"), wide("Images")];
    (
        cols,
        Box::new(|r| {
            let (c, im) = containers_and_images(r.pointer("/spec/template/spec"));
            vec![
                name(r),
                json!(format!("{}/{}", i(r, "/status/readyReplicas"), i(r, "/spec/replicas"))),
                age(r),
                json!(c),
                json!(im),
            ]
        }),
    )
}

/// `kubectl get daemonsets`.
pub fn daemon_sets() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        int("Desired"),
        int("Current"),
        int("Ready"),
        int("Up-to-date"),
        int("Available"),
        col("Node Selector"),
        AGE,
        wide("Containers"),
        wide("Images"),
        wide("Selector"),
    ];
    (
        cols,
        Box::new(|d| {
            let (c, im) = containers_and_images(d.pointer("/spec/template/spec"));
            let ns: Vec<String> = d
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
                .unwrap_or_default();
            vec![
                name(d),
                json!(i(d, "/status/desiredNumberScheduled")),
                json!(i(d, "/status/currentNumberScheduled")),
                json!(i(d, "/status/numberReady")),
                json!(i(d, "/status/updatedNumberScheduled")),
                json!(i(d, "/status/numberAvailable")),
                json!(super::join_or_none(&ns)),
                age(d),
                json!(c),
                json!(im),
                json!(selector_string(d.pointer("/spec/selector"))),
            ]
        }),
    )
}

fn job_status(j: &Value) -> &'static str {
    let conds = j.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let has =
        |t: &str| conds.iter().any(|c| c.get("type") == Some(&json!(t)) && c.get("status") == Some(&json!("True")));
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if has("FailureTarget") || has("SuccessCriteriaMet") {
        "Running"
    } else if j.pointer("/spec/suspend") == Some(&json!(true)) {
        "Suspended"
    } else {
        "Running"
    }
}

/// `kubectl get jobs`.
pub fn jobs() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        col("Status"),
        col("Completions"),
        col("Duration"),
        AGE,
        wide("Containers"),
        wide("Images"),
        wide("Selector"),
    ];
    (
        cols,
        Box::new(|j| {
            let (c, im) = containers_and_images(j.pointer("/spec/template/spec"));
            let completions = match j.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(n) => format!("{}/{n}", i(j, "/status/succeeded")),
                None => {
                    let p = j.pointer("/spec/parallelism").and_then(Value::as_i64).unwrap_or(1);
                    if p > 1 {
                        format!("{}/1 of {p}", i(j, "/status/succeeded"))
                    } else {
                        format!("{}/1", i(j, "/status/succeeded"))
                    }
                }
            };
            let duration = match (since(j.pointer("/status/startTime")), since(j.pointer("/status/completionTime"))) {
                (Some(start), Some(done)) => human_duration(start - done),
                (Some(start), None) => human_duration(start),
                _ => String::new(),
            };
            vec![
                name(j),
                json!(job_status(j)),
                json!(completions),
                json!(duration),
                age(j),
                json!(c),
                json!(im),
                json!(selector_string(j.pointer("/spec/selector"))),
            ]
        }),
    )
}

/// `kubectl get cronjobs`.
pub fn cron_jobs() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        col("Schedule"),
        col("Timezone"),
        col("Suspend"),
        int("Active"),
        col("Last Schedule"),
        AGE,
        wide("Containers"),
        wide("Images"),
        wide("Selector"),
    ];
    (
        cols,
        Box::new(|c| {
            let (cn, im) = containers_and_images(c.pointer("/spec/jobTemplate/spec/template/spec"));
            let last =
                since(c.pointer("/status/lastScheduleTime")).map(human_duration).unwrap_or_else(|| "<none>".into());
            let tz = s(c, "/spec/timeZone");
            vec![
                name(c),
                json!(s(c, "/spec/schedule")),
                json!(if tz.is_empty() { "<none>" } else { tz }),
                json!(if c.pointer("/spec/suspend") == Some(&json!(true)) { "True" } else { "False" }),
                json!(c.pointer("/status/active").and_then(Value::as_array).map(Vec::len).unwrap_or(0)),
                json!(last),
                age(c),
                json!(cn),
                json!(im),
                json!(selector_string(c.pointer("/spec/jobTemplate/spec/selector"))),
            ]
        }),
    )
}

/// `kubectl get hpa`.
pub fn hpas() -> (Vec<Column>, Cells) {
    let cols = vec![NAME, col("Reference"), col("Targets"), col("MinPods"), int("MaxPods"), int("Replicas"), AGE];
    (
        cols,
        Box::new(|h| {
            let reference = format!("{}/{}", s(h, "/spec/scaleTargetRef/kind"), s(h, "/spec/scaleTargetRef/name"));
            let metrics = h.pointer("/spec/metrics").and_then(Value::as_array).cloned().unwrap_or_default();
            let current = h.pointer("/status/currentMetrics").and_then(Value::as_array).cloned().unwrap_or_default();
            let targets: Vec<String> = metrics
                .iter()
                .map(|m| {
                    let res = m.pointer("/resource/name").and_then(Value::as_str).unwrap_or("metric");
                    let cur = current
                        .iter()
                        .find(|c| c.pointer("/resource/name") == m.pointer("/resource/name"))
                        .and_then(|c| c.pointer("/resource/current/averageUtilization"))
                        .and_then(Value::as_i64)
                        .map(|v| format!("{v}%"))
                        .unwrap_or_else(|| "<unknown>".into());
                    match m.pointer("/resource/target/averageUtilization").and_then(Value::as_i64) {
                        Some(t) => format!("{res}: {cur}/{t}%"),
                        None => format!("{res}: {cur}"),
                    }
                })
                .collect();
            vec![
                name(h),
                json!(reference),
                json!(if targets.is_empty() { "<none>".into() } else { targets.join(", ") }),
                json!(h.pointer("/spec/minReplicas").and_then(Value::as_i64).unwrap_or(1).to_string()),
                json!(i(h, "/spec/maxReplicas")),
                json!(i(h, "/status/currentReplicas")),
                age(h),
            ]
        }),
    )
}

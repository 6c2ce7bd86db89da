//! Pods and Nodes.

use serde_json::{Value, json};

use super::{Cells, s};
use crate::apiserver::table::{AGE, Column, NAME, age, col, human_duration, name, since, wide};

/// The pod status kubectl shows: the most telling container reason, `Init:x/y`, `Terminating`, or the phase.
pub fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(pod, "/status/phase").to_string();
    }
    let statuses = |p: &str| pod.pointer(p).and_then(Value::as_array).cloned().unwrap_or_default();
    let inits = statuses("/status/initContainerStatuses");
    let init_total = pod.pointer("/spec/initContainers").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    let mut initializing = false;
    for (n, c) in inits.iter().enumerate() {
        let exit = c.pointer("/state/terminated/exitCode").and_then(Value::as_i64);
        if exit == Some(0) {
            continue;
        }
        initializing = true;
        reason = if let Some(r) = c.pointer("/state/terminated/reason").and_then(Value::as_str) {
            format!("Init:{r}")
        } else if exit.is_some() {
            format!("Init:ExitCode:{}", exit.unwrap_or_default())
        } else if let Some(r) =
            c.pointer("/state/waiting/reason").and_then(Value::as_str).filter(|r| *r != "PodInitializing")
        {
            format!("Init:{r}")
        } else {
            format!("Init:{n}/{init_total}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in statuses("/status/containerStatuses").iter().rev() {
            if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if let Some(r) =
                c.pointer("/state/terminated/reason").and_then(Value::as_str).filter(|r| !r.is_empty())
            {
                reason = r.to_string();
            } else if let Some(code) = c.pointer("/state/terminated/exitCode").and_then(Value::as_i64) {
                reason = match c.pointer("/state/terminated/signal").and_then(Value::as_i64) {
                    Some(sig) if sig != 0 => format!("Signal:{sig}"),
                    _ => format!("ExitCode:{code}"),
                };
            } else if c.get("ready") == Some(&json!(true)) && c.pointer("/state/running").is_some() {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(pod, "/status/reason") == "NodeLost" { "Unknown".into() } else { "Terminating".into() };
    }
    reason
}

/// `kubectl get pods`.
pub fn pods() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        col("Ready"),
        col("Status"),
        col("Restarts"),
        AGE,
        wide("IP"),
        wide("Node"),
        wide("Nominated Node"),
        wide("Readiness Gates"),
    ];
    (
        cols,
        Box::new(|p| {
            let cs = p.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
            let total = p.pointer("/spec/containers").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            let ready = cs.iter().filter(|c| c.get("ready") == Some(&json!(true))).count();
            let restarts: i64 = cs.iter().map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0)).sum();
            let last = cs
                .iter()
                .filter_map(|c| c.pointer("/lastState/terminated/finishedAt"))
                .filter_map(|t| since(Some(t)))
                .min();
            let restarts_cell = match (restarts, last) {
                (r, Some(ago)) if r > 0 => format!("{r} ({} ago)", human_duration(ago)),
                (r, _) => r.to_string(),
            };
            let gates = p.pointer("/spec/readinessGates").and_then(Value::as_array).map(|g| {
                let conds = p.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
                let ok = g
                    .iter()
                    .filter(|gate| {
                        conds.iter().any(|c| {
                            c.get("type") == gate.get("conditionType") && c.get("status") == Some(&json!("True"))
                        })
                    })
                    .count();
                format!("{ok}/{}", g.len())
            });
            vec![
                name(p),
                json!(format!("{ready}/{total}")),
                json!(pod_status(p)),
                json!(restarts_cell),
                age(p),
                json!(if s(p, "/status/podIP").is_empty() { "<none>" } else { s(p, "/status/podIP") }),
                json!(if s(p, "/spec/nodeName").is_empty() { "<none>" } else { s(p, "/spec/nodeName") }),
                json!(if s(p, "/status/nominatedNodeName").is_empty() {
                    "<none>"
                } else {
                    s(p, "/status/nominatedNodeName")
                }),
                json!(gates.unwrap_or_else(|| "<none>".into())),
            ]
        }),
    )
}

/// `kubectl get nodes`.
pub fn nodes() -> (Vec<Column>, Cells) {
    let cols = vec![
        NAME,
        col("Status"),
        col("Roles"),
        AGE,
        col("Version"),
        wide("Internal-IP"),
        wide("External-IP"),
        wide("OS-Image"),
        wide("Kernel-Version"),
        wide("Container-Runtime"),
    ];
    (
        cols,
        Box::new(|n| {
            let conds = n.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            let ready = conds.iter().find(|c| c.get("type") == Some(&json!("Ready")));
            let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
                Some("True") => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if n.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = n
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).map(str::to_string).collect()
                })
                .unwrap_or_default();
            let addr = |t: &str| {
                n.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|x| x.get("type") == Some(&json!(t))))
                    .and_then(|x| x.get("address"))
                    .and_then(Value::as_str)
                    .unwrap_or("<none>")
                    .to_string()
            };
            vec![
                name(n),
                json!(status),
                json!(super::join_or_none(&roles)),
                age(n),
                json!(s(n, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(n, "/status/nodeInfo/osImage")),
                json!(s(n, "/status/nodeInfo/kernelVersion")),
                json!(s(n, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }),
    )
}

//! The HorizontalPodAutoscaler controller (autoscaling/v2): resource utilization targets against pod requests,
//! read from the resource metrics API; the Kubernetes algorithm with its 10% tolerance and its treatment of
//! missing metrics and unready pods; `behavior` with scale-up/-down policies and stabilization windows (300 s for
//! scale-down by default); status, conditions and events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch};
use kube::runtime::controller::{Action, Controller};
use serde_json::json;
use skiff_api::selector::Selector;
use skiff_client::events::EventType;

use super::ctx::{Ctx, ReconcileError};
use super::util::{is_active, is_ready};

/// The fraction of deviation from the target within which nothing is scaled.
pub const TOLERANCE: f64 = 0.1;

/// Current usage of one pod: millicores and bytes.
pub type PodUsage = (i64, i64);

/// Where the controller reads pod metrics (the resource metrics API in a cluster; injected values in tests).
#[async_trait::async_trait]
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// Usage of the pods in `ns` matching `selector`, by pod name.
    async fn pod_usage(
        &self,
        client: &kube::Client,
        ns: &str,
        selector: &str,
    ) -> Result<HashMap<String, PodUsage>, String>;
}

/// Reads `metrics.k8s.io/v1beta1` PodMetrics through the API server.
#[derive(Debug, Default)]
pub struct ResourceMetricsApi;

#[async_trait::async_trait]
impl MetricsSource for ResourceMetricsApi {
    async fn pod_usage(
        &self,
        client: &kube::Client,
        ns: &str,
        selector: &str,
    ) -> Result<HashMap<String, PodUsage>, String> {
        let sel: String = url::form_urlencoded::byte_serialize(selector.as_bytes()).collect();
        let req = http::Request::get(format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={sel}"))
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let list: serde_json::Value = client.request(req).await.map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        for item in list.get("items").and_then(|i| i.as_array()).into_iter().flatten() {
            let name = item.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
            let (mut cpu, mut mem) = (0i64, 0i64);
            for c in item.get("containers").and_then(|c| c.as_array()).into_iter().flatten() {
                let q = |k: &str| {
                    c.pointer(&format!("/usage/{k}"))
                        .and_then(|v| v.as_str())
                        .and_then(|s| s.parse::<skiff_api::quantity::Quantity>().ok())
                };
                cpu += q("cpu").map(|q| q.as_milli()).unwrap_or(0);
                mem += q("memory").map(|q| q.as_units()).unwrap_or(0);
            }
            out.insert(name, (cpu, mem));
        }
        Ok(out)
    }
}

/// Injected metrics, for tests: every selected pod reports the same usage.
#[derive(Debug, Default)]
pub struct InjectedMetrics(pub Mutex<Option<PodUsage>>);

impl InjectedMetrics {
    /// Sets the usage every pod reports (millicores, bytes).
    pub fn set(&self, usage: PodUsage) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(usage);
    }
}

#[async_trait::async_trait]
impl MetricsSource for InjectedMetrics {
    async fn pod_usage(
        &self,
        client: &kube::Client,
        ns: &str,
        selector: &str,
    ) -> Result<HashMap<String, PodUsage>, String> {
        let Some(u) = *self.0.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Err("no metrics injected".into());
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let list = pods.list(&kube::api::ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
        Ok(list.items.into_iter().filter_map(|p| p.metadata.name).map(|n| (n, u)).collect())
    }
}

/// A pod as the algorithm sees it.
#[derive(Debug, Clone)]
pub struct PodSample {
    /// Name.
    pub name: String,
    /// Ready.
    pub ready: bool,
    /// Requested millicores (sum over containers), if every container requests cpu.
    pub cpu_request: Option<i64>,
    /// Requested bytes, if every container requests memory.
    pub memory_request: Option<i64>,
}

/// The replica count one resource metric asks for, and the utilization it measured (percent).
pub fn replicas_for(
    current: i32,
    target_utilization: i32,
    resource: &str,
    pods: &[PodSample],
    usage: &HashMap<String, PodUsage>,
) -> Result<(i32, i32), String> {
    let request = |p: &PodSample| if resource == "cpu" { p.cpu_request } else { p.memory_request };
    let used = |u: &PodUsage| if resource == "cpu" { u.0 } else { u.1 };
    if pods.is_empty() {
        return Err("no pods match the scale target's selector".into());
    }
    if let Some(p) = pods.iter().find(|p| request(p).is_none()) {
        return Err(format!("missing request for {resource} in pod {}", p.name));
    }
    let with_metrics: Vec<&PodSample> = pods.iter().filter(|p| usage.contains_key(&p.name) && p.ready).collect();
    if with_metrics.is_empty() {
        return Err(format!("did not receive metrics for any ready pods (resource {resource})"));
    }
    let sum_req: i64 = with_metrics.iter().map(|p| request(p).unwrap_or(0)).sum();
    let sum_used: i64 = with_metrics.iter().map(|p| used(&usage[&p.name])).sum();
    if sum_req == 0 {
        return Err(format!("pods request no {resource}"));
    }
    let utilization = sum_used as f64 / sum_req as f64 * 100.0;
    let ratio = utilization / f64::from(target_utilization);
    let unaccounted: Vec<&PodSample> = pods.iter().filter(|p| !(usage.contains_key(&p.name) && p.ready)).collect();
    if (ratio - 1.0).abs() <= TOLERANCE && unaccounted.is_empty() {
        return Ok((current, utilization.round() as i32));
    }
    if unaccounted.is_empty() {
        return Ok(((ratio * with_metrics.len() as f64).ceil() as i32, utilization.round() as i32));
    }
    // Missing or unready pods: when scaling up, both count as idle; when scaling down, pods without metrics count
    // at 100% of their request and unready ones are left out. The decision stands only if it keeps its direction.
    let (mut req2, mut used2, mut counted) = (sum_req, sum_used, with_metrics.len());
    for p in &unaccounted {
        let r = request(p).unwrap_or(0);
        let missing = !usage.contains_key(&p.name);
        if ratio > 1.0 {
            req2 += r;
            counted += 1;
        } else if missing {
            req2 += r;
            used2 += r;
            counted += 1;
        }
    }
    let new_ratio = used2 as f64 / req2 as f64 * 100.0 / f64::from(target_utilization);
    if (new_ratio - 1.0).abs() <= TOLERANCE || (ratio > 1.0) != (new_ratio > 1.0) {
        return Ok((current, utilization.round() as i32));
    }
    Ok(((new_ratio * counted as f64).ceil() as i32, utilization.round() as i32))
}

/// The most a policy set allows the count to change to from `current`.
fn policy_limit(rules: &HPAScalingRules, current: i32, up: bool) -> i32 {
    let limits: Vec<i32> = rules
        .policies
        .iter()
        .flatten()
        .map(|p| match (p.type_.as_str(), up) {
            ("Pods", true) => current + p.value,
            ("Pods", false) => current - p.value,
            ("Percent", true) => current + ((f64::from(current) * f64::from(p.value) / 100.0).ceil() as i32),
            (_, false) => current - ((f64::from(current) * f64::from(p.value) / 100.0).ceil() as i32),
            _ => current,
        })
        .collect();
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    match (select, up) {
        ("Disabled", _) => current,
        ("Min", true) | ("Max", false) => *limits.iter().min().unwrap_or(&current),
        _ => *limits.iter().max().unwrap_or(&current),
    }
}

fn default_rules(up: bool) -> HPAScalingRules {
    let v = if up {
        json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]})
    } else {
        json!({"stabilizationWindowSeconds": 300, "selectPolicy": "Max", "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]})
    };
    serde_json::from_value(v).expect("default scaling rules are valid")
}

/// Applies `behavior` (stabilization windows over past recommendations, then rate policies) and min/max.
pub fn stabilize(
    hpa: &HorizontalPodAutoscaler,
    current: i32,
    recommendation: i32,
    history: &[(jiff::Timestamp, i32)],
    now: jiff::Timestamp,
) -> (i32, Option<&'static str>) {
    let spec = hpa.spec.clone().unwrap_or_default();
    let behavior = spec.behavior.clone().unwrap_or_default();
    let up =
        behavior.scale_up.clone().map(|r| merge_rules(r, default_rules(true))).unwrap_or_else(|| default_rules(true));
    let down = behavior
        .scale_down
        .clone()
        .map(|r| merge_rules(r, default_rules(false)))
        .unwrap_or_else(|| default_rules(false));
    let within = |secs: i32| {
        history.iter().filter(move |(t, _)| now.duration_since(*t).as_secs() <= i64::from(secs)).map(|(_, r)| *r)
    };
    // scale-down takes the highest recommendation of its window, scale-up the lowest of its own
    let down_floor = within(down.stabilization_window_seconds.unwrap_or(300))
        .chain([recommendation])
        .max()
        .unwrap_or(recommendation);
    let up_ceiling =
        within(up.stabilization_window_seconds.unwrap_or(0)).chain([recommendation]).min().unwrap_or(recommendation);
    let mut desired = current;
    if recommendation > current {
        desired = up_ceiling.max(current).min(policy_limit(&up, current, true));
    } else if recommendation < current {
        desired = down_floor.min(current).max(policy_limit(&down, current, false));
    }
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    if desired > max {
        (max, Some("TooManyReplicas"))
    } else if desired < min {
        (min, Some("TooFewReplicas"))
    } else {
        (desired, None)
    }
}

fn merge_rules(mut r: HPAScalingRules, d: HPAScalingRules) -> HPAScalingRules {
    if r.policies.as_ref().is_none_or(Vec::is_empty) {
        r.policies = d.policies;
    }
    if r.select_policy.is_none() {
        r.select_policy = d.select_policy;
    }
    if r.stabilization_window_seconds.is_none() {
        r.stabilization_window_seconds = d.stabilization_window_seconds;
    }
    r
}

/// Recommendations of the last windows, per HPA uid.
#[derive(Debug, Default)]
pub struct History(Mutex<HashMap<String, Vec<(jiff::Timestamp, i32)>>>);

fn condition(
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
    prev: &Option<HorizontalPodAutoscalerStatus>,
) -> HorizontalPodAutoscalerCondition {
    let old = prev.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == ty));
    HorizontalPodAutoscalerCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: if old.is_some_and(|o| o.status == status) {
            old.and_then(|o| o.last_transition_time.clone())
        } else {
            Some(Time(now))
        },
    }
}

async fn scale_target(ctx: &Ctx, ns: &str, kind: &str, name: &str) -> Result<(i32, String), ReconcileError> {
    let scale = match kind {
        "Deployment" => Api::<Deployment>::namespaced(ctx.client.clone(), ns).get_scale(name).await?,
        "ReplicaSet" => Api::<ReplicaSet>::namespaced(ctx.client.clone(), ns).get_scale(name).await?,
        "StatefulSet" => Api::<StatefulSet>::namespaced(ctx.client.clone(), ns).get_scale(name).await?,
        other => return Err(ReconcileError::Invalid(format!("scaling {other} is not supported"))),
    };
    let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
    Ok((replicas, scale.status.and_then(|s| s.selector).unwrap_or_default()))
}

async fn set_scale(ctx: &Ctx, ns: &str, kind: &str, name: &str, replicas: i32) -> Result<(), ReconcileError> {
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    let pp = super::util::pp();
    match kind {
        "Deployment" => {
            Api::<Deployment>::namespaced(ctx.client.clone(), ns).patch_scale(name, &pp, &patch).await.map(|_| ())?
        }
        "ReplicaSet" => {
            Api::<ReplicaSet>::namespaced(ctx.client.clone(), ns).patch_scale(name, &pp, &patch).await.map(|_| ())?
        }
        _ => Api::<StatefulSet>::namespaced(ctx.client.clone(), ns).patch_scale(name, &pp, &patch).await.map(|_| ())?,
    }
    Ok(())
}

fn sample(p: &super::cached_pod::CachedPod) -> PodSample {
    let spec = p.spec.clone().unwrap_or_default();
    let req = |res: &str| -> Option<i64> {
        let mut total = 0;
        for c in spec.containers.iter() {
            let q = c.resources.as_ref()?.requests.as_ref()?.get(res)?;
            let v: skiff_api::quantity::Quantity = q.0.parse().ok()?;
            total += if res == "cpu" { v.as_milli() } else { v.as_units() };
        }
        Some(total)
    };
    PodSample {
        name: p.metadata.name.clone().unwrap_or_default(),
        ready: is_ready(p),
        cpu_request: req("cpu"),
        memory_request: req("memory"),
    }
}

/// Reconciles one HPA.
pub async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let history = HISTORY.get_or_init(History::default);
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let name = hpa.metadata.name.clone().unwrap_or_default();
    let uid = hpa.metadata.uid.clone().unwrap_or_default();
    let spec = hpa.spec.clone().unwrap_or_default();
    let target = &spec.scale_target_ref;
    let now = ctx.now();
    let period = ctx.config.hpa_sync_period;
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &ns);
    let recorder = ctx.recorders.get(CONTROLLER);
    let oref = skiff_client::events::reference(hpa.as_ref());
    let (current, selector) = match scale_target(&ctx, &ns, &target.kind, &target.name).await {
        Ok(v) => v,
        Err(e) => {
            let st = HorizontalPodAutoscalerStatus {
                conditions: Some(vec![condition(
                    "AbleToScale",
                    "False",
                    "FailedGetScale",
                    &format!("the HPA controller was unable to get the target's current scale: {e}"),
                    now,
                    &hpa.status,
                )]),
                ..hpa.status.clone().unwrap_or_default()
            };
            super::retry::status_written(
                api.patch_status(&name, &super::util::pp(), &Patch::Merge(&json!({"status": st}))).await,
            )?;
            return Ok(Action::requeue(period));
        }
    };
    let sel = Selector::parse(&selector).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    let pods: Vec<PodSample> = ctx
        .pods
        .in_namespace(&ns)
        .into_iter()
        .filter(|p| is_active(p) && p.metadata.selected_by(&sel))
        .map(|p| sample(&p))
        .collect();
    let usage = ctx.metrics.pod_usage(&ctx.client, &ns, &selector).await;
    let mut recommendation = spec.min_replicas.unwrap_or(1);
    let mut current_metrics = Vec::new();
    let mut problem: Option<String> = None;
    let mut reason_metric = String::new();
    for m in spec.metrics.iter().flatten() {
        let Some(res) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else { continue };
        let Some(target_util) = res.target.average_utilization else { continue };
        let usage = match &usage {
            Ok(u) => u,
            Err(e) => {
                problem = Some(format!("unable to get metrics for resource {}: {e}", res.name));
                continue;
            }
        };
        match replicas_for(current, target_util, &res.name, &pods, usage) {
            Ok((want, util)) => {
                if want >= recommendation {
                    reason_metric = format!(
                        "{} resource utilization (percentage of request) {} target",
                        res.name,
                        if util > target_util { "above" } else { "below" }
                    );
                }
                recommendation = recommendation.max(want);
                let avg: i64 = pods
                    .iter()
                    .filter_map(|p| usage.get(&p.name))
                    .map(|u| if res.name == "cpu" { u.0 } else { u.1 })
                    .sum::<i64>()
                    / (pods.len().max(1) as i64);
                let avg_q = if res.name == "cpu" { format!("{avg}m") } else { avg.to_string() };
                current_metrics.push(json!({"type": "Resource", "resource": {"name": res.name, "current": {"averageUtilization": util, "averageValue": avg_q}}}));
            }
            Err(e) => problem = Some(e),
        }
    }
    let (desired, limited) = if problem.is_some() && current_metrics.is_empty() {
        (current, None)
    } else {
        let hist = {
            let mut h = history.0.lock().unwrap_or_else(|p| p.into_inner());
            let entry = h.entry(uid.clone()).or_default();
            entry.retain(|(t, _)| now.duration_since(*t).as_secs() <= 600);
            let snapshot = entry.clone();
            entry.push((now, recommendation));
            snapshot
        };
        stabilize(&hpa, current, recommendation, &hist, now)
    };
    let mut last_scale = hpa.status.as_ref().and_then(|s| s.last_scale_time.clone());
    if desired != current {
        set_scale(&ctx, &ns, &target.kind, &target.name, desired).await?;
        last_scale = Some(Time(now));
        recorder
            .record(
                &oref,
                EventType::Normal,
                "SuccessfulRescale",
                &format!("New size: {desired}; reason: {reason_metric}"),
            )
            .await;
    }
    let prev = hpa.status.clone();
    let mut conditions = vec![condition(
        "AbleToScale",
        "True",
        if desired != current { "SucceededRescale" } else { "ReadyForNewScale" },
        "recommended size matches current size",
        now,
        &prev,
    )];
    match &problem {
        Some(p) if current_metrics.is_empty() => {
            conditions.push(condition("ScalingActive", "False", "FailedGetResourceMetric", p, now, &prev));
            recorder.record(&oref, EventType::Warning, "FailedGetResourceMetric", p).await;
        }
        _ => conditions.push(condition("ScalingActive", "True", "ValidMetricFound", "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)", now, &prev)),
    }
    conditions.push(match limited {
        Some(r) => condition(
            "ScalingLimited",
            "True",
            r,
            &format!(
                "the desired replica count is {} than the {} replica count",
                if r == "TooManyReplicas" { "more" } else { "less" },
                if r == "TooManyReplicas" { "maximum" } else { "minimum" }
            ),
            now,
            &prev,
        ),
        None => condition(
            "ScalingLimited",
            "False",
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
            now,
            &prev,
        ),
    });
    let status = json!({"status": {
        "observedGeneration": hpa.metadata.generation, "currentReplicas": current, "desiredReplicas": desired,
        "currentMetrics": current_metrics, "conditions": conditions, "lastScaleTime": last_scale,
    }});
    super::retry::status_written(api.patch_status(&name, &super::util::pp(), &Patch::Merge(&status)).await)?;
    Ok(Action::requeue(period))
}

static HISTORY: std::sync::OnceLock<History> = std::sync::OnceLock::new();

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "horizontal-pod-autoscaler";

/// Runs the controller.
pub async fn run(ctx: Arc<Ctx>, hpas: Subscription<HorizontalPodAutoscaler>) {
    Controller::for_shared_stream(hpas, ctx.hpas.clone())
        .run(super::retry::reconciler(CONTROLLER, reconcile), super::retry::policy(CONTROLLER), ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(n: usize, ready: bool) -> Vec<PodSample> {
        (0..n)
            .map(|i| PodSample { name: format!("p{i}"), ready, cpu_request: Some(200), memory_request: Some(1 << 20) })
            .collect()
    }

    fn usage(n: usize, milli: i64) -> HashMap<String, PodUsage> {
        (0..n).map(|i| (format!("p{i}"), (milli, 0))).collect()
    }

    #[test]
    fn utilization_above_target_scales_up_proportionally() {
        // 2 pods at 180m of 200m = 90%, target 50% -> ceil(1.8 * 2) = 4
        assert_eq!(replicas_for(2, 50, "cpu", &pods(2, true), &usage(2, 180)), Ok((4, 90)));
    }

    #[test]
    fn within_the_ten_percent_tolerance_nothing_changes() {
        // 108m of 200m = 54% against 50%: ratio 1.08
        assert_eq!(replicas_for(3, 50, "cpu", &pods(3, true), &usage(3, 108)), Ok((3, 54)));
    }

    #[test]
    fn missing_requests_are_an_error() {
        let mut p = pods(1, true);
        p[0].cpu_request = None;
        assert!(replicas_for(1, 50, "cpu", &p, &usage(1, 10)).is_err());
    }

    #[test]
    fn unready_pods_count_as_idle_when_scaling_up() {
        // 1 ready pod at 200% + 1 unready pod (0%): (200+0)/(2*100%)... ratio recomputed -> 2
        let mut p = pods(2, true);
        p[1].ready = false;
        let mut u = usage(1, 400);
        u.insert("p1".into(), (0, 0));
        assert_eq!(replicas_for(2, 100, "cpu", &p, &u), Ok((2, 200)));
    }

    fn hpa(min: i32, max: i32, down_window: Option<i32>) -> HorizontalPodAutoscaler {
        let mut v = json!({"metadata": {"name": "h"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "minReplicas": min, "maxReplicas": max}});
        if let Some(w) = down_window {
            v["spec"]["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": w}});
        }
        serde_json::from_value(v).expect("hpa")
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let recent = vec![(now - jiff::SignedDuration::from_secs(100), 6)];
        assert_eq!(
            stabilize(&hpa(1, 10, None), 6, 2, &recent, now),
            (6, None),
            "a higher recommendation 100 s ago holds the count"
        );
        let old = vec![(now - jiff::SignedDuration::from_secs(400), 6)];
        assert_eq!(stabilize(&hpa(1, 10, None), 6, 2, &old, now), (2, None));
        assert_eq!(stabilize(&hpa(1, 10, Some(30)), 6, 2, &recent, now), (2, None), "a shortened window");
    }

    #[test]
    fn scale_up_is_rate_limited_and_bounded() {
        let now = jiff::Timestamp::now();
        assert_eq!(stabilize(&hpa(1, 100, None), 2, 50, &[], now), (6, None), "max(2+4, 2*2) per period");
        assert_eq!(stabilize(&hpa(1, 5, None), 4, 8, &[], now), (5, Some("TooManyReplicas")));
        assert_eq!(stabilize(&hpa(3, 5, None), 3, 1, &[], now), (3, Some("TooFewReplicas")));
    }
}

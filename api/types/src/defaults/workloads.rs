//! Defaults of workload, network and other kinds.

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDaemonSet,
    RollingUpdateDeployment, RollingUpdateStatefulSetStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::{Namespace, NamespaceSpec, NamespaceStatus, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::default_pod_template;

fn percent(s: &str) -> IntOrString {
    IntOrString::String(s.into())
}

/// Defaults a Deployment.
pub fn default_deployment(d: &mut Deployment) {
    let Some(spec) = d.spec.as_mut() else { return };
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec.strategy.get_or_insert_with(DeploymentStrategy::default);
    let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if ty == "RollingUpdate" {
        let ru = strategy.rolling_update.get_or_insert_with(RollingUpdateDeployment::default);
        ru.max_surge.get_or_insert_with(|| percent("25%"));
        ru.max_unavailable.get_or_insert_with(|| percent("25%"));
    }
    default_pod_template(&mut spec.template);
}

/// Defaults a ReplicaSet.
pub fn default_replica_set(rs: &mut ReplicaSet) {
    let Some(spec) = rs.spec.as_mut() else { return };
    spec.replicas.get_or_insert(1);
    if let Some(t) = spec.template.as_mut() {
        default_pod_template(t);
    }
}

/// Defaults a StatefulSet.
pub fn default_stateful_set(s: &mut StatefulSet) {
    let Some(spec) = s.spec.as_mut() else { return };
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.pod_management_policy.get_or_insert_with(|| "OrderedReady".into());
    let us = spec.update_strategy.get_or_insert_with(StatefulSetUpdateStrategy::default);
    if us.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
        us.rolling_update.get_or_insert_with(RollingUpdateStatefulSetStrategy::default).partition.get_or_insert(0);
    }
    let p = spec
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
    p.when_deleted.get_or_insert_with(|| "Retain".into());
    p.when_scaled.get_or_insert_with(|| "Retain".into());
    for c in spec.volume_claim_templates.iter_mut().flatten() {
        if let Some(s) = c.spec.as_mut() {
            s.volume_mode.get_or_insert_with(|| "Filesystem".into());
        }
    }
    default_pod_template(&mut spec.template);
}

/// Defaults a DaemonSet.
pub fn default_daemon_set(d: &mut DaemonSet) {
    let Some(spec) = d.spec.as_mut() else { return };
    spec.revision_history_limit.get_or_insert(10);
    let us = spec.update_strategy.get_or_insert_with(DaemonSetUpdateStrategy::default);
    if us.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
        let ru = us.rolling_update.get_or_insert_with(RollingUpdateDaemonSet::default);
        ru.max_unavailable.get_or_insert(IntOrString::Int(1));
        ru.max_surge.get_or_insert(IntOrString::Int(0));
    }
    default_pod_template(&mut spec.template);
}

/// Defaults a Job spec.
pub fn default_job_spec(spec: &mut JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
        spec.parallelism = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    spec.backoff_limit.get_or_insert(6);
    spec.completion_mode.get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    spec.pod_replacement_policy.get_or_insert_with(|| "TerminatingOrFailed".into());
    default_pod_template(&mut spec.template);
}

/// Defaults a Job.
pub fn default_job(j: &mut Job) {
    if let Some(spec) = j.spec.as_mut() {
        default_job_spec(spec);
    }
}

/// Defaults a CronJob.
pub fn default_cron_job(c: &mut CronJob) {
    let Some(spec) = c.spec.as_mut() else { return };
    spec.concurrency_policy.get_or_insert_with(|| "Allow".into());
    spec.suspend.get_or_insert(false);
    spec.successful_jobs_history_limit.get_or_insert(3);
    spec.failed_jobs_history_limit.get_or_insert(1);
    if let Some(js) = spec.job_template.spec.as_mut() {
        // The job template's pods are defaulted; the Job fields are defaulted when each Job is created.
        default_pod_template(&mut js.template);
    }
}

/// Defaults a Service.
pub fn default_service(s: &mut Service) {
    let Some(spec) = s.spec.as_mut() else { return };
    let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    spec.session_affinity.get_or_insert_with(|| "None".into());
    if ty != "ExternalName" {
        spec.internal_traffic_policy.get_or_insert_with(|| "Cluster".into());
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        spec.external_traffic_policy.get_or_insert_with(|| "Cluster".into());
    }
    if ty == "LoadBalancer" {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        let c = spec.session_affinity_config.get_or_insert_with(Default::default);
        c.client_ip.get_or_insert_with(Default::default).timeout_seconds.get_or_insert(10800);
    }
    for p in spec.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        if p.target_port.is_none() {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
}

/// Defaults a Namespace.
pub fn default_namespace(n: &mut Namespace) {
    n.spec.get_or_insert_with(NamespaceSpec::default).finalizers.get_or_insert_with(|| vec!["kubernetes".into()]);
    n.status.get_or_insert_with(NamespaceStatus::default).phase.get_or_insert_with(|| "Active".into());
    let name = n.metadata.name.clone().unwrap_or_default();
    n.metadata.labels.get_or_insert_with(Default::default).insert("kubernetes.io/metadata.name".into(), name);
}

/// Defaults a Secret.
pub fn default_secret(s: &mut Secret) {
    s.type_.get_or_insert_with(|| "Opaque".into());
    // stringData is write-only: it is merged into data and never stored.
    if let Some(sd) = s.string_data.take() {
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in sd {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
    }
}

/// Defaults a PersistentVolumeClaim.
pub fn default_pvc(c: &mut PersistentVolumeClaim) {
    if let Some(spec) = c.spec.as_mut() {
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    }
    c.status.get_or_insert_with(Default::default).phase.get_or_insert_with(|| "Pending".into());
}

/// Defaults a HorizontalPodAutoscaler.
pub fn default_hpa(h: &mut HorizontalPodAutoscaler) {
    if let Some(spec) = h.spec.as_mut() {
        spec.min_replicas.get_or_insert(1);
        if spec.metrics.as_ref().is_none_or(Vec::is_empty) {
            // autoscaling/v2 default: 80% average CPU utilization
            spec.metrics = Some(vec![
                serde_json::from_value(serde_json::json!({
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
                }))
                .expect("a valid MetricSpec literal"),
            ]);
        }
    }
}

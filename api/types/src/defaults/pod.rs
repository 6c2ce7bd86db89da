//! Pod defaults.

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, PodSpec, PodTemplateSpec, Probe};

/// Defaults a pod template's spec.
pub fn default_pod_template(t: &mut PodTemplateSpec) {
    if let Some(spec) = t.spec.as_mut() {
        default_pod_spec(spec);
    }
}

/// Defaults a pod spec.
pub fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(PodSecurityContext::default);
    spec.enable_service_links.get_or_insert(true);
    if spec.service_account_name.is_none() {
        spec.service_account_name = Some(spec.service_account.clone().unwrap_or_else(|| "default".into()));
    }
    if spec.service_account.is_none() {
        spec.service_account = spec.service_account_name.clone();
    }
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c);
    }
    for c in &mut spec.containers {
        default_container(c);
    }
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(cm) = v.config_map.as_mut() {
            cm.default_mode.get_or_insert(0o644);
        }
        if let Some(s) = v.secret.as_mut() {
            s.default_mode.get_or_insert(0o644);
        }
        if let Some(h) = v.host_path.as_mut() {
            h.type_.get_or_insert_with(String::new);
        }
        if let Some(d) = v.downward_api.as_mut() {
            d.default_mode.get_or_insert(0o644);
        }
        if let Some(p) = v.projected.as_mut() {
            p.default_mode.get_or_insert(0o644);
        }
    }
    for t in spec.tolerations.iter_mut().flatten() {
        if t.operator.is_none() {
            t.operator = Some("Equal".into());
        }
    }
}

fn default_container(c: &mut Container) {
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or_default();
        let last = image.rsplit('/').next().unwrap_or_default();
        let tag = if image.contains('@') { Some("digest") } else { last.split_once(':').map(|(_, t)| t) };
        c.image_pull_policy = Some(if matches!(tag, None | Some("latest")) { "Always" } else { "IfNotPresent" }.into());
    }
    c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy.get_or_insert_with(|| "File".into());
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for probe in [c.liveness_probe.as_mut(), c.readiness_probe.as_mut(), c.startup_probe.as_mut()].into_iter().flatten()
    {
        default_probe(probe);
    }
    for e in c.env.iter_mut().flatten() {
        if let Some(f) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            f.api_version.get_or_insert_with(|| "v1".into());
        }
    }
}

fn default_probe(p: &mut Probe) {
    p.timeout_seconds.get_or_insert(1);
    p.period_seconds.get_or_insert(10);
    p.success_threshold.get_or_insert(1);
    p.failure_threshold.get_or_insert(3);
    if let Some(h) = p.http_get.as_mut() {
        h.scheme.get_or_insert_with(|| "HTTP".into());
        h.path.get_or_insert_with(|| "/".into());
    }
}

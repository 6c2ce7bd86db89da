//! Pod Security Admission as pure functions: the levels a namespace asks for (its
//! `pod-security.kubernetes.io/enforce|warn|audit` labels) and the checks of the Pod Security Standards
//! (`privileged`, `baseline`, `restricted`, as upstream's `latest`), with upstream's words. The API server applies
//! them to pods (refused under `enforce`) and to the pod templates of workloads (warned).
//!
//! # Caveats
//! `*-version` labels are accepted and ignored: every check is the `latest` one.

pub mod checks;

use std::fmt;

use serde_json::Value;

use checks::{PodView, Violation};

/// A Pod Security Standard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Unrestricted.
    Privileged,
    /// Prevents known privilege escalations.
    Baseline,
    /// Hardened.
    Restricted,
}

impl Level {
    /// Parses a label value.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        })
    }
}

/// The label prefix.
pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// A namespace's levels, per mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NamespacePolicy {
    /// Pods that violate it are refused.
    pub enforce: Option<Level>,
    /// Requests that would violate it get a warning.
    pub warn: Option<Level>,
    /// Violations are logged.
    pub audit: Option<Level>,
}

/// The policy of a namespace's labels, or the error for an invalid one (as upstream validates them).
pub fn namespace_policy(labels: Option<&Value>) -> Result<NamespacePolicy, String> {
    let mut p = NamespacePolicy::default();
    for (k, v) in labels.and_then(Value::as_object).into_iter().flatten() {
        let Some(mode) = k.strip_prefix(LABEL_PREFIX) else { continue };
        let value = v.as_str().unwrap_or_default();
        let slot = match mode {
            "enforce" => &mut p.enforce,
            "warn" => &mut p.warn,
            "audit" => &mut p.audit,
            m if m.ends_with("-version") => {
                if value != "latest" && !is_version(value) {
                    return Err(format!(
                        "metadata.labels[{k}]: Invalid value: {value:?}: must be \"latest\" or \"v1.x\""
                    ));
                }
                continue;
            }
            _ => continue,
        };
        *slot = Some(Level::parse(value).ok_or_else(|| {
            format!("metadata.labels[{k}]: Invalid value: {value:?}: must be one of privileged, baseline, restricted")
        })?);
    }
    Ok(p)
}

fn is_version(v: &str) -> bool {
    v.strip_prefix("v1.").is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
}

type Check = fn(&PodView<'_>) -> Option<Violation>;

/// The checks of a level, in upstream's order (by check ID); restricted replaces the baseline capability, seccomp
/// and hostPath checks by its stricter ones.
fn checks_of(level: Level) -> Vec<Check> {
    use checks::*;
    match level {
        Level::Privileged => vec![],
        Level::Baseline => vec![
            app_armor,
            capabilities_baseline,
            host_namespaces,
            host_path_volumes,
            host_ports,
            host_process,
            privileged,
            proc_mount,
            se_linux,
            seccomp_baseline,
            sysctls,
        ],
        Level::Restricted => vec![
            allow_privilege_escalation,
            app_armor,
            capabilities_restricted,
            host_namespaces,
            host_ports,
            host_process,
            privileged,
            proc_mount,
            restricted_volumes,
            run_as_non_root,
            run_as_user,
            se_linux,
            seccomp_restricted,
            sysctls,
        ],
    }
}

/// What a pod (its `metadata` and `spec`) violates at `level`.
pub fn evaluate(level: Level, meta: &Value, spec: &Value) -> Vec<Violation> {
    let pod = PodView { spec, meta };
    checks_of(level).iter().filter_map(|c| c(&pod)).collect()
}

/// `violates PodSecurity "restricted:latest": a (…), b (…)` — the words of a refusal (after `pods "x" is
/// forbidden: `) or, with `would violate`, of a warning.
pub fn describe(verb: &str, level: Level, violations: &[Violation]) -> String {
    let list: Vec<String> = violations.iter().map(|v| format!("{} ({})", v.reason, v.detail)).collect();
    format!("{verb} PodSecurity \"{level}:latest\": {}", list.join(", "))
}

/// Where a workload kind keeps its pod template (`None`: not a workload).
pub fn template_pointer(group: &str, plural: &str) -> Option<&'static str> {
    match (group, plural) {
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets")
        | ("batch", "jobs")
        | ("", "replicationcontrollers") => Some("/spec/template"),
        ("batch", "cronjobs") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(level: Level, spec: Value) -> String {
        let v = evaluate(level, &json!({}), &spec);
        if v.is_empty() { String::new() } else { describe("violates", level, &v) }
    }

    #[test]
    fn a_plain_pod_passes_baseline_but_not_restricted() {
        let spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        assert_eq!(eval(Level::Baseline, spec.clone()), "");
        assert_eq!(
            eval(Level::Restricted, spec),
            r#"violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
        );
    }

    #[test]
    fn a_hardened_pod_passes_restricted() {
        let spec = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "t", "projected": {"sources": []}}, {"name": "e", "emptyDir": {}}]});
        assert_eq!(eval(Level::Restricted, spec), "");
    }

    #[test]
    fn baseline_refuses_each_escalation_in_upstream_words() {
        let cases = [
            (
                json!({"hostNetwork": true, "hostPID": true, "containers": [{"name": "c"}]}),
                "host namespaces (hostNetwork=true, hostPID=true)",
            ),
            (
                json!({"containers": [{"name": "a", "securityContext": {"privileged": true}}, {"name": "b", "securityContext": {"privileged": true}}]}),
                r#"privileged (containers "a", "b" must not set securityContext.privileged=true)"#,
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CHOWN", "SYS_TIME"]}}}]}),
                r#"non-default capabilities (container "c" must not include "NET_ADMIN", "SYS_TIME" in securityContext.capabilities.add)"#,
            ),
            (
                json!({"containers": [{"name": "c"}], "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                r#"hostPath volumes (volume "root")"#,
            ),
            (
                json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
                r#"hostPort (container "c" uses hostPort 8080)"#,
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"procMount": "Unmasked"}}]}),
                r#"procMount (container "c" must not set securityContext.procMount to "Unmasked")"#,
            ),
            (
                json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}, "containers": [{"name": "c"}]}),
                r#"seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")"#,
            ),
            (
                json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}, "containers": [{"name": "c"}]}),
                "forbidden sysctls (kernel.msgmax)",
            ),
        ];
        for (spec, want) in cases {
            let got = eval(Level::Baseline, spec);
            assert_eq!(got, format!("violates PodSecurity \"baseline:latest\": {want}"));
        }
        assert_eq!(
            eval(
                Level::Privileged,
                json!({"hostNetwork": true, "containers": [{"name": "c", "securityContext": {"privileged": true}}]})
            ),
            ""
        );
    }

    #[test]
    fn restricted_details() {
        let hardened = |extra: Value| {
            let mut s = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
            for (k, v) in extra.as_object().expect("object") {
                s[k] = v.clone();
            }
            eval(Level::Restricted, s)
        };
        assert!(
            hardened(json!({"volumes": [{"name": "d", "hostPath": {"path": "/data"}}]}))
                .ends_with(r#"restricted volume types (volume "d" uses restricted volume type "hostPath")"#)
        );
        assert!(hardened(json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}}))
            .ends_with("runAsUser=0 (pod must not set runAsUser=0)"));
    }

    #[test]
    fn namespace_labels() {
        let p = namespace_policy(Some(&json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "baseline", "pod-security.kubernetes.io/enforce-version": "v1.32", "team": "a"}))).expect("valid");
        assert_eq!(p, NamespacePolicy { enforce: Some(Level::Restricted), warn: Some(Level::Baseline), audit: None });
        let e = namespace_policy(Some(&json!({"pod-security.kubernetes.io/enforce": "strict"}))).expect_err("invalid");
        assert!(e.contains("must be one of privileged, baseline, restricted"), "{e}");
        assert!(namespace_policy(Some(&json!({"pod-security.kubernetes.io/enforce-version": "1.32"}))).is_err());
        assert_eq!(namespace_policy(None).expect("none"), NamespacePolicy::default());
    }
}

//! The checks of the Pod Security Standards, one function each, as the upstream `pod-security-admission` policy
//! defines them (`latest`). Each returns the reason and detail of a violation, worded as upstream words them.

use serde_json::Value;

/// A violated check: `reason (detail)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The check's short reason (`privileged`, `runAsNonRoot != true`).
    pub reason: &'static str,
    /// What exactly (`container "c" must not set securityContext.privileged=true`).
    pub detail: String,
}

/// One container of the pod (init, regular or ephemeral), with its name.
pub struct Container<'a> {
    /// Its name.
    pub name: &'a str,
    /// The container object.
    pub spec: &'a Value,
}

/// A pod's spec and metadata, as the checks read them.
pub struct PodView<'a> {
    /// `spec`.
    pub spec: &'a Value,
    /// `metadata`.
    pub meta: &'a Value,
}

impl<'a> PodView<'a> {
    /// Every container.
    pub fn containers(&self) -> Vec<Container<'a>> {
        ["initContainers", "containers", "ephemeralContainers"]
            .iter()
            .filter_map(|k| self.spec.get(*k).and_then(Value::as_array))
            .flatten()
            .map(|c| Container { name: c.get("name").and_then(Value::as_str).unwrap_or_default(), spec: c })
            .collect()
    }

    fn pod_sc(&self, field: &str) -> Option<&'a Value> {
        self.spec.get("securityContext").and_then(|s| s.get(field))
    }
}

fn sc<'a>(c: &Container<'a>, field: &str) -> Option<&'a Value> {
    c.spec.get("securityContext").and_then(|s| s.get(field))
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[&str]) -> String {
    format!("{} {}", if names.len() == 1 { "container" } else { "containers" }, quoted(names))
}

fn violation(reason: &'static str, details: Vec<String>) -> Option<Violation> {
    (!details.is_empty()).then(|| Violation { reason, detail: details.join("; ") })
}

fn names_where(pod: &PodView<'_>, bad: impl Fn(&Container<'_>) -> bool) -> Vec<String> {
    pod.containers().iter().filter(|c| bad(c)).map(|c| c.name.to_string()).collect()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Baseline: no host network, PID or IPC namespace.
pub fn host_namespaces(pod: &PodView<'_>) -> Option<Violation> {
    let on: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| pod.spec.get(**f).and_then(Value::as_bool) == Some(true))
        .map(|f| format!("{f}=true"))
        .collect();
    violation("host namespaces", if on.is_empty() { vec![] } else { vec![on.join(", ")] })
}

/// Baseline: no privileged containers.
pub fn privileged(pod: &PodView<'_>) -> Option<Violation> {
    let bad = names_where(pod, |c| sc(c, "privileged").and_then(Value::as_bool) == Some(true));
    let details = if bad.is_empty() {
        vec![]
    } else {
        vec![format!("{} must not set securityContext.privileged=true", containers_phrase(&as_strs(&bad)))]
    };
    violation("privileged", details)
}

/// Capabilities any container may add under baseline.
pub const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added_caps<'a>(c: &Container<'a>) -> Vec<&'a str> {
    sc(c, "capabilities")
        .and_then(|k| k.get("add"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn caps_not_in(pod: &PodView<'_>, allowed: &[&str]) -> Vec<String> {
    pod.containers()
        .iter()
        .filter_map(|c| {
            let extra: Vec<&str> = added_caps(c).into_iter().filter(|cap| !allowed.contains(cap)).collect();
            (!extra.is_empty()).then(|| {
                format!(
                    "container {:?} must not include {} in securityContext.capabilities.add",
                    c.name,
                    quoted(&extra)
                )
            })
        })
        .collect()
}

/// Baseline: only the default capabilities may be added.
pub fn capabilities_baseline(pod: &PodView<'_>) -> Option<Violation> {
    violation("non-default capabilities", caps_not_in(pod, BASELINE_CAPABILITIES))
}

/// Baseline: no hostPath volumes.
pub fn host_path_volumes(pod: &PodView<'_>) -> Option<Violation> {
    let names: Vec<&str> = volumes(pod).filter(|v| v.get("hostPath").is_some()).map(volume_name).collect();
    let noun = if names.len() == 1 { "volume" } else { "volumes" };
    violation("hostPath volumes", if names.is_empty() { vec![] } else { vec![format!("{noun} {}", quoted(&names))] })
}

/// Baseline: no host ports.
pub fn host_ports(pod: &PodView<'_>) -> Option<Violation> {
    let mut names = Vec::new();
    let mut ports = Vec::new();
    for c in pod.containers() {
        let used: Vec<i64> = c
            .spec
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("hostPort").and_then(Value::as_i64))
            .filter(|p| *p != 0)
            .collect();
        if !used.is_empty() {
            names.push(c.name);
            ports.extend(used);
        }
    }
    let detail = match (names.len(), ports.len()) {
        (0, _) => return None,
        (1, 1) => format!("container {:?} uses hostPort {}", names[0], ports[0]),
        (1, _) => format!("container {:?} uses hostPorts {}", names[0], join_nums(&ports)),
        _ => format!("containers {} use hostPorts {}", quoted(&names), join_nums(&ports)),
    };
    violation("hostPort", vec![detail])
}

fn join_nums(n: &[i64]) -> String {
    n.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

/// Baseline: no Windows host-process containers.
pub fn host_process(pod: &PodView<'_>) -> Option<Violation> {
    let pod_level =
        pod.pod_sc("windowsOptions").and_then(|w| w.get("hostProcess")).and_then(Value::as_bool) == Some(true);
    let bad = names_where(pod, |c| {
        sc(c, "windowsOptions").and_then(|w| w.get("hostProcess")).and_then(Value::as_bool) == Some(true)
    });
    let mut d = Vec::new();
    if pod_level {
        d.push("pod must not set securityContext.windowsOptions.hostProcess=true".to_string());
    }
    if !bad.is_empty() {
        d.push(format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            containers_phrase(&as_strs(&bad))
        ));
    }
    violation("hostProcess", d)
}

/// Baseline: AppArmor may not be turned off.
pub fn app_armor(pod: &PodView<'_>) -> Option<Violation> {
    let unconfined = |v: Option<&Value>| v.and_then(|p| p.get("type")).and_then(Value::as_str) == Some("Unconfined");
    let mut d = Vec::new();
    if unconfined(pod.pod_sc("appArmorProfile")) {
        d.push("pod must not set securityContext.appArmorProfile.type to \"Unconfined\"".to_string());
    }
    let bad = names_where(pod, |c| unconfined(sc(c, "appArmorProfile")));
    if !bad.is_empty() {
        d.push(format!(
            "{} must not set securityContext.appArmorProfile.type to \"Unconfined\"",
            containers_phrase(&as_strs(&bad))
        ));
    }
    for (k, v) in pod.meta.get("annotations").and_then(Value::as_object).into_iter().flatten() {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && v.as_str().is_some_and(|p| p != "runtime/default" && !p.starts_with("localhost/"))
        {
            d.push(format!("{k}={:?}", v.as_str().unwrap_or_default()));
        }
    }
    violation("forbidden AppArmor profile", d)
}

/// Baseline: SELinux type only one of the container types, no custom user or role.
pub fn se_linux(pod: &PodView<'_>) -> Option<Violation> {
    const TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
    let bad = |o: Option<&Value>| {
        o.is_some_and(|o| {
            !TYPES.contains(&o.get("type").and_then(Value::as_str).unwrap_or_default())
                || o.get("user").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
                || o.get("role").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
        })
    };
    let mut d = Vec::new();
    if bad(pod.pod_sc("seLinuxOptions")) {
        d.push("pod must not set securityContext.seLinuxOptions other than the container types".to_string());
    }
    let names = names_where(pod, |c| bad(sc(c, "seLinuxOptions")));
    if !names.is_empty() {
        d.push(format!(
            "{} must not set securityContext.seLinuxOptions other than the container types",
            containers_phrase(&as_strs(&names))
        ));
    }
    violation("seLinuxOptions", d)
}

/// Baseline: the default /proc mount.
pub fn proc_mount(pod: &PodView<'_>) -> Option<Violation> {
    let d: Vec<String> = pod
        .containers()
        .iter()
        .filter_map(|c| {
            let m = sc(c, "procMount").and_then(Value::as_str)?;
            (m != "Default").then(|| format!("container {:?} must not set securityContext.procMount to {m:?}", c.name))
        })
        .collect();
    violation("procMount", d)
}

fn seccomp_type(v: Option<&Value>) -> Option<&str> {
    v.and_then(|p| p.get("type")).and_then(Value::as_str)
}

/// Baseline: seccomp may not be turned off.
pub fn seccomp_baseline(pod: &PodView<'_>) -> Option<Violation> {
    let mut d = Vec::new();
    if seccomp_type(pod.pod_sc("seccompProfile")) == Some("Unconfined") {
        d.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string());
    }
    let names = names_where(pod, |c| seccomp_type(sc(c, "seccompProfile")) == Some("Unconfined"));
    if !names.is_empty() {
        d.push(format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&as_strs(&names))
        ));
    }
    violation("seccompProfile", d)
}

/// The sysctls baseline allows.
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Baseline: only the safe sysctls.
pub fn sysctls(pod: &PodView<'_>) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .pod_sc("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .collect();
    violation("forbidden sysctls", if bad.is_empty() { vec![] } else { vec![bad.join(", ")] })
}

fn volumes<'a>(pod: &PodView<'a>) -> impl Iterator<Item = &'a Value> {
    pod.spec.get("volumes").and_then(Value::as_array).into_iter().flatten()
}

fn volume_name(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or_default()
}

/// Volume types restricted allows.
pub const RESTRICTED_VOLUMES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// Restricted: only the listed volume types.
pub fn restricted_volumes(pod: &PodView<'_>) -> Option<Violation> {
    let d: Vec<String> = volumes(pod)
        .filter_map(|v| {
            let kind = v.as_object()?.keys().find(|k| *k != "name")?;
            (!RESTRICTED_VOLUMES.contains(&kind.as_str()))
                .then(|| format!("volume {:?} uses restricted volume type {kind:?}", volume_name(v)))
        })
        .collect();
    violation("restricted volume types", d)
}

/// Restricted: `allowPrivilegeEscalation: false` in every container.
pub fn allow_privilege_escalation(pod: &PodView<'_>) -> Option<Violation> {
    let bad = names_where(pod, |c| sc(c, "allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false));
    let d = if bad.is_empty() {
        vec![]
    } else {
        vec![format!("{} must set securityContext.allowPrivilegeEscalation=false", containers_phrase(&as_strs(&bad)))]
    };
    violation("allowPrivilegeEscalation != false", d)
}

/// Restricted: `runAsNonRoot: true` on the pod or every container, and never false.
pub fn run_as_non_root(pod: &PodView<'_>) -> Option<Violation> {
    let pod_value = pod.pod_sc("runAsNonRoot").and_then(Value::as_bool);
    let mut d = Vec::new();
    if pod_value == Some(false) {
        d.push("pod must not set securityContext.runAsNonRoot=false".to_string());
    }
    let explicit_false = names_where(pod, |c| sc(c, "runAsNonRoot").and_then(Value::as_bool) == Some(false));
    if !explicit_false.is_empty() {
        d.push(format!(
            "{} must not set securityContext.runAsNonRoot=false",
            containers_phrase(&as_strs(&explicit_false))
        ));
    }
    if pod_value != Some(true) {
        let unset = names_where(pod, |c| sc(c, "runAsNonRoot").and_then(Value::as_bool).is_none());
        if !unset.is_empty() {
            d.push(format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&as_strs(&unset))
            ));
        }
    }
    violation("runAsNonRoot != true", d)
}

/// Restricted: never `runAsUser: 0`.
pub fn run_as_user(pod: &PodView<'_>) -> Option<Violation> {
    let mut d = Vec::new();
    if pod.pod_sc("runAsUser").and_then(Value::as_i64) == Some(0) {
        d.push("pod must not set runAsUser=0".to_string());
    }
    let bad = names_where(pod, |c| sc(c, "runAsUser").and_then(Value::as_i64) == Some(0));
    if !bad.is_empty() {
        d.push(format!("{} must not set runAsUser=0", containers_phrase(&as_strs(&bad))));
    }
    violation("runAsUser=0", d)
}

/// Restricted: seccomp `RuntimeDefault` or `Localhost`, on the pod or every container.
pub fn seccomp_restricted(pod: &PodView<'_>) -> Option<Violation> {
    let ok = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
    let pod_type = seccomp_type(pod.pod_sc("seccompProfile"));
    let mut d = Vec::new();
    if pod_type.is_some() && !ok(pod_type) {
        d.push(format!("pod must not set securityContext.seccompProfile.type to {:?}", pod_type.unwrap_or_default()));
    }
    let bad_explicit = names_where(pod, |c| seccomp_type(sc(c, "seccompProfile")).is_some_and(|t| !ok(Some(t))));
    if !bad_explicit.is_empty() {
        d.push(format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&as_strs(&bad_explicit))
        ));
    }
    if !ok(pod_type) {
        let unset = names_where(pod, |c| seccomp_type(sc(c, "seccompProfile")).is_none());
        if !unset.is_empty() {
            d.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&as_strs(&unset))
            ));
        }
    }
    violation("seccompProfile", d)
}

/// Restricted: drop `ALL` capabilities, add at most `NET_BIND_SERVICE`.
pub fn capabilities_restricted(pod: &PodView<'_>) -> Option<Violation> {
    let no_drop_all = names_where(pod, |c| {
        !sc(c, "capabilities")
            .and_then(|k| k.get("drop"))
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
    });
    let mut d = Vec::new();
    if !no_drop_all.is_empty() {
        d.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&as_strs(&no_drop_all))
        ));
    }
    d.extend(caps_not_in(pod, &["NET_BIND_SERVICE"]));
    violation("unrestricted capabilities", d)
}

//! Seccomp for containers: which profile a container gets (its own `securityContext.seccompProfile`, else the
//! pod's, else the node's default), and the OCI `linux.seccomp` of the `RuntimeDefault` profile for the
//! container's capabilities and the node's architecture.
//!
//! `RuntimeDefault` is the Docker/containerd default: the vendored profile of the `containers` projects
//! (`agent/vendor/seccomp/default.json`) with the restrictions Docker's has and it leaves to capabilities alone —
//! namespace, mount, module, reboot, clock and similar calls need the capability that governs them
//! ([`CAP_GATED`]), `clone` may not make namespaces and `clone3` is `ENOSYS` without `CAP_SYS_ADMIN`, and the
//! keyring calls (not namespaced) are refused.

use std::path::{Component, Path};

use serde_json::{Value, json};

/// The vendored default profile, parsed once.
static DEFAULT_PROFILE: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    serde_json::from_str(include_str!("../../vendor/seccomp/default.json")).expect("the vendored profile is JSON")
});

/// A container's seccomp profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// No filter.
    Unconfined,
    /// The container runtime's default filter.
    RuntimeDefault,
    /// A profile file under the node's seccomp directory.
    Localhost(String),
}

fn parse(v: Option<&Value>) -> Option<Profile> {
    let v = v?;
    match v.get("type").and_then(Value::as_str)? {
        "Unconfined" => Some(Profile::Unconfined),
        "RuntimeDefault" => Some(Profile::RuntimeDefault),
        "Localhost" => Some(Profile::Localhost(v.get("localhostProfile").and_then(Value::as_str)?.to_string())),
        _ => None,
    }
}

/// The profile of a container: its own, else the pod's, else `RuntimeDefault` when the node defaults to it
/// (kubelet's `--seccomp-default`), else none. Privileged containers are never filtered, as upstream.
pub fn choose(pod_sc: Option<&Value>, container_sc: Option<&Value>, privileged: bool, node_default: bool) -> Profile {
    if privileged {
        return Profile::Unconfined;
    }
    let field = |sc: Option<&Value>| parse(sc.and_then(|s| s.get("seccompProfile")));
    field(container_sc).or_else(|| field(pod_sc)).unwrap_or(if node_default {
        Profile::RuntimeDefault
    } else {
        Profile::Unconfined
    })
}

/// Calls allowed only to containers holding the capability (Docker's and containerd's default gates them so).
pub const CAP_GATED: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
];

/// Calls never allowed: the kernel keyring is not namespaced.
pub const NEVER: &[&str] = &["add_key", "keyctl", "request_key"];

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
const EPERM: u64 = 1;
const ENOSYS: u64 = 38;

/// The architecture name the profile's `arches` use for this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        other => other,
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// The OCI `linux.seccomp` of the `RuntimeDefault` profile for a container with capabilities `caps`
/// (`CAP_…` names) on architecture `arch` (`amd64`): the rules whose `includes` all hold and whose `excludes` do
/// not, as Docker's and containerd's loaders keep them.
pub fn runtime_default(caps: &[String], arch: &str) -> Value {
    let profile: &Value = &DEFAULT_PROFILE;
    let scmp_arch = match arch {
        "amd64" => "SCMP_ARCH_X86_64",
        "arm64" => "SCMP_ARCH_AARCH64",
        _ => "",
    };
    let mut architectures = Vec::new();
    for m in profile.get("archMap").and_then(Value::as_array).into_iter().flatten() {
        if m.get("architecture").and_then(Value::as_str) == Some(scmp_arch) {
            architectures.push(scmp_arch.to_string());
            architectures.extend(strings(m.get("subArchitectures")).into_iter().map(str::to_string));
        }
    }
    let has_cap = |c: &str| caps.iter().any(|x| x == c);
    // calls the container may not make: gated on capabilities it lacks, and the never-allowed ones
    let refused: Vec<&str> = CAP_GATED
        .iter()
        .filter(|(cap, _)| !has_cap(cap))
        .flat_map(|(_, calls)| calls.iter().copied())
        .chain(NEVER.iter().copied())
        .filter(|c| !(*c == "syslog" && has_cap("CAP_SYSLOG")))
        .collect();
    let admin = has_cap("CAP_SYS_ADMIN");
    let mut syscalls = Vec::new();
    for rule in profile.get("syscalls").and_then(Value::as_array).into_iter().flatten() {
        let inc = rule.get("includes");
        let exc = rule.get("excludes");
        let inc_caps = strings(inc.and_then(|i| i.get("caps")));
        let inc_arches = strings(inc.and_then(|i| i.get("arches")));
        let exc_caps = strings(exc.and_then(|e| e.get("caps")));
        let exc_arches = strings(exc.and_then(|e| e.get("arches")));
        let included = inc_caps.iter().all(|c| has_cap(c)) && (inc_arches.is_empty() || inc_arches.contains(&arch));
        let excluded = exc_caps.iter().any(|c| has_cap(c)) || exc_arches.contains(&arch);
        if !included || excluded {
            continue;
        }
        let allow = rule.get("action").and_then(Value::as_str) == Some("SCMP_ACT_ALLOW");
        let names: Vec<&str> = strings(rule.get("names"))
            .into_iter()
            .filter(|n| !(allow && (refused.contains(n) || (*n == "clone" && !admin))))
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut out = json!({"names": names, "action": rule["action"]});
        if let Some(args) = rule.get("args").filter(|a| a.as_array().is_some_and(|a| !a.is_empty())) {
            out["args"] = args.clone();
        }
        if let Some(e) = rule.get("errnoRet") {
            out["errnoRet"] = e.clone();
        }
        syscalls.push(out);
    }
    if !refused.is_empty() {
        syscalls.push(json!({"names": refused, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}));
    }
    if !admin {
        // clone without namespace flags (the flags are argument 0, except on s390)
        let index = if arch.starts_with("s390") { 1 } else { 0 };
        syscalls.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": index, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}));
        // clone3 cannot be filtered by flags: ENOSYS makes C libraries fall back to clone
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    let mut s =
        json!({"defaultAction": profile["defaultAction"], "architectures": architectures, "syscalls": syscalls});
    if let Some(e) = profile.get("defaultErrnoRet") {
        s["defaultErrnoRet"] = e.clone();
    }
    s
}

/// Reads a `Localhost` profile (`name` relative to `dir`, no `..`); it must be an OCI seccomp object.
pub fn localhost(dir: &Path, name: &str) -> Result<Value, String> {
    let rel = Path::new(name);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("localhostProfile {name:?} must be a relative path without \"..\""));
    }
    let path = dir.join(rel);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
    if v.get("defaultAction").and_then(Value::as_str).is_none() {
        return Err(format!("seccomp profile {} has no defaultAction", path.display()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &Value) -> Vec<String> {
        s["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
            .flat_map(|r| {
                r["names"].as_array().expect("names").iter().map(|n| n.as_str().unwrap_or_default().to_string())
            })
            .collect()
    }

    #[test]
    fn the_default_allows_the_usual_calls_and_gates_the_dangerous_ones_on_capabilities() {
        let plain = runtime_default(&["CAP_CHOWN".into()], "amd64");
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(plain["architectures"], json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        let allowed = names(&plain);
        for call in ["read", "write", "openat", "clone", "execve", "arch_prctl"] {
            assert!(allowed.iter().any(|n| n == call), "{call} is allowed");
        }
        for call in ["mount", "unshare", "setns", "bpf", "kexec_load", "init_module", "reboot", "keyctl", "kcmp"] {
            assert!(!allowed.iter().any(|n| n == call), "{call} is refused without its capability");
        }
        // clone only without namespace flags; clone3 answers ENOSYS
        let clone = plain["syscalls"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["names"] == json!(["clone"]))
            .expect("clone");
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], json!(CLONE_NAMESPACE_FLAGS));
        let admin = names(&runtime_default(&["CAP_SYS_ADMIN".into()], "amd64"));
        assert!(
            admin.iter().any(|n| n == "mount")
                && admin.iter().any(|n| n == "unshare")
                && admin.iter().any(|n| n == "clone")
        );
        assert!(!admin.iter().any(|n| n == "keyctl"), "never, whatever the capabilities");
        let boot = names(&runtime_default(&["CAP_SYS_BOOT".into()], "amd64"));
        assert!(boot.iter().any(|n| n == "reboot"));
        let arm = names(&runtime_default(&[], "arm64"));
        assert!(!arm.iter().any(|n| n == "arch_prctl"), "x86-only calls are kept off other architectures");
    }

    #[test]
    fn the_container_wins_over_the_pod_and_the_node_default_applies_last() {
        let rd = serde_json::json!({"seccompProfile": {"type": "RuntimeDefault"}});
        let unconfined = serde_json::json!({"seccompProfile": {"type": "Unconfined"}});
        let local = serde_json::json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}});
        assert_eq!(choose(Some(&rd), Some(&unconfined), false, false), Profile::Unconfined);
        assert_eq!(choose(Some(&rd), None, false, false), Profile::RuntimeDefault);
        assert_eq!(choose(None, Some(&local), false, false), Profile::Localhost("p.json".into()));
        assert_eq!(choose(None, None, false, true), Profile::RuntimeDefault);
        assert_eq!(choose(None, None, false, false), Profile::Unconfined);
        assert_eq!(choose(Some(&rd), Some(&rd), true, true), Profile::Unconfined, "privileged is never filtered");
    }

    #[test]
    fn localhost_profiles_stay_in_their_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ok.json"), r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#).expect("write");
        assert!(localhost(dir.path(), "ok.json").is_ok());
        assert!(localhost(dir.path(), "../etc/passwd").is_err());
        assert!(localhost(dir.path(), "/etc/passwd").is_err());
        assert!(localhost(dir.path(), "missing.json").is_err());
    }
}

//! The OCI runtime configuration (`config.json`) of a container, as a pure function of what the pod asks for.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Value, json};

/// The capabilities a container gets by default (containerd's default set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability (for privileged containers).
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A bind mount into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Container path.
    pub destination: String,
    /// Read-only.
    pub read_only: bool,
}

/// Resource limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit in millicores (CFS quota over a 100 ms period).
    pub cpu_limit_milli: Option<i64>,
    /// CPU request in millicores (shares).
    pub cpu_request_milli: Option<i64>,
}

/// Everything that decides a container's `config.json`.
#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// uid, gid and supplementary groups.
    pub user: (u32, u32, Vec<u32>),
    /// The pod's host name.
    pub hostname: String,
    /// The root file system (already mounted).
    pub rootfs: PathBuf,
    /// Read-only root file system.
    pub readonly_rootfs: bool,
    /// Bind mounts, in order.
    pub mounts: Vec<BindMount>,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// Relative cgroup path.
    pub cgroups_path: String,
    /// Limits.
    pub limits: Limits,
    /// Capabilities added.
    pub cap_add: Vec<String>,
    /// Capabilities dropped (`ALL` drops every one).
    pub cap_drop: Vec<String>,
    /// Privileged container.
    pub privileged: bool,
    /// `no_new_privs`.
    pub no_new_privileges: bool,
    /// Allocate a terminal for the main process.
    pub terminal: bool,
    /// `/proc/self/oom_score_adj`.
    pub oom_score_adj: i32,
    /// The OCI `linux.seccomp` filter, if any.
    pub seccomp: Option<Value>,
}

/// Normalises `net_admin` / `NET_ADMIN` / `CAP_NET_ADMIN` to `CAP_NET_ADMIN`.
pub fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") { up } else { format!("CAP_{up}") }
}

/// The effective capability set.
pub fn capabilities(cfg: &ContainerConfig) -> Vec<String> {
    if cfg.privileged {
        return ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    }
    let drop_all = cfg.cap_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut set: BTreeSet<String> =
        if drop_all { BTreeSet::new() } else { DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect() };
    for c in &cfg.cap_drop {
        set.remove(&cap_name(c));
    }
    for c in &cfg.cap_add {
        if c.eq_ignore_ascii_case("ALL") {
            set.extend(ALL_CAPABILITIES.iter().map(|s| s.to_string()));
        } else {
            set.insert(cap_name(c));
        }
    }
    set.into_iter().collect()
}

/// The CFS quota (µs per 100 ms period) for a CPU limit.
pub fn cpu_quota(milli: i64) -> i64 {
    (milli * 100_000 / 1000).max(1000)
}

/// The v1 cpu shares for a CPU request (Kubernetes' formula, minimum 2).
pub fn cpu_shares(milli: i64) -> u64 {
    u64::try_from((milli * 1024 / 1000).max(2)).unwrap_or(2)
}

/// Containers' open-file limit: 1,048,576 as containerd gives, capped by the agent's own hard limit (raising it
/// needs CAP_SYS_RESOURCE, which some hosts withhold even from root: runc then fails with EPERM).
pub fn nofile_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let hard =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1_048_576, |(_, h)| h);
        hard.min(1_048_576)
    })
}

/// The `config.json` of a container.
pub fn oci_config(cfg: &ContainerConfig) -> Value {
    let caps = capabilities(cfg);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &cfg.mounts {
        let mut options = vec!["rbind", "rprivate"];
        if m.read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": options}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(mem) = cfg.limits.memory {
        resources["memory"] = json!({"limit": mem, "swap": mem});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(l) = cfg.limits.cpu_limit_milli {
        cpu.insert("quota".into(), json!(cpu_quota(l)));
        cpu.insert("period".into(), json!(100_000));
    }
    let shares = cfg.limits.cpu_request_milli.or(cfg.limits.cpu_limit_milli).map(cpu_shares).unwrap_or(2);
    cpu.insert("shares".into(), json!(shares));
    resources["cpu"] = Value::Object(cpu);
    let (masked, readonly): (Vec<&str>, Vec<&str>) = if cfg.privileged {
        (vec![], vec![])
    } else {
        (
            vec![
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            vec!["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        )
    };
    let mut out = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": cfg.terminal,
            "user": {"uid": cfg.user.0, "gid": cfg.user.1, "additionalGids": cfg.user.2},
            "args": cfg.args,
            "env": cfg.env,
            "cwd": if cfg.cwd.is_empty() { "/" } else { cfg.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile_limit(), "soft": nofile_limit()}],
            "noNewPrivileges": cfg.no_new_privileges,
            "oomScoreAdj": cfg.oom_score_adj,
        },
        "root": {"path": cfg.rootfs, "readonly": cfg.readonly_rootfs},
        "hostname": cfg.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cfg.cgroups_path,
            "resources": resources,
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": cfg.netns},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "cgroup"},
            ],
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    });
    if let Some(s) = &cfg.seccomp {
        out["linux"]["seccomp"] = s.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ContainerConfig {
        ContainerConfig {
            args: vec!["sleep".into(), "1".into()],
            rootfs: "/r".into(),
            netns: "/n".into(),
            cgroups_path: "skiff/podu/c".into(),
            ..Default::default()
        }
    }

    #[test]
    fn dropping_all_capabilities_then_adding_one_leaves_only_that_one() {
        let mut c = base();
        c.cap_drop = vec!["ALL".into()];
        c.cap_add = vec!["net_bind_service".into()];
        assert_eq!(capabilities(&c), vec!["CAP_NET_BIND_SERVICE".to_string()]);
    }

    #[test]
    fn dropping_one_capability_keeps_the_rest_of_the_defaults() {
        let mut c = base();
        c.cap_drop = vec!["NET_RAW".into()];
        let caps = capabilities(&c);
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() - 1);
    }

    #[test]
    fn limits_become_memory_limit_cfs_quota_and_shares() {
        let mut c = base();
        c.limits = Limits { memory: Some(64 << 20), cpu_limit_milli: Some(250), cpu_request_milli: Some(100) };
        let v = oci_config(&c);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], json!(64 << 20));
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], json!(25_000));
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], json!(100_000));
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], json!(102));
    }

    #[test]
    fn the_network_namespace_is_joined_by_path_and_mounts_keep_their_order() {
        let mut c = base();
        c.mounts = vec![
            BindMount { source: "/a".into(), destination: "/etc/hosts".into(), read_only: false },
            BindMount { source: "/b".into(), destination: "/data".into(), read_only: true },
        ];
        let v = oci_config(&c);
        let ns = v["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(ns.contains(&json!({"type": "network", "path": "/n"})));
        let mounts = v["mounts"].as_array().expect("mounts");
        let n = mounts.len();
        assert_eq!(mounts[n - 2]["destination"], json!("/etc/hosts"));
        assert_eq!(mounts[n - 1]["options"], json!(["rbind", "rprivate", "ro"]));
    }
}

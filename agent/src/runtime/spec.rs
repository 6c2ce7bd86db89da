//! The OCI runtime configuration (`config.json`) of a container, as a pure function of what the pod asks for, built
//! from the typed `oci-spec` values.

use std::collections::BTreeSet;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources,
    LinuxResourcesBuilder, LinuxSeccomp, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use serde_json::Value;

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
    /// The pod's network namespace (`None`: the node's, for `hostNetwork` pods).
    pub netns: Option<PathBuf>,
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

/// Why a container's `config.json` could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A capability name the kernel does not know.
    #[error("unknown capability {0:?}")]
    Capability(String),
    /// A seccomp profile that is not a valid OCI `linux.seccomp`.
    #[error("invalid seccomp profile: {0}")]
    Seccomp(serde_json::Error),
    /// A part of the spec was incomplete (a bug in this module).
    #[error("building {part}: {message}")]
    Build {
        /// Which part.
        part: &'static str,
        /// The builder's complaint.
        message: String,
    },
}

/// Turns a builder's error into a [`SpecError`] naming the part.
fn part<T>(name: &'static str) -> impl FnOnce(T) -> SpecError
where
    T: std::fmt::Display,
{
    move |e| SpecError::Build { part: name, message: e.to_string() }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

/// A mount of a kernel file system (`proc`, `tmpfs`, …) at `destination`.
fn kernel_mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    let mut b = MountBuilder::default().destination(destination).typ(typ).source(source);
    if !options.is_empty() {
        b = b.options(strings(options));
    }
    b.build().map_err(part("a mount"))
}

/// The file systems every container gets, as containerd gives them.
fn base_mounts() -> Result<Vec<Mount>, SpecError> {
    [
        kernel_mount("/proc", "proc", "proc", &[]),
        kernel_mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        kernel_mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        kernel_mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        kernel_mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        kernel_mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        kernel_mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]),
    ]
    .into_iter()
    .collect()
}

fn bind_mount(m: &BindMount) -> Result<Mount, SpecError> {
    let mut options = strings(&["rbind", "rprivate"]);
    if m.read_only {
        options.push("ro".into());
    }
    MountBuilder::default()
        .destination(&m.destination)
        .typ("bind")
        .source(&m.source)
        .options(options)
        .build()
        .map_err(part("a bind mount"))
}

fn resources(limits: &Limits) -> Result<LinuxResources, SpecError> {
    let deny_devices =
        LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(part("device rules"))?;
    let shares = limits.cpu_request_milli.or(limits.cpu_limit_milli).map(cpu_shares).unwrap_or(2);
    let mut cpu = LinuxCpuBuilder::default().shares(shares);
    if let Some(l) = limits.cpu_limit_milli {
        cpu = cpu.quota(cpu_quota(l)).period(100_000u64);
    }
    let mut b =
        LinuxResourcesBuilder::default().devices(vec![deny_devices]).cpu(cpu.build().map_err(part("cpu limits"))?);
    if let Some(mem) = limits.memory {
        b = b.memory(LinuxMemoryBuilder::default().limit(mem).swap(mem).build().map_err(part("memory limits"))?);
    }
    b.build().map_err(part("resources"))
}

fn namespaces(netns: Option<&PathBuf>) -> Result<Vec<LinuxNamespace>, SpecError> {
    let plain = |typ| LinuxNamespaceBuilder::default().typ(typ).build().map_err(part("a namespace"));
    let mut out = vec![plain(LinuxNamespaceType::Pid)?];
    if let Some(path) = netns {
        let net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(path.clone());
        out.push(net.build().map_err(part("the network namespace"))?);
    }
    for typ in [LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount, LinuxNamespaceType::Cgroup]
    {
        out.push(plain(typ)?);
    }
    Ok(out)
}

fn process(cfg: &ContainerConfig) -> Result<Process, SpecError> {
    let caps = capabilities(cfg)
        .into_iter()
        .map(|c| c.strip_prefix("CAP_").and_then(|n| n.parse::<Capability>().ok()).ok_or(SpecError::Capability(c)))
        .collect::<Result<Capabilities, _>>()?;
    // (the builder's defaults would give inheritable and ambient capabilities: a process that is not root keeps
    // none, as under containerd)
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(part("capabilities"))?;
    let user = UserBuilder::default()
        .uid(cfg.user.0)
        .gid(cfg.user.1)
        .additional_gids(cfg.user.2.clone())
        .build()
        .map_err(part("the user"))?;
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(nofile_limit())
        .soft(nofile_limit())
        .build()
        .map_err(part("rlimits"))?;
    ProcessBuilder::default()
        .terminal(cfg.terminal)
        .user(user)
        .args(cfg.args.clone())
        .env(cfg.env.clone())
        .cwd(if cfg.cwd.is_empty() { "/" } else { cfg.cwd.as_str() })
        .capabilities(capabilities)
        .rlimits(vec![nofile])
        .no_new_privileges(cfg.no_new_privileges)
        .oom_score_adj(cfg.oom_score_adj)
        .build()
        .map_err(part("the process"))
}

/// The paths masked and made read-only in an unprivileged container (containerd's lists).
const MASKED_PATHS: &[&str] = &[
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
];
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The OCI runtime spec (`config.json`) of a container, typed; an unknown capability or an invalid seccomp profile
/// is an error, not a runc failure at start.
pub fn oci_config(cfg: &ContainerConfig) -> Result<Spec, SpecError> {
    let mut mounts = base_mounts()?;
    for m in &cfg.mounts {
        mounts.push(bind_mount(m)?);
    }
    let (masked, readonly) =
        if cfg.privileged { (vec![], vec![]) } else { (strings(MASKED_PATHS), strings(READONLY_PATHS)) };
    let mut linux = LinuxBuilder::default()
        .cgroups_path(PathBuf::from(&cfg.cgroups_path))
        .resources(resources(&cfg.limits)?)
        .namespaces(namespaces(cfg.netns.as_ref())?)
        .masked_paths(masked)
        .readonly_paths(readonly);
    if let Some(s) = &cfg.seccomp {
        linux = linux.seccomp(serde_json::from_value::<LinuxSeccomp>(s.clone()).map_err(SpecError::Seccomp)?);
    }
    let root = RootBuilder::default()
        .path(cfg.rootfs.clone())
        .readonly(cfg.readonly_rootfs)
        .build()
        .map_err(part("the root"))?;
    SpecBuilder::default()
        .version("1.0.2")
        .process(process(cfg)?)
        .root(root)
        .hostname(cfg.hostname.clone())
        .mounts(mounts)
        .linux(linux.build().map_err(part("linux"))?)
        .build()
        .map_err(part("the spec"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_of(c: &ContainerConfig) -> Value {
        serde_json::to_value(oci_config(c).expect("spec")).expect("json")
    }

    fn base() -> ContainerConfig {
        ContainerConfig {
            args: vec!["sleep".into(), "1".into()],
            rootfs: "/r".into(),
            netns: Some("/n".into()),
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
    fn no_capability_is_inheritable_or_ambient() {
        let mut c = base();
        c.cap_add = vec!["NET_ADMIN".into()];
        let v = json_of(&c);
        let caps = &v["process"]["capabilities"];
        assert_eq!(caps["inheritable"], json!([]));
        assert_eq!(caps["ambient"], json!([]));
        assert!(caps["effective"].as_array().is_some_and(|a| a.contains(&json!("CAP_NET_ADMIN"))));
        c.cap_drop = vec!["ALL".into()];
        c.cap_add = vec![];
        let v = json_of(&c);
        for set in ["bounding", "effective", "permitted", "inheritable", "ambient"] {
            assert_eq!(v["process"]["capabilities"][set], json!([]), "{set}");
        }
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
        let v = json_of(&c);
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
        let v = json_of(&c);
        let ns = v["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(ns.contains(&json!({"type": "network", "path": "/n"})));
        let mounts = v["mounts"].as_array().expect("mounts");
        let n = mounts.len();
        assert_eq!(mounts[n - 2]["destination"], json!("/etc/hosts"));
        assert_eq!(mounts[n - 1]["options"], json!(["rbind", "rprivate", "ro"]));
    }

    #[test]
    fn a_host_network_container_joins_no_network_namespace() {
        let mut c = base();
        c.netns = None;
        let v = json_of(&c);
        let types: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert_eq!(types, ["pid", "ipc", "uts", "mount", "cgroup"]);
    }

    #[test]
    fn an_unknown_capability_or_a_bad_seccomp_profile_is_refused_before_runc() {
        let mut c = base();
        c.cap_add = vec!["NOT_A_CAP".into()];
        assert!(matches!(oci_config(&c), Err(SpecError::Capability(n)) if n == "CAP_NOT_A_CAP"));
        let mut c = base();
        c.seccomp = Some(json!({"defaultAction": "SCMP_ACT_NOPE"}));
        assert!(matches!(oci_config(&c), Err(SpecError::Seccomp(_))));
    }

    #[test]
    fn the_runtime_default_seccomp_profile_is_a_valid_oci_filter() {
        let mut c = base();
        let arch = crate::runtime::seccomp::host_arch();
        c.seccomp = Some(crate::runtime::seccomp::runtime_default(&capabilities(&c), arch));
        let v = json_of(&c);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], json!("SCMP_ACT_ERRNO"));
        assert!(v["linux"]["seccomp"]["syscalls"].as_array().is_some_and(|s| s.len() > 10));
    }

    #[test]
    fn a_privileged_container_gets_every_capability_and_no_masked_paths() {
        let mut c = base();
        c.privileged = true;
        let v = json_of(&c);
        assert_eq!(v["process"]["capabilities"]["bounding"].as_array().map(Vec::len), Some(ALL_CAPABILITIES.len()));
        assert!(v["linux"].get("maskedPaths").is_none_or(|m| m == &json!([])));
    }
}

//! The one typed configuration of the agent.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Where the agent keeps its state by default.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/skiff/agent";
/// Where images are kept by default (shared by `skiff up`, `skiff agent`, `skiff image` and the tests).
pub const DEFAULT_IMAGE_STORE: &str = "/var/lib/skiff/images";
/// The default pids limit of a pod (a fork bomb stops there, not at the node's limit).
pub const DEFAULT_POD_MAX_PIDS: u64 = 16_384;
/// The kubelet port.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// The cluster's pod addresses (the API server hands out node pod CIDRs from it).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The cluster DNS Service address (kube-system/kube-dns).
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The version the agent reports as `nodeInfo.kubeletVersion`.
pub const KUBELET_VERSION: &str = "v1.32.4-skiff";

/// How to start the per-container shim: `program args… <shim flags>`.
#[derive(Clone, Debug)]
pub struct ShimCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the shim's own flags (e.g. `["agent", "shim"]` for the `skiff` binary).
    pub args: Vec<String>,
}

impl ShimCommand {
    /// The name of the small shim program built beside `skiff` (`cli/src/bin/skiff-shim.rs`).
    pub const PROGRAM: &'static str = "skiff-shim";

    /// `skiff-shim` beside the current executable when it is there, else the current executable with `agent shim`
    /// (what `skiff agent` and `skiff up` use).
    ///
    /// Both run the same code; the small program links nothing else, so each container's shim costs a few hundred
    /// KiB of private memory instead of the megabytes the big binary's relocated data and allocator take
    /// (docs/benchmarks.md, "Per-container cost").
    pub fn current_skiff() -> Self {
        Self::beside(&std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff")))
    }

    /// `skiff-shim` beside the `skiff` binary at `exe` when it is there, else `exe agent shim`.
    pub fn beside(exe: &std::path::Path) -> Self {
        let small = exe.with_file_name(Self::PROGRAM);
        if small.is_file() { Self::separate(small) } else { Self::embedded(exe.to_path_buf()) }
    }

    /// The shim as its own program at `program`.
    pub fn separate(program: PathBuf) -> Self {
        ShimCommand { program, args: Vec::new() }
    }

    /// The shim mode of the `skiff` binary at `program` (`skiff agent shim`).
    pub fn embedded(program: PathBuf) -> Self {
        ShimCommand { program, args: vec!["agent".into(), "shim".into()] }
    }
}

/// Restart back-off of crashing containers (CrashLoopBackOff) and of failing image pulls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first delay (Kubernetes: 10 s).
    pub initial: Duration,
    /// The cap (Kubernetes: 5 min).
    pub max: Duration,
    /// A container that ran this long without failing starts over at `initial` (Kubernetes: 10 min).
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// Settings of one node agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The Node's name.
    pub node_name: String,
    /// The node's InternalIP; detected from `interface` (or the first global IPv4 address) when `None`.
    pub node_ip: Option<Ipv4Addr>,
    /// The node's main interface (NodePort traffic, address detection).
    pub interface: Option<String>,
    /// State: pod records, container bundles, logs, network namespaces, IP allocations.
    pub data_dir: PathBuf,
    /// The shared image store (an OCI image layout).
    pub image_store: PathBuf,
    /// Static pod manifests, if any.
    pub manifests: Option<PathBuf>,
    /// Port of the kubelet-style HTTPS endpoint (logs, exec, metrics, resource metrics).
    pub kubelet_port: u16,
    /// Plain-HTTP Prometheus metrics address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// PEM of the cluster CA: client certificates on the kubelet port must be signed by it.
    pub ca_cert_pem: String,
    /// Name of the cgroup (in every hierarchy, relative to the agent's own) that holds this node's pods.
    pub cgroup_root: String,
    /// The runc executable.
    pub runc: PathBuf,
    /// How to start shims.
    pub shim: ShimCommand,
    /// Name of the pods' bridge in the node's network namespace.
    pub bridge: String,
    /// Cluster DNS address handed to pods and served by the agent.
    pub cluster_dns: Ipv4Addr,
    /// Cluster domain.
    pub cluster_domain: String,
    /// Serve cluster DNS (on the node IP and `cluster_dns`).
    pub serve_dns: bool,
    /// Where cluster DNS forwards names outside the cluster domain; `None`: the node's `/etc/resolv.conf`
    /// nameservers; an empty list: nowhere (such names are NXDOMAIN).
    pub dns_upstream: Option<Vec<std::net::SocketAddr>>,
    /// Registries reached over plain HTTP (`host:port`); `localhost` and `127.*` always are.
    pub insecure_registries: Vec<String>,
    /// Most pods on this node.
    pub max_pods: u32,
    /// CrashLoopBackOff policy.
    pub backoff: BackoffPolicy,
    /// Bytes after which a container log file is rotated.
    pub log_max_bytes: u64,
    /// Give containers without a seccomp profile the `RuntimeDefault` one (kubelet's `--seccomp-default`).
    pub seccomp_default: bool,
    /// Where `Localhost` seccomp profiles are (`<data dir>/seccomp` when `None`).
    pub seccomp_dir: Option<PathBuf>,
    /// Most processes (and threads) one pod may run (`pids.max` of its cgroup); `None`: unlimited.
    pub pod_max_pids: Option<u64>,
    /// When unused images are removed from the store.
    pub image_gc: crate::images::gc::GcPolicy,
}

impl AgentConfig {
    /// Defaults for node `node_name` trusting `ca_cert_pem`.
    pub fn new(node_name: impl Into<String>, ca_cert_pem: impl Into<String>) -> Self {
        AgentConfig {
            node_name: node_name.into(),
            node_ip: None,
            interface: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            image_store: PathBuf::from(DEFAULT_IMAGE_STORE),
            manifests: None,
            kubelet_port: DEFAULT_KUBELET_PORT,
            metrics_addr: None,
            ca_cert_pem: ca_cert_pem.into(),
            cgroup_root: "skiff".into(),
            runc: PathBuf::from("runc"),
            shim: ShimCommand::current_skiff(),
            bridge: "skiff0".into(),
            cluster_dns: CLUSTER_DNS,
            cluster_domain: "cluster.local".into(),
            serve_dns: true,
            dns_upstream: None,
            insecure_registries: Vec::new(),
            max_pods: 110,
            backoff: BackoffPolicy::default(),
            log_max_bytes: 10 * 1024 * 1024,
            seccomp_default: false,
            seccomp_dir: None,
            pod_max_pids: Some(DEFAULT_POD_MAX_PIDS),
            image_gc: crate::images::gc::GcPolicy::default(),
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), crate::AgentError> {
        let bad = |m: String| Err(crate::AgentError::Config(m));
        if let Err(m) = self.image_gc.validate() {
            return bad(m);
        }
        if self.node_name.is_empty() || self.node_name.len() > 253 {
            return bad(format!("invalid node name {:?}", self.node_name));
        }
        let valid_cg = !self.cgroup_root.is_empty()
            && self.cgroup_root.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !self.cgroup_root.starts_with('.');
        if !valid_cg {
            return bad(format!("--cgroup-root must be a plain name like `skiff`, not {:?}", self.cgroup_root));
        }
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            return bad(format!("bridge name {:?} must have 1 to 15 characters", self.bridge));
        }
        if !self.data_dir.is_absolute() || !self.image_store.is_absolute() {
            return bad("--data-dir and --image-store must be absolute paths".into());
        }
        if self.ca_cert_pem.trim().is_empty() {
            return bad("the cluster CA certificate is empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_shim_program_is_used_when_it_sits_beside_skiff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let skiff = dir.path().join("skiff");
        std::fs::write(&skiff, b"").expect("skiff");
        let alone = ShimCommand::beside(&skiff);
        assert_eq!(
            (alone.program.as_path(), alone.args.as_slice()),
            (skiff.as_path(), &["agent".into(), "shim".into()][..])
        );
        std::fs::write(dir.path().join("skiff-shim"), b"").expect("skiff-shim");
        let beside = ShimCommand::beside(&skiff);
        assert_eq!(beside.program, dir.path().join("skiff-shim"));
        assert!(beside.args.is_empty());
    }
}

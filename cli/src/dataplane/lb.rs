//! Runs the eBPF Service load balancer (skiff-lb, API mode) for this node: socket-level balancing for every pod (the
//! programs attach to the cgroup-v2 directory holding this node's pods), tc programs on the node interface for
//! NodePorts and pod egress masquerade, maps pinned under a per-node bpffs directory so they survive agent restarts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use skiff_lb::LbConfig;
use skiff_lb::desired::NodeIdentity;

/// The balancer's configuration for this node.
pub fn config(
    node: &str,
    ip: Ipv4Addr,
    pods_cgroup: PathBuf,
    interface: Option<String>,
    pin_dir: PathBuf,
    metrics: Option<SocketAddr>,
    masquerade: Option<skiff_lb::nat::Masquerade>,
) -> LbConfig {
    let mut cfg = LbConfig::new(NodeIdentity { name: node.to_string(), addresses: vec![ip] });
    cfg.pin_dir = pin_dir;
    cfg.cgroup = Some(pods_cgroup);
    cfg.interfaces = interface.into_iter().collect();
    cfg.metrics_addr = metrics;
    cfg.masquerade = masquerade;
    cfg
}

/// Runs the balancer until `shutdown` (maps and programs stay pinned: fail-static).
pub async fn run(client: kube::Client, cfg: LbConfig, shutdown: impl std::future::Future<Output = ()>) {
    if let Err(e) = cfg.validate() {
        tracing::error!(error = %e, "the load balancer configuration is invalid; running without it");
        return;
    }
    tracing::info!(pin_dir = %cfg.pin_dir.display(), cgroup = ?cfg.cgroup, "starting the service load balancer");
    if let Err(e) = skiff_lb::run_from_api(client, cfg, shutdown).await {
        tracing::error!(error = %e, "the service load balancer stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_balancer_attaches_to_the_pods_cgroup_of_this_node() {
        let cfg = config(
            "n1",
            Ipv4Addr::new(10, 0, 0, 11),
            "/sys/fs/cgroup/unified/skiff-n1".into(),
            Some("eth0".into()),
            "/sys/fs/bpf/skiff/n1".into(),
            None,
            None,
        );
        assert_eq!(cfg.cgroup.as_deref(), Some(std::path::Path::new("/sys/fs/cgroup/unified/skiff-n1")));
        assert_eq!(cfg.interfaces, vec!["eth0".to_string()]);
        assert_eq!(cfg.node.addresses, vec![Ipv4Addr::new(10, 0, 0, 11)]);
        assert!(cfg.validate().is_ok());
    }
}

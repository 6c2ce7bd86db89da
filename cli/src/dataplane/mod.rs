//! The node's eBPF dataplane as the agent runs it: the Service load balancer (skiff-lb, API mode) attached to the
//! cgroup of this node's pods and to the node interface, NetworkPolicy enforcement on the pods' veths, and L2
//! announcement of LoadBalancer addresses. The agent knows it only through [`skiff_agent::dataplane::Dataplane`];
//! this is where the two crates are wired together.

mod l2;
mod lb;
mod policy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use skiff_agent::dataplane::{Dataplane, NodeNetwork, PodPolicy, Running};

/// How the agent runs the eBPF dataplane for its node.
#[derive(Clone, Debug)]
pub struct Ebpf {
    /// bpffs directory its programs and maps are pinned under (`/sys/fs/bpf/skiff/<node>` by default).
    pub pin_dir: PathBuf,
    /// Where the balancer serves its own metrics, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The cgroup-v2 directory of the node's own processes (normally the hierarchy's root): they reach ClusterIPs
    /// and NodePorts through the socket hooks. `None`: pods only.
    pub node_cgroup: Option<PathBuf>,
    /// Pod egress masquerade (`None`: off).
    pub masquerade: Option<skiff_lb::nat::Masquerade>,
}

impl Dataplane for Ebpf {
    fn validate(&self) -> Result<(), String> {
        match &self.node_cgroup {
            Some(dir) if !dir.join("cgroup.controllers").exists() => {
                Err(format!("--lb-node-cgroup {}: not a cgroup-v2 directory", dir.display()))
            }
            _ => Ok(()),
        }
    }

    fn start(self: Box<Self>, node: NodeNetwork) -> Running {
        if let Some(m) = &self.masquerade
            && !m.cluster_cidr.contains(&node.pod_cidr)
        {
            tracing::warn!(pod_cidr = %node.pod_cidr, cluster_cidr = %m.cluster_cidr,
                "this node's pod CIDR is outside --cluster-cidr: its pods' traffic to the outside is not masqueraded");
        }
        // NetworkPolicy rides on the balancer's programs and maps, which it pins.
        let view = skiff_lb::policy::NodeView { name: node.node_name.clone(), host_addresses: node.host_addresses };
        let enforcement = policy::Policy::new(self.pin_dir.clone(), view, node.existing);
        let collectors: Vec<Box<dyn prometheus_client::collector::Collector>> =
            vec![Box::new(skiff_lb::policy::metrics::FlowCollector::new(self.pin_dir.clone(), enforcement.names()))];
        let mut tasks = vec![tokio::spawn(Arc::clone(&enforcement).run(node.client.clone()))];
        match &node.interface {
            Some(iface) => tasks.push(tokio::spawn(l2::run(
                node.client.clone(),
                node.node_name.clone(),
                iface.clone(),
                self.pin_dir.clone(),
            ))),
            None => tracing::warn!(node_ip = %node.node_ip,
                "no interface holds the node address: no NodePort from outside, no pod egress masquerade"),
        }
        let mut config = lb::config(
            &node.node_name,
            node.node_ip,
            node.pods_cgroup,
            node.interface,
            self.pin_dir,
            self.metrics_addr,
            self.masquerade,
        );
        config.node_cgroup = self.node_cgroup;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let balancer = tokio::spawn(lb::run(node.client, config, async move {
            let _ = stop_rx.await;
        }));
        let policy: Arc<dyn PodPolicy> = enforcement;
        Running {
            policy: Some(policy),
            collectors,
            tasks,
            stop: Some(Box::pin(async move {
                let _ = stop_tx.send(());
                let _ = balancer.await;
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_cgroup_that_is_not_a_cgroup_is_refused_at_start() {
        let mut d = Ebpf {
            pin_dir: "/sys/fs/bpf/skiff/n1".into(),
            metrics_addr: None,
            node_cgroup: Some("/nonexistent/cgroup".into()),
            masquerade: None,
        };
        let err = d.validate().expect_err("refused");
        assert!(err.contains("--lb-node-cgroup /nonexistent/cgroup: not a cgroup-v2 directory"), "{err}");
        d.node_cgroup = None;
        assert!(d.validate().is_ok());
    }
}

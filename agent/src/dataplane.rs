//! What the agent asks of the node's dataplane (the eBPF Service load balancer, NetworkPolicy enforcement and L2
//! announcements): the agent does not build it, so it does not depend on the load balancer crate; the binary that
//! wires a node together passes an implementation to [`crate::run`].

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;

use crate::network::PodNet;

/// NetworkPolicy as the pod workers and the kubelet endpoint see it.
pub trait PodPolicy: Send + Sync + std::fmt::Debug {
    /// Puts a new pod under policy before any of its containers starts; an error means "try again later" (the pod
    /// must not start unrestricted).
    fn admit<'a>(&'a self, uid: &'a str, pod: &'a Pod, net: &'a PodNet) -> BoxFuture<'a, Result<(), String>>;
    /// Takes a pod that is going away out of policy.
    fn forget(&self, uid: &str);
    /// Recent verdicts, oldest first, one line each (`GET /policy/verdicts`).
    fn recent_verdicts(&self) -> Vec<String>;
}

/// The node as the agent has set it up, for the dataplane to start on.
#[derive(Clone)]
pub struct NodeNetwork {
    /// The node's API client.
    pub client: kube::Client,
    /// The node's name.
    pub node_name: String,
    /// The node's address.
    pub node_ip: Ipv4Addr,
    /// This node's pod CIDR.
    pub pod_cidr: ipnet::Ipv4Net,
    /// The addresses of the node itself as its pods see it (node address, bridge gateway, cluster DNS address
    /// when the agent serves it): policy treats traffic from them as the node's.
    pub host_addresses: Vec<Ipv4Addr>,
    /// The cgroup-v2 directory holding this node's pods.
    pub pods_cgroup: PathBuf,
    /// The interface holding the node address, if one does.
    pub interface: Option<String>,
    /// The pods whose networks already exist (uid → network, from the pod records): an agent restart keeps them
    /// under policy.
    pub existing: Vec<(String, PodNet)>,
}

impl std::fmt::Debug for NodeNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeNetwork")
            .field("node_name", &self.node_name)
            .field("node_ip", &self.node_ip)
            .field("pod_cidr", &self.pod_cidr)
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

/// A started dataplane.
#[derive(Default)]
pub struct Running {
    /// NetworkPolicy enforcement, when the dataplane enforces it.
    pub policy: Option<Arc<dyn PodPolicy>>,
    /// Metrics the agent's `/metrics` serves for it.
    pub collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
    /// Its tasks, aborted when the agent stops.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Ends it when the agent stops (awaited for at most a few seconds; pinned state stays: fail-static).
    pub stop: Option<BoxFuture<'static, ()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("policy", &self.policy)
            .field("collectors", &self.collectors.len())
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// A node dataplane the agent starts once its node is registered and its pod network is up.
pub trait Dataplane: Send {
    /// Checks the configuration before the agent does anything (a bad one is refused at start).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// Starts it on the runtime the agent runs on.
    fn start(self: Box<Self>, node: NodeNetwork) -> Running;
}

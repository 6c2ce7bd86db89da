//! Pods: for every pod, [`plan`] decides the next steps (sandbox, volumes, containers per restart policy with
//! back-off, termination) as a pure function, and one worker task per pod ([`worker`]) carries them out and writes
//! the status; the manager ([`manager`]) follows the API (pods with `spec.nodeName` = this node) and the manifest
//! directory, routes container exits to workers, and cleans up what no pod owns any more — only after a complete
//! list.

pub mod atomic;
pub mod backoff;
pub mod container;
pub mod env;
pub mod etc;
pub mod lifecycle;
pub mod manager;
pub mod mounts;
pub mod plan;
pub mod probe_schedule;
pub mod probes;
pub mod record;
pub mod static_pods;
pub mod status;
pub mod volumes;
pub mod watched;
pub mod worker;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::runtime::reflector::Store;

use crate::cgroups::Cgroups;
use crate::config::AgentConfig;
use crate::images::Images;
use crate::metrics::Metrics;
use crate::network::Network;
use crate::paths::Paths;
use crate::runtime::Runtime;

/// What a pod's worker is told.
#[derive(Debug)]
pub enum PodEvent {
    /// The pod object changed.
    Update(Arc<Pod>),
    /// The pod is gone from the API (or its manifest was removed).
    Removed,
    /// A container run (runc id) ended.
    Exited(String),
    /// A probe's verdict changed.
    Probe(probes::ProbeResult),
    /// A probe failed (for the `Unhealthy` event).
    ProbeFailed {
        /// Container name.
        container: String,
        /// Probe kind.
        kind: probes::ProbeKind,
        /// Why.
        message: String,
    },
    /// A ConfigMap or Secret the pod may use changed.
    Refresh,
    /// A container's postStart hook finished.
    PostStartDone {
        /// Container name.
        container: String,
        /// The run (runc id) it ran for.
        id: String,
        /// Why it failed, if it did.
        error: Option<String>,
    },
}

/// This node.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    /// Node name.
    pub name: String,
    /// InternalIP.
    pub ip: Ipv4Addr,
    /// Allocatable CPUs.
    pub cpus: u64,
    /// Allocatable memory.
    pub memory: u64,
}

/// The API objects pods read, from watches (no request per pod): Services cluster-wide (for the environment's
/// service variables), Secrets and ConfigMaps one by one, those the node's pods use ([`watched`]).
#[derive(Clone)]
pub struct Caches {
    /// Secrets and ConfigMaps of this node's pods.
    pub objects: Arc<watched::PodObjects>,
    /// Services.
    pub services: Store<Service>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Caches")
    }
}

/// [`env::Lookup`] over the caches for one namespace.
pub struct NamespaceLookup<'a> {
    /// The caches.
    pub caches: &'a Caches,
    /// The namespace.
    pub namespace: &'a str,
}

impl env::Lookup for NamespaceLookup<'_> {
    fn config_map(&self, name: &str) -> Option<ConfigMap> {
        self.caches.objects.config_maps.get(self.namespace, name).map(|c| (*c).clone())
    }
    fn secret(&self, name: &str) -> Option<Secret> {
        self.caches.objects.secrets.get(self.namespace, name).map(|s| (*s).clone())
    }
}

/// One container as the kubelet endpoint sees it.
#[derive(Clone, Debug, Default)]
pub struct ContainerView {
    /// runc id of the current run.
    pub id: Option<String>,
    /// Whether it runs.
    pub running: bool,
    /// The current run's log file.
    pub log: Option<PathBuf>,
    /// The previous run's log file.
    pub previous_log: Option<PathBuf>,
    /// Its cgroup, relative to the agent's.
    pub cgroup: Option<String>,
    /// The current run's bundle directory (where its attach socket is).
    pub bundle: Option<PathBuf>,
    /// Whether it was given a terminal (`tty: true`).
    pub tty: bool,
}

/// One pod as the kubelet endpoint sees it.
#[derive(Clone, Debug, Default)]
pub struct PodView {
    /// uid.
    pub uid: String,
    /// When the pod was created (metadata.creationTimestamp).
    pub created: Option<String>,
    /// Containers by name.
    pub containers: BTreeMap<String, ContainerView>,
    /// Its bound network namespace, once it has one (`None` for a `hostNetwork` pod or one not yet set up).
    pub netns: Option<PathBuf>,
    /// Whether it uses the node's network namespace.
    pub host_network: bool,
}

/// (namespace, name) → view.
pub type Views = Arc<RwLock<BTreeMap<(String, String), PodView>>>;

/// Everything workers share.
pub struct Ctx {
    /// Configuration.
    pub cfg: AgentConfig,
    /// Data directory layout.
    pub paths: Paths,
    /// API client.
    pub client: kube::Client,
    /// This node.
    pub node: NodeIdentity,
    /// Container runtime.
    pub runtime: Arc<dyn Runtime>,
    /// Images.
    pub images: Arc<Images>,
    /// Pod network.
    pub net: Arc<Network>,
    /// cgroup hierarchies.
    pub cgroups: Cgroups,
    /// Watched objects.
    pub caches: Caches,
    /// What the kubelet endpoint sees.
    pub views: Views,
    /// Metrics.
    pub metrics: Metrics,
    /// Events.
    pub recorder: skiff_client::events::Recorder,
    /// The node's own resolv.conf (for dnsPolicy Default).
    pub node_resolv: String,
    /// NetworkPolicy enforcement (none without the eBPF dataplane).
    pub policy: Option<Arc<dyn crate::dataplane::PodPolicy>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("node", &self.node).finish()
    }
}

impl Ctx {
    /// The cgroup (relative) of a pod.
    pub fn pod_cgroup(&self, uid: &str) -> String {
        format!("{}/pod{uid}", self.cfg.cgroup_root)
    }

    /// The cgroup (relative) of a container run.
    pub fn container_cgroup(&self, uid: &str, id: &str) -> String {
        format!("{}/pod{uid}/{id}", self.cfg.cgroup_root)
    }
}

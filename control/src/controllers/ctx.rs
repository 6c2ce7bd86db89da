//! What every controller's reconcile gets: the client, the shared stores, an event recorder, expectations, a clock
//! (injectable in tests) and the configuration.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, ResourceQuota, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::Store;
use skiff_client::events::Recorder;

use super::cached_pod::CachedPod;
use super::expectations::Expectations;
use super::informers::Informers;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> jiff::Timestamp;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// A clock tests move by hand.
#[derive(Debug)]
pub struct FakeClock(std::sync::Mutex<jiff::Timestamp>);

impl FakeClock {
    /// Starts at `t`.
    pub fn new(t: jiff::Timestamp) -> Self {
        FakeClock(std::sync::Mutex::new(t))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += jiff::SignedDuration::try_from(d).unwrap_or_default();
    }
}

impl Clock for FakeClock {
    fn now(&self) -> jiff::Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A node whose Lease was not renewed for this long is marked Unknown (and its pods NotReady).
    pub node_monitor_grace: Duration,
    /// How long pods without their own toleration stay on an unreachable or not-ready node before eviction.
    pub default_eviction_timeout: Duration,
    /// How often each HorizontalPodAutoscaler is evaluated.
    pub hpa_sync_period: Duration,
    /// LoadBalancer pool to create as the `kube-system/skiff-lb-pool` ConfigMap if it does not exist (CIDRs and
    /// ranges, checked by `skiff server` at start); without a pool, LoadBalancer Services get node addresses.
    pub lb_pool: Option<String>,
    /// Ports the nodes themselves listen on at their addresses; a LoadBalancer Service on node addresses may not
    /// use them.
    pub lb_reserved_ports: Vec<(u16, String)>,
    /// How often periodic controllers (CronJobs, node lifecycle, quotas) look again.
    pub resync: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace: Duration::from_secs(8),
            default_eviction_timeout: Duration::from_secs(5),
            hpa_sync_period: Duration::from_secs(15),
            lb_pool: None,
            lb_reserved_ports: default_reserved_ports(),
            resync: Duration::from_secs(10),
        }
    }
}

/// What a node listens on at its own address: ssh, DNS (the agent's cluster DNS), the ingress controller's
/// HTTP/HTTPS, the API server, the kubelet endpoint and the metrics ports of the agent, balancer and ingress.
pub fn default_reserved_ports() -> Vec<(u16, String)> {
    let tcp = [22u16, 53, 80, 443, 6443, 10249, 10250, 10254, 10255];
    let mut out: Vec<(u16, String)> = tcp.iter().map(|p| (*p, "TCP".to_string())).collect();
    out.push((53, "UDP".to_string()));
    out
}

/// The shared context of all controllers.
pub struct Ctx {
    /// The API client.
    pub client: kube::Client,
    /// Pods, found by name and grouped by controller.
    pub pods: super::pod_store::Store<CachedPod>,
    /// Nodes.
    pub nodes: Store<Node>,
    /// Namespaces.
    pub namespaces: Store<Namespace>,
    /// ReplicaSets.
    pub replica_sets: Store<ReplicaSet>,
    /// Deployments.
    pub deployments: Store<Deployment>,
    /// StatefulSets.
    pub stateful_sets: Store<StatefulSet>,
    /// DaemonSets.
    pub daemon_sets: Store<DaemonSet>,
    /// ControllerRevisions.
    pub revisions: Store<ControllerRevision>,
    /// Jobs.
    pub jobs: Store<Job>,
    /// CronJobs.
    pub cron_jobs: Store<CronJob>,
    /// Services.
    pub services: Store<Service>,
    /// EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// HPAs.
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// Leases.
    pub leases: Store<Lease>,
    /// PVCs.
    pub pvcs: Store<PersistentVolumeClaim>,
    /// PDBs.
    pub pdbs: Store<PodDisruptionBudget>,
    /// ResourceQuotas.
    pub quotas: Store<ResourceQuota>,
    /// Events, by component.
    pub recorders: Recorders,
    /// Pending creations/deletions of pods.
    pub expectations: Expectations,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The time CronJob schedules are evaluated against (the same clock unless a test injects one).
    pub schedule_clock: Arc<dyn Clock>,
    /// Settings.
    pub config: ControllerConfig,
    /// Where HPA reads pod metrics.
    pub metrics: Arc<dyn super::hpa::MetricsSource>,
    /// Failed reconciles: their count, and each object's back-off.
    pub retries: super::retry::Retries,
}

/// One event recorder per controller (so `kubectl describe` shows who did what).
#[derive(Clone)]
pub struct Recorders {
    client: kube::Client,
    cache: Arc<std::sync::Mutex<std::collections::HashMap<String, Recorder>>>,
}

impl std::fmt::Debug for Recorders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorders")
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Recorders {
    /// The recorder of `component`.
    pub fn get(&self, component: &str) -> Recorder {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(component.to_string())
            .or_insert_with(|| Recorder::new(self.client.clone(), component, None))
            .clone()
    }
}

impl Ctx {
    /// Builds the context over started informers.
    pub fn new(
        client: kube::Client,
        inf: &Informers,
        clock: Arc<dyn Clock>,
        schedule_clock: Arc<dyn Clock>,
        config: ControllerConfig,
        metrics: Arc<dyn super::hpa::MetricsSource>,
        retries: super::retry::Retries,
    ) -> Self {
        Ctx {
            recorders: Recorders { client: client.clone(), cache: Arc::default() },
            client,
            pods: inf.pods.store.clone(),
            nodes: inf.nodes.store.clone(),
            namespaces: inf.namespaces.store.clone(),
            replica_sets: inf.replica_sets.store.clone(),
            deployments: inf.deployments.store.clone(),
            stateful_sets: inf.stateful_sets.store.clone(),
            daemon_sets: inf.daemon_sets.store.clone(),
            revisions: inf.revisions.store.clone(),
            jobs: inf.jobs.store.clone(),
            cron_jobs: inf.cron_jobs.store.clone(),
            services: inf.services.store.clone(),
            slices: inf.slices.store.clone(),
            hpas: inf.hpas.store.clone(),
            leases: inf.leases.store.clone(),
            pvcs: inf.pvcs.store.clone(),
            pdbs: inf.pdbs.store.clone(),
            quotas: inf.quotas.store.clone(),
            expectations: Expectations::default(),
            clock,
            schedule_clock,
            config,
            metrics,
            retries,
        }
    }

    /// Now.
    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
    }
}

/// A reconcile failure: logged, and the object retried after a short back-off.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API answered with an error.
    #[error("API: {0}")]
    Api(#[from] kube::Error),
    /// Writing the object's status failed (the next pass writes it again).
    #[error("writing status: {0}")]
    Status(kube::Error),
    /// The object is malformed in a way validation did not catch.
    #[error("{0}")]
    Invalid(String),
}

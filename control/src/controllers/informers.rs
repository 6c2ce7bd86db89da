//! Shared informers: one watch per kind, a reflector store every controller reads, and subscriptions that trigger
//! controllers on changes. Controllers start only after every store has its first full list (STYLE 7).

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod, ResourceQuota, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

const BUFFER: usize = 1024;

/// A store and the writer that feeds it (until the informer is started).
pub struct Informer<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    /// What controllers read.
    pub store: Store<K>,
    writer: Option<Writer<K>>,
}

impl<K> Informer<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn new() -> Self {
        let (store, writer) = reflector::store_shared(BUFFER);
        Informer { store, writer: Some(writer) }
    }

    /// A stream of changed objects (call before [`Informers::start`]).
    pub fn subscribe(&self) -> ReflectHandle<K> {
        self.writer.as_ref().expect("subscribe before the informer starts").subscribe().expect("a shared store")
    }

    fn start(&mut self, client: kube::Client, tasks: &mut tokio::task::JoinSet<()>) {
        let Some(writer) = self.writer.take() else { return };
        let api: Api<K> = Api::all(client);
        tasks.spawn(async move {
            watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .reflect_shared(writer)
                .for_each(|ev| async move {
                    if let Err(e) = ev {
                        tracing::debug!(error = %e, kind = %K::kind(&()), "watch error (retrying)");
                    }
                })
                .await;
        });
    }
}

/// Every informer the controllers use.
pub struct Informers {
    /// Pods.
    pub pods: Informer<Pod>,
    /// Nodes.
    pub nodes: Informer<Node>,
    /// Namespaces.
    pub namespaces: Informer<Namespace>,
    /// ReplicaSets.
    pub replica_sets: Informer<ReplicaSet>,
    /// Deployments.
    pub deployments: Informer<Deployment>,
    /// StatefulSets.
    pub stateful_sets: Informer<StatefulSet>,
    /// DaemonSets.
    pub daemon_sets: Informer<DaemonSet>,
    /// ControllerRevisions.
    pub revisions: Informer<ControllerRevision>,
    /// Jobs.
    pub jobs: Informer<Job>,
    /// CronJobs.
    pub cron_jobs: Informer<CronJob>,
    /// Services.
    pub services: Informer<Service>,
    /// EndpointSlices.
    pub slices: Informer<EndpointSlice>,
    /// HorizontalPodAutoscalers.
    pub hpas: Informer<HorizontalPodAutoscaler>,
    /// Leases (node heartbeats).
    pub leases: Informer<Lease>,
    /// PersistentVolumeClaims.
    pub pvcs: Informer<PersistentVolumeClaim>,
    /// PodDisruptionBudgets.
    pub pdbs: Informer<PodDisruptionBudget>,
    /// ResourceQuotas.
    pub quotas: Informer<ResourceQuota>,
    /// The watch tasks: they end when this is dropped (a leader that loses its lease drops it).
    tasks: tokio::task::JoinSet<()>,
}

impl Informers {
    /// Creates the stores (nothing is watched until [`Informers::start`]).
    pub fn new() -> Self {
        Informers {
            pods: Informer::new(),
            nodes: Informer::new(),
            namespaces: Informer::new(),
            replica_sets: Informer::new(),
            deployments: Informer::new(),
            stateful_sets: Informer::new(),
            daemon_sets: Informer::new(),
            revisions: Informer::new(),
            jobs: Informer::new(),
            cron_jobs: Informer::new(),
            services: Informer::new(),
            slices: Informer::new(),
            hpas: Informer::new(),
            leases: Informer::new(),
            pvcs: Informer::new(),
            pdbs: Informer::new(),
            quotas: Informer::new(),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Starts every watch.
    pub fn start(&mut self, client: &kube::Client) {
        self.pods.start(client.clone(), &mut self.tasks);
        self.nodes.start(client.clone(), &mut self.tasks);
        self.namespaces.start(client.clone(), &mut self.tasks);
        self.replica_sets.start(client.clone(), &mut self.tasks);
        self.deployments.start(client.clone(), &mut self.tasks);
        self.stateful_sets.start(client.clone(), &mut self.tasks);
        self.daemon_sets.start(client.clone(), &mut self.tasks);
        self.revisions.start(client.clone(), &mut self.tasks);
        self.jobs.start(client.clone(), &mut self.tasks);
        self.cron_jobs.start(client.clone(), &mut self.tasks);
        self.services.start(client.clone(), &mut self.tasks);
        self.slices.start(client.clone(), &mut self.tasks);
        self.hpas.start(client.clone(), &mut self.tasks);
        self.leases.start(client.clone(), &mut self.tasks);
        self.pvcs.start(client.clone(), &mut self.tasks);
        self.pdbs.start(client.clone(), &mut self.tasks);
        self.quotas.start(client.clone(), &mut self.tasks);
    }

    /// Waits until every store has its first full list.
    pub async fn wait_until_ready(&self) {
        let _ = tokio::join!(
            self.pods.store.wait_until_ready(),
            self.nodes.store.wait_until_ready(),
            self.namespaces.store.wait_until_ready(),
            self.replica_sets.store.wait_until_ready(),
            self.deployments.store.wait_until_ready(),
            self.stateful_sets.store.wait_until_ready(),
            self.daemon_sets.store.wait_until_ready(),
            self.revisions.store.wait_until_ready(),
            self.jobs.store.wait_until_ready(),
            self.cron_jobs.store.wait_until_ready(),
            self.services.store.wait_until_ready(),
            self.slices.store.wait_until_ready(),
            self.hpas.store.wait_until_ready(),
            self.leases.store.wait_until_ready(),
            self.pvcs.store.wait_until_ready(),
            self.pdbs.store.wait_until_ready(),
            self.quotas.store.wait_until_ready(),
        );
    }
}

impl Default for Informers {
    fn default() -> Self {
        Self::new()
    }
}

/// The objects of a store in one namespace.
pub fn in_namespace<K: kube::Resource<DynamicType = ()> + Clone + 'static>(store: &Store<K>, ns: &str) -> Vec<Arc<K>> {
    store.state().into_iter().filter(|o| o.meta().namespace.as_deref() == Some(ns)).collect()
}

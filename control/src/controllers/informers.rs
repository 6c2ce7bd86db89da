//! Shared informers: one watch per kind, a store every controller reads (kube-runtime's reflector store, or for pods
//! the [`pod_store`]), and subscriptions that trigger controllers on changes. Controllers start only after every store has its first full list (STYLE 7).
//!
//! Subscriptions are fed here, not by kube-runtime's shared reflector: its `ReflectHandle` looks each changed
//! object up in the store when the subscriber gets to it and, when the object is gone by then (deleted while the
//! subscriber lagged), answers `Pending` without arranging a wake-up, so the subscriber's task sleeps with events
//! queued until something else wakes it. It also passes no deletions on, so a pod deleted without a graceful phase
//! (`--grace-period=0 --force`, or never scheduled) triggered none of its owners. That was the missed event of
//! issue 18. Here every applied or deleted object is sent, as the object itself, after the store holds the change,
//! and a re-list sends what it added, changed or found gone.

use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, ResourceQuota, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{Lookup, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use super::cached_pod::{CachedPod, WirePod};
use super::pod_store;
use super::util::{Cached, Meta};

/// How many changes a subscriber may lag behind before the watch waits for it (nothing is dropped).
const BUFFER: usize = 1024;

/// A stream of changed objects: every object a watch applied or deleted, in order, each sent after the store holds
/// the change. A deleted object arrives as its last state.
pub type Subscription<K> = async_broadcast::Receiver<Arc<K>>;

/// Where an informer keeps its objects: kube-runtime's reflector store (what kube's `Controller` reads), or, for pods,
/// the [`pod_store`] (an entry per pod of the cluster, kept small).
pub trait Keep<K>: Default + Send + 'static {
    /// What controllers read.
    type Reader: Clone + Send + Sync + 'static;
    /// A reader of what it keeps.
    fn reader(&self) -> Self::Reader;
    /// The object it keeps under `obj`'s namespace and name.
    fn get_like(&self, obj: &K) -> Option<Arc<K>>;
    /// Every object it keeps.
    fn all(&self) -> Vec<Arc<K>>;
    /// Applies one watch event; for an applied or deleted object, what subscribers are sent: the object as now kept,
    /// or the deleted object's last state.
    fn apply(&mut self, event: watcher::Event<K>) -> Option<Arc<K>>;
}

impl<K: Lookup<DynamicType = ()> + Clone + Send + Sync + 'static> Keep<K> for Writer<K> {
    type Reader = Store<K>;

    fn reader(&self) -> Store<K> {
        self.as_reader()
    }

    fn get_like(&self, obj: &K) -> Option<Arc<K>> {
        self.as_reader().get(&obj.to_object_ref(()))
    }

    fn all(&self) -> Vec<Arc<K>> {
        self.as_reader().state()
    }

    fn apply(&mut self, event: watcher::Event<K>) -> Option<Arc<K>> {
        self.apply_watcher_event(&event);
        match event {
            watcher::Event::Apply(obj) => self.get_like(&obj),
            watcher::Event::Delete(obj) => Some(Arc::new(obj)),
            watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => None,
        }
    }
}

impl<K: Cached + Clone + Send + Sync + 'static> Keep<K> for pod_store::Writer<K> {
    type Reader = pod_store::Store<K>;

    fn reader(&self) -> pod_store::Store<K> {
        self.as_reader()
    }

    fn get_like(&self, obj: &K) -> Option<Arc<K>> {
        let meta = obj.cached_meta();
        self.as_reader().get(meta.namespace().unwrap_or_default(), meta.name().unwrap_or_default())
    }

    fn all(&self) -> Vec<Arc<K>> {
        self.as_reader().state()
    }

    fn apply(&mut self, event: watcher::Event<K>) -> Option<Arc<K>> {
        pod_store::Writer::apply(self, event)
    }
}

/// A store, the writer that feeds it (until the informer is started) and the channel its changes go out on.
pub struct Informer<K: Clone + 'static, W: Keep<K> = Writer<K>> {
    /// What controllers read.
    pub store: W::Reader,
    writer: Option<W>,
    changes: async_broadcast::Sender<Arc<K>>,
    // Keeps the channel open while nobody subscribes.
    _idle: async_broadcast::InactiveReceiver<Arc<K>>,
}

impl<K, W> Informer<K, W>
where
    K: Lookup<DynamicType = ()> + Cached + Clone + Debug + Send + Sync + 'static,
    W: Keep<K>,
{
    fn new() -> Self {
        let writer = W::default();
        let (mut changes, idle) = async_broadcast::broadcast(BUFFER);
        // Without subscribers a change goes nowhere; with them, a full buffer makes the watch wait.
        changes.set_await_active(false);
        changes.set_overflow(false);
        Informer { store: writer.reader(), writer: Some(writer), changes, _idle: idle.deactivate() }
    }

    /// A stream of changed objects (call before [`Informers::start`]).
    pub fn subscribe(&self) -> Subscription<K> {
        assert!(self.writer.is_some(), "subscribe before the informer starts");
        self.changes.new_receiver()
    }

    /// Starts the watch, decoding objects as `Wire` and caching each as `cache` makes it.
    fn start_as<Wire>(&mut self, client: kube::Client, tasks: &mut tokio::task::JoinSet<()>, cache: fn(Wire) -> K)
    where
        Wire: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let Some(writer) = self.writer.take() else { return };
        let api: Api<Wire> = Api::all(client);
        // No controller reads managedFields: they are dropped before the store keeps an object (as client-go
        // informers' transform functions commonly do), which keeps them out of memory for every cached object.
        // Pods are cached as `CachedPod`, which has only the fields controllers read.
        let events = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(|o: &mut Wire| o.meta_mut().managed_fields = None)
            .map_ok(move |e| cached_event(e, cache));
        tasks.spawn(feed(events, writer, self.changes.clone()));
    }
}

impl<K> Informer<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts the watch, caching objects as they are decoded.
    fn start(&mut self, client: kube::Client, tasks: &mut tokio::task::JoinSet<()>) {
        self.start_as::<K>(client, tasks, std::convert::identity);
    }
}

/// A watch event with its objects as the store caches them.
fn cached_event<W, K>(event: watcher::Event<W>, cache: fn(W) -> K) -> watcher::Event<K> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(cache(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(cache(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(cache(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Applies watch events to the store and sends each changed object to the subscribers, until `events` ends.
async fn feed<K, W, S>(events: S, mut writer: W, changes: async_broadcast::Sender<Arc<K>>)
where
    K: Lookup<DynamicType = ()> + Cached + Clone + Debug + Send + Sync + 'static,
    W: Keep<K>,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut events = std::pin::pin!(events);
    // The store's objects when a re-list began: those the new list lacks were deleted meanwhile.
    let mut before_relist: Vec<Arc<K>> = Vec::new();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(error = %e, kind = %K::kind(&()), "watch error (retrying)");
                continue;
            }
        };
        if matches!(event, watcher::Event::Init) {
            before_relist = writer.all();
        }
        let relisted = matches!(event, watcher::Event::InitDone);
        // the store holds the change before anyone hears of it
        let changed: Vec<Arc<K>> = match writer.apply(event) {
            Some(obj) => vec![obj],
            None if relisted => {
                let gone = std::mem::take(&mut before_relist).into_iter().filter(|old| writer.get_like(old).is_none());
                writer.all().into_iter().chain(gone).collect()
            }
            None => Vec::new(),
        };
        for obj in changed {
            // An error means nobody subscribes: there is no one to tell.
            let _ = changes.broadcast_direct(obj).await;
        }
    }
}

/// Every informer the controllers use.
pub struct Informers {
    /// Pods (in the pod store, which also groups them by controller).
    pub pods: Informer<CachedPod, pod_store::Writer<CachedPod>>,
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
        self.pods.start_as::<WirePod>(client.clone(), &mut self.tasks, CachedPod::from);
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
pub fn in_namespace<K: Lookup<DynamicType = ()> + Cached + Clone + 'static>(store: &Store<K>, ns: &str) -> Vec<Arc<K>> {
    store.state().into_iter().filter(|o| o.cached_meta().namespace() == Some(ns)).collect()
}

/// The owners of type `O` of each changed pod, to reconcile (what `kube`'s `owns_shared_stream` makes of a stream of
/// typed objects; through `reconcile_on` a request carries no reason, so a reconcile's span no longer names the pod
/// that triggered it).
pub fn owners_of<O: Lookup<DynamicType = ()>>(pods: Subscription<CachedPod>) -> impl Stream<Item = ObjectRef<O>> {
    related(pods, |pod| {
        let ns = pod.metadata.namespace.as_deref();
        pod.metadata.owners().iter().filter_map(|o| ObjectRef::from_owner_ref(ns, o, ())).collect::<Vec<_>>()
    })
}

/// The objects `mapper` names for each changed pod, to reconcile (what `kube`'s `watches_shared_stream` makes of a
/// stream of typed objects).
pub fn related<O, I>(
    pods: Subscription<CachedPod>,
    mapper: impl Fn(Arc<CachedPod>) -> I + Send + 'static,
) -> impl Stream<Item = ObjectRef<O>>
where
    O: Lookup<DynamicType = ()>,
    I: IntoIterator<Item = ObjectRef<O>>,
{
    pods.flat_map(move |pod| futures::stream::iter(mapper(pod)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use kube::runtime::watcher::Event;

    fn pod(name: &str, rv: &str) -> CachedPod {
        let mut p = CachedPod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("d".into());
        p.metadata.resource_version = Some(rv.into());
        p
    }

    fn channel() -> (async_broadcast::Sender<Arc<CachedPod>>, Subscription<CachedPod>) {
        let (mut tx, rx) = async_broadcast::broadcast(BUFFER);
        tx.set_overflow(false);
        (tx, rx)
    }

    /// What a subscriber that lagged behind `events` receives, as name@resourceVersion; the store's groups by
    /// controller hold what it holds (the test pods have no controller).
    async fn received(events: Vec<Event<CachedPod>>, writer: pod_store::Writer<CachedPod>) -> Vec<String> {
        let store = writer.as_reader();
        let got = sent(events, writer).await;
        let names = |pods: Vec<Arc<CachedPod>>| {
            let mut v: Vec<String> = pods.iter().map(|p| format!("{:?}", p.metadata)).collect();
            v.sort();
            v
        };
        assert_eq!(names(store.controlled_or_orphaned("", "d")), names(store.state()), "the groups hold the store's");
        got
    }

    /// What a subscriber that lagged behind `events` fed through `writer` receives, as name@resourceVersion.
    async fn sent<W: Keep<CachedPod>>(events: Vec<Event<CachedPod>>, writer: W) -> Vec<String> {
        let (tx, rx) = channel();
        feed(futures::stream::iter(events.into_iter().map(Ok)), writer, tx).await;
        let got: Vec<Arc<CachedPod>> =
            tokio::time::timeout(Duration::from_secs(5), rx.collect()).await.expect("not stalled");
        got.iter()
            .map(|p| {
                format!(
                    "{}@{}",
                    p.metadata.name.as_deref().unwrap_or(""),
                    p.metadata.resource_version.as_deref().unwrap_or("")
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_every_change_including_deletions_of_objects_already_gone() {
        let writer = pod_store::Writer::default();
        let store = writer.as_reader();
        let events = vec![
            Event::Apply(pod("a", "1")),
            Event::Apply(pod("b", "2")),
            Event::Apply(pod("a", "3")),
            Event::Delete(pod("a", "4")),
            Event::Apply(pod("c", "5")),
        ];
        // "a" is no longer in the store when the subscriber reads its changes: each still arrives, as it was.
        assert_eq!(received(events, writer).await, ["a@1", "b@2", "a@3", "a@4", "c@5"].map(String::from));
        assert!(store.get("d", "a").is_none());
        assert_eq!(store.len(), 2);
    }

    #[tokio::test]
    async fn a_relist_sends_what_it_holds_and_what_it_found_gone() {
        let writer = pod_store::Writer::default();
        let store = writer.as_reader();
        let events = vec![
            Event::Init,
            Event::InitApply(pod("a", "1")),
            Event::InitApply(pod("b", "2")),
            Event::InitDone,
            // the watch broke; "a" was deleted and "b" changed while it was down
            Event::Init,
            Event::InitApply(pod("b", "7")),
            Event::InitDone,
        ];
        let mut got = received(events.clone(), writer).await;
        got[..2].sort();
        got[2..].sort();
        assert_eq!(got, ["a@1", "b@2", "a@1", "b@7"].map(String::from));
        assert_eq!(store.len(), 1);
        // the same through kube-runtime's store, which the other kinds' informers keep
        let kube_store = Writer::<CachedPod>::default();
        let reader = kube_store.as_reader();
        let mut got = sent(events, kube_store).await;
        got[..2].sort();
        got[2..].sort();
        assert_eq!(got, ["a@1", "b@2", "a@1", "b@7"].map(String::from));
        assert_eq!(reader.len(), 1);
    }

    #[tokio::test]
    async fn a_pods_owners_of_the_kind_asked_for_are_reconciled_in_its_namespace() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owner = |api_version: &str, kind: &str, name: &str| OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        };
        let mut owned = pod("a", "1");
        owned.metadata.owner_references = Some(super::super::pod_meta::Owners::from(vec![
            owner("apps/v1", "ReplicaSet", "rs"),
            owner("batch/v1", "Job", "job"),
            owner("apps/v1beta2", "ReplicaSet", "old-group-version"),
        ]));
        let (tx, rx) = channel();
        for p in [owned, pod("orphan", "2")] {
            tx.broadcast_direct(Arc::new(p)).await.expect("sent");
        }
        drop(tx);
        let got: Vec<ObjectRef<ReplicaSet>> = owners_of(rx).collect().await;
        assert_eq!(got, [ObjectRef::new("rs").within("d")]);
    }

    /// Why the subscriptions are not kube-runtime's `ReflectHandle`: when the object a change names is gone from the
    /// store by the time the subscriber reads it, the handle answers `Pending` without arranging a wake-up, so the
    /// task that polls it sleeps with later changes queued until something else wakes it (in a controller: a
    /// requeue timer, which is why the old 2 s re-read hid this). If this starts failing, kube-runtime fixed it.
    #[tokio::test]
    async fn kube_runtimes_shared_handle_stalls_on_a_change_whose_object_is_gone() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(me: &Arc<Self>) {
                me.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let typed = |name: &str, rv: &str| WirePod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("d".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let (store, writer) = kube::runtime::reflector::store_shared::<WirePod>(16);
        let handle = writer.subscribe().expect("shared");
        let events = vec![Event::Apply(typed("a", "1")), Event::Delete(typed("a", "2")), Event::Apply(typed("b", "3"))];
        futures::stream::iter(events.into_iter().map(Ok::<_, watcher::Error>))
            .reflect_shared(writer)
            .for_each(|_| async {})
            .await;
        assert_eq!(store.len(), 1, "b is in the store");
        let wakes = Arc::new(Count(Default::default()));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut handle = std::pin::pin!(handle);
        assert!(handle.as_mut().poll_next(&mut cx).is_pending(), "the change of the deleted a");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing wakes the subscriber");
        // ... although b's change was queued all along: polled again by hand, it comes out.
        let next = handle.as_mut().poll_next(&mut cx);
        assert!(matches!(&next, std::task::Poll::Ready(Some(p)) if p.metadata.name.as_deref() == Some("b")));
    }
}

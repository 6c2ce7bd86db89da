//! The Secrets and ConfigMaps the pods of this node use, each followed by its own watch (a field selector on its
//! name, in its namespace), as kubelet's watch-based object manager does: the agent never lists every Secret of the
//! cluster, and the API server's node authorizer lets it read exactly these ([`skiff_api::references`]).
//!
//! Pods register what they refer to when they arrive and release it when they go; an object's watch starts with
//! its first user and stops with its last. A change of a watched object wakes the pods of its namespace (their
//! volumes and environment are refreshed), as the cluster-wide watches did.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};

/// `(namespace, name)`.
pub type Key = (String, String);

struct Slot<K> {
    /// The latest object (`None`: not there, or not listed yet).
    value: watch::Receiver<Option<Option<Arc<K>>>>,
    /// The pods using it (uids).
    users: BTreeSet<String>,
    task: tokio::task::JoinHandle<()>,
}

/// One kind's watched objects.
pub struct Watched<K> {
    client: kube::Client,
    slots: Mutex<HashMap<Key, Slot<K>>>,
    changes: mpsc::UnboundedSender<String>,
}

impl<K> Watched<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    /// Watches with `client`; namespaces whose objects change are sent to `changes`.
    pub fn new(client: kube::Client, changes: mpsc::UnboundedSender<String>) -> Self {
        Watched { client, slots: Mutex::new(HashMap::new()), changes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot<K>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `names` in `ns` the objects pod `uid` uses (starting and stopping watches as needed).
    pub fn set_users(&self, uid: &str, ns: &str, names: &BTreeSet<String>) {
        let mut slots = self.lock();
        for ((slot_ns, name), slot) in slots.iter_mut() {
            if !(slot_ns == ns && names.contains(name)) {
                slot.users.remove(uid);
            }
        }
        for name in names {
            let key = (ns.to_string(), name.clone());
            slots.entry(key.clone()).or_insert_with(|| self.start(key)).users.insert(uid.to_string());
        }
        slots.retain(|_, s| {
            let used = !s.users.is_empty();
            if !used {
                s.task.abort();
            }
            used
        });
    }

    /// Pod `uid` uses nothing any more.
    pub fn release(&self, uid: &str) {
        self.set_users(uid, "", &BTreeSet::new());
    }

    fn start(&self, key: Key) -> Slot<K> {
        let (tx, rx) = watch::channel(None);
        let api: kube::Api<K> = kube::Api::namespaced(self.client.clone(), &key.0);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", key.1));
        let changes = self.changes.clone();
        let ns = key.0.clone();
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, cfg).boxed();
            let mut listing: Option<Option<Arc<K>>> = None;
            while let Some(ev) = stream.next().await {
                let now = match ev {
                    Ok(watcher::Event::Init) => {
                        listing = Some(None);
                        continue;
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        listing = Some(Some(Arc::new(o)));
                        continue;
                    }
                    Ok(watcher::Event::InitDone) => listing.take().unwrap_or(None),
                    Ok(watcher::Event::Apply(o)) => Some(Arc::new(o)),
                    Ok(watcher::Event::Delete(_)) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, "watching a pod's object failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let _ = tx.send(Some(now));
                let _ = changes.send(ns.clone());
            }
        });
        Slot { value: rx, users: BTreeSet::new(), task }
    }

    /// The object, if it exists and its watch has listed it.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        let slots = self.lock();
        let slot = slots.get(&(ns.to_string(), name.to_string()))?;
        slot.value.borrow().clone().flatten()
    }

    /// Waits (at most `limit`) until the watches of `names` in `ns` have listed once; returns whether they all have.
    pub async fn synced(&self, ns: &str, names: &BTreeSet<String>, limit: Duration) -> bool {
        let receivers: Vec<watch::Receiver<Option<Option<Arc<K>>>>> = {
            let slots = self.lock();
            names.iter().filter_map(|n| slots.get(&(ns.to_string(), n.clone())).map(|s| s.value.clone())).collect()
        };
        let all = async {
            for mut rx in receivers {
                if rx.wait_for(Option::is_some).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(limit, all).await.unwrap_or(false)
    }

    /// How many objects are watched.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K> Drop for Watched<K> {
    fn drop(&mut self) {
        // the watches end with the agent's state, not with the runtime
        for slot in self.slots.get_mut().unwrap_or_else(|p| p.into_inner()).values() {
            slot.task.abort();
        }
    }
}

/// The Secrets and ConfigMaps of this node's pods.
pub struct PodObjects {
    /// Secrets.
    pub secrets: Watched<Secret>,
    /// ConfigMaps.
    pub config_maps: Watched<ConfigMap>,
}

impl PodObjects {
    /// Both kinds, watched with `client`; changed namespaces go to `changes`.
    pub fn new(client: kube::Client, changes: mpsc::UnboundedSender<String>) -> Self {
        PodObjects {
            secrets: Watched::new(client.clone(), changes.clone()),
            config_maps: Watched::new(client, changes),
        }
    }

    /// Registers what `pod` refers to (and releases what it no longer does).
    pub fn register(&self, pod: &k8s_openapi::api::core::v1::Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let refs = serde_json::to_value(pod).map(|v| skiff_api::references::of_pod(&v)).unwrap_or_default();
        self.secrets.set_users(&uid, &ns, &refs.secrets);
        self.config_maps.set_users(&uid, &ns, &refs.config_maps);
    }

    /// `uid` is gone.
    pub fn release(&self, uid: &str) {
        self.secrets.release(uid);
        self.config_maps.release(uid);
    }

    /// Waits (at most `limit`) until what `pod` refers to has been listed.
    pub async fn synced(&self, pod: &k8s_openapi::api::core::v1::Pod, limit: Duration) -> bool {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let refs = serde_json::to_value(pod).map(|v| skiff_api::references::of_pod(&v)).unwrap_or_default();
        let (a, b) = tokio::join!(
            self.secrets.synced(&ns, &refs.secrets, limit),
            self.config_maps.synced(&ns, &refs.config_maps, limit)
        );
        a && b
    }
}

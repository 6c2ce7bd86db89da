//! The pod manager: follows the pods bound to this node (field selector `spec.nodeName=<node>`) and the static pods
//! of the manifest directory, keeps one worker per pod, routes container exits (by the pod uid in the runc id) and
//! ConfigMap/Secret changes to the workers, and — only after a complete list, so a partial view never kills
//! anything — cleans up pods the agent remembers but the API no longer has, and containers nobody owns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::record::{self, PodRecord};
use super::static_pods::StaticEvent;
use super::worker::Worker;
use super::{Ctx, PodEvent};

/// The annotation that marks a mirror pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

struct Handle {
    tx: mpsc::UnboundedSender<PodEvent>,
    namespace: String,
    task: tokio::task::JoinHandle<()>,
}

/// The manager's state.
pub struct Manager {
    ctx: Arc<Ctx>,
    workers: HashMap<String, Handle>,
    records: BTreeMap<String, PodRecord>,
    listed: bool,
}

fn is_mirror(p: &Pod) -> bool {
    p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

fn terminal(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

impl Manager {
    /// A manager with the records found on disk.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let mut records = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(ctx.paths.pods()) {
            for e in entries.flatten() {
                if let Some(r) = PodRecord::load(&e.path().join("record.json")) {
                    records.insert(r.uid.clone(), r);
                }
            }
        }
        tracing::info!(known = records.len(), "pod records loaded");
        Manager { ctx, workers: HashMap::new(), records, listed: false }
    }

    fn spawn(&mut self, pod: Arc<Pod>, static_pod: bool, removed: bool) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = Worker::new(self.ctx.clone(), pod.clone(), self.records.remove(&uid), rx, tx.clone());
        if static_pod {
            w.set_static();
        }
        if removed {
            w.set_removed();
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let task = tokio::spawn(w.run());
        self.workers.insert(uid, Handle { tx, namespace, task });
    }

    fn send(&self, uid: &str, ev: PodEvent) -> bool {
        self.workers.get(uid).is_some_and(|h| h.tx.send(ev).is_ok())
    }

    fn reap(&mut self) {
        let objects = self.ctx.caches.objects.clone();
        self.workers.retain(|uid, h| {
            let done = h.task.is_finished();
            if done {
                objects.release(uid);
            }
            !done
        });
        let running = self.workers.len() as i64;
        let containers = self
            .ctx
            .views
            .read()
            .map(|v| v.values().map(|p| p.containers.values().filter(|c| c.running).count() as i64).sum())
            .unwrap_or(0);
        self.ctx.metrics.set_running(running, containers);
    }

    /// A pod from the API was added or changed.
    pub fn apply(&mut self, pod: Pod) {
        if is_mirror(&pod) {
            return;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if uid.len() != 36 {
            return;
        }
        let pod = Arc::new(pod);
        if self.workers.contains_key(&uid) {
            self.ctx.caches.objects.register(&pod);
            self.send(&uid, PodEvent::Update(pod));
            return;
        }
        let known = self.records.contains_key(&uid);
        if terminal(&pod) && !known && pod.metadata.deletion_timestamp.is_none() {
            return;
        }
        self.ctx.caches.objects.register(&pod);
        self.spawn(pod, false, false);
    }

    /// A pod is gone from the API.
    pub fn delete(&mut self, pod: &Pod) {
        if is_mirror(pod) {
            return;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.send(&uid, PodEvent::Removed);
    }

    /// A complete list arrived: `seen` are the uids in it.
    pub async fn listed(&mut self, seen: &HashSet<String>) {
        self.listed = true;
        for (uid, h) in &self.workers {
            if !seen.contains(uid) && !self.records.contains_key(uid) && !h.task.is_finished() {
                let _ = h.tx.send(PodEvent::Removed);
            }
        }
        let orphans: Vec<PodRecord> =
            self.records.values().filter(|r| !seen.contains(&r.uid) && !r.static_pod).cloned().collect();
        for r in orphans {
            tracing::info!(pod = %r.name, namespace = %r.namespace, "cleaning up a pod the API no longer has");
            let mut pod = Pod::default();
            pod.metadata.uid = Some(r.uid.clone());
            pod.metadata.name = Some(r.name.clone());
            pod.metadata.namespace = Some(r.namespace.clone());
            self.spawn(Arc::new(pod), false, true);
        }
        self.collect_strays().await;
    }

    /// Containers of this agent's runc root that no worker owns: stop and remove them.
    async fn collect_strays(&mut self) {
        let Ok(list) = self.ctx.runtime.list().await else { return };
        for s in list {
            let owner = record::uid_of(&s.id).map(str::to_string);
            if owner.as_ref().is_some_and(|u| self.workers.contains_key(u) || self.records.contains_key(u)) {
                continue;
            }
            tracing::info!(id = %s.id, "removing a container no pod owns");
            let _ = self.ctx.runtime.signal(&s.id, "KILL").await;
            let _ = self.ctx.runtime.delete(&s.id).await;
            let bundle = self.ctx.paths.container(&s.id);
            super::mounts::unmount_under(&bundle);
            let _ = std::fs::remove_dir_all(&bundle);
            let _ = std::fs::remove_file(self.ctx.paths.exit_file(&s.id));
        }
    }

    /// A container ended.
    pub fn exited(&mut self, id: &str) {
        let Some(uid) = record::uid_of(id) else { return };
        if !self.send(uid, PodEvent::Exited(id.to_string())) && self.listed {
            let _ = std::fs::remove_file(self.ctx.paths.exit_file(id));
        }
    }

    /// A ConfigMap or Secret changed in `namespace`.
    pub fn refresh(&self, namespace: &str) {
        for h in self.workers.values() {
            if h.namespace == namespace {
                let _ = h.tx.send(PodEvent::Refresh);
            }
        }
    }

    /// A static pod was added, changed or removed.
    pub fn static_event(&mut self, ev: StaticEvent) {
        match ev {
            StaticEvent::Upsert(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if self.workers.contains_key(&uid) {
                    self.send(&uid, PodEvent::Update(Arc::new(pod)));
                } else {
                    self.spawn(Arc::new(pod), true, false);
                }
            }
            StaticEvent::Remove(uid) => {
                self.send(&uid, PodEvent::Removed);
            }
        }
    }
}

/// Runs the manager until `shutdown`; containers keep running after it returns.
pub async fn run(
    ctx: Arc<Ctx>,
    mut statics: mpsc::UnboundedReceiver<StaticEvent>,
    mut config_changes: mpsc::UnboundedReceiver<String>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut exits = match crate::runtime::exits::watch(&ctx.paths.exits()) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch container exits");
            return;
        }
    };
    let mut m = Manager::new(ctx.clone());
    let pods: kube::Api<Pod> = kube::Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node.name));
    let mut stream = watcher(pods, cfg).boxed();
    let mut listing: Option<HashSet<String>> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tokio::pin!(shutdown);
    let mut pending_exits: Vec<String> = crate::runtime::exits::pending(&ctx.paths.exits());
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            ev = stream.next() => match ev {
                Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(p))) => {
                    if let Some(l) = listing.as_mut() {
                        l.insert(p.metadata.uid.clone().unwrap_or_default());
                    }
                    m.apply(p);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    let seen = listing.take().unwrap_or_default();
                    m.listed(&seen).await;
                    for id in std::mem::take(&mut pending_exits) {
                        m.exited(&id);
                    }
                }
                Some(Ok(watcher::Event::Apply(p))) => m.apply(p),
                Some(Ok(watcher::Event::Delete(p))) => m.delete(&p),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pod watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                None => break,
            },
            Some(id) = exits.recv() => {
                if m.listed { m.exited(&id) } else { pending_exits.push(id) }
            },
            Some(ev) = statics.recv() => m.static_event(ev),
            Some(ns) = config_changes.recv() => m.refresh(&ns),
            _ = tick.tick() => m.reap(),
        }
    }
    tracing::info!("pod manager stopped; containers keep running");
}

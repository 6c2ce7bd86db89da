//! The scheduler: binds each pending pod to the best feasible node (filters: unschedulable, taints and
//! tolerations, readiness, node selector and required affinity, resources, host ports; scores: least allocated,
//! spreading an owner's pods, preferred affinity), or marks it Unschedulable with a FailedScheduling event that says
//! why.
//!
//! Decisions are made one pod at a time against [`cache::Cache`], a view of each node kept up to date from the pod
//! changes the informer sends, including pods bound moments ago and not yet seen bound ("assumed"). Bindings go out
//! as tasks while the next pods are decided; a failed binding puts its pod back in the queue. Pods that fit nowhere
//! are tried again when capacity changes (a node changed, a pod freed its resources), at most once a second.

pub mod cache;
pub mod filter;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::controllers::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PostParams};
use serde_json::json;
use skiff_client::events::EventType;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use super::ctx::Ctx;
use super::util::{is_deleting, is_terminal};
use crate::controllers::cached_pod::CachedPod;
use cache::{Cache, key};
use filter::{NodeInfo, NodeUsage, filter, request_of, score, unschedulable_message};

/// A decision for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind to this node.
    Bind(String),
    /// No node fits; the message says why.
    Unschedulable(String),
}

/// Whether the default scheduler should place this pod.
pub fn pending(p: &CachedPod) -> bool {
    let spec = p.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty)
        && spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|n| n == "default-scheduler" || n.is_empty())
        && !is_deleting(p)
        && !is_terminal(p)
}

/// Where one pod goes, given what is committed on each node; pure.
pub fn place(nodes: &[NodeInfo], usage: &HashMap<String, NodeUsage>, pod: &CachedPod) -> Decision {
    let nothing = NodeUsage::default();
    let no_spec = crate::controllers::cached_pod::Spec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let req = request_of(pod);
    let max_owner = req
        .owner
        .as_ref()
        .map(|o| usage.values().map(|u| u.by_owner.get(o).copied().unwrap_or(0)).max().unwrap_or(0))
        .unwrap_or(0);
    let mut best: Option<(i64, &str)> = None;
    let mut reasons = Vec::new();
    for n in nodes {
        let name = n.name();
        let u = usage.get(name).unwrap_or(&nothing);
        match filter(n, spec, &req, u) {
            Some(reason) => reasons.push(reason),
            None => {
                let s = score(n, spec, &req, u, max_owner);
                if best.is_none_or(|(bs, bn)| s > bs || (s == bs && name < bn)) {
                    best = Some((s, name));
                }
            }
        }
    }
    match best {
        Some((_, node)) => Decision::Bind(node.to_string()),
        None => Decision::Unschedulable(unschedulable_message(nodes.len(), &reasons)),
    }
}

/// The scheduler's name in Events and metrics.
pub const CONTROLLER: &str = "default-scheduler";

/// Bindings in flight at once.
const BINDS_IN_FLIGHT: usize = 32;

/// How often pods that fit nowhere are tried again when capacity changed, and at the latest.
const RETRY_AFTER_CHANGE: Duration = Duration::from_secs(1);
const RETRY_AT_LATEST: Duration = Duration::from_secs(10);

/// How often the whole pod cache is read again (the resync that repairs anything a missed change left wrong).
const RESYNC: Duration = Duration::from_secs(300);

/// A binding's outcome: the pod's key, the pod, the node, and the API's answer.
type Bound = (String, Arc<CachedPod>, String, Result<(), kube::Error>);

/// The scheduler loop's state.
struct Scheduler {
    ctx: Arc<Ctx>,
    cache: Cache,
    nodes: Vec<NodeInfo>,
    /// pod key -> (uid, last message) of pods that did not fit or whose binding was rejected: tried again with the
    /// next retry, and their Unschedulable condition written once per message
    reported: BTreeMap<String, (Option<Box<str>>, String)>,
    capacity_changed: bool,
    last_retry: Instant,
    binds: JoinSet<Bound>,
    /// The pod key of each binding task (to put the pod back if the task itself fails).
    bind_keys: HashMap<tokio::task::Id, String>,
    in_flight: Arc<Semaphore>,
}

fn lookup(ctx: &Ctx, key: &str) -> Option<Arc<CachedPod>> {
    let (ns, name) = key.split_once('/')?;
    ctx.pods.get(ns, name)
}

/// Runs the scheduler.
pub async fn run(ctx: Arc<Ctx>, pods: Subscription<CachedPod>, nodes: Subscription<Node>) {
    let kick = Arc::new(Notify::new());
    let changed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let nodes_changed = Arc::new(AtomicBool::new(true));
    // Dropped (and so stopped) with this future when the leader loses its lease.
    let mut triggers = JoinSet::new();
    let (k, c) = (kick.clone(), changed.clone());
    triggers.spawn(pods.for_each(move |p| {
        c.lock().unwrap_or_else(|e| e.into_inner()).insert(key(&p));
        k.notify_one();
        async {}
    }));
    let (k, n) = (kick.clone(), nodes_changed.clone());
    triggers.spawn(nodes.for_each(move |_| {
        n.store(true, Ordering::Relaxed);
        k.notify_one();
        async {}
    }));
    let mut s = Scheduler {
        ctx: ctx.clone(),
        cache: Cache::default(),
        nodes: Vec::new(),
        reported: BTreeMap::new(),
        capacity_changed: true,
        last_retry: Instant::now(),
        binds: JoinSet::new(),
        bind_keys: HashMap::new(),
        in_flight: Arc::new(Semaphore::new(BINDS_IN_FLIGHT)),
    };
    let mut resynced: Option<Instant> = None;
    loop {
        if resynced.is_none_or(|t| t.elapsed() >= RESYNC) {
            s.cache.resync(&ctx.pods.state());
            resynced = Some(Instant::now());
        }
        for k in std::mem::take(&mut *changed.lock().unwrap_or_else(|e| e.into_inner())) {
            s.cache.update(&k, lookup(&ctx, &k).as_ref());
        }
        if nodes_changed.swap(false, Ordering::Relaxed) {
            s.nodes = ctx.nodes.state().into_iter().map(NodeInfo::new).collect();
            s.capacity_changed = true;
        }
        while let Some(done) = s.binds.try_join_next_with_id() {
            s.bound(done).await;
        }
        s.schedule_once().await;
        tokio::select! {
            _ = kick.notified() => {
                // let a burst of events settle into one pass
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Some(done) = s.binds.join_next_with_id(), if !s.binds.is_empty() => s.bound(done).await,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

impl Scheduler {
    async fn schedule_once(&mut self) {
        self.reported.retain(|k, (uid, _)| self.cache.waiting_pod(k).is_some_and(|p| p.metadata.uid == *uid));
        if self.cache.take_freed() {
            self.capacity_changed = true;
        }
        let since = self.last_retry.elapsed();
        let retry = (self.capacity_changed && since >= RETRY_AFTER_CHANGE) || since >= RETRY_AT_LATEST;
        if retry {
            self.capacity_changed = false;
            self.last_retry = Instant::now();
        }
        let todo = self.cache.waiting_where(|k| retry || !self.reported.contains_key(k));
        if todo.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        let recorder = ctx.recorders.get(CONTROLLER);
        for pod in todo {
            // A pass over thousands of waiting pods (a 10k-replica burst) must not hold the worker thread: the API
            // server's connections and the other controllers share it. Within the task's budget this does not yield.
            tokio::task::consume_budget().await;
            let k = key(&pod);
            // one pod at a time: each placed pod is counted (assumed) before the next is decided
            match place(&self.nodes, self.cache.usage(), &pod) {
                Decision::Bind(node) => {
                    self.cache.assume(&k, &pod, &node);
                    let (client, permits) = (ctx.client.clone(), self.in_flight.clone());
                    let task_key = k.clone();
                    let task = self.binds.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        let r = bind(client, &pod, &node).await;
                        (k, pod, node, r)
                    });
                    self.bind_keys.insert(task.id(), task_key);
                }
                Decision::Unschedulable(msg) => {
                    if self.reported.get(&k).is_some_and(|(_, m)| *m == msg) {
                        continue;
                    }
                    let ns = pod.metadata.namespace.clone().unwrap_or_default();
                    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                    let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastProbeTime": null, "lastTransitionTime": ctx.now()}]}});
                    let written = crate::controllers::retry::status_written(
                        api.patch_status(
                            pod.metadata.name.as_deref().unwrap_or_default(),
                            &crate::controllers::util::pp(),
                            &Patch::Strategic(&patch),
                        )
                        .await,
                    );
                    match written {
                        // Reported once per message; a failed write is tried again on the next retry.
                        Ok(()) => {
                            self.reported.insert(k, (pod.metadata.uid.clone(), msg.clone()));
                        }
                        Err(e) => ctx.retries.count(CONTROLLER, &e),
                    }
                    failed_scheduling(&recorder, &pod, &msg).await;
                }
            }
        }
    }

    /// Takes in a binding's outcome.
    async fn bound(&mut self, done: Result<(tokio::task::Id, Bound), tokio::task::JoinError>) {
        let (k, pod, node, r) = match done {
            Ok((id, bound)) => {
                self.bind_keys.remove(&id);
                bound
            }
            Err(e) => {
                // the task itself failed (it panicked): the pod waits again
                if let Some(k) = self.bind_keys.remove(&e.id()) {
                    self.cache.forget(&k, lookup(&self.ctx, &k).as_ref());
                }
                tracing::error!(error = %e, "a binding task failed");
                return;
            }
        };
        let recorder = self.ctx.recorders.get(CONTROLLER);
        match r {
            Ok(()) => {
                let msg = format!("Successfully assigned {k} to {node}");
                recorder.record(&pod.reference(), EventType::Normal, "Scheduled", &msg).await;
            }
            Err(e) => {
                // The pod waits again, as the pod cache has it now, and is tried again with the pods that did not
                // fit (not at once: a binding the API keeps rejecting must not spin).
                self.cache.forget(&k, lookup(&self.ctx, &k).as_ref());
                let message = format!("Binding rejected: {e}");
                self.reported.insert(k.clone(), (pod.metadata.uid.clone(), message.clone()));
                self.ctx.retries.count(CONTROLLER, &crate::controllers::ctx::ReconcileError::Api(e));
                failed_scheduling(&recorder, &pod, &message).await;
            }
        }
    }
}

/// Binds a pod to a node through the `binding` subresource.
async fn bind(client: kube::Client, pod: &CachedPod, node: &str) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, ns);
    // with the pod's uid: the API refuses it if the pod was deleted and made again under its name meanwhile
    let body = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    api.create_subresource::<serde_json::Value, serde_json::Value>("binding", &name, &PostParams::default(), &body)
        .await
        .map(|_| ())
}

/// The Warning Event of a pod that could not be scheduled or bound.
async fn failed_scheduling(recorder: &skiff_client::events::Recorder, pod: &CachedPod, message: &str) {
    let oref = pod.reference();
    recorder.record(&oref, EventType::Warning, "FailedScheduling", message).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter::add;
    use serde_json::json;

    /// Schedules `pending` pods (in order) onto `nodes`, given current `usage`, which takes each pod placed.
    fn decide(
        nodes: &[NodeInfo],
        usage: &mut HashMap<String, NodeUsage>,
        pending: &[Arc<CachedPod>],
    ) -> Vec<(Arc<CachedPod>, Decision)> {
        pending
            .iter()
            .map(|p| {
                let d = place(nodes, usage, p);
                if let Decision::Bind(node) = &d {
                    add(usage.entry(node.clone()).or_default(), &request_of(p));
                }
                (p.clone(), d)
            })
            .collect()
    }

    fn node(name: &str, cpu: &str) -> NodeInfo {
        NodeInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}}))
                .expect("node"),
        ))
    }

    fn pod(name: &str, cpu: &str, owner: &str) -> Arc<CachedPod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": owner, "controller": true}]},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
            .expect("pod"),
        )
    }

    #[test]
    fn replicas_spread_across_nodes_and_capacity_is_respected() {
        let nodes = vec![node("n1", "1"), node("n2", "1"), node("n3", "1")];
        let pods: Vec<Arc<CachedPod>> = (0..3).map(|i| pod(&format!("p{i}"), "400m", "rs1")).collect();
        let mut usage = HashMap::new();
        let d = decide(&nodes, &mut usage, &pods);
        let mut chosen: Vec<String> =
            d.iter().filter_map(|(_, d)| if let Decision::Bind(n) = d { Some(n.clone()) } else { None }).collect();
        chosen.sort();
        assert_eq!(chosen, vec!["n1", "n2", "n3"], "one replica per node");
        // three more fit (800m per node), the seventh does not
        let more: Vec<Arc<CachedPod>> = (3..7).map(|i| pod(&format!("p{i}"), "400m", "rs1")).collect();
        let d = decide(&nodes, &mut usage, &more);
        assert!(
            matches!(&d[3].1, Decision::Unschedulable(m) if m == "0/3 nodes are available: 3 Insufficient cpu."),
            "{:?}",
            d[3].1
        );
    }
}

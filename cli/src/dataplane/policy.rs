//! NetworkPolicy on this node: follows NetworkPolicies, Pods and Namespaces of the whole cluster, compiles them for
//! this node's pods (`skiff_lb::policy`), and keeps the pinned policy maps in step. A pod's veth gets the policy
//! programs, and its endpoint entry is written, before any of its containers starts ([`Policy::admit`]): a new pod is
//! never briefly unrestricted. Recent verdicts are kept for `GET /policy/verdicts` on the kubelet endpoint.
//!
//! Enforcement needs the eBPF dataplane: with `--lb off` there is none, and the agent says so when policies exist.

use std::{
    collections::{BTreeMap, VecDeque},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::runtime::reflector::Store;
use skiff_lb::policy::{self, Enforcer, NodeView, PolicyNames};
use tokio::sync::{Notify, mpsc, watch};

use skiff_agent::dataplane::PodPolicy;
use skiff_agent::network::PodNet;

/// How many verdict lines are kept.
const KEEP_VERDICTS: usize = 1000;
/// How soon a pass whose map writes failed is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How often the verdict ring is read.
const VERDICT_POLL: Duration = Duration::from_millis(200);
/// How long a new pod waits for its policy to be in place before its start is retried.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent waits for the balancer to pin the programs and maps.
const PROGRAMS_TIMEOUT: Duration = Duration::from_secs(60);

/// Where enforcement stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the programs and the first lists: new pods wait too.
    Starting,
    /// The maps follow the cluster.
    Enforcing,
    /// The dataplane is not there (its error is logged): pods start unrestricted.
    Unavailable,
}

#[derive(Clone, Debug)]
struct LocalPod {
    ip: Ipv4Addr,
    veth: String,
    ifindex: u32,
    /// The pod as the worker saw it (used until the cluster-wide pod list has it).
    pod: Option<Pod>,
}

/// The node's policy enforcement.
#[derive(Debug)]
pub struct Policy {
    pin_dir: PathBuf,
    node: NodeView,
    local: Mutex<BTreeMap<String, LocalPod>>,
    wake: Notify,
    requested: AtomicU64,
    done: watch::Sender<u64>,
    state: watch::Sender<State>,
    names: Arc<RwLock<Arc<PolicyNames>>>,
    verdicts: Mutex<VecDeque<String>>,
    /// The veths (ifindex) whose endpoint the maps hold, after the last pass.
    programmed: Mutex<std::collections::BTreeSet<u32>>,
    /// When this agent started: programs pinned before are the previous run's.
    started: std::time::SystemTime,
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

impl Policy {
    /// Enforcement with the programs and maps pinned under `pin_dir`, for the pods of this node whose networks
    /// already exist (`existing`: uid → network, from the pod records, so an agent restart keeps every pod's entry).
    pub fn new(pin_dir: PathBuf, node: NodeView, existing: Vec<(String, PodNet)>) -> Arc<Self> {
        let local = existing
            .into_iter()
            .filter_map(|(uid, net)| {
                let ifindex = ifindex(&net.veth)?;
                Some((uid, LocalPod { ip: net.ip, veth: net.veth, ifindex, pod: None }))
            })
            .collect();
        Arc::new(Self {
            pin_dir,
            node,
            local: Mutex::new(local),
            wake: Notify::new(),
            requested: AtomicU64::new(0),
            done: watch::channel(0).0,
            state: watch::channel(State::Starting).0,
            names: Arc::default(),
            verdicts: Mutex::new(VecDeque::new()),
            programmed: Mutex::default(),
            started: std::time::SystemTime::now(),
        })
    }

    /// The names behind the numbers of the maps (shared with the metrics collector).
    pub fn names(&self) -> Arc<RwLock<Arc<PolicyNames>>> {
        Arc::clone(&self.names)
    }

    /// Puts a new pod under policy: attaches the programs to its veth and waits until the maps hold its endpoint
    /// (isolated as its policies say). Called before its containers start; an error means "try again later".
    async fn admit(&self, uid: &str, pod: &Pod, net: &PodNet) -> Result<(), String> {
        let mut state = self.state.subscribe();
        match tokio::time::timeout(ADMIT_TIMEOUT, state.wait_for(|s| *s != State::Starting)).await {
            Ok(Ok(s)) if *s == State::Unavailable => return Ok(()),
            Ok(Ok(_)) => {}
            _ => return Err("network policy enforcement is not ready yet".into()),
        }
        policy::attach::attach(&self.pin_dir, &net.veth)
            .map_err(|e| format!("attaching the policy programs to {}: {e}", net.veth))?;
        let index = ifindex(&net.veth).ok_or_else(|| format!("interface {} is gone", net.veth))?;
        if let Ok(mut local) = self.local.lock() {
            local.insert(
                uid.to_string(),
                LocalPod { ip: net.ip, veth: net.veth.clone(), ifindex: index, pod: Some(pod.clone()) },
            );
        }
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        let mut done = self.done.subscribe();
        if !matches!(tokio::time::timeout(ADMIT_TIMEOUT, done.wait_for(|d| *d >= ticket)).await, Ok(Ok(_))) {
            return Err("the pod's network policy was not written in time".into());
        }
        // The pass ran; it may still have failed to write (a full map): then the pod does not start unrestricted.
        if self.programmed.lock().is_ok_and(|p| p.contains(&index)) {
            Ok(())
        } else {
            Err("the pod's network policy could not be written (see the agent's log)".into())
        }
    }

    /// Takes a pod that is going away out of policy.
    fn forget(&self, uid: &str) {
        let gone = self.local.lock().ok().and_then(|mut l| l.remove(uid));
        if let Some(p) = gone
            && let Err(e) = policy::attach::detach(&self.pin_dir, &p.veth)
        {
            tracing::warn!(veth = %p.veth, error = %e, "removing the pod's policy links");
        }
        self.requested.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Recent verdicts, oldest first.
    fn recent_verdicts(&self) -> Vec<String> {
        self.verdicts.lock().map(|v| v.iter().cloned().collect()).unwrap_or_default()
    }

    /// Runs until the task is dropped.
    pub async fn run(self: Arc<Self>, client: kube::Client) {
        let Some(mut enforcer) = self.open_maps().await else {
            // Without the dataplane nothing can be enforced; blocking every pod would not make anything safer.
            self.state.send_replace(State::Unavailable);
            return;
        };
        let (tx, mut changes) = mpsc::unbounded_channel();
        let (policies, t1) = skiff_agent::follow::<NetworkPolicy>(&client, Some(tx.clone()));
        let (pods, t2) = skiff_agent::follow::<Pod>(&client, Some(tx.clone()));
        let (namespaces, t3) = skiff_agent::follow::<Namespace>(&client, Some(tx));
        let _guards = [AbortOnDrop(t1), AbortOnDrop(t2), AbortOnDrop(t3)];
        for ready in [
            policies.wait_until_ready().boxed(),
            pods.wait_until_ready().boxed(),
            namespaces.wait_until_ready().boxed(),
        ] {
            if ready.await.is_err() {
                tracing::error!("network policy is not enforced: the policy watches ended before their first list");
                self.state.send_replace(State::Unavailable);
                return;
            }
        }
        // Every pod's veth gets this version's programs (make before break), and links of veths that are gone go.
        self.reattach();
        let _verdicts = AbortOnDrop(tokio::spawn(Arc::clone(&self).read_verdicts()));
        let mut reported = Vec::new();
        let mut failed = false;
        loop {
            let ticket = self.requested.load(Ordering::SeqCst);
            let started = std::time::Instant::now();
            let compiled = self.compile(&policies, &pods, &namespaces);
            if compiled.skipped != reported {
                for s in &compiled.skipped {
                    tracing::warn!(policy = %s.object, reason = %s.reason, "part of a NetworkPolicy cannot be read");
                }
                reported = compiled.skipped.clone();
            }
            let veths: BTreeMap<Ipv4Addr, u32> =
                self.local.lock().map(|l| l.values().map(|p| (p.ip, p.ifindex)).collect()).unwrap_or_default();
            let first = *self.state.borrow() == State::Starting;
            match enforcer.sync(&compiled.tables, &veths) {
                // After a restart this says whether anything had to be rewritten (nothing, when nothing changed).
                Ok(writes) if first => tracing::info!(
                    writes,
                    endpoints = veths.len(),
                    rules = compiled.tables.rules.len(),
                    policies = compiled.names.policies.len(),
                    "network policy in place"
                ),
                Ok(writes) if writes > 0 => tracing::debug!(
                    writes,
                    rules = compiled.tables.rules.len(),
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "network policy updated"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "writing the network policy maps (retried)");
                    failed = true;
                }
            }
            if let Ok(mut p) = self.programmed.lock() {
                *p = enforcer.programmed().endpoints.keys().copied().collect();
            }
            if let Ok(mut n) = self.names.write() {
                *n = Arc::new(compiled.names);
            }
            self.state.send_replace(State::Enforcing);
            self.done.send_modify(|d| *d = (*d).max(ticket));
            // A failed pass is retried after a pause even when nothing changes.
            let retry = if std::mem::take(&mut failed) { RETRY_AFTER_FAILURE } else { Duration::MAX };
            tokio::select! {
                () = self.wake.notified() => {}
                Some(_) = changes.recv() => {}
                () = tokio::time::sleep(retry) => {}
            }
            // Fold what is already waiting into the same pass.
            while changes.try_recv().is_ok() {}
        }
    }

    async fn open_maps(&self) -> Option<Enforcer> {
        let prog = self.pin_dir.join("progs").join(skiff_ebpf_common::programs::POL_TO_POD);
        let deadline = tokio::time::Instant::now() + PROGRAMS_TIMEOUT;
        loop {
            // The balancer of this run pins its programs anew; attaching the previous run's would keep pods on them.
            let fresh = std::fs::metadata(&prog).and_then(|m| m.modified()).is_ok_and(|t| t >= self.started);
            if fresh {
                match Enforcer::open(&self.pin_dir) {
                    Ok(e) => return Some(e),
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        tracing::error!(error = %e, "network policy is not enforced: the policy maps cannot be opened");
                        return None;
                    }
                    Err(_) => {}
                }
            } else if tokio::time::Instant::now() >= deadline {
                tracing::error!(pin_dir = %self.pin_dir.display(), "network policy is not enforced: the balancer did not pin its programs");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn reattach(&self) {
        let local: Vec<LocalPod> = self.local.lock().map(|l| l.values().cloned().collect()).unwrap_or_default();
        for p in &local {
            if let Err(e) = policy::attach::attach(&self.pin_dir, &p.veth) {
                tracing::warn!(veth = %p.veth, error = %e, "re-attaching the policy programs");
            }
        }
        let keep: std::collections::BTreeSet<&str> = local.iter().map(|p| p.veth.as_str()).collect();
        for name in policy::attach::attached(&self.pin_dir).unwrap_or_default() {
            if !keep.contains(name.as_str()) {
                let _ = policy::attach::detach(&self.pin_dir, &name);
            }
        }
    }

    fn compile(
        &self,
        policies: &Store<NetworkPolicy>,
        pods: &Store<Pod>,
        namespaces: &Store<Namespace>,
    ) -> policy::Compiled {
        let local = self.local.lock().map(|l| l.clone()).unwrap_or_default();
        let mut all: Vec<Arc<Pod>> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let local_ips: BTreeMap<Ipv4Addr, &str> = local.iter().map(|(uid, l)| (l.ip, uid.as_str())).collect();
        for p in pods.state() {
            let uid = p.metadata.uid.as_deref().unwrap_or_default();
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            // An address this node gave to another pod: a pod object that outlived its sandbox (terminating) must
            // not lend its identity to the address's new owner.
            if let Some(owner) = ip.and_then(|ip| local_ips.get(&ip))
                && *owner != uid
            {
                continue;
            }
            let local_pod = p.metadata.uid.as_ref().and_then(|uid| local.get(uid).map(|l| (uid.clone(), l)));
            match local_pod {
                // This node knows the address before the API does.
                Some((uid, l)) => {
                    let mut p = (*p).clone();
                    fill_local(&mut p, l.ip, &self.node.name);
                    seen.insert(uid);
                    all.push(Arc::new(p));
                }
                None => all.push(p),
            }
        }
        for (uid, l) in &local {
            if let (false, Some(p)) = (seen.contains(uid), &l.pod) {
                let mut p = p.clone();
                fill_local(&mut p, l.ip, &self.node.name);
                all.push(Arc::new(p));
            }
        }
        let policies = policies.state();
        let namespaces = namespaces.state();
        policy::compile(&policies, &all, &namespaces, &self.node)
    }

    async fn read_verdicts(self: Arc<Self>) {
        let mut ring = match policy::Verdicts::open(&self.pin_dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "policy verdicts are not available");
                return;
            }
        };
        // Polled rather than woken: waiting on the ring's descriptor would take unsafe code for a diagnostics feed
        // that a fifth of a second does not hurt (a full ring drops records; the counters keep them).
        let mut tick = tokio::time::interval(VERDICT_POLL);
        loop {
            tick.tick().await;
            let records = ring.drain();
            if records.is_empty() {
                continue;
            }
            let names = self.names.read().map(|n| Arc::clone(&n)).unwrap_or_default();
            let now = jiff::Timestamp::now();
            if let Ok(mut v) = self.verdicts.lock() {
                for r in &records {
                    let line = policy::report::describe(r, &names);
                    if r.verdict >= skiff_ebpf_common::VERDICT_DENIED {
                        tracing::debug!(verdict = %line, "network policy");
                    }
                    v.push_back(format!("{now} {line}"));
                    while v.len() > KEEP_VERDICTS {
                        v.pop_front();
                    }
                }
            }
        }
    }
}

/// Gives a local pod the address this node assigned and its node name.
fn fill_local(p: &mut Pod, ip: Ipv4Addr, node: &str) {
    let status = p.status.get_or_insert_with(Default::default);
    if status.pod_ip.is_none() {
        status.pod_ip = Some(ip.to_string());
    }
    if status.phase.is_none() {
        status.phase = Some("Pending".into());
    }
    let spec = p.spec.get_or_insert_with(Default::default);
    if spec.node_name.is_none() {
        spec.node_name = Some(node.to_string());
    }
}

impl PodPolicy for Policy {
    fn admit<'a>(&'a self, uid: &'a str, pod: &'a Pod, net: &'a PodNet) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(Policy::admit(self, uid, pod, net))
    }

    fn forget(&self, uid: &str) {
        Policy::forget(self, uid);
    }

    fn recent_verdicts(&self) -> Vec<String> {
        Policy::recent_verdicts(self)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! One pod's worker: a task that owns the pod's record and, on every event (pod update, container exit, probe
//! verdict, hook result, config change, timer), asks [`plan::next_actions`] what to do and carries the steps out:
//! the sandbox and volumes ([`sandbox`]), container runs ([`start`]), stopping, exits and teardown ([`stop`]). Then
//! it saves the record (once per pass, off the async workers) and writes the status through the status subresource.
//! Hooks and stop sequences run as tasks that report back as events, so the worker never waits on a container.

mod sandbox;
mod start;
mod stop;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod};
use kube::api::{Api, Patch, PatchParams};
use skiff_client::events::EventType;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::plan::{self, Action, Progress, Settings};
use super::probes::{self, ProbeKind};
use super::record::{PodRecord, Waiting};
use super::status::{self, Observed, ProbeState};
use super::{ContainerView, Ctx, PodEvent, PodView};
use crate::metrics::StartPhase;

/// The longest a worker sleeps without re-checking its pod.
const RESYNC: Duration = Duration::from_secs(10);

fn now_str() -> String {
    Timestamp::now().to_string()
}

/// Runs blocking work (file system, mounts) on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "a blocking step of a pod worker panicked");
            None
        }
    }
}

/// How a step went.
enum Step {
    /// Done (or nothing to do).
    Done,
    /// Try again within this long; the rest of the pass goes on.
    Retry(Duration),
    /// The sandbox is not ready: end the pass, try again within this long.
    Halt(Duration),
}

/// The pod's worker.
pub struct Worker {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    rec: PodRecord,
    rx: mpsc::UnboundedReceiver<PodEvent>,
    tx: mpsc::UnboundedSender<PodEvent>,
    /// What the planner needs besides the pod and the record.
    progress: Progress,
    /// Probe tasks by container.
    probe_tasks: BTreeMap<String, JoinHandle<()>>,
    /// Stop sequences (preStop, SIGTERM, SIGKILL at the deadline) by runc id.
    stop_tasks: BTreeMap<String, JoinHandle<()>>,
    /// The record changed since it was last saved.
    dirty: bool,
    last_status: Option<serde_json::Value>,
    seen: Instant,
    reported_start: bool,
    /// The steps of the first start already timed ([`first_start_phase`]).
    timed_phases: std::collections::BTreeSet<StartPhase>,
    volume_paths: BTreeMap<String, PathBuf>,
    volume_error: Option<String>,
    tokens: BTreeMap<(String, String), (String, Instant)>,
    /// The `/etc` files last written (hosts, resolv.conf, hostname).
    pod_files: Option<[String; 3]>,
    /// When the first container run started (for the first-probe phase of the pod's start).
    container_started: Option<Instant>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("uid", &self.rec.uid).finish()
    }
}

/// The step of a pod's first start `action` is timed as, for the sandbox steps the executor times here (the
/// network and container steps time themselves, inside).
fn first_start_phase(action: &Action) -> Option<StartPhase> {
    match action {
        Action::AdmitPolicy | Action::WritePodFiles | Action::LimitPids(_) => Some(StartPhase::PodSetup),
        Action::PrepareVolumes => Some(StartPhase::Volumes),
        _ => None,
    }
}

impl Worker {
    /// A worker for `pod`, continuing `record` if the agent already knew the pod.
    pub fn new(
        ctx: Arc<Ctx>,
        pod: Arc<Pod>,
        record: Option<PodRecord>,
        rx: mpsc::UnboundedReceiver<PodEvent>,
        tx: mpsc::UnboundedSender<PodEvent>,
    ) -> Self {
        let rec = record.unwrap_or_else(|| PodRecord {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ..Default::default()
        });
        Worker {
            ctx,
            pod,
            rec,
            rx,
            tx,
            progress: Progress::default(),
            probe_tasks: BTreeMap::new(),
            stop_tasks: BTreeMap::new(),
            dirty: false,
            last_status: None,
            seen: Instant::now(),
            reported_start: false,
            timed_phases: std::collections::BTreeSet::new(),
            volume_paths: BTreeMap::new(),
            volume_error: None,
            tokens: BTreeMap::new(),
            pod_files: None,
            container_started: None,
        }
    }

    /// Marks the record as a static pod's.
    pub fn set_static(&mut self) {
        self.rec.static_pod = true;
    }

    /// Marks the pod as already gone from the API (an orphan to clean up).
    pub fn set_removed(&mut self) {
        self.progress.removed = true;
    }

    fn pod_dir(&self) -> PathBuf {
        self.ctx.paths.pod(&self.rec.uid)
    }

    /// Notes that the record changed; it is saved at the end of the pass.
    fn touch(&mut self) {
        self.dirty = true;
    }

    /// Saves the record if it changed (atomically, on the blocking pool).
    async fn flush(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let (rec, dir) = (self.rec.clone(), self.pod_dir());
        let saved = blocking(move || std::fs::create_dir_all(&dir).and_then(|()| rec.save(&dir.join("record.json"))));
        if let Some(Err(e)) = saved.await {
            tracing::warn!(pod = %self.rec.name, error = %e, "saving the pod record failed");
        }
    }

    fn reference(&self, container: Option<&str>) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(self.rec.namespace.clone()),
            name: Some(self.rec.name.clone()),
            uid: Some(self.rec.uid.clone()),
            field_path: container.map(|c| {
                let init = self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.init_containers.as_ref())
                    .is_some_and(|ics| ics.iter().any(|i| i.name == c));
                if init { format!("spec.initContainers{{{c}}}") } else { format!("spec.containers{{{c}}}") }
            }),
            ..Default::default()
        }
    }

    async fn event(&self, container: Option<&str>, ty: EventType, reason: &str, message: &str) {
        self.ctx.recorder.record(&self.reference(container), ty, reason, message).await;
    }

    /// Runs until the pod is gone and cleaned up.
    pub async fn run(mut self) {
        self.readopt().await;
        loop {
            let Some(wake) = self.sync().await else { break };
            let sleep = wake.map_or(RESYNC, |w| w.min(RESYNC)).max(Duration::from_millis(10));
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => {
                        self.handle(ev).await;
                        while let Ok(ev) = self.rx.try_recv() {
                            self.handle(ev).await;
                        }
                    }
                    None => {
                        // the manager is gone (agent shutting down): leave everything running
                        self.flush().await;
                        break;
                    }
                },
                () = tokio::time::sleep(sleep) => {}
            }
        }
        for (_, h) in std::mem::take(&mut self.probe_tasks) {
            h.abort();
        }
    }

    async fn handle(&mut self, ev: PodEvent) {
        match ev {
            PodEvent::Update(p) if !status::is_older(&p, &self.pod) => self.pod = p,
            PodEvent::Update(_) => {}
            PodEvent::Removed => self.progress.removed = true,
            PodEvent::Exited(id) => self.on_exit(&id).await,
            PodEvent::Probe(r) => self.on_probe(r).await,
            PodEvent::ProbeFailed { container, kind, message } => {
                self.event(
                    Some(&container),
                    EventType::Warning,
                    "Unhealthy",
                    &format!("{} probe failed: {message}", kind.as_str()),
                )
                .await;
            }
            PodEvent::PostStartDone { container, id, error } => self.on_post_start(&container, &id, error).await,
            PodEvent::Refresh => {
                let terminating = self.progress.terminating_since.is_some();
                if !terminating && (self.rec.net.is_some() || self.host_network()) {
                    self.refresh_volumes().await;
                }
            }
        }
    }

    fn host_network(&self) -> bool {
        self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
    }

    fn container_spec(&self, name: &str) -> Option<Container> {
        let spec = self.pod.spec.as_ref()?;
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name).cloned()
    }

    /// The id of a container's run if it is still running.
    fn running_id(&self, container: &str) -> Option<String> {
        self.rec
            .containers
            .get(container)
            .and_then(|c| c.current.as_ref())
            .filter(|i| i.exit.is_none())
            .map(|i| i.id.clone())
    }

    fn start_probes(&mut self, c: &Container, id: &str) {
        if let Some(h) = self.probe_tasks.remove(&c.name) {
            h.abort();
        }
        let state = ProbeState { started: c.startup_probe.is_none(), ready: c.readiness_probe.is_none() };
        self.progress.probes.insert(c.name.clone(), state);
        if let Some(h) = probes::spawn(c, self.probe_target(id), self.tx.clone()) {
            self.probe_tasks.insert(c.name.clone(), h);
        }
    }

    fn probe_target(&self, id: &str) -> probes::Target {
        let ip = self.rec.net.as_ref().map_or(self.ctx.node.ip, |n| n.ip);
        probes::Target {
            pod_ip: std::net::IpAddr::V4(ip),
            container_id: id.to_string(),
            runtime: self.ctx.runtime.clone(),
            metrics: self.ctx.metrics.clone(),
        }
    }

    async fn on_probe(&mut self, r: probes::ProbeResult) {
        if self.running_id(&r.container).as_deref() != Some(r.container_id.as_str()) {
            return;
        }
        let st = self.progress.probes.entry(r.container.clone()).or_default();
        match (r.kind, r.ok) {
            (ProbeKind::Readiness, ok) => st.ready = ok,
            (ProbeKind::Startup, true) => st.started = true,
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                let what = if r.kind == ProbeKind::Startup { "startup" } else { "liveness" };
                let message = format!("Container {} failed {what} probe, will be restarted", r.container);
                self.restart_run(&r.container, &r.container_id, what).await;
                self.event(Some(&r.container), EventType::Normal, "Killing", &message).await;
            }
            (ProbeKind::Liveness, true) => {}
        }
    }

    async fn on_post_start(&mut self, container: &str, id: &str, error: Option<String>) {
        // (the hook of an earlier run that ended may finish late: it must not release the current run's hold)
        let current = self.running_id(container);
        if current.is_some() && current.as_deref() != Some(id) {
            return;
        }
        self.progress.post_start_pending.remove(container);
        let Some(msg) = error else { return };
        if current.is_none() {
            return;
        }
        self.event(Some(container), EventType::Warning, "FailedPostStartHook", &format!("PostStartHook failed: {msg}"))
            .await;
        self.restart_run(container, id, "postStart hook failed").await;
    }

    /// Stops a run the agent wants restarted (a failed probe or hook): its exit is recorded as the agent's doing.
    async fn restart_run(&mut self, container: &str, id: &str, why: &str) {
        if let Some(c) = self.rec.containers.get_mut(container) {
            c.kill_reason = Some(why.into());
            self.touch();
        }
        let grace = plan::grace_period(&self.pod, false, false);
        let kill_at = Timestamp::now().checked_add(jiff::SignedDuration::try_from(grace).unwrap_or_default());
        self.stop_run(container, id, kill_at.unwrap_or_else(|_| Timestamp::now()));
    }

    /// One pass over the pod; `None` when the worker is done, else when it wants to be woken at the latest.
    async fn sync(&mut self) -> Option<Option<Duration>> {
        let deleting = self.progress.removed || self.pod.metadata.deletion_timestamp.is_some();
        if deleting && self.progress.terminating_since.is_none() {
            self.progress.terminating_since = Some(Timestamp::now());
            for (_, h) in std::mem::take(&mut self.probe_tasks) {
                h.abort();
            }
        }
        if deleting {
            // when each shorter grace period was first seen (a second delete, or the pod vanishing from the API)
            let grace = plan::grace_period(&self.pod, self.progress.removed, true);
            if self.progress.grace_seen.is_none_or(|(seen, _)| grace < seen) {
                self.progress.grace_seen = Some((grace, Timestamp::now()));
            }
        }
        let settings = Settings {
            backoff: self.ctx.cfg.backoff,
            pod_max_pids: self.ctx.cfg.pod_max_pids,
            policy_enforced: self.ctx.policy.is_some(),
        };
        let plan = plan::next_actions(&self.pod, &self.rec, &self.progress, &settings, Timestamp::now());
        let mut wake = plan.wake;
        let mut phases: BTreeMap<StartPhase, f64> = BTreeMap::new();
        for action in plan.actions {
            let timed = if self.reported_start { None } else { first_start_phase(&action) };
            let began = Instant::now();
            let step = self.execute(action).await;
            if let Some(phase) = timed {
                *phases.entry(phase).or_default() += began.elapsed().as_secs_f64();
            }
            let (Step::Retry(d) | Step::Halt(d)) = step else { continue };
            wake = Some(wake.map_or(d, |w| w.min(d)));
            if matches!(step, Step::Halt(_)) {
                break;
            }
        }
        // each step of the pod's first start is timed in the first pass that runs it (a later pass may run it
        // again, e.g. volumes)
        for (phase, secs) in phases {
            if self.timed_phases.insert(phase) {
                self.ctx.metrics.start_phase(phase, secs);
            }
        }
        self.flush().await;
        if plan.done {
            return None;
        }
        self.publish_view();
        if !self.progress.removed {
            self.write_status().await;
        }
        Some(wake)
    }

    async fn execute(&mut self, action: Action) -> Step {
        match action {
            Action::RecordStartTime => {
                self.rec.start_time = Some(now_str());
                self.touch();
                Step::Done
            }
            Action::CreateSandbox => self.create_sandbox().await,
            Action::AdmitPolicy => self.admit_policy().await,
            Action::WritePodFiles => self.write_pod_files().await,
            Action::LimitPids(max) => self.limit_pids(max).await,
            Action::PrepareVolumes => self.prepare_volumes().await,
            Action::BackOff { container, waiting, event } => {
                self.set_waiting(&container, waiting);
                if let Some(message) = event {
                    self.event(Some(&container), EventType::Warning, "BackOff", &message).await;
                }
                Step::Done
            }
            Action::Start { container, init, backoff } => {
                let Some(c) = self.container_spec(&container) else { return Step::Done };
                if let Some(entry) = backoff {
                    self.rec.containers.entry(container).or_default().backoff = Some(entry);
                    self.touch();
                }
                self.start(&c, init).await
            }
            Action::Stop { container, id, kill_at, cause } => {
                if cause == plan::StopCause::PodDeleted {
                    let message = format!("Stopping container {container}");
                    self.event(Some(&container), EventType::Normal, "Killing", &message).await;
                }
                self.stop_run(&container, &id, kill_at);
                Step::Done
            }
            Action::Hasten { id, kill_at } => {
                self.hasten_stop(&id, kill_at);
                Step::Done
            }
            Action::PollExits => {
                self.poll_exits().await;
                Step::Done
            }
            Action::RecordLost { container } => {
                self.record_lost(&container).await;
                Step::Done
            }
            Action::Teardown => {
                self.teardown_sandbox().await;
                Step::Done
            }
            Action::MarkFinished => {
                self.rec.finished = true;
                self.touch();
                tracing::info!(pod = %self.rec.name, "pod finished; sandbox removed");
                Step::Done
            }
            Action::Forget { delete } => {
                self.forget(delete).await;
                Step::Done
            }
        }
    }

    fn set_waiting(&mut self, name: &str, waiting: Waiting) {
        let r = self.rec.containers.entry(name.to_string()).or_default();
        if r.waiting.as_ref() != Some(&waiting) {
            r.waiting = Some(waiting);
            self.dirty = true;
        }
    }

    fn log_path(&self, name: &str, attempt: u32) -> PathBuf {
        self.ctx.paths.container_log(&self.rec.namespace, &self.rec.name, &self.rec.uid, name, attempt)
    }

    fn observed(&self) -> Observed {
        Observed { probes: self.progress.probes.clone(), host_ip: self.ctx.node.ip.to_string(), now: None }
    }

    fn publish_view(&self) {
        let mut containers = BTreeMap::new();
        for (name, r) in &self.rec.containers {
            let cur = r.current.as_ref();
            containers.insert(
                name.clone(),
                ContainerView {
                    id: cur.map(|i| i.id.clone()),
                    running: r.running(),
                    log: cur.map(|i| self.log_path(name, i.attempt)),
                    previous_log: cur
                        .filter(|i| i.attempt > 0)
                        .map(|i| self.log_path(name, i.attempt - 1))
                        .filter(|p| p.exists()),
                    cgroup: cur.filter(|i| i.exit.is_none()).map(|i| self.ctx.container_cgroup(&self.rec.uid, &i.id)),
                    bundle: cur.map(|i| self.ctx.paths.container(&i.id)),
                    tty: self.container_spec(name).is_some_and(|c| c.tty == Some(true)),
                },
            );
        }
        let view = PodView {
            uid: self.rec.uid.clone(),
            created: self.pod.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
            containers,
            netns: self.rec.net.as_ref().map(|n| n.netns.clone()),
            host_network: self.host_network(),
        };
        if let Ok(mut v) = self.ctx.views.write() {
            v.insert((self.rec.namespace.clone(), self.rec.name.clone()), view);
        }
    }

    async fn write_status(&mut self) {
        let st = status::pod_status(&self.pod, &self.rec, &self.observed());
        let ready =
            st.conditions.as_ref().is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready && !self.reported_start {
            self.reported_start = true;
            self.ctx.metrics.pod_started(self.seen.elapsed().as_secs_f64());
            if let Some(at) = self.container_started {
                self.ctx.metrics.start_phase(StartPhase::FirstProbe, at.elapsed().as_secs_f64());
            }
        }
        let Ok(value) = serde_json::to_value(&st) else { return };
        // (a static pod's object is its manifest, not the API's copy)
        let api_agrees = self.rec.static_pod
            || status::conditions_agree(
                st.conditions.as_deref(),
                self.pod.status.as_ref().and_then(|s| s.conditions.as_deref()),
            );
        if self.last_status.as_ref() == Some(&value) && api_agrees {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.rec.namespace);
        let patch = Patch::Merge(serde_json::json!({"status": value.clone()}));
        match api.patch_status(&self.rec.name, &PatchParams::default(), &patch).await {
            Ok(p) => {
                self.last_status = Some(value);
                if !self.rec.static_pod {
                    self.pod = Arc::new(p);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 && !self.rec.static_pod => self.progress.removed = true,
            Err(e) => tracing::debug!(pod = %self.rec.name, error = %e, "writing the pod status failed; will retry"),
        }
    }
}

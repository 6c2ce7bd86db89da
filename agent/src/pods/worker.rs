//! One pod's worker: a task that owns the pod's record and, on every event (pod update, container exit, probe
//! verdict, config change, timer), runs [`Worker::sync`]: sandbox, volumes, init containers in order, containers
//! per restart policy with back-off, status through the status subresource. A pod being deleted gets preStop
//! hooks, SIGTERM, its grace period, SIGKILL, cleanup, and finally the API DELETE with grace 0.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use skiff_client::events::EventType;
use tokio::sync::mpsc;

use super::backoff::{self, Decision};
use super::container::{self, PodFiles, RunInputs};
use super::env::{self, EnvInputs, PodFacts};
use super::probes::{self, ProbeKind};
use super::record::{self, ContainerRecord, Instance, PodRecord, Termination, Waiting};
use super::status::{self, Observed, ProbeState};
use super::volumes::{self, VolumeInputs};
use super::{ContainerView, Ctx, NamespaceLookup, PodEvent, PodView, etc, mounts};
use crate::metrics::StartPhase;
use crate::runtime::{ExitRecord, LaunchSpec, RuntimeError};

/// The longest a worker sleeps without re-checking its pod.
const RESYNC: Duration = Duration::from_secs(10);

fn now_str() -> String {
    Timestamp::now().to_string()
}

/// Makes a run's bundle afresh: `rootfs` mounted as an overlay of `layers` with `upper` and `work` beside it, and an
/// empty `termination-log`. Returns the image's `/etc/passwd` and `/etc/group` (empty when it has none). Blocking: it
/// runs on tokio's blocking pool.
fn prepare_bundle(layers: &[PathBuf], bundle: &std::path::Path) -> Result<(String, String), String> {
    let rootfs = bundle.join("rootfs");
    // (a fresh bundle has nothing mounted; looking costs a read of the machine's mount table)
    if bundle.exists() {
        let _ = mounts::unmount_under(bundle);
        let _ = std::fs::remove_dir_all(bundle);
    }
    if let Err(e) = std::fs::create_dir_all(bundle).map_err(|e| e.to_string()).and_then(|()| {
        crate::images::layers::mount_rootfs(layers, &bundle.join("upper"), &bundle.join("work"), &rootfs)
            .map_err(|e| e.to_string())
    }) {
        let _ = std::fs::remove_dir_all(bundle);
        return Err(e);
    }
    let _ = std::fs::write(bundle.join("termination-log"), b"");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    Ok((passwd, group))
}

/// The pod's worker.
pub struct Worker {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    rec: PodRecord,
    rx: mpsc::UnboundedReceiver<PodEvent>,
    tx: mpsc::UnboundedSender<PodEvent>,
    probes: BTreeMap<String, tokio::task::JoinHandle<()>>,
    probe_state: BTreeMap<String, ProbeState>,
    last_status: Option<serde_json::Value>,
    seen: Instant,
    reported_start: bool,
    removed: bool,
    done: bool,
    volume_paths: BTreeMap<String, PathBuf>,
    volume_error: Option<String>,
    tokens: BTreeMap<(String, String), (String, Instant)>,
    /// Whether the pod's cgroup has its pids limit.
    pids_limited: bool,
    /// Whether NetworkPolicy covers the pod's veth (before any container starts).
    policy_admitted: bool,
    /// When the last container run started (for the first-probe phase of the pod's start).
    container_started: Option<Instant>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("uid", &self.rec.uid).finish()
    }
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
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
            uid: uid_of(&pod),
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
            probes: BTreeMap::new(),
            probe_state: BTreeMap::new(),
            last_status: None,
            seen: Instant::now(),
            reported_start: false,
            removed: false,
            done: false,
            volume_paths: BTreeMap::new(),
            volume_error: None,
            tokens: BTreeMap::new(),
            pids_limited: false,
            policy_admitted: false,
            container_started: None,
        }
    }

    /// Marks the record as a static pod's.
    pub fn set_static(&mut self) {
        self.rec.static_pod = true;
    }

    /// Marks the pod as already gone from the API (an orphan to clean up).
    pub fn set_removed(&mut self) {
        self.removed = true;
    }

    fn pod_dir(&self) -> PathBuf {
        self.ctx.paths.pod(&self.rec.uid)
    }

    fn save(&self) {
        if let Err(e) =
            std::fs::create_dir_all(self.pod_dir()).and_then(|()| self.rec.save(&self.pod_dir().join("record.json")))
        {
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
            let wake = self.sync().await;
            if self.done {
                break;
            }
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
                        break;
                    }
                },
                () = tokio::time::sleep(sleep) => {}
            }
        }
        for (_, h) in std::mem::take(&mut self.probes) {
            h.abort();
        }
    }

    async fn handle(&mut self, ev: PodEvent) {
        match ev {
            PodEvent::Update(p) if !status::is_older(&p, &self.pod) => self.pod = p,
            PodEvent::Update(_) => {}
            PodEvent::Removed => self.removed = true,
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
            PodEvent::Refresh => {
                if self.rec.net.is_some() || self.host_network() {
                    self.refresh_volumes().await;
                }
            }
        }
    }

    fn host_network(&self) -> bool {
        self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
    }

    fn policy(&self) -> String {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into())
    }

    fn container_spec(&self, name: &str) -> Option<(Container, bool)> {
        let spec = self.pod.spec.as_ref()?;
        if let Some(c) = spec.containers.iter().find(|c| c.name == name) {
            return Some((c.clone(), false));
        }
        spec.init_containers.iter().flatten().find(|c| c.name == name).map(|c| (c.clone(), true))
    }

    /// After an agent restart: checks every run the record says is running.
    async fn readopt(&mut self) {
        let names: Vec<String> = self.rec.containers.keys().cloned().collect();
        for name in names {
            let Some(inst) = self.rec.containers.get(&name).and_then(|c| c.current.clone()) else { continue };
            if inst.exit.is_some() {
                continue;
            }
            let exit_file = self.ctx.paths.exit_file(&inst.id);
            if exit_file.exists() {
                self.on_exit(&inst.id).await;
                continue;
            }
            match self.ctx.runtime.state(&inst.id).await {
                Ok(Some(s)) if s.status == "running" || s.status == "created" => {
                    tracing::info!(pod = %self.rec.name, container = %name, id = %inst.id, "re-adopted a running container");
                    if let Some((c, _)) = self.container_spec(&name) {
                        self.start_probes(&c, &inst.id);
                    }
                }
                _ => {
                    // Stopped without a shim record: the shim was lost with the container.
                    self.finish_run(
                        &name,
                        &inst,
                        ExitRecord { exit_code: 137, signal: None, finished_at: now_str(), start_error: None },
                        Some("ContainerStatusUnknown"),
                        Some("The container could not be located when the agent restarted".into()),
                    )
                    .await;
                }
            }
        }
    }

    fn start_probes(&mut self, c: &Container, id: &str) {
        if let Some(h) = self.probes.remove(&c.name) {
            h.abort();
        }
        let state = ProbeState { started: c.startup_probe.is_none(), ready: c.readiness_probe.is_none() };
        self.probe_state.insert(c.name.clone(), state);
        let ip =
            self.rec.net.as_ref().map(|n| std::net::IpAddr::V4(n.ip)).unwrap_or(std::net::IpAddr::V4(self.ctx.node.ip));
        let target = probes::Target {
            pod_ip: ip,
            container_id: id.to_string(),
            runtime: self.ctx.runtime.clone(),
            metrics: self.ctx.metrics.clone(),
        };
        if let Some(h) = probes::spawn(c, target, self.tx.clone()) {
            self.probes.insert(c.name.clone(), h);
        }
    }

    async fn on_probe(&mut self, r: probes::ProbeResult) {
        let current = self
            .rec
            .containers
            .get(&r.container)
            .and_then(|c| c.current.as_ref())
            .filter(|i| i.exit.is_none())
            .map(|i| i.id.clone());
        if current.as_deref() != Some(r.container_id.as_str()) {
            return;
        }
        let st = self.probe_state.entry(r.container.clone()).or_default();
        match (r.kind, r.ok) {
            (ProbeKind::Readiness, ok) => st.ready = ok,
            (ProbeKind::Startup, true) => st.started = true,
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                let what = if r.kind == ProbeKind::Startup { "startup" } else { "liveness" };
                if let Some(c) = self.rec.containers.get_mut(&r.container) {
                    c.kill_reason = Some(what.into());
                }
                self.save();
                self.event(
                    Some(&r.container),
                    EventType::Normal,
                    "Killing",
                    &format!("Container {} failed {what} probe, will be restarted", r.container),
                )
                .await;
                self.stop_container(&r.container, &r.container_id).await;
            }
            (ProbeKind::Liveness, true) => {}
        }
    }

    /// SIGTERM, then SIGKILL after the grace period, in the background (the exit arrives as an event).
    async fn stop_container(&mut self, name: &str, id: &str) {
        let grace = self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0);
        if let Some(h) = self.probes.remove(name) {
            h.abort();
        }
        let rt = self.ctx.runtime.clone();
        let id = id.to_string();
        let pre_stop = self
            .container_spec(name)
            .and_then(|(c, _)| c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()).map(|h| (c, h)));
        let target = self.probe_target(&id);
        tokio::spawn(async move {
            let limit = Duration::from_secs(u64::try_from(grace).unwrap_or(30));
            let start = Instant::now();
            if let Some((c, h)) = pre_stop {
                let _ = super::lifecycle::run(&h, &c, &target, limit).await;
            }
            let _ = rt.signal(&id, "TERM").await;
            let left = limit.saturating_sub(start.elapsed());
            let deadline = Instant::now() + left;
            while Instant::now() < deadline {
                match rt.state(&id).await {
                    Ok(Some(s)) if s.status == "running" => tokio::time::sleep(Duration::from_millis(100)).await,
                    _ => return,
                }
            }
            let _ = rt.signal(&id, "KILL").await;
        });
    }

    fn probe_target(&self, id: &str) -> probes::Target {
        let ip =
            self.rec.net.as_ref().map(|n| std::net::IpAddr::V4(n.ip)).unwrap_or(std::net::IpAddr::V4(self.ctx.node.ip));
        probes::Target {
            pod_ip: ip,
            container_id: id.to_string(),
            runtime: self.ctx.runtime.clone(),
            metrics: self.ctx.metrics.clone(),
        }
    }

    /// A container run ended: record how, and clean up its runc state and root file system.
    async fn on_exit(&mut self, id: &str) {
        let Some((name, inst)) = self.rec.containers.iter().find_map(|(n, c)| {
            c.current.as_ref().filter(|i| i.id == id && i.exit.is_none()).map(|i| (n.clone(), i.clone()))
        }) else {
            // Already recorded (a start failure also leaves an exit record): only tidy up.
            let _ = std::fs::remove_file(self.ctx.paths.exit_file(id));
            return;
        };
        let record = ExitRecord::read(&self.ctx.paths.exit_file(id)).unwrap_or(ExitRecord {
            exit_code: 137,
            signal: None,
            finished_at: now_str(),
            start_error: Some("the container's exit status was lost".into()),
        });
        self.finish_run(&name, &inst, record, None, None).await;
    }

    async fn finish_run(
        &mut self,
        name: &str,
        inst: &Instance,
        record: ExitRecord,
        reason: Option<&str>,
        message: Option<String>,
    ) {
        let cg = self.ctx.container_cgroup(&self.rec.uid, &inst.id);
        let oom = self.ctx.cgroups.oom_kills(&cg) > 0;
        let bundle = self.ctx.paths.container(&inst.id);
        let tlog = std::fs::read(bundle.join("termination-log"))
            .ok()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
            .filter(|m| !m.is_empty());
        let reason = reason.map(str::to_string).unwrap_or_else(|| {
            if record.start_error.is_some() {
                "StartError".into()
            } else if oom {
                "OOMKilled".into()
            } else if record.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            }
        });
        let mut message = message.or(record.start_error.clone()).or(tlog);
        if message.is_none() && record.exit_code != 0 {
            let fallback = self
                .container_spec(name)
                .is_some_and(|(c, _)| c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"));
            if fallback {
                message = Some(super::super::server::logs::tail_text(&self.log_path(name, inst.attempt), 80, 2048));
            }
        }
        let t = Termination {
            exit_code: record.exit_code,
            signal: record.signal,
            reason: reason.clone(),
            message,
            started_at: Some(inst.started_at.clone()),
            finished_at: record.finished_at.clone(),
            container_id: format!("runc://{}", inst.id),
        };
        if let Some(h) = self.probes.remove(name) {
            h.abort();
        }
        self.probe_state.insert(name.to_string(), ProbeState::default());
        if let Some(c) = self.rec.containers.get_mut(name)
            && let Some(cur) = c.current.as_mut()
        {
            cur.exit = Some(t);
        }
        self.save();
        self.cleanup_run(&inst.id).await;
        if reason == "OOMKilled" {
            self.event(
                Some(name),
                EventType::Warning,
                "OOMKilled",
                &format!("Container {name} was killed by the OOM killer (memory limit)"),
            )
            .await;
        }
        tracing::info!(pod = %self.rec.name, container = %name, exit_code = record.exit_code, %reason, "container ended");
    }

    async fn cleanup_run(&self, id: &str) {
        let started = Instant::now();
        if let Err(e) = self.ctx.runtime.delete(id).await {
            tracing::warn!(id, error = %e, "runc delete failed");
        }
        let bundle = self.ctx.paths.container(id);
        let left = mounts::unmount_under(&bundle);
        if left.is_empty() {
            let _ = std::fs::remove_dir_all(&bundle);
        } else {
            tracing::warn!(id, ?left, "could not unmount the container's root file system");
        }
        let _ = std::fs::remove_file(self.ctx.paths.exit_file(id));
        let _ = self.ctx.cgroups.remove(&self.ctx.container_cgroup(&self.rec.uid, id));
        self.ctx.metrics.operation("remove_container", started.elapsed().as_secs_f64());
    }

    fn log_path(&self, name: &str, attempt: u32) -> PathBuf {
        self.ctx.paths.container_log(&self.rec.namespace, &self.rec.name, &self.rec.uid, name, attempt)
    }

    /// One pass over the pod; returns when it wants to be woken at the latest.
    pub async fn sync(&mut self) -> Option<Duration> {
        if self.removed || self.pod.metadata.deletion_timestamp.is_some() {
            self.terminate().await;
            self.done = true;
            return None;
        }
        let wake = self.sync_running().await;
        self.publish_view();
        self.write_status().await;
        wake
    }

    async fn sync_running(&mut self) -> Option<Duration> {
        if self.rec.finished {
            return None;
        }
        if self.rec.start_time.is_none() {
            self.rec.start_time = Some(now_str());
            self.save();
        }
        if self.rec.net.is_none() && !self.host_network() {
            let started = Instant::now();
            match self.ctx.net.attach(&self.rec.uid).await {
                Ok(net) => {
                    self.rec.net = Some(net);
                    self.save();
                    self.ctx.metrics.operation("create_sandbox", started.elapsed().as_secs_f64());
                    self.ctx.metrics.start_phase(StartPhase::SandboxNetwork, started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    self.event(
                        None,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        &format!("Failed to create pod sandbox: {e}"),
                    )
                    .await;
                    return Some(Duration::from_secs(5));
                }
            }
        }
        if !self.policy_admitted
            && let (Some(policy), Some(net)) = (&self.ctx.policy, &self.rec.net)
        {
            match policy.admit(&self.rec.uid, &self.pod, net).await {
                Ok(()) => self.policy_admitted = true,
                Err(e) => {
                    self.event(
                        None,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        &format!("Failed to put the pod under network policy: {e}"),
                    )
                    .await;
                    return Some(Duration::from_secs(5));
                }
            }
        }
        if let Err(e) = self.write_pod_files() {
            self.event(
                None,
                EventType::Warning,
                "FailedCreatePodSandBox",
                &format!("Failed to write the pod's /etc files: {e}"),
            )
            .await;
            return Some(Duration::from_secs(5));
        }
        if let Some(max) = self.ctx.cfg.pod_max_pids.filter(|_| !self.pids_limited) {
            match self.ctx.cgroups.limit_pids(&self.ctx.pod_cgroup(&self.rec.uid), max) {
                Ok(()) => self.pids_limited = true,
                Err(e) => {
                    self.event(
                        None,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        &format!("Failed to limit the pod's processes to {max}: {e}"),
                    )
                    .await;
                    return Some(Duration::from_secs(5));
                }
            }
        }
        if !self.prepare_volumes().await {
            return Some(Duration::from_secs(10));
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        let policy = self.policy();
        let now = Timestamp::now();
        // Init containers, one at a time, in order.
        for c in spec.init_containers.clone().unwrap_or_default() {
            let r = self
                .rec
                .containers
                .entry(c.name.clone())
                .or_insert_with(|| ContainerRecord { init: true, ..Default::default() })
                .clone();
            if r.succeeded() {
                continue;
            }
            if r.running() {
                return None;
            }
            if let Some(t) = r.exited() {
                if !status::init_restarts(&policy, t.exit_code) {
                    return self.maybe_finish().await;
                }
                if let Some(wait) = self.backoff_wait(&c.name, t, now) {
                    return Some(wait);
                }
            }
            return self.start(&c, true).await;
        }
        let mut wake: Option<Duration> = None;
        let mut min = |d: Option<Duration>| {
            if let Some(d) = d {
                wake = Some(wake.map_or(d, |w: Duration| w.min(d)));
            }
        };
        for c in spec.containers.clone() {
            let r = self.rec.containers.entry(c.name.clone()).or_default().clone();
            if r.running() {
                continue;
            }
            if let Some(t) = r.exited() {
                if !status::restarts(&policy, t.exit_code) {
                    continue;
                }
                if let Some(wait) = self.backoff_wait(&c.name, t, now) {
                    min(Some(wait));
                    continue;
                }
            }
            min(self.start(&c, false).await);
        }
        let fin = self.maybe_finish().await;
        min(fin);
        wake
    }

    /// For a run that ended and should run again: `Some(wait)` while in back-off (with the waiting reason set).
    fn backoff_wait(&mut self, name: &str, t: &Termination, now: Timestamp) -> Option<Duration> {
        let policy = self.ctx.cfg.backoff;
        let finished: Timestamp = t.finished_at.parse().unwrap_or(now);
        let r = self.rec.containers.get_mut(name)?;
        match backoff::decide(r.backoff, finished, now, &policy) {
            Decision::Wait { until, window } => {
                let msg = format!(
                    "back-off {}s restarting failed container={name} pod={}_{}({})",
                    window.as_secs(),
                    self.rec.name,
                    self.rec.namespace,
                    self.rec.uid
                );
                let fresh = r.waiting.as_ref().is_none_or(|w| w.reason != "CrashLoopBackOff");
                r.waiting = Some(Waiting { reason: "CrashLoopBackOff".into(), message: msg });
                if fresh {
                    let reference = self.reference(Some(name));
                    let rec = self.ctx.recorder.clone();
                    tokio::spawn(async move {
                        rec.record(&reference, EventType::Warning, "BackOff", "Back-off restarting failed container")
                            .await
                    });
                }
                let ms = until.as_millisecond().saturating_sub(now.as_millisecond()).max(0);
                Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
            }
            Decision::RestartNow(entry) => {
                r.backoff = Some(entry);
                None
            }
        }
    }

    fn set_waiting(&mut self, name: &str, reason: &str, message: &str) {
        if let Some(r) = self.rec.containers.get_mut(name) {
            r.waiting = Some(Waiting { reason: reason.into(), message: message.into() });
        }
    }

    /// Starts a run of `c`; returns when to retry if it could not.
    async fn start(&mut self, c: &Container, init: bool) -> Option<Duration> {
        let name = c.name.clone();
        let started = Instant::now();
        let image_name = c.image.clone().unwrap_or_default();
        // Image pull back-off.
        if let Some((entry, failed_at)) = self.rec.containers.get(&name).and_then(|r| r.pull_backoff.clone()) {
            let failed: Timestamp = failed_at.parse().unwrap_or_else(|_| Timestamp::now());
            if let Decision::Wait { until, .. } =
                backoff::decide(Some(entry), failed, Timestamp::now(), &self.ctx.cfg.backoff)
            {
                self.set_waiting(&name, "ImagePullBackOff", &format!("Back-off pulling image {image_name:?}"));
                let ms = until.as_millisecond().saturating_sub(Timestamp::now().as_millisecond()).max(0);
                return Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
            }
        }
        self.objects_listed().await;
        let pull_configs = self.pull_configs();
        let (progress, watched) = tokio::sync::watch::channel(crate::images::progress::PullState::default());
        {
            let reference = self.reference(Some(&name));
            let recorder = self.ctx.recorder.clone();
            let every = crate::images::progress::EVERY;
            tokio::spawn(crate::images::progress::report(watched, image_name.clone(), every, move |message| {
                let (recorder, reference) = (recorder.clone(), reference.clone());
                async move { recorder.record(&reference, EventType::Normal, "Pulling", &message).await }
            }));
        }
        let ensured = self
            .ctx
            .images
            .ensure_with(&image_name, c.image_pull_policy.as_deref(), &pull_configs, Some(&progress))
            .await;
        drop(progress);
        let (image, obtained) = match ensured {
            Ok(x) => x,
            Err(e) => {
                let now = Timestamp::now();
                let r = self.rec.containers.entry(name.clone()).or_default();
                let entry =
                    match backoff::decide(r.pull_backoff.as_ref().map(|(e, _)| *e), now, now, &self.ctx.cfg.backoff) {
                        Decision::RestartNow(e) => e,
                        Decision::Wait { .. } => r
                            .pull_backoff
                            .as_ref()
                            .map(|(e, _)| *e)
                            .unwrap_or(backoff::Entry { window: self.ctx.cfg.backoff.initial, updated: now }),
                    };
                r.pull_backoff = Some((entry, now.to_string()));
                let reason = if matches!(e, crate::images::ImageError::NeverPull(_)) {
                    "ErrImageNeverPull"
                } else {
                    "ErrImagePull"
                };
                r.waiting = Some(Waiting { reason: reason.into(), message: e.to_string() });
                self.save();
                self.ctx.metrics.pull("failed", None);
                self.event(
                    Some(&name),
                    EventType::Warning,
                    "Failed",
                    &format!("Failed to pull image {image_name:?}: {e}"),
                )
                .await;
                self.event(Some(&name), EventType::Warning, "Failed", &format!("Error: {reason}")).await;
                return Some(entry.window);
            }
        };
        if let Some(r) = self.rec.containers.get_mut(&name) {
            r.pull_backoff = None;
        }
        let first_start = !self.reported_start;
        if first_start {
            self.ctx.metrics.start_phase(StartPhase::ImageReady, started.elapsed().as_secs_f64());
        }
        let configuring = Instant::now();
        match &obtained {
            crate::images::Obtained::Present => {
                self.ctx.metrics.pull("present", None);
                self.event(
                    Some(&name),
                    EventType::Normal,
                    "Pulled",
                    &format!("Container image {image_name:?} already present on machine"),
                )
                .await;
            }
            crate::images::Obtained::Pulled(d) => {
                self.ctx.metrics.pull("pulled", Some(d.as_secs_f64()));
                self.event(
                    Some(&name),
                    EventType::Normal,
                    "Pulled",
                    &format!(
                        "Successfully pulled image {image_name:?} in {:.3}s. Image size: {} bytes.",
                        d.as_secs_f64(),
                        image.size
                    ),
                )
                .await;
            }
            crate::images::Obtained::LocalFallback(why) => {
                self.ctx.metrics.pull("local_fallback", None);
                self.event(
                    Some(&name),
                    EventType::Warning,
                    "Pulled",
                    &format!("Registry unreachable ({why}); using image {image_name:?} already present on machine"),
                )
                .await;
            }
        }
        // Environment and argv.
        let facts = self.facts();
        let ns = self.rec.namespace.clone();
        let services: Vec<k8s_openapi::api::core::v1::Service> = self
            .ctx
            .caches
            .services
            .state()
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns.as_str())
                    || (s.metadata.namespace.as_deref() == Some("default")
                        && s.metadata.name.as_deref() == Some("kubernetes"))
            })
            .map(|s| (**s).clone())
            .collect();
        let lookup = NamespaceLookup { caches: &self.ctx.caches, namespace: &ns };
        let inputs = EnvInputs {
            pod: &self.pod,
            facts: &facts,
            lookup: &lookup,
            services: &services,
            image: &image.run,
            node_cpus: self.ctx.node.cpus,
            node_memory: self.ctx.node.memory,
        };
        let mut envs = match env::container_env(c, &inputs) {
            Ok(e) => e,
            Err(msg) => return self.config_error(&name, &msg).await,
        };
        if !envs.iter().any(|(k, _)| k == "HOSTNAME") {
            envs.insert(0, ("HOSTNAME".into(), etc::hostname(&self.pod)));
        }
        if let Some(ks) = services.iter().find(|s| {
            s.metadata.name.as_deref() == Some("kubernetes") && s.metadata.namespace.as_deref() == Some("default")
        }) {
            if let Some(ip) = ks.spec.as_ref().and_then(|s| s.cluster_ip.clone()) {
                for (k, v) in [("KUBERNETES_SERVICE_HOST", ip), ("KUBERNETES_SERVICE_PORT", "443".to_string())] {
                    if !envs.iter().any(|(x, _)| x == k) {
                        envs.push((k.into(), v));
                    }
                }
            }
        }
        let argv = env::argv(c, &image.run, &envs);
        if argv.is_empty() {
            return self.config_error_reason(&name, "CreateContainerError", "no command specified").await;
        }
        // Root file system.
        let layers = match self.ctx.images.layers(&image).await {
            Ok(l) => l,
            Err(e) => {
                return self
                    .config_error_reason(&name, "CreateContainerError", &format!("unpacking image layers: {e}"))
                    .await;
            }
        };
        let prev = self.rec.containers.get(&name).cloned().unwrap_or_default();
        let attempt = match &prev.current {
            Some(cur) => cur.attempt + 1,
            None => prev.restart_count,
        };
        let id = record::container_id(&self.rec.uid, &name, attempt);
        let bundle = self.ctx.paths.container(&id);
        let rootfs = bundle.join("rootfs");
        let tlog = bundle.join("termination-log");
        let prepared = {
            let bundle = bundle.clone();
            tokio::task::spawn_blocking(move || prepare_bundle(&layers, &bundle))
                .await
                .unwrap_or_else(|e| Err(format!("preparing the bundle: {e}")))
        };
        let (passwd, group) = match prepared {
            Ok(files) => files,
            Err(e) => return self.config_error_reason(&name, "CreateContainerError", &e).await,
        };
        let user = match etc::user(&self.pod, c, image.run.user.as_deref(), &passwd, &group) {
            Ok(u) => u,
            Err(msg) => {
                self.cleanup_run(&id).await;
                return self.config_error(&name, &msg).await;
            }
        };
        let files = self.pod_files();
        let seccomp_dir = self.ctx.cfg.seccomp_dir.clone().unwrap_or_else(|| self.ctx.cfg.data_dir.join("seccomp"));
        let run = RunInputs {
            args: argv,
            env: envs,
            image_workdir: image.run.working_dir.clone(),
            user,
            volumes: &self.volume_paths,
            files: &files,
            termination_log: &tlog,
            rootfs: rootfs.clone(),
            netns: self.rec.net.as_ref().map(|n| n.netns.clone()),
            cgroups_path: self.ctx.container_cgroup(&self.rec.uid, &id),
            seccomp_default: self.ctx.cfg.seccomp_default,
            seccomp_dir: &seccomp_dir,
        };
        let cfg = match container::config(&self.pod, c, &run) {
            Ok(cfg) => cfg,
            Err(msg) => {
                self.cleanup_run(&id).await;
                return self.config_error(&name, &msg).await;
            }
        };
        let mut oci = crate::runtime::spec::oci_config(&cfg);
        if run.netns.is_none()
            && let Some(nss) = oci.pointer_mut("/linux/namespaces").and_then(|n| n.as_array_mut())
        {
            nss.retain(|n| n.get("type").and_then(|t| t.as_str()) != Some("network"));
        }
        if let Err(e) = std::fs::write(bundle.join("config.json"), oci.to_string()) {
            self.cleanup_run(&id).await;
            return self.config_error_reason(&name, "CreateContainerError", &format!("writing config.json: {e}")).await;
        }
        let log = self.log_path(&name, attempt);
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::remove_file(&log);
        let launching = Instant::now();
        if first_start {
            self.ctx.metrics.start_phase(StartPhase::ContainerConfig, (launching - configuring).as_secs_f64());
        }
        let launched = self
            .ctx
            .runtime
            .launch(&LaunchSpec {
                id: id.clone(),
                bundle: bundle.clone(),
                log_path: log,
                stdin: c.stdin == Some(true),
                stdin_once: c.stdin_once == Some(true),
                tty: c.tty == Some(true),
            })
            .await;
        self.ctx.metrics.operation("start_container", started.elapsed().as_secs_f64());
        if first_start && launched.is_ok() {
            self.ctx.metrics.start_phase(StartPhase::RuncStart, launching.elapsed().as_secs_f64());
            self.container_started = Some(Instant::now());
        }
        let now = now_str();
        let r = self.rec.containers.entry(name.clone()).or_default();
        r.init = init;
        r.waiting = None;
        r.kill_reason = None;
        if let Some(prev_exit) = r.current.as_ref().and_then(|c| c.exit.clone()) {
            r.last = Some(prev_exit);
            r.restart_count += 1;
            self.ctx.metrics.restart();
        }
        let mut inst = Instance {
            id: id.clone(),
            attempt,
            pid: 0,
            shim_pid: 0,
            started_at: now.clone(),
            image: image.reference.clone(),
            image_id: Reference::image_id(&image),
            exit: None,
        };
        match launched {
            Ok(l) => {
                inst.pid = l.pid;
                inst.shim_pid = l.shim_pid;
                r.current = Some(inst);
                self.save();
                self.event(Some(&name), EventType::Normal, "Created", &format!("Created container {name}")).await;
                self.event(Some(&name), EventType::Normal, "Started", &format!("Started container {name}")).await;
                self.start_probes(c, &id);
                if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
                    let target = self.probe_target(&id);
                    if let Err(msg) = super::lifecycle::run(&h, c, &target, Duration::from_secs(30)).await {
                        self.event(
                            Some(&name),
                            EventType::Warning,
                            "FailedPostStartHook",
                            &format!("PostStartHook failed: {msg}"),
                        )
                        .await;
                        if let Some(r) = self.rec.containers.get_mut(&name) {
                            r.kill_reason = Some("postStart hook failed".into());
                        }
                        self.stop_container(&name, &id).await;
                    }
                }
                None
            }
            Err(RuntimeError::Start(msg)) => {
                inst.exit = Some(Termination {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(msg.clone()),
                    started_at: Some(now.clone()),
                    finished_at: now_str(),
                    container_id: format!("runc://{id}"),
                });
                r.current = Some(inst);
                self.save();
                self.event(
                    Some(&name),
                    EventType::Warning,
                    "Failed",
                    &format!("Error: failed to start container {name:?}: {msg}"),
                )
                .await;
                self.cleanup_run(&id).await;
                Some(Duration::from_millis(10))
            }
            Err(e) => {
                self.save();
                self.cleanup_run(&id).await;
                self.config_error_reason(&name, "RunContainerError", &e.to_string()).await
            }
        }
    }

    async fn config_error(&mut self, name: &str, msg: &str) -> Option<Duration> {
        self.config_error_reason(name, "CreateContainerConfigError", msg).await
    }

    async fn config_error_reason(&mut self, name: &str, reason: &str, msg: &str) -> Option<Duration> {
        let changed = self
            .rec
            .containers
            .get(name)
            .and_then(|r| r.waiting.as_ref())
            .is_none_or(|w| w.reason != reason || w.message != msg);
        self.rec.containers.entry(name.to_string()).or_default();
        self.set_waiting(name, reason, msg);
        self.save();
        if changed {
            self.event(Some(name), EventType::Warning, "Failed", &format!("Error: {msg}")).await;
        }
        Some(Duration::from_secs(10))
    }

    /// When the pod reached Succeeded or Failed: stop what runs and tear down the sandbox.
    async fn maybe_finish(&mut self) -> Option<Duration> {
        let st = status::pod_status(&self.pod, &self.rec, &self.observed());
        let phase = st.phase.as_deref().unwrap_or_default();
        if phase != "Succeeded" && phase != "Failed" {
            return None;
        }
        let running: Vec<(String, String)> = self
            .rec
            .containers
            .iter()
            .filter_map(|(n, c)| c.current.as_ref().filter(|i| i.exit.is_none()).map(|i| (n.clone(), i.id.clone())))
            .collect();
        if !running.is_empty() {
            for (n, id) in running {
                self.stop_container(&n, &id).await;
            }
            return Some(Duration::from_secs(1));
        }
        self.teardown_sandbox().await;
        self.rec.finished = true;
        self.save();
        tracing::info!(pod = %self.rec.name, phase, "pod finished; sandbox removed");
        None
    }

    fn facts(&self) -> PodFacts {
        PodFacts {
            pod_ip: if self.host_network() {
                self.ctx.node.ip.to_string()
            } else {
                self.rec.net.as_ref().map(|n| n.ip.to_string()).unwrap_or_default()
            },
            host_ip: self.ctx.node.ip.to_string(),
            node_name: self.ctx.node.name.clone(),
        }
    }

    fn pod_files(&self) -> PodFiles {
        let d = self.pod_dir();
        PodFiles { hosts: d.join("hosts"), resolv: d.join("resolv.conf"), hostname: d.join("hostname") }
    }

    fn write_pod_files(&self) -> std::io::Result<()> {
        let f = self.pod_files();
        std::fs::create_dir_all(self.pod_dir())?;
        let ip = if self.host_network() { Some(self.ctx.node.ip) } else { self.rec.net.as_ref().map(|n| n.ip) };
        let write_if_changed = |p: &PathBuf, s: String| -> std::io::Result<()> {
            if std::fs::read_to_string(p).ok().as_deref() != Some(s.as_str()) {
                std::fs::write(p, s)?;
            }
            Ok(())
        };
        write_if_changed(&f.hosts, etc::hosts_file(&self.pod, ip, &self.ctx.cfg.cluster_domain))?;
        write_if_changed(
            &f.resolv,
            etc::resolv_conf(&self.pod, self.ctx.cfg.cluster_dns, &self.ctx.cfg.cluster_domain, &self.ctx.node_resolv),
        )?;
        write_if_changed(&f.hostname, format!("{}\n", etc::hostname(&self.pod)))
    }

    /// Waits (briefly) until the Secrets and ConfigMaps this pod names have been listed by their watches: a missing
    /// one is then really missing, not merely not seen yet.
    async fn objects_listed(&self) {
        if !self.ctx.caches.objects.synced(&self.pod, Duration::from_secs(10)).await {
            tracing::debug!(pod = %self.rec.name, "the pod's Secrets and ConfigMaps are not all listed yet");
        }
    }

    /// The docker configs of the pod's image pull secrets (service-account admission has copied the account's in),
    /// in order; a Secret that is missing or holds no docker config is skipped, as kubelet does.
    fn pull_configs(&self) -> Vec<serde_json::Value> {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect();
        let lookup = NamespaceLookup { caches: &self.ctx.caches, namespace: &self.rec.namespace };
        names
            .iter()
            .filter_map(|n| crate::pods::env::Lookup::secret(&lookup, n))
            .filter_map(|s| serde_json::to_value(s).ok())
            .filter_map(|s| crate::images::auth::config_of_secret(&s))
            .collect()
    }

    async fn issue_tokens(&mut self) -> Result<(), String> {
        let sa =
            self.pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
        for (vol, path, audience, expiry) in volumes::token_requests(&self.pod) {
            let key = (vol.clone(), path.clone());
            let fresh = self.tokens.get(&key).is_some_and(|(_, at)| {
                at.elapsed() < Duration::from_secs(u64::try_from(expiry).unwrap_or(3600) * 8 / 10)
            });
            if fresh {
                continue;
            }
            let body = serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": audience.map(|a| vec![a]).unwrap_or_default(), "expirationSeconds": expiry,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.rec.name, "uid": self.rec.uid}}
            });
            let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(self.ctx.client.clone(), &self.rec.namespace);
            let resp: serde_json::Value = api
                .create_subresource("token", &sa, &kube::api::PostParams::default(), &body)
                .await
                .map_err(|e| format!("requesting a token for service account {sa}: {e}"))?;
            let token =
                resp.pointer("/status/token").and_then(|t| t.as_str()).ok_or("the token request returned no token")?;
            self.tokens.insert(key, (token.to_string(), Instant::now()));
        }
        Ok(())
    }

    /// Prepares every volume; false (with a FailedMount event) while one cannot be.
    async fn prepare_volumes(&mut self) -> bool {
        let result = self.try_prepare_volumes().await;
        match result {
            Ok(paths) => {
                self.volume_paths = paths;
                self.volume_error = None;
                true
            }
            Err(msg) => {
                if self.volume_error.as_deref() != Some(msg.as_str()) {
                    let names: Vec<String> = self
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.volumes.as_ref())
                        .map(|v| v.iter().map(|v| v.name.clone()).collect())
                        .unwrap_or_default();
                    self.event(
                        None,
                        EventType::Warning,
                        "FailedMount",
                        &format!("MountVolume.SetUp failed for volumes [{}]: {msg}", names.join(" ")),
                    )
                    .await;
                    self.volume_error = Some(msg);
                }
                false
            }
        }
    }

    async fn try_prepare_volumes(&mut self) -> Result<BTreeMap<String, PathBuf>, String> {
        self.objects_listed().await;
        self.issue_tokens().await?;
        let facts = self.facts();
        let ns = self.rec.namespace.clone();
        let tokens: BTreeMap<(String, String), String> =
            self.tokens.iter().map(|(k, (t, _))| (k.clone(), t.clone())).collect();
        let dir = self.pod_dir().join("volumes");
        let mut out = BTreeMap::new();
        for v in self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
            if let Some(claim) = &v.persistent_volume_claim {
                out.insert(v.name.clone(), self.claim_path(&ns, &claim.claim_name).await?);
                continue;
            }
            let lookup = NamespaceLookup { caches: &self.ctx.caches, namespace: &ns };
            let inp = VolumeInputs {
                pod: &self.pod,
                facts: &facts,
                lookup: &lookup,
                node_cpus: self.ctx.node.cpus,
                node_memory: self.ctx.node.memory,
                tokens: &tokens,
            };
            out.insert(v.name.clone(), volumes::prepare_local(&v, &dir, &inp)?);
        }
        Ok(out)
    }

    async fn claim_path(&self, ns: &str, claim: &str) -> Result<PathBuf, String> {
        let (pvc, pv) = volumes::claim(&self.ctx.client, ns, claim).await?;
        if let Some(pv) = pv {
            let p = volumes::pv_path(&pv)
                .ok_or_else(|| format!("volume of claim {claim} has no host path this node can mount"))?;
            std::fs::create_dir_all(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            return Ok(p);
        }
        let class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
        if class != "local-path" && !class.is_empty() {
            return Err(format!("pod has unbound immediate PersistentVolumeClaims ({claim}, storage class {class})"));
        }
        // Provision on this node and bind.
        let pv = volumes::local_path_volume(&pvc, &self.ctx.node.name, &self.ctx.paths.root().join("local-path"));
        let path = volumes::pv_path(&pv).ok_or("no path")?;
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(self.ctx.client.clone());
        match pvs.create(&kube::api::PostParams::default(), &pv).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(format!("creating the volume for claim {claim}: {e}")),
        }
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), ns);
        pvcs.patch(claim, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"volumeName": pv_name}})))
            .await
            .map_err(|e| format!("binding claim {claim}: {e}"))?;
        let _ = pvcs.patch_status(claim, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": {"phase": "Bound", "accessModes": pvc.spec.as_ref().and_then(|s| s.access_modes.clone()), "capacity": pv.spec.as_ref().and_then(|s| s.capacity.clone())}}))).await;
        let _ = pvs
            .patch_status(
                &pv_name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {"phase": "Bound"}})),
            )
            .await;
        Ok(path)
    }

    /// Rewrites configMap/secret/projected/downwardAPI volumes whose content changed (atomic swap).
    async fn refresh_volumes(&mut self) {
        if let Ok(paths) = self.try_prepare_volumes().await {
            self.volume_paths = paths;
        }
    }

    fn observed(&self) -> Observed {
        Observed { probes: self.probe_state.clone(), host_ip: self.ctx.node.ip.to_string(), now: None }
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
                    tty: self.container_spec(name).is_some_and(|(c, _)| c.tty == Some(true)),
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
        let name = self.status_target();
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": value.clone()})))
            .await
        {
            Ok(p) => {
                self.last_status = Some(value);
                if !self.rec.static_pod {
                    self.pod = Arc::new(p);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 && !self.rec.static_pod => self.removed = true,
            Err(e) => tracing::debug!(pod = %self.rec.name, error = %e, "writing the pod status failed; will retry"),
        }
    }

    fn status_target(&self) -> String {
        self.rec.name.clone()
    }

    async fn teardown_sandbox(&mut self) {
        for (_, h) in std::mem::take(&mut self.probes) {
            h.abort();
        }
        let ids = self.rec.container_ids();
        for id in ids {
            self.cleanup_run(&id).await;
        }
        if let Some(policy) = &self.ctx.policy {
            policy.forget(&self.rec.uid);
        }
        if !self.host_network() || self.rec.net.is_some() {
            let ip = self.rec.net.as_ref().map(|n| n.ip);
            if let Err(e) = self.ctx.net.detach(&self.rec.uid, ip).await {
                tracing::warn!(pod = %self.rec.name, error = %e, "removing the pod network failed");
            }
        }
        let vol_dir = self.pod_dir().join("volumes");
        let left = mounts::unmount_under(&vol_dir);
        if !left.is_empty() {
            tracing::warn!(pod = %self.rec.name, ?left, "volumes still mounted");
        }
        let left = self.ctx.cgroups.remove(&self.ctx.pod_cgroup(&self.rec.uid));
        if !left.is_empty() {
            tracing::warn!(pod = %self.rec.name, ?left, "cgroups still in use");
        }
    }

    /// Stops every container (preStop, SIGTERM, grace period, SIGKILL), cleans up, and deletes the pod.
    async fn terminate(&mut self) {
        let grace = if self.removed {
            Duration::from_secs(2)
        } else {
            let g = self
                .pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                .unwrap_or(30);
            Duration::from_secs(u64::try_from(g).unwrap_or(0))
        };
        let deadline = Instant::now() + grace;
        for (_, h) in std::mem::take(&mut self.probes) {
            h.abort();
        }
        let running: Vec<(String, String)> = self
            .rec
            .containers
            .iter()
            .filter_map(|(n, c)| c.current.as_ref().filter(|i| i.exit.is_none()).map(|i| (n.clone(), i.id.clone())))
            .collect();
        let mut hooks = Vec::new();
        for (name, id) in &running {
            self.event(Some(name), EventType::Normal, "Killing", &format!("Stopping container {name}")).await;
            let pre = self
                .container_spec(name)
                .and_then(|(c, _)| c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()).map(|h| (c, h)));
            let rt = self.ctx.runtime.clone();
            let target = self.probe_target(id);
            let id = id.clone();
            hooks.push(tokio::spawn(async move {
                if let Some((c, h)) = pre {
                    let _ = super::lifecycle::run(&h, &c, &target, grace).await;
                }
                let _ = rt.signal(&id, "TERM").await;
            }));
        }
        for h in hooks {
            let _ = tokio::time::timeout(grace + Duration::from_secs(1), h).await;
        }
        self.wait_for_exits(deadline).await;
        let still: Vec<(String, String)> = self
            .rec
            .containers
            .iter()
            .filter_map(|(n, c)| c.current.as_ref().filter(|i| i.exit.is_none()).map(|i| (n.clone(), i.id.clone())))
            .collect();
        for (_, id) in &still {
            let _ = self.ctx.runtime.signal(id, "KILL").await;
        }
        self.wait_for_exits(Instant::now() + Duration::from_secs(5)).await;
        // Anything whose shim never reported: record it as killed.
        let lost: Vec<(String, Instance)> = self
            .rec
            .containers
            .iter()
            .filter_map(|(n, c)| c.current.clone().filter(|i| i.exit.is_none()).map(|i| (n.clone(), i)))
            .collect();
        for (n, i) in lost {
            self.finish_run(
                &n,
                &i,
                ExitRecord { exit_code: 137, signal: Some(9), finished_at: now_str(), start_error: None },
                None,
                None,
            )
            .await;
        }
        self.teardown_sandbox().await;
        let _ = std::fs::remove_dir_all(self.ctx.paths.pod_logs(&self.rec.namespace, &self.rec.name, &self.rec.uid));
        let _ = std::fs::remove_dir_all(self.pod_dir());
        if let Ok(mut v) = self.ctx.views.write() {
            v.remove(&(self.rec.namespace.clone(), self.rec.name.clone()));
        }
        if !self.removed && !self.rec.static_pod {
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.rec.namespace);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions { uid: Some(self.rec.uid.clone()), resource_version: None }),
                ..Default::default()
            };
            match api.delete(&self.rec.name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => tracing::warn!(pod = %self.rec.name, error = %e, "deleting the pod failed"),
            }
        }
        tracing::info!(pod = %self.rec.name, namespace = %self.rec.namespace, "pod terminated and cleaned up");
    }

    async fn wait_for_exits(&mut self, deadline: Instant) {
        loop {
            let any = self.rec.containers.values().any(ContainerRecord::running);
            if !any {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left.min(Duration::from_millis(500)), self.rx.recv()).await {
                Ok(Some(PodEvent::Exited(id))) => self.on_exit(&id).await,
                Ok(Some(PodEvent::Update(p))) if !status::is_older(&p, &self.pod) => self.pod = p,
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    // No event: look at the exit records directly (covers a lost notification).
                    let ids: Vec<String> = self
                        .rec
                        .containers
                        .values()
                        .filter_map(|c| c.current.as_ref().filter(|i| i.exit.is_none()).map(|i| i.id.clone()))
                        .collect();
                    for id in ids {
                        if self.ctx.paths.exit_file(&id).exists() {
                            self.on_exit(&id).await;
                        }
                    }
                }
            }
        }
    }
}

/// How an image is named in `imageID`.
struct Reference;

impl Reference {
    fn image_id(image: &crate::images::Image) -> String {
        crate::images::Reference::parse(&image.reference)
            .map(|r| r.with_digest(&image.manifest_digest))
            .unwrap_or_else(|_| image.manifest_digest.clone())
    }
}

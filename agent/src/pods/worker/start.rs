//! Starting a container run: the image (pulled with the pod's pull secrets, progress as Events), the environment and
//! argv, the bundle (overlay root file system, on the blocking pool), the OCI config, the launch under a shim, probes,
//! and the postStart hook as a task that reports back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Service};
use skiff_client::events::EventType;

use super::{PodEvent, Step, Worker, blocking, now_str};
use crate::images::{Image, ImageError, Obtained};
use crate::metrics::StartPhase;
use crate::pods::backoff::{self, Decision};
use crate::pods::container::{self, RunInputs};
use crate::pods::env::{self, EnvInputs};
use crate::pods::record::{self, Instance, Termination, Waiting};
use crate::pods::{NamespaceLookup, etc};
use crate::runtime::{LaunchSpec, RuntimeError};

/// How soon a container whose configuration is wrong is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(10);
/// How long a postStart hook may run.
const POST_START_LIMIT: Duration = Duration::from_secs(30);

/// Makes a run's bundle afresh: `rootfs` mounted as an overlay of `layers` with `upper` and `work` beside it, and an
/// empty `termination-log`. Returns the image's `/etc/passwd` and `/etc/group` (empty when it has none). Blocking.
fn prepare_bundle(layers: &[PathBuf], bundle: &Path) -> Result<(String, String), String> {
    let rootfs = bundle.join("rootfs");
    // (a fresh bundle has nothing mounted; looking costs a read of the machine's mount table)
    if bundle.exists() {
        let _ = crate::pods::mounts::unmount_under(bundle);
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

/// How an image is named in `imageID`: `name@sha256:…`.
fn image_id(image: &Image) -> String {
    crate::images::Reference::parse(&image.reference)
        .map(|r| r.with_digest(&image.manifest_digest))
        .unwrap_or_else(|_| image.manifest_digest.clone())
}

impl Worker {
    /// Starts a run of `c`.
    pub(super) async fn start(&mut self, c: &Container, init: bool) -> Step {
        let started = Instant::now();
        let first_start = !self.reported_start;
        let Some(image) = self.ensure_image(c).await else {
            let window = self.rec.containers.get(&c.name).and_then(|r| r.pull_backoff.as_ref()).map(|(e, _)| e.window);
            return Step::Retry(window.unwrap_or(self.ctx.cfg.backoff.initial));
        };
        if first_start {
            self.ctx.metrics.start_phase(StartPhase::ImageReady, started.elapsed().as_secs_f64());
        }
        let configuring = Instant::now();
        let name = c.name.clone();
        let (envs, argv) = match self.environment(c, &image) {
            Ok(x) => x,
            Err((reason, msg)) => return self.config_error(&name, reason, &msg).await,
        };
        let layers = match self.ctx.images.layers(&image).await {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("unpacking image layers: {e}");
                return self.config_error(&name, "CreateContainerError", &msg).await;
            }
        };
        let prev = self.rec.containers.get(&name).cloned().unwrap_or_default();
        let attempt = prev.current.as_ref().map_or(prev.restart_count, |cur| cur.attempt + 1);
        let id = record::container_id(&self.rec.uid, &name, attempt);
        let bundle = self.ctx.paths.container(&id);
        let prepared = {
            let bundle = bundle.clone();
            blocking(move || prepare_bundle(&layers, &bundle))
                .await
                .unwrap_or_else(|| Err("preparing the bundle".into()))
        };
        let (passwd, group) = match prepared {
            Ok(files) => files,
            Err(e) => return self.config_error(&name, "CreateContainerError", &e).await,
        };
        let oci = match self.oci_config(c, &image, &id, &bundle, argv, envs, (&passwd, &group)) {
            Ok(oci) => oci,
            Err((reason, msg)) => {
                self.cleanup_run(&id).await;
                return self.config_error(&name, reason, &msg).await;
            }
        };
        let log = self.log_path(&name, attempt);
        let written = {
            let (config, log) = (bundle.join("config.json"), log.clone());
            blocking(move || -> std::io::Result<()> {
                if let Some(dir) = log.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let _ = std::fs::remove_file(&log);
                std::fs::write(config, oci)
            })
            .await
        };
        let written = written.map_or_else(|| Err("panicked".to_string()), |r| r.map_err(|e| e.to_string()));
        if let Err(e) = written {
            self.cleanup_run(&id).await;
            return self.config_error(&name, "CreateContainerError", &format!("writing config.json: {e}")).await;
        }
        let launching = Instant::now();
        if first_start {
            self.ctx.metrics.start_phase(StartPhase::ContainerConfig, (launching - configuring).as_secs_f64());
        }
        let spec = LaunchSpec {
            id: id.clone(),
            bundle,
            log_path: log,
            stdin: c.stdin == Some(true),
            stdin_once: c.stdin_once == Some(true),
            tty: c.tty == Some(true),
        };
        let launched = self.ctx.runtime.launch(&spec).await;
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
            started_at: now.clone(),
            image: image.reference.clone(),
            image_id: image_id(&image),
            ..Default::default()
        };
        self.dirty = true;
        match launched {
            Ok(l) => {
                inst.pid = l.pid;
                inst.shim_pid = l.shim_pid;
                r.current = Some(inst);
                self.event(Some(&name), EventType::Normal, "Created", &format!("Created container {name}")).await;
                self.event(Some(&name), EventType::Normal, "Started", &format!("Started container {name}")).await;
                self.start_probes(c, &id);
                self.spawn_post_start(c, &id);
                Step::Done
            }
            Err(RuntimeError::Start(msg)) => {
                inst.exit = Some(Termination {
                    exit_code: 128,
                    reason: "StartError".into(),
                    message: Some(msg.clone()),
                    started_at: Some(now),
                    finished_at: now_str(),
                    container_id: format!("runc://{id}"),
                    ..Default::default()
                });
                r.current = Some(inst);
                let message = format!("Error: failed to start container {name:?}: {msg}");
                self.event(Some(&name), EventType::Warning, "Failed", &message).await;
                self.cleanup_run(&id).await;
                Step::Retry(Duration::from_millis(10))
            }
            Err(e) => {
                self.cleanup_run(&id).await;
                self.config_error(&name, "RunContainerError", &e.to_string()).await
            }
        }
    }

    /// Runs the container's postStart hook as a task; its result comes back as [`PodEvent::PostStartDone`].
    fn spawn_post_start(&mut self, c: &Container, id: &str) {
        let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) else { return };
        self.progress.post_start_pending.insert(c.name.clone());
        let (target, tx, c, id) = (self.probe_target(id), self.tx.clone(), c.clone(), id.to_string());
        tokio::spawn(async move {
            let error = crate::pods::lifecycle::run(&h, &c, &target, POST_START_LIMIT).await.err();
            let _ = tx.send(PodEvent::PostStartDone { container: c.name, id, error });
        });
    }

    /// The container's image, present or pulled (with Pulling, Pulled or Failed events); `None` when the pull
    /// failed (the container waits in ErrImagePull with a pull back-off).
    async fn ensure_image(&mut self, c: &Container) -> Option<Image> {
        let name = c.name.clone();
        let image_name = c.image.clone().unwrap_or_default();
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
                self.pull_failed(&name, &image_name, &e).await;
                return None;
            }
        };
        if let Some(r) = self.rec.containers.get_mut(&name)
            && r.pull_backoff.take().is_some()
        {
            self.dirty = true;
        }
        let (ty, message) = match &obtained {
            Obtained::Present => {
                self.ctx.metrics.pull("present", None);
                (EventType::Normal, format!("Container image {image_name:?} already present on machine"))
            }
            Obtained::Pulled(d) => {
                self.ctx.metrics.pull("pulled", Some(d.as_secs_f64()));
                let secs = d.as_secs_f64();
                let message = format!(
                    "Successfully pulled image {image_name:?} in {secs:.3}s. Image size: {} bytes.",
                    image.size
                );
                (EventType::Normal, message)
            }
            Obtained::LocalFallback(why) => {
                self.ctx.metrics.pull("local_fallback", None);
                let message =
                    format!("Registry unreachable ({why}); using image {image_name:?} already present on machine");
                (EventType::Warning, message)
            }
        };
        self.event(Some(&name), ty, "Pulled", &message).await;
        Some(image)
    }

    async fn pull_failed(&mut self, name: &str, image_name: &str, e: &ImageError) {
        let now = Timestamp::now();
        let policy = self.ctx.cfg.backoff;
        let r = self.rec.containers.entry(name.to_string()).or_default();
        let held = r.pull_backoff.as_ref().map(|(e, _)| *e);
        let entry = match backoff::decide(held, now, now, &policy) {
            Decision::RestartNow(e) => e,
            Decision::Wait { .. } => held.unwrap_or(backoff::Entry { window: policy.initial, updated: now }),
        };
        r.pull_backoff = Some((entry, now.to_string()));
        let reason = if matches!(e, ImageError::NeverPull(_)) { "ErrImageNeverPull" } else { "ErrImagePull" };
        r.waiting = Some(Waiting { reason: reason.into(), message: e.to_string() });
        self.dirty = true;
        self.ctx.metrics.pull("failed", None);
        let message = format!("Failed to pull image {image_name:?}: {e}");
        self.event(Some(name), EventType::Warning, "Failed", &message).await;
        self.event(Some(name), EventType::Warning, "Failed", &format!("Error: {reason}")).await;
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

    /// The run's environment and argv; `Err((reason, message))` when the container's configuration is wrong.
    #[allow(clippy::type_complexity)]
    fn environment(
        &self,
        c: &Container,
        image: &Image,
    ) -> Result<(Vec<(String, String)>, Vec<String>), (&'static str, String)> {
        let facts = self.facts();
        let ns = self.rec.namespace.as_str();
        let is_kubernetes = |s: &Service| {
            s.metadata.name.as_deref() == Some("kubernetes") && s.metadata.namespace.as_deref() == Some("default")
        };
        let services: Vec<Service> = self
            .ctx
            .caches
            .services
            .state()
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns) || is_kubernetes(s))
            .map(|s| (**s).clone())
            .collect();
        let lookup = NamespaceLookup { caches: &self.ctx.caches, namespace: ns };
        let inputs = EnvInputs {
            pod: &self.pod,
            facts: &facts,
            lookup: &lookup,
            services: &services,
            image: &image.run,
            node_cpus: self.ctx.node.cpus,
            node_memory: self.ctx.node.memory,
        };
        let mut envs = env::container_env(c, &inputs).map_err(|m| ("CreateContainerConfigError", m))?;
        if !envs.iter().any(|(k, _)| k == "HOSTNAME") {
            envs.insert(0, ("HOSTNAME".into(), etc::hostname(&self.pod)));
        }
        let api_ip = services.iter().find(|s| is_kubernetes(s)).and_then(|s| s.spec.as_ref()?.cluster_ip.clone());
        if let Some(ip) = api_ip {
            for (k, v) in [("KUBERNETES_SERVICE_HOST", ip), ("KUBERNETES_SERVICE_PORT", "443".to_string())] {
                if !envs.iter().any(|(x, _)| x == k) {
                    envs.push((k.into(), v));
                }
            }
        }
        let argv = env::argv(c, &image.run, &envs);
        if argv.is_empty() {
            return Err(("CreateContainerError", "no command specified".into()));
        }
        Ok((envs, argv))
    }

    /// The run's OCI runtime config (`config.json`).
    #[allow(clippy::too_many_arguments)]
    fn oci_config(
        &self,
        c: &Container,
        image: &Image,
        id: &str,
        bundle: &Path,
        argv: Vec<String>,
        envs: Vec<(String, String)>,
        (passwd, group): (&str, &str),
    ) -> Result<String, (&'static str, String)> {
        const CONFIG: &str = "CreateContainerConfigError";
        let user = etc::user(&self.pod, c, image.run.user.as_deref(), passwd, group).map_err(|m| (CONFIG, m))?;
        let files = self.pod_file_paths();
        let seccomp_dir = self.ctx.cfg.seccomp_dir.clone().unwrap_or_else(|| self.ctx.cfg.data_dir.join("seccomp"));
        let run = RunInputs {
            args: argv,
            env: envs,
            image_workdir: image.run.working_dir.clone(),
            user,
            volumes: &self.volume_paths,
            files: &files,
            termination_log: &bundle.join("termination-log"),
            rootfs: bundle.join("rootfs"),
            netns: self.rec.net.as_ref().map(|n| n.netns.clone()),
            cgroups_path: self.ctx.container_cgroup(&self.rec.uid, id),
            seccomp_default: self.ctx.cfg.seccomp_default,
            seccomp_dir: &seccomp_dir,
        };
        let cfg = container::config(&self.pod, c, &run).map_err(|m| (CONFIG, m))?;
        let spec = crate::runtime::spec::oci_config(&cfg).map_err(|e| (CONFIG, e.to_string()))?;
        serde_json::to_string(&spec).map_err(|e| ("CreateContainerError", format!("encoding config.json: {e}")))
    }

    /// A container that cannot start for a reason in its configuration: it waits with `reason` (an event when the
    /// reason or message changed) and is tried again later.
    pub(super) async fn config_error(&mut self, name: &str, reason: &str, msg: &str) -> Step {
        let waiting = Waiting { reason: reason.into(), message: msg.into() };
        let changed = self.rec.containers.get(name).and_then(|r| r.waiting.as_ref()) != Some(&waiting);
        self.set_waiting(name, waiting);
        if changed {
            self.event(Some(name), EventType::Warning, "Failed", &format!("Error: {msg}")).await;
        }
        Step::Retry(CONFIG_RETRY)
    }
}

//! Stopping and ending runs: the stop sequence as a task (preStop, SIGTERM, SIGKILL at the deadline), exits recorded
//! with their reason and message, runc state and root file systems removed, the sandbox torn down, and the pod
//! forgotten. Also re-adoption of runs after an agent restart.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use skiff_client::events::EventType;

use super::{Worker, blocking, now_str};
use crate::pods::mounts;
use crate::pods::record::{Instance, Termination};
use crate::pods::status::ProbeState;
use crate::runtime::ExitRecord;

/// The most of a log's tail a `FallbackToLogsOnError` message takes.
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;

/// The time from now until `t` (zero when it has passed).
fn left_until(t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
}

/// The end of a stop sequence: SIGTERM (when `term`), then SIGKILL at `deadline`.
async fn term_then_kill(rt: &dyn crate::runtime::Runtime, run: &str, term: bool, deadline: tokio::time::Instant) {
    if term && let Err(e) = rt.signal(run, "TERM").await {
        tracing::debug!(id = %run, error = %e, "SIGTERM failed");
    }
    tokio::time::sleep_until(deadline).await;
    if let Err(e) = rt.signal(run, "KILL").await {
        tracing::debug!(id = %run, error = %e, "SIGKILL failed");
    }
}

/// Why a run ended, for the exit the agent records.
struct Ending {
    record: ExitRecord,
    /// A reason the agent knows better than the exit code (e.g. `ContainerStatusUnknown`).
    reason: Option<&'static str>,
    message: Option<String>,
}

impl Worker {
    /// After an agent restart: checks every run the record says is running.
    pub(super) async fn readopt(&mut self) {
        let runs: Vec<(String, Instance)> = self
            .rec
            .containers
            .iter()
            .filter_map(|(n, c)| c.current.clone().filter(|i| i.exit.is_none()).map(|i| (n.clone(), i)))
            .collect();
        for (name, inst) in runs {
            let exit_file = self.ctx.paths.exit_file(&inst.id);
            if blocking(move || exit_file.exists()).await == Some(true) {
                self.on_exit(&inst.id).await;
                continue;
            }
            match self.ctx.runtime.state(&inst.id).await {
                Ok(Some(s)) if s.status == "running" || s.status == "created" => {
                    tracing::info!(pod = %self.rec.name, container = %name, id = %inst.id, "re-adopted a running container");
                    if let Some(c) = self.container_spec(&name) {
                        self.start_probes(&c, &inst.id);
                    }
                }
                _ => {
                    // Stopped without a shim record: the shim was lost with the container.
                    let ending = Ending {
                        record: ExitRecord { exit_code: 137, signal: None, finished_at: now_str(), start_error: None },
                        reason: Some("ContainerStatusUnknown"),
                        message: Some("The container could not be located when the agent restarted".into()),
                    };
                    self.finish_run(&name, &inst, ending).await;
                }
            }
        }
        self.flush().await;
    }

    /// Begins stopping a run (once): its probes stop, and a task runs the preStop hook, sends SIGTERM, and SIGKILL
    /// at `kill_at`. The exit arrives as an event, which ends the task.
    pub(super) fn stop_run(&mut self, container: &str, id: &str, kill_at: Timestamp) {
        if self.progress.stopping.contains_key(id) {
            return;
        }
        self.progress.stopping.insert(id.to_string(), kill_at);
        let grace = left_until(kill_at);
        if let Some(h) = self.probe_tasks.remove(container) {
            h.abort();
        }
        let rt = self.ctx.runtime.clone();
        let pre_stop = self
            .container_spec(container)
            .and_then(|c| c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()).map(|h| (c, h)));
        let target = self.probe_target(id);
        let run = id.to_string();
        self.replace_stop_task(id, async move {
            let deadline = tokio::time::Instant::now() + grace;
            if let Some((c, h)) = pre_stop {
                let _ = crate::pods::lifecycle::run(&h, &c, &target, grace).await;
            }
            term_then_kill(rt.as_ref(), &run, true, deadline).await;
        });
    }

    /// Makes `task` the one stop sequence of run `id` (a previous one is aborted).
    fn replace_stop_task(&mut self, id: &str, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(old) = self.stop_tasks.insert(id.to_string(), tokio::spawn(task)) {
            old.abort();
        }
    }

    /// Brings a run's SIGKILL forward to `kill_at` (its grace period was shortened): the stop task so far (a preStop
    /// hook still running included) is replaced by one that sends SIGTERM again and SIGKILL at the new time.
    pub(super) fn hasten_stop(&mut self, id: &str, kill_at: Timestamp) {
        let Some(planned) = self.progress.stopping.get_mut(id) else { return };
        *planned = kill_at;
        let rt = self.ctx.runtime.clone();
        let run = id.to_string();
        let grace = left_until(kill_at);
        tracing::info!(pod = %self.rec.name, id, grace_ms = grace.as_millis() as u64, "grace period shortened");
        self.replace_stop_task(id, async move {
            let deadline = tokio::time::Instant::now() + grace;
            term_then_kill(rt.as_ref(), &run, !grace.is_zero(), deadline).await;
        });
    }

    /// A container run ended: record how, and clean up its runc state and root file system.
    pub(super) async fn on_exit(&mut self, id: &str) {
        let exit_file = self.ctx.paths.exit_file(id);
        let Some((name, inst)) = self.rec.containers.iter().find_map(|(n, c)| {
            c.current.as_ref().filter(|i| i.id == id && i.exit.is_none()).map(|i| (n.clone(), i.clone()))
        }) else {
            // Already recorded (a start failure also leaves an exit record): only tidy up.
            blocking(move || std::fs::remove_file(exit_file)).await;
            return;
        };
        let read = blocking(move || ExitRecord::read(&exit_file)).await.flatten();
        let record = read.unwrap_or(ExitRecord {
            exit_code: 137,
            signal: None,
            finished_at: now_str(),
            start_error: Some("the container's exit status was lost".into()),
        });
        self.finish_run(&name, &inst, Ending { record, reason: None, message: None }).await;
    }

    /// Looks at the exit records of runs still marked running (a notification may have been lost).
    pub(super) async fn poll_exits(&mut self) {
        let ids: Vec<String> = self
            .rec
            .containers
            .values()
            .filter_map(|c| c.current.as_ref().filter(|i| i.exit.is_none()).map(|i| i.id.clone()))
            .collect();
        let paths = self.ctx.paths.clone();
        let ended = blocking(move || ids.into_iter().filter(|id| paths.exit_file(id).exists()).collect::<Vec<_>>());
        for id in ended.await.unwrap_or_default() {
            self.on_exit(&id).await;
        }
    }

    /// Writes off a run whose exit never arrived after its SIGKILL.
    pub(super) async fn record_lost(&mut self, container: &str) {
        let Some(inst) =
            self.rec.containers.get(container).and_then(|c| c.current.clone()).filter(|i| i.exit.is_none())
        else {
            return;
        };
        let record = ExitRecord { exit_code: 137, signal: Some(9), finished_at: now_str(), start_error: None };
        self.finish_run(container, &inst, Ending { record, reason: None, message: None }).await;
    }

    async fn finish_run(&mut self, name: &str, inst: &Instance, ending: Ending) {
        let Ending { record, reason, message } = ending;
        let fallback = record.exit_code != 0
            && self
                .container_spec(name)
                .is_some_and(|c| c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"));
        let (cgroups, cg) = (self.ctx.cgroups.clone(), self.ctx.container_cgroup(&self.rec.uid, &inst.id));
        let tlog_path = self.ctx.paths.container(&inst.id).join("termination-log");
        let log = self.log_path(name, inst.attempt);
        let read = blocking(move || {
            let oom = cgroups.oom_kills(&cg) > 0;
            let tlog = std::fs::read(tlog_path)
                .ok()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
                .filter(|m| !m.is_empty());
            let logs = fallback.then(|| crate::server::logs::tail_text(&log, FALLBACK_LINES, FALLBACK_BYTES));
            (oom, tlog, logs)
        });
        let (oom, tlog, logs) = read.await.unwrap_or_default();
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
        let message = message.or(record.start_error.clone()).or(tlog).or(logs.filter(|_| record.exit_code != 0));
        let t = Termination {
            exit_code: record.exit_code,
            signal: record.signal,
            reason: reason.clone(),
            message,
            started_at: Some(inst.started_at.clone()),
            finished_at: record.finished_at.clone(),
            container_id: format!("runc://{}", inst.id),
        };
        if let Some(h) = self.probe_tasks.remove(name) {
            h.abort();
        }
        if let Some(h) = self.stop_tasks.remove(&inst.id) {
            h.abort();
        }
        self.progress.stopping.remove(&inst.id);
        self.progress.post_start_pending.remove(name);
        self.progress.probes.insert(name.to_string(), ProbeState::default());
        if let Some(c) = self.rec.containers.get_mut(name)
            && let Some(cur) = c.current.as_mut()
        {
            cur.exit = Some(t);
        }
        self.touch();
        self.cleanup_run(&inst.id).await;
        if reason == "OOMKilled" {
            let message = format!("Container {name} was killed by the OOM killer (memory limit)");
            self.event(Some(name), EventType::Warning, "OOMKilled", &message).await;
        }
        tracing::info!(pod = %self.rec.name, container = %name, exit_code = record.exit_code, %reason, "container ended");
    }

    /// Removes a run's runc state, root file system, exit record and cgroup.
    pub(super) async fn cleanup_run(&self, id: &str) {
        let started = std::time::Instant::now();
        if let Err(e) = self.ctx.runtime.delete(id).await {
            tracing::warn!(id, error = %e, "runc delete failed");
        }
        let (bundle, exit_file) = (self.ctx.paths.container(id), self.ctx.paths.exit_file(id));
        let (cgroups, cg) = (self.ctx.cgroups.clone(), self.ctx.container_cgroup(&self.rec.uid, id));
        let run = id.to_string();
        blocking(move || {
            let left = mounts::unmount_under(&bundle);
            if left.is_empty() {
                let _ = std::fs::remove_dir_all(&bundle);
            } else {
                tracing::warn!(id = %run, ?left, "could not unmount the container's root file system");
            }
            let _ = std::fs::remove_file(exit_file);
            let _ = cgroups.remove(&cg);
        })
        .await;
        self.ctx.metrics.operation("remove_container", started.elapsed().as_secs_f64());
    }

    /// Removes every run, the NetworkPolicy state, the network, volume mounts and the pod's cgroup.
    pub(super) async fn teardown_sandbox(&mut self) {
        for (_, h) in std::mem::take(&mut self.probe_tasks) {
            h.abort();
        }
        for id in self.rec.container_ids() {
            self.cleanup_run(&id).await;
        }
        if let Some(policy) = &self.ctx.policy {
            policy.forget(&self.rec.uid);
            self.progress.policy_admitted = false;
        }
        if !self.host_network() || self.rec.net.is_some() {
            let ip = self.rec.net.as_ref().map(|n| n.ip);
            if let Err(e) = self.ctx.net.detach(&self.rec.uid, ip).await {
                tracing::warn!(pod = %self.rec.name, error = %e, "removing the pod network failed");
            }
        }
        let vol_dir = self.pod_dir().join("volumes");
        let (cgroups, cg) = (self.ctx.cgroups.clone(), self.ctx.pod_cgroup(&self.rec.uid));
        let left = blocking(move || (mounts::unmount_under(&vol_dir), cgroups.remove(&cg))).await;
        let (mounted, cgroups_left) = left.unwrap_or_default();
        if !mounted.is_empty() {
            tracing::warn!(pod = %self.rec.name, left = ?mounted, "volumes still mounted");
        }
        if !cgroups_left.is_empty() {
            tracing::warn!(pod = %self.rec.name, left = ?cgroups_left, "cgroups still in use");
        }
    }

    /// Forgets the pod: its logs, its directory (record included), its view, and with `delete` the API object
    /// (grace 0, on the uid this worker ran).
    pub(super) async fn forget(&mut self, delete: bool) {
        self.dirty = false;
        let logs = self.ctx.paths.pod_logs(&self.rec.namespace, &self.rec.name, &self.rec.uid);
        let dir = self.pod_dir();
        blocking(move || {
            let _ = std::fs::remove_dir_all(logs);
            let _ = std::fs::remove_dir_all(dir);
        })
        .await;
        if let Ok(mut v) = self.ctx.views.write() {
            v.remove(&(self.rec.namespace.clone(), self.rec.name.clone()));
        }
        if delete {
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
}

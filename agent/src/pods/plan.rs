//! What a pod's worker does next, as a pure function of the pod, the agent's record of it and what the worker holds
//! in memory: [`next_actions`] returns the steps of one pass (sandbox, volumes, init containers in order, containers
//! per restart policy with back-off, stopping a finished pod, or the termination of a deleted one) and when to look
//! again. The worker ([`super::worker`]) only carries the steps out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};

use super::backoff::{self, Decision, Entry};
use super::record::{ContainerRecord, PodRecord, Waiting};
use super::status::{self, Observed, ProbeState};
use crate::config::BackoffPolicy;

/// How long a pod that vanished from the API (no grace period left to honour) gets to stop.
pub const REMOVED_GRACE: Duration = Duration::from_secs(2);
/// How long after the grace period's SIGKILL a run whose exit never arrived is written off as killed.
pub const LOST_AFTER_KILL: Duration = Duration::from_secs(5);
/// How often a terminating or finishing pod looks for exits that were not reported.
pub const EXIT_POLL: Duration = Duration::from_millis(500);

/// What the worker holds in memory about its pod (not in the record: rebuilt after an agent restart by running the
/// steps again, each of which is idempotent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The pod is gone from the API (or its manifest was removed).
    pub removed: bool,
    /// NetworkPolicy covers the pod's veth.
    pub policy_admitted: bool,
    /// The pod's cgroup has its pids limit.
    pub pids_limited: bool,
    /// When the worker began terminating the pod.
    pub terminating_since: Option<Timestamp>,
    /// The shortest grace period seen while terminating, and when the worker first saw it: a grace period counts
    /// from when it was asked for, as kubelet counts a shortened one from when it sees it.
    pub grace_seen: Option<(Duration, Timestamp)>,
    /// Runs (runc ids) the worker has begun stopping, with when each gets SIGKILL.
    pub stopping: BTreeMap<String, Timestamp>,
    /// Probe verdicts by container.
    pub probes: BTreeMap<String, ProbeState>,
    /// Containers whose postStart hook is still running (the containers after them wait, as kubelet's do).
    pub post_start_pending: BTreeSet<String>,
}

/// The node's settings a plan depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// Crash and image-pull back-off.
    pub backoff: BackoffPolicy,
    /// The pids limit of every pod's cgroup.
    pub pod_max_pids: Option<u64>,
    /// Whether NetworkPolicy is enforced on this node.
    pub policy_enforced: bool,
}

/// Why a run is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// The pod is being deleted.
    PodDeleted,
    /// The pod reached Succeeded or Failed while a container still ran.
    PodFinished,
}

/// One step of a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stamp `status.startTime`.
    RecordStartTime,
    /// Create the pod's network namespace and veth.
    CreateSandbox,
    /// Put the pod's veth under NetworkPolicy before any container starts.
    AdmitPolicy,
    /// Write `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` (where they changed).
    WritePodFiles,
    /// Limit the pod's processes.
    LimitPids(u64),
    /// Set up (or refresh) every volume.
    PrepareVolumes,
    /// A container waits out a back-off: record why, and raise a `BackOff` event when it starts waiting.
    BackOff {
        /// Container name.
        container: String,
        /// The waiting reason and message to report.
        waiting: Waiting,
        /// The event's message, when the container was not already waiting for this reason.
        event: Option<String>,
    },
    /// Start a run of a container.
    Start {
        /// Container name.
        container: String,
        /// Whether it is an init container.
        init: bool,
        /// The crash back-off entry from this restart on (a restart renews the window).
        backoff: Option<Entry>,
    },
    /// Stop a run: preStop hook, SIGTERM, SIGKILL at `kill_at` (the end of the grace period).
    Stop {
        /// Container name.
        container: String,
        /// runc id.
        id: String,
        /// When SIGKILL is sent.
        kill_at: Timestamp,
        /// Why.
        cause: StopCause,
    },
    /// The grace period of a run being stopped was shortened (deleted again with a shorter one, or forcibly):
    /// SIGTERM again, and SIGKILL at the new `kill_at` instead of the old one (at once when it has passed).
    Hasten {
        /// runc id.
        id: String,
        /// When SIGKILL is sent now.
        kill_at: Timestamp,
    },
    /// Look at the exit records of runs still marked running (an exit notification may be lost).
    PollExits,
    /// Write off a run whose exit never arrived after its SIGKILL: exit 137.
    RecordLost {
        /// Container name.
        container: String,
    },
    /// Remove runs, network, policy state, volume mounts and cgroups.
    Teardown,
    /// The pod reached its terminal phase and its sandbox is gone (`record.finished`).
    MarkFinished,
    /// Forget the pod: its files, its view, and (unless it is already gone or static) the API object.
    Forget {
        /// Delete the API object (grace 0, uid precondition).
        delete: bool,
    },
}

/// The steps of one pass and when to run the next at the latest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In order; a sandbox step that fails ends the pass.
    pub actions: Vec<Action>,
    /// When to look again without an event.
    pub wake: Option<Duration>,
    /// The pod is done: the worker ends after this pass.
    pub done: bool,
}

impl Plan {
    fn wake_in(&mut self, d: Duration) {
        self.wake = Some(self.wake.map_or(d, |w| w.min(d)));
    }
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    let ms = t.as_millisecond().saturating_sub(now.as_millisecond()).max(0);
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::ZERO)).unwrap_or(t)
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
}

/// The grace period of a pod being deleted (or of a run stopped for another reason, when `deleting` is false).
pub fn grace_period(pod: &Pod, removed: bool, deleting: bool) -> Duration {
    if removed {
        return REMOVED_GRACE;
    }
    let spec = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
    let g = if deleting { pod.metadata.deletion_grace_period_seconds.or(spec) } else { spec };
    Duration::from_secs(u64::try_from(g.unwrap_or(30)).unwrap_or(0))
}

/// The runs still marked running, as (container, runc id).
fn running(rec: &PodRecord) -> Vec<(String, String)> {
    rec.containers
        .iter()
        .filter_map(|(n, c)| c.current.as_ref().filter(|i| i.exit.is_none()).map(|i| (n.clone(), i.id.clone())))
        .collect()
}

/// The steps of the next pass over `pod`.
pub fn next_actions(pod: &Pod, rec: &PodRecord, progress: &Progress, settings: &Settings, now: Timestamp) -> Plan {
    if progress.removed || pod.metadata.deletion_timestamp.is_some() {
        return terminate(pod, rec, progress, now);
    }
    let mut plan = Plan::default();
    if rec.finished {
        return plan;
    }
    sandbox(pod, rec, progress, settings, &mut plan);
    containers(pod, &Pass { rec, progress, settings, now }, &mut plan);
    finish(pod, rec, progress, now, &mut plan);
    plan
}

/// The sandbox steps (each one idempotent; the worker ends the pass at the first that fails, before any container).
fn sandbox(pod: &Pod, rec: &PodRecord, progress: &Progress, settings: &Settings, plan: &mut Plan) {
    if rec.start_time.is_none() {
        plan.actions.push(Action::RecordStartTime);
    }
    let host = host_network(pod);
    if rec.net.is_none() && !host {
        plan.actions.push(Action::CreateSandbox);
    }
    if settings.policy_enforced && !progress.policy_admitted && !host {
        plan.actions.push(Action::AdmitPolicy);
    }
    plan.actions.push(Action::WritePodFiles);
    if let Some(max) = settings.pod_max_pids.filter(|_| !progress.pids_limited) {
        plan.actions.push(Action::LimitPids(max));
    }
    plan.actions.push(Action::PrepareVolumes);
}

/// What one pass's container decisions share.
struct Pass<'a> {
    rec: &'a PodRecord,
    progress: &'a Progress,
    settings: &'a Settings,
    now: Timestamp,
}

/// What a container that is not running and should run needs: a start, or a back-off to wait out.
fn restart_or_wait(c: &Container, r: &ContainerRecord, init: bool, pass: &Pass<'_>, plan: &mut Plan) {
    let Pass { rec, settings, now, .. } = *pass;
    let name = c.name.as_str();
    let image = c.image.as_deref().unwrap_or_default();
    let mut entry = None;
    if let Some(t) = r.exited() {
        let finished: Timestamp = t.finished_at.parse().unwrap_or(now);
        match backoff::decide(r.backoff, finished, now, &settings.backoff) {
            Decision::Wait { until: at, window } => {
                let message = format!(
                    "back-off {}s restarting failed container={name} pod={}_{}({})",
                    window.as_secs(),
                    rec.name,
                    rec.namespace,
                    rec.uid
                );
                let fresh = r.waiting.as_ref().is_none_or(|w| w.reason != "CrashLoopBackOff");
                plan.actions.push(Action::BackOff {
                    container: name.to_string(),
                    waiting: Waiting { reason: "CrashLoopBackOff".into(), message },
                    event: fresh.then(|| "Back-off restarting failed container".to_string()),
                });
                plan.wake_in(until(now, at));
                return;
            }
            Decision::RestartNow(e) => entry = Some(e),
        }
    }
    if let Some((pull, failed_at)) = &r.pull_backoff {
        let failed: Timestamp = failed_at.parse().unwrap_or(now);
        if let Decision::Wait { until: at, .. } = backoff::decide(Some(*pull), failed, now, &settings.backoff) {
            let fresh = r.waiting.as_ref().is_none_or(|w| w.reason != "ImagePullBackOff");
            let message = format!("Back-off pulling image {image:?}");
            plan.actions.push(Action::BackOff {
                container: name.to_string(),
                waiting: Waiting { reason: "ImagePullBackOff".into(), message: message.clone() },
                event: fresh.then_some(message),
            });
            plan.wake_in(until(now, at));
            return;
        }
    }
    plan.actions.push(Action::Start { container: name.to_string(), init, backoff: entry });
}

/// Init containers one at a time in order, then every container its restart policy wants running.
fn containers(pod: &Pod, pass: &Pass<'_>, plan: &mut Plan) {
    let rec = pass.rec;
    let Some(spec) = pod.spec.as_ref() else { return };
    let policy = restart_policy(pod);
    let fresh_init = ContainerRecord { init: true, ..Default::default() };
    for c in spec.init_containers.iter().flatten() {
        let r = rec.containers.get(&c.name).unwrap_or(&fresh_init);
        if r.succeeded() {
            continue;
        }
        if r.running() {
            return;
        }
        if let Some(t) = r.exited()
            && !status::init_restarts(policy, t.exit_code)
        {
            // the pod has failed: `finish` stops it
            return;
        }
        restart_or_wait(c, r, true, pass, plan);
        return;
    }
    let fresh = ContainerRecord::default();
    for c in &spec.containers {
        if pass.progress.post_start_pending.contains(&c.name) {
            // kubelet starts containers in order and each waits for the one before it to finish its postStart hook
            return;
        }
        let r = rec.containers.get(&c.name).unwrap_or(&fresh);
        if r.running() {
            continue;
        }
        if let Some(t) = r.exited()
            && !status::restarts(policy, t.exit_code)
        {
            continue;
        }
        restart_or_wait(c, r, false, pass, plan);
        let starts = matches!(plan.actions.last(), Some(Action::Start { container, .. }) if *container == c.name);
        if starts && c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some()) {
            return;
        }
    }
}

/// A pod in its terminal phase: stop what still runs, then take the sandbox down once.
fn finish(pod: &Pod, rec: &PodRecord, progress: &Progress, now: Timestamp, plan: &mut Plan) {
    let observed = Observed { probes: progress.probes.clone(), host_ip: String::new(), now: Some(now) };
    let phase = status::pod_status(pod, rec, &observed).phase.unwrap_or_default();
    if phase != "Succeeded" && phase != "Failed" {
        return;
    }
    let runs = running(rec);
    if runs.is_empty() {
        plan.actions.push(Action::Teardown);
        plan.actions.push(Action::MarkFinished);
        return;
    }
    let kill_at = plus(now, grace_period(pod, false, false));
    for (container, id) in runs {
        if !progress.stopping.contains_key(&id) {
            plan.actions.push(Action::Stop { container, id, kill_at, cause: StopCause::PodFinished });
        }
    }
    plan.actions.push(Action::PollExits);
    plan.wake_in(EXIT_POLL);
}

/// A pod being deleted: every run stopped within the grace period (counted from when termination began), runs
/// whose exit never came written off, then teardown and the final delete.
fn terminate(pod: &Pod, rec: &PodRecord, progress: &Progress, now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let since = progress.terminating_since.unwrap_or(now);
    let (grace, from) = progress.grace_seen.unwrap_or((grace_period(pod, progress.removed, true), since));
    // when a run not yet stopping gets SIGKILL: the end of the (shortest) grace period, counted from when it was seen
    let kill_at = plus(from, grace).max(now);
    // the earliest write-off among the runs still awaited
    let mut awaited: Option<Timestamp> = None;
    for (container, id) in running(rec) {
        let planned = progress.stopping.get(&id).copied();
        // a grace period shortened since the stop began (deleted again, or gone from the API) brings the kill forward;
        // a longer one never puts it off
        let kill = planned.map_or(kill_at, |p| p.min(kill_at));
        let write_off = plus(kill, LOST_AFTER_KILL);
        if now >= write_off {
            plan.actions.push(Action::RecordLost { container });
            continue;
        }
        match planned {
            None => plan.actions.push(Action::Stop { container, id, kill_at, cause: StopCause::PodDeleted }),
            Some(p) if kill_at < p => plan.actions.push(Action::Hasten { id, kill_at }),
            Some(_) => {}
        }
        awaited = Some(awaited.map_or(write_off, |w| w.min(write_off)));
    }
    if let Some(w) = awaited {
        plan.actions.push(Action::PollExits);
        plan.wake_in(EXIT_POLL.min(until(now, w)).max(Duration::from_millis(10)));
        return plan;
    }
    plan.actions.push(Action::Teardown);
    plan.actions.push(Action::Forget { delete: !progress.removed && !rec.static_pod });
    plan.done = true;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::record::{Instance, Termination};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("ts")
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": spec,
        }))
        .expect("pod")
    }

    fn web() -> Pod {
        pod(serde_json::json!({"containers": [{"name": "web", "image": "busybox"}]}))
    }

    fn with_init() -> Pod {
        pod(serde_json::json!({
            "restartPolicy": "Always",
            "initContainers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}],
            "containers": [{"name": "web", "image": "busybox"}],
        }))
    }

    fn net() -> crate::network::PodNet {
        crate::network::PodNet {
            ip: std::net::Ipv4Addr::new(10, 0, 0, 5),
            veth: "veth0".into(),
            netns: "/run/netns/x".into(),
        }
    }

    /// A record with a network and a start time (the sandbox made).
    fn settled() -> PodRecord {
        PodRecord {
            uid: "u".into(),
            namespace: "ns".into(),
            name: "p".into(),
            net: Some(net()),
            start_time: Some(t(0).to_string()),
            ..Default::default()
        }
    }

    fn run(id: &str) -> Instance {
        Instance { id: id.into(), started_at: t(0).to_string(), ..Default::default() }
    }

    fn ended(id: &str, code: i32, at: Timestamp) -> Instance {
        Instance {
            exit: Some(Termination {
                exit_code: code,
                reason: if code == 0 { "Completed".into() } else { "Error".into() },
                finished_at: at.to_string(),
                container_id: format!("runc://{id}"),
                ..Default::default()
            }),
            ..run(id)
        }
    }

    fn with(mut rec: PodRecord, name: &str, c: ContainerRecord) -> PodRecord {
        rec.containers.insert(name.into(), c);
        rec
    }

    fn settings() -> Settings {
        Settings::default()
    }

    const SANDBOX: [Action; 2] = [Action::WritePodFiles, Action::PrepareVolumes];

    fn after_sandbox(plan: &Plan) -> Vec<Action> {
        plan.actions.iter().filter(|a| !SANDBOX.contains(a)).cloned().collect()
    }

    fn start(name: &str, init: bool) -> Action {
        Action::Start { container: name.into(), init, backoff: None }
    }

    #[test]
    fn a_new_pod_gets_its_sandbox_then_its_containers() {
        let rec = PodRecord { uid: "u".into(), ..Default::default() };
        let s = Settings { pod_max_pids: Some(1024), policy_enforced: true, ..settings() };
        let plan = next_actions(&web(), &rec, &Progress::default(), &s, t(0));
        assert_eq!(
            plan.actions,
            vec![
                Action::RecordStartTime,
                Action::CreateSandbox,
                Action::AdmitPolicy,
                Action::WritePodFiles,
                Action::LimitPids(1024),
                Action::PrepareVolumes,
                start("web", false),
            ]
        );
        assert_eq!(plan.wake, None);
        assert!(!plan.done);
    }

    #[test]
    fn a_host_network_pod_makes_no_sandbox_and_is_not_admitted_to_policy() {
        let p = pod(serde_json::json!({"hostNetwork": true, "containers": [{"name": "web", "image": "busybox"}]}));
        let rec = PodRecord { start_time: Some(t(0).to_string()), ..Default::default() };
        let s = Settings { policy_enforced: true, ..settings() };
        let plan = next_actions(&p, &rec, &Progress::default(), &s, t(0));
        assert_eq!(plan.actions, vec![Action::WritePodFiles, Action::PrepareVolumes, start("web", false)]);
    }

    #[test]
    fn steps_already_taken_are_not_repeated() {
        let progress = Progress { policy_admitted: true, pids_limited: true, ..Default::default() };
        let s = Settings { pod_max_pids: Some(1024), policy_enforced: true, ..settings() };
        let rec = with(settled(), "web", ContainerRecord { current: Some(run("u-web-0")), ..Default::default() });
        let plan = next_actions(&web(), &rec, &progress, &s, t(1));
        assert_eq!(plan.actions, SANDBOX.to_vec());
        assert_eq!(plan.wake, None);
    }

    #[test]
    fn init_containers_run_one_at_a_time_in_order() {
        let p = with_init();
        let table: Vec<(PodRecord, Vec<Action>)> = vec![
            (settled(), vec![start("a", true)]),
            (
                with(settled(), "a", ContainerRecord { init: true, current: Some(run("a0")), ..Default::default() }),
                vec![],
            ),
            (
                with(
                    settled(),
                    "a",
                    ContainerRecord { init: true, current: Some(ended("a0", 0, t(1))), ..Default::default() },
                ),
                vec![start("b", true)],
            ),
            (
                with(
                    with(
                        settled(),
                        "a",
                        ContainerRecord { init: true, current: Some(ended("a0", 0, t(1))), ..Default::default() },
                    ),
                    "b",
                    ContainerRecord { init: true, current: Some(ended("b0", 0, t(2))), ..Default::default() },
                ),
                vec![start("web", false)],
            ),
        ];
        for (i, (rec, want)) in table.into_iter().enumerate() {
            let plan = next_actions(&p, &rec, &Progress::default(), &settings(), t(3));
            assert_eq!(after_sandbox(&plan), want, "case {i}");
        }
    }

    #[test]
    fn a_failed_init_container_restarts_after_back_off_unless_the_policy_is_never() {
        let failed = with(
            settled(),
            "a",
            ContainerRecord {
                init: true,
                current: Some(ended("a0", 1, t(10))),
                backoff: Some(Entry { window: Duration::from_secs(10), updated: t(0) }),
                ..Default::default()
            },
        );
        let plan = next_actions(&with_init(), &failed, &Progress::default(), &settings(), t(12));
        assert!(matches!(&after_sandbox(&plan)[..], [Action::BackOff { container, .. }] if container == "a"));
        assert_eq!(plan.wake, Some(Duration::from_secs(8)));

        let mut never = with_init();
        never.spec.as_mut().expect("spec").restart_policy = Some("Never".into());
        let plan = next_actions(&never, &failed, &Progress::default(), &settings(), t(12));
        // the pod failed: no container starts, the sandbox goes
        assert_eq!(after_sandbox(&plan), vec![Action::Teardown, Action::MarkFinished]);
    }

    #[test]
    fn restart_policy_decides_which_exited_containers_run_again() {
        let table = [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 1, false),
        ];
        for (policy, code, again) in table {
            let mut p = web();
            p.spec.as_mut().expect("spec").restart_policy = Some(policy.into());
            let rec = with(
                settled(),
                "web",
                ContainerRecord { current: Some(ended("w0", code, t(0))), ..Default::default() },
            );
            let plan = next_actions(&p, &rec, &Progress::default(), &settings(), t(100));
            let starts = plan.actions.iter().any(|a| matches!(a, Action::Start { .. }));
            assert_eq!(starts, again, "{policy} exit {code}");
        }
    }

    #[test]
    fn a_crash_loop_restarts_at_once_then_waits_its_window_and_renews_it() {
        let first =
            with(settled(), "web", ContainerRecord { current: Some(ended("w0", 1, t(5))), ..Default::default() });
        let plan = next_actions(&web(), &first, &Progress::default(), &settings(), t(5));
        assert_eq!(
            after_sandbox(&plan),
            vec![Action::Start {
                container: "web".into(),
                init: false,
                backoff: Some(Entry { window: Duration::from_secs(10), updated: t(5) }),
            }]
        );

        let looping = with(
            settled(),
            "web",
            ContainerRecord {
                current: Some(ended("w1", 1, t(6))),
                backoff: Some(Entry { window: Duration::from_secs(10), updated: t(5) }),
                ..Default::default()
            },
        );
        let plan = next_actions(&web(), &looping, &Progress::default(), &settings(), t(7));
        let [Action::BackOff { waiting, event, .. }] = &after_sandbox(&plan)[..] else {
            panic!("expected a back-off: {plan:?}")
        };
        assert_eq!(waiting.reason, "CrashLoopBackOff");
        assert_eq!(waiting.message, "back-off 10s restarting failed container=web pod=p_ns(u)");
        assert!(event.is_some(), "the first wait raises the BackOff event");
        assert_eq!(plan.wake, Some(Duration::from_secs(9)));

        // already waiting for this reason: no second event
        let mut waiting_rec = looping.clone();
        waiting_rec.containers.get_mut("web").expect("web").waiting = Some(waiting.clone());
        let plan = next_actions(&web(), &waiting_rec, &Progress::default(), &settings(), t(8));
        assert!(matches!(&after_sandbox(&plan)[..], [Action::BackOff { event: None, .. }]));

        let plan = next_actions(&web(), &looping, &Progress::default(), &settings(), t(16));
        assert_eq!(
            after_sandbox(&plan),
            vec![Action::Start {
                container: "web".into(),
                init: false,
                backoff: Some(Entry { window: Duration::from_secs(20), updated: t(16) }),
            }]
        );
    }

    #[test]
    fn a_failed_pull_waits_its_back_off_before_the_next_try() {
        let rec = with(
            settled(),
            "web",
            ContainerRecord {
                pull_backoff: Some((Entry { window: Duration::from_secs(10), updated: t(0) }, t(0).to_string())),
                waiting: Some(Waiting { reason: "ErrImagePull".into(), message: "no".into() }),
                ..Default::default()
            },
        );
        let plan = next_actions(&web(), &rec, &Progress::default(), &settings(), t(4));
        let [Action::BackOff { waiting, event, .. }] = &after_sandbox(&plan)[..] else { panic!("{plan:?}") };
        assert_eq!(waiting.reason, "ImagePullBackOff");
        assert_eq!(event.as_deref(), Some("Back-off pulling image \"busybox\""));
        assert_eq!(plan.wake, Some(Duration::from_secs(6)));
        let plan = next_actions(&web(), &rec, &Progress::default(), &settings(), t(11));
        assert_eq!(after_sandbox(&plan), vec![start("web", false)]);
    }

    #[test]
    fn a_finished_pod_stops_what_runs_once_then_tears_down_once() {
        let p = pod(serde_json::json!({
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 7,
            "containers": [{"name": "job", "image": "busybox"}, {"name": "side", "image": "busybox"}],
        }));
        let rec = with(
            with(settled(), "job", ContainerRecord { current: Some(ended("j0", 1, t(3))), ..Default::default() }),
            "side",
            ContainerRecord { current: Some(run("s0")), ..Default::default() },
        );
        // a sidecar still running keeps the pod Running: nothing to do
        let plan = next_actions(&p, &rec, &Progress::default(), &settings(), t(4));
        assert_eq!(after_sandbox(&plan), vec![]);

        let failed_side =
            with(rec.clone(), "side", ContainerRecord { current: Some(ended("s0", 1, t(5))), ..Default::default() });
        let plan = next_actions(&p, &failed_side, &Progress::default(), &settings(), t(6));
        assert_eq!(after_sandbox(&plan), vec![Action::Teardown, Action::MarkFinished]);

        let finished = PodRecord { finished: true, ..failed_side };
        assert_eq!(next_actions(&p, &finished, &Progress::default(), &settings(), t(7)), Plan::default());
    }

    #[test]
    fn a_failed_init_container_under_never_stops_nothing_twice() {
        // (init failed with policy Never: pod Failed; a main container never started, so there is nothing to stop)
        let mut p = with_init();
        p.spec.as_mut().expect("spec").restart_policy = Some("Never".into());
        let rec = with(
            settled(),
            "a",
            ContainerRecord { init: true, current: Some(ended("a0", 1, t(1))), ..Default::default() },
        );
        let plan = next_actions(&p, &rec, &Progress::default(), &settings(), t(2));
        assert_eq!(after_sandbox(&plan), vec![Action::Teardown, Action::MarkFinished]);
    }

    #[test]
    fn a_post_start_hook_holds_back_the_containers_after_it_until_it_completes() {
        let p = pod(serde_json::json!({"containers": [
            {"name": "proxy", "image": "busybox", "lifecycle": {"postStart": {"exec": {"command": ["wait-ready"]}}}},
            {"name": "app", "image": "busybox"},
        ]}));
        let plan = next_actions(&p, &settled(), &Progress::default(), &settings(), t(0));
        assert_eq!(after_sandbox(&plan), vec![start("proxy", false)]);

        let rec = with(settled(), "proxy", ContainerRecord { current: Some(run("p0")), ..Default::default() });
        let hooked = Progress { post_start_pending: ["proxy".to_string()].into(), ..Default::default() };
        let plan = next_actions(&p, &rec, &hooked, &settings(), t(1));
        assert_eq!(after_sandbox(&plan), vec![]);

        let plan = next_actions(&p, &rec, &Progress::default(), &settings(), t(2));
        assert_eq!(after_sandbox(&plan), vec![start("app", false)]);
    }

    fn deleted(grace: i64) -> Pod {
        let mut p = web();
        p.metadata.deletion_timestamp = Some(Time(t(0)));
        p.metadata.deletion_grace_period_seconds = Some(grace);
        p
    }

    #[test]
    fn a_deleted_pod_stops_each_run_once_within_the_grace_period() {
        let rec = with(settled(), "web", ContainerRecord { current: Some(run("w0")), ..Default::default() });
        let begun = Progress { terminating_since: Some(t(0)), ..Default::default() };
        let plan = next_actions(&deleted(30), &rec, &begun, &settings(), t(0));
        assert_eq!(
            plan.actions,
            vec![
                Action::Stop { container: "web".into(), id: "w0".into(), kill_at: t(30), cause: StopCause::PodDeleted },
                Action::PollExits,
            ]
        );
        assert_eq!(plan.wake, Some(EXIT_POLL));
        assert!(!plan.done);

        // stopping already: only look for the exit; the grace left shrinks with time
        let stopping = Progress { stopping: [("w0".to_string(), t(30))].into(), ..begun.clone() };
        let plan = next_actions(&deleted(30), &rec, &stopping, &settings(), t(10));
        assert_eq!(plan.actions, vec![Action::PollExits]);

        // a run whose exit never came after grace + the kill's allowance is written off, then all is torn down
        let plan = next_actions(&deleted(30), &rec, &stopping, &settings(), t(36));
        assert_eq!(
            plan.actions,
            vec![Action::RecordLost { container: "web".into() }, Action::Teardown, Action::Forget { delete: true }]
        );
        assert!(plan.done);
    }

    #[test]
    fn a_shorter_grace_period_brings_the_kill_forward() {
        let rec = with(settled(), "web", ContainerRecord { current: Some(run("w0")), ..Default::default() });
        let secs = Duration::from_secs;
        let stopping = |seen: Option<(u64, i64)>, removed: bool| Progress {
            removed,
            terminating_since: Some(t(0)),
            grace_seen: seen.map(|(g, at)| (secs(g), t(at))),
            stopping: [("w0".to_string(), t(30))].into(),
            ..Default::default()
        };
        let hasten = |at: i64| vec![Action::Hasten { id: "w0".into(), kill_at: t(at) }, Action::PollExits];
        let wait = vec![Action::PollExits];
        // (pod, progress, now) → actions. Stopping with the kill planned at t=30 (deleted at t=0 with 30 s):
        let table: Vec<(Pod, Progress, i64, Vec<Action>)> = vec![
            // deleted again with 5 s, seen at t=10: killed at t=15
            (deleted(5), stopping(Some((5, 10)), false), 10, hasten(15)),
            // with 0 at t=10: killed now
            (deleted(0), stopping(Some((0, 10)), false), 10, hasten(10)),
            // force-deleted (gone from the API) at t=10: the 2 s of a vanished pod
            (web(), stopping(Some((2, 10)), true), 10, hasten(12)),
            // a shortened grace that ends after the planned kill, the same one, or a longer one: nothing changes
            (deleted(25), stopping(Some((25, 10)), false), 10, wait.clone()),
            (deleted(30), stopping(Some((30, 0)), false), 10, wait.clone()),
            (deleted(60), stopping(None, false), 10, wait.clone()),
            // already brought forward: only look for the exit
            (
                deleted(5),
                Progress { stopping: [("w0".to_string(), t(15))].into(), ..stopping(Some((5, 10)), false) },
                11,
                wait,
            ),
        ];
        for (pod, progress, now, want) in table {
            let plan = next_actions(&pod, &rec, &progress, &settings(), t(now));
            assert_eq!(plan.actions, want, "{:?} at t={now}", progress.grace_seen);
        }
    }

    #[test]
    fn a_deleted_pod_with_nothing_running_is_torn_down_and_deleted_at_once() {
        let rec = with(settled(), "web", ContainerRecord { current: Some(ended("w0", 0, t(1))), ..Default::default() });
        let plan = next_actions(&deleted(30), &rec, &Progress::default(), &settings(), t(2));
        assert_eq!(plan.actions, vec![Action::Teardown, Action::Forget { delete: true }]);
        assert!(plan.done);
    }

    #[test]
    fn a_pod_gone_from_the_api_gets_a_short_grace_and_no_delete() {
        let rec = with(settled(), "web", ContainerRecord { current: Some(run("w0")), ..Default::default() });
        let gone = Progress { removed: true, terminating_since: Some(t(0)), ..Default::default() };
        let plan = next_actions(&web(), &rec, &gone, &settings(), t(0));
        assert!(plan.actions.contains(&Action::Stop {
            container: "web".into(),
            id: "w0".into(),
            kill_at: t(REMOVED_GRACE.as_secs() as i64),
            cause: StopCause::PodDeleted,
        }));
        let empty = with(settled(), "web", ContainerRecord::default());
        let plan = next_actions(&web(), &empty, &gone, &settings(), t(1));
        assert_eq!(plan.actions, vec![Action::Teardown, Action::Forget { delete: false }]);

        let mut static_rec = empty;
        static_rec.static_pod = true;
        let plan = next_actions(&deleted(0), &static_rec, &Progress::default(), &settings(), t(1));
        assert_eq!(plan.actions, vec![Action::Teardown, Action::Forget { delete: false }]);
    }
}

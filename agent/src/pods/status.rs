//! The pod's status as a pure function of its spec, the agent's record and the probe results: phase (the kubelet's
//! rules), conditions with their Kubernetes reasons (keeping `lastTransitionTime` while a condition does not
//! change), addresses, and the container statuses.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::record::{ContainerRecord, PodRecord, Termination};

/// What the probes currently say about a container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeState {
    /// The startup probe succeeded (or there is none).
    pub started: bool,
    /// The readiness probe succeeds (or there is none).
    pub ready: bool,
}

/// The restart policy's answer for a container that exited with `code`.
pub fn restarts(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// Whether an init container that exited with `code` runs again.
pub fn init_restarts(policy: &str, code: i32) -> bool {
    code != 0 && policy != "Never"
}

fn time(s: &str) -> Option<Time> {
    s.parse::<Timestamp>().ok().map(Time)
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone().filter(|m| !m.is_empty()),
        started_at: t.started_at.as_deref().and_then(time),
        finished_at: time(&t.finished_at),
        container_id: Some(t.container_id.clone()),
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message }),
        ..Default::default()
    }
}

/// The status of one container.
pub fn container_status(
    c: &Container,
    rec: Option<&ContainerRecord>,
    probe: ProbeState,
    policy: &str,
    init: bool,
    initializing: bool,
) -> ContainerStatus {
    let default_wait = if initializing && !init { "PodInitializing" } else { "ContainerCreating" };
    let mut st = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        state: Some(waiting(default_wait, None)),
        ..Default::default()
    };
    let Some(rec) = rec else { return st };
    st.restart_count = i32::try_from(rec.restart_count).unwrap_or(i32::MAX);
    st.last_state = rec.last.as_ref().map(|t| ContainerState { terminated: Some(terminated(t)), ..Default::default() });
    if let Some(cur) = &rec.current {
        st.image_id = cur.image_id.clone();
        st.container_id = Some(format!("runc://{}", cur.id));
        match &cur.exit {
            None => {
                st.state = Some(ContainerState {
                    running: Some(ContainerStateRunning { started_at: time(&cur.started_at) }),
                    ..Default::default()
                });
                st.started = Some(probe.started);
                st.ready = !init && probe.started && probe.ready;
            }
            Some(t) => {
                let again = if init { init_restarts(policy, t.exit_code) } else { restarts(policy, t.exit_code) };
                match (&rec.waiting, again) {
                    (Some(w), true) => {
                        // waiting to run again (CrashLoopBackOff, or an error preparing the next run)
                        st.state = Some(waiting(&w.reason, Some(w.message.clone()).filter(|m| !m.is_empty())));
                        st.last_state = Some(ContainerState { terminated: Some(terminated(t)), ..Default::default() });
                    }
                    _ => {
                        st.state = Some(ContainerState { terminated: Some(terminated(t)), ..Default::default() });
                    }
                }
                st.ready = init && t.exit_code == 0 && rec.waiting.is_none();
            }
        }
    } else if let Some(w) = &rec.waiting {
        st.state = Some(waiting(&w.reason, Some(w.message.clone()).filter(|m| !m.is_empty())));
    }
    st
}

/// The pod phase from the container statuses (the kubelet's `getPhase`).
pub fn phase(spec: &PodSpec, init: &[ContainerStatus], containers: &[ContainerStatus]) -> &'static str {
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let mut pending_init = 0;
    let mut failed_init = 0;
    for s in init {
        let st = s.state.as_ref();
        match st {
            Some(ContainerState { terminated: Some(t), .. }) if t.exit_code == 0 => {}
            Some(ContainerState { terminated: Some(_), .. }) => failed_init += 1,
            Some(ContainerState { waiting: Some(_), .. })
                if s.last_state.as_ref().is_some_and(|l| l.terminated.as_ref().is_some_and(|t| t.exit_code != 0)) =>
            {
                failed_init += 1;
                pending_init += 1;
            }
            _ => pending_init += 1,
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        match s.state.as_ref() {
            Some(ContainerState { running: Some(_), .. }) => running += 1,
            Some(ContainerState { terminated: Some(t), .. }) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            Some(ContainerState { waiting: Some(_), .. }) => {
                if s.last_state.as_ref().is_some_and(|l| l.terminated.is_some()) {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

fn condition(
    ty: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    previous: &[PodCondition],
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == ty && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: ty.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(since),
        last_probe_time: None,
        ..Default::default()
    }
}

/// Everything the status computation needs besides the pod and its record.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Probe results by container name.
    pub probes: BTreeMap<String, ProbeState>,
    /// The node's address.
    pub host_ip: String,
    /// The time to stamp new transitions with.
    pub now: Option<Timestamp>,
}

/// The QoS class (Guaranteed, Burstable, BestEffort), as the API server computes it.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    skiff_api::qos::class(spec)
}

/// The full status.
pub fn pod_status(pod: &Pod, rec: &PodRecord, obs: &Observed) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let previous = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let now = Time(obs.now.unwrap_or_else(Timestamp::now));
    let init_specs = spec.init_containers.clone().unwrap_or_default();
    let init: Vec<ContainerStatus> = init_specs
        .iter()
        .map(|c| {
            container_status(
                c,
                rec.containers.get(&c.name),
                ProbeState { started: true, ready: true },
                &policy,
                true,
                false,
            )
        })
        .collect();
    let initializing = init.iter().any(|s| !s.ready);
    let containers: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| {
            let probe = obs.probes.get(&c.name).copied().unwrap_or_default();
            container_status(c, rec.containers.get(&c.name), probe, &policy, false, initializing)
        })
        .collect();
    let phase = phase(&spec, &init, &containers);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let incomplete: Vec<String> = init.iter().filter(|s| !s.ready).map(|s| s.name.clone()).collect();
    let unready: Vec<String> = containers.iter().filter(|s| !s.ready).map(|s| s.name.clone()).collect();
    let mut conditions = Vec::new();
    let sandbox = rec.net.is_some() || spec.host_network == Some(true);
    conditions.push(condition("PodReadyToStartContainers", sandbox && !rec.finished, None, None, &previous, &now));
    let init_ok = incomplete.is_empty();
    conditions.push(if init_ok {
        condition("Initialized", true, None, None, &previous, &now)
    } else {
        condition(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!("containers with incomplete status: [{}]", incomplete.join(" "))),
            &previous,
            &now,
        )
    });
    let ready = unready.is_empty() && !terminal;
    let (reason, message) = if ready {
        (None, None)
    } else if terminal {
        (Some("PodCompleted"), None)
    } else {
        (Some("ContainersNotReady"), Some(format!("containers with unready status: [{}]", unready.join(" "))))
    };
    conditions.push(condition("Ready", ready, reason, message.clone(), &previous, &now));
    conditions.push(condition("ContainersReady", ready, reason, message, &previous, &now));
    let scheduled = previous
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .cloned()
        .unwrap_or_else(|| condition("PodScheduled", true, None, None, &previous, &now));
    conditions.push(scheduled);
    // Keep conditions others own (readiness gates, DisruptionTarget, …).
    let ours = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"];
    conditions.extend(previous.iter().filter(|c| !ours.contains(&c.type_.as_str())).cloned());
    let pod_ip = if spec.host_network == Some(true) {
        Some(obs.host_ip.clone())
    } else {
        rec.net.as_ref().filter(|_| !rec.finished).map(|n| n.ip.to_string())
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(obs.host_ip.clone()).filter(|h| !h.is_empty()),
        host_ips: Some(vec![HostIP { ip: obs.host_ip.clone() }]).filter(|_| !obs.host_ip.is_empty()),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        start_time: rec.start_time.as_deref().and_then(time),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(containers),
        qos_class: Some(qos_class(&spec).into()),
        ..Default::default()
    }
}

/// Whether the API's copy of the pod still says what the agent last wrote for each condition it owns. Another
/// writer (the node lifecycle controller marks pods NotReady when the node's Lease is late) can change one; the
/// agent then writes its own view again, as kubelet's status manager does.
pub fn conditions_agree(ours: Option<&[PodCondition]>, api: Option<&[PodCondition]>) -> bool {
    ours.unwrap_or_default().iter().all(|mine| {
        api.unwrap_or_default().iter().any(|theirs| theirs.type_ == mine.type_ && theirs.status == mine.status)
    })
}

/// Whether `update` is an older copy of the pod than the one the agent holds: a watch event that arrives after
/// the agent's own status write returned a newer copy. Taking it would make [`conditions_agree`] see the agent's
/// last write as undone and write it again. Resource versions are the store's revisions; a copy whose version does
/// not parse, or of another pod (uid), is never older.
pub fn is_older(update: &Pod, held: &Pod) -> bool {
    let rv = |p: &Pod| p.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok());
    update.metadata.uid == held.metadata.uid && matches!((rv(update), rv(held)), (Some(a), Some(b)) if a < b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_older_copy_of_the_same_pod_is_older() {
        let pod = |uid: &str, rv: Option<&str>| {
            let mut p = Pod::default();
            p.metadata.uid = Some(uid.into());
            p.metadata.resource_version = rv.map(String::from);
            p
        };
        let table = [
            (pod("a", Some("9")), pod("a", Some("10")), true),
            (pod("a", Some("10")), pod("a", Some("10")), false),
            (pod("a", Some("11")), pod("a", Some("10")), false),
            (pod("b", Some("9")), pod("a", Some("10")), false),
            (pod("a", None), pod("a", Some("10")), false),
            (pod("a", Some("x")), pod("a", Some("10")), false),
        ];
        for (update, held, want) in table {
            assert_eq!(is_older(&update, &held), want, "{update:?} vs {held:?}");
        }
    }

    #[test]
    fn conditions_disagree_when_another_writer_changed_one_the_agent_owns() {
        let c = |t: &str, st: &str| PodCondition { type_: t.into(), status: st.into(), ..Default::default() };
        let ours = [c("Ready", "True"), c("ContainersReady", "True")];
        let table: Vec<(Option<Vec<PodCondition>>, bool)> = vec![
            (Some(vec![c("ContainersReady", "True"), c("Ready", "True"), c("PodScheduled", "True")]), true),
            (Some(vec![c("ContainersReady", "True"), c("Ready", "False")]), false),
            (Some(vec![c("ContainersReady", "True")]), false),
            (None, false),
        ];
        for (api, want) in table {
            assert_eq!(conditions_agree(Some(&ours), api.as_deref()), want, "{api:?}");
        }
        assert!(conditions_agree(None, None), "nothing of ours to disagree with");
    }

    use super::*;
    use crate::pods::record::Instance;

    fn pod(policy: &str, containers: &[&str], inits: &[&str]) -> Pod {
        let c = |n: &&str| Container { name: n.to_string(), image: Some("busybox".into()), ..Default::default() };
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                containers: containers.iter().map(c).collect(),
                init_containers: (!inits.is_empty()).then(|| inits.iter().map(c).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerRecord {
        ContainerRecord {
            current: Some(Instance { id: "x".into(), started_at: "2026-01-01T00:00:00Z".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn exited(code: i32) -> ContainerRecord {
        let mut r = running();
        if let Some(c) = r.current.as_mut() {
            c.exit = Some(Termination {
                exit_code: code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                finished_at: "2026-01-01T00:00:05Z".into(),
                ..Default::default()
            });
        }
        r
    }

    fn status(p: &Pod, recs: &[(&str, ContainerRecord)], probes: &[(&str, ProbeState)]) -> PodStatus {
        let rec = PodRecord {
            containers: recs.iter().map(|(n, r)| (n.to_string(), r.clone())).collect(),
            ..Default::default()
        };
        let obs = Observed {
            probes: probes.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            host_ip: "10.0.0.11".into(),
            now: Some(Timestamp::UNIX_EPOCH),
        };
        pod_status(p, &rec, &obs)
    }

    fn cond(s: &PodStatus, ty: &str) -> (String, Option<String>) {
        let c = s.conditions.as_ref().and_then(|cs| cs.iter().find(|c| c.type_ == ty)).expect("condition");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_new_pod_is_pending_with_containers_creating() {
        let s = status(&pod("Always", &["a"], &[]), &[], &[]);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let w = s.container_statuses.expect("statuses")[0].state.clone().expect("state").waiting.expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
        assert_eq!(
            cond(&status(&pod("Always", &["a"], &[]), &[], &[]), "Ready"),
            ("False".into(), Some("ContainersNotReady".into()))
        );
    }

    #[test]
    fn readiness_drives_the_ready_condition() {
        let p = pod("Always", &["a"], &[]);
        let not = status(&p, &[("a", running())], &[("a", ProbeState { started: true, ready: false })]);
        assert_eq!(not.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&not, "Ready").0, "False");
        let yes = status(&p, &[("a", running())], &[("a", ProbeState { started: true, ready: true })]);
        assert_eq!(cond(&yes, "Ready"), ("True".into(), None));
        assert_eq!(cond(&yes, "ContainersReady").0, "True");
    }

    #[test]
    fn phases_follow_the_restart_policy() {
        assert_eq!(status(&pod("Never", &["a"], &[]), &[("a", exited(0))], &[]).phase.as_deref(), Some("Succeeded"));
        assert_eq!(status(&pod("Never", &["a"], &[]), &[("a", exited(1))], &[]).phase.as_deref(), Some("Failed"));
        assert_eq!(
            status(&pod("OnFailure", &["a"], &[]), &[("a", exited(0))], &[]).phase.as_deref(),
            Some("Succeeded")
        );
        let s = status(&pod("Never", &["a", "b"], &[]), &[("a", exited(0)), ("b", running())], &[]);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let done = status(&pod("Never", &["a"], &[]), &[("a", exited(0))], &[]);
        assert_eq!(cond(&done, "Ready"), ("False".into(), Some("PodCompleted".into())));
    }

    #[test]
    fn a_crash_looping_container_waits_with_its_last_termination() {
        let mut r = exited(2);
        r.restart_count = 3;
        r.waiting =
            Some(crate::pods::record::Waiting { reason: "CrashLoopBackOff".into(), message: "back-off 20s".into() });
        let s = status(&pod("Always", &["a"], &[]), &[("a", r)], &[]);
        let cs = &s.container_statuses.expect("statuses")[0];
        assert_eq!(cs.restart_count, 3);
        assert_eq!(
            cs.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref()),
            Some("CrashLoopBackOff")
        );
        assert_eq!(cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code), Some(2));
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn init_containers_gate_initialization_and_a_failed_one_fails_a_never_pod() {
        let p = pod("Always", &["a"], &["init"]);
        let s = status(&p, &[("init", running())], &[]);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized"), ("False".into(), Some("ContainersNotInitialized".into())));
        let main = s.container_statuses.expect("statuses")[0].state.clone().expect("state").waiting.expect("waiting");
        assert_eq!(main.reason.as_deref(), Some("PodInitializing"));
        let done = status(&p, &[("init", exited(0))], &[]);
        assert_eq!(cond(&done, "Initialized").0, "True");
        let failed = status(&pod("Never", &["a"], &["init"]), &[("init", exited(1))], &[]);
        assert_eq!(failed.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let mut p = pod("Always", &["a"], &[]);
        let old = Time(Timestamp::from_second(100).expect("ts"));
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "False".into(),
                last_transition_time: Some(old.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let s = status(&p, &[], &[]);
        let ready = s.conditions.expect("conditions").into_iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!(ready.last_transition_time, Some(old));
    }

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let mut p = pod("Always", &["a"], &[]);
        assert_eq!(qos_class(p.spec.as_ref().expect("spec")), "BestEffort");
        let lim: BTreeMap<String, Quantity> =
            [("cpu".to_string(), Quantity("100m".into())), ("memory".to_string(), Quantity("64Mi".into()))].into();
        p.spec.as_mut().expect("spec").containers[0].resources =
            Some(ResourceRequirements { limits: Some(lim.clone()), ..Default::default() });
        assert_eq!(qos_class(p.spec.as_ref().expect("spec")), "Guaranteed");
        p.spec.as_mut().expect("spec").containers[0].resources =
            Some(ResourceRequirements { requests: Some(lim), ..Default::default() });
        assert_eq!(qos_class(p.spec.as_ref().expect("spec")), "Burstable");
    }
}

//! The Node object: registration (labels, capacity and allocatable from the host, addresses, nodeInfo, kubelet
//! endpoint, conditions), the pod CIDR the control plane assigns, and heartbeats — the Lease
//! `kube-node-lease/<node>` renewed every 3 s and the conditions' `lastHeartbeatTime` every 10 s.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::AgentError;
use crate::host::HostFacts;

/// Lease duration (the node lifecycle controller marks the node Unknown when it lapses).
pub const LEASE_SECONDS: i32 = 12;
/// Lease renewal period.
pub const LEASE_RENEW: Duration = Duration::from_secs(3);
/// Node status heartbeat period.
pub const STATUS_HEARTBEAT: Duration = Duration::from_secs(10);

/// What the Node says about itself.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    /// Name.
    pub name: String,
    /// InternalIP.
    pub ip: std::net::Ipv4Addr,
    /// Host facts.
    pub host: HostFacts,
    /// Kubelet port.
    pub port: u16,
    /// `runc://…`.
    pub runtime_version: String,
    /// Most pods.
    pub max_pods: u32,
}

/// Pressure readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    /// Little memory left.
    pub memory: bool,
    /// Little disk left.
    pub disk: bool,
    /// Few pids left.
    pub pid: bool,
}

/// Reads the pressure conditions: memory available under 100 MiB, disk under 10 % free, pids over 90 % used.
pub fn pressure(data_dir: &std::path::Path) -> Pressure {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail = crate::host::meminfo_field(&meminfo, "MemAvailable:").unwrap_or(u64::MAX);
    let disk = nix::sys::statvfs::statvfs(data_dir).map(|s| s.blocks_available() * 10 < s.blocks()).unwrap_or(false);
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u64::MAX);
    let procs = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit())).count() as u64
        })
        .unwrap_or(0);
    Pressure { memory: avail < 100 << 20, disk, pid: procs * 10 > max * 9 }
}

/// The node's conditions at `now` (transition times kept from `previous` while a status does not change).
pub fn conditions(p: Pressure, previous: &[NodeCondition], now: Timestamp) -> Vec<NodeCondition> {
    let c = |ty: &str, on: bool, (yes, no): (&str, &str), (myes, mno): (&str, &str)| {
        let status = if on { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|x| x.type_ == ty && x.status == status)
            .and_then(|x| x.last_transition_time.clone())
            .unwrap_or(Time(now));
        NodeCondition {
            type_: ty.into(),
            status: status.into(),
            reason: Some(if on { yes } else { no }.into()),
            message: Some(if on { myes } else { mno }.into()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(since),
        }
    };
    vec![
        c(
            "MemoryPressure",
            p.memory,
            ("KubeletHasInsufficientMemory", "KubeletHasSufficientMemory"),
            ("kubelet has insufficient memory available", "kubelet has sufficient memory available"),
        ),
        c(
            "DiskPressure",
            p.disk,
            ("KubeletHasDiskPressure", "KubeletHasNoDiskPressure"),
            ("kubelet has disk pressure", "kubelet has no disk pressure"),
        ),
        c(
            "PIDPressure",
            p.pid,
            ("KubeletHasInsufficientPID", "KubeletHasSufficientPID"),
            ("kubelet has insufficient PID available", "kubelet has sufficient PID available"),
        ),
        c(
            "Ready",
            true,
            ("KubeletReady", "KubeletNotReady"),
            ("kubelet is posting ready status", "kubelet is not ready"),
        ),
    ]
}

/// The Node's labels.
pub fn labels(f: &NodeFacts) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", f.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", f.host.architecture.as_str()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", f.host.architecture.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The status (without conditions' history).
pub fn status(f: &NodeFacts, conds: Vec<NodeCondition>) -> NodeStatus {
    let q = |s: String| Quantity(s);
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), q(f.host.cpus.to_string())),
        ("memory".to_string(), q(format!("{}Ki", f.host.memory / 1024))),
        ("pods".to_string(), q(f.max_pods.to_string())),
        ("ephemeral-storage".to_string(), q(format!("{}Ki", f.host.ephemeral_storage / 1024))),
    ]
    .into();
    NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: f.ip.to_string() },
            NodeAddress { type_: "Hostname".into(), address: f.name.clone() },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(f.port) }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: f.host.architecture.clone(),
            boot_id: f.host.boot_id.clone(),
            container_runtime_version: f.runtime_version.clone(),
            kernel_version: f.host.kernel_version.clone(),
            kube_proxy_version: crate::config::KUBELET_VERSION.into(),
            kubelet_version: crate::config::KUBELET_VERSION.into(),
            machine_id: f.host.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: f.host.os_image.clone(),
            system_uuid: f.host.machine_id.clone(),
        }),
        conditions: Some(conds),
        ..Default::default()
    }
}

/// Marks the Node as run with its own certificate ([`skiff_client::identity::NODE_CERTIFICATE_ANNOTATION`]).
fn certificate_annotation() -> std::collections::BTreeMap<String, String> {
    [(skiff_client::identity::NODE_CERTIFICATE_ANNOTATION.to_string(), "true".to_string())].into()
}

/// Creates or updates the Node; returns it as stored (with `spec.podCIDR` once assigned).
pub async fn register(client: &kube::Client, f: &NodeFacts, data_dir: &std::path::Path) -> Result<Node, AgentError> {
    let api: Api<Node> = Api::all(client.clone());
    let existing = api.get_opt(&f.name).await.map_err(AgentError::api(format!("reading node {}", f.name)))?;
    let previous =
        existing.as_ref().and_then(|n| n.status.as_ref()).and_then(|s| s.conditions.clone()).unwrap_or_default();
    let st = status(f, conditions(pressure(data_dir), &previous, Timestamp::now()));
    if existing.is_none() {
        let node = Node {
            metadata: kube::api::ObjectMeta {
                name: Some(f.name.clone()),
                labels: Some(labels(f)),
                annotations: Some(certificate_annotation()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %f.name, "node registered"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(AgentError::api(format!("creating node {}", f.name))(e)),
        }
    } else {
        let metadata = json!({"metadata": {"labels": labels(f), "annotations": certificate_annotation()}});
        api.patch(&f.name, &PatchParams::default(), &Patch::Merge(metadata))
            .await
            .map_err(AgentError::api("updating node labels"))?;
        tracing::info!(node = %f.name, "node already registered; status updated");
    }
    api.patch_status(&f.name, &PatchParams::default(), &Patch::Merge(json!({"status": st})))
        .await
        .map_err(AgentError::api("writing node status"))
}

/// Waits (at most a minute) for the control plane to assign the pod CIDR.
pub async fn pod_cidr(client: &kube::Client, name: &str, node: Node) -> Result<ipnet::Ipv4Net, AgentError> {
    let api: Api<Node> = Api::all(client.clone());
    let mut node = node;
    for _ in 0..60 {
        if let Some(c) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).filter(|c| !c.is_empty()) {
            return c.parse().map_err(|e| AgentError::Config(format!("node {name} has an invalid podCIDR {c}: {e}")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        node = api.get(name).await.map_err(AgentError::api("reading the node"))?;
    }
    Err(AgentError::Config(format!("the control plane assigned no spec.podCIDR to node {name} within a minute")))
}

/// Renews the Lease every 3 s until the task is dropped.
pub async fn lease_loop(client: kube::Client, name: String, node_uid: Option<String>) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut tick = tokio::time::interval(LEASE_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = MicroTime(Timestamp::now());
        let patch = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease = Lease {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some("kube-node-lease".into()),
                        owner_references: node_uid.clone().map(|uid| {
                            vec![OwnerReference {
                                api_version: "v1".into(),
                                kind: "Node".into(),
                                name: name.clone(),
                                uid,
                                ..Default::default()
                            }]
                        }),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(name.clone()),
                        lease_duration_seconds: Some(LEASE_SECONDS),
                        renew_time: Some(now),
                        ..Default::default()
                    }),
                };
                if let Err(e) = api.create(&PostParams::default(), &lease).await {
                    tracing::warn!(error = %e, "creating the node lease failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing the node lease failed"),
        }
    }
}

/// Refreshes the conditions (heartbeat) every 10 s until the task is dropped.
pub async fn status_loop(client: kube::Client, facts: NodeFacts, data_dir: std::path::PathBuf) {
    let api: Api<Node> = Api::all(client);
    let mut previous: Vec<NodeCondition> = Vec::new();
    let mut tick = tokio::time::interval(STATUS_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let conds = conditions(pressure(&data_dir), &previous, Timestamp::now());
        match api
            .patch_status(
                &facts.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status(&facts, conds.clone())})),
            )
            .await
        {
            Ok(_) => previous = conds,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::warn!(node = %facts.name, "the Node was deleted; registering it again");
                let node = Node {
                    metadata: kube::api::ObjectMeta {
                        name: Some(facts.name.clone()),
                        labels: Some(labels(&facts)),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let _ = api.create(&PostParams::default(), &node).await;
            }
            Err(e) => tracing::warn!(error = %e, "node heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            ip: "10.0.0.11".parse().expect("ip"),
            host: HostFacts {
                cpus: 2,
                memory: 4 << 30,
                ephemeral_storage: 100 << 30,
                architecture: "amd64".into(),
                ..Default::default()
            },
            port: 10250,
            runtime_version: "runc://1.1.5".into(),
            max_pods: 110,
        }
    }

    #[test]
    fn the_status_reports_capacity_addresses_and_the_kubelet_port() {
        let st = status(&facts(), conditions(Pressure::default(), &[], Timestamp::UNIX_EPOCH));
        let cap = st.capacity.expect("capacity");
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(st.addresses.expect("addresses")[0].address, "10.0.0.11");
        assert_eq!(st.daemon_endpoints.and_then(|d| d.kubelet_endpoint).map(|e| e.port), Some(10250));
        assert_eq!(st.node_info.expect("info").kubelet_version, "v1.32.4-skiff");
    }

    #[test]
    fn ready_is_true_and_transition_times_survive_heartbeats() {
        let t0 = Timestamp::from_second(100).expect("ts");
        let first = conditions(Pressure::default(), &[], t0);
        let ready = first.iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
        let t1 = Timestamp::from_second(110).expect("ts");
        let second = conditions(Pressure::default(), &first, t1);
        let r2 = second.iter().find(|c| c.type_ == "Ready").expect("ready");
        assert_eq!(r2.last_transition_time, Some(Time(t0)));
        assert_eq!(r2.last_heartbeat_time, Some(Time(t1)));
        let pressed = conditions(Pressure { memory: true, ..Default::default() }, &second, t1);
        let mp = pressed.iter().find(|c| c.type_ == "MemoryPressure").expect("mp");
        assert_eq!((mp.status.as_str(), mp.last_transition_time.clone()), ("True", Some(Time(t1))));
    }

    #[test]
    fn labels_name_the_host_os_and_arch() {
        let l = labels(&facts());
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["kubernetes.io/arch"], "amd64");
    }
}

//! Scheduling filters and scores, as pure functions of a pod, a node and what is already on the node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use skiff_api::quantity::Quantity;

use crate::controllers::cached_pod::{CachedPod, Container, Spec};
use crate::controllers::placement::{
    node_ready, preferred_affinity_score, selector_and_affinity_match, untolerated_taint,
};

/// What is already committed on a node.
#[derive(Debug, Clone, Default)]
pub struct NodeUsage {
    /// Requested millicores.
    pub cpu_milli: i64,
    /// Requested bytes of memory.
    pub memory: i64,
    /// Pods.
    pub pods: i64,
    /// Host ports in use (port, protocol).
    pub host_ports: Vec<(i32, String)>,
    /// Pods per controller, by [`owner_key`].
    pub by_owner: BTreeMap<u64, i64>,
}

/// What a pod asks for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Millicores.
    pub cpu_milli: i64,
    /// Bytes.
    pub memory: i64,
    /// Host ports.
    pub host_ports: Vec<(i32, String)>,
    /// Its controller, by [`owner_key`].
    pub owner: Option<u64>,
}

/// The scheduling request of a pod: what its containers request (the larger of the containers' sum and the largest
/// init container, as quota counts it), read from the typed spec (this runs for every pod on every pass).
pub fn request_of(pod: &CachedPod) -> Request {
    let Some(spec) = pod.spec.as_ref() else {
        return Request { owner: owner_of(pod), ..Default::default() };
    };
    let host_ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.host_port.filter(|hp| *hp > 0).map(|hp| (hp, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
        })
        .collect();
    Request {
        cpu_milli: requested(spec, "cpu", Quantity::as_milli),
        memory: requested(spec, "memory", Quantity::as_units),
        host_ports,
        owner: owner_of(pod),
    }
}

fn owner_of(pod: &CachedPod) -> Option<u64> {
    crate::controllers::util::controller_of(&pod.metadata).map(|r| owner_key(&r.uid))
}

/// What the scheduler knows a controller by in its counts of pods per node: a hash of its uid, keyed at random per
/// process, where a copy of the uid per controller per node took ~100 bytes a pod at 10k pods on 200 nodes. Two
/// controllers on one hash (by chance: 1 in 2^64 a pair) would only have their pods spread as one controller's.
pub fn owner_key(uid: &str) -> u64 {
    static KEY: std::sync::LazyLock<std::hash::RandomState> = std::sync::LazyLock::new(Default::default);
    std::hash::BuildHasher::hash_one(&*KEY, uid)
}

fn requested(spec: &Spec, resource: &str, amount: fn(&Quantity) -> i64) -> i64 {
    let of = |c: &Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| q.0.parse::<Quantity>().ok())
            .map(|q| amount(&q))
            .unwrap_or(0)
    };
    let containers: i64 = spec.containers.iter().map(of).sum();
    let init = spec.init_containers.iter().flat_map(|cs| cs.iter()).map(of).max().unwrap_or(0);
    containers.max(init)
}

/// Adds a pod's request to a node's usage.
pub fn add(usage: &mut NodeUsage, r: &Request) {
    usage.cpu_milli += r.cpu_milli;
    usage.memory += r.memory;
    usage.pods += 1;
    usage.host_ports.extend(r.host_ports.iter().cloned());
    if let Some(o) = &r.owner {
        *usage.by_owner.entry(*o).or_default() += 1;
    }
}

/// Takes a pod's request off a node's usage (the pod finished, was deleted, or its binding failed).
pub fn remove(usage: &mut NodeUsage, r: &Request) {
    usage.cpu_milli -= r.cpu_milli;
    usage.memory -= r.memory;
    usage.pods -= 1;
    for port in &r.host_ports {
        if let Some(i) = usage.host_ports.iter().position(|p| p == port) {
            usage.host_ports.swap_remove(i);
        }
    }
    if let Some(o) = &r.owner
        && let Some(n) = usage.by_owner.get_mut(o)
    {
        *n -= 1;
        if *n <= 0 {
            usage.by_owner.remove(o);
        }
    }
}

/// A node with its allocatable resources parsed once (they are read for every pod on every node).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node.
    pub node: std::sync::Arc<Node>,
    /// Allocatable millicores.
    pub cpu_milli: i64,
    /// Allocatable bytes of memory.
    pub memory: i64,
    /// Allocatable pods (110 when the node does not say).
    pub pods: i64,
}

impl NodeInfo {
    /// Parses a node's allocatable resources.
    pub fn new(node: std::sync::Arc<Node>) -> Self {
        let a = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let q = |k: &str| a.and_then(|a| a.get(k)).and_then(|q| q.0.parse::<Quantity>().ok());
        NodeInfo {
            cpu_milli: q("cpu").map(|q| q.as_milli()).unwrap_or(0),
            memory: q("memory").map(|q| q.as_units()).unwrap_or(0),
            pods: q("pods").map(|q| q.as_units()).unwrap_or(110),
            node,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }
}

/// Why a node cannot take the pod (the phrases of kube-scheduler's messages), or `None` if it can.
pub fn filter(info: &NodeInfo, spec: &Spec, req: &Request, usage: &NodeUsage) -> Option<String> {
    let node = info.node.as_ref();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let tolerated = spec.tolerations.iter().flat_map(|t| t.iter()).any(|t| {
            t.key.as_deref() == Some("node.kubernetes.io/unschedulable")
                || (t.key.as_deref().unwrap_or_default().is_empty() && t.operator.as_deref() == Some("Exists"))
        });
        if !tolerated {
            return Some("node(s) were unschedulable".into());
        }
    }
    if let Some(t) = untolerated_taint(node, spec) {
        return Some(format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.clone().unwrap_or_default()));
    }
    if !node_ready(node) {
        return Some("node(s) were not ready".into());
    }
    if !selector_and_affinity_match(node, spec) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let (cpu, mem, pods) = (info.cpu_milli, info.memory, info.pods);
    if usage.pods + 1 > pods {
        return Some("Too many pods".into());
    }
    if req.cpu_milli > 0 && usage.cpu_milli + req.cpu_milli > cpu {
        return Some("Insufficient cpu".into());
    }
    if req.memory > 0 && usage.memory + req.memory > mem {
        return Some("Insufficient memory".into());
    }
    if req.host_ports.iter().any(|p| usage.host_ports.contains(p)) {
        return Some("node(s) didn't have free ports for the requested pod ports".into());
    }
    None
}

/// How good a feasible node is (higher is better): least allocated, spread across the owner's pods, preferred
/// affinity.
pub fn score(info: &NodeInfo, spec: &Spec, req: &Request, usage: &NodeUsage, max_owner_count: i64) -> i64 {
    let (node, cpu, mem) = (info.node.as_ref(), info.cpu_milli, info.memory);
    let free = |cap: i64, used: i64| if cap <= 0 { 0 } else { ((cap - used).max(0) * 100) / cap };
    let least_allocated = (free(cpu, usage.cpu_milli + req.cpu_milli) + free(mem, usage.memory + req.memory)) / 2;
    let spread = match &req.owner {
        Some(o) if max_owner_count > 0 => {
            100 - (usage.by_owner.get(o).copied().unwrap_or(0) * 100) / (max_owner_count + 1)
        }
        _ => 100,
    };
    least_allocated + 2 * spread + preferred_affinity_score(node, spec)
}

/// The FailedScheduling message for `reasons` (one per node).
pub fn unschedulable_message(total: usize, reasons: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    if total == 0 {
        return "0/0 nodes are available: no nodes available to schedule pods.".into();
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_is_the_larger_of_the_containers_sum_and_the_largest_init_container() {
        let pod = |spec: serde_json::Value| -> CachedPod {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("pod")
        };
        let c = |cpu: &str, mem: &str| json!({"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}});
        let table = [
            (json!({"containers": [c("100m", "64Mi"), c("250m", "1Gi")]}), 350, 64 * 1024 * 1024 + 1024 * 1024 * 1024),
            (
                json!({"containers": [c("100m", "64Mi")], "initContainers": [c("2", "1Mi"), c("500m", "8Mi")]}),
                2000,
                64 * 1024 * 1024,
            ),
            (json!({"containers": [{"name": "c"}]}), 0, 0),
            (json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1.5"}}}]}), 1500, 0),
        ];
        for (spec, cpu, mem) in table {
            let r = request_of(&pod(spec.clone()));
            assert_eq!((r.cpu_milli, r.memory), (cpu, mem), "{spec}");
        }
        assert_eq!(request_of(&serde_json::from_value(json!({"metadata": {"name": "p"}})).expect("pod")).cpu_milli, 0);
    }

    fn node(name: &str, cpu: &str, extra: serde_json::Value) -> NodeInfo {
        let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}});
        if let Some(spec) = extra.get("spec") {
            v["spec"] = spec.clone();
        }
        NodeInfo::new(std::sync::Arc::new(serde_json::from_value(v).expect("node")))
    }

    fn pod(cpu: &str) -> CachedPod {
        serde_json::from_value(json!({"metadata": {"name": "p", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "o1", "controller": true}]},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "100Mi"}}}]}}))
        .expect("pod")
    }

    #[test]
    fn filters_explain_why_a_node_is_rejected() {
        let p = pod("500m");
        let spec = p.spec.clone().expect("spec");
        let r = request_of(&p);
        assert_eq!(r.cpu_milli, 500);
        assert_eq!(filter(&node("n1", "1", json!({})), &spec, &r, &NodeUsage::default()), None);
        let busy = NodeUsage { cpu_milli: 800, ..Default::default() };
        assert_eq!(filter(&node("n1", "1", json!({})), &spec, &r, &busy).as_deref(), Some("Insufficient cpu"));
        let tainted = node(
            "n2",
            "4",
            json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}),
        );
        assert_eq!(
            filter(&tainted, &spec, &r, &NodeUsage::default()).as_deref(),
            Some("node(s) had untolerated taint {node.kubernetes.io/unreachable: }")
        );
        let cordoned = node("n3", "4", json!({"spec": {"unschedulable": true}}));
        assert_eq!(filter(&cordoned, &spec, &r, &NodeUsage::default()).as_deref(), Some("node(s) were unschedulable"));
        let msg = unschedulable_message(
            3,
            &["Insufficient cpu".into(), "node(s) were unschedulable".into(), "Insufficient cpu".into()],
        );
        assert_eq!(msg, "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable.");
    }

    #[test]
    fn scores_prefer_emptier_nodes_and_spread_an_owners_pods() {
        let p = pod("100m");
        let spec = p.spec.clone().expect("spec");
        let r = request_of(&p);
        let n = node("n", "4", json!({}));
        let empty = NodeUsage::default();
        let mut with_sibling = NodeUsage::default();
        add(&mut with_sibling, &r);
        assert!(score(&n, &spec, &r, &empty, 1) > score(&n, &spec, &r, &with_sibling, 1));
    }
}

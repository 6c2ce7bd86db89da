//! A small cluster inside network namespaces for the privileged tests: a "lan" bridge, nodes with a pod bridge
//! each and routes to each other's pod ranges, an external client host, and pods. No namespace has a link to the
//! outside or a default route; everything is removed on drop.
#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;
use skiff_lb::{Engine, LbConfig, desired::NodeIdentity, metrics::LbMetrics, model::ServiceName};
use skiff_testkit::{Cgroup, NetNs, PinDir, bridge, probe, veth};

/// Address of node `i` (0-based) on the lan.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 11 + i as u8)
}

/// The external client host's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);

/// A node.
pub struct Node {
    /// Its namespace.
    pub ns: NetNs,
    /// Its name.
    pub name: String,
}

/// A pod.
pub struct Pod {
    /// Its namespace.
    pub ns: NetNs,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The node it runs on.
    pub node: usize,
}

/// The test cluster. Field order is drop order: pods and the client go before the nodes and the lan.
pub struct Cluster {
    /// Pods.
    pub pods: Vec<Pod>,
    /// The external client host.
    pub client: NetNs,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// The lan.
    pub lan: NetNs,
    /// node 0's pod cgroup (where client pods' processes run).
    pub cgroup: Cgroup,
    /// The balancer's pin directory.
    pub pins: PinDir,
}

impl Cluster {
    /// A cluster of `n` nodes.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let lan = NetNs::new("sk-lan")?;
        bridge(&lan, "br0", &[])?;
        let mut nodes = Vec::new();
        for i in 0..n {
            let ns = NetNs::new("sk-node")?;
            let lan_if = format!("n{i}");
            veth(&ns, "eth0", &lan, &lan_if)?;
            lan.ip(&["link", "set", &lan_if, "master", "br0"])?;
            ns.ip(&["addr", "add", &format!("{}/24", node_ip(i)), "dev", "eth0"])?;
            bridge(&ns, "cbr0", &[])?;
            ns.ip(&["addr", "add", &format!("10.244.{i}.1/24"), "dev", "cbr0"])?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            nodes.push(Node { ns, name: format!("node-{i}") });
        }
        for (i, node) in nodes.iter().enumerate() {
            for j in (0..n).filter(|j| *j != i) {
                node.ns.ip(&["route", "add", &format!("10.244.{j}.0/24"), "via", &node_ip(j).to_string()])?;
            }
        }
        let client = NetNs::new("sk-client")?;
        veth(&client, "eth0", &lan, "c0")?;
        lan.ip(&["link", "set", "c0", "master", "br0"])?;
        client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"])?;
        // LoadBalancer and external IPs are routed to node 0, as an upstream router would.
        client.ip(&["route", "add", "203.0.113.0/24", "via", &node_ip(0).to_string()])?;
        Ok(Self {
            pods: Vec::new(),
            client,
            nodes,
            lan,
            cgroup: Cgroup::new("skiff-lbtest")?,
            pins: PinDir::new("skiff-test")?,
        })
    }

    /// Adds a pod on node `node`; returns its index.
    pub fn add_pod(&mut self, node: usize) -> std::io::Result<usize> {
        let n = self.pods.iter().filter(|p| p.node == node).count() as u8 + 2;
        let ns = NetNs::new("sk-pod")?;
        let host_if = format!("p{n}");
        veth(&self.nodes[node].ns, &host_if, &ns, "eth0")?;
        self.nodes[node].ns.ip(&["link", "set", &host_if, "master", "cbr0"])?;
        let ip = Ipv4Addr::new(10, 244, node as u8, n);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        let gw = format!("10.244.{node}.1");
        for net in ["10.0.0.0/8", "192.168.50.0/24", "203.0.113.0/24"] {
            ns.ip(&["route", "add", net, "via", &gw])?;
        }
        self.pods.push(Pod { ns, ip, node });
        Ok(self.pods.len() - 1)
    }

    /// The balancer configuration of node 0.
    pub fn config(&self) -> LbConfig {
        let mut cfg = LbConfig::new(NodeIdentity { name: self.nodes[0].name.clone(), addresses: vec![node_ip(0)] });
        cfg.pin_dir = self.pins.path().to_path_buf();
        cfg.cgroup = Some(self.cgroup.path().to_path_buf());
        cfg.interfaces = vec!["eth0".into()];
        cfg.maglev_table_size = 251;
        cfg
    }

    /// Starts (or restarts) node 0's balancer; the tc programs attach to node 0's eth0.
    pub fn start_lb(&self, cfg: &LbConfig) -> Engine {
        let metrics = LbMetrics::new(cfg.pin_dir.clone());
        self.nodes[0].ns.enter(|| Engine::start(cfg, metrics)).expect("entering node 0").expect("starting the balancer")
    }

    /// Starts a probe server in pod `pod`.
    pub fn serve(&self, pod: usize, proto: &str, port: u16, id: &str) -> skiff_testkit::Child {
        let p = &self.pods[pod];
        probe::server(&p.ns, &format!("serve-{proto} {}:{port} {id}", p.ip)).expect("starting a probe server")
    }

    /// Runs a client probe in pod `pod`, inside node 0's pod cgroup.
    pub fn run_in_pod(&self, pod: usize, spec: &str) -> Vec<String> {
        probe::client(Some(&self.cgroup), Some(&self.pods[pod].ns), spec).expect("running a client probe")
    }

    /// Runs a client probe on the external client host.
    pub fn run_on_client(&self, spec: &str) -> Vec<String> {
        probe::client(None, Some(&self.client), spec).expect("running a client probe")
    }
}

/// A Service object from JSON fragments.
pub fn service(name: &str, cluster_ip: &str, spec: serde_json::Value) -> Service {
    let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}});
    if let (Some(base), Some(extra)) = (s["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(s).expect("a valid Service")
}

/// An EndpointSlice of Service `svc` with endpoints `(ip, node, ready)` on `port`/`proto` (port name "p").
pub fn slice(svc: &str, eps: &[(Ipv4Addr, &str, bool)], port: u16, proto: &str) -> EndpointSlice {
    let eps: Vec<_> = eps.iter().map(|(ip, node, ready)| (*ip, *node, Conditions::ready(*ready))).collect();
    slice_with(svc, &eps, port, proto)
}

/// An endpoint's `conditions`.
#[derive(Clone, Copy, Debug)]
pub struct Conditions {
    /// `ready`
    pub ready: bool,
    /// `serving`
    pub serving: bool,
    /// `terminating`
    pub terminating: bool,
}

impl Conditions {
    /// Ready (and serving) or not, not terminating.
    pub fn ready(ready: bool) -> Self {
        Conditions { ready, serving: ready, terminating: false }
    }

    /// Terminating and still serving (a pod within its grace period that answers its readiness probe).
    pub const TERMINATING: Conditions = Conditions { ready: false, serving: true, terminating: true };
}

/// [`slice`] with each endpoint's conditions.
pub fn slice_with(svc: &str, eps: &[(Ipv4Addr, &str, Conditions)], port: u16, proto: &str) -> EndpointSlice {
    let eps: Vec<_> = eps
        .iter()
        .map(|(ip, node, c)| {
            json!({"addresses": [ip.to_string()], "nodeName": node,
            "conditions": {"ready": c.ready, "serving": c.serving, "terminating": c.terminating}})
        })
        .collect();
    serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "p", "port": port, "protocol": proto}]}))
    .expect("a valid EndpointSlice")
}

/// Sends a line on a `hold` probe's connection and returns what the probe says of the reply.
pub fn exchange(conn: &mut skiff_testkit::Child, text: &str) -> String {
    conn.send_line(text).expect("writing to the probe");
    conn.read_line_starting(probe::MARK).expect("reading the probe's reply")
}

/// Puts objects into the engine and syncs the affected Services.
pub fn apply(engine: &mut Engine, services: Vec<Service>, slices: Vec<EndpointSlice>) {
    let mut changed = std::collections::BTreeSet::<ServiceName>::new();
    for s in services {
        changed.extend(engine.store_mut().apply_service(s));
    }
    for s in slices {
        changed.extend(engine.store_mut().apply_slice(s));
    }
    let report = engine.sync(changed, None);
    assert!(!report.needs_full_sync, "a map write failed: {report:?}");
}

/// The counters of Service `name` (its single port), summed over CPUs.
pub fn counters(engine: &Engine, name: &str) -> skiff_ebpf_common::Counters {
    let id = engine
        .applier()
        .port_names()
        .into_iter()
        .find(|(_, p)| p.service.name == name)
        .map(|(id, _)| id)
        .expect("the Service has a port id");
    engine.applier().maps().service_counters(id).expect("reading counters")
}

/// The `id=` of each `ok` line.
pub fn ids(lines: &[String]) -> Vec<String> {
    lines.iter().filter_map(|l| probe::field(l, "id")).map(str::to_string).collect()
}

/// Shared metrics handle type.
pub type Metrics = Arc<LbMetrics>;

/// A short pause for state the kernel applies asynchronously (none expected; used only around process restarts).
pub const SETTLE: Duration = Duration::from_millis(50);

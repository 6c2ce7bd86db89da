//! Helpers for `scripts/bench-policy` (built in release):
//!
//! - `gen POLICIES PODS DIR`: a cluster of PODS pods in 50 namespaces and POLICIES NetworkPolicies
//!   (`DIR/objects.json`), plus the two real pods of the benchmark (`bench/server` 10.244.0.2 and `bench/client`
//!   `bench/client-0..3` 10.244.10-13.2, on node `bench-node`) and the policies that isolate the server and let the client in. Also the same
//!   policy set as kube-router would program it on this node: `DIR/filter.rules` (an `iptables-restore` filter table:
//!   FORWARD → KUBE-ROUTER-FORWARD → one KUBE-POD-FW chain per local pod → KUBE-NWPLCY chains matching ipsets) and
//!   `DIR/sets.ipset` (`ipset restore`). With POLICIES = 0 only the real pods exist (no policy at all).
//! - `enforce DIR PIN_DIR IFACE...`: loads the programs (pinned under PIN_DIR), attaches them to each IFACE (host
//!   veths in the calling namespace), and writes the compiled tables; prints the writes and milliseconds.
//! - `latency DIR PIN_DIR CHANGES`: with the tables of DIR written (detached from any interface), changes one
//!   policy of the server CHANGES times (a port flips between 9100 and 9101) and times each change from the new object to the
//!   maps being written (compile + plan + writes); prints p50/p99 of the whole and of the compile alone.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, path::Path, time::Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::{Value, json};
use skiff_lb::{
    LbConfig,
    desired::NodeIdentity,
    loader::Dataplane,
    policy::{self, Enforcer, NodeView},
};

const NODE: &str = "bench-node";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
/// One client pod per benchmark variant (none, skiff-0, skiff-N, iptables-N); those of the last two are
/// `app=client`, which the policies let in; the others are not.
const CLIENTS: usize = 4;

fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 10 + i as u8, 2)
}
const NAMESPACES: usize = 50;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().with_context(|| format!("missing argument {i}: see the module docs"));
    match a(0)?.as_str() {
        "gen" => generate(a(1)?.parse()?, a(2)?.parse()?, Path::new(&a(3)?)),
        "enforce" => enforce(Path::new(&a(1)?), Path::new(&a(2)?), &args[3..]),
        "latency" => latency(Path::new(&a(1)?), Path::new(&a(2)?), a(3)?.parse()?),
        other => bail!("unknown mode {other}"),
    }
}

/// Address of filler pod `j` (on other nodes; never contacted).
fn filler_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 245, (j / 250) as u8, (j % 250 + 1) as u8)
}

fn pod_json(ns: &str, name: &str, ip: Ipv4Addr, node: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels,
        "uid": format!("{ns}-{name}")},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string()}})
}

/// Filler policy `k`: in namespace ns-(k % 50), selects app-(k % 100), lets in tier-(k % 3) pods of team-(k % 10)
/// namespaces on 8080, plus a CIDR with an exception; every fifth also restricts egress.
fn filler_policy(k: usize, port: u16) -> Value {
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": format!("app-{}", k % 100)}},
        "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": format!("team-{}", k % 10)}},
             "podSelector": {"matchLabels": {"tier": format!("tier-{}", k % 3)}}},
            {"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + k % 16), "except": [format!("172.{}.{}.0/24", 16 + k % 16, k % 250)]}}],
            "ports": [{"port": port}, {"port": "http"}]}],
    });
    if k.is_multiple_of(5) {
        spec["policyTypes"] = json!(["Ingress", "Egress"]);
        spec["egress"] =
            json!([{"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}, {"port": port}]}]);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": format!("p-{k}"), "namespace": format!("ns-{}", k % NAMESPACES)}, "spec": spec})
}

/// The server's second policy: team-0 namespaces may scrape it on `port`.
fn monitoring_policy(port: u16) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "server-from-monitoring", "namespace": "bench"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "team-0"}}}], "ports": [{"port": port}]}]}})
}

fn generate(policies: usize, pods: usize, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut namespaces = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})];
    for i in 0..NAMESPACES {
        namespaces.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{i}"), "labels": {"team": format!("team-{}", i % 10)}}}));
    }
    let mut pod_list = vec![pod_json("bench", "server", SERVER, NODE, json!({"app": "server"}))];
    for i in 0..CLIENTS {
        let app = if i >= 2 { "client" } else { "bystander" };
        pod_list.push(pod_json("bench", &format!("client-{i}"), client_ip(i), NODE, json!({"app": app})));
    }
    for j in 0..pods {
        pod_list.push(pod_json(
            &format!("ns-{}", j % NAMESPACES),
            &format!("pod-{j}"),
            filler_ip(j),
            &format!("other-{}", j % 200),
            json!({"app": format!("app-{}", j % 100), "tier": format!("tier-{}", j % 3)}),
        ));
    }
    let mut policy_list = Vec::new();
    if policies > 0 {
        // The server: isolated, the client let in on 80 (and a second policy for other callers, as real apps have).
        policy_list.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "server-from-client", "namespace": "bench"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 80}]}]}}));
        policy_list.push(monitoring_policy(9100));
        for k in 0..policies.saturating_sub(2) {
            policy_list.push(filler_policy(k, 8080));
        }
    }
    let objects = json!({"namespaces": namespaces, "pods": pod_list, "policies": policy_list});
    std::fs::write(dir.join("objects.json"), serde_json::to_vec(&objects)?)?;
    let (rules, sets) = kube_router(&objects)?;
    std::fs::write(dir.join("filter.rules"), rules)?;
    std::fs::write(dir.join("sets.ipset"), sets)?;
    Ok(())
}

struct Objects {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
}

fn read(dir: &Path) -> anyhow::Result<Objects> {
    Objects::from_value(&serde_json::from_slice(&std::fs::read(dir.join("objects.json"))?)?)
}

impl Objects {
    fn from_value(v: &Value) -> anyhow::Result<Self> {
        fn list<T: serde::de::DeserializeOwned>(v: &Value, key: &str) -> anyhow::Result<Vec<T>> {
            Ok(v[key]
                .as_array()
                .into_iter()
                .flatten()
                .cloned()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()?)
        }
        Ok(Objects { namespaces: list(v, "namespaces")?, pods: list(v, "pods")?, policies: list(v, "policies")? })
    }
}

fn node() -> NodeView {
    let mut host_addresses = vec![Ipv4Addr::new(10, 244, 0, 1)];
    host_addresses.extend((0..CLIENTS).map(|i| Ipv4Addr::new(10, 244, 10 + i as u8, 1)));
    NodeView { name: NODE.into(), host_addresses }
}

fn load(pin_dir: &Path) -> anyhow::Result<()> {
    let mut cfg = LbConfig::new(NodeIdentity { name: NODE.into(), addresses: vec![Ipv4Addr::new(10, 244, 0, 1)] });
    cfg.pin_dir = pin_dir.to_path_buf();
    cfg.cgroup = None;
    cfg.interfaces = Vec::new();
    drop(Dataplane::open(&cfg)?);
    Ok(())
}

fn enforce(dir: &Path, pin_dir: &Path, ifaces: &[String]) -> anyhow::Result<()> {
    let o = read(dir)?;
    load(pin_dir)?;
    let mut veths = BTreeMap::new();
    for spec in ifaces {
        let (iface, ip) = spec.split_once('=').context("IFACE=IP")?;
        policy::attach::attach(pin_dir, iface)?;
        veths.insert(ip.parse::<Ipv4Addr>()?, nix::net::if_::if_nametoindex(iface)?);
    }
    let started = Instant::now();
    let compiled = policy::compile(&o.policies, &o.pods, &o.namespaces, &node());
    let mut enforcer = Enforcer::open(pin_dir)?;
    let writes = enforcer.sync(&compiled.tables, &veths)?;
    println!(
        "writes={writes} rules={} ipcache={} ms={:.1}",
        compiled.tables.rules.len(),
        compiled.tables.ipcache.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn latency(dir: &Path, pin_dir: &Path, changes: usize) -> anyhow::Result<()> {
    let mut o = read(dir)?;
    load(pin_dir)?;
    // The server and client have (fake) veths: the point is the compile and the writes.
    let mut veths: BTreeMap<Ipv4Addr, u32> = BTreeMap::from([(SERVER, 1_000_000)]);
    veths.extend((0..CLIENTS).map(|i| (client_ip(i), 1_000_001 + i as u32)));
    let mut enforcer = Enforcer::open(pin_dir)?;
    let first = policy::compile(&o.policies, &o.pods, &o.namespaces, &node());
    enforcer.sync(&first.tables, &veths)?;
    // A policy that selects a pod of this node (one that selects none changes nothing here).
    let target = o
        .policies
        .iter()
        .position(|p| p.metadata.name.as_deref() == Some("server-from-monitoring"))
        .context("policy server-from-monitoring")?;
    let (mut total, mut compile) = (Vec::new(), Vec::new());
    let mut writes = 0;
    for i in 0..changes {
        let port = if i % 2 == 0 { 9101 } else { 9100 };
        o.policies[target] = serde_json::from_value(monitoring_policy(port))?;
        let t0 = Instant::now();
        let compiled = policy::compile(&o.policies, &o.pods, &o.namespaces, &node());
        let t1 = Instant::now();
        writes += enforcer.sync(&compiled.tables, &veths)?;
        total.push((Instant::now() - t0).as_secs_f64() * 1e3);
        compile.push((t1 - t0).as_secs_f64() * 1e3);
    }
    total.sort_by(f64::total_cmp);
    compile.sort_by(f64::total_cmp);
    println!(
        "changes={changes} writes_per_change={:.1} p50_ms={:.2} p99_ms={:.2} compile_p50_ms={:.2} compile_p99_ms={:.2} rules={} policies={} pods={}",
        writes as f64 / changes as f64,
        percentile(&total, 0.5),
        percentile(&total, 0.99),
        percentile(&compile, 0.5),
        percentile(&compile, 0.99),
        first.tables.rules.len(),
        o.policies.len(),
        o.pods.len()
    );
    Ok(())
}

/// The policy set as kube-router programs it on `bench-node`: an ipset per selector (pod addresses) and per ipBlock,
/// a chain per policy, a firewall chain per local pod, FORWARD jumping through them, conntrack first.
fn kube_router(objects: &Value) -> anyhow::Result<(String, String)> {
    let o = Objects::from_value(objects)?;
    let labels_of_ns: BTreeMap<String, BTreeMap<String, String>> = o
        .namespaces
        .iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
        .collect();
    let matches = |sel: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
                   labels: &BTreeMap<String, String>| {
        sel.as_ref().is_none_or(|s| s.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v)))
    };
    let pod_ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    let mut rules = String::from("*filter\n:KUBE-ROUTER-FORWARD - [0:0]\n");
    let mut chains = String::new();
    let mut sets = String::new();
    let hash = |s: &str| {
        format!(
            "{:016X}",
            s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
        )
    };
    let mut local_fw: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &o.policies {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let key = format!("{ns}/{}", p.metadata.name.clone().unwrap_or_default());
        let chain = format!("KUBE-NWPLCY-{}", &hash(&key)[..12]);
        writeln!(rules, ":{chain} - [0:0]")?;
        let spec = p.spec.clone().unwrap_or_default();
        let selected: Vec<&Pod> = o
            .pods
            .iter()
            .filter(|q| q.metadata.namespace.as_deref() == Some(&ns))
            .filter(|q| matches(&spec.pod_selector, q.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
            .collect();
        let dst_set = format!("KUBE-DST-{}", &hash(&format!("{key}/dst"))[..12]);
        writeln!(sets, "create {dst_set} hash:ip family inet hashsize 1024 maxelem 65536")?;
        for q in &selected {
            writeln!(sets, "add {dst_set} {}", pod_ip(q))?;
            if q.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE) {
                local_fw.entry(pod_ip(q)).or_default().push(chain.clone());
            }
        }
        for (r, rule) in spec.ingress.iter().flatten().enumerate() {
            let src_set = format!("KUBE-SRC-{}", &hash(&format!("{key}/{r}"))[..12]);
            writeln!(sets, "create {src_set} hash:ip family inet hashsize 1024 maxelem 65536")?;
            let mut blocks = Vec::new();
            for peer in rule.from.iter().flatten() {
                if let Some(b) = &peer.ip_block {
                    blocks.push(b.clone());
                    continue;
                }
                for q in &o.pods {
                    let q_ns = q.metadata.namespace.clone().unwrap_or_default();
                    let ns_ok = match &peer.namespace_selector {
                        Some(_) => {
                            matches(&peer.namespace_selector, labels_of_ns.get(&q_ns).unwrap_or(&BTreeMap::new()))
                        }
                        None => q_ns == ns,
                    };
                    if ns_ok && matches(&peer.pod_selector, q.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())) {
                        writeln!(sets, "add {src_set} {}", pod_ip(q))?;
                    }
                }
            }
            let ports: Vec<u16> = rule
                .ports
                .iter()
                .flatten()
                .filter_map(|p| match &p.port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => u16::try_from(*n).ok(),
                    Some(_) => Some(80),
                    None => None,
                })
                .collect();
            for port in &ports {
                writeln!(
                    chains,
                    "-A {chain} -p tcp -m set --match-set {src_set} src -m set --match-set {dst_set} dst -m tcp --dport {port} -j MARK --set-xmark 0x10000/0x10000"
                )?;
                writeln!(chains, "-A {chain} -m mark --mark 0x10000/0x10000 -j RETURN")?;
            }
            for (b, block) in blocks.iter().enumerate() {
                let cidr_set = format!("KUBE-SRC-{}", &hash(&format!("{key}/{r}/cidr{b}"))[..12]);
                writeln!(sets, "create {cidr_set} hash:net family inet hashsize 1024 maxelem 65536")?;
                writeln!(sets, "add {cidr_set} {}", block.cidr)?;
                for e in block.except.iter().flatten() {
                    writeln!(sets, "add {cidr_set} {e} nomatch")?;
                }
                for port in &ports {
                    writeln!(
                        chains,
                        "-A {chain} -p tcp -m set --match-set {cidr_set} src -m set --match-set {dst_set} dst -m tcp --dport {port} -j MARK --set-xmark 0x10000/0x10000"
                    )?;
                }
            }
        }
    }
    // One firewall chain per local pod (both the server and the client are local), FORWARD through them.
    let mut forward = String::from("-A FORWARD -m comment --comment \"kube-router netpol\" -j KUBE-ROUTER-FORWARD\n");
    let local: Vec<String> = o
        .pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE))
        .map(pod_ip)
        .collect();
    for ip in local {
        let fw = format!("KUBE-POD-FW-{}", &hash(&ip)[..12]);
        writeln!(rules, ":{fw} - [0:0]")?;
        writeln!(forward, "-A KUBE-ROUTER-FORWARD -d {ip} -j {fw}")?;
        writeln!(forward, "-A KUBE-ROUTER-FORWARD -s {ip} -j {fw}")?;
        writeln!(chains, "-A {fw} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")?;
        writeln!(chains, "-A {fw} -m conntrack --ctstate INVALID -j DROP")?;
        writeln!(chains, "-A {fw} -s 10.244.0.1 -j ACCEPT")?;
        for chain in local_fw.get(&ip).into_iter().flatten() {
            writeln!(chains, "-A {fw} -d {ip} -j {chain}")?;
        }
        if local_fw.contains_key(&ip) {
            writeln!(
                chains,
                "-A {fw} -d {ip} -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable"
            )?;
        }
        writeln!(chains, "-A {fw} -j MARK --set-xmark 0x20000/0x20000")?;
    }
    rules.push_str(&forward);
    rules.push_str(&chains);
    rules.push_str("COMMIT\n");
    Ok((rules, sets))
}

//! NetworkPolicy truth table, in the spirit of the upstream NetworkPolicy e2e suite: three namespaces (x, y, z) of
//! three pods (a, b, c) on one node's bridge, each serving TCP and UDP on ports 80 and 81. For every case the full
//! 9×9×{80,81}×{tcp,udp} matrix is probed with real sockets through the real programs on the pods' veths, with the
//! maps written by the real compiler, planner and executor, and compared with the expected matrix; a mismatch prints
//! both matrices. Runs as root; fails instead of skipping when CI=true.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

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
use skiff_testkit::{NetNs, PinDir, bridge, require_privileges, veth};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, UdpSocket},
    task::JoinSet,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const NAMES: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// How long a probe waits before it counts as denied; mismatches are probed once more with [`RETRY_TIMEOUT`].
const TIMEOUT: Duration = Duration::from_millis(600);
const RETRY_TIMEOUT: Duration = Duration::from_secs(2);

/// One pod of the table.
struct PodNs {
    ns: NetNs,
    namespace: &'static str,
    name: &'static str,
    ip: Ipv4Addr,
    host_if: String,
}

impl PodNs {
    fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The node with its nine pods. Field order is drop order: servers and pods go before the node, then the pins.
struct Table {
    _servers: JoinSet<()>,
    pods: Vec<PodNs>,
    node: NetNs,
    pins: PinDir,
    enforcer: Enforcer,
    veths: BTreeMap<Ipv4Addr, u32>,
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Probe {
    src: usize,
    dst: usize,
    port: u16,
    udp: bool,
}

type Matrix = BTreeMap<Probe, bool>;

fn probes() -> Vec<Probe> {
    let mut out = Vec::new();
    for src in 0..9 {
        for dst in 0..9 {
            for port in PORTS {
                for udp in [false, true] {
                    out.push(Probe { src, dst, port, udp });
                }
            }
        }
    }
    out
}

impl Table {
    async fn new() -> Self {
        let node = NetNs::new("sk-polnode").expect("node namespace");
        bridge(&node, "cbr0", &[]).expect("bridge");
        node.ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "cbr0"]).expect("gateway address");
        let pins = PinDir::new("skiff-poltest").expect("pin dir");
        load(&pins);
        let mut pods = Vec::new();
        for (i, namespace) in NAMESPACES.iter().enumerate() {
            for (j, name) in NAMES.iter().enumerate() {
                let n = 2 + 3 * i + j;
                let ns = NetNs::new("sk-polpod").expect("pod namespace");
                // Link-local IPv6 usable at once (no duplicate address detection), as an attacker would use it.
                ns.sysctl("net.ipv6.conf.default.accept_dad", "0").expect("sysctl");
                let host_if = format!("p{n}");
                veth(&node, &host_if, &ns, "eth0").expect("veth");
                node.ip(&["link", "set", &host_if, "master", "cbr0"]).expect("bridge port");
                let ip = Ipv4Addr::new(10, 244, 0, n as u8);
                ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]).expect("pod address");
                pods.push(PodNs { ns, namespace, name, ip, host_if });
            }
        }
        let pin_dir = pins.path().to_path_buf();
        let veths: BTreeMap<Ipv4Addr, u32> = node
            .enter(|| {
                pods.iter()
                    .map(|p| {
                        policy::attach::attach(&pin_dir, &p.host_if).expect("attaching the policy programs");
                        let index = nix::net::if_::if_nametoindex(p.host_if.as_str()).expect("ifindex");
                        (p.ip, index)
                    })
                    .collect()
            })
            .expect("entering the node");
        let enforcer = Enforcer::open(pins.path()).expect("opening the policy maps");
        let mut servers = JoinSet::new();
        for p in &pods {
            serve(&p.ns, p.ip, &p.label(), &mut servers);
        }
        let pod_labels =
            pods.iter().map(|p| (p.label(), BTreeMap::from([("pod".to_string(), p.name.to_string())]))).collect();
        let ns_labels =
            NAMESPACES.iter().map(|n| (n.to_string(), BTreeMap::from([("ns".to_string(), n.to_string())]))).collect();
        Table { _servers: servers, pods, node, pins, enforcer, veths, pod_labels, ns_labels }
    }

    fn objects(&self) -> (Vec<Pod>, Vec<Namespace>) {
        let pods = self
            .pods
            .iter()
            .map(|p| {
                let ports: Vec<Value> = PORTS
                    .iter()
                    .flat_map(|port| {
                        [("tcp", "TCP"), ("udp", "UDP")].map(|(short, proto)| {
                            json!({"name": format!("serve-{port}-{short}"), "containerPort": port, "protocol": proto})
                        })
                    })
                    .collect();
                serde_json::from_value(json!({
                    "metadata": {"name": p.name, "namespace": p.namespace, "labels": self.pod_labels[&p.label()]},
                    "spec": {"nodeName": "n0", "containers": [{"name": "c", "image": "i", "ports": ports}]},
                    "status": {"phase": "Running", "podIP": p.ip.to_string()},
                }))
                .expect("a pod")
            })
            .collect();
        let namespaces = self
            .ns_labels
            .iter()
            .map(|(n, l)| serde_json::from_value(json!({"metadata": {"name": n, "labels": l}})).expect("a namespace"))
            .collect();
        (pods, namespaces)
    }

    /// Compiles and writes `policies`; returns the number of map writes.
    fn enforce(&mut self, policies: &[Value]) -> usize {
        let policies: Vec<NetworkPolicy> =
            policies.iter().map(|p| serde_json::from_value(p.clone()).expect("a policy")).collect();
        let (pods, namespaces) = self.objects();
        let node = NodeView { name: "n0".into(), host_addresses: vec![GATEWAY] };
        let compiled = policy::compile(&policies, &pods, &namespaces, &node);
        assert!(compiled.skipped.is_empty(), "the compiler skipped parts: {:?}", compiled.skipped);
        self.enforcer.sync(&compiled.tables, &self.veths).expect("writing the policy maps")
    }

    async fn probe(&self, which: &[Probe], timeout: Duration) -> Matrix {
        // Client sockets are created inside the source pod's namespace, then driven from here.
        let mut set = JoinSet::new();
        for p in which {
            let src = &self.pods[p.src];
            let dst = SocketAddr::V4(SocketAddrV4::new(self.pods[p.dst].ip, p.port));
            let p = *p;
            if p.udp {
                let sock = src
                    .ns
                    .enter(|| {
                        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
                        s.set_nonblocking(true).expect("nonblocking");
                        s
                    })
                    .expect("entering a pod");
                set.spawn(async move {
                    let sock = UdpSocket::from_std(sock).expect("tokio udp");
                    let ok = tokio::time::timeout(timeout, async {
                        sock.send_to(b"who", dst).await.ok()?;
                        let mut buf = [0u8; 64];
                        let (_, from) = sock.recv_from(&mut buf).await.ok()?;
                        (from == dst).then_some(())
                    })
                    .await;
                    (p, matches!(ok, Ok(Some(()))))
                });
            } else {
                let sock = src.ns.enter(|| TcpSocket::new_v4().expect("tcp socket")).expect("entering a pod");
                set.spawn(async move {
                    let ok = tokio::time::timeout(timeout, async {
                        let mut s = sock.connect(dst).await.ok()?;
                        let mut buf = [0u8; 3];
                        s.read_exact(&mut buf).await.ok()?;
                        (&buf == b"ok\n").then_some(())
                    })
                    .await;
                    (p, matches!(ok, Ok(Some(()))))
                });
            }
        }
        let mut out = Matrix::new();
        while let Some(r) = set.join_next().await {
            let (p, ok) = r.expect("a probe task");
            out.insert(p, ok);
        }
        out
    }

    /// Probes everything and compares with `expect`; mismatches are probed again (slowly) before they count.
    async fn check(&self, case: &str, expect: impl Fn(&PodNs, &PodNs, u16, bool) -> bool) {
        let all = probes();
        let want: Matrix = all
            .iter()
            .map(|p| {
                let same = p.src == p.dst;
                // A pod reaches itself over loopback, which no veth sees (and Kubernetes does not restrict).
                (*p, same || expect(&self.pods[p.src], &self.pods[p.dst], p.port, p.udp))
            })
            .collect();
        let mut got = self.probe(&all, TIMEOUT).await;
        let retry: Vec<Probe> = all.iter().filter(|p| got[p] != want[p]).copied().collect();
        if !retry.is_empty() {
            got.extend(self.probe(&retry, RETRY_TIMEOUT).await);
        }
        if got != want {
            panic!("case {case:?}: reachability differs\n{}", self.diff(&want, &got));
        }
    }

    fn diff(&self, want: &Matrix, got: &Matrix) -> String {
        let cell = |m: &Matrix, s: usize, d: usize| -> String {
            PORTS
                .iter()
                .flat_map(|port| [false, true].map(|udp| (port, udp)))
                .map(|(port, udp)| if m[&Probe { src: s, dst: d, port: *port, udp }] { '.' } else { 'X' })
                .collect()
        };
        let mut out = String::from("cells: 80/tcp 80/udp 81/tcp 81/udp ('.' reached, 'X' not); rows are sources\n");
        out.push_str(&format!("{:>6}", ""));
        for p in &self.pods {
            out.push_str(&format!(" {:>6}", p.label()));
        }
        out.push_str(&format!("    |{:>6}", ""));
        for p in &self.pods {
            out.push_str(&format!(" {:>6}", p.label()));
        }
        out.push_str("   (expected | got, '!' marks a difference)\n");
        for s in 0..9 {
            out.push_str(&format!("{:>6}", self.pods[s].label()));
            for d in 0..9 {
                out.push_str(&format!("   {}", cell(want, s, d)));
            }
            out.push_str("    |      ");
            for d in 0..9 {
                let (w, g) = (cell(want, s, d), cell(got, s, d));
                out.push_str(&format!("  {}{}", if w == g { ' ' } else { '!' }, g));
            }
            out.push('\n');
        }
        out
    }
}

/// TCP and UDP servers on ports 80 and 81 of a pod; each answer says "ok".
fn serve(ns: &NetNs, ip: Ipv4Addr, _label: &str, set: &mut JoinSet<()>) {
    for port in PORTS {
        let addr = SocketAddrV4::new(ip, port);
        let (tcp, udp) = ns
            .enter(|| {
                let t = std::net::TcpListener::bind(addr).expect("tcp listener");
                t.set_nonblocking(true).expect("nonblocking");
                let u = std::net::UdpSocket::bind(addr).expect("udp socket");
                u.set_nonblocking(true).expect("nonblocking");
                (t, u)
            })
            .expect("entering a pod");
        set.spawn(async move {
            let tcp = TcpListener::from_std(tcp).expect("tokio listener");
            while let Ok((mut s, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(b"ok\n").await;
                    let _ = s.shutdown().await;
                });
            }
        });
        set.spawn(async move {
            let udp = UdpSocket::from_std(udp).expect("tokio udp");
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(b"ok", from).await;
            }
        });
    }
}

/// Loads the programs and pins them with the maps (what the agent's balancer does at every start).
fn load(pins: &PinDir) {
    let mut cfg = LbConfig::new(NodeIdentity { name: "n0".into(), addresses: vec![GATEWAY] });
    cfg.pin_dir = pins.path().to_path_buf();
    cfg.cgroup = None;
    cfg.interfaces = Vec::new();
    cfg.maglev_table_size = 251;
    drop(Dataplane::open(&cfg).expect("loading the programs"));
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn deny_all_ingress(ns: &str) -> Value {
    np(ns, "deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_truth_table() {
    if !require_privileges("the NetworkPolicy truth table") {
        return;
    }
    let mut t = Table::new().await;
    let all = |_: &PodNs, _: &PodNs, _: u16, _: bool| true;
    let tcp80 = |port: u16, udp: bool| port == 80 && !udp;

    // 1. No policy: everything reaches everything.
    t.enforce(&[]);
    t.check("no policies", all).await;

    // Paths around IPv4 unicast reach an unrestricted pod (so the checks below can pass) ...
    assert!(t.side_paths_reach(0, 3).await.iter().all(|(_, ok)| *ok), "{:?}", t.side_paths_reach(0, 3).await);

    // 2. Deny all ingress in x: nothing gets into x; x still reaches out (replies pass).
    t.enforce(&[deny_all_ingress("x")]);
    t.check("deny all ingress in x", |_, d, _, _| d.namespace != "x").await;
    // ... and none reaches an isolated one: not IPv6 link-local, not IPv4 broadcast.
    let side = t.side_paths_reach(0, 3).await;
    assert!(side.iter().all(|(_, ok)| !*ok), "an isolated pod was reached around the policy: {side:?}");

    // 3. Deny all egress in x.
    t.enforce(&[np("x", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]}))]);
    t.check("deny all egress in x", |s, _, _, _| s.namespace != "x").await;

    // 4. Both.
    t.enforce(&[np("x", "deny-both", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))]);
    t.check("deny all both ways in x", |s, d, _, _| s.namespace != "x" && d.namespace != "x").await;

    // 5. Allow all ingress (an empty rule) next to a deny-all: the union allows everything.
    t.enforce(&[deny_all_ingress("x"), np("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}))]);
    t.check("allow all ingress in x", all).await;

    // 6. Into x only from namespace y (namespaceSelector by label).
    let from_y = np(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    t.enforce(std::slice::from_ref(&from_y));
    t.check("into x from namespace y", |s, d, _, _| d.namespace != "x" || s.namespace == "y").await;

    // 7. Into x/a only from pods b of x (podSelector, the policy's namespace).
    t.enforce(&[np(
        "x",
        "a-from-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    t.check("into x/a from x/b", |s, d, _, _| d.label() != "x/a" || s.label() == "x/b").await;

    // 8. Both selectors in one peer: pods b of namespace y.
    t.enforce(&[np(
        "x",
        "and",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    t.check("into x/a from y/b (one peer)", |s, d, _, _| d.label() != "x/a" || s.label() == "y/b").await;

    // 9. The same selectors as two peers: namespace y, or pods b of x.
    t.enforce(&[np(
        "x",
        "or",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    t.check("into x/a from y or x/b (two peers)", |s, d, _, _| {
        d.label() != "x/a" || s.namespace == "y" || s.label() == "x/b"
    })
    .await;

    // 10. Into x on TCP 80 only.
    t.enforce(&[np("x", "tcp80", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))]);
    t.check("into x on 80/tcp", |_, d, port, udp| d.namespace != "x" || tcp80(port, udp)).await;

    // 11. Into x on UDP 81 only.
    t.enforce(&[np(
        "x",
        "udp81",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}),
    )]);
    t.check("into x on 81/udp", |_, d, port, udp| d.namespace != "x" || (port == 81 && udp)).await;

    // 12. Named port: "serve-81-tcp" resolves to each destination pod's 81/TCP.
    t.enforce(&[np("x", "named", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}))]);
    t.check("into x on named port serve-81-tcp", |_, d, port, udp| d.namespace != "x" || (port == 81 && !udp)).await;

    // 13. endPort: TCP 80-81.
    t.enforce(&[np("x", "range", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 81}]}]}))]);
    t.check("into x on 80-81/tcp", |_, d, _, udp| d.namespace != "x" || !udp).await;

    // 14. ipBlock with except: into x from the pod range, except y/a's address.
    let ya = t.pods[3].ip;
    t.enforce(&[np(
        "x",
        "cidr",
        json!({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.244.0.0/24", "except": [format!("{ya}/32")]}}]}]}),
    )]);
    t.check("into x from 10.244.0.0/24 except y/a", |s, d, _, _| d.namespace != "x" || s.label() != "y/a").await;

    // 15. Egress from x to an ipBlock with an except: out of x only to 10.244.0.0/28 less 10.244.0.8/29.
    t.enforce(&[np(
        "x",
        "out-cidr",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
        {"ipBlock": {"cidr": "10.244.0.0/28", "except": ["10.244.0.8/29"]}}]}]}),
    )]);
    t.check("out of x to 10.244.0.0/28 except .8/29", |s, d, _, _| {
        let last = d.ip.octets()[3];
        s.namespace != "x" || (last < 8)
    })
    .await;

    // 16. Egress from x only to namespace z.
    t.enforce(&[np(
        "x",
        "to-z",
        json!({"podSelector": {}, "egress": [{"to": [
        {"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
    )]);
    t.check("out of x only to z (ingress of x isolated too)", |s, d, _, _| {
        (s.namespace != "x" || d.namespace == "z") && d.namespace != "x"
    })
    .await;

    // 17. Egress to DNS only: port 53 anywhere. No pod serves 53, so x reaches nothing; the node's DNS stays
    // reachable (checked below with a server on the node).
    t.enforce(&[np(
        "x",
        "dns-only",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [
        {"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}),
    )]);
    t.check("out of x to DNS only", |s, _, _, _| s.namespace != "x").await;
    assert!(t.node_reachable_from(0, 53).await, "a pod under an egress policy still reaches its node");

    // 18. A policy updated in place: from-y becomes from-z.
    t.enforce(std::slice::from_ref(&from_y));
    t.check("into x from y (before the update)", |s, d, _, _| d.namespace != "x" || s.namespace == "y").await;
    let mut from_z = from_y.clone();
    from_z["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["ns"] = json!("z");
    t.enforce(&[from_z]);
    t.check("into x from z (updated in place)", |s, d, _, _| d.namespace != "x" || s.namespace == "z").await;

    // 19. A pod's label changes: y/b gets pod=a, and becomes a source into x/a.
    t.enforce(&[np(
        "x",
        "a-from-pod-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    )]);
    t.check("into x/a from pods a", |s, d, _, _| d.label() != "x/a" || s.name == "a").await;
    t.pod_labels.insert("y/b".into(), BTreeMap::from([("pod".to_string(), "a".to_string())]));
    let writes = t.enforce(&[np(
        "x",
        "a-from-pod-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    )]);
    assert!(writes > 0 && writes < 10, "a label change is a few writes, not a rewrite ({writes})");
    t.check("into x/a from pods a, y/b relabelled", |s, d, _, _| {
        d.label() != "x/a" || s.name == "a" || s.label() == "y/b"
    })
    .await;
    t.pod_labels.insert("y/b".into(), BTreeMap::from([("pod".to_string(), "b".to_string())]));

    // 20. A namespace's label changes: z joins ns=y and is let in by from-y.
    t.enforce(std::slice::from_ref(&from_y));
    t.ns_labels.insert("z".into(), BTreeMap::from([("ns".to_string(), "y".to_string())]));
    t.enforce(std::slice::from_ref(&from_y));
    t.check("into x from ns=y, z relabelled", |s, d, _, _| d.namespace != "x" || s.namespace != "x").await;
    t.ns_labels.insert("z".into(), BTreeMap::from([("ns".to_string(), "z".to_string())]));

    // 21. Two policies unite: 80/tcp from y, 81/udp from z.
    t.enforce(&[
        np(
            "x",
            "p1",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
            "ports": [{"port": 80}]}]}),
        ),
        np(
            "x",
            "p2",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
            "ports": [{"port": 81, "protocol": "UDP"}]}]}),
        ),
    ]);
    t.check("into x: 80/tcp from y, 81/udp from z", |s, d, port, udp| {
        d.namespace != "x" || (s.namespace == "y" && tcp80(port, udp)) || (s.namespace == "z" && port == 81 && udp)
    })
    .await;

    // 22. policyTypes Egress only: the ingress section is ignored, egress to y only.
    t.enforce(&[np(
        "x",
        "egress-only",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "nobody"}}}]}],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    )]);
    t.check("policyTypes Egress ignores ingress rules", |s, d, _, _| s.namespace != "x" || d.namespace == "y").await;

    // 23. matchExpressions: isolate pods of x that are not c; allow from pods in (a, b) of any namespace.
    t.enforce(&[np(
        "x",
        "expr",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["c"]}]},
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
            {"key": "pod", "operator": "In", "values": ["a", "b"]}]}}]}]}),
    )]);
    t.check("matchExpressions", |s, d, _, _| d.namespace != "x" || d.name == "c" || s.name != "c").await;

    // 24. From every namespace (an empty namespaceSelector) on 81 only.
    t.enforce(&[np(
        "x",
        "all-ns-81",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}],
        "ports": [{"port": 81}, {"port": 81, "protocol": "UDP"}]}]}),
    )]);
    t.check("into x from all namespaces on 81", |_, d, port, _| d.namespace != "x" || port == 81).await;

    // 25. Egress by named port to pods: out of x only to "serve-80-udp" of y's pods.
    t.enforce(&[np("x", "out-named", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]}))]);
    t.check("out of x to y's named port serve-80-udp", |s, d, port, udp| {
        s.namespace != "x" || (d.namespace == "y" && port == 80 && udp)
    })
    .await;

    // 26. Deny all ingress for one pod only.
    t.enforce(&[np("y", "deny-b", json!({"podSelector": {"matchLabels": {"pod": "b"}}}))]);
    t.check("deny all into y/b", |_, d, _, _| d.label() != "y/b").await;

    // Fail-static: with no user space holding the maps, the policy holds; a restart (programs loaded again and
    // re-attached make-before-break, maps read back) writes nothing, and the policy still holds.
    let deny_b = np("y", "deny-b", json!({"podSelector": {"matchLabels": {"pod": "b"}}}));
    t.enforcer = Enforcer::open(t.pins.path()).expect("reopening");
    t.check("deny all into y/b, the enforcer reopened", |_, d, _, _| d.label() != "y/b").await;
    load(&t.pins);
    let pin_dir = t.pins.path().to_path_buf();
    let ifs: Vec<String> = t.pods.iter().map(|p| p.host_if.clone()).collect();
    t.node
        .enter(|| ifs.iter().for_each(|i| policy::attach::attach(&pin_dir, i).expect("re-attaching")))
        .expect("entering the node");
    t.enforcer = Enforcer::open(t.pins.path()).expect("reopening after the reload");
    assert_eq!(t.enforce(&[deny_b]), 0, "a restart with the same state writes nothing");
    t.check("deny all into y/b, after a reload", |_, d, _, _| d.label() != "y/b").await;

    // Verdicts: the ring buffer has the denied flows into y/b, with the deciding policy's absence, and the
    // counters have them too.
    let mut verdicts = policy::Verdicts::open(t.pins.path()).expect("opening the verdicts");
    let seen = verdicts.drain();
    let yb = u32::from(t.pods[4].ip).to_be();
    assert!(
        seen.iter().any(|v| v.daddr == yb && v.verdict == skiff_ebpf_common::VERDICT_DENIED),
        "a denied verdict into y/b among {} records",
        seen.len()
    );
    let stats = t.enforcer.maps().stats().expect("reading the counters");
    let denied: u64 = stats
        .iter()
        .filter(|(k, _)| k.addr == yb && k.verdict == skiff_ebpf_common::VERDICT_DENIED)
        .map(|(_, n)| n)
        .sum();
    assert!(denied >= 8 * 4, "every source was denied on every port into y/b: {denied}");

    // Established connections are judged again when policy changes: a connection into x/a carries data, then a
    // deny-all cuts it; removing the policy lets it resume (its retransmission is a new flow that is now allowed).
    t.enforce(&[]);
    t.established_connection_follows_policy_changes().await;

    // 27. Back to nothing: everything open again, and the maps hold no rules.
    t.enforce(&[]);
    t.check("policies removed", all).await;
    assert!(t.enforcer.programmed().rules.is_empty());

    drop(t);
}

impl Table {
    /// Whether pod `src` reaches pod `dst` over IPv6 link-local (TCP) and over IPv4 broadcast (UDP).
    async fn side_paths_reach(&self, dst: usize, src: usize) -> Vec<(&'static str, bool)> {
        let port = 83;
        let (d, s) = (&self.pods[dst], &self.pods[src]);
        let out = d.ns.ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]).expect("ip -6 addr");
        let link_local: std::net::Ipv6Addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no link-local address on {}: {out}", d.label()));
        let (v6, bcast) =
            d.ns.enter(|| {
                let l = std::net::TcpListener::bind("[::]:83").expect("v6 listener");
                l.set_nonblocking(true).expect("nonblocking");
                let u = std::net::UdpSocket::bind("0.0.0.0:84").expect("udp any");
                u.set_nonblocking(true).expect("nonblocking");
                (l, u)
            })
            .expect("entering the destination");
        let (v6, bcast) = (TcpListener::from_std(v6).expect("tokio"), UdpSocket::from_std(bcast).expect("tokio"));
        let (sock, udp, scope) =
            s.ns.enter(|| {
                let scope = nix::net::if_::if_nametoindex("eth0").expect("eth0");
                let u = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
                u.set_broadcast(true).expect("broadcast");
                u.set_nonblocking(true).expect("nonblocking");
                (TcpSocket::new_v6().expect("v6 socket"), u, scope)
            })
            .expect("entering the source");
        let target = SocketAddr::V6(std::net::SocketAddrV6::new(link_local, port, 0, scope));
        let tcp = tokio::time::timeout(Duration::from_secs(1), async {
            let accept = v6.accept();
            let connect = sock.connect(target);
            let (a, c) = tokio::join!(accept, connect);
            a.is_ok() && c.is_ok()
        })
        .await
        .unwrap_or(false);
        let udp = UdpSocket::from_std(udp).expect("tokio udp");
        let _ = udp.send_to(b"all", "10.244.0.255:84").await;
        let mut buf = [0u8; 8];
        let got = tokio::time::timeout(Duration::from_secs(1), bcast.recv_from(&mut buf)).await.is_ok();
        vec![("ipv6 link-local tcp", tcp), ("ipv4 broadcast udp", got)]
    }

    /// A TCP listener on pod `pod`'s address and `port`.
    fn listen(&self, pod: usize, port: u16) -> (SocketAddrV4, TcpListener) {
        let addr = SocketAddrV4::new(self.pods[pod].ip, port);
        let listener = self.pods[pod]
            .ns
            .enter(|| {
                let l = std::net::TcpListener::bind(addr).expect("listener");
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .expect("entering the pod");
        (addr, TcpListener::from_std(listener).expect("tokio listener"))
    }

    /// A connection from pod `pod` to `addr`.
    async fn connect(&self, pod: usize, addr: SocketAddrV4) -> tokio::net::TcpStream {
        let sock = self.pods[pod].ns.enter(|| TcpSocket::new_v4().expect("socket")).expect("entering the pod");
        tokio::time::timeout(RETRY_TIMEOUT, sock.connect(SocketAddr::V4(addr)))
            .await
            .expect("connecting in time")
            .expect("connecting")
    }

    async fn established_connection_follows_policy_changes(&mut self) {
        let (addr, listener) = self.listen(0, 90);
        let echo = tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 16];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut conn = self.connect(1, addr).await;
        let mut buf = [0u8; 2];
        conn.write_all(b"1\n").await.expect("writing");
        tokio::time::timeout(RETRY_TIMEOUT, conn.read_exact(&mut buf)).await.expect("echo in time").expect("echo");
        self.enforce(&[deny_all_ingress("x")]);
        conn.write_all(b"2\n").await.expect("writing (buffered)");
        let cut = tokio::time::timeout(Duration::from_millis(1500), conn.read_exact(&mut buf)).await;
        assert!(cut.is_err(), "the established connection must be cut by the new policy, got {cut:?}");
        self.enforce(&[]);
        // TCP retransmits the unanswered segment (backing off from ~200 ms); it is now allowed.
        tokio::time::timeout(Duration::from_secs(8), conn.read_exact(&mut buf))
            .await
            .expect("the connection resumes once the policy is gone")
            .expect("echo");
        assert_eq!(&buf, b"2\n");
        echo.abort();
        self.revoked_connection_is_not_revived_by_the_other_side().await;
    }

    /// After a revocation the side that may still send (x/a is isolated for ingress only) cannot bring the flow
    /// back by sending first: the peer's packets still do not get into it.
    async fn revoked_connection_is_not_revived_by_the_other_side(&mut self) {
        let (addr, listener) = self.listen(0, 91);
        let (push_tx, push_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let _ = s.write_all(b"hi\n").await;
            let _ = push_rx.await;
            let _ = s.write_all(b"push\n").await;
            let mut buf = [0u8; 16];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut conn = self.connect(1, addr).await;
        let mut hi = [0u8; 3];
        tokio::time::timeout(RETRY_TIMEOUT, conn.read_exact(&mut hi))
            .await
            .expect("greeting in time")
            .expect("greeting");
        self.enforce(&[deny_all_ingress("x")]);
        // x/a may still send (it is isolated for ingress only, and could open a new connection to x/b anyway) ...
        let _ = push_tx.send(());
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ... but nothing of x/b gets into it again: its data is not echoed.
        conn.write_all(b"3\n").await.expect("writing (buffered)");
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2000);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            !String::from_utf8_lossy(&got).contains("3\n"),
            "the revoked flow came back through the side that may still send: {:?}",
            String::from_utf8_lossy(&got)
        );
        self.enforce(&[]);
        server.abort();
    }

    /// Whether pod `src` reaches a UDP server on the node's gateway address at `port`.
    async fn node_reachable_from(&self, src: usize, port: u16) -> bool {
        let addr = SocketAddrV4::new(GATEWAY, port);
        let server = self
            .node
            .enter(|| {
                let u = std::net::UdpSocket::bind(addr).expect("udp socket on the node");
                u.set_nonblocking(true).expect("nonblocking");
                u
            })
            .expect("entering the node");
        let server = UdpSocket::from_std(server).expect("tokio udp");
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            if let Ok((_, from)) = server.recv_from(&mut buf).await {
                let _ = server.send_to(b"ok", from).await;
            }
        });
        let sock = self.pods[src]
            .ns
            .enter(|| {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .expect("entering a pod");
        let sock = UdpSocket::from_std(sock).expect("tokio udp");
        let ok = tokio::time::timeout(RETRY_TIMEOUT, async {
            sock.send_to(b"who", SocketAddr::V4(addr)).await.ok()?;
            let mut buf = [0u8; 8];
            sock.recv_from(&mut buf).await.ok()
        })
        .await;
        echo.abort();
        matches!(ok, Ok(Some(_)))
    }
}

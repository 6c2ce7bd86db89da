//! A multi-node Skiff cluster inside network namespaces, for end-to-end tests: a "lan" namespace with a bridge, the
//! API server in its own namespace (10.0.0.2), and N node namespaces (10.0.0.11, .12, …) each with `eth0` on the lan
//! bridge and an agent running as a separate process — real binaries throughout, driven by the real `kubectl`. No
//! namespace has a default route or a link to the outside.
//!
//! Agents can be stopped, killed (containers keep running: fail-static), restarted, and cut off the lan. On drop
//! everything is removed — even after a failed test: agents and the server are killed by pid, each node's
//! containers, processes, mounts and cgroups are removed with `skiff agent reset` inside its namespace, then the
//! namespaces (with every veth in them) and the cluster's directory go.
//!
//! ```no_run
//! use skiff_testkit::cluster::{Cluster, ClusterConfig};
//! let skiff = std::path::PathBuf::from("target/debug/skiff");
//! let c = Cluster::start(ClusterConfig::new(skiff, 2)).expect("cluster");
//! c.kubectl(&["get", "nodes"]).expect("kubectl");
//! ```

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Child, NetNs, bridge, run, unique_name, veth};

/// How to build the cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `skiff` binary.
    pub skiff: PathBuf,
    /// Number of nodes.
    pub nodes: usize,
    /// The image store the agents share (default `/var/lib/skiff/images`, where `scripts/setup` puts the built-in
    /// images).
    pub image_store: PathBuf,
    /// Extra flags for every agent.
    pub agent_args: Vec<String>,
    /// Extra flags for the server.
    pub server_args: Vec<String>,
    /// Log filter for the processes (`SKIFF_LOG`).
    pub log: String,
    /// Agents run the eBPF Service load balancer (maps pinned under a per-test bpffs directory, programs attached
    /// to the node's pod cgroup and to `eth0` inside the node's namespace).
    pub lb: bool,
    /// Run `skiff ingress` (API mode) in this node's namespace, on its address, ports 80, 443 and 10254.
    pub ingress_node: Option<usize>,
    /// Add a client namespace on the lan ([`CLIENT_IP`]), outside every node.
    pub client: bool,
    /// Every agent gets the same `--cgroup-root`, as agents started with the default on one machine do.
    pub shared_cgroup_root: bool,
    /// API servers (default 1). More than one needs `etcd_members`: server `i` listens on [`server_ip`]`(i)`, the
    /// later ones join with the first one's server token, and every agent is given all of them in order.
    pub servers: usize,
    /// etcd members run on the server namespace's loopback, the servers' datastore (0: each server's SQLite).
    pub etcd_members: usize,
    /// The server agents are given first (the others follow in order, wrapping around): with several servers, a
    /// follower rather than the first (likely leader) server.
    pub agents_first_server: usize,
}

impl ClusterConfig {
    /// `nodes` nodes running `skiff`.
    pub fn new(skiff: PathBuf, nodes: usize) -> Self {
        ClusterConfig {
            skiff,
            nodes,
            image_store: PathBuf::from("/var/lib/skiff/images"),
            agent_args: Vec::new(),
            server_args: Vec::new(),
            log: std::env::var("SKIFF_TEST_LOG").unwrap_or_else(|_| "info".into()),
            lb: false,
            ingress_node: None,
            client: false,
            shared_cgroup_root: false,
            servers: 1,
            etcd_members: 0,
            agents_first_server: 0,
        }
    }

    /// The whole product: agents with the load balancer, the ingress controller on the first node, a client
    /// namespace.
    pub fn full(skiff: PathBuf, nodes: usize) -> Self {
        ClusterConfig { lb: true, ingress_node: Some(0), client: true, ..ClusterConfig::new(skiff, nodes) }
    }
}

/// One node.
#[derive(Debug)]
pub struct Node {
    /// Node name (`n1`, `n2`, …).
    pub name: String,
    /// Its network namespace.
    pub ns: NetNs,
    /// Its address on the lan.
    pub ip: Ipv4Addr,
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// The agent's cgroup root name.
    pub cgroup_root: String,
    /// The lan-side veth (down = the node is cut off).
    pub link: String,
    /// The load balancer's pin directory (removed on drop, which detaches its programs).
    pub pins: Option<crate::PinDir>,
    agent: Option<Child>,
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    cfg: ClusterConfig,
    /// Its directory (server data, agents' data, logs).
    pub dir: PathBuf,
    /// The lan.
    pub lan: NetNs,
    /// The API server's namespace (kubectl runs here).
    pub server_ns: NetNs,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The cluster CA.
    pub ca_cert: PathBuf,
    /// The node token.
    pub token: String,
    /// `https://10.0.0.2:6443` (with several servers, all of them, comma-separated, as agents take them).
    pub server_url: String,
    /// The client namespace ([`CLIENT_IP`]), if configured.
    pub client: Option<NetNs>,
    servers: Vec<Option<Child>>,
    ingress: Option<Child>,
    etcd: Vec<crate::etcd::Etcd>,
}

/// The lan address of the API server (the first one when there are several).
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// The lan address of API server `i` (0-based, at most 7): 10.0.0.2, .3, … .9.
pub fn server_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 2 + u8::try_from(i).unwrap_or(7).min(7))
}
/// The lan address of the client namespace.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// The agents' plain-HTTP metrics port.
pub const AGENT_METRICS_PORT: u16 = 10255;
/// The load balancers' metrics port.
pub const LB_METRICS_PORT: u16 = 10249;
/// The ingress controller's metrics port.
pub const INGRESS_METRICS_PORT: u16 = 10254;

/// Polls `f` every 100 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> std::io::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!("timed out after {limit:?} waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A command running `program args` inside `ns` with stderr appended to `log`.
fn logged(ns: &NetNs, log: &Path, env: &[(&str, &str)], program: &Path, args: &[String]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("exec nsenter --net='{}' -- \"$@\" 2>>'{}'", ns.path().display(), log.display()))
        .arg("sh")
        .arg(program)
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

impl Cluster {
    /// Builds the namespaces, starts the server and every agent, and waits until all nodes are Ready.
    pub fn start(cfg: ClusterConfig) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(unique_name("skiff-cluster"));
        std::fs::create_dir_all(&dir)?;
        let lan = NetNs::new("sklan")?;
        bridge(&lan, "br0", &[])?;
        let server_ns = NetNs::new("sksrv")?;
        let mut c = Cluster {
            cfg,
            kubeconfig: dir.join("server/kubeconfig"),
            ca_cert: dir.join("server/pki/ca.crt"),
            dir,
            lan,
            server_ns,
            nodes: Vec::new(),
            token: String::new(),
            server_url: String::new(),
            client: None,
            servers: Vec::new(),
            ingress: None,
            etcd: Vec::new(),
        };
        if c.cfg.servers > 1 && c.cfg.etcd_members == 0 {
            return Err(std::io::Error::other("several API servers need etcd (ClusterConfig::etcd_members)"));
        }
        if c.cfg.servers > 8 {
            return Err(std::io::Error::other("at most 8 API servers (10.0.0.2-10.0.0.9; nodes start at .11)"));
        }
        let n = c.cfg.servers.max(1);
        c.server_url = (0..n)
            .map(|i| format!("https://{}:6443", server_ip((i + c.cfg.agents_first_server) % n)))
            .collect::<Vec<_>>()
            .join(",");
        veth(&c.lan, "vsrv", &c.server_ns, "eth0")?;
        c.lan.ip(&["link", "set", "vsrv", "master", "br0"])?;
        for i in 0..c.cfg.servers.max(1) {
            c.server_ns.ip(&["addr", "add", &format!("{}/24", server_ip(i)), "dev", "eth0"])?;
        }
        for i in 1..=c.cfg.nodes {
            c.add_node(i)?;
        }
        if c.cfg.client {
            let ns = NetNs::new("skcli")?;
            veth(&c.lan, "vcli", &ns, "eth0")?;
            c.lan.ip(&["link", "set", "vcli", "master", "br0"])?;
            ns.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"])?;
            c.client = Some(ns);
        }
        if c.cfg.etcd_members > 0 {
            c.etcd = crate::etcd::start_cluster_in(Some(&c.server_ns), &c.dir, c.cfg.etcd_members, None)?;
        }
        for i in 0..c.cfg.servers.max(1) {
            c.start_server(i)?;
        }
        for i in 0..c.nodes.len() {
            c.start_agent(i)?;
        }
        for i in 0..c.nodes.len() {
            c.wait_node_ready(i, Duration::from_secs(90))?;
        }
        c.route_pod_networks_from_server()?;
        if let Some(i) = c.cfg.ingress_node {
            c.start_ingress(i)?;
        }
        Ok(c)
    }

    /// Starts `skiff ingress` in node `i`'s namespace and waits until its metrics endpoint answers (its listeners
    /// open once the first routing table is live).
    pub fn start_ingress(&mut self, i: usize) -> std::io::Result<()> {
        let ip = self.nodes[i].ip;
        let args: Vec<String> = vec![
            "ingress".into(),
            "--kubeconfig".into(),
            self.kubeconfig.display().to_string(),
            "--http-addr".into(),
            format!("{ip}:80"),
            "--https-addr".into(),
            format!("{ip}:443"),
            "--metrics-addr".into(),
            format!("{ip}:{INGRESS_METRICS_PORT}"),
            "--status-address".into(),
            ip.to_string(),
            "--access-log".into(),
            self.dir.join("ingress-access.log").display().to_string(),
            "--pid-file".into(),
            self.dir.join("ingress.pid").display().to_string(),
            "--upgrade-sock".into(),
            self.dir.join("ingress-upgrade.sock").display().to_string(),
        ];
        let log = self.dir.join("ingress.log");
        let cmd = logged(&self.nodes[i].ns, &log, &[("SKIFF_LOG", &self.cfg.log)], &self.cfg.skiff, &args);
        self.ingress = Some(Child::spawn(cmd, "skiff ingress")?);
        let url = format!("http://{ip}:{INGRESS_METRICS_PORT}/metrics");
        let ns = &self.nodes[i].ns;
        wait_for(Duration::from_secs(60), "the ingress controller to listen", || {
            ns.exec("curl", &["-sf", "--max-time", "2", "-o", "/dev/null", &url]).ok()?;
            ns.exec("curl", &["-s", "--max-time", "2", "-o", "/dev/null", &format!("http://{ip}:80/")]).ok()
        })?;
        Ok(())
    }

    /// Runs a command in the client namespace (panics if the cluster has none).
    pub fn on_client(&self, program: &str, args: &[&str]) -> std::io::Result<String> {
        self.client
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the cluster has no client namespace"))?
            .exec(program, args)
    }

    fn add_node(&mut self, i: usize) -> std::io::Result<()> {
        let name = format!("n{i}");
        let ns = NetNs::new(&format!("sk{name}"))?;
        let link = format!("vn{i}");
        veth(&self.lan, &link, &ns, "eth0")?;
        self.lan.ip(&["link", "set", &link, "master", "br0"])?;
        let ip = Ipv4Addr::new(10, 0, 0, 10 + u8::try_from(i).unwrap_or(200));
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let data_dir = self.dir.join(&name);
        std::fs::create_dir_all(&data_dir)?;
        let cgroup_root = match self.nodes.first() {
            Some(first) if self.cfg.shared_cgroup_root => first.cgroup_root.clone(),
            _ => unique_name(&format!("skiff-{name}")),
        };
        let pins = if self.cfg.lb { Some(crate::PinDir::new(&format!("skiff-{name}"))?) } else { None };
        self.nodes.push(Node { name, ns, ip, data_dir, cgroup_root, link, pins, agent: None });
        Ok(())
    }

    /// The data directory of API server `i` (`server` for the first, `server-<i>` for the others).
    pub fn server_dir(&self, i: usize) -> PathBuf {
        if i == 0 { self.dir.join("server") } else { self.dir.join(format!("server-{i}")) }
    }

    /// Starts (or restarts) API server `i` and waits until it answers.
    pub fn start_server(&mut self, i: usize) -> std::io::Result<()> {
        let addr = format!("{}:6443", server_ip(i));
        let mut args: Vec<String> = ["server", "--data-dir"].map(String::from).to_vec();
        args.push(self.server_dir(i).display().to_string());
        args.extend(["--listen".into(), addr.clone(), "--advertise-address".into(), addr]);
        if !self.etcd.is_empty() {
            let endpoints: Vec<String> = self.etcd.iter().map(|e| format!("127.0.0.1:{}", e.port)).collect();
            args.extend(["--datastore".into(), format!("etcd://{}", endpoints.join(","))]);
        }
        if i > 0 {
            let token = std::fs::read_to_string(self.server_dir(0).join("pki/server-token"))?;
            args.extend(["--token".into(), token.trim().to_string()]);
        }
        args.extend(self.cfg.server_args.clone());
        let log = if i == 0 { self.dir.join("server.log") } else { self.dir.join(format!("server-{i}.log")) };
        let cmd = logged(&self.server_ns, &log, &[("SKIFF_LOG", &self.cfg.log)], &self.cfg.skiff, &args);
        let child = Child::spawn(cmd, format!("skiff server {i}"))?;
        if self.servers.len() <= i {
            self.servers.resize_with(i + 1, || None);
        }
        self.servers[i] = Some(child);
        let kubeconfig = self.server_dir(i).join("kubeconfig");
        let token_file = self.server_dir(i).join("pki/node-token");
        wait_for(Duration::from_secs(60), "the API server's credentials", || {
            (kubeconfig.exists() && token_file.exists()).then_some(())
        })?;
        self.token = std::fs::read_to_string(&token_file)?.trim().to_string();
        wait_for(Duration::from_secs(60), "the API server to answer", || {
            let out = self
                .server_ns
                .command("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["--request-timeout=10s", "get", "--raw", "/readyz"])
                .output()
                .ok()?;
            out.status.success().then_some(())
        })?;
        Ok(())
    }

    /// Kills API server `i` with SIGKILL (by pid).
    pub fn kill_server(&mut self, i: usize) {
        if let Some(s) = self.servers.get_mut(i) {
            drop(s.take());
        }
    }

    /// The flags the agent of node `i` runs with.
    pub fn agent_args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let mut a: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            self.server_url.clone(),
            "--token".into(),
            self.token.clone(),
            "--ca-cert".into(),
            self.ca_cert.display().to_string(),
            "--node-name".into(),
            n.name.clone(),
            "--node-ip".into(),
            n.ip.to_string(),
            "--interface".into(),
            "eth0".into(),
            "--data-dir".into(),
            n.data_dir.display().to_string(),
            "--cgroup-root".into(),
            n.cgroup_root.clone(),
            "--image-store".into(),
            self.cfg.image_store.display().to_string(),
            "--metrics-addr".into(),
            format!("{}:{AGENT_METRICS_PORT}", n.ip),
        ];
        if let Some(pins) = &n.pins {
            a.extend(["--lb".into(), "--lb-pin-dir".into(), pins.path().display().to_string()]);
            a.extend(["--lb-metrics-addr".into(), format!("{}:{LB_METRICS_PORT}", n.ip)]);
        }
        // the nodes have no way out, so the machine's resolvers are out of reach: names outside the cluster are
        // NXDOMAIN unless a test gives its own upstream
        if !self.cfg.agent_args.iter().any(|x| x == "--dns-upstream") {
            a.extend(["--dns-upstream".into(), "none".into()]);
        }
        a.extend(self.cfg.agent_args.clone());
        a
    }

    /// Starts (or restarts) the agent of node `i`.
    pub fn start_agent(&mut self, i: usize) -> std::io::Result<()> {
        let args = self.agent_args(i);
        let log = self.dir.join(format!("{}.log", self.nodes[i].name));
        let cmd = logged(&self.nodes[i].ns, &log, &[("SKIFF_LOG", &self.cfg.log)], &self.cfg.skiff, &args);
        let child = Child::spawn(cmd, format!("agent {}", self.nodes[i].name))?;
        self.nodes[i].agent = Some(child);
        Ok(())
    }

    /// Stops the agent of node `i` with SIGTERM (its containers keep running).
    pub fn stop_agent(&mut self, i: usize) -> std::io::Result<()> {
        if let Some(mut a) = self.nodes[i].agent.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(a.pid()).unwrap_or(0));
            // `sh -c exec nsenter … skiff`: the pid is skiff's.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            a.wait(Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// Kills the agent of node `i` with SIGKILL (its containers keep running).
    pub fn kill_agent(&mut self, i: usize) {
        drop(self.nodes[i].agent.take());
    }

    /// Whether the agent of node `i` is running.
    pub fn agent_running(&self, i: usize) -> bool {
        self.nodes[i].agent.is_some()
    }

    /// The pid of node `i`'s agent.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].agent.as_ref().map(Child::pid)
    }

    /// The (first) API server's pid, while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.servers.first()?.as_ref().map(Child::pid)
    }

    /// Takes node `i` off the lan (its link down) or puts it back.
    pub fn set_link(&self, i: usize, up: bool) -> std::io::Result<()> {
        self.lan.ip(&["link", "set", &self.nodes[i].link, if up { "up" } else { "down" }]).map(|_| ())
    }

    /// Removes everything node `i`'s agent left (containers and their processes, mounts, cgroups, pod network)
    /// with `skiff agent reset` inside its namespace — with the agent stopped, the node's pods are gone.
    pub fn reset_node(&self, i: usize) {
        let _ = self.reset_node_status(i);
    }

    /// [`Cluster::reset_node`], returning whether `skiff agent reset` succeeded (its output is in `<node>.reset.log`).
    pub fn reset_node_status(&self, i: usize) -> std::io::Result<std::process::ExitStatus> {
        let n = &self.nodes[i];
        let args: Vec<String> = vec![
            "agent".into(),
            "reset".into(),
            "--data-dir".into(),
            n.data_dir.display().to_string(),
            "--cgroup-root".into(),
            n.cgroup_root.clone(),
        ];
        let log = self.dir.join(format!("{}.reset.log", n.name));
        logged(&n.ns, &log, &[], &self.cfg.skiff, &args).status()
    }

    /// Runs kubectl (in the server's namespace) and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> std::io::Result<String> {
        run(self
            .server_ns
            .command("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s")
            .args(args))
    }

    /// Runs kubectl and returns (success, stdout, stderr) without treating failure as an error.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&[u8]>) -> std::io::Result<(bool, String, String)> {
        let mut cmd = self.server_ns.command("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--request-timeout=60s").args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let (Some(data), Some(mut sin)) = (stdin, child.stdin.take()) {
            sin.write_all(data)?;
        }
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `kubectl apply -f -` with `yaml`.
    pub fn apply(&self, yaml: &str) -> std::io::Result<String> {
        let (ok, out, err) = self.kubectl_output(&["apply", "-f", "-"], Some(yaml.as_bytes()))?;
        if !ok {
            return Err(std::io::Error::other(format!("kubectl apply failed: {err}")));
        }
        Ok(out)
    }

    /// A jsonpath query of one object (`kubectl get … -o jsonpath=…`).
    pub fn jsonpath(&self, object: &[&str], path: &str) -> std::io::Result<String> {
        let jp = format!("jsonpath={path}");
        let mut args = vec!["get"];
        args.extend_from_slice(object);
        args.extend(["-o", jp.as_str()]);
        self.kubectl(&args)
    }

    /// Routes each node's pod network through that node from the server's namespace, as a control-plane host on
    /// the nodes' network with host routes to the pod CIDRs: pods reach the API server (the `kubernetes` Service
    /// balances to it) and its answers come back. (The server is not a node here; pod traffic is not translated.)
    fn route_pod_networks_from_server(&self) -> std::io::Result<()> {
        for n in &self.nodes {
            let cidr = self.jsonpath(&["node", &n.name], "{.spec.podCIDR}")?;
            let cidr = cidr.trim();
            if !cidr.is_empty() {
                self.server_ns.ip(&["route", "replace", cidr, "via", &n.ip.to_string()])?;
            }
        }
        Ok(())
    }

    /// Waits until node `i` reports Ready.
    pub fn wait_node_ready(&self, i: usize, limit: Duration) -> std::io::Result<()> {
        let name = self.nodes[i].name.clone();
        wait_for(limit, &format!("node {name} to be Ready"), || {
            let s = self.jsonpath(&["node", &name], "{.status.conditions[?(@.type==\"Ready\")].status}").ok()?;
            (s.trim() == "True").then_some(())
        })
    }

    /// Runs a command inside node `i`'s namespace.
    pub fn on_node(&self, i: usize, program: &str, args: &[&str]) -> std::io::Result<String> {
        self.nodes[i].ns.exec(program, args)
    }

    /// The text of node `i`'s agent log (for failure messages).
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.nodes[i].name))).unwrap_or_default()
    }

    /// The last `n` lines of every process log, for a failing test's message.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut out = String::new();
        let mut files = vec![self.dir.join("server.log"), self.dir.join("ingress.log")];
        files.extend((1..self.servers.len()).map(|i| self.dir.join(format!("server-{i}.log"))));
        files.extend(self.nodes.iter().map(|nd| self.dir.join(format!("{}.log", nd.name))));
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("==> {} <==\n{}\n", f.display(), lines[lines.len().saturating_sub(n)..].join("\n")));
        }
        out
    }

    /// What the cluster's nodes left on the machine: mounts under the cluster directory, cgroups named after the
    /// nodes, processes in them. Empty after a clean shutdown of every pod.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        for l in mounts.lines() {
            if let Some(mp) = l.split(' ').nth(4)
                && mp.starts_with(&dir)
            {
                out.push(format!("mount {mp}"));
            }
        }
        for n in &self.nodes {
            for root in cgroup_dirs(&n.cgroup_root) {
                if let Ok(entries) = std::fs::read_dir(&root) {
                    for e in entries.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            out.push(format!("cgroup {}", e.path().display()));
                        }
                    }
                }
            }
        }
        out
    }
}

/// Every directory named `root` directly under a cgroup hierarchy's mount (or its memory sub-cgroup).
pub fn cgroup_dirs(root: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let self_cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = self_cg
            .lines()
            .find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, ctrl, path) = (p.next()?, p.next()?, p.next()?);
                let matches = if name == "unified" {
                    ctrl.is_empty()
                } else {
                    ctrl.split(',').any(|c| c == name || format!("name={c}") == name)
                };
                matches.then(|| path.trim_start_matches('/').to_string())
            })
            .unwrap_or_default();
        out.push(e.path().join(rel).join(root));
    }
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.ingress.take());
        for n in &mut self.nodes {
            drop(n.agent.take());
        }
        for i in 0..self.nodes.len() {
            self.reset_node(i);
        }
        for n in &mut self.nodes {
            // Unpinning detaches the node's BPF programs and frees its maps.
            drop(n.pins.take());
        }
        self.servers.clear();
        self.etcd.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

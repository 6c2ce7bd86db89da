//! The control plane at scale (issue 18): a release `skiff server` (API server, controllers, scheduler, SQLite) in
//! its own process; NODES (200) simulated kubelets in this one, each as the agent behaves (registration, a Lease
//! renewed every 3 s, node status every 10 s, its own `spec.nodeName` watch, pods marked Running and Ready the way
//! the agent writes them, deletions finished); 100 Deployments driven through 1k, 5k and 10k pods (the real kubectl,
//! and the official Python client for the 1k → 5k step), a rolling update of all of them, a drain of 10% of the
//! nodes; WATCHERS (50) watches of every pod throughout, KUBECTL_WATCHERS (5) of them the real `kubectl get pods -w`
//! and the rest streaming watches that read each event line without decoding it (the same work for the server;
//! kubectl decoding and printing every event took ~13% of a core each, so 50 of them left the server a fraction of
//! this 2-core machine). It reports what Kubernetes' scalability SLIs measure: API call latency p99 per verb and
//! resource (from the server's own histogram, per phase), pod startup latency from creation to Running as the
//! kubelets see it, scheduling throughput, and the server's RSS and CPU (idle 5 s after each step, and at rest
//! REST_SECS (90) after the last). Run with `scripts/bench-scale` (PODS=… to stop earlier).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const NAMESPACE: &str = "scale";
const DEPLOYMENTS: usize = 100;

struct Process(Child);
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (RSS KiB, CPU seconds) of a process.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (rss, cpu_seconds(&format!("/proc/{pid}/stat")))
}

fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn micro_now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// What the simulated kubelets and the observer saw.
#[derive(Default)]
struct Seen {
    /// pod uid → when the observer first saw it (its creation, within a watch delivery)
    created: HashMap<String, Instant>,
    /// when a pod was first seen bound (scheduling throughput)
    bound: Vec<Instant>,
    bound_uids: HashSet<String>,
    /// creation → Running written by its kubelet
    startup: Vec<(Instant, Duration)>,
    /// uid → (ready, node) of pods not being deleted
    live: HashMap<String, (bool, String)>,
}

impl Seen {
    fn ready(&self) -> usize {
        self.live.values().filter(|(r, _)| *r).count()
    }
}

type Shared = Arc<Mutex<Seen>>;

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watches every pod of the namespace: creation instants, binds, readiness.
async fn observe(client: kube::Client, seen: Shared) {
    let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = events.next().await {
        let (pod, deleted) = match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
            Ok(watcher::Event::Delete(p)) => (p, true),
            _ => continue,
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let t = Instant::now();
        let mut s = seen.lock().expect("lock");
        s.created.entry(uid.clone()).or_insert(t);
        if !node.is_empty() && s.bound_uids.insert(uid.clone()) {
            s.bound.push(t);
        }
        if deleted || pod.metadata.deletion_timestamp.is_some() {
            s.live.remove(&uid);
        } else {
            let ready = is_ready(&pod);
            s.live.insert(uid, (ready, node));
        }
    }
}

/// A watch of every pod in the namespace that counts the event lines it receives (reconnecting when the server ends
/// it), without decoding them.
async fn streaming_watcher(client: kube::Client, events: Arc<std::sync::atomic::AtomicUsize>) {
    loop {
        let uri = format!("/api/v1/namespaces/{NAMESPACE}/pods?watch=true&timeoutSeconds=3600");
        let Ok(req) = http::Request::get(uri).body(Vec::new()) else { return };
        match client.request_stream(req).await {
            Ok(body) => {
                let mut lines = body.lines();
                while let Some(Ok(_)) = lines.next().await {
                    events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

fn node_object(name: &str, i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                               "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
        "status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256)},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated",
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
            "nodeInfo": {"kubeletVersion": "v1.32.4-sim", "containerRuntimeVersion": "sim://1", "osImage": "sim",
                         "kernelVersion": "6", "architecture": "amd64", "operatingSystem": "linux", "machineID": "",
                         "systemUUID": "", "bootID": "", "kubeProxyVersion": ""}
        }
    }))
    .expect("a node")
}

/// One simulated kubelet: its pods' watch, Running/Ready status as the agent writes it, finished deletions.
async fn kubelet(client: kube::Client, node: String, index: usize, seen: Shared) {
    let api: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(api, cfg).boxed();
    let mut started: HashSet<String> = HashSet::new();
    let mut next_ip = 2u32;
    while let Some(ev) = events.next().await {
        let pod = match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            _ => continue,
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            // containers stopped: the agent removes the pod for good
            let pods = pods.clone();
            tokio::spawn(async move {
                let _ = pods.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
            });
            continue;
        }
        if !started.insert(uid.clone()) {
            // As kubelet (and the agent) do: when another writer changed the Ready condition (the node lifecycle
            // controller marks pods NotReady when a Lease is late), write the pod's real status again.
            if !is_ready(&pod) {
                let patch = json!({"status": {"conditions": [
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now()},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now()}]}});
                let pods = pods.clone();
                tokio::spawn(async move {
                    let _ = pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await;
                });
            }
            continue;
        }
        next_ip += 1;
        let ip = format!("10.{}.{}.{}", 64 + index / 256, index % 256, next_ip % 250 + 2);
        let containers: Vec<String> =
            pod.spec.as_ref().map(|s| s.containers.iter().map(|c| c.name.clone()).collect()).unwrap_or_default();
        let seen = seen.clone();
        tokio::spawn(async move {
            let cs: Vec<_> = containers
                .iter()
                .map(|c| {
                    json!({"name": c, "image": "sim", "imageID": "", "ready": true, "started": true,
                                "restartCount": 0, "state": {"running": {"startedAt": now()}}})
                })
                .collect();
            let status = json!({"status": {
                "phase": "Running", "hostIP": "10.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now(),
                "containerStatuses": cs,
                "conditions": [
                    {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now()},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now()},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now()}]}});
            // as a kubelet does, a status write that failed is tried again (a few times, each failure printed)
            let mut delay = Duration::from_millis(200);
            for attempt in 1..=5 {
                match pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status)).await {
                    Ok(_) => {
                        let t = Instant::now();
                        let mut s = seen.lock().expect("lock");
                        if let Some(created) = s.created.get(&uid).copied() {
                            s.startup.push((t, t.saturating_duration_since(created)));
                        }
                        break;
                    }
                    Err(e) => {
                        eprintln!("kubelet: the status of {ns}/{name} was not written (attempt {attempt} of 5): {e}");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        });
    }
}

/// Every node's Lease every 3 s and its status heartbeat every 10 s, spread evenly.
async fn heartbeats(client: kube::Client, nodes: Vec<String>) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let node_api: Api<Node> = Api::all(client);
    let step = Duration::from_secs(3) / nodes.len().max(1) as u32;
    let mut round = 0u64;
    loop {
        for n in &nodes {
            let spec = json!({"spec": {"holderIdentity": n, "leaseDurationSeconds": 12, "renewTime": micro_now()}});
            let (leases, node_api, n, status_too) =
                (leases.clone(), node_api.clone(), n.clone(), round.is_multiple_of(3));
            tokio::spawn(async move {
                // as the agent: patch the Lease, create it the first time
                if let Err(kube::Error::Api(e)) = leases.patch(&n, &PatchParams::default(), &Patch::Merge(&spec)).await
                    && e.code == 404
                {
                    let lease =
                        serde_json::from_value(json!({"metadata": {"name": n}, "spec": spec["spec"]})).expect("lease");
                    let _ = leases.create(&PostParams::default(), &lease).await;
                }
                if status_too {
                    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "simulated", "lastHeartbeatTime": now()}]}});
                    let _ = node_api.patch_status(&n, &PatchParams::default(), &Patch::Strategic(&patch)).await;
                }
            });
            tokio::time::sleep(step).await;
        }
        round += 1;
    }
}

/// The server's request-latency histogram: (verb, resource) → cumulative counts per upper bound.
type Histogram = BTreeMap<(String, String), Vec<(f64, f64)>>;

fn parse_histogram(metrics: &str) -> Histogram {
    let mut out: Histogram = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("skiff_apiserver_request_duration_seconds_bucket{") else { continue };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        let (Some(verb), Some(resource), Some(le)) = (label("verb"), label("resource"), label("le")) else { continue };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
        out.entry((verb, resource)).or_default().push((le, value.trim().parse().unwrap_or(0.0)));
    }
    out
}

/// p99 per verb and resource of the requests between two scrapes (the bucket bound it falls in), with counts.
fn p99_between(before: &Histogram, after: &Histogram) -> Vec<(String, String, f64, f64)> {
    let mut out = Vec::new();
    for (key, buckets) in after {
        let prev = before.get(key);
        let delta: Vec<(f64, f64)> = buckets
            .iter()
            .map(|(le, n)| {
                let p = prev.and_then(|b| b.iter().find(|(l, _)| l == le)).map(|(_, v)| *v).unwrap_or(0.0);
                (*le, n - p)
            })
            .collect();
        let total = delta.iter().map(|(_, n)| *n).fold(0.0, f64::max);
        if total < 1.0 {
            continue;
        }
        let p99 = delta.iter().find(|(_, n)| *n >= total * 0.99).map(|(le, _)| *le).unwrap_or(f64::INFINITY);
        out.push((key.0.clone(), key.1.clone(), p99, total));
    }
    out
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Bench {
    client: kube::Client,
    kubeconfig: String,
    seen: Shared,
    server_pid: u32,
    histogram: Histogram,
}

impl Bench {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
        }
        let out = child.wait_with_output().expect("kubectl");
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn scrape(&self) -> Histogram {
        let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
        parse_histogram(&self.client.request_text(req).await.unwrap_or_default())
    }

    async fn wait_until(&self, what: &str, limit: Duration, check: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if check(&self.seen.lock().expect("lock")) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not done after {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every Deployment has rolled out; answers the lowest share of desired replicas that were
    /// available at any one look (all Deployments together), and the lowest of any single Deployment.
    async fn deployments_done(&self, limit: Duration) -> (f64, f64) {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), NAMESPACE);
        let deadline = Instant::now() + limit;
        let (mut lowest_all, mut lowest_one) = (1.0f64, 1.0f64);
        loop {
            let list = api.list(&ListParams::default()).await.expect("deployments");
            let (mut available, mut desired) = (0i64, 0i64);
            for d in &list.items {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(1);
                let have = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
                available += i64::from(have.min(want));
                desired += i64::from(want);
                lowest_one = lowest_one.min(f64::from(have.min(want)) / f64::from(want));
            }
            if desired > 0 {
                lowest_all = lowest_all.min(available as f64 / desired as f64);
            }
            let pending = list
                .items
                .iter()
                .filter(|d| {
                    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let s = d.status.clone().unwrap_or_default();
                    s.observed_generation != d.metadata.generation
                        || s.updated_replicas != Some(want)
                        || s.available_replicas != Some(want)
                        || s.replicas != Some(want)
                })
                .count();
            if pending == 0 {
                return (lowest_all, lowest_one);
            }
            assert!(Instant::now() < deadline, "{pending} Deployments not rolled out after {limit:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Prints one phase's figures and moves the histogram baseline.
    async fn report(&mut self, phase: &str, started: Instant, cpu0: f64, pods: usize) {
        let took = started.elapsed();
        let (rss, cpu) = usage(self.server_pid);
        let (binds, startup) = {
            let s = self.seen.lock().expect("lock");
            let binds: Vec<Instant> = s.bound.iter().copied().filter(|t| *t >= started).collect();
            let startup: Vec<Duration> = s.startup.iter().filter(|(t, _)| *t >= started).map(|(_, d)| *d).collect();
            (binds, startup)
        };
        let rate = match (binds.first(), binds.last()) {
            (Some(a), Some(b)) if binds.len() > 1 && b > a => binds.len() as f64 / (*b - *a).as_secs_f64(),
            _ => 0.0,
        };
        let cpu_used = cpu - cpu0;
        println!(
            "\n== {phase}: {pods} pods, {:.1} s; scheduled {} at {rate:.0} pods/s; startup p50 {:.0} ms p99 {:.0} ms \
             ({} pods); server RSS {} MiB, CPU {cpu_used:.1} s ({:.0}% of one core)",
            took.as_secs_f64(),
            binds.len(),
            percentile(startup.clone(), 0.5).as_secs_f64() * 1e3,
            percentile(startup.clone(), 0.99).as_secs_f64() * 1e3,
            startup.len(),
            rss / 1024,
            cpu_used / took.as_secs_f64() * 100.0
        );
        let after = self.scrape().await;
        let mut rows = p99_between(&self.histogram, &after);
        rows.sort_by(|a, b| b.3.total_cmp(&a.3));
        println!("   API p99 by verb/resource (server histogram bucket; count):");
        for (verb, resource, p99, n) in rows.iter().take(14) {
            println!("     {verb:<8} {resource:<28} p99 <= {:>7.1} ms  ({n:.0})", p99 * 1e3);
        }
        self.histogram = after;
    }
}

fn deployments(replicas: usize, image: &str) -> String {
    (0..DEPLOYMENTS)
        .map(|i| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{i}, namespace: {NAMESPACE}}}\nspec:\n  \
                 replicas: {replicas}\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  template:\n    metadata: \
                 {{labels: {{app: app-{i}}}}}\n    spec: {{containers: [{{name: c, image: {image}, resources: \
                 {{requests: {{cpu: 10m, memory: 16Mi}}}}}}]}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A numeric setting from the environment, or its default; anything else ends the bench with a clear message.
/// Scales every Deployment with the official Python client (cli/benches/scale_deployments.py, in the venv
/// scripts/setup makes).
fn python_scale(kubeconfig: &str, replicas: usize) {
    let venv = std::env::var("SKIFF_PYTHON_VENV").unwrap_or_else(|_| "/opt/skiff/python".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/scale_deployments.py");
    let out = Command::new(format!("{venv}/bin/python"))
        .args([script, kubeconfig, NAMESPACE, &replicas.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("the Python client venv {venv} is missing ({e}): run scripts/setup"));
    assert!(out.status.success(), "the Python client failed: {}", String::from_utf8_lossy(&out.stderr));
    print!("   {}", String::from_utf8_lossy(&out.stdout));
}

fn setting(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a number");
            std::process::exit(2)
        }),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nodes = setting("NODES", 200);
    let top = setting("PODS", 10_000);
    let watchers = setting("WATCHERS", 50);
    let kubectl_watchers = setting("KUBECTL_WATCHERS", 5).min(watchers);
    if nodes < 10 || top < 1_000 {
        eprintln!("NODES must be at least 10 (10% are drained) and PODS at least 1000 (the first step)");
        std::process::exit(2);
    }
    // a node takes 110 pods; after the drain 90% of the nodes hold them all, with room for the rolling update's surge
    if top * 5 / 4 > nodes * 9 / 10 * 110 {
        eprintln!("{top} pods do not fit on {nodes} nodes of 110 pods with 10% drained and a 25% surge");
        std::process::exit(2);
    }
    let steps: Vec<usize> = [1_000, 5_000, 10_000].into_iter().filter(|s| *s <= top).collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "nodes {nodes}, steps {steps:?} pods in {DEPLOYMENTS} Deployments, {watchers} watchers ({kubectl_watchers} \
         kubectl); load average before: {}",
        load.trim()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let (server, client) = support::Server::start(dir.path(), &["--max-requests-inflight-per-user", "1000"]).await;
    let server_pid = server.pid();
    let kubeconfig = server.kubeconfig.clone();
    let seen: Shared = Arc::default();
    let mut bench = Bench {
        client: client.clone(),
        kubeconfig: kubeconfig.to_string_lossy().into_owned(),
        seen: seen.clone(),
        server_pid,
        histogram: Histogram::new(),
    };
    bench.kubectl(&["create", "namespace", NAMESPACE], None);

    // the nodes register, then heartbeat and run pods
    let names: Vec<String> = (0..nodes).map(|i| format!("sim-{i:03}")).collect();
    let started = Instant::now();
    let (cpu0, node_api) = (usage(server_pid).1, Api::<Node>::all(client.clone()));
    let registrations = names.iter().enumerate().map(|(i, n)| {
        let (api, node) = (node_api.clone(), node_object(n, i));
        async move {
            api.create(&PostParams::default(), &node).await.expect("node registered");
            let status = json!({"status": node.status});
            api.patch_status(
                &node.metadata.name.clone().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .expect("node status");
        }
    });
    futures::stream::iter(registrations).buffer_unordered(16).collect::<Vec<_>>().await;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(observe(client.clone(), seen.clone()));
    tasks.spawn(heartbeats(client.clone(), names.clone()));
    // each kubelet with a client (a connection) of its own, as every node's agent has: one client shared by all
    // of them would carry the 200 nodes' watches and writes over one HTTP/2 connection
    for (i, n) in names.iter().enumerate() {
        let own = skiff_client::connect(&kubeconfig).await.expect("a kubelet's client");
        tasks.spawn(kubelet(own, n.clone(), i, seen.clone()));
    }
    bench.report(&format!("{nodes} nodes registered"), started, cpu0, 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (base_rss, _) = usage(server_pid);

    // watchers, each its own watch of every pod: the real kubectl, and streaming watches
    let streamed: Vec<Arc<std::sync::atomic::AtomicUsize>> =
        (kubectl_watchers..watchers).map(|_| Arc::default()).collect();
    for count in &streamed {
        let own = skiff_client::connect(&kubeconfig).await.expect("a watcher's client");
        tasks.spawn(streaming_watcher(own, count.clone()));
    }
    let mut watch_procs = Vec::new();
    for i in 0..kubectl_watchers {
        let out = std::fs::File::create(dir.path().join(format!("watch-{i}.out"))).expect("file");
        let child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "pods", "-n", NAMESPACE, "--watch", "--output-watch-events", "-o", "name"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl watch");
        watch_procs.push(Process(child));
    }

    // 1k, 5k, 10k pods: Deployments created, then scaled
    for (k, pods) in steps.iter().enumerate() {
        let replicas = pods / DEPLOYMENTS;
        let (started, cpu0) = (Instant::now(), usage(server_pid).1);
        if k == 0 {
            bench.kubectl(&["apply", "-f", "-"], Some(&deployments(replicas, "skiff/echo:v1")));
        } else if k == 1 {
            // the Python client drives this step (the scale subresource), kubectl the others
            python_scale(&bench.kubeconfig, replicas);
        } else {
            // four kubectl processes at once, 25 Deployments each: one `kubectl scale --all` goes through the 100
            // one after another (~18 s), which paced this step instead of the server (it used 1.4 of 2 cores)
            let names: Vec<String> = (0..DEPLOYMENTS).map(|i| format!("app-{i}")).collect();
            let replicas = format!("--replicas={replicas}");
            std::thread::scope(|scope| {
                for group in names.chunks(DEPLOYMENTS.div_ceil(4)) {
                    let mut args = vec!["scale", "deployment", "-n", NAMESPACE, &replicas];
                    args.extend(group.iter().map(String::as_str));
                    let bench = &bench;
                    scope.spawn(move || bench.kubectl(&args, None));
                }
            });
        }
        let want = *pods;
        bench.wait_until(&format!("{want} ready pods"), Duration::from_secs(1800), |s| s.ready() >= want).await;
        let _ = bench.deployments_done(Duration::from_secs(600)).await;
        bench.report(&format!("scale to {pods}"), started, cpu0, *pods).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (rss, _) = usage(server_pid);
        println!(
            "   idle RSS after settling: {} MiB; {:.1} KiB per pod beyond the {} MiB before any pod",
            rss / 1024,
            (rss as f64 - base_rss as f64) / *pods as f64,
            base_rss / 1024
        );
    }
    let total = *steps.last().unwrap_or(&0);

    // the same, at rest: what the server holds for the pods once the step's recent events have aged out of its
    // watch cache (kept for 75 s beyond the last hundred per type, as upstream's)
    let rest = Duration::from_secs(setting("REST_SECS", 90) as u64);
    if !rest.is_zero() {
        tokio::time::sleep(rest).await;
        let (rss, _) = usage(server_pid);
        println!(
            "   RSS at rest ({} s later): {} MiB; {:.1} KiB per pod beyond the {} MiB before any pod",
            rest.as_secs(),
            rss / 1024,
            (rss as f64 - base_rss as f64) / total.max(1) as f64,
            base_rss / 1024
        );
    }

    // a rolling update of every Deployment
    let (started, cpu0) = (Instant::now(), usage(server_pid).1);
    bench.kubectl(&["set", "image", "deployment", "--all", "-n", NAMESPACE, "c=skiff/echo:v2"], None);
    let (all, one) = bench.deployments_done(Duration::from_secs(3600)).await;
    bench.wait_until("pods ready after the update", Duration::from_secs(600), |s| s.ready() >= total).await;
    bench.report("rolling update of all", started, cpu0, total).await;
    println!(
        "   lowest availability seen (sampled every 0.5 s): {:.0}% of all replicas, {:.0}% of one Deployment's \
         (maxUnavailable 25%: 75% expected)",
        all * 100.0,
        one * 100.0
    );

    // drain 10% of the nodes
    let drained: Vec<String> = names.iter().take(nodes / 10).cloned().collect();
    let (started, cpu0) = (Instant::now(), usage(server_pid).1);
    let mut args = vec!["drain", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=900s"];
    args.extend(drained.iter().map(String::as_str));
    bench.kubectl(&args, None);
    let gone: HashSet<String> = drained.iter().cloned().collect();
    bench
        .wait_until("pods ready elsewhere after the drain", Duration::from_secs(900), |s| {
            s.ready() >= total && s.live.values().all(|(_, n)| !gone.contains(n))
        })
        .await;
    bench.report(&format!("drain of {} nodes", drained.len()), started, cpu0, total).await;

    let mut events = Vec::new();
    for i in 0..kubectl_watchers {
        let text = std::fs::read_to_string(dir.path().join(format!("watch-{i}.out"))).unwrap_or_default();
        events.push(text.lines().count());
    }
    let counted = |v: &[usize]| format!("min {} max {}", v.iter().min().unwrap_or(&0), v.iter().max().unwrap_or(&0));
    let lines: Vec<usize> = streamed.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).collect();
    println!(
        "\nwatchers: {} kubectl watches, events received {}; {} streaming watches, events received {}",
        events.len(),
        counted(&events),
        lines.len(),
        counted(&lines)
    );
    let (rss, cpu) = usage(server_pid);
    let own = cpu_seconds("/proc/self/stat");
    println!(
        "server: RSS {} MiB, CPU {cpu:.0} s in all; this process (simulated kubelets): CPU {own:.0} s",
        rss / 1024
    );
    drop(watch_procs);
    tasks.abort_all();
    drop(server);
}

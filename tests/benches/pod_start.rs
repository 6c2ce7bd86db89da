//! Pod start latency on one real node (runc, pod network, probes), from each pod's creation to Ready as a
//! `kubectl get --watch` sees it (this process's clock as the events arrive):
//! - 1 and 10 pods of `skiff/echo:v1` with a readiness probe (period 1 s), and 1 and 10 without, on the empty
//!   node, each batch made by one `kubectl apply`;
//! - N pods with the probe (`PODS=…`, default 100): once by one `kubectl apply`, then through the API at each rate
//!   of `RATES` (pods a second, 0 for at once; default `0,20,5`, the upstream density tests' rates), each batch
//!   deleted before the next but the last;
//! - 10 without a probe beside the last N.
//!
//! Beside each batch: the agent's own phases (its `pod_start_phase_duration_seconds` histogram) and the CPU the
//! whole machine spent per pod; `PROFILE=FILE` records a system-wide `perf` profile of each big batch into
//! `FILE.<prefix>`. Then the agent's RSS and CPU at idle with those pods running (over 20 s), and what each
//! container's shim costs (`/proc/PID/smaps_rollup` of every shim: private memory and PSS), once with the small
//! `skiff-shim` program and once with the shim mode of the `skiff` binary (`--shim embedded`), side by side
//! (`SHIM=auto` or `SHIM=embedded` runs one of them).
//! Run with `scripts/bench-agent` (root; builds `skiff` in release first).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skiff_e2e::{ClusterConfig, skiff_binary};
use skiff_testkit::cluster::Cluster;

fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Memory of one process from `/proc/PID/smaps_rollup`, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss: u64,
    pss: u64,
    private: u64,
}

fn smaps_rollup(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Memory { rss: field("Rss:"), pss: field("Pss:"), private: field("Private_Clean:") + field("Private_Dirty:") })
}

/// The shims of the agent whose data directory is `data_dir` (their command line names its `exits/` directory).
fn shims(data_dir: &std::path::Path) -> Vec<(u32, Memory)> {
    let exits = data_dir.join("exits").display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.windows(2).any(|w| w[0] == b"--exit" && w[1].starts_with(exits.as_bytes()))
            && let Some(m) = smaps_rollup(pid)
        {
            out.push((pid, m));
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What one run measured.
struct Figures {
    shim: String,
    pods: usize,
    agent_rss_before: f64,
    agent_rss_after: f64,
    shims: Vec<(u32, Memory)>,
    rows: Vec<Row>,
}

/// How a batch's pods are created.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Creation {
    /// One `kubectl apply -f -` of the whole batch, as a user would type it. kubectl spends about 12 ms of CPU per
    /// object on its own (it parses the server's OpenAPI v3 document again for each one, kubernetes#127095).
    Kubectl,
    /// POSTs to the API from one `curl` over one connection, at most `rate` a second (0: each as soon as the
    /// previous one is answered): the upstream density tests create pods through the API at a set throughput
    /// (clusterloader2's `DENSITY_TEST_THROUGHPUT` 20 pods/s, its one-node `node-throughput` test 5 pods/s).
    Api { rate: u32 },
}

impl std::fmt::Display for Creation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Creation::Kubectl => write!(f, "one kubectl apply"),
            Creation::Api { rate: 0 } => write!(f, "API POSTs at once"),
            Creation::Api { rate } => write!(f, "API POSTs at {rate}/s"),
        }
    }
}

/// The bench's pod: `skiff/echo:v1`, with an HTTP readiness probe (period 1 s) if `probe`.
fn pod(name: &str, probe: bool) -> serde_json::Value {
    let mut container = serde_json::json!({"name": "echo", "image": "skiff/echo:v1"});
    if probe {
        container["readinessProbe"] =
            serde_json::json!({"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1});
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "start"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
    })
}

/// POSTs each of `docs` (pods, JSON) to the API server with one `curl` in the server's namespace, over one
/// connection, at most `rate` a second (0: no limit); fails unless every answer is 201 Created.
fn create_by_api(c: &Cluster, docs: &[String], rate: u32) -> std::io::Result<()> {
    let dir = c.dir.join("bench-create");
    std::fs::create_dir_all(&dir)?;
    let pki = c.server_dir(0).join("pki");
    let url = format!("https://{}:6443/api/v1/namespaces/default/pods", skiff_testkit::cluster::SERVER_IP);
    let mut config = String::new();
    for (i, doc) in docs.iter().enumerate() {
        let file = dir.join(format!("{i}.json"));
        std::fs::write(&file, doc)?;
        if i > 0 {
            config.push_str("next\n");
        }
        // options do not carry over `next`: each transfer names its own
        config.push_str(&format!(
            "url = \"{url}\"\ncacert = \"{ca}\"\ncert = \"{crt}\"\nkey = \"{key}\"\ndata-binary = \"@{file}\"\n\
             header = \"Content-Type: application/json\"\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\n",
            ca = pki.join("ca.crt").display(),
            crt = pki.join("admin.crt").display(),
            key = pki.join("admin.key").display(),
            file = file.display(),
        ));
    }
    let config_file = dir.join("curl.conf");
    std::fs::write(&config_file, config)?;
    let mut cmd = c.server_ns.command("curl");
    cmd.arg("-sS").arg("-K").arg(&config_file);
    if rate > 0 {
        cmd.arg("--rate").arg(format!("{rate}/s"));
    }
    let out = cmd.output()?;
    let codes = String::from_utf8_lossy(&out.stdout);
    let created = codes.lines().filter(|l| l.trim() == "201").count();
    if created != docs.len() {
        return Err(std::io::Error::other(format!(
            "{created} of {} pods created; curl said {:?} {:?}",
            docs.len(),
            codes.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// When each pod of the bench was first seen (ADDED) and first Ready, by one `kubectl get --watch` that runs through
/// the whole bench: the clock is this process's, reading the watch stream as it comes.
struct Watch {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<PodSeen>,
}

/// One watch event: the pod, whether it is bound to a node and Ready, and when the event arrived.
struct PodSeen {
    name: String,
    scheduled: bool,
    ready: bool,
    at: Instant,
}

/// Busy CPU seconds of the whole machine so far (every CPU's user, nice, system, irq and softirq time).
fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| v.get(*i)).sum::<f64>();
    busy / 100.0
}

/// One batch of pods: when the apply began, and when each pod was seen and became Ready.
struct Batch {
    applied: Instant,
    seen: BTreeMap<String, Instant>,
    scheduled: BTreeMap<String, Instant>,
    ready: BTreeMap<String, Instant>,
    pods: usize,
    /// Busy CPU seconds of the machine from the apply to the last Ready.
    cpu: f64,
}

impl Watch {
    fn start(c: &Cluster) -> Watch {
        let mut child = c
            .server_ns
            .command("kubectl")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(["get", "pods", "-l", "bench=start", "--watch", "--output-watch-events", "-o", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl get --watch");
        let stdout = child.stdout.take().expect("piped");
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(std::io::BufReader::new(stdout));
            for event in stream.into_iter::<serde_json::Value>() {
                let Ok(event) = event else { break };
                let at = Instant::now();
                let pod = &event["object"];
                let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let ready = pod["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                let scheduled = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
                if tx.send(PodSeen { name, scheduled, ready, at }).is_err() {
                    break;
                }
            }
        });
        // the watch is open once its (empty) first list is out; give it a moment
        std::thread::sleep(Duration::from_millis(500));
        Watch { child, events }
    }

    /// Creates `pods` pods named `<prefix><i>` (with a readiness probe if `probe`) the way `how` says, and waits
    /// until all are Ready.
    fn batch(&self, c: &Cluster, prefix: &str, pods: usize, probe: bool, how: Creation) -> Batch {
        let docs: Vec<String> = (0..pods).map(|i| pod(&format!("{prefix}{i}"), probe).to_string()).collect();
        let cpu0 = machine_cpu_seconds();
        let mut b = Batch {
            applied: Instant::now(),
            seen: BTreeMap::new(),
            scheduled: BTreeMap::new(),
            ready: BTreeMap::new(),
            pods,
            cpu: 0.0,
        };
        match how {
            // JSON is YAML: one stream of documents
            Creation::Kubectl => {
                let yaml: String = docs.iter().map(|d| format!("---\n{d}\n")).collect();
                c.apply(&yaml).expect("kubectl apply");
            }
            Creation::Api { rate } => create_by_api(c, &docs, rate).expect("creating the pods through the API"),
        }
        let deadline = b.applied + Duration::from_secs(300);
        while b.ready.len() < pods {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            let Ok(e) = self.events.recv_timeout(left) else { break };
            if e.name.strip_prefix(prefix).is_none_or(|i| i.parse::<usize>().is_err()) {
                continue;
            }
            b.seen.entry(e.name.clone()).or_insert(e.at);
            if e.scheduled {
                b.scheduled.entry(e.name.clone()).or_insert(e.at);
            }
            if e.ready {
                b.ready.entry(e.name).or_insert(e.at);
            }
        }
        b.cpu = machine_cpu_seconds() - cpu0;
        b
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // the kubectl this bench started, by its pid
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One batch's headline figures, for the summary.
struct Row {
    what: String,
    last_created: f64,
    p50: f64,
    p99: f64,
    cpu_per_pod_ms: f64,
    load: f64,
}

impl Batch {
    fn print(&self, what: &str, load: f64) -> Row {
        let sorted = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v
        };
        let from_apply = sorted(self.ready.values().map(|r| (*r - self.applied).as_secs_f64()).collect());
        // From the pod's creation (its ADDED event) to Ready: Kubernetes' pod startup SLI, without the time kubectl
        // takes to create the other pods of the batch.
        let own =
            sorted(self.ready.iter().filter_map(|(n, r)| self.seen.get(n).map(|s| (*r - *s).as_secs_f64())).collect());
        let scheduled = sorted(
            self.scheduled.iter().filter_map(|(n, r)| self.seen.get(n).map(|s| (*r - *s).as_secs_f64())).collect(),
        );
        let last_created = self.seen.values().max().map_or(0.0, |s| (*s - self.applied).as_secs_f64());
        println!(
            "{what}: Ready {}/{}; created → Ready p50 {:.3} s, p90 {:.3} s, p99 {:.3} s, max {:.3} s (watch events); apply → Ready p99 {:.2} s, the last pod created {last_created:.2} s after the apply began",
            self.ready.len(),
            self.pods,
            percentile(&own, 50.0),
            percentile(&own, 90.0),
            percentile(&own, 99.0),
            own.last().copied().unwrap_or(f64::NAN),
            percentile(&from_apply, 99.0),
        );
        println!(
            "    created → scheduled p50 {:.3} s, p99 {:.3} s; machine CPU {:.2} s busy ({:.0} ms per pod, kubectl apply included)",
            percentile(&scheduled, 50.0),
            percentile(&scheduled, 99.0),
            self.cpu,
            self.cpu * 1000.0 / self.pods.max(1) as f64,
        );
        Row {
            what: what.to_string(),
            last_created,
            p50: percentile(&own, 50.0),
            p99: percentile(&own, 99.0),
            cpu_per_pod_ms: self.cpu * 1000.0 / self.pods.max(1) as f64,
            load,
        }
    }
}

/// The agent's own view of pod starts: (sum, count) of its start and runtime-operation histograms.
fn agent_phases(c: &Cluster) -> BTreeMap<String, (f64, f64)> {
    let url = format!("http://{}:{}/metrics", c.nodes[0].ip, skiff_testkit::cluster::AGENT_METRICS_PORT);
    let text = c.on_node(0, "curl", &["-s", "--max-time", "5", &url]).unwrap_or_default();
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for l in text.lines() {
        let Some((key, value)) = l.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, which) =
            if let Some(k) = key.strip_suffix("_sum").or_else(|| key.split_once("_sum{").map(|(n, _)| n)) {
                (k, 0)
            } else if let Some(k) = key.strip_suffix("_count").or_else(|| key.split_once("_count{").map(|(n, _)| n)) {
                (k, 1)
            } else {
                continue;
            };
        let label = |l: &str| {
            key.split_once(&format!("{l}=\"")).and_then(|(_, r)| r.split_once('"')).map(|(v, _)| v.to_string())
        };
        let phase = match name {
            "skiff_agent_pod_start_duration_seconds" => "agent: seen → Ready".to_string(),
            "skiff_agent_pod_start_phase_duration_seconds" => match label("phase") {
                Some(p) => format!("agent phase: {p}"),
                None => continue,
            },
            "skiff_agent_runtime_operation_duration_seconds" => match label("operation") {
                Some(op) => format!("agent operation: {op}"),
                None => continue,
            },
            _ => continue,
        };
        let e = out.entry(phase).or_default();
        if which == 0 { e.0 = value } else { e.1 = value }
    }
    out
}

/// How many requests the API server has answered so far, by verb and resource (its
/// `skiff_apiserver_request_duration_seconds` histogram's counts), read with `kubectl get --raw /metrics`.
fn api_requests(c: &Cluster) -> BTreeMap<String, f64> {
    let text = c.kubectl(&["get", "--raw", "/metrics"]).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("skiff_apiserver_request_duration_seconds_count{") else { continue };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let label = |k: &str| {
            labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{k}=\""))).map(|v| v.trim_end_matches('"'))
        };
        let key = format!("{} {}", label("verb").unwrap_or("?"), label("resource").unwrap_or("?"));
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Prints the API requests per pod between two readings of [`api_requests`], most frequent first.
fn print_requests(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, pods: usize) {
    let mut per_pod: Vec<(f64, &String)> = after
        .iter()
        .map(|(k, n)| ((n - before.get(k).copied().unwrap_or(0.0)) / pods.max(1) as f64, k))
        .filter(|(n, _)| *n >= 0.05)
        .collect();
    per_pod.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = per_pod.iter().map(|(n, _)| n).sum();
    let list: Vec<String> = per_pod.iter().map(|(n, k)| format!("{k} {n:.1}")).collect();
    println!("    API requests per pod: {total:.1} ({})", list.join(", "));
}

/// Prints the mean of each phase between two readings of [`agent_phases`].
fn print_phases(before: &BTreeMap<String, (f64, f64)>, after: &BTreeMap<String, (f64, f64)>) {
    for (phase, (sum, count)) in after {
        let (s0, c0) = before.get(phase).copied().unwrap_or_default();
        if count - c0 >= 1.0 {
            println!("    {phase}: mean {:.3} s over {}", (sum - s0) / (count - c0), count - c0);
        }
    }
}

fn main() {
    if !skiff_testkit::require_privileges("the pod start benchmark") {
        return;
    }
    let pods: usize = std::env::var("PODS").ok().and_then(|p| p.parse().ok()).unwrap_or(100);
    let kinds: Vec<String> = match std::env::var("SHIM") {
        Ok(k) => vec![k],
        Err(_) => vec!["auto".into(), "embedded".into()],
    };
    // RATES: the API creation rates of the big batch, pods a second, 0 for at once (default: at once, then the
    // upstream density tests' 20 and 5)
    let rates: Vec<u32> = std::env::var("RATES")
        .unwrap_or_else(|_| "0,20,5".into())
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.trim().parse().expect("RATES: comma-separated pods a second"))
        .collect();
    let runs: Vec<Figures> = kinds.iter().map(|k| run(pods, &rates, k)).collect();
    println!();
    println!("creation → Ready (watch events), p50 and p99, per batch:");
    println!(
        "{:<10} {:<62} {:>9} {:>8} {:>8} {:>12} {:>6}",
        "shim", "batch", "created", "p50 s", "p99 s", "CPU/pod ms", "load"
    );
    for f in &runs {
        for r in &f.rows {
            println!(
                "{:<10} {:<62} {:>7.2} s {:>8.3} {:>8.3} {:>12.0} {:>6.2}",
                f.shim, r.what, r.last_created, r.p50, r.p99, r.cpu_per_pod_ms, r.load
            );
        }
    }
    println!();
    println!("per-container shim, {} pods (KiB; from /proc/PID/smaps_rollup):", runs.first().map_or(0, |f| f.pods));
    println!(
        "{:<10} {:>6} {:>14} {:>10} {:>10} {:>20}",
        "shim", "shims", "private/shim", "PSS/shim", "RSS/shim", "agent RSS/pod (KiB)"
    );
    for f in &runs {
        let n = f.shims.len().max(1) as f64;
        let sum = |g: fn(&Memory) -> u64| f.shims.iter().map(|(_, m)| g(m)).sum::<u64>() as f64 / n;
        println!(
            "{:<10} {:>6} {:>14.0} {:>10.0} {:>10.0} {:>20.0}",
            f.shim,
            f.shims.len(),
            sum(|m| m.private),
            sum(|m| m.pss),
            sum(|m| m.rss),
            (f.agent_rss_after - f.agent_rss_before) * 1024.0 / f.pods.max(1) as f64
        );
    }
}

/// The 1-minute load average.
fn load_average() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// Waits (two minutes at most) for the 1-minute load average to fall below 1, e.g. after the build.
fn quiet() -> f64 {
    for _ in 0..24 {
        if load_average() < 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    load_average()
}

/// One batch of the run.
struct Planned {
    /// Its pods are named `<prefix><i>`.
    prefix: String,
    /// How many.
    n: usize,
    /// With a readiness probe.
    probe: bool,
    /// How they are created.
    how: Creation,
    /// Left running for the next batches (else deleted and waited out).
    keep: bool,
    /// One of the big batches (`PODS`): waits for a quiet machine first, profiled with `PROFILE`.
    big: bool,
    /// What the summary calls it.
    what: String,
}

fn run(pods: usize, rates: &[u32], shim: &str) -> Figures {
    let load = quiet();
    println!("--- {pods} pods, --shim {shim} (load average {load:.2} before the run)");
    let mut cfg = ClusterConfig::new(skiff_binary(), 1);
    cfg.log = "warn".into();
    cfg.agent_args = vec!["--shim".into(), shim.into()];
    let c = Cluster::start(cfg).expect("a one-node cluster");
    // The agent's pid: `sh -c exec nsenter … skiff`, so the child's pid is skiff's.
    let agent = c.agent_pid(0).expect("the agent runs");
    let server = c.server_pid().expect("the server runs");
    let agent_rss_before = rss_mib(agent);
    let watch = Watch::start(&c);
    let mut running = 0;
    let mut rows = Vec::new();
    // Each batch but the last two is deleted (and waited out) before the next: 100 + 10 pods fill the node's 110.
    // The big batch is created once by kubectl apply (its pods named p…), then through the API at each of
    // `rates` (r1-…, r2-…, …; the last one stays). Big batches wait for a quiet machine and are profiled.
    let small = |prefix: &str, n: usize, probe: bool, keep: bool, what: String| Planned {
        prefix: prefix.into(),
        n,
        probe,
        how: Creation::Kubectl,
        keep,
        big: false,
        what,
    };
    let mut batches = vec![
        small("a", 1, true, false, "1 pod with a readiness probe (period 1 s)".into()),
        small("b", 10, true, false, "10 pods with a readiness probe".into()),
        small("n", 1, false, false, "1 pod without a probe".into()),
        small("c", 10, false, false, "10 pods without a probe".into()),
    ];
    let big = std::iter::once(Creation::Kubectl).chain(rates.iter().map(|&rate| Creation::Api { rate }));
    let big: Vec<Creation> = big.collect();
    for (i, how) in big.iter().enumerate() {
        let prefix = if i == 0 { "p".to_string() } else { format!("r{i}-") };
        let what = format!("{pods} pods with a readiness probe, {how}");
        batches.push(Planned { prefix, n: pods, probe: true, how: *how, keep: i + 1 == big.len(), big: true, what });
    }
    batches.push(small("q", 10, false, true, format!("10 pods without a probe, beside the {pods}")));
    for Planned { prefix, n, probe, how, keep, big, what } in batches {
        let prefix = prefix.as_str();
        if big {
            // the previous big batch's deletion and the machine's load settle first
            quiet();
        }
        let (cpu0, server_cpu0) = (proc_cpu_seconds(agent), proc_cpu_seconds(server));
        let phases0 = agent_phases(&c);
        let requests0 = api_requests(&c);
        // PROFILE=FILE: a system-wide `perf record` of each big batch into FILE.<prefix> (stopped by its pid)
        let perf = std::env::var("PROFILE").ok().filter(|_| big).map(|out| {
            std::process::Command::new("perf")
                .args(["record", "-a", "-g", "-F", "499", "-o", &format!("{out}.{prefix}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("perf record")
        });
        let load = load_average();
        let batch = watch.batch(&c, prefix, n, probe, how);
        println!("(load average {load:.2} before the batch)");
        if let Some(mut p) = perf {
            let _ = std::process::Command::new("kill").args(["-INT", &p.id().to_string()]).status();
            let _ = p.wait();
        }
        let agent_cpu = proc_cpu_seconds(agent) - cpu0;
        let server_cpu = proc_cpu_seconds(server) - server_cpu0;
        rows.push(batch.print(&what, load));
        print_phases(&phases0, &agent_phases(&c));
        print_requests(&requests0, &api_requests(&c), n);
        println!(
            "    CPU while starting them: agent {agent_cpu:.2} s, API server and controllers {server_cpu:.2} s, the rest (runc, shims, kubectl, kernel) {:.2} s",
            batch.cpu - agent_cpu - server_cpu
        );
        if keep {
            running += batch.ready.len();
        } else {
            let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
            let mut args = vec!["delete", "pod", "--wait=true", "--timeout=120s"];
            args.extend(names.iter().map(String::as_str));
            c.kubectl(&args).expect("deleting the batch");
        }
        // let the machine settle between batches
        std::thread::sleep(Duration::from_secs(3));
    }
    drop(watch);
    std::thread::sleep(Duration::from_secs(5));
    let (cpu_a, t_a) = (proc_cpu_seconds(agent), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let idle_cpu = (proc_cpu_seconds(agent) - cpu_a) / t_a.elapsed().as_secs_f64() * 100.0;
    let agent_rss_after = rss_mib(agent);
    println!("agent at idle with {running} pods: RSS {agent_rss_after:.1} MiB, CPU {idle_cpu:.1}% of a core");
    let shims = shims(&c.nodes[0].data_dir);
    let _ = c.kubectl(&["delete", "pods", "-l", "bench=start", "--wait=false"]);
    Figures { shim: shim.into(), pods: running, agent_rss_before, agent_rss_after, shims, rows }
}

//! Pod start latency on one real node (runc, pod network, probes): batches of 1, 10 and N pods (default 100,
//! `PODS=…`) of `skiff/echo:v1` with a readiness probe (period 1 s), and 10 without a probe on the empty node and
//! again beside the N, each applied in one `kubectl apply`; each pod's time from its creation to scheduled and to Ready is read off one `kubectl get --watch`
//! (this process's clock as the events arrive), beside the agent's own phases (its
//! `pod_start_phase_duration_seconds` histogram) and the CPU the whole machine spent per pod. `PROFILE=FILE` records
//! a system-wide `perf` profile of the big batch into FILE. Then the agent's RSS and CPU at idle with those pods running (over 20 s), and what
//! each container's shim costs (`/proc/PID/smaps_rollup` of every shim: private memory and PSS), once with the small
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

    /// Applies `pods` pods named `<prefix><i>` (with `extra` lines in the container) and waits until all are Ready.
    fn batch(&self, c: &Cluster, prefix: &str, pods: usize, extra: &str) -> Batch {
        let mut yaml = String::new();
        for i in 0..pods {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {prefix}{i}, labels: {{bench: start}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: echo\n    image: skiff/echo:v1\n{extra}"
            ));
        }
        let cpu0 = machine_cpu_seconds();
        let mut b = Batch {
            applied: Instant::now(),
            seen: BTreeMap::new(),
            scheduled: BTreeMap::new(),
            ready: BTreeMap::new(),
            pods,
            cpu: 0.0,
        };
        c.apply(&yaml).expect("kubectl apply");
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

impl Batch {
    fn print(&self, what: &str) {
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
    let runs: Vec<Figures> = kinds.iter().map(|k| run(pods, k)).collect();
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

fn run(pods: usize, shim: &str) -> Figures {
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
    let probe = "    readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}\n";
    let mut running = 0;
    // The small batches are deleted (and waited out) before the next: 100 + 10 pods fill the node's 110.
    for (prefix, n, extra, keep, what) in [
        ("a", 1, probe, false, "1 pod with a readiness probe (period 1 s)".to_string()),
        ("b", 10, probe, false, "10 pods with a readiness probe".to_string()),
        ("c", 10, "", false, "10 pods without a probe".to_string()),
        ("p", pods, probe, true, format!("{pods} pods with a readiness probe")),
        ("q", 10, "", true, format!("10 pods without a probe, beside the {pods}")),
    ] {
        let (cpu0, server_cpu0) = (proc_cpu_seconds(agent), proc_cpu_seconds(server));
        let phases0 = agent_phases(&c);
        // PROFILE=FILE: a system-wide `perf record` over the big batch only (stopped by its pid)
        let perf = std::env::var("PROFILE").ok().filter(|_| prefix == "p").map(|out| {
            std::process::Command::new("perf")
                .args(["record", "-a", "-g", "-F", "499", "-o", &out])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("perf record")
        });
        let load = load_average();
        let batch = watch.batch(&c, prefix, n, extra);
        println!("(load average {load:.2} before the batch)");
        if let Some(mut p) = perf {
            let _ = std::process::Command::new("kill").args(["-INT", &p.id().to_string()]).status();
            let _ = p.wait();
        }
        let agent_cpu = proc_cpu_seconds(agent) - cpu0;
        let server_cpu = proc_cpu_seconds(server) - server_cpu0;
        batch.print(&what);
        print_phases(&phases0, &agent_phases(&c));
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
    Figures { shim: shim.into(), pods: running, agent_rss_before, agent_rss_after, shims }
}

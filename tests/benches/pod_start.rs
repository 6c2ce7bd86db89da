//! Pod start latency on one real node (runc, pod network, probes): N pods (default 100, `PODS=…`) of `skiff/echo:v1`
//! with a readiness probe are applied in one `kubectl apply`, and each pod's time from the apply to Ready is taken
//! by polling the API every 100 ms. Then the agent's RSS and CPU at idle with those pods running (over 20 s), and what
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
    println!("per-container shim, {pods} pods (KiB; from /proc/PID/smaps_rollup):");
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

fn run(pods: usize, shim: &str) -> Figures {
    println!("--- {pods} pods, --shim {shim}");
    let mut cfg = ClusterConfig::new(skiff_binary(), 1);
    cfg.log = "warn".into();
    cfg.agent_args = vec!["--shim".into(), shim.into()];
    let c = Cluster::start(cfg).expect("a one-node cluster");
    // The agent's pid: `sh -c exec nsenter … skiff`, so the child's pid is skiff's.
    let agent = c.agent_pid(0).expect("the agent runs");
    let agent_rss_before = rss_mib(agent);
    let mut yaml = String::new();
    for i in 0..pods {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{bench: start}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: echo\n    image: skiff/echo:v1\n    readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}\n"
        ));
    }
    let cpu0 = proc_cpu_seconds(agent);
    let applied = Instant::now();
    c.apply(&yaml).expect("kubectl apply");
    let mut ready: BTreeMap<String, Duration> = BTreeMap::new();
    let mut seen: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = applied + Duration::from_secs(300);
    let jp = r#"{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#;
    while ready.len() < pods && Instant::now() < deadline {
        let out = c.kubectl(&["get", "pods", "-l", "bench=start", "-o", &format!("jsonpath={jp}")]).unwrap_or_default();
        let now = applied.elapsed();
        for l in out.lines() {
            let (name, status) = l.split_once(' ').unwrap_or((l, ""));
            seen.entry(name.to_string()).or_insert(now);
            if status == "True" {
                ready.entry(name.to_string()).or_insert(now);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = applied.elapsed();
    let cpu_start = proc_cpu_seconds(agent) - cpu0;
    let mut secs: Vec<f64> = ready.values().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    // From the pod's first appearance in the API (the poll that first lists it) to Ready: Kubernetes' pod startup
    // SLI, without the time kubectl takes to create the other pods of the batch.
    let mut own: Vec<f64> =
        ready.iter().filter_map(|(n, r)| seen.get(n).map(|s| r.saturating_sub(*s).as_secs_f64())).collect();
    own.sort_by(f64::total_cmp);
    let created_last = seen.values().max().copied().unwrap_or_default();
    println!(
        "pods Ready: {}/{pods}; apply → Ready p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, last {:.2} s (polling every 100 ms); agent CPU while starting: {cpu_start:.1} s",
        ready.len(),
        percentile(&secs, 50.0),
        percentile(&secs, 90.0),
        percentile(&secs, 99.0),
        all.as_secs_f64()
    );
    println!(
        "created → Ready (first listed → Ready): p50 {:.2} s, p90 {:.2} s, p99 {:.2} s; the last pod was created {:.2} s after the apply began",
        percentile(&own, 50.0),
        percentile(&own, 90.0),
        percentile(&own, 99.0),
        created_last.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    let (cpu_a, t_a) = (proc_cpu_seconds(agent), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let idle_cpu = (proc_cpu_seconds(agent) - cpu_a) / t_a.elapsed().as_secs_f64() * 100.0;
    let agent_rss_after = rss_mib(agent);
    println!("agent at idle with {} pods: RSS {agent_rss_after:.1} MiB, CPU {idle_cpu:.1}% of a core", ready.len());
    let shims = shims(&c.nodes[0].data_dir);
    let _ = c.kubectl(&["delete", "pods", "-l", "bench=start", "--wait=false"]);
    Figures { shim: shim.into(), pods: ready.len(), agent_rss_before, agent_rss_after, shims }
}

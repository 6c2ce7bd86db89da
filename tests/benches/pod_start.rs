//! Pod start latency on one real node (runc, pod network, probes): N pods (default 100, `PODS=…`) of `skiff/echo:v1`
//! with a readiness probe are applied in one `kubectl apply`, and each pod's time from the apply to Ready is taken
//! by polling the API every 100 ms. Then the agent's RSS and CPU at idle with those pods running (over 20 s).
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    if !skiff_testkit::require_privileges("the pod start benchmark") {
        return;
    }
    let pods: usize = std::env::var("PODS").ok().and_then(|p| p.parse().ok()).unwrap_or(100);
    let mut cfg = ClusterConfig::new(skiff_binary(), 1);
    cfg.log = "warn".into();
    let c = Cluster::start(cfg).expect("a one-node cluster");
    // The agent's pid: `sh -c exec nsenter … skiff`, so the child's pid is skiff's.
    let agent = c.agent_pid(0).expect("the agent runs");
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
    println!("agent at idle with {} pods: RSS {:.1} MiB, CPU {idle_cpu:.1}% of a core", ready.len(), rss_mib(agent));
    let _ = c.kubectl(&["delete", "pods", "-l", "bench=start", "--wait=false"]);
}

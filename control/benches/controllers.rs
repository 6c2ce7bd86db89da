//! Scheduling and reconcile throughput: a 1,000-replica Deployment applied with kubectl to a cluster of 10
//! simulated nodes, timed until every pod is bound and Ready-marked; the CPU the process (API server, controllers,
//! scheduler and the simulated kubelets) used meanwhile. Run with `scripts/bench-controllers`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let replicas: usize = std::env::var("REPLICAS").ok().and_then(|r| r.parse().ok()).unwrap_or(1000);
    let c = common::Cluster::start();
    let client = c.client();
    let names: Vec<String> = (0..10).map(|i| format!("node-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let _sim = c.runtime.block_on(common::simnode::SimNodes::start(client, &refs, "16", "64Gi"));
    std::thread::sleep(Duration::from_secs(2));
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: big}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: big}}}}\n  template:\n    metadata: {{labels: {{app: big}}}}\n    spec: {{containers: [{{name: c, image: skiff/echo:v1, resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}}}]}}\n"
    );
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    c.kubectl_in(&["apply", "-f", "-"], &manifest);
    let mut bound_at = None;
    let deadline = start + Duration::from_secs(600);
    loop {
        let pods = c.get_json(&["pods", "-l", "app=big"]);
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let bound = items.iter().filter(|p| p["spec"]["nodeName"].is_string()).count();
        let ready = items
            .iter()
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .count();
        if bound >= replicas && bound_at.is_none() {
            bound_at = Some(start.elapsed());
        }
        if ready >= replicas {
            break;
        }
        assert!(Instant::now() < deadline, "not done after 10 minutes: {bound} bound, {ready} ready");
        std::thread::sleep(Duration::from_millis(250));
    }
    let total = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let available = c.get_json(&["deploy", "big"])["status"]["availableReplicas"].clone();
    println!("replicas: {replicas} on 10 simulated nodes");
    println!(
        "all bound after:         {:.2} s ({:.0} pods/s)",
        bound_at.unwrap_or(total).as_secs_f64(),
        replicas as f64 / bound_at.unwrap_or(total).as_secs_f64()
    );
    println!(
        "all Ready-marked after:  {:.2} s ({:.0} pods/s)",
        total.as_secs_f64(),
        replicas as f64 / total.as_secs_f64()
    );
    println!("deployment availableReplicas: {available}");
    println!(
        "process CPU meanwhile:   {cpu:.1} s (API server + controllers + scheduler + simulated kubelets; {:.0}% of one core)",
        cpu / total.as_secs_f64() * 100.0
    );
}

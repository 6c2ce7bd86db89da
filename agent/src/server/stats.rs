//! Resource metrics for HPA and `kubectl top`: every 10 s the sampler reads each running container's cgroup
//! counters (and the machine's `/proc/stat` and `/proc/meminfo`); CPU is the rate between the last two samples, memory
//! the working set. Served as `metrics.k8s.io/v1beta1` PodMetricsList and NodeMetrics.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::cgroups::{Cgroups, Usage};
use crate::pods::Views;

/// The sampling window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// One sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    usage: Usage,
}

/// A container's latest figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    /// CPU in nanocores.
    pub nanocores: u64,
    /// Working set in bytes.
    pub memory: u64,
}

/// CPU rate in nanocores between two samples.
pub fn rate(prev_ns: u64, prev_at: Instant, now_ns: u64, now_at: Instant) -> u64 {
    let dt = now_at.saturating_duration_since(prev_at).as_nanos();
    if dt == 0 {
        return 0;
    }
    (u128::from(now_ns.saturating_sub(prev_ns)) * 1_000_000_000 / dt) as u64
}

/// `/proc/stat` busy and total jiffies.
pub fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[derive(Default)]
struct State {
    prev: BTreeMap<String, Sample>,
    figures: BTreeMap<String, Figures>,
    node_prev: Option<(Instant, u64)>,
    node: Figures,
    taken: Option<Timestamp>,
}

/// The sampler and its latest figures.
#[derive(Clone)]
pub struct Stats {
    state: Arc<RwLock<State>>,
    cgroups: Cgroups,
    views: Views,
    node: String,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stats")
    }
}

fn cpu_quantity(nanocores: u64) -> String {
    format!("{nanocores}n")
}

fn memory_quantity(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

impl Stats {
    /// A sampler over the pods in `views`.
    pub fn new(cgroups: Cgroups, views: Views, node: String) -> Self {
        Stats { state: Arc::default(), cgroups, views, node }
    }

    /// Takes one sample of every running container and of the machine.
    pub fn sample(&self) {
        let now = Instant::now();
        let cgroups: Vec<String> = self
            .views
            .read()
            .map(|v| v.values().flat_map(|p| p.containers.values().filter_map(|c| c.cgroup.clone())).collect())
            .unwrap_or_default();
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut prev = BTreeMap::new();
        let mut figures = BTreeMap::new();
        for cg in cgroups {
            let Some(usage) = self.cgroups.usage(&cg) else { continue };
            if let Some(p) = st.prev.get(&cg) {
                figures.insert(
                    cg.clone(),
                    Figures {
                        nanocores: rate(p.usage.cpu_ns, p.at, usage.cpu_ns, now),
                        memory: usage.memory_working_set,
                    },
                );
            } else {
                figures.insert(cg.clone(), Figures { nanocores: 0, memory: usage.memory_working_set });
            }
            prev.insert(cg, Sample { at: now, usage });
        }
        st.prev = prev;
        st.figures = figures;
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        if let Some((busy, _)) = cpu_jiffies(&stat) {
            let hz = 100u64;
            let busy_ns = busy * (1_000_000_000 / hz);
            if let Some((at, prev_ns)) = st.node_prev {
                st.node.nanocores = rate(prev_ns, at, busy_ns, now);
            }
            st.node_prev = Some((now, busy_ns));
        }
        let total = crate::host::meminfo_field(&meminfo, "MemTotal:").unwrap_or(0);
        let avail = crate::host::meminfo_field(&meminfo, "MemAvailable:").unwrap_or(0);
        st.node.memory = total.saturating_sub(avail);
        st.taken = Some(Timestamp::now());
    }

    /// Samples every [`WINDOW`] until the task is dropped.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(WINDOW);
        loop {
            tick.tick().await;
            let s = self.clone();
            let _ = tokio::task::spawn_blocking(move || s.sample()).await;
        }
    }

    /// The PodMetricsList of this node's pods.
    pub fn pod_metrics(&self) -> Value {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let ts = st.taken.unwrap_or_else(Timestamp::now).to_string();
        let views = self.views.read().map(|v| v.clone()).unwrap_or_default();
        let mut items = Vec::new();
        for ((ns, name), p) in views {
            let mut containers = Vec::new();
            for (cname, c) in &p.containers {
                let Some(f) = c.cgroup.as_ref().and_then(|cg| st.figures.get(cg)) else { continue };
                containers.push(json!({"name": cname, "usage": {"cpu": cpu_quantity(f.nanocores), "memory": memory_quantity(f.memory)}}));
            }
            if containers.is_empty() {
                continue;
            }
            items.push(json!({
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": p.created.clone().unwrap_or_else(|| ts.clone())},
                "timestamp": ts, "window": "10s", "containers": containers,
            }));
        }
        json!({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items})
    }

    /// The NodeMetrics of this node.
    pub fn node_metrics(&self) -> Value {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let ts = st.taken.unwrap_or_else(Timestamp::now).to_string();
        json!({
            "kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {"name": self.node, "creationTimestamp": ts},
            "timestamp": ts, "window": "10s",
            "usage": {"cpu": cpu_quantity(st.node.nanocores), "memory": memory_quantity(st.node.memory)},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_a_rate_over_the_window() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        // 1.5 s of CPU in 10 s = 150 millicores = 150,000,000 nanocores
        assert_eq!(rate(0, t0, 1_500_000_000, t1), 150_000_000);
        assert_eq!(rate(5, t0, 5, t0), 0);
        assert_eq!(cpu_quantity(150_000_000), "150000000n");
        assert_eq!(memory_quantity(35 << 20), "35840Ki");
    }

    #[test]
    fn proc_stat_busy_time_excludes_idle_and_iowait() {
        let (busy, total) = cpu_jiffies("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").expect("cpu line");
        assert_eq!((busy, total), (150, 1000));
    }
}

//! The agent's Prometheus metrics (`skiff_agent_*`), served on the kubelet port's `/metrics` and on the plain-HTTP
//! metrics address.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe_type: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// A step of a pod's first start, timed by the agent ([`Metrics::start_phase`]).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum StartPhase {
    /// The pod's network: namespace, veth, address, routes.
    SandboxNetwork,
    /// NetworkPolicy admission, the pod's `/etc` files and its pids limit.
    PodSetup,
    /// Volumes: service-account tokens (a TokenRequest each), claims, and every local volume's files.
    Volumes,
    /// A container's image present or pulled (the lookup of a cached image included).
    ImageReady,
    /// A container's root file system and runtime config: layers, overlay mount, `config.json`.
    ContainerConfig,
    /// The shim and `runc run` until the container's process runs.
    RuncStart,
    /// From the last container start to the pod's Ready condition (the first successful readiness probe).
    FirstProbe,
}

impl StartPhase {
    /// The `phase` label.
    pub fn as_str(self) -> &'static str {
        match self {
            StartPhase::SandboxNetwork => "sandbox_network",
            StartPhase::PodSetup => "pod_setup",
            StartPhase::Volumes => "volumes",
            StartPhase::ImageReady => "image_ready",
            StartPhase::ContainerConfig => "container_config",
            StartPhase::RuncStart => "runc_start",
            StartPhase::FirstProbe => "first_probe",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabels {
    rcode: String,
}

struct Inner {
    registry: Registry,
    pod_start: Histogram,
    running_pods: Gauge,
    running_containers: Gauge,
    restarts: Counter,
    probes: Family<ProbeLabels, Counter>,
    pulls: Family<ResultLabels, Counter>,
    pull_seconds: Histogram,
    operations: Family<OperationLabels, Histogram>,
    phases: Family<PhaseLabels, Histogram>,
    gc_removed: Counter,
    gc_freed: Counter,
    dns: Family<RcodeLabels, Counter>,
    dns_forward: Family<RcodeLabels, Counter>,
    dns_cache_hits: Counter,
    dns_cache_misses: Counter,
}

/// The metrics (cheap to clone).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0].into_iter()
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        Self::with_collectors(Vec::new())
    }

    /// Registers every metric and `collectors` (read at scrape time, e.g. NetworkPolicy flow counters).
    pub fn with_collectors(collectors: Vec<Box<dyn prometheus_client::collector::Collector>>) -> Self {
        let mut registry = Registry::with_prefix("skiff_agent");
        for c in collectors {
            registry.register_collector(c);
        }
        let pod_start = Histogram::new(latency_buckets());
        registry.register(
            "pod_start_duration_seconds",
            "Seconds from the agent first seeing a pod to all its containers running and ready (image pulls included)",
            pod_start.clone(),
        );
        let running_pods = Gauge::default();
        registry.register("running_pods", "Pods with a sandbox on this node", running_pods.clone());
        let running_containers = Gauge::default();
        registry.register("running_containers", "Containers running on this node", running_containers.clone());
        let restarts = Counter::default();
        registry.register("container_restarts", "Container restarts", restarts.clone());
        let probes = Family::<ProbeLabels, Counter>::default();
        registry.register("probe_results", "Probe results by probe type and result", probes.clone());
        let pulls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "image_pulls",
            "Image pulls by result (pulled, present, failed, local_fallback)",
            pulls.clone(),
        );
        let pull_seconds = Histogram::new([0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]);
        registry.register(
            "image_pull_duration_seconds",
            "Seconds spent pulling images from registries",
            pull_seconds.clone(),
        );
        let operations = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
        });
        registry.register(
            "runtime_operation_duration_seconds",
            "Seconds per runtime operation (sandbox, start, stop, exec)",
            operations.clone(),
        );
        let phases = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register(
            "pod_start_phase_duration_seconds",
            "Seconds per step of a pod's first start (sandbox_network, pod_setup, volumes, image_ready, container_config, runc_start, first_probe)",
            phases.clone(),
        );
        let gc_removed = Counter::default();
        registry.register("image_gc_removed_images", "Images removed by image garbage collection", gc_removed.clone());
        let gc_freed = Counter::default();
        registry.register("image_gc_freed_bytes", "Bytes freed by image garbage collection", gc_freed.clone());
        let dns = Family::<RcodeLabels, Counter>::default();
        registry.register("dns_queries", "Cluster DNS queries answered, by response code", dns.clone());
        let dns_forward = Family::<RcodeLabels, Counter>::default();
        registry.register(
            "dns_forward_responses",
            "Answers of the upstream resolvers to forwarded queries, by response code (NODATA: no records; SERVFAIL: none came)",
            dns_forward.clone(),
        );
        let dns_cache_hits = Counter::default();
        registry.register("dns_cache_hits", "Forwarded queries answered from the cache", dns_cache_hits.clone());
        let dns_cache_misses = Counter::default();
        registry.register("dns_cache_misses", "Forwarded queries sent upstream", dns_cache_misses.clone());
        Metrics {
            inner: Arc::new(Inner {
                registry,
                pod_start,
                running_pods,
                running_containers,
                restarts,
                probes,
                pulls,
                pull_seconds,
                operations,
                phases,
                gc_removed,
                gc_freed,
                dns,
                dns_forward,
                dns_cache_hits,
                dns_cache_misses,
            }),
        }
    }

    /// Records a pod start latency.
    pub fn pod_started(&self, secs: f64) {
        self.inner.pod_start.observe(secs);
    }

    /// Sets the running pod and container gauges.
    pub fn set_running(&self, pods: i64, containers: i64) {
        self.inner.running_pods.set(pods);
        self.inner.running_containers.set(containers);
    }

    /// Counts a restart.
    pub fn restart(&self) {
        self.inner.restarts.inc();
    }

    /// Counts a probe result.
    pub fn probe(&self, kind: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.inner.probes.get_or_create(&ProbeLabels { probe_type: kind.to_lowercase(), result: result.into() }).inc();
    }

    /// Counts an image pull outcome and its duration.
    pub fn pull(&self, result: &str, secs: Option<f64>) {
        self.inner.pulls.get_or_create(&ResultLabels { result: result.into() }).inc();
        if let Some(s) = secs {
            self.inner.pull_seconds.observe(s);
        }
    }

    /// Records a runtime operation's duration.
    pub fn operation(&self, op: &str, secs: f64) {
        self.inner.operations.get_or_create(&OperationLabels { operation: op.into() }).observe(secs);
    }

    /// Records how long a step of a pod's first start took.
    pub fn start_phase(&self, phase: StartPhase, secs: f64) {
        self.inner.phases.get_or_create(&PhaseLabels { phase: phase.as_str() }).observe(secs);
    }

    /// Counts what an image garbage collection removed.
    pub fn image_gc(&self, images: u64, bytes: u64) {
        self.inner.gc_removed.inc_by(images);
        self.inner.gc_freed.inc_by(bytes);
    }

    /// Counts a DNS answer.
    pub fn dns(&self, rcode: &str) {
        self.inner.dns.get_or_create(&RcodeLabels { rcode: rcode.into() }).inc();
    }

    /// Counts an answer of the upstream resolvers.
    pub fn dns_forward(&self, rcode: &str) {
        self.inner.dns_forward.get_or_create(&RcodeLabels { rcode: rcode.into() }).inc();
    }

    /// Counts a forwarded query answered from the cache (`true`) or sent upstream.
    pub fn dns_cache(&self, hit: bool) {
        if hit {
            self.inner.dns_cache_hits.inc()
        } else {
            self.inner.dns_cache_misses.inc()
        };
    }

    /// The classic text exposition format ([`skiff_client::metrics::CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        skiff_client::metrics::encode(&self.inner.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_the_agent_prefix() {
        let m = Metrics::new();
        m.pod_started(0.4);
        m.probe("Readiness", false);
        m.pull("present", None);
        m.start_phase(StartPhase::RuncStart, 0.02);
        let text = m.encode();
        assert!(text.contains("skiff_agent_pod_start_phase_duration_seconds_count{phase=\"runc_start\"} 1"), "{text}");
        assert!(text.contains("skiff_agent_pod_start_duration_seconds_bucket"), "{text}");
        assert!(
            text.contains("skiff_agent_probe_results_total{probe_type=\"readiness\",result=\"failure\"} 1"),
            "{text}"
        );
        assert!(text.contains("skiff_agent_image_pulls_total{result=\"present\"} 1"), "{text}");
    }
}

//! The API server's Prometheus metrics (`skiff_apiserver_*`).

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …
    pub verb: String,
    /// Resource (plural), or the path for non-resource requests.
    pub resource: String,
    /// HTTP status code.
    pub code: String,
}

/// Labels of a latency observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// Verb.
    pub verb: String,
    /// Resource.
    pub resource: String,
}

/// All API server metrics.
#[derive(Debug)]
pub struct Metrics {
    /// The registry they are in.
    pub registry: Registry,
    /// Requests by verb, resource and code.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by verb and resource (watches excluded).
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// Open watches.
    pub watches: Gauge<i64, AtomicI64>,
    /// The datastore's current revision.
    pub revision: Gauge<i64, AtomicI64>,
    /// Requests answered 429 because their user had too many in flight.
    pub rejected: Counter,
    /// Requests refused by the authorizer (403).
    pub forbidden: Counter,
    /// Failed controller reconciles, by controller, operation and reason (`skiff_controller_reconcile_errors_total`;
    /// the controllers of this process count into it).
    pub controller_errors: Family<crate::controllers::retry::ErrorLabels, Counter>,
}

/// Bounds fine around 100 ms, the latency the scalability goals hold mutations to (10x under upstream's 1 s SLO),
/// so a p99 read from the histogram tells 110 ms from 240 ms.
fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0])
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Self> {
        let mut root = Registry::default();
        let controller_errors = Family::<crate::controllers::retry::ErrorLabels, Counter>::default();
        root.sub_registry_with_prefix("skiff_controller").register(
            "reconcile_errors",
            "Failed controller reconciles and passes, by controller, operation (sync, status) and reason",
            controller_errors.clone(),
        );
        let registry = root.sub_registry_with_prefix("skiff_apiserver");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "API requests by verb, resource and HTTP code", requests.clone());
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "API request latency (watches excluded)",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let watches = Gauge::<i64, AtomicI64>::default();
        registry.register("watches", "Open watch streams", watches.clone());
        let revision = Gauge::<i64, AtomicI64>::default();
        registry.register("storage_revision", "The datastore's current revision", revision.clone());
        let rejected = Counter::default();
        registry.register(
            "throttled_requests",
            "Requests answered 429: their user had too many in flight",
            rejected.clone(),
        );
        let forbidden = Counter::default();
        registry.register("forbidden_requests", "Requests the authorizer refused (403)", forbidden.clone());
        Arc::new(Metrics {
            registry: root,
            requests,
            latency,
            watches,
            revision,
            rejected,
            forbidden,
            controller_errors,
        })
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        skiff_client::metrics::encode(&self.registry)
    }
}

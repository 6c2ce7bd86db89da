//! Prometheus metrics of the ingress (prometheus-client), all named `skiff_ingress_*`.
//!
//! Request metrics are recorded in Pingora's `logging` phase. Labels of a route are one shared
//! `Arc<RouteLabels>` per route, so recording a request clones an `Arc`, never the strings.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::table::RouteLabels;

/// Labels of a request counter: the route's labels plus method and status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    /// The route (or an empty one for requests no route matched).
    pub route: Arc<RouteLabels>,
    /// The request method (one of the standard ones, or `OTHER`).
    pub method: &'static str,
    /// Response status.
    pub status: u16,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.route.encode(encoder)?;
        ("method", self.method).encode(encoder.encode_label())?;
        ("status", self.status).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for RouteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("namespace", self.namespace.as_str()).encode(encoder.encode_label())?;
        ("ingress", self.ingress.as_str()).encode(encoder.encode_label())?;
        ("host", self.host.as_str()).encode(encoder.encode_label())?;
        ("path", self.path.as_str()).encode(encoder.encode_label())?;
        ("service", self.service.as_str()).encode(encoder.encode_label())
    }
}

/// A route's labels as a label set of their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteLabel(pub Arc<RouteLabels>);

impl EncodeLabelSet for RouteLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// `namespace/name` of a Service, for upstream metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceLabel(pub Arc<str>);

impl EncodeLabelSet for ServiceLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("service", &*self.0).encode(encoder.encode_label())
    }
}

/// A certificate's Secret and the host it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertLabels {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// SNI host.
    pub host: String,
}

impl EncodeLabelSet for CertLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("secret", self.secret.as_str()).encode(encoder.encode_label())?;
        ("host", self.host.as_str()).encode(encoder.encode_label())
    }
}

/// TLS protocol version of a completed handshake.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsLabels {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
}

impl EncodeLabelSet for TlsLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("version", self.version.as_str()).encode(encoder.encode_label())
    }
}

/// Why a connection left the fast path for Pingora's proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HandoverLabels {
    /// A fixed reason (`HTTP/2`, `route needs Pingora's proxy`, `streamed body, upgrade or expectation`, …).
    pub reason: &'static str,
}

impl EncodeLabelSet for HandoverLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("reason", self.reason).encode(encoder.encode_label())
    }
}

/// The per-route metrics that do not depend on the response, resolved once per route and generation.
#[derive(Debug, Clone)]
pub struct RouteHandles {
    /// `request_duration_seconds` of the route.
    pub duration: Histogram,
    /// `request_bytes_total` of the route.
    pub request_bytes: Counter,
    /// `response_bytes_total` of the route.
    pub response_bytes: Counter,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the ingress.
#[derive(Debug)]
pub struct Metrics {
    /// The registry served on the metrics port.
    pub registry: Registry,
    /// `skiff_ingress_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `skiff_ingress_request_duration_seconds`.
    pub request_duration: HistogramFamily<RouteLabel>,
    /// `skiff_ingress_upstream_duration_seconds` (connect to end of response header).
    pub upstream_duration: HistogramFamily<ServiceLabel>,
    /// `skiff_ingress_request_bytes_total`.
    pub request_bytes: Family<RouteLabel, Counter>,
    /// `skiff_ingress_response_bytes_total`.
    pub response_bytes: Family<RouteLabel, Counter>,
    /// `skiff_ingress_active_connections`: open downstream HTTP/1 connections and HTTP/2 streams.
    pub active_connections: Gauge,
    /// `skiff_ingress_active_requests`.
    pub active_requests: Gauge,
    /// `skiff_ingress_upstream_retries_total`.
    pub upstream_retries: Family<ServiceLabel, Counter>,
    /// `skiff_ingress_upstream_ejections_total`.
    pub upstream_ejections: Family<ServiceLabel, Counter>,
    /// `skiff_ingress_tls_handshakes_started_total` (ClientHellos seen).
    pub tls_started: Counter,
    /// `skiff_ingress_tls_handshakes_total` (completed, by version).
    pub tls_handshakes: Family<TlsLabels, Counter>,
    /// `skiff_ingress_tls_default_certificate_total`: handshakes answered with the default certificate.
    pub tls_default_cert: Counter,
    /// `skiff_ingress_certificate_expiry_timestamp_seconds`.
    pub cert_expiry: Family<CertLabels, Gauge>,
    /// `skiff_ingress_config_generation`.
    pub generation: Gauge,
    /// `skiff_ingress_config_apply_duration_seconds`: object change seen → table live.
    pub apply_duration: Histogram,
    /// `skiff_ingress_config_compile_duration_seconds`.
    pub compile_duration: Histogram,
    /// `skiff_ingress_config_problems`: problems in the live table.
    pub problems: Gauge,
    /// `skiff_ingress_config_errors_total`: inputs that could not be read at all (the old table stays).
    pub config_errors: Counter,
    /// `skiff_ingress_fast_path_handovers_total`: client connections the fast path handed to Pingora's proxy.
    pub fast_path_handovers: Family<HandoverLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("skiff_ingress");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            upstream_duration: Family::new_with_constructor(latency),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            active_connections: Gauge::default(),
            active_requests: Gauge::default(),
            upstream_retries: Family::default(),
            upstream_ejections: Family::default(),
            tls_started: Counter::default(),
            tls_handshakes: Family::default(),
            tls_default_cert: Counter::default(),
            cert_expiry: Family::default(),
            generation: Gauge::default(),
            apply_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            compile_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            problems: Gauge::default(),
            config_errors: Counter::default(),
            fast_path_handovers: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("requests", "Requests by route, method and status", m.requests.clone());
        r.register(
            "request_duration_seconds",
            "Time from request start to the end of logging",
            m.request_duration.clone(),
        );
        r.register("upstream_duration_seconds", "Time to the upstream response header", m.upstream_duration.clone());
        r.register("request_bytes", "Request body bytes read from clients", m.request_bytes.clone());
        r.register("response_bytes", "Response body bytes sent to clients", m.response_bytes.clone());
        r.register(
            "active_connections",
            "Open client HTTP/1 connections and HTTP/2 streams",
            m.active_connections.clone(),
        );
        r.register("active_requests", "Requests in progress", m.active_requests.clone());
        r.register("upstream_retries", "Connect failures retried on another endpoint", m.upstream_retries.clone());
        r.register(
            "upstream_ejections",
            "Endpoints ejected after consecutive connect failures",
            m.upstream_ejections.clone(),
        );
        r.register("tls_handshakes_started", "TLS ClientHellos received", m.tls_started.clone());
        r.register("tls_handshakes", "TLS handshakes completed", m.tls_handshakes.clone());
        r.register(
            "tls_default_certificate",
            "Handshakes answered with the default certificate",
            m.tls_default_cert.clone(),
        );
        r.register("certificate_expiry_timestamp_seconds", "Expiry of each served certificate", m.cert_expiry.clone());
        r.register("config_generation", "Generation of the live routing table", m.generation.clone());
        r.register(
            "config_apply_duration_seconds",
            "From an object change being seen to the new table being live",
            m.apply_duration.clone(),
        );
        r.register("config_compile_duration_seconds", "Time to compile the routing table", m.compile_duration.clone());
        r.register("config_problems", "Problems in the live configuration", m.problems.clone());
        r.register(
            "config_errors",
            "Inputs that could not be read (the previous table stayed live)",
            m.config_errors.clone(),
        );
        r.register(
            "fast_path_handovers",
            "Client connections the HTTP/1.1 fast path handed to Pingora's proxy, by reason",
            m.fast_path_handovers.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The handles of a route's metrics.
    pub fn route_handles(&self, labels: &Arc<RouteLabels>) -> RouteHandles {
        let key = RouteLabel(labels.clone());
        RouteHandles {
            duration: self.request_duration.get_or_create_owned(&key),
            request_bytes: self.request_bytes.get_or_create_owned(&key),
            response_bytes: self.response_bytes.get_or_create_owned(&key),
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        skiff_client::metrics::encode(&self.registry)
    }
}

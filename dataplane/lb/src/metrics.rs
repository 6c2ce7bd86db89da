//! Prometheus metrics (`skiff_lb_*`, base units, `_total` counters), and the HTTP endpoint that serves them.
//!
//! Sync metrics are updated by the sync loop; per-service counters and kernel event counters are read from the
//! per-CPU maps at scrape time by a collector with its own handles on the pinned maps.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::{applier::SyncReport, error::LbError, loader::open_pinned, maps::LbMaps, model::ServicePortName};

const LATENCY_BUCKETS: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The balancer's metrics.
#[derive(Debug)]
pub struct LbMetrics {
    registry: Registry,
    /// Duration of one sync (plan + map writes).
    pub sync_duration: Histogram,
    /// Time from receiving an object change to its map writes being done.
    pub programming_latency: Histogram,
    /// Map operations performed.
    pub map_writes: Counter,
    /// Syncs that hit a failed map write.
    pub sync_errors: Counter,
    /// Skips by reason.
    pub skips: Family<Vec<(String, String)>, Counter>,
    /// Services currently skipped in whole or part.
    pub skipped_services: Gauge,
    /// Services with at least one programmed frontend.
    pub services: Gauge,
    /// Programmed frontends.
    pub frontends: Gauge,
    /// Map entries in use, by map.
    pub map_entries: Family<Vec<(String, String)>, Gauge>,
    /// Map capacities, by map.
    pub map_capacity: Family<Vec<(String, String)>, Gauge>,
    /// Generation of the last sync.
    pub generation: Gauge,
    names: Arc<RwLock<HashMap<u32, ServicePortName>>>,
}

impl LbMetrics {
    /// Metrics whose counter collector reads the maps pinned under `pin_dir`.
    pub fn new(pin_dir: PathBuf) -> Arc<Self> {
        let mut registry = Registry::with_prefix("skiff_lb");
        let sync_duration = Histogram::new(LATENCY_BUCKETS);
        let programming_latency = Histogram::new(LATENCY_BUCKETS);
        let names = Arc::new(RwLock::new(HashMap::new()));
        let m = Self {
            sync_duration: sync_duration.clone(),
            programming_latency: programming_latency.clone(),
            map_writes: Counter::default(),
            sync_errors: Counter::default(),
            skips: Family::default(),
            skipped_services: Gauge::default(),
            services: Gauge::default(),
            frontends: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            generation: Gauge::default(),
            names: names.clone(),
            registry: Registry::default(),
        };
        registry.register("sync_duration_seconds", "Duration of one sync of Services to the BPF maps", sync_duration);
        registry.register(
            "programming_latency_seconds",
            "Time from an object change (or file re-read) to its BPF map writes being done",
            programming_latency,
        );
        registry.register("map_writes", "BPF map operations performed", m.map_writes.clone());
        registry.register("sync_errors", "Syncs that hit a failed BPF map write", m.sync_errors.clone());
        registry.register("skips", "Services (or parts) skipped, by reason", m.skips.clone());
        registry.register(
            "skipped_services",
            "Services currently skipped in whole or part",
            m.skipped_services.clone(),
        );
        registry.register("services", "Services with programmed frontends", m.services.clone());
        registry.register("frontends", "Programmed frontends (address, port, protocol, scope)", m.frontends.clone());
        registry.register("map_entries", "Entries in use per BPF map", m.map_entries.clone());
        registry.register("map_capacity", "Capacity (max_entries) per BPF map", m.map_capacity.clone());
        registry.register("generation", "Generation of the last sync", m.generation.clone());
        registry.register_collector(Box::new(MapCollector { pin_dir, maps: Mutex::new(None), names }));
        Arc::new(Self { registry, ..m })
    }

    /// Records a sync.
    pub fn record(&self, report: &SyncReport, applier: &mut crate::applier::Applier) {
        self.sync_duration.observe(report.duration.as_secs_f64());
        self.map_writes.inc_by(report.ops as u64);
        if report.needs_full_sync {
            self.sync_errors.inc();
        }
        for reasons in report.skipped.values() {
            for r in reasons {
                self.skips.get_or_create(&vec![("reason".into(), r.label().into())]).inc();
            }
        }
        let reg = applier.registry();
        self.skipped_services.set(reg.skipped.len() as i64);
        self.services.set(reg.owned.len() as i64);
        self.frontends.set(reg.frontends.len() as i64);
        let c = reg.capacity;
        for (map, used, cap) in [
            ("services", u64::from(reg.service_entries), c.services),
            ("backends", reg.backends.len() as u64, c.backends),
            ("maglev", reg.tables.len() as u64, c.tables),
            ("affinity_match", reg.memberships.len() as u64, c.memberships),
            ("service_ids", reg.port_names.len() as u64, c.service_ids),
        ] {
            let labels = vec![("map".to_string(), map.to_string())];
            self.map_entries.get_or_create(&labels).set(used as i64);
            self.map_capacity.get_or_create(&labels).set(i64::from(cap));
        }
        self.generation.set(i64::from(applier.generation()));
        let events = applier.take_port_events();
        if let Ok(mut names) = self.names.write() {
            match events {
                Some(events) => {
                    for (id, name) in events {
                        match name {
                            Some(n) => names.insert(id, n),
                            None => names.remove(&id),
                        };
                    }
                }
                None => *names = applier.port_names(),
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        skiff_client::metrics::encode(&self.registry)
    }
}

/// Reads per-service and event counters from the pinned maps at scrape time.
#[derive(Debug)]
struct MapCollector {
    pin_dir: PathBuf,
    maps: Mutex<Option<LbMaps>>,
    names: Arc<RwLock<HashMap<u32, ServicePortName>>>,
}

impl Collector for MapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Ok(mut guard) = self.maps.lock() else { return Ok(()) };
        if guard.is_none() {
            *guard = open_pinned(&self.pin_dir).ok();
        }
        let Some(maps) = guard.as_ref() else { return Ok(()) };
        let names = self.names.read().map(|n| n.clone()).unwrap_or_default();
        let mut rows = Vec::new();
        for (id, name) in &names {
            if let Ok(c) = maps.service_counters(*id) {
                let labels = vec![
                    ("namespace".to_string(), name.service.namespace.clone()),
                    ("service".to_string(), name.service.name.clone()),
                    ("port".to_string(), name.port.clone()),
                    ("protocol".to_string(), name.protocol.to_string()),
                ];
                rows.push((labels, c));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        type Pick = fn(&skiff_ebpf_common::Counters) -> u64;
        let families: [(&str, &str, Pick); 4] = [
            ("service_packets", "Packets forwarded by the tc path per Service port", |c| c.packets),
            ("service_bytes", "Bytes (IP length) forwarded by the tc path per Service port", |c| c.bytes),
            ("service_connections", "New connections balanced per Service port (socket hooks and tc path)", |c| {
                c.connections
            }),
            ("service_refused", "Connections refused because the Service port had no endpoints", |c| c.refused),
        ];
        for (name, help, pick) in families {
            let probe = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
            for (labels, c) in &rows {
                let counter = ConstCounter::new(pick(c));
                counter.encode(family.encode_family(labels)?)?;
            }
        }
        if let Ok(events) = maps.nat_events() {
            use skiff_ebpf_common::NatEvent as N;
            let value = |want: N| events.iter().find(|(e, _)| *e == want).map_or(0, |(_, v)| *v);
            let probe = ConstCounter::new(0u64);
            let mut flows = encoder.encode_descriptor(
                "masquerade_flows",
                "Pod flows to outside the cluster translated to the node address",
                None,
                probe.metric_type(),
            )?;
            for (e, proto) in [(N::NewTcp, "TCP"), (N::NewUdp, "UDP"), (N::NewIcmp, "ICMP")] {
                let labels = vec![("protocol".to_string(), proto.to_string())];
                ConstCounter::new(value(e)).encode(flows.encode_family(&labels)?)?;
            }
            let exhausted = encoder.encode_descriptor(
                "masquerade_port_exhausted",
                "New pod flows dropped because no translated port was free towards their peer",
                None,
                probe.metric_type(),
            )?;
            ConstCounter::new(value(N::PortExhausted)).encode(exhausted)?;
            let mut other = encoder.encode_descriptor(
                "masquerade_events",
                "Other masquerade events: ports reused, ICMP errors translated, fragments left untranslated, failed writes",
                None,
                probe.metric_type(),
            )?;
            for e in [N::PortReused, N::IcmpErrorTranslated, N::FragmentUntranslated, N::InsertFailed] {
                let labels = vec![("event".to_string(), e.name().to_string())];
                ConstCounter::new(value(e)).encode(other.encode_family(&labels)?)?;
            }
            drop(other);
            let arp = encoder.encode_descriptor(
                "l2_arp_replies",
                "ARP requests for announced LoadBalancer addresses answered by this node",
                None,
                probe.metric_type(),
            )?;
            ConstCounter::new(value(N::ArpAnswered)).encode(arp)?;
        }
        if let Ok(events) = maps.events() {
            let probe = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "kernel_events",
                "Events counted by the BPF programs (balanced, refused, fragments passed, ...)",
                None,
                probe.metric_type(),
            )?;
            for (e, v) in events {
                let labels = vec![("event".to_string(), e.name().to_string())];
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<LbMetrics>) -> Result<(), LbError> {
    use axum::{Router, http::header, routing::get};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                let body = tokio::task::spawn_blocking(move || metrics.encode()).await.unwrap_or_default();
                ([(header::CONTENT_TYPE, skiff_client::metrics::CONTENT_TYPE)], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| LbError::Metrics { addr, source })?;
    tracing::info!(%addr, "serving metrics");
    axum::serve(listener, app).await.map_err(|source| LbError::Metrics { addr, source })
}

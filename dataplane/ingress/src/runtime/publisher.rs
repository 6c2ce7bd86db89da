//! The one writer of the live table: compiles, swaps, reports problems once, records config metrics.
//!
//! # Guarantees
//! - Applies are serialized; generations increase by one per publish; readers never block.
//! - A problem is logged when it first appears and again only if it goes away and comes back.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::metrics::{CertLabels, Metrics};
use crate::compile::problems::{ObjectRef, Problem};
use crate::compile::{CompileConfig, compile};
use crate::objects::Objects;
use crate::table::{CertStore, RouteTable, State};

/// What one apply did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The generation now live.
    pub generation: u64,
    /// Problems not reported before (log them, record Events).
    pub new_problems: Vec<Problem>,
    /// The Ingresses this controller serves.
    pub ingresses: Vec<ObjectRef>,
    /// Seconds from `seen_at` to the table being live.
    pub apply_seconds: f64,
}

/// Owns the live table.
#[derive(Debug)]
pub struct Publisher {
    table: Arc<ArcSwap<RouteTable>>,
    state: State,
    config: CompileConfig,
    generation: AtomicU64,
    reported: Mutex<BTreeSet<Problem>>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// A publisher whose live table starts empty (everything 404) with `state`'s default certificate.
    pub fn new(config: CompileConfig, state: State, metrics: Arc<Metrics>) -> Self {
        let empty = RouteTable::empty(0, CertStore::new(state.default_cert.clone()));
        Publisher {
            table: Arc::new(ArcSwap::from_pointee(empty)),
            state,
            config,
            generation: AtomicU64::new(0),
            reported: Mutex::default(),
            metrics,
        }
    }

    /// The live table, for the proxy and the TLS resolver.
    pub fn table(&self) -> Arc<ArcSwap<RouteTable>> {
        self.table.clone()
    }

    /// The metrics this publisher records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Compiles `objects` and makes the result live. `seen_at` is when the change that led here was observed.
    pub fn apply(&self, objects: &Objects, seen_at: Instant) -> Applied {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let started = Instant::now();
        let compiled = compile(objects, &self.config, &self.state, generation);
        self.metrics.compile_duration.observe(started.elapsed().as_secs_f64());
        let table = Arc::new(compiled.table);
        self.metrics.cert_expiry.clear();
        for (host, cert) in table.certs.iter() {
            let labels = CertLabels { secret: cert.secret.to_string(), host };
            self.metrics.cert_expiry.get_or_create(&labels).set(cert.not_after);
        }
        self.table.store(table);
        let apply_seconds = seen_at.elapsed().as_secs_f64();
        self.metrics.apply_duration.observe(apply_seconds);
        self.metrics.generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.metrics.problems.set(i64::try_from(compiled.problems.len()).unwrap_or(i64::MAX));
        let now: BTreeSet<Problem> = compiled.problems.into_iter().collect();
        let new_problems: Vec<Problem> = now.difference(&reported).cloned().collect();
        for p in &new_problems {
            tracing::warn!(ingress = %p.ingress, reason = p.reason, "{}", p.message);
        }
        *reported = now;
        tracing::debug!(generation, apply_seconds, "routing table live");
        Applied { generation, new_problems, ingresses: compiled.ingresses, apply_seconds }
    }
}

//! The engine ties the object store, the pure desired-state function and the applier together: the sources (a
//! file, the API server) feed it object changes and it programs the affected Services.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
    time::Instant,
};

use crate::{
    applier::{Applier, SyncReport},
    config::LbConfig,
    desired::{Limits, NodeIdentity},
    error::LbError,
    loader::Dataplane,
    metrics::LbMetrics,
    model::{ServiceName, ServiceTables},
    store::ObjectStore,
};

/// Most rounds of re-syncing Services released from a frontend conflict within one sync.
const MAX_REQUEUE_ROUNDS: usize = 4;

/// The balancer's state machine: objects in, map writes out.
#[derive(Debug)]
pub struct Engine {
    store: ObjectStore,
    applier: Applier,
    node: NodeIdentity,
    limits: Limits,
    metrics: Arc<LbMetrics>,
}

impl Engine {
    /// Loads and attaches the programs (or resumes from pinned ones) and prepares to sync.
    pub fn start(config: &LbConfig, metrics: Arc<LbMetrics>) -> Result<Self, LbError> {
        let dataplane = Dataplane::open(config)?;
        let resumed = dataplane.resumed;
        let applier = Applier::new(dataplane, config)?;
        tracing::info!(
            resumed,
            frontends = applier.registry().frontends.len(),
            pin_dir = %config.pin_dir.display(),
            "load balancer started"
        );
        Ok(Self { store: ObjectStore::default(), applier, node: config.node.clone(), limits: config.limits, metrics })
    }

    /// The objects.
    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    /// The objects, for the sources to update.
    pub fn store_mut(&mut self) -> &mut ObjectStore {
        &mut self.store
    }

    /// The applier.
    pub fn applier(&self) -> &Applier {
        &self.applier
    }

    /// The metrics this engine records into.
    pub fn metrics(&self) -> &Arc<LbMetrics> {
        &self.metrics
    }

    /// The desired tables of one Service as the store has it now.
    pub fn desired(&self, name: &ServiceName) -> Option<ServiceTables> {
        self.store.tables(name, &self.node, &self.limits)
    }

    /// Programs every Service in the store and removes everything else. `since`: when the triggering change was
    /// received (for the latency metric).
    pub fn full_sync(&mut self, since: Option<Instant>) -> SyncReport {
        let mut changes: Vec<(ServiceName, Option<ServiceTables>)> =
            self.store.all_tables(&self.node, &self.limits).into_iter().map(|(n, t)| (n, Some(t))).collect();
        let present: HashSet<&ServiceName> = changes.iter().map(|(n, _)| n).collect();
        let gone: Vec<ServiceName> =
            self.applier.registry().owned.keys().filter(|n| !present.contains(n)).cloned().collect();
        changes.extend(gone.into_iter().map(|n| (n, None)));
        let report = self.applier.sync(changes, true);
        self.after(&report, since);
        report
    }

    /// Programs the given Services (after their objects changed). Runs a full sync instead if none ran yet, or if
    /// a write failed.
    pub fn sync(&mut self, names: BTreeSet<ServiceName>, since: Option<Instant>) -> SyncReport {
        if !self.applier.synced_once() {
            return self.full_sync(since);
        }
        let mut pending = names;
        let mut total = SyncReport::default();
        for _ in 0..MAX_REQUEUE_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let changes = pending.iter().map(|n| (n.clone(), self.desired(n))).collect();
            let report = self.applier.sync(changes, false);
            self.after(&report, since);
            let needs_full = report.needs_full_sync;
            pending = report.requeue.iter().cloned().collect();
            merge(&mut total, report);
            if needs_full {
                let full = self.full_sync(since);
                merge(&mut total, full);
                break;
            }
        }
        total
    }

    fn after(&mut self, report: &SyncReport, since: Option<Instant>) {
        self.metrics.record(report, &mut self.applier);
        if let Some(since) = since {
            self.metrics.programming_latency.observe(since.elapsed().as_secs_f64());
        }
        for (name, reasons) in &report.skipped {
            for r in reasons {
                tracing::warn!(service = %name, reason = %r, "service skipped (in whole or part)");
            }
        }
        tracing::debug!(
            services = report.services,
            ops = report.ops,
            changed = report.changed_frontends,
            removed = report.removed_frontends,
            duration_us = report.duration.as_micros() as u64,
            generation = self.applier.generation(),
            "synced"
        );
    }
}

fn merge(total: &mut SyncReport, r: SyncReport) {
    total.services += r.services;
    total.ops += r.ops;
    total.changed_frontends += r.changed_frontends;
    total.removed_frontends += r.removed_frontends;
    total.skipped.extend(r.skipped);
    total.needs_full_sync |= r.needs_full_sync;
    total.duration += r.duration;
}

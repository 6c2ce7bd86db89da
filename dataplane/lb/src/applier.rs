//! The applier: plans each changed Service against the registry and performs the writes on the maps, in order.
//!
//! # Guarantees
//! - Work is proportional to what changed: a Service whose desired tables equal what is programmed costs a compare
//!   and no write.
//! - A Service that does not fit (map full, too many ports or backends) or conflicts with another is skipped and
//!   reported; others are unaffected.
//! - When a write fails unexpectedly, the registry is rebuilt from the maps (the kernel's truth) and the caller is
//!   told to run a full sync; nothing is left half-known.
//! - The first full sync after a restart removes what the pinned maps hold that no Service claims.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use skiff_ebpf_common::Config;

use crate::{
    config::LbConfig,
    error::LbError,
    loader::Dataplane,
    maglev,
    maps::LbMaps,
    model::{ServiceName, ServicePortName, ServiceTables, SkipReason},
    ops::Op,
    plan::{Plan, plan_repair, plan_service, plan_unclaimed},
    registry::{Capacity, Registry},
};

/// What one sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    /// Services planned.
    pub services: usize,
    /// Map operations performed.
    pub ops: usize,
    /// Frontends written.
    pub changed_frontends: usize,
    /// Frontends removed.
    pub removed_frontends: usize,
    /// Services skipped in whole or part, with why.
    pub skipped: BTreeMap<ServiceName, Vec<SkipReason>>,
    /// Services to sync again (they were blocked on a frontend that was released).
    pub requeue: Vec<ServiceName>,
    /// A write failed; the registry was rebuilt from the maps and a full sync is needed.
    pub needs_full_sync: bool,
    /// How long it took.
    pub duration: Duration,
}

/// Applies desired tables to the maps.
#[derive(Debug)]
pub struct Applier {
    maps: LbMaps,
    reg: Registry,
    generation: u32,
    synced_once: bool,
    config: Config,
    names_reset: bool,
}

impl Applier {
    /// Takes over a loaded dataplane; resumes from its maps if they were pinned before.
    pub fn new(dataplane: Dataplane, config: &LbConfig) -> Result<Self, LbError> {
        let mut maps = dataplane.maps;
        let capacity = capacity(config);
        let (reg, generation) = if dataplane.resumed {
            let contents = maps.read_contents()?;
            let generation = maps.read_config()?.generation;
            (Registry::from_maps(capacity, config.maglev_table_size, contents, maglev::fingerprint), generation)
        } else {
            (Registry::new(capacity, config.maglev_table_size), 0)
        };
        let node_config = Config {
            snat_addr: config.snat().map(|a| u32::from(a).to_be()).unwrap_or(0),
            nat_port_min: config.snat_ports.0,
            nat_port_max: config.snat_ports.1,
            generation,
            flags: 0,
        };
        maps.write_config(&node_config)?;
        let nat_writes = maps.write_nat(&crate::nat::config_value(config), &crate::nat::exclusions(config))?;
        if nat_writes > 0 {
            tracing::info!(masquerade = ?config.masquerade, writes = nat_writes, "pod egress masquerade programmed");
        }
        Ok(Self { maps, reg, generation, synced_once: false, config: node_config, names_reset: true })
    }

    /// The registry (what is programmed).
    pub fn registry(&self) -> &Registry {
        &self.reg
    }

    /// The maps.
    pub fn maps(&self) -> &LbMaps {
        &self.maps
    }

    /// The generation of the last completed sync.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether a full sync has completed since start.
    pub fn synced_once(&self) -> bool {
        self.synced_once
    }

    /// Port name changes since the last call (see [`Registry::take_port_events`]); `None` when the registry was
    /// rebuilt and the caller should take [`Applier::port_names`] instead.
    pub fn take_port_events(&mut self) -> Option<Vec<(u32, Option<ServicePortName>)>> {
        if std::mem::take(&mut self.names_reset) {
            self.reg.take_port_events();
            return None;
        }
        Some(self.reg.take_port_events())
    }

    /// Service port ids and names, for metrics.
    pub fn port_names(&self) -> HashMap<u32, ServicePortName> {
        self.reg.ports.iter().map(|(name, p)| (p.id, name.clone())).collect()
    }

    /// Programs the given Services (`None`: deleted). With `full`, this is the complete set of Services: afterwards
    /// everything no Service claimed is removed.
    pub fn sync(&mut self, changes: Vec<(ServiceName, Option<ServiceTables>)>, full: bool) -> SyncReport {
        let start = Instant::now();
        let mut report = SyncReport::default();
        self.generation = self.generation.wrapping_add(1);
        if !self.synced_once {
            let plan = plan_repair(&mut self.reg);
            if !self.perform(&plan, &mut report) {
                return self.finish(report, start);
            }
        }
        for (name, desired) in changes {
            report.services += 1;
            let plan = plan_service(&mut self.reg, &name, desired.as_ref(), self.generation);
            report.changed_frontends += plan.changed_frontends;
            report.removed_frontends += plan.removed_frontends;
            report.requeue.extend(plan.requeue.iter().cloned());
            if !plan.skipped.is_empty() {
                report.skipped.insert(name.clone(), plan.skipped.clone());
            }
            if !self.perform(&plan, &mut report) {
                report.skipped.entry(name).or_default().push(SkipReason::Failed("map write failed".into()));
                return self.finish(report, start);
            }
        }
        if full {
            let plan = plan_unclaimed(&mut self.reg);
            report.removed_frontends += plan.removed_frontends;
            if !self.perform(&plan, &mut report) {
                return self.finish(report, start);
            }
            self.synced_once = true;
        }
        self.config.generation = self.generation;
        if let Err(e) = self.maps.write_config(&self.config) {
            tracing::warn!(error = %e, "writing the generation failed");
        }
        self.finish(report, start)
    }

    fn finish(&self, mut report: SyncReport, start: Instant) -> SyncReport {
        report.duration = start.elapsed();
        report
    }

    /// Performs a plan's operations in order. On failure rebuilds the registry from the maps and returns false.
    fn perform(&mut self, plan: &Plan, report: &mut SyncReport) -> bool {
        for op in &plan.ops {
            match self.maps.execute(op) {
                Ok(()) => report.ops += 1,
                Err(e) => {
                    tracing::error!(error = %error_chain(&e), op = ?short(op), "map write failed; resynchronising from the maps");
                    self.rebuild();
                    report.needs_full_sync = true;
                    return false;
                }
            }
        }
        true
    }

    /// Rebuilds the registry from the maps (after a failed write).
    fn rebuild(&mut self) {
        let capacity = self.reg.capacity;
        let size = self.reg.maglev_size;
        match self.maps.read_contents() {
            Ok(contents) => {
                self.reg = Registry::from_maps(capacity, size, contents, maglev::fingerprint);
                self.synced_once = false;
                self.names_reset = true;
            }
            Err(e) => tracing::error!(error = %error_chain(&e), "reading the maps back failed"),
        }
    }
}

fn capacity(config: &LbConfig) -> Capacity {
    let s = &config.map_sizes;
    Capacity {
        services: s.services,
        backends: s.backends,
        tables: s.tables,
        memberships: s.memberships,
        service_ids: s.service_ids,
    }
}

fn short(op: &Op) -> String {
    match op {
        Op::CreateTable { id, size, backends } => {
            format!("CreateTable {{ id: {id}, size: {size}, backends: {} }}", backends.len())
        }
        other => format!("{other:?}"),
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

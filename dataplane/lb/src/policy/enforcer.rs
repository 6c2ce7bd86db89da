//! The thin executor: keeps the pinned policy maps equal to the compiler's tables.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use super::{
    maps::PolicyMaps,
    model::PolicyTables,
    plan::{PolicyOp, Programmed, after, plan},
};
use crate::error::LbError;

/// The policy maps and what they hold.
#[derive(Debug)]
pub struct Enforcer {
    maps: PolicyMaps,
    programmed: Programmed,
}

impl Enforcer {
    /// Opens the maps pinned under `pin_dir` and reads back what they hold (after an agent restart: what the last
    /// run programmed, which stays enforced meanwhile).
    pub fn open(pin_dir: &Path) -> Result<Self, LbError> {
        let maps = PolicyMaps::open(pin_dir)?;
        let programmed = maps.read()?;
        Ok(Self { maps, programmed })
    }

    /// What the maps hold.
    pub fn programmed(&self) -> &Programmed {
        &self.programmed
    }

    /// The maps (counters, generation).
    pub fn maps(&self) -> &PolicyMaps {
        &self.maps
    }

    /// Writes what differs between the maps and `tables` (pods located by `veths`: address → host-side ifindex);
    /// returns how many writes it took. A failed write leaves the maps in a state the plan's order makes safe (no
    /// more open than before or after); what is programmed is read back, and the next sync finishes the job.
    pub fn sync(&mut self, tables: &PolicyTables, veths: &BTreeMap<Ipv4Addr, u32>) -> Result<usize, LbError> {
        let ops = plan(&self.programmed, tables, veths);
        for op in &ops {
            if let Err(e) = self.maps.execute(op) {
                // What was written is a prefix of a safe order; tracked flows are judged again under it.
                let _ = self.maps.execute(&PolicyOp::BumpGeneration);
                self.programmed = self.maps.read()?;
                return Err(e);
            }
        }
        after(&mut self.programmed, &ops);
        if ops.iter().any(|op| matches!(op, PolicyOp::DeleteEndpoint(_))) {
            // Counters of pods that are gone would otherwise fill the counters map for good.
            let live: BTreeSet<u32> = self.programmed.endpoints.values().map(|e| e.addr).collect();
            self.maps.prune_stats(&live)?;
        }
        Ok(ops.len())
    }
}

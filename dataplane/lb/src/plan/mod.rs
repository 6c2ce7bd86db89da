//! The planner: the difference between what is programmed for a Service ([`Registry`]) and what is desired for it
//! ([`ServiceTables`]), as an ordered list of map operations. Pure (no I/O): it updates the registry as if the
//! operations succeeded; the applier rebuilds the registry from the maps if they do not.
//!
//! # Guarantees
//! - Only frontends that changed are written; an unchanged Service produces no operations.
//! - Operations are ordered by [`crate::ops::phase`]: everything a header names exists before the header is
//!   written and is removed only after the last header naming it is gone or rewritten.
//! - Slots that need a new map entry are written before slots that overwrite one, so a full map fails the plan
//!   before anything visible changed.
//! - A Service that would not fit in the maps is skipped as a whole and keeps what it had.

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use skiff_ebpf_common::{AffinityMatchKey, BACKEND_F_DRAINING, Backend, ServiceValue};

use crate::{
    model::{BackendAddr, FrontendKey, ServiceName, ServicePortName, ServiceTables, SkipReason},
    ops::{Op, phase},
    registry::{BackendEntry, PortEntry, ProgrammedFrontend, Registry, TableEntry, TableKey, sorted},
};

/// The operations for one change, and what the applier should know about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The map writes, in order.
    pub ops: Vec<Op>,
    /// What of the Service is not programmed, and why.
    pub skipped: Vec<SkipReason>,
    /// Services that were blocked on a frontend this plan released: sync them next.
    pub requeue: Vec<ServiceName>,
    /// Frontends written (new or changed).
    pub changed_frontends: usize,
    /// Frontends removed.
    pub removed_frontends: usize,
}

/// Entities whose reference count dropped during a plan; those at zero are deleted at the end.
#[derive(Default)]
struct Dropped {
    backends: HashSet<u32>,
    tables: HashSet<TableKey>,
    memberships: HashSet<AffinityMatchKey>,
    ports: HashSet<u32>,
}

fn same_state(a: &ServiceValue, b: &ServiceValue) -> bool {
    ServiceValue { generation: 0, ..*a } == ServiceValue { generation: 0, ..*b }
}

fn backend_value(addr: &BackendAddr, flags: u8) -> Backend {
    Backend { addr: u32::from(addr.addr).to_be(), port: addr.port.to_be(), proto: addr.protocol.number(), flags }
}

/// Plans the change of Service `name` to `desired` (`None`: the Service is gone). `generation` is stamped into every
/// header written.
pub fn plan_service(reg: &mut Registry, name: &ServiceName, desired: Option<&ServiceTables>, generation: u32) -> Plan {
    let mut plan = Plan::default();
    let empty = ServiceTables::default();
    let desired = desired.unwrap_or(&empty);
    plan.skipped = desired.skipped.clone();

    // Which desired frontends this Service may have (another Service may hold one already).
    let mut included: Vec<(&FrontendKey, &crate::model::Frontend)> = Vec::new();
    for (key, f) in &desired.frontends {
        match reg.frontends.get(key).and_then(|p| p.owner.as_ref()) {
            Some(owner) if owner != name => {
                plan.skipped.push(SkipReason::FrontendConflict { frontend: *key, owner: owner.clone() });
                reg.blocked.entry(*key).or_default().insert(name.clone());
            }
            _ => included.push((key, f)),
        }
    }
    reg.blocked.retain(|key, waiting| {
        if !desired.frontends.contains_key(key) {
            waiting.remove(name);
        }
        !waiting.is_empty()
    });

    if let Some(full) = over_capacity(reg, &included) {
        plan.skipped.push(full);
        record_skips(reg, name, &plan.skipped);
        return plan;
    }

    let mut ops = Vec::new();
    let mut dropped = Dropped::default();
    let mut written_backends: HashSet<u32> = HashSet::new();
    let keep: BTreeSet<FrontendKey> = included.iter().map(|(k, _)| **k).collect();

    for (key, f) in &included {
        let service_id = port_id(reg, &f.port, key, &mut ops);
        let mut slots = Vec::with_capacity(f.backends.len());
        for addr in &f.backends {
            let flags = desired.backends.get(addr).map(|i| i.flags()).unwrap_or(0);
            let value = backend_value(addr, flags);
            let id = match reg.backends.get_mut(addr) {
                Some(e) => {
                    if e.value != value && written_backends.insert(e.id) {
                        e.value = value;
                        ops.push(Op::PutBackend { id: e.id, value });
                    }
                    e.id
                }
                None => {
                    let Some(id) = reg.backend_ids.take() else {
                        // Checked by over_capacity; an exhausted pool here means the registry is inconsistent.
                        plan.skipped.push(SkipReason::MapFull { map: "backends", capacity: reg.capacity.backends });
                        continue;
                    };
                    reg.backends.insert(*addr, BackendEntry { id, value, refs: 0, listed: 0 });
                    reg.backend_addrs.insert(id, *addr);
                    written_backends.insert(id);
                    ops.push(Op::PutBackend { id, value });
                    ops.push(Op::ResetBackendStats(id));
                    id
                }
            };
            slots.push(id);
        }
        // Keep each backend in the slot it had, so replacing one endpoint rewrites one slot, not all that follow.
        let slots = stable_slots(reg.frontends.get(*key).map(|o| o.slots.as_slice()), &slots);
        let size = reg.maglev_size;
        let table_id = if slots.len() >= 2 {
            let tkey: TableKey = (sorted(&slots), size);
            match reg.tables.get(&tkey) {
                Some(t) => t.id,
                None => match reg.table_ids.take() {
                    Some(id) => {
                        reg.tables.insert(tkey, TableEntry { id, refs: 0 });
                        // The table is built over the backends in address order (what every node does).
                        let backends =
                            f.backends.iter().filter_map(|a| reg.backends.get(a).map(|e| (*a, e.id))).collect();
                        ops.push(Op::CreateTable { id, size, backends: Arc::new(backends) });
                        id
                    }
                    None => 0,
                },
            }
        } else {
            0
        };
        let header = ServiceValue {
            backend_id: 0,
            service_id,
            table_id,
            table_size: if table_id != 0 { size } else { 0 },
            affinity_timeout: f.affinity_timeout,
            generation,
            count: slots.len() as u16,
            flags: f.flags(),
            pad: 0,
        };
        let old = reg.frontends.get(*key).cloned();
        if let Some(old) = &old
            && same_state(&old.header, &header)
            && old.slots == slots
        {
            if old.owner.as_ref() != Some(name)
                && let Some(p) = reg.frontends.get_mut(*key)
            {
                p.owner = Some(name.clone());
            }
            continue;
        }
        add_refs(reg, &header, &slots, &mut ops);
        let old_count = old.as_ref().map(|o| o.slots.len()).unwrap_or(0);
        let old_service = old.as_ref().map(|o| o.header.service_id).unwrap_or(0);
        // New entries first (they can fail on a full map), then overwrites.
        for (i, id) in slots.iter().enumerate().skip(old_count) {
            ops.push(Op::PutSlot(key.map_key(i as u16 + 1), slot_value(*id, service_id)));
        }
        for (i, id) in slots.iter().enumerate().take(old_count) {
            let unchanged = old.as_ref().is_some_and(|o| o.slots[i] == *id) && old_service == service_id;
            if !unchanged {
                ops.push(Op::PutSlot(key.map_key(i as u16 + 1), slot_value(*id, service_id)));
            }
        }
        ops.push(Op::PutHeader(key.map_key(0), header));
        for slot in slots.len() + 1..=old_count {
            ops.push(Op::DeleteSlot(key.map_key(slot as u16)));
        }
        if let Some(old) = &old {
            drop_refs(reg, &old.header, &old.slots, &mut dropped);
        }
        reg.service_entries =
            reg.service_entries + 1 + slots.len() as u32 - old.as_ref().map_or(0, |o| 1 + o.slots.len() as u32);
        reg.frontends.insert(**key, ProgrammedFrontend { owner: Some(name.clone()), header, slots });
        plan.changed_frontends += 1;
    }

    // Frontends this Service had and no longer wants.
    let before = reg.owned.remove(name).unwrap_or_default();
    for key in before.difference(&keep) {
        if let Some(old) = reg.frontends.remove(key) {
            remove_frontend(reg, key, &old, &mut ops, &mut dropped);
            plan.removed_frontends += 1;
            if let Some(waiting) = reg.blocked.remove(key) {
                plan.requeue.extend(waiting);
            }
        }
    }
    if !keep.is_empty() {
        reg.owned.insert(name.clone(), keep);
    }
    keep_listed(reg, name, desired, &mut dropped, &mut ops);
    collect(reg, &mut dropped, &mut ops);
    ops.sort_by_key(phase);
    plan.ops = ops;
    record_skips(reg, name, &plan.skipped);
    plan
}

/// Holds one reference, for Service `name`, on the backend of every endpoint it lists that has one, and lets go of
/// those it no longer lists. A flow the tc path tracks follows its backend while the backend exists, so an endpoint
/// that stops being selected (terminating, or failing its readiness probe) keeps its established connections, as
/// kube-proxy's conntrack entries keep them, until it leaves the EndpointSlice. No backend is created here: one that
/// no frontend ever selected carries no flow. A kept backend's flags follow its endpoint, and a backend that only
/// listings keep is marked draining (the tc path balances a SYN reusing one of its flows' tuples again).
fn keep_listed(
    reg: &mut Registry,
    name: &ServiceName,
    desired: &ServiceTables,
    dropped: &mut Dropped,
    ops: &mut Vec<Op>,
) {
    let listed: BTreeSet<BackendAddr> =
        desired.backends.keys().filter(|a| reg.backends.contains_key(*a)).copied().collect();
    let before = reg.listed.remove(name).unwrap_or_default();
    for addr in listed.difference(&before) {
        if let Some(e) = reg.backends.get_mut(addr) {
            e.refs += 1;
            e.listed += 1;
        }
    }
    for addr in before.difference(&listed) {
        if let Some(e) = reg.backends.get_mut(addr) {
            e.refs = e.refs.saturating_sub(1);
            e.listed = e.listed.saturating_sub(1);
            dropped.backends.insert(e.id);
        }
    }
    for (addr, info) in &desired.backends {
        if let Some(e) = reg.backends.get_mut(addr) {
            set_flags(e, addr, info.flags(), ops);
        }
    }
    // Backends this plan took out of slots (or stopped listing) that other listings still keep are draining now.
    for id in &dropped.backends {
        let Some(addr) = reg.backend_addrs.get(id).copied() else { continue };
        if let Some(e) = reg.backends.get_mut(&addr).filter(|e| e.id == *id && e.refs > 0) {
            let flags = e.value.flags & !BACKEND_F_DRAINING;
            set_flags(e, &addr, flags, ops);
        }
    }
    if !listed.is_empty() {
        reg.listed.insert(name.clone(), listed);
    }
}

/// Writes backend `e` with `flags`, plus the draining flag when only listings keep it, if that changes its value.
fn set_flags(e: &mut BackendEntry, addr: &BackendAddr, flags: u8, ops: &mut Vec<Op>) {
    let draining = if e.refs > 0 && e.refs == e.listed { BACKEND_F_DRAINING } else { 0 };
    let value = backend_value(addr, flags | draining);
    if e.value != value {
        e.value = value;
        ops.push(Op::PutBackend { id: e.id, value });
    }
}

/// Plans the removal of everything found in the pinned maps that no Service claimed during the first full sync.
pub fn plan_unclaimed(reg: &mut Registry) -> Plan {
    let mut plan = Plan::default();
    let mut ops = Vec::new();
    let mut dropped = Dropped::default();
    for key in reg.unclaimed() {
        if let Some(old) = reg.frontends.remove(&key) {
            remove_frontend(reg, &key, &old, &mut ops, &mut dropped);
            plan.removed_frontends += 1;
        }
    }
    let garbage = std::mem::take(&mut reg.garbage);
    for key in garbage.slots {
        ops.push(Op::DeleteSlot(key));
        reg.service_entries = reg.service_entries.saturating_sub(1);
    }
    for (id, size) in garbage.tables {
        if !reg.tables.values().any(|t| t.id == id) {
            ops.push(Op::DeleteTable { id, size });
            reg.table_ids.put(id);
        }
    }
    for m in garbage.memberships {
        if !reg.memberships.contains_key(&m) {
            ops.push(Op::DeleteMembership(m));
        }
    }
    for id in garbage.backends {
        let addr = reg.backend_addrs.get(&id).copied();
        match addr.and_then(|a| reg.backends.get(&a)).filter(|e| e.id == id) {
            // a Service uses or lists it now
            Some(e) if e.refs > 0 => continue,
            Some(_) => {
                if let Some(a) = addr {
                    reg.backends.remove(&a);
                }
                reg.backend_addrs.remove(&id);
            }
            None => {}
        }
        ops.push(Op::DeleteBackend(id));
        reg.backend_ids.put(id);
    }
    collect(reg, &mut dropped, &mut ops);
    ops.sort_by_key(phase);
    plan.ops = ops;
    plan
}

/// Plans the repair of memberships that restored frontends imply but the map lacks.
pub fn plan_repair(reg: &mut Registry) -> Plan {
    let missing = std::mem::take(&mut reg.garbage.missing_memberships);
    Plan { ops: missing.into_iter().map(Op::PutMembership).collect(), ..Plan::default() }
}

/// The slot order for `ids`: ids that already had a slot below the new count keep it; the others fill the gaps.
fn stable_slots(old: Option<&[u32]>, ids: &[u32]) -> Vec<u32> {
    let Some(old) = old else { return ids.to_vec() };
    let wanted: HashSet<u32> = ids.iter().copied().collect();
    let mut out: Vec<Option<u32>> = vec![None; ids.len()];
    let mut placed = HashSet::new();
    for (i, id) in old.iter().enumerate().take(ids.len()) {
        if wanted.contains(id) && placed.insert(*id) {
            out[i] = Some(*id);
        }
    }
    let mut rest = ids.iter().filter(|id| !placed.contains(id));
    out.into_iter().map(|s| s.or_else(|| rest.next().copied()).unwrap_or(0)).collect()
}

fn slot_value(backend_id: u32, service_id: u32) -> ServiceValue {
    ServiceValue { backend_id, service_id, ..ServiceValue::default() }
}

fn record_skips(reg: &mut Registry, name: &ServiceName, skipped: &[SkipReason]) {
    if skipped.is_empty() {
        reg.skipped.remove(name);
    } else {
        reg.skipped.insert(name.clone(), skipped.to_vec());
    }
}

/// The id of a service port: known, adopted from a restored frontend at the same key, or new.
fn port_id(reg: &mut Registry, port: &ServicePortName, key: &FrontendKey, ops: &mut Vec<Op>) -> u32 {
    if let Some(p) = reg.ports.get(port) {
        return p.id;
    }
    let restored = reg.frontends.get(key).filter(|f| f.owner.is_none()).map(|f| f.header.service_id);
    if let Some(id) = restored.filter(|id| *id != 0 && matches!(reg.port_names.get(id), Some(None))) {
        let refs = reg.anonymous_port_refs.remove(&id).unwrap_or(0);
        reg.name_port(id, port.clone());
        reg.ports.insert(port.clone(), PortEntry { id, refs });
        return id;
    }
    match reg.port_ids.take() {
        Some(id) => {
            reg.name_port(id, port.clone());
            reg.ports.insert(port.clone(), PortEntry { id, refs: 0 });
            ops.push(Op::ResetServiceStats(id));
            id
        }
        // Checked by over_capacity.
        None => 0,
    }
}

fn add_refs(reg: &mut Registry, header: &ServiceValue, slots: &[u32], ops: &mut Vec<Op>) {
    port_refs(reg, header.service_id, 1);
    let distinct: BTreeSet<u32> = slots.iter().copied().collect();
    for id in &distinct {
        if let Some(e) = reg.backend_addrs.get(id).and_then(|a| reg.backends.get_mut(a)) {
            e.refs += 1;
        }
        let m = AffinityMatchKey { backend_id: *id, service_id: header.service_id };
        let refs = reg.memberships.entry(m).or_default();
        *refs += 1;
        if *refs == 1 {
            ops.push(Op::PutMembership(m));
        }
    }
    if header.table_id != 0
        && let Some(t) = reg.tables.get_mut(&(sorted(slots), header.table_size))
    {
        t.refs += 1;
    }
}

fn drop_refs(reg: &mut Registry, header: &ServiceValue, slots: &[u32], dropped: &mut Dropped) {
    port_refs(reg, header.service_id, -1);
    dropped.ports.insert(header.service_id);
    let distinct: BTreeSet<u32> = slots.iter().copied().collect();
    for id in &distinct {
        if let Some(e) = reg.backend_addrs.get(id).and_then(|a| reg.backends.get_mut(a))
            && e.id == *id
        {
            e.refs = e.refs.saturating_sub(1);
            dropped.backends.insert(*id);
        }
        let m = AffinityMatchKey { backend_id: *id, service_id: header.service_id };
        if let Some(r) = reg.memberships.get_mut(&m) {
            *r = r.saturating_sub(1);
            dropped.memberships.insert(m);
        }
    }
    let tkey = (sorted(slots), header.table_size);
    if header.table_id != 0
        && let Some(t) = reg.tables.get_mut(&tkey)
        && t.id == header.table_id
    {
        t.refs = t.refs.saturating_sub(1);
        dropped.tables.insert(tkey);
    }
}

fn port_refs(reg: &mut Registry, id: u32, delta: i32) {
    match reg.port_names.get(&id) {
        Some(Some(name)) => {
            if let Some(p) = reg.ports.get_mut(name) {
                p.refs = p.refs.saturating_add_signed(delta);
            }
        }
        Some(None) => {
            let r = reg.anonymous_port_refs.entry(id).or_default();
            *r = r.saturating_add_signed(delta);
        }
        None => {}
    }
}

fn remove_frontend(
    reg: &mut Registry,
    key: &FrontendKey,
    old: &ProgrammedFrontend,
    ops: &mut Vec<Op>,
    dropped: &mut Dropped,
) {
    ops.push(Op::DeleteHeader(key.map_key(0)));
    for slot in 1..=old.slots.len() {
        ops.push(Op::DeleteSlot(key.map_key(slot as u16)));
    }
    reg.service_entries = reg.service_entries.saturating_sub(1 + old.slots.len() as u32);
    drop_refs(reg, &old.header, &old.slots, dropped);
}

/// Deletes what dropped to zero references.
fn collect(reg: &mut Registry, dropped: &mut Dropped, ops: &mut Vec<Op>) {
    for tkey in dropped.tables.drain() {
        if let Some(t) = reg.tables.get(&tkey).filter(|t| t.refs == 0) {
            let id = t.id;
            let size = tkey.1;
            reg.tables.remove(&tkey);
            reg.table_ids.put(id);
            ops.push(Op::DeleteTable { id, size });
        }
    }
    for m in dropped.memberships.drain() {
        if reg.memberships.get(&m) == Some(&0) {
            reg.memberships.remove(&m);
            ops.push(Op::DeleteMembership(m));
        }
    }
    for id in dropped.backends.drain() {
        let Some(addr) = reg.backend_addrs.get(&id).copied() else { continue };
        if reg.backends.get(&addr).is_some_and(|e| e.id == id && e.refs == 0) {
            reg.backends.remove(&addr);
            reg.backend_addrs.remove(&id);
            reg.backend_ids.put(id);
            ops.push(Op::DeleteBackend(id));
        }
    }
    for id in dropped.ports.drain() {
        match reg.port_names.get(&id).cloned() {
            Some(Some(name)) if reg.ports.get(&name).is_some_and(|p| p.refs == 0) => {
                reg.ports.remove(&name);
                reg.unname_port(id);
                reg.port_ids.put(id);
            }
            Some(None) if reg.anonymous_port_refs.get(&id).is_none_or(|r| *r == 0) => {
                reg.anonymous_port_refs.remove(&id);
                reg.unname_port(id);
                reg.port_ids.put(id);
            }
            _ => {}
        }
    }
}

/// Whether the desired frontends of a Service would overflow a map; an upper bound of what the plan adds.
fn over_capacity(reg: &Registry, included: &[(&FrontendKey, &crate::model::Frontend)]) -> Option<SkipReason> {
    let cap = reg.capacity;
    let mut entries = 0u64;
    let mut tables = 0u64;
    let mut new_ports: HashSet<&ServicePortName> = HashSet::new();
    let mut pairs: HashSet<(&ServicePortName, &BackendAddr)> = HashSet::new();
    for (key, f) in included {
        let old = reg.frontends.get(*key).map_or(0, |o| o.slots.len() as u64 + 1);
        entries += (f.backends.len() as u64 + 1).saturating_sub(old);
        if f.backends.len() >= 2 {
            tables += 1;
        }
        if !reg.ports.contains_key(&f.port) {
            new_ports.insert(&f.port);
        }
        for b in &f.backends {
            pairs.insert((&f.port, b));
        }
    }
    // Only the backends frontends select are created (listed ones are only kept).
    let new_backends =
        pairs.iter().map(|(_, b)| *b).filter(|b| !reg.backends.contains_key(*b)).collect::<HashSet<_>>().len() as u64;
    let checks: [(&'static str, u64, u64, u32); 5] = [
        ("services", u64::from(reg.service_entries), entries, cap.services),
        ("backends", reg.backends.len() as u64, new_backends, cap.backends.saturating_sub(1)),
        ("maglev", reg.tables.len() as u64, tables, cap.tables),
        ("affinity-match", reg.memberships.len() as u64, pairs.len() as u64, cap.memberships),
        ("service-ids", reg.port_names.len() as u64, new_ports.len() as u64, cap.service_ids.saturating_sub(1)),
    ];
    for (map, used, add, capacity) in checks {
        if add > 0 && used + add > u64::from(capacity) {
            return Some(SkipReason::MapFull { map, capacity });
        }
    }
    None
}

/// How many entries the services map holds per frontend key, for tests and metrics.
pub fn entries_of(reg: &Registry) -> HashMap<FrontendKey, u32> {
    reg.frontends.iter().map(|(k, f)| (*k, 1 + f.slots.len() as u32)).collect()
}

//! What is programmed: every frontend with its header and slots, and the ids of backends, service ports and Maglev
//! tables with reference counts. The planner ([`crate::plan`]) reads it to compute the difference to a desired
//! state; the applier commits a plan's changes only after the plan's writes succeeded.
//!
//! It is rebuilt from the pinned maps when the agent restarts ([`Registry::from_maps`]): frontends found there have
//! no owner until a Service claims them, and whatever no Service claims after the first full sync is removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use skiff_ebpf_common::{AffinityMatchKey, Backend, ServiceKey, ServiceValue};

use crate::model::{BackendAddr, FrontendKey, Protocol, ServiceName, ServicePortName, SkipReason};

/// A frontend as it is in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    /// The Service that owns it; `None` when it was found in the pinned maps and no Service claimed it yet.
    pub owner: Option<ServiceName>,
    /// Its header (slot 0).
    pub header: ServiceValue,
    /// The backend ids of slots `1..=header.count`.
    pub slots: Vec<u32>,
}

/// A backend as it is in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    /// Its id.
    pub id: u32,
    /// Its value.
    pub value: Backend,
    /// How many frontends use it, plus how many Services list its endpoint ([`Registry::listed`]).
    pub refs: u32,
    /// How many of `refs` are Services listing its endpoint: with no other reference it is draining.
    pub listed: u32,
}

/// A service port id and how many frontends use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// The id.
    pub id: u32,
    /// How many frontends use it.
    pub refs: u32,
}

/// Identity of a Maglev table: its backend ids (sorted) and its size.
pub type TableKey = (Vec<u32>, u32);

/// A Maglev table and how many frontends use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// The table id (key in the outer map).
    pub id: u32,
    /// How many frontends use it.
    pub refs: u32,
}

/// A pool of `u32` ids from 1 to a maximum, lowest free first.
#[derive(Clone, Debug, Default)]
pub struct IdPool {
    next: u32,
    max: u32,
    free: BTreeSet<u32>,
}

impl IdPool {
    /// Ids `1..=max`.
    pub fn new(max: u32) -> Self {
        Self { next: 1, max, free: BTreeSet::new() }
    }

    /// Takes an id, if any is left.
    pub fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        if self.next <= self.max {
            self.next += 1;
            return Some(self.next - 1);
        }
        None
    }

    /// Returns an id.
    pub fn put(&mut self, id: u32) {
        if id != 0 && id < self.next {
            self.free.insert(id);
        }
    }

    /// Marks an id found in the maps as used.
    pub fn reserve(&mut self, id: u32) {
        if id >= self.next {
            for free in self.next..id {
                self.free.insert(free);
            }
            self.next = id + 1;
        } else {
            self.free.remove(&id);
        }
    }
}

/// Capacities of the maps (their `max_entries`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Services map entries (headers + slots).
    pub services: u32,
    /// Backends (also bounds backend ids).
    pub backends: u32,
    /// Maglev tables.
    pub tables: u32,
    /// Memberships.
    pub memberships: u32,
    /// Service port ids (size of the service stats array).
    pub service_ids: u32,
}

/// Everything the applier knows about the maps.
#[derive(Clone, Debug)]
pub struct Registry {
    /// Frontends by key.
    pub frontends: HashMap<FrontendKey, ProgrammedFrontend>,
    /// Frontend keys per owning Service.
    pub owned: HashMap<ServiceName, BTreeSet<FrontendKey>>,
    /// Backends by address.
    pub backends: HashMap<BackendAddr, BackendEntry>,
    /// Backend addresses by id.
    pub backend_addrs: HashMap<u32, BackendAddr>,
    /// Service port ids by name.
    pub ports: HashMap<ServicePortName, PortEntry>,
    /// Service port names by id (`None` for ids found in pinned maps and not yet claimed).
    pub port_names: HashMap<u32, Option<ServicePortName>>,
    /// Reference counts of ids found in pinned maps whose port name is not known yet.
    pub anonymous_port_refs: HashMap<u32, u32>,
    /// Maglev tables by content.
    pub tables: HashMap<TableKey, TableEntry>,
    /// Memberships with reference counts.
    pub memberships: HashMap<AffinityMatchKey, u32>,
    /// Entries in the services map.
    pub service_entries: u32,
    /// Map capacities.
    pub capacity: Capacity,
    /// Maglev table size for new tables.
    pub maglev_size: u32,
    /// Backend id pool.
    pub backend_ids: IdPool,
    /// Service port id pool.
    pub port_ids: IdPool,
    /// Table id pool.
    pub table_ids: IdPool,
    /// Why parts of Services are not programmed.
    pub skipped: BTreeMap<ServiceName, Vec<SkipReason>>,
    /// Services waiting for a frontend another Service holds.
    pub blocked: HashMap<FrontendKey, BTreeSet<ServiceName>>,
    /// Backends each Service keeps beyond its frontends' slots: the endpoints it lists (each holds one reference
    /// on its backend entry), so that flows to an endpoint that stopped being selected keep their backend.
    pub listed: HashMap<ServiceName, BTreeSet<BackendAddr>>,
    /// Garbage found in the pinned maps, removed after the first full sync.
    pub garbage: Garbage,
    /// Port names given to (`Some`) or taken from (`None`) ids since the last [`Registry::take_port_events`], so
    /// metrics follow them in O(changes).
    pub port_events: Vec<(u32, Option<ServicePortName>)>,
}

/// Entries found in the pinned maps that nothing references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Garbage {
    /// Slots beyond their header's count, or without a header.
    pub slots: Vec<ServiceKey>,
    /// Tables (id, size) no header references (or whose content does not match the header's slots).
    pub tables: Vec<(u32, u32)>,
    /// Memberships no frontend implies.
    pub memberships: Vec<AffinityMatchKey>,
    /// Backends no frontend uses.
    pub backends: Vec<u32>,
    /// Memberships frontends imply that are missing from the map.
    pub missing_memberships: Vec<AffinityMatchKey>,
}

/// The contents of the maps, as read back at start-up.
#[derive(Clone, Debug, Default)]
pub struct MapContents {
    /// Every entry of the services map.
    pub services: Vec<(ServiceKey, ServiceValue)>,
    /// Every backend.
    pub backends: Vec<(u32, Backend)>,
    /// Every table: id, size M and the fingerprint stored in it.
    pub tables: Vec<(u32, u32, u32)>,
    /// Every membership.
    pub memberships: Vec<AffinityMatchKey>,
}

impl Registry {
    /// An empty registry.
    pub fn new(capacity: Capacity, maglev_size: u32) -> Self {
        Self {
            frontends: HashMap::new(),
            owned: HashMap::new(),
            backends: HashMap::new(),
            backend_addrs: HashMap::new(),
            ports: HashMap::new(),
            port_names: HashMap::new(),
            anonymous_port_refs: HashMap::new(),
            tables: HashMap::new(),
            memberships: HashMap::new(),
            service_entries: 0,
            capacity,
            maglev_size,
            backend_ids: IdPool::new(capacity.backends.saturating_sub(1)),
            port_ids: IdPool::new(capacity.service_ids.saturating_sub(1)),
            table_ids: IdPool::new(u32::MAX - 1),
            skipped: BTreeMap::new(),
            blocked: HashMap::new(),
            listed: HashMap::new(),
            garbage: Garbage::default(),
            port_events: Vec::new(),
        }
    }

    /// Rebuilds the registry from the maps' contents. `fingerprint(slots, size)` must be the function tables were
    /// built with ([`crate::maglev::fingerprint`]).
    pub fn from_maps(
        capacity: Capacity,
        maglev_size: u32,
        contents: MapContents,
        fingerprint: impl Fn(&[u32], u32) -> u32,
    ) -> Self {
        let mut reg = Self::new(capacity, maglev_size);
        reg.service_entries = contents.services.len() as u32;
        let backend_by_id: HashMap<u32, Backend> = contents.backends.iter().copied().collect();
        let with_header: BTreeSet<FrontendKey> = contents
            .services
            .iter()
            .filter(|(k, _)| k.slot == 0)
            .filter_map(|(k, _)| FrontendKey::from_map_key(k))
            .collect();
        let mut headers: BTreeMap<FrontendKey, (ServiceValue, BTreeMap<u16, u32>)> = BTreeMap::new();
        let mut loose_slots: Vec<(FrontendKey, ServiceKey)> = Vec::new();
        for (key, value) in &contents.services {
            let Some(fk) = FrontendKey::from_map_key(key) else {
                reg.garbage.slots.push(*key);
                continue;
            };
            if key.slot == 0 {
                headers.entry(fk).or_insert_with(|| (*value, BTreeMap::new())).0 = *value;
            } else {
                headers
                    .entry(fk)
                    .or_insert_with(|| (ServiceValue::default(), BTreeMap::new()))
                    .1
                    .insert(key.slot, value.backend_id);
                loose_slots.push((fk, *key));
            }
        }
        for (fk, key) in loose_slots {
            let has_header = with_header.contains(&fk);
            let count = headers.get(&fk).map(|h| h.0.count).unwrap_or(0);
            if !has_header || key.slot > count {
                reg.garbage.slots.push(key);
            }
        }
        let table_fingerprints: HashMap<u32, (u32, u32)> =
            contents.tables.iter().map(|(id, size, fp)| (*id, (*size, *fp))).collect();
        let mut referenced_tables = BTreeSet::new();
        for (fk, (header, slot_map)) in headers {
            if !with_header.contains(&fk) {
                continue;
            }
            let slots: Vec<u32> = (1..=header.count).map(|s| slot_map.get(&s).copied().unwrap_or(0)).collect();
            let mut header = header;
            if header.table_id != 0 {
                let found = table_fingerprints.get(&header.table_id).copied();
                let key = (sorted(&slots), header.table_size);
                let current = found == Some((header.table_size, fingerprint(&slots, header.table_size)));
                let registered = reg.tables.get(&key).map(|t| t.id);
                if current && registered.is_none_or(|id| id == header.table_id) {
                    referenced_tables.insert(header.table_id);
                    reg.table_ids.reserve(header.table_id);
                    reg.tables.entry(key).or_insert(TableEntry { id: header.table_id, refs: 0 }).refs += 1;
                } else {
                    // The table is missing or stale: pretend the header has none, so the next plan builds one.
                    header.table_id = 0;
                }
            }
            for id in &slots {
                if let Some(b) = backend_by_id.get(id) {
                    let addr = backend_addr(b);
                    if let Some(addr) = addr {
                        let e =
                            reg.backends.entry(addr).or_insert(BackendEntry { id: *id, value: *b, refs: 0, listed: 0 });
                        if e.id == *id {
                            e.refs += 1;
                        }
                        reg.backend_addrs.insert(*id, addr);
                    }
                }
            }
            if header.service_id != 0 {
                reg.port_ids.reserve(header.service_id);
                reg.port_names.entry(header.service_id).or_insert(None);
                *reg.anonymous_port_refs.entry(header.service_id).or_default() += 1;
                for id in slots.iter().collect::<BTreeSet<_>>() {
                    *reg.memberships
                        .entry(AffinityMatchKey { backend_id: *id, service_id: header.service_id })
                        .or_default() += 1;
                }
            }
            reg.frontends.insert(fk, ProgrammedFrontend { owner: None, header, slots });
        }
        for (id, b) in &contents.backends {
            reg.backend_ids.reserve(*id);
            let addr = backend_addr(b);
            let used = addr.and_then(|a| reg.backends.get(&a)).is_some_and(|e| e.id == *id);
            if !used {
                // A backend no slot uses may still carry flows to an endpoint its Service lists but no longer
                // selects: it is known (without references) so that the first sync can keep it; the end of that
                // sync deletes it if no Service did.
                if let Some(addr) = addr
                    && !reg.backends.contains_key(&addr)
                {
                    reg.backends.insert(addr, BackendEntry { id: *id, value: *b, refs: 0, listed: 0 });
                    reg.backend_addrs.insert(*id, addr);
                }
                reg.garbage.backends.push(*id);
            }
        }
        for (id, size, _) in &contents.tables {
            reg.table_ids.reserve(*id);
            if !referenced_tables.contains(id) {
                reg.garbage.tables.push((*id, *size));
            }
        }
        let present: BTreeSet<AffinityMatchKey> = contents.memberships.iter().copied().collect();
        for m in &present {
            if !reg.memberships.contains_key(m) {
                reg.garbage.memberships.push(*m);
            }
        }
        // Memberships implied by frontends but missing from the map (a crash between writes) are written again.
        reg.garbage.missing_memberships = reg.memberships.keys().filter(|m| !present.contains(m)).copied().collect();
        reg.garbage.missing_memberships.sort();
        reg
    }

    /// Names port ids (and records it for [`Registry::take_port_events`]).
    pub fn name_port(&mut self, id: u32, name: ServicePortName) {
        self.port_names.insert(id, Some(name.clone()));
        self.port_events.push((id, Some(name)));
    }

    /// Forgets a port id.
    pub fn unname_port(&mut self, id: u32) {
        self.port_names.remove(&id);
        self.port_events.push((id, None));
    }

    /// The port name changes since the last call.
    pub fn take_port_events(&mut self) -> Vec<(u32, Option<ServicePortName>)> {
        std::mem::take(&mut self.port_events)
    }

    /// Frontends found in the pinned maps that no Service has claimed.
    pub fn unclaimed(&self) -> Vec<FrontendKey> {
        let mut v: Vec<_> = self.frontends.iter().filter(|(_, f)| f.owner.is_none()).map(|(k, _)| *k).collect();
        v.sort();
        v
    }
}

/// `ids`, sorted: the canonical form of a set of backend ids (table keys).
pub fn sorted(ids: &[u32]) -> Vec<u32> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}

/// The address of a backend value.
pub fn backend_addr(b: &Backend) -> Option<BackendAddr> {
    Some(BackendAddr {
        addr: std::net::Ipv4Addr::from(u32::from_be(b.addr)),
        port: u16::from_be(b.port),
        protocol: Protocol::from_number(b.proto)?,
    })
}

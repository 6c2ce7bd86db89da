//! Typed handles to the pinned maps, and the execution of planned [`Op`]s against them.

use std::collections::BTreeSet;

use aya::maps::{
    Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use skiff_ebpf_common::{
    AffinityMatchKey, Backend, Config, Counters, CtKey, CtValue, Event, L2Entry, MAGLEV_L, MAGLEV_M, MAGLEV_S,
    MaglevMeta, MaglevTable, NatConfig, NatEntry, NatEvent, ServiceKey, ServiceValue, maps as names,
};

use crate::{error::LbError, maglev, model::BackendAddr, nat::Exclusion, ops::Op, registry::MapContents};

/// How often a table write is retried when the kernel's BPF allocator is momentarily empty (ENOMEM): its per-CPU
/// caches of large elements are refilled asynchronously.
const ENOMEM_RETRIES: u32 = 20;

/// The maps user space writes and reads.
pub struct LbMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    maglev_s: HashMap<MapData, u32, MaglevTable<MAGLEV_S>>,
    maglev_m: HashMap<MapData, u32, MaglevTable<MAGLEV_M>>,
    maglev_l: HashMap<MapData, u32, MaglevTable<MAGLEV_L>>,
    maglev_meta: HashMap<MapData, u32, MaglevMeta>,
    memberships: HashMap<MapData, AffinityMatchKey, u32>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    service_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
    events: PerCpuArray<MapData, u64>,
    config: Array<MapData, Config>,
    nat: HashMap<MapData, CtKey, NatEntry>,
    nat_exclude: LpmTrie<MapData, [u8; 4], u32>,
    nat_config: Array<MapData, NatConfig>,
    nat_stats: PerCpuArray<MapData, u64>,
    l2: HashMap<MapData, u32, L2Entry>,
    cpus: usize,
}

impl std::fmt::Debug for LbMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbMaps").field("cpus", &self.cpus).finish_non_exhaustive()
    }
}

fn typed<T>(name: &'static str, data: MapData, convert: impl FnOnce(Map) -> Result<T, MapError>) -> Result<T, LbError> {
    let map = Map::from_map_data(data).map_err(|e| LbError::map(name, "open", e))?;
    convert(map).map_err(|e| LbError::map(name, "open", e))
}

impl LbMaps {
    /// Wraps map handles, taken by name from `take` (the loaded object or the pin directory).
    pub fn new(mut take: impl FnMut(&'static str) -> Result<MapData, LbError>) -> Result<Self, LbError> {
        let cpus = aya::util::nr_cpus().map_err(|(path, e)| LbError::io("reading", path, e))?;
        Ok(Self {
            services: typed(names::SERVICES, take(names::SERVICES)?, HashMap::try_from)?,
            backends: typed(names::BACKENDS, take(names::BACKENDS)?, HashMap::try_from)?,
            maglev_s: typed(names::MAGLEV_S, take(names::MAGLEV_S)?, HashMap::try_from)?,
            maglev_m: typed(names::MAGLEV_M, take(names::MAGLEV_M)?, HashMap::try_from)?,
            maglev_l: typed(names::MAGLEV_L, take(names::MAGLEV_L)?, HashMap::try_from)?,
            maglev_meta: typed(names::MAGLEV_META, take(names::MAGLEV_META)?, HashMap::try_from)?,
            memberships: typed(names::AFFINITY_MATCH, take(names::AFFINITY_MATCH)?, HashMap::try_from)?,
            conntrack: typed(names::CONNTRACK, take(names::CONNTRACK)?, HashMap::try_from)?,
            service_stats: typed(names::SERVICE_STATS, take(names::SERVICE_STATS)?, PerCpuArray::try_from)?,
            backend_stats: typed(names::BACKEND_STATS, take(names::BACKEND_STATS)?, PerCpuArray::try_from)?,
            events: typed(names::EVENTS, take(names::EVENTS)?, PerCpuArray::try_from)?,
            config: typed(names::CONFIG, take(names::CONFIG)?, Array::try_from)?,
            nat: typed(names::NAT, take(names::NAT)?, HashMap::try_from)?,
            nat_exclude: typed(names::NAT_EXCLUDE, take(names::NAT_EXCLUDE)?, LpmTrie::try_from)?,
            nat_config: typed(names::NAT_CONFIG, take(names::NAT_CONFIG)?, Array::try_from)?,
            nat_stats: typed(names::NAT_STATS, take(names::NAT_STATS)?, PerCpuArray::try_from)?,
            l2: typed(names::L2_ANNOUNCE, take(names::L2_ANNOUNCE)?, HashMap::try_from)?,
            cpus,
        })
    }

    /// Performs one operation.
    pub fn execute(&mut self, op: &Op) -> Result<(), LbError> {
        match op {
            Op::PutBackend { id, value } => {
                self.backends.insert(id, value, 0).map_err(|e| LbError::map(names::BACKENDS, "insert", e))
            }
            Op::PutMembership(key) => {
                self.memberships.insert(key, 1, 0).map_err(|e| LbError::map(names::AFFINITY_MATCH, "insert", e))
            }
            Op::ResetServiceStats(id) => self.reset(true, *id),
            Op::ResetBackendStats(id) => self.reset(false, *id),
            Op::CreateTable { id, size, backends } => self.create_table(*id, *size, backends),
            Op::PutSlot(key, value) | Op::PutHeader(key, value) => {
                self.services.insert(key, value, 0).map_err(|e| LbError::map(names::SERVICES, "insert", e))
            }
            Op::DeleteHeader(key) | Op::DeleteSlot(key) => ok_if_absent(self.services.remove(key), names::SERVICES),
            Op::DeleteTable { id, size } => {
                let s = *size as usize;
                if s <= MAGLEV_S {
                    ok_if_absent(self.maglev_s.remove(id), names::MAGLEV_S)?;
                } else if s <= MAGLEV_M {
                    ok_if_absent(self.maglev_m.remove(id), names::MAGLEV_M)?;
                } else {
                    ok_if_absent(self.maglev_l.remove(id), names::MAGLEV_L)?;
                }
                ok_if_absent(self.maglev_meta.remove(id), names::MAGLEV_META)
            }
            Op::DeleteMembership(key) => ok_if_absent(self.memberships.remove(key), names::AFFINITY_MATCH),
            Op::DeleteBackend(id) => ok_if_absent(self.backends.remove(id), names::BACKENDS),
        }
    }

    fn reset(&mut self, service: bool, id: u32) -> Result<(), LbError> {
        let (map, name) = if service {
            (&mut self.service_stats, names::SERVICE_STATS)
        } else {
            (&mut self.backend_stats, names::BACKEND_STATS)
        };
        if id >= map.len() {
            return Ok(());
        }
        let zero = PerCpuValues::try_from(vec![Counters::default(); self.cpus])
            .map_err(|e| LbError::io("building per-CPU values for", name, e))?;
        map.set(id, zero, 0).map_err(|e| LbError::map(name, "reset", e))
    }

    fn create_table(&mut self, id: u32, size: u32, backends: &[(BackendAddr, u32)]) -> Result<(), LbError> {
        let addrs: Vec<BackendAddr> = backends.iter().map(|(a, _)| *a).collect();
        let ids: Vec<u32> = backends.iter().map(|(_, id)| *id).collect();
        let entries: Vec<u32> = maglev::table(&addrs, size).into_iter().map(|i| ids[i as usize]).collect();
        let fingerprint = maglev::fingerprint(&ids, size);
        let s = size as usize;
        if s <= MAGLEV_S {
            insert_table(&mut self.maglev_s, names::MAGLEV_S, id, size, fingerprint, &entries)?;
        } else if s <= MAGLEV_M {
            insert_table(&mut self.maglev_m, names::MAGLEV_M, id, size, fingerprint, &entries)?;
        } else {
            // A large table value is built on the stack before it moves to the heap (256 KiB, more in debug builds).
            let map = &mut self.maglev_l;
            std::thread::scope(|s| {
                std::thread::Builder::new()
                    .stack_size(16 << 20)
                    .spawn_scoped(s, || insert_table(map, names::MAGLEV_L, id, size, fingerprint, &entries))
                    .map_err(|e| LbError::io("spawning a thread for", names::MAGLEV_L, e))?
                    .join()
                    .unwrap_or_else(|_| Err(LbError::InvalidConfig("building a large Maglev table panicked".into())))
            })?;
        }
        // Written after the table: a crash in between leaves a table without metadata, which a restart rebuilds.
        self.maglev_meta
            .insert(id, MaglevMeta { size, fingerprint }, 0)
            .map_err(|e| LbError::map(names::MAGLEV_META, "insert", e))
    }

    /// Writes the node configuration.
    pub fn write_config(&mut self, config: &Config) -> Result<(), LbError> {
        self.config.set(0, config, 0).map_err(|e| LbError::map(names::CONFIG, "write", e))
    }

    /// Reads the node configuration.
    pub fn read_config(&self) -> Result<Config, LbError> {
        self.config.get(&0, 0).map_err(|e| LbError::map(names::CONFIG, "read", e))
    }

    /// Reads everything the registry needs to resume.
    pub fn read_contents(&self) -> Result<MapContents, LbError> {
        let mut contents = MapContents::default();
        for item in self.services.iter() {
            contents.services.push(item.map_err(|e| LbError::map(names::SERVICES, "iterate", e))?);
        }
        for item in self.backends.iter() {
            contents.backends.push(item.map_err(|e| LbError::map(names::BACKENDS, "iterate", e))?);
        }
        // Tables are too large to read back cheaply (and on small stacks); their metadata says what they hold. A table
        // without metadata (a crash between the two writes) is unknown, so its frontend gets a new one.
        let known: std::collections::HashMap<u32, MaglevMeta> = self
            .maglev_meta
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| LbError::map(names::MAGLEV_META, "iterate", e))?;
        for (class, name) in [(0, names::MAGLEV_S), (1, names::MAGLEV_M), (2, names::MAGLEV_L)] {
            let ids: Vec<u32> = match class {
                0 => self.maglev_s.keys().collect::<Result<_, _>>(),
                1 => self.maglev_m.keys().collect::<Result<_, _>>(),
                _ => self.maglev_l.keys().collect::<Result<_, _>>(),
            }
            .map_err(|e| LbError::map(name, "iterate", e))?;
            let class_size = [MAGLEV_S, MAGLEV_M, MAGLEV_L][class] as u32;
            for id in ids {
                let meta = known.get(&id).copied().unwrap_or(MaglevMeta { size: class_size, fingerprint: 0 });
                contents.tables.push((id, meta.size, meta.fingerprint));
            }
        }
        for key in self.memberships.keys() {
            contents.memberships.push(key.map_err(|e| LbError::map(names::AFFINITY_MATCH, "iterate", e))?);
        }
        Ok(contents)
    }

    /// The entries `0..M` of Maglev table `id` as the kernel reads them (tests and diagnostics).
    pub fn table_entries(&self, id: u32) -> Result<Vec<u32>, LbError> {
        fn find<const N: usize>(map: &HashMap<MapData, u32, MaglevTable<N>>, id: u32) -> Option<Vec<u32>>
        where
            MaglevTable<N>: aya::Pod,
        {
            let t = map.get(&id, 0).ok()?;
            Some(t.entries[..(t.size as usize).min(N)].to_vec())
        }
        // A table value is read onto the stack (up to 256 KiB, several copies in debug builds): use a thread with room.
        let found = std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(s, || {
                    find(&self.maglev_s, id).or_else(|| find(&self.maglev_m, id)).or_else(|| find(&self.maglev_l, id))
                })
                .ok()
                .and_then(|h| h.join().ok())
                .flatten()
        });
        found.ok_or_else(|| LbError::map(names::MAGLEV_M, "read table", MapError::KeyNotFound))
    }

    /// The counters of a service port id, summed over CPUs.
    pub fn service_counters(&self, id: u32) -> Result<Counters, LbError> {
        sum(&self.service_stats, id).map_err(|e| LbError::map(names::SERVICE_STATS, "read", e))
    }

    /// The counters of a backend id, summed over CPUs.
    pub fn backend_counters(&self, id: u32) -> Result<Counters, LbError> {
        sum(&self.backend_stats, id).map_err(|e| LbError::map(names::BACKEND_STATS, "read", e))
    }

    /// The event counters, summed over CPUs.
    pub fn events(&self) -> Result<Vec<(Event, u64)>, LbError> {
        let mut out = Vec::new();
        for e in Event::ALL {
            let v = self.events.get(&(e as u32), 0).map_err(|err| LbError::map(names::EVENTS, "read", err))?;
            out.push((e, v.iter().sum()));
        }
        Ok(out)
    }

    /// Programs pod egress masquerade: exclusions added, then the configuration, then exclusions removed (see
    /// [`crate::nat::exclusion_changes`]). Returns the number of writes (0 when everything was in place).
    pub fn write_nat(&mut self, config: &NatConfig, wanted: &BTreeSet<Exclusion>) -> Result<usize, LbError> {
        let programmed: BTreeSet<Exclusion> = self
            .nat_exclude
            .keys()
            .filter_map(Result::ok)
            .map(|k| (u8::try_from(k.prefix_len()).unwrap_or(32), k.data()))
            .collect();
        let (add, remove) = crate::nat::exclusion_changes(&programmed, wanted);
        let mut writes = 0;
        for (len, addr) in &add {
            self.nat_exclude
                .insert(&LpmKey::new(u32::from(*len), *addr), 1, 0)
                .map_err(|e| LbError::map(names::NAT_EXCLUDE, "insert", e))?;
            writes += 1;
        }
        let current = self.nat_config.get(&0, 0).map_err(|e| LbError::map(names::NAT_CONFIG, "read", e))?;
        if current != *config {
            self.nat_config.set(0, config, 0).map_err(|e| LbError::map(names::NAT_CONFIG, "write", e))?;
            writes += 1;
        }
        for (len, addr) in &remove {
            ok_if_absent(self.nat_exclude.remove(&LpmKey::new(u32::from(*len), *addr)), names::NAT_EXCLUDE)?;
            writes += 1;
        }
        Ok(writes)
    }

    /// Makes the announced LoadBalancer addresses exactly `wanted` (address → interface): entries added or changed
    /// first, then the others removed. Returns the number of writes.
    pub fn set_announced(
        &mut self,
        wanted: &std::collections::BTreeMap<std::net::Ipv4Addr, L2Entry>,
    ) -> Result<usize, LbError> {
        let key = |ip: &std::net::Ipv4Addr| u32::from_ne_bytes(ip.octets());
        let mut writes = 0;
        for (ip, entry) in wanted {
            if self.l2.get(&key(ip), 0).ok().as_ref() != Some(entry) {
                self.l2.insert(key(ip), *entry, 0).map_err(|e| LbError::map(names::L2_ANNOUNCE, "insert", e))?;
                writes += 1;
            }
        }
        let programmed: Vec<u32> = self.l2.keys().filter_map(Result::ok).collect();
        for k in programmed {
            if !wanted.contains_key(&std::net::Ipv4Addr::from(k.to_ne_bytes())) {
                ok_if_absent(self.l2.remove(&k), names::L2_ANNOUNCE)?;
                writes += 1;
            }
        }
        Ok(writes)
    }

    /// The masquerade counters, summed over CPUs.
    pub fn nat_events(&self) -> Result<Vec<(NatEvent, u64)>, LbError> {
        let mut out = Vec::new();
        for e in NatEvent::ALL {
            let v = self.nat_stats.get(&(e as u32), 0).map_err(|err| LbError::map(names::NAT_STATS, "read", err))?;
            out.push((e, v.iter().sum()));
        }
        Ok(out)
    }

    /// Masquerade entries (two per translated flow; walks the map; for tests and diagnostics).
    pub fn nat_entries(&self) -> Vec<(CtKey, NatEntry)> {
        self.nat.iter().filter_map(Result::ok).collect()
    }

    /// Number of connection tracking entries (walks the map; for metrics and tests).
    pub fn conntrack_entries(&self) -> usize {
        self.conntrack.keys().filter(Result::is_ok).count()
    }

    /// Looks up one connection tracking entry (tests and diagnostics).
    pub fn conntrack_entry(&self, key: &CtKey) -> Option<CtValue> {
        self.conntrack.get(key, 0).ok()
    }

    /// Looks up one services-map entry (tests and diagnostics).
    pub fn service_entry(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.services.get(key, 0).ok()
    }

    /// Looks up one backend (tests and diagnostics).
    pub fn backend_entry(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }
}

/// A delete that found nothing to delete is fine.
fn ok_if_absent(r: Result<(), MapError>, map: &'static str) -> Result<(), LbError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(LbError::map(map, "delete", e)),
    }
}

/// Publishes a table with one element write (retried briefly on ENOMEM, see [`ENOMEM_RETRIES`]).
fn insert_table<const N: usize>(
    map: &mut HashMap<MapData, u32, MaglevTable<N>>,
    name: &'static str,
    id: u32,
    size: u32,
    fingerprint: u32,
    entries: &[u32],
) -> Result<(), LbError>
where
    MaglevTable<N>: aya::Pod,
{
    // Tables are up to 256 KiB: build them on the heap.
    let mut value: Box<MaglevTable<N>> = Box::new(MaglevTable { size, fingerprint, entries: [0; N] });
    let n = entries.len().min(N);
    value.entries[..n].copy_from_slice(&entries[..n]);
    let mut attempt = 0;
    loop {
        #[allow(
            clippy::needless_borrows_for_generic_args,
            reason = "passing the value would copy 256 KiB to the stack"
        )]
        match map.insert(id, &*value, 0) {
            Ok(()) => return Ok(()),
            Err(MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOMEM) && attempt < ENOMEM_RETRIES =>
            {
                attempt += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(LbError::map(name, "insert table", e)),
        }
    }
}

fn sum(map: &PerCpuArray<MapData, Counters>, id: u32) -> Result<Counters, MapError> {
    let values = map.get(&id, 0)?;
    let mut c = Counters::default();
    for v in values.iter() {
        c.packets += v.packets;
        c.bytes += v.bytes;
        c.connections += v.connections;
        c.refused += v.refused;
    }
    Ok(c)
}

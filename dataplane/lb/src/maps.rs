//! Typed handles to the pinned maps, and the execution of planned [`Op`]s against them.

use std::os::fd::AsFd as _;

use aya::maps::{Array, HashMap, HashOfMaps, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use skiff_ebpf_common::{
    AffinityMatchKey, Backend, Config, Counters, CtKey, CtValue, Event, ServiceKey, ServiceValue, maps as names,
};

use crate::{error::LbError, maglev, ops::Op, registry::MapContents, sys};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_INNER_MAP: u32 = 1 << 12;

/// The maps user space writes and reads.
pub struct LbMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    maglev: HashOfMaps<MapData, u32, MapData>,
    memberships: HashMap<MapData, AffinityMatchKey, u32>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    service_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
    events: PerCpuArray<MapData, u64>,
    config: Array<MapData, Config>,
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
            maglev: typed(names::MAGLEV, take(names::MAGLEV)?, HashOfMaps::try_from)?,
            memberships: typed(names::AFFINITY_MATCH, take(names::AFFINITY_MATCH)?, HashMap::try_from)?,
            conntrack: typed(names::CONNTRACK, take(names::CONNTRACK)?, HashMap::try_from)?,
            service_stats: typed(names::SERVICE_STATS, take(names::SERVICE_STATS)?, PerCpuArray::try_from)?,
            backend_stats: typed(names::BACKEND_STATS, take(names::BACKEND_STATS)?, PerCpuArray::try_from)?,
            events: typed(names::EVENTS, take(names::EVENTS)?, PerCpuArray::try_from)?,
            config: typed(names::CONFIG, take(names::CONFIG)?, Array::try_from)?,
            cpus,
        })
    }

    /// Performs one operation.
    pub fn execute(&mut self, op: &Op) -> Result<(), LbError> {
        let ok_if_absent = |r: Result<(), MapError>, map: &'static str| match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(LbError::map(map, "delete", e)),
        };
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
            Op::DeleteTable(id) => ok_if_absent(self.maglev.remove(id), names::MAGLEV),
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

    fn create_table(&mut self, id: u32, size: u32, backends: &[(crate::model::BackendAddr, u32)]) -> Result<(), LbError> {
        let addrs: Vec<_> = backends.iter().map(|(a, _)| *a).collect();
        let ids: Vec<u32> = backends.iter().map(|(_, id)| *id).collect();
        let mut values: Vec<u32> = maglev::table(&addrs, size).into_iter().map(|i| ids[i as usize]).collect();
        values.push(maglev::fingerprint(&ids, size));
        let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, 4, size + 1, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
        let inner = MapData::create(obj, "skiff_maglev", None).map_err(|e| LbError::map(names::MAGLEV, "create table", e))?;
        sys::fill_u32_array(inner.fd().as_fd(), &values).map_err(|e| LbError::io("filling Maglev table", names::MAGLEV, e))?;
        self.maglev.insert(id, &inner, 0).map_err(|e| LbError::map(names::MAGLEV, "insert table", e))
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
        for id in self.maglev.keys() {
            let id = id.map_err(|e| LbError::map(names::MAGLEV, "iterate", e))?;
            contents.tables.push((id, self.table_fingerprint(id).unwrap_or(0)));
        }
        for key in self.memberships.keys() {
            contents.memberships.push(key.map_err(|e| LbError::map(names::AFFINITY_MATCH, "iterate", e))?);
        }
        Ok(contents)
    }

    fn table_fingerprint(&self, id: u32) -> Result<u32, MapError> {
        let inner: MapData = self.maglev.get(&id, 0)?;
        let array: Array<MapData, u32> = Array::try_from(Map::from_map_data(inner)?)?;
        let last = array.len().checked_sub(1).ok_or(MapError::OutOfBounds { index: 0, max_entries: 0 })?;
        array.get(&last, 0)
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

    /// Number of connection tracking entries (walks the map; for metrics and tests).
    pub fn conntrack_entries(&self) -> usize {
        self.conntrack.keys().filter(Result::is_ok).count()
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

//! The BPF maps. Names, key and value types come from `skiff-ebpf-common`; sizes here are defaults the loader may
//! override (`EbpfLoader::set_max_entries`).

use aya_ebpf::{
    bindings::{BPF_F_INNER_MAP, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{Array, HashMap, HashOfMaps, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use skiff_ebpf_common::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, Config, Counters, CtKey, CtValue, Event, ReverseSkKey,
    ReverseSkValue, ServiceKey, ServiceValue, limits,
};

/// Hash maps that user space updates while programs read them do not preallocate: a removed element is freed only
/// after an RCU grace period, so a program never reads a recycled element.
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
/// Maglev tables may have any size (`BPF_F_INNER_MAP`) and user space fills them through mmap (`BPF_F_MMAPABLE`).
pub const MAGLEV_INNER_FLAGS: usize = (BPF_F_INNER_MAP | BPF_F_MMAPABLE) as usize;

/// Frontends and their backend slots.
#[btf_map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue, 262_144, NO_PREALLOC> = HashMap::new();

/// Backends by id.
#[btf_map]
pub static LB_BACKENDS: HashMap<u32, Backend, 131_072, NO_PREALLOC> = HashMap::new();

/// Maglev tables by table id; each inner array holds backend ids (plus a fingerprint in its last element).
#[btf_map]
pub static LB_MAGLEV: HashOfMaps<
    u32,
    Array<u32, { limits::MAGLEV_TEMPLATE_ENTRIES as usize }, MAGLEV_INNER_FLAGS>,
    65_536,
    NO_PREALLOC,
> = HashOfMaps::new();

/// sessionAffinity: the backend each client last used, per service port.
#[btf_map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue, 131_072> = LruHashMap::new();

/// Which backends currently belong to which service port (validates affinity entries).
#[btf_map]
pub static LB_AFFINITY_MATCH: HashMap<AffinityMatchKey, u32, 262_144, NO_PREALLOC> = HashMap::new();

/// Socket cookie + backend → the service address the socket asked for.
#[btf_map]
pub static LB_REVERSE_SK: LruHashMap<ReverseSkKey, ReverseSkValue, 262_144> = LruHashMap::new();

/// Connection tracking of the tc path.
#[btf_map]
pub static LB_CT: LruHashMap<CtKey, CtValue, 262_144> = LruHashMap::new();

/// Counters per service port id.
#[btf_map]
pub static LB_SERVICE_STATS: PerCpuArray<Counters, 65_536> = PerCpuArray::new();

/// Counters per backend id.
#[btf_map]
pub static LB_BACKEND_STATS: PerCpuArray<Counters, 131_072> = PerCpuArray::new();

/// Event counters, see [`Event`].
#[btf_map]
pub static LB_EVENTS: PerCpuArray<u64, { Event::COUNT as usize }> = PerCpuArray::new();

/// Node configuration written by user space.
#[btf_map]
pub static LB_CONFIG: Array<Config, 1> = Array::new();

/// Counts one event.
#[inline(always)]
pub fn event(e: Event) {
    if let Some(p) = LB_EVENTS.get_ptr_mut(e as u32) {
        // SAFETY: a per-CPU slot of this CPU; programs on one CPU do not run concurrently.
        unsafe { *p += 1 };
    }
}

/// Adds to the counters of a service port and of a backend.
#[inline(always)]
pub fn count(service_id: u32, backend_id: u32, packets: u64, bytes: u64, connections: u64) {
    if let Some(c) = LB_SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: a per-CPU slot of this CPU.
        unsafe {
            (*c).packets += packets;
            (*c).bytes += bytes;
            (*c).connections += connections;
        }
    }
    if let Some(c) = LB_BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: a per-CPU slot of this CPU.
        unsafe {
            (*c).packets += packets;
            (*c).bytes += bytes;
            (*c).connections += connections;
        }
    }
}

/// Counts a connection refused because the service port has no endpoints.
#[inline(always)]
pub fn count_refused(service_id: u32) {
    if let Some(c) = LB_SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: a per-CPU slot of this CPU.
        unsafe { (*c).refused += 1 };
    }
}

//! The BPF maps. Names, key and value types come from `skiff-ebpf-common`; sizes here are defaults the loader may
//! override (`EbpfLoader::set_max_entries`).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    macros::btf_map,
};
use skiff_ebpf_common::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, Config, Counters, CtKey, CtValue, Event, L2Entry,
    MaglevMeta, MaglevTableL, MaglevTableM, MaglevTableS, NatConfig, NatEntry, PolConfig, PolCtKey, PolCtValue,
    PolEndpoint, PolRuleData, PolRuleValue, PolStatsKey, PolVerdict, ReverseSkKey, ReverseSkValue, ServiceKey,
    ServiceValue,
};

/// Hash maps that user space updates while programs read them do not preallocate: a replaced or removed element is
/// freed only after an RCU grace period, so a program never reads a recycled element (and a replaced Maglev table
/// stays intact for a program that looked it up just before).
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

/// Frontends and their backend slots.
#[btf_map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue, 262_144, NO_PREALLOC> = HashMap::new();

/// Backends by id.
#[btf_map]
pub static LB_BACKENDS: HashMap<u32, Backend, 131_072, NO_PREALLOC> = HashMap::new();

/// Small Maglev tables (M <= 1021) by table id.
#[btf_map]
pub static LB_MAGLEV_S: HashMap<u32, MaglevTableS, 65_536, NO_PREALLOC> = HashMap::new();

/// Default-size Maglev tables (M <= 16381) by table id.
#[btf_map]
pub static LB_MAGLEV_M: HashMap<u32, MaglevTableM, 65_536, NO_PREALLOC> = HashMap::new();

/// Large Maglev tables (M <= 65521) by table id.
#[btf_map]
pub static LB_MAGLEV_L: HashMap<u32, MaglevTableL, 65_536, NO_PREALLOC> = HashMap::new();

/// Size and fingerprint of each table, for user space after a restart (not read by the programs).
#[btf_map]
pub static LB_MAGLEV_META: HashMap<u32, MaglevMeta, 65_536, NO_PREALLOC> = HashMap::new();

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

/// NetworkPolicy: IPv4 prefix (network order bytes) → peer identity.
#[btf_map]
pub static POL_IPCACHE: LpmTrie<[u8; 4], u32, 262_144> = LpmTrie::new();

/// NetworkPolicy: host-side veth ifindex → the pod behind it.
#[btf_map]
pub static POL_ENDPOINTS: HashMap<u32, PolEndpoint, 16_384, NO_PREALLOC> = HashMap::new();

/// NetworkPolicy: what each endpoint identity may do, per direction, peer identity, protocol and port block.
#[btf_map]
pub static POL_RULES: LpmTrie<PolRuleData, PolRuleValue, 1_048_576> = LpmTrie::new();

/// NetworkPolicy: flows a hook allowed (replies pass; established flows skip the rules).
#[btf_map]
pub static POL_CT: LruHashMap<PolCtKey, PolCtValue, 262_144> = LruHashMap::new();

/// NetworkPolicy: new-flow verdict counters.
#[btf_map]
pub static POL_STATS: PerCpuHashMap<PolStatsKey, u64, 65_536> = PerCpuHashMap::new();

/// NetworkPolicy: the flows a policy decided, for the verdicts endpoint (dropped when user space lags).
#[btf_map]
pub static POL_VERDICTS: RingBuf<PolVerdict, { 256 * 1024 }> = RingBuf::new();

/// NetworkPolicy configuration written by user space.
#[btf_map]
pub static POL_CONFIG: Array<PolConfig, 1> = Array::new();

/// Pod egress masquerade: forward and reply entries of translated flows.
#[btf_map]
pub static LB_NAT: LruHashMap<CtKey, NatEntry, 262_144> = LruHashMap::new();

/// Pod egress masquerade: destinations that keep the pod's address (network order bytes).
#[btf_map]
pub static LB_NAT_EXCLUDE: LpmTrie<[u8; 4], u32, 1_024> = LpmTrie::new();

/// Pod egress masquerade configuration written by user space.
#[btf_map]
pub static LB_NAT_CONFIG: Array<NatConfig, 1> = Array::new();

/// Pod egress masquerade counters, see [`skiff_ebpf_common::NatEvent`].
#[btf_map]
pub static LB_NAT_STATS: PerCpuArray<u64, { skiff_ebpf_common::NatEvent::COUNT as usize }> = PerCpuArray::new();

/// LoadBalancer addresses this node announces (answers ARP for).
#[btf_map]
pub static LB_L2_ANNOUNCE: HashMap<u32, L2Entry, 1_024, NO_PREALLOC> = HashMap::new();

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

//! Backend selection, shared by the socket hooks and the tc path: session affinity first, then the Maglev table
//! (or the only slot, or a slot chosen by hash when no table exists).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use skiff_ebpf_common::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, Event, MAGLEV_M, MAGLEV_S, ServiceKey, ServiceValue,
};

use crate::maps::{
    LB_AFFINITY, LB_AFFINITY_MATCH, LB_BACKENDS, LB_MAGLEV_L, LB_MAGLEV_M, LB_MAGLEV_S, LB_SERVICES, event,
};

/// Looks up the header (slot 0) of a frontend and copies it out.
#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<ServiceValue> {
    // SAFETY: the value is copied at once; services are a no-prealloc hash map, so the element is not recycled
    // while this program runs (RCU).
    unsafe { LB_SERVICES.get(key).copied() }
}

/// Looks up a backend and copies it out.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: as for `service`.
    unsafe { LB_BACKENDS.get(id).copied() }
}

#[inline(always)]
fn now_secs() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
fn slot_backend(key: &ServiceKey, slot: u16) -> Option<u32> {
    let k = ServiceKey { slot, ..*key };
    service(&k).map(|v| v.backend_id)
}

/// Entry `index` of table `id` of size `size`, from the map of its size class.
#[inline(always)]
fn maglev(id: u32, size: u32, index: u32) -> Option<u32> {
    let i = index as usize;
    // SAFETY: tables are replaced as whole elements of no-prealloc hash maps, so a table a program holds is neither
    // changed nor recycled while it runs; the value is read once. `get` bounds-checks the index.
    unsafe {
        if size as usize <= MAGLEV_S {
            LB_MAGLEV_S.get(id).and_then(|t| t.entries.get(i).copied())
        } else if size as usize <= MAGLEV_M {
            LB_MAGLEV_M.get(id).and_then(|t| t.entries.get(i).copied())
        } else {
            LB_MAGLEV_L.get(id).and_then(|t| t.entries.get(i).copied())
        }
    }
}

/// Picks the backend id for a new connection of `client` (kind: `AFFINITY_*`) to the frontend `key` whose header is
/// `svc`. `hash` chooses the Maglev slot. Requires `svc.count > 0`.
#[inline(always)]
pub fn select(key: &ServiceKey, svc: &ServiceValue, client: u64, client_kind: u32, hash: u32) -> Option<u32> {
    let affinity = if svc.affinity_timeout != 0 {
        let akey = AffinityKey { client, service_id: svc.service_id, kind: client_kind };
        let now = now_secs();
        // SAFETY: copied at once; a stale or recycled LRU element at worst yields a backend that the match map
        // check below rejects.
        if let Some(a) = unsafe { LB_AFFINITY.get(&akey).copied() } {
            let fresh = now.wrapping_sub(a.last_used) <= svc.affinity_timeout;
            let member = AffinityMatchKey { backend_id: a.backend_id, service_id: svc.service_id };
            // SAFETY: only presence is tested.
            if fresh && unsafe { LB_AFFINITY_MATCH.get(&member).is_some() } {
                let _ = LB_AFFINITY.insert(&akey, &AffinityValue { backend_id: a.backend_id, last_used: now }, 0);
                event(Event::AffinityHit);
                return Some(a.backend_id);
            }
        }
        Some((akey, now))
    } else {
        None
    };

    let id = if svc.count == 1 {
        slot_backend(key, 1)
    } else {
        let size = svc.table_size;
        let from_table = if svc.table_id != 0 && size != 0 { maglev(svc.table_id, size, hash % size) } else { None };
        let count = svc.count as u32;
        match from_table {
            Some(id) if id != 0 => Some(id),
            _ if count != 0 => slot_backend(key, (hash % count) as u16 + 1),
            _ => None,
        }
    };

    if let (Some(id), Some((akey, now))) = (id, affinity) {
        let _ = LB_AFFINITY.insert(&akey, &AffinityValue { backend_id: id, last_used: now }, 0);
    }
    id
}

//! Planner tests: a model of the kernel maps executes the planned operations one at a time and checks after every
//! single one that no header names a missing slot, table or backend (what a BPF program could observe mid-update).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
};

use proptest::prelude::*;
use skiff_ebpf_common::{
    AffinityMatchKey, BACKEND_F_DRAINING, BACKEND_F_TERMINATING, Backend, ServiceKey, ServiceValue,
};

use super::*;
use crate::{
    maglev::fingerprint,
    model::{BackendAddr, BackendInfo, Frontend, FrontendKey, FrontendKind, Protocol, Scope, ServicePortName},
    registry::{Capacity, MapContents},
};

const M: u32 = 251;

fn capacity() -> Capacity {
    Capacity { services: 1 << 20, backends: 1 << 16, tables: 1 << 16, memberships: 1 << 20, service_ids: 1 << 16 }
}

/// The kernel's maps, as far as the programs read them.
#[derive(Default, Debug)]
struct Kernel {
    services: HashMap<ServiceKey, ServiceValue>,
    backends: HashMap<u32, Backend>,
    tables: HashMap<u32, (u32, Vec<u32>)>,
    memberships: HashSet<AffinityMatchKey>,
}

impl Kernel {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::PutBackend { id, value } => {
                self.backends.insert(*id, *value);
            }
            Op::PutMembership(k) => {
                self.memberships.insert(*k);
            }
            Op::ResetServiceStats(_) | Op::ResetBackendStats(_) => {}
            Op::CreateTable { id, size, backends } => {
                self.tables.insert(*id, (*size, backends.iter().map(|(_, id)| *id).collect()));
            }
            Op::PutSlot(k, v) | Op::PutHeader(k, v) => {
                self.services.insert(*k, *v);
            }
            Op::DeleteHeader(k) | Op::DeleteSlot(k) => {
                self.services.remove(k);
            }
            Op::DeleteTable { id, .. } => {
                self.tables.remove(id);
            }
            Op::DeleteMembership(k) => {
                self.memberships.remove(k);
            }
            Op::DeleteBackend(id) => {
                self.backends.remove(id);
            }
        }
    }

    /// What a program may read is complete.
    fn check(&self) -> Result<(), String> {
        for (k, h) in self.services.iter().filter(|(k, _)| k.slot == 0) {
            for slot in 1..=h.count {
                let s = self.services.get(&ServiceKey { slot, ..*k }).ok_or(format!("{k:?}: slot {slot} missing"))?;
                if !self.backends.contains_key(&s.backend_id) {
                    return Err(format!("{k:?}: slot {slot} names missing backend {}", s.backend_id));
                }
            }
            if h.table_id != 0 {
                let (size, ids) = self.tables.get(&h.table_id).ok_or(format!("{k:?}: table {} missing", h.table_id))?;
                if *size != h.table_size {
                    return Err(format!("{k:?}: table size {size} != {}", h.table_size));
                }
                if let Some(id) = ids.iter().find(|id| !self.backends.contains_key(id)) {
                    return Err(format!("{k:?}: table names missing backend {id}"));
                }
            }
        }
        Ok(())
    }

    fn run(&mut self, plan: &Plan) -> Result<(), String> {
        for op in &plan.ops {
            self.apply(op);
            self.check().map_err(|e| format!("after {op:?}: {e}"))?;
        }
        Ok(())
    }

    /// The frontends as (key → backend addresses, sorted), for comparing with the desired state.
    fn frontends(&self) -> BTreeMap<FrontendKey, Vec<BackendAddr>> {
        let mut out = BTreeMap::new();
        for (k, h) in self.services.iter().filter(|(k, _)| k.slot == 0) {
            let mut addrs: Vec<BackendAddr> = (1..=h.count)
                .map(|slot| {
                    let id = self.services[&ServiceKey { slot, ..*k }].backend_id;
                    crate::registry::backend_addr(&self.backends[&id]).expect("valid backend")
                })
                .collect();
            // Slots keep their positions across changes; compare as sets.
            addrs.sort();
            out.insert(FrontendKey::from_map_key(k).expect("valid key"), addrs);
        }
        out
    }

    fn contents(&self) -> MapContents {
        MapContents {
            services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: self.backends.iter().map(|(k, v)| (*k, *v)).collect(),
            tables: self.tables.iter().map(|(id, (size, ids))| (*id, *size, fingerprint(ids, *size))).collect(),
            memberships: self.memberships.iter().copied().collect(),
        }
    }
}

fn name(n: &str) -> ServiceName {
    ServiceName::new("default", n)
}

fn backend(i: u8) -> BackendAddr {
    BackendAddr { addr: Ipv4Addr::new(10, 244, 0, i), port: 8080, protocol: Protocol::Tcp }
}

fn frontend_key(i: u8, scope: Scope) -> FrontendKey {
    FrontendKey { addr: Ipv4Addr::new(10, 96, 0, i), port: 80, protocol: Protocol::Tcp, scope }
}

/// A Service with one frontend per (key index) over the given backends.
fn service(svc: &str, keys: &[u8], backends: &[u8], affinity: u32) -> ServiceTables {
    let mut t = ServiceTables::default();
    let mut bs: Vec<BackendAddr> = backends.iter().map(|b| backend(*b)).collect();
    bs.sort();
    bs.dedup();
    for b in &bs {
        t.backends.insert(*b, BackendInfo { local: b.addr.octets()[3] % 2 == 0, terminating: false });
    }
    for k in keys {
        t.frontends.insert(
            frontend_key(*k, Scope::Internal),
            Frontend {
                port: ServicePortName { service: name(svc), port: "http".into(), protocol: Protocol::Tcp },
                kind: FrontendKind::ClusterIp,
                backends: bs.clone(),
                affinity_timeout: affinity,
                local_only: false,
                terminating_fallback: false,
            },
        );
    }
    t
}

/// [`service`], whose EndpointSlices also list `listed_only`: endpoints no frontend selects (terminating, not
/// ready).
fn service_listing(svc: &str, keys: &[u8], backends: &[u8], listed_only: &[u8]) -> ServiceTables {
    let mut t = service(svc, keys, backends, 0);
    for b in listed_only {
        t.backends.insert(backend(*b), BackendInfo { local: false, terminating: true });
    }
    t
}

fn id_of(reg: &Registry, b: u8) -> u32 {
    reg.backends[&backend(b)].id
}

fn expected(desired: &BTreeMap<ServiceName, ServiceTables>, reg: &Registry) -> BTreeMap<FrontendKey, Vec<BackendAddr>> {
    let mut out = BTreeMap::new();
    for (n, t) in desired {
        for (k, f) in &t.frontends {
            if reg.frontends.get(k).and_then(|p| p.owner.as_ref()) == Some(n) {
                out.insert(*k, f.backends.clone());
            }
        }
    }
    out
}

#[test]
fn a_new_service_is_written_backends_first_header_last_and_fully() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    let plan = plan_service(&mut reg, &name("web"), Some(&service("web", &[1], &[1, 2, 3], 0)), 1);
    k.run(&plan).expect("consistent at every step");
    let first_header = plan.ops.iter().position(|o| matches!(o, Op::PutHeader(..))).expect("a header");
    assert!(plan.ops[..first_header].iter().any(|o| matches!(o, Op::CreateTable { .. })));
    assert_eq!(plan.ops.last().map(phase), Some(5), "the header is the last write");
    assert_eq!(k.frontends()[&frontend_key(1, Scope::Internal)], vec![backend(1), backend(2), backend(3)]);
    assert_eq!(k.tables.len(), 1);
    assert_eq!(k.memberships.len(), 3);
}

#[test]
fn an_unchanged_service_costs_no_map_operation() {
    let mut reg = Registry::new(capacity(), M);
    let t = service("web", &[1, 2], &[1, 2], 0);
    plan_service(&mut reg, &name("web"), Some(&t), 1);
    let again = plan_service(&mut reg, &name("web"), Some(&t), 2);
    assert!(again.ops.is_empty(), "{:?}", again.ops);
}

#[test]
fn one_endpoint_change_among_a_thousand_services_writes_only_that_service() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    for i in 0..1000u32 {
        let n = format!("svc{i}");
        let t = service(&n, &[(i % 250) as u8 + 1], &[(i % 200) as u8 + 1, (i % 200) as u8 + 2], 0);
        // Distinct frontend per Service: vary the port.
        let t = ServiceTables {
            frontends: t
                .frontends
                .into_iter()
                .map(|(mut fk, f)| {
                    fk.port = 1000 + i as u16;
                    (fk, f)
                })
                .collect(),
            ..t
        };
        k.run(&plan_service(&mut reg, &name(&n), Some(&t), 1)).expect("consistent");
    }
    let mut t = service("svc7", &[8], &[8, 9, 42], 0);
    t.frontends = t
        .frontends
        .into_iter()
        .map(|(mut fk, f)| {
            fk.port = 1007;
            (fk, f)
        })
        .collect();
    let plan = plan_service(&mut reg, &name("svc7"), Some(&t), 2);
    k.run(&plan).expect("consistent");
    // New backend, its stats reset, memberships, one table, one slot, one header, old table deleted.
    assert!(plan.ops.len() <= 10, "{} ops: {:?}", plan.ops.len(), plan.ops);
    assert_eq!(plan.changed_frontends, 1);
}

#[test]
fn replacing_one_endpoint_rewrites_one_slot_and_keeps_the_others_in_place() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("web"), Some(&service("web", &[1], &[1, 2, 3, 4, 5, 6], 0)), 1)).expect("ok");
    // Replace backend 2 by 9 (which sorts last): only slot 2 changes.
    let p = plan_service(&mut reg, &name("web"), Some(&service("web", &[1], &[1, 3, 4, 5, 6, 9], 0)), 2);
    k.run(&p).expect("consistent");
    let slots: Vec<_> = p.ops.iter().filter(|o| matches!(o, Op::PutSlot(..))).collect();
    assert_eq!(slots.len(), 1, "{:?}", p.ops);
    assert_eq!(k.frontends()[&frontend_key(1, Scope::Internal)], [1, 3, 4, 5, 6, 9].map(backend).to_vec());
}

#[test]
fn removing_a_service_removes_every_entry_it_had() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("web"), Some(&service("web", &[1, 2], &[1, 2, 3], 30)), 1)).expect("ok");
    k.run(&plan_service(&mut reg, &name("web"), None, 2)).expect("consistent");
    assert!(k.services.is_empty() && k.backends.is_empty() && k.tables.is_empty() && k.memberships.is_empty(), "{k:?}");
    assert!(reg.frontends.is_empty() && reg.backends.is_empty() && reg.tables.is_empty() && reg.ports.is_empty());
    assert_eq!(reg.service_entries, 0);
}

#[test]
fn shared_backends_stay_while_another_service_uses_them() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("a"), Some(&service("a", &[1], &[1, 2], 0)), 1)).expect("ok");
    k.run(&plan_service(&mut reg, &name("b"), Some(&service("b", &[2], &[1, 2], 0)), 1)).expect("ok");
    assert_eq!(k.backends.len(), 2);
    assert_eq!(k.tables.len(), 1, "identical backend sets share one Maglev table");
    k.run(&plan_service(&mut reg, &name("a"), None, 2)).expect("ok");
    assert_eq!(k.backends.len(), 2);
    assert_eq!(k.tables.len(), 1);
    assert_eq!(k.frontends().len(), 1);
}

#[test]
fn scaling_to_zero_keeps_the_frontend_with_count_zero_and_removes_its_backends() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("web"), Some(&service("web", &[1], &[1, 2], 0)), 1)).expect("ok");
    k.run(&plan_service(&mut reg, &name("web"), Some(&service("web", &[1], &[], 0)), 2)).expect("ok");
    let header = k.services[&frontend_key(1, Scope::Internal).map_key(0)];
    assert_eq!((header.count, header.table_id), (0, 0));
    assert_eq!(k.services.len(), 1);
    assert!(k.backends.is_empty() && k.tables.is_empty());
}

#[test]
fn a_frontend_held_by_another_service_is_reported_and_taken_over_when_released() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("a"), Some(&service("a", &[1], &[1], 0)), 1)).expect("ok");
    let p = plan_service(&mut reg, &name("b"), Some(&service("b", &[1], &[2], 0)), 1);
    assert!(matches!(p.skipped.as_slice(), [SkipReason::FrontendConflict { .. }]));
    assert!(p.ops.is_empty());
    let p = plan_service(&mut reg, &name("a"), None, 2);
    assert_eq!(p.requeue, vec![name("b")]);
    k.run(&p).expect("ok");
    k.run(&plan_service(&mut reg, &name("b"), Some(&service("b", &[1], &[2], 0)), 3)).expect("ok");
    assert_eq!(k.frontends()[&frontend_key(1, Scope::Internal)], vec![backend(2)]);
}

#[test]
fn a_service_that_does_not_fit_is_skipped_and_keeps_what_it_had() {
    let cap = Capacity { services: 8, ..capacity() };
    let mut reg = Registry::new(cap, M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("a"), Some(&service("a", &[1], &[1, 2], 0)), 1)).expect("ok");
    let p = plan_service(&mut reg, &name("a"), Some(&service("a", &[1, 2, 3], &[1, 2, 3], 0)), 2);
    assert!(matches!(p.skipped.last(), Some(SkipReason::MapFull { map: "services", .. })), "{:?}", p.skipped);
    assert!(p.ops.is_empty());
    assert_eq!(k.frontends()[&frontend_key(1, Scope::Internal)], vec![backend(1), backend(2)]);
    // Another Service that fits is still programmed.
    k.run(&plan_service(&mut reg, &name("b"), Some(&service("b", &[9], &[7], 0)), 3)).expect("ok");
    assert_eq!(k.frontends().len(), 2);
}

#[test]
fn a_registry_rebuilt_from_the_maps_resumes_without_rewriting_anything() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    let desired: BTreeMap<ServiceName, ServiceTables> = [
        (name("a"), service("a", &[1, 2], &[1, 2, 3], 0)),
        (name("b"), service("b", &[3], &[4], 60)),
        (name("c"), service("c", &[4], &[], 0)),
    ]
    .into();
    for (n, t) in &desired {
        k.run(&plan_service(&mut reg, n, Some(t), 1)).expect("ok");
    }
    let mut resumed = Registry::from_maps(capacity(), M, k.contents(), fingerprint);
    assert_eq!(resumed.unclaimed().len(), 4);
    for (n, t) in &desired {
        let p = plan_service(&mut resumed, n, Some(t), 2);
        assert!(p.ops.is_empty(), "{n}: {:?}", p.ops);
    }
    let cleanup = plan_unclaimed(&mut resumed);
    assert!(cleanup.ops.is_empty(), "{:?}", cleanup.ops);
    // And the resumed registry keeps working: a change after the restart is planned incrementally.
    let p = plan_service(&mut resumed, &name("b"), Some(&service("b", &[3], &[4, 5], 60)), 3);
    k.run(&p).expect("ok");
    assert_eq!(k.frontends()[&frontend_key(3, Scope::Internal)], vec![backend(4), backend(5)]);
}

#[test]
fn after_a_restart_what_no_service_claims_is_removed_and_a_stale_table_is_rebuilt() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("a"), Some(&service("a", &[1], &[1, 2], 0)), 1)).expect("ok");
    k.run(&plan_service(&mut reg, &name("gone"), Some(&service("gone", &[2], &[5, 6], 0)), 1)).expect("ok");
    // Corrupt a's table: a crash between writing a table and its header looks like this.
    let a_table = k.services[&frontend_key(1, Scope::Internal).map_key(0)].table_id;
    if let Some(t) = k.tables.get_mut(&a_table) {
        t.1[0] = t.1[1];
    }
    let mut resumed = Registry::from_maps(capacity(), M, k.contents(), fingerprint);
    let p = plan_service(&mut resumed, &name("a"), Some(&service("a", &[1], &[1, 2], 0)), 2);
    assert!(p.ops.iter().any(|o| matches!(o, Op::CreateTable { .. })), "{:?}", p.ops);
    k.run(&p).expect("ok");
    let cleanup = plan_unclaimed(&mut resumed);
    k.run(&cleanup).expect("ok");
    assert_eq!(k.frontends().len(), 1);
    assert_eq!(k.backends.len(), 2);
    assert_eq!(k.tables.len(), 1);
}

#[test]
fn an_endpoint_no_longer_selected_keeps_its_backend_until_its_service_no_longer_lists_it() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("web"), Some(&service("web", &[1], &[1, 2, 3], 30)), 1)).expect("ok");
    let one = id_of(&reg, 1);
    // Endpoint 1 turns terminating: the frontend stops selecting it (slots and affinity), its backend stays.
    let p = plan_service(&mut reg, &name("web"), Some(&service_listing("web", &[1], &[2, 3], &[1])), 2);
    k.run(&p).expect("consistent");
    assert!(!p.ops.iter().any(|o| matches!(o, Op::DeleteBackend(_))), "{:?}", p.ops);
    assert_eq!(k.frontends()[&frontend_key(1, Scope::Internal)], vec![backend(2), backend(3)]);
    assert!(k.backends.contains_key(&one), "the backend of a listed endpoint was deleted");
    assert_eq!(
        k.backends[&one].flags & (BACKEND_F_TERMINATING | BACKEND_F_DRAINING),
        BACKEND_F_TERMINATING | BACKEND_F_DRAINING
    );
    assert!(!k.memberships.iter().any(|m| m.backend_id == one), "session affinity could still choose it");
    // Listed still, unchanged: nothing to write.
    let p = plan_service(&mut reg, &name("web"), Some(&service_listing("web", &[1], &[2, 3], &[1])), 3);
    assert!(p.ops.is_empty(), "{:?}", p.ops);
    // Selected again (ready again): same backend, no longer draining; then terminating once more.
    k.run(&plan_service(&mut reg, &name("web"), Some(&service("web", &[1], &[1, 2, 3], 30)), 3)).expect("ok");
    assert_eq!((id_of(&reg, 1), k.backends[&one].flags & BACKEND_F_DRAINING), (one, 0));
    k.run(&plan_service(&mut reg, &name("web"), Some(&service_listing("web", &[1], &[2, 3], &[1])), 3)).expect("ok");
    // The endpoint leaves the slice: its backend goes.
    let p = plan_service(&mut reg, &name("web"), Some(&service("web", &[1], &[2, 3], 30)), 4);
    k.run(&p).expect("consistent");
    assert!(p.ops.contains(&Op::DeleteBackend(one)), "{:?}", p.ops);
    assert!(!k.backends.contains_key(&one));
    // A listed endpoint that never had a backend gets none: no flow can be going to it.
    let p = plan_service(&mut reg, &name("web"), Some(&service_listing("web", &[1], &[2, 3], &[7])), 5);
    assert!(!p.ops.iter().any(|o| matches!(o, Op::PutBackend { .. })), "{:?}", p.ops);
    // The Service goes: everything goes.
    k.run(&plan_service(&mut reg, &name("web"), None, 6)).expect("consistent");
    assert!(k.backends.is_empty() && reg.backends.is_empty(), "{k:?}");
}

#[test]
fn a_backend_stays_while_any_service_selects_or_lists_it() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("a"), Some(&service("a", &[1], &[1, 2], 0)), 1)).expect("ok");
    k.run(&plan_service(&mut reg, &name("b"), Some(&service("b", &[2], &[1], 0)), 1)).expect("ok");
    let one = id_of(&reg, 1);
    // b no longer selects endpoint 1 but lists it; a still selects it, then drops it altogether.
    k.run(&plan_service(&mut reg, &name("b"), Some(&service_listing("b", &[2], &[], &[1])), 2)).expect("ok");
    assert_eq!(k.backends[&one].flags & BACKEND_F_DRAINING, 0, "a still selects endpoint 1");
    k.run(&plan_service(&mut reg, &name("a"), Some(&service("a", &[1], &[2], 0)), 2)).expect("ok");
    assert!(k.backends.contains_key(&one), "b still lists endpoint 1");
    assert_ne!(k.backends[&one].flags & BACKEND_F_DRAINING, 0, "no frontend selects endpoint 1 any more");
    k.run(&plan_service(&mut reg, &name("b"), Some(&service("b", &[2], &[], 0)), 3)).expect("ok");
    assert!(!k.backends.contains_key(&one), "nobody lists endpoint 1");
}

#[test]
fn after_a_restart_a_backend_still_listed_keeps_its_id_and_one_no_longer_listed_is_removed() {
    let mut reg = Registry::new(capacity(), M);
    let mut k = Kernel::default();
    k.run(&plan_service(&mut reg, &name("web"), Some(&service("web", &[1], &[1, 2, 3], 0)), 1)).expect("ok");
    let draining = service_listing("web", &[1], &[3], &[1, 2]);
    k.run(&plan_service(&mut reg, &name("web"), Some(&draining), 2)).expect("ok");
    let (one, two) = (id_of(&reg, 1), id_of(&reg, 2));

    // Restarted while endpoints 1 and 2 drain; by the first sync endpoint 2 has left the slice.
    let mut resumed = Registry::from_maps(capacity(), M, k.contents(), fingerprint);
    let p = plan_service(&mut resumed, &name("web"), Some(&service_listing("web", &[1], &[3], &[1])), 3);
    k.run(&p).expect("consistent");
    assert!(p.ops.is_empty(), "{:?}", p.ops);
    let cleanup = plan_unclaimed(&mut resumed);
    k.run(&cleanup).expect("consistent");
    assert_eq!(cleanup.ops, vec![Op::DeleteBackend(two)]);
    assert!(k.backends.contains_key(&one), "the backend of a still-listed endpoint was deleted at restart");
    assert_eq!(id_of(&resumed, 1), one);
    // And it goes when its endpoint does.
    let p = plan_service(&mut resumed, &name("web"), Some(&service("web", &[1], &[3], 0)), 4);
    k.run(&p).expect("consistent");
    assert_eq!(k.backends.keys().copied().collect::<Vec<_>>(), vec![id_of(&resumed, 3)]);
}

type ArbService = (Vec<u8>, Vec<u8>, Vec<u8>, u32);

/// Frontend keys, selected endpoints, endpoints only listed, affinity.
fn arb_service() -> impl Strategy<Value = Option<ArbService>> {
    prop::option::of((
        prop::collection::vec(1u8..6, 0..3),
        prop::collection::vec(1u8..12, 0..6),
        prop::collection::vec(1u8..12, 0..3),
        prop_oneof![Just(0u32), Just(30u32)],
    ))
}

fn arb_tables(svc: &str, (keys, selected, listed, affinity): &ArbService) -> ServiceTables {
    let mut t = service(svc, keys, selected, *affinity);
    for b in listed {
        t.backends.entry(backend(*b)).or_insert(BackendInfo { local: false, terminating: true });
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_changes_keeps_the_maps_consistent_at_every_step_and_ends_as_desired(
        steps in prop::collection::vec(prop::collection::vec(arb_service(), 3), 1..8)
    ) {
        let mut reg = Registry::new(capacity(), M);
        let mut k = Kernel::default();
        let names = [name("a"), name("b"), name("c")];
        let mut desired: BTreeMap<ServiceName, ServiceTables> = BTreeMap::new();
        for (generation, step) in steps.iter().enumerate() {
            for (n, s) in names.iter().zip(step) {
                let t = s.as_ref().map(|s| arb_tables(&n.name, s));
                let plan = plan_service(&mut reg, n, t.as_ref(), generation as u32 + 1);
                prop_assert!(k.run(&plan).is_ok(), "{:?}", k.run(&plan));
                match t {
                    Some(t) => { desired.insert(n.clone(), t); }
                    None => { desired.remove(n); }
                }
            }
        }
        prop_assert_eq!(k.frontends(), expected(&desired, &reg));
        // Nothing leaks: every backend in the maps is used by a frontend or listed by a Service, every table used.
        let used: HashSet<u32> = k.services.values().filter(|v| v.backend_id != 0).map(|v| v.backend_id).collect();
        let listed: HashSet<u32> = desired.values().flat_map(|t| t.backends.keys())
            .filter_map(|a| reg.backends.get(a).map(|e| e.id)).collect();
        let in_maps: HashSet<u32> = k.backends.keys().copied().collect();
        prop_assert!(used.is_subset(&in_maps));
        prop_assert!(in_maps.is_subset(&used.union(&listed).copied().collect()), "{:?} beyond {:?} and {:?}", in_maps, used, listed);
        let tables: HashSet<u32> = k.services.values().filter(|v| v.table_id != 0).map(|v| v.table_id).collect();
        prop_assert_eq!(tables, k.tables.keys().copied().collect::<HashSet<_>>());
        prop_assert_eq!(reg.service_entries as usize, k.services.len());
        let implied: HashSet<AffinityMatchKey> = k.services.values()
            .filter(|v| v.backend_id != 0)
            .map(|v| AffinityMatchKey { backend_id: v.backend_id, service_id: v.service_id })
            .collect();
        prop_assert_eq!(implied, k.memberships.clone());
        // Every Service deleted: nothing is left, listed backends included.
        for n in &names {
            let plan = plan_service(&mut reg, n, None, u32::MAX);
            prop_assert!(k.run(&plan).is_ok());
        }
        prop_assert!(k.services.is_empty() && k.backends.is_empty() && k.tables.is_empty(), "{:?}", k);
        prop_assert!(reg.backends.is_empty() && reg.listed.is_empty());
    }
}

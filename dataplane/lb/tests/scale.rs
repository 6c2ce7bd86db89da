//! 10,000 Services load correctly and quickly, a connection through one of them works, and one endpoint change
//! among them costs a handful of map writes. Runs as root; fails instead of skipping when CI=true.

mod common;

use std::{net::Ipv4Addr, time::Instant};

use common::{Cluster, apply, service, slice};
use serde_json::json;
use skiff_ebpf_common::{PROTO_TCP, SCOPE_INTERNAL, ServiceKey};
use skiff_testkit::{probe, require_privileges};

#[test]
fn probe_entry() {
    probe::entry();
}

const N: u32 = 10_000;

fn cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 10 + (i / 250) as u8, (i % 250 + 1) as u8)
}

#[test]
fn ten_thousand_services_load_correctly_and_one_change_among_them_is_cheap() {
    if !require_privileges("10,000 Services test") {
        return;
    }
    let mut c = Cluster::new(1).expect("cluster");
    let client = c.add_pod(0).expect("pod");
    let backend = c.add_pod(0).expect("pod");
    let _server = c.serve(backend, "tcp", 8080, "real");
    let mut lb = c.start_lb(&c.config());

    let t0 = Instant::now();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..N {
        let name = format!("svc{i}");
        services.push(service(&name, &cluster_ip(i).to_string(), json!({})));
        let eps = if i == 5_000 {
            vec![(c.pods[backend].ip, "node-0", true)]
        } else {
            let (a, b) = ((i / 250) as u8, (i % 250) as u8);
            vec![(Ipv4Addr::new(10, 250, a, b), "node-0", true), (Ipv4Addr::new(10, 251, a, b), "node-1", true)]
        };
        slices.push(slice(&name, &eps, 8080, "TCP"));
    }
    eprintln!("building objects: {:?}", t0.elapsed());
    let start = Instant::now();
    lb.store_mut().replace_services(services);
    lb.store_mut().replace_slices(slices);
    eprintln!("store: {:?}", start.elapsed());
    let report = lb.full_sync(None);
    let took = start.elapsed();
    eprintln!("10,000 Services: {} map operations in {took:?}", report.ops);
    assert!(!report.needs_full_sync && report.skipped.is_empty(), "{report:?}");
    assert_eq!(lb.applier().registry().frontends.len(), N as usize);

    // Every Service is in the kernel's map with its backends, and its Maglev table is complete.
    let maps = lb.applier().maps();
    for i in (0..N).step_by(97) {
        let key = ServiceKey {
            addr: u32::from(cluster_ip(i)).to_be(),
            port: 80u16.to_be(),
            slot: 0,
            proto: PROTO_TCP,
            scope: SCOPE_INTERNAL,
            pad: [0; 2],
        };
        let header = maps.service_entry(&key).unwrap_or_else(|| panic!("service {i} missing"));
        let expected = if i == 5_000 { 1 } else { 2 };
        assert_eq!(header.count, expected, "service {i}");
        for slot in 1..=header.count {
            let s = maps.service_entry(&ServiceKey { slot, ..key }).expect("slot");
            let b = maps.backend_entry(s.backend_id).expect("backend");
            assert_eq!(b.port, 8080u16.to_be());
        }
        if expected > 1 {
            let table = maps.table_entries(header.table_id).expect("table");
            assert!(table[..header.table_size as usize].iter().all(|id| *id != 0));
        }
    }

    let lines = c.run_in_pod(client, &format!("tcp 3 {}:80", cluster_ip(5_000)));
    assert!(lines.iter().all(|l| probe::field(l, "id") == Some("real")), "{lines:?}");

    // One endpoint change among 10,000 Services: O(changed) map writes.
    let start = Instant::now();
    let eps = vec![(Ipv4Addr::new(10, 250, 4, 4), "node-0", true), (Ipv4Addr::new(10, 252, 0, 1), "node-1", true)];
    let mut changed = std::collections::BTreeSet::new();
    changed.extend(lb.store_mut().apply_slice(slice("svc1004", &eps, 8080, "TCP")));
    let report = lb.sync(changed, None);
    eprintln!("one endpoint change: {} map operations in {:?}", report.ops, start.elapsed());
    assert_eq!(report.services, 1);
    assert!(report.ops <= 10, "{report:?}");

    // And removing them all removes every entry.
    lb.store_mut().replace_services(Vec::new());
    lb.store_mut().replace_slices(Vec::new());
    let report = lb.full_sync(None);
    assert!(!report.needs_full_sync);
    let reg = lb.applier().registry();
    assert_eq!((reg.frontends.len(), reg.backends.len(), reg.tables.len(), reg.service_entries), (0, 0, 0, 0));
    let contents = lb.applier().maps().read_contents().expect("contents");
    assert!(contents.services.is_empty() && contents.backends.is_empty() && contents.tables.is_empty());
    assert!(contents.memberships.is_empty());
    let _ = apply;
}

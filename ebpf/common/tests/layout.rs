//! Layout tests: the size and alignment of every shared type is pinned, and each type has no implicit padding (the
//! sum of its fields' sizes equals its size), so the BPF programs and user space cannot disagree.

use core::mem::{align_of, size_of};
use skiff_ebpf_common::*;

macro_rules! layout {
    ($t:ty, size = $size:expr, align = $align:expr, fields = [$($f:ident),+ $(,)?]) => {{
        assert_eq!(size_of::<$t>(), $size, concat!("size of ", stringify!($t)));
        assert_eq!(align_of::<$t>(), $align, concat!("alignment of ", stringify!($t)));
        let v = <$t>::default();
        let fields = 0 $(+ core::mem::size_of_val(&v.$f))+;
        assert_eq!(fields, $size, concat!(stringify!($t), " has implicit padding"));
    }};
}

#[test]
fn every_shared_type_has_the_pinned_size_alignment_and_no_implicit_padding() {
    layout!(ServiceKey, size = 12, align = 4, fields = [addr, port, slot, proto, scope, pad]);
    layout!(
        ServiceValue,
        size = 32,
        align = 4,
        fields = [backend_id, service_id, table_id, table_size, affinity_timeout, generation, count, flags, pad]
    );
    layout!(Backend, size = 8, align = 4, fields = [addr, port, proto, flags]);
    layout!(AffinityKey, size = 16, align = 8, fields = [client, service_id, kind]);
    layout!(AffinityValue, size = 8, align = 4, fields = [backend_id, last_used]);
    layout!(AffinityMatchKey, size = 8, align = 4, fields = [backend_id, service_id]);
    layout!(ReverseSkKey, size = 16, align = 8, fields = [cookie, addr, port, pad]);
    layout!(ReverseSkValue, size = 8, align = 4, fields = [addr, port, pad]);
    layout!(CtKey, size = 16, align = 4, fields = [saddr, daddr, sport, dport, proto, pad]);
    layout!(CtValue, size = 24, align = 4, fields = [saddr, daddr, sport, dport, backend_id, service_id, flags, pad]);
    layout!(MaglevMeta, size = 8, align = 4, fields = [size, fingerprint]);
    layout!(Counters, size = 32, align = 8, fields = [packets, bytes, connections, refused]);
    layout!(Config, size = 16, align = 4, fields = [snat_addr, nat_port_min, nat_port_max, generation, flags]);
    layout!(PolEndpoint, size = 16, align = 4, fields = [addr, identity, flags, pad]);
    layout!(PolRuleData, size = 12, align = 1, fields = [endpoint, dir, peer, proto, port]);
    layout!(PolRuleValue, size = 4, align = 4, fields = [policy]);
    layout!(PolCtKey, size = 16, align = 4, fields = [saddr, daddr, sport, dport, proto, dir, pad]);
    layout!(PolCtValue, size = 8, align = 4, fields = [generation, policy]);
    layout!(PolStatsKey, size = 12, align = 4, fields = [addr, policy, dir, verdict, pad]);
    layout!(
        PolVerdict,
        size = 32,
        align = 4,
        fields = [saddr, daddr, sport, dport, proto, dir, verdict, pad, endpoint, peer, policy, ifindex]
    );
    layout!(PolConfig, size = 8, align = 4, fields = [generation, flags]);
}

#[test]
fn field_offsets_match_what_the_programs_expect() {
    assert_eq!(core::mem::offset_of!(ServiceKey, port), 4);
    assert_eq!(core::mem::offset_of!(ServiceKey, slot), 6);
    assert_eq!(core::mem::offset_of!(ServiceKey, proto), 8);
    assert_eq!(core::mem::offset_of!(ServiceValue, count), 24);
    assert_eq!(core::mem::offset_of!(CtKey, proto), 12);
    assert_eq!(core::mem::offset_of!(AffinityKey, service_id), 8);
}

#[test]
fn event_indexes_are_dense_and_named_uniquely() {
    for (i, e) in Event::ALL.iter().enumerate() {
        assert_eq!(*e as u32, i as u32);
    }
    assert_eq!(Event::ALL.len() as u32, Event::COUNT);
    let mut names: Vec<_> = Event::ALL.iter().map(|e| e.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Event::ALL.len());
}

#[test]
fn flow_hash_depends_on_every_field_of_the_tuple() {
    let base = flow_hash(0x0a00_0001, 0x0a60_0001, 1234, 80, PROTO_TCP);
    assert_ne!(base, flow_hash(0x0a00_0002, 0x0a60_0001, 1234, 80, PROTO_TCP));
    assert_ne!(base, flow_hash(0x0a00_0001, 0x0a60_0002, 1234, 80, PROTO_TCP));
    assert_ne!(base, flow_hash(0x0a00_0001, 0x0a60_0001, 1235, 80, PROTO_TCP));
    assert_ne!(base, flow_hash(0x0a00_0001, 0x0a60_0001, 1234, 81, PROTO_TCP));
    assert_ne!(base, flow_hash(0x0a00_0001, 0x0a60_0001, 1234, 80, PROTO_UDP));
    assert_eq!(base, flow_hash(0x0a00_0001, 0x0a60_0001, 1234, 80, PROTO_TCP));
}

#[test]
fn flow_hash_spreads_source_ports_evenly_over_buckets() {
    let mut buckets = [0u32; 16];
    for sport in 0..16_000u16 {
        buckets[(flow_hash(0x0a00_0001, 0x0a60_0001, sport, 80, PROTO_TCP) % 16) as usize] += 1;
    }
    for b in buckets {
        assert!((900..1100).contains(&b), "uneven bucket {b} in {buckets:?}");
    }
}

#[test]
fn maglev_tables_are_a_header_and_their_entries_without_padding() {
    assert_eq!(size_of::<MaglevTableS>(), 8 + 4 * MAGLEV_S);
    assert_eq!(size_of::<MaglevTableM>(), 8 + 4 * MAGLEV_M);
    assert_eq!(size_of::<MaglevTableL>(), 8 + 4 * MAGLEV_L);
    assert_eq!(align_of::<MaglevTableM>(), 4);
    assert_eq!(core::mem::offset_of!(MaglevTableM, entries), 8);
    const { assert!(MAGLEV_S < MAGLEV_M && MAGLEV_M < MAGLEV_L) };
    assert_eq!(limits::MAGLEV_DEFAULT_SIZE as usize, MAGLEV_M);
}

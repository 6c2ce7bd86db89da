//! Policy verdicts and counters in words: which pods, which policy, what happened.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use skiff_ebpf_common::{
    PolStatsKey, PolVerdict, VERDICT_ALLOWED, VERDICT_DENIED, VERDICT_HOST, VERDICT_NOT_ISOLATED, VERDICT_REVOKED,
    VERDICT_SPOOFED,
};

use super::model::{Direction, PolicyNames};

/// The name of a `VERDICT_*`.
pub fn verdict_name(v: u8) -> &'static str {
    match v {
        VERDICT_ALLOWED => "allowed",
        VERDICT_NOT_ISOLATED => "allowed-not-isolated",
        VERDICT_HOST => "allowed-node",
        VERDICT_DENIED => "denied",
        VERDICT_SPOOFED => "dropped-spoofed-source",
        VERDICT_REVOKED => "denied-after-policy-change",
        _ => "unknown",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        n => format!("proto-{n}"),
    }
}

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(be))
}

/// One verdict as a line: `denied ingress tcp 10.244.0.5:40000 (y/a) -> 10.244.0.2:81 (x/a): x/a is isolated for
/// ingress by x/deny and no rule allows it`.
pub fn describe(v: &PolVerdict, names: &PolicyNames) -> String {
    let dir = Direction::from_wire(v.dir).unwrap_or(Direction::Ingress);
    let (s, d) = (addr(v.saddr), addr(v.daddr));
    let who = |a: Ipv4Addr, id: Option<u32>| -> String {
        names
            .pods
            .get(&a)
            .cloned()
            .or_else(|| id.and_then(|i| names.identities.get(&i).cloned()))
            .unwrap_or_else(|| "world".into())
    };
    let (s_id, d_id) = match dir {
        Direction::Ingress => (Some(v.peer), None),
        Direction::Egress => (None, Some(v.peer)),
    };
    let mut line = format!(
        "{} {dir} {} {s}:{} ({}) -> {d}:{} ({})",
        verdict_name(v.verdict),
        proto_name(v.proto),
        u16::from_be(v.sport),
        who(s, s_id),
        u16::from_be(v.dport),
        who(d, d_id),
    );
    let pod = match dir {
        Direction::Ingress => d,
        Direction::Egress => s,
    };
    let pod_name = names.pods.get(&pod).cloned().unwrap_or_else(|| pod.to_string());
    let policy = |id: u32| names.policies.get(&id).cloned().unwrap_or_else(|| format!("policy #{id}"));
    let isolating = || -> String {
        let list: Vec<String> = names.isolating.get(&(pod, dir)).into_iter().flatten().map(|id| policy(*id)).collect();
        if list.is_empty() { "a policy since removed".into() } else { list.join(", ") }
    };
    let _ = match v.verdict {
        VERDICT_ALLOWED => write!(line, ": allowed by {}", policy(v.policy)),
        VERDICT_NOT_ISOLATED => write!(line, ": {pod_name} is not isolated for {dir}"),
        VERDICT_HOST => write!(line, ": traffic with the node is always allowed"),
        VERDICT_DENIED | VERDICT_REVOKED => {
            write!(line, ": {pod_name} is isolated for {dir} by {} and no rule allows it", isolating())
        }
        VERDICT_SPOOFED => write!(line, ": the source is not {pod_name}'s address"),
        _ => Ok(()),
    };
    line
}

/// Counter rows: labels (namespace, pod, direction, verdict, policy) → new flows, summed over the policies that share
/// labels (none do) and stable in order.
pub fn flow_rows(stats: &BTreeMap<PolStatsKey, u64>, names: &PolicyNames) -> Vec<(Vec<(String, String)>, u64)> {
    let mut rows: BTreeMap<Vec<(String, String)>, u64> = BTreeMap::new();
    for (k, n) in stats {
        let pod = names.pods.get(&addr(k.addr)).cloned().unwrap_or_else(|| addr(k.addr).to_string());
        let (namespace, name) = pod.split_once('/').map_or((String::new(), pod.clone()), |(a, b)| (a.into(), b.into()));
        let dir = Direction::from_wire(k.dir).map_or_else(|| "unknown".to_string(), |d| d.to_string());
        let policy =
            if k.policy == 0 { String::new() } else { names.policies.get(&k.policy).cloned().unwrap_or_default() };
        let labels = vec![
            ("namespace".to_string(), namespace),
            ("pod".to_string(), name),
            ("direction".to_string(), dir),
            ("verdict".to_string(), verdict_name(k.verdict).to_string()),
            ("policy".to_string(), policy),
        ];
        *rows.entry(labels).or_default() += n;
    }
    rows.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> PolicyNames {
        let mut n = PolicyNames::default();
        n.pods.insert(Ipv4Addr::new(10, 244, 0, 2), "x/a".into());
        n.pods.insert(Ipv4Addr::new(10, 244, 0, 5), "y/a".into());
        n.policies.insert(7, "x/deny".into());
        n.policies.insert(9, "x/allow-web".into());
        n.isolating.insert((Ipv4Addr::new(10, 244, 0, 2), Direction::Ingress), vec![7, 9]);
        n
    }

    fn verdict(verdict: u8, policy: u32) -> PolVerdict {
        PolVerdict {
            saddr: u32::from(Ipv4Addr::new(10, 244, 0, 5)).to_be(),
            daddr: u32::from(Ipv4Addr::new(10, 244, 0, 2)).to_be(),
            sport: 40000u16.to_be(),
            dport: 81u16.to_be(),
            proto: 6,
            dir: skiff_ebpf_common::DIR_INGRESS,
            verdict,
            policy,
            ..Default::default()
        }
    }

    #[test]
    fn a_denied_flow_names_the_pods_and_the_isolating_policies() {
        assert_eq!(
            describe(&verdict(VERDICT_DENIED, 0), &names()),
            "denied ingress tcp 10.244.0.5:40000 (y/a) -> 10.244.0.2:81 (x/a): x/a is isolated for ingress by x/deny, \
             x/allow-web and no rule allows it"
        );
    }

    #[test]
    fn an_allowed_flow_names_the_policy_that_allowed_it() {
        assert!(describe(&verdict(VERDICT_ALLOWED, 9), &names()).ends_with(": allowed by x/allow-web"));
    }

    #[test]
    fn counter_rows_carry_pod_direction_verdict_and_policy() {
        let key = PolStatsKey {
            addr: u32::from(Ipv4Addr::new(10, 244, 0, 2)).to_be(),
            policy: 9,
            dir: skiff_ebpf_common::DIR_INGRESS,
            verdict: VERDICT_ALLOWED,
            pad: [0; 2],
        };
        let rows = flow_rows(&BTreeMap::from([(key, 3)]), &names());
        assert_eq!(rows.len(), 1);
        let labels: Vec<&str> = rows[0].0.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(labels, vec!["x", "a", "ingress", "allowed", "x/allow-web"]);
        assert_eq!(rows[0].1, 3);
    }
}

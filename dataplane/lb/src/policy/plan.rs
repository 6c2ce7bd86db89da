//! The ordered map writes that take the programmed policy maps to the desired ones.
//!
//! # Never briefly open
//! Allows are added before anything refers to them and removed after nothing does: new and changed rules first,
//! then the ip cache, then endpoints (isolating a pod is the last step of giving it rules); then endpoints that went
//! away, ip cache entries, and last the rules no one needs. At every moment a flow is allowed only if the old or the
//! new state allows it. The generation is bumped after every change, so tracked flows are judged again by the state
//! that holds from then on.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use skiff_ebpf_common::{EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, PolEndpoint};

use super::model::{PolicyTables, RuleKey};

/// What the policy maps hold (read back after a restart, then kept in step by the executor).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// The ip cache.
    pub ipcache: BTreeMap<Ipv4Net, u32>,
    /// Endpoints by host-side veth ifindex.
    pub endpoints: BTreeMap<u32, PolEndpoint>,
    /// Rules.
    pub rules: BTreeMap<RuleKey, u32>,
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOp {
    /// Insert or replace a rule.
    PutRule(RuleKey, u32),
    /// Insert or replace an ip cache entry.
    PutIp(Ipv4Net, u32),
    /// Insert or replace an endpoint.
    PutEndpoint(u32, PolEndpoint),
    /// Remove an endpoint.
    DeleteEndpoint(u32),
    /// Remove an ip cache entry.
    DeleteIp(Ipv4Net),
    /// Remove a rule.
    DeleteRule(RuleKey),
    /// Make tracked flows be judged again.
    BumpGeneration,
}

/// The endpoint entry of a pod.
pub fn endpoint_value(ip: Ipv4Addr, e: &super::model::EndpointEntry) -> PolEndpoint {
    let mut flags = 0;
    if e.ingress_isolated {
        flags |= EP_F_INGRESS_ISOLATED;
    }
    if e.egress_isolated {
        flags |= EP_F_EGRESS_ISOLATED;
    }
    PolEndpoint { addr: u32::from(ip).to_be(), identity: e.identity, flags, pad: 0 }
}

/// The desired endpoints by ifindex: pods whose veth is known (`veths`: pod address → ifindex).
pub fn desired_endpoints(desired: &PolicyTables, veths: &BTreeMap<Ipv4Addr, u32>) -> BTreeMap<u32, PolEndpoint> {
    desired
        .endpoints
        .iter()
        .filter_map(|(ip, e)| veths.get(ip).map(|ifindex| (*ifindex, endpoint_value(*ip, e))))
        .collect()
}

/// The writes from `current` to `desired`, in the order above; empty when nothing differs.
pub fn plan(current: &Programmed, desired: &PolicyTables, veths: &BTreeMap<Ipv4Addr, u32>) -> Vec<PolicyOp> {
    let endpoints = desired_endpoints(desired, veths);
    let mut ops = Vec::new();
    for (k, v) in &desired.rules {
        if current.rules.get(k) != Some(v) {
            ops.push(PolicyOp::PutRule(*k, *v));
        }
    }
    for (k, v) in &desired.ipcache {
        if current.ipcache.get(k) != Some(v) {
            ops.push(PolicyOp::PutIp(*k, *v));
        }
    }
    for (k, v) in &endpoints {
        if current.endpoints.get(k) != Some(v) {
            ops.push(PolicyOp::PutEndpoint(*k, *v));
        }
    }
    ops.extend(current.endpoints.keys().filter(|k| !endpoints.contains_key(k)).map(|k| PolicyOp::DeleteEndpoint(*k)));
    ops.extend(current.ipcache.keys().filter(|k| !desired.ipcache.contains_key(k)).map(|k| PolicyOp::DeleteIp(*k)));
    ops.extend(current.rules.keys().filter(|k| !desired.rules.contains_key(k)).map(|k| PolicyOp::DeleteRule(*k)));
    if !ops.is_empty() {
        ops.push(PolicyOp::BumpGeneration);
    }
    ops
}

/// `current` after `ops` (what the executor records once they succeeded).
pub fn after(current: &mut Programmed, ops: &[PolicyOp]) {
    for op in ops {
        match op {
            PolicyOp::PutRule(k, v) => {
                current.rules.insert(*k, *v);
            }
            PolicyOp::PutIp(k, v) => {
                current.ipcache.insert(*k, *v);
            }
            PolicyOp::PutEndpoint(k, v) => {
                current.endpoints.insert(*k, *v);
            }
            PolicyOp::DeleteEndpoint(k) => {
                current.endpoints.remove(k);
            }
            PolicyOp::DeleteIp(k) => {
                current.ipcache.remove(k);
            }
            PolicyOp::DeleteRule(k) => {
                current.rules.remove(k);
            }
            PolicyOp::BumpGeneration => {}
        }
    }
}

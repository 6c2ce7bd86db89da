//! L2 announcement of LoadBalancer pool addresses: this node wins a Lease per address ([`election`]) among the nodes
//! that may announce it ([`targets`]), and while it holds it the balancer's tc program answers ARP for the address
//! on the node interface (`LB_L2_ANNOUNCE`). A node that takes an address over sends gratuitous ARP so that hosts on
//! the link move to it at once. This module is the thin I/O loop around those two pure parts.
//!
//! A holder that cannot renew within [`RENEW_DEADLINE`] (counted from the start of its last successful renewal)
//! withdraws; the kernel's answers carry the same deadline (`L2Entry::expires`), so a killed agent's node stops
//! answering for the address on its own, before another node may take it over.

pub mod election;
pub mod targets;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use self::election::{
    API_TIMEOUT, LEASE_DURATION, LEASE_NAMESPACE, LeaseView, Observations, RENEW_DEADLINE, Step, TICK, decide,
    lease_name,
};

/// The gratuitous ARP (an ARP request for `ip` from `ip`, broadcast) a new holder sends.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend([0xff; 6]);
    f.extend(mac);
    f.extend([0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f.extend(mac);
    f.extend(ip.octets());
    f.extend([0; 6]);
    f.extend(ip.octets());
    f
}

fn view(l: &Lease) -> LeaseView {
    LeaseView {
        holder: l.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default(),
        version: l.metadata.resource_version.clone().unwrap_or_default(),
    }
}

fn lease(name: &str, holder: &str, version: Option<&str>, transitions: i32, acquired: bool) -> Option<Lease> {
    let now = jiff::Timestamp::now().to_string();
    let mut spec = json!({"holderIdentity": holder, "leaseDurationSeconds": LEASE_DURATION.as_secs().max(1),
        "renewTime": now, "leaseTransitions": transitions});
    if acquired {
        spec["acquireTime"] = json!(now);
    }
    let mut meta = json!({"name": name, "namespace": LEASE_NAMESPACE});
    if let Some(v) = version {
        meta["resourceVersion"] = json!(v);
    }
    serde_json::from_value(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}),
    )
    .ok()
}

/// One address's Lease step, carried out; returns whether this node holds the address afterwards.
async fn act(api: &Api<Lease>, me: &str, name: &str, step: Step, current: Option<&Lease>, wanted: bool) -> bool {
    let version = current.and_then(|l| l.metadata.resource_version.as_deref());
    let transitions = current.and_then(|l| l.spec.as_ref()?.lease_transitions).unwrap_or(0);
    let pp = PostParams::default();
    let result = match step {
        Step::Wait => return false,
        Step::Create => match lease(name, me, None, 0, true) {
            Some(l) => api.create(&pp, &l).await.map(|_| true),
            None => return false,
        },
        Step::Renew => match current.cloned() {
            Some(mut l) => {
                if let Some(s) = l.spec.as_mut() {
                    s.renew_time =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now()));
                }
                api.replace(name, &pp, &l).await.map(|_| true)
            }
            None => return false,
        },
        Step::TakeOver => match lease(name, me, version, transitions + 1, true) {
            Some(l) => api.replace(name, &pp, &l).await.map(|_| true),
            None => return false,
        },
        Step::Release if !wanted => {
            let dp = DeleteParams { preconditions: None, ..Default::default() };
            api.delete(name, &dp).await.map(|_| false)
        }
        Step::Release => match lease(name, "", version, transitions, false) {
            Some(l) => api.replace(name, &pp, &l).await.map(|_| false),
            None => return false,
        },
    };
    match result {
        Ok(held) => {
            if step == Step::TakeOver || step == Step::Create {
                tracing::info!(lease = name, "LoadBalancer address taken; announcing it");
            }
            held
        }
        Err(e) => {
            // A conflict means another node wrote first: it holds the address now.
            tracing::debug!(lease = name, ?step, error = %e, "lease write failed");
            false
        }
    }
}

/// The `CLOCK_MONOTONIC` time in ns (what `bpf_ktime_get_ns` reads).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0))
        .unwrap_or(0)
}

/// One address's pass: read the Lease, decide, write, all within [`API_TIMEOUT`]. `Some((true, at, mono))`: this
/// node holds it, renewed no earlier than `at` (and `mono`, in `CLOCK_MONOTONIC` ns): the moment the pass started,
/// which is before any other node can have seen the write, so deadlines counted from it end before the others'
/// lease duration does. `Some((false, ..))`: it does not hold it; `None`: the API server did not answer in time.
async fn pass(
    api: &Api<Lease>,
    me: &str,
    ip: Ipv4Addr,
    eligible: bool,
    needed: bool,
    obs: &std::sync::Mutex<Observations>,
) -> Option<(bool, Instant, u64)> {
    let name = lease_name(ip);
    let (started, mono) = (Instant::now(), monotonic_ns());
    let round = async {
        let current = match api.get_opt(&name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(lease = name, error = %e, "reading the lease failed");
                return None;
            }
        };
        let v = current.as_ref().map(view);
        let age = obs.lock().ok()?.observe(&name, v.as_ref().map(|v| v.version.as_str()), started);
        let step = decide(me, eligible, v.as_ref(), age);
        Some(act(api, me, &name, step, current.as_ref(), needed).await)
    };
    let held = tokio::time::timeout(API_TIMEOUT, round).await.ok()??;
    Some((held, started, mono))
}

/// Announces the pool addresses this node wins on `interface` until the task is dropped.
pub async fn run(client: kube::Client, me: String, interface: String, pin_dir: PathBuf) {
    let (services, _s) = skiff_agent::follow::<Service>(&client, None);
    let (nodes, _n) = skiff_agent::follow::<Node>(&client, None);
    let (slices, _e) = skiff_agent::follow::<EndpointSlice>(&client, None);
    for ready in [services.wait_until_ready().await, nodes.wait_until_ready().await, slices.wait_until_ready().await] {
        if ready.is_err() {
            return tracing::error!("L2 announcement: the watches ended before their first list");
        }
    }
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let obs = std::sync::Mutex::new(Observations::default());
    let mut maps = None;
    let mut announced: BTreeSet<Ipv4Addr> = BTreeSet::new();
    // Per held address: when it was last renewed (Instant and monotonic ns), and when it was taken.
    let mut renewed: BTreeMap<Ipv4Addr, (Instant, u64)> = BTreeMap::new();
    let mut taken: BTreeMap<Ipv4Addr, (Instant, bool)> = BTreeMap::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some((ifindex, mac)) = skiff_agent::host::link_of(&interface).await else {
            tracing::warn!(%interface, "L2 announcement: the interface is gone");
            continue;
        };
        let mut want = targets::targets(&services.state(), &nodes.state(), &slices.state(), &me);
        let needed: BTreeSet<Ipv4Addr> = want.keys().copied().collect();
        for ip in &announced {
            want.entry(*ip).or_insert(false); // no longer wanted at all: release what we hold
        }
        // Every address at once, so one slow Lease does not delay the others' renewals.
        let results = futures::future::join_all(
            want.iter().map(|(ip, eligible)| pass(&api, &me, *ip, *eligible, needed.contains(ip), &obs)),
        )
        .await;
        let now = Instant::now();
        for ((ip, _), result) in want.iter().zip(results) {
            match result {
                Some((true, at, mono)) => {
                    renewed.insert(*ip, (at, mono));
                }
                Some((false, ..)) => {
                    renewed.remove(ip);
                }
                None => {} // unknown: keep the last renewal; the deadline below decides
            }
        }
        // Announce only what was renewed within the deadline, which is shorter than the lease: a holder that cannot
        // renew stops before anyone else may take over (and the kernel stops answering for it at the same time).
        renewed.retain(|_, (at, _)| now.duration_since(*at) < RENEW_DEADLINE);
        if let Ok(mut o) = obs.lock() {
            let names: BTreeSet<String> = want.keys().map(|ip| lease_name(*ip)).collect();
            o.retain(|n| names.contains(n));
        }
        let held: BTreeSet<Ipv4Addr> = renewed.keys().copied().collect();
        if maps.is_none() {
            maps = skiff_lb::loader::open_pinned(&pin_dir).ok();
        }
        let Some(m) = maps.as_mut() else {
            tracing::debug!("L2 announcement: the balancer's maps are not pinned yet");
            continue;
        };
        let deadline_ns = u64::try_from(RENEW_DEADLINE.as_nanos()).unwrap_or(u64::MAX);
        let entries = renewed
            .iter()
            .map(|(ip, (_, at))| {
                let expires = at.saturating_add(deadline_ns);
                (*ip, skiff_ebpf_common::L2Entry { expires, ifindex, mac, pad: [0; 6] })
            })
            .collect::<BTreeMap<_, _>>();
        if let Err(e) = m.set_announced(&entries) {
            tracing::warn!(error = %e, "L2 announcement: writing the announced addresses failed");
            maps = None;
            continue;
        }
        for ip in held.difference(&announced) {
            taken.insert(*ip, (now, false));
            tracing::info!(%ip, %interface, "announcing LoadBalancer address");
        }
        for ip in announced.difference(&held) {
            taken.remove(ip);
            tracing::info!(%ip, "no longer announcing LoadBalancer address");
        }
        // Gratuitous ARP when an address is taken, twice as arping -U does, and once more a lease duration later:
        // a previous holder may have answered a request in its last moments.
        for (ip, (at, repeated)) in taken.iter_mut() {
            let fresh = !announced.contains(ip);
            let again = !*repeated && now.duration_since(*at) >= LEASE_DURATION;
            if !fresh && !again {
                continue;
            }
            *repeated |= again;
            for _ in 0..if fresh { 2 } else { 1 } {
                if let Err(e) = skiff_agent::host::send_frame(ifindex, &garp_frame(mac, *ip)) {
                    tracing::warn!(%ip, error = %e, "sending gratuitous ARP failed");
                }
            }
        }
        announced = held;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_arp_names_the_address_as_sender_and_target() {
        let mac = [0x02, 0, 0, 0, 0, 0x11];
        let f = garp_frame(mac, Ipv4Addr::new(10, 0, 0, 200));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(&f[20..22], &[0, 1], "a request, as arping -U sends");
        assert_eq!(&f[22..28], &mac, "sender MAC");
        assert_eq!(&f[28..32], &[10, 0, 0, 200], "sender address");
        assert_eq!(&f[38..42], &[10, 0, 0, 200], "target address: the same");
    }

    #[test]
    fn leases_carry_holder_duration_and_version() {
        let l = lease("skiff-lb-10-0-0-200", "n1", Some("42"), 3, true).expect("lease");
        assert_eq!(l.metadata.resource_version.as_deref(), Some("42"));
        let spec = l.spec.expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(3));
        assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    }
}

//! The `kubernetes` Service's endpoints: every live API server, as the upstream lease endpoint reconciler keeps
//! them. Each server holds a Lease `kube-system/apiserver-<address>` (label `apiserver.kubernetes.io/identity:
//! kube-apiserver`, the advertised `host:port` as holder) renewed every [`RENEW`], and writes the
//! `default/kubernetes` EndpointSlice with the servers whose Lease it saw renewed within the Lease's duration.
//!
//! Liveness is judged by this server's own clock, from when it saw each Lease's resourceVersion change (as
//! client-go's leader election does), never from the `renewTime` another server wrote: clock skew between servers
//! neither keeps a dead server in nor drops a live one. [`plan`] decides, [`run`] reads and writes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::apiserver::Api;
use crate::apiserver::writes::WriteOptions;

/// How often a server renews its Lease and rewrites the endpoints.
pub const RENEW: Duration = Duration::from_secs(5);
/// How long a Lease lasts without renewal: a dead server leaves the endpoints within this (plus one [`RENEW`]).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A Lease dead this long is deleted.
const FORGET_AFTER: Duration = Duration::from_secs(600);

const NAMESPACE: &str = "kube-system";
const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
const MANAGER: &str = "skiff-apiserver";

/// What the planner needs of one server's Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The Lease's name.
    pub name: String,
    /// The server's advertised `host:port` (`spec.holderIdentity`).
    pub holder: String,
    /// The Lease's resourceVersion: a change is a renewal.
    pub version: String,
    /// `spec.leaseDurationSeconds`.
    pub duration: Duration,
}

/// When this server saw each Lease's current version first.
#[derive(Debug, Default, Clone)]
pub struct Observations {
    seen: BTreeMap<String, (String, Instant)>,
}

/// What the endpoints should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The live servers by the port they serve on (this one always among them), ports ascending: one EndpointSlice
    /// each, as an EndpointSlice's endpoints share its ports. Every server plans the same groups from the same
    /// Leases, so servers on different ports do not overwrite each other's view.
    pub groups: Vec<Group>,
    /// Leases dead for [`FORGET_AFTER`], to delete.
    pub forget: Vec<String>,
}

/// Live servers on one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The port.
    pub port: u16,
    /// Their addresses, sorted.
    pub addresses: Vec<Ipv4Addr>,
}

/// The `kubernetes` Service's target port (`skiff server`'s default).
pub const DEFAULT_PORT: u16 = 6443;

impl Plan {
    /// The EndpointSlices of the `kubernetes` Service, named after their port alone so that no slice changes name
    /// while its servers live: `kubernetes` when every server listens on one port (whichever) and for
    /// [`DEFAULT_PORT`]'s group, `kubernetes-<port>` for the others. In write order: `kubernetes` last, so a
    /// group leaving it has its own slice before it is taken out.
    pub fn slices(&self) -> Vec<(String, Value)> {
        let single = self.groups.len() == 1;
        let mut out: Vec<(String, Value)> = self
            .groups
            .iter()
            .map(|g| {
                let name = if single || g.port == DEFAULT_PORT {
                    "kubernetes".to_string()
                } else {
                    format!("kubernetes-{}", g.port)
                };
                let body = slice(&name, g);
                (name, body)
            })
            .collect();
        out.sort_by_key(|(name, _)| name == "kubernetes");
        out
    }
}

/// The endpoints given the Leases listed now; records in `seen` when each Lease's version was first seen.
pub fn plan(own: SocketAddrV4, leases: &[LeaseView], seen: &mut Observations, now: Instant) -> Plan {
    seen.seen.retain(|name, _| leases.iter().any(|l| &l.name == name));
    let mut live = vec![own];
    let mut forget = Vec::new();
    for lease in leases {
        let since = match seen.seen.get(&lease.name) {
            Some((version, at)) if *version == lease.version => *at,
            _ => {
                seen.seen.insert(lease.name.clone(), (lease.version.clone(), now));
                now
            }
        };
        let quiet = now.saturating_duration_since(since);
        let addr = lease.holder.parse::<SocketAddrV4>().ok();
        if addr == Some(own) {
            continue;
        }
        if quiet >= FORGET_AFTER.max(lease.duration) {
            forget.push(lease.name.clone());
        } else if let Some(addr) = addr
            && quiet < lease.duration
        {
            live.push(addr);
        }
    }
    let mut by_port: BTreeMap<u16, Vec<Ipv4Addr>> = BTreeMap::new();
    for addr in live {
        by_port.entry(addr.port()).or_default().push(*addr.ip());
    }
    let groups = by_port
        .into_iter()
        .map(|(port, mut addresses)| {
            addresses.sort();
            addresses.dedup();
            Group { port, addresses }
        })
        .collect();
    Plan { groups, forget }
}

/// The Lease name for a server advertised at `addr`.
pub fn lease_name(addr: &str) -> String {
    let safe: String =
        addr.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    format!("apiserver-{safe}")
}

fn view(lease: &Value) -> Option<LeaseView> {
    Some(LeaseView {
        name: lease.pointer("/metadata/name")?.as_str()?.to_string(),
        holder: lease.pointer("/spec/holderIdentity")?.as_str()?.to_string(),
        version: lease.pointer("/metadata/resourceVersion")?.as_str()?.to_string(),
        duration: Duration::from_secs(lease.pointer("/spec/leaseDurationSeconds")?.as_u64()?),
    })
}

fn now_text() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The EndpointSlice `default/<name>` for one group.
fn slice(name: &str, group: &Group) -> Value {
    let endpoints: Vec<Value> = group
        .addresses
        .iter()
        .map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": MANAGER}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "https", "port": group.port, "protocol": "TCP"}]})
}

/// One pass: renews this server's Lease, reads every server's, and writes the endpoints when they differ. A server
/// advertised at a name rather than an IPv4 address keeps its Lease but writes no endpoints (`None`).
pub async fn reconcile(api: &Api, advertise: &str, seen: &mut Observations) -> Result<Option<Plan>, String> {
    let opts = WriteOptions { field_manager: Some(MANAGER.into()), ..Default::default() };
    let leases = api.builtin("coordination.k8s.io", "leases");
    let name = lease_name(advertise);
    let renewed = match api.try_get(&leases, Some(NAMESPACE), &name).await.map_err(|e| e.to_string())? {
        None => {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {IDENTITY_LABEL: "kube-apiserver"}},
                "spec": {"holderIdentity": advertise, "leaseDurationSeconds": LEASE_DURATION.as_secs(),
                    "acquireTime": now_text(), "renewTime": now_text()}});
            api.create(&leases, Some(NAMESPACE), lease, &opts).await.map(|_| ())
        }
        Some(cur) => {
            let mut lease = cur.object;
            lease["spec"]["holderIdentity"] = json!(advertise);
            lease["spec"]["leaseDurationSeconds"] = json!(LEASE_DURATION.as_secs());
            lease["spec"]["renewTime"] = json!(now_text());
            api.update(&leases, Some(NAMESPACE), &name, lease, None, &opts).await.map(|_| ())
        }
    };
    renewed.map_err(|e| format!("renewing lease {NAMESPACE}/{name}: {e}"))?;
    let Ok(own) = advertise.parse::<SocketAddrV4>() else { return Ok(None) };
    let selector =
        skiff_api::selector::Selector::parse(&format!("{IDENTITY_LABEL}=kube-apiserver")).map_err(|e| e.to_string())?;
    let listed = api.list_all(&leases, Some(NAMESPACE), selector).await.map_err(|e| e.to_string())?;
    let views: Vec<LeaseView> = listed.iter().filter_map(view).collect();
    let plan = plan(own, &views, seen, Instant::now());
    let slices = api.builtin("discovery.k8s.io", "endpointslices");
    let selector = skiff_api::selector::Selector::parse(&format!(
        "kubernetes.io/service-name=kubernetes,endpointslice.kubernetes.io/managed-by={MANAGER}"
    ))
    .map_err(|e| e.to_string())?;
    let current = api.list_all(&slices, Some("default"), selector).await.map_err(|e| e.to_string())?;
    let by_name =
        |name: &str| current.iter().find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(name));
    let desired = plan.slices();
    for (name, want) in &desired {
        let written = match by_name(name) {
            None => api.create(&slices, Some("default"), want.clone(), &opts).await.map(|_| ()),
            Some(cur) if cur.get("endpoints") == want.get("endpoints") && cur.get("ports") == want.get("ports") => {
                Ok(())
            }
            Some(_) => api.update(&slices, Some("default"), name, want.clone(), None, &opts).await.map(|_| ()),
        };
        written.map_err(|e| format!("writing the kubernetes endpoints ({name}): {e}"))?;
    }
    for stale in current.iter().filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str)) {
        if desired.iter().all(|(name, _)| name != stale) {
            let deleted = api.delete(&slices, Some("default"), stale, &Default::default()).await;
            if let Err(e) = deleted.map(|_| ()) {
                tracing::debug!(slice = %stale, error = %e, "deleting a stale kubernetes EndpointSlice failed");
            }
        }
    }
    for dead in &plan.forget {
        let deleted = api.delete(&leases, Some(NAMESPACE), dead, &Default::default()).await;
        if let Err(e) = deleted.map(|_| ()) {
            tracing::debug!(lease = %dead, error = %e, "deleting a dead API server's lease failed");
        }
    }
    Ok(Some(plan))
}

/// Renews this server's Lease and keeps the endpoints every [`RENEW`], for the life of the server.
pub async fn run(api: Arc<Api>, advertise: String, mut seen: Observations) {
    let mut tick = tokio::time::interval(RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = reconcile(&api, &advertise, &mut seen).await {
            tracing::warn!(error = %e, "keeping the kubernetes endpoints failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, holder: &str, version: &str) -> LeaseView {
        LeaseView { name: name.into(), holder: holder.into(), version: version.into(), duration: LEASE_DURATION }
    }

    #[test]
    fn live_servers_are_the_endpoints_judged_by_this_servers_clock() {
        let own: SocketAddrV4 = "10.0.0.1:6443".parse().expect("addr");
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut seen = Observations::default();
        let b = lease("apiserver-b", "10.0.0.2:6443", "5");
        let c = lease("apiserver-c", "10.0.0.3:6443", "7");
        let other_port = lease("apiserver-d", "10.0.0.4:8443", "9");
        let garbage = lease("apiserver-e", "not-an-address", "1");
        let all = [lease("apiserver-own", "10.0.0.1:6443", "3"), b.clone(), c.clone(), other_port, garbage];
        let addrs = |p: &Plan| p.groups[0].addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        // first sight counts as a renewal now, whatever renewTime says
        let p = plan(own, &all, &mut seen, t0);
        assert_eq!(addrs(&p), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(p.groups[0].port, 6443);
        // a server on another port is live too, in a slice of its own
        assert_eq!(p.groups.len(), 2);
        assert_eq!((p.groups[1].port, p.groups[1].addresses.clone()), (8443, vec![Ipv4Addr::new(10, 0, 0, 4)]));
        // b keeps renewing, c stops: c is out once its duration has passed since its last change was seen
        let b2 = lease("apiserver-b", "10.0.0.2:6443", "11");
        let later = [b2.clone(), c.clone()];
        assert_eq!(addrs(&plan(own, &later, &mut seen, t0 + s(10))), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(addrs(&plan(own, &later, &mut seen, t0 + s(15))), ["10.0.0.1", "10.0.0.2"]);
        // b's renewal at 10 s keeps it until 25 s
        assert_eq!(addrs(&plan(own, &later, &mut seen, t0 + s(24))), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(addrs(&plan(own, &later, &mut seen, t0 + s(25))), ["10.0.0.1"]);
        // c renews again: back at once
        let c2 = lease("apiserver-c", "10.0.0.3:6443", "12");
        assert_eq!(addrs(&plan(own, &[b2.clone(), c2], &mut seen, t0 + s(26))), ["10.0.0.1", "10.0.0.3"]);
        // dead for ten minutes: deleted, a holder that is no address too
        let named = lease("apiserver-n", "api.example:6443", "1");
        plan(own, &[b2.clone(), named.clone()], &mut seen, t0 + s(26));
        let p = plan(own, &[b2, named], &mut seen, t0 + s(26 + 600));
        assert_eq!(p.forget, ["apiserver-b", "apiserver-n"]);
        // this server alone, even before its own Lease is listed
        assert_eq!(addrs(&plan(own, &[], &mut Observations::default(), t0)), ["10.0.0.1"]);
    }

    #[test]
    fn servers_on_different_ports_plan_the_same_slices() {
        let t0 = Instant::now();
        let a = lease("apiserver-a", "10.0.0.1:6443", "1");
        let b = lease("apiserver-b", "10.0.0.2:7443", "1");
        let c = lease("apiserver-c", "10.0.0.3:6443", "1");
        let d = lease("apiserver-d", "10.0.0.4:5443", "1");
        let all = [a, b, c, d];
        let from_a = plan("10.0.0.1:6443".parse().expect("addr"), &all, &mut Observations::default(), t0);
        let from_b = plan("10.0.0.2:7443".parse().expect("addr"), &all, &mut Observations::default(), t0);
        assert_eq!(from_a, from_b, "no server overwrites another's view");
        let slices = from_a.slices();
        let names: Vec<&str> = slices.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["kubernetes-5443", "kubernetes-7443", "kubernetes"], "named by port, `kubernetes` last");
        let kubernetes = &slices[2].1;
        assert_eq!(kubernetes["ports"][0]["port"], 6443);
        assert_eq!(kubernetes["endpoints"].as_array().map(Vec::len), Some(2));
        assert_eq!(slices[1].1["endpoints"][0]["addresses"][0], "10.0.0.2");
        assert_eq!(slices[1].1["metadata"]["labels"]["kubernetes.io/service-name"], "kubernetes");
        // every server on one port, whichever: one slice named `kubernetes`
        let same = [lease("apiserver-x", "10.0.0.5:7443", "1")];
        let alone = plan("10.0.0.2:7443".parse().expect("addr"), &same, &mut Observations::default(), t0);
        let names: Vec<String> = alone.slices().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["kubernetes"]);
    }

    #[test]
    fn lease_names_are_dns_labels() {
        assert_eq!(lease_name("10.0.0.1:6443"), "apiserver-10-0-0-1-6443");
        assert_eq!(lease_name("API.example:443"), "apiserver-api-example-443");
    }
}

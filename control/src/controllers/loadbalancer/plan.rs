//! What every LoadBalancer Service's `status.loadBalancer` should be, as one pure function of the Services, Nodes,
//! EndpointSlices and the pool.
//!
//! - **Node addresses** (no pool; k3s ServiceLB's default): a Service gets the address of every node that serves
//!   it — Ready and not labelled `node.kubernetes.io/exclude-from-external-load-balancers`; with
//!   `externalTrafficPolicy: Local`, only nodes with a ready endpoint. The eBPF balancer on each node answers on its
//!   own address at the Service's ports. A port the node itself listens on (ingress 80/443, API server, kubelet,
//!   DNS, ssh: `reserved`) or one an earlier Service holds on that address is a collision.
//! - **Pool**: one address per Service, never shared: the one it has, else `spec.loadBalancerIP` if in the pool
//!   and free, else the first free one.
//!
//! Services with a `spec.loadBalancerClass` other than [`CLASS`] belong to another implementation and are left
//! alone. Services that hold an address are placed first (oldest first), so a newcomer never takes an address or
//! port from a Service that has it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::pool::Pool;

pub use skiff_api::loadbalancer::{CLASS, EXCLUDE_LABEL};
use skiff_api::loadbalancer::{is_our_class, nodes_with_ready_endpoints};

/// A port with its protocol.
pub type PortProto = (u16, String);

/// What the controller does to one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not ours, or nothing to do.
    Leave,
    /// Not a LoadBalancer (any more) but it has addresses: remove them.
    Clear,
    /// These addresses, in this order.
    Assign(Vec<Ipv4Addr>),
    /// No address; why (for the Event and the log). Addresses it had are removed.
    Pending(String),
    /// Something is wrong that is not this Service's doing (an invalid pool): keep what it has, and say why.
    Keep(String),
}

/// The inputs of [`plan`].
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Every Service.
    pub services: &'a [Arc<Service>],
    /// Every Node.
    pub nodes: &'a [Arc<Node>],
    /// Every EndpointSlice.
    pub slices: &'a [Arc<EndpointSlice>],
    /// The pool, when one is configured (`Err`: configured but invalid).
    pub pool: Option<&'a Result<Pool, String>>,
    /// Ports the nodes themselves listen on at their addresses.
    pub reserved: &'a [PortProto],
}

/// (namespace, name).
pub type Key = (String, String);

fn key(s: &Service) -> Key {
    (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default())
}

/// The addresses in `status.loadBalancer.ingress`.
pub fn current(s: &Service) -> Vec<Ipv4Addr> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.as_deref()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn is_lb(s: &Service) -> bool {
    s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

fn ours(s: &Service) -> bool {
    is_our_class(s.spec.as_ref().and_then(|s| s.load_balancer_class.as_deref()))
}

fn ports(s: &Service) -> Vec<PortProto> {
    let list = s.spec.as_ref().and_then(|s| s.ports.as_ref());
    list.map(|ps| ps.iter().map(|p| (p.port as u16, p.protocol.clone().unwrap_or_else(|| "TCP".into()))).collect())
        .unwrap_or_default()
}

fn ready(n: &Node) -> bool {
    let conds = n.status.as_ref().and_then(|s| s.conditions.as_ref());
    conds.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The address a node answers LoadBalancer traffic on: its ExternalIP, else its InternalIP (IPv4).
pub fn node_address(n: &Node) -> Option<Ipv4Addr> {
    let addrs = n.status.as_ref()?.addresses.as_ref()?;
    let of = |t: &str| addrs.iter().filter(|a| a.type_ == t).find_map(|a| a.address.parse::<Ipv4Addr>().ok());
    of("ExternalIP").or_else(|| of("InternalIP"))
}

/// The decision for every Service of `inputs` (by namespace and name).
pub fn plan(inputs: &Inputs<'_>) -> BTreeMap<Key, Decision> {
    let mut out = BTreeMap::new();
    let mut candidates = Vec::new();
    for s in inputs.services {
        match (is_lb(s), ours(s)) {
            (true, true) => candidates.push(s),
            (false, _) if !current(s).is_empty() => {
                out.insert(key(s), Decision::Clear);
            }
            _ => {
                out.insert(key(s), Decision::Leave);
            }
        }
    }
    // Holders first, then the oldest.
    candidates.sort_by_key(|s| (current(s).is_empty(), s.metadata.creation_timestamp.as_ref().map(|t| t.0), key(s)));
    let mut claimed: BTreeMap<(Ipv4Addr, PortProto), Key> = BTreeMap::new();
    let mut held: BTreeMap<Ipv4Addr, Key> = BTreeMap::new();
    // First every holder keeps what is still valid for it, so that no Service, however old, is given an address
    // or port another one holds (an older holder whose own address became invalid competes for a new one below).
    for s in &candidates {
        match inputs.pool {
            Some(Ok(pool)) => {
                let allowed = |ip: &Ipv4Addr| requested(s).is_none_or(|r| r.as_ref().ok() == Some(ip));
                if let Some(ip) = current(s).into_iter().find(|ip| pool.contains(*ip) && allowed(ip)) {
                    held.entry(ip).or_insert_with(|| key(s));
                }
            }
            Some(Err(_)) => {}
            None => {
                let Ok(serving) = serving(s, inputs) else { continue };
                let ports = ports(s);
                for a in current(s).into_iter().filter(|a| serving.contains(a)) {
                    let free = ports.iter().all(|p| {
                        !inputs.reserved.contains(p) && claimed.get(&(a, p.clone())).is_none_or(|k| *k == key(s))
                    });
                    if free {
                        for p in &ports {
                            claimed.insert((a, p.clone()), key(s));
                        }
                    }
                }
            }
        }
    }
    for s in candidates {
        let decision = match inputs.pool {
            Some(Ok(pool)) => from_pool(s, pool, &mut held),
            Some(Err(e)) => Decision::Keep(format!("the LoadBalancer pool is invalid: {e}")),
            None => from_nodes(s, inputs, &mut claimed),
        };
        out.insert(key(s), decision);
    }
    out
}

fn requested(s: &Service) -> Option<Result<Ipv4Addr, String>> {
    let ip = s.spec.as_ref()?.load_balancer_ip.as_deref().filter(|i| !i.is_empty())?;
    Some(ip.parse().map_err(|_| format!("spec.loadBalancerIP {ip:?} is not an IPv4 address")))
}

fn from_pool(s: &Service, pool: &Pool, held: &mut BTreeMap<Ipv4Addr, Key>) -> Decision {
    let me = key(s);
    let free = |ip: &Ipv4Addr, held: &BTreeMap<Ipv4Addr, Key>| held.get(ip).is_none_or(|k| *k == me);
    let pick = match requested(s) {
        Some(Err(e)) => return Decision::Pending(e),
        Some(Ok(want)) if !pool.contains(want) => {
            return Decision::Pending(format!("spec.loadBalancerIP {want} is not in the LoadBalancer pool"));
        }
        Some(Ok(want)) => match held.get(&want) {
            Some(k) if *k != me => {
                return Decision::Pending(format!("spec.loadBalancerIP {want} is held by Service {}/{}", k.0, k.1));
            }
            _ => Some(want),
        },
        None => current(s)
            .into_iter()
            .find(|ip| pool.contains(*ip) && free(ip, held))
            .or_else(|| pool.addresses().find(|ip| free(ip, held))),
    };
    match pick {
        Some(ip) => {
            held.insert(ip, me);
            Decision::Assign(vec![ip])
        }
        None => Decision::Pending(format!(
            "no free address in the LoadBalancer pool ({} addresses, all held by other Services)",
            pool.size()
        )),
    }
}

/// The node addresses `s` may have (its `loadBalancerIP` applied), or why there are none.
fn serving(s: &Service, inputs: &Inputs<'_>) -> Result<Vec<Ipv4Addr>, String> {
    let local = s.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
    let with_endpoints = if local { Some(nodes_with_ready_endpoints(s, inputs.slices)) } else { None };
    let mut nodes: Vec<&Arc<Node>> = inputs
        .nodes
        .iter()
        .filter(|n| ready(n))
        .filter(|n| n.metadata.labels.as_ref().is_none_or(|l| !l.contains_key(EXCLUDE_LABEL)))
        .filter(|n| with_endpoints.as_ref().is_none_or(|w| w.contains(n.metadata.name.as_deref().unwrap_or_default())))
        .collect();
    nodes.sort_by_key(|n| n.metadata.name.clone());
    let mut addrs: Vec<Ipv4Addr> = Vec::new();
    for a in nodes.iter().filter_map(|n| node_address(n)) {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(if local {
            "no Ready node has a ready endpoint of this Service (externalTrafficPolicy: Local)".into()
        } else {
            "no Ready node can carry LoadBalancer addresses".into()
        });
    }
    match requested(s) {
        Some(Err(e)) => Err(e),
        Some(Ok(want)) if !addrs.contains(&want) => Err(format!(
            "spec.loadBalancerIP {want} is not the address of a node that serves this Service (no pool is configured)"
        )),
        Some(Ok(want)) => Ok(vec![want]),
        None => Ok(addrs),
    }
}

fn from_nodes(s: &Service, inputs: &Inputs<'_>, claimed: &mut BTreeMap<(Ipv4Addr, PortProto), Key>) -> Decision {
    let me = key(s);
    let addrs = match serving(s, inputs) {
        Ok(a) => a,
        Err(reason) => return Decision::Pending(reason),
    };
    let ports = ports(s);
    let mut usable = Vec::new();
    let mut reason = None;
    for a in addrs {
        let collision = ports.iter().find_map(|p| {
            if inputs.reserved.contains(p) {
                return Some(format!(
                    "port {}/{} is taken on the node address {a} by the node itself (ingress, API server, kubelet, DNS or ssh)",
                    p.0, p.1
                ));
            }
            match claimed.get(&(a, p.clone())) {
                Some(k) if *k != me => Some(format!("port {}/{} of {a} is held by Service {}/{}", p.0, p.1, k.0, k.1)),
                _ => None,
            }
        });
        match collision {
            Some(r) => {
                reason.get_or_insert(r);
            }
            None => usable.push(a),
        }
    }
    if usable.is_empty() {
        return Decision::Pending(reason.unwrap_or_else(|| "no usable address".into()));
    }
    for a in &usable {
        for p in &ports {
            claimed.insert((*a, p.clone()), me.clone());
        }
    }
    Decision::Assign(usable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, age: u32, spec: serde_json::Value, holds: &[&str]) -> Arc<Service> {
        let mut base = json!({"type": "LoadBalancer", "ports": [{"port": 8080, "protocol": "TCP"}]});
        for (k, v) in spec.as_object().expect("object") {
            base[k] = v.clone();
        }
        let ingress: Vec<_> = holds.iter().map(|ip| json!({"ip": ip})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": name,
                             "creationTimestamp": format!("2026-01-01T00:{:02}:00Z", age)},
                "spec": base,
                "status": {"loadBalancer": {"ingress": ingress}}}))
            .expect("service"),
        )
    }

    fn node(name: &str, ip: &str, ready: bool, labels: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                           "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
            .expect("node"),
        )
    }

    fn slice(svc: &str, node: &str) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{svc}-x"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": node, "conditions": {"ready": true}}]}))
            .expect("slice"),
        )
    }

    fn ips(list: &[&str]) -> Vec<Ipv4Addr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    fn run(services: &[Arc<Service>], pool: Option<&str>) -> BTreeMap<String, Decision> {
        let nodes = vec![
            node("n1", "10.0.0.11", true, json!({})),
            node("n2", "10.0.0.12", true, json!({})),
            node("n3", "10.0.0.13", false, json!({})),
            node("n4", "10.0.0.14", true, json!({EXCLUDE_LABEL: ""})),
        ];
        let slices = vec![slice("local", "n2")];
        let pool = pool.map(|p| Pool::parse(p, &super::super::pool::reserved_cidrs()));
        let reserved = vec![(80, "TCP".to_string()), (53, "UDP".to_string())];
        let inputs = Inputs { services, nodes: &nodes, slices: &slices, pool: pool.as_ref(), reserved: &reserved };
        plan(&inputs).into_iter().map(|((_, n), d)| (n, d)).collect()
    }

    #[test]
    fn node_addresses_by_default_and_port_collisions_leave_the_newcomer_pending() {
        let d = run(
            &[
                svc("web", 1, json!({}), &[]),
                svc("web2", 2, json!({}), &[]),
                svc("other-port", 3, json!({"ports": [{"port": 9090}]}), &[]),
                svc("http", 4, json!({"ports": [{"port": 80, "protocol": "TCP"}]}), &[]),
                svc("dns", 5, json!({"ports": [{"port": 53, "protocol": "TCP"}]}), &[]),
                svc("local", 6, json!({"externalTrafficPolicy": "Local", "ports": [{"port": 7070}]}), &[]),
                svc("local-none", 7, json!({"externalTrafficPolicy": "Local", "ports": [{"port": 7071}]}), &[]),
            ],
            None,
        );
        // Ready, not excluded nodes only (n3 is NotReady, n4 excluded).
        assert_eq!(d["web"], Decision::Assign(ips(&["10.0.0.11", "10.0.0.12"])));
        assert!(
            matches!(&d["web2"], Decision::Pending(r) if r.contains("port 8080/TCP of 10.0.0.11 is held by Service default/web")),
            "{:?}",
            d["web2"]
        );
        assert_eq!(d["other-port"], Decision::Assign(ips(&["10.0.0.11", "10.0.0.12"])));
        assert!(
            matches!(&d["http"], Decision::Pending(r) if r.contains("port 80/TCP is taken on the node address")),
            "{:?}",
            d["http"]
        );
        assert_eq!(
            d["dns"],
            Decision::Assign(ips(&["10.0.0.11", "10.0.0.12"])),
            "53/TCP is free, only 53/UDP is reserved"
        );
        assert_eq!(d["local"], Decision::Assign(ips(&["10.0.0.12"])), "only the node with an endpoint");
        assert!(matches!(&d["local-none"], Decision::Pending(r) if r.contains("externalTrafficPolicy: Local")));
    }

    #[test]
    fn a_holder_keeps_its_ports_against_an_older_newcomer() {
        let d = run(
            &[svc("old-newcomer", 1, json!({}), &[]), svc("holder", 9, json!({}), &["10.0.0.11", "10.0.0.12"])],
            None,
        );
        assert_eq!(d["holder"], Decision::Assign(ips(&["10.0.0.11", "10.0.0.12"])));
        assert!(matches!(&d["old-newcomer"], Decision::Pending(r) if r.contains("default/holder")));
    }

    #[test]
    fn an_older_holder_that_must_move_never_takes_a_younger_holders_address() {
        // "old" held 10.0.0.200 but now asks for 10.0.0.201, which "young" holds: it waits.
        let d = run(
            &[
                svc("old", 1, json!({"loadBalancerIP": "10.0.0.201"}), &["10.0.0.200"]),
                svc("young", 2, json!({}), &["10.0.0.201"]),
            ],
            Some("10.0.0.200-10.0.0.202"),
        );
        assert_eq!(d["young"], Decision::Assign(ips(&["10.0.0.201"])));
        assert!(
            matches!(&d["old"], Decision::Pending(r) if r.contains("held by Service default/young")),
            "{:?}",
            d["old"]
        );
        // On node addresses: "old" held n1's port 9000, but its endpoints are on n2 only now (Local), where
        // "young" holds port 9000.
        let d = run(
            &[
                svc("old", 1, json!({"externalTrafficPolicy": "Local", "ports": [{"port": 9000}]}), &["10.0.0.11"]),
                svc("young", 2, json!({"ports": [{"port": 9000}], "loadBalancerIP": "10.0.0.12"}), &["10.0.0.12"]),
            ],
            None,
        );
        assert_eq!(d["young"], Decision::Assign(ips(&["10.0.0.12"])));
        assert!(matches!(&d["old"], Decision::Pending(_)), "{:?}", d["old"]);
    }

    #[test]
    fn load_balancer_ip_and_class_are_honoured() {
        let d = run(
            &[
                svc("pinned", 1, json!({"loadBalancerIP": "10.0.0.12"}), &[]),
                svc("elsewhere", 2, json!({"loadBalancerIP": "192.0.2.1", "ports": [{"port": 1}]}), &[]),
                svc("garbage", 3, json!({"loadBalancerIP": "nope", "ports": [{"port": 2}]}), &[]),
                svc("metallb", 4, json!({"loadBalancerClass": "metallb.io/metallb"}), &["192.0.2.50"]),
                svc("explicit", 5, json!({"loadBalancerClass": CLASS, "ports": [{"port": 3}]}), &[]),
            ],
            None,
        );
        assert_eq!(d["pinned"], Decision::Assign(ips(&["10.0.0.12"])));
        assert!(matches!(&d["elsewhere"], Decision::Pending(r) if r.contains("not the address of a node")));
        assert!(matches!(&d["garbage"], Decision::Pending(r) if r.contains("not an IPv4 address")));
        assert_eq!(d["metallb"], Decision::Leave, "another implementation's Service is not touched");
        assert_eq!(d["explicit"], Decision::Assign(ips(&["10.0.0.11", "10.0.0.12"])));
    }

    #[test]
    fn pool_addresses_are_unique_sticky_and_run_out_with_a_reason() {
        let pool = Some("10.0.0.200-10.0.0.201");
        let d = run(
            &[
                svc("new", 1, json!({}), &[]),
                svc("holder", 5, json!({}), &["10.0.0.201"]),
                svc("asks", 6, json!({"loadBalancerIP": "10.0.0.201"}), &[]),
                svc("outside", 7, json!({"loadBalancerIP": "10.0.0.9"}), &[]),
                svc("late", 8, json!({}), &[]),
            ],
            pool,
        );
        assert_eq!(d["holder"], Decision::Assign(ips(&["10.0.0.201"])), "keeps its address");
        assert_eq!(d["new"], Decision::Assign(ips(&["10.0.0.200"])));
        assert!(matches!(&d["asks"], Decision::Pending(r) if r.contains("held by Service default/holder")));
        assert!(matches!(&d["outside"], Decision::Pending(r) if r.contains("not in the LoadBalancer pool")));
        assert!(
            matches!(&d["late"], Decision::Pending(r) if r.contains("no free address in the LoadBalancer pool (2 addresses"))
        );
        let bad = run(&[svc("x", 1, json!({}), &["10.0.0.200"])], Some("10.244.0.0/24"));
        assert!(
            matches!(&bad["x"], Decision::Keep(r) if r.contains("pool is invalid") && r.contains("cluster CIDR")),
            "a typo in the pool takes no address away: {:?}",
            bad["x"]
        );
    }

    #[test]
    fn a_service_that_is_no_longer_a_load_balancer_gives_its_addresses_back() {
        let d = run(
            &[
                svc("was", 1, json!({"type": "ClusterIP"}), &["10.0.0.11"]),
                svc("never", 2, json!({"type": "ClusterIP"}), &[]),
            ],
            None,
        );
        assert_eq!(d["was"], Decision::Clear);
        assert_eq!(d["never"], Decision::Leave);
    }
}

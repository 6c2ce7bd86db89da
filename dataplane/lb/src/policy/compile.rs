//! The pure function from (NetworkPolicies, Pods, Namespaces, this node) to the policy maps' desired contents.
//!
//! # Semantics (networking.k8s.io/v1)
//! - A pod is isolated for ingress (egress) when any policy of its namespace selects it with that policy type.
//!   `policyTypes` omitted means Ingress, plus Egress when the policy has egress rules (the API server's default).
//! - What an isolated pod may do is the union of the rules of every policy that selects it. A rule with no peers
//!   allows every peer; with no ports, every protocol and port. Peers: `podSelector` (in the policy's namespace),
//!   `namespaceSelector` (every pod of the selected namespaces), both in one peer (pods so selected in namespaces so
//!   selected), `ipBlock` (the CIDR less its `except`s; pod addresses inside it match too, as Calico does and the
//!   upstream e2e suite expects). Ports: a number, a number with `endPort`, or a name resolved per pod (the
//!   destination pod's container port of that name and protocol); protocol TCP unless given.
//! - The node's own addresses are always allowed both ways (Kubernetes: traffic to and from the node a pod runs on).
//!   The cluster DNS server runs in the agent on the node, so DNS is always reachable.
//!
//! # Representation
//! Pods with the same namespace, labels, named ports and ipBlock memberships share one identity; so do CIDR
//! prefixes with the same memberships (none: [`IDENTITY_WORLD`]). Rules are per endpoint identity, not per pod.
//! Numbers come from [`Numbering`]: stable for the same state.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use skiff_api::selector::Selector;
use skiff_ebpf_common::{IDENTITY_FIRST_ALLOCATED, IDENTITY_HOST, IDENTITY_WORLD, PEER_ANY};

use super::{
    identity::{Key, Numbering},
    model::{Direction, EndpointEntry, PolicyNames, PolicyTables, PortMatch, RuleKey, Skipped},
    ports::blocks,
};

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// This node, as the compiler needs it.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    /// Its name: pods with this `spec.nodeName` are its endpoints.
    pub name: String,
    /// Its own addresses (node IP, pod gateway, cluster DNS address): always allowed.
    pub host_addresses: Vec<Ipv4Addr>,
}

/// What the compiler produced.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// The desired map contents.
    pub tables: PolicyTables,
    /// Names for the numbers.
    pub names: PolicyNames,
    /// What was left out, and why.
    pub skipped: Vec<Skipped>,
}

/// A pod as policy sees it (borrowed from the object).
struct PodView<'a> {
    name: &'a str,
    namespace: &'a str,
    ip: Ipv4Addr,
    labels: &'a BTreeMap<String, String>,
    local: bool,
    /// (name, protocol, port) of every named container port.
    named: BTreeSet<(String, u8, u16)>,
}

impl PodView<'_> {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

fn cidr_bytes(n: &Ipv4Net) -> [u8; 5] {
    let [a, b, c, d] = n.network().octets();
    [a, b, c, d, n.prefix_len()]
}

/// One ipBlock: the CIDR less its exceptions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Block {
    cidr: Ipv4Net,
    except: Vec<Ipv4Net>,
}

impl Block {
    /// Whether the addresses whose longest ip cache prefix is `net` are in the block: `net` lies in the CIDR and in
    /// no exception (an exception inside `net` is a longer prefix of its own, so it is carved out by the trie).
    fn covers(&self, net: &Ipv4Net) -> bool {
        self.cidr.contains(net) && !self.except.iter().any(|e| e.contains(net))
    }
}

enum Peer {
    Pods { namespaces: Option<Selector>, pods: Option<Selector> },
    Block(Block),
}

enum Ports {
    Numbers { proto: u8, first: u16, last: u16 },
    Named { proto: u8, name: String },
    Protocol(u8),
}

struct Rule {
    /// `None`: every peer.
    peers: Option<Vec<Peer>>,
    /// `None`: every protocol and port.
    ports: Option<Vec<Ports>>,
}

struct ParsedPolicy {
    key: String,
    namespace: String,
    selector: Selector,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

/// Compiles the tables for `node` from the whole cluster's policies, pods and namespaces.
/// The objects may be owned or shared (`Arc`s of a watch cache): nothing is cloned wholesale.
pub fn compile<P, N, S>(policies: &[P], pods: &[N], namespaces: &[S], node: &NodeView) -> Compiled
where
    P: Borrow<NetworkPolicy>,
    N: Borrow<Pod>,
    S: Borrow<Namespace>,
{
    let mut skipped = Vec::new();
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .iter()
        .map(Borrow::borrow)
        .filter_map(|n: &Namespace| {
            let name = n.metadata.name.clone()?;
            let mut labels = n.metadata.labels.clone().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
            Some((name, labels))
        })
        .collect();
    let pods: Vec<PodView<'_>> = pods.iter().filter_map(|p| pod_view(p.borrow(), &node.name)).collect();
    // Pods by namespace, and this node's pods by namespace: a policy selects only in its own namespace.
    let mut pods_by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut local_by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in pods.iter().enumerate() {
        pods_by_ns.entry(p.namespace).or_default().push(i);
        if p.local {
            local_by_ns.entry(p.namespace).or_default().push(i);
        }
    }
    // Only the rules of policies that select a pod of this node are read (and their problems reported here).
    let selects_here = |ns: &str, selector: &Selector| {
        local_by_ns.get(ns).is_some_and(|local| local.iter().any(|i| selector.matches(pods[*i].labels)))
    };
    let mut parsed: Vec<ParsedPolicy> =
        policies.iter().filter_map(|p| parse_policy(p.borrow(), &mut skipped, selects_here)).collect();
    parsed.sort_by(|a, b| a.key.cmp(&b.key));
    // The pods of this node each policy selects; only those policies matter here.
    let selections: Vec<Vec<usize>> = parsed
        .iter()
        .map(|policy| {
            local_by_ns
                .get(policy.namespace.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|i| policy.selector.matches(pods[*i].labels))
                .collect()
        })
        .collect();

    // Every ipBlock of those policies, and the prefixes that carve the address space into sets of equal membership.
    let mut all_blocks: BTreeSet<Block> = BTreeSet::new();
    for (p, _) in parsed.iter().zip(&selections).filter(|(_, sel)| !sel.is_empty()) {
        for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
            for peer in rule.peers.iter().flatten() {
                if let Peer::Block(b) = peer {
                    all_blocks.insert(b.clone());
                }
            }
        }
    }
    let all_blocks: Vec<Block> = all_blocks.into_iter().collect();
    let memberships = |net: &Ipv4Net| -> Vec<usize> {
        all_blocks.iter().enumerate().filter(|(_, b)| b.covers(net)).map(|(i, _)| i).collect()
    };
    let block_names = |set: &[usize]| -> String {
        set.iter()
            .map(|i| {
                let b = &all_blocks[*i];
                let except: Vec<String> = b.except.iter().map(ToString::to_string).collect();
                if except.is_empty() { b.cidr.to_string() } else { format!("{} except {}", b.cidr, except.join(",")) }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };

    // Identity keys: what an identity stands for, hashed (no strings are built per pod).
    let mut numbering = Numbering::new(IDENTITY_FIRST_ALLOCATED);
    let block_key = |set: &[usize], k: Key| -> Key {
        set.iter().fold(k, |k, i| {
            let b = &all_blocks[*i];
            b.except.iter().fold(k.feed(&cidr_bytes(&b.cidr)), |k, e| k.feed(&cidr_bytes(e))).feed(b"|")
        })
    };
    let pod_keys: Vec<u64> = pods
        .iter()
        .map(|p| {
            let mut k = Key::default().feed(b"pod").feed(p.namespace.as_bytes());
            for (name, value) in p.labels {
                k = k.feed(name.as_bytes()).feed(value.as_bytes());
            }
            k = k.feed(b"ports");
            for (name, proto, port) in &p.named {
                k = k.feed(name.as_bytes()).feed(&[*proto]).feed(&port.to_be_bytes());
            }
            block_key(&memberships(&Ipv4Net::from(p.ip)), k.feed(b"blocks")).finish()
        })
        .collect();
    for k in &pod_keys {
        numbering.add(*k);
    }
    let mut prefixes: BTreeMap<Ipv4Net, Option<(u64, String)>> = BTreeMap::new();
    for b in &all_blocks {
        for net in std::iter::once(&b.cidr).chain(b.except.iter()) {
            let set = memberships(net);
            let named = (!set.is_empty()).then(|| {
                let key = block_key(&set, Key::default().feed(b"cidr")).finish();
                numbering.add(key);
                (key, format!("cidr blocks=[{}]", block_names(&set)))
            });
            prefixes.insert(*net, named);
        }
    }
    let numbers = numbering.assign();

    let mut tables = PolicyTables::default();
    let mut names = PolicyNames::default();
    for (net, named) in &prefixes {
        let id = named.as_ref().map_or(IDENTITY_WORLD, |(k, _)| numbers[k]);
        tables.ipcache.insert(*net, id);
        names.identities.insert(id, named.as_ref().map_or_else(|| "world".into(), |(_, n)| n.clone()));
    }
    let pod_ids: Vec<u32> = pod_keys.iter().map(|k| numbers[k]).collect();
    // Identity → its named ports (every pod of an identity has the same).
    let mut identity_ports: BTreeMap<u32, &BTreeSet<(String, u8, u16)>> = BTreeMap::new();
    for (p, id) in pods.iter().zip(&pod_ids) {
        tables.ipcache.insert(Ipv4Net::from(p.ip), *id);
        identity_ports.insert(*id, &p.named);
        let key = p.key();
        let entry = names.identities.entry(*id).or_default();
        if !entry.is_empty() {
            entry.push_str(", ");
        }
        entry.push_str(&key);
        names.pods.insert(p.ip, key);
    }
    for a in &node.host_addresses {
        tables.ipcache.insert(Ipv4Net::from(*a), IDENTITY_HOST);
    }
    names.identities.insert(IDENTITY_HOST, "host".into());
    names.identities.insert(IDENTITY_WORLD, "world".into());

    // Policy ids.
    let mut policy_numbering = Numbering::new(1);
    for p in &parsed {
        policy_numbering.add(Key::of(&p.key));
    }
    let policy_numbers = policy_numbering.assign();
    let policy_ids: BTreeMap<&str, u32> =
        parsed.iter().map(|p| (p.key.as_str(), policy_numbers[&Key::of(&p.key)])).collect();
    for (k, id) in &policy_ids {
        names.policies.insert(*id, (*k).to_string());
    }

    let empty = BTreeMap::new();
    let labels_of_ns = |ns: &str| ns_labels.get(ns).unwrap_or(&empty);
    // Peer identities of a rule's peers (`None`: any peer).
    let peer_ids = |policy: &ParsedPolicy, peers: &Option<Vec<Peer>>| -> Option<BTreeSet<u32>> {
        let peers = peers.as_ref()?;
        let mut ids = BTreeSet::new();
        for peer in peers {
            match peer {
                Peer::Pods { namespaces, pods: pod_sel } => {
                    let in_namespaces = pods_by_ns.iter().filter(|(ns, _)| match namespaces {
                        Some(sel) => sel.matches(labels_of_ns(ns)),
                        None => **ns == policy.namespace,
                    });
                    for (_, members) in in_namespaces {
                        for i in members {
                            if pod_sel.as_ref().is_none_or(|s| s.matches(pods[*i].labels)) {
                                ids.insert(pod_ids[*i]);
                            }
                        }
                    }
                }
                Peer::Block(b) => {
                    for (net, name) in &prefixes {
                        if name.is_some() && b.covers(net) {
                            ids.insert(tables.ipcache[net]);
                        }
                    }
                    for (p, id) in pods.iter().zip(&pod_ids) {
                        if b.covers(&Ipv4Net::from(p.ip)) {
                            ids.insert(*id);
                        }
                    }
                }
            }
        }
        Some(ids)
    };

    for (policy, selection) in parsed.iter().zip(&selections) {
        let policy_id = policy_ids[policy.key.as_str()];
        let selected: BTreeSet<(Ipv4Addr, u32)> = selection.iter().map(|i| (pods[*i].ip, pod_ids[*i])).collect();
        if selected.is_empty() {
            continue;
        }
        for (dir, rules) in [(Direction::Ingress, &policy.ingress), (Direction::Egress, &policy.egress)] {
            let Some(rules) = rules else { continue };
            for (ip, id) in &selected {
                let e = tables.endpoints.entry(*ip).or_insert(EndpointEntry {
                    identity: *id,
                    ingress_isolated: false,
                    egress_isolated: false,
                });
                match dir {
                    Direction::Ingress => e.ingress_isolated = true,
                    Direction::Egress => e.egress_isolated = true,
                }
                names.isolating.entry((*ip, dir)).or_default().push(policy_id);
            }
            let endpoint_ids: BTreeSet<u32> = selected.iter().map(|(_, id)| *id).collect();
            for rule in rules {
                let peers = peer_ids(policy, &rule.peers);
                for endpoint in &endpoint_ids {
                    for (peer, ports) in
                        rule_entries(dir, *endpoint, peers.as_ref(), rule.ports.as_deref(), &identity_ports)
                    {
                        tables.rules.entry(RuleKey { endpoint: *endpoint, dir, peer, ports }).or_insert(policy_id);
                    }
                }
            }
        }
    }
    // Pods on this node that no policy selects still get an entry: their flows are tracked, so replies keep passing
    // when a policy starts to select them.
    for (p, id) in pods.iter().zip(&pod_ids) {
        if p.local {
            tables.endpoints.entry(p.ip).or_insert(EndpointEntry {
                identity: *id,
                ingress_isolated: false,
                egress_isolated: false,
            });
        }
    }
    Compiled { tables, names, skipped }
}

/// The (peer, ports) entries of one rule for one endpoint identity.
fn rule_entries(
    dir: Direction,
    endpoint: u32,
    peers: Option<&BTreeSet<u32>>,
    ports: Option<&[Ports]>,
    identity_ports: &BTreeMap<u32, &BTreeSet<(String, u8, u16)>>,
) -> Vec<(u32, PortMatch)> {
    let peer_list: Vec<u32> = match peers {
        None => vec![PEER_ANY],
        Some(set) => set.iter().copied().collect(),
    };
    let Some(ports) = ports else {
        return peer_list.into_iter().map(|p| (p, PortMatch::All)).collect();
    };
    let named = |id: u32, proto: u8, name: &str| -> Option<u16> {
        identity_ports.get(&id)?.iter().find(|(n, pr, _)| n == name && *pr == proto).map(|(_, _, port)| *port)
    };
    let mut out = Vec::new();
    for spec in ports {
        match spec {
            Ports::Protocol(proto) => out.extend(peer_list.iter().map(|p| (*p, PortMatch::Protocol(*proto)))),
            Ports::Numbers { proto, first, last } => {
                for m in blocks(*proto, *first, *last) {
                    out.extend(peer_list.iter().map(|p| (*p, m)));
                }
            }
            // Into the pod: the endpoint's own port of that name.
            Ports::Named { proto, name } if dir == Direction::Ingress => {
                if let Some(port) = named(endpoint, *proto, name) {
                    out.extend(peer_list.iter().map(|p| (*p, PortMatch::Block { proto: *proto, port, bits: 16 })));
                }
            }
            // Out of the pod: each destination pod's port of that name ("any peer" means any pod that has one).
            Ports::Named { proto, name } => {
                let candidates: Vec<u32> = match peers {
                    None => identity_ports.keys().copied().collect(),
                    Some(set) => set.iter().copied().collect(),
                };
                for id in candidates {
                    if let Some(port) = named(id, *proto, name) {
                        out.push((id, PortMatch::Block { proto: *proto, port, bits: 16 }));
                    }
                }
            }
        }
    }
    out
}

fn pod_view<'a>(p: &'a Pod, node: &str) -> Option<PodView<'a>> {
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = p.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
    let mut named = BTreeSet::new();
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for port in c.ports.iter().flatten() {
            let (Some(n), Some(proto)) = (port.name.as_ref(), protocol(port.protocol.as_deref())) else { continue };
            if let Ok(number) = u16::try_from(port.container_port) {
                named.insert((n.clone(), proto, number));
            }
        }
    }
    Some(PodView {
        name: p.metadata.name.as_deref().unwrap_or_default(),
        namespace: p.metadata.namespace.as_deref().unwrap_or("default"),
        ip,
        labels: p.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
        local: spec.node_name.as_deref() == Some(node),
        named,
    })
}

fn protocol(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

/// The peers and ports of each rule of one direction.
type RuleParts<'a> = Vec<(Option<&'a Vec<NetworkPolicyPeer>>, Option<&'a Vec<NetworkPolicyPort>>)>;

/// A policy's key, namespace and selector; its rules only when `wanted` says its selector matters here.
fn parse_policy(
    p: &NetworkPolicy,
    skipped: &mut Vec<Skipped>,
    wanted: impl Fn(&str, &Selector) -> bool,
) -> Option<ParsedPolicy> {
    let namespace = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let key = format!("{namespace}/{}", p.metadata.name.as_deref().unwrap_or_default());
    let spec = p.spec.as_ref()?;
    let mut skip = |reason: String| skipped.push(Skipped { object: key.clone(), reason });
    let types: Vec<&str> = spec.policy_types.iter().flatten().map(String::as_str).collect();
    let (mut ingress, mut egress) = if types.is_empty() {
        (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()))
    } else {
        (types.contains(&"Ingress"), types.contains(&"Egress"))
    };
    if let Some(bad) = types.iter().find(|t| !matches!(**t, "Ingress" | "Egress")) {
        // Fail closed: a policy whose types cannot be read isolates both ways (with the rules it has).
        skip(format!("policyTypes {bad:?} is not Ingress or Egress: the policy isolates both directions"));
        (ingress, egress) = (true, true);
    }
    // An absent podSelector is the empty one: every pod of the namespace.
    let selector = match Selector::from_label_selector(&spec.pod_selector.clone().unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => {
            // Fail closed: the pods it meant cannot be told apart, so every pod of the namespace is isolated and this
            // policy allows nothing (its rules applied to pods it did not mean would open them).
            skip(format!("podSelector: {e}: every pod of the namespace is isolated and the policy allows nothing"));
            let everything = Selector::from_label_selector(&Default::default()).ok()?;
            return Some(ParsedPolicy {
                key,
                namespace,
                selector: everything,
                ingress: ingress.then(Vec::new),
                egress: egress.then(Vec::new),
            });
        }
    };
    if !wanted(&namespace, &selector) {
        return Some(ParsedPolicy { key, namespace, selector, ingress: None, egress: None });
    }
    let mut rules = |list: Option<RuleParts<'_>>| {
        list.unwrap_or_default()
            .into_iter()
            .map(|(peers, ports)| Rule {
                peers: peers.filter(|v| !v.is_empty()).map(|v| v.iter().filter_map(|x| peer(x, &mut skip)).collect()),
                ports: ports.filter(|v| !v.is_empty()).map(|v| v.iter().filter_map(|x| port(x, &mut skip)).collect()),
            })
            .collect::<Vec<Rule>>()
    };
    let ingress_rules = ingress
        .then(|| rules(spec.ingress.as_ref().map(|v| v.iter().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect())));
    let egress_rules = egress
        .then(|| rules(spec.egress.as_ref().map(|v| v.iter().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect())));
    Some(ParsedPolicy { key, namespace, selector, ingress: ingress_rules, egress: egress_rules })
}

/// A peer, or `None` (reported) when it can match nothing here: it then allows nothing.
fn peer(p: &NetworkPolicyPeer, skip: &mut impl FnMut(String)) -> Option<Peer> {
    if let Some(b) = &p.ip_block {
        let Ok(cidr) = b.cidr.parse::<Ipv4Net>() else {
            skip(format!("ipBlock {:?} is not an IPv4 CIDR (this dataplane carries IPv4): it matches nothing", b.cidr));
            return None;
        };
        let mut except = Vec::new();
        for e in b.except.iter().flatten() {
            match e.parse::<Ipv4Net>() {
                Ok(n) if cidr.contains(&n) => except.push(n.trunc()),
                // Fail closed: ignoring the exception would widen the block.
                _ => {
                    skip(format!(
                        "ipBlock except {e:?} is not an IPv4 CIDR inside {}: the block matches nothing",
                        b.cidr
                    ));
                    return None;
                }
            }
        }
        except.sort();
        except.dedup();
        return Some(Peer::Block(Block { cidr: cidr.trunc(), except }));
    }
    let sel = |s: &Option<_>, what: &str, skip: &mut dyn FnMut(String)| match s {
        None => Ok(None),
        Some(ls) => Selector::from_label_selector(ls).map(Some).map_err(|e| skip(format!("{what}: {e}"))),
    };
    let namespaces = sel(&p.namespace_selector, "namespaceSelector", skip).ok()?;
    let pods = sel(&p.pod_selector, "podSelector", skip).ok()?;
    if namespaces.is_none() && pods.is_none() {
        skip("a peer with no selector and no ipBlock matches nothing".into());
        return None;
    }
    Some(Peer::Pods { namespaces, pods })
}

fn port(p: &NetworkPolicyPort, skip: &mut impl FnMut(String)) -> Option<Ports> {
    let Some(proto) = protocol(p.protocol.as_deref()) else {
        skip(format!("protocol {:?} is not TCP, UDP or SCTP: the port matches nothing", p.protocol));
        return None;
    };
    match (&p.port, p.end_port) {
        (None, _) => Some(Ports::Protocol(proto)),
        (Some(IntOrString::String(name)), None) => Some(Ports::Named { proto, name: name.clone() }),
        (Some(IntOrString::Int(n)), end) => {
            let first = u16::try_from(*n).ok().filter(|n| *n > 0);
            let last = end.map_or(first, |e| u16::try_from(e).ok());
            match (first, last) {
                (Some(first), Some(last)) if last >= first => Some(Ports::Numbers { proto, first, last }),
                _ => {
                    skip(format!("port {n}..{end:?} is not a valid range: it matches nothing"));
                    None
                }
            }
        }
        (Some(IntOrString::String(name)), Some(_)) => {
            skip(format!("endPort with the named port {name:?}: it matches nothing"));
            None
        }
    }
}

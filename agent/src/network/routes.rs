//! Routes to the other nodes' pods: for every other Node with a `spec.podCIDR` and an InternalIP, a route
//! `podCIDR via InternalIP` in the node's namespace, tagged with the agent's own route protocol number so stale ones
//! can be found and removed. The desired set is a pure function of the Nodes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The route protocol number that marks the agent's routes (`ip route` shows `proto 115`).
pub const ROUTE_PROTOCOL: u8 = 115;

/// The InternalIP of a Node.
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status.as_ref()?.addresses.as_ref()?.iter().find(|a| a.type_ == "InternalIP")?.address.parse().ok()
}

/// podCIDR → next hop for every node but `me`.
pub fn desired_routes<'a>(me: &str, nodes: impl IntoIterator<Item = &'a Node>) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).and_then(|c| c.parse::<Ipv4Net>().ok());
        if let (Some(cidr), Some(ip)) = (cidr, internal_ip(n)) {
            out.insert(cidr, ip);
        }
    }
    out
}

async fn current(handle: &Handle) -> Result<BTreeMap<Ipv4Net, Ipv4Addr>, rtnetlink::Error> {
    let mut out = BTreeMap::new();
    let mut routes = handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(r) = routes.try_next().await? {
        if r.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
            continue;
        }
        let mut dst = None;
        let mut gw = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                _ => {}
            }
        }
        if let (Some(d), Some(g)) = (dst, gw)
            && let Ok(net) = Ipv4Net::new(d, r.header.destination_prefix_length)
        {
            out.insert(net, g);
        }
    }
    Ok(out)
}

fn route(net: Ipv4Net, via: Ipv4Addr) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .gateway(via)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

/// Makes the tagged routes equal to `want`.
pub async fn reconcile(handle: &Handle, want: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<(), rtnetlink::Error> {
    let have = current(handle).await?;
    for (net, via) in &have {
        if want.get(net) != Some(via) {
            handle.route().del(route(*net, *via)).execute().await?;
        }
    }
    for (net, via) in want {
        if have.get(net) != Some(via) {
            handle.route().add(route(*net, *via)).replace().execute().await?;
        }
    }
    Ok(())
}

/// Follows the Nodes and keeps the routes in step, until the task is dropped.
pub async fn run(client: kube::Client, handle: Handle, me: String) {
    let (reader, writer) = reflector::store::<Node>();
    let stream =
        reflector(writer, watcher(kube::Api::<Node>::all(client), watcher::Config::default())).default_backoff();
    futures::pin_mut!(stream);
    let mut last: Option<BTreeMap<Ipv4Net, Ipv4Addr>> = None;
    let mut listed = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Err(e) => {
                tracing::debug!(error = %e, "node watch interrupted");
                continue;
            }
            // The store is complete once the first list is in (awaiting `wait_until_ready` here instead would stop
            // polling the very stream that fills it).
            Ok(watcher::Event::InitDone) => listed = true,
            Ok(_) => {}
        }
        if !listed {
            continue;
        }
        let nodes = reader.state();
        let want = desired_routes(&me, nodes.iter().map(|n| n.as_ref()));
        if last.as_ref() == Some(&want) {
            continue;
        }
        match reconcile(&handle, &want).await {
            Ok(()) => {
                tracing::info!(routes = want.len(), "routes to other nodes' pods updated");
                last = Some(want);
            }
            Err(e) => tracing::warn!(error = %e, "updating routes to other nodes failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        Node {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(NodeSpec { pod_cidr: cidr.map(str::to_string), ..Default::default() }),
            status: Some(NodeStatus {
                addresses: ip.map(|ip| vec![NodeAddress { type_: "InternalIP".into(), address: ip.into() }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn every_other_node_with_a_cidr_and_an_address_gets_a_route() {
        let nodes = vec![
            node("a", Some("10.244.0.0/24"), Some("10.0.0.10")),
            node("b", Some("10.244.1.0/24"), Some("10.0.0.11")),
            node("c", None, Some("10.0.0.12")),
            node("d", Some("10.244.3.0/24"), None),
        ];
        let want = desired_routes("a", &nodes);
        assert_eq!(want.len(), 1);
        assert_eq!(want.get(&"10.244.1.0/24".parse().expect("net")), Some(&Ipv4Addr::new(10, 0, 0, 11)));
    }
}

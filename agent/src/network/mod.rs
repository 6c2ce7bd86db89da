//! The pod network, over netlink: a bridge in the node's namespace holding the gateway (`.1`) of the node's pod
//! CIDR, a network namespace and a veth pair per pod (`eth0` inside, `sk<hash>` on the bridge), an address from the
//! /24 ([`ipam`]), a default route through the gateway, IP forwarding on, and routes to the other nodes' pod CIDRs
//! through their InternalIPs ([`routes`]). The cluster DNS address is a /32 on the bridge so that pods reach the
//! agent's DNS server with or without the service load balancer.

pub mod ipam;
pub mod netns;
pub mod routes;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::Digest as _;

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink request failed.
    #[error("{context}: {source}")]
    Netlink {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// A file or namespace operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let context = context.into();
    move |source| NetworkError::Netlink { context, source }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let context = context.into();
    move |source| NetworkError::Io { context, source }
}

/// The host-side veth name of a pod (15 characters at most, stable per pod uid).
pub fn veth_name(uid: &str) -> String {
    let h = sha2::Sha256::digest(uid.as_bytes());
    format!("sk{}", &hex::encode(h)[..10])
}

/// What a pod got.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodNet {
    /// Its address.
    pub ip: Ipv4Addr,
    /// The host end of its veth.
    pub veth: String,
    /// Its namespace.
    pub netns: PathBuf,
}

/// The node's pod network.
#[derive(Debug)]
pub struct Network {
    handle: Handle,
    bridge: String,
    cidr: Ipv4Net,
    ipam: ipam::Ipam,
    netns_dir: PathBuf,
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

async fn has_address(handle: &Handle, index: u32, ip: Ipv4Addr) -> Result<bool, NetworkError> {
    let mut addrs = handle.address().get().set_link_index_filter(index).execute();
    while let Some(a) = addrs.try_next().await.map_err(nl("listing addresses"))? {
        use rtnetlink::packet_route::address::AddressAttribute;
        if a.attributes.iter().any(|at| matches!(at, AddressAttribute::Address(std::net::IpAddr::V4(x)) if *x == ip)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Opens a netlink connection in the current namespace and spawns its driver.
pub fn connect() -> Result<Handle, NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(io("opening a netlink socket"))?;
    tokio::spawn(conn);
    Ok(handle)
}

impl Network {
    /// Sets up the node side: bridge with the gateway address, forwarding, the DNS address. Idempotent.
    pub async fn setup(
        bridge: &str,
        cidr: Ipv4Net,
        dns: Option<Ipv4Addr>,
        ipam_dir: &Path,
        netns_dir: &Path,
    ) -> Result<Self, NetworkError> {
        let handle = connect()?;
        let gw = ipam::gateway(cidr);
        let index = match link_index(&handle, bridge).await? {
            Some(i) => i,
            None => {
                handle
                    .link()
                    .add(LinkBridge::new(bridge).build())
                    .execute()
                    .await
                    .map_err(nl(format!("creating bridge {bridge}")))?;
                link_index(&handle, bridge)
                    .await?
                    .ok_or_else(|| io("finding the new bridge")(std::io::Error::other(bridge.to_string())))?
            }
        };
        if !has_address(&handle, index, gw).await? {
            handle
                .address()
                .add(index, gw.into(), cidr.prefix_len())
                .execute()
                .await
                .map_err(nl(format!("adding {gw} to {bridge}")))?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl("bringing the bridge up"))?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(io("enabling IP forwarding"))?;
        if let Some(dns) = dns {
            // The DNS address is a /32 on the bridge: a local address of the node that every pod reaches through its
            // gateway (a dummy interface would do the same, but not every kernel has the dummy driver).
            if !has_address(&handle, index, dns).await? {
                handle
                    .address()
                    .add(index, dns.into(), 32)
                    .execute()
                    .await
                    .map_err(nl(format!("adding {dns} to {bridge}")))?;
            }
        }
        std::fs::create_dir_all(ipam_dir).map_err(io("creating the ipam directory"))?;
        std::fs::create_dir_all(netns_dir).map_err(io("creating the netns directory"))?;
        Ok(Network {
            handle,
            bridge: bridge.to_string(),
            cidr,
            ipam: ipam::Ipam::new(ipam_dir, cidr),
            netns_dir: netns_dir.to_path_buf(),
        })
    }

    /// The node's pod CIDR.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        ipam::gateway(self.cidr)
    }

    /// The address allocator.
    pub fn ipam(&self) -> &ipam::Ipam {
        &self.ipam
    }

    /// The node namespace's netlink handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Where pod `uid`'s namespace is bound.
    pub fn netns_path(&self, uid: &str) -> PathBuf {
        self.netns_dir.join(uid)
    }

    /// Creates the pod's namespace, veth and address (idempotent for a pod that already has them).
    pub async fn attach(&self, uid: &str) -> Result<PodNet, NetworkError> {
        let ns = self.netns_path(uid);
        let path = ns.clone();
        off_runtime(move || netns::create(&path))
            .await
            .map_err(io(format!("creating the network namespace {}", ns.display())))?;
        let ip = self.ipam.allocate(uid).map_err(io("allocating a pod address"))?;
        let veth = veth_name(uid);
        let result = self.wire(uid, &ns, &veth, ip).await;
        if let Err(e) = result {
            let _ = self.detach(uid, Some(ip)).await;
            return Err(e);
        }
        Ok(PodNet { ip, veth, netns: ns })
    }

    async fn wire(&self, _uid: &str, ns: &Path, veth: &str, ip: Ipv4Addr) -> Result<(), NetworkError> {
        let bridge = link_index(&self.handle, &self.bridge)
            .await?
            .ok_or_else(|| io("finding the bridge")(std::io::Error::other(self.bridge.clone())))?;
        if link_index(&self.handle, veth).await?.is_none() {
            let ns_file = std::fs::File::open(ns).map_err(io("opening the pod namespace"))?;
            use std::os::fd::AsRawFd as _;
            let mut msg = LinkVeth::new(veth, "eth0").build();
            set_peer_netns(&mut msg, ns_file.as_raw_fd());
            self.handle.link().add(msg).execute().await.map_err(nl(format!("creating veth {veth}")))?;
            drop(ns_file);
        }
        let host = link_index(&self.handle, veth)
            .await?
            .ok_or_else(|| io("finding the veth")(std::io::Error::other(veth.to_string())))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(host).controller(bridge).up().build())
            .execute()
            .await
            .map_err(nl("attaching the veth to the bridge"))?;
        // Inside the pod: lo and eth0 up, the address, the default route.
        let path = ns.to_path_buf();
        let pod = off_runtime(move || netns::run_in(&path, rtnetlink::new_connection))
            .await
            .map_err(io("opening netlink in the pod namespace"))?;
        let (conn, ph, _) = pod;
        let driver = tokio::spawn(conn);
        let r = async {
            let lo = link_index(&ph, "lo").await?.ok_or_else(|| io("finding lo")(std::io::Error::other("lo")))?;
            ph.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await.map_err(nl("lo up"))?;
            let eth0 =
                link_index(&ph, "eth0").await?.ok_or_else(|| io("finding eth0")(std::io::Error::other("eth0")))?;
            if !has_address(&ph, eth0, ip).await? {
                ph.address()
                    .add(eth0, ip.into(), self.cidr.prefix_len())
                    .execute()
                    .await
                    .map_err(nl(format!("adding {ip}")))?;
            }
            ph.link().set(LinkUnspec::new_with_index(eth0).up().build()).execute().await.map_err(nl("eth0 up"))?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(eth0).gateway(self.gateway()).build();
            match ph.route().add(route).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
                Err(e) => Err(nl("adding the default route")(e)),
            }
        }
        .await;
        driver.abort();
        r
    }

    /// Removes the pod's veth and namespace and releases its address.
    pub async fn detach(&self, uid: &str, ip: Option<Ipv4Addr>) -> Result<(), NetworkError> {
        let veth = veth_name(uid);
        if let Some(i) = link_index(&self.handle, &veth).await? {
            match self.handle.link().del(i).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(nl(format!("deleting {veth}"))(e)),
            }
        }
        let ns = self.netns_path(uid);
        netns::remove(&ns).map_err(io(format!("removing {}", ns.display())))?;
        if let Some(ip) = ip.or_else(|| self.ipam.held_by(uid)) {
            self.ipam.release(ip, uid);
        }
        Ok(())
    }
}

/// Puts the peer end of a veth being created into the namespace `fd`.
fn set_peer_netns(msg: &mut LinkMessage, fd: i32) {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkInfo};
    for attr in &mut msg.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos.iter_mut() {
                if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = info {
                    peer.attributes.push(LinkAttribute::NetNsFd(fd));
                    peer.header.interface_family = AddressFamily::Unspec;
                }
            }
        }
    }
}

/// Runs blocking namespace work (`unshare`, `setns` on a thread of its own) on tokio's blocking pool, so that a burst
/// of pod starts does not hold the runtime's few workers while the kernel sets namespaces up.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_are_stable() {
        let a = veth_name("0f8b2f3e-7c1a-4e3b-9a43-6c1c5e1b2a11");
        assert_eq!(a.len(), 12);
        assert!(a.len() <= 15);
        assert_eq!(a, veth_name("0f8b2f3e-7c1a-4e3b-9a43-6c1c5e1b2a11"));
        assert_ne!(a, veth_name("another"));
    }
}

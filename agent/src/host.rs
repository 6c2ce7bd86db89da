//! Facts about the machine the agent runs on: capacity (respecting the agent's cgroup limits), OS and kernel, and
//! the node's address.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures::TryStreamExt as _;

use crate::cgroups::Cgroups;

/// What the Node reports about its machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// CPUs available to the agent.
    pub cpus: u64,
    /// Memory available to the agent, in bytes.
    pub memory: u64,
    /// Size of the file system holding the data directory, in bytes.
    pub ephemeral_storage: u64,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of /etc/os-release.
    pub os_image: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// The boot id.
    pub boot_id: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
}

/// The Kubernetes name of this machine's architecture.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `MemTotal` of /proc/meminfo in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    meminfo_field(text, "MemTotal:")
}

/// A field of /proc/meminfo in bytes.
pub fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// `PRETTY_NAME` from os-release text.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string())
}

impl HostFacts {
    /// Reads the facts.
    pub fn read(data_dir: &Path, cgroups: &Cgroups) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
        let cpus = cgroups.own_cpu_limit().map_or(host_cpus, |l| l.min(host_cpus)).max(1);
        let host_mem = parse_meminfo_total(&read("/proc/meminfo")).unwrap_or(0);
        let memory = cgroups.own_memory_limit().map_or(host_mem, |l| l.min(host_mem));
        let ephemeral_storage =
            nix::sys::statvfs::statvfs(data_dir).map(|s| s.blocks() * s.fragment_size()).unwrap_or(0);
        let kernel_version =
            nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        HostFacts {
            cpus,
            memory,
            ephemeral_storage,
            kernel_version,
            os_image: parse_os_release(&read("/etc/os-release")).unwrap_or_else(|| "Linux".into()),
            machine_id: read("/etc/machine-id").trim().to_string(),
            boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_string(),
            architecture: architecture().to_string(),
        }
    }
}

/// The node's address: the first IPv4 address of `interface`, or else the first global IPv4 address of an interface
/// that is not loopback or the pod bridge.
pub async fn detect_node_ip(interface: Option<&str>, bridge: &str) -> Option<Ipv4Addr> {
    pick_node_ip(&addresses().await?, interface, bridge)
}

/// The interface that holds `ip`, if one does.
pub async fn interface_of(ip: Ipv4Addr) -> Option<String> {
    addresses().await?.into_iter().find(|(_, a)| *a == ip).map(|(n, _)| n)
}

pub use crate::sys::send_frame;

/// The index and MAC address of interface `name` in this network namespace.
pub async fn link_of(name: &str) -> Option<(u32, [u8; 6])> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let handle = crate::network::connect().ok()?;
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let l = links.try_next().await.ok()??;
    let mac = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
        _ => None,
    })?;
    Some((l.header.index, mac))
}

/// Every (interface name, IPv4 address) pair of this network namespace.
async fn addresses() -> Option<Vec<(String, Ipv4Addr)>> {
    let handle = crate::network::connect().ok()?;
    let mut names = std::collections::HashMap::new();
    let mut links = handle.link().get().execute();
    while let Ok(Some(l)) = links.try_next().await {
        use rtnetlink::packet_route::link::LinkAttribute;
        if let Some(name) =
            l.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
        {
            names.insert(l.header.index, name);
        }
    }
    let mut addrs = handle.address().get().execute();
    let mut found = Vec::new();
    while let Ok(Some(a)) = addrs.try_next().await {
        use rtnetlink::packet_route::address::AddressAttribute;
        let Some(name) = names.get(&a.header.index) else { continue };
        for at in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = at {
                found.push((name.clone(), *ip));
            }
        }
    }
    Some(found)
}

/// The choice of [`detect_node_ip`] among (interface, address) pairs.
pub fn pick_node_ip(found: &[(String, Ipv4Addr)], interface: Option<&str>, bridge: &str) -> Option<Ipv4Addr> {
    if let Some(want) = interface {
        return found.iter().find(|(n, _)| n == want).map(|(_, ip)| *ip);
    }
    found
        .iter()
        .find(|(n, ip)| {
            n != "lo" && !n.starts_with(bridge) && !ip.is_loopback() && !ip.is_link_local() && !n.starts_with("sk")
        })
        .map(|(_, ip)| *ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_os_release_are_parsed() {
        assert_eq!(parse_meminfo_total("MemTotal:       24684472 kB\nMemFree: 1 kB\n"), Some(24_684_472 * 1024));
        assert_eq!(
            parse_os_release("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn the_node_address_skips_loopback_and_the_pod_bridge() {
        let found = vec![
            ("lo".to_string(), Ipv4Addr::LOCALHOST),
            ("skiff0".to_string(), Ipv4Addr::new(10, 244, 0, 1)),
            ("eth0".to_string(), Ipv4Addr::new(10, 0, 0, 11)),
        ];
        assert_eq!(pick_node_ip(&found, None, "skiff0"), Some(Ipv4Addr::new(10, 0, 0, 11)));
        assert_eq!(pick_node_ip(&found, Some("skiff0"), "skiff0"), Some(Ipv4Addr::new(10, 244, 0, 1)));
        assert_eq!(pick_node_ip(&found, Some("eth9"), "skiff0"), None);
    }
}

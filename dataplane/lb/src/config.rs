//! The one typed configuration of the balancer.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use skiff_ebpf_common::limits;

use crate::{
    desired::{Limits, NodeIdentity},
    error::LbError,
    maglev,
};

/// Where maps and links are pinned by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/skiff";
/// The cgroup-v2 hierarchy on these machines (hybrid mode).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
/// The root of this machine's cgroup-v2 hierarchy: [`CGROUP2_ROOT`] on hybrid hosts, `/sys/fs/cgroup` on pure v2.
pub fn cgroup2_root() -> Option<PathBuf> {
    [CGROUP2_ROOT, "/sys/fs/cgroup"].into_iter().map(PathBuf::from).find(|p| p.join("cgroup.controllers").exists())
}

/// The cgroup that holds the node's pods (the agent creates it and places every pod under it).
pub const DEFAULT_POD_CGROUP: &str = "/sys/fs/cgroup/unified/skiff.pods";

/// Default Maglev table size M (a prime).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = limits::MAGLEV_DEFAULT_SIZE;

/// Capacities of the maps (`max_entries`). Changing one on a node with pinned maps requires `skiff lb --uninstall`
/// first (the pinned maps keep their size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Services map: one entry per frontend plus one per backend slot.
    pub services: u32,
    /// Backends (also the size of the backend counters array).
    pub backends: u32,
    /// Maglev tables (per size class map).
    pub tables: u32,
    /// Session affinity entries (LRU).
    pub affinity: u32,
    /// Service-port/backend memberships.
    pub memberships: u32,
    /// Socket reverse-translation entries (LRU).
    pub reverse_sk: u32,
    /// Connection tracking entries of the tc path (LRU).
    pub conntrack: u32,
    /// Service port ids (size of the service counters array).
    pub service_ids: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        // The defaults of ebpf/programs/src/maps.rs.
        Self {
            services: 262_144,
            backends: 131_072,
            tables: 65_536,
            affinity: 131_072,
            memberships: 262_144,
            reverse_sk: 262_144,
            conntrack: 262_144,
            service_ids: 65_536,
        }
    }
}

/// Configuration of the load balancer.
#[derive(Clone, Debug)]
pub struct LbConfig {
    /// Directory under bpffs where maps (`maps/`) and links (`links/`) are pinned.
    pub pin_dir: PathBuf,
    /// cgroup-v2 directory whose processes (the pods) get socket-level balancing; `None` attaches no socket hooks.
    pub cgroup: Option<PathBuf>,
    /// cgroup-v2 directory of the node's own processes (normally the hierarchy's root, which also holds the pods):
    /// they get socket-level balancing of ClusterIPs and NodePorts (not LoadBalancer or external IPs). `None`: only
    /// the pods' cgroup is balanced.
    pub node_cgroup: Option<PathBuf>,
    /// Node interfaces that get the tc programs (NodePort/LoadBalancer traffic from outside).
    pub interfaces: Vec<String>,
    /// This node.
    pub node: NodeIdentity,
    /// Source address for traffic the tc path forwards to backends on other nodes; defaults to the first node
    /// address.
    pub snat_address: Option<Ipv4Addr>,
    /// Source ports used for that SNAT (outside the kernel's ephemeral range by default).
    pub snat_ports: (u16, u16),
    /// Maglev table size M (prime; default 16381, good for up to ~160 backends per Service within 1% of even).
    pub maglev_table_size: u32,
    /// Per-Service limits.
    pub limits: Limits,
    /// Map capacities.
    pub map_sizes: MapSizes,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Pod egress masquerade on the configured interfaces (to the SNAT address, with the SNAT port range); `None`
    /// leaves pods' packets untranslated.
    pub masquerade: Option<crate::nat::Masquerade>,
}

impl LbConfig {
    /// A configuration with defaults, for this node.
    pub fn new(node: NodeIdentity) -> Self {
        Self {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            cgroup: Some(PathBuf::from(DEFAULT_POD_CGROUP)),
            node_cgroup: None,
            interfaces: Vec::new(),
            node,
            snat_address: None,
            snat_ports: (61_000, 65_535),
            maglev_table_size: limits::MAGLEV_DEFAULT_SIZE,
            limits: Limits::default(),
            map_sizes: MapSizes::default(),
            metrics_addr: None,
            masquerade: None,
        }
    }

    /// The SNAT address in effect.
    pub fn snat(&self) -> Option<Ipv4Addr> {
        self.snat_address.or_else(|| self.node.addresses.first().copied())
    }

    /// Checks the configuration; every problem is an [`LbError::InvalidConfig`].
    pub fn validate(&self) -> Result<(), LbError> {
        let bad = |m: String| Err(LbError::InvalidConfig(m));
        if !maglev::is_prime(self.maglev_table_size) || self.maglev_table_size < 3 {
            return bad(format!("the Maglev table size {} is not a prime >= 3", self.maglev_table_size));
        }
        if self.maglev_table_size as usize > skiff_ebpf_common::MAGLEV_L {
            return bad(format!(
                "the Maglev table size {} is too large (max {})",
                self.maglev_table_size,
                skiff_ebpf_common::MAGLEV_L
            ));
        }
        if self.snat_ports.0 == 0 || self.snat_ports.0 > self.snat_ports.1 {
            return bad(format!("invalid SNAT port range {}-{}", self.snat_ports.0, self.snat_ports.1));
        }
        if let Some(cg) = &self.cgroup {
            let cg = cg.canonicalize().unwrap_or_else(|_| cg.clone());
            if cg == Path::new(CGROUP2_ROOT) || cg == Path::new("/sys/fs/cgroup") {
                return bad(format!(
                    "refusing to attach to the root cgroup {}: give the cgroup that holds the pods",
                    cg.display()
                ));
            }
        }
        if let Some(cg) = &self.node_cgroup
            && !cg.join("cgroup.controllers").exists()
        {
            return bad(format!("the node cgroup {} is not a cgroup-v2 directory", cg.display()));
        }
        if self.limits.max_backends == 0 || self.limits.max_backends > usize::from(limits::MAX_SLOTS) {
            return bad(format!("max backends per Service port must be 1..={}", limits::MAX_SLOTS));
        }
        let s = &self.map_sizes;
        if [s.services, s.backends, s.tables, s.affinity, s.memberships, s.reverse_sk, s.conntrack, s.service_ids]
            .contains(&0)
        {
            return bad("map sizes must be positive".into());
        }
        Ok(())
    }
}

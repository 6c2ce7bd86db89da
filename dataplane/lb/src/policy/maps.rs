//! The pinned policy maps: reading back what is programmed, executing planned writes, counters and verdicts.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::maps::{
    Array, HashMap, Map, MapData, MapError, PerCpuHashMap, RingBuf,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::Ipv4Net;
use skiff_ebpf_common::{PolConfig, PolEndpoint, PolRuleData, PolRuleValue, PolStatsKey, PolVerdict, maps as names};

use super::{
    model::{Direction, PortMatch, RuleKey},
    plan::{PolicyOp, Programmed},
};
use crate::error::LbError;

/// Handles to the policy maps.
pub struct PolicyMaps {
    ipcache: LpmTrie<MapData, [u8; 4], u32>,
    endpoints: HashMap<MapData, u32, PolEndpoint>,
    rules: LpmTrie<MapData, PolRuleData, PolRuleValue>,
    stats: PerCpuHashMap<MapData, PolStatsKey, u64>,
    config: Array<MapData, PolConfig>,
}

impl std::fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMaps").finish_non_exhaustive()
    }
}

fn open<T>(pin_dir: &Path, name: &'static str, convert: impl FnOnce(Map) -> Result<T, MapError>) -> Result<T, LbError> {
    let data = MapData::from_pin(pin_dir.join("maps").join(name)).map_err(|e| LbError::map(name, "open pinned", e))?;
    let map = Map::from_map_data(data).map_err(|e| LbError::map(name, "open", e))?;
    convert(map).map_err(|e| LbError::map(name, "open", e))
}

fn absent(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn rule_key(k: &RuleKey) -> Key<PolRuleData> {
    let (proto, port) = k.ports.proto_port();
    Key::new(k.ports.prefix_len(), PolRuleData::new(k.endpoint, k.dir.wire(), k.peer, proto, port.to_be_bytes()))
}

fn ip_key(net: &Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

impl PolicyMaps {
    /// Opens the maps pinned under `pin_dir` (by [`crate::loader::Dataplane::open`]).
    pub fn open(pin_dir: &Path) -> Result<Self, LbError> {
        Ok(Self {
            ipcache: open(pin_dir, names::POL_IPCACHE, LpmTrie::try_from)?,
            endpoints: open(pin_dir, names::POL_ENDPOINTS, HashMap::try_from)?,
            rules: open(pin_dir, names::POL_RULES, LpmTrie::try_from)?,
            stats: open(pin_dir, names::POL_STATS, PerCpuHashMap::try_from)?,
            config: open(pin_dir, names::POL_CONFIG, Array::try_from)?,
        })
    }

    /// What the maps hold. Entries this version cannot read back are reported as an error (a full rewrite follows).
    pub fn read(&self) -> Result<Programmed, LbError> {
        let mut p = Programmed::default();
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(|e| LbError::map(names::POL_IPCACHE, "read", e))?;
            // The kernel keeps prefixes within the key's 32 bits, so this always holds.
            if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8) {
                p.ipcache.insert(net, v);
            }
        }
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(|e| LbError::map(names::POL_ENDPOINTS, "read", e))?;
            p.endpoints.insert(k, v);
        }
        for item in self.rules.iter() {
            let (k, v) = item.map_err(|e| LbError::map(names::POL_RULES, "read", e))?;
            let d = k.data();
            let port = u16::from_be_bytes(d.port);
            let parsed = Direction::from_wire(d.dir).zip(PortMatch::from_key(k.prefix_len(), d.proto, port)).map(
                |(dir, ports)| RuleKey {
                    endpoint: u32::from_be_bytes(d.endpoint),
                    dir,
                    peer: u32::from_be_bytes(d.peer),
                    ports,
                },
            );
            // An entry this version would not write: recorded under a key no desired rule has, so it is removed.
            match parsed {
                Some(key) => {
                    p.rules.insert(key, v.policy);
                }
                None => tracing::warn!(prefix = k.prefix_len(), "unreadable policy rule entry; it will be rewritten"),
            }
        }
        Ok(p)
    }

    /// Performs one write.
    pub fn execute(&mut self, op: &PolicyOp) -> Result<(), LbError> {
        let err = |name: &'static str, what: &'static str| move |e| LbError::map(name, what, e);
        match op {
            PolicyOp::PutRule(k, policy) => self
                .rules
                .insert(&rule_key(k), PolRuleValue { policy: *policy }, 0)
                .map_err(err(names::POL_RULES, "insert")),
            PolicyOp::PutIp(net, id) => {
                self.ipcache.insert(&ip_key(net), id, 0).map_err(err(names::POL_IPCACHE, "insert"))
            }
            PolicyOp::PutEndpoint(ifindex, e) => {
                self.endpoints.insert(ifindex, e, 0).map_err(err(names::POL_ENDPOINTS, "insert"))
            }
            PolicyOp::DeleteEndpoint(ifindex) => {
                absent(self.endpoints.remove(ifindex)).map_err(err(names::POL_ENDPOINTS, "delete"))
            }
            PolicyOp::DeleteIp(net) => {
                absent(self.ipcache.remove(&ip_key(net))).map_err(err(names::POL_IPCACHE, "delete"))
            }
            PolicyOp::DeleteRule(k) => absent(self.rules.remove(&rule_key(k))).map_err(err(names::POL_RULES, "delete")),
            PolicyOp::BumpGeneration => {
                let mut c = self.config.get(&0, 0).map_err(err(names::POL_CONFIG, "read"))?;
                c.generation = c.generation.wrapping_add(1);
                self.config.set(0, c, 0).map_err(err(names::POL_CONFIG, "write"))
            }
        }
    }

    /// The current policy generation.
    pub fn generation(&self) -> Result<u32, LbError> {
        self.config.get(&0, 0).map(|c| c.generation).map_err(|e| LbError::map(names::POL_CONFIG, "read", e))
    }

    /// Removes the counters of pods whose address (network order) is not in `live`.
    pub fn prune_stats(&mut self, live: &std::collections::BTreeSet<u32>) -> Result<(), LbError> {
        let dead: Vec<PolStatsKey> =
            self.stats.keys().filter_map(Result::ok).filter(|k| !live.contains(&k.addr)).collect();
        for k in dead {
            absent(self.stats.remove(&k)).map_err(|e| LbError::map(names::POL_STATS, "delete", e))?;
        }
        Ok(())
    }

    /// New-flow verdict counters, summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<PolStatsKey, u64>, LbError> {
        let mut out = BTreeMap::new();
        for item in self.stats.iter() {
            let (k, per_cpu) = item.map_err(|e| LbError::map(names::POL_STATS, "read", e))?;
            out.insert(k, per_cpu.iter().sum());
        }
        Ok(out)
    }
}

/// A ring buffer record as a [`PolVerdict`] (`None` when its size is not one).
pub fn decode(b: &[u8]) -> Option<PolVerdict> {
    if b.len() != std::mem::size_of::<PolVerdict>() {
        return None;
    }
    let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    Some(PolVerdict {
        saddr: u32_at(0),
        daddr: u32_at(4),
        sport: u16_at(8),
        dport: u16_at(10),
        proto: b[12],
        dir: b[13],
        verdict: b[14],
        pad: b[15],
        endpoint: u32_at(16),
        peer: u32_at(20),
        policy: u32_at(24),
        ifindex: u32_at(28),
    })
}

/// The verdict ring buffer (one reader at a time).
pub struct Verdicts {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for Verdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verdicts").finish_non_exhaustive()
    }
}

impl Verdicts {
    /// Opens the ring buffer pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, LbError> {
        Ok(Self { ring: open(pin_dir, names::POL_VERDICTS, RingBuf::try_from)? })
    }

    /// Takes every record waiting now.
    pub fn drain(&mut self) -> Vec<PolVerdict> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(v) = decode(&item) {
                out.push(v);
            }
        }
        out
    }
}

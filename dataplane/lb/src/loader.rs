//! Loading the BPF object, pinning its maps and links under the pin directory, and attaching the programs.
//!
//! # Guarantees
//! - Maps are pinned under `<pin_dir>/maps/` and reused on the next start, so a restarted agent resumes from what
//!   is programmed (fail-static): packets keep flowing while no agent runs.
//! - Links are pinned under `<pin_dir>/links/`, so programs stay attached after the process exits. A restart
//!   attaches the new programs first, then swaps the pin and drops the old link (make before break: both run for a
//!   moment, and the second sees the address the first already rewrote).
//! - [`uninstall`] removes the pin directory, which detaches everything.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
    },
    util::KernelVersion,
};
use skiff_ebpf_common::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, Config, Counters, CtKey, CtValue, Event, L2Entry,
    MaglevMeta, MaglevTableL, MaglevTableM, MaglevTableS, NatConfig, NatEntry, NatEvent, PolConfig, PolCtKey,
    PolCtValue, PolEndpoint, PolRuleData, PolRuleValue, PolStatsKey, ReverseSkKey, ReverseSkValue, ServiceKey,
    ServiceValue, maps as names, programs as progs,
};

use crate::{config::LbConfig, error::LbError, maps::LbMaps};

/// The BPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SKIFF_EBPF_OBJECT"));

/// Expected (map type, key size, value size) of every map, and its configured capacity.
fn expected(config: &LbConfig) -> Vec<(&'static str, u32, u32, u32, u32)> {
    use std::mem::size_of;
    const HASH: u32 = 1;
    const ARRAY: u32 = 2;
    const PERCPU_ARRAY: u32 = 6;
    const LRU_HASH: u32 = 9;
    const PERCPU_HASH: u32 = 5;
    const LPM_TRIE: u32 = 11;
    const RINGBUF: u32 = 27;
    let s = &config.map_sizes;
    let sz = |n: usize| n as u32;
    vec![
        (names::SERVICES, HASH, sz(size_of::<ServiceKey>()), sz(size_of::<ServiceValue>()), s.services),
        (names::BACKENDS, HASH, 4, sz(size_of::<Backend>()), s.backends),
        (names::MAGLEV_S, HASH, 4, sz(size_of::<MaglevTableS>()), s.tables),
        (names::MAGLEV_M, HASH, 4, sz(size_of::<MaglevTableM>()), s.tables),
        (names::MAGLEV_L, HASH, 4, sz(size_of::<MaglevTableL>()), s.tables),
        (names::MAGLEV_META, HASH, 4, sz(size_of::<MaglevMeta>()), s.tables),
        (names::AFFINITY, LRU_HASH, sz(size_of::<AffinityKey>()), sz(size_of::<AffinityValue>()), s.affinity),
        (names::AFFINITY_MATCH, HASH, sz(size_of::<AffinityMatchKey>()), 4, s.memberships),
        (names::REVERSE_SK, LRU_HASH, sz(size_of::<ReverseSkKey>()), sz(size_of::<ReverseSkValue>()), s.reverse_sk),
        (names::CONNTRACK, LRU_HASH, sz(size_of::<CtKey>()), sz(size_of::<CtValue>()), s.conntrack),
        (names::SERVICE_STATS, PERCPU_ARRAY, 4, sz(size_of::<Counters>()), s.service_ids),
        (names::BACKEND_STATS, PERCPU_ARRAY, 4, sz(size_of::<Counters>()), s.backends),
        (names::EVENTS, PERCPU_ARRAY, 4, 8, Event::COUNT),
        (names::CONFIG, ARRAY, 4, sz(size_of::<Config>()), 1),
        (names::POL_IPCACHE, LPM_TRIE, 8, 4, 262_144),
        (names::POL_ENDPOINTS, HASH, 4, sz(size_of::<PolEndpoint>()), 16_384),
        (names::POL_RULES, LPM_TRIE, 4 + sz(size_of::<PolRuleData>()), sz(size_of::<PolRuleValue>()), 1_048_576),
        (names::POL_CT, LRU_HASH, sz(size_of::<PolCtKey>()), sz(size_of::<PolCtValue>()), 262_144),
        (names::POL_STATS, PERCPU_HASH, sz(size_of::<PolStatsKey>()), 8, 65_536),
        (names::POL_VERDICTS, RINGBUF, 0, 0, 256 * 1024),
        (names::POL_CONFIG, ARRAY, 4, sz(size_of::<PolConfig>()), 1),
        (names::NAT, LRU_HASH, sz(size_of::<CtKey>()), sz(size_of::<NatEntry>()), 262_144),
        (names::NAT_EXCLUDE, LPM_TRIE, 8, 4, 1_024),
        (names::NAT_CONFIG, ARRAY, 4, sz(size_of::<NatConfig>()), 1),
        (names::NAT_STATS, PERCPU_ARRAY, 4, 8, NatEvent::COUNT),
        (names::L2_ANNOUNCE, HASH, 4, sz(size_of::<L2Entry>()), 1_024),
    ]
}

/// Checks that BPF can be used with this configuration; the error says what is missing.
pub fn check_available(config: &LbConfig) -> Result<(), LbError> {
    let unavailable = |reason: String| Err(LbError::BpfUnavailable { reason });
    // Effective capabilities: CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21), CAP_BPF (39).
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    if !(has(21) || (has(39) && has(12))) {
        return unavailable(format!(
            "the process lacks CAP_BPF+CAP_NET_ADMIN (or CAP_SYS_ADMIN) (CapEff={cap_eff:#x}); run the agent as root"
        ));
    }
    match KernelVersion::current() {
        Ok(v) if v < KernelVersion::new(5, 18, 0) => {
            return unavailable(format!("kernel {v:?} is too old: socket-level balancing needs Linux 5.18 or newer"));
        }
        Ok(_) => {}
        Err(e) => return unavailable(format!("cannot read the kernel version: {e}")),
    }
    // The nearest existing ancestor of the pin directory (the directories below it are created at load time).
    let parent = config.pin_dir.ancestors().skip(1).find(|p| p.exists()).unwrap_or(Path::new("/"));
    match nix::sys::statfs::statfs(parent) {
        Ok(st) if st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC => {}
        Ok(_) => {
            return unavailable(format!(
                "{} is not on a BPF file system; mount it with `mount -t bpf bpf /sys/fs/bpf` (scripts/setup does)",
                parent.display()
            ));
        }
        Err(e) => return unavailable(format!("cannot stat {}: {e}", parent.display())),
    }
    Ok(())
}

/// Refuses pinned maps that do not match this version's layout or the configured sizes.
fn check_pins(config: &LbConfig, maps_dir: &Path) -> Result<(), LbError> {
    for (name, ty, key, value, max) in expected(config) {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| LbError::map(name, "open pinned", e))?;
        let found_ty = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let found = (found_ty, info.key_size(), info.value_size(), info.max_entries());
        if found != (ty, key, value, max) {
            return Err(LbError::IncompatiblePin {
                map: name,
                detail: format!("type/key/value/entries {found:?}, this version expects {:?}", (ty, key, value, max)),
                pin_dir: config.pin_dir.clone(),
            });
        }
    }
    Ok(())
}

/// The loaded, pinned and attached dataplane.
#[derive(Debug)]
pub struct Dataplane {
    /// The maps.
    pub maps: LbMaps,
    /// Whether the maps existed before (a restart): the applier resumes from their contents.
    pub resumed: bool,
    /// Pin paths of the attached links.
    pub links: Vec<PathBuf>,
}

impl Dataplane {
    /// Loads the programs, pins maps and links, and attaches to the configured cgroup and interfaces.
    pub fn open(config: &LbConfig) -> Result<Self, LbError> {
        let Loaded { mut ebpf, resumed } = load(config)?;
        let maps_dir = config.pin_dir.join("maps");
        let links_dir = config.pin_dir.join("links");
        let mut links = Vec::new();
        if let Some(cgroup) = &config.cgroup {
            let names = [progs::CONNECT4, progs::SENDMSG4, progs::RECVMSG4, progs::GETPEERNAME4];
            links.extend(attach_cgroup(&mut ebpf, &links_dir, cgroup, names, "")?);
        }
        if let Some(cgroup) = &config.node_cgroup {
            // The node's own processes: ClusterIPs and NodePorts (the forward programs' node variants), with the same
            // reverse programs as the pods.
            let names = [progs::CONNECT4_NODE, progs::SENDMSG4_NODE, progs::RECVMSG4, progs::GETPEERNAME4];
            links.extend(attach_cgroup(&mut ebpf, &links_dir, cgroup, names, "@node")?);
        }
        for (name, kind) in [(progs::TC_INGRESS, TcAttachType::Ingress), (progs::TC_EGRESS, TcAttachType::Egress)] {
            if config.interfaces.is_empty() {
                break;
            }
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().map_err(|e| LbError::program(name, "load", e))?;
            for iface in &config.interfaces {
                let id =
                    prog.attach(iface, kind).map_err(|e| LbError::program(name, format!("attach to {iface}"), e))?;
                let link = prog.take_link(id).map_err(|e| LbError::program(name, "take link", e))?;
                let link: FdLink = link.try_into().map_err(|e| LbError::Link {
                    path: links_dir.join(name),
                    message: format!("tc link is not a BPF link (tcx needs Linux 6.6+): {e}"),
                })?;
                links.push(replace_pin(&links_dir, format!("{name}@{iface}"), link)?);
            }
        }
        remove_stale_links(&links_dir, &links)?;
        // The policy programs are pinned, not attached: the agent attaches them to each pod's veth
        // (`policy::attach`), and those links live in their own directory.
        let progs_dir = config.pin_dir.join("progs");
        for name in [progs::POL_FROM_POD, progs::POL_TO_POD] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().map_err(|e| LbError::program(name, "load", e))?;
            pin_program(&progs_dir, name, prog)?;
        }

        let mut taken: Vec<(String, MapData)> = Vec::new();
        for name in names::ALL {
            if let Some(map) = ebpf.take_map(name) {
                taken.push((name.to_string(), map_data(name, map)?));
            }
        }
        let maps = LbMaps::new(|name| {
            let i = taken.iter().position(|(n, _)| n == name).ok_or_else(|| LbError::Link {
                path: maps_dir.join(name),
                message: "map missing from the BPF object".into(),
            })?;
            Ok(taken.swap_remove(i).1)
        })?;
        Ok(Self { maps, resumed, links })
    }
}

/// Attaches the cgroup programs `names` to `cgroup` (loading those not loaded yet) and pins each link as
/// `<name><suffix>` under `links_dir`. Link-based cgroup attachments always allow several programs (the kernel
/// rejects attach flags for them).
fn attach_cgroup(
    ebpf: &mut Ebpf,
    links_dir: &Path,
    cgroup: &Path,
    names: [&'static str; 4],
    suffix: &str,
) -> Result<Vec<PathBuf>, LbError> {
    let file = fs::File::open(cgroup).map_err(|e| LbError::io("opening cgroup", cgroup.to_path_buf(), e))?;
    let mut pinned = Vec::new();
    for name in names {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| LbError::program(name, "load", e))?;
        }
        let id = prog
            .attach(&file, CgroupAttachMode::Single)
            .map_err(|e| LbError::program(name, format!("attach to {}", cgroup.display()), e))?;
        let link = prog.take_link(id).map_err(|e| LbError::program(name, "take link", e))?;
        let link: FdLink = link
            .try_into()
            .map_err(|e| LbError::Link { path: links_dir.join(name), message: format!("not a BPF link: {e}") })?;
        pinned.push(replace_pin(links_dir, format!("{name}{suffix}"), link)?);
    }
    Ok(pinned)
}

/// The BPF object loaded with its maps pinned (reused if they were pinned before); nothing attached.
#[derive(Debug)]
pub struct Loaded {
    /// The object: programs (not yet loaded into the kernel) and maps.
    pub ebpf: Ebpf,
    /// Whether the maps were pinned before.
    pub resumed: bool,
}

/// Validates the configuration, checks that BPF is usable, creates the pin directories, refuses incompatible pins,
/// and loads the object with every map pinned under `<pin_dir>/maps`. [`Dataplane::open`] attaches on top of it;
/// tests use it directly to run programs under `BPF_PROG_TEST_RUN`.
pub fn load(config: &LbConfig) -> Result<Loaded, LbError> {
    config.validate()?;
    check_available(config)?;
    let maps_dir = config.pin_dir.join("maps");
    let links_dir = config.pin_dir.join("links");
    let progs_dir = config.pin_dir.join("progs");
    let policy_links_dir = config.pin_dir.join("policy-links");
    for dir in [&maps_dir, &links_dir, &progs_dir, &policy_links_dir] {
        fs::create_dir_all(dir).map_err(|e| LbError::io("creating", dir.clone(), e))?;
    }
    check_pins(config, &maps_dir)?;
    let resumed = maps_dir.join(names::SERVICES).exists();
    let mut loader = EbpfLoader::new();
    let pins: Vec<(&'static str, PathBuf)> = names::ALL.iter().map(|n| (*n, maps_dir.join(n))).collect();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    for (name, _, _, _, max) in expected(config) {
        if name != names::EVENTS
            && name != names::CONFIG
            && !name.starts_with("POL_")
            && !name.starts_with("LB_NAT")
            && name != names::L2_ANNOUNCE
        {
            loader.map_max_entries(name, max);
        }
    }
    let ebpf = loader.load(OBJECT).map_err(|e| LbError::Load(Box::new(e)))?;
    Ok(Loaded { ebpf, resumed })
}

/// A program of the object by name and type.
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LbError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| LbError::Link {
        path: PathBuf::from(name),
        message: "program missing from the BPF object".into(),
    })?;
    p.try_into().map_err(|e| LbError::program(name, "open", e))
}

fn map_data(name: &'static str, map: aya::maps::Map) -> Result<MapData, LbError> {
    use aya::maps::Map;
    match map {
        Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::Array(m)
        | Map::PerCpuArray(m)
        | Map::LpmTrie(m)
        | Map::PerCpuHashMap(m)
        | Map::RingBuf(m) => Ok(m),
        other => Err(LbError::Link { path: PathBuf::from(name), message: format!("unexpected map type {other:?}") }),
    }
}

/// Pins a loaded program as `<dir>/<name>`, replacing the pin of an older version (links keep the program they hold
/// until they are attached again).
fn pin_program(dir: &Path, name: &str, prog: &mut SchedClassifier) -> Result<(), LbError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}-new"));
    let _ = fs::remove_file(&tmp);
    let err = |message: String| LbError::Link { path: path.clone(), message };
    prog.pin(&tmp).map_err(|e| err(format!("pin: {e}")))?;
    fs::rename(&tmp, &path).map_err(|e| err(format!("rename: {e}")))
}

/// Pins `link` as `<dir>/<name>`, replacing (and thereby detaching) a link pinned there before.
pub(crate) fn replace_pin(dir: &Path, name: String, link: FdLink) -> Result<PathBuf, LbError> {
    // bpffs refuses names with dots.
    let name = name.replace('.', "_");
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}-new"));
    let _ = fs::remove_file(&tmp);
    let err = |message: String| LbError::Link { path: path.clone(), message };
    let pinned: PinnedLink = link.pin(&tmp).map_err(|e| err(format!("pin: {e}")))?;
    // Keep the old link open until the new pin is in place, so there is no moment without a program.
    let old = PinnedLink::from_pin(&path).ok();
    fs::rename(&tmp, &path).map_err(|e| err(format!("rename: {e}")))?;
    drop(pinned);
    drop(old);
    Ok(path)
}

/// Removes pinned links this configuration no longer attaches (e.g. an interface that was dropped).
fn remove_stale_links(dir: &Path, keep: &[PathBuf]) -> Result<(), LbError> {
    let keep: BTreeSet<&PathBuf> = keep.iter().collect();
    let entries = fs::read_dir(dir).map_err(|e| LbError::io("listing", dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !keep.contains(&path) {
            fs::remove_file(&path).map_err(|e| LbError::io("removing stale link", path.clone(), e))?;
        }
    }
    Ok(())
}

/// Opens the pinned maps without loading or attaching anything (diagnostics, tests, a second reader).
pub fn open_pinned(pin_dir: &Path) -> Result<LbMaps, LbError> {
    let maps_dir = pin_dir.join("maps");
    LbMaps::new(|name| MapData::from_pin(maps_dir.join(name)).map_err(|e| LbError::map(name, "open pinned", e)))
}

/// Removes everything pinned under `pin_dir`: programs detach and maps are freed once no one holds them.
pub fn uninstall(pin_dir: &Path) -> Result<(), LbError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    for sub in ["links", "policy-links", "progs", "maps"] {
        let dir = pin_dir.join(sub);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    fs::remove_dir(pin_dir).map_err(|e| LbError::io("removing", pin_dir, e))
}

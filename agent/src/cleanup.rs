//! `skiff agent reset`: removes everything an agent left on the machine — its containers (runc state under its
//! data directory), their processes (by pid, from its cgroups), mounts under its data directory, its cgroups, the
//! pods' veths, the bridge and DNS interface, and the data directory. Used to uninstall a node and by the test
//! harness after killing agents (fail-static means a killed agent leaves its pods running).

use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cgroups::Cgroups;
use crate::paths::Paths;

/// What to remove.
#[derive(Clone, Debug)]
pub struct Reset {
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// Its cgroup root name.
    pub cgroup_root: String,
    /// runc.
    pub runc: PathBuf,
    /// Its bridge (removed with the DNS interface), if the network should go too.
    pub bridge: Option<String>,
}

/// What was left behind (empty when everything went).
#[derive(Clone, Debug, Default)]
pub struct Leftovers {
    /// Mounts that would not go.
    pub mounts: Vec<PathBuf>,
    /// cgroups that would not go.
    pub cgroups: Vec<PathBuf>,
    /// Processes still alive.
    pub pids: Vec<i32>,
}

impl Leftovers {
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.cgroups.is_empty() && self.pids.is_empty()
    }
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// Performs the reset.
pub async fn reset(r: &Reset) -> Leftovers {
    let paths = Paths::new(&r.data_dir);
    let runc_root = paths.runc_root();
    // 1. Containers.
    if runc_root.exists() {
        let out =
            tokio::process::Command::new(&r.runc).arg("--root").arg(&runc_root).args(["list", "-q"]).output().await;
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
                let _ = tokio::process::Command::new(&r.runc)
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["kill", "--all", id, "KILL"])
                    .output()
                    .await;
                let _ = tokio::process::Command::new(&r.runc)
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force", id])
                    .output()
                    .await;
            }
        }
    }
    // 2. Processes left in the cgroups of this agent's pods, and shims (found by their exit-file argument naming this
    //    directory). Only the pods recorded in this data directory: another agent on the machine may share the
    //    cgroup root (issue 17: a reset of one agent killed the other's containers).
    let cgroups = Cgroups::detect().unwrap_or_default();
    let pod_cgroups = own_pod_cgroups(&paths, &r.cgroup_root);
    let own_pids = || {
        let mut pids: Vec<i32> = pod_cgroups.iter().flat_map(|c| cgroups.pids(c)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = own_pids();
        for p in &pids {
            kill(*p);
        }
        let shims = shim_pids(&paths);
        for p in &shims {
            kill(*p);
        }
        if (pids.is_empty() && shims.is_empty()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 3. Network.
    if let Some(bridge) = &r.bridge
        && let Ok(handle) = crate::network::connect()
    {
        let mut ours: Vec<String> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(paths.pods()) {
            for e in entries.flatten() {
                ours.push(crate::network::veth_name(&e.file_name().to_string_lossy()));
            }
        }
        let foreign = remove_network(&handle, bridge, &ours).await;
        if !foreign.is_empty() {
            tracing::warn!(%bridge, ports = ?foreign, "the bridge is kept: veths of another agent are attached to it");
        }
    }
    // 4. Mounts, cgroups, files.
    let mounts = crate::pods::mounts::unmount_under(&r.data_dir);
    let mut cg_left: Vec<PathBuf> = pod_cgroups.iter().flat_map(|c| cgroups.remove(c)).collect();
    // the root goes once no pod of anyone is left in it; another agent's pods keep it, and that is no leftover
    let others = cgroups.all_dirs(&r.cgroup_root).iter().any(|d| has_child_dir(d));
    if !others {
        cg_left.extend(cgroups.remove(&r.cgroup_root));
    }
    if mounts.is_empty() {
        let _ = std::fs::remove_dir_all(&r.data_dir);
    }
    let pids = own_pids();
    Leftovers { mounts, cgroups: cg_left, pids }
}

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Option<u32> {
    use futures::TryStreamExt as _;
    handle.link().get().match_name(name.to_string()).execute().try_next().await.ok().flatten().map(|l| l.header.index)
}

/// Removes the veths named `ours`, then `bridge` and its DNS interface unless other links are still attached to the
/// bridge (the pods of another agent that shares it). Returns the names of those other links (empty when the bridge
/// went).
pub async fn remove_network(handle: &rtnetlink::Handle, bridge: &str, ours: &[String]) -> Vec<String> {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::link::LinkAttribute;
    for n in ours {
        if let Some(i) = link_index(handle, n).await {
            let _ = handle.link().del(i).execute().await;
        }
    }
    let Some(index) = link_index(handle, bridge).await else { return Vec::new() };
    let mut foreign = Vec::new();
    let mut links = handle.link().get().execute();
    // a bounded walk: one dump of this namespace's links
    while let Ok(Some(l)) = links.try_next().await {
        let attached = l.attributes.iter().any(|a| matches!(a, LinkAttribute::Controller(c) if *c == index));
        if attached {
            let name =
                l.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None });
            foreign.push(name.unwrap_or_else(|| format!("#{}", l.header.index)));
        }
    }
    if !foreign.is_empty() {
        return foreign;
    }
    for n in [bridge.to_string(), format!("{}-dns", &bridge[..bridge.len().min(11)])] {
        if let Some(i) = link_index(handle, &n).await {
            let _ = handle.link().del(i).execute().await;
        }
    }
    Vec::new()
}

/// The cgroups (relative) of the pods this data directory records: `<root>/pod<uid>` for each `pods/<uid>`.
fn own_pod_cgroups(paths: &Paths, cgroup_root: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(paths.pods()) else { return Vec::new() };
    entries.flatten().map(|e| format!("{cgroup_root}/pod{}", e.file_name().to_string_lossy())).collect()
}

fn has_child_dir(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut es| es.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir()))))
}

/// Shims of this data directory still running (their command line names its `exits/` directory).
fn shim_pids(paths: &Paths) -> Vec<i32> {
    let exits = std::fs::canonicalize(paths.exits()).unwrap_or_else(|_| paths.exits());
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        if is_shim_of(&cmd, &exits) {
            out.push(pid);
        }
    }
    out
}

/// Whether a command line (NUL-separated) is a shim whose `--exit` file is directly in `exits`: compared as a
/// path, so `/tmp/a/exits` is not mistaken for `/var/tmp/a/exits`.
fn is_shim_of(cmdline: &[u8], exits: &std::path::Path) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| {
        w[0] == b"--exit"
            && std::path::Path::new(std::ffi::OsStr::from_bytes(w[1]))
                .parent()
                .is_some_and(|p| p == exits || std::fs::canonicalize(p).is_ok_and(|c| c == exits))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shims_are_matched_by_their_exit_directory_not_a_substring() {
        let exits = std::path::Path::new("/tmp/a/exits");
        let mine = b"/usr/bin/skiff\0agent\0shim\0--exit\0/tmp/a/exits/c1\0--log-max\x001000\0";
        let other = b"/usr/bin/skiff\0agent\0shim\0--exit\0/var/tmp/a/exits/c1\0";
        let deeper = b"/usr/bin/skiff\0agent\0shim\0--exit\0/tmp/a/exits/x/c1\0";
        assert!(is_shim_of(mine, exits));
        assert!(!is_shim_of(other, exits), "issue 17: another agent's shim");
        assert!(!is_shim_of(deeper, exits));
        assert!(!is_shim_of(b"sleep\0/tmp/a/exits/c1\0", exits));
    }

    #[test]
    fn only_the_pods_of_this_data_directory_are_targeted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path());
        std::fs::create_dir_all(paths.pod("u1")).expect("pod dir");
        std::fs::create_dir_all(paths.pod("u2")).expect("pod dir");
        let mut cg = own_pod_cgroups(&paths, "skiff");
        cg.sort();
        assert_eq!(cg, vec!["skiff/podu1".to_string(), "skiff/podu2".to_string()]);
        assert!(own_pod_cgroups(&Paths::new(dir.path().join("none")), "skiff").is_empty());
    }
}

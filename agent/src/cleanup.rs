//! `skiff agent reset`: removes everything an agent left on the machine — its containers (runc state under its
//! data directory), their processes (by pid, from its cgroups), mounts under its data directory, its cgroups, the
//! pods' veths, the bridge and DNS interface, and the data directory. Used to uninstall a node and by the test
//! harness after killing agents (fail-static means a killed agent leaves its pods running).

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
    // 2. Processes left in the pods' cgroups, and shims (found by their exit-file argument naming this directory).
    let cgroups = Cgroups::detect().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cgroups.pids(&r.cgroup_root);
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
        let mut names: Vec<String> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(paths.pods()) {
            for e in entries.flatten() {
                names.push(crate::network::veth_name(&e.file_name().to_string_lossy()));
            }
        }
        names.push(bridge.clone());
        names.push(format!("{}-dns", &bridge[..bridge.len().min(11)]));
        for n in names {
            use futures::TryStreamExt as _;
            let mut links = handle.link().get().match_name(n).execute();
            if let Ok(Some(l)) = links.try_next().await {
                let _ = handle.link().del(l.header.index).execute().await;
            }
        }
    }
    // 4. Mounts, cgroups, files.
    let mounts = crate::pods::mounts::unmount_under(&r.data_dir);
    let cg_left = cgroups.remove(&r.cgroup_root);
    if mounts.is_empty() {
        let _ = std::fs::remove_dir_all(&r.data_dir);
    }
    let pids = cgroups.pids(&r.cgroup_root);
    Leftovers { mounts, cgroups: cg_left, pids }
}

/// Shims of this data directory still running (their command line names its `exits/` directory).
fn shim_pids(paths: &Paths) -> Vec<i32> {
    let marker = paths.exits().display().to_string();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("--exit\0") && cmd.contains(&marker) {
            out.push(pid);
        }
    }
    out
}

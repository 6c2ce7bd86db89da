//! cgroup-v2 groups under the unified hierarchy, removed on drop.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::unique_name;

/// The cgroup-v2 hierarchy on these machines (hybrid mode).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// A cgroup created under [`CGROUP2_ROOT`] (never the root itself) and removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<root>/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let path = Path::new(CGROUP2_ROOT).join(unique_name(prefix));
        fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// Its directory (what BPF programs attach to).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves a process into it.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }

    /// The processes in it.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Only processes the test put here can be inside; end them (by pid) so the group can be removed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            for pid in &pids {
                if let Ok(pid) = i32::try_from(*pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

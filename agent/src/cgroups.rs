//! Where this node's pods live in the cgroup hierarchies, and what their counters say.
//!
//! runc is given a *relative* `cgroupsPath` (`<root>/pod<uid>/<container id>`): in every hierarchy it lands under the
//! agent's own cgroup. Measured with runc 1.1.5 on this hybrid layout (cgroup v1 controllers plus cgroup v2 at
//! `/sys/fs/cgroup/unified`): the container's processes are also placed in the unified hierarchy at the same relative
//! path, so `<unified>/<agent's v2 cgroup>/<root>` holds every pod of this node — where the load balancer attaches.
//! On a pure cgroup-v2 host the same path is the only hierarchy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The hierarchies this process sees: controller (or `""` for cgroup v2) → the directory of this process's cgroup.
#[derive(Clone, Debug, Default)]
pub struct Cgroups {
    /// controller name (`memory`, `cpu`, `cpuacct`, `pids`, `name=systemd`, … and `""` for v2) → directory.
    own: BTreeMap<String, PathBuf>,
    /// Whether the host is pure cgroup v2.
    pub unified_only: bool,
}

/// A mount of a cgroup hierarchy: its mount point, its root inside the hierarchy and its controllers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The hierarchy path at that mount point (usually `/`).
    pub root: String,
    /// Controllers (empty for cgroup v2).
    pub controllers: Vec<String>,
}

/// Parses the cgroup mounts out of `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mp), Some(fstype)) = (l.get(3), l.get(4), r.first()) else { continue };
        match *fstype {
            "cgroup2" => out.push(CgroupMount { mount_point: mp.into(), root: root.to_string(), controllers: vec![] }),
            "cgroup" => {
                let opts = r.get(2).copied().unwrap_or_default();
                let controllers = opts
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "relatime" | "noexec" | "nosuid" | "nodev" | "clone_children")
                    })
                    .filter(|o| !o.starts_with("release_agent"))
                    .map(str::to_string)
                    .collect();
                out.push(CgroupMount { mount_point: mp.into(), root: root.to_string(), controllers });
            }
            _ => {}
        }
    }
    out
}

/// Parses `/proc/<pid>/cgroup` into controller → path (`""` for the v2 line `0::/path`).
pub fn parse_proc_cgroup(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if ctrls.is_empty() {
            out.insert(String::new(), path.to_string());
        } else {
            for c in ctrls.split(',') {
                out.insert(c.to_string(), path.to_string());
            }
        }
    }
    out
}

/// Joins `mount` (mounted at hierarchy path `root`) with a hierarchy path.
fn dir_of(mount: &CgroupMount, path: &str) -> PathBuf {
    let rel = path.strip_prefix(mount.root.trim_end_matches('/')).unwrap_or(path);
    mount.mount_point.join(rel.trim_start_matches('/'))
}

impl Cgroups {
    /// Reads this process's cgroups.
    pub fn detect() -> std::io::Result<Self> {
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?);
        let mine = parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup")?);
        Ok(Self::from_parts(&mounts, &mine))
    }

    /// Combines the mounts and this process's membership.
    pub fn from_parts(mounts: &[CgroupMount], mine: &BTreeMap<String, String>) -> Self {
        let mut own = BTreeMap::new();
        let unified_only = mounts.iter().all(|m| m.controllers.is_empty()) && !mounts.is_empty();
        for m in mounts {
            if m.controllers.is_empty() {
                if let Some(p) = mine.get("") {
                    own.insert(String::new(), dir_of(m, p));
                }
            } else {
                for c in &m.controllers {
                    if let Some(p) = mine.get(c) {
                        own.insert(c.clone(), dir_of(m, p));
                    }
                }
            }
        }
        Cgroups { own, unified_only }
    }

    /// The directory of `rel` (relative to this process's cgroup) in the hierarchy of `controller` (`""` = v2).
    pub fn dir(&self, controller: &str, rel: &str) -> Option<PathBuf> {
        self.own.get(controller).map(|d| d.join(rel))
    }

    /// Sets the most processes `rel` (and everything under it) may hold, creating it: `pids.max` in the v1 `pids`
    /// hierarchy, or in the unified one after enabling the `pids` controller on the way down (best effort: a
    /// cgroup that holds processes itself cannot enable it, and the write of `pids.max` then fails).
    pub fn limit_pids(&self, rel: &str, max: u64) -> std::io::Result<()> {
        let dir = if let Some(d) = self.dir("pids", rel) {
            std::fs::create_dir_all(&d)?;
            d
        } else if let Some(base) = self.own.get("") {
            let mut cur = base.clone();
            for part in rel.split('/').filter(|p| !p.is_empty()) {
                let _ = std::fs::write(cur.join("cgroup.subtree_control"), "+pids");
                cur = cur.join(part);
                std::fs::create_dir_all(&cur)?;
            }
            cur
        } else {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no pids cgroup controller"));
        };
        std::fs::write(dir.join("pids.max"), max.to_string())
    }

    /// `rel` in every hierarchy (deduplicated: co-mounted controllers share a directory).
    pub fn all_dirs(&self, rel: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.own.values().map(|d| d.join(rel)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The cgroup-v2 directory holding every pod under `root` (what the load balancer attaches to).
    pub fn unified_pods_dir(&self, root: &str) -> Option<PathBuf> {
        self.dir("", root)
    }

    /// The memory limit of this process's memory cgroup (v1) or v2 cgroup, if any.
    pub fn own_memory_limit(&self) -> Option<u64> {
        let candidates = [self.dir("memory", "memory.limit_in_bytes"), self.dir("", "memory.max")];
        candidates.into_iter().flatten().find_map(|p| read_u64(&p)).filter(|v| *v < (1u64 << 60))
    }

    /// The CPU limit (cores, rounded up) of this process's cgroup, if any.
    pub fn own_cpu_limit(&self) -> Option<u64> {
        if let (Some(q), Some(p)) = (self.dir("cpu", "cpu.cfs_quota_us"), self.dir("cpu", "cpu.cfs_period_us")) {
            let (q, p) = (std::fs::read_to_string(q).ok()?, std::fs::read_to_string(p).ok()?);
            let (q, p): (i64, i64) = (q.trim().parse().ok()?, p.trim().parse().ok()?);
            return (q > 0 && p > 0).then(|| (q as u64).div_ceil(p as u64));
        }
        let max = std::fs::read_to_string(self.dir("", "cpu.max")?).ok()?;
        let mut it = max.split_whitespace();
        let (q, p) = (it.next()?, it.next()?);
        let (q, p): (u64, u64) = (q.parse().ok()?, p.parse().ok()?);
        (p > 0).then(|| q.div_ceil(p))
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// Counters of one container's (or pod's) cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used, in nanoseconds.
    pub cpu_ns: u64,
    /// Working set (usage minus inactive file cache), in bytes.
    pub memory_working_set: u64,
}

impl Cgroups {
    /// Reads the counters of `rel`.
    pub fn usage(&self, rel: &str) -> Option<Usage> {
        if let Some(d) = self.dir("cpuacct", rel).filter(|d| d.exists()) {
            let cpu_ns = read_u64(&d.join("cpuacct.usage")).unwrap_or(0);
            let mem = self.dir("memory", rel)?;
            let usage = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
            let stat = std::fs::read_to_string(mem.join("memory.stat")).unwrap_or_default();
            let inactive = stat_field(&stat, "total_inactive_file").unwrap_or(0);
            return Some(Usage { cpu_ns, memory_working_set: usage.saturating_sub(inactive) });
        }
        let d = self.dir("", rel).filter(|d| d.exists())?;
        let cpu = std::fs::read_to_string(d.join("cpu.stat")).ok()?;
        let cpu_ns = stat_field(&cpu, "usage_usec").unwrap_or(0) * 1000;
        let current = read_u64(&d.join("memory.current")).unwrap_or(0);
        let stat = std::fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
        let inactive = stat_field(&stat, "inactive_file").unwrap_or(0);
        Some(Usage { cpu_ns, memory_working_set: current.saturating_sub(inactive) })
    }

    /// How many times the kernel's OOM killer killed a process in `rel`.
    pub fn oom_kills(&self, rel: &str) -> u64 {
        if let Some(d) = self.dir("memory", rel) {
            let text = std::fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
            if let Some(n) = stat_field(&text, "oom_kill") {
                return n;
            }
        }
        self.dir("", rel)
            .and_then(|d| std::fs::read_to_string(d.join("memory.events")).ok())
            .and_then(|t| stat_field(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// Removes `rel` (and everything below it, deepest first) from every hierarchy. Directories that still hold
    /// processes stay and are reported.
    pub fn remove(&self, rel: &str) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for d in self.all_dirs(rel) {
            remove_tree(&d, &mut left);
        }
        left
    }

    /// Every process in `rel` and below, in every hierarchy.
    pub fn pids(&self, rel: &str) -> Vec<i32> {
        let mut pids = Vec::new();
        for d in self.all_dirs(rel) {
            collect_pids(&d, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

fn remove_tree(dir: &Path, left: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), left);
            }
        }
    }
    if dir.exists() && std::fs::remove_dir(dir).is_err() {
        left.push(dir.to_path_buf());
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
35 25 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
39 35 0:34 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 35 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn hybrid_hierarchies_resolve_relative_to_the_agents_own_cgroups() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 3);
        let mine = parse_proc_cgroup("4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/test-1\n");
        let cg = Cgroups::from_parts(&mounts, &mine);
        assert!(!cg.unified_only);
        assert_eq!(
            cg.dir("memory", "skiff/p").as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory/process_api/x/skiff/p"))
        );
        assert_eq!(cg.dir("cpuacct", "skiff").as_deref(), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/skiff")));
        assert_eq!(cg.unified_pods_dir("skiff").as_deref(), Some(Path::new("/sys/fs/cgroup/unified/test-1/skiff")));
        // cpu and cpuacct share one directory
        assert_eq!(cg.all_dirs("skiff").len(), 3);
    }

    #[test]
    fn pure_v2_hosts_have_one_hierarchy() {
        let mounts = parse_mountinfo("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        let cg = Cgroups::from_parts(&mounts, &parse_proc_cgroup("0::/system.slice/skiff.service\n"));
        assert!(cg.unified_only);
        assert_eq!(
            cg.unified_pods_dir("skiff").as_deref(),
            Some(Path::new("/sys/fs/cgroup/system.slice/skiff.service/skiff"))
        );
    }

    #[test]
    fn stat_fields_are_read_by_exact_key() {
        let t = "cache 1\ntotal_inactive_file 4096\ninactive_file 7\n";
        assert_eq!(stat_field(t, "total_inactive_file"), Some(4096));
        assert_eq!(stat_field(t, "inactive_file"), Some(7));
        assert_eq!(stat_field("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"), Some(2));
    }
}

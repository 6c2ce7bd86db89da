//! Mount points the agent made (root file systems, tmpfs volumes, network namespaces), found through
//! `/proc/self/mountinfo` and removed deepest first.

use std::path::{Path, PathBuf};

/// Decodes the octal escapes (`\040` for a space) of a mountinfo path.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in mountinfo text.
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape(p))).collect()
}

/// The mount points at or under `dir`, deepest first.
pub fn under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = mount_points(&text).into_iter().filter(|p| p.starts_with(dir)).collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Whether `path` is a mount point: one `statx` (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8). Reading mountinfo instead costs
/// time in proportion to the machine's mounts (a few per pod), and with 100 pods starting it was a third of the
/// agent's CPU. Kernels without the attribute fall back to mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    match statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS) {
        Ok(s) if s.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            s.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Ok(_) => {
            let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            mount_points(&text).iter().any(|p| p == path)
        }
        Err(_) => false,
    }
}

/// Unmounts everything at or under `dir` (lazily); returns the paths that could not be unmounted.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let mut failed = Vec::new();
    // A path may be mounted over more than once; a few passes take every layer off.
    for _ in 0..4 {
        let points = under(dir);
        if points.is_empty() {
            break;
        }
        for p in points {
            if nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).is_err() {
                failed.push(p);
            }
        }
    }
    failed.sort();
    failed.dedup();
    failed.retain(|p| is_mount_point(p));
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let text = "40 30 0:40 / /var/lib/skiff/agent/containers/a/rootfs rw - overlay overlay rw\n41 30 0:41 / /tmp/with\\040space rw - tmpfs tmpfs rw\n";
        let points = mount_points(text);
        assert_eq!(points[1], PathBuf::from("/tmp/with space"));
        assert_eq!(points[0], PathBuf::from("/var/lib/skiff/agent/containers/a/rootfs"));
    }

    #[test]
    fn mount_points_are_told_from_directories() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_mount_point(dir.path()));
        assert!(!is_mount_point(&dir.path().join("missing")));
    }
}

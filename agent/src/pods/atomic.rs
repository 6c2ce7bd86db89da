//! The kubelet's atomic writer for configMap, secret, downwardAPI and projected volumes: the files live in a
//! timestamped directory `..<time>`, a symlink `..data` points at it, and each visible name is a symlink
//! `name -> ..data/name`. An update writes a new directory and renames a new `..data` link over the old one, so a
//! reader sees either the old set of files or the new one, never a mix.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

/// One file of a volume: its relative path, content and mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Content.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// Checks that a volume item path is relative and stays inside the volume.
pub fn valid_path(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && !p.starts_with("..") && path.components().all(|c| matches!(c, Component::Normal(_)))
}

fn current(dir: &Path) -> Option<PathBuf> {
    std::fs::read_link(dir.join("..data")).ok().map(|t| dir.join(t))
}

/// What is in the volume now (`None` when it was never written).
pub fn read(dir: &Path) -> Option<BTreeMap<String, Payload>> {
    let data = current(dir)?;
    let mut out = BTreeMap::new();
    collect(&data, &data, &mut out);
    Some(out)
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, Payload>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else if let (Ok(data), Ok(meta)) = (std::fs::read(&p), e.metadata()) {
            let rel = p.strip_prefix(root).map(|r| r.display().to_string()).unwrap_or_default();
            out.insert(rel, Payload { data, mode: meta.permissions().mode() & 0o7777 });
        }
    }
}

/// Writes `files` into `dir` atomically; returns whether anything changed.
pub fn write(dir: &Path, files: &BTreeMap<String, Payload>) -> std::io::Result<bool> {
    for p in files.keys() {
        if !valid_path(p) {
            return Err(std::io::Error::other(format!("invalid volume file path {p:?}")));
        }
    }
    std::fs::create_dir_all(dir)?;
    let old = current(dir);
    if read(dir).as_ref() == Some(files) {
        return Ok(false);
    }
    let stamp = format!("..{}.{:08x}", jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S"), rand::random::<u32>());
    let new_dir = dir.join(&stamp);
    std::fs::create_dir(&new_dir)?;
    std::fs::set_permissions(&new_dir, std::fs::Permissions::from_mode(0o755))?;
    for (rel, p) in files {
        let target = new_dir.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &p.data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(p.mode))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, dir.join("..data"))?;
    // Top-level names: a link per first path component.
    let tops: std::collections::BTreeSet<String> =
        files.keys().filter_map(|k| k.split('/').next().map(str::to_string)).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    // Names that disappeared.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !tops.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old
        && old != new_dir
    {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Payload> {
        pairs.iter().map(|(k, v)| (k.to_string(), Payload { data: v.as_bytes().to_vec(), mode: 0o644 })).collect()
    }

    #[test]
    fn an_update_swaps_the_data_link_and_keeps_visible_names_as_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vol = dir.path().join("vol");
        assert!(write(&vol, &files(&[("a", "1"), ("sub/b", "2")])).expect("first"));
        assert_eq!(std::fs::read_to_string(vol.join("a")).expect("a"), "1");
        assert_eq!(std::fs::read_to_string(vol.join("sub/b")).expect("b"), "2");
        let first = std::fs::read_link(vol.join("..data")).expect("link");
        assert!(!write(&vol, &files(&[("a", "1"), ("sub/b", "2")])).expect("same"), "unchanged content writes nothing");
        assert!(write(&vol, &files(&[("a", "9")])).expect("update"));
        assert_ne!(std::fs::read_link(vol.join("..data")).expect("link"), first);
        assert_eq!(std::fs::read_to_string(vol.join("a")).expect("a"), "9");
        assert!(!vol.join("sub").exists(), "removed names go away");
        assert!(!vol.join(&first).exists(), "the old directory is removed");
        assert!(std::fs::symlink_metadata(vol.join("a")).expect("meta").file_type().is_symlink());
    }

    #[test]
    fn paths_that_leave_the_volume_are_refused() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "..data", ""] {
            assert!(!valid_path(bad), "{bad}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(write(dir.path(), &files(&[("../escape", "x")])).is_err());
    }
}

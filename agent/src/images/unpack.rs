//! Unpacking one layer blob into a directory of its own, as overlayfs wants it: OCI whiteouts become overlayfs ones
//! (a `0:0` character device for a deleted file, the `trusted.overlay.opaque` attribute for an opaque directory).
//!
//! A layer is hostile input unpacked as root, so every entry is placed by this module, never by a path the kernel
//! resolves through the layer's own content:
//! - each entry's parent is walked one component at a time from the layer's root, and a component the layer made a
//!   symlink (or a file) is refused — `x -> /etc` then `x/shadow`, `x/.wh.shadow`, `x/dev` or a hard link under `x`
//!   never reach the host;
//! - the entry's own name is unlinked first when something else is there (a later entry replaces an earlier one, as
//!   in Docker's and containerd's unpackers), so permissions, owners and times are never applied through a symlink;
//! - a hard link's source is looked up the same way and must be a non-directory inside the layer;
//! - device nodes and FIFOs are made with `mknod` in the checked parent;
//! - extended attributes (PAX `SCHILY.xattr.*`) are set without following symlinks, and only in the `user.`,
//!   `security.` and `system.posix_acl_` namespaces: a layer may not write `trusted.*`, where overlayfs keeps its own
//!   whiteout and redirect state.

use std::io::{BufRead as _, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};

use super::ImageError;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> ImageError {
    ImageError::Invalid(format!("layer entry {}: {why}", path.display()))
}

/// The xattr namespaces a layer may set.
const XATTR_ALLOWED: [&str; 3] = ["user.", "security.", "system.posix_acl_"];

/// Unpacks the tar stream `reader` (gzip or plain) into `dst`, converting whiteouts.
pub fn unpack(reader: impl Read, dst: &Path) -> Result<(), ImageError> {
    let mut reader = BufReader::new(reader);
    let head = reader.fill_buf().map_err(io("reading a layer"))?;
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ImageError::Invalid("zstd-compressed layers are not supported".into()));
    }
    let stream: Box<dyn Read> =
        if head.starts_with(&[0x1f, 0x8b]) { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) };
    let mut ar = tar::Archive::new(stream);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    // set here, filtered and without following symlinks
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    for entry in ar.entries().map_err(bad_archive)? {
        unpack_entry(&mut entry.map_err(bad_archive)?, dst)?;
    }
    Ok(())
}

fn bad_archive(e: std::io::Error) -> ImageError {
    ImageError::Invalid(format!(
        "layer archive: {e}{}",
        std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default()
    ))
}

/// The normal components of an entry's path (a leading `/` and `.` dropped); `..` is refused.
fn components(path: &Path) -> Result<Vec<&std::ffi::OsStr>, ImageError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(invalid(path, "leaves the layer")),
        }
    }
    Ok(out)
}

fn unpack_entry<R: Read>(entry: &mut tar::Entry<'_, R>, dst: &Path) -> Result<(), ImageError> {
    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() {
        return Ok(());
    }
    let path = entry.path().map_err(bad_archive)?.into_owned();
    let parts = components(&path)?;
    let Some((name, parent_parts)) = parts.split_last() else {
        // the layer's root itself
        return Ok(());
    };
    let parent = directory_in_layer(dst, parent_parts, &path, true)?;
    let name_str = name.to_string_lossy();
    if name_str == ".wh..wh..opq" {
        return xattr::set(&parent, "trusted.overlay.opaque", b"y").map_err(io("marking an opaque directory"));
    }
    let target = parent.join(name);
    if let Some(hidden) = name_str.strip_prefix(".wh.") {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(invalid(&path, "a whiteout that names no file"));
        }
        let hidden_path = parent.join(hidden);
        clear(&hidden_path, false, &path)?;
        return mknod(&hidden_path, SFlag::S_IFCHR, Mode::empty(), 0);
    }
    clear(&target, kind.is_dir(), &path)?;
    let xattrs = xattrs(entry, &path)?;
    match kind {
        tar::EntryType::Link => hard_link(entry, dst, &target, &path)?,
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => device(entry, kind, &target, &path)?,
        // directories, regular files and symlinks: the target's parent is checked and its name free (or a directory
        // for a directory), so the tar crate places the entry exactly there
        _ => {
            entry.unpack(&target).map_err(|e| invalid(&path, e))?;
        }
    }
    if !kind.is_symlink() && !kind.is_hard_link() {
        for (name, value) in xattrs {
            match xattr::set(&target, &name, &value) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {
                    tracing::debug!(entry = %path.display(), xattr = %name, "the file system takes no xattrs");
                }
                Err(e) => return Err(io(format!("setting {name} on {}", target.display()))(e)),
            }
        }
    }
    Ok(())
}

/// Makes room for an entry at `target`: anything there goes, except a directory that a directory entry merges into.
fn clear(target: &Path, keep_directory: bool, entry: &Path) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("inspecting {}", target.display()))(e)),
        Ok(m) if m.is_dir() && keep_directory => Ok(()),
        // `remove_dir_all` does not follow symlinks inside the tree it removes
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(target).map_err(|e| invalid(entry, e)),
        Ok(_) => std::fs::remove_file(target).map_err(|e| invalid(entry, e)),
    }
}

/// The extended attributes an entry carries that a layer may set.
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let mut out = Vec::new();
    let Some(pax) = entry.pax_extensions().map_err(bad_archive)? else { return Ok(out) };
    for ext in pax {
        let ext = ext.map_err(bad_archive)?;
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else { continue };
        if XATTR_ALLOWED.iter().any(|ns| name.starts_with(ns)) {
            out.push((name.to_string(), ext.value_bytes().to_vec()));
        } else {
            tracing::warn!(entry = %path.display(), xattr = name, "ignoring an extended attribute a layer may not set");
        }
    }
    Ok(out)
}

fn hard_link<R: Read>(entry: &tar::Entry<'_, R>, dst: &Path, target: &Path, path: &Path) -> Result<(), ImageError> {
    let link = entry.link_name().map_err(bad_archive)?.ok_or_else(|| invalid(path, "a hard link names no file"))?;
    let parts = components(&link)?;
    let Some((name, parent_parts)) = parts.split_last() else {
        return Err(invalid(path, "a hard link to the layer's root"));
    };
    let source = directory_in_layer(dst, parent_parts, path, false)?.join(name);
    match std::fs::symlink_metadata(&source) {
        Ok(m) if !m.is_dir() => {}
        Ok(_) => return Err(invalid(path, format!("hard link to the directory {}", link.display()))),
        Err(_) => return Err(invalid(path, format!("hard link to {}, which the layer does not hold", link.display()))),
    }
    // link(2) does not follow a symlink at `source`: the link is to the symlink itself
    std::fs::hard_link(&source, target).map_err(|e| invalid(path, e))
}

fn device<R: Read>(
    entry: &tar::Entry<'_, R>,
    kind: tar::EntryType,
    target: &Path,
    path: &Path,
) -> Result<(), ImageError> {
    let h = entry.header();
    let number = |n: std::io::Result<Option<u32>>| n.map(Option::unwrap_or_default).map_err(bad_archive);
    let (flag, dev) = match kind {
        tar::EntryType::Char | tar::EntryType::Block => {
            let (major, minor) = (number(h.device_major())?, number(h.device_minor())?);
            let flag = if kind == tar::EntryType::Char { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
            (flag, nix::sys::stat::makedev(major.into(), minor.into()))
        }
        // a FIFO has no device number (some writers leave the fields empty)
        _ => (SFlag::S_IFIFO, 0),
    };
    let mode = Mode::from_bits_truncate(h.mode().map_err(bad_archive)? & 0o7777);
    mknod(target, flag, mode, dev)?;
    let (uid, gid) = (h.uid().map_err(bad_archive)?, h.gid().map_err(bad_archive)?);
    let id = |n: u64| u32::try_from(n).map_err(|_| invalid(path, "owner out of range"));
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        target,
        Some(nix::unistd::Uid::from_raw(id(uid)?)),
        Some(nix::unistd::Gid::from_raw(id(gid)?)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io(format!("owning {}", target.display()))(e.into()))?;
    // mknod's mode went through the umask
    nix::sys::stat::fchmodat(nix::fcntl::AT_FDCWD, target, mode, nix::sys::stat::FchmodatFlags::NoFollowSymlink)
        .map_err(|e| io(format!("setting the mode of {}", target.display()))(e.into()))
}

fn mknod(target: &Path, kind: SFlag, mode: Mode, dev: nix::libc::dev_t) -> Result<(), ImageError> {
    nix::sys::stat::mknod(target, kind, mode, dev)
        .map_err(|e| ImageError::Io { context: format!("making {}", target.display()), source: e.into() })
}

/// The directory `parts` inside the layer being unpacked at `dst`, never through a symlink; missing directories are
/// created when `create` is set.
fn directory_in_layer(
    dst: &Path,
    parts: &[&std::ffi::OsStr],
    entry: &Path,
    create: bool,
) -> Result<PathBuf, ImageError> {
    let mut dir = dst.to_path_buf();
    for part in parts {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(entry, format!("goes through the symlink {}", dir.display())));
            }
            Ok(_) => return Err(invalid(entry, format!("{} is not a directory", dir.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
            }
            Err(e) => return Err(io(format!("inspecting {}", dir.display()))(e)),
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    use super::*;

    /// One entry of a test layer.
    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str, u32),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Char(&'a str, u32, u32),
        Fifo(&'a str),
        /// A PAX header giving the next entry an extended attribute.
        Xattr(&'a str, &'a [u8]),
    }

    fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        // written as is: the tar crate's setters refuse `..`, which a hostile layer need not
        let name = &mut h.as_gnu_mut().expect("gnu").name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h
    }

    fn layer(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |mut h: tar::Header, data: &[u8]| {
            h.set_cksum();
            b.append(&h, data).expect("append");
        };
        for e in entries {
            match *e {
                E::File(p, data) => add(header(tar::EntryType::Regular, p, 0o644, data.len() as u64), data),
                E::Dir(p, mode) => add(header(tar::EntryType::Directory, p, mode, 0), b""),
                E::Symlink(p, to) | E::HardLink(p, to) => {
                    let kind = if matches!(e, E::Symlink(..)) { tar::EntryType::Symlink } else { tar::EntryType::Link };
                    let mut h = header(kind, p, 0o777, 0);
                    h.set_link_name_literal(to).expect("link name");
                    add(h, b"");
                }
                E::Char(p, major, minor) => {
                    let mut h = header(tar::EntryType::Char, p, 0o620, 0);
                    h.set_device_major(major).expect("major");
                    h.set_device_minor(minor).expect("minor");
                    add(h, b"");
                }
                E::Fifo(p) => add(header(tar::EntryType::Fifo, p, 0o600, 0), b""),
                E::Xattr(name, value) => {
                    let key = format!("SCHILY.xattr.{name}");
                    // a PAX record is "<length> <key>=<value>\n", the length counting its own digits
                    let rest = key.len() + value.len() + 3;
                    let mut len = rest + 1;
                    while rest + len.to_string().len() != len {
                        len = rest + len.to_string().len();
                    }
                    let mut record = format!("{len} {key}=").into_bytes();
                    record.extend_from_slice(value);
                    record.push(b'\n');
                    add(header(tar::EntryType::XHeader, "PaxHeader", 0o644, record.len() as u64), &record);
                }
            }
        }
        b.into_inner().expect("tar")
    }

    /// Everything observable about the files under `root`: type, mode, owner, links, size, content, xattrs.
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(p) = todo.pop() {
            let m = std::fs::symlink_metadata(&p).expect("stat");
            let content = if m.is_file() { std::fs::read(&p).expect("read") } else { Vec::new() };
            let xattrs: Vec<_> = xattr::list(&p).map(|l| l.collect()).unwrap_or_default();
            out.insert(
                p.clone(),
                format!("{:o} {}:{} n{} {:?} {:?}", m.mode(), m.uid(), m.gid(), m.nlink(), content, xattrs),
            );
            if m.is_dir() {
                todo.extend(std::fs::read_dir(&p).expect("readdir").map(|e| e.expect("entry").path()));
            }
        }
        out
    }

    #[test]
    fn no_entry_of_a_layer_reaches_outside_it() {
        assert!(nix::unistd::geteuid().is_root(), "unpacking a layer needs root (mknod, chown)");
        let victim = tempfile::tempdir().expect("tempdir");
        let v = victim.path().to_str().expect("utf-8 path").to_string();
        std::fs::write(victim.path().join("shadow"), b"root:x").expect("victim file");
        std::fs::set_permissions(victim.path().join("shadow"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        std::fs::create_dir(victim.path().join("sub")).expect("victim dir");
        let shadow = format!("{v}/shadow");
        let climb = format!("../../../../../../../..{v}/shadow");
        let cases: Vec<(&str, Vec<E<'_>>)> = vec![
            ("a file through a symlink", vec![E::Symlink("x", &v), E::File("x/shadow", b"owned")]),
            ("a new file through a symlink", vec![E::Symlink("x", &v), E::File("x/new", b"owned")]),
            ("a directory through a symlink", vec![E::Symlink("x", &v), E::Dir("x/made", 0o755)]),
            ("a directory entry over a symlink", vec![E::Symlink("x", &v), E::Dir("x", 0o777)]),
            ("a file over a symlink to a file", vec![E::Symlink("y", &shadow), E::File("y", b"owned")]),
            ("a symlink through a symlink", vec![E::Symlink("x", &v), E::Symlink("x/l", "/")]),
            ("a hard link through a symlink", vec![E::Symlink("x", &v), E::HardLink("h", "x/shadow")]),
            (
                "a hard link placed through a symlink",
                vec![E::File("f", b"a"), E::Symlink("x", &v), E::HardLink("x/h", "f")],
            ),
            ("a hard link to an absolute path", vec![E::HardLink("h", &shadow)]),
            ("a hard link climbing out", vec![E::HardLink("h", &climb)]),
            (
                "a hard link to a symlink that leaves",
                vec![E::Symlink("s", &shadow), E::HardLink("h", "s"), E::File("h", b"owned")],
            ),
            ("a device through a symlink", vec![E::Symlink("x", &v), E::Char("x/mem", 1, 1)]),
            ("a FIFO through a symlink", vec![E::Symlink("x", &v), E::Fifo("x/fifo")]),
            ("a whiteout through a symlink", vec![E::Symlink("x", &v), E::File("x/.wh.shadow", b"")]),
            ("an opaque whiteout through a symlink", vec![E::Symlink("x", &v), E::File("x/.wh..wh..opq", b"")]),
            ("a nested whiteout through a symlink", vec![E::Symlink("x", &v), E::File("x/sub/.wh.shadow", b"")]),
            ("a whiteout of a parent", vec![E::File("a/.wh...", b"")]),
            ("an xattr through a symlink", vec![E::Symlink("x", &v), E::Xattr("user.evil", b"1"), E::File("x/f", b"")]),
            (
                "an xattr on a directory over a symlink",
                vec![E::Symlink("x", &v), E::Xattr("user.evil", b"1"), E::Dir("x", 0o755)],
            ),
            (
                "a trusted xattr",
                vec![E::Symlink("x", &v), E::Xattr("trusted.overlay.redirect", b"/"), E::Dir("x", 0o755)],
            ),
            ("a path climbing out", vec![E::File(&climb, b"owned")]),
            ("an absolute path", vec![E::File(&shadow, b"owned")]),
        ];
        let before = snapshot(victim.path());
        let mut refused = Vec::new();
        for (what, entries) in cases {
            let dst = tempfile::tempdir().expect("tempdir");
            if let Err(e) = unpack(&layer(&entries)[..], dst.path()) {
                refused.push(format!("{what}: {e}"));
            }
            assert_eq!(snapshot(victim.path()), before, "{what} changed files outside the layer");
        }
        // the escapes through the planted symlink are refused outright rather than quietly skipped
        assert!(
            refused.iter().any(|r| r.starts_with("a file through a symlink") && r.contains("symlink")),
            "{refused:#?}"
        );
        assert!(refused.iter().any(|r| r.starts_with("a hard link through a symlink")), "{refused:#?}");
        assert!(refused.iter().any(|r| r.starts_with("a path climbing out") && r.contains("leaves")), "{refused:#?}");
    }

    #[test]
    fn a_later_entry_replaces_an_earlier_one_in_place() {
        let dst = tempfile::tempdir().expect("tempdir");
        let entries = [
            E::Symlink("a", "/etc"),
            E::Dir("a", 0o750),
            E::File("a/in", b"1"),
            E::Dir("d", 0o755),
            E::File("d/old", b"x"),
            E::File("d", b"now a file"),
            E::File("f", b"first"),
            E::File("f", b"second"),
            E::HardLink("g", "f"),
        ];
        unpack(&layer(&entries)[..], dst.path()).expect("unpack");
        let a = std::fs::symlink_metadata(dst.path().join("a")).expect("a");
        assert!(a.is_dir());
        assert_eq!(a.mode() & 0o7777, 0o750);
        assert_eq!(std::fs::read(dst.path().join("a/in")).expect("a/in"), b"1");
        assert_eq!(std::fs::read(dst.path().join("d")).expect("d"), b"now a file");
        assert_eq!(std::fs::read(dst.path().join("g")).expect("g"), b"second");
        let (f, g) = (dst.path().join("f"), dst.path().join("g"));
        assert_eq!(std::fs::metadata(f).expect("f").ino(), std::fs::metadata(g).expect("g").ino());
    }

    #[test]
    fn devices_fifos_and_permitted_xattrs_are_unpacked() {
        assert!(nix::unistd::geteuid().is_root(), "mknod needs root");
        let dst = tempfile::tempdir().expect("tempdir");
        let entries = [
            E::Char("dev/null", 1, 3),
            E::Fifo("run/pipe"),
            E::Xattr("user.note", b"kept"),
            E::File("bin/ping", b"elf"),
            E::Xattr("trusted.overlay.opaque", b"y"),
            E::Dir("opaque-not", 0o755),
        ];
        unpack(&layer(&entries)[..], dst.path()).expect("unpack");
        let null = std::fs::symlink_metadata(dst.path().join("dev/null")).expect("null");
        assert!(null.file_type().is_char_device());
        assert_eq!((nix::sys::stat::major(null.rdev()), nix::sys::stat::minor(null.rdev())), (1, 3));
        assert_eq!(null.mode() & 0o7777, 0o620);
        assert!(std::fs::symlink_metadata(dst.path().join("run/pipe")).expect("fifo").file_type().is_fifo());
        let ping = dst.path().join("bin/ping");
        assert_eq!(xattr::get(&ping, "user.note").expect("xattr").as_deref(), Some(&b"kept"[..]));
        let dir = dst.path().join("opaque-not");
        assert_eq!(xattr::get(&dir, "trusted.overlay.opaque").expect("xattr"), None);
    }

    #[test]
    fn whiteouts_become_overlay_character_devices() {
        assert!(nix::unistd::geteuid().is_root(), "mknod needs root");
        let dir = tempfile::tempdir().expect("tempdir");
        let entries = [E::File("etc/passwd", b"x"), E::File("etc/.wh.passwd", b""), E::File("var/.wh..wh..opq", b"")];
        unpack(&layer(&entries)[..], dir.path()).expect("unpack");
        let meta = std::fs::symlink_metadata(dir.path().join("etc/passwd")).expect("whiteout");
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), 0);
        let opaque = xattr::get(dir.path().join("var"), "trusted.overlay.opaque").expect("xattr");
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn plain_and_gzip_layers_unpack_the_same_files() {
        let tar = layer(&[E::File("etc/motd", b"hi"), E::File("bin/x", b"y")]);
        let plain = tempfile::tempdir().expect("tempdir");
        unpack(&tar[..], plain.path()).expect("plain");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zipped = tempfile::tempdir().expect("tempdir");
        unpack(&gz[..], zipped.path()).expect("gzip");
        for d in [plain.path(), zipped.path()] {
            assert_eq!(std::fs::read(d.join("etc/motd")).expect("motd"), b"hi");
        }
    }
}

//! Layers on disk: each layer blob is unpacked once into `unpacked/<digest>/` (OCI whiteouts turned into overlayfs
//! ones: a `0:0` character device for a deleted file, the `trusted.overlay.opaque` attribute for an opaque
//! directory), and a container's root file system is an overlay of those directories with a private upper layer.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::ImageError;
use super::store::{Image, Store};

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// Unpacks the tar stream `reader` (gzip or plain) into `dst`, converting whiteouts.
pub fn unpack(reader: impl Read, dst: &Path) -> Result<(), ImageError> {
    let mut reader = BufReader::new(reader);
    let gz = {
        use std::io::BufRead as _;
        let head = reader.fill_buf().map_err(io("reading a layer"))?;
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(ImageError::Invalid("zstd-compressed layers are not supported".into()));
        }
        head.starts_with(&[0x1f, 0x8b])
    };
    let stream: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) };
    let mut ar = tar::Archive::new(stream);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let bad = |e: std::io::Error| {
        ImageError::Invalid(format!(
            "layer archive: {e}{}",
            std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default()
        ))
    };
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            entry.unpack_in(dst).map_err(bad)?;
            continue;
        };
        if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(ImageError::Invalid(format!("layer entry {} leaves the layer", path.display())));
        }
        let rel_parent = path.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            let parent = directory_in_layer(dst, rel_parent)?;
            xattr::set(&parent, "trusted.overlay.opaque", b"y").map_err(io("marking an opaque directory"))?;
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = directory_in_layer(dst, rel_parent)?;
            let target = parent.join(hidden);
            let _ = std::fs::remove_file(&target);
            nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
                .map_err(|e| ImageError::Io { context: format!("whiteout {}", target.display()), source: e.into() })?;
        } else {
            entry.unpack_in(dst).map_err(bad)?;
        }
    }
    Ok(())
}

/// The directory `rel` inside the layer being unpacked at `dst`, created as needed, never through a symlink.
///
/// Whiteouts are written by this module, not by the tar crate (whose `unpack_in` checks that an entry stays inside
/// the layer), so their parent is walked one component at a time: an image that plants `x -> /etc` and then
/// `x/.wh.shadow` must not delete the host's `/etc/shadow` (issue 17).
fn directory_in_layer(dst: &Path, rel: &Path) -> Result<PathBuf, ImageError> {
    let mut dir = dst.to_path_buf();
    for c in rel.components() {
        let std::path::Component::Normal(part) = c else { continue };
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ImageError::Invalid(format!(
                    "layer whiteout under {} goes through a symlink",
                    rel.display()
                )));
            }
            Ok(_) => {
                return Err(ImageError::Invalid(format!("layer whiteout under {}: not a directory", rel.display())));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
            }
            Err(e) => return Err(io(format!("inspecting {}", dir.display()))(e)),
        }
    }
    Ok(dir)
}

/// Makes sure every layer of `image` is unpacked; returns their directories, base first.
pub fn ensure_unpacked(store: &Store, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
    let mut dirs = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let dir = store.unpacked_dir(&layer.digest)?;
        if !dir.exists() {
            let tmp = dir.with_file_name(format!(".tmp-{}-{:016x}", std::process::id(), rand::random::<u64>()));
            std::fs::create_dir_all(&tmp).map_err(io("creating a layer directory"))?;
            let blob = std::fs::File::open(store.blob_path(&layer.digest)?)
                .map_err(io(format!("opening layer {}", layer.digest)))?;
            if let Err(e) = unpack(blob, &tmp) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            if std::fs::rename(&tmp, &dir).is_err() {
                // Another agent unpacked it first.
                let _ = std::fs::remove_dir_all(&tmp);
                if !dir.exists() {
                    return Err(ImageError::Invalid(format!("could not place layer {}", layer.digest)));
                }
            }
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// The overlayfs mount options for `layers` (base first) with `upper` and `work`.
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = layers.iter().rev().map(|p| p.display().to_string()).collect();
    format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display())
}

/// Mounts the root file system of a container at `target` (`upper`/`work` are created).
pub fn mount_rootfs(layers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), ImageError> {
    for d in [upper, work, target] {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    let mut layers = layers.to_vec();
    if layers.is_empty() {
        let empty = upper.with_file_name("empty");
        std::fs::create_dir_all(&empty).map_err(io("creating an empty layer"))?;
        layers.push(empty);
    }
    let opts = overlay_options(&layers, upper, work);
    nix::mount::mount(Some("overlay"), target, Some("overlay"), nix::mount::MsFlags::empty(), Some(opts.as_str()))
        .map_err(|e| ImageError::Io {
            context: format!("mounting the root file system at {}", target.display()),
            source: e.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, path, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &Path) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_link(&mut h, path, target).expect("symlink");
    }

    #[test]
    fn whiteouts_never_reach_through_a_symlink_the_image_planted() {
        // issue 17: `x -> /etc` then `x/.wh.shadow` deleted the host's /etc/shadow
        let victim = tempfile::tempdir().expect("tempdir");
        std::fs::write(victim.path().join("shadow"), b"root:x").expect("victim file");
        for whiteout in ["x/.wh.shadow", "x/.wh..wh..opq", "x/sub/.wh.shadow"] {
            let mut b = tar::Builder::new(Vec::new());
            symlink(&mut b, "x", victim.path());
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, whiteout, &b""[..]).expect("whiteout");
            let tar = b.into_inner().expect("tar");
            let dst = tempfile::tempdir().expect("tempdir");
            let err = unpack(&tar[..], dst.path()).expect_err("a whiteout through a symlink is refused");
            assert!(err.to_string().contains("symlink"), "{err}");
            assert_eq!(std::fs::read(victim.path().join("shadow")).expect("still there"), b"root:x", "{whiteout}");
            assert!(!victim.path().join("sub").exists(), "{whiteout}");
            assert!(xattr::get(victim.path(), "trusted.overlay.opaque").ok().flatten().is_none(), "{whiteout}");
        }
    }

    #[test]
    fn the_overlay_lists_the_top_layer_first() {
        let o = overlay_options(&["/l/base".into(), "/l/top".into()], Path::new("/u"), Path::new("/w"));
        assert_eq!(o, "lowerdir=/l/top:/l/base,upperdir=/u,workdir=/w");
    }

    #[test]
    fn plain_and_gzip_layers_unpack_the_same_files() {
        let tar = layer(&[("etc/motd", b"hi"), ("bin/x", b"y")]);
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

    #[test]
    fn whiteouts_become_overlay_character_devices() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: mknod needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        unpack(&layer(&[("etc/.wh.passwd", b"")])[..], dir.path()).expect("unpack");
        use std::os::unix::fs::FileTypeExt as _;
        let meta = std::fs::symlink_metadata(dir.path().join("etc/passwd")).expect("whiteout");
        assert!(meta.file_type().is_char_device());
    }
}

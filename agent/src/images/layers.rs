//! Layers on disk: each layer blob is unpacked once into `unpacked/<digest>/` (by [`super::unpack`]), and a
//! container's root file system is an overlay of those directories with a private upper layer.

use std::path::{Path, PathBuf};

use super::ImageError;
use super::store::{Image, Store};

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
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
            if let Err(e) = super::unpack::unpack(blob, &tmp) {
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

    #[test]
    fn the_overlay_lists_the_top_layer_first() {
        let o = overlay_options(&["/l/base".into(), "/l/top".into()], Path::new("/u"), Path::new("/w"));
        assert_eq!(o, "lowerdir=/l/top:/l/base,upperdir=/u,workdir=/w");
    }
}

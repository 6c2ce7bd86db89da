//! The local image store: one OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) whose index names
//! each image by its full reference (annotation `org.opencontainers.image.ref.name`), plus unpacked layers under
//! `unpacked/<digest>/` for overlay mounts. Several agents (and `skiff image`) share it: blobs are written to a
//! temporary file and renamed, and the index is rewritten under an exclusive `flock` on `.lock`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::ImageError;
use super::reference::Reference;

/// The annotation that names an image in the index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation of built-in images (made by `scripts/build-images`): they exist only locally and are never pulled.
pub const BUILTIN: &str = "dev.skiff.builtin";
/// OCI media types.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform (in indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
}

/// An image index (also Docker's manifest list).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2, same shape).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The image configuration blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
}

/// What runs by default, from the image configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// ENTRYPOINT.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// CMD.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// ENV (`KEY=value`).
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// WORKDIR.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// USER.
    #[serde(default)]
    pub user: Option<String>,
}

/// The image configuration blob (only what the agent uses).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// The run configuration.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// OS.
    #[serde(default)]
    pub os: String,
}

/// An image in the store.
#[derive(Clone, Debug)]
pub struct Image {
    /// Its normalised reference.
    pub reference: String,
    /// The manifest's digest (the image's identity).
    pub manifest_digest: String,
    /// The configuration's digest (what `docker images` calls the image id).
    pub config_digest: String,
    /// What runs by default.
    pub run: RunConfig,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// Total size of the layers.
    pub size: u64,
    /// A built-in image (never pulled).
    pub builtin: bool,
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a sha256 digest, checked (it becomes a path component).
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    let hex =
        digest.strip_prefix("sha256:").ok_or_else(|| ImageError::Invalid(format!("unsupported digest {digest}")))?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ImageError::Invalid(format!("malformed digest {digest}")));
    }
    Ok(hex)
}

/// The store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

impl Store {
    /// Opens (creating if needed) the layout at `root`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(io(format!("creating {}", root.display())))?;
        std::fs::create_dir_all(root.join("unpacked")).map_err(io("creating unpacked/"))?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            std::fs::write(&layout, "{\"imageLayoutVersion\":\"1.0.0\"}").map_err(io("writing oci-layout"))?;
        }
        Ok(Store { root: root.to_path_buf() })
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// Whether a blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    /// Reads a blob.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest)?;
        std::fs::read(&p).map_err(io(format!("reading blob {digest}")))
    }

    /// A temporary file in the store (same file system as the blobs) for a blob being written.
    pub fn temp_file(&self) -> Result<(PathBuf, File), ImageError> {
        let name = format!(".tmp-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let p = self.root.join("blobs/sha256").join(name);
        let f = OpenOptions::new().write(true).create_new(true).open(&p).map_err(io("creating a temporary blob"))?;
        Ok((p, f))
    }

    /// Moves a fully written temporary file into place as `digest`, after checking its content hashes to it.
    pub fn commit_blob(&self, tmp: &Path, digest: &str) -> Result<(), ImageError> {
        let actual = {
            let mut f = File::open(tmp).map_err(io("reading back a blob"))?;
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h).map_err(io("hashing a blob"))?;
            format!("sha256:{}", hex::encode(h.finalize()))
        };
        self.commit_hashed(tmp, digest, &actual)
    }

    /// As [`Store::commit_blob`] for a file whose content the writer hashed as it wrote it (`actual`, `sha256:…`).
    pub fn commit_hashed(&self, tmp: &Path, digest: &str, actual: &str) -> Result<(), ImageError> {
        if actual != digest {
            let _ = std::fs::remove_file(tmp);
            return Err(ImageError::Invalid(format!("blob content is {actual}, expected {digest}")));
        }
        std::fs::rename(tmp, self.blob_path(digest)?).map_err(io("storing a blob"))
    }

    /// Stores bytes as a blob; returns its digest.
    pub fn write_blob(&self, data: &[u8]) -> Result<String, ImageError> {
        let digest = digest_of(data);
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let (tmp, mut f) = self.temp_file()?;
        f.write_all(data).map_err(io("writing a blob"))?;
        drop(f);
        self.commit_blob(&tmp, &digest)?;
        Ok(digest)
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, ImageError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))
            .map_err(io("opening the store lock"))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| ImageError::Io { context: "locking the store".into(), source: e.into() })
    }

    fn pulls_lock(&self) -> Result<File, ImageError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".pulls"))
            .map_err(io("opening the store's pull lock"))
    }

    /// A shared hold on the store for the whole of one pull or import (blocking while a collection runs): garbage
    /// collection does not run while any is held, by this process or another agent sharing the store. Without it, a
    /// pull that found a layer present could see it removed, with the image it was part of, before its own image is
    /// named and so protects the layer.
    pub fn hold_for_pull(&self) -> Result<nix::fcntl::Flock<File>, ImageError> {
        nix::fcntl::Flock::lock(self.pulls_lock()?, nix::fcntl::FlockArg::LockShared)
            .map_err(|(_, e)| ImageError::Io { context: "holding the store for a pull".into(), source: e.into() })
    }

    /// The exclusive hold a garbage collection takes; `None` while a pull or import holds the store (the collection
    /// waits for its next period rather than stall pulls).
    pub fn try_hold_for_gc(&self) -> Result<Option<nix::fcntl::Flock<File>>, ImageError> {
        match nix::fcntl::Flock::lock(self.pulls_lock()?, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(held) => Ok(Some(held)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => {
                Err(ImageError::Io { context: "holding the store for a collection".into(), source: e.into() })
            }
        }
    }

    /// The index (empty when missing).
    pub fn index(&self) -> Result<Index, ImageError> {
        match std::fs::read(self.root.join("index.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageError::Invalid(format!("index.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Index { schema_version: 2, media_type: OCI_INDEX.into(), manifests: vec![] })
            }
            Err(e) => Err(io("reading index.json")(e)),
        }
    }

    /// Names `manifest` (already stored as a blob) `reference`, replacing an older image of that name.
    pub fn tag(&self, reference: &str, manifest: Descriptor) -> Result<(), ImageError> {
        let _guard = self.lock()?;
        let mut index = self.index()?;
        index.manifests.retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(reference));
        let mut d = manifest;
        d.annotations.insert(REF_NAME.into(), reference.to_string());
        index.manifests.push(d);
        index.manifests.sort_by(|a, b| a.annotations.get(REF_NAME).cmp(&b.annotations.get(REF_NAME)));
        self.write_index(&index)
    }

    /// Replaces `index.json` (write a temporary file, rename); the caller holds the lock.
    fn write_index(&self, index: &Index) -> Result<(), ImageError> {
        let tmp = self.root.join(format!(".index-{}.json", std::process::id()));
        let body = serde_json::to_vec_pretty(index).map_err(|e| ImageError::Invalid(e.to_string()))?;
        std::fs::write(&tmp, body).map_err(io("writing index.json"))?;
        std::fs::rename(&tmp, self.root.join("index.json")).map_err(io("replacing index.json"))
    }

    /// Removes the name `reference` (blobs stay).
    pub fn untag(&self, reference: &str) -> Result<bool, ImageError> {
        let _guard = self.lock()?;
        let mut index = self.index()?;
        let before = index.manifests.len();
        index.manifests.retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(reference));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// The manifest stored as blob `digest`.
    pub fn manifest(&self, digest: &str) -> Result<Manifest, ImageError> {
        serde_json::from_slice(&self.read_blob(digest)?)
            .map_err(|e| ImageError::Invalid(format!("manifest {digest}: {e}")))
    }

    /// Every blob a named image of the index needs: its manifest, config and layers.
    fn referenced(&self, index: &Index) -> Result<std::collections::BTreeSet<String>, ImageError> {
        let mut out = std::collections::BTreeSet::new();
        for d in &index.manifests {
            let m = self.manifest(&d.digest)?;
            out.insert(d.digest.clone());
            out.insert(m.config.digest);
            out.extend(m.layers.into_iter().map(|l| l.digest));
        }
        Ok(out)
    }

    /// Removes the blobs `digests` and their unpacked layers, except those a named image still needs (read under the
    /// lock, so an image tagged meanwhile keeps its blobs) and those in `keep` (layers mounted by a container).
    /// Returns the bytes freed.
    pub fn remove_blobs(
        &self,
        digests: &[String],
        keep: &std::collections::BTreeSet<String>,
    ) -> Result<u64, ImageError> {
        let _guard = self.lock()?;
        let needed = self.referenced(&self.index()?)?;
        let mut freed = 0;
        for d in digests.iter().filter(|d| !needed.contains(*d) && !keep.contains(*d)) {
            freed += self.blob_bytes(d)?;
            let unpacked = self.unpacked_dir(d)?;
            match std::fs::remove_dir_all(&unpacked) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("removing {}", unpacked.display()))(e));
                }
                _ => {}
            }
            match std::fs::remove_file(self.blob_path(d)?) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("removing blob {d}"))(e));
                }
                _ => {}
            }
        }
        Ok(freed)
    }

    /// The bytes blob `digest` and its unpacked layer take on disk (allocated blocks; 0 when absent).
    pub fn blob_bytes(&self, digest: &str) -> Result<u64, ImageError> {
        fn walk(p: &Path) -> u64 {
            use std::os::unix::fs::MetadataExt as _;
            let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
            let own = meta.blocks() * 512;
            if !meta.is_dir() {
                return own;
            }
            // a bounded walk: an unpacked layer is a finite tree, and symlinks are not followed
            own + std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| walk(&e.path())).sum::<u64>()
        }
        Ok(walk(&self.blob_path(digest)?) + walk(&self.unpacked_dir(digest)?))
    }

    /// Loads the image a manifest descriptor points at.
    pub fn load(&self, reference: &str, manifest_digest: &str) -> Result<Image, ImageError> {
        let m: Manifest = serde_json::from_slice(&self.read_blob(manifest_digest)?)
            .map_err(|e| ImageError::Invalid(format!("manifest {manifest_digest}: {e}")))?;
        let cfg: ConfigFile = serde_json::from_slice(&self.read_blob(&m.config.digest)?)
            .map_err(|e| ImageError::Invalid(format!("config {}: {e}", m.config.digest)))?;
        Ok(Image {
            reference: reference.to_string(),
            manifest_digest: manifest_digest.to_string(),
            config_digest: m.config.digest.clone(),
            run: cfg.config.unwrap_or_default(),
            size: m.layers.iter().map(|l| l.size).sum(),
            layers: m.layers,
            builtin: false,
        })
    }

    /// The image named `reference` (normalised first), if present.
    pub fn find(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let r = Reference::parse(reference)?;
        let index = self.index()?;
        if let Some(digest) = &r.digest {
            // name@digest: any stored manifest with that digest and name.
            let hit = index
                .manifests
                .iter()
                .find(|d| &d.digest == digest && d.annotations.get(REF_NAME).is_some_and(|n| n.starts_with(&r.name())));
            return match hit {
                Some(d) => Ok(Some(self.load(&r.to_string(), &d.digest)?)),
                None if self.has_blob(digest) => Ok(Some(self.load(&r.to_string(), digest)?)),
                None => Ok(None),
            };
        }
        let name = r.to_string();
        match index.manifests.iter().find(|d| d.annotations.get(REF_NAME) == Some(&name)) {
            Some(d) => {
                let mut img = self.load(&name, &d.digest)?;
                img.builtin = d.annotations.get(BUILTIN).is_some_and(|v| v == "true");
                Ok(Some(img))
            }
            None => Ok(None),
        }
    }

    /// Every named image.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let index = self.index()?;
        let mut out = Vec::new();
        for d in &index.manifests {
            if let Some(name) = d.annotations.get(REF_NAME) {
                out.push(self.load(name, &d.digest)?);
            }
        }
        Ok(out)
    }

    /// Directory of an unpacked layer.
    pub fn unpacked_dir(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("unpacked").join(digest_hex(digest)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(store: &Store, name: &str, layer: &[u8]) -> Descriptor {
        let layer_d = store.write_blob(layer).expect("layer");
        let cfg =
            serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"], "Env": ["A=1"]}});
        let cfg_bytes = serde_json::to_vec(&cfg).expect("json");
        let cfg_d = store.write_blob(&cfg_bytes).expect("config");
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": cfg_bytes.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer.len()}]});
        let mb = serde_json::to_vec(&m).expect("json");
        let md = store.write_blob(&mb).expect("manifest");
        let d = Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: md,
            size: mb.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        };
        store.tag(name, d.clone()).expect("tag");
        d
    }

    #[test]
    fn images_are_found_by_any_spelling_of_their_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let d = image(&store, "docker.io/library/busybox:latest", b"layer");
        let img = store.find("busybox").expect("find").expect("present");
        assert_eq!(img.manifest_digest, d.digest);
        assert_eq!(img.run.cmd, Some(vec!["sh".to_string()]));
        assert!(store.find("busybox:1.0").expect("find").is_none());
        assert!(store.find(&format!("busybox@{}", d.digest)).expect("find").is_some());
    }

    #[test]
    fn tagging_again_replaces_the_old_image_of_that_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        image(&store, "docker.io/skiff/echo:v1", b"one");
        let second = image(&store, "docker.io/skiff/echo:v1", b"two");
        let index = store.index().expect("index");
        assert_eq!(index.manifests.len(), 1);
        assert_eq!(index.manifests[0].digest, second.digest);
        assert!(store.untag("docker.io/skiff/echo:v1").expect("untag"));
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn a_blob_whose_content_does_not_match_its_digest_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (tmp, mut f) = store.temp_file().expect("temp");
        f.write_all(b"abc").expect("write");
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(store.commit_blob(&tmp, &wrong).is_err());
        assert!(!tmp.exists());
        // the same check for a blob hashed as it was written (a registry's answer)
        let (tmp, mut f) = store.temp_file().expect("temp");
        f.write_all(b"abc").expect("write");
        assert!(store.commit_hashed(&tmp, &wrong, &digest_of(b"abc")).is_err());
        assert!(!tmp.exists() && !store.has_blob(&wrong));
        let (tmp, mut f) = store.temp_file().expect("temp");
        f.write_all(b"abc").expect("write");
        store.commit_hashed(&tmp, &digest_of(b"abc"), &digest_of(b"abc")).expect("matching digest");
        assert!(store.has_blob(&digest_of(b"abc")));
    }
}

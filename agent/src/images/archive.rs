//! `skiff image import FILE`: `docker save` archives (`manifest.json` with `RepoTags`) and OCI archives
//! (`oci-layout` + `index.json`, as `skopeo copy … oci-archive:` and newer `docker save` write them), plain or gzip.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ImageError;
use super::reference::Reference;
use super::store::{self, Descriptor, Index, Manifest, OCI_MANIFEST, Platform, REF_NAME, Store};

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Imports every image in the archive at `path`; `tag` names an image the archive leaves unnamed (or renames a
/// single image). Returns the references stored.
pub fn import(store: &Store, path: &Path, tag: Option<&str>) -> Result<Vec<String>, ImageError> {
    let _importing = store.hold_for_pull()?;
    let tag = tag.map(Reference::parse).transpose()?.map(|r| r.to_string());
    let tmp = store.root().join(format!(".import-{}-{:016x}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir_all(&tmp).map_err(io("creating a scratch directory"))?;
    let result = (|| {
        let file = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let mut reader = std::io::BufReader::new(file);
        let gz = {
            use std::io::BufRead as _;
            reader.fill_buf().map_err(io("reading the archive"))?.starts_with(&[0x1f, 0x8b])
        };
        let stream: Box<dyn std::io::Read> =
            if gz { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) };
        let mut ar = tar::Archive::new(stream);
        ar.unpack(&tmp).map_err(|e| ImageError::Invalid(format!("{} is not a tar archive: {e}", path.display())))?;
        if tmp.join("index.json").exists() && tmp.join("oci-layout").exists() {
            import_oci(store, &tmp, tag.as_deref())
        } else if tmp.join("manifest.json").exists() {
            import_docker(store, &tmp, tag.as_deref())
        } else {
            Err(ImageError::Invalid(format!(
                "{} is neither an OCI archive (oci-layout, index.json) nor a docker-save archive (manifest.json)",
                path.display()
            )))
        }
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Copies a file into the store as a blob; returns its descriptor.
fn add_file(store: &Store, file: &Path, media_type: &str) -> Result<Descriptor, ImageError> {
    let (tmp, mut out) = store.temp_file()?;
    let mut src = std::fs::File::open(file).map_err(io(format!("opening {}", file.display())))?;
    let size = std::io::copy(&mut src, &mut out).map_err(io("copying a blob"))?;
    drop(out);
    let digest = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        let mut f = std::fs::File::open(&tmp).map_err(io("hashing a blob"))?;
        std::io::copy(&mut f, &mut h).map_err(io("hashing a blob"))?;
        format!("sha256:{}", hex::encode(h.finalize()))
    };
    if store.has_blob(&digest) {
        let _ = std::fs::remove_file(&tmp);
    } else {
        store.commit_blob(&tmp, &digest)?;
    }
    Ok(Descriptor { media_type: media_type.into(), digest, size, annotations: BTreeMap::new(), platform: None })
}

fn import_docker(store: &Store, dir: &Path, tag: Option<&str>) -> Result<Vec<String>, ImageError> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).map_err(io("reading manifest.json"))?)
            .map_err(|e| ImageError::Invalid(format!("manifest.json: {e}")))?;
    if entries.len() > 1 && tag.is_some() {
        return Err(ImageError::Invalid("--tag names one image, but the archive holds several".into()));
    }
    let mut names = Vec::new();
    for e in entries {
        let inside = |rel: &str| {
            let p = dir.join(rel);
            if rel.contains("..") {
                Err(ImageError::Invalid(format!("archive path {rel} leaves the archive")))
            } else {
                Ok(p)
            }
        };
        let config = add_file(store, &inside(&e.config)?, "application/vnd.oci.image.config.v1+json")?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let p = inside(l)?;
            let gz = std::fs::File::open(&p).ok().and_then(|mut f| {
                let mut head = [0u8; 2];
                std::io::Read::read_exact(&mut f, &mut head).ok().map(|()| head == [0x1f, 0x8b])
            });
            let mt = if gz == Some(true) {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            layers.push(add_file(store, &p, mt)?);
        }
        let manifest = Manifest { schema_version: 2, media_type: OCI_MANIFEST.into(), config, layers };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| ImageError::Invalid(e.to_string()))?;
        let digest = store.write_blob(&bytes)?;
        let desc = Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest,
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        };
        let tags: Vec<String> = match tag {
            Some(t) => vec![t.to_string()],
            None => e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| Reference::parse(t).map(|r| r.to_string()))
                .collect::<Result<_, _>>()?,
        };
        if tags.is_empty() {
            return Err(ImageError::Invalid("an image in the archive has no name: give --tag".into()));
        }
        for t in tags {
            store.tag(&t, desc.clone())?;
            names.push(t);
        }
    }
    Ok(names)
}

/// Picks linux/amd64 (or the only entry) from an index.
pub fn pick_platform(index: &Index) -> Option<&Descriptor> {
    let want = Platform {
        architecture: std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        os: "linux".into(),
    };
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.os == want.os && p.architecture == want.architecture))
        .or_else(|| (index.manifests.len() == 1).then(|| &index.manifests[0]))
}

fn import_oci(store: &Store, dir: &Path, tag: Option<&str>) -> Result<Vec<String>, ImageError> {
    let blobs = dir.join("blobs/sha256");
    for e in std::fs::read_dir(&blobs).map_err(io("reading blobs/sha256"))?.flatten() {
        add_file(store, &e.path(), "")?;
    }
    let index: Index =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).map_err(io("reading index.json"))?)
            .map_err(|e| ImageError::Invalid(format!("index.json: {e}")))?;
    let mut names = Vec::new();
    let single = index.manifests.len() == 1;
    for d in &index.manifests {
        let mut manifest = d.clone();
        if d.media_type == store::OCI_INDEX || d.media_type == store::DOCKER_LIST {
            let nested: Index = serde_json::from_slice(&store.read_blob(&d.digest)?)
                .map_err(|e| ImageError::Invalid(format!("nested index: {e}")))?;
            manifest = pick_platform(&nested)
                .cloned()
                .ok_or_else(|| ImageError::Invalid("no linux image for this architecture in the archive".into()))?;
        }
        let annotated = d.annotations.get("io.containerd.image.name").or_else(|| d.annotations.get(REF_NAME)).cloned();
        let name = match (tag, annotated) {
            (Some(t), _) if single => t.to_string(),
            (_, Some(n)) => match Reference::parse(&n) {
                Ok(r) if n.contains('/') || n.contains(':') => r.to_string(),
                // a bare tag such as `latest` or `v1` does not name a repository
                _ => return Err(ImageError::Invalid(format!("the archive names an image only {n:?}: give --tag"))),
            },
            (_, None) => return Err(ImageError::Invalid("an image in the archive has no name: give --tag".into())),
        };
        let m: Manifest = serde_json::from_slice(&store.read_blob(&manifest.digest)?)
            .map_err(|e| ImageError::Invalid(format!("manifest {}: {e}", manifest.digest)))?;
        for l in m.layers.iter().chain(std::iter::once(&m.config)) {
            if !store.has_blob(&l.digest) {
                return Err(ImageError::Invalid(format!("the archive lacks blob {}", l.digest)));
            }
        }
        manifest.annotations.clear();
        manifest.platform = None;
        if manifest.media_type.is_empty() {
            manifest.media_type = OCI_MANIFEST.into();
        }
        store.tag(&name, manifest)?;
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, p, &data[..]).expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn a_docker_save_archive_is_imported_under_its_repo_tags() {
        let layer = tar_of(&[("hello.txt", b"hello".to_vec())]);
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/hello"]}}"#.to_vec();
        let manifest = br#"[{"Config":"cfg.json","RepoTags":["example/hello:1"],"Layers":["l1/layer.tar"]}]"#.to_vec();
        let archive = tar_of(&[("manifest.json", manifest), ("cfg.json", config), ("l1/layer.tar", layer)]);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.tar");
        std::fs::write(&file, archive).expect("write");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let names = import(&store, &file, None).expect("import");
        assert_eq!(names, vec!["docker.io/example/hello:1".to_string()]);
        let img = store.find("example/hello:1").expect("find").expect("present");
        assert_eq!(img.run.cmd, Some(vec!["/hello".to_string()]));
        assert_eq!(img.layers.len(), 1);
    }

    #[test]
    fn an_archive_that_is_neither_format_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("x.tar");
        std::fs::write(&file, tar_of(&[("random.txt", b"x".to_vec())])).expect("write");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let err = import(&store, &file, None).expect_err("refused");
        assert!(err.to_string().contains("neither"), "{err}");
        let leftovers: Vec<_> = std::fs::read_dir(store.root())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".import"))
            .collect();
        assert!(leftovers.is_empty());
    }
}

//! A pod's volumes on the node, under `pods/<uid>/volumes/<kind>/<name>`: emptyDir (a directory, or tmpfs for
//! `medium: Memory`), configMap, secret, downwardAPI and projected (atomically swapped files, see [`atomic`]),
//! hostPath, and persistentVolumeClaim (the bound PersistentVolume's hostPath or local path; claims of the
//! `local-path` class are provisioned on this node). The file contents are pure functions of the API objects.
//!
//! [`atomic`]: super::atomic

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};

use super::atomic::{self, Payload};
use super::env::{self, Lookup, PodFacts};

/// Why a volume could not be set up (reported as a `FailedMount` event; the pod waits).
pub type MountError = String;

fn mode_of(item_mode: Option<i32>, default_mode: Option<i32>, fallback: u32) -> u32 {
    item_mode.or(default_mode).and_then(|m| u32::try_from(m).ok()).unwrap_or(fallback) & 0o7777
}

/// The files of a configMap or secret volume: every key, or only `items` (key → path, mode).
pub fn key_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    kind: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Payload>, MountError> {
    let mut out = BTreeMap::new();
    match items {
        None => {
            for (k, v) in data {
                out.insert(k.clone(), Payload { data: v.clone(), mode: mode_of(None, default_mode, 0o644) });
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        if !atomic::valid_path(&it.path) {
                            return Err(format!("invalid path {:?} for key {}", it.path, it.key));
                        }
                        out.insert(
                            it.path.clone(),
                            Payload { data: v.clone(), mode: mode_of(it.mode, default_mode, 0o644) },
                        );
                    }
                    None if optional => {}
                    None => return Err(format!("configuration key {:?} not found in {kind} {name:?}", it.key)),
                }
            }
        }
    }
    Ok(out)
}

/// The data of a ConfigMap as bytes.
pub fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut m: BTreeMap<String, Vec<u8>> =
        cm.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    for (k, v) in cm.binary_data.clone().unwrap_or_default() {
        m.insert(k, v.0);
    }
    m
}

/// The data of a Secret as bytes.
pub fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut m: BTreeMap<String, Vec<u8>> =
        s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    for (k, v) in s.string_data.clone().unwrap_or_default() {
        m.insert(k, v.into_bytes());
    }
    m
}

/// The files of downwardAPI items.
pub fn downward_files(
    pod: &Pod,
    facts: &PodFacts,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    node_cpus: u64,
    node_memory: u64,
) -> Result<BTreeMap<String, Payload>, MountError> {
    let mut out = BTreeMap::new();
    for it in items {
        if !atomic::valid_path(&it.path) {
            return Err(format!("invalid downwardAPI path {:?}", it.path));
        }
        let value = if let Some(f) = &it.field_ref {
            env::field_value(pod, facts, &f.field_path)?
        } else if let Some(r) = &it.resource_field_ref {
            let spec = pod.spec.as_ref().ok_or("pod without spec")?;
            let c = spec
                .containers
                .iter()
                .find(|c| Some(&c.name) == r.container_name.as_ref())
                .or(spec.containers.first())
                .ok_or("pod without containers")?;
            env::resource_value(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()), node_cpus, node_memory)?
        } else {
            String::new()
        };
        out.insert(it.path.clone(), Payload { data: value.into_bytes(), mode: mode_of(it.mode, default_mode, 0o644) });
    }
    Ok(out)
}

/// Inputs for computing and preparing volumes.
pub struct VolumeInputs<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its facts.
    pub facts: &'a PodFacts,
    /// Its namespace's ConfigMaps and Secrets.
    pub lookup: &'a dyn Lookup,
    /// Node CPUs (resourceFieldRef defaults).
    pub node_cpus: u64,
    /// Node memory.
    pub node_memory: u64,
    /// Service-account tokens already issued for projected volumes, by (volume, path).
    pub tokens: &'a BTreeMap<(String, String), String>,
}

/// The files of an atomically written volume (configMap, secret, downwardAPI, projected), or `None` for other kinds.
pub fn atomic_files(v: &Volume, inp: &VolumeInputs<'_>) -> Option<Result<BTreeMap<String, Payload>, MountError>> {
    if let Some(c) = &v.config_map {
        let optional = c.optional == Some(true);
        return Some(match inp.lookup.config_map(&c.name) {
            Some(cm) => {
                key_files(&config_map_data(&cm), c.items.as_deref(), c.default_mode, "ConfigMap", &c.name, optional)
            }
            None if optional => Ok(BTreeMap::new()),
            None => Err(format!("configmap {:?} not found", c.name)),
        });
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional == Some(true);
        return Some(match inp.lookup.secret(&name) {
            Some(sec) => key_files(&secret_data(&sec), s.items.as_deref(), s.default_mode, "Secret", &name, optional),
            None if optional => Ok(BTreeMap::new()),
            None => Err(format!("secret {name:?} not found")),
        });
    }
    if let Some(d) = &v.downward_api {
        return Some(downward_files(
            inp.pod,
            inp.facts,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode,
            inp.node_cpus,
            inp.node_memory,
        ));
    }
    if let Some(p) = &v.projected {
        return Some(projected_files(v, p, inp));
    }
    None
}

fn projected_files(
    v: &Volume,
    p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    inp: &VolumeInputs<'_>,
) -> Result<BTreeMap<String, Payload>, MountError> {
    {
        let mut all = BTreeMap::new();
        for src in p.sources.clone().unwrap_or_default() {
            let part = if let Some(c) = &src.config_map {
                let optional = c.optional == Some(true);
                match inp.lookup.config_map(&c.name) {
                    Some(cm) => key_files(
                        &config_map_data(&cm),
                        c.items.as_deref(),
                        p.default_mode,
                        "ConfigMap",
                        &c.name,
                        optional,
                    ),
                    None if optional => Ok(BTreeMap::new()),
                    None => Err(format!("configmap {:?} not found", c.name)),
                }
            } else if let Some(s) = &src.secret {
                let optional = s.optional == Some(true);
                match inp.lookup.secret(&s.name) {
                    Some(sec) => {
                        key_files(&secret_data(&sec), s.items.as_deref(), p.default_mode, "Secret", &s.name, optional)
                    }
                    None if optional => Ok(BTreeMap::new()),
                    None => Err(format!("secret {:?} not found", s.name)),
                }
            } else if let Some(d) = &src.downward_api {
                downward_files(
                    inp.pod,
                    inp.facts,
                    d.items.as_deref().unwrap_or_default(),
                    p.default_mode,
                    inp.node_cpus,
                    inp.node_memory,
                )
            } else if let Some(t) = &src.service_account_token {
                match inp.tokens.get(&(v.name.clone(), t.path.clone())) {
                    Some(tok) => Ok([(
                        t.path.clone(),
                        Payload { data: tok.clone().into_bytes(), mode: mode_of(None, p.default_mode, 0o644) },
                    )]
                    .into()),
                    None => Err(format!("no service account token yet for {}", t.path)),
                }
            } else {
                Ok(BTreeMap::new())
            };
            all.extend(part?);
        }
        Ok(all)
    }
}

/// The service-account token requests a pod's projected volumes make: (volume, path, audience, expiry seconds).
pub fn token_requests(pod: &Pod) -> Vec<(String, String, Option<String>, i64)> {
    let mut out = Vec::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
        for src in v.projected.as_ref().and_then(|p| p.sources.clone()).unwrap_or_default() {
            if let Some(t) = src.service_account_token {
                out.push((v.name.clone(), t.path, t.audience, t.expiration_seconds.unwrap_or(3607)));
            }
        }
    }
    out
}

/// Kind directory names (as the kubelet's plugin names).
pub fn kind_dir(v: &Volume) -> &'static str {
    if v.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if v.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if v.secret.is_some() {
        "kubernetes.io~secret"
    } else if v.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if v.projected.is_some() {
        "kubernetes.io~projected"
    } else if v.persistent_volume_claim.is_some() {
        "kubernetes.io~pvc"
    } else {
        "kubernetes.io~other"
    }
}

/// The host path behind a bound PersistentVolume.
pub fn pv_path(pv: &PersistentVolume) -> Option<PathBuf> {
    let spec = pv.spec.as_ref()?;
    spec.host_path
        .as_ref()
        .map(|h| PathBuf::from(&h.path))
        .or_else(|| spec.local.as_ref().map(|l| PathBuf::from(&l.path)))
}

/// Mounts a tmpfs (nosuid, nodev) at `path` unless one is there already.
fn mount_tmpfs(path: &Path, opts: &str, volume: &str) -> Result<(), MountError> {
    if super::mounts::is_mount_point(path) {
        return Ok(());
    }
    nix::mount::mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts),
    )
    .map_err(|e| format!("mounting tmpfs for volume {volume}: {e}"))
}

/// One non-claim volume to set up on disk: where, and for the atomically written kinds, the files (computed from the
/// API objects without touching the disk, so [`apply_local`] can run on a blocking thread).
#[derive(Clone, Debug)]
pub struct LocalSetup {
    /// The volume.
    pub volume: Volume,
    /// Its directory under the pod's volume directory.
    pub path: PathBuf,
    /// The files of a configMap, secret, downwardAPI or projected volume.
    pub files: Option<BTreeMap<String, Payload>>,
}

/// What setting up `v` under `dir` means (pure: reads the objects through `inp`, not the disk).
pub fn local_setup(v: &Volume, dir: &Path, inp: &VolumeInputs<'_>) -> Result<LocalSetup, MountError> {
    let files = atomic_files(v, inp).transpose()?;
    Ok(LocalSetup { volume: v.clone(), path: dir.join(kind_dir(v)).join(&v.name), files })
}

/// Prepares the directory of one non-claim volume; returns its host path. Blocking (mounts, file writes); the
/// atomically written kinds are swapped in whole.
pub fn apply_local(setup: &LocalSetup) -> Result<PathBuf, MountError> {
    let (v, path) = (&setup.volume, setup.path.clone());
    if let Some(files) = &setup.files {
        if v.secret.is_some() || v.projected.is_some() {
            // Secrets and tokens never reach the node's disk, as kubelet keeps them
            std::fs::create_dir_all(&path).map_err(|e| format!("creating volume {}: {e}", v.name))?;
            mount_tmpfs(&path, "mode=0755", &v.name)?;
        }
        atomic::write(&path, files).map_err(|e| format!("writing volume {}: {e}", v.name))?;
        return Ok(path);
    }
    if let Some(e) = &v.empty_dir {
        std::fs::create_dir_all(&path).map_err(|e| format!("creating emptyDir {}: {e}", v.name))?;
        if e.medium.as_deref() == Some("Memory") && !super::mounts::is_mount_point(&path) {
            let size = e
                .size_limit
                .as_ref()
                .and_then(|q| q.0.parse::<skiff_api::quantity::Quantity>().ok())
                .map(|q| q.as_units());
            let opts = match size {
                Some(s) if s > 0 => format!("mode=1777,size={s}"),
                _ => "mode=1777".to_string(),
            };
            mount_tmpfs(&path, &opts, &v.name)?;
        } else {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
        }
        return Ok(path);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        match h.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => {
                std::fs::create_dir_all(&p).map_err(|e| format!("creating hostPath {}: {e}", h.path))?
            }
            "FileOrCreate" => {
                if let Some(parent) = p.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                if !p.exists() {
                    std::fs::write(&p, b"").map_err(|e| format!("creating hostPath {}: {e}", h.path))?;
                }
            }
            "Directory" if !p.is_dir() => {
                return Err(format!("hostPath type check failed: {} is not a directory", h.path));
            }
            "File" if !p.is_file() => return Err(format!("hostPath type check failed: {} is not a file", h.path)),
            "Socket" | "CharDevice" | "BlockDevice" if !p.exists() => {
                return Err(format!("hostPath type check failed: {} does not exist", h.path));
            }
            _ => {}
        }
        return Ok(p);
    }
    Err(format!("volume {} has a type this node does not support", v.name))
}

/// The PersistentVolumeClaim and, if bound, its volume.
pub async fn claim(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<(PersistentVolumeClaim, Option<PersistentVolume>), MountError> {
    let pvcs: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(client.clone(), ns);
    let pvc = pvcs
        .get_opt(name)
        .await
        .map_err(|e| format!("reading claim {name}: {e}"))?
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
    let Some(vol) = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty()) else {
        return Ok((pvc, None));
    };
    let pvs: kube::Api<PersistentVolume> = kube::Api::all(client.clone());
    let pv = pvs.get_opt(&vol).await.map_err(|e| format!("reading volume {vol}: {e}"))?;
    Ok((pvc, pv))
}

/// The `local-path` PersistentVolume for an unbound claim on node `node`, with its directory under `base`.
pub fn local_path_volume(pvc: &PersistentVolumeClaim, node: &str, base: &Path) -> PersistentVolume {
    use k8s_openapi::api::core::v1::{
        HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
        PersistentVolumeSpec, VolumeNodeAffinity,
    };
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    let dir = base.join(format!("pvc-{uid}_{ns}_{name}"));
    PersistentVolume {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("pvc-{uid}")),
            annotations: Some(
                [("pv.kubernetes.io/provisioned-by".to_string(), "skiff.dev/local-path".to_string())].into(),
            ),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.clone())
                .map(|r| r.into_iter().filter(|(k, _)| k == "storage").collect()),
            access_modes: spec.access_modes.clone(),
            storage_class_name: spec.storage_class_name.clone(),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            host_path: Some(HostPathVolumeSource {
                path: dir.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            claim_ref: Some(ObjectReference {
                kind: Some("PersistentVolumeClaim".into()),
                api_version: Some("v1".into()),
                namespace: Some(ns),
                name: Some(name),
                uid: Some(uid),
                ..Default::default()
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![node.into()]),
                        }]),
                        ..Default::default()
                    }],
                }),
            }),
            volume_mode: spec.volume_mode.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn items_select_keys_rename_them_and_set_modes() {
        let d = data(&[("a", "1"), ("b", "2")]);
        let items = vec![KeyToPath { key: "b".into(), path: "conf/b.txt".into(), mode: Some(0o600) }];
        let f = key_files(&d, Some(&items), Some(0o644), "ConfigMap", "c", false).expect("files");
        assert_eq!(f.len(), 1);
        assert_eq!(f["conf/b.txt"], Payload { data: b"2".to_vec(), mode: 0o600 });
        let all = key_files(&d, None, Some(0o400), "ConfigMap", "c", false).expect("files");
        assert_eq!(all["a"].mode, 0o400);
    }

    #[test]
    fn a_missing_item_key_fails_unless_optional() {
        let d = data(&[("a", "1")]);
        let items = vec![KeyToPath { key: "zz".into(), path: "zz".into(), mode: None }];
        assert!(key_files(&d, Some(&items), None, "Secret", "s", false).is_err());
        assert!(key_files(&d, Some(&items), None, "Secret", "s", true).expect("optional").is_empty());
        let escape = vec![KeyToPath { key: "a".into(), path: "../x".into(), mode: None }];
        assert!(key_files(&d, Some(&escape), None, "Secret", "s", false).is_err());
    }

    #[test]
    fn a_local_path_claim_gets_a_volume_pinned_to_this_node() {
        let mut pvc = PersistentVolumeClaim::default();
        pvc.metadata.name = Some("data".into());
        pvc.metadata.namespace = Some("db".into());
        pvc.metadata.uid = Some("u1".into());
        let pv = local_path_volume(&pvc, "n1", Path::new("/var/lib/skiff/agent/local-path"));
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u1"));
        assert_eq!(pv_path(&pv), Some(PathBuf::from("/var/lib/skiff/agent/local-path/pvc-u1_db_data")));
        let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).expect("claim ref");
        assert_eq!(claim.name.as_deref(), Some("data"));
    }
}

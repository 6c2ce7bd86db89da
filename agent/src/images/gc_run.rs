//! Carries out image garbage collection ([`super::gc::plan`]) on a store: reads the disk's figures, the named images,
//! which layers running containers have mounted (any agent's: the store is shared), and applies the plan (untag,
//! then remove the blobs no image needs any more), never while a pull or import holds the store
//! ([`Store::hold_for_pull`]). Blocking: run it on tokio's blocking pool.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use skiff_client::events::{EventType, Recorder};

use super::gc::{Candidate, Disk, GcPolicy, plan};
use super::store::{BUILTIN, REF_NAME, Store};
use super::{ImageError, Images, Reference};
use crate::metrics::Metrics;
use crate::pods::record::PodRecord;

/// How often the agent looks at the disk (the kubelet's image GC period).
pub const PERIOD: Duration = Duration::from_secs(300);

/// What one collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// The disk before.
    pub disk: Option<Disk>,
    /// Images removed.
    pub removed: Vec<String>,
    /// Bytes freed.
    pub freed: u64,
    /// Bytes that should have been freed but no image could be removed for (0 when the low threshold was reached).
    pub short: u64,
    /// The collection was due but a pull or import held the store: it is left to the next period.
    pub deferred: bool,
}

/// What the agent knows of image use.
#[derive(Clone, Debug, Default)]
pub struct Use {
    /// References of the images of this node's pods (a container in back-off keeps its image).
    pub pods: BTreeSet<String>,
    /// When this agent last started a container of each reference.
    pub last_used: HashMap<String, Timestamp>,
    /// When this agent started: an image it found is taken as used then (as the kubelet does).
    pub since: Timestamp,
}

/// The file system that holds `path`.
pub fn disk_of(path: &Path) -> Result<Disk, ImageError> {
    let s = nix::sys::statvfs::statvfs(path)
        .map_err(|e| ImageError::Io { context: format!("statvfs {}", path.display()), source: e.into() })?;
    let block = s.fragment_size();
    Ok(Disk { capacity: s.blocks() * block, used: s.blocks().saturating_sub(s.blocks_free()) * block })
}

/// The layer sets of the overlays mounted on this machine from `store`'s unpacked layers, read from `mountinfo`
/// (the text of `/proc/self/mountinfo`): one set of layer digests per mount.
pub fn mounted_layers(mountinfo: &str, store: &Store) -> Vec<BTreeSet<String>> {
    let unpacked = store.root().join("unpacked");
    let prefix = format!("{}/", unpacked.display());
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // … - <fstype> <source> <super options>
        let Some((_, tail)) = line.split_once(" - ") else { continue };
        let mut f = tail.split(' ');
        if f.next() != Some("overlay") {
            continue;
        }
        let options = f.nth(1).unwrap_or_default();
        let Some(lower) = options.split(',').find_map(|o| o.strip_prefix("lowerdir=")) else { continue };
        let layers: BTreeSet<String> = lower
            .split(':')
            .filter_map(|d| d.strip_prefix(prefix.as_str()))
            .map(|hex| format!("sha256:{}", hex.trim_end_matches('/')))
            .collect();
        if !layers.is_empty() {
            out.push(layers);
        }
    }
    out
}

/// Collects `store` under `policy` if its disk is at the high threshold.
pub fn collect(store: &Store, policy: &GcPolicy, usage: &Use, now: Timestamp) -> Result<Collected, ImageError> {
    let disk = disk_of(store.root())?;
    let mut done = Collected { disk: Some(disk), ..Default::default() };
    if !policy.triggered(disk) {
        return Ok(done);
    }
    let Some(_collecting) = store.try_hold_for_gc()? else {
        tracing::info!("image garbage collection deferred to the next period: a pull is under way");
        done.deferred = true;
        return Ok(done);
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| ImageError::Io { context: "reading /proc/self/mountinfo".into(), source })?;
    let mounted = mounted_layers(&mountinfo, store);
    let pods: BTreeSet<String> =
        usage.pods.iter().filter_map(|r| Reference::parse(r).ok()).map(|r| r.to_string()).collect();
    let mut candidates = Vec::new();
    let mut sizes = BTreeMap::new();
    for d in store.index()?.manifests {
        let Some(name) = d.annotations.get(REF_NAME).cloned() else { continue };
        let m = store.manifest(&d.digest)?;
        let layers: BTreeSet<String> = m.layers.iter().map(|l| l.digest.clone()).collect();
        let stored = std::fs::metadata(store.blob_path(&d.digest)?)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| Timestamp::try_from(t).ok())
            .unwrap_or(usage.since);
        let last_used = [Some(usage.since), Some(stored), usage.last_used.get(&name).copied()]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(usage.since);
        let blobs: Vec<String> =
            std::iter::once(d.digest.clone()).chain(std::iter::once(m.config.digest)).chain(layers.clone()).collect();
        for b in &blobs {
            if !sizes.contains_key(b) {
                sizes.insert(b.clone(), store.blob_bytes(b)?);
            }
        }
        candidates.push(Candidate {
            in_use: pods.contains(&name) || mounted.contains(&layers),
            builtin: d.annotations.get(BUILTIN).is_some_and(|v| v == "true"),
            reference: name,
            blobs,
            last_used,
        });
    }
    let p = plan(&candidates, &sizes, disk, policy, now);
    for reference in &p.images {
        if store.untag(reference)? {
            tracing::info!(image = %reference, "image garbage collection removed the image");
            done.removed.push(reference.clone());
        }
    }
    let keep: BTreeSet<String> = mounted.into_iter().flatten().collect();
    done.freed = store.remove_blobs(&p.blobs, &keep)?;
    done.short = p.short;
    Ok(done)
}

/// The images of the pods whose records are under `pods_dir` (`<uid>/record.json`).
pub fn pod_images(pods_dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(pods_dir).into_iter().flatten().flatten() {
        if let Some(r) = PodRecord::load(&e.path().join("record.json")) {
            out.extend(r.containers.into_values().filter_map(|c| c.current).map(|i| i.image));
        }
    }
    out
}

/// What [`run`] needs.
pub struct Collector {
    /// The store and its use.
    pub images: Arc<Images>,
    /// When to collect.
    pub policy: GcPolicy,
    /// How often to look.
    pub period: Duration,
    /// The agent's pod records.
    pub pods_dir: PathBuf,
    /// Node events.
    pub recorder: Recorder,
    /// This node's name.
    pub node: String,
    /// `skiff_agent_image_gc_*`.
    pub metrics: Metrics,
}

/// Collects once a period, until aborted. An image GC that cannot reach the low threshold, or fails, is a Warning
/// event `ImageGCFailed` on the Node, as the kubelet's.
pub async fn run(c: Collector) {
    let node = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(c.node.clone()),
        uid: Some(c.node.clone()),
        ..Default::default()
    };
    let mut tick = tokio::time::interval(c.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let images = c.images.clone();
        let policy = c.policy;
        let pods_dir = c.pods_dir.clone();
        let done = tokio::task::spawn_blocking(move || {
            let usage = Use { pods: pod_images(&pods_dir), last_used: images.last_used(), since: images.since() };
            collect(images.store(), &policy, &usage, Timestamp::now())
        })
        .await
        .unwrap_or_else(|e| Err(ImageError::Invalid(format!("image GC panicked: {e}"))));
        match done {
            Ok(d) => {
                c.metrics.image_gc(d.removed.len() as u64, d.freed);
                if d.short > 0 {
                    let message = format!(
                        "Failed to garbage collect required amount of images. Attempted to free {} bytes, but only found {} bytes eligible to free.",
                        d.short + d.freed,
                        d.freed
                    );
                    tracing::warn!(%message, "image garbage collection");
                    c.recorder.record(&node, EventType::Warning, "ImageGCFailed", &message).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "image garbage collection failed");
                c.recorder
                    .record(
                        &node,
                        EventType::Warning,
                        "ImageGCFailed",
                        &format!("Image garbage collection failed: {e}"),
                    )
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_layers_are_read_from_mountinfo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let u = store.root().join("unpacked");
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let mountinfo = format!(
            "36 35 98:0 /mnt1 /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
             90 29 0:51 / /var/lib/x/rootfs rw,relatime - overlay overlay rw,lowerdir={u}/{a}:{u}/{b},upperdir=/x/upper,workdir=/x/work\n\
             91 29 0:52 / /elsewhere rw,relatime - overlay overlay rw,lowerdir=/other/l1,upperdir=/o/u,workdir=/o/w\n",
            u = u.display()
        );
        let got = mounted_layers(&mountinfo, &store);
        assert_eq!(got, vec![[format!("sha256:{a}"), format!("sha256:{b}")].into_iter().collect::<BTreeSet<_>>()]);
    }
}

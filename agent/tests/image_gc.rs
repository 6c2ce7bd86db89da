//! Image garbage collection on a real, small file system: a 32 MiB tmpfs this test mounts holds the store and a
//! filler file that pushes its usage over the high threshold. The collector removes the least recently used image
//! that nothing uses and frees its own layer but not the layer it shares with a kept image; it keeps an image whose
//! layers a mounted overlay uses, a built-in one and one used within the minimum age; when it cannot reach the low
//! threshold it says by how much; while a pull holds the store it removes nothing and waits for its next period.
//! Needs root (mounts).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use skiff_agent::images::gc::GcPolicy;
use skiff_agent::images::gc_run::{Use, collect, disk_of};
use skiff_agent::images::layers;
use skiff_agent::images::store::{BUILTIN, Descriptor, OCI_MANIFEST, Store};
use skiff_testkit::require_privileges;

const MIB: u64 = 1 << 20;

/// Unmounts what the test mounted, in reverse order, even when an assertion fails.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A tar layer holding one file of `mib` MiB of bytes that do not compress.
fn layer(name: &str, mib: u64) -> Vec<u8> {
    let mut data = vec![0u8; usize::try_from(mib * MIB).expect("fits")];
    let mut x: u64 = name.bytes().fold(0x9e37_79b9_7f4a_7c15, |h, b| h.rotate_left(5) ^ u64::from(b));
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, format!("{name}.bin"), &data[..]).expect("append");
    b.into_inner().expect("tar")
}

/// Stores an image named `reference` of `layers` (digests already stored); returns its manifest digest.
fn image(store: &Store, reference: &str, layers: &[(String, u64)], builtin: bool) -> String {
    let cfg = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/x"], "Labels": {"name": reference}}}))
    .expect("json");
    let cd = store.write_blob(&cfg).expect("config");
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(d, size)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size}))
        .collect();
    let m = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": layers}))
    .expect("json");
    let md = store.write_blob(&m).expect("manifest");
    let annotations =
        if builtin { BTreeMap::from([(BUILTIN.to_string(), "true".to_string())]) } else { BTreeMap::new() };
    let d = Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: md.clone(),
        size: m.len() as u64,
        annotations,
        platform: None,
    };
    store.tag(reference, d).expect("tag");
    md
}

fn stored_ago(store: &Store, digest: &str, ago: Duration) {
    let f = std::fs::File::options().write(true).open(store.blob_path(digest).expect("path")).expect("open blob");
    f.set_modified(SystemTime::now() - ago).expect("set mtime");
}

/// Fills `dir`'s file system to `percent` of its size with a file (replacing the previous filler).
fn fill_to(dir: &Path, percent: u64) {
    let filler = dir.join("filler");
    let _ = std::fs::remove_file(&filler);
    let disk = disk_of(dir).expect("statvfs");
    let want = disk.capacity * percent / 100;
    let n = want.saturating_sub(disk.used);
    std::fs::write(&filler, vec![1u8; usize::try_from(n).expect("fits")]).expect("filler");
}

fn name(short: &str) -> String {
    format!("docker.io/library/{short}:1")
}

#[test]
fn unused_images_go_least_recently_used_first_until_the_low_threshold() {
    if !require_privileges("the image GC test") {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let fs = scratch.path().join("fs");
    std::fs::create_dir_all(&fs).expect("mkdir");
    let mut mounts = Mounts(Vec::new());
    nix::mount::mount(Some("tmpfs"), &fs, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=32m"))
        .expect("mount a tmpfs");
    mounts.0.push(fs.clone());
    let store = Store::open(&fs.join("images")).expect("store");
    let blob = |n: &str, mib: u64| {
        let l = layer(n, mib);
        (store.write_blob(&l).expect("layer"), l.len() as u64)
    };
    let (shared, a, b, r, m, d) =
        (blob("shared", 2), blob("a", 4), blob("b", 4), blob("r", 2), blob("m", 2), blob("d", 2));
    let hour = Duration::from_secs(3600);
    let old_a = image(&store, &name("old-a"), &[shared.clone(), a.clone()], false);
    stored_ago(&store, &old_a, 2 * hour);
    let old_b = image(&store, &name("old-b"), std::slice::from_ref(&b), false);
    stored_ago(&store, &old_b, hour);
    let recent = image(&store, &name("recent"), &[shared.clone(), r.clone()], false);
    stored_ago(&store, &recent, hour);
    let running = image(&store, &name("running"), std::slice::from_ref(&m), false);
    stored_ago(&store, &running, 3 * hour);
    let builtin = image(&store, &name("builtin"), std::slice::from_ref(&d), true);
    stored_ago(&store, &builtin, 3 * hour);
    // "running": its layer is the lower layer of a mounted overlay, as a container's root file system.
    let img = store.find(&name("running")).expect("find").expect("present");
    let lower = layers::ensure_unpacked(&store, &img).expect("unpack");
    let rootfs = scratch.path().join("rootfs");
    layers::mount_rootfs(&lower, &scratch.path().join("upper"), &scratch.path().join("work"), &rootfs)
        .expect("mount the overlay");
    mounts.0.push(rootfs);

    let usage = Use {
        pods: Default::default(),
        last_used: HashMap::from([(name("recent"), Timestamp::now())]),
        since: Timestamp::now() - jiff::SignedDuration::from_hours(5),
    };
    let policy = GcPolicy::default();

    // Below the high threshold: nothing goes.
    fill_to(&fs, 70);
    let done = collect(&store, &policy, &usage, Timestamp::now()).expect("collect");
    assert!(done.removed.is_empty(), "{done:?}");
    assert_eq!(store.list().expect("list").len(), 5);

    // At 88 % while a pull holds the store (it may have found old-a's layers present and count on them): the
    // collection is deferred to the next period and nothing goes.
    fill_to(&fs, 88);
    let pulling = store.hold_for_pull().expect("hold the store for a pull");
    let done = collect(&store, &policy, &usage, Timestamp::now()).expect("collect");
    assert!(done.deferred && done.removed.is_empty(), "{done:?}");
    assert!(store.has_blob(&a.0) && store.has_blob(&old_a), "nothing is removed under a pull");
    drop(pulling);

    // At 88 %: the oldest unused image goes, which is enough.
    let done = collect(&store, &policy, &usage, Timestamp::now()).expect("collect");
    assert!(!done.deferred, "{done:?}");
    assert_eq!(done.removed, vec![name("old-a")], "{done:?}");
    assert_eq!(done.short, 0, "{done:?}");
    assert!(done.freed >= 4 * MIB, "{done:?}");
    assert!(!store.has_blob(&a.0), "old-a's own layer is removed");
    assert!(!store.has_blob(&old_a), "old-a's manifest is removed");
    assert!(store.has_blob(&shared.0), "the layer old-a shared with recent stays");
    let after = disk_of(&fs).expect("statvfs");
    assert!(after.used * 100 <= after.capacity * 80, "{after:?}: down to the low threshold");

    // At 97 %: old-b goes too, and that is not enough; what is left is in use, built in or recent.
    fill_to(&fs, 97);
    let done = collect(&store, &policy, &usage, Timestamp::now()).expect("collect");
    assert_eq!(done.removed, vec![name("old-b")], "{done:?}");
    assert!(done.short > 0, "{done:?}: the shortfall is reported");
    assert!(!store.has_blob(&b.0));
    let left: Vec<String> = store.list().expect("list").into_iter().map(|i| i.reference).collect();
    assert_eq!(left, vec![name("builtin"), name("recent"), name("running")]);
    for kept in [&shared.0, &r.0, &m.0, &d.0] {
        assert!(store.has_blob(kept), "{kept} stays");
    }
    assert!(store.unpacked_dir(&m.0).expect("dir").exists(), "the mounted layer stays unpacked");
    drop(mounts);
}

//! Pulls from a real OCI registry: Debian's `docker-registry` on the loopback of a network namespace this test
//! creates, an image pushed into it with `skopeo`, then pulled by the agent's image service (manifest, config and
//! layers verified against their digests), unpacked, and looked up by tag and by digest; a missing image is
//! NotFound. A registry behind htpasswd authentication refuses anonymous pulls and wrong credentials, serves the
//! pull secret's, and a later pull without a secret is not served with an earlier pull's credentials. Needs root
//! (network namespace) and the docker-registry and skopeo packages (scripts/setup).

use std::collections::BTreeMap;

use skiff_agent::images::progress::PullState;
use skiff_agent::images::store::{Descriptor, OCI_MANIFEST, Store};
use skiff_agent::images::{ImageError, Images, Obtained, layers};
use skiff_testkit::{Child, NetNs, require_privileges};

fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = b"pulled over the wire\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "hello.txt", &data[..]).expect("append");
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// An OCI layout holding one image named `hello` (the form skopeo's `oci:` transport reads).
fn source_layout(dir: &std::path::Path) {
    let store = Store::open(dir).expect("layout");
    let l = layer();
    let ld = store.write_blob(&l).expect("layer");
    let cfg = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]}, "rootfs": {"type": "layers", "diff_ids": []}})).expect("json");
    let cd = store.write_blob(&cfg).expect("config");
    let m = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": l.len()}]}))
    .expect("json");
    let md = store.write_blob(&m).expect("manifest");
    store
        .tag(
            "hello",
            Descriptor {
                media_type: OCI_MANIFEST.into(),
                digest: md,
                size: m.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
        )
        .expect("tag");
}

fn start_registry(ns: &NetNs, dir: &std::path::Path, htpasswd: Option<&std::path::Path>) -> Child {
    skiff_testkit::registry::start(ns, dir, htpasswd).expect("the registry")
}

#[test]
fn images_are_pulled_from_a_registry_and_verified() {
    if !require_privileges("the registry pull test") {
        return;
    }
    let ns = NetNs::new("skreg").expect("netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let _registry = start_registry(&ns, dir.path(), None);
    let src = dir.path().join("src");
    source_layout(&src);
    ns.exec(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:hello", src.display()),
            "docker://127.0.0.1:5000/team/hello:1",
        ],
    )
    .expect("skopeo push");

    let store_dir = dir.path().join("store");
    let result = ns
        .enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let images = Images::open(&store_dir, vec![]).expect("store");
                let (progress, watched) = tokio::sync::watch::channel(PullState::default());
                let (img, how) = images.ensure_with("127.0.0.1:5000/team/hello:1", None, &[], Some(&progress)).await?;
                assert!(matches!(how, Obtained::Pulled(_)), "{how:?}");
                // the pull published its progress: config and layer fetched, every byte counted
                let p = *watched.borrow();
                assert!(p.started, "{p:?}");
                assert_eq!((p.blobs_done, p.blobs_total), (2, 2), "{p:?}");
                assert_eq!(p.bytes_done, p.bytes_total, "{p:?}");
                assert!(p.bytes_total > 0, "{p:?}");
                assert_eq!(img.reference, "127.0.0.1:5000/team/hello:1");
                assert_eq!(img.run.cmd, Some(vec!["/bin/true".to_string()]));
                let dirs = images.layers(&img).await?;
                assert_eq!(
                    std::fs::read_to_string(dirs[0].join("hello.txt")).expect("unpacked"),
                    "pulled over the wire\n"
                );
                let (_, again) = images.ensure("127.0.0.1:5000/team/hello:1", None).await?;
                assert_eq!(again, Obtained::Present, "IfNotPresent does not pull twice");
                let (by_digest, _) =
                    images.ensure(&format!("127.0.0.1:5000/team/hello@{}", img.manifest_digest), None).await?;
                assert_eq!(by_digest.manifest_digest, img.manifest_digest);
                let missing = images.ensure("127.0.0.1:5000/team/nope:1", None).await;
                assert!(matches!(missing, Err(ImageError::NotFound(_))), "{missing:?}");
                let unreachable = images.ensure("127.0.0.1:5999/team/hello:1", None).await;
                assert!(matches!(unreachable, Err(ImageError::Unreachable(_))), "{unreachable:?}");
                Ok::<_, ImageError>(layers::overlay_options(
                    &dirs,
                    std::path::Path::new("/u"),
                    std::path::Path::new("/w"),
                ))
            })
        })
        .expect("inside the namespace");
    let opts = result.expect("pull");
    assert!(opts.starts_with("lowerdir="), "{opts}");
}

#[test]
fn private_images_need_their_pull_secret() {
    if !require_privileges("the private registry test") {
        return;
    }
    let ns = NetNs::new("skprv").expect("netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = bcrypt::hash("s3cret-pull", 4).expect("bcrypt");
    std::fs::write(dir.path().join("htpasswd"), format!("puller:{hash}\n")).expect("htpasswd");
    let _registry = start_registry(&ns, dir.path(), Some(&dir.path().join("htpasswd")));
    let src = dir.path().join("src");
    source_layout(&src);
    for tag in ["1", "2"] {
        let dest = format!("docker://127.0.0.1:5000/private/hello:{tag}");
        let args = ["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", "puller:s3cret-pull"];
        ns.exec("skopeo", &[&args[..], &[&format!("oci:{}:hello", src.display()), &dest]].concat())
            .expect("skopeo push with credentials");
    }
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let good = serde_json::json!({"auths": {"127.0.0.1:5000": {"auth": b64("puller:s3cret-pull")}}});
    let wrong = serde_json::json!({"auths": {"127.0.0.1:5000": {"username": "puller", "password": "guess"}}});
    let elsewhere = serde_json::json!({"auths": {"registry.example.com": {"auth": b64("puller:s3cret-pull")}}});
    let store_dir = dir.path().join("store");
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let images = Images::open(&store_dir, vec![]).expect("store");
            let image = "127.0.0.1:5000/private/hello:1";
            for (what, configs) in
                [("no secret", vec![]), ("wrong password", vec![wrong]), ("another registry's", vec![elsewhere])]
            {
                let r = images.ensure_with(image, None, &configs, None).await;
                assert!(matches!(r, Err(ImageError::Unauthorized(_))), "{what}: {r:?}");
            }
            let (img, how) = images.ensure_with(image, None, &[good], None).await.expect("pulled with the secret");
            assert!(matches!(how, Obtained::Pulled(_)), "{how:?}");
            assert_eq!(img.run.cmd, Some(vec!["/bin/true".to_string()]));
            // a later pull without the secret (another pod's) is not served with the earlier pull's credentials
            let r = images.ensure_with("127.0.0.1:5000/private/hello:2", None, &[], None).await;
            assert!(matches!(r, Err(ImageError::Unauthorized(_))), "credentials carried over: {r:?}");
        });
    })
    .expect("inside the namespace");
}

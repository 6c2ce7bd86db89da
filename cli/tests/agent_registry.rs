//! Private images pulled by pods, end to end: Debian's docker-registry behind htpasswd authentication on the node's
//! loopback holds the built-in echo image (pushed with skopeo). A pod without credentials waits in ErrImagePull or
//! ImagePullBackOff; a `kubectl create secret docker-registry` Secret named by the pod, or by its ServiceAccount's
//! `imagePullSecrets`, lets the agent pull and run it, and the pod's Events say `Pulling` and `Pulled`.
//!
//! Needs root (network namespaces, runc, cgroups), the built-in images of `scripts/setup`, and the docker-registry
//! and skopeo packages.

mod agent_support;

use std::time::Duration;

use agent_support::*;
use skiff_testkit::Child;
use skiff_testkit::cluster::{Cluster, ClusterConfig};

const USER: &str = "puller";
const PASSWORD: &str = "s3cret-pull";

/// The registry in node 0's namespace on 127.0.0.1:5000, behind htpasswd, holding the echo image as
/// `private/echo:{1,2,3}`.
fn start_registry(c: &Cluster, dir: &std::path::Path) -> Child {
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).expect("htpasswd");
    let ns = &c.nodes[0].ns;
    let registry = skiff_testkit::registry::start(ns, dir, Some(&htpasswd)).expect("the registry");
    for tag in ["1", "2", "3"] {
        ns.exec(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                "oci:/var/lib/skiff/images:docker.io/skiff/echo:v1",
                &format!("docker://127.0.0.1:5000/private/echo:{tag}"),
            ],
        )
        .expect("skopeo push with credentials");
    }
    registry
}

fn private_pod(name: &str, tag: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{extra}  containers:\n  - name: web\n    image: 127.0.0.1:5000/private/echo:{tag}\n"
    )
}

/// The (reason, message) of the pod's Events.
fn events(c: &Cluster, pod: &str) -> Vec<(String, String)> {
    let out = kubectl(c, &["get", "events", "--field-selector", &format!("involvedObject.name={pod}"), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("events JSON");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["reason"].as_str().unwrap_or_default().into(), e["message"].as_str().unwrap_or_default().into()))
        .collect()
}

/// Waits until the pod has both a `Pulling` and a `Pulled` Event for `image` (events are posted in the background,
/// concurrently, with timestamps to the second: their order is not observable).
fn pulling_and_pulled(c: &Cluster, pod: &str, image: &str) {
    let found = skiff_testkit::cluster::wait_for(Duration::from_secs(15), "Pulling and Pulled events", || {
        let ev = events(c, pod);
        let pulling = ev.iter().any(|(r, m)| r == "Pulling" && m == &format!("Pulling image {image:?}"));
        let pulled =
            ev.iter().any(|(r, m)| r == "Pulled" && m.starts_with(&format!("Successfully pulled image {image:?}")));
        (pulling && pulled).then_some(())
    });
    if found.is_err() {
        fail(c, &format!("pod {pod}: no Pulling and Pulled events for {image}: {:?}", events(c, pod)));
    }
}

#[test]
fn private_images_are_pulled_with_the_pods_or_the_service_accounts_secret() {
    if !skiff_testkit::require_privileges("the private registry end-to-end test") {
        return;
    }
    // A store of the test's own, so that every run pulls (the shared one would keep what an earlier run pulled).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ClusterConfig::new(env!("CARGO_BIN_EXE_skiff").into(), 1);
    cfg.image_store = dir.path().join("store");
    let c = Cluster::start(cfg).expect("starting the cluster");
    let _registry = start_registry(&c, dir.path());

    step("no credentials: the pull is refused");
    apply(&c, &private_pod("anonymous", "1", ""));
    let p = wait_pod(&c, "anonymous", Duration::from_secs(60), "ErrImagePull", |p| {
        container_status(p, "web")
            .and_then(|s| s.pointer("/state/waiting/reason").and_then(|r| r.as_str()).map(str::to_string))
            .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    });
    let message = container_status(&p, "web")
        .and_then(|s| s.pointer("/state/waiting/message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_default();
    if !message.contains("unauthorized") && !message.contains("Back-off") {
        fail(&c, &format!("the refused pull says {message:?}"));
    }

    step("the pod names the Secret");
    kubectl(
        &c,
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "--docker-server=127.0.0.1:5000",
            &format!("--docker-username={USER}"),
            &format!("--docker-password={PASSWORD}"),
        ],
    );
    apply(&c, &private_pod("with-secret", "2", "  imagePullSecrets: [{name: regcred}]\n"));
    wait_ready(&c, "with-secret");
    pulling_and_pulled(&c, "with-secret", "127.0.0.1:5000/private/echo:2");

    step("the ServiceAccount names the Secret");
    apply(&c, "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: puller}\nimagePullSecrets: [{name: regcred}]\n");
    apply(&c, &private_pod("via-account", "3", "  serviceAccountName: puller\n"));
    let p = wait_ready(&c, "via-account");
    assert_eq!(p.pointer("/spec/imagePullSecrets/0/name").and_then(|n| n.as_str()), Some("regcred"));
    pulling_and_pulled(&c, "via-account", "127.0.0.1:5000/private/echo:3");

    let _ = c.kubectl(&["delete", "pods", "--all", "--wait=false"]);
}

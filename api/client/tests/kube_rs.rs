//! kube-rs (the client and runtime Skiff's components use) against Skiff's API server: list, watch, patch,
//! server-side apply and the status subresource.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

async fn server() -> (skiff_control::server::RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = skiff_control::server::ServerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("address"),
        advertise: None,
        extra_names: Vec::new(),
        datastore: skiff_control::server::Datastore::Sqlite,
        token: None,
        compaction_interval: Duration::from_secs(300),
        event_ttl: Duration::from_secs(3600),
        controllers: None,
        limits: Default::default(),
    };
    (skiff_control::server::start(cfg).await.expect("server starts"), dir)
}

fn deployment(name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}}}
    }))
    .expect("a deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_watches_patches_applies_and_writes_status() {
    let (s, _dir) = server().await;
    let client = skiff_client::connect(&s.kubeconfig).await.expect("client");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");

    // create and list
    deploys.create(&PostParams::default(), &deployment("a", "nginx:1")).await.expect("create");
    let list = deploys.list(&ListParams::default().labels("")).await.expect("list");
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some_and(|rv| !rv.is_empty()));

    // a watcher sees the initial object and later changes
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "w"}, "data": {"k": "v1"}})).expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("create cm");
    let saw = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.try_next().await.expect("watch stream") {
            let objs: Vec<ConfigMap> = match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                _ => vec![],
            };
            if objs.iter().any(|o| o.metadata.name.as_deref() == Some("w")) {
                return true;
            }
        }
        false
    })
    .await
    .expect("the watcher sees the ConfigMap within 10 s");
    assert!(saw);

    // strategic merge patch, merge patch
    let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}});
    let d = deploys.patch("a", &PatchParams::default(), &Patch::Strategic(&p)).await.expect("smp");
    assert_eq!(
        d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map(|s| s.containers[0].image.clone()),
        Some(Some("nginx:2".into()))
    );
    assert_eq!(d.metadata.generation, Some(2));
    let d = deploys
        .patch("a", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"x": "y"}}})))
        .await
        .expect("merge");
    assert_eq!(d.metadata.labels.as_ref().and_then(|l| l.get("x")).map(String::as_str), Some("y"));
    assert_eq!(d.metadata.generation, Some(2), "a metadata change does not bump the generation");

    // server-side apply creates, then owns its fields; another manager's change conflicts
    let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "b"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "b"}}, "template": {"metadata": {"labels": {"app": "b"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    let b =
        deploys.patch("b", &PatchParams::apply("skiff-test"), &Patch::Apply(&applied)).await.expect("apply creates");
    assert_eq!(b.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert!(
        b.metadata
            .managed_fields
            .as_ref()
            .is_some_and(|m| m.iter().any(|e| e.manager.as_deref() == Some("skiff-test")))
    );
    let other =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "b"}, "spec": {"replicas": 5}});
    let err =
        deploys.patch("b", &PatchParams::apply("someone-else"), &Patch::Apply(&other)).await.expect_err("conflict");
    match err {
        kube::Error::Api(s) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("expected a 409, got {other:?}"),
    }
    let forced = deploys
        .patch("b", &PatchParams::apply("someone-else").force(), &Patch::Apply(&other))
        .await
        .expect("forced apply");
    assert_eq!(forced.spec.as_ref().and_then(|s| s.replicas), Some(5));

    // the status subresource writes status only; the main resource ignores status
    let st = json!({"status": {"replicas": 7, "observedGeneration": 1}});
    let d = deploys.patch_status("b", &PatchParams::default(), &Patch::Merge(&st)).await.expect("status patch");
    assert_eq!(d.status.as_ref().and_then(|s| s.replicas), Some(7));
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(5));
    let d = deploys
        .patch("b", &PatchParams::default(), &Patch::Merge(&json!({"status": {"replicas": 1}})))
        .await
        .expect("main patch");
    assert_eq!(
        d.status.as_ref().and_then(|s| s.replicas),
        Some(7),
        "status changes through the main resource are ignored"
    );
}

/// The established TCP connections whose local end is `port` on 127.0.0.1: the server's ends of its connections.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    // columns: sl, local_address, rem_address, st (01: ESTABLISHED), …
    table
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some(&local) && l.split_whitespace().nth(3) == Some("01"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_requests_and_watches_share_one_connection() {
    let (s, _dir) = server().await;
    let before = connections_to(s.addr.port());
    let client = skiff_client::connect(&s.kubeconfig).await.expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.list(&ListParams::default()).await.expect("the first request connects");
    // a watch held open, and a burst of concurrent requests beside it: over HTTP/1.1 each needs its own connection
    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    events.try_next().await.expect("the watch starts");
    let burst = (0..50).map(|i| {
        let cms = cms.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("b{i}")}})).expect("cm");
            cms.create(&PostParams::default(), &cm).await
        }
    });
    for created in futures::future::join_all(burst).await {
        created.expect("created");
    }
    assert_eq!(connections_to(s.addr.port()), before + 1, "connections of one client after a burst beside a watch");
    drop(events);
}

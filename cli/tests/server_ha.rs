//! The HA control plane (issue 15): a 3-member etcd cluster serving TLS with client certificates, three `skiff
//! server`s joined with the server token (leader election with a 4 s lease), a client writing ConfigMaps through all
//! three without pause. Secrets and custom objects written through each server are read through the others. The
//! leader server is killed (SIGKILL) while a Deployment is scaled: no acknowledged write is lost, the controllers act
//! again on another server (the time from the kill is printed), and kubectl through the others keeps working; then
//! an etcd member is killed the same way and writes go on. (No node agents here: pods are created and scheduled
//! nowhere; `cli/tests/cluster_ha.rs` runs the same kill with real nodes and pods.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};

mod server_support;

use server_support::{Server, free_port};

async fn connect(kubeconfig: &Path) -> kube::Client {
    server_support::connect(kubeconfig, Duration::from_secs(60)).await
}

/// Polls `check` every 100 ms until it holds, for at most `limit`; how long it took.
async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).expect("write");
    p
}

async fn pods(c: &kube::Client) -> usize {
    let api: Api<Pod> = Api::namespaced(c.clone(), "default");
    api.list(&ListParams::default().labels("app=web")).await.map(|l| l.items.len()).unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_server_and_an_etcd_member_die_under_load_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let etcd_pki = skiff_control::pki::Pki::load_or_create(&dir.join("etcd-pki"), &[]).expect("etcd's PKI");
    let client_pair = etcd_pki.issue_client("skiff-apiserver", None).expect("client certificate");
    let ca = write(dir, "etcd-ca.crt", &etcd_pki.ca.cert_pem);
    let member_cert = write(dir, "etcd.crt", &etcd_pki.server.cert_pem);
    let member_key = write(dir, "etcd.key", &etcd_pki.server.key_pem);
    let cert = write(dir, "client.crt", &client_pair.cert_pem);
    let key = write(dir, "client.key", &client_pair.key_pem);
    let tls = skiff_testkit::etcd::Tls { ca: &ca, cert: &member_cert, key: &member_key };
    let mut members = match skiff_testkit::etcd::start_cluster(dir, 3, Some(tls)) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !skiff_testkit::is_ci() => {
            return eprintln!("skipping: {e}");
        }
        Err(e) => panic!("starting etcd: {e}"),
    };
    let endpoints: Vec<String> = members.iter().map(|m| format!("127.0.0.1:{}", m.port)).collect();
    let datastore = format!("etcd://{}", endpoints.join(","));

    let port = free_port();
    let addrs: Vec<String> = (2..5).map(|i| format!("127.0.0.{i}:{port}")).collect();
    let dirs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("server-{i}"))).collect();
    // Each server's warnings and errors go to a file, shown when a step through the servers fails.
    let log_of = |i: usize| dir.join(format!("server-{i}.log"));
    let logs = || {
        (0..3)
            .map(|i| {
                let text = std::fs::read_to_string(log_of(i)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- server {i}, last {} lines of its log:\n{}",
                    tail.len(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let server = |i: usize, token: Option<&str>| {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_of(i)).expect("a log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        cmd.args(["server", "--data-dir", &dirs[i].to_string_lossy(), "--listen", &addrs[i]])
            .args(["--datastore", &datastore, "--log", "warn"])
            .arg("--etcd-cafile")
            .arg(&ca)
            .arg("--etcd-certfile")
            .arg(&cert)
            .arg("--etcd-keyfile")
            .arg(&key)
            .args(["--leader-elect-lease-duration", "4s", "--leader-elect-renew-deadline", "3s"])
            .args(["--leader-elect-retry-period", "1s"]);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        Server(cmd.stdout(Stdio::null()).stderr(log).spawn().expect("skiff server starts"))
    };
    let mut servers = vec![Some(server(0, None))];
    let first = connect(&dirs[0].join("kubeconfig")).await;
    let token = std::fs::read_to_string(dirs[0].join("pki/server-token")).expect("the first server's token");
    servers.push(Some(server(1, Some(token.trim()))));
    servers.push(Some(server(2, Some(token.trim()))));
    let mut clients = vec![first];
    for d in &dirs[1..] {
        clients.push(connect(&d.join("kubeconfig")).await);
    }

    // writes through each server are read through the others, Secrets included
    for (i, c) in clients.iter().enumerate() {
        let s: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("from-{i}")}, "stringData": {"v": format!("secret {i}")}
        }))
        .expect("secret");
        Api::<Secret>::namespaced(c.clone(), "default").create(&PostParams::default(), &s).await.expect("create");
    }
    for (i, c) in clients.iter().enumerate() {
        let other = (i + 1) % 3;
        let got = Api::<Secret>::namespaced(c.clone(), "default").get(&format!("from-{other}")).await.expect("read");
        let v = got.data.unwrap_or_default().get("v").map(|b| String::from_utf8_lossy(&b.0).into_owned());
        assert_eq!(v.as_deref(), Some(format!("secret {other}").as_str()));
    }

    // custom objects too: a CRD created through one server, an object of it written through each, read through the
    // next
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(clients[0].clone());
    let crd = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "gadgets.ha.example.com"},
        "spec": {"group": "ha.example.com", "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .expect("crd");
    crds.create(&PostParams::default(), &crd).await.expect("create the CRD");
    let resource = kube::discovery::ApiResource {
        group: "ha.example.com".into(),
        version: "v1".into(),
        api_version: "ha.example.com/v1".into(),
        kind: "Gadget".into(),
        plural: "gadgets".into(),
    };
    for (i, c) in clients.iter().enumerate() {
        let gadgets: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &resource);
        let gadget: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "ha.example.com/v1", "kind": "Gadget", "metadata": {"name": format!("g{i}")}, "spec": {"from": i}
        }))
        .expect("gadget");
        eventually(Duration::from_secs(10), "the CRD served by every server", async || {
            // a create applied whose answer was lost is done too
            match gadgets.create(&PostParams::default(), &gadget).await {
                Ok(_) => true,
                Err(kube::Error::Api(e)) => e.code == 409,
                Err(_) => false,
            }
        })
        .await;
    }
    for (i, c) in clients.iter().enumerate() {
        let other = (i + 1) % 3;
        let gadgets: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &resource);
        let got = gadgets.get(&format!("g{other}")).await.expect("a custom object written through another server");
        assert_eq!(got.data["spec"]["from"], other);
    }

    // a Deployment, its one pod made by the leader's controllers
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}}}
    }))
    .expect("deployment");
    Api::<Deployment>::namespaced(clients[1].clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
    eventually(Duration::from_secs(60), "the leader's controllers make the first pod", async || {
        pods(&clients[0]).await == 1
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(clients[0].clone(), "kube-system");
    let holder = leases
        .get("skiff-controller-manager")
        .await
        .expect("the leader Lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a holder");
    let leader = addrs.iter().position(|a| holder.ends_with(&format!("_{a}"))).expect("the holder names a server");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    eprintln!("leader: server {leader} ({holder})");

    // a client writing ConfigMaps through all three servers, round robin, recording what was acknowledged
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (clients, stop) = (clients.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0usize);
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) && i < 100_000 {
                let name = format!("w-{i}");
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name}, "data": {"i": i.to_string()}
                }))
                .expect("configmap");
                let api: Api<ConfigMap> = Api::namespaced(clients[i % 3].clone(), "default");
                match tokio::time::timeout(Duration::from_secs(3), api.create(&PostParams::default(), &cm)).await {
                    Ok(Ok(_)) => acked.push(name),
                    _ => failed += 1,
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // the leader dies; the Deployment is scaled through another server at once
    servers[leader] = None;
    let killed = Instant::now();
    let via = &clients[survivors[0]];
    let deployments: Api<Deployment> = Api::namespaced(via.clone(), "default");
    let scale = serde_json::json!({"spec": {"replicas": 3}});
    eventually(Duration::from_secs(10), "the scale accepted by a surviving server", async || {
        deployments.patch("web", &PatchParams::default(), &Patch::Merge(&scale)).await.is_ok()
    })
    .await;
    eventually(Duration::from_secs(60), "the controllers act again on another server", async || pods(via).await == 3)
        .await;
    let back = killed.elapsed();
    eprintln!("controllers acted again {back:?} after the leader was killed (lease 4 s, retry 1 s)");
    let new_holder = leases_of(via).await;
    assert!(!new_holder.ends_with(&format!("_{}", addrs[leader])), "a new leader: {new_holder}");

    // kubectl through the surviving servers
    for i in &survivors {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", dirs[*i].join("kubeconfig"))
            .args(["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"])
            .output()
            .expect("kubectl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "3", "{}", String::from_utf8_lossy(&out.stderr));
    }

    // an etcd member dies too: writes go on through the other two
    let acked_before = count_configmaps(via).await;
    drop(members.remove(0));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = writer.await.expect("the writer");
    let listed = Api::<ConfigMap>::namespaced(via.clone(), "default").list(&ListParams::default()).await;
    let stored: std::collections::BTreeSet<String> = listed
        .unwrap_or_else(|e| panic!("list through a surviving server, one etcd member down: {e}\n{}", logs()))
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    eprintln!(
        "writes: {} acknowledged, {failed} failed or unanswered, {} lost; {} acknowledged after the etcd member died",
        acked.len(),
        lost.len(),
        stored.len().saturating_sub(acked_before)
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(stored.len() > acked_before, "writes went on after an etcd member died");
    let _ = (&servers, &members);
}

async fn leases_of(c: &kube::Client) -> String {
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    leases
        .get("skiff-controller-manager")
        .await
        .ok()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .unwrap_or_default()
}

async fn count_configmaps(c: &kube::Client) -> usize {
    Api::<ConfigMap>::namespaced(c.clone(), "default")
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

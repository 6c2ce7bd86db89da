//! `skiff server` on an etcd member that serves TLS and asks for client certificates (`--etcd-cafile`,
//! `--etcd-certfile`, `--etcd-keyfile`): objects, a Secret included, are written and read back through it, and Events
//! expire after `--event-ttl`; a server without the client certificate, or without TLS, does not start.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{Api, PostParams};

mod server_support;

use server_support::{Server, exits, free_port};

fn server(dir: &std::path::Path, port: u16, datastore: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["server", "--data-dir", &dir.to_string_lossy(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--log", "warn"])
        .args(datastore);
    cmd
}

async fn client(dir: &std::path::Path) -> kube::Client {
    server_support::connect(&dir.join("kubeconfig"), Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reaches_etcd_over_tls_with_its_client_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = skiff_control::pki::Pki::load_or_create(&dir.path().join("etcd-pki"), &[]).expect("etcd's PKI");
    let client_pair = pki.issue_client("skiff-apiserver", None).expect("client certificate");
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).expect("write");
        p.to_string_lossy().into_owned()
    };
    let ca = write("etcd-ca.crt", &pki.ca.cert_pem);
    let (member_cert, member_key) = (write("etcd.crt", &pki.server.cert_pem), write("etcd.key", &pki.server.key_pem));
    let (cert, key) = (write("client.crt", &client_pair.cert_pem), write("client.key", &client_pair.key_pem));
    let tls = skiff_testkit::etcd::Tls {
        ca: std::path::Path::new(&ca),
        cert: std::path::Path::new(&member_cert),
        key: std::path::Path::new(&member_key),
    };
    let etcd = match skiff_testkit::etcd::start(dir.path(), Some(tls)) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !skiff_testkit::is_ci() => {
            return eprintln!("skipping: {e}");
        }
        Err(e) => panic!("starting etcd: {e}"),
    };
    let datastore = format!("etcd://127.0.0.1:{}", etcd.port);

    let data = dir.path().join("server");
    let tls_flags = [
        "--datastore",
        &datastore,
        "--etcd-cafile",
        &ca,
        "--etcd-certfile",
        &cert,
        "--etcd-keyfile",
        &key,
        "--event-ttl",
        "2s",
    ];
    let mut cmd = server(&data, free_port(), &tls_flags);
    let _server = Server(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("skiff server starts"));
    let c = client(&data).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "over-tls"}, "data": {"k": "v"}}))
            .expect("configmap");
    cms.create(&PostParams::default(), &cm).await.expect("create a ConfigMap");
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "default");
    let s: Secret =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "over-tls"}, "stringData": {"p": "w"}}))
            .expect("secret");
    secrets.create(&PostParams::default(), &s).await.expect("create a Secret");
    let got = cms.get("over-tls").await.expect("read the ConfigMap back");
    assert_eq!(got.data.unwrap_or_default().get("k").map(String::as_str), Some("v"));
    let got = secrets.get("over-tls").await.expect("read the Secret back");
    assert_eq!(got.data.unwrap_or_default().get("p").map(|b| b.0.as_slice()), Some(&b"w"[..]));

    // an Event is gone once its 2 s (plus at most the 2 s its lease is reused) have passed; the ConfigMap stays
    let events: Api<Event> = Api::namespaced(c, "default");
    let ev: Event = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "short-lived"},
        "involvedObject": {"kind": "ConfigMap", "namespace": "default", "name": "over-tls"},
        "reason": "Testing", "message": "expires", "type": "Normal"
    }))
    .expect("event");
    let created = Instant::now();
    events.create(&PostParams::default(), &ev).await.expect("create an Event");
    while events.get_opt("short-lived").await.expect("read the Event").is_some() {
        assert!(created.elapsed() < Duration::from_secs(20), "the Event outlived its TTL by far");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(created.elapsed() >= Duration::from_secs(2), "the Event lived its TTL: {:?}", created.elapsed());
    assert!(cms.get_opt("over-tls").await.expect("read").is_some(), "other objects do not expire");

    // refused by etcd: no client certificate; no TLS at all
    for (what, flags) in [
        ("no client certificate", vec!["--datastore", &datastore, "--etcd-cafile", &ca]),
        ("no TLS", vec!["--datastore", &datastore]),
    ] {
        let (status, err) = exits(server(&dir.path().join(what.replace(' ', "-")), free_port(), &flags));
        assert!(!status.success(), "{what}: the server started ({status})");
        assert!(err.contains("etcd"), "{what}: the error names the datastore: {err}");
    }
}

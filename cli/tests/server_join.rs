//! Two `skiff server`s on one etcd serve one cluster (issue 15): the second joins with the first's server token and
//! takes the cluster's CA, service-account key, node token and Secret encryption keys from the datastore, so a
//! credential, a Secret or a service-account token made through one works through the other; a CRD created through
//! one is served by the other without a restart; the `kubernetes` endpoints list both servers and drop one that
//! dies; a node client given both fails over when one dies. A server with a wrong token, or none, refuses to join.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::discovery::ApiResource;

mod server_support;

use server_support::{Server, exits, free_port};

async fn connect(kubeconfig: &Path) -> kube::Client {
    server_support::connect(kubeconfig, Duration::from_secs(30)).await
}

fn server(dir: &Path, listen: &str, datastore: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["server", "--data-dir", &dir.to_string_lossy(), "--listen", listen, "--datastore", datastore])
        .args(["--log", "warn"]);
    cmd
}

/// Polls `check` every 200 ms until it holds, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    start.elapsed()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// kubectl as a bearer of `token` only (no kubeconfig credentials), against `server`.
fn kubectl_with_token(dir: &Path, server: &str, ca: &Path, token: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
        .args(["--server", server, "--certificate-authority", &ca.to_string_lossy(), "--token", token])
        .args(args)
        .output()
        .expect("kubectl runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_joining_with_the_token_serve_one_cluster() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let etcd = match skiff_testkit::etcd::start(dir, None) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !skiff_testkit::is_ci() => {
            return eprintln!("skipping: {e}");
        }
        Err(e) => panic!("starting etcd: {e}"),
    };
    let datastore = format!("etcd://127.0.0.1:{}", etcd.port);
    // two loopback addresses, one port: the `kubernetes` endpoints of a real cluster
    let port = free_port();
    let (addr_a, addr_b) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    let (a, b) = (dir.join("a"), dir.join("b"));

    let _server_a =
        Server(server(&a, &addr_a, &datastore).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("server a"));
    let client_a = connect(&a.join("kubeconfig")).await;
    let token = read(a.join("pki/server-token"));
    assert!(token.trim().starts_with("skiff-server."), "the first server made a token: {token}");

    // wrong token, or none: refused before anything is written
    let (ok, err) = exits({
        let mut c = server(&dir.join("c"), "127.0.0.4:0", &datastore);
        c.args(["--token", "skiff-server.guessed"]);
        c
    });
    assert!(!ok.success() && err.contains("not this one"), "{err}");
    assert!(!dir.join("c/pki/ca.crt").exists(), "a refused server writes no CA");
    let (ok, err) = exits(server(&dir.join("d"), "127.0.0.4:0", &datastore));
    assert!(!ok.success() && err.contains("no token") && err.contains("--token"), "{err}");

    let mut server_b = Server(
        server(&b, &addr_b, &datastore)
            .args(["--token", token.trim()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server b"),
    );
    let _client_b = connect(&b.join("kubeconfig")).await;
    for shared in ["ca.crt", "ca.key", "sa.key", "node-token", "encryption-keys"] {
        assert_eq!(read(a.join("pki").join(shared)), read(b.join("pki").join(shared)), "{shared} differs");
    }
    assert_ne!(read(a.join("pki/apiserver.crt")), read(b.join("pki/apiserver.crt")), "each serves its own");

    // the first server's admin credentials, pointed at the second
    let kubeconfig = read(a.join("kubeconfig")).replace(&format!("https://{addr_a}"), &format!("https://{addr_b}"));
    assert!(kubeconfig.contains(&addr_b));
    std::fs::write(dir.join("a-on-b.kubeconfig"), kubeconfig).expect("write");
    let a_on_b = connect(&dir.join("a-on-b.kubeconfig")).await;

    // a Secret written through one server opens through the other (the same encryption keys)
    let secret: Secret =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "shared"}, "stringData": {"p": "w0rd"}}))
            .expect("secret");
    Api::<Secret>::namespaced(client_a.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .expect("create");
    let got = Api::<Secret>::namespaced(a_on_b.clone(), "default").get("shared").await.expect("read through b");
    assert_eq!(got.data.unwrap_or_default().get("p").map(|b| b.0.as_slice()), Some(&b"w0rd"[..]));

    // a service-account token issued by one server is valid on the other: forbidden (authenticated), not
    // unauthorized; a token of another signer is unauthorized
    let ca = a.join("pki/ca.crt");
    let mut sa_token = String::new();
    eventually(Duration::from_secs(30), "a token for default/default", async || {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", a.join("kubeconfig"))
            .args(["create", "token", "default", "-n", "default"])
            .output()
            .expect("kubectl runs");
        sa_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        out.status.success()
    })
    .await;
    let url_b = format!("https://{addr_b}");
    let (ok, said) = kubectl_with_token(dir, &url_b, &ca, &sa_token, &["get", "secrets", "-n", "kube-system"]);
    assert!(!ok && said.contains("system:serviceaccount:default:default") && said.contains("forbidden"), "{said}");
    let forged = format!("{}x", &sa_token[..sa_token.len() - 1]);
    let (ok, said) = kubectl_with_token(dir, &url_b, &ca, &forged, &["get", "secrets", "-n", "kube-system"]);
    assert!(!ok && said.contains("Unauthorized"), "{said}");

    // a CRD created through one server is served by the other, and gone from it once deleted
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client_a.clone());
    let crd = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "widgets.join.example.com"},
        "spec": {"group": "join.example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .expect("crd");
    crds.create(&PostParams::default(), &crd).await.expect("create the CRD through a");
    let resource = ApiResource {
        group: "join.example.com".into(),
        version: "v1".into(),
        api_version: "join.example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::namespaced_with(a_on_b.clone(), "default", &resource);
    let widget: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "join.example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}
    }))
    .expect("widget");
    let took = eventually(Duration::from_secs(10), "the CRD served by b", async || {
        widgets.create(&PostParams::default(), &widget).await.is_ok()
    })
    .await;
    eprintln!("b served the CRD created through a after {took:?}");
    let from_a: Api<DynamicObject> = Api::namespaced_with(client_a.clone(), "default", &resource);
    assert_eq!(from_a.get("w1").await.expect("read through a").data["spec"]["size"], 3);
    crds.delete("widgets.join.example.com", &DeleteParams::default()).await.expect("delete the CRD through a");
    eventually(
        Duration::from_secs(10),
        "the deleted CRD gone from b",
        async || matches!(widgets.list(&Default::default()).await, Err(kube::Error::Api(e)) if e.code == 404),
    )
    .await;

    // the `kubernetes` endpoints: both servers, then only the live one once b is killed
    let slices: Api<EndpointSlice> = Api::namespaced(client_a.clone(), "default");
    let addresses = async || -> Vec<String> {
        let Ok(s) = slices.get("kubernetes").await else { return Vec::new() };
        assert_eq!(s.ports.unwrap_or_default().first().and_then(|p| p.port), Some(i32::from(port)));
        s.endpoints.iter().flat_map(|e| e.addresses.clone()).collect()
    };
    eventually(Duration::from_secs(15), "both servers in the kubernetes endpoints", async || {
        addresses().await == ["127.0.0.2", "127.0.0.3"]
    })
    .await;
    // a node client given both servers, b first: it joins (its certificate asked for through b), and once b is
    // killed its next request fails and the one after reaches a
    let node_token = read(a.join("pki/node-token"));
    let servers = [url_b.clone(), format!("https://{addr_a}")];
    let node = skiff_agent::bootstrap::connect_node(
        &servers,
        node_token.trim(),
        &read(ca.clone()),
        "join-node",
        &dir.join("node-pki"),
        None,
    )
    .await
    .expect("the node joins through b");
    node.apiserver_version().await.expect("the node client reaches b");
    let _ = server_b.0.kill();
    let _ = server_b.0.wait();
    let mut attempts = 0;
    while attempts < 5 {
        attempts += 1;
        if node.apiserver_version().await.is_ok() {
            break;
        }
    }
    assert!((2..=3).contains(&attempts), "the node client failed over to a after {attempts} attempts (at most 3)");
    // its last renewal is seen within one renewal period, it is out a lease later, written at the next pass
    let limit = skiff_control::apiserver_endpoints::LEASE_DURATION + 3 * skiff_control::apiserver_endpoints::RENEW;
    let took = eventually(limit, "the dead server dropped from the endpoints within its lease", async || {
        addresses().await == ["127.0.0.2"]
    })
    .await;
    eprintln!("b left the kubernetes endpoints {took:?} after it was killed");
}

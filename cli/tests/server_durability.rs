//! A `skiff server` killed with SIGKILL while clients write restarts with every write it acknowledged.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};

mod server_support;

use server_support::{Server, free_port};

fn start(dir: &std::path::Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "server",
            "--data-dir",
            &dir.to_string_lossy(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("skiff server starts");
    Server(child)
}

async fn client(dir: &std::path::Path, port: u16) -> kube::Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = skiff_client::connect(&dir.join("kubeconfig")).await
            && c.apiserver_version().await.is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return c;
        }
        assert!(Instant::now() < deadline, "the server did not come up within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut server = start(dir.path(), port);
    let c = client(dir.path(), port).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let name = format!("w{w}-{i}");
                let cm: ConfigMap = serde_json::from_value(
                    serde_json::json!({"metadata": {"name": name}, "data": {"i": i.to_string()}}),
                )
                .expect("cm");
                match api.create(&PostParams::default(), &cm).await {
                    Ok(_) => acked.lock().expect("lock").push(name),
                    Err(_) => return,
                }
            }
        }));
    }
    // let writes flow, then kill the server in the middle of them
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().expect("lock").len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Child::kill sends SIGKILL to our own child, by pid
    server.0.kill().expect("SIGKILL the server");
    let _ = server.0.wait();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let acknowledged = acked.lock().expect("lock").clone();
    assert!(acknowledged.len() >= 300, "only {} writes were acknowledged before the kill", acknowledged.len());
    drop(server);
    let _server = start(dir.path(), port);
    let c = client(dir.path(), port).await;
    let api: Api<ConfigMap> = Api::namespaced(c, "default");
    let stored: std::collections::HashSet<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|cm| cm.metadata.name)
        .collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes were lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
}

//! One API server against three, on one etcd member (issue 15): ConfigMap creates by 16 concurrent clients spread
//! over the servers, and watch fan-out — 300 watchers spread over the servers, each receiving every one of 200
//! events — with the number of etcd watchers the servers hold (the watch cache: one per resource type per server).
//! Then 100 simulated nodes (Leases renewed as kubelets do; ten of them tainted) and a Deployment of 500 pods
//! requesting CPU: the time from its creation until every pod is bound, with the placement checked (none on a
//! tainted node, no node over its CPU). Release `skiff server`s; run with `scripts/bench-ha`. Prints the load
//! average beside the figures.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};

#[path = "../tests/server_support/mod.rs"]
mod server_support;
#[path = "../tests/simulated_nodes/mod.rs"]
mod simulated_nodes;

use server_support::Server;

async fn connect(kubeconfig: &Path) -> kube::Client {
    server_support::connect(kubeconfig, Duration::from_secs(60)).await
}

fn start(dir: &Path, listen: &str, datastore: &str, token: Option<&str>) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["server", "--data-dir", &dir.to_string_lossy(), "--listen", listen, "--datastore", datastore])
        .args(["--log", "warn"]);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    Server(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("skiff server"))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn etcd_watchers(port: u16) -> u64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("etcd");
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.expect("request");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN) as u64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Figures {
    creates_per_s: f64,
    create_p99: Duration,
    deliveries_per_s: f64,
    delivery_p99: Duration,
    etcd_watchers: u64,
    bound_per_s: f64,
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"payload": "x".repeat(512)}}))
        .expect("configmap")
}

async fn round(clients: &[kube::Client], etcd_port: u16, tag: &str) -> Figures {
    // creates: 16 workers, 3,000 ConfigMaps, worker w always through server w % n
    let total = 3000usize;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..16 {
        let (api, next) = (Api::<ConfigMap>::namespaced(clients[w % clients.len()].clone(), "default"), next.clone());
        let tag = tag.to_string();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return lat;
                }
                let t = Instant::now();
                api.create(&PostParams::default(), &cm(&format!("{tag}-{i}"))).await.expect("create");
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    lat.sort();
    let (creates_per_s, create_p99) = (total as f64 / elapsed.as_secs_f64(), percentile(&lat, 0.99));

    // fan-out: 300 watchers spread over the servers, 200 events each; latency from the create's acknowledgement
    let (watchers, events) = (300usize, 200usize);
    let rv = Api::<ConfigMap>::namespaced(clients[0].clone(), "default")
        .create(&PostParams::default(), &cm(&format!("{tag}-mark")))
        .await
        .expect("mark")
        .metadata
        .resource_version
        .expect("rv");
    let acked: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let ready = Arc::new(tokio::sync::Barrier::new(watchers + 1));
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let api = Api::<ConfigMap>::namespaced(clients[w % clients.len()].clone(), "default");
        let (rv, acked, ready, prefix) = (rv.clone(), acked.clone(), ready.clone(), format!("{tag}-fan-"));
        tasks.push(tokio::spawn(async move {
            let mut s = api.watch(&WatchParams::default().timeout(120), &rv).await.expect("watch").boxed();
            ready.wait().await;
            let mut lat = Vec::with_capacity(events);
            while lat.len() < events {
                match s.next().await {
                    Some(Ok(WatchEvent::Added(o))) => {
                        let name = o.metadata.name.unwrap_or_default();
                        if name.starts_with(&prefix) {
                            let at = acked.lock().expect("lock").get(&name).copied();
                            lat.push(at.map(|t| t.elapsed()).unwrap_or_default());
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("watch ended: {:?}", other.map(|r| r.map(|_| ()))),
                }
            }
            lat
        }));
    }
    ready.wait().await;
    let watching = etcd_watchers(etcd_port).await;
    let started = Instant::now();
    let api = Api::<ConfigMap>::namespaced(clients[0].clone(), "default");
    for i in 0..events {
        let name = format!("{tag}-fan-{i}");
        api.create(&PostParams::default(), &cm(&name)).await.expect("create");
        acked.lock().expect("lock").insert(name, Instant::now());
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("watcher"));
    }
    let elapsed = started.elapsed();
    lat.sort();
    Figures {
        creates_per_s,
        create_p99,
        deliveries_per_s: (watchers * events) as f64 / elapsed.as_secs_f64(),
        delivery_p99: percentile(&lat, 0.99),
        etcd_watchers: watching,
        bound_per_s: scheduling(clients).await,
    }
}

/// 100 simulated nodes, a Deployment of 500 pods; pods bound per second from the Deployment's creation, after
/// checking where they went.
async fn scheduling(clients: &[kube::Client]) -> f64 {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Node, Pod};
    let (nodes, tainted, replicas, per_pod_milli) = (100usize, 10usize, 500usize, 250u64);
    let names: Vec<String> = (0..nodes).map(|i| format!("sim-{i:03}")).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (first, first_done) = tokio::sync::oneshot::channel();
    let kubelets = {
        let (client, names, stop) = (clients[clients.len() - 1].clone(), names.clone(), stop.clone());
        tokio::spawn(async move {
            simulated_nodes::keep_leases(client, &names, stop, || {
                let _ = first.send(());
            })
            .await
        })
    };
    first_done.await.expect("the first Lease round");
    for (i, name) in names.iter().enumerate() {
        let api: Api<Node> = Api::all(clients[i % clients.len()].clone());
        let node: Node = serde_json::from_value(simulated_nodes::node(name, i < tainted)).expect("node");
        api.create(&PostParams::default(), &node).await.expect("create a simulated node");
    }
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "spread"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "spread"}},
            "template": {"metadata": {"labels": {"app": "spread"}},
                "spec": {"nodeSelector": {simulated_nodes::LABEL: "true"},
                    "containers": [{"name": "c", "image": "registry.invalid/c:1",
                        "resources": {"requests": {"cpu": format!("{per_pod_milli}m")}}}]}}}
    }))
    .expect("deployment");
    let started = Instant::now();
    Api::<Deployment>::namespaced(clients[0].clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
    let pods: Api<Pod> = Api::namespaced(clients[clients.len() - 1].clone(), "default");
    let placed = loop {
        let list = pods.list(&kube::api::ListParams::default().labels("app=spread")).await.expect("list pods");
        let on: Vec<String> = list.items.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
        if on.len() >= replicas {
            break on;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "{} of {replicas} pods bound after 300 s", on.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let renewals = kubelets.await.expect("the simulated kubelets");
    let mut per_node: std::collections::BTreeMap<&str, u64> = Default::default();
    for n in &placed {
        *per_node.entry(n.as_str()).or_default() += 1;
    }
    let on_tainted = placed.iter().filter(|n| names[..tainted].contains(n)).count();
    let capacity = simulated_nodes::CPU.parse::<u64>().expect("cpus") * 1000 / per_pod_milli;
    let fullest = per_node.values().copied().max().unwrap_or(0);
    assert_eq!(placed.len(), replicas);
    assert_eq!(on_tainted, 0, "pods on tainted nodes");
    assert!(fullest <= capacity, "a node holds {fullest} pods, room for {capacity}");
    assert!(per_node.keys().all(|n| names.iter().any(|m| m == n)), "pods bound to unknown nodes");
    println!(
        "  scheduling: {replicas} pods bound in {:.2} s over {} of {} untainted simulated nodes (at most {fullest} on \
         one, room for {capacity}; 0 on the {tainted} tainted); {renewals} Lease renewals",
        elapsed.as_secs_f64(),
        per_node.len(),
        nodes - tainted
    );
    replicas as f64 / elapsed.as_secs_f64()
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<10} creates {:>7.0}/s p99 {:>6.1} ms | fan-out {:>8.0} deliveries/s p99 {:>6.1} ms | etcd watchers {} \
         | {:>5.0} pods bound/s",
        f.creates_per_s,
        f.create_p99.as_secs_f64() * 1e3,
        f.deliveries_per_s,
        f.delivery_p99.as_secs_f64() * 1e3,
        f.etcd_watchers,
        f.bound_per_s
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("load average before: {}", load_average());
    let mut results = Vec::new();
    for servers in [1usize, 3] {
        let tmp = tempfile::tempdir().expect("temp dir");
        let etcd = skiff_testkit::etcd::start(tmp.path(), None).expect("etcd (scripts/setup installs it)");
        let datastore = format!("etcd://127.0.0.1:{}", etcd.port);
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let dirs: Vec<_> = (0..servers).map(|i| tmp.path().join(format!("s{i}"))).collect();
        let mut running = vec![start(&dirs[0], &format!("127.0.0.2:{port}"), &datastore, None)];
        let mut clients = vec![connect(&dirs[0].join("kubeconfig")).await];
        let token = std::fs::read_to_string(dirs[0].join("pki/server-token")).expect("token");
        for (i, d) in dirs.iter().enumerate().skip(1) {
            running.push(start(d, &format!("127.0.0.{}:{port}", i + 2), &datastore, Some(token.trim())));
            clients.push(connect(&d.join("kubeconfig")).await);
        }
        tokio::time::sleep(Duration::from_secs(3)).await; // leader elected, bootstrap writes done
        let f = round(&clients, etcd.port, &format!("r{servers}")).await;
        print(&format!("{servers} server{}", if servers == 1 { "" } else { "s" }), &f);
        results.push(f);
        drop(running);
    }
    let (one, three) = (&results[0], &results[1]);
    println!(
        "3 servers / 1 server: creates {:.2}x, fan-out deliveries {:.2}x, pods bound {:.2}x (one etcd member, 2 cores \
         shared by all)",
        three.creates_per_s / one.creates_per_s,
        three.deliveries_per_s / one.deliveries_per_s,
        three.bound_per_s / one.bound_per_s
    );
    println!("load average after: {}", load_average());
}

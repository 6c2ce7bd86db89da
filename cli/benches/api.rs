//! API server benchmark: create, get, list of 1,000 objects and watch fan-out, through HTTPS with kube-rs, against
//! a release `skiff server` with its SQLite datastore; plus the server's idle RSS; and the cost of authorization:
//! the same gets by a service account whose grant is found after walking 300 unrelated bindings, side by side with
//! a service account bound to cluster-admin first (token authentication is the same for both). Run with
//! `scripts/bench-api`.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use tokio::sync::Mutex;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, n: usize, elapsed: Duration, mut lat: Vec<Duration>) {
    lat.sort();
    println!(
        "{name:<28} {n:>6} ops  {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
        n as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"bench": "yes"}}, "data": {"key": "value", "payload": "x".repeat(512)}})).expect("cm")
}

async fn concurrent<F, Fut>(n: usize, workers: usize, f: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (f, next, lat) = (f.clone(), next.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let t = Instant::now();
                f(i).await;
                lat.lock().await.push(t.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let elapsed = start.elapsed();
    let lat = Arc::try_unwrap(lat).map(Mutex::into_inner).unwrap_or_default();
    (elapsed, lat)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, client) = support::Server::start(dir.path(), &[]).await;
    let pid = server.pid();
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("skiff server idle RSS: {} MiB", rss_kib(pid) / 1024);

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let n = 2000;
    let a = api.clone();
    let (el, lat) = concurrent(n, 16, move |i| {
        let a = a.clone();
        async move {
            a.create(&PostParams::default(), &cm(&format!("c{i}"))).await.expect("create");
        }
    })
    .await;
    report("create (16 concurrent)", n, el, lat);

    let a = api.clone();
    let (el, lat) = concurrent(5000, 16, move |i| {
        let a = a.clone();
        async move {
            a.get(&format!("c{}", i % n)).await.expect("get");
        }
    })
    .await;
    report("get (16 concurrent)", 5000, el, lat);

    // authorization: a service account granted through the last of many bindings vs one granted at once
    let rbac = |kind: &str, name: &str, ns: Option<&str>, extra: serde_json::Value| {
        let mut v =
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name}});
        if let Some(ns) = ns {
            v["metadata"]["namespace"] = serde_json::json!(ns);
        }
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
        v
    };
    let dynamic = |kind: &str, plural: &str, ns: Option<&str>| {
        let ar = kube::api::ApiResource {
            group: "rbac.authorization.k8s.io".into(),
            version: "v1".into(),
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        match ns {
            Some(ns) => Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &ar),
            None => Api::<kube::api::DynamicObject>::all_with(client.clone(), &ar),
        }
    };
    let create = |api: Api<kube::api::DynamicObject>, v: serde_json::Value| async move {
        api.create(&PostParams::default(), &serde_json::from_value(v).expect("object")).await.expect("create");
    };
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), "default");
    for name in ["walker", "admin-sa"] {
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("sa"),
        )
        .await
        .expect("service account");
    }
    let reader = serde_json::json!({"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]});
    create(dynamic("Role", "roles", Some("default")), rbac("Role", "cm-reader", Some("default"), reader)).await;
    for i in 0..200 {
        let b = serde_json::json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "User", "name": format!("someone-{i}")}]});
        create(
            dynamic("RoleBinding", "rolebindings", Some("default")),
            rbac("RoleBinding", &format!("noise-{i}"), Some("default"), b),
        )
        .await;
    }
    for i in 0..100 {
        let b = serde_json::json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "Group", "name": format!("team-{i}")}]});
        create(
            dynamic("ClusterRoleBinding", "clusterrolebindings", None),
            rbac("ClusterRoleBinding", &format!("noise-{i}"), None, b),
        )
        .await;
    }
    let walker = serde_json::json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "walker", "namespace": "default"}]});
    create(
        dynamic("RoleBinding", "rolebindings", Some("default")),
        rbac("RoleBinding", "zz-walker", Some("default"), walker),
    )
    .await;
    let admin = serde_json::json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "admin-sa", "namespace": "default"}]});
    create(
        dynamic("ClusterRoleBinding", "clusterrolebindings", None),
        rbac("ClusterRoleBinding", "aa-admin-sa", None, admin),
    )
    .await;
    let ca = std::fs::read_to_string(dir.path().join("pki/ca.crt")).expect("ca");
    let mut rates = Vec::new();
    for name in ["admin-sa", "walker"] {
        let tr: serde_json::Value = sas
            .create_subresource(
                "token",
                name,
                &PostParams::default(),
                &serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
            )
            .await
            .expect("token");
        let token = tr["status"]["token"].as_str().expect("token").to_string();
        let kc = dir.path().join(format!("{name}.kubeconfig"));
        let text = skiff_control::kubeconfig::render(
            "bench",
            &server.url,
            &ca,
            name,
            skiff_control::kubeconfig::Credential::Token(&token),
        );
        std::fs::write(&kc, text).expect("kubeconfig");
        let c = skiff_client::connect(&kc).await.expect("client");
        let a: Api<ConfigMap> = Api::namespaced(c, "default");
        let (el, lat) = concurrent(5000, 16, move |i| {
            let a = a.clone();
            async move {
                a.get(&format!("c{}", i % n)).await.expect("get");
            }
        })
        .await;
        rates.push(5000.0 / el.as_secs_f64());
        report(&format!("get as {name} (token)"), 5000, el, lat);
    }
    println!(
        "authorization through 300 unrelated bindings: {:.2}x the gets/s of a grant found first",
        rates[1] / rates[0]
    );

    let lp = ListParams::default().limit(1000);
    let a = api.clone();
    let (el, lat) = concurrent(50, 1, move |_| {
        let (a, lp) = (a.clone(), lp.clone());
        async move {
            let l = a.list(&lp).await.expect("list");
            assert_eq!(l.items.len(), 1000);
        }
    })
    .await;
    report("list 1000 objects", 50, el, lat);

    // watch fan-out: W watchers, E events; latency from the create's acknowledgement to each delivery
    let (watchers, events) = (100usize, 200usize);
    let wapi: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    let rv = wapi.list(&ListParams::default()).await.expect("list").metadata.resource_version.unwrap_or_default();
    let acks: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let delivered: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let (w, acks, delivered, rv) = (wapi.clone(), acks.clone(), delivered.clone(), rv.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = w.watch(&WatchParams::default().timeout(60), &rv).await.expect("watch").boxed();
            let mut got = 0;
            while got < events {
                match tokio::time::timeout(Duration::from_secs(60), s.next()).await {
                    Ok(Some(Ok(WatchEvent::Added(o)))) => {
                        let now = Instant::now();
                        let name = o.metadata.name.unwrap_or_default();
                        // the create may be acknowledged after the event arrives: then it counts as zero
                        let sent = acks.lock().await.get(&name).copied();
                        delivered.lock().await.push(sent.map(|t| now.saturating_duration_since(t)).unwrap_or_default());
                        got += 1;
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    for i in 0..events {
        let name = format!("w{i}");
        wapi.create(&PostParams::default(), &cm(&name)).await.expect("create");
        acks.lock().await.insert(name, Instant::now());
    }
    for t in tasks {
        let _ = t.await;
    }
    let el = start.elapsed();
    let lat = Arc::try_unwrap(delivered).map(Mutex::into_inner).unwrap_or_default();
    let total = lat.len();
    report(&format!("watch fan-out ({watchers} watchers)"), total, el, lat);
    assert_eq!(total, watchers * events, "every watcher received every event");
    println!("skiff server RSS after the run: {} MiB", rss_kib(pid) / 1024);
}

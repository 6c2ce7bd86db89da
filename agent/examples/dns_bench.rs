//! Cluster DNS benchmark (run by `scripts/bench-dns`, built in release): the agent's DNS server as the agent runs
//! it (`skiff_agent::dns::serve` with the forwarder and its cache), on loopback, against an upstream resolver in
//! the same process that answers every `A` query with one address (TTL 300), and the load generator.
//!
//! `dns_bench SECONDS CONCURRENCY` prints one line per variant:
//! - `upstream`: queries sent straight to the upstream (the floor: a resolver that does nothing but answer);
//! - `cluster`: `web.default.svc.cluster.local` (a Service record, answered from the watched objects);
//! - `cached`: `api.example.com` (forwarded once, then answered from the cache: the cache-hit path);
//! - `forwarded`: a new name each query (a miss: forwarded to the upstream every time).
//!
//! Each line: `variant=… queries=… errors=… qps=… p50_us=… p99_us=…`. Loopback only; nothing leaves the machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::json;

/// A DNS query for `name` (type A, recursion desired) with id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// The upstream: answers every query with one `A` record (TTL 300) for 198.51.100.7.
async fn upstream(sock: tokio::net::UdpSocket) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((len, peer)) = sock.recv_from(&mut buf).await else { continue };
        if len < 12 {
            continue;
        }
        let q = &buf[..len];
        // the question ends after the name's zero label and 4 bytes of type and class
        let mut i = 12;
        while i < len && q[i] != 0 {
            i += usize::from(q[i]) + 1;
        }
        let end = (i + 5).min(len);
        let mut out = vec![q[0], q[1], 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        out.extend(&q[12..end]);
        out.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 198, 51, 100, 7]);
        let _ = sock.send_to(&out, peer).await;
    }
}

/// Sends queries (`name(i)` for the i-th) to `server` from `concurrency` sockets for `seconds`; returns (answered,
/// errors, sorted latencies in µs).
async fn load(
    server: SocketAddr,
    seconds: u64,
    concurrency: usize,
    name: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> anyhow::Result<(u64, u64, Vec<u64>)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            sock.connect(server).await?;
            let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
            let mut buf = [0u8; 1500];
            let mut i = 0u64;
            while Instant::now() < deadline {
                let id = (i as u16).wrapping_add(t as u16 * 7919);
                let q = query(id, &name(i * concurrency as u64 + t as u64));
                let start = Instant::now();
                sock.send(&q).await?;
                match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                    Ok(Ok(n)) if n >= 12 && buf[..2] == id.to_be_bytes() && buf[3] & 0x0f == 0 && buf[7] >= 1 => {
                        ok += 1;
                        lat.push(start.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
                i += 1;
            }
            anyhow::Ok((ok, errors, lat))
        }));
    }
    let (mut ok, mut errors, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        let (o, e, l) = t.await??;
        ok += o;
        errors += e;
        lat.extend(l);
    }
    lat.sort_unstable();
    Ok((ok, errors, lat))
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().context("SECONDS")?.parse()?;
    let concurrency: usize = args.get(1).context("CONCURRENCY")?.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async move {
        let up = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let up_addr = up.local_addr()?;
        tokio::spawn(upstream(up));
        let (services, mut svc_writer) = reflector::store::<Service>();
        let (slices, mut slice_writer) = reflector::store::<EndpointSlice>();
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [{"port": 80}]}}))?;
        svc_writer.apply_watcher_event(&Event::Apply(svc));
        let slice: EndpointSlice =
            serde_json::from_value(json!({"metadata": {"name": "web-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4", "endpoints": []}))?;
        slice_writer.apply_watcher_event(&Event::Apply(slice));
        let metrics = skiff_agent::metrics::Metrics::new();
        let forwarder = Arc::new(skiff_agent::dns::upstream::Upstream::new(&[up_addr], metrics.clone())?);
        // a free port on loopback for the server
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let view = skiff_agent::dns::View { services, slices };
        let local = vec!["127.0.0.0/8".parse()?];
        let _server = skiff_agent::dns::serve(
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            port,
            view,
            "cluster.local".into(),
            metrics,
            Some(forwarder),
            local,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        type Names = Arc<dyn Fn(u64) -> String + Send + Sync>;
        let variants: [(&str, SocketAddr, Names); 4] = [
            ("upstream", up_addr, Arc::new(|_| "api.example.com".to_string())),
            ("cluster", server, Arc::new(|_| "web.default.svc.cluster.local".to_string())),
            ("cached", server, Arc::new(|_| "api.example.com".to_string())),
            ("forwarded", server, Arc::new(|i| format!("n{i}.example.org"))),
        ];
        for (variant, target, name) in variants {
            let (ok, errors, lat) = load(target, seconds, concurrency, name).await?;
            println!(
                "variant={variant} queries={ok} errors={errors} qps={} p50_us={} p99_us={}",
                ok / seconds.max(1),
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            );
        }
        anyhow::Ok(())
    })
}

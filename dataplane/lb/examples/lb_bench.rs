//! Helpers for `scripts/bench-lb` (built in release):
//!
//! - `gen SERVICES ENDPOINTS FILE IPTABLES`: a Services + EndpointSlices file (a JSON `List`) for
//!   `skiff lb --from-file` and the
//!   equivalent kube-proxy nat ruleset for `iptables-restore` (KUBE-SERVICES → KUBE-SVC-* with statistic rules →
//!   KUBE-SEP-* DNAT, KUBE-NODEPORTS, KUBE-MARK-MASQ/KUBE-POSTROUTING). The benchmark Service `bench` (ClusterIP
//!   10.96.0.10:80, NodePort 30080, endpoints from `BENCH_BACKENDS`, comma-separated IPs, port 80) sits in the middle
//!   of the list.
//! - `serve YAML PIN_DIR CGROUP IFACE NODE_IP [CLUSTER_CIDR]`: `run_from_file` (what `skiff lb --from-file` runs),
//!   with pod egress masquerade for CLUSTER_CIDR when given.
//! - `sync SERVICES ENDPOINTS CHANGES PIN_DIR`: loads SERVICES × ENDPOINTS into a (detached) dataplane, then times
//!   CHANGES single-endpoint changes from the store update to the map writes being done.
//! - `load IP:PORT[,IP:PORT...] CONCURRENCY SECONDS`: short-lived HTTP/1.1 connections (connect, request, read to
//!   EOF, close), each thread rotating over the targets; prints connections/s and connect+request latency
//!   percentiles.
//! - `keepalive IP:PORT[,IP:PORT...] THREADS CONNECTIONS SECONDS [SOURCE_IP]`: what `wrk -tTHREADS -cCONNECTIONS`
//!   does (keep-alive HTTP/1.1 requests, one in flight per connection, each thread an event loop), except that each
//!   thread spreads its connections over the targets round-robin: spread over the backends by the client itself, it
//!   is the no-balancer reference of the NodePort rounds with the same client shape. Connections come from SOURCE_IP
//!   when given. Prints requests/s and request latency percentiles.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;
use skiff_lb::{Engine, LbConfig, desired::NodeIdentity, metrics::LbMetrics};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().with_context(|| format!("missing argument {i}: see the module docs"));
    match a(0)?.as_str() {
        "gen" => generate(a(1)?.parse()?, a(2)?.parse()?, &a(3)?, &a(4)?),
        "serve" => serve(&a(1)?, &a(2)?, &a(3)?, &a(4)?, a(5)?.parse()?, args.get(6).map(|c| c.parse()).transpose()?),
        "sync" => sync(a(1)?.parse()?, a(2)?.parse()?, a(3)?.parse()?, &a(4)?),
        "load" => {
            let targets = a(1)?.split(',').map(str::parse).collect::<Result<Vec<SocketAddr>, _>>()?;
            load(&targets, a(2)?.parse()?, a(3)?.parse()?)
        }
        "keepalive" => {
            let targets = a(1)?.split(',').map(str::parse).collect::<Result<Vec<SocketAddr>, _>>()?;
            let source = args.get(5).map(|s| s.parse()).transpose()?;
            keepalive(&targets, a(2)?.parse()?, a(3)?.parse()?, a(4)?.parse()?, source)
        }
        other => bail!("unknown mode {other}"),
    }
}

/// ClusterIP of filler Service `i`.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 97 + (i / 65_000) as u8, ((i % 65_000) / 250) as u8, (i % 250 + 1) as u8)
}

/// Endpoint `e` of filler Service `i` (addresses that exist nowhere; never contacted).
fn filler_ep(i: u32, e: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a80_0000u32 + i * 16 + e)
}

struct Svc {
    name: String,
    vip: Ipv4Addr,
    node_port: Option<u16>,
    eps: Vec<(Ipv4Addr, u16)>,
}

fn services(n: u32, endpoints: u32) -> anyhow::Result<Vec<Svc>> {
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_default();
    let bench_eps: Vec<(Ipv4Addr, u16)> =
        backends.split(',').filter(|s| !s.is_empty()).map(|s| Ok((s.parse()?, 80))).collect::<anyhow::Result<_>>()?;
    let mut out: Vec<Svc> = (0..n)
        .map(|i| Svc {
            name: format!("filler-{i}"),
            vip: vip(i),
            node_port: None,
            eps: (0..endpoints).map(|e| (filler_ep(i, e), 8080)).collect(),
        })
        .collect();
    let bench = Svc { name: "bench".into(), vip: Ipv4Addr::new(10, 96, 0, 10), node_port: Some(30080), eps: bench_eps };
    out.insert(out.len() / 2, bench);
    Ok(out)
}

fn generate(n: u32, endpoints: u32, yaml: &str, iptables: &str) -> anyhow::Result<()> {
    let svcs = services(n, endpoints)?;
    let mut items = Vec::new();
    for s in &svcs {
        let mut port = json!({"name": "p", "port": 80, "protocol": "TCP"});
        let mut spec = json!({"clusterIP": s.vip.to_string(), "clusterIPs": [s.vip.to_string()], "type": "ClusterIP"});
        if let Some(np) = s.node_port {
            port["nodePort"] = json!(np);
            spec["type"] = json!("NodePort");
        }
        spec["ports"] = json!([port]);
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name, "namespace": "default"}, "spec": spec});
        let eps: Vec<_> = s
            .eps
            .iter()
            .map(|(ip, _)| {
                json!({"addresses": [ip.to_string()], "nodeName": "node-0",
            "conditions": {"ready": true}})
            })
            .collect();
        let tport = s.eps.first().map_or(80, |e| e.1);
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{}-1", s.name), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": s.name}},
            "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "p", "port": tport, "protocol": "TCP"}]});
        items.push(svc);
        items.push(slice);
    }
    // One `List` (what `kubectl get -o json` prints): JSON parses fast, and the YAML parser's document budget
    // (1024 documents) does not apply.
    std::fs::write(yaml, serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?)?;
    std::fs::write(iptables, kube_proxy_rules(&svcs)?)?;
    Ok(())
}

/// A short stable chain suffix, as kube-proxy derives from a hash of the service port / endpoint.
fn chain_hash(s: &str) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{:016X}", skiff_ebpf_common::mix64(h))
}

/// The nat table kube-proxy (iptables mode) programs for these Services.
fn kube_proxy_rules(svcs: &[Svc]) -> anyhow::Result<String> {
    let mut chains = String::new();
    let mut rules = String::new();
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        writeln!(chains, ":{c} - [0:0]")?;
    }
    writeln!(rules, "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")?;
    writeln!(rules, "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")?;
    writeln!(rules, "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING")?;
    writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000")?;
    writeln!(rules, "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN")?;
    writeln!(rules, "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0")?;
    writeln!(
        rules,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    )?;
    for s in svcs {
        let spn = format!("default/{}:p", s.name);
        let svc_chain = format!("KUBE-SVC-{}", chain_hash(&spn));
        writeln!(chains, ":{svc_chain} - [0:0]")?;
        writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{spn} cluster IP\" -m tcp --dport 80 -j {svc_chain}",
            s.vip
        )?;
        writeln!(
            rules,
            "-A {svc_chain} ! -s 10.244.0.0/16 -d {}/32 -p tcp -m comment --comment \"{spn} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ",
            s.vip
        )?;
        let n = s.eps.len();
        for (i, (ip, port)) in s.eps.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", chain_hash(&format!("{spn}{ip}:{port}")));
            writeln!(chains, ":{sep} - [0:0]")?;
            let remaining = n - i;
            if remaining > 1 {
                writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{spn} -> {ip}:{port}\" -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / remaining as f64
                )?;
            } else {
                writeln!(rules, "-A {svc_chain} -m comment --comment \"{spn} -> {ip}:{port}\" -j {sep}")?;
            }
            writeln!(rules, "-A {sep} -s {ip}/32 -m comment --comment \"{spn}\" -j KUBE-MARK-MASQ")?;
            writeln!(
                rules,
                "-A {sep} -p tcp -m comment --comment \"{spn}\" -m tcp -j DNAT --to-destination {ip}:{port}"
            )?;
        }
        if let Some(np) = s.node_port {
            let ext = format!("KUBE-EXT-{}", chain_hash(&spn));
            writeln!(chains, ":{ext} - [0:0]")?;
            writeln!(rules, "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{spn}\" -m tcp --dport {np} -j {ext}")?;
            writeln!(
                rules,
                "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ"
            )?;
            writeln!(rules, "-A {ext} -j {svc_chain}")?;
        }
    }
    writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    )?;
    Ok(format!("*nat\n{chains}{rules}COMMIT\n"))
}

fn serve(
    yaml: &str,
    pin_dir: &str,
    cgroup: &str,
    iface: &str,
    node_ip: Ipv4Addr,
    cluster_cidr: Option<ipnet::Ipv4Net>,
) -> anyhow::Result<()> {
    let mut cfg = LbConfig::new(NodeIdentity { name: "node-0".into(), addresses: vec![node_ip] });
    cfg.masquerade = cluster_cidr.map(|cluster_cidr| skiff_lb::nat::Masquerade { cluster_cidr, exclude: Vec::new() });
    cfg.pin_dir = pin_dir.into();
    cfg.cgroup = Some(cgroup.into());
    cfg.interfaces = vec![iface.to_string()];
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(skiff_lb::run_from_file(yaml.into(), cfg, skiff_lb::source::file::shutdown_signal()))?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sync(n: u32, endpoints: u32, changes: u32, pin_dir: &str) -> anyhow::Result<()> {
    let mut cfg =
        LbConfig::new(NodeIdentity { name: "node-0".into(), addresses: vec![Ipv4Addr::new(192, 168, 77, 1)] });
    cfg.pin_dir = pin_dir.into();
    cfg.cgroup = None;
    let mut engine = Engine::start(&cfg, LbMetrics::new(cfg.pin_dir.clone()))?;
    let dir = tempdir()?;
    let yaml = format!("{dir}/objects.yaml");
    let rules = format!("{dir}/rules.txt");
    generate(n, endpoints, &yaml, &rules)?;
    let (svcs, slices) = skiff_lb::source::file::read_objects(yaml.as_ref())?;
    let start = Instant::now();
    engine.store_mut().replace_services(svcs);
    engine.store_mut().replace_slices(slices.clone());
    let report = engine.full_sync(Some(start));
    println!("initial_load_seconds={:.3} map_ops={}", start.elapsed().as_secs_f64(), report.ops);
    let mut lat = Vec::new();
    let mut ops = 0;
    for k in 0..changes {
        // Replace one endpoint of one Service (a pod replaced by a new one).
        let i = (k * 7919) % n;
        let name = format!("filler-{i}-1");
        let mut slice = slices.iter().find(|s| s.metadata.name.as_deref() == Some(&name)).cloned().context("slice")?;
        if let Some(ep) = slice.endpoints.first_mut() {
            ep.addresses = vec![Ipv4Addr::from(0x0b00_0000u32 + k).to_string()];
        }
        let received = Instant::now();
        let changed: BTreeSet<_> = engine.store_mut().apply_slice(slice);
        let report = engine.sync(changed, Some(received));
        lat.push(received.elapsed().as_secs_f64() * 1e6);
        ops += report.ops;
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "changes={changes} map_ops={ops} p50_us={:.1} p99_us={:.1} max_us={:.1}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    std::fs::remove_dir_all(&dir).ok();
    skiff_lb::loader::uninstall(pin_dir.as_ref())?;
    Ok(())
}

fn tempdir() -> anyhow::Result<String> {
    let d = format!("/tmp/skiff-lb-bench-{}", std::process::id());
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn load(targets: &[SocketAddr], concurrency: usize, seconds: f64) -> anyhow::Result<()> {
    if targets.is_empty() {
        bail!("no target");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let results: Vec<(Vec<f64>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrency)
            .map(|thread| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(100_000);
                    let mut errors = 0u64;
                    let mut buf = [0u8; 4096];
                    let mut next = thread;
                    while Instant::now() < deadline {
                        let target = targets[next % targets.len()];
                        next += 1;
                        let t = Instant::now();
                        let ok = (|| -> std::io::Result<()> {
                            let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                            c.set_read_timeout(Some(Duration::from_secs(2)))?;
                            c.set_nodelay(true)?;
                            c.write_all(request)?;
                            let mut got = 0;
                            loop {
                                let n = c.read(&mut buf)?;
                                if n == 0 {
                                    break;
                                }
                                got += n;
                            }
                            if got == 0 { Err(std::io::Error::other("empty response")) } else { Ok(()) }
                        })();
                        match ok {
                            Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let all: Vec<f64> = results.iter().flat_map(|(l, _)| l.iter().copied()).collect();
    let errors: u64 = results.iter().map(|(_, e)| e).sum();
    println!("{}", rate_line("conns", all, seconds, &format!(" errors={errors}")));
    Ok(())
}

/// `WHAT=n[EXTRA] WHAT_per_s=r p50_us=… p99_us=…` for the latencies (µs) of `seconds` of load.
fn rate_line(what: &str, mut latencies: Vec<f64>, seconds: f64, extra: &str) -> String {
    latencies.sort_by(f64::total_cmp);
    format!(
        "{what}={}{extra} {what}_per_s={:.0} p50_us={:.0} p99_us={:.0}",
        latencies.len(),
        latencies.len() as f64 / seconds,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    )
}

/// One keep-alive connection's request loop until `deadline`: request latencies in µs, or the first error. A server
/// that closes the connection between responses (nginx does after `keepalive_requests`) is connected to again, as
/// wrk does.
async fn keepalive_connection(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    deadline: Instant,
) -> std::io::Result<Vec<f64>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
    let connect = || async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(source) = source {
            socket.bind(SocketAddr::new(source.into(), 0))?;
        }
        let c = socket.connect(target).await?;
        c.set_nodelay(true)?;
        std::io::Result::Ok(c)
    };
    let mut c = connect().await?;
    let mut lat = Vec::with_capacity(200_000);
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        let t = Instant::now();
        let mut reconnected = false;
        // One response: its head, then Content-Length bytes of body.
        let got = loop {
            c.write_all(request).await?;
            let mut got = 0;
            loop {
                let n = c.read(&mut buf[got..]).await?;
                if n == 0 {
                    break;
                }
                got += n;
                if response_length(&buf[..got]).is_some_and(|len| got >= len) || got == buf.len() {
                    break;
                }
            }
            if got > 0 || reconnected {
                break got;
            }
            c = connect().await?;
            reconnected = true;
        };
        if response_length(&buf[..got]) != Some(got) {
            return Err(std::io::Error::other(format!(
                "not one whole response: {:?}",
                String::from_utf8_lossy(&buf[..got])
            )));
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        if closes(&buf[..got]) {
            c = connect().await?;
        }
    }
    Ok(lat)
}

/// Whether a response says the server closes the connection after it.
fn closes(response: &[u8]) -> bool {
    String::from_utf8_lossy(response).lines().take_while(|l| !l.is_empty()).any(|l| {
        l.split_once(':')
            .is_some_and(|(n, v)| n.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close"))
    })
}

/// The whole length of the HTTP/1.1 response at the start of `buf` once its head is in (a Content-Length body).
fn response_length(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let body = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    })?;
    Some(head_end + body)
}

fn keepalive(
    targets: &[SocketAddr],
    threads: usize,
    connections: usize,
    seconds: f64,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<()> {
    if targets.is_empty() || threads == 0 || connections < threads {
        bail!("need a target, a thread and at least one connection per thread");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let results: Vec<anyhow::Result<Vec<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                s.spawn(move || -> anyhow::Result<Vec<f64>> {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    rt.block_on(async {
                        let mut tasks = tokio::task::JoinSet::new();
                        for i in (thread..connections).step_by(threads) {
                            // Every thread spans all targets (as a balancer spreads each thread's connections).
                            tasks.spawn(keepalive_connection(targets[(i / threads) % targets.len()], source, deadline));
                        }
                        let mut lat = Vec::new();
                        while let Some(done) = tasks.join_next().await {
                            lat.extend(done??);
                        }
                        Ok(lat)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a load thread panicked"))))
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    println!("{}", rate_line("requests", all, seconds, ""));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{rate_line, response_length};

    #[test]
    fn the_rate_line_is_what_bench_lb_parses() {
        assert_eq!(
            rate_line("conns", vec![300.0, 100.0, 200.0], 2.0, " errors=1"),
            "conns=3 errors=1 conns_per_s=2 p50_us=200 p99_us=300"
        );
    }

    #[test]
    fn a_response_is_complete_at_its_content_length() {
        let r = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\n\r\nok\n";
        assert_eq!(response_length(r), Some(r.len()));
        assert_eq!(response_length(&r[..20]), None);
        assert_eq!(response_length(b"HTTP/1.1 200 OK\r\ncontent-length:  10\r\n\r\n"), Some(50));
        assert_eq!(response_length(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), None);
        assert!(super::closes(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"));
        assert!(!super::closes(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nConnection: close"));
    }
}

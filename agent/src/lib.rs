//! `skiff-agent`: the node agent. It registers its Node and keeps it alive (Lease, conditions), runs the pods bound to
//! it with runc (sandbox network namespace, images, volumes, probes, restarts, graceful termination), reports their
//! status, serves logs, exec and metrics to the API server, answers cluster DNS, and starts the node's dataplane (the
//! eBPF Service load balancer and NetworkPolicy, given by the binary that wires them: [`dataplane::Dataplane`]).
//! Running containers outlive the agent (**fail-static**): a restarted agent re-adopts them.
//!
//! ```no_run
//! # async fn demo(client: kube::Client, ca_pem: String) -> Result<(), skiff_agent::AgentError> {
//! let mut cfg = skiff_agent::AgentConfig::new("node-1", ca_pem);
//! cfg.data_dir = "/var/lib/skiff/agent".into();
//! // no dataplane: no Service load balancing or NetworkPolicy on this node
//! skiff_agent::run(client, cfg, None, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
#![deny(missing_docs)]

pub mod bootstrap;
pub mod cgroups;
pub mod cleanup;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod dns;
pub mod error;
pub mod failover;
pub mod host;
pub mod images;
pub mod metrics;
pub mod network;
pub mod node;
pub mod paths;
pub mod pods;
pub mod runtime;
pub mod server;
mod sys;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use tokio::sync::mpsc;

pub use config::{AgentConfig, BackoffPolicy, ShimCommand};
pub use error::AgentError;

/// Follows a resource into a reflector store; sends the namespace of every changed object to `changes`.
pub fn follow<K>(
    client: &kube::Client,
    changes: Option<mpsc::UnboundedSender<String>>,
) -> (reflector::Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let api: kube::Api<K> = kube::Api::all(client.clone());
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff().touched_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let (Ok(obj), Some(tx)) = (ev, changes.as_ref()) {
                let _ = tx.send(obj.meta().namespace.clone().unwrap_or_default());
            }
        }
    });
    (reader, task)
}

/// Runs the agent with `client` until `shutdown` completes, with the node's `dataplane` (none: no Service load
/// balancing and no NetworkPolicy on this node). Containers keep running when it returns.
pub async fn run(
    client: kube::Client,
    cfg: AgentConfig,
    dataplane: Option<Box<dyn dataplane::Dataplane>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    cfg.validate()?;
    if let Some(d) = &dataplane {
        d.validate().map_err(AgentError::Config)?;
    }
    skiff_client::install_crypto_provider();
    let paths = paths::Paths::new(&cfg.data_dir);
    for d in paths.all_dirs() {
        std::fs::create_dir_all(&d).map_err(AgentError::io(format!("creating {}", d.display())))?;
    }
    let cgroups = cgroups::Cgroups::detect().map_err(AgentError::io("reading this process's cgroups"))?;
    let pods_cgroup = cgroups.unified_pods_dir(&cfg.cgroup_root).ok_or_else(|| {
        AgentError::Config(
            "no cgroup v2 hierarchy is mounted (expected /sys/fs/cgroup/unified or /sys/fs/cgroup)".into(),
        )
    })?;
    std::fs::create_dir_all(&pods_cgroup).map_err(AgentError::io(format!("creating {}", pods_cgroup.display())))?;
    let host = host::HostFacts::read(&cfg.data_dir, &cgroups);
    let node_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => host::detect_node_ip(cfg.interface.as_deref(), &cfg.bridge)
            .await
            .ok_or_else(|| AgentError::Config("no node address found: give --node-ip or --interface".into()))?,
    };
    let runtime: Arc<dyn runtime::Runtime> = Arc::new(runtime::runc::Runc::new(
        cfg.runc.clone(),
        paths.runc_root(),
        cfg.shim.clone(),
        paths.exits(),
        cfg.log_max_bytes,
    ));
    let images = Arc::new(images::Images::open(&cfg.image_store, cfg.insecure_registries.clone())?);
    let facts = node::NodeFacts {
        name: cfg.node_name.clone(),
        ip: node_ip,
        host: host.clone(),
        port: cfg.kubelet_port,
        runtime_version: runtime.version(),
        max_pods: cfg.max_pods,
    };
    let registered = node::register(&client, &facts, &cfg.data_dir).await?;
    let node_uid = registered.metadata.uid.clone();
    let cidr = node::pod_cidr(&client, &cfg.node_name, registered).await?;
    tracing::info!(node = %cfg.node_name, ip = %node_ip, pod_cidr = %cidr, "node registered");
    let dns_ip = cfg.serve_dns.then_some(cfg.cluster_dns);
    let net = Arc::new(network::Network::setup(&cfg.bridge, cidr, dns_ip, &paths.ipam(), &paths.netns_dir()).await?);
    // The dataplane starts before any pod: NetworkPolicy admits each new pod before its containers run.
    let dataplane = match dataplane {
        Some(d) => {
            // Without --interface, the tc programs go on the interface that holds the node address.
            let interface = match &cfg.interface {
                Some(i) => Some(i.clone()),
                None => host::interface_of(node_ip).await,
            };
            let mut host_addresses = vec![node_ip, network::ipam::gateway(cidr)];
            host_addresses.extend(dns_ip);
            d.start(dataplane::NodeNetwork {
                client: client.clone(),
                node_name: cfg.node_name.clone(),
                node_ip,
                pod_cidr: cidr,
                host_addresses,
                pods_cgroup: pods_cgroup.clone(),
                interface,
                existing: pods::record::existing_networks(&paths.pods()),
            })
        }
        None => dataplane::Running::default(),
    };
    let policy = dataplane.policy.clone();
    let collectors = dataplane.collectors;
    let metrics = metrics::Metrics::with_collectors(collectors);
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = dataplane.tasks;
    tasks.push(tokio::spawn(node::lease_loop(client.clone(), cfg.node_name.clone(), node_uid)));
    tasks.push(tokio::spawn(node::status_loop(client.clone(), facts.clone(), cfg.data_dir.clone())));
    tasks.push(tokio::spawn(network::routes::run(client.clone(), net.handle().clone(), cfg.node_name.clone())));
    // Watched objects.
    // Secrets and ConfigMaps are watched one by one, as pods need them (the node may read no others).
    let (config_tx, config_rx) = mpsc::unbounded_channel();
    let objects = Arc::new(pods::watched::PodObjects::new(client.clone(), config_tx));
    let (services, t3) = follow::<Service>(&client, None);
    let (slices, t4) = follow::<EndpointSlice>(&client, None);
    tasks.extend([t3, t4]);
    if tokio::time::timeout(Duration::from_secs(60), services.wait_until_ready()).await.is_err() {
        return Err(AgentError::Config("could not list Services within a minute".into()));
    }
    // DNS.
    if cfg.serve_dns {
        let view = dns::View { services: services.clone(), slices: slices.clone() };
        let addrs = vec![IpAddr::V4(node_ip), IpAddr::V4(cfg.cluster_dns)];
        let own = [IpAddr::V4(node_ip), IpAddr::V4(cfg.cluster_dns)];
        let servers = match cfg.dns_upstream.clone() {
            Some(given) => dns::upstream::without_self(given, &own),
            None => dns::upstream::nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(), &own),
        };
        let local = vec![ipnet::IpNet::V4(cidr), ipnet::IpNet::from(IpAddr::V4(node_ip))];
        let upstream = if servers.is_empty() {
            tracing::info!("cluster DNS forwards nothing: no upstream resolvers");
            None
        } else {
            tracing::info!(?servers, "cluster DNS forwards other names to these resolvers");
            Some(Arc::new(dns::upstream::Upstream::new(&servers, metrics.clone())?))
        };
        tasks.push(dns::serve(addrs, 53, view, cfg.cluster_domain.clone(), metrics.clone(), upstream, local).await?);
        tasks.push(tokio::spawn(dns::publish(client.clone(), cfg.node_name.clone(), node_ip)));
    }
    // Pods.
    let views: pods::Views = Arc::default();
    let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let ctx = Arc::new(pods::Ctx {
        cfg: cfg.clone(),
        paths: paths.clone(),
        client: client.clone(),
        node: pods::NodeIdentity { name: cfg.node_name.clone(), ip: node_ip, cpus: host.cpus, memory: host.memory },
        runtime: runtime.clone(),
        images,
        net,
        cgroups: cgroups.clone(),
        caches: pods::Caches { objects, services },
        views: views.clone(),
        metrics: metrics.clone(),
        recorder: skiff_client::events::Recorder::new(client.clone(), "kubelet", Some(&cfg.node_name)),
        node_resolv,
        policy: policy.clone(),
    });
    // The kubelet endpoint.
    let stats = server::stats::Stats::new(cgroups.clone(), views.clone(), cfg.node_name.clone());
    tasks.push(tokio::spawn(stats.clone().run()));
    tasks.push(tokio::spawn(images::gc_run::run(images::gc_run::Collector {
        images: ctx.images.clone(),
        policy: cfg.image_gc,
        period: images::gc_run::PERIOD,
        pods_dir: paths.pods(),
        recorder: ctx.recorder.clone(),
        node: cfg.node_name.clone(),
        metrics: ctx.metrics.clone(),
    })));
    let (cert, key) = server::tls::serving_cert(&paths.pki(), &[node_ip.to_string(), cfg.node_name.clone()])
        .map_err(|m| AgentError::Serve { what: "the kubelet endpoint", message: m })?;
    let tls = server::tls::server_config(&cfg.ca_cert_pem, &cert, &key)
        .map_err(|m| AgentError::Serve { what: "the kubelet endpoint", message: m })?;
    let shared = server::Shared {
        views,
        runtime,
        metrics,
        stats,
        node: cfg.node_name.clone(),
        scratch: paths.root().join("exec"),
        client: Some(client.clone()),
        policy: policy.clone(),
    };
    tasks.extend(
        server::start(shared, SocketAddr::new(IpAddr::V4(node_ip), cfg.kubelet_port), cfg.metrics_addr, tls).await?,
    );
    // Static pods.
    let (static_tx, static_rx) = mpsc::unbounded_channel();
    if let Some(dir) = &cfg.manifests {
        tasks.push(tokio::spawn(pods::static_pods::run(client.clone(), dir.clone(), cfg.node_name.clone(), static_tx)));
    } else {
        drop(static_tx);
    }
    tracing::info!(node = %cfg.node_name, kubelet = %SocketAddr::new(IpAddr::V4(node_ip), cfg.kubelet_port), pods_cgroup = %pods_cgroup.display(), "agent running");
    pods::manager::run(ctx, static_rx, config_rx, shutdown).await;
    if let Some(stop) = dataplane.stop {
        let _ = tokio::time::timeout(Duration::from_secs(5), stop).await;
    }
    for t in tasks {
        t.abort();
    }
    tracing::info!(node = %cfg.node_name, "agent stopped; containers keep running");
    Ok(())
}

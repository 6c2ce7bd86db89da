//! `skiff server`: the API server (with its datastore and the API machinery controllers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use skiff_control::server::{self, Datastore, ServerConfig};
use skiff_control::storage::etcd::EtcdTls;

/// Flags of `skiff server`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the datastore, certificates and the admin kubeconfig.
    #[arg(long, default_value = "/var/lib/skiff/server")]
    pub data_dir: PathBuf,
    /// Address to serve the API on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,
    /// Address clients and nodes use (`host:port`), written into the kubeconfig and the certificate.
    #[arg(long)]
    pub advertise_address: Option<String>,
    /// Extra DNS names or IPs for the serving certificate.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// `sqlite` (embedded, under --data-dir) or `etcd://host:2379[,host:2379…]`.
    #[arg(long, default_value = "sqlite")]
    pub datastore: String,
    #[command(flatten)]
    pub etcd_tls: EtcdTlsArgs,
    /// The cluster's server token. The first server of a cluster makes one (in `<data-dir>/pki/server-token`)
    /// unless given; every other server joins with the same token and the same --datastore, and takes the
    /// cluster's CA, service-account key, node token and Secret encryption keys from the datastore.
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long Events live after their last write (`1h`, `30m`, `90s`).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub event_ttl: Duration,
    /// How long the controllers' leader Lease lasts without renewal, as the other servers see it: a dead
    /// leader's controllers resume on another server about this long after its last renewal.
    #[arg(long, default_value = "15s", value_parser = parse_ttl)]
    pub leader_elect_lease_duration: Duration,
    /// A leader that could not renew for this long stops its controllers (shorter than the lease duration).
    #[arg(long, default_value = "10s", value_parser = parse_ttl)]
    pub leader_elect_renew_deadline: Duration,
    /// How often the leader renews and the other servers look.
    #[arg(long, default_value = "2s", value_parser = parse_ttl)]
    pub leader_elect_retry_period: Duration,
    /// Watch history kept before compaction, in seconds.
    #[arg(long, default_value_t = 300)]
    pub compaction_interval: u64,
    /// Requests one user may have in flight (watches and streams not counted); more are answered 429.
    #[arg(long, default_value_t = 100)]
    pub max_requests_inflight_per_user: usize,
    /// Requests in flight over all users (members of system:masters are exempt).
    #[arg(long, default_value_t = 600)]
    pub max_requests_inflight: usize,
    /// Open connections at most.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Addresses for LoadBalancer Services (CIDRs or FIRST-LAST ranges, repeatable), written to the
    /// `kube-system/skiff-lb-pool` ConfigMap if it does not exist yet. Without a pool, LoadBalancer Services get
    /// the addresses of the nodes that serve them.
    #[arg(long, value_name = "CIDR|RANGE")]
    pub lb_pool: Vec<String>,
}

/// TLS to etcd, as kube-apiserver takes it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdTlsArgs {
    /// CA certificate (PEM) of the etcd members' serving certificates: the datastore is reached over TLS.
    #[arg(long, value_name = "FILE")]
    pub etcd_cafile: Option<std::path::PathBuf>,
    /// Client certificate (PEM) this server authenticates to etcd with (needs --etcd-cafile and --etcd-keyfile).
    #[arg(long, value_name = "FILE", requires_all = ["etcd_cafile", "etcd_keyfile"])]
    pub etcd_certfile: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<std::path::PathBuf>,
}

impl EtcdTlsArgs {
    fn load(&self) -> anyhow::Result<Option<EtcdTls>> {
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let Some(ca) = &self.etcd_cafile else { return Ok(None) };
        let client = match (&self.etcd_certfile, &self.etcd_keyfile) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        Ok(Some(EtcdTls { ca_pem: read(ca)?, client }))
    }
}

/// Parses `--event-ttl`: a duration such as `1h`, `30m` or `90s`, of at least a second.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = text.parse().map_err(|e| format!("{text:?} is not a duration such as 1h: {e}"))?;
    let d = Duration::try_from(d).map_err(|_| format!("{text:?} is negative"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("{text:?} is shorter than a second"));
    }
    Ok(d)
}

/// Parses `--datastore` (with the TLS files, for etcd).
pub fn datastore(spec: &str, tls: &EtcdTlsArgs) -> anyhow::Result<Datastore> {
    if spec == "sqlite" {
        anyhow::ensure!(tls.etcd_cafile.is_none(), "--etcd-cafile is for an etcd datastore, not sqlite");
        return Ok(Datastore::Sqlite);
    }
    if let Some(rest) = spec.strip_prefix("etcd://") {
        let tls = tls.load()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> =
            rest.split(',').filter(|e| !e.is_empty()).map(|e| format!("{scheme}://{e}")).collect();
        anyhow::ensure!(!endpoints.is_empty(), "--datastore etcd:// needs at least one host:port");
        return Ok(Datastore::Etcd { endpoints, tls });
    }
    anyhow::bail!("--datastore must be `sqlite` or `etcd://host:port[,host:port…]`, not {spec:?}")
}

impl Args {
    /// The server configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut controllers = skiff_control::controllers::manager::ManagerOptions::default();
        if !self.lb_pool.is_empty() {
            let text = self.lb_pool.join(",");
            let reserved = skiff_control::controllers::loadbalancer::pool::reserved_cidrs();
            skiff_control::controllers::loadbalancer::pool::Pool::parse(&text, &reserved)
                .map_err(|e| anyhow::anyhow!("--lb-pool: {e}"))?;
            controllers.config.lb_pool = Some(text);
        }
        controllers.election = skiff_control::controllers::leader::Timings {
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        };
        controllers.election.validate().map_err(|e| anyhow::anyhow!("--leader-elect-*: {e}"))?;
        Ok(ServerConfig {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            advertise: self.advertise_address.clone(),
            extra_names: self.tls_san.clone(),
            datastore: datastore(&self.datastore, &self.etcd_tls)?,
            token: self.token.clone(),
            event_ttl: self.event_ttl,
            compaction_interval: Duration::from_secs(self.compaction_interval.max(10)),
            controllers: Some(controllers),
            limits: skiff_control::apiserver::limits::Limits {
                inflight_per_user: self.max_requests_inflight_per_user.max(1),
                inflight_total: self.max_requests_inflight.max(1),
                max_connections: self.max_connections.max(1),
                ..Default::default()
            },
        })
    }
}

/// Runs the API server until interrupted.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.config()?;
    small_pages_only();
    super::runtime()?.block_on(async move {
        let s = server::start(cfg).await?;
        eprintln!("skiff server: serving {} (kubeconfig {})", s.url, s.kubeconfig.display());
        eprintln!("  nodes join with: skiff agent --server {} --token {}", s.url, s.pki.node_token);
        eprintln!(
            "  servers join with: skiff server --datastore <the same> --token $(cat {})",
            s.pki.dir.join(skiff_control::cluster_secrets::TOKEN_FILE).display()
        );
        super::wait_for_shutdown().await;
        Ok(())
    })
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`, which the kernel honours for every
/// mapping, the allocator's included). The API server and controllers hold many small objects that live long (the
/// pods they cache) among many that live for a request, so a 2 MiB huge page stays resident for a few live objects.
/// With huge pages off, `scripts/bench-scale` measured the server at 10k pods at rest 1.20-1.31x smaller in RSS, at
/// the same scheduling rate, and perhaps a few percent more CPU while pods are created (docs/benchmarks.md,
/// "2026-12-05, late evening"). The ingress (`skiff up`, `skiff ingress`) keeps them: one run of its bench without
/// them showed no difference, which is not enough to take them from the dataplane.
fn small_pages_only() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "transparent huge pages left on: the server may take more memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ttls_are_durations_of_a_second_or_more() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        for bad in ["0s", "500ms", "-1h", "soon", ""] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn etcd_endpoints_are_https_with_a_ca() {
        let tls = EtcdTlsArgs { etcd_cafile: Some("/nonexistent/ca.crt".into()), ..Default::default() };
        let err = datastore("etcd://a:2379", &tls).expect_err("unreadable CA").to_string();
        assert!(err.contains("/nonexistent/ca.crt"), "{err}");
        let plain = datastore("etcd://a:2379,b:2379", &EtcdTlsArgs::default()).expect("valid");
        assert!(
            matches!(plain, Datastore::Etcd { ref endpoints, tls: None, .. } if endpoints == &["http://a:2379", "http://b:2379"])
        );
        assert!(datastore("sqlite", &tls).is_err(), "--etcd-cafile with sqlite is refused");
    }
}

//! `skiff server`: the API server with its datastore, credentials, bootstrap objects, compaction and the
//! in-process controllers that belong to the API machinery (garbage collection, namespace lifecycle).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::apiserver::writes::WriteOptions;
use crate::apiserver::{self, Api, ApiConfig, AuthConfig};
use crate::kubeconfig::{self, Credential};
use crate::pki::Pki;
use crate::storage::Storage;
use crate::storage::encrypt::Encrypted;
use crate::storage::sqlite::SqliteStorage;

/// Where objects are kept.
#[derive(Debug, Clone)]
pub enum Datastore {
    /// The embedded SQLite file under the data directory.
    Sqlite,
    /// An etcd v3 cluster (`etcd://host:port,host:port`).
    Etcd {
        /// The members' client URLs.
        endpoints: Vec<String>,
        /// TLS to the members (none: plain HTTP).
        tls: Option<crate::storage::etcd::EtcdTls>,
    },
}

/// Settings of `skiff server`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Datastore, certificates and kubeconfig live here.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address clients use (in the kubeconfig and certificates); defaults to the listen address.
    pub advertise: Option<String>,
    /// Extra names for the serving certificate.
    pub extra_names: Vec<String>,
    /// Datastore.
    pub datastore: Datastore,
    /// The cluster's server token: seals the shared secrets in the datastore; a server joining a cluster gives the
    /// first server's. `None`: the one in `<data-dir>/pki/server-token`, or a new one for a new cluster.
    pub token: Option<String>,
    /// How much history to keep for watchers before compacting.
    pub compaction_interval: Duration,
    /// How long Events live after their last write (kube-apiserver's `--event-ttl`): an etcd lease, or a sweep of
    /// the SQLite store every minute.
    pub event_ttl: Duration,
    /// The workload controllers and the scheduler (leader-elected); `None` runs the API server alone.
    pub controllers: Option<crate::controllers::manager::ManagerOptions>,
    /// Connection, time and in-flight limits.
    pub limits: apiserver::limits::Limits,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Credentials.
    #[error("credentials: {0}")]
    Pki(#[from] crate::pki::PkiError),
    /// Datastore.
    #[error("datastore: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// TLS.
    #[error("TLS: {0}")]
    Tls(#[from] apiserver::serve::ServeError),
    /// Listening or writing files.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Bootstrapping objects.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    /// The cluster's shared secrets.
    #[error("cluster secrets: {0}")]
    Secrets(#[from] crate::cluster_secrets::SecretsError),
}

/// A started server.
#[derive(Debug, Clone)]
pub struct RunningServer {
    /// The API.
    pub api: Arc<Api>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The URL clients use.
    pub url: String,
    /// Credentials.
    pub pki: Pki,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
}

/// Where Secrets are stored (and encrypted).
const SECRETS_PREFIX: &str = "/registry/secrets/";

async fn open_backend(cfg: &ServerConfig) -> Result<Box<dyn Storage>, ServerError> {
    Ok(match &cfg.datastore {
        Datastore::Sqlite => Box::new(SqliteStorage::open(cfg.data_dir.join("state.db"))?),
        Datastore::Etcd { endpoints, tls } => {
            let expiry = crate::storage::etcd::Expiry {
                prefixes: vec![crate::event_expiry::EVENTS_PREFIX.to_string()],
                ttl: cfg.event_ttl,
                reuse: crate::storage::etcd::LEASE_REUSE.min(cfg.event_ttl),
            };
            Box::new(
                crate::storage::etcd::EtcdStorage::connect_with(endpoints, tls.as_ref()).await?.with_expiry(expiry),
            )
        }
    })
}

/// Opens the datastore and makes the PKI directory hold the cluster's shared secrets (adopted from the datastore,
/// or stored there by the cluster's first server), then loads the PKI (this server's own certificates made or
/// renewed) and wraps the datastore in Secret encryption.
async fn open_store(cfg: &ServerConfig, names: &[String]) -> Result<(Arc<dyn Storage>, Pki), ServerError> {
    let backend = open_backend(cfg).await?;
    let dir = cfg.data_dir.join("pki");
    crate::cluster_secrets::finish_rotation(backend.as_ref(), &dir).await?;
    let token = crate::cluster_secrets::token(&dir, cfg.token.as_deref())?;
    crate::cluster_secrets::establish(backend.as_ref(), &dir, token, async |shared| {
        let raw = backend.list(SECRETS_PREFIX, Default::default()).await?;
        let missing = missing_keys(&raw.items, &shared.encryption_keys);
        if missing.is_empty() {
            return Ok(());
        }
        Err(crate::cluster_secrets::SecretsError::Conflict(format!(
            "the datastore holds encrypted Secrets ({missing}) but no record of the cluster's keys, and {} does not \
             have those keys: restore the key file from a backup (the server refuses to start rather than serve \
             Secrets it cannot read)",
            dir.join(crate::pki::ENCRYPTION_KEYS).display()
        )))
    })
    .await?;
    let pki = Pki::load_or_create(&dir, names)?;
    let store = Encrypted::new(backend, &pki.encryption_keys, vec![SECRETS_PREFIX.to_string()]);
    check_encryption_keys(&store, &pki).await?;
    Ok((Arc::new(store), pki))
}

/// The keys Secrets in `items` were sealed with that are not among `keys`, with counts (`3 with key "k1"`).
fn missing_keys(items: &[crate::storage::KeyValue], keys: &[crate::storage::encrypt::NamedKey]) -> String {
    let mut missing: std::collections::BTreeMap<String, usize> = Default::default();
    for kv in items {
        if let Some(name) = crate::storage::encrypt::sealed_with(&kv.value)
            && !keys.iter().any(|k| k.name == name)
        {
            *missing.entry(name).or_default() += 1;
        }
    }
    missing.iter().map(|(k, n)| format!("{n} with key {k:?}")).collect::<Vec<_>>().join(", ")
}

/// Refuses to start when stored Secrets were sealed with a key the server does not have (a lost or replaced key
/// file), or when a configured key does not open what it sealed: serving would lose them.
async fn check_encryption_keys(store: &Encrypted<Box<dyn Storage>>, pki: &Pki) -> Result<(), ServerError> {
    let raw = store.inner().list(SECRETS_PREFIX, Default::default()).await?;
    let mut checked = std::collections::BTreeSet::new();
    for kv in &raw.items {
        let Some(name) = crate::storage::encrypt::sealed_with(&kv.value) else { continue };
        if pki.encryption_keys.iter().any(|k| k.name == name)
            && checked.insert(name.clone())
            && let Err(e) = store.get(&kv.key).await
        {
            return Err(ServerError::Bootstrap(format!(
                "the Secret encryption key {name:?} in {} does not open {}: {e}; restore the right key file",
                pki.dir.join(crate::pki::ENCRYPTION_KEYS).display(),
                kv.key
            )));
        }
    }
    let missing = missing_keys(&raw.items, &pki.encryption_keys);
    if missing.is_empty() {
        return Ok(());
    }
    let file = pki.dir.join(crate::pki::ENCRYPTION_KEYS);
    let how = if pki.encryption_keys_created {
        format!("{} was missing", file.display())
    } else {
        format!("{} does not have that key", file.display())
    };
    Err(ServerError::Bootstrap(format!(
        "the datastore holds encrypted Secrets ({missing}) and {how}: restore the key file from a backup (the server refuses \
         to start rather than serve Secrets it cannot read)"
    )))
}

/// Adds a new Secret encryption key (first, so it seals from now on; the old ones still open) to this server's key
/// file and to the cluster's shared secrets in the datastore, and re-encrypts every Secret with it. Run with every
/// server of the cluster stopped (each adopts the new key from the datastore when it starts again). Returns the
/// new key's name and the number of Secrets rewritten.
pub async fn rotate_encryption_key(cfg: &ServerConfig) -> Result<(String, usize), ServerError> {
    let dir = cfg.data_dir.join("pki");
    if !dir.join(crate::pki::ENCRYPTION_KEYS).exists() && !dir.join("encryption.key").exists() {
        return Err(ServerError::Bootstrap(format!("no encryption keys in {}: nothing to rotate", dir.display())));
    }
    let backend = open_backend(cfg).await?;
    crate::cluster_secrets::finish_rotation(backend.as_ref(), &dir).await?;
    let token = crate::cluster_secrets::token(&dir, cfg.token.as_deref())?;
    // the cluster's record first: keys another server added since this one last started are kept
    let shared = crate::cluster_secrets::establish(backend.as_ref(), &dir, token.clone(), async |_| Ok(())).await?;
    let pki = Pki::load_or_create(&dir, &[])?;
    let store = Encrypted::new(backend, &pki.encryption_keys, vec![SECRETS_PREFIX.to_string()]);
    check_encryption_keys(&store, &pki).await?;
    let new = crate::pki::new_encryption_key();
    let mut keys = vec![new.clone()];
    keys.extend(pki.encryption_keys.iter().cloned());
    // the datastore's record before any Secret is sealed with the new key: a server started meanwhile opens them
    let token = crate::cluster_secrets::token(&dir, token.as_deref())?
        .ok_or_else(|| ServerError::Bootstrap(format!("no server token in {}", dir.display())))?;
    let shared = crate::cluster_secrets::Shared { encryption_keys: keys.clone(), ..shared };
    crate::cluster_secrets::republish(store.inner().as_ref(), &token, &shared).await?;
    crate::pki::write_encryption_keys(&dir, &keys)?;
    let store = Encrypted::new(store.into_inner(), &keys, vec![SECRETS_PREFIX.to_string()]);
    let mut rewritten = 0;
    for kv in store.list(SECRETS_PREFIX, Default::default()).await?.items {
        // compare-and-swap on the revision read: a Secret changed meanwhile (by a server still running, which the
        // instructions rule out) fails the rotation rather than being overwritten
        store.update(&kv.key, kv.value.clone(), kv.mod_revision).await?;
        rewritten += 1;
    }
    Ok((new.name, rewritten))
}

/// The datastore and the cluster's shared secrets as this server's token opens them, for the offline `skiff
/// secrets` commands (run with every server stopped).
async fn offline_secrets(
    cfg: &ServerConfig,
) -> Result<(Box<dyn Storage>, crate::cluster_secrets::Shared, String), ServerError> {
    let dir = cfg.data_dir.join("pki");
    let backend = open_backend(cfg).await?;
    crate::cluster_secrets::finish_rotation(backend.as_ref(), &dir).await?;
    let token = crate::cluster_secrets::token(&dir, cfg.token.as_deref())?
        .ok_or_else(|| ServerError::Bootstrap(format!("no server token in {} and none given", dir.display())))?;
    let shared =
        crate::cluster_secrets::establish(backend.as_ref(), &dir, Some(token.clone()), async |_| Ok(())).await?;
    Ok((backend, shared, token))
}

/// Compacts the datastore to its current revision, after an offline change of the cluster's secrets (every server
/// stopped): older versions of the record (sealed under a token now retired) and of Secrets (sealed with a key now
/// retired, which watchers resuming from before would be sent as an event's previous value) are gone. Clients
/// resuming a watch from before it relist (410 Gone), as after any compaction.
async fn forget_history(store: &dyn Storage) -> Result<(), ServerError> {
    let now = store.revision().await?;
    store.compact(now).await?;
    Ok(())
}

/// Removes the Secret encryption key `name` from the cluster's shared secrets and this server's key file, once no
/// Secret is sealed with it any more (after a rotation); the record remembers it as retired, so a server whose file
/// still has it drops it when it starts. Run with every server of the cluster stopped. Returns the keys left.
pub async fn retire_encryption_key(cfg: &ServerConfig, name: &str) -> Result<Vec<String>, ServerError> {
    let (backend, shared, token) = offline_secrets(cfg).await?;
    let raw = backend.list(SECRETS_PREFIX, Default::default()).await?;
    let sealing_with =
        raw.items.iter().filter(|kv| crate::storage::encrypt::sealed_with(&kv.value).as_deref() == Some(name)).count();
    let retired = crate::cluster_secrets::retire(&shared, name, sealing_with)?;
    crate::cluster_secrets::republish(backend.as_ref(), &token, &retired).await?;
    crate::pki::write_encryption_keys(&cfg.data_dir.join("pki"), &retired.encryption_keys)?;
    forget_history(backend.as_ref()).await?;
    Ok(retired.encryption_keys.into_iter().map(|k| k.name).collect())
}

/// Seals the cluster's shared secrets under `new_token` (a new random one when `None`) and writes it to this
/// server's token file; the old token opens nothing from then on. Run with every server of the cluster stopped;
/// the others start again with `--token <new>`. Returns the new token.
pub async fn rotate_server_token(cfg: &ServerConfig, new_token: Option<String>) -> Result<String, ServerError> {
    let new_token = match new_token.map(|t| t.trim().to_string()) {
        Some(t) if t.is_empty() => return Err(ServerError::Bootstrap("the new token is empty".into())),
        Some(t) => t,
        None => crate::cluster_secrets::new_token(),
    };
    let (backend, shared, token) = offline_secrets(cfg).await?;
    if new_token == token {
        return Err(ServerError::Bootstrap("the new token is the current one".into()));
    }
    let dir = cfg.data_dir.join("pki");
    crate::pki::write_next_token(&dir, &new_token)?;
    if let Err(e) = crate::cluster_secrets::reseal(backend.as_ref(), &token, &new_token, &shared).await {
        // the write may have happened even so (an answer lost on the way back): the stored record says which token
        // is in force, and the staged one is moved into place or removed accordingly
        let _ = crate::cluster_secrets::finish_rotation(backend.as_ref(), &dir).await;
        return Err(e.into());
    }
    crate::cluster_secrets::finish_rotation(backend.as_ref(), &dir).await?;
    if crate::cluster_secrets::token(&dir, None)?.as_deref() != Some(new_token.as_str()) {
        return Err(ServerError::Bootstrap(format!("the new token was not saved to {}", dir.display())));
    }
    forget_history(backend.as_ref()).await?;
    Ok(new_token)
}

/// Starts the API server (and its in-process controllers) and writes the admin kubeconfig.
pub async fn start(cfg: ServerConfig) -> Result<RunningServer, ServerError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| ServerError::Io { context: format!("creating {}", cfg.data_dir.display()), source: e })?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ServerError::Io { context: format!("listening on {}", cfg.listen), source: e })?;
    let addr = listener.local_addr().map_err(|e| ServerError::Io { context: "local address".into(), source: e })?;
    let advertise = cfg.advertise.clone().unwrap_or_else(|| {
        if addr.ip().is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() }
    });
    let advertise_host = advertise.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| advertise.clone());
    let mut names = cfg.extra_names.clone();
    names.push(advertise_host);
    let (store, pki) = open_store(&cfg, &names).await?;
    let agent_client = pki.issue_client("system:apiserver", Some("system:masters"))?;
    let agent_tls = apiserver::proxy::agent_client_config(&agent_client.cert_pem, &agent_client.key_pem)
        .map_err(ServerError::Bootstrap)?;
    let api = Api::new(
        store,
        ApiConfig { advertise_address: advertise.clone(), limits: cfg.limits.clone(), ..Default::default() },
        AuthConfig { node_token: pki.node_token.clone(), sa_key: pki.sa_key.clone(), ..Default::default() },
        Some(Arc::new(agent_tls)),
    );
    let (crds, crd_revision) = api.load_crds().await.map_err(|e| ServerError::Bootstrap(e.to_string()))?;
    tracing::info!(crds, "custom resources registered");
    tokio::spawn(api.clone().follow_crds(crd_revision));
    bootstrap(&api, &advertise).await?;
    crate::controllers::rbac::reconcile_defaults(&api)
        .await
        .map_err(|e| ServerError::Bootstrap(format!("default roles: {e}")))?;
    let (tls, serving) = apiserver::serve::tls_config(&pki)?;
    let tls = Arc::new(tls);
    tokio::spawn(apiserver::serve::serve(listener, tls, apiserver::router(api.clone()), cfg.limits.clone()));
    tokio::spawn(crate::compaction::run(api.store.clone(), cfg.compaction_interval));
    if matches!(cfg.datastore, Datastore::Sqlite) {
        // etcd expires Events itself (leases)
        tokio::spawn(crate::event_expiry::run(api.store.clone(), cfg.event_ttl));
    }
    let url = format!("https://{advertise}");
    let kubeconfig_path = cfg.data_dir.join("kubeconfig");
    kubeconfig::write(&kubeconfig_path, &admin_kubeconfig(&url, &pki))
        .map_err(|e| ServerError::Io { context: format!("writing {}", kubeconfig_path.display()), source: e })?;
    tokio::spawn(certificate_loop(
        CertificateWatch {
            dir: pki.dir.clone(),
            names: names.clone(),
            url: url.clone(),
            kubeconfig: kubeconfig_path.clone(),
        },
        pki.clone(),
        serving,
    ));
    // With controllers, the API machinery runs with them on the leader only; an API server alone runs it itself.
    let (machinery_api, ca) = (api.clone(), pki.ca.clone());
    let machinery = move || -> futures::future::BoxFuture<'static, ()> {
        Box::pin(crate::controllers::run_api_machinery(machinery_api.clone(), ca.clone()))
    };
    if let Some(opts) = cfg.controllers.clone() {
        let client = skiff_client::connect(&kubeconfig_path)
            .await
            .map_err(|e| ServerError::Bootstrap(format!("controller client: {e}")))?;
        // the identity names the server, so whoever reads the Lease knows which one leads
        let identity = format!("{}_{advertise}", opts.identity);
        let scheduler_client = skiff_client::connect(&kubeconfig_path)
            .await
            .map_err(|e| ServerError::Bootstrap(format!("scheduler client: {e}")))?;
        let election_client = skiff_client::connect(&kubeconfig_path)
            .await
            .map_err(|e| ServerError::Bootstrap(format!("leader election client: {e}")))?;
        let opts = crate::controllers::manager::ManagerOptions {
            errors: api.metrics.controller_errors.clone(),
            identity,
            scheduler_client: Some(scheduler_client),
            election_client: Some(election_client),
            ..opts
        };
        tokio::spawn(crate::controllers::manager::run(client, opts, Some(Arc::new(machinery))));
    } else {
        tokio::spawn(machinery());
    }
    tracing::info!(%url, kubeconfig = %kubeconfig_path.display(), "API server ready");
    Ok(RunningServer { api, addr, url, pki, kubeconfig: kubeconfig_path })
}

/// The admin kubeconfig for `url`, with a note on reaching a cluster of several servers.
fn admin_kubeconfig(url: &str, pki: &Pki) -> String {
    let content = kubeconfig::render(
        "skiff",
        url,
        &pki.ca.cert_pem,
        "skiff-admin",
        Credential::ClientCert { cert_pem: &pki.admin.cert_pem, key_pem: &pki.admin.key_pem },
    );
    format!(
        "# The admin credential of a skiff cluster. Every server of the cluster (servers joined with\n\
         # `skiff server --token`) accepts it: to keep working when this server is down, point `server:` at a\n\
         # load balancer or DNS name in front of all of them (give each server that name with --tls-san), or add\n\
         # a cluster and context per server and switch with `kubectl config use-context`.\n{content}"
    )
}

/// What the certificate loop watches.
struct CertificateWatch {
    dir: PathBuf,
    names: Vec<String>,
    url: String,
    kubeconfig: PathBuf,
}

/// Every minute: renews certificates due for renewal (and picks up `skiff certs rotate`); a new serving
/// certificate is used from the next handshake, a new admin certificate rewrites the admin kubeconfig.
async fn certificate_loop(w: CertificateWatch, mut current: Pki, serving: Arc<apiserver::serve::ServingCert>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let pki = match Pki::load_or_create(&w.dir, &w.names) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "checking the certificates failed");
                continue;
            }
        };
        if pki.server.cert_pem != current.server.cert_pem {
            match serving.replace(&pki.server.cert_pem, &pki.server.key_pem) {
                Ok(()) => tracing::info!("serving a renewed certificate"),
                Err(e) => tracing::warn!(error = %e, "the renewed serving certificate does not load"),
            }
        }
        if pki.admin.cert_pem != current.admin.cert_pem {
            match kubeconfig::write(&w.kubeconfig, &admin_kubeconfig(&w.url, &pki)) {
                Ok(()) => tracing::info!(kubeconfig = %w.kubeconfig.display(), "admin kubeconfig rewritten"),
                Err(e) => tracing::warn!(error = %e, "rewriting the admin kubeconfig failed"),
            }
        }
        current = pki;
    }
}

/// Creates what every cluster has: the system namespaces and the `kubernetes` Service, whose endpoints every
/// server then keeps (its own Lease, every live server's address).
async fn bootstrap(api: &Arc<Api>, advertise: &str) -> Result<(), ServerError> {
    let opts = WriteOptions { field_manager: Some("skiff-apiserver".into()), ..Default::default() };
    let ns_info = api.builtin("", "namespaces");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if api.try_get(&ns_info, None, ns).await.map_err(|e| ServerError::Bootstrap(e.to_string()))?.is_none() {
            api.create(
                &ns_info,
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                &opts,
            )
            .await
            .map(|_| ())
            .or_else(created_meanwhile)
            .map_err(|e| ServerError::Bootstrap(format!("namespace {ns}: {e}")))?;
        }
    }
    let svc_info = api.builtin("", "services");
    if api
        .try_get(&svc_info, Some("default"), "kubernetes")
        .await
        .map_err(|e| ServerError::Bootstrap(e.to_string()))?
        .is_none()
    {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": crate::apiserver::alloc::KUBERNETES_SERVICE_IP.to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}});
        api.create(&svc_info, Some("default"), svc, &opts)
            .await
            .map(|_| ())
            .or_else(created_meanwhile)
            .map_err(|e| ServerError::Bootstrap(format!("kubernetes service: {e}")))?;
    }
    let ks = "kube-system";
    if api.try_get(&svc_info, Some(ks), "kube-dns").await.map_err(|e| ServerError::Bootstrap(e.to_string()))?.is_none()
    {
        // cluster DNS: served by every node agent; each agent publishes its own endpoint (internalTrafficPolicy Local)
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": ks,
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
            "spec": {"clusterIP": crate::apiserver::alloc::DNS_SERVICE_IP.to_string(), "internalTrafficPolicy": "Local", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}});
        api.create(&svc_info, Some(ks), svc, &opts)
            .await
            .map(|_| ())
            .or_else(created_meanwhile)
            .map_err(|e| ServerError::Bootstrap(format!("kube-dns service: {e}")))?;
    }
    let mut seen = crate::apiserver_endpoints::Observations::default();
    if let Err(e) = crate::apiserver_endpoints::reconcile(api, advertise, &mut seen).await {
        // another server starting at the same time may have won a write: the loop tries again in a few seconds
        tracing::warn!(error = %e, "the first pass over the kubernetes endpoints failed");
    }
    tokio::spawn(crate::apiserver_endpoints::run(api.clone(), advertise.to_string(), seen));
    Ok(())
}

/// Treats "already exists" as done: another server starting at the same time created it first.
fn created_meanwhile(e: crate::apiserver::error::ApiError) -> Result<(), crate::apiserver::error::ApiError> {
    if e.code == 409 { Ok(()) } else { Err(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline(dir: &std::path::Path) -> ServerConfig {
        ServerConfig {
            data_dir: dir.to_path_buf(),
            listen: ([127, 0, 0, 1], 0).into(),
            advertise: None,
            extra_names: Vec::new(),
            datastore: Datastore::Sqlite,
            token: None,
            compaction_interval: Duration::from_secs(300),
            event_ttl: Duration::from_secs(3600),
            controllers: None,
            limits: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_rotated_token_leaves_no_record_the_old_one_opens() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let cfg = offline(tmp.path());
        // a cluster's secrets sealed under the first token (as `skiff server` stores them), changed once so the
        // store's history holds an older version of the record too
        let old = "the-first-token".to_string();
        {
            let backend = open_backend(&cfg).await.expect("store");
            let pki = tmp.path().join("pki");
            let shared = crate::cluster_secrets::establish(backend.as_ref(), &pki, Some(old.clone()), async |_| Ok(()))
                .await
                .expect("the first server's secrets");
            crate::cluster_secrets::republish(backend.as_ref(), &old, &shared).await.expect("republished");
        }
        let new = rotate_server_token(&cfg, None).await.expect("rotated");
        let pki = tmp.path().join("pki");
        assert_eq!(crate::cluster_secrets::token(&pki, None).expect("token").as_deref(), Some(new.as_str()));
        assert!(!pki.join(crate::cluster_secrets::NEXT_TOKEN_FILE).exists());
        // every version the store still holds opens with the new token only: the old ones were compacted away
        let store = open_backend(&cfg).await.expect("store");
        let now = store.revision().await.expect("revision");
        assert_eq!(store.compacted_revision().await.expect("compacted"), now, "history compacted to the rotation");
        let record = store.get(crate::cluster_secrets::KEY).await.expect("get").expect("record");
        assert!(crate::cluster_secrets::open(&new, &record.value).is_ok());
        assert!(matches!(
            crate::cluster_secrets::open(&old, &record.value),
            Err(crate::cluster_secrets::SecretsError::WrongToken)
        ));
        assert!(matches!(
            store.watch(crate::cluster_secrets::KEY, record.mod_revision - 1).await,
            Err(crate::storage::StorageError::Compacted { .. })
        ));
    }
}

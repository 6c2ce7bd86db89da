//! The node's own identity: a client certificate for `system:node:NAME` (group `system:nodes`), obtained and
//! renewed through CertificateSigningRequests, as kubelet's TLS bootstrap does.
//!
//! 1. A certificate kept in `<data dir>/pki/node-client.{crt,key}` that names this node and is not yet due for
//!    renewal is used as it is.
//! 2. Otherwise the agent makes a key, asks for a certificate with the join token (whose group,
//!    `system:bootstrappers`, may do nothing else) and waits for the server to approve and sign it.
//! 3. While running, it asks again with its own certificate when a third of the lifetime is left, and the API
//!    client takes the new certificate from the next connection on ([`NodeCert`] resolves it at each handshake).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::api::{Api, PostParams};

use crate::AgentError;

/// The signer of node client certificates.
pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// How long the agent waits for its request to be approved and signed.
const WAIT: Duration = Duration::from_secs(60);

/// Where the node's certificate is kept.
#[derive(Debug, Clone)]
pub struct Files {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM, mode 0600).
    pub key: PathBuf,
}

impl Files {
    /// The files under the agent's `pki` directory.
    pub fn under(pki_dir: &Path) -> Self {
        Files { cert: pki_dir.join("node-client.crt"), key: pki_dir.join("node-client.key") }
    }

    fn load(&self) -> Option<(String, String)> {
        Some((std::fs::read_to_string(&self.cert).ok()?, std::fs::read_to_string(&self.key).ok()?))
    }

    fn save(&self, cert: &str, key: &str) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(d) = self.cert.parent() {
            std::fs::create_dir_all(d)?;
        }
        // key first, both through a rename: a crash leaves the old pair or the new key with the old certificate,
        // which the next start replaces
        for (path, text, mode) in [(&self.key, key, 0o600), (&self.cert, cert, 0o644)] {
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
        }
        Ok(())
    }
}

/// The user a node's certificate names.
pub fn node_user(node: &str) -> String {
    format!("system:node:{node}")
}

/// Whether a kept certificate can be used as it is by `node` at `now`.
pub fn usable(cert_pem: &str, node: &str, now: i64) -> bool {
    let names_us = skiff_client::identity::subject_of_pem(cert_pem)
        .is_some_and(|(user, groups)| user == node_user(node) && groups == ["system:nodes"]);
    let fresh = skiff_client::identity::validity_of(cert_pem)
        .is_some_and(|(from, to)| from <= now && !skiff_client::identity::needs_renewal(from, to, now));
    names_us && fresh
}

/// A new key and a certificate request for `node` (PEMs: key, request).
pub fn new_request(node: &str) -> Result<(String, String), AgentError> {
    let bad = |e: rcgen::Error| AgentError::Config(format!("making the node's certificate request: {e}"));
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, node_user(node));
    p.distinguished_name = dn;
    let csr = p.serialize_request(&key).map_err(bad)?;
    Ok((key.serialize_pem(), csr.pem().map_err(bad)?))
}

/// Asks the API server (as whoever `client` is) for a node certificate and waits for it: (certificate, key).
pub async fn request_certificate(
    client: &kube::Client,
    node: &str,
    lifetime: Option<Duration>,
) -> Result<(String, String), AgentError> {
    let (key, request) = new_request(node)?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: kube::api::ObjectMeta { generate_name: Some(format!("node-csr-{node}-")), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(request.into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            expiration_seconds: lifetime.and_then(|d| i32::try_from(d.as_secs()).ok()),
            ..Default::default()
        },
        status: None,
    };
    let created =
        api.create(&PostParams::default(), &csr).await.map_err(AgentError::api("asking for the node's certificate"))?;
    let name = created.metadata.name.unwrap_or_default();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let cur = api.get(&name).await.map_err(AgentError::api("reading the node's certificate request"))?;
        let status = cur.status.unwrap_or_default();
        if let Some(c) = status.conditions.iter().flatten().find(|c| matches!(c.type_.as_str(), "Denied" | "Failed")) {
            return Err(AgentError::Config(format!(
                "the node's certificate request {name} was {}: {}",
                c.type_.to_lowercase(),
                c.message.clone().unwrap_or_default()
            )));
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert = String::from_utf8(cert.0)
                .map_err(|_| AgentError::Config("the issued certificate is not PEM".into()))?;
            if !usable(&cert, node, jiff::Timestamp::now().as_second()) {
                return Err(AgentError::Config(format!(
                    "the certificate issued for {name} does not name node {node} or is not valid now"
                )));
            }
            return Ok((cert, key));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::Config(format!(
                "the node's certificate request {name} was not approved within {}s (approve it with `kubectl certificate approve {name}`)",
                WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node's current certificate, handed to each new TLS connection.
#[derive(Debug)]
pub struct NodeCert(ArcSwap<rustls::sign::CertifiedKey>);

impl NodeCert {
    /// From PEMs.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, AgentError> {
        Ok(NodeCert(ArcSwap::from_pointee(certified(cert_pem, key_pem)?)))
    }

    /// Uses this certificate from the next connection on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), AgentError> {
        self.0.store(Arc::new(certified(cert_pem, key_pem)?));
        Ok(())
    }
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<rustls::sign::CertifiedKey, AgentError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |what: &str, e: &dyn std::fmt::Display| AgentError::Config(format!("the node certificate's {what}: {e}"));
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", &e))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("key", &e))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, key, &provider).map_err(|e| bad("key pair", &e))
}

impl rustls::client::ResolvesClientCert for NodeCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A kube client of `servers` (trusting `ca_pem`; the first used until it cannot be reached, then the next, see
/// [`crate::failover`]) that authenticates with whatever `cert` holds at each connection.
pub async fn client_with(servers: &[String], ca_pem: &str, cert: Arc<NodeCert>) -> Result<kube::Client, AgentError> {
    use kube::client::ConfigExt as _;
    skiff_client::install_crypto_provider();
    let list = crate::failover::Servers::new(servers).map_err(AgentError::Config)?;
    // the configuration carries the CA; the server is chosen per request, the credential is the resolver
    let text = crate::client::kubeconfig_yaml(&list.current_uri().to_string(), "", ca_pem);
    let bad = |e: kube::config::KubeconfigError| AgentError::Config(format!("client configuration: {e}"));
    let kc = kube::config::Kubeconfig::from_yaml(&text).map_err(bad)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.map_err(bad)?;
    config.auth_info = Default::default();
    let mut tls = config.rustls_client_config().map_err(AgentError::api("the node client's TLS configuration"))?;
    tls.client_auth_cert_resolver = cert;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    // a server that does not answer is left for the next one after this long
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_keepalive(Some(Duration::from_secs(30)));
    // small requests go out at once: with Nagle's algorithm a request's second segment (an HTTP/2 DATA frame after
    // its HEADERS) waited for the server's delayed ACK, about 40 ms per call
    http.set_nodelay(true);
    // HTTP/2 when the server offers it: the per-object watches of Secrets and ConfigMaps, the pod watch and the
    // status writes then share one connection instead of one each
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    // a server that stops answering on an open connection (its host gone) is found out within 15 s
    let hyper_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(Some(Duration::from_secs(10)))
        .http2_keep_alive_timeout(Duration::from_secs(5))
        .http2_keep_alive_while_idle(true)
        .build::<_, kube::client::Body>(https);
    let service = tower::ServiceBuilder::new().layer(crate::failover::FailoverLayer(list)).service(hyper_client);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// Joins the cluster as `node`: the kept certificate, or a new one asked for with `token`; returns the client and
/// the certificate holder (for [`renew`]).
pub async fn join(
    servers: &[String],
    token: &str,
    ca_pem: &str,
    node: &str,
    files: &Files,
    lifetime: Option<Duration>,
) -> Result<(kube::Client, Arc<NodeCert>), AgentError> {
    let now = jiff::Timestamp::now().as_second();
    let (cert, key) = match files.load().filter(|(c, _)| usable(c, node, now)) {
        Some(pair) => pair,
        None => {
            let (cert, key) = request_from_any(servers, token, ca_pem, node, lifetime).await?;
            files.save(&cert, &key).map_err(|e| AgentError::Config(format!("saving the node certificate: {e}")))?;
            tracing::info!(node, path = %files.cert.display(), "obtained the node's client certificate");
            (cert, key)
        }
    };
    let holder = Arc::new(NodeCert::new(&cert, &key)?);
    let client = client_with(servers, ca_pem, holder.clone()).await?;
    Ok((client, holder))
}

/// How long a connection to an API server may take before the next server is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The node's first certificate, asked for with the join token from the first of `servers` that answers.
async fn request_from_any(
    servers: &[String],
    token: &str,
    ca_pem: &str,
    node: &str,
    lifetime: Option<Duration>,
) -> Result<(String, String), AgentError> {
    let mut last = AgentError::Config("no API server given".into());
    for server in servers {
        let bootstrap = crate::client::connect(server, token, ca_pem).await?;
        match request_certificate(&bootstrap, node, lifetime).await {
            Ok(pair) => return Ok(pair),
            // the server could not be reached or failed: the next one shares its datastore and may answer
            Err(e @ AgentError::Api { .. }) => {
                tracing::warn!(%server, error = %e, "asking for the node certificate failed; trying the next server");
                last = e;
            }
            // an answer (denied, no certificate issued): every server would give the same
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Renews the node's certificate (asking as the node itself) whenever a third of its lifetime is left; checks
/// every `every`. Runs until the task is dropped.
pub async fn renew(
    client: kube::Client,
    holder: Arc<NodeCert>,
    node: String,
    files: Files,
    lifetime: Option<Duration>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some((cert, _)) = files.load() else { continue };
        if usable(&cert, &node, jiff::Timestamp::now().as_second()) {
            continue;
        }
        match request_certificate(&client, &node, lifetime).await {
            Ok((cert, key)) => {
                if let Err(e) = files.save(&cert, &key) {
                    tracing::warn!(error = %e, "saving the renewed node certificate failed");
                    continue;
                }
                match holder.replace(&cert, &key) {
                    Ok(()) => tracing::info!(node, "renewed the node's client certificate"),
                    Err(e) => tracing::warn!(error = %e, "the renewed node certificate does not load"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing the node's client certificate failed; retrying"),
        }
    }
}

/// [`join`], then keeps the certificate renewed in the background (checked every minute): the client the agent
/// runs with.
pub async fn connect_node(
    servers: &[String],
    token: &str,
    ca_pem: &str,
    node: &str,
    pki_dir: &Path,
    lifetime: Option<Duration>,
) -> Result<kube::Client, AgentError> {
    let files = Files::under(pki_dir);
    let (client, holder) = join(servers, token, ca_pem, node, &files, lifetime).await?;
    tokio::spawn(renew(client.clone(), holder, node.to_string(), files, lifetime, Duration::from_secs(60)));
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_certificate_is_used_only_if_it_names_this_node_and_is_not_due() {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let cert_for = |cn: &str, org: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(rcgen::DnType::OrganizationName, org);
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.not_before = rcgen::date_time_ymd(2030, 1, 1);
            p.not_after = rcgen::date_time_ymd(2031, 1, 1);
            p.signed_by(&key, &issuer).expect("signed").pem()
        };
        let _ = ca_cert;
        let ours = cert_for("system:node:n1", "system:nodes");
        let mid_2030 = jiff::Timestamp::from_second(1_900_000_000).expect("time").as_second();
        assert!(usable(&ours, "n1", mid_2030));
        assert!(!usable(&ours, "n2", mid_2030), "another node's certificate");
        assert!(!usable(&cert_for("system:node:n1", "system:masters"), "n1", mid_2030));
        let late_2030 = 1_920_000_000; // past two thirds of 2030
        assert!(!usable(&ours, "n1", late_2030), "due for renewal");
        assert!(!usable("garbage", "n1", mid_2030));
    }

    #[test]
    fn the_request_asks_for_exactly_the_node_identity() {
        let (key, request) = new_request("n1").expect("request");
        assert!(key.contains("PRIVATE KEY"));
        let p = rcgen::CertificateSigningRequestParams::from_pem(&request).expect("valid, self-signed request");
        let dn: Vec<String> = p.params.distinguished_name.iter().map(|(_, v)| format!("{v:?}")).collect();
        assert!(
            dn.iter().any(|v| v.contains("system:node:n1")) && dn.iter().any(|v| v.contains("system:nodes")),
            "{dn:?}"
        );
        assert!(p.params.subject_alt_names.is_empty());
    }
}

//! The HTTPS listener: rustls with the cluster CA verifying (optional) client certificates, HTTP/1.1 and HTTP/2
//! (ALPN), upgrades (exec), and the verified client identity attached to each request.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::auth::{PeerIdentity, User};
use super::limits::Limits;
use super::read_deadline::FirstReadDeadline;
use crate::pki::Pki;

/// Concurrent HTTP/2 streams per connection (kube-apiserver's default).
const H2_STREAMS: u32 = 1000;

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A certificate or key did not parse.
    #[error("TLS material: {0}")]
    Pem(String),
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The serving certificate, replaceable while the server runs (a renewed certificate is used by the next
/// handshake).
#[derive(Debug)]
pub struct ServingCert {
    current: arc_swap::ArcSwap<CertifiedKey>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServingCert {
    fn load(
        provider: &rustls::crypto::CryptoProvider,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<CertifiedKey, ServeError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ServeError::Pem(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| ServeError::Pem(e.to_string()))?;
        let signing = provider.key_provider.load_private_key(key)?;
        Ok(CertifiedKey::new(certs, signing))
    }

    /// Serves this certificate and key (PEM) from the next handshake on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), ServeError> {
        self.current.store(Arc::new(Self::load(&self.provider, cert_pem, key_pem)?));
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The server's TLS configuration: the serving certificate (replaceable through the returned handle), client
/// certificates verified against the cluster CA when presented (bearer tokens cover clients without one), h2 and
/// http/1.1.
pub fn tls_config(pki: &Pki) -> Result<(rustls::ServerConfig, Arc<ServingCert>), ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots.add(c.map_err(|e| ServeError::Pem(e.to_string()))?).map_err(ServeError::Tls)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServeError::Verifier(e.to_string()))?;
    let serving = Arc::new(ServingCert {
        current: arc_swap::ArcSwap::from_pointee(ServingCert::load(
            &provider,
            &pki.server.cert_pem,
            &pki.server.key_pem,
        )?),
        provider: provider.clone(),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((cfg, serving))
}

/// The user named by a verified client certificate: CN is the name, each O a group.
pub fn identity_of(der: &[u8]) -> Option<User> {
    let (name, mut groups) = skiff_client::identity::subject_of(der)?;
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// Serves `app` over HTTPS on `listener` until the task is dropped, within `limits`: at most
/// `max_connections` open (further ones are closed at once), the TLS handshake and the first bytes after it in
/// time, each HTTP/1.1 request head in time (which also ends idle keep-alive connections), HTTP/2 peers that answer
/// keep-alive pings.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: Router, limits: Limits) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "too many connections: closed");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let identity =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| identity_of(c.as_ref()));
            let svc = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                if let Some(u) = &identity {
                    req.extensions_mut().insert(PeerIdentity(u.clone()));
                }
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(limits.h2_keepalive))
                .keep_alive_timeout(limits.h2_keepalive)
                // kube-apiserver's --http2-max-streams-per-connection: a node's watches share one connection
                .max_concurrent_streams(H2_STREAMS);
            let io = FirstReadDeadline::new(tls, limits.header_read_timeout);
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), svc).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

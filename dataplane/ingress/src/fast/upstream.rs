//! Connections to pods on the fast path: plain TCP, or TLS for routes with `backend-protocol: HTTPS`.
//!
//! TLS to pods follows ingress-nginx's defaults (and Pingora's path here): the pod's certificate is not verified
//! (`proxy-ssl-verify: off`; pods' certificates are rarely issued for the address the ingress dials), no SNI is
//! sent (`proxy-ssl-server-name: off`), and HTTP/1.1 is offered by ALPN, as nginx speaks HTTP/1.1 to `https://`
//! upstreams. The handshake's signature is still checked against the certificate the pod presents. Sessions are
//! resumed from rustls's client cache.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Where a pooled connection goes: the pod's address, and whether it speaks TLS there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The pod's address.
    pub addr: SocketAddr,
    /// TLS to the pod (`backend-protocol: HTTPS`).
    pub tls: bool,
}

/// A connection to a pod.
pub enum Upstream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Upstream {
    /// Opens a connection to `peer` (TCP, then the TLS handshake when it speaks TLS) within `timeout`; `Err(true)`
    /// on timeout, `Err(false)` on any other failure.
    pub async fn connect(peer: Peer, timeout: Duration) -> Result<Upstream, bool> {
        let open = async {
            let tcp = TcpStream::connect(peer.addr).await.map_err(|e| ("connect", e))?;
            let _ = tcp.set_nodelay(true);
            if !peer.tls {
                return Ok(Upstream::Plain(tcp));
            }
            let name = ServerName::IpAddress(peer.addr.ip().into());
            let tls = TlsConnector::from(CONFIG.clone()).connect(name, tcp).await.map_err(|e| ("TLS handshake", e))?;
            Ok(Upstream::Tls(Box::new(tls)))
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(Ok(up)) => Ok(up),
            Ok(Err((stage, e))) => {
                tracing::debug!(addr = %peer.addr, stage, error = %e, "connecting to the pod failed");
                Err(false)
            }
            Err(_) => Err(true),
        }
    }

    /// Whether an idle connection is still open with nothing waiting: a pod that closed it, or that sent bytes
    /// after its last response (a body after HEAD or 204, say), must never get — or answer — another client's
    /// request. Over TLS, any bytes on the socket (a close_notify alert, late records) or decrypted bytes already
    /// held count alike; the connection is then dropped, so what the check reads is never needed.
    pub fn still_open(&mut self) -> bool {
        let tcp = match self {
            Upstream::Plain(tcp) => tcp,
            Upstream::Tls(tls) => {
                let (tcp, session) = tls.get_mut();
                let mut probe = [0u8; 1];
                match io::Read::read(&mut session.reader(), &mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => return false, // plaintext held, or the session ended
                }
                tcp
            }
        };
        let mut probe = [0u8; 1];
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for Upstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS client settings for pods (built once).
static CONFIG: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.enable_sni = false;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
});

/// Accepts any certificate of the pod (ingress-nginx's `proxy-ssl-verify: off`) and checks the handshake's
/// signature with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A TLS pod on loopback: for each connection, answers `x` with `a`, then on `s` sends stray bytes and on `c`
    /// closes with close_notify.
    async fn pod() -> SocketAddr {
        let c = rcgen::generate_simple_self_signed(vec!["pod.local".to_owned()]).expect("rcgen");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![c.cert.der().clone()], key)
            .expect("certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut byte = [0u8; 1];
                    while tls.read_exact(&mut byte).await.is_ok() {
                        let _ = match byte[0] {
                            b'x' => tls.write_all(b"a").await,
                            b's' => tls.write_all(b"stray").await,
                            _ => tls.shutdown().await,
                        };
                    }
                });
            }
        });
        addr
    }

    async fn exchange(up: &mut Upstream) {
        up.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        up.read_exact(&mut byte).await.expect("answer");
        assert_eq!(&byte, b"a");
    }

    #[tokio::test]
    async fn an_idle_tls_connection_is_open_until_the_pod_sends_more_or_closes() {
        let peer = Peer { addr: pod().await, tls: true };
        for (command, what) in [(b"s", "stray bytes"), (b"c", "close_notify")] {
            let mut up = Upstream::connect(peer, Duration::from_secs(5)).await.expect("TLS to the pod");
            exchange(&mut up).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(up.still_open(), "quiet after its answer: reusable");
            exchange(&mut up).await;
            up.write_all(command).await.expect("write");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!up.still_open(), "{what} after the last answer: not reusable");
        }
    }
}

//! The HTTP stack under every Skiff `kube::Client`: what `kube::Client::try_from(Config)` builds (TLS and
//! credentials from the configuration, the base URI, extra headers, kube's retry of 429/503/504 answers, connect,
//! read and write timeouts), with `TCP_NODELAY` on its sockets and HTTP/2 offered beside HTTP/1.1.
//!
//! kube-rs leaves Nagle's algorithm on (kube-rs/kube#2056). A request that leaves in two segments (HTTP/1.1 headers
//! then a small body, or HTTP/2 HEADERS then DATA) then holds its second segment until the server acknowledges the
//! first, and the server, waiting for the body, acknowledges only when its delayed-ACK timer fires: about 40 ms added
//! to a write on an otherwise quiet connection. The node agent's service-account token request took 44 ms on an idle
//! node, 3 ms with the option set (docs/benchmarks.md).

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;
use tower::ServiceBuilder;

/// The connector every client uses: plain TCP with `TCP_NODELAY` and the configuration's connect timeout, TLS from
/// the configuration (CA, client certificate, server name), and its read and write timeouts.
pub fn connector(
    cfg: &kube::Config,
) -> Result<TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(cfg.connect_timeout);
    let https = https(cfg, http)?;
    let mut connector = TimeoutConnector::new(https);
    connector.set_read_timeout(cfg.read_timeout);
    connector.set_write_timeout(cfg.write_timeout);
    Ok(connector)
}

/// TLS from `cfg` as kube's `rustls_https_connector_with_connector` sets it up (its client configuration and server
/// name), offering HTTP/2 as well as HTTP/1.1. kube's own offers only HTTP/1.1, where every request in flight needs
/// a connection of its own: a burst of concurrent requests opened one each (a TLS handshake at both ends), and
/// hyper's pool kept them all for 90 s. Over HTTP/2, as client-go talks to kube-apiserver, a client's requests and
/// watches share one connection.
fn https(cfg: &kube::Config, http: HttpConnector) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, kube::Error> {
    let mut builder =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg.rustls_client_config()?).https_or_http();
    if let Some(name) = &cfg.tls_server_name {
        let name = name.clone().try_into().map_err(|e: rustls::pki_types::InvalidDnsNameError| {
            kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
        })?;
        builder = builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    Ok(builder.enable_http1().enable_http2().wrap_connector(http))
}

/// How many requests a client has in flight at once; the others wait in the client until one is answered (a watch
/// counts until its response starts, not for as long as it streams). Over HTTP/2 nothing else bounds them: a
/// controller that creates pods in batches, or a scheduler binding a backlog, sent hundreds at once, and each waited
/// in the API server behind the others (with 10k pods in `scripts/bench-scale` the p99 of pod creations rose from
/// 150-200 ms to 500 ms, docs/benchmarks.md). client-go bounds its clients by a rate instead (`QPS`, `Burst`).
/// The queue is in order, so a request that must not wait behind a burst (a lease renewal) needs a client of its
/// own: the controller manager's leader election has one (on the controllers' client its renewals missed their
/// deadline under load). The node agent's client is not built here (`skiff_agent::bootstrap::client_with`) and has
/// no such queue: its requests share one HTTP/2 connection, up to the server's 1,000 streams.
pub const MAX_IN_FLIGHT: usize = 32;

/// A client for `cfg`, as `kube::Client::try_from(cfg)` builds it but on [`connector`]. A configuration that goes
/// through a proxy (`proxy-url`) is left to kube's own builder, which handles proxies (here: refuses them, with the
/// cargo feature it would need named) rather than connecting directly as if none were set.
pub fn client(cfg: kube::Config) -> Result<kube::Client, kube::Error> {
    if cfg.proxy_url.is_some() {
        return kube::Client::try_from(cfg);
    }
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, kube::client::Body>(connector(&cfg)?);
    let retry =
        cfg.default_retry.then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(cfg.base_uri_layer())
        .option_layer(retry)
        .option_layer(cfg.auth_layer()?)
        .layer(cfg.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .concurrency_limit(MAX_IN_FLIGHT)
        .service(http);
    Ok(kube::Client::new(service, cfg.default_namespace))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper_util::rt::TokioIo;
    use tower::Service as _;

    use super::*;

    #[tokio::test]
    async fn a_proxy_in_the_configuration_is_not_bypassed() {
        crate::install_crypto_provider();
        let mut cfg = kube::Config::new("https://10.0.0.2:6443".parse().expect("uri"));
        cfg.proxy_url = Some("http://127.0.0.1:3128".parse().expect("proxy uri"));
        let err = client(cfg).err().expect("a proxied configuration is not served by a direct connection");
        assert!(err.to_string().contains("proxy"), "{err}");
    }

    #[tokio::test]
    async fn a_client_has_at_most_its_limit_of_requests_in_flight() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let arrived = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (a, r) = (arrived.clone(), release.clone());
        // answers each request (a GET without a body, one per HTTP/1.1 connection) once released
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (arrived, release) = (a.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut chunk).await
                        && n > 0
                    {
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            buf.clear();
                            arrived.fetch_add(1, Ordering::SeqCst);
                            release.acquire().await.expect("open").forget();
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if conn.write_all(answer).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        let c = client(kube::Config::new(format!("http://{addr}").parse().expect("uri"))).expect("client");
        let total = MAX_IN_FLIGHT + 20;
        let requests: Vec<_> = (0..total)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.request_text(http::Request::get("/healthz").body(Vec::new()).expect("request")).await
                })
            })
            .collect();
        // wait until no more requests arrive (bounded)
        let mut last = usize::MAX;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = arrived.load(Ordering::SeqCst);
            if now == last {
                break;
            }
            last = now;
        }
        assert_eq!(arrived.load(Ordering::SeqCst), MAX_IN_FLIGHT, "requests the server holds at once");
        release.add_permits(total);
        for r in requests {
            assert_eq!(r.await.expect("task").expect("answered"), "ok");
        }
        assert_eq!(arrived.load(Ordering::SeqCst), total, "the others were sent as answers came");
    }

    #[test]
    fn a_configured_tls_server_name_is_used_and_a_bad_one_refused() {
        crate::install_crypto_provider();
        let mut cfg = kube::Config::new("https://10.0.0.2:6443".parse().expect("uri"));
        cfg.tls_server_name = Some("kubernetes.default.svc".into());
        assert!(https(&cfg, HttpConnector::new()).is_ok());
        cfg.tls_server_name = Some("not a name".into());
        let err = https(&cfg, HttpConnector::new()).err().expect("an invalid server name is refused");
        assert!(matches!(err, kube::Error::RustlsTls(_)), "{err}");
    }

    #[tokio::test]
    async fn the_connector_turns_nagle_off_and_keeps_the_configured_timeouts() {
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let uri: http::Uri = format!("http://{addr}").parse().expect("uri");
        let mut cfg = kube::Config::new(uri.clone());
        cfg.read_timeout = Some(std::time::Duration::from_secs(7));
        let mut c = connector(&cfg).expect("connector");
        std::future::poll_fn(|cx| c.poll_ready(cx)).await.expect("ready");
        let stream = c.call(uri).await.expect("connects");
        assert_eq!(stream.read_timeout(), Some(std::time::Duration::from_secs(7)));
        match stream.get_ref() {
            hyper_rustls::MaybeHttpsStream::Http(tcp) => {
                let tcp: &TokioIo<tokio::net::TcpStream> = tcp;
                assert!(tcp.inner().nodelay().expect("TCP_NODELAY readable"), "Nagle's algorithm is still on");
            }
            hyper_rustls::MaybeHttpsStream::Https(_) => panic!("an http:// address gave a TLS stream"),
        }
    }
}

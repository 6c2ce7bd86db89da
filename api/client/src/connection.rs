//! The HTTP stack under every Skiff `kube::Client`: what `kube::Client::try_from(Config)` builds (TLS and
//! credentials from the configuration, the base URI, extra headers, kube's retry of 429/503/504 answers, connect,
//! read and write timeouts), with `TCP_NODELAY` on its sockets.
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
    let https = cfg.rustls_https_connector_with_connector(http)?;
    let mut connector = TimeoutConnector::new(https);
    connector.set_read_timeout(cfg.read_timeout);
    connector.set_write_timeout(cfg.write_timeout);
    Ok(connector)
}

/// How many idle connections a client keeps open to its server once a burst of concurrent requests is over; the
/// others are closed as their requests end. client-go's HTTP/1.1 transport keeps 25 (`MaxIdleConnsPerHost`);
/// hyper's pool kept every one for 90 s, so each burst left as many connections as it had requests in flight, a
/// TLS session and buffers at both ends for each: ~650 idle connections, about 60 MB of the API server's memory,
/// after 10k pods were created in `scripts/bench-scale` (docs/benchmarks.md).
pub const MAX_IDLE_PER_SERVER: usize = 25;

/// A client for `cfg`, as `kube::Client::try_from(cfg)` builds it but on [`connector`] and keeping at most
/// [`MAX_IDLE_PER_SERVER`] idle connections. A configuration that goes through a proxy (`proxy-url`) is left to
/// kube's own builder, which handles proxies (here: refuses them, with the cargo feature it would need named) rather
/// than connecting directly as if none were set.
pub fn client(cfg: kube::Config) -> Result<kube::Client, kube::Error> {
    if cfg.proxy_url.is_some() {
        return kube::Client::try_from(cfg);
    }
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IDLE_PER_SERVER)
        .build::<_, kube::client::Body>(connector(&cfg)?);
    let retry =
        cfg.default_retry.then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(cfg.base_uri_layer())
        .option_layer(retry)
        .option_layer(cfg.auth_layer()?)
        .layer(cfg.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
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

    /// A server of HTTP/1.1 keep-alive connections that answers no request before `burst` of them are in, and
    /// counts the connections open.
    async fn server_holding_a_burst(burst: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let open = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(tokio::sync::Semaphore::new(0));
        let o = open.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (open, arrived) = (o.clone(), arrived.clone());
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    // one request head after another (GETs without a body) until the client closes
                    while let Ok(n) = conn.read(&mut chunk).await
                        && n > 0
                    {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            arrived.add_permits(1);
                            let all = arrived.acquire_many(burst as u32).await.expect("open");
                            drop(all); // given back: every other request of the burst passes too
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if conn.write_all(answer).await.is_err() {
                                break;
                            }
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, open)
    }

    #[tokio::test]
    async fn a_burst_of_requests_leaves_at_most_the_idle_limit_of_connections_open() {
        crate::install_crypto_provider();
        let burst = MAX_IDLE_PER_SERVER + 15;
        let (addr, open) = server_holding_a_burst(burst).await;
        let c = client(kube::Config::new(format!("http://{addr}").parse().expect("uri"))).expect("client");
        let requests = (0..burst).map(|_| {
            let c = c.clone();
            async move { c.request_text(http::Request::get("/healthz").body(Vec::new()).expect("request")).await }
        });
        for answer in futures::future::join_all(requests).await {
            assert_eq!(answer.expect("answered"), "ok");
        }
        // the burst needed a connection per request; once it is over, those beyond the limit are closed
        for _ in 0..100 {
            if open.load(Ordering::SeqCst) <= MAX_IDLE_PER_SERVER {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(open.load(Ordering::SeqCst), MAX_IDLE_PER_SERVER, "connections left open after the burst");
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

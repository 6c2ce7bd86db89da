//! Assembling the Pingora server: the proxy on the HTTP and HTTPS listeners, the metrics port, the config source.
//!
//! Pingora owns the runtimes: the proxy service gets `threads` worker threads, each background service its own
//! runtime. The configuration source (file watcher or kube-rs watchers) is a background service that the proxy
//! depends on, so listeners open only once the first complete table is live.

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::{BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;

use super::IngressError;
use super::metrics_http::MetricsApp;
use super::publisher::Publisher;
use crate::config::{AccessLog, IngressConfig};
use crate::fast::FastPath;
use crate::proxy::access_log;
use crate::proxy::tls::{HandshakeCounter, SniResolver};
use crate::proxy::{IngressProxy, ProxySettings};

/// Builds the server: proxy, metrics and `source` (a background service publishing tables).
pub fn build<S: BackgroundService + Send + Sync + 'static>(
    config: &IngressConfig,
    publisher: &Arc<Publisher>,
    source: GenBackgroundService<S>,
) -> Result<Server, IngressError> {
    let conf = ServerConf {
        threads: config.threads.max(1),
        work_stealing: config.work_stealing,
        grace_period_seconds: Some(config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: config.upgrade_sock.display().to_string(),
        pid_file: config.pid_file.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt { upgrade: config.upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let metrics = publisher.metrics().clone();
    let log = match &config.access_log {
        AccessLog::Off => None,
        AccessLog::Stdout => Some(Arc::new(access_log::AccessLog::new(Box::new(std::io::stdout())))),
        AccessLog::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| IngressError::AccessLog { path: path.clone(), source })?;
            Some(Arc::new(access_log::AccessLog::new(Box::new(file))))
        }
    };
    let settings = ProxySettings {
        https_port: config.https_port(),
        max_header_bytes: config.max_header_bytes,
        client_timeout: config.client_timeout,
        keepalive_timeout: config.keepalive_timeout,
        max_retries: config.max_retries,
        fast_path: config.fast_path,
    };
    let proxy = IngressProxy::new(publisher.table(), metrics.clone(), log.clone(), settings.clone());
    let mut app = pingora::proxy::http_proxy(&server.configuration, proxy);
    let mut options = HttpServerOptions::default();
    options.h2c = config.h2c;
    // an HTTP/2 connection without a stream for the keep-alive timeout is closed (the fast path's own HTTP/2 loop
    // does the same; this one serves HTTP/2 with `--no-fast-path`)
    options.h2_idle_timeout = Some(config.keepalive_timeout);
    app.server_options = Some(options);
    let tls = match &config.https_addr {
        Some(addr) => {
            let mut tls = TlsSettings::with_callbacks(Box::new(HandshakeCounter::new(metrics.clone())))
                .map_err(|e| IngressError::Listener(e.to_string()))?;
            tls.set_cert_resolver(Arc::new(SniResolver::new(publisher.table(), metrics.clone())));
            tls.enable_h2();
            Some((addr.as_str(), tls))
        }
        None => None,
    };
    let source_handle = server.add_service(source);
    let proxy_handle = if config.fast_path {
        let fast = FastPath::new(app, publisher.table(), metrics.clone(), log, settings);
        server.add_service(listen(Service::new("skiff-ingress".into(), fast), &config.http_addr, tls))
    } else {
        server.add_service(listen(Service::new("skiff-ingress".into(), app), &config.http_addr, tls))
    };
    proxy_handle.add_dependency(&source_handle);
    if let Some(addr) = &config.metrics_addr {
        let mut m = Service::new("skiff-ingress-metrics".into(), MetricsApp::new(metrics));
        m.add_tcp(addr);
        server.add_service(m);
    }
    Ok(server)
}

/// Adds the HTTP and HTTPS listeners to the proxy service.
fn listen<A>(mut service: Service<A>, http: &str, tls: Option<(&str, TlsSettings)>) -> Service<A> {
    service.add_tcp(http);
    if let Some((addr, settings)) = tls {
        service.add_tls_with_settings(addr, None, settings);
    }
    service
}

/// Shutdown on a channel instead of Unix signals (for embedding and tests).
pub struct ChannelShutdown(pub tokio::sync::Mutex<tokio::sync::mpsc::Receiver<ShutdownKind>>);

/// How to stop an embedded server.
#[derive(Debug, Clone, Copy)]
pub enum ShutdownKind {
    /// Stop accepting, finish in-flight requests (SIGTERM).
    Graceful,
    /// Stop now (SIGINT).
    Fast,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for ChannelShutdown {
    async fn recv(&self) -> ShutdownSignal {
        match self.0.lock().await.recv().await {
            Some(ShutdownKind::Graceful) | None => ShutdownSignal::GracefulTerminate,
            Some(ShutdownKind::Fast) => ShutdownSignal::FastShutdown,
        }
    }
}

/// Runs `server` until the channel says stop.
pub fn run_with_channel(server: Server, rx: tokio::sync::mpsc::Receiver<ShutdownKind>) {
    server.run(RunArgs { shutdown_signal: Box::new(ChannelShutdown(tokio::sync::Mutex::new(rx))) });
}

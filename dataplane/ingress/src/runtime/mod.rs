//! Running the controller: the publisher of tables, the Pingora server, and the two configuration sources.
//!
//! - [`run_from_file`]: standalone, objects from a YAML file (re-read on change or SIGHUP).
//! - [`run_from_api`]: kube-rs watchers on a cluster; Events and `status.loadBalancer` written back.
//! - [`Embedded`]: the server on a thread of this process, stopped through a channel (tests, `skiff up`).
//!
//! Signals (Pingora's): SIGTERM drains gracefully, SIGINT stops fast, SIGQUIT hands the listening sockets to a new
//! binary started with `upgrade` (zero-downtime binary upgrade).

pub mod api;
pub mod file;
pub mod metrics;
pub mod metrics_http;
pub mod publisher;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use pingora::services::background::background_service;

pub use self::api::run_from_api;
pub use self::publisher::{Applied, Publisher};
pub use self::server::ShutdownKind;
use crate::config::IngressConfig;
use crate::table::{Certificate, State};

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The objects file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The objects file is not a valid manifest.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: crate::objects::ObjectsError,
    },
    /// The access log file could not be opened.
    #[error("cannot open access log {path}: {source}")]
    AccessLog {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The default certificate could not be generated.
    #[error(transparent)]
    Certificate(#[from] crate::table::CertError),
    /// A listener could not be configured.
    #[error("listener: {0}")]
    Listener(String),
    /// The tokio runtime for the watchers could not start.
    #[error("runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Talking to the API server failed.
    #[error("kubernetes API: {0}")]
    Api(String),
}

/// A publisher with a fresh default certificate and metrics.
pub fn publisher(config: &IngressConfig) -> Result<Arc<Publisher>, IngressError> {
    let state = State::new(Certificate::self_signed(&config.default_cert_name)?);
    Ok(Arc::new(Publisher::new(config.compile.clone(), state, Arc::new(metrics::Metrics::new()))))
}

/// Serves the objects in `path` until a signal stops the process. The file must be valid at start; later invalid
/// versions are reported and skipped.
pub fn run_from_file(path: PathBuf, config: IngressConfig) -> Result<(), IngressError> {
    let publisher = publisher(&config)?;
    let seen = Instant::now();
    let (bytes, objects) = file::load(&path)?;
    let applied = publisher.apply(&objects, seen);
    tracing::info!(generation = applied.generation, ingresses = applied.ingresses.len(), file = %path.display(), "serving");
    let source = background_service("objects file", file::FileSource::new(path, publisher.clone(), bytes));
    let server = server::build(&config, &publisher, source)?;
    server.run(pingora::server::RunArgs::default());
    Ok(())
}

/// Where an [`Embedded`] server's objects come from.
enum EmbeddedSource {
    File(PathBuf),
    Manual,
    Api(Box<kube::Config>),
}

/// The ingress running on a thread of this process.
pub struct Embedded {
    /// The table's writer: call [`Publisher::apply`] to change the configuration.
    pub publisher: Arc<Publisher>,
    stop: tokio::sync::mpsc::Sender<ShutdownKind>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

impl Embedded {
    /// Starts the server on a new thread. With `file`, the file is followed as in [`run_from_file`]; without,
    /// the caller publishes through [`Embedded::publisher`].
    pub fn start(config: IngressConfig, file: Option<PathBuf>) -> Result<Self, IngressError> {
        Self::start_from(config, file.map_or(EmbeddedSource::Manual, EmbeddedSource::File))
    }

    /// Starts the server on a new thread in API mode: watchers follow the cluster `kube_config` reaches (the
    /// client is created on the server's own runtime) and write Ingress status and Events back.
    pub fn start_api(config: IngressConfig, kube_config: kube::Config) -> Result<Self, IngressError> {
        Self::start_from(config, EmbeddedSource::Api(Box::new(kube_config)))
    }

    fn start_from(config: IngressConfig, source: EmbeddedSource) -> Result<Self, IngressError> {
        let publisher = publisher(&config)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (built_tx, built_rx) = std::sync::mpsc::channel();
        let p = publisher.clone();
        // The server is built and run on its own thread, outside any tokio runtime of the caller: Pingora creates
        // its runtimes there (with single-threaded runtimes per worker, building it inside a caller's runtime
        // context left the listeners unstarted).
        let thread = std::thread::Builder::new()
            .name("skiff-ingress".into())
            .spawn(move || {
                let built = match source {
                    EmbeddedSource::File(path) => file::load(&path).and_then(|(bytes, objects)| {
                        p.apply(&objects, Instant::now());
                        let source = file::FileSource::new(path, p.clone(), bytes);
                        server::build(&config, &p, background_service("objects file", source))
                    }),
                    EmbeddedSource::Manual => {
                        server::build(&config, &p, background_service("manual", file::ManualSource))
                    }
                    EmbeddedSource::Api(kube_config) => {
                        let source = api::source(*kube_config, p.clone(), config.status_addresses.clone());
                        server::build(&config, &p, background_service("kubernetes watchers", source))
                    }
                };
                match built {
                    Ok(server) => {
                        let _ = built_tx.send(Ok(()));
                        server::run_with_channel(server, rx);
                    }
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                    }
                }
            })
            .map_err(IngressError::Runtime)?;
        match built_rx.recv() {
            Ok(Ok(())) => Ok(Embedded { publisher, stop: tx, thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(IngressError::Listener("the ingress thread ended while starting".into())),
        }
    }

    /// Stops the server and waits for it.
    pub fn stop(mut self, kind: ShutdownKind) {
        self.stop_inner(kind);
    }

    fn stop_inner(&mut self, kind: ShutdownKind) {
        let _ = self.stop.try_send(kind);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop_inner(ShutdownKind::Fast);
    }
}

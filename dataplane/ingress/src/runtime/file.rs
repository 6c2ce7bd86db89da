//! Standalone mode: the objects come from a multi-document YAML file, re-read when it changes or on SIGHUP.
//!
//! The file is polled (its bytes compared, every 200 ms) so any way of changing it — an editor, `cp`, an atomic
//! rename — is seen. A file that does not parse is reported and the previous table stays live.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::ServiceReadyNotifier;
use pingora::services::background::BackgroundService;

use super::IngressError;
use super::publisher::Publisher;
use crate::objects::Objects;

/// How often the file is compared with what was applied last.
pub const POLL: Duration = Duration::from_millis(200);

/// Reads and parses the file.
pub fn load(path: &Path) -> Result<(Vec<u8>, Objects), IngressError> {
    let bytes = std::fs::read(path).map_err(|source| IngressError::Read { path: path.to_owned(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let objects = Objects::from_yaml(&text).map_err(|source| IngressError::Parse { path: path.to_owned(), source })?;
    Ok((bytes, objects))
}

/// The background service that follows the file.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    publisher: Arc<Publisher>,
    applied: std::sync::Mutex<Vec<u8>>,
}

impl FileSource {
    /// Follows `path`; `applied` is the content already live.
    pub fn new(path: PathBuf, publisher: Arc<Publisher>, applied: Vec<u8>) -> Self {
        FileSource { path, publisher, applied: std::sync::Mutex::new(applied) }
    }

    fn check(&self, force: bool) {
        let seen = Instant::now();
        let Ok(bytes) = std::fs::read(&self.path) else {
            tracing::warn!(path = %self.path.display(), "cannot read the objects file; keeping the live table");
            self.publisher.metrics().config_errors.inc();
            return;
        };
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if !force && *applied == bytes {
            return;
        }
        match Objects::from_yaml(&String::from_utf8_lossy(&bytes)) {
            Ok(objects) => {
                let a = self.publisher.apply(&objects, seen);
                tracing::info!(generation = a.generation, apply_seconds = a.apply_seconds, "objects file applied");
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "objects file is invalid; keeping the live table");
                self.publisher.metrics().config_errors.inc();
            }
        }
        *applied = bytes;
    }
}

#[async_trait]
impl BackgroundService for FileSource {
    async fn start_with_ready_notifier(&self, mut shutdown: ShutdownWatch, ready: ServiceReadyNotifier) {
        ready.notify_ready();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let force = tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(POLL) => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            self.check(force);
        }
    }
}

/// A source that publishes nothing by itself (the embedder calls [`Publisher::apply`]).
#[derive(Debug, Default)]
pub struct ManualSource;

#[async_trait]
impl BackgroundService for ManualSource {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
    }
}

//! Standalone mode: Services and EndpointSlices from a multi-document YAML (or JSON) file, re-read when it changes
//! or on SIGHUP. A file that cannot be read or parsed after start-up is reported and the programmed state is kept.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use tokio::signal::unix::{SignalKind, signal};

use crate::{applier::error_chain, config::LbConfig, engine::Engine, error::LbError, metrics::LbMetrics};

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long to wait before retrying after a failed map write.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The Services and EndpointSlices in a manifest text; other kinds are ignored.
pub fn parse_objects(text: &str) -> Result<(Vec<Service>, Vec<EndpointSlice>), String> {
    let docs = skiff_api::yaml::parse_documents(text).map_err(|e| e.to_string())?;
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let api_version = doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let kind = doc.get("kind").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let name = doc.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let what = |e: serde_json::Error| format!("object {i} ({kind} {name}): {e}");
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => services.push(serde_json::from_value(doc).map_err(what)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => slices.push(serde_json::from_value(doc).map_err(what)?),
            _ => tracing::debug!(%kind, %name, "ignoring an object that is not a Service or EndpointSlice"),
        }
    }
    Ok((services, slices))
}

/// Reads and parses the objects file.
pub fn read_objects(path: &Path) -> Result<(Vec<Service>, Vec<EndpointSlice>), LbError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LbError::Objects { path: path.to_path_buf(), message: e.to_string() })?;
    parse_objects(&text).map_err(|message| LbError::Objects { path: path.to_path_buf(), message })
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Runs the balancer from `path` until `shutdown` completes. Leaves the programs attached and the maps pinned when
/// it returns (fail-static); `skiff lb --uninstall` removes them.
pub async fn run_from_file(path: PathBuf, config: LbConfig, shutdown: impl Future<Output = ()>) -> Result<(), LbError> {
    let (services, slices) = read_objects(&path)?;
    let metrics = LbMetrics::new(config.pin_dir.clone());
    if let Some(addr) = config.metrics_addr {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m).await {
                tracing::error!(error = %error_chain(&e), "metrics server stopped");
            }
        });
    }
    let mut engine = Engine::start(&config, metrics)?;
    let start = Instant::now();
    engine.store_mut().replace_services(services);
    engine.store_mut().replace_slices(slices);
    let report = engine.full_sync(Some(start));
    tracing::info!(
        services = engine.store().len().0,
        frontends = engine.applier().registry().frontends.len(),
        ops = report.ops,
        duration_ms = report.duration.as_millis() as u64,
        "programmed"
    );
    // Tests and scripts wait for this line.
    println!("skiff-lb: programmed generation {}", engine.applier().generation());
    run_loop(&path, &mut engine, shutdown, report.needs_full_sync).await
}

async fn run_loop(
    path: &Path,
    engine: &mut Engine,
    shutdown: impl Future<Output = ()>,
    mut retry: bool,
) -> Result<(), LbError> {
    let mut hup = signal(SignalKind::hangup()).map_err(|e| LbError::io("installing SIGHUP handler for", path, e))?;
    let mut last = stamp(path);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let mut retry_at = Instant::now() + RETRY_AFTER;
    tokio::pin!(shutdown);
    loop {
        let forced = tokio::select! {
            () = &mut shutdown => {
                tracing::info!("stopping; programs stay attached and maps pinned (fail-static)");
                return Ok(());
            }
            _ = hup.recv() => true,
            _ = tick.tick() => false,
        };
        let now = stamp(path);
        if retry && Instant::now() >= retry_at {
            let report = engine.full_sync(None);
            retry = report.needs_full_sync;
            retry_at = Instant::now() + RETRY_AFTER;
        }
        if !forced && now == last {
            continue;
        }
        last = now;
        let received = Instant::now();
        match read_objects(path) {
            Ok((services, slices)) => {
                let mut changed = engine.store_mut().replace_services(services);
                changed.extend(engine.store_mut().replace_slices(slices));
                let report = engine.sync(changed, Some(received));
                retry |= report.needs_full_sync;
                println!("skiff-lb: programmed generation {}", engine.applier().generation());
            }
            Err(e) => tracing::error!(error = %error_chain(&e), "keeping the programmed state"),
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Shared handle type for callers that keep metrics.
pub type Metrics = Arc<LbMetrics>;

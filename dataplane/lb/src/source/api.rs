//! API mode: follows Services and EndpointSlices with kube-rs watchers and programs the affected Services after
//! every change. Nothing is programmed before both initial lists are complete (a partial list would look like
//! deleted Services); a re-list replaces the store contents as a whole.

use std::{collections::BTreeSet, future::Future, time::Instant};

use futures::{FutureExt as _, StreamExt as _, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};

use crate::{
    applier::error_chain, config::LbConfig, desired::service_name, engine::Engine, error::LbError, metrics::LbMetrics,
    model::ServiceName,
};

/// Most events folded into one sync.
const MAX_BATCH: usize = 1024;

#[allow(clippy::large_enum_variant, reason = "short-lived; boxing every watch event buys nothing")]
enum Ev {
    Svc(Result<watcher::Event<Service>, watcher::Error>),
    Slice(Result<watcher::Event<EndpointSlice>, watcher::Error>),
}

/// Initial-list state of one resource.
#[derive(Default)]
struct Listing<K> {
    /// Objects received since the last `Init`.
    buffer: Option<Vec<K>>,
    /// A complete list has arrived at least once.
    done: bool,
}

/// Runs the balancer against the API server until `shutdown` completes. Programs and maps stay in place when it
/// returns (fail-static).
pub async fn run_from_api(client: Client, config: LbConfig, shutdown: impl Future<Output = ()>) -> Result<(), LbError> {
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
    let services = watcher(Api::<Service>::all(client.clone()), watcher::Config::default()).default_backoff();
    let slices = watcher(Api::<EndpointSlice>::all(client), watcher::Config::default()).default_backoff();
    let mut events = stream::select(services.map(Ev::Svc).boxed(), slices.map(Ev::Slice).boxed());
    let mut svc = Listing::<Service>::default();
    let mut eps = Listing::<EndpointSlice>::default();
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            () = &mut shutdown => return Ok(()),
            ev = events.next() => match ev {
                Some(ev) => ev,
                None => return Err(LbError::Watch { resource: "Services/EndpointSlices", message: "watch ended".into() }),
            },
        };
        let received = Instant::now();
        let mut changed = BTreeSet::new();
        handle(&mut engine, &mut svc, &mut eps, first, &mut changed);
        // Fold what is already waiting into the same sync.
        for _ in 0..MAX_BATCH {
            match events.next().now_or_never() {
                Some(Some(ev)) => handle(&mut engine, &mut svc, &mut eps, ev, &mut changed),
                _ => break,
            }
        }
        if !(svc.done && eps.done) {
            continue;
        }
        if !engine.applier().synced_once() {
            engine.full_sync(Some(received));
        } else if !changed.is_empty() {
            engine.sync(changed, Some(received));
        }
    }
}

fn handle(
    engine: &mut Engine,
    svc: &mut Listing<Service>,
    eps: &mut Listing<EndpointSlice>,
    ev: Ev,
    changed: &mut BTreeSet<ServiceName>,
) {
    let store = engine.store_mut();
    match ev {
        Ev::Svc(Ok(e)) => match e {
            watcher::Event::Init => svc.buffer = Some(Vec::new()),
            watcher::Event::InitApply(o) => svc.buffer.get_or_insert_with(Vec::new).push(o),
            watcher::Event::InitDone => {
                changed.extend(store.replace_services(svc.buffer.take().unwrap_or_default()));
                svc.done = true;
            }
            watcher::Event::Apply(o) => changed.extend(store.apply_service(o)),
            watcher::Event::Delete(o) => changed.extend(store.delete_service(&service_name(&o))),
        },
        Ev::Slice(Ok(e)) => match e {
            watcher::Event::Init => eps.buffer = Some(Vec::new()),
            watcher::Event::InitApply(o) => eps.buffer.get_or_insert_with(Vec::new).push(o),
            watcher::Event::InitDone => {
                changed.extend(store.replace_slices(eps.buffer.take().unwrap_or_default()));
                eps.done = true;
            }
            watcher::Event::Apply(o) => changed.extend(store.apply_slice(o)),
            watcher::Event::Delete(o) => {
                let ns = o.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let name = o.metadata.name.clone().unwrap_or_default();
                changed.extend(store.delete_slice(&ns, &name));
            }
        },
        Ev::Svc(Err(e)) => tracing::warn!(error = %error_chain(&e), "watching Services (retrying with back-off)"),
        Ev::Slice(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "watching EndpointSlices (retrying with back-off)")
        }
    }
}

/// [`run_from_api`] with a client from the usual kubeconfig inference (`KUBECONFIG`, `~/.kube/config`, in-cluster),
/// on Skiff's client stack (`skiff_client::connection`, with `TCP_NODELAY`) like every other component.
pub async fn run_with_default_client(config: LbConfig, shutdown: impl Future<Output = ()>) -> Result<(), LbError> {
    let kubeconfig = |message: String| LbError::Watch { resource: "kubeconfig", message };
    let cfg = kube::Config::infer().await.map_err(|e| kubeconfig(error_chain(&e)))?;
    let client = skiff_client::connection::client(cfg).map_err(|e| kubeconfig(error_chain(&e)))?;
    run_from_api(client, config, shutdown).await
}

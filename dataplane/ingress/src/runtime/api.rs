//! API mode: kube-rs watchers follow the cluster and publish tables; status and Events are written back.
//!
//! The watchers (one reflector per kind: Ingress, IngressClass, Service, EndpointSlice, Secret, ConfigMap) run on
//! the tokio runtime Pingora gives this background service. Every change wakes one loop that snapshots the
//! reflector stores into [`Objects`] and hands them to the [`Publisher`] (the only writer of the `ArcSwap`), after
//! a short debounce so a burst of changes compiles once.
//!
//! # Guarantees
//! - Nothing is published before every reflector has its first complete list (a half-filled cache would look
//!   like deleted Services); the proxy's listeners open only after that first table is live.
//! - Problems become Warning Events on the affected Ingress, once per appearance.
//! - `status.loadBalancer.ingress` of every served Ingress is patched to the configured addresses when it differs.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use pingora::server::ShutdownWatch;
use pingora::services::ServiceReadyNotifier;
use pingora::services::background::{BackgroundService, background_service};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::publisher::Publisher;
use super::{IngressError, publisher, server};
use crate::config::IngressConfig;
use crate::objects::Objects;

/// Changes arriving within this window after the first are compiled together.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Serves the cluster's Ingresses until a signal stops the process.
///
/// `client` must stay usable while this runs: create it on a runtime that lives as long (the CLI keeps one), or
/// use [`run_from_kube_config`], which creates the client on the watchers' own runtime.
pub fn run_from_api(client: kube::Client, config: IngressConfig) -> Result<(), IngressError> {
    run(ClientSource::Client(client), config)
}

/// Like [`run_from_api`], creating the client from `kube_config` on the watchers' runtime.
pub fn run_from_kube_config(kube_config: kube::Config, config: IngressConfig) -> Result<(), IngressError> {
    run(ClientSource::Config(Box::new(kube_config)), config)
}

/// API mode from a kubeconfig file, or (without one) the usual inference: `$KUBECONFIG`, `~/.kube/config`, the
/// in-cluster service account.
pub fn run_from_kubeconfig(path: Option<std::path::PathBuf>, config: IngressConfig) -> Result<(), IngressError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(IngressError::Runtime)?;
    let kube_config = rt
        .block_on(async {
            match path {
                Some(p) => {
                    let kc = kube::config::Kubeconfig::read_from(&p).map_err(|e| e.to_string())?;
                    kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| e.to_string())
                }
                None => kube::Config::infer().await.map_err(|e| e.to_string()),
            }
        })
        .map_err(IngressError::Api)?;
    drop(rt);
    run_from_kube_config(kube_config, config)
}

fn run(client: ClientSource, config: IngressConfig) -> Result<(), IngressError> {
    let publisher = publisher(&config)?;
    let source = ApiSource { client, publisher: publisher.clone(), addresses: config.status_addresses.clone() };
    let server = server::build(&config, &publisher, background_service("kubernetes watchers", source))?;
    server.run(pingora::server::RunArgs::default());
    Ok(())
}

/// The watchers of a cluster reached with `kube_config`, publishing through `publisher`.
pub(crate) fn source(kube_config: kube::Config, publisher: Arc<Publisher>, addresses: Vec<String>) -> ApiSource {
    ApiSource { client: ClientSource::Config(Box::new(kube_config)), publisher, addresses }
}

enum ClientSource {
    Client(kube::Client),
    Config(Box<kube::Config>),
}

/// The watchers as a Pingora background service (what [`super::Embedded::start_api`] runs).
pub(crate) struct ApiSource {
    client: ClientSource,
    publisher: Arc<Publisher>,
    addresses: Vec<String>,
}

#[async_trait]
impl BackgroundService for ApiSource {
    async fn start_with_ready_notifier(&self, shutdown: ShutdownWatch, ready: ServiceReadyNotifier) {
        let client = match &self.client {
            ClientSource::Client(c) => c.clone(),
            ClientSource::Config(cfg) => match skiff_client::connection::client((**cfg).clone()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the Kubernetes client; not serving");
                    return;
                }
            },
        };
        follow(client, self.publisher.clone(), self.addresses.clone(), shutdown, ready).await;
    }
}

struct Stores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
}

fn watch<K>(api: Api<K>, changed: Arc<tokio::sync::Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(kind = K::kind(&Default::default()).as_ref(), error = %e, "watch error; retrying")
                }
            }
        }
    });
    reader
}

fn snapshot(s: &Stores) -> Objects {
    fn all<K>(store: &Store<K>) -> Vec<K>
    where
        K: kube::runtime::reflector::Lookup + Clone,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        store.state().iter().map(|o| (**o).clone()).collect()
    }
    Objects {
        ingresses: all(&s.ingresses),
        classes: all(&s.classes),
        services: all(&s.services),
        slices: all(&s.slices),
        secrets: all(&s.secrets),
        config_maps: all(&s.config_maps),
    }
}

async fn follow(
    client: kube::Client,
    publisher: Arc<Publisher>,
    addresses: Vec<String>,
    mut shutdown: ShutdownWatch,
    ready: ServiceReadyNotifier,
) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let stores = Stores {
        ingresses: watch(Api::all(client.clone()), changed.clone()),
        classes: watch(Api::all(client.clone()), changed.clone()),
        services: watch(Api::all(client.clone()), changed.clone()),
        slices: watch(Api::all(client.clone()), changed.clone()),
        secrets: watch(Api::all(client.clone()), changed.clone()),
        config_maps: watch(Api::all(client.clone()), changed.clone()),
    };
    let waited = async {
        stores.ingresses.wait_until_ready().await?;
        stores.classes.wait_until_ready().await?;
        stores.services.wait_until_ready().await?;
        stores.slices.wait_until_ready().await?;
        stores.secrets.wait_until_ready().await?;
        stores.config_maps.wait_until_ready().await
    };
    tokio::select! {
        r = waited => if let Err(e) = r { tracing::error!(error = %e, "a watcher stopped before its first list"); return },
        _ = shutdown.changed() => return,
    }
    tracing::info!("first complete list of every kind received");
    let recorder = Recorder::new(client.clone(), Reporter { controller: "skiff-ingress".into(), instance: None });
    let mut ready = Some(ready);
    let mut seen = Instant::now();
    loop {
        let applied = publisher.apply(&snapshot(&stores), seen);
        if let Some(r) = ready.take() {
            r.notify_ready();
        }
        for p in &applied.new_problems {
            let reference = ingress_ref(&stores.ingresses, &p.ingress.namespace, &p.ingress.name);
            let event = Event {
                type_: EventType::Warning,
                reason: p.reason.into(),
                note: Some(p.message.chars().take(1000).collect()),
                action: "Compile".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                // API servers without events.k8s.io/v1 still take core/v1 Events (what kubectl describe shows)
                if let Err(core) = core_event(&client, p, &reference).await {
                    tracing::warn!(error = %e, core_error = %core, ingress = %p.ingress, "cannot record an Event");
                }
            }
        }
        for who in &applied.ingresses {
            let current = stores
                .ingresses
                .state()
                .into_iter()
                .find(|i| i.namespace().as_deref() == Some(who.namespace.as_str()) && i.name_any() == who.name);
            if current.is_some_and(|i| status_differs(&i, &addresses)) {
                let api: Api<Ingress> = Api::namespaced(client.clone(), &who.namespace);
                let patch = Patch::Merge(status_patch(&addresses));
                if let Err(e) = api.patch_status(&who.name, &PatchParams::default(), &patch).await {
                    tracing::warn!(error = %e, ingress = %who, "cannot write status.loadBalancer");
                }
            }
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = shutdown.changed() => return,
        }
        seen = Instant::now();
        tokio::time::sleep(DEBOUNCE).await;
    }
}

/// Records a problem as a core/v1 Warning Event on the Ingress.
async fn core_event(
    client: &kube::Client,
    p: &crate::compile::problems::Problem,
    reference: &ObjectReference,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    let now = Time(jiff::Timestamp::now());
    let event = CoreEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", p.ingress.name)),
            namespace: Some(p.ingress.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: reference.clone(),
        reason: Some(p.reason.into()),
        message: Some(p.message.chars().take(1000).collect()),
        type_: Some("Warning".into()),
        source: Some(EventSource { component: Some("skiff-ingress".into()), host: None }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        reporting_component: Some("skiff-ingress".into()),
        ..CoreEvent::default()
    };
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), &p.ingress.namespace);
    api.create(&kube::api::PostParams::default(), &event).await.map(|_| ())
}

fn ingress_ref(store: &Store<Ingress>, namespace: &str, name: &str) -> ObjectReference {
    let found = store.state().into_iter().find(|i| i.namespace().as_deref() == Some(namespace) && i.name_any() == name);
    match found {
        Some(i) => i.object_ref(&()),
        None => ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("Ingress".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        },
    }
}

/// The `status.loadBalancer.ingress` entries for the addresses the controller serves on: IPs as `ip`, names as
/// `hostname`.
pub fn status_entries(addresses: &[String]) -> Vec<Value> {
    addresses
        .iter()
        .map(|a| if a.parse::<std::net::IpAddr>().is_ok() { json!({"ip": a}) } else { json!({"hostname": a}) })
        .collect()
}

/// The merge patch that sets the status.
pub fn status_patch(addresses: &[String]) -> Value {
    json!({"status": {"loadBalancer": {"ingress": status_entries(addresses)}}})
}

/// Whether an Ingress's status differs from what the controller would write.
pub fn status_differs(ingress: &Ingress, addresses: &[String]) -> bool {
    let current = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| serde_json::to_value(lb.ingress.clone().unwrap_or_default()).ok())
        .unwrap_or_else(|| json!([]));
    current != Value::Array(status_entries(addresses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_ip_or_hostname_entries() {
        let patch = status_patch(&["127.0.0.1".into(), "ingress.example.com".into()]);
        assert_eq!(
            patch,
            json!({"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}, {"hostname": "ingress.example.com"}]}}})
        );
    }

    #[test]
    fn the_status_is_written_only_when_it_differs() {
        let mut ingress: Ingress = serde_json::from_value(json!({"metadata": {"name": "a"}})).expect("ingress");
        let addrs = vec!["10.0.0.1".to_string()];
        assert!(status_differs(&ingress, &addrs));
        ingress.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}})).expect("status");
        assert!(!status_differs(&ingress, &addrs));
        assert!(status_differs(&ingress, &[]));
    }
}

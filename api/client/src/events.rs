//! Recording core/v1 Events — the kind `kubectl describe` lists — with the repeat counting Kubernetes does
//! (a repeated event bumps `count` and `lastTimestamp` instead of piling up).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::Mutex;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something needs attention.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Publishes Events as one component (`source.component`, e.g. `deployment-controller`).
///
/// Recording never blocks the caller: events are queued and sent in the background (a few at a time); when the
/// queue is full, new events are dropped and logged — events are best effort, as in Kubernetes.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    component: String,
    host: Option<String>,
    /// (object uid, reason, message) → (event namespace, event name, count)
    seen: Mutex<HashMap<(String, String, String), (String, String, i32)>>,
    queue: std::sync::OnceLock<tokio::sync::mpsc::Sender<Pending>>,
}

struct Pending {
    object: ObjectReference,
    ty: EventType,
    reason: String,
    message: String,
}

/// How many events may wait to be sent.
const QUEUE: usize = 4096;

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("component", &self.inner.component).finish()
    }
}

impl Recorder {
    /// A recorder for `component` (and, for node agents, `host`).
    pub fn new(client: kube::Client, component: &str, host: Option<&str>) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                client,
                component: component.to_string(),
                host: host.map(str::to_string),
                seen: Mutex::default(),
                queue: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Queues an event about `object`.
    pub async fn record(&self, object: &ObjectReference, ty: EventType, reason: &str, message: &str) {
        let queue = self.inner.queue.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel::<Pending>(QUEUE);
            let inner = self.inner.clone();
            tokio::spawn(async move {
                use futures::StreamExt;
                tokio_stream_like(rx)
                    .for_each_concurrent(8, |p| {
                        let inner = inner.clone();
                        async move {
                            if let Err(e) = inner.try_record(&p.object, p.ty, &p.reason, &p.message).await {
                                tracing::debug!(error = %e, reason = %p.reason, "recording an event failed");
                            }
                        }
                    })
                    .await;
            });
            tx
        });
        let pending = Pending { object: object.clone(), ty, reason: reason.to_string(), message: message.to_string() };
        if queue.try_send(pending).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

fn tokio_stream_like(mut rx: tokio::sync::mpsc::Receiver<Pending>) -> impl futures::Stream<Item = Pending> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Inner {
    async fn try_record(
        &self,
        object: &ObjectReference,
        ty: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let ns = object.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = Time(jiff::Timestamp::now());
        let key = (object.uid.clone().unwrap_or_default(), reason.to_string(), message.to_string());
        // The lock is not held across the API calls: events of different objects go out concurrently.
        let known = self.seen.lock().await.get(&key).cloned();
        if let Some((ens, name, count)) = known {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now});
            let r = Api::<Event>::namespaced(self.client.clone(), &ens)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            if r.is_ok() {
                self.seen.lock().await.insert(key, (ens, name, count + 1));
                return Ok(());
            }
        }
        let name = format!("{}.{:x}", object.name.clone().unwrap_or_default(), rand_suffix());
        let ev = Event {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns.clone()), ..Default::default() },
            involved_object: object.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(ty.as_str().to_string()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource { component: Some(self.component.clone()), host: self.host.clone() }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            ..Default::default()
        };
        api.create(&PostParams::default(), &ev).await?;
        let mut seen = self.seen.lock().await;
        if seen.len() > 4096 {
            seen.clear();
        }
        seen.insert(key, (ns, name, 1));
        Ok(())
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// An ObjectReference to a typed object.
pub fn reference<K: kube::Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

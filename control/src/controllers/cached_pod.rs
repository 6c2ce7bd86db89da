//! The pod as the controllers cache it: the fields some controller reads, and nothing else. The spec and status are
//! decoded straight from the watch's JSON (unknown fields are skipped, never built); the metadata is decoded typed,
//! as kube's watcher reads it, and kept as a [`PodMeta`].
//!
//! Every controller reads pods from one shared informer, so each of the cluster's pods is held once, for as long as
//! it exists. A typed `k8s_openapi` Pod holds every optional field of the pod, its spec, each container and each
//! volume source inline: one 2.5 KB pod of the scale bench takes 17 KB of heap decoded, and still 10.9 KB with its
//! volumes and mounts emptied, as this informer did before (client-go's transform functions empty fields the same
//! way, and emptied fields keep their place in the struct). As this type it takes 539 bytes (its labels, owners,
//! containers, tolerations and short strings shared with the other pods of its ReplicaSet) and decodes 2.2 times
//! faster (`cargo bench -p skiff-control --bench pod_memory`; 3.0 KB with a typed `ObjectMeta` and its requests,
//! affinity and tolerations held as the typed pod holds them, 2.0 KB with a typed `ObjectMeta`). It keeps only:
//!
//! - of the metadata, what [`PodMeta`] keeps (owners, labels, deletion, names: every controller);
//! - of the spec: the node, the containers' names, ports and resources, init containers, node selector, affinity,
//!   tolerations, priority and scheduler name (the scheduler, DaemonSets, EndpointSlices); hostname and subdomain
//!   (StatefulSets, EndpointSlices);
//! - of the status: the phase, the pod's IP, the Ready condition with its transition time (readiness and
//!   availability), and per container its name, restarts and termination (owners' counts, Jobs' back-off).
//!
//! The field names and shapes are those of `k8s_openapi`, so code written against a typed pod reads this one the
//! same way, but for those kept smaller, as every pod of the cluster holds them: the metadata ([`PodMeta`]: labels
//! and owner references shared); a container's resources are its requests alone, as a sorted list shared by the
//! containers that request the same ([`Requests`]; no controller reads limits, and a `BTreeMap` allocates a node of
//! half a kilobyte for two entries); the affinity and a container's termination are boxed (144 and 136 bytes inline,
//! and most pods have neither); the tolerations are one list shared by the pods that have the same (admission
//! gives every pod the same two), through [`shared_tolerations`]; the containers are one list shared by the pods
//! of a template; and strings many pods hold alike (the namespace, the node, the phase, a condition's type and
//! status) are shared words ([`super::shared::word`]), so their fields are `Arc<str>`, not `String`. Shared values
//! live in [`Table`]s. Cached pods are
//! never written back (every pod write is a targeted patch or a create from a template), so nothing left out here
//! can be lost. A controller that comes to need another field (volumes for volume binding, say) adds it here; the
//! decoding test below lists what is kept.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::{Arc, LazyLock};

use kube::runtime::reflector::Lookup;

use k8s_openapi::api::core::v1::{Affinity, ContainerPort, ContainerStateTerminated, ObjectReference, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

use super::pod_meta::PodMeta;
use super::shared::{Shareable, Table, de_opt_word, de_word, hash_opt_str, hash_str, word};

/// A pod as the controllers' informer keeps it (see the module docs).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(from = "WirePod")]
pub struct CachedPod {
    /// What the controllers read of the pod's metadata.
    pub metadata: PodMeta,
    /// What the controllers read of the spec.
    pub spec: Option<Spec>,
    /// What the controllers read of the status.
    pub status: Option<Status>,
}

/// A pod as the informer's watch decodes it: the metadata typed whole (the watcher reads resource versions through
/// `ObjectMeta`), the spec and status as cached. Each becomes a [`CachedPod`] before the store keeps it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct WirePod {
    /// The pod's metadata (the informer clears `managedFields`; a `CachedPod` drops them).
    pub metadata: ObjectMeta,
    /// What the controllers read of the spec.
    pub spec: Option<Spec>,
    /// What the controllers read of the status.
    pub status: Option<Status>,
}

// The store holds each pod in an `Arc`: 16 bytes of counts and the pod, 384 bytes in all, an allocation class of its
// own (the next is 448 in jemalloc and mimalloc alike; at 536 bytes it took 640). So what a pod rarely has is boxed
// (a node selector, annotations, finalizers; a hostname and subdomain boxed twice, 8 bytes each), strings set once
// are `Box<str>` (16 bytes inline, where a `String` takes 24: the uid, the resource version, the pod's IP), lists are
// boxed slices (16 bytes, where a `Vec` takes 24), and what many pods hold alike is shared: words (the namespace, the
// node, the phase, the scheduler's name, the Ready condition's type and status, a container status's name), the
// containers, tolerations, labels and owners.
const _: () = assert!(std::mem::size_of::<CachedPod>() <= 368, "a cached pod outgrew its 384-byte allocation");

impl CachedPod {
    /// A reference to the pod, for an Event about it.
    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: self.metadata.name.clone(),
            namespace: self.metadata.namespace.as_deref().map(String::from),
            uid: self.metadata.uid.as_deref().map(String::from),
            resource_version: self.metadata.resource_version.as_deref().map(String::from),
            ..Default::default()
        }
    }
}

impl From<WirePod> for CachedPod {
    fn from(w: WirePod) -> Self {
        CachedPod { metadata: PodMeta::from(w.metadata), spec: w.spec, status: w.status }
    }
}

/// What the controllers read of a pod's spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Spec {
    /// The node the pod is bound to.
    #[serde(deserialize_with = "de_opt_word")]
    pub node_name: Option<Arc<str>>,
    /// Its containers (shared by the pods that have the same: a template's pods do).
    #[serde(deserialize_with = "containers")]
    pub containers: Arc<[Container]>,
    /// Its init containers (shared alike).
    #[serde(deserialize_with = "init_containers")]
    pub init_containers: Option<Arc<[Container]>>,
    /// Node labels it requires.
    pub node_selector: Option<Box<BTreeMap<String, String>>>,
    /// Its scheduling constraints.
    pub affinity: Option<Box<Affinity>>,
    /// The taints it tolerates.
    #[serde(deserialize_with = "tolerations")]
    pub tolerations: Option<Arc<[Toleration]>>,
    /// Its priority (set by admission from the priority class).
    pub priority: Option<i32>,
    /// The scheduler it asks for (shared: admission gives most pods the same).
    #[serde(deserialize_with = "de_opt_word")]
    pub scheduler_name: Option<Arc<str>>,
    /// Its hostname (a StatefulSet's pods have one; boxed twice to take 8 bytes inline in the pods without).
    pub hostname: Option<Box<String>>,
    /// Its subdomain (with the hostname, its DNS name under a headless Service; boxed as the hostname).
    pub subdomain: Option<Box<String>>,
}

/// What the controllers read of a container.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Container {
    /// Its name.
    pub name: String,
    /// The ports it exposes (named target ports, host ports).
    #[serde(deserialize_with = "exact_or_none")]
    pub ports: Option<Vec<ContainerPort>>,
    /// Its resource requests.
    pub resources: Option<Resources>,
}

/// What the controllers read of a container's resources: its requests (the scheduler's fit, the HPA's utilization).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Resources {
    /// The amounts it requests, by resource name.
    pub requests: Option<Requests>,
}

/// Requested amounts by resource name, sorted by name, shared by the containers that request the same (the pods of
/// one template do).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Requests(Arc<[(Box<str>, Quantity)]>);

/// The request lists in use, each shared by the containers that have it.
static REQUESTS: LazyLock<Table<[(Box<str>, Quantity)]>> = LazyLock::new(Table::default);

impl Shareable for [(Box<str>, Quantity)] {
    fn hash_into(&self, h: &mut dyn Hasher) {
        for (name, amount) in self {
            hash_str(h, name);
            hash_str(h, &amount.0);
        }
    }
}

impl Requests {
    /// The amount requested of `resource`.
    pub fn get(&self, resource: &str) -> Option<&Quantity> {
        self.0.binary_search_by(|(name, _)| name.as_ref().cmp(resource)).ok().map(|i| &self.0[i].1)
    }
}

impl<'de> Deserialize<'de> for Requests {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Requests::from(BTreeMap::<String, Quantity>::deserialize(d)?))
    }
}

impl From<BTreeMap<String, Quantity>> for Requests {
    fn from(map: BTreeMap<String, Quantity>) -> Self {
        let list: Vec<(Box<str>, Quantity)> =
            map.into_iter().map(|(name, amount)| (name.into_boxed_str(), amount)).collect();
        Requests(REQUESTS.share(&list, || list.clone().into()))
    }
}

impl From<&k8s_openapi::api::core::v1::ResourceRequirements> for Resources {
    fn from(r: &k8s_openapi::api::core::v1::ResourceRequirements) -> Self {
        Resources { requests: r.requests.clone().map(Requests::from) }
    }
}

/// What the controllers read of a pod's status.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Status {
    /// Pending, Running, Succeeded, Failed or Unknown.
    #[serde(deserialize_with = "de_opt_word")]
    pub phase: Option<Arc<str>>,
    /// Its Ready condition, the only one a controller reads (as a list, like the typed pod's).
    #[serde(deserialize_with = "ready_only")]
    pub conditions: Option<Box<[PodCondition]>>,
    /// Its IP address.
    #[serde(rename = "podIP")]
    pub pod_ip: Option<Box<str>>,
    /// Its containers' states.
    #[serde(deserialize_with = "boxed_or_none")]
    pub container_statuses: Option<Box<[ContainerStatus]>>,
}

/// What the controllers read of a pod's condition.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodCondition {
    /// Ready, ContainersReady, PodScheduled, …
    #[serde(rename = "type", deserialize_with = "de_word")]
    pub type_: Arc<str>,
    /// True, False or Unknown.
    #[serde(deserialize_with = "de_word")]
    pub status: Arc<str>,
    /// When the status last changed.
    pub last_transition_time: Option<Time>,
}

/// What the controllers read of a container's status.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    #[serde(deserialize_with = "de_word")]
    pub name: Arc<str>,
    /// How often it was restarted.
    pub restart_count: i32,
    /// Its current state, as far as a controller reads it.
    pub state: Option<ContainerState>,
}

/// A container's current state, as far as a controller reads it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ContainerState {
    /// How it ended, once it has (boxed: 136 bytes inline, and a running container has none).
    pub terminated: Option<Box<ContainerStateTerminated>>,
}

// Decoded lists grow by doubling from four slots (serde_json gives no length ahead), so a pod's one container,
// one owner reference and two tolerations would each hold room for more; what the cache keeps is sized exactly.

fn exact_or_none<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Vec<T>>, D::Error> {
    let mut v = Option::<Vec<T>>::deserialize(d)?;
    if let Some(v) = v.as_mut() {
        v.shrink_to_fit();
    }
    Ok(v)
}

fn boxed_or_none<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Box<[T]>>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.map(Vec::into_boxed_slice))
}

fn ready_only<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<[PodCondition]>>, D::Error> {
    Ok(Option::<Vec<PodCondition>>::deserialize(d)?.map(|mut v| {
        v.retain(|c| &*c.type_ == "Ready");
        v.into_boxed_slice()
    }))
}

/// The container lists in use, each shared by the pods that have it.
static CONTAINERS: LazyLock<Table<[Container]>> = LazyLock::new(Table::default);

impl Shareable for [Container] {
    fn hash_into(&self, h: &mut dyn Hasher) {
        for c in self {
            hash_str(h, &c.name);
            for p in c.ports.iter().flatten() {
                h.write_i32(p.container_port);
                h.write_i32(p.host_port.unwrap_or(-1));
                for s in [&p.host_ip, &p.name, &p.protocol] {
                    hash_opt_str(h, s.as_deref());
                }
            }
            h.write_u8(0xfe);
            for (name, amount) in c.resources.as_ref().and_then(|r| r.requests.as_ref()).iter().flat_map(|r| r.0.iter())
            {
                hash_str(h, name);
                hash_str(h, &amount.0);
            }
            h.write_u8(0xfe);
        }
    }
}

/// The one shared list equal to `list`.
fn shared_containers(list: Vec<Container>) -> Arc<[Container]> {
    CONTAINERS.share(&list, || list.clone().into())
}

fn containers<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[Container]>, D::Error> {
    Ok(shared_containers(Vec::deserialize(d)?))
}

fn init_containers<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<[Container]>>, D::Error> {
    Ok(Option::<Vec<Container>>::deserialize(d)?.map(shared_containers))
}

/// The toleration lists in use, each shared by the pods that have it.
static TOLERATIONS: LazyLock<Table<[Toleration]>> = LazyLock::new(Table::default);

impl Shareable for [Toleration] {
    fn hash_into(&self, h: &mut dyn Hasher) {
        for t in self {
            for s in [&t.key, &t.operator, &t.value, &t.effect] {
                hash_opt_str(h, s.as_deref());
            }
            h.write_u8(u8::from(t.toleration_seconds.is_some()));
            h.write_i64(t.toleration_seconds.unwrap_or_default());
        }
    }
}

/// The one shared list equal to `list`.
pub fn shared_tolerations(list: Vec<Toleration>) -> Arc<[Toleration]> {
    TOLERATIONS.share(&list, || list.clone().into())
}

fn tolerations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<[Toleration]>>, D::Error> {
    Ok(Option::<Vec<Toleration>>::deserialize(d)?.map(shared_tolerations))
}

impl k8s_openapi::Resource for WirePod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for WirePod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What an informer and `kube`'s `ObjectRef` read of a pod's kind and identity: its namespace and name (the uid and
/// resource version are left out, so a reference made from a cached pod names it as a key does).
impl Lookup for CachedPod {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        self.metadata.name.as_deref().map(Cow::Borrowed)
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.metadata.namespace.as_deref().map(Cow::Borrowed)
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

impl From<&k8s_openapi::api::core::v1::Container> for Container {
    fn from(c: &k8s_openapi::api::core::v1::Container) -> Self {
        Container { name: c.name.clone(), ports: c.ports.clone(), resources: c.resources.as_ref().map(Resources::from) }
    }
}

impl From<&k8s_openapi::api::core::v1::PodSpec> for Spec {
    /// What the controllers read of a typed spec (a template's, to place the pods it would make).
    fn from(s: &k8s_openapi::api::core::v1::PodSpec) -> Self {
        Spec {
            node_name: s.node_name.as_deref().map(word),
            containers: shared_containers(s.containers.iter().map(Container::from).collect()),
            init_containers: s
                .init_containers
                .as_ref()
                .map(|cs| shared_containers(cs.iter().map(Container::from).collect())),
            node_selector: s.node_selector.clone().map(Box::new),
            affinity: s.affinity.clone().map(Box::new),
            // shared with the pods the template makes (the table forgets lists nobody holds)
            tolerations: s.tolerations.clone().map(shared_tolerations),
            priority: s.priority,
            scheduler_name: s.scheduler_name.as_deref().map(word),
            hostname: s.hostname.clone().map(Box::new),
            subdomain: s.subdomain.clone().map(Box::new),
        }
    }
}

/// A typed pod as the informer would cache it (through its JSON, as the watch delivers it).
#[cfg(test)]
pub(crate) fn cached(p: &k8s_openapi::api::core::v1::Pod) -> CachedPod {
    serde_json::from_value(serde_json::to_value(p).expect("a pod encodes")).expect("a pod decodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the API server stores it for a Deployment's replica, with the service-account volume and every
    /// field some controller reads.
    fn stored() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app-0-x", "namespace": "default", "uid": "p1", "resourceVersion": "7",
                "labels": {"app": "app-0", "pod-template-hash": "5d4f"}, "generateName": "app-0-",
                "annotations": {"batch.kubernetes.io/job-completion-index": "3"},
                "creationTimestamp": "2026-12-04T09:00:00Z", "deletionTimestamp": "2026-12-04T10:00:00Z", "finalizers": ["f"],
                "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-0", "uid": "u",
                    "controller": true}]},
            "spec": {
                "nodeName": "n1", "nodeSelector": {"disk": "ssd"}, "priority": 5, "schedulerName": "default-scheduler",
                "hostname": "h", "subdomain": "s", "restartPolicy": "Always", "serviceAccountName": "default",
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
                "initContainers": [{"name": "init", "image": "i",
                    "resources": {"requests": {"cpu": "1"}},
                    "volumeMounts": [{"name": "kube-api-access-a", "mountPath": "/var/run/secrets"}]}],
                "containers": [{"name": "c", "image": "skiff/echo:v1", "args": ["-x"], "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 8080, "hostPort": 80}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                    "volumeMounts": [{"name": "kube-api-access-a", "mountPath": "/var/run/secrets"}]}],
                "volumes": [{"name": "kube-api-access-a", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}]
            },
            "status": {"phase": "Failed", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}], "hostIP": "10.1.0.1",
                "startTime": "2026-12-04T09:00:00Z", "reason": "Evicted", "message": "m", "qosClass": "Burstable",
                "conditions": [{"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-04T09:00:01Z"}],
                "containerStatuses": [{"name": "c", "image": "skiff/echo:v1", "imageID": "", "ready": true,
                    "restartCount": 2, "state": {"terminated": {"exitCode": 1,
                        "finishedAt": "2026-12-04T09:30:00Z"}}}]}
        })
    }

    #[test]
    fn what_a_controller_reads_is_kept_as_the_typed_pod_has_it() {
        let full: k8s_openapi::api::core::v1::Pod = serde_json::from_value(stored()).expect("a typed pod");
        let cached: CachedPod = serde_json::from_value(stored()).expect("a cached pod");
        assert!(full.metadata.managed_fields.is_some());
        // the metadata's fields a controller reads, each as the typed pod has it
        let (m, t) = (&cached.metadata, &full.metadata);
        assert_eq!(
            (&m.name, &m.namespace, &m.uid, &m.resource_version),
            (
                &t.name,
                &t.namespace.as_deref().map(Arc::from),
                &t.uid.as_deref().map(Box::from),
                &t.resource_version.as_deref().map(Box::from)
            )
        );
        assert_eq!(m.labels.as_ref().map(|l| l.to_map()), t.labels);
        assert_eq!(
            (&m.annotations, &m.finalizers),
            (&t.annotations.clone().map(Box::new), &t.finalizers.clone().map(Vec::into_boxed_slice))
        );
        assert_eq!(m.owner_references.as_deref(), t.owner_references.as_deref());
        assert_eq!((&m.creation_timestamp, &m.deletion_timestamp), (&t.creation_timestamp, &t.deletion_timestamp));
        assert!(
            [m.labels.is_some(), m.annotations.is_some(), m.owner_references.is_some(), m.creation_timestamp.is_some()]
                .iter()
                .all(|set| *set)
        );
        let (spec, typed) = (cached.spec.as_ref().expect("spec"), full.spec.as_ref().expect("spec"));
        // the spec is what `From` keeps of the typed spec, and each kept field is set
        assert_eq!(spec, &Spec::from(typed));
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.priority, Some(5));
        assert_eq!(spec.scheduler_name.as_deref(), Some("default-scheduler"));
        assert_eq!(
            (spec.hostname.as_deref().map(String::as_str), spec.subdomain.as_deref().map(String::as_str)),
            (Some("h"), Some("s"))
        );
        assert!(spec.affinity.is_some() && spec.tolerations.is_some() && spec.node_selector.is_some());
        assert_eq!(spec.containers[0].ports.as_ref().map(Vec::len), Some(1));
        let requests = |c: &Container| c.resources.clone().and_then(|r| r.requests).unwrap_or_default();
        let amount = |c: &Container, r: &str| requests(c).get(r).map(|q| q.0.clone());
        assert_eq!(
            (amount(&spec.containers[0], "cpu"), amount(&spec.containers[0], "memory")),
            (Some("10m".into()), Some("16Mi".into()))
        );
        assert_eq!(amount(&spec.init_containers.as_ref().expect("init")[0], "cpu"), Some("1".into()));
        assert_eq!(amount(&spec.containers[0], "storage"), None);
        let (status, typed) = (cached.status.as_ref().expect("status"), full.status.as_ref().expect("status"));
        assert_eq!(status.phase.as_deref(), typed.phase.as_deref());
        assert_eq!(status.pod_ip.as_deref(), typed.pod_ip.as_deref());
        // of the conditions, Ready alone, with its status and transition time
        let kept = status.conditions.iter().flatten().map(|c| (&*c.type_, &*c.status, c.last_transition_time.as_ref()));
        let ready = typed
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.type_ == "Ready")
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.last_transition_time.as_ref()));
        assert!(kept.eq(ready));
        assert!(status.conditions.as_ref().is_some_and(|c| c.len() == 1 && c[0].last_transition_time.is_some()));
        assert!(typed.conditions.as_ref().is_some_and(|c| c.len() == 2));
        let (c, t) =
            (&status.container_statuses.as_ref().expect("cs")[0], &typed.container_statuses.as_ref().expect("cs")[0]);
        assert_eq!((&*c.name, c.restart_count), (t.name.as_str(), t.restart_count));
        assert_eq!(
            c.state.as_ref().and_then(|s| s.terminated.as_deref()),
            t.state.as_ref().and_then(|s| s.terminated.as_ref())
        );
        assert!(c.state.as_ref().is_some_and(|s| s.terminated.is_some()));
    }

    #[test]
    fn lists_are_held_at_their_length() {
        // decoded from text, as the watch's lines are (a `Value` would tell each list's length ahead)
        let p: CachedPod = serde_json::from_str(&stored().to_string()).expect("a pod");
        let spec = p.spec.as_ref().expect("spec");
        // the container list, the conditions and the container statuses are slices, exact by their type
        let ports = spec.containers[0].ports.as_ref().map(|v| (v.len(), v.capacity())).expect("ports");
        assert_eq!(ports, (1, 1));
    }

    #[test]
    fn pods_with_the_same_tolerations_share_one_list() {
        let with = |key: &str| {
            let pod = serde_json::json!({"spec": {"tolerations": [{"key": key, "operator": "Exists"},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 300}]}});
            serde_json::from_str::<CachedPod>(&pod.to_string()).expect("a pod").spec.and_then(|s| s.tolerations)
        };
        let (a, b, other) = (with("shared-test-a"), with("shared-test-a"), with("shared-test-b"));
        let (a, b, other) = (a.expect("a"), b.expect("b"), other.expect("other"));
        assert!(Arc::ptr_eq(&a, &b), "the same list once");
        assert!(!Arc::ptr_eq(&a, &other) && *a != *other, "another list apart");
        assert_eq!(a[1].toleration_seconds, Some(300));
    }

    #[test]
    fn pods_of_one_template_share_their_containers_and_words() {
        let pod = |cpu: &str, node: &str| {
            let pod = serde_json::json!({
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": cpu}}}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "c", "restartCount": 0}]}});
            serde_json::from_str::<CachedPod>(&pod.to_string()).expect("a pod")
        };
        let (a, b, other) = (pod("10m", "n1"), pod("10m", "n1"), pod("20m", "n2"));
        let spec = |p: &CachedPod| p.spec.clone().expect("spec");
        let status = |p: &CachedPod| p.status.clone().expect("status");
        assert!(Arc::ptr_eq(&spec(&a).containers, &spec(&b).containers), "one container list");
        assert!(!Arc::ptr_eq(&spec(&a).containers, &spec(&other).containers), "another request, another list");
        assert_eq!(spec(&other).containers[0].ports.as_ref().map(|p| p[0].container_port), Some(8080));
        let words = |p: &CachedPod| {
            let (spec, status) = (spec(p), status(p));
            let ready = status.conditions.expect("conditions")[0].clone();
            let name = status.container_statuses.expect("statuses")[0].name.clone();
            [spec.node_name.expect("node"), status.phase.expect("phase"), ready.type_, ready.status, name]
        };
        let (wa, wb, wo) = (words(&a), words(&b), words(&other));
        assert!(wa.iter().zip(&wb).all(|(x, y)| Arc::ptr_eq(x, y)), "{wa:?} held once");
        assert_eq!(wo.iter().map(|w| &**w).collect::<Vec<_>>(), ["n2", "Running", "Ready", "True", "c"]);
        assert!(!Arc::ptr_eq(&wa[0], &wo[0]) && Arc::ptr_eq(&wa[1], &wo[1]));
        // a template's spec shares the list its pods have
        let typed: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(serde_json::json!({"spec": {"containers": [{"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "10m"}}}]}}))
            .expect("a typed pod");
        assert!(Arc::ptr_eq(&Spec::from(typed.spec.as_ref().expect("spec")).containers, &spec(&a).containers));
    }

    #[test]
    fn requests_are_read_by_name_in_any_order() {
        let r: Requests =
            serde_json::from_value(serde_json::json!({"memory": "1Gi", "cpu": "2", "ephemeral-storage": "1G"}))
                .expect("requests");
        let got: Vec<_> =
            ["cpu", "ephemeral-storage", "memory", "gpu"].iter().map(|n| r.get(n).map(|q| q.0.as_str())).collect();
        assert_eq!(got, [Some("2"), Some("1G"), Some("1Gi"), None]);
        // containers that request the same share one list; another amount is another list
        let decode = |v| serde_json::from_value::<Requests>(v).expect("requests");
        let same = decode(serde_json::json!({"cpu": "2", "ephemeral-storage": "1G", "memory": "1Gi"}));
        let other = decode(serde_json::json!({"cpu": "2", "ephemeral-storage": "1G", "memory": "2Gi"}));
        assert!(Arc::ptr_eq(&r.0, &same.0) && !Arc::ptr_eq(&r.0, &other.0));
        assert_eq!(other.get("memory").map(|q| q.0.as_str()), Some("2Gi"));
    }

    #[test]
    fn a_pod_with_no_spec_or_status_decodes_empty() {
        let p: CachedPod = serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}})).expect("a pod");
        assert_eq!((p.metadata.name.as_deref(), p.spec, p.status), (Some("a"), None, None));
    }

    #[test]
    fn it_names_the_pods_resource() {
        assert_eq!(
            (CachedPod::kind(&()), CachedPod::plural(&()), CachedPod::api_version(&())),
            ("Pod".into(), "pods".into(), "v1".into())
        );
    }
}

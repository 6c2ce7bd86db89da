//! Helpers shared by the controllers: pod state, owner references, template hashes, conditions, time.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;

use super::cached_pod::CachedPod;
use super::pod_meta::PodMeta;

/// Now, as the API's `Time`.
pub fn now_time(now: jiff::Timestamp) -> Time {
    Time(now)
}

/// Whether a pod has finished (Succeeded or Failed).
pub fn is_terminal(pod: &CachedPod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Whether a pod is being deleted.
pub fn is_deleting(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether a pod counts as a live replica (not finished, not being deleted).
pub fn is_active(pod: &CachedPod) -> bool {
    !is_terminal(pod) && !is_deleting(pod)
}

/// The time a pod became Ready, when it is.
pub fn ready_since(pod: &CachedPod) -> Option<jiff::Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| &*c.type_ == "Ready" && &*c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

/// Whether a pod is Ready.
pub fn is_ready(pod: &CachedPod) -> bool {
    ready_since(pod).is_some()
}

/// Whether a pod has been Ready for at least `min_ready_seconds`.
pub fn is_available(pod: &CachedPod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match ready_since(pod) {
        Some(_) if min_ready_seconds <= 0 => true,
        Some(t) => now.duration_since(t).as_secs() >= i64::from(min_ready_seconds),
        None => false,
    }
}

/// What the informers read of any cached object's metadata: a typed object's `ObjectMeta`, or a cached pod's
/// [`PodMeta`].
pub trait Meta {
    /// The object's namespace.
    fn namespace(&self) -> Option<&str>;
    /// Its name.
    fn name(&self) -> Option<&str>;
    /// Its owner references.
    fn owners(&self) -> &[OwnerReference];
}

/// `Meta` for a metadata type whose fields have `ObjectMeta`'s names.
macro_rules! meta_by_field_names {
    ($($ty:ty),*) => {$(
        impl Meta for $ty {
            fn namespace(&self) -> Option<&str> {
                self.namespace.as_deref()
            }

            fn name(&self) -> Option<&str> {
                self.name.as_deref()
            }

            fn owners(&self) -> &[OwnerReference] {
                self.owner_references.as_deref().unwrap_or_default()
            }
        }
    )*};
}

meta_by_field_names!(ObjectMeta, PodMeta);

/// An object the informers cache, as they read it.
pub trait Cached {
    /// Its metadata's type.
    type Meta: Meta;
    /// Its metadata.
    fn cached_meta(&self) -> &Self::Meta;
}

impl<K: Resource<DynamicType = ()>> Cached for K {
    type Meta = ObjectMeta;

    fn cached_meta(&self) -> &ObjectMeta {
        self.meta()
    }
}

impl Cached for CachedPod {
    type Meta = PodMeta;

    fn cached_meta(&self) -> &PodMeta {
        &self.metadata
    }
}

/// The controller reference of an object, if any.
pub fn controller_of<M: Meta + ?Sized>(meta: &M) -> Option<&OwnerReference> {
    meta.owners().iter().find(|r| r.controller == Some(true))
}

/// Whether `meta` is controlled by the object with `uid`.
pub fn controlled_by<M: Meta + ?Sized>(meta: &M, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A controller owner reference to `owner`.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Encodes a number with the alphabet Kubernetes uses for generated names (no vowels, no confusable digits).
pub fn safe_encode(mut v: u64, len: usize) -> String {
    let mut out = String::with_capacity(len);
    for _ in 0..len {
        out.push(SAFE[(v % SAFE.len() as u64) as usize] as char);
        v /= SAFE.len() as u64;
    }
    out
}

/// A random suffix for generated names (5 characters).
pub fn random_suffix() -> String {
    safe_encode(rand::random::<u64>(), 5)
}

/// FNV-1a (32 bit).
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The `pod-template-hash` of a template (and a collision count), as Deployments label their ReplicaSets.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove("pod-template-hash");
    }
    let mut bytes = serde_json::to_vec(&t).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    safe_encode(u64::from(fnv32a(&bytes)), 10).trim_end_matches('b').to_string()
}

/// A pod template without the `pod-template-hash` label, for comparing a Deployment's template with its ReplicaSets'.
pub fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove("pod-template-hash");
        if l.is_empty() {
            t.metadata.as_mut().expect("checked above").labels = None;
        }
    }
    t
}

/// Labels of a template.
pub fn template_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
}

/// Resolves an int-or-percent against `total`, rounding up or down.
pub fn scaled_value(
    v: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    total: i32,
    round_up: bool,
    default: &str,
) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let v = v.cloned().unwrap_or_else(|| IntOrString::String(default.into()));
    match v {
        IntOrString::Int(i) => i,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let num = pct * i64::from(total);
            let r = if round_up { (num + 99) / 100 } else { num / 100 };
            r as i32
        }
    }
}

/// Patch parameters naming the controllers as the field manager.
pub fn pp() -> kube::api::PatchParams {
    kube::api::PatchParams { field_manager: Some("skiff-controller-manager".into()), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_kubernetes_rounds_them() {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let p = IntOrString::String("25%".into());
        assert_eq!(scaled_value(Some(&p), 3, true, "25%"), 1, "surge rounds up");
        assert_eq!(scaled_value(Some(&p), 3, false, "25%"), 0, "unavailable rounds down");
        assert_eq!(scaled_value(Some(&p), 10, true, "25%"), 3);
        assert_eq!(scaled_value(Some(&IntOrString::Int(2)), 10, true, "25%"), 2);
    }

    #[test]
    fn template_hashes_ignore_the_hash_label_and_change_with_the_template() {
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}})).expect("template");
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .expect("meta")
            .labels
            .as_mut()
            .expect("labels")
            .insert("pod-template-hash".into(), "x".into());
        assert_eq!(template_hash(&t, None), template_hash(&labelled, None));
        let mut other = t.clone();
        other.spec.as_mut().expect("spec").containers[0].image = Some("i:2".into());
        assert_ne!(template_hash(&t, None), template_hash(&other, None));
        assert_ne!(template_hash(&t, None), template_hash(&t, Some(1)));
    }
}

//! What one pod costs the controllers' informer: heap bytes held per cached pod and time to decode one from the
//! watch's JSON, for the typed `k8s_openapi` Pod (whole, and with the volumes and mounts the informer used to drop)
//! against `CachedPod`, side by side in one run; then what a store costs per pod beyond the pods, kube-runtime's
//! reflector store against Skiff's pod store. Run: `cargo bench -p skiff-control --bench pod_memory`.
//!
//! The pod is one replica of the scale bench (`scripts/bench-scale`) as the API server stores it once its simulated
//! kubelet has marked it Ready: admission's tolerations and service-account volume, five conditions, one container
//! status. Heap bytes are counted by a global allocator around the system's, so they are what was asked for, not
//! the allocator's pages.

#![allow(unsafe_code)] // the counting global allocator: three calls passed on to the system's, each with its SAFETY comment

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use skiff_control::controllers::cached_pod::CachedPod;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged, with the layout it was given; the counter is
// only arithmetic on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated above with `layout`; the caller guarantees `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const COPIES: usize = 20_000;

fn stored_pod() -> String {
    let now = "2026-12-04T09:00:00Z";
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app-12-7d9f8b6c5d-x2x4z", "generateName": "app-12-7d9f8b6c5d-", "namespace": "scale",
            "uid": "0f8e4a6e-1c2b-4d3e-9f8a-7b6c5d4e3f2a", "resourceVersion": "123456", "creationTimestamp": now,
            "labels": {"app": "app-12", "pod-template-hash": "7d9f8b6c5d"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-12-7d9f8b6c5d",
                "uid": "1a2b3c4d-1c2b-4d3e-9f8a-7b6c5d4e3f2a", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {
            "containers": [{"name": "c", "image": "registry.local/app:v1",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [{"name": "kube-api-access-abcde",
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "nodeName": "node-17", "securityContext": {},
            "schedulerName": "default-scheduler", "priority": 0, "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}]},
        "status": {"phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.64.17.5", "podIPs": [{"ip": "10.64.17.5"}],
            "startTime": now, "qosClass": "Burstable",
            "containerStatuses": [{"name": "c", "image": "sim", "imageID": "", "ready": true, "started": true,
                "restartCount": 0, "state": {"running": {"startedAt": now}}}],
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]}
    })
    .to_string()
}

/// What the informer did before `CachedPod`: the typed pod without its volumes and volume mounts.
fn without_volumes(mut p: Pod) -> Pod {
    if let Some(spec) = p.spec.as_mut() {
        spec.volumes = None;
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            c.volume_mounts = None;
        }
    }
    p
}

/// Heap bytes held per copy and decoding time per copy, decoding `COPIES` copies of `json` with `decode`.
fn measure<T>(json: &str, decode: impl Fn(&str) -> T) -> (f64, f64) {
    let before = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    let held: Vec<T> = (0..COPIES).map(|_| decode(black_box(json))).collect();
    let took = start.elapsed();
    let bytes = LIVE.load(Ordering::Relaxed) - before - (COPIES * std::mem::size_of::<T>()) as isize;
    // the Vec's own slots are not the pods' cost; each pod's inline size is, as an informer holds it in an Arc
    let per_pod = bytes as f64 / COPIES as f64 + std::mem::size_of::<T>() as f64;
    drop(black_box(held));
    (per_pod, took.as_secs_f64() / COPIES as f64 * 1e6)
}

fn main() {
    let json = stored_pod();
    let whole = measure(&json, |j| serde_json::from_str::<Pod>(j).expect("a pod"));
    let trimmed = measure(&json, |j| without_volumes(serde_json::from_str::<Pod>(j).expect("a pod")));
    let cached = measure(&json, |j| serde_json::from_str::<CachedPod>(j).expect("a pod"));
    println!("one scale-bench pod, {} bytes of JSON, decoded {COPIES} times:", json.len());
    println!("{:<36} {:>14} {:>16}", "", "bytes per pod", "µs to decode");
    for (name, (bytes, micros)) in
        [("typed Pod, whole", whole), ("typed Pod without volumes (before)", trimmed), ("CachedPod (now)", cached)]
    {
        println!("{name:<36} {bytes:>14.0} {micros:>16.2}");
    }
    println!(
        "CachedPod against the typed pod without volumes: {:.2}x less memory, {:.2}x faster to decode",
        trimmed.0 / cached.0,
        trimmed.1 / cached.1
    );
    stores(&json);
}

/// Heap bytes live while `build` holds what it made of `pods` (counted from before it ran).
fn held<T>(pods: &[CachedPod], build: impl FnOnce(&[CachedPod]) -> T) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    let made = build(black_box(pods));
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    drop(black_box(made));
    bytes
}

/// What a store costs per pod beyond the pods themselves: `COPIES` pods (the bench pod under as many names) applied
/// to kube-runtime's reflector store and to Skiff's pod store (which also groups them by controller), against the
/// same pods held in a `Vec` of `Arc`s.
fn stores(json: &str) {
    use kube::runtime::watcher::Event;
    use skiff_control::controllers::pod_store;

    let pod: CachedPod = serde_json::from_str(json).expect("a pod");
    let pods: Vec<CachedPod> = (0..COPIES)
        .map(|i| {
            let mut p = pod.clone();
            // as long as the bench pod's name
            p.metadata.name = Some(format!("app-12-7d9f8b6c5d-{i:05}"));
            p
        })
        .collect();
    let alone = held(&pods, |ps| ps.iter().map(|p| Arc::new(p.clone())).collect::<Vec<_>>())
        - (COPIES * std::mem::size_of::<Arc<CachedPod>>()) as isize;
    let reflector = held(&pods, |ps| {
        let mut w = kube::runtime::reflector::store::Writer::<CachedPod>::default();
        for p in ps {
            w.apply_watcher_event(&Event::Apply(p.clone()));
        }
        w
    });
    let ours = held(&pods, |ps| {
        let mut w = pod_store::Writer::<CachedPod>::default();
        for p in ps {
            w.apply(Event::Apply(p.clone()));
        }
        w
    });
    let per_pod = |bytes: isize| (bytes - alone) as f64 / COPIES as f64;
    println!("\n{COPIES} pods of one ReplicaSet in a store, heap bytes per pod beyond the pods themselves:");
    println!("{:<36} {:>14.0}", "kube-runtime's reflector store", per_pod(reflector));
    println!("{:<36} {:>14.0}", "pod store (with its groups)", per_pod(ours));
    println!("the pod store against the reflector store: {:.2}x less", per_pod(reflector) / per_pod(ours));
}

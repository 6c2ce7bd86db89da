//! What the informers keep of an object beyond what every informer drops (`managedFields`): as client-go's
//! transform functions do, the pod informer leaves out what no controller reads, so each of the cluster's pods
//! costs the controllers less memory.
//!
//! A pod's volumes and its containers' volume mounts are about half of a typed `Pod` in memory: `k8s_openapi`'s
//! `Volume` holds every kind of volume source inline (3.2 KB before any string), and every pod carries the
//! projected service-account volume, so a 2.3 KB pod of the scale bench took 18 KB typed and takes 8.5 KB without
//! them (measured by deserializing 20,000 copies, 2026-12-04). No controller reads them: the scheduler places by
//! resources, selectors, affinity, taints and host ports; owners count their pods by labels, owner references and
//! status; the StatefulSet controller builds its pods' volumes from its own template. Cached pods are never written
//! back whole (every pod write is a targeted patch), so nothing dropped here can be lost. A controller that comes to
//! need a pod's volumes (volume binding, attach/detach) must keep them here first.

use k8s_openapi::api::core::v1::Pod;

/// Drops a pod's volumes and every container's volume mounts (see the module docs).
pub fn pod(p: &mut Pod) {
    let Some(spec) = p.spec.as_mut() else { return };
    spec.volumes = None;
    for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        c.volume_mounts = None;
        c.volume_devices = None;
    }
    for c in spec.ephemeral_containers.iter_mut().flatten() {
        c.volume_mounts = None;
        c.volume_devices = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the API server stores it for a Deployment's replica, with the service-account volume.
    fn stored() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app-0-x", "namespace": "default", "labels": {"app": "app-0"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-0", "uid": "u",
                    "controller": true}]},
            "spec": {
                "nodeName": "n1", "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "initContainers": [{"name": "init", "image": "i",
                    "volumeMounts": [{"name": "kube-api-access-a", "mountPath": "/var/run/secrets"}]}],
                "containers": [{"name": "c", "image": "skiff/echo:v1",
                    "ports": [{"name": "http", "containerPort": 8080, "hostPort": 80}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    "volumeMounts": [{"name": "kube-api-access-a", "mountPath": "/var/run/secrets"}]}],
                "volumes": [{"name": "kube-api-access-a", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}]
            },
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "skiff/echo:v1", "imageID": "", "ready": true,
                    "restartCount": 2}]}
        }))
        .expect("a pod")
    }

    #[test]
    fn volumes_and_mounts_go_and_what_controllers_read_stays() {
        let mut p = stored();
        pod(&mut p);
        let spec = p.spec.as_ref().expect("spec");
        assert!(spec.volumes.is_none());
        assert!(spec.containers.iter().chain(spec.init_containers.iter().flatten()).all(|c| c.volume_mounts.is_none()));
        // what the scheduler, the owners and the EndpointSlice controller read is untouched
        let mut expected = stored();
        let s = expected.spec.as_mut().expect("spec");
        s.volumes = None;
        s.containers[0].volume_mounts = None;
        s.init_containers.as_mut().expect("init")[0].volume_mounts = None;
        assert_eq!(p, expected);
        assert_eq!(p.spec.as_ref().and_then(|s| s.containers[0].ports.as_ref()).map(Vec::len), Some(1));
    }

    #[test]
    fn a_pod_without_a_spec_is_left_alone() {
        let mut p = Pod::default();
        pod(&mut p);
        assert_eq!(p, Pod::default());
    }
}

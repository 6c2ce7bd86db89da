"""The official Python client (PyPI `kubernetes`, installed by scripts/setup) scales every Deployment of a namespace
through the `scale` subresource, as a Python operator would: run by cli/benches/scale.rs with the kubeconfig, the
namespace and the replica count. Exits non-zero at the first error."""

import sys

import kubernetes
from kubernetes import client, config

config.load_kube_config(sys.argv[1])
apps = client.AppsV1Api()
ns, replicas = sys.argv[2], int(sys.argv[3])
names = [d.metadata.name for d in apps.list_namespaced_deployment(ns).items]
for name in names:
    scale = apps.read_namespaced_deployment_scale(name, ns)
    scale.spec.replicas = replicas
    apps.replace_namespaced_deployment_scale(name, ns, scale)
print(f"scaled {len(names)} Deployments to {replicas} with the Python client {kubernetes.__version__}")

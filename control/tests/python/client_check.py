"""The official Python client (PyPI `kubernetes`) against a Skiff API server: run by control/tests/python_client.rs
with the kubeconfig as its argument. Every check asserts the answer's shape as the real API server gives it; the
script exits non-zero at the first difference."""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
core, apps = client.CoreV1Api(), client.AppsV1Api()
ext, custom = client.ApiextensionsV1Api(), client.CustomObjectsApi()
NS = "py"
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def status_of(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ApiException as e:
        return e.status
    return 200


# version (the client asks for /version/, with a trailing slash)
v = client.VersionApi().get_code()
check(v.major == "1" and v.minor.startswith("32"), f"version {v.major}.{v.minor}")

# CRUD, and errors with the status codes Kubernetes gives
core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
cm = core.create_namespaced_config_map(NS, {"metadata": {"name": "c1", "labels": {"tier": "web"}}, "data": {"a": "1"}})
check(cm.metadata.uid and cm.metadata.resource_version, "create returns uid and resourceVersion")
check(status_of(core.create_namespaced_config_map, NS, {"metadata": {"name": "c1"}}) == 409, "409 on a second create")
check(status_of(core.read_namespaced_config_map, "nope", NS) == 404, "404 on a missing object")
check(status_of(core.create_namespaced_config_map, NS, {"metadata": {"name": "Bad_Name"}}) == 422, "422 on a bad name")
stale = core.read_namespaced_config_map("c1", NS)
core.replace_namespaced_config_map("c1", NS, {"metadata": {"name": "c1", "labels": {"tier": "web"}}, "data": {"a": "2"}})
stale.data = {"a": "3"}
check(status_of(core.replace_namespaced_config_map, "c1", NS, stale) == 409, "409 on a stale resourceVersion")
check(core.read_namespaced_config_map("c1", NS).data == {"a": "2"}, "the stale write lost nothing")

# a Deployment comes back with `status: {}`, and strategic merge patch merges containers by name
dep = {
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "web", "image": "skiff/echo:v1"}]}},
    },
}
d = apps.create_namespaced_deployment(NS, dep)
check(d.status is not None and d.status.ready_replicas is None, "status is {} right after create")
apps.patch_namespaced_deployment("web", NS, {"spec": {"template": {"spec": {"containers": [
    {"name": "sidecar", "image": "busybox"}]}}}})
names = [c.name for c in apps.read_namespaced_deployment("web", NS).spec.template.spec.containers]
check(sorted(names) == ["sidecar", "web"], f"strategic merge patch kept web and added sidecar: {names}")

# scale and status subresources
check(apps.read_namespaced_deployment_scale("web", NS).spec.replicas == 1, "scale reads replicas")
apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 3}})
check(apps.read_namespaced_deployment("web", NS).spec.replicas == 3, "scale writes replicas")
apps.patch_namespaced_deployment_status("web", NS, {"status": {"observedGeneration": 1, "replicas": 0}})
check(apps.read_namespaced_deployment_status("web", NS).status.observed_generation == 1, "status subresource")

# autoscaling/v1 beside v2: one object, converted at the edge, nothing lost through a v1 patch
v1api, v2api = client.AutoscalingV1Api(), client.AutoscalingV2Api()
v1api.create_namespaced_horizontal_pod_autoscaler(NS, {
    "metadata": {"name": "web"},
    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
             "minReplicas": 1, "maxReplicas": 4, "targetCPUUtilizationPercentage": 70}})
h2 = v2api.read_namespaced_horizontal_pod_autoscaler("web", NS)
check(h2.spec.metrics[0].resource.target.average_utilization == 70, "a v1 target reads as a v2 metric")
v2api.patch_namespaced_horizontal_pod_autoscaler("web", NS, {"spec": {"metrics": [
    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}]}})
v1api.patch_namespaced_horizontal_pod_autoscaler("web", NS, {"spec": {"maxReplicas": 7}})
h2 = v2api.read_namespaced_horizontal_pod_autoscaler("web", NS)
check(h2.spec.max_replicas == 7 and len(h2.spec.metrics) == 2, "a v1 patch keeps the v2-only metric")
h1 = v1api.list_namespaced_horizontal_pod_autoscaler(NS).items
check(len(h1) == 1 and h1[0].spec.target_cpu_utilization_percentage == 70, "v1 lists convert each item")

# list with limit/continue, label and field selectors
for i in range(2, 7):
    core.create_namespaced_config_map(NS, {"metadata": {"name": f"c{i}"}, "data": {}})
seen, cont = [], None
for _ in range(10):
    page = core.list_namespaced_config_map(NS, limit=2, _continue=cont)
    check(len(page.items) <= 2, "a page holds at most `limit` items")
    seen += [c.metadata.name for c in page.items]
    cont = page.metadata._continue
    if not cont:
        break
check([n for n in seen if n.startswith("c")] == [f"c{i}" for i in range(1, 7)], f"pages cover the list once: {seen}")
check([c.metadata.name for c in core.list_namespaced_config_map(NS, label_selector="tier=web").items] == ["c1"],
      "label selector")
check([c.metadata.name for c in core.list_namespaced_config_map(NS, field_selector="metadata.name=c3").items] == ["c3"],
      "field selector")

# watch ADDED/MODIFIED/DELETED from a resourceVersion
rv = core.list_namespaced_config_map(NS).metadata.resource_version
events, errors = [], []


def follow():
    w = watch.Watch()
    try:
        for ev in w.stream(core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=15):
            if ev["object"].metadata.name == "w1":
                events.append(ev["type"])
                if ev["type"] == "DELETED":
                    w.stop()
    except Exception as e:  # reported below with the events
        errors.append(repr(e))


t = threading.Thread(target=follow)
t.start()
time.sleep(0.5)
core.create_namespaced_config_map(NS, {"metadata": {"name": "w1"}, "data": {"x": "1"}})
core.patch_namespaced_config_map("w1", NS, {"data": {"x": "2"}})
core.delete_namespaced_config_map("w1", NS)
t.join(20)
check(events == ["ADDED", "MODIFIED", "DELETED"], f"watch events {events}, errors {errors}")

# a CRD with a structural schema, and a custom object
ext.create_custom_resource_definition({
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}],
    },
})
for _ in range(50):
    if status_of(custom.list_namespaced_custom_object, "example.com", "v1", NS, "widgets") == 200:
        break
    time.sleep(0.1)
custom.create_namespaced_custom_object("example.com", "v1", NS, "widgets",
                                       {"apiVersion": "example.com/v1", "kind": "Widget",
                                        "metadata": {"name": "w"}, "spec": {"size": 3}})
got = custom.get_namespaced_custom_object("example.com", "v1", NS, "widgets", "w")
check(got["spec"]["size"] == 3, "custom object round trip")
check(len(custom.list_namespaced_custom_object("example.com", "v1", NS, "widgets")["items"]) == 1, "custom list")
custom.delete_namespaced_custom_object("example.com", "v1", NS, "widgets", "w")
check(status_of(custom.get_namespaced_custom_object, "example.com", "v1", NS, "widgets", "w") == 404, "deleted")

print(f"python client: {checks} checks passed")

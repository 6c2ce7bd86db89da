//! The EndpointSlice controller: for each Service with a selector, the pods it selects become endpoints with
//! ready/serving/terminating conditions, node names, zones and target references, grouped by their resolved ports
//! (named target ports can differ between pods) in slices of at most 100; the legacy Endpoints object follows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, Node, ObjectReference, Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use skiff_api::selector::Selector;

use super::cached_pod::CachedPod;
use super::ctx::{Ctx, ReconcileError};
use super::util::{is_ready, is_terminal, owner_ref};

/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming a slice's manager.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our manager name (Kubernetes' own, so tools recognise the slices).
pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// At most this many endpoints per slice.
pub const MAX_PER_SLICE: usize = 100;

/// One desired slice: its ports and endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredSlice {
    /// Ports (resolved).
    pub ports: Vec<EndpointPort>,
    /// Endpoints, sorted by address.
    pub endpoints: Vec<Endpoint>,
}

fn resolve_port(pod: &CachedPod, target: &IntOrString) -> Option<i32> {
    match target {
        IntOrString::Int(p) => Some(*p),
        IntOrString::String(name) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The pods a Service selects, as slices.
pub fn desired(svc: &Service, pods: &[Arc<CachedPod>], nodes: &[Arc<Node>]) -> Vec<DesiredSlice> {
    let Some(spec) = svc.spec.as_ref() else { return Vec::new() };
    let Some(sel) = spec.selector.as_ref().filter(|s| !s.is_empty()) else { return Vec::new() };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let selector = Selector::from_map(sel.iter());
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let zones: BTreeMap<String, String> = nodes
        .iter()
        .filter_map(|n| {
            Some((n.metadata.name.clone()?, n.metadata.labels.as_ref()?.get("topology.kubernetes.io/zone")?.clone()))
        })
        .collect();
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Endpoint>> = BTreeMap::new();
    for p in pods {
        if is_terminal(p) || !p.metadata.selected_by(&selector) {
            continue;
        }
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_deref()).filter(|ip| !ip.is_empty()) else {
            continue;
        };
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
                Some((
                    sp.name.clone().unwrap_or_default(),
                    resolve_port(p, &target)?,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        if ports.is_empty() && spec.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            // none of the Service's target ports exists on this pod
            continue;
        }
        let terminating = p.metadata.deletion_timestamp.is_some();
        let ready = is_ready(p);
        let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref().map(String::from));
        let hostname = p
            .spec
            .as_ref()
            .filter(|s| s.subdomain.as_deref() == Some(&svc_name))
            .and_then(|s| s.hostname.as_deref().cloned());
        groups.entry(ports).or_default().push(Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (ready && !terminating)),
                serving: Some(publish_not_ready || ready),
                terminating: Some(terminating),
            }),
            hostname,
            zone: node.as_ref().and_then(|n| zones.get(n).cloned()),
            node_name: node,
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: p.metadata.namespace.as_deref().map(String::from),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.as_deref().map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let app_protocol = |name: &str| {
        spec.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == name)
            .and_then(|p| p.app_protocol.clone())
    };
    let mut out = Vec::new();
    for (ports, mut endpoints) in groups {
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        let ports: Vec<EndpointPort> = ports
            .iter()
            .map(|(name, port, proto)| EndpointPort {
                name: Some(name.clone()),
                port: Some(*port),
                protocol: Some(proto.clone()),
                app_protocol: app_protocol(name),
            })
            .collect();
        for chunk in endpoints.chunks(MAX_PER_SLICE) {
            out.push(DesiredSlice { ports: ports.clone(), endpoints: chunk.to_vec() });
        }
    }
    out
}

/// The legacy Endpoints object for the same endpoints.
pub fn endpoints_object(svc: &Service, slices: &[DesiredSlice]) -> Endpoints {
    let subsets: Vec<EndpointSubset> = slices
        .iter()
        .filter(|s| !s.endpoints.is_empty())
        .map(|s| {
            let addr = |e: &Endpoint| EndpointAddress {
                ip: e.addresses[0].clone(),
                node_name: e.node_name.clone(),
                target_ref: e.target_ref.clone(),
                hostname: e.hostname.clone(),
            };
            let ready: Vec<EndpointAddress> = s
                .endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .map(addr)
                .collect();
            let not_ready: Vec<EndpointAddress> = s
                .endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(true))
                .map(addr)
                .collect();
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    s.ports
                        .iter()
                        .map(|p| CorePort {
                            name: p.name.clone().filter(|n| !n.is_empty()),
                            port: p.port.unwrap_or(0),
                            protocol: p.protocol.clone(),
                            app_protocol: p.app_protocol.clone(),
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert("endpoints.kubernetes.io/managed-by".into(), "endpoint-controller".into());
    Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

/// Reconciles the slices of one Service.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    if svc.spec.as_ref().and_then(|s| s.selector.as_ref()).is_none_or(|s| s.is_empty()) {
        // Services without selectors have their endpoints managed by someone else
        return Ok(Action::await_change());
    }
    let pods = ctx.pods.in_namespace(&ns);
    let want = desired(&svc, &pods, &ctx.nodes.state());
    let mut existing: Vec<Arc<EndpointSlice>> = super::informers::in_namespace(&ctx.slices, &ns)
        .into_iter()
        .filter(|s| {
            let l = s.metadata.labels.clone().unwrap_or_default();
            l.get(SERVICE_NAME) == Some(&name) && l.get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER)
        })
        .collect();
    existing.sort_by_key(|s| s.metadata.name.clone());
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let mut labels = BTreeMap::new();
    labels.insert(SERVICE_NAME.to_string(), name.clone());
    labels.insert(MANAGED_BY.to_string(), CONTROLLER.to_string());
    for (i, d) in want.iter().enumerate() {
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: existing.get(i).and_then(|s| s.metadata.name.clone()),
                generate_name: Some(format!("{name}-")),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![owner_ref(svc.as_ref())]),
                resource_version: existing.get(i).and_then(|s| s.metadata.resource_version.clone()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: d.endpoints.clone(),
            ports: Some(d.ports.clone()),
        };
        match existing.get(i) {
            Some(cur) if cur.endpoints == d.endpoints && cur.ports.as_ref() == Some(&d.ports) => {}
            Some(cur) => {
                let n = cur.metadata.name.clone().unwrap_or_default();
                api.replace(&n, &PostParams::default(), &slice).await?;
            }
            None => {
                api.create(&PostParams::default(), &slice).await?;
            }
        }
    }
    for extra in existing.iter().skip(want.len()) {
        let n = extra.metadata.name.clone().unwrap_or_default();
        super::retry::unless_gone(api.delete(&n, &DeleteParams::default()).await)?;
    }
    // the legacy Endpoints object
    let eps = endpoints_object(&svc, &want);
    let eapi: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    match eapi.get_opt(&name).await? {
        Some(cur) if cur.subsets == eps.subsets => {}
        Some(cur) => {
            let mut e = eps.clone();
            e.metadata.resource_version = cur.metadata.resource_version.clone();
            eapi.replace(&name, &PostParams::default(), &e).await?;
        }
        None => {
            eapi.create(&PostParams::default(), &eps).await?;
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The controller's name in Events and metrics.
pub const COMPONENT: &str = "endpointslice-controller";

/// Runs the controller: Service changes, and pod changes mapped to the Services that select the pod.
pub async fn run(
    ctx: Arc<Ctx>,
    services: Subscription<Service>,
    slices: Subscription<EndpointSlice>,
    pods: Subscription<CachedPod>,
) {
    let store = ctx.services.clone();
    Controller::for_shared_stream(services, ctx.services.clone())
        .owns_shared_stream(slices)
        .reconcile_on(super::informers::related(pods, move |pod: Arc<CachedPod>| {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let labels = pod.metadata.labels.clone();
            store
                .state()
                .into_iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(&*ns))
                .filter(|s| {
                    s.spec.as_ref().and_then(|sp| sp.selector.as_ref()).is_some_and(|sel| {
                        !sel.is_empty()
                            && sel.iter().all(|(k, v)| labels.as_ref().and_then(|l| l.get(k)) == Some(v.as_str()))
                    })
                })
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        }))
        .run(super::retry::reconciler(COMPONENT, reconcile), super::retry::policy(COMPONENT), ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(target: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d", "uid": "s"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target}]}})).expect("svc")
    }

    fn pod(name: &str, ip: &str, port_name: &str, port: i32, ready: bool, deleting: bool) -> Arc<CachedPod> {
        let mut v = json!({"metadata": {"name": name, "namespace": "d", "uid": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(v).expect("pod"))
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let pods = vec![
            pod("a", "10.244.0.2", "http", 8080, true, false),
            pod("b", "10.244.0.3", "http", 8080, false, false),
            pod("c", "10.244.0.4", "http", 8080, true, true),
        ];
        let s = desired(&svc(json!(8080)), &pods, &[]);
        assert_eq!(s.len(), 1);
        let c: Vec<(bool, bool, bool)> = s[0]
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().expect("conditions");
                (c.ready == Some(true), c.serving == Some(true), c.terminating == Some(true))
            })
            .collect();
        assert_eq!(c, vec![(true, true, false), (false, false, false), (false, true, true)]);
        assert_eq!(s[0].ports[0].port, Some(8080));
    }

    #[test]
    fn named_ports_resolve_per_pod_and_split_slices() {
        let pods = vec![
            pod("a", "10.244.0.2", "web", 8080, true, false),
            pod("b", "10.244.0.3", "web", 9090, true, false),
            pod("x", "10.244.0.9", "other", 1, true, false),
        ];
        let s = desired(&svc(json!("web")), &pods, &[]);
        let ports: Vec<i32> = s.iter().map(|d| d.ports[0].port.expect("port")).collect();
        assert_eq!(ports, vec![8080, 9090]);
        let eps = endpoints_object(&svc(json!("web")), &s);
        assert_eq!(eps.subsets.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn large_services_are_split_into_slices_of_one_hundred() {
        let pods: Vec<Arc<CachedPod>> = (0..250)
            .map(|i| pod(&format!("p{i}"), &format!("10.244.{}.{}", i / 200, i % 200 + 2), "http", 80, true, false))
            .collect();
        let s = desired(&svc(json!(80)), &pods, &[]);
        assert_eq!(s.iter().map(|d| d.endpoints.len()).collect::<Vec<_>>(), vec![100, 100, 50]);
    }
}

//! From an Ingress backend to an upstream pool: Service port by number or name, then the EndpointSlices.
//!
//! The Service port is found by `port.number` (its `port`) or `port.name` (its `name`); the EndpointSlices of the
//! Service (label `kubernetes.io/service-name`) carry a port of the same name, whose number is the pod port. Ready
//! endpoints (`conditions.ready` true or unset) take traffic; serving-but-terminating ones are kept as the drain
//! fallback; FQDN slices are skipped.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::IngressServiceBackend;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::objects::Objects;
use crate::table::{Backend, BackendState, Balance, Endpoint, Pool, State};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Services and EndpointSlices by `(namespace, name)`, built once per compile.
#[derive(Debug)]
pub struct Index<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    cache: HashMap<(String, String, String, bool), Resolved>,
}

/// A backend and, when it is degraded, why (the caller files the problem on the Ingress).
pub type Resolved = (Arc<Backend>, Option<(&'static str, String)>);

impl<'a> Index<'a> {
    /// Indexes the Services and EndpointSlices of `objects`.
    pub fn new(objects: &'a Objects) -> Self {
        let ns = |m: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.namespace.as_deref().unwrap_or("default")
        };
        let mut services = HashMap::new();
        for s in &objects.services {
            services.insert((ns(&s.metadata), s.metadata.name.as_deref().unwrap_or_default()), s);
        }
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        for s in &objects.slices {
            if let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                slices.entry((ns(&s.metadata), svc.as_str())).or_default().push(s);
            }
        }
        Index { services, slices, cache: HashMap::new() }
    }

    /// Resolves a service backend of an Ingress in `namespace`; the same Service port resolves to one shared
    /// [`Backend`] per compile (one pool, one round-robin cursor).
    pub fn resolve(
        &mut self,
        namespace: &str,
        svc: &IngressServiceBackend,
        balance: Balance,
        state: &State,
    ) -> Resolved {
        let port_key = match svc.port.as_ref() {
            Some(p) => match (&p.name, p.number) {
                (Some(name), _) if !name.is_empty() => name.clone(),
                (_, Some(n)) => n.to_string(),
                _ => String::new(),
            },
            None => String::new(),
        };
        let key = (namespace.to_owned(), svc.name.clone(), port_key.clone(), balance == Balance::PeakEwma);
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let (backend_state, problem) = self.state_of(namespace, svc, &port_key, balance, state);
        let service = format!("{namespace}/{}", svc.name).into();
        let resolved = (
            Arc::new(Backend {
                service,
                port: port_key.into(),
                state: backend_state,
                upstream_histogram: Default::default(),
            }),
            problem,
        );
        self.cache.insert(key, resolved.clone());
        resolved
    }

    fn state_of(
        &self,
        namespace: &str,
        svc: &IngressServiceBackend,
        port_key: &str,
        balance: Balance,
        state: &State,
    ) -> (BackendState, Option<(&'static str, String)>) {
        let unavailable = |reason: &'static str, message: String| {
            (BackendState::Unavailable(message.clone().into()), Some((reason, message)))
        };
        let name = &svc.name;
        let Some(service) = self.services.get(&(namespace, name.as_str())) else {
            return unavailable("MissingService", format!("service \"{namespace}/{name}\" not found"));
        };
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            return unavailable(
                "UnsupportedBackend",
                format!("service \"{namespace}/{name}\" is of type ExternalName, which the ingress does not proxy to"),
            );
        }
        let ports = spec.ports.unwrap_or_default();
        let by_name = svc.port.as_ref().and_then(|p| p.name.as_deref()).filter(|n| !n.is_empty());
        let by_number = svc.port.as_ref().and_then(|p| p.number);
        let found: Option<&ServicePort> = match (by_name, by_number) {
            (Some(n), _) => ports.iter().find(|p| p.name.as_deref() == Some(n)),
            (None, Some(num)) => ports.iter().find(|p| p.port == num),
            (None, None) if ports.len() == 1 => ports.first(),
            (None, None) => None,
        };
        let Some(port) = found else {
            return unavailable(
                "MissingServicePort",
                format!("service \"{namespace}/{name}\" has no port {port_key:?}"),
            );
        };
        let port_name = port.name.clone().unwrap_or_default();
        let fallback_port = match &port.target_port {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
            None => u16::try_from(port.port).ok(),
            Some(IntOrString::String(_)) => None,
        };
        let mut ready = BTreeSet::new();
        let mut terminating = BTreeSet::new();
        for slice in self.slices.get(&(namespace, name.as_str())).into_iter().flatten() {
            if slice.address_type == "FQDN" {
                continue;
            }
            let slice_port = match &slice.ports {
                Some(ps) => ps
                    .iter()
                    .find(|p| p.name.clone().unwrap_or_default() == port_name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok()),
                None => fallback_port,
            };
            let Some(pod_port) = slice_port else { continue };
            for ep in &slice.endpoints {
                let c = ep.conditions.clone().unwrap_or_default();
                let is_ready = c.ready != Some(false);
                let draining = !is_ready && c.terminating == Some(true) && c.serving != Some(false);
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else { continue };
                    let sa = SocketAddr::new(ip, pod_port);
                    if is_ready {
                        ready.insert(sa);
                    } else if draining {
                        terminating.insert(sa);
                    }
                }
            }
        }
        let link = |set: BTreeSet<SocketAddr>| -> Vec<Arc<Endpoint>> {
            set.into_iter().map(|a| Arc::new(Endpoint::new(a, state.endpoint(a)))).collect()
        };
        let pool = Pool::new(link(ready), link(terminating), balance);
        let problem = pool.is_empty().then(|| {
            ("NoEndpoints", format!("service \"{namespace}/{name}\" has no ready endpoints (503 until it has)"))
        });
        (BackendState::Pool(pool), problem)
    }
}

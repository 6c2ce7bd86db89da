//! Cluster DNS answers as a pure function of Services and EndpointSlices (the Kubernetes DNS specification):
//! - `svc.ns.svc.<domain>`: the ClusterIP; the ready endpoints' addresses for a headless Service; a CNAME for an
//!   ExternalName Service;
//! - `host.svc.ns.svc.<domain>`: a headless Service's endpoint with that hostname;
//! - `_port._proto.svc.ns.svc.<domain>`: SRV records for named ports;
//! - `a-b-c-d.ns.pod.<domain>`: the address a.b.c.d;
//! - names that exist but have no record of the asked type answer NOERROR without records; other names of the
//!   cluster domain are NXDOMAIN; names outside it are [`super::upstream`]'s.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// What the answer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A records.
    A(Vec<Ipv4Addr>),
    /// A CNAME to this name.
    Cname(String),
    /// SRV records: (port, target).
    Srv(Vec<(u16, String)>),
    /// The name exists; no records of this type.
    NoData,
    /// The name does not exist.
    NxDomain,
}

/// The query types the answer depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    /// A.
    A,
    /// SRV.
    Srv,
    /// CNAME.
    Cname,
    /// Anything else (AAAA, TXT, …).
    Other,
}

/// Where Services and EndpointSlices come from.
pub trait Cluster {
    /// A Service.
    fn service(&self, ns: &str, name: &str) -> Option<Service>;
    /// The EndpointSlices of a Service.
    fn slices(&self, ns: &str, service: &str) -> Vec<EndpointSlice>;
    /// Whether the namespace has any Service (so `ns.svc.<domain>` exists).
    fn namespace_exists(&self, ns: &str) -> bool;
}

/// Ready endpoint addresses of a Service, with their hostnames.
fn endpoints(slices: &[EndpointSlice]) -> Vec<(Ipv4Addr, Option<String>)> {
    let mut out = Vec::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        for e in &s.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse() {
                    out.push((ip, e.hostname.clone()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn is_headless(s: &Service) -> bool {
    s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The pod address named by `a-b-c-d`.
pub fn pod_ip(label: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        octets[i] = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

/// Answers `name` (any case, with or without the final dot) of type `q` in cluster domain `domain`.
/// Whether `name` is in the cluster domain (`domain` itself or below it): those names are answered here, all
/// others are forwarded.
pub fn in_domain(name: &str, domain: &str) -> bool {
    // asked on every query: compared in place, case-insensitively, without building strings
    let (name, domain) = (name.trim_end_matches('.').as_bytes(), domain.trim_end_matches('.').as_bytes());
    let Some(start) = name.len().checked_sub(domain.len()) else { return false };
    name[start..].eq_ignore_ascii_case(domain) && (start == 0 || name[start - 1] == b'.')
}

/// The answer for `name` (a name of the cluster domain) and query type `q`.
pub fn answer(name: &str, q: QType, domain: &str, cluster: &dyn Cluster) -> Answer {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let Some(rel) = name.strip_suffix(&domain).and_then(|r| if r.is_empty() { Some("") } else { r.strip_suffix('.') })
    else {
        return Answer::NxDomain;
    };
    let labels: Vec<&str> = if rel.is_empty() { vec![] } else { rel.split('.').collect() };
    let n = labels.len();
    match labels.as_slice() {
        [] | ["svc"] | ["pod"] => Answer::NoData,
        [ns, "svc"] => {
            if cluster.namespace_exists(ns) {
                Answer::NoData
            } else {
                Answer::NxDomain
            }
        }
        [ip, _ns, "pod"] => match (pod_ip(ip), q) {
            (Some(ip), QType::A) => Answer::A(vec![ip]),
            (Some(_), _) => Answer::NoData,
            (None, _) => Answer::NxDomain,
        },
        _ if n >= 3 && labels[n - 1] == "svc" => service_answer(&labels[..n - 1], q, &domain, cluster),
        _ => Answer::NxDomain,
    }
}

fn service_answer(labels: &[&str], q: QType, domain: &str, cluster: &dyn Cluster) -> Answer {
    let n = labels.len();
    let (svc_name, ns) = (labels[n - 2], labels[n - 1]);
    let Some(svc) = cluster.service(ns, svc_name) else { return Answer::NxDomain };
    let spec = svc.spec.clone().unwrap_or_default();
    let fqdn = format!("{svc_name}.{ns}.svc.{domain}");
    match &labels[..n - 2] {
        [] => {
            if spec.type_.as_deref() == Some("ExternalName") {
                return match spec.external_name {
                    Some(ext) if q != QType::Srv => Answer::Cname(ext.trim_end_matches('.').to_string()),
                    _ => Answer::NoData,
                };
            }
            if q != QType::A {
                return Answer::NoData;
            }
            if is_headless(&svc) {
                let eps = endpoints(&cluster.slices(ns, svc_name));
                return if eps.is_empty() {
                    Answer::NoData
                } else {
                    Answer::A(eps.into_iter().map(|(ip, _)| ip).collect())
                };
            }
            match spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()) {
                Some(ip) => Answer::A(vec![ip]),
                None => Answer::NoData,
            }
        }
        [port, proto] if port.starts_with('_') && proto.starts_with('_') => {
            let (port, proto) = (&port[1..], &proto[1..]);
            let found = spec.ports.clone().unwrap_or_default().into_iter().find(|p| {
                p.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(port))
                    && p.protocol.as_deref().unwrap_or("TCP").eq_ignore_ascii_case(proto)
            });
            let Some(p) = found else { return Answer::NxDomain };
            if q != QType::Srv {
                return Answer::NoData;
            }
            if is_headless(&svc) {
                let eps = endpoints(&cluster.slices(ns, svc_name));
                let slices = cluster.slices(ns, svc_name);
                let target_port = slices
                    .iter()
                    .flat_map(|s| s.ports.clone().unwrap_or_default())
                    .find(|sp| sp.name.as_deref() == p.name.as_deref())
                    .and_then(|sp| sp.port)
                    .unwrap_or(p.port);
                let port = u16::try_from(target_port).unwrap_or(0);
                return Answer::Srv(
                    eps.into_iter()
                        .map(|(ip, host)| {
                            let h = host.unwrap_or_else(|| ip.to_string().replace('.', "-"));
                            (port, format!("{h}.{fqdn}"))
                        })
                        .collect(),
                );
            }
            Answer::Srv(vec![(u16::try_from(p.port).unwrap_or(0), fqdn)])
        }
        [host] if is_headless(&svc) => {
            let eps = endpoints(&cluster.slices(ns, svc_name));
            let hits: Vec<Ipv4Addr> = eps
                .iter()
                .filter(|(ip, h)| h.as_deref() == Some(*host) || ip.to_string().replace('.', "-") == *host)
                .map(|(ip, _)| *ip)
                .collect();
            match (hits.is_empty(), q) {
                (true, _) => Answer::NxDomain,
                (false, QType::A) => Answer::A(hits),
                (false, _) => Answer::NoData,
            }
        }
        _ => Answer::NxDomain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use std::collections::BTreeMap;

    struct Fake {
        services: BTreeMap<(String, String), Service>,
        slices: BTreeMap<(String, String), Vec<EndpointSlice>>,
    }

    impl Cluster for Fake {
        fn service(&self, ns: &str, name: &str) -> Option<Service> {
            self.services.get(&(ns.into(), name.into())).cloned()
        }
        fn slices(&self, ns: &str, service: &str) -> Vec<EndpointSlice> {
            self.slices.get(&(ns.into(), service.into())).cloned().unwrap_or_default()
        }
        fn namespace_exists(&self, ns: &str) -> bool {
            self.services.keys().any(|(n, _)| n == ns)
        }
    }

    fn svc(spec: ServiceSpec) -> Service {
        Service { spec: Some(spec), ..Default::default() }
    }

    fn fake() -> Fake {
        let mut services = BTreeMap::new();
        services.insert(
            ("shop".into(), "web".into()),
            svc(ServiceSpec {
                cluster_ip: Some("10.96.0.50".into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        );
        services.insert(
            ("shop".into(), "db".into()),
            svc(ServiceSpec {
                cluster_ip: Some("None".into()),
                ports: Some(vec![ServicePort { name: Some("pg".into()), port: 5432, ..Default::default() }]),
                ..Default::default()
            }),
        );
        services.insert(
            ("shop".into(), "ext".into()),
            svc(ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some("example.test".into()),
                ..Default::default()
            }),
        );
        let ep = |ip: &str, host: Option<&str>, ready: bool| Endpoint {
            addresses: vec![ip.into()],
            hostname: host.map(str::to_string),
            conditions: Some(EndpointConditions { ready: Some(ready), ..Default::default() }),
            ..Default::default()
        };
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![
                ep("10.244.1.5", Some("db-0"), true),
                ep("10.244.2.6", Some("db-1"), true),
                ep("10.244.2.9", None, false),
            ],
            ports: Some(vec![EndpointPort { name: Some("pg".into()), port: Some(5432), ..Default::default() }]),
            ..Default::default()
        };
        Fake { services, slices: [(("shop".to_string(), "db".to_string()), vec![slice])].into() }
    }

    #[test]
    fn cluster_ip_services_answer_their_ip() {
        let f = fake();
        assert_eq!(
            answer("web.shop.svc.cluster.local.", QType::A, "cluster.local", &f),
            Answer::A(vec![Ipv4Addr::new(10, 96, 0, 50)])
        );
        assert_eq!(
            answer("WEB.Shop.svc.cluster.local", QType::A, "cluster.local", &f),
            Answer::A(vec![Ipv4Addr::new(10, 96, 0, 50)])
        );
        assert_eq!(answer("web.shop.svc.cluster.local", QType::Other, "cluster.local", &f), Answer::NoData);
    }

    #[test]
    fn headless_services_answer_their_ready_endpoints_and_hostnames() {
        let f = fake();
        assert_eq!(
            answer("db.shop.svc.cluster.local", QType::A, "cluster.local", &f),
            Answer::A(vec![Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 6)])
        );
        assert_eq!(
            answer("db-1.db.shop.svc.cluster.local", QType::A, "cluster.local", &f),
            Answer::A(vec![Ipv4Addr::new(10, 244, 2, 6)])
        );
        assert_eq!(answer("db-9.db.shop.svc.cluster.local", QType::A, "cluster.local", &f), Answer::NxDomain);
    }

    #[test]
    fn named_ports_have_srv_records() {
        let f = fake();
        assert_eq!(
            answer("_http._tcp.web.shop.svc.cluster.local", QType::Srv, "cluster.local", &f),
            Answer::Srv(vec![(80, "web.shop.svc.cluster.local".into())])
        );
        assert_eq!(
            answer("_pg._tcp.db.shop.svc.cluster.local", QType::Srv, "cluster.local", &f),
            Answer::Srv(vec![
                (5432, "db-0.db.shop.svc.cluster.local".into()),
                (5432, "db-1.db.shop.svc.cluster.local".into())
            ])
        );
        assert_eq!(answer("_nope._tcp.web.shop.svc.cluster.local", QType::Srv, "cluster.local", &f), Answer::NxDomain);
    }

    #[test]
    fn external_names_are_cnames_and_pods_are_named_by_address() {
        let f = fake();
        assert_eq!(
            answer("ext.shop.svc.cluster.local", QType::A, "cluster.local", &f),
            Answer::Cname("example.test".into())
        );
        assert_eq!(
            answer("10-244-1-5.shop.pod.cluster.local", QType::A, "cluster.local", &f),
            Answer::A(vec![Ipv4Addr::new(10, 244, 1, 5)])
        );
        assert_eq!(answer("10-244-1.shop.pod.cluster.local", QType::A, "cluster.local", &f), Answer::NxDomain);
    }

    #[test]
    fn everything_else_is_nxdomain_or_nodata() {
        let f = fake();
        assert_eq!(answer("example.com", QType::A, "cluster.local", &f), Answer::NxDomain);
        assert_eq!(answer("missing.shop.svc.cluster.local", QType::A, "cluster.local", &f), Answer::NxDomain);
        assert_eq!(answer("shop.svc.cluster.local", QType::A, "cluster.local", &f), Answer::NoData);
        assert_eq!(answer("nons.svc.cluster.local", QType::A, "cluster.local", &f), Answer::NxDomain);
        assert_eq!(answer("web.shop.svc.cluster.local.example.com", QType::A, "cluster.local", &f), Answer::NxDomain);
    }

    #[test]
    fn the_cluster_domain_is_answered_here_and_the_rest_forwarded() {
        assert!(in_domain("web.default.svc.cluster.local.", "cluster.local"));
        assert!(in_domain("Cluster.Local", "cluster.local."));
        assert!(!in_domain("db-01.example.com.", "cluster.local"));
        assert!(!in_domain("notcluster.local.", "cluster.local"), "a suffix is not the domain");
    }
}

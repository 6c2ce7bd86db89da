//! Cluster DNS served by every agent with hickory-server: UDP and TCP on the node IP and on the cluster DNS address
//! (10.96.0.10, on a dummy interface of the node's namespace), answers from watched Services and EndpointSlices
//! ([`records`]); the agent publishes its own endpoint as EndpointSlice `kube-system/kube-dns-<node>` so the
//! service load balancer can send pods' DNS traffic to their node's server.

pub mod records;
pub mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::metrics::Metrics;
use records::{Answer, QType};

/// Seconds answers may be cached.
const TTL: u32 = 5;

/// The watched objects DNS answers from.
#[derive(Clone)]
pub struct View {
    /// Services.
    pub services: Store<Service>,
    /// EndpointSlices.
    pub slices: Store<EndpointSlice>,
}

impl records::Cluster for View {
    fn service(&self, ns: &str, name: &str) -> Option<Service> {
        self.services.get(&ObjectRef::new(name).within(ns)).map(|s| (*s).clone())
    }
    fn slices(&self, ns: &str, service: &str) -> Vec<EndpointSlice> {
        self.slices
            .state()
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")).map(String::as_str)
                        == Some(service)
            })
            .map(|s| (**s).clone())
            .collect()
    }
    fn namespace_exists(&self, ns: &str) -> bool {
        self.services.state().iter().any(|s| s.metadata.namespace.as_deref() == Some(ns))
    }
}

struct Handler {
    view: View,
    domain: String,
    metrics: Metrics,
    upstream: Option<std::sync::Arc<upstream::Upstream>>,
    /// The clients recursion is for (the node's pod range and addresses; loopback always).
    local: Vec<ipnet::IpNet>,
}

impl Handler {
    /// The records a CNAME's target has for `t`, so the answer is complete as CoreDNS makes it: from the cluster
    /// when the target is in the cluster domain, from the upstream otherwise.
    async fn chase(&self, target: &Name, t: RecordType) -> Vec<Record> {
        let text = target.to_ascii();
        if records::in_domain(&text, &self.domain) {
            return match records::answer(&text, qtype(t), &self.domain, &self.view) {
                Answer::A(ips) => {
                    ips.into_iter().map(|ip| Record::from_rdata(target.clone(), TTL, RData::A(A(ip)))).collect()
                }
                _ => Vec::new(),
            };
        }
        match &self.upstream {
            Some(up) => match up.resolve(target, t).await {
                upstream::Forwarded::Records(rs) => rs,
                _ => Vec::new(),
            },
            None => Vec::new(),
        }
    }
}

fn qtype(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::SRV => QType::Srv,
        RecordType::CNAME => QType::Cname,
        _ => QType::Other,
    }
}

fn fqdn(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).ok()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = self.upstream.is_some();
        let mut answers: Vec<Record> = Vec::new();
        match request.request_info() {
            Err(_) => meta.response_code = ResponseCode::FormErr,
            Ok(info)
                if !records::in_domain(&info.query.name().to_string(), &self.domain) && self.upstream.is_some() =>
            {
                // a name outside the cluster: the node's resolvers answer it (not authoritatively), for local
                // clients only, and never ANY, zone transfers or other classes
                meta.authoritative = false;
                meta.recursion_available = true;
                let qname = info.query.original().name().clone();
                let allowed = upstream::may_recurse(request.src().ip(), &self.local)
                    && upstream::forwardable(info.query.query_type())
                    && info.query.query_class() == hickory_proto::rr::DNSClass::IN;
                if !allowed {
                    meta.response_code = ResponseCode::Refused;
                } else if let Some(up) = &self.upstream {
                    match up.resolve(&qname, info.query.query_type()).await {
                        upstream::Forwarded::Records(rs) => answers.extend(rs),
                        upstream::Forwarded::NoData => {}
                        upstream::Forwarded::NxDomain => meta.response_code = ResponseCode::NXDomain,
                        upstream::Forwarded::Failed => meta.response_code = ResponseCode::ServFail,
                    }
                }
            }
            Ok(info) => {
                let name = info.query.name().to_string();
                let qname = info.query.original().name().clone();
                match records::answer(&name, qtype(info.query.query_type()), &self.domain, &self.view) {
                    Answer::A(ips) => answers
                        .extend(ips.into_iter().map(|ip| Record::from_rdata(qname.clone(), TTL, RData::A(A(ip))))),
                    Answer::Cname(target) => {
                        if let Some(t) = fqdn(&target) {
                            answers.push(Record::from_rdata(qname.clone(), TTL, RData::CNAME(CNAME(t.clone()))));
                            // an ExternalName Service: its target's addresses in the same answer
                            let local = upstream::may_recurse(request.src().ip(), &self.local);
                            if info.query.query_type() != RecordType::CNAME && local {
                                answers.extend(self.chase(&t, info.query.query_type()).await);
                            }
                        }
                    }
                    Answer::Srv(list) => {
                        let weight = u16::try_from(100 / list.len().max(1)).unwrap_or(100);
                        for (port, target) in list {
                            if let Some(t) = fqdn(&target) {
                                answers.push(Record::from_rdata(
                                    qname.clone(),
                                    TTL,
                                    RData::SRV(SRV::new(0, weight, port, t)),
                                ));
                            }
                        }
                    }
                    Answer::NoData => {}
                    Answer::NxDomain => meta.response_code = ResponseCode::NXDomain,
                }
            }
        }
        self.metrics.dns(&meta.response_code.to_string());
        let builder = MessageResponseBuilder::new(&request.queries, None);
        let response = builder.build(meta, answers.iter(), [], [], []);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS answer failed");
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header { metadata: m, counts: HeaderCounts::default() })
            }
        }
    }
}

/// Serves DNS on port 53 of every address in `addrs` until the task is dropped.
pub async fn serve(
    addrs: Vec<IpAddr>,
    port: u16,
    view: View,
    domain: String,
    metrics: Metrics,
    upstream: Option<std::sync::Arc<upstream::Upstream>>,
    local: Vec<ipnet::IpNet>,
) -> Result<tokio::task::JoinHandle<()>, crate::AgentError> {
    let mut server = hickory_server::Server::new(Handler { view, domain, metrics, upstream, local });
    for ip in addrs {
        let addr = SocketAddr::new(ip, port);
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|e| crate::AgentError::Serve { what: "cluster DNS (UDP)", message: format!("{addr}: {e}") })?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| crate::AgentError::Serve { what: "cluster DNS (TCP)", message: format!("{addr}: {e}") })?;
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 65_535);
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            tracing::error!(error = %e, "cluster DNS stopped");
        }
    }))
}

/// The EndpointSlice that names this node's DNS server for Service kube-system/kube-dns.
pub fn endpoint_slice(node: &str, ip: Ipv4Addr) -> EndpointSlice {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    EndpointSlice {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("kube-dns-{node}")),
            namespace: Some("kube-system".into()),
            labels: Some(
                [
                    ("kubernetes.io/service-name".to_string(), "kube-dns".to_string()),
                    ("endpointslice.kubernetes.io/managed-by".to_string(), "skiff-agent".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![ip.to_string()],
            node_name: Some(node.into()),
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Default::default()
        }],
        ports: Some(vec![
            EndpointPort {
                name: Some("dns".into()),
                port: Some(53),
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            EndpointPort {
                name: Some("dns-tcp".into()),
                port: Some(53),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
    }
}

/// Keeps this node's kube-dns EndpointSlice in place (re-asserted every minute).
pub async fn publish(client: kube::Client, node: String, ip: Ipv4Addr) {
    let api: kube::Api<EndpointSlice> = kube::Api::namespaced(client, "kube-system");
    let slice = endpoint_slice(&node, ip);
    let name = slice.metadata.name.clone().unwrap_or_default();
    loop {
        let pp = kube::api::PatchParams::apply("skiff-agent").force();
        if let Err(e) = api.patch(&name, &pp, &kube::api::Patch::Apply(&slice)).await {
            tracing::debug!(error = %e, "publishing the kube-dns endpoint failed; will retry");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_slice_names_the_node_and_both_protocols() {
        let s = endpoint_slice("n1", Ipv4Addr::new(10, 0, 0, 11));
        assert_eq!(s.metadata.name.as_deref(), Some("kube-dns-n1"));
        assert_eq!(s.endpoints[0].node_name.as_deref(), Some("n1"));
        assert_eq!(s.ports.as_ref().map(Vec::len), Some(2));
    }
}

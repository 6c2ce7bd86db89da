//! `pods/{name}/log`, `exec`, `attach` and `portforward`: the API server finds the pod's node and proxies the request
//! (including the WebSocket upgrade of exec) to that node's agent, as kube-apiserver does to the kubelet.
//!
//! The agent serves kubelet-style paths (`/containerLogs/{ns}/{pod}/{container}`, `/exec/{ns}/{pod}/{container}`)
//! over HTTPS and accepts the API server by its client certificate (signed by the cluster CA).
//!
//! # Caveats
//! Like kube-apiserver without `--kubelet-certificate-authority`, the agent's serving certificate is not verified.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::Api;
use super::error::{ApiError, ApiResult};
use super::request::Query;
use skiff_api::registry::ResourceInfo;

/// A rustls client verifier that accepts any server certificate (see the module's caveats).
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration the API server uses towards agents: its own client certificate.
pub fn agent_client_config(cert_pem: &str, key_pem: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn node_endpoint(node: &Value) -> Option<(String, u16)> {
    let ip = node
        .pointer("/status/addresses")?
        .as_array()?
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))?
        .get("address")?
        .as_str()?
        .to_string();
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port")?.as_u64()?;
    Some((ip, u16::try_from(port).ok()?))
}

impl Api {
    /// Proxies a pod subresource to the pod's node agent.
    #[allow(clippy::too_many_arguments)]
    pub async fn node_proxy(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        sub: &str,
        method: &Method,
        q: &Query,
        headers: &HeaderMap,
        body: Body,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> ApiResult<Response> {
        if !(info.group.is_empty() && info.plural == "pods") {
            return Err(ApiError::no_route(sub));
        }
        let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
        let pod = self.get(info, Some(ns), name).await?.object;
        let node_name = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?
            .to_string();
        if sub == "portforward" {
            // Ports travel in the stream headers; no container is named.
            return self
                .proxy_to_node(&node_name, method, &format!("/portForward/{ns}/{name}"), q, headers, body, upgrade)
                .await;
        }
        let containers: Vec<String> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string)).collect())
            .unwrap_or_default();
        let container = match q.get("container").filter(|c| !c.is_empty()) {
            Some(c) => c.to_string(),
            None if containers.len() == 1 => containers[0].clone(),
            None => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )));
            }
        };
        let all_containers = pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten())
            .any(|c| c.get("name").and_then(Value::as_str) == Some(container.as_str()));
        if !all_containers {
            return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
        }
        if sub == "log" {
            let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
            let started = pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .chain(pod.pointer("/status/initContainerStatuses").and_then(Value::as_array))
                .flatten()
                .any(|c| {
                    c.get("name").and_then(Value::as_str) == Some(container.as_str())
                        && (c.pointer("/state/waiting").is_none()
                            || c.get("lastState").is_some_and(|l| l.get("terminated").is_some()))
                });
            if phase == "Pending" && !started {
                return Err(ApiError::bad_request(format!(
                    "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
                )));
            }
        }
        let path = match sub {
            "log" => format!("/containerLogs/{ns}/{name}/{container}"),
            "exec" => format!("/exec/{ns}/{name}/{container}"),
            "attach" => format!("/attach/{ns}/{name}/{container}"),
            other => format!("/{other}/{ns}/{name}"),
        };
        self.proxy_to_node(&node_name, method, &path, q, headers, body, upgrade).await
    }

    /// Sends a request to the agent of `node_name` at `path` with the query (less `container`, which the path
    /// names).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn proxy_to_node(
        &self,
        node_name: &str,
        method: &Method,
        path: &str,
        q: &Query,
        headers: &HeaderMap,
        body: Body,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> ApiResult<Response> {
        let node = self.get(&self.builtin("", "nodes"), None, node_name).await?.object;
        let (ip, port) = node_endpoint(&node).ok_or_else(|| {
            ApiError::internal("proxying to the node", &format!("node {node_name} has no agent endpoint"))
        })?;
        let tls = self
            .agent_tls
            .clone()
            .ok_or_else(|| ApiError::internal("proxying to the node", &"no agent client credentials"))?;
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q.pairs().iter().filter(|(k, _)| k != "container"))
            .finish();
        let uri = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
        proxy_to(tls, &ip, port, method, &uri, headers, body, upgrade).await
    }
}

/// Sends one request to `ip:port` over TLS and streams the answer back; a 101 answer is spliced into the client's
/// upgraded connection.
#[allow(clippy::too_many_arguments)]
async fn proxy_to(
    tls: Arc<rustls::ClientConfig>,
    ip: &str,
    port: u16,
    method: &Method,
    uri: &str,
    headers: &HeaderMap,
    body: Body,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> ApiResult<Response> {
    let unreachable = |e: &dyn std::fmt::Display| ApiError::internal("connecting to the node agent", e);
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect((ip, port)))
        .await
        .map_err(|_| unreachable(&"timed out"))?
        .map_err(|e| unreachable(&e))?;
    // exec, attach and port-forward streams carry small writes both ways: no Nagle wait on them
    let _ = tcp.set_nodelay(true);
    let server_name = rustls::pki_types::ServerName::try_from(ip.to_string()).map_err(|e| unreachable(&e))?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp).await.map_err(|e| unreachable(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = Request::builder().method(method.clone()).uri(uri);
    for (k, v) in headers {
        if k == header::HOST || k == header::AUTHORIZATION || k == header::CONTENT_LENGTH && method == Method::GET {
            continue;
        }
        req = req.header(k, v);
    }
    let (body, client_upgrade) = match upgrade {
        Some(u) if headers.get(header::UPGRADE).is_some() => (Body::empty(), Some(u)),
        _ => (body, None),
    };
    let req = req.header(header::HOST, format!("{ip}:{port}")).body(body).map_err(|e| unreachable(&e))?;
    let mut resp = sender.send_request(req).await.map_err(|e| unreachable(&e))?;
    if let Some(client_side) = client_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let agent_side = hyper::upgrade::on(&mut resp);
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        tokio::spawn(async move {
            let (Ok(client), Ok(agent)) = (client_side.await, agent_side.await) else {
                tracing::debug!("an upgraded proxy connection failed to complete its upgrade");
                return;
            };
            let (mut c, mut a) = (TokioIo::new(client), TokioIo::new(agent));
            let _ = tokio::io::copy_bidirectional(&mut c, &mut a).await;
        });
        return out.body(Body::empty()).map_err(|e| unreachable(&e));
    }
    let (parts, incoming) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::new(incoming)))
}

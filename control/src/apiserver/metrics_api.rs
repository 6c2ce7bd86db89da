//! The resource metrics API (`metrics.k8s.io/v1beta1`, what `kubectl top` and the HPA read), aggregated from the
//! node agents: each Ready node's agent reports its node and pod usage; the API server merges, filters by
//! namespace, name and label selector, and answers as metrics-server would.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};

use super::Api;
use super::error::{ApiError, ApiResult};
use super::handlers::json_response;
use super::request::{Query, ResourcePath};
use skiff_api::selector::Selector;

fn endpoint(node: &Value) -> Option<(String, u16)> {
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

fn ready(node: &Value) -> bool {
    node.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True")))
    })
}

impl Api {
    /// Fetches one JSON document from a node agent.
    async fn agent_get(&self, ip: &str, port: u16, path: &str) -> Result<Value, String> {
        let tls = self.agent_tls.clone().ok_or("no agent credentials")?;
        let tcp = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect((ip, port)))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(ip.to_string()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, format!("{ip}:{port}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("agent answered {}", resp.status()));
        }
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    /// Serves `metrics.k8s.io/v1beta1` requests.
    pub async fn resource_metrics(self: &Arc<Self>, rp: &ResourcePath, q: &Query) -> ApiResult<Response> {
        let nodes = self.list_all(&self.builtin("", "nodes"), None, Selector::everything()).await?;
        let labels = Selector::parse(q.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let targets: Vec<(String, String, u16)> = nodes
            .iter()
            .filter(|n| ready(n))
            .filter_map(|n| endpoint(n).map(|(ip, port)| (skiff_api::meta::name(n).to_string(), ip, port)))
            .collect();
        match rp.plural.as_str() {
            "nodes" => {
                let wanted = rp.name.clone();
                let results: Vec<Value> = futures::stream::iter(
                    targets.into_iter().filter(|(n, _, _)| wanted.as_ref().is_none_or(|w| w == n)),
                )
                .map(|(n, ip, port)| async move {
                    self.agent_get(&ip, port, &format!("/apis/metrics.k8s.io/v1beta1/nodes/{n}")).await.ok()
                })
                .buffer_unordered(16)
                .filter_map(|x| async move { x })
                .collect()
                .await;
                let items: Vec<Value> = results
                    .into_iter()
                    .filter(|m| {
                        labels.is_empty()
                            || nodes.iter().any(|n| {
                                skiff_api::meta::name(n) == skiff_api::meta::name(m) && labels.matches_object(n)
                            })
                    })
                    .map(|mut m| {
                        m["kind"] = json!("NodeMetrics");
                        m["apiVersion"] = json!("metrics.k8s.io/v1beta1");
                        m
                    })
                    .collect();
                match rp.name.as_deref() {
                    Some(n) => items.into_iter().next().map(|m| json_response(StatusCode::OK, &m)).ok_or_else(|| {
                        ApiError::not_found(
                            &self.resource("metrics.k8s.io", "v1beta1", "nodes").expect("registered"),
                            n,
                        )
                    }),
                    None => Ok(json_response(
                        StatusCode::OK,
                        &json!({"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items}),
                    )),
                }
            }
            "pods" => {
                let lists: Vec<Value> = futures::stream::iter(targets)
                    .map(|(_, ip, port)| async move {
                        self.agent_get(&ip, port, "/apis/metrics.k8s.io/v1beta1/pods").await.ok()
                    })
                    .buffer_unordered(16)
                    .filter_map(|x| async move { x })
                    .collect()
                    .await;
                let pods_info = self.builtin("", "pods");
                let pods = self.list_all(&pods_info, rp.namespace.as_deref(), labels.clone()).await?;
                let items: Vec<Value> = lists
                    .iter()
                    .flat_map(|l| l.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
                    .filter(|m| rp.namespace.as_deref().is_none_or(|ns| skiff_api::meta::namespace(m) == ns))
                    .filter(|m| rp.name.as_deref().is_none_or(|n| skiff_api::meta::name(m) == n))
                    .filter(|m| {
                        pods.iter().any(|p| {
                            skiff_api::meta::name(p) == skiff_api::meta::name(m)
                                && skiff_api::meta::namespace(p) == skiff_api::meta::namespace(m)
                        })
                    })
                    .map(|mut m| {
                        m["kind"] = json!("PodMetrics");
                        m["apiVersion"] = json!("metrics.k8s.io/v1beta1");
                        m
                    })
                    .collect();
                match rp.name.as_deref() {
                    Some(n) => items.into_iter().next().map(|m| json_response(StatusCode::OK, &m)).ok_or_else(|| {
                        ApiError::not_found(&self.resource("metrics.k8s.io", "v1beta1", "pods").expect("registered"), n)
                    }),
                    None => Ok(json_response(
                        StatusCode::OK,
                        &json!({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items}),
                    )),
                }
            }
            _ => Err(ApiError::no_route(&rp.plural)),
        }
    }
}

//! The kubelet-style HTTPS endpoint (client certificates signed by the cluster CA required, each caller authorized
//! by [`authz`]): container logs,
//! exec, attach, port-forward, `/healthz`, Prometheus `/metrics`, and `metrics.k8s.io` resource metrics; plus `/metrics` and `/healthz`
//! over plain HTTP on the metrics address for Prometheus.

pub mod attach;
pub mod authz;
pub mod exec;
pub mod logs;
pub mod portforward;
pub mod spdy;
pub mod stats;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt as _;

use crate::metrics::Metrics;
use crate::pods::Views;
use crate::runtime::Runtime;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct Shared {
    /// Pods and their containers.
    pub views: Views,
    /// Runtime (exec).
    pub runtime: Arc<dyn Runtime>,
    /// Metrics.
    pub metrics: Metrics,
    /// Resource metrics.
    pub stats: stats::Stats,
    /// This node.
    pub node: String,
    /// Scratch space (console sockets).
    pub scratch: std::path::PathBuf,
    /// The API client that asks the API server about callers (SubjectAccessReview); `None` refuses every caller
    /// outside `system:masters`.
    pub client: Option<kube::Client>,
    /// NetworkPolicy enforcement, for its recent verdicts.
    pub policy: Option<Arc<dyn crate::dataplane::PodPolicy>>,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg.into()).into_response()
}

fn pairs(q: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect()
}

fn find(s: &Shared, ns: &str, pod: &str, container: &str) -> Result<crate::pods::ContainerView, Response> {
    let views = s.views.read().map_err(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "state unavailable"))?;
    let p = views
        .get(&(ns.to_string(), pod.to_string()))
        .ok_or_else(|| text(StatusCode::NOT_FOUND, format!("pod {ns}/{pod} not found on this node")))?;
    p.containers
        .get(container)
        .cloned()
        .ok_or_else(|| text(StatusCode::NOT_FOUND, format!("container {container:?} not found in pod {ns}/{pod}")))
}

async fn container_logs(
    State(s): State<Shared>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let opts = match logs::Options::from_query(&pairs(q), jiff::Timestamp::now()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let view = match find(&s, &ns, &pod, &container) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let path = if opts.previous {
        match view.previous_log {
            Some(p) => p,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("previous terminated container {container:?} in pod {pod:?} not found"),
                );
            }
        }
    } else {
        match view.log {
            Some(p) => p,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"),
                );
            }
        }
    };
    let initial = {
        let path = path.clone();
        let o = opts.clone();
        tokio::task::spawn_blocking(move || {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            (logs::limit(logs::render(&logs::select(logs::read_all(&path), &o), &o), &o), size)
        })
        .await
    };
    let Ok((body, offset)) = initial else { return text(StatusCode::INTERNAL_SERVER_ERROR, "reading the log failed") };
    let plain = [(header::CONTENT_TYPE, "text/plain")];
    if !opts.follow || opts.previous || opts.limit_bytes.is_some_and(|n| body.len() >= n) {
        return (StatusCode::OK, plain, body).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let sent = body.len();
    if !body.is_empty() {
        let _ = tx.send(Ok(bytes::Bytes::from(body))).await;
    }
    let views = s.views.clone();
    let running = move || {
        views
            .read()
            .ok()
            .and_then(|v| {
                v.get(&(ns.clone(), pod.clone())).and_then(|p| p.containers.get(&container).map(|c| c.running))
            })
            .unwrap_or(false)
    };
    let mut follow_opts = opts.clone();
    follow_opts.limit_bytes = opts.limit_bytes.map(|n| n.saturating_sub(sent));
    tokio::spawn(logs::follow(path, offset, follow_opts, tx, running, Duration::from_secs(24 * 3600)));
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (StatusCode::OK, plain, Body::from_stream(stream)).into_response()
}

/// What exec and attach check before upgrading: the streams asked for, the container (running), the WebSocket
/// with its channel protocol (v5 or v4). The error is the answer to send, as [`find`]'s.
#[allow(clippy::result_large_err)] // a Response, returned once per request
fn stream_request(
    s: &Shared,
    (ns, pod, container): (&str, &str, &str),
    opts: Result<exec::ExecOptions, String>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    what: &str,
) -> Result<(exec::ExecOptions, crate::pods::ContainerView, WebSocketUpgrade, bool), Response> {
    let opts = opts.map_err(|e| text(StatusCode::BAD_REQUEST, e))?;
    let view = find(s, ns, pod, container)?;
    if !view.running {
        return Err(text(StatusCode::BAD_REQUEST, format!("container {container} is not running")));
    }
    let ws =
        ws.map_err(|_| text(StatusCode::BAD_REQUEST, format!("{what} needs a WebSocket upgrade (v5.channel.k8s.io)")))?;
    let ws = ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"]);
    let v5 = ws.selected_protocol().and_then(|p| p.to_str().ok()) == Some("v5.channel.k8s.io");
    Ok((opts, view, ws, v5))
}

async fn exec_handler(
    State(s): State<Shared>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let opts = exec::ExecOptions::from_query(&pairs(q));
    let (opts, view, ws, v5) = match stream_request(&s, (&ns, &pod, &container), opts, ws, "exec") {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(id) = view.id else {
        return text(StatusCode::BAD_REQUEST, format!("container {container} is not running"));
    };
    let started = std::time::Instant::now();
    let metrics = s.metrics.clone();
    ws.on_upgrade(move |socket| async move {
        exec::session(socket, s.runtime.clone(), id, opts, s.scratch.clone(), v5).await;
        metrics.operation("exec", started.elapsed().as_secs_f64());
    })
}

async fn attach_handler(
    State(s): State<Shared>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let opts = exec::ExecOptions::streams_from_query(&pairs(q));
    let (opts, view, ws, v5) = match stream_request(&s, (&ns, &pod, &container), opts, ws, "attach") {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(bundle) = view.bundle else {
        return text(StatusCode::BAD_REQUEST, format!("container {container} is not running"));
    };
    let started = std::time::Instant::now();
    let metrics = s.metrics.clone();
    ws.on_upgrade(move |socket| async move {
        attach::session(socket, bundle, opts, v5).await;
        metrics.operation("attach", started.elapsed().as_secs_f64());
    })
}

async fn portforward_handler(
    State(s): State<Shared>,
    Path((ns, pod)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    let target = {
        let Ok(views) = s.views.read() else { return text(StatusCode::INTERNAL_SERVER_ERROR, "state unavailable") };
        let Some(view) = views.get(&(ns.clone(), pod.clone())) else {
            return text(StatusCode::NOT_FOUND, format!("pod {ns}/{pod} not found on this node"));
        };
        if view.netns.is_none() && !view.host_network {
            return text(StatusCode::BAD_REQUEST, format!("pod {ns}/{pod} has no network yet"));
        }
        portforward::Target { pod: format!("{ns}/{pod}"), uid: view.uid.clone(), netns: view.netns.clone() }
    };
    let started = std::time::Instant::now();
    let metrics = s.metrics.clone();
    let (mut parts, _body) = req.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if upgrade == "websocket" {
        use axum::extract::FromRequestParts as _;
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws.protocols([portforward::WEBSOCKET_PROTOCOL]),
            Err(e) => return text(StatusCode::BAD_REQUEST, e.body_text()),
        };
        if ws.selected_protocol().is_none() {
            return text(
                StatusCode::BAD_REQUEST,
                format!("port-forward over WebSocket needs the {} subprotocol", portforward::WEBSOCKET_PROTOCOL),
            );
        }
        return ws.on_upgrade(move |socket| async move {
            portforward::session(portforward::websocket_bytes(socket), target, portforward::IDLE_TIMEOUT).await;
            metrics.operation("port_forward", started.elapsed().as_secs_f64());
        });
    }
    if !upgrade.starts_with("spdy/3.1") {
        return text(StatusCode::BAD_REQUEST, "port-forward needs an upgrade to SPDY/3.1 or WebSocket");
    }
    let offered = parts
        .headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == portforward::SPDY_PROTOCOL);
    if !offered {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: the client must offer {}",
                portforward::SPDY_PROTOCOL
            ),
        );
    }
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "this connection cannot be upgraded");
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => portforward::session(TokioIo::new(io), target, portforward::IDLE_TIMEOUT).await,
            Err(e) => tracing::debug!(error = %e, "port-forward: the SPDY upgrade did not complete"),
        }
        metrics.operation("port_forward", started.elapsed().as_secs_f64());
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", portforward::SPDY_PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "building the answer failed"))
}

async fn metrics_handler(State(s): State<Shared>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, skiff_client::metrics::CONTENT_TYPE)], s.metrics.encode()).into_response()
}

/// Recent NetworkPolicy verdicts of this node, one per line, oldest first (`nodes/proxy`).
async fn policy_verdicts(State(s): State<Shared>) -> Response {
    match &s.policy {
        Some(p) => {
            let mut body = p.recent_verdicts().join("\n");
            body.push('\n');
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "network policy is not enforced on this node (the eBPF dataplane is off)\n")
            .into_response(),
    }
}

async fn pod_metrics(State(s): State<Shared>) -> Response {
    axum::Json(s.stats.pod_metrics()).into_response()
}

async fn node_metrics(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    if name != s.node {
        return text(StatusCode::NOT_FOUND, format!("node {name} is not this node ({})", s.node));
    }
    axum::Json(s.stats.node_metrics()).into_response()
}

/// The HTTPS router.
pub fn router(s: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_handler))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec_handler).post(exec_handler))
        .route("/attach/{ns}/{pod}/{container}", get(attach_handler).post(attach_handler))
        .route("/portForward/{ns}/{pod}", get(portforward_handler).post(portforward_handler))
        .route("/policy/verdicts", get(policy_verdicts))
        .route("/apis/metrics.k8s.io/v1beta1/pods", get(pod_metrics))
        .route("/apis/metrics.k8s.io/v1beta1/nodes/{name}", get(node_metrics))
        .layer(axum::middleware::from_fn_with_state(s.clone(), authz::authorize))
        .with_state(s)
}

/// The plain-HTTP metrics router.
pub fn metrics_router(s: Shared) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/metrics", get(metrics_handler)).with_state(s)
}

/// Serves `app` over TLS on `listener` until the task is dropped.
pub async fn serve_tls(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, app: Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // as the API server does: logs, exec, attach and port-forward answer with small writes
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::debug!(%peer, "TLS handshake failed (a client certificate signed by the cluster CA is required)");
                    return;
                }
            };
            let caller =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| authz::caller_of(c));
            let svc = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                if let Some(c) = &caller {
                    req.extensions_mut().insert(c.clone());
                }
                app.clone().oneshot(req.map(Body::new))
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Serves `app` over plain HTTP.
pub async fn serve_plain(listener: tokio::net::TcpListener, app: Router) {
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}

/// Binds both endpoints and spawns them.
pub async fn start(
    s: Shared,
    kubelet: SocketAddr,
    metrics: Option<SocketAddr>,
    tls: rustls::ServerConfig,
) -> Result<Vec<tokio::task::JoinHandle<()>>, crate::AgentError> {
    let l = tokio::net::TcpListener::bind(kubelet)
        .await
        .map_err(|e| crate::AgentError::Serve { what: "the kubelet endpoint", message: format!("{kubelet}: {e}") })?;
    let mut tasks = vec![tokio::spawn(serve_tls(l, Arc::new(tls), router(s.clone())))];
    if let Some(m) = metrics {
        let l = tokio::net::TcpListener::bind(m)
            .await
            .map_err(|e| crate::AgentError::Serve { what: "the metrics endpoint", message: format!("{m}: {e}") })?;
        tasks.push(tokio::spawn(serve_plain(l, metrics_router(s))));
    }
    Ok(tasks)
}

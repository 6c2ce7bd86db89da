//! The HTTP routes: who-am-i (any path), health and readiness switches, CPU burn, exit, WebSocket echo, gRPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State as Ext};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

use crate::state::{State, parse_duration};

type Shared = Arc<State>;
type Params = Query<BTreeMap<String, String>>;

/// The router.
pub fn app(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz).post(set_healthz))
        .route("/readyz", get(readyz).post(set_readyz))
        .route("/burn", any(burn))
        .route("/exit", any(exit))
        .route("/ws", get(ws))
        .route("/kube", get(crate::kube_api::call))
        .route("/grpc.health.v1.Health/Check", post(crate::grpc::check))
        .route("/grpc.health.v1.Health/Watch", post(crate::grpc::watch))
        .fallback(echo)
        .with_state(state)
}

fn log(method: &Method, uri: &Uri, peer: SocketAddr, status: u16) {
    println!("{method} {uri} from {peer} -> {status}");
}

fn plain(status: StatusCode, text: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{text}\n")).into_response()
}

async fn echo(
    Ext(state): Ext<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    if let Some(d) = q.get("delay").and_then(|d| parse_duration(d)) {
        tokio::time::sleep(d.min(Duration::from_secs(300))).await;
    }
    let status = q.get("status").and_then(|s| s.parse::<u16>().ok()).and_then(|s| StatusCode::from_u16(s).ok());
    let status = status.unwrap_or(StatusCode::OK);
    let hdrs: BTreeMap<String, String> =
        headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let body = json!({
        "pod": state.pod, "namespace": state.namespace, "ip": state.ip, "node": state.node,
        "version": state.version, "hostname": state.hostname,
        "method": method.as_str(), "path": uri.path(), "query": uri.query().unwrap_or_default(),
        "headers": hdrs, "peer": peer.to_string(),
    });
    log(&method, &uri, peer, status.as_u16());
    let mut text = body.to_string();
    text.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

async fn healthz(Ext(state): Ext<Shared>) -> Response {
    if state.healthy() { plain(StatusCode::OK, "ok") } else { plain(StatusCode::INTERNAL_SERVER_ERROR, "unhealthy") }
}

async fn readyz(Ext(state): Ext<Shared>) -> Response {
    if state.ready() { plain(StatusCode::OK, "ready") } else { plain(StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}

fn flag(q: &BTreeMap<String, String>, key: &str) -> Option<bool> {
    match q.get(key).map(String::as_str) {
        Some("true" | "1" | "yes") => Some(true),
        Some("false" | "0" | "no") => Some(false),
        _ => None,
    }
}

async fn set_healthz(Ext(state): Ext<Shared>, Query(q): Params) -> Response {
    match flag(&q, "healthy") {
        Some(v) => {
            state.set_healthy(v);
            println!("healthz set to {v}");
            plain(StatusCode::OK, &format!("healthy={v}"))
        }
        None => plain(StatusCode::BAD_REQUEST, "give ?healthy=true|false"),
    }
}

async fn set_readyz(Ext(state): Ext<Shared>, Query(q): Params) -> Response {
    match flag(&q, "ready") {
        Some(v) => {
            state.set_ready(v);
            println!("readyz set to {v}");
            plain(StatusCode::OK, &format!("ready={v}"))
        }
        None => plain(StatusCode::BAD_REQUEST, "give ?ready=true|false"),
    }
}

/// Burns one core for `ms` milliseconds (at most a minute) on a blocking thread.
async fn burn(Query(q): Params) -> Response {
    let ms: u64 = q.get("ms").and_then(|m| m.parse().ok()).unwrap_or(100).min(60_000);
    let spun = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rounds: u64 = 0;
        while start.elapsed() < Duration::from_millis(ms) {
            for _ in 0..10_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            rounds += 1;
        }
        std::hint::black_box(x);
        rounds
    })
    .await
    .unwrap_or(0);
    plain(StatusCode::OK, &format!("burned {ms}ms ({spun} rounds)"))
}

async fn exit(Query(q): Params) -> Response {
    let code: i32 = q.get("code").and_then(|c| c.parse().ok()).unwrap_or(1);
    println!("exiting with code {code} as asked");
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::process::exit(code);
    });
    plain(StatusCode::OK, &format!("exiting with {code}"))
}

async fn ws(upgrade: WebSocketUpgrade, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    println!("websocket from {peer}");
    upgrade.on_upgrade(echo_socket)
}

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            Message::Ping(p) => Message::Pong(p),
            Message::Pong(_) => continue,
            Message::Close(_) => break,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

//! `skiff-echo`: the server inside the built-in `skiff/echo` image.
//!
//! One port (`PORT`, default 8080) speaks HTTP/1.1, h2c and WebSocket:
//! - any path: a JSON answer naming the pod (`POD_NAME`, `POD_NAMESPACE`, `POD_IP`, `NODE_NAME`), the version
//!   (`ECHO_VERSION`), the host name and the request (method, path, query, headers, peer); `?status=503` picks the
//!   status and `?delay=250ms` waits first;
//! - `/healthz`, `/readyz`: 200 or 500/503; `POST /healthz?healthy=false`, `POST /readyz?ready=false` flip them;
//! - `/burn?ms=500`: burns one core for that long (HPA demos); `/exit?code=3`: ends the process with that code;
//! - `/ws`: WebSocket echo;
//! - `/kube?path=/api/v1/…`: a GET on the Kubernetes API with kube-rs' in-cluster configuration (the pod's own
//!   service-account token), answered as `{"code": …, "body": …}`;
//! - `grpc.health.v1.Health/Check` and `/Watch` over h2c, SERVING while ready.
//!
//! Every request is logged as one line on stdout. SIGTERM makes it not ready and ends it after `ECHO_SHUTDOWN_DELAY`
//! (default 0s), serving every connection, old and new, until then.

mod grpc;
mod kube_api;
mod routes;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt as _;

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff-echo: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve()) {
        eprintln!("skiff-echo: {e}");
        std::process::exit(1);
    }
}

async fn serve() -> std::io::Result<()> {
    let state = Arc::new(state::State::from_env());
    if let Some(d) = state::duration_env("ECHO_STARTUP_DELAY") {
        println!("waiting {d:?} before listening (ECHO_STARTUP_DELAY)");
        tokio::time::sleep(d).await;
    }
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    println!("skiff-echo {} listening on :{port} as {}", state.version, state.hostname);
    let app = routes::app(state.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Until SIGTERM, and for ECHO_SHUTDOWN_DELAY after it (not ready, still accepting: what a well-behaved server
    // does while Services and ingresses take it out), every connection is served.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let stop = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = term.recv(), if deadline.is_none() => {
                let delay = state::duration_env("ECHO_SHUTDOWN_DELAY").unwrap_or_default();
                println!("SIGTERM: shutting down in {delay:?}");
                state.set_ready(false);
                deadline = Some(tokio::time::Instant::now() + delay);
                continue;
            }
            () = stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc).await;
        });
    }
    // Requests accepted in the last moment get to finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

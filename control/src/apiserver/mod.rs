//! The Kubernetes-compatible API server.
//!
//! [`Api`] holds the store, the resource registry and the credentials; [`router`] builds the axum application
//! (so tests can drive it with `oneshot`); [`serve::serve`] runs it over HTTPS.

pub mod admission;
pub mod alloc;
pub mod apply;
pub mod auth;
pub mod authz;
pub mod cas;
pub mod columns;
pub mod conversion;
pub mod crd;
pub mod csr;
pub mod decoded;
pub mod discovery;
pub mod error;
pub mod fields;
pub mod handlers;
pub mod indexes;
pub mod limits;
pub mod managed;
pub mod metrics;
pub mod metrics_api;
pub mod noderestriction;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod podsecurity;
pub mod proxy;
pub mod read_deadline;
pub mod request;
pub mod reviews;
pub mod serve;
pub mod serviceaccount;
pub mod strategy;
pub mod subresources;
pub mod table;
pub mod token_cache;
pub mod watch;
pub mod writes;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::storage::Storage;
use auth::{PeerIdentity, User};
use error::ApiError;
use request::Query;
use skiff_api::registry::Registry;

/// Static settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The address clients reach the server at (`host:port`), reported in legacy discovery.
    pub advertise_address: String,
    /// Request body limit in bytes (413 above it).
    pub max_body: usize,
    /// Connection, time and in-flight limits.
    pub limits: limits::Limits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            advertise_address: "127.0.0.1:6443".into(),
            max_body: 3 * 1024 * 1024,
            limits: limits::Limits::default(),
        }
    }
}

/// Credentials the server accepts besides client certificates.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// The node join token.
    pub node_token: String,
    /// Key signing service-account tokens.
    pub sa_key: Vec<u8>,
    /// Extra static bearer tokens.
    pub static_tokens: HashMap<String, User>,
}

/// The API server's state.
pub struct Api {
    /// The datastore.
    pub store: Arc<dyn Storage>,
    /// Served resources (built-ins and custom resources).
    pub(crate) registry: RwLock<Registry>,
    /// Settings.
    pub config: ApiConfig,
    /// Credentials.
    pub auth: AuthConfig,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// TLS client configuration towards node agents (logs, exec).
    pub agent_tls: Option<Arc<rustls::ClientConfig>>,
    /// The authorizer's view of the RBAC objects.
    pub authz: authz::Authz,
    /// Requests in flight per user.
    pub inflight: Arc<limits::InFlight>,
    /// Service-account tokens verified in the last seconds.
    pub tokens: token_cache::TokenCache,
    /// Woken by every CertificateSigningRequest write (the approver and signer wait on it).
    pub csr_changed: tokio::sync::Notify,
    /// Watch events decoded once for every watcher.
    pub decoded: decoded::Decoded,
    /// One storage watch per resource type, shared by every client watch of it.
    pub watch_cache: crate::storage::watch_cache::WatchCache,
    /// The revisions the custom resources in `registry` reflect (changed under the registry's lock).
    pub(crate) crd_revisions: crd::CrdRevisions,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Api {
    /// A server over `store` serving the built-in resources.
    pub fn new(
        store: Arc<dyn Storage>,
        config: ApiConfig,
        auth: AuthConfig,
        agent_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Arc<Self> {
        Arc::new(Api {
            watch_cache: crate::storage::watch_cache::WatchCache::new(store.clone()),
            store,
            registry: RwLock::new(Registry::with_builtins()),
            auth,
            metrics: metrics::Metrics::new(),
            agent_tls,
            authz: authz::Authz::default(),
            inflight: limits::InFlight::new(config.limits.clone()),
            tokens: token_cache::TokenCache::default(),
            csr_changed: tokio::sync::Notify::new(),
            crd_revisions: Default::default(),
            decoded: decoded::Decoded::default(),
            config,
        })
    }

    /// A snapshot of the registry.
    pub fn registry(&self) -> Registry {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Paths anyone may read, without credentials (what `system:public-info-viewer` grants).
fn public(path: &str) -> bool {
    matches!(path, "/version" | "/version/" | "/healthz" | "/livez" | "/readyz")
}

async fn authenticate(State(api): State<Arc<Api>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let user = match req.extensions().get::<PeerIdentity>() {
        Some(PeerIdentity(u)) => Some(u.clone()),
        None => {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .map(str::to_string);
            match token {
                Some(t) => api.authenticate_token(&t).await,
                None => None,
            }
        }
    };
    match user {
        Some(u) => {
            let query = Query::parse(req.uri().query());
            let attrs = crate::rbac::attributes::of_request(req.method().as_str(), &path, query.flag("watch"))
                .with_selected_name(query.get("fieldSelector"));
            let u = match api.authorize(u, req.headers(), &attrs).await {
                Ok(u) => u,
                Err(e) => {
                    if e.code == 403 {
                        api.metrics.forbidden.inc();
                        tracing::debug!(message = %e.message, "forbidden");
                    }
                    return refuse(req, e).await;
                }
            };
            let follow = query.flag("follow");
            let exempt = u.groups.iter().any(|g| g == crate::rbac::authorizer::SUPERUSER_GROUP);
            let _permit = if exempt || limits::is_long_running(&attrs, follow) {
                None
            } else {
                match api.inflight.admit(&u.name) {
                    Some(p) => Some(p),
                    None => {
                        api.metrics.rejected.inc();
                        return refuse(req, ApiError::throttled(1)).await;
                    }
                }
            };
            req.extensions_mut().insert(u);
            next.run(req).await
        }
        None if public(&path) => next.run(req).await,
        None => refuse(req, ApiError::unauthorized()).await,
    }
}

/// Answers `e` to a request that is refused before its handler, after reading (a bounded part of) its body: an
/// HTTP/2 stream answered while its body is unread is reset, and some clients (curl 7.88) then report the reset
/// instead of the answer.
async fn refuse(req: Request, e: ApiError) -> Response {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        axum::body::to_bytes(req.into_body(), UNAUTHENTICATED_BODY_LIMIT),
    )
    .await;
    e.into_response()
}

/// The most of a refused request's body that is read before the answer.
const UNAUTHENTICATED_BODY_LIMIT: usize = 64 * 1024;

async fn version() -> Response {
    handlers::json_response(StatusCode::OK, &discovery::version())
}

async fn health() -> &'static str {
    "ok"
}

async fn metrics_text(State(api): State<Arc<Api>>) -> Response {
    if let Ok(rev) = api.store.revision().await {
        api.metrics.revision.set(rev);
    }
    let mut r = api.metrics.encode().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(skiff_client::metrics::CONTENT_TYPE));
    r
}

/// A Swagger 2.0 document without paths or definitions. kubectl reads `/openapi/v2` only to validate `kind: List`
/// files, and treats kinds it finds no schema for as valid (the server validates every object anyway). kubectl asks
/// for gnostic's protobuf encoding (`openapi_v2.Document`: swagger = 1, info = 2 {title = 1, version = 2}) and
/// decodes the body as such; others get JSON.
async fn openapi_v2(headers: axum::http::HeaderMap) -> Response {
    const TITLE: &str = "Kubernetes";
    let version = skiff_api::registry::KUBERNETES_VERSION;
    let wants_proto = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("protobuf"));
    if wants_proto {
        let field = |tag: u8, bytes: &[u8]| -> Vec<u8> {
            let mut out = vec![tag, u8::try_from(bytes.len()).expect("short fields")];
            out.extend_from_slice(bytes);
            out
        };
        let info = [field(0x0a, TITLE.as_bytes()), field(0x12, version.as_bytes())].concat();
        let doc = [field(0x0a, b"2.0"), field(0x12, &info)].concat();
        let mut r = doc.into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        return r;
    }
    let doc = serde_json::json!({"swagger": "2.0", "info": {"title": TITLE, "version": version}, "paths": {}, "definitions": {}});
    handlers::json_response(StatusCode::OK, &doc)
}

async fn openapi_root(State(api): State<Arc<Api>>) -> Response {
    handlers::json_response(StatusCode::OK, &openapi::root(&api.registry()))
}

async fn openapi_gv(State(api): State<Arc<Api>>, axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    let parts: Vec<&str> = path.split('/').collect();
    let (group, version) = match parts.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return ApiError::no_route(&path).into_response(),
    };
    match openapi::group_version_doc(&api.registry(), group, version) {
        Some(doc) => {
            let mut r = handlers::json_response(StatusCode::OK, &doc);
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, immutable"));
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", openapi::hash(&doc))) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        None => ApiError::no_route(&path).into_response(),
    }
}

async fn not_found(req: Request) -> Response {
    ApiError::no_route(req.uri().path()).into_response()
}

/// The axum application.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/version", get(version))
        // the Python client asks for `/version/`; the real API server answers both
        .route("/version/", get(version))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/metrics", get(metrics_text))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_root))
        .route("/openapi/v3/{*path}", get(openapi_gv))
        .route("/api", axum::routing::any(handlers::dispatch))
        .route("/api/{*rest}", axum::routing::any(handlers::dispatch))
        .route("/apis", axum::routing::any(handlers::dispatch))
        .route("/apis/{*rest}", axum::routing::any(handlers::dispatch))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(api.clone(), authenticate))
        // a bug in a handler answers 500 (a Status) instead of dropping the connection
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            ApiError::internal("the request handler failed", &"panic").into_response()
        }))
        .with_state(api)
}

//! The HTTP layer: every request under `/api` and `/apis` is parsed into a typed action and dispatched to the
//! operations in [`super::objects`], [`super::writes`], [`super::patch`] and friends; the result is rendered as JSON,
//! a Table, or object metadata.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::discovery;
use super::error::{ApiError, ApiResult};
use super::objects::{ListQuery, Page};
use super::request::{Query, Representation, ResourcePath, Target, content_type, parse_path, representation};
use super::table::{self, Include};
use super::watch::WatchRequest;
use super::writes::{DeleteOptions, Deleted, WriteOptions};
use skiff_api::protobuf;

use super::{Api, subresources};
use skiff_api::normalize::FieldValidation;
use skiff_api::registry::ResourceInfo;
use skiff_api::selector::{FieldSelector, Selector};

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    let mut r = (code, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings.iter().take(20) {
        let v = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append("warning", h);
        }
    }
    r
}

/// Reads a request body with the size limit. An oversized body is drained (up to a bound) before the 413 is sent,
/// so that HTTP/2 clients still receive the answer.
async fn read_body(body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(ApiError::bad_request("the request body could not be read")) };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit {
                if seen > 16 * limit {
                    break;
                }
                continue;
            }
            buf.extend_from_slice(&data);
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(buf.freeze())
}

/// Rejects a request whose declared length is over the limit before reading it.
fn check_length(headers: &HeaderMap, limit: usize) -> ApiResult<()> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(n) if n > limit => Err(ApiError::too_large(limit)),
        _ => Ok(()),
    }
}

/// Decodes an object body (JSON, YAML or, for every built-in kind, protobuf).
fn decode_object(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let v = decode_value(headers, body)?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be an object, not {}",
            skiff_api::meta::describe_type(&v)
        )));
    }
    Ok(v)
}

fn decode_value(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let ct = content_type(headers);
    match ct.as_str() {
        "application/json" | "" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
        "application/yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
            let mut docs = skiff_api::yaml::parse_documents(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if docs.len() != 1 {
                return Err(ApiError::bad_request("the request body must hold exactly one object"));
            }
            Ok(docs.remove(0))
        }
        protobuf::MEDIA_TYPE => protobuf::decode(body).map_err(|e| match e {
            protobuf::ProtobufError::UnknownKind { .. } => ApiError::unsupported_media_type(
                &format!("{ct}: {e}"),
                &["application/json", "application/yaml", protobuf::MEDIA_TYPE],
            ),
            protobuf::ProtobufError::Malformed(_) => ApiError::bad_request(e.to_string()),
        }),
        other => Err(ApiError::unsupported_media_type(
            other,
            &["application/json", "application/yaml", protobuf::MEDIA_TYPE],
        )),
    }
}

fn write_options(q: &Query, user: Option<&super::auth::User>) -> ApiResult<WriteOptions> {
    let field_validation = match q.get("fieldValidation") {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            )));
        }
    };
    let dry_run = match q.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}: only All is supported")));
        }
    };
    let field_manager = q.get("fieldManager").map(str::to_string);
    if field_manager.as_deref().is_some_and(|m| m.len() > 128) {
        return Err(ApiError::bad_request("fieldManager must be at most 128 characters"));
    }
    Ok(WriteOptions { dry_run, field_manager, field_validation, user: user.cloned() })
}

fn selectors(q: &Query) -> ApiResult<(Selector, FieldSelector)> {
    let labels = Selector::parse(q.get("labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((labels, fields))
}

fn list_kind(info: &ResourceInfo) -> String {
    format!("{}List", info.kind)
}

/// Lists and renders the list in the representation the client asked for, each object turned into what the answer
/// holds of it (its JSON, its metadata's JSON, its Table row) as the listing matches it (see [`Api::list_as`]).
async fn list_response(
    api: &Api,
    info: &ResourceInfo,
    ns: Option<&str>,
    lq: &ListQuery,
    headers: &HeaderMap,
    q: &Query,
) -> ApiResult<Response> {
    let encode = |v: &Value| serde_json::to_vec(v).map_err(|e| ApiError::internal("encoding a listed object", &e));
    let (kind, api_version, page) = match representation(headers) {
        Representation::Table => {
            let rows = table::Rows::new(info, Include::parse(q.get("includeObject")));
            let page = api.list_as(info, ns, lq, |o| Ok(rows.row(&o))).await?;
            let rv = page.revision.to_string();
            let t = rows.table(page.items, &rv, page.continue_token.as_deref(), true);
            let mut r = json_response(StatusCode::OK, &t);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"));
            return Ok(r);
        }
        Representation::Metadata => {
            let page = api.list_as(info, ns, lq, |o| encode(&table::partial_metadata(&o))).await?;
            ("PartialObjectMetadataList".to_string(), "meta.k8s.io/v1".to_string(), page)
        }
        Representation::Object => {
            (list_kind(info), info.api_version(), api.list_as(info, ns, lq, |o| encode(&o)).await?)
        }
    };
    let body = list_body(&kind, &api_version, &page)?;
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// A list's JSON from its items' JSON: what encoding `{"kind", "apiVersion", "metadata", "items"}` whole gives.
fn list_body(kind: &str, api_version: &str, page: &Page<Vec<u8>>) -> ApiResult<Vec<u8>> {
    let mut md = json!({"resourceVersion": page.revision.to_string()});
    if let Some(c) = &page.continue_token {
        md["continue"] = json!(c);
    }
    let head = json!({"kind": kind, "apiVersion": api_version, "metadata": md});
    let mut out = serde_json::to_vec(&head).map_err(|e| ApiError::internal("encoding a list", &e))?;
    let items: usize = page.items.iter().map(Vec::len).sum();
    out.reserve(items + page.items.len() + 16);
    out.pop(); // the head's closing brace
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// Renders one object in the representation the client asked for.
fn render_object(info: &ResourceInfo, headers: &HeaderMap, q: &Query, code: StatusCode, obj: &Value) -> Response {
    // a write through a converted version answers in that version
    let served;
    let obj = if super::conversion::storage_version(info).is_some() {
        served = super::conversion::to_served(info, obj.clone());
        &served
    } else {
        obj
    };
    match representation(headers) {
        Representation::Table => {
            let rv = skiff_api::meta::resource_version(obj).to_string();
            let t =
                table::table(info, std::slice::from_ref(obj), &rv, None, Include::parse(q.get("includeObject")), true);
            let mut r = json_response(code, &t);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"));
            r
        }
        Representation::Metadata => json_response(code, &table::partial_metadata(obj)),
        Representation::Object => json_response(code, obj),
    }
}

fn success_status(info: &ResourceInfo, obj: &Value) -> Value {
    let mut details =
        json!({"name": skiff_api::meta::name(obj), "kind": info.plural, "uid": skiff_api::meta::uid(obj)});
    if !info.group.is_empty() {
        details["group"] = json!(info.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// Parses delete options from the body and the query.
fn delete_options(q: &Query, body: &[u8], user: Option<&super::auth::User>) -> ApiResult<DeleteOptions> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let mut propagation = v
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| q.get("propagationPolicy").map(str::to_string));
    if propagation.is_none()
        && let Some(orphan) = v
            .get("orphanDependents")
            .and_then(Value::as_bool)
            .or_else(|| q.get("orphanDependents").map(|_| q.flag("orphanDependents")))
    {
        propagation = Some(if orphan { "Orphan" } else { "Background" }.into());
    }
    let grace_period = v.get("gracePeriodSeconds").and_then(Value::as_i64).or(q.int("gracePeriodSeconds")?);
    let dry_run = v.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|x| x == "All"))
        || q.get("dryRun") == Some("All");
    Ok(DeleteOptions {
        propagation,
        grace_period,
        uid: v.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
        resource_version: v.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string),
        dry_run,
        user: user.cloned(),
    })
}

/// The entry point for `/api…` and `/apis…`.
pub async fn dispatch(State(api): State<Arc<Api>>, req: axum::extract::Request) -> Response {
    let started = std::time::Instant::now();
    let (mut parts, body) = req.into_parts();
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let user = parts.extensions.get::<super::auth::User>().cloned();
    let (verb, resource, result) = route(&api, &method, &uri, &headers, body, upgrade, user.as_ref()).await;
    let response = result.unwrap_or_else(IntoResponse::into_response);
    let code = response.status().as_u16().to_string();
    api.metrics
        .requests
        .get_or_create(&super::metrics::RequestLabels { verb: verb.to_string(), resource: resource.clone(), code })
        .inc();
    if verb != "watch" {
        api.metrics
            .latency
            .get_or_create(&super::metrics::LatencyLabels { verb: verb.to_string(), resource })
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

async fn route(
    api: &Arc<Api>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    user: Option<&super::auth::User>,
) -> (&'static str, String, ApiResult<Response>) {
    let Some(target) = parse_path(uri.path()) else {
        return ("get", uri.path().to_string(), Err(ApiError::no_route(uri.path())));
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let reg = || api.registry.read().unwrap_or_else(|p| p.into_inner()).clone();
    let discovery_response = |v: Option<Value>, aggregated: bool| -> ApiResult<Response> {
        let v = v.ok_or_else(|| ApiError::no_route(uri.path()))?;
        let mut r = json_response(StatusCode::OK, &v);
        if aggregated {
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(discovery::AGGREGATED));
        }
        Ok(r)
    };
    if *method != Method::GET && !matches!(target, Target::Resource(_)) {
        return ("get", "discovery".into(), Err(ApiError::method_not_allowed("discovery documents are read-only")));
    }
    match target {
        Target::CoreRoot => {
            let agg = discovery::wants_aggregated(&accept);
            let v = if agg {
                discovery::aggregated(&reg(), true)
            } else {
                discovery::api_versions(&api.config.advertise_address)
            };
            ("get", "discovery".into(), discovery_response(Some(v), agg))
        }
        Target::GroupsRoot => {
            let agg = discovery::wants_aggregated(&accept);
            let v = if agg { discovery::aggregated(&reg(), false) } else { discovery::api_group_list(&reg()) };
            ("get", "discovery".into(), discovery_response(Some(v), agg))
        }
        Target::Group(g) => ("get", "discovery".into(), discovery_response(discovery::api_group(&reg(), &g), false)),
        Target::GroupVersion { group, version } => (
            "get",
            "discovery".into(),
            discovery_response(discovery::api_resource_list(&reg(), &group, &version), false),
        ),
        Target::Resource(rp) => {
            let q = Query::parse(uri.query());
            let Some(info) = api.resource(&rp.group, &rp.version, &rp.plural) else {
                return ("get", rp.plural.clone(), Err(ApiError::no_route(uri.path())));
            };
            let resource = info.plural.clone();
            if info.group == skiff_api::registry::METRICS_GROUP {
                if *method != Method::GET {
                    return (
                        "get",
                        resource,
                        Err(ApiError::method_not_allowed("the resource metrics API is read-only")),
                    );
                }
                return ("get", resource, api.resource_metrics(&rp, &q).await);
            }
            if super::reviews::is_review(&info) {
                return ("create", resource, review(api, &info, &rp, method, headers, body, user).await);
            }
            let (verb, result) = resource_request(api, info, rp, method, &q, headers, body, upgrade, user).await;
            (verb, resource, result)
        }
    }
}

/// Creates (answers) a review resource; nothing is stored.
async fn review(
    api: &Arc<Api>,
    info: &ResourceInfo,
    rp: &ResourcePath,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
    user: Option<&super::auth::User>,
) -> ApiResult<Response> {
    if *method != Method::POST || rp.name.is_some() {
        return Err(ApiError::method_not_allowed(format!("{} can only be created", info.qualified_plural())));
    }
    let user = user.ok_or_else(ApiError::unauthorized)?;
    let body = read_body(body, api.config.max_body).await?;
    let obj = decode_object(headers, &body)?;
    let policy = api.policy().await?;
    let answered = super::reviews::answer(info, user, rp.namespace.as_deref(), obj, &policy)?;
    Ok(json_response(StatusCode::CREATED, &answered))
}

#[allow(clippy::too_many_lines)]
#[allow(clippy::too_many_arguments)]
async fn resource_request(
    api: &Arc<Api>,
    info: Arc<ResourceInfo>,
    rp: ResourcePath,
    method: &Method,
    q: &Query,
    headers: &HeaderMap,
    body: Body,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    user: Option<&super::auth::User>,
) -> (&'static str, ApiResult<Response>) {
    if !info.namespaced() && rp.namespace.is_some() {
        return ("get", Err(ApiError::no_route(&format!("{} is not namespaced", info.plural))));
    }
    let ns = rp.namespace.as_deref();
    let limit = api.config.max_body;
    if let Err(e) = check_length(headers, 16 * limit) {
        return ("create", Err(e));
    }
    let sub = rp.subresource.as_deref();
    if let Some(s) = sub
        && info.subresource(s).is_none()
    {
        return ("get", Err(ApiError::no_route(&format!("{}/{s}", info.plural))));
    }
    match (method.clone(), rp.name.as_deref(), sub) {
        (Method::GET, None, None) => {
            let watch = q.flag("watch");
            let verb = if watch { "watch" } else { "list" };
            let r = async {
                let (labels, fields) = selectors(q)?;
                if watch {
                    let timeout = q.int("timeoutSeconds")?.map(|s| std::time::Duration::from_secs(s.max(0) as u64));
                    let req = WatchRequest {
                        namespace: rp.namespace.clone(),
                        resource_version: q.get("resourceVersion").map(str::to_string),
                        labels,
                        fields,
                        bookmarks: q.flag("allowWatchBookmarks"),
                        send_initial_events: q.flag("sendInitialEvents"),
                        timeout,
                        representation: representation(headers),
                        include: Include::parse(q.get("includeObject")),
                    };
                    return api.watch(info.clone(), req).await;
                }
                let limit = q.int("limit")?.unwrap_or(0).max(0) as usize;
                let lq = ListQuery {
                    labels,
                    fields,
                    limit,
                    continue_token: q.get("continue").filter(|c| !c.is_empty()).map(str::to_string),
                    resource_version: q.get("resourceVersion").map(str::to_string),
                };
                list_response(api, &info, ns, &lq, headers, q).await
            }
            .await;
            (verb, r)
        }
        (Method::GET, Some(name), None | Some("status" | "approval")) => {
            if q.flag("watch") {
                // the deprecated single-object watch
                let r = async {
                    let (labels, _) = selectors(q)?;
                    let fields = FieldSelector::parse(&format!("metadata.name={name}"))
                        .map_err(|e| ApiError::bad_request(e.to_string()))?;
                    let req = WatchRequest {
                        namespace: rp.namespace.clone(),
                        resource_version: q.get("resourceVersion").map(str::to_string),
                        labels,
                        fields,
                        bookmarks: q.flag("allowWatchBookmarks"),
                        send_initial_events: false,
                        timeout: q.int("timeoutSeconds")?.map(|s| std::time::Duration::from_secs(s.max(0) as u64)),
                        representation: representation(headers),
                        include: Include::parse(q.get("includeObject")),
                    };
                    api.watch(info.clone(), req).await
                }
                .await;
                return ("watch", r);
            }
            let r = async {
                let s = api.get(&info, ns, name).await?;
                Ok(render_object(&info, headers, q, StatusCode::OK, &s.object))
            }
            .await;
            ("get", r)
        }
        (Method::POST, None, None) => {
            let r = async {
                let opts = write_options(q, user)?;
                let body = read_body(body, limit).await?;
                let obj = decode_object(headers, &body)?;
                let w = api.create(&info, ns, obj, &opts).await?;
                Ok(with_warnings(render_object(&info, headers, q, StatusCode::CREATED, &w.object), &w.warnings))
            }
            .await;
            ("create", r)
        }
        (Method::PUT, Some(name), None | Some("status" | "finalize" | "approval")) => {
            let r = async {
                let opts = write_options(q, user)?;
                let body = read_body(body, limit).await?;
                let obj = decode_object(headers, &body)?;
                let w = api.update(&info, ns, name, obj, sub, &opts).await?;
                let code = if w.created { StatusCode::CREATED } else { StatusCode::OK };
                Ok(with_warnings(render_object(&info, headers, q, code, &w.object), &w.warnings))
            }
            .await;
            ("update", r)
        }
        (Method::PATCH, Some(name), None | Some("status" | "approval")) => {
            let r = async {
                let opts = write_options(q, user)?;
                let body = read_body(body, limit).await?;
                let ct = content_type(headers);
                let w = api.patch(&info, ns, name, sub, &ct, &body, q.flag("force"), &opts).await?;
                let code = if w.created { StatusCode::CREATED } else { StatusCode::OK };
                Ok(with_warnings(render_object(&info, headers, q, code, &w.object), &w.warnings))
            }
            .await;
            ("patch", r)
        }
        (Method::DELETE, Some(name), None) => {
            let r = async {
                let body = read_body(body, limit).await?;
                let opts = delete_options(q, &body, user)?;
                match api.delete(&info, ns, name, &opts).await? {
                    Deleted::Gone(obj) if info.group.is_empty() && info.plural == "pods" => {
                        Ok(json_response(StatusCode::OK, &obj))
                    }
                    Deleted::Gone(obj) => Ok(json_response(StatusCode::OK, &success_status(&info, &obj))),
                    Deleted::Pending(obj) => Ok(json_response(StatusCode::OK, &obj)),
                }
            }
            .await;
            ("delete", r)
        }
        (Method::DELETE, None, None) => {
            let r = async {
                let body = read_body(body, limit).await?;
                let opts = delete_options(q, &body, user)?;
                let (labels, fields) = selectors(q)?;
                let items = api.list(&info, ns, &ListQuery { labels, fields, ..Default::default() }).await?.items;
                for o in &items {
                    let n = skiff_api::meta::name(o).to_string();
                    let ons = skiff_api::meta::namespace(o).to_string();
                    match api.delete(&info, if ons.is_empty() { None } else { Some(&ons) }, &n, &opts).await {
                        Ok(_) => {}
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                ))
            }
            .await;
            ("deletecollection", r)
        }
        (m, Some(name), Some("scale")) => {
            let verb = match m {
                Method::GET => "get",
                Method::PUT => "update",
                _ => "patch",
            };
            let r = async {
                let opts = write_options(q, user)?;
                match m {
                    Method::GET => {
                        let s = api.get(&info, ns, name).await?;
                        Ok(json_response(StatusCode::OK, &subresources::scale_of(&info, &s.object)?))
                    }
                    Method::PUT => {
                        let body = read_body(body, limit).await?;
                        let scale = decode_object(headers, &body)?;
                        Ok(json_response(StatusCode::OK, &api.write_scale(&info, ns, name, scale, &opts, false).await?))
                    }
                    Method::PATCH => {
                        let body = read_body(body, limit).await?;
                        let patch: Value = serde_json::from_slice(&body)
                            .map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))?;
                        let cur = api.get(&info, ns, name).await?;
                        let scale = subresources::scale_of(&info, &cur.object)?;
                        let ct = content_type(headers);
                        let ct = if ct == "application/strategic-merge-patch+json" {
                            "application/merge-patch+json".to_string()
                        } else {
                            ct
                        };
                        let patched = super::patch::apply_patch(&info, &ct, &scale, &patch)?;
                        // a patch that does not pin the resourceVersion applies to whatever is current
                        let mut patched = patched;
                        if patch.pointer("/metadata/resourceVersion").is_none()
                            && let Some(md) = patched.get_mut("metadata").and_then(Value::as_object_mut)
                        {
                            md.remove("resourceVersion");
                        }
                        Ok(json_response(
                            StatusCode::OK,
                            &api.write_scale(&info, ns, name, patched, &opts, true).await?,
                        ))
                    }
                    _ => Err(ApiError::method_not_allowed("scale supports GET, PUT and PATCH")),
                }
            }
            .await;
            (verb, r)
        }
        (Method::POST, Some(name), Some(s @ ("binding" | "eviction" | "token"))) => {
            let r = async {
                let body = read_body(body, limit).await?;
                let v = decode_object(headers, &body)?;
                let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
                match s {
                    "binding" => {
                        api.bind(ns, name, &v).await?;
                        Ok(json_response(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})))
                    }
                    "eviction" => {
                        api.evict(ns, name, &v, user).await?;
                        Ok(json_response(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})))
                    }
                    _ => Ok(json_response(StatusCode::CREATED, &api.token_request(ns, name, &v, user).await?)),
                }
            }
            .await;
            ("create", r)
        }
        (m, Some(name), Some("proxy")) if info.group.is_empty() && info.plural == "nodes" => {
            let path = rp.proxy_path.clone().unwrap_or_else(|| "/".into());
            let r = api.proxy_to_node(name, method, &path, q, headers, body, upgrade).await;
            (if m == Method::GET { "get" } else { "create" }, r)
        }
        (_, Some(name), Some(s @ ("log" | "exec" | "attach" | "portforward" | "proxy"))) => {
            let r = api.node_proxy(&info, ns, name, s, method, q, headers, body, upgrade).await;
            (if s == "log" { "get" } else { "create" }, r)
        }
        (m, _, _) => ("get", Err(ApiError::method_not_allowed(format!("{m} is not supported on this path")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_encoded_item_by_item_is_the_list_encoded_whole() {
        let objects = [
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "a", "labels": {"x": "\"quoted\" é ✓"}}}),
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "b"}, "spec": {"containers": [{"n": 1.5}]}}),
        ];
        for (items, cont) in [(&objects[..], None), (&objects[..1], Some("tok==")), (&objects[..0], None)] {
            let encoded = items.iter().map(|o| serde_json::to_vec(o).expect("json")).collect();
            let page = Page { items: encoded, revision: 42, continue_token: cont.map(str::to_string) };
            let body = list_body("PodList", "v1", &page).expect("encodes");
            let mut md = json!({"resourceVersion": "42"});
            if let Some(c) = cont {
                md["continue"] = json!(c);
            }
            let whole = json!({"kind": "PodList", "apiVersion": "v1", "metadata": md, "items": items});
            assert_eq!(String::from_utf8(body).expect("utf-8"), whole.to_string(), "{cont:?}, {} items", items.len());
        }
    }
}

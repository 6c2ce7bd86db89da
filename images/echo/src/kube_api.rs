//! `GET /kube?path=/api/v1/...`: calls the Kubernetes API from inside the pod with kube-rs' in-cluster
//! configuration (the mounted service-account token and CA, `KUBERNETES_SERVICE_HOST`/`PORT`), so tests can see
//! what a pod's identity may do. Answers `{"code": N, "body": …}` with the API server's status and answer.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::Query;
use serde_json::{Value, json};

/// The handler.
pub async fn call(Query(q): Query<BTreeMap<String, String>>) -> Json<Value> {
    let path = q.get("path").cloned().unwrap_or_else(|| "/api".into());
    Json(get(&path).await.unwrap_or_else(|e| json!({"code": 0, "error": e})))
}

async fn get(path: &str) -> Result<Value, String> {
    let cfg = kube::Config::incluster().map_err(|e| format!("in-cluster configuration: {e}"))?;
    let client = kube::Client::try_from(cfg).map_err(|e| format!("client: {e}"))?;
    let req = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
    match client.request_text(req).await {
        Ok(text) => {
            Ok(json!({"code": 200, "body": serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))}))
        }
        Err(kube::Error::Api(s)) => Ok(json!({"code": s.code, "body": {"message": s.message, "reason": s.reason}})),
        Err(e) => Err(e.to_string()),
    }
}

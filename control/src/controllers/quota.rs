//! ResourceQuota status (`status.hard` and `status.used`, what `kubectl describe quota` shows), kept up to date
//! inside the API server process from the same accounting admission uses.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use skiff_api::selector::Selector;

use crate::apiserver::Api;

/// Runs forever.
pub async fn run(api: Arc<Api>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    loop {
        tick.tick().await;
        if let Err(e) = pass(&api).await {
            tracing::debug!(error = %e, "quota status pass failed");
        }
    }
}

async fn pass(api: &Arc<Api>) -> Result<(), crate::apiserver::error::ApiError> {
    let info = api.builtin("", "resourcequotas");
    for q in api.list_all(&info, None, Selector::everything()).await? {
        let ns = skiff_api::meta::namespace(&q).to_string();
        let name = skiff_api::meta::name(&q).to_string();
        let hard = crate::quota::hard_of(&q);
        let keys: Vec<String> = hard.keys().cloned().collect();
        let usage = api.namespace_usage(&ns, &keys).await?;
        let used: Map<String, Value> =
            keys.iter().map(|k| (k.clone(), json!(usage.get(k).copied().unwrap_or_default().to_string()))).collect();
        let hard_v = q.pointer("/spec/hard").cloned().unwrap_or_else(|| json!({}));
        if q.pointer("/status/used") != Some(&Value::Object(used.clone())) || q.pointer("/status/hard") != Some(&hard_v)
        {
            api.update_with(&info, Some(&ns), &name, Some("status"), "resourcequota-controller", |o| {
                o["status"] = json!({"hard": hard_v, "used": used});
                true
            })
            .await?;
        }
    }
    Ok(())
}

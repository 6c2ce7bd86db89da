//! The default roles and bindings, reconciled at start, and ClusterRole aggregation, kept up to date inside the
//! API server process. Both apply plans computed by [`crate::rbac`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use skiff_api::selector::Selector;

use crate::apiserver::Api;
use crate::apiserver::authz::RBAC_GROUP;
use crate::apiserver::error::ApiResult;
use crate::apiserver::writes::{DeleteOptions, WriteOptions};
use crate::rbac::aggregation;
use crate::rbac::defaults::{self, Reconcile};

const MANAGER: &str = "skiff-rbac-bootstrap";

fn opts() -> WriteOptions {
    WriteOptions { field_manager: Some(MANAGER.into()), ..Default::default() }
}

/// Creates missing default roles and bindings and adds what existing ones lack, then aggregates.
pub async fn reconcile_defaults(api: &Arc<Api>) -> ApiResult<()> {
    for desired in defaults::objects() {
        let plural = if desired["kind"] == "ClusterRole" { "clusterroles" } else { "clusterrolebindings" };
        let info = api.builtin(RBAC_GROUP, plural);
        let name = skiff_api::meta::name(&desired).to_string();
        let existing = api.try_get(&info, None, &name).await?.map(|s| s.object);
        match defaults::reconcile(&desired, existing.as_ref()) {
            None => {}
            Some(Reconcile::Create(o)) => {
                api.create(&info, None, o, &opts()).await?;
            }
            Some(Reconcile::Update(o)) => {
                api.update(&info, None, &name, o, None, &opts()).await?;
            }
            Some(Reconcile::Recreate(o)) => {
                api.delete(&info, None, &name, &DeleteOptions::default()).await?;
                api.create(&info, None, o, &opts()).await?;
            }
        }
    }
    // admin includes edit includes view: a few passes settle them
    for _ in 0..4 {
        if aggregate(api).await? == 0 {
            break;
        }
    }
    Ok(())
}

/// One aggregation pass: the number of ClusterRoles changed.
async fn aggregate(api: &Arc<Api>) -> ApiResult<usize> {
    let info = api.builtin(RBAC_GROUP, "clusterroles");
    let roles = api.list_all(&info, None, Selector::everything()).await?;
    let plan = aggregation::plan(&roles);
    for (name, rules) in &plan {
        let rules = rules.clone();
        api.update_with(&info, None, name, None, "clusterrole-aggregation-controller", move |o| {
            o["rules"] = Value::Array(rules.clone());
            true
        })
        .await?;
    }
    Ok(plan.len())
}

/// Keeps aggregated ClusterRoles up to date; runs forever.
pub async fn run(api: Arc<Api>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        if let Err(e) = aggregate(&api).await {
            tracing::debug!(error = %e, "ClusterRole aggregation pass failed");
        }
    }
}

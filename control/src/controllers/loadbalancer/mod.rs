//! LoadBalancer Services get their external addresses (`status.loadBalancer.ingress`): the addresses of the nodes
//! that serve them by default, or one address each from a pool (see [`plan`] for the rules, [`pool`] for where the
//! pool comes from). The eBPF balancer on every node answers on them; with a pool, the agent holding an address
//! announces it on the node's link (ARP). This module is the thin executor: it reads the pool, runs the planner
//! over the informers' stores and writes the one Service's status, with an Event when it stays pending.

pub mod plan;
pub mod pool;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::controllers::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, Patch, PostParams};
use kube::runtime::controller::{Action, Controller};
use serde_json::json;
use skiff_client::events::EventType;

use self::plan::{Decision, Inputs, current};
use self::pool::{POOL_CONFIGMAP, POOL_KEY, POOL_NAMESPACE, Pool, reserved_cidrs};
use super::ctx::{Ctx, ReconcileError};

/// How soon a pending Service is looked at again (an address or port may have been freed).
const PENDING_RETRY: Duration = Duration::from_secs(5);

/// The last pending reason told per Service (namespace/name → reason), so a Service that stays pending gets one
/// Event per reason rather than one per retry.
static TOLD: std::sync::Mutex<BTreeMap<(String, String), String>> = std::sync::Mutex::new(BTreeMap::new());

fn said_before(ns: &str, name: &str, reason: &str) -> bool {
    let Ok(mut told) = TOLD.lock() else { return false };
    let key = (ns.to_string(), name.to_string());
    if told.get(&key).is_some_and(|r| r == reason) {
        return true;
    }
    told.insert(key, reason.to_string());
    false
}

fn forget(ns: &str, name: &str) {
    if let Ok(mut told) = TOLD.lock() {
        told.remove(&(ns.to_string(), name.to_string()));
    }
}

/// The pool's text: the ConfigMap's, or with no ConfigMap the server's `--lb-pool` (a deleted ConfigMap must not
/// move every pool address onto node addresses while the server is configured with a pool). `None`: no pool (node
/// addresses are used).
fn pool_text(cm: Option<&ConfigMap>, configured: Option<&str>) -> Option<String> {
    match cm {
        Some(cm) => Some(cm.data.as_ref().and_then(|d| d.get(POOL_KEY)).cloned().unwrap_or_default()),
        None => configured.map(str::to_string),
    }
}

/// The pool from its ConfigMap (or `--lb-pool`): `None` when there is none (node addresses are used).
async fn read_pool(
    client: &kube::Client,
    configured: Option<&str>,
) -> Result<Option<Result<Pool, String>>, ReconcileError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), POOL_NAMESPACE);
    let cm = api.get_opt(POOL_CONFIGMAP).await?;
    Ok(pool_text(cm.as_ref(), configured).map(|text| Pool::parse(&text, &reserved_cidrs())))
}

/// Reconciles one Service.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let pool = read_pool(&ctx.client, ctx.config.lb_pool.as_deref()).await?;
    let (services, nodes, slices) = (ctx.services.state(), ctx.nodes.state(), ctx.slices.state());
    let inputs = Inputs {
        services: &services,
        nodes: &nodes,
        slices: &slices,
        pool: pool.as_ref(),
        reserved: &ctx.config.lb_reserved_ports,
    };
    let decision = plan::plan(&inputs).remove(&(ns.clone(), name.clone())).unwrap_or(Decision::Leave);
    let keep = matches!(decision, Decision::Keep(_));
    if !matches!(decision, Decision::Pending(_) | Decision::Keep(_)) {
        forget(&ns, &name);
    }
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let have = current(&svc);
    let set = |ingress: serde_json::Value| json!({"status": {"loadBalancer": {"ingress": ingress}}});
    match decision {
        Decision::Leave => Ok(Action::await_change()),
        Decision::Clear => {
            super::retry::status_written(
                api.patch_status(&name, &super::util::pp(), &Patch::Merge(&set(serde_json::Value::Null))).await,
            )?;
            Ok(Action::await_change())
        }
        Decision::Assign(ips) => {
            if have != ips {
                let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
                super::retry::status_written(
                    api.patch_status(&name, &super::util::pp(), &Patch::Merge(&set(json!(ingress)))).await,
                )?;
                let list: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
                tracing::info!(namespace = %ns, service = %name, addresses = ?ips, "LoadBalancer addresses assigned");
                ctx.recorders
                    .get(CONTROLLER)
                    .record(
                        &skiff_client::events::reference(svc.as_ref()),
                        EventType::Normal,
                        "IPAllocated",
                        &format!("Assigned IP [{}]", list.join(",")),
                    )
                    .await;
            }
            // Node addresses follow the nodes (one joins, one dies): look again.
            Ok(Action::requeue(ctx.config.resync))
        }
        Decision::Pending(reason) | Decision::Keep(reason) => {
            if !keep && !have.is_empty() {
                super::retry::status_written(
                    api.patch_status(&name, &super::util::pp(), &Patch::Merge(&set(serde_json::Value::Null))).await,
                )?;
            }
            // Told once per reason, not on every retry.
            if said_before(&ns, &name, &reason) {
                return Ok(Action::requeue(PENDING_RETRY));
            }
            tracing::info!(namespace = %ns, service = %name, %reason, keep, "LoadBalancer Service pending");
            ctx.recorders
                .get(CONTROLLER)
                .record(&skiff_client::events::reference(svc.as_ref()), EventType::Warning, "AllocationFailed", &reason)
                .await;
            Ok(Action::requeue(PENDING_RETRY))
        }
    }
}

/// Creates the pool ConfigMap from `skiff server --lb-pool` unless it exists (then it is the users' to edit).
async fn seed_pool(client: &kube::Client, addresses: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), POOL_NAMESPACE);
    let cm: ConfigMap = match serde_json::from_value(json!({
        "metadata": {"name": POOL_CONFIGMAP, "namespace": POOL_NAMESPACE},
        "data": {POOL_KEY: addresses}
    })) {
        Ok(cm) => cm,
        Err(e) => return tracing::error!(error = %e, "building the pool ConfigMap"),
    };
    match api.create(&PostParams::default(), &cm).await {
        Ok(_) => tracing::info!(%addresses, "LoadBalancer pool created"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!("the LoadBalancer pool ConfigMap exists; --lb-pool does not overwrite it")
        }
        Err(e) => tracing::error!(error = %e, "creating the LoadBalancer pool ConfigMap"),
    }
}

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "service-lb-controller";

/// Runs the controller.
pub async fn run(ctx: Arc<Ctx>, services: Subscription<Service>) {
    if let Some(addresses) = &ctx.config.lb_pool {
        seed_pool(&ctx.client, addresses).await;
    }
    Controller::for_shared_stream(services, ctx.services.clone())
        .run(
            crate::controllers::retry::reconciler(CONTROLLER, reconcile),
            crate::controllers::retry::policy(CONTROLLER),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configmap_is_the_pool_and_without_it_the_servers_flag_is() {
        let cm: ConfigMap = serde_json::from_value(json!({"data": {POOL_KEY: "10.0.0.200-10.0.0.201"}})).expect("cm");
        assert_eq!(pool_text(Some(&cm), Some("10.9.0.0/30")).as_deref(), Some("10.0.0.200-10.0.0.201"));
        let empty: ConfigMap = serde_json::from_value(json!({})).expect("cm");
        assert_eq!(pool_text(Some(&empty), Some("10.9.0.0/30")).as_deref(), Some(""), "an emptied pool stays a pool");
        assert_eq!(pool_text(None, Some("10.9.0.0/30")).as_deref(), Some("10.9.0.0/30"), "a deleted pool");
        assert_eq!(pool_text(None, None), None, "no pool at all: node addresses");
    }
}

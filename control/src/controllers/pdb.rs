//! PodDisruptionBudget status: how many selected pods are healthy, how many must stay, and how many disruptions
//! (evictions, such as `kubectl drain` makes) are allowed now.

use std::sync::Arc;
use std::time::Duration;

use super::informers::Subscription;
use futures::StreamExt;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use skiff_api::selector::Selector;

use super::cached_pod::CachedPod;
use super::ctx::{Ctx, ReconcileError};
use super::util::{is_active, is_ready, scaled_value};

/// (expected pods, currently healthy, desired healthy, disruptions allowed).
pub fn budget(pdb: &PodDisruptionBudget, pods: &[Arc<CachedPod>]) -> (i32, i32, i32, i32) {
    let spec = pdb.spec.clone().unwrap_or_default();
    let sel =
        spec.selector.as_ref().and_then(|s| Selector::from_label_selector(s).ok()).unwrap_or_else(Selector::nothing);
    let selected: Vec<&Arc<CachedPod>> = pods.iter().filter(|p| is_active(p) && p.metadata.selected_by(&sel)).collect();
    let expected = selected.len() as i32;
    let healthy = selected.iter().filter(|p| is_ready(p)).count() as i32;
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (Some(m), _) => scaled_value(Some(m), expected, true, "0"),
        (None, Some(m)) => expected - scaled_value(Some(m), expected, true, "0"),
        (None, None) => expected,
    };
    (expected, healthy, desired, (healthy - desired).max(0))
}

/// Reconciles one budget.
pub async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = pdb.metadata.namespace.clone().unwrap_or_default();
    let name = pdb.metadata.name.clone().unwrap_or_default();
    let (expected, healthy, desired, allowed) = budget(&pdb, &ctx.pods.in_namespace(&ns));
    let cur = pdb.status.clone().unwrap_or_default();
    if (cur.expected_pods, cur.current_healthy, cur.desired_healthy, cur.disruptions_allowed)
        != (expected, healthy, desired, allowed)
        || cur.observed_generation != pdb.metadata.generation
    {
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": {"expectedPods": expected, "currentHealthy": healthy, "desiredHealthy": desired, "disruptionsAllowed": allowed, "observedGeneration": pdb.metadata.generation}});
        super::retry::status_written(api.patch_status(&name, &super::util::pp(), &Patch::Merge(&patch)).await)?;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// The controller's name in Events and metrics.
pub const CONTROLLER: &str = "disruption-controller";

/// Runs the controller.
pub async fn run(ctx: Arc<Ctx>, pdbs: Subscription<PodDisruptionBudget>, pods: Subscription<CachedPod>) {
    let store = ctx.pdbs.clone();
    Controller::for_shared_stream(pdbs, ctx.pdbs.clone())
        .reconcile_on(super::informers::related(pods, move |pod: Arc<CachedPod>| {
            let ns = pod.metadata.namespace.clone();
            store
                .state()
                .into_iter()
                .filter(|p| p.metadata.namespace.as_deref() == ns.as_deref())
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        }))
        .run(super::retry::reconciler(CONTROLLER, reconcile), super::retry::policy(CONTROLLER), ctx)
        .for_each(|_| async {})
        .await;
}

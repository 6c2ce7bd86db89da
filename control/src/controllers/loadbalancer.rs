//! LoadBalancer Services get an external address from a configured pool (`status.loadBalancer.ingress`); the
//! dataplane then answers on it on every node. A Service that stops being a LoadBalancer gives it back.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ReflectHandle;
use serde_json::json;
use skiff_client::events::EventType;

use super::ctx::{Ctx, ReconcileError};

fn lb_ips(s: &Service) -> Vec<Ipv4Addr> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.as_deref()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Picks an address for `svc` from `pool` that no other Service holds (its own, or `spec.loadBalancerIP` if free).
pub fn pick(svc: &Service, pool: (Ipv4Addr, Ipv4Addr), others: &[Arc<Service>]) -> Option<Ipv4Addr> {
    let in_pool = |ip: Ipv4Addr| u32::from(ip) >= u32::from(pool.0) && u32::from(ip) <= u32::from(pool.1);
    let used: BTreeSet<Ipv4Addr> =
        others.iter().filter(|o| o.metadata.uid != svc.metadata.uid).flat_map(|o| lb_ips(o)).collect();
    if let Some(own) = lb_ips(svc).into_iter().find(|ip| in_pool(*ip) && !used.contains(ip)) {
        return Some(own);
    }
    if let Some(wanted) =
        svc.spec.as_ref().and_then(|s| s.load_balancer_ip.as_deref()).and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    {
        return (in_pool(wanted) && !used.contains(&wanted)).then_some(wanted);
    }
    (u32::from(pool.0)..=u32::from(pool.1)).map(Ipv4Addr::from).find(|ip| !used.contains(ip))
}

/// Reconciles one Service.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let current = lb_ips(&svc);
    if !is_lb {
        if !current.is_empty() {
            api.patch_status(
                &name,
                &super::util::pp(),
                &Patch::Merge(&json!({"status": {"loadBalancer": {"ingress": null}}})),
            )
            .await?;
        }
        return Ok(Action::await_change());
    }
    let Some(pool) = ctx.config.lb_pool else {
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    match pick(&svc, pool, &ctx.services.state()) {
        Some(ip) if current != vec![ip] => {
            let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}});
            api.patch_status(&name, &super::util::pp(), &Patch::Merge(&patch)).await?;
            ctx.recorders
                .get("service-lb-controller")
                .record(
                    &skiff_client::events::reference(svc.as_ref()),
                    EventType::Normal,
                    "IPAllocated",
                    &format!("Assigned IP [\"{ip}\"]"),
                )
                .await;
        }
        Some(_) => {}
        None => {
            ctx.recorders
                .get("service-lb-controller")
                .record(
                    &skiff_client::events::reference(svc.as_ref()),
                    EventType::Warning,
                    "AllocationFailed",
                    "no free address in the LoadBalancer pool",
                )
                .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }
    Ok(Action::await_change())
}

/// Runs the controller.
pub async fn run(ctx: Arc<Ctx>, services: ReflectHandle<Service>) {
    Controller::for_shared_stream(services, ctx.services.clone())
        .run(reconcile, super::error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(uid: &str, ip: Option<&str>) -> Arc<Service> {
        let mut v = json!({"metadata": {"name": uid, "uid": uid}, "spec": {"type": "LoadBalancer"}});
        if let Some(ip) = ip {
            v["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        }
        Arc::new(serde_json::from_value(v).expect("svc"))
    }

    #[test]
    fn addresses_are_unique_and_sticky() {
        let pool = ("10.0.0.200".parse().expect("ip"), "10.0.0.201".parse().expect("ip"));
        let a = svc("a", Some("10.0.0.200"));
        let b = svc("b", None);
        let all = vec![a.clone(), b.clone()];
        assert_eq!(pick(&a, pool, &all), Some("10.0.0.200".parse().expect("ip")));
        assert_eq!(pick(&b, pool, &all), Some("10.0.0.201".parse().expect("ip")));
        let c = svc("c", None);
        let full = vec![a, svc("b", Some("10.0.0.201")), c.clone()];
        assert_eq!(pick(&c, pool, &full), None);
    }
}

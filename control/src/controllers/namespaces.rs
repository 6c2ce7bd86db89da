//! Namespace lifecycle: a namespace being deleted has all its contents deleted, and is finalized (its `kubernetes`
//! finalizer removed, so it disappears) once nothing is left; every active namespace gets its `default`
//! ServiceAccount and the `kube-root-ca.crt` ConfigMap, as kube-controller-manager provides them.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::apiserver::Api;
use crate::apiserver::writes::{DeleteOptions, WriteOptions};
use skiff_api::meta;
use skiff_api::selector::Selector;

/// Runs forever.
pub async fn run(api: Arc<Api>, ca_pem: String) {
    loop {
        if let Err(e) = run_once(&api, &ca_pem).await {
            tracing::warn!(error = %e, "namespace controller restarting");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn run_once(api: &Arc<Api>, ca_pem: &str) -> Result<(), String> {
    let rev = api.store.revision().await.map_err(|e| e.to_string())?;
    let mut events = api.store.watch("/registry/namespaces/", rev).await.map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            ev = events.next() => match ev {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the watch ended".into()),
            }
        }
        sync_all(api, ca_pem).await.map_err(|e| e.to_string())?;
    }
}

async fn sync_all(api: &Arc<Api>, ca_pem: &str) -> Result<(), crate::apiserver::error::ApiError> {
    let ns_info = api.builtin("", "namespaces");
    for ns in api.list_all(&ns_info, None, Selector::everything()).await? {
        let name = meta::name(&ns).to_string();
        if meta::is_terminating(&ns) {
            if empty_namespace(api, &name).await? {
                api.update_with(&ns_info, None, &name, Some("finalize"), "namespace-controller", |o| {
                    let Some(list) = o.pointer_mut("/spec/finalizers").and_then(Value::as_array_mut) else {
                        return false;
                    };
                    let before = list.len();
                    list.retain(|f| f.as_str() != Some("kubernetes"));
                    list.len() != before
                })
                .await?;
            }
        } else {
            ensure_defaults(api, &name, ca_pem).await?;
        }
    }
    Ok(())
}

/// Deletes what is left in a terminating namespace; `true` once nothing is.
async fn empty_namespace(api: &Arc<Api>, ns: &str) -> Result<bool, crate::apiserver::error::ApiError> {
    let kinds: Vec<_> = api.registry().all().iter().filter(|r| r.namespaced()).cloned().collect();
    let mut remaining = 0usize;
    for info in kinds {
        for obj in api.list_all(&info, Some(ns), Selector::everything()).await? {
            remaining += 1;
            if meta::is_terminating(&obj) {
                continue;
            }
            let opts = DeleteOptions { propagation: Some("Background".into()), ..Default::default() };
            match api.delete(&info, Some(ns), meta::name(&obj), &opts).await {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(error = %e, namespace = ns, object = meta::name(&obj), "deleting namespace content failed")
                }
            }
        }
    }
    Ok(remaining == 0)
}

async fn ensure_defaults(api: &Arc<Api>, ns: &str, ca_pem: &str) -> Result<(), crate::apiserver::error::ApiError> {
    let opts = WriteOptions { field_manager: Some("namespace-controller".into()), ..Default::default() };
    let sa = api.builtin("", "serviceaccounts");
    if api.try_get(&sa, Some(ns), "default").await?.is_none() {
        match api
            .create(
                &sa,
                Some(ns),
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}),
                &opts,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let cm = api.builtin("", "configmaps");
    if api.try_get(&cm, Some(ns), "kube-root-ca.crt").await?.is_none() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": ns,
            "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": ca_pem}});
        match api.create(&cm, Some(ns), obj, &opts).await {
            Ok(_) => {}
            Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

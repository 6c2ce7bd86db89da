//! Controllers. The API machinery ones ([`gc`], [`namespaces`]) run inside `skiff server` over the store; the
//! workload controllers run on kube-runtime against the API (see issue 3).

pub mod gc;
pub mod namespaces;

use std::sync::Arc;

use crate::apiserver::Api;

/// Starts the garbage collector and the namespace lifecycle controller.
pub fn spawn_api_machinery(api: Arc<Api>, ca_pem: String) {
    tokio::spawn(gc::run(api.clone()));
    tokio::spawn(namespaces::run(api, ca_pem));
}

/// Maps a storage key to its resource, namespace and name.
pub fn locate(api: &Api, key: &str) -> Option<(Arc<skiff_api::registry::ResourceInfo>, Option<String>, String)> {
    let reg = api.registry();
    let info = reg
        .all()
        .iter()
        .filter(|r| key.starts_with(&r.storage_prefix()))
        .max_by_key(|r| r.storage_prefix().len())?
        .clone();
    let rest = &key[info.storage_prefix().len()..];
    if info.namespaced() {
        let (ns, name) = rest.split_once('/')?;
        Some((info, Some(ns.to_string()), name.to_string()))
    } else {
        (!rest.contains('/')).then(|| (info, None, rest.to_string()))
    }
}

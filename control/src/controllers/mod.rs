//! Controllers. The API machinery ones ([`gc`], [`namespaces`], [`quota`], [`csr`], [`rbac`] aggregation) run inside
//! `skiff server` directly on the store; the workload controllers and the scheduler run on kube-runtime against the
//! API (as kube-controller-manager and kube-scheduler do). When the server runs controllers, all of them, the API
//! machinery included, run only on the instance that holds the leader Lease ([`manager`], [`leader`]).

pub mod cached_pod;
pub mod cronjob;
pub mod csr;
pub mod ctx;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod expectations;
pub mod gc;
pub mod hpa;
pub mod informers;
pub mod job;
pub mod leader;
pub mod loadbalancer;
pub mod manager;
pub mod namespaces;
pub mod nodelifecycle;
pub mod pdb;
pub mod placement;
pub mod pod_meta;
pub mod pod_store;
pub mod quota;
pub mod rbac;
pub mod replicaset;
pub mod retry;
pub mod scheduler;
pub mod shared;
pub mod statefulset;
pub mod util;

use crate::apiserver::Api;
use std::sync::Arc;

/// Runs the garbage collector, the namespace lifecycle, the quota status, the certificate and the ClusterRole
/// aggregation controllers (in-process) until the future is dropped.
pub async fn run_api_machinery(api: Arc<Api>, ca: crate::pki::CertPair) {
    let ca_pem = ca.cert_pem.clone();
    // Each its own task, as before (they run in parallel); the set aborts them when this future is dropped.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(csr::run(api.clone(), ca));
    tasks.spawn(gc::run(api.clone()));
    tasks.spawn(quota::run(api.clone()));
    tasks.spawn(rbac::run(api.clone()));
    tasks.spawn(namespaces::run(api, ca_pem));
    while tasks.join_next().await.is_some() {}
}

/// Maps a storage key to its resource, namespace and name.
pub fn locate(api: &Api, key: &str) -> Option<(Arc<skiff_api::registry::ResourceInfo>, Option<String>, String)> {
    let reg = api.registry();
    let info = reg
        .all()
        .iter()
        .filter(|r| key.starts_with(&r.storage_prefix()) && crate::apiserver::conversion::storage_version(r).is_none())
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

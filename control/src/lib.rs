//! `skiff-control`: the Skiff control plane — the Kubernetes-compatible API server, its storage backends,
//! admission, the controllers and the scheduler.

pub mod apiserver;
pub mod apiserver_endpoints;
pub mod certificates;
pub mod cluster_secrets;
pub mod compaction;
pub mod controllers;
pub mod event_expiry;
pub mod kubeconfig;
pub mod pki;
pub mod podsecurity;
pub mod quota;
pub mod rbac;
pub mod server;
pub mod storage;

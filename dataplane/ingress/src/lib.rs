//! `skiff-ingress`: the Skiff ingress controller, on Pingora.
//!
//! Compile, then swap: [`compile::compile`] turns Ingress, IngressClass, Service, EndpointSlice, Secret and
//! ConfigMap objects ([`Objects`]) into an immutable [`table::RouteTable`] holding routes, upstream pools, policies and
//! certificates; [`runtime::Publisher`] stores it in an `ArcSwap`; every request loads one snapshot and reads only
//! from it. Nothing is ever reloaded or restarted to change configuration.
//!
//! Two ways to feed it: [`run_from_file`] (a multi-document YAML file, re-read on change or SIGHUP) and
//! [`run_from_api`] (kube-rs watchers on a cluster).
#![deny(missing_docs)]

pub mod compile;
pub mod config;
pub mod decide;
pub mod fast;
pub mod objects;
pub mod proxy;
pub mod runtime;
pub mod table;

pub use config::IngressConfig;

/// mimalloc for the whole binary (feature `mimalloc`): the proxy allocates per request, and glibc malloc cost
/// about 10% of its CPU in profiles.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub use objects::Objects;
pub use runtime::{run_from_api, run_from_file};

//! Defaulting: the values the Kubernetes API server fills in when a manifest leaves them out.
//!
//! Each function takes the typed object and sets what is missing, exactly as Kubernetes' `SetDefaults_*` do, so that
//! what `kubectl get -o yaml` shows matches a real cluster.

mod pod;
mod workloads;

pub use pod::{default_pod_spec, default_pod_template};
pub use workloads::*;

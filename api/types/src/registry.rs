//! The resource registry: every built-in resource with its group, version, kind and scope.

/// The Kubernetes version Skiff's API server reports (`/version`), matching the k8s-openapi feature in use.
pub const KUBERNETES_VERSION: &str = "v1.32.4";

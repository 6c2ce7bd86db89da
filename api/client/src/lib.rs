//! `skiff-client`: how Skiff's controllers, node agent and dataplane follow the cluster — a thin layer over kube-rs.
//!
//! - [`connect`]: a `kube::Client` from a kubeconfig file, or from the in-cluster service-account token, on the
//!   stack of [`connection`] (kube's own, with `TCP_NODELAY`);
//! - [`events`]: a recorder of core/v1 Events (what `kubectl describe` shows);
//! - [`identity`]: the user and groups a client certificate names;
//! - re-exports of the kube-runtime pieces in use (watcher, reflector, Controller).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod connection;
pub mod events;
pub mod identity;
pub mod metrics;

use std::path::Path;

pub use kube;
pub use kube::runtime;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig could not be read or is invalid.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The in-cluster configuration is missing or invalid.
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// The client could not be built from the configuration.
    #[error("building the client: {0}")]
    Build(#[from] kube::Error),
}

/// Installs the process-wide rustls crypto provider (ring) if none is installed yet.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for the cluster a kubeconfig file points at (its current context).
pub async fn connect(kubeconfig: &Path) -> Result<kube::Client, ClientError> {
    install_crypto_provider();
    let err = |source| ClientError::Kubeconfig { path: kubeconfig.display().to_string(), source };
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(err)?;
    let cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.map_err(err)?;
    Ok(connection::client(cfg)?)
}

/// A client from the pod's service-account token (`KUBERNETES_SERVICE_HOST` and the mounted token).
pub fn connect_in_cluster() -> Result<kube::Client, ClientError> {
    install_crypto_provider();
    let cfg = kube::Config::incluster()?;
    Ok(connection::client(cfg)?)
}

//! Images: the local store ([`store`]), imports of archives ([`archive`]), registry pulls ([`pull`]), layers on disk
//! and root file systems ([`layers`], unpacked by [`unpack`]), and the pull policy.
//!
//! # Caveats
//! Built-in images (`busybox`, `skiff/echo`, marked `dev.skiff.builtin` by `scripts/build-images`) exist only in the
//! store and are never pulled, whatever the policy says. With `imagePullPolicy: Always` (the default for `:latest`), a registry that cannot be reached at all (no route,
//! refused, timed out) falls back to the image already in the store, with a warning event — these machines have no
//! outside network and the built-in images exist only locally. A registry that answers "not found" or "denied" is
//! an error as in Kubernetes.

pub mod archive;
pub mod auth;
pub mod gc;
pub mod gc_run;
pub mod layers;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use reference::{Reference, ReferenceError};
pub use store::{Image, Store};

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is invalid.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Content is malformed or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The registry says the image does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// The registry could not be reached.
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    /// The registry refused or answered something unusable.
    #[error("pull failed: {0}")]
    Pull(String),
    /// The registry wants credentials, or refused the ones given.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The image is absent and the policy forbids pulling it.
    #[error("container image {0:?} is not present with pull policy of Never")]
    NeverPull(String),
}

/// `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always ask the registry.
    Always,
    /// Pull only when absent.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The policy from the container's field, with Kubernetes' default (Always for `:latest`, else IfNotPresent).
    pub fn of(field: Option<&str>, reference: &Reference) -> PullPolicy {
        match field {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ if reference.is_latest() => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// How an image came to be available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obtained {
    /// Already in the store.
    Present,
    /// Pulled now, in this long.
    Pulled(Duration),
    /// The policy said Always, the registry was unreachable, and the stored copy was used.
    LocalFallback(String),
}

/// The store plus the registry client, with one pull at a time per reference.
#[derive(Debug)]
pub struct Images {
    store: Store,
    puller: pull::Puller,
    in_flight: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each reference was last made available to a container here (for image GC).
    last_used: std::sync::Mutex<HashMap<String, jiff::Timestamp>>,
    since: jiff::Timestamp,
}

impl Images {
    /// Opens the store at `root`.
    pub fn open(root: &std::path::Path, insecure: Vec<String>) -> Result<Self, ImageError> {
        Ok(Images {
            store: Store::open(root)?,
            puller: pull::Puller::new(insecure),
            in_flight: Default::default(),
            last_used: Default::default(),
            since: jiff::Timestamp::now(),
        })
    }

    /// When each reference was last made available to a container by this agent.
    pub fn last_used(&self) -> HashMap<String, jiff::Timestamp> {
        self.last_used.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// When this store was opened (images found are taken as used then).
    pub fn since(&self) -> jiff::Timestamp {
        self.since
    }

    fn used(&self, image: &Image) {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.reference.clone(), jiff::Timestamp::now());
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn find_blocking(&self, name: String) -> impl Future<Output = Result<Option<Image>, ImageError>> + use<> {
        let store = self.store.clone();
        async move {
            tokio::task::spawn_blocking(move || store.find(&name))
                .await
                .map_err(|e| ImageError::Invalid(e.to_string()))?
        }
    }

    /// Makes `image` available according to `policy`.
    pub async fn ensure(&self, image: &str, policy: Option<&str>) -> Result<(Image, Obtained), ImageError> {
        self.ensure_with(image, policy, &[], None).await
    }

    /// [`Images::ensure`] with the docker configs of the pod's image pull secrets (a pull uses the first that has
    /// credentials for the image's registry), publishing a pull's progress on `progress`.
    pub async fn ensure_with(
        &self,
        image: &str,
        policy: Option<&str>,
        pull_configs: &[serde_json::Value],
        progress: Option<&progress::ProgressTx>,
    ) -> Result<(Image, Obtained), ImageError> {
        let reference = Reference::parse(image)?;
        let policy = PullPolicy::of(policy, &reference);
        let name = reference.to_string();
        let lock = {
            let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(name.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let local = self.find_blocking(name.clone()).await?;
        let got = match (policy, local) {
            (_, Some(img)) if img.builtin => Ok((img, Obtained::Present)),
            (PullPolicy::Never, None) => Err(ImageError::NeverPull(image.to_string())),
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(img)) => Ok((img, Obtained::Present)),
            (PullPolicy::IfNotPresent | PullPolicy::Always, local) => {
                let started = Instant::now();
                let creds = pull_configs.iter().find_map(|c| auth::for_registry(c, &reference.registry));
                let store = self.store.clone();
                let _pulling = tokio::task::spawn_blocking(move || store.hold_for_pull())
                    .await
                    .map_err(|e| ImageError::Invalid(e.to_string()))??;
                match self.puller.pull(&self.store, &reference, creds.as_ref(), progress).await {
                    Ok(img) => Ok((img, Obtained::Pulled(started.elapsed()))),
                    Err(ImageError::Unreachable(why)) if local.is_some() => {
                        let img = local.expect("checked to be Some");
                        Ok((img, Obtained::LocalFallback(why)))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Ok((img, _)) = &got {
            self.used(img);
        }
        got
    }

    /// The unpacked layer directories of `image`, base first (unpacking what is missing).
    pub async fn layers(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        let store = self.store.clone();
        let image = image.clone();
        tokio::task::spawn_blocking(move || layers::ensure_unpacked(&store, &image))
            .await
            .map_err(|e| ImageError::Invalid(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_follow_kubernetes() {
        let latest = Reference::parse("busybox").expect("valid");
        let pinned = Reference::parse("busybox:1.36").expect("valid");
        assert_eq!(PullPolicy::of(None, &latest), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, &pinned), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::of(Some("Never"), &latest), PullPolicy::Never);
    }
}

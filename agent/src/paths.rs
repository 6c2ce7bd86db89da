//! The layout of the agent's data directory.
//!
//! ```text
//! runc/                          runc --root (this agent's containers only)
//! containers/<id>/               OCI bundle: config.json, rootfs/ (overlay), upper/, work/, runc.log, shim.log
//! exits/<id>.json                written by a container's shim when it ends
//! pods/<uid>/                    record.json, hosts, resolv.conf, hostname, volumes/<kind>/<name>/
//! netns/<uid>                    the pod's network namespace (a bind mount)
//! ipam/<ip>                      one file per allocated pod address, holding the pod uid
//! logs/<ns>_<name>_<uid>/<container>/<restart>.log
//! pki/                           the kubelet endpoint's serving certificate
//! ```

use std::path::{Path, PathBuf};

/// Paths under one data directory.
#[derive(Clone, Debug)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Paths { root: root.into() }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// runc's state root.
    pub fn runc_root(&self) -> PathBuf {
        self.root.join("runc")
    }

    /// All container bundles.
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// One container's bundle.
    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }

    /// Where shims leave exit records.
    pub fn exits(&self) -> PathBuf {
        self.root.join("exits")
    }

    /// One container's exit record.
    pub fn exit_file(&self, id: &str) -> PathBuf {
        self.exits().join(format!("{id}.json"))
    }

    /// All pod directories.
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// One pod's directory.
    pub fn pod(&self, uid: &str) -> PathBuf {
        self.pods().join(uid)
    }

    /// Network namespace mounts.
    pub fn netns_dir(&self) -> PathBuf {
        self.root.join("netns")
    }

    /// One pod's network namespace.
    pub fn netns(&self, uid: &str) -> PathBuf {
        self.netns_dir().join(uid)
    }

    /// Address allocations.
    pub fn ipam(&self) -> PathBuf {
        self.root.join("ipam")
    }

    /// All logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// One pod's logs.
    pub fn pod_logs(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.logs().join(format!("{namespace}_{name}_{uid}"))
    }

    /// One container run's log file.
    pub fn container_log(&self, namespace: &str, name: &str, uid: &str, container: &str, restart: u32) -> PathBuf {
        self.pod_logs(namespace, name, uid).join(container).join(format!("{restart}.log"))
    }

    /// The serving certificate's directory.
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// Every directory the agent creates at start.
    pub fn all_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.root.clone(),
            self.runc_root(),
            self.containers(),
            self.exits(),
            self.pods(),
            self.netns_dir(),
            self.ipam(),
            self.logs(),
            self.pki(),
        ]
    }
}

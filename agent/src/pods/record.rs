//! What the agent remembers about a pod across restarts (`pods/<uid>/record.json`): its network, and for every
//! container its current run (runc id, pid, shim), how the previous run ended, its restart count and back-off.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::backoff;
use crate::network::PodNet;

/// How a container run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    /// Exit code.
    pub exit_code: i32,
    /// Signal, if one ended it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`, …
    pub reason: String,
    /// Termination message (from the termination-log file) or runc's start error.
    #[serde(default)]
    pub message: Option<String>,
    /// When it started (RFC 3339).
    #[serde(default)]
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    pub finished_at: String,
    /// `runc://<id>`.
    pub container_id: String,
}

/// One run of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// runc id.
    pub id: String,
    /// Which run this is (0 first).
    pub attempt: u32,
    /// Init pid (host namespace).
    pub pid: i32,
    /// Shim pid.
    pub shim_pid: i32,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The image reference it runs.
    pub image: String,
    /// `name@sha256:…`.
    pub image_id: String,
    /// Set when it has ended.
    #[serde(default)]
    pub exit: Option<Termination>,
}

/// A waiting reason to report (`ErrImagePull`, `CreateContainerConfigError`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// One container of the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// Init container.
    #[serde(default)]
    pub init: bool,
    /// Restarts so far.
    #[serde(default)]
    pub restart_count: u32,
    /// The latest run.
    #[serde(default)]
    pub current: Option<Instance>,
    /// How the run before it ended (`lastState`).
    #[serde(default)]
    pub last: Option<Termination>,
    /// Why it is waiting, when it is not running.
    #[serde(default)]
    pub waiting: Option<Waiting>,
    /// Crash back-off.
    #[serde(default)]
    pub backoff: Option<backoff::Entry>,
    /// Image pull back-off and when the last pull failed (RFC 3339).
    #[serde(default)]
    pub pull_backoff: Option<(backoff::Entry, String)>,
    /// Set by a liveness or startup probe failure: the next exit is a restart the agent asked for.
    #[serde(default)]
    pub kill_reason: Option<String>,
}

impl ContainerRecord {
    /// Whether the current run is running.
    pub fn running(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.exit.is_none())
    }

    /// How the current run ended, if it did.
    pub fn exited(&self) -> Option<&Termination> {
        self.current.as_ref().and_then(|c| c.exit.as_ref())
    }

    /// Whether the container (an init container) completed successfully.
    pub fn succeeded(&self) -> bool {
        self.exited().is_some_and(|t| t.exit_code == 0)
    }
}

/// The pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// uid.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its network, once attached.
    #[serde(default)]
    pub net: Option<PodNet>,
    /// When the agent started working on it (`status.startTime`).
    #[serde(default)]
    pub start_time: Option<String>,
    /// Containers by name.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
    /// The pod reached a terminal phase and its sandbox was torn down.
    #[serde(default)]
    pub finished: bool,
    /// The pod comes from a manifest file.
    #[serde(default)]
    pub static_pod: bool,
}

impl PodRecord {
    /// Loads a record.
    pub fn load(path: &Path) -> Option<PodRecord> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Writes it atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, path)
    }

    /// The runc ids of all runs still known (current ones).
    pub fn container_ids(&self) -> Vec<String> {
        self.containers.values().filter_map(|c| c.current.as_ref().map(|i| i.id.clone())).collect()
    }
}

/// The networks of the unfinished pods this node already runs (uid → network), from their records in `pods_dir`.
pub fn existing_networks(pods_dir: &Path) -> Vec<(String, PodNet)> {
    let Ok(entries) = std::fs::read_dir(pods_dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| PodRecord::load(&e.path().join("record.json")))
        .filter(|r| !r.finished)
        .filter_map(|r| r.net.map(|n| (r.uid, n)))
        .collect()
}

/// The runc id of a container run: `<pod uid>-<name>-<attempt>` (the pod uid is its first 36 characters).
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    format!("{uid}-{name}-{attempt}")
}

/// The pod uid a runc id belongs to.
pub fn uid_of(id: &str) -> Option<&str> {
    id.get(..36).filter(|u| u.len() == 36 && id.as_bytes().get(36) == Some(&b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_carry_their_pod_uid() {
        let uid = "0f8b2f3e-7c1a-4e3b-9a43-6c1c5e1b2a11";
        let id = container_id(uid, "web", 3);
        assert_eq!(uid_of(&id), Some(uid));
        assert_eq!(uid_of("short-id"), None);
    }

    #[test]
    fn records_round_trip_through_their_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = PodRecord { uid: "u".into(), namespace: "ns".into(), name: "p".into(), ..Default::default() };
        r.containers.insert("c".into(), ContainerRecord { restart_count: 2, ..Default::default() });
        let p = dir.path().join("record.json");
        r.save(&p).expect("save");
        assert_eq!(PodRecord::load(&p), Some(r));
    }
}

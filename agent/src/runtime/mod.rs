//! The container runtime behind a trait, implemented with runc's CLI.
//!
//! Each container runs under its own small **shim** (a re-execution of the agent's binary, see [`shim`]): the shim
//! starts `runc run --detach`, becomes the container's parent (child subreaper), writes its stdout/stderr to the log
//! file in the CRI format (timestamp, stream, tag) with rotation, and records the exit status in
//! `exits/<id>.json` when the container ends. Because the shim, not the agent, holds the container's pipes and
//! collects its exit status, the agent can be restarted (or killed) without stopping its containers or losing
//! their exit codes: **fail-static**. The agent learns about exits by watching the `exits/` directory ([`exits`]).

pub mod attach;
pub mod exits;
pub mod runc;
pub mod seccomp;
pub mod shim;
pub mod shim_attach;
pub mod spec;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// runc (or the shim) could not be started.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// runc reported a failure.
    #[error("runc {operation} {id}: {message}")]
    Runc {
        /// The subcommand.
        operation: &'static str,
        /// The container.
        id: String,
        /// runc's message.
        message: String,
    },
    /// The container could not be started (bad command, missing binary, …): the message is runc's.
    #[error("{0}")]
    Start(String),
    /// A file of the bundle or the state could not be written or read.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A container to start: its bundle (with `config.json` written) and where its output goes.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// The runc container id.
    pub id: String,
    /// The OCI bundle directory.
    pub bundle: PathBuf,
    /// The CRI-format log file.
    pub log_path: PathBuf,
    /// Keep stdin open for attached sessions (`stdin: true`).
    pub stdin: bool,
    /// Close it after the first session that used it (`stdinOnce: true`).
    pub stdin_once: bool,
    /// Run on a terminal (`tty: true`).
    pub tty: bool,
}

/// A started container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    /// The container's init process (in the host PID namespace).
    pub pid: i32,
    /// Its shim.
    pub shim_pid: i32,
}

/// What runc says about a container.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RuncState {
    /// The id.
    pub id: String,
    /// The init pid (0 when stopped).
    #[serde(default)]
    pub pid: i32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The bundle.
    #[serde(default)]
    pub bundle: String,
}

/// How a container ended, as its shim recorded it in `exits/<id>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// The exit code (128 + signal for a signal, 128 when it never started).
    pub exit_code: i32,
    /// The signal that ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// When (RFC 3339).
    pub finished_at: String,
    /// Set when runc could not start the container: its error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<String>,
}

impl ExitRecord {
    /// Reads an exit record.
    pub fn read(path: &Path) -> Option<ExitRecord> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// A way to run containers.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Starts the container of `spec` under a shim; returns once it runs (or fails to start).
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, RuntimeError>;
    /// The container's state, or `None` if runc does not know it.
    async fn state(&self, id: &str) -> Result<Option<RuncState>, RuntimeError>;
    /// Every container of this agent.
    async fn list(&self) -> Result<Vec<RuncState>, RuntimeError>;
    /// Sends `signal` (e.g. `TERM`, `KILL`) to the container's processes.
    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError>;
    /// Removes the container (killing what is left).
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    /// A command that runs `argv` inside the container (`runc exec`); with `console_socket`, on a terminal whose
    /// master is sent to that socket.
    fn exec(&self, id: &str, argv: &[String], console_socket: Option<&Path>) -> tokio::process::Command;
    /// `runc://<version>`.
    fn version(&self) -> String;
}

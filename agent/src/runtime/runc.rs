//! [`Runtime`] with runc's CLI (one `--root` per agent, so several agents on one machine never see each other's
//! containers) and a shim per container.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;

use super::shim::ShimArgs;
use super::{LaunchSpec, Launched, RuncState, Runtime, RuntimeError};
use crate::config::ShimCommand;

/// runc behind the [`Runtime`] trait.
#[derive(Clone, Debug)]
pub struct Runc {
    runc: PathBuf,
    root: PathBuf,
    shim: ShimCommand,
    exits: PathBuf,
    log_max: u64,
    version: String,
}

impl Runc {
    /// runc at `runc` keeping its state under `root`; shims started with `shim` write exit records to `exits`.
    pub fn new(runc: PathBuf, root: PathBuf, shim: ShimCommand, exits: PathBuf, log_max: u64) -> Self {
        let version = std::process::Command::new(&runc)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.lines().next().and_then(|l| l.split_whitespace().nth(2)).map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        Runc { runc, root, shim, exits, log_max, version }
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.runc);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c
    }

    async fn run(&self, operation: &'static str, id: &str, args: &[&str]) -> Result<Vec<u8>, RuntimeError> {
        let out = self
            .command()
            .args(args)
            .output()
            .await
            .map_err(|source| RuntimeError::Spawn { program: self.runc.display().to_string(), source })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuntimeError::Runc {
                operation,
                id: id.to_string(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

fn missing(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Runc { message, .. } if message.contains("does not exist") || message.contains("not exist"))
}

#[async_trait::async_trait]
impl Runtime for Runc {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, RuntimeError> {
        let args = ShimArgs {
            id: spec.id.clone(),
            bundle: spec.bundle.clone(),
            runc: self.runc.clone(),
            root: self.root.clone(),
            log: spec.log_path.clone(),
            exit: self.exits.join(format!("{}.json", spec.id)),
            log_max: self.log_max,
            stdin: spec.stdin,
            stdin_once: spec.stdin_once,
            tty: spec.tty,
        };
        let _ = std::fs::remove_file(&args.exit);
        let io = |context: String| move |source| RuntimeError::Io { context, source };
        let shim_log = std::fs::File::create(spec.bundle.join("shim.log")).map_err(io("creating shim.log".into()))?;
        let mut child = tokio::process::Command::new(&self.shim.program)
            .args(&self.shim.args)
            .args(args.to_flags())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(shim_log))
            .spawn()
            .map_err(|source| RuntimeError::Spawn { program: self.shim.program.display().to_string(), source })?;
        let shim_pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let stdout = child.stdout.take().ok_or_else(|| RuntimeError::Start("the shim has no stdout".into()))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
        // The shim lives on (it is reaped by tokio's orphan queue when it ends while we still run).
        drop(child);
        let line = match line {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => {
                let log = std::fs::read_to_string(spec.bundle.join("shim.log")).unwrap_or_default();
                return Err(RuntimeError::Start(format!(
                    "the shim ended without starting the container: {}",
                    log.trim()
                )));
            }
            Ok(Err(e)) => return Err(RuntimeError::Start(format!("reading from the shim: {e}"))),
            Err(_) => return Err(RuntimeError::Start("runc did not start the container within 120 s".into())),
        };
        if let Some(pid) = line.strip_prefix("started ") {
            let pid: i32 = pid.trim().parse().map_err(|_| RuntimeError::Start(format!("the shim said {line:?}")))?;
            return Ok(Launched { pid, shim_pid });
        }
        Err(RuntimeError::Start(line.strip_prefix("failed ").unwrap_or(&line).to_string()))
    }

    async fn state(&self, id: &str) -> Result<Option<RuncState>, RuntimeError> {
        match self.run("state", id, &["state", id]).await {
            Ok(out) => serde_json::from_slice(&out).map(Some).map_err(|e| RuntimeError::Runc {
                operation: "state",
                id: id.into(),
                message: e.to_string(),
            }),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<RuncState>, RuntimeError> {
        let out = self.run("list", "", &["list", "--format", "json"]).await?;
        let v: Option<Vec<RuncState>> = serde_json::from_slice(&out).map_err(|e| RuntimeError::Runc {
            operation: "list",
            id: String::new(),
            message: e.to_string(),
        })?;
        Ok(v.unwrap_or_default())
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let args: Vec<&str> =
            if signal == "KILL" { vec!["kill", "--all", id, signal] } else { vec!["kill", id, signal] };
        match self.run("kill", id, &args).await {
            Ok(_) => Ok(()),
            Err(e) if missing(&e) => Ok(()),
            Err(RuntimeError::Runc { message, .. })
                if message.contains("not running") || message.contains("process already finished") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run("delete", id, &["delete", "--force", id]).await {
            Ok(_) => Ok(()),
            Err(e) if missing(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn exec(&self, id: &str, argv: &[String], console_socket: Option<&Path>) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.runc);
        c.arg("--root").arg(&self.root).arg("exec");
        if let Some(sock) = console_socket {
            c.arg("--tty").arg("--console-socket").arg(sock);
        }
        c.arg(id).args(argv);
        c
    }

    fn version(&self) -> String {
        format!("runc://{}", self.version)
    }
}

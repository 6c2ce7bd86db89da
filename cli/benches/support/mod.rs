#![allow(dead_code)]

//! What the `skiff` benches share: a release `skiff server` in its own process, ended (by its pid, through
//! `Child::kill`) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A started `skiff server`.
pub struct Server {
    child: Child,
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Its URL (`https://127.0.0.1:PORT`).
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `skiff server` on a free loopback port with its data in `dir` and `extra` arguments, and waits until
    /// it answers; returns it with a client.
    pub async fn start(dir: &Path, extra: &[&str]) -> (Server, kube::Client) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        // SERVER_WRAP=PROGRAM runs `PROGRAM skiff server …` instead; PROGRAM must exec its arguments (keeping the pid
        // the bench measures and ends), e.g. a script that sets LD_PRELOAD for a heap profiler
        let mut command = match std::env::var_os("SERVER_WRAP") {
            Some(wrap) => {
                let mut c = Command::new(wrap);
                c.arg(env!("CARGO_BIN_EXE_skiff"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_skiff")),
        };
        let child = command
            .args(["server", "--data-dir", &dir.to_string_lossy(), "--listen", &format!("127.0.0.1:{port}")])
            .args(["--log", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("skiff server");
        let server = Server { child, kubeconfig: dir.join("kubeconfig"), url: format!("https://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = skiff_client::connect(&server.kubeconfig).await
                && c.apiserver_version().await.is_ok()
            {
                return (server, c);
            }
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

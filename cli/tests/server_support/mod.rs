//! Helpers of the tests that run `skiff server` as a process: the process ended on drop, a free port.

#![allow(dead_code)]

use std::process::Child;

/// A running `skiff server`, killed (by pid) and reaped when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A client of the server whose admin kubeconfig is `kubeconfig`, once it answers (at most `limit`).
pub async fn connect(kubeconfig: &std::path::Path, limit: std::time::Duration) -> kube::Client {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(c) = skiff_client::connect(kubeconfig).await
            && c.apiserver_version().await.is_ok()
        {
            return c;
        }
        assert!(std::time::Instant::now() < deadline, "{} did not serve within {limit:?}", kubeconfig.display());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs `cmd` (a server expected to refuse to start) until it exits, at most 30 s: its status and stderr.
pub fn exits(mut cmd: std::process::Command) -> (std::process::ExitStatus, String) {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("skiff server starts");
    let mut server = Server(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = server.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status, err);
        }
        assert!(std::time::Instant::now() < deadline, "the server kept running: it was expected to refuse to start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

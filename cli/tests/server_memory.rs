//! `skiff server` runs without transparent huge pages (see `small_pages_only` in `commands/server.rs`): the kernel
//! reports the process's flag in `/proc/PID/status`.

use std::process::{Command, Stdio};
use std::time::Duration;

mod server_support;

use server_support::{Server, connect, free_port};

/// The `THP_enabled` line of a process's status: 1 when huge pages may back its memory, 0 when they may not.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    let line = status.lines().find(|l| l.starts_with("THP_enabled:")).expect("this kernel reports THP_enabled");
    line["THP_enabled:".len()..].trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["server", "--data-dir", &dir.path().to_string_lossy()])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("skiff server starts"),
    );
    // this test's own process is the control: the flag must be the server's, not inherited from here. Where the
    // test itself runs with huge pages off (a parent set the flag, or a kernel without them) it cannot tell, and
    // fails rather than pass without having looked.
    assert_eq!(
        thp_enabled(std::process::id()),
        "1",
        "huge pages are off for the test itself: run it where a process may have them"
    );
    connect(&dir.path().join("kubeconfig"), Duration::from_secs(30)).await;
    assert_eq!(thp_enabled(server.0.id()), "0", "the serving server may use transparent huge pages");
}

//! Learning that containers ended: shims rename `exits/<id>.json` into place, and one inotify watch on that
//! directory turns each into the container id. Records written while the agent was down are found by listing the
//! directory at start ([`pending`]).

use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;

/// The container id of an exit record's file name.
pub fn id_of(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(".json").filter(|id| !id.is_empty() && !id.starts_with('.'))
}

/// Watches `dir` and sends the id of every container whose exit record appears. A thread blocks on the inotify
/// descriptor (one per agent); it ends when the receiver is dropped and the next event arrives.
pub fn watch(dir: &Path) -> std::io::Result<mpsc::UnboundedReceiver<String>> {
    let ino = Inotify::init(InitFlags::IN_CLOEXEC)?;
    ino.add_watch(dir, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE)?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new().name("exit-watch".into()).spawn(move || {
        loop {
            match ino.read_events() {
                Ok(events) => {
                    for ev in events {
                        if let Some(id) = ev.name.as_ref().and_then(|n| n.to_str()).and_then(id_of)
                            && tx.send(id.to_string()).is_err()
                        {
                            return;
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "reading exit notifications failed");
                    return;
                }
            }
        }
    })?;
    Ok(rx)
}

/// The ids of the exit records already in `dir`.
pub fn pending(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter_map(|e| e.file_name().to_str().and_then(id_of).map(str::to_string)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_records_name_a_container() {
        assert_eq!(id_of("abc.json"), Some("abc"));
        assert_eq!(id_of("abc.tmp"), None);
        assert_eq!(id_of(".json"), None);
    }

    #[tokio::test]
    async fn a_renamed_record_is_reported_by_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rx = watch(dir.path()).expect("watch");
        std::fs::write(dir.path().join("c1.tmp"), "{}").expect("write");
        std::fs::rename(dir.path().join("c1.tmp"), dir.path().join("c1.json")).expect("rename");
        let id = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.expect("in time");
        assert_eq!(id.as_deref(), Some("c1"));
        assert_eq!(pending(dir.path()), vec!["c1".to_string()]);
    }
}

//! Network namespaces kept alive by a bind mount on a file (as `ip netns add` does, but under the agent's data
//! directory), created on a short-lived thread so no other thread changes namespace.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// The magic number of nsfs (`statfs` of a namespace bind mount).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Creates a new network namespace and binds it at `path`.
pub fn create(path: &Path) -> std::io::Result<()> {
    if is_namespace(path) {
        return Ok(());
    }
    File::create(path)?;
    let target: PathBuf = path.to_path_buf();
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Whether `path` is a bound namespace.
pub fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// Unbinds and removes `path` (the namespace goes away with its last process).
pub fn remove(path: &Path) -> std::io::Result<()> {
    if is_namespace(path) {
        umount2(path, MntFlags::MNT_DETACH)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs `f` on a thread inside the namespace at `path` and returns its result (for creating netlink sockets there).
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = File::open(path)?;
    // Sockets made on the thread (netlink) register with the caller's tokio reactor, if there is one.
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET)?;
        let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

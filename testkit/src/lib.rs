//! Guards for privileged tests (network namespaces, veth links and bridges, cgroup-v2 groups, child processes,
//! bpffs pin directories), each removed on drop — also when the test fails — and a small network probe that tests
//! run inside those namespaces.
//!
//! Everything a test creates gets a unique name (`<prefix>-<pid>-<n>`), so tests can run in parallel, and nothing
//! outside what the test created is ever touched: processes are ended by pid, and only the ones the test started.
//!
//! ```no_run
//! use skiff_testkit::{NetNs, require_privileges};
//! if !require_privileges("my test") { return; }
//! let ns = NetNs::new("demo").expect("netns");
//! ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
//! ```
#![deny(missing_docs)]

mod cgroup;
mod child;
pub mod cluster;
pub mod etcd;
mod netns;
mod pins;
mod privileges;
pub mod probe;
pub mod registry;

pub use cgroup::{CGROUP2_ROOT, Cgroup};
pub use child::{Child, spawn_in};
pub use netns::{NetNs, bridge, veth};
pub use pins::PinDir;
pub use privileges::{is_ci, require_privileges};

use std::sync::atomic::{AtomicU32, Ordering};

/// A name unique to this process: `<prefix>-<pid>-<n>`, short enough for interface names when `prefix` is.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id() % 100_000)
}

/// The path of a fixed kubectl version (`"1.31"`), installed beside the `kubectl` dispatcher on these machines.
pub fn kubectl_version(minor: &str) -> std::path::PathBuf {
    let dispatcher = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("kubectl")).find(|k| k.exists()))
        .expect("kubectl is on PATH");
    let dir = std::fs::canonicalize(&dispatcher).expect("kubectl resolves").parent().expect("a directory").to_owned();
    let versioned = dir.join(format!("kubectl.{minor}"));
    assert!(versioned.exists(), "{} is installed", versioned.display());
    versioned
}

/// Runs a command to completion and turns a failure into an error that includes its stderr.
pub fn run(cmd: &mut std::process::Command) -> std::io::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

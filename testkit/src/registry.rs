//! An OCI registry for tests: Debian's `docker-registry` on 127.0.0.1:5000 of a network namespace, storing under a
//! directory the test owns, optionally behind htpasswd authentication.

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::{Child, NetNs};

/// Starts the registry in `ns`, storing under `dir/data` (its config is written to `dir/registry.yml`), behind the
/// htpasswd file `htpasswd` when given; returns once it answers HTTP (any answer: 401 behind authentication), or an
/// error after 10 s.
pub fn start(ns: &NetNs, dir: &Path, htpasswd: Option<&Path>) -> io::Result<Child> {
    let auth = htpasswd
        .map(|p| format!("auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n", p.display()))
        .unwrap_or_default();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n{auth}",
            dir.join("data").display()
        ),
    )?;
    let mut cmd = ns.command("docker-registry");
    cmd.arg("serve").arg(&config);
    let registry = Child::spawn(cmd, "docker-registry")
        .map_err(|e| io::Error::new(e.kind(), format!("docker-registry (install it with scripts/setup): {e}")))?;
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        ns.exec("curl", &["-s", "-o", "/dev/null", "http://127.0.0.1:5000/v2/"]).is_ok()
    });
    if !up {
        return Err(io::Error::other("the registry did not answer within 10 s"));
    }
    Ok(registry)
}

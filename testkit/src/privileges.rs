//! Deciding whether a privileged test can run.

/// Whether the environment says this is CI (`CI=true`).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether a privileged test (`what`) can run: true as root. Otherwise it panics when `CI=true` (privileged tests
/// must fail, not skip, in CI) and prints why it is skipped and returns false elsewhere.
pub fn require_privileges(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if is_ci() {
        panic!("{what} needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF); CI=true, so this fails instead of skipping");
    }
    eprintln!("skipping {what}: needs root (run as root, or set CI=true to make this a failure)");
    false
}

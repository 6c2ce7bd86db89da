//! Certificates that last (issue 14): a server whose serving and admin certificates expired (made by a clock three
//! years back) renews them at start with the same CA and keeps serving kubectl; `skiff certs check` tells what is
//! due; `skiff certs rotate` renews them on demand.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod server_support;

use server_support::{Server, free_port};

fn skiff(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff")).args(args).output().expect("skiff runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn kubectl_ok(dir: &Path) -> bool {
    Command::new("kubectl")
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("namespace/default"))
}

fn start(dir: &Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--data-dir", &dir.to_string_lossy(), "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("skiff server starts");
    let s = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubectl_ok(dir) {
        assert!(Instant::now() < deadline, "kubectl is not served within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    s
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("a certificate file")
}

#[test]
fn expired_certificates_are_renewed_with_the_same_ca() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let pki = dir.join("pki");
    let three_years_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 365 * 3);
    skiff_control::pki::Pki::load_or_create_at(&pki, &["127.0.0.1".into()], three_years_ago).expect("an old PKI");
    let (ca, old_server, old_admin) =
        (read(&pki.join("ca.crt")), read(&pki.join("apiserver.crt")), read(&pki.join("admin.crt")));
    let (ok, out) = skiff(&["certs", "check", "--data-dir", &dir.to_string_lossy()]);
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l.starts_with("apiserver") && l.ends_with("EXPIRED")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("ca") && l.ends_with("ok")), "{out}");

    let port = free_port();
    let s = start(dir, port);
    assert_eq!(read(&pki.join("ca.crt")), ca, "the CA is kept");
    assert_ne!(read(&pki.join("apiserver.crt")), old_server, "the serving certificate was renewed");
    assert_ne!(read(&pki.join("admin.crt")), old_admin, "the admin certificate was renewed");
    let (_, out) = skiff(&["certs", "check", "--data-dir", &dir.to_string_lossy()]);
    assert!(out.lines().all(|l| l.ends_with("ok")), "{out}");
    drop(s);

    // on demand: new certificates again, and the server serves them
    let before = read(&pki.join("apiserver.crt"));
    let (ok, out) = skiff(&["certs", "rotate", "--data-dir", &dir.to_string_lossy()]);
    assert!(ok && out.contains("renewed"), "{out}");
    assert_ne!(read(&pki.join("apiserver.crt")), before);
    assert_eq!(read(&pki.join("ca.crt")), ca);
    let _s = start(dir, port);
}

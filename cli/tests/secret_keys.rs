//! Secret encryption keys (issue 14): `skiff secrets rotate-key` re-encrypts every Secret with a new key and the
//! server still reads them; the keys are kept in the cluster's record in the datastore too (sealed under the server
//! token, issue 15), so a lost key file comes back from it; a server without the token refuses to start (instead of
//! making a new key and serving Secrets it cannot read).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod server_support;

use server_support::{Server, free_port};

fn server(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["server", "--data-dir", &dir.to_string_lossy(), "--listen", &format!("127.0.0.1:{port}")]);
    cmd
}

fn start(dir: &Path, port: u16) -> Server {
    start_with(dir, port, &[])
}

fn start_with(dir: &Path, port: u16, args: &[&str]) -> Server {
    let child =
        server(dir, port).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("skiff server starts");
    let s = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while kubectl(dir, &["get", "--raw", "/readyz"]).is_err() {
        assert!(Instant::now() < deadline, "the server did not come up within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    s
}

fn kubectl(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out =
        Command::new("kubectl").env("KUBECONFIG", dir.join("kubeconfig")).args(args).output().expect("kubectl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn secret_value(dir: &Path, name: &str) -> String {
    kubectl(dir, &["get", "secret", name, "-o", "jsonpath={.data.v}"]).expect("the secret reads")
}

fn key_names(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("pki/encryption-keys")).expect("the key file");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

fn database_holds(dir: &Path, needle: &str) -> bool {
    ["state.db", "state.db-wal"]
        .iter()
        .any(|f| std::fs::read(dir.join(f)).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())))
}

#[test]
fn keys_rotate_and_a_lost_key_stops_the_server() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let port = free_port();
    let s = start(dir, port);
    for i in 0..5 {
        kubectl(dir, &["create", "secret", "generic", &format!("s{i}"), &format!("--from-literal=v=plain-value-{i}")])
            .expect("created");
    }
    let before = key_names(dir);
    assert_eq!(before.len(), 1);
    drop(s);

    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["secrets", "rotate-key", "--data-dir", &dir.to_string_lossy()])
        .output()
        .expect("rotate-key runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let after = key_names(dir);
    assert_eq!(after.len(), 2, "the new key first, the old one kept: {after:?}");
    assert_eq!(after[1], before[0]);
    assert!(said.contains(&format!("new encryption key {:?}", after[0])), "{said}");
    assert!(said.contains("Secrets re-encrypted"), "{said}");
    assert!(
        !database_holds(dir, "plain-value-3") && !database_holds(dir, "cGxhaW4tdmFsdWUtMw"),
        "no plain text at rest"
    );
    assert!(database_holds(dir, &format!("k8s:enc:aesgcm:v2:{}:", after[0])), "values sealed with the new key");

    // the rotated Secrets read back
    let s = start(dir, port);
    assert_eq!(secret_value(dir, "s3"), "cGxhaW4tdmFsdWUtMw==");
    drop(s);
    // the cluster's record in the datastore holds both keys: one dropped from the file by hand comes back
    let keys = std::fs::read_to_string(dir.join("pki/encryption-keys")).expect("keys");
    let only_new: String = keys.lines().filter(|l| !l.starts_with(&before[0])).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("pki/encryption-keys"), &only_new).expect("dropping the old key");
    let s = start(dir, port);
    assert_eq!(key_names(dir), after, "the record's keys, in its order");
    assert_eq!(secret_value(dir, "s0"), "cGxhaW4tdmFsdWUtMA==");
    drop(s);

    // a lost key file is restored from the record (sealed under the server token)
    std::fs::remove_file(dir.join("pki/encryption-keys")).expect("losing the key file");
    let s = start(dir, port);
    assert_eq!(key_names(dir), after);
    assert_eq!(secret_value(dir, "s1"), "cGxhaW4tdmFsdWUtMQ==");
    drop(s);

    // lost with the token too: the server refuses to start, says why, and leaves no new key behind
    let token = std::fs::read(dir.join("pki/server-token")).expect("token");
    std::fs::remove_file(dir.join("pki/server-token")).expect("losing the token");
    std::fs::remove_file(dir.join("pki/encryption-keys")).expect("losing the key file");
    let (status, err) = server_support::exits(server(dir, port));
    assert!(!status.success(), "the server must not start: {err}");
    assert!(err.contains("--token") && err.contains("server-token"), "{err}");
    assert!(!dir.join("pki/encryption-keys").exists(), "no new key was made");
    // a wrong token is refused the same way
    let mut guessed = server(dir, port);
    guessed.args(["--token", "guessed"]);
    let (status, err) = server_support::exits(guessed);
    assert!(!status.success() && err.contains("not this one"), "{err}");
    assert!(!dir.join("pki/encryption-keys").exists(), "no new key was made");
    // the right token, given on the command line, restores the keys (and the token file)
    let token = String::from_utf8(token).expect("utf-8");
    let _s = start_with(dir, port, &["--token", token.trim()]);
    assert_eq!(secret_value(dir, "s4"), "cGxhaW4tdmFsdWUtNA==");
    assert_eq!(std::fs::read_to_string(dir.join("pki/server-token")).expect("token").trim(), token.trim());
}

fn secrets(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("secrets")
        .args(args)
        .args(["--data-dir", &dir.to_string_lossy()])
        .output()
        .expect("skiff secrets runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_old_key_retires_after_a_rotation_and_the_server_token_rotates() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let port = free_port();
    let s = start(dir, port);
    kubectl(dir, &["create", "secret", "generic", "db", "--from-literal=v=retire-me"]).expect("created");
    drop(s);
    let first = key_names(dir);
    // the only key seals the Secret: refused, and nothing changes
    let (ok, said) = secrets(dir, &["retire-key", &first[0]]);
    assert!(!ok && said.contains("rotate-key"), "{said}");
    let (ok, said) = secrets(dir, &["rotate-key"]);
    assert!(ok, "{said}");
    let keys = key_names(dir);
    assert_eq!(keys.len(), 2);
    // the new key seals now: refused; an unknown key: refused
    let (ok, said) = secrets(dir, &["retire-key", &keys[0]]);
    assert!(!ok && said.contains("sealed with now"), "{said}");
    let (ok, said) = secrets(dir, &["retire-key", "no-such-key"]);
    assert!(!ok && said.contains("no encryption key"), "{said}");
    // the old one, which no Secret uses any more after the rotation, goes
    let file = dir.join("pki/encryption-keys");
    let before = std::fs::read_to_string(&file).expect("keys");
    let old_line = before.lines().find(|l| l.starts_with(&format!("{} ", first[0]))).expect("the old key's line");
    let (ok, said) = secrets(dir, &["retire-key", &first[0]]);
    assert!(ok, "{said}");
    assert_eq!(key_names(dir), keys[..1], "the key file keeps only the new key");
    // a server whose file still has the retired key (a backup restored, a server stopped before) drops it
    let text = std::fs::read_to_string(&file).expect("keys");
    std::fs::write(&file, format!("{text}{old_line}\n")).expect("adding it back");
    let s = start(dir, port);
    assert_eq!(key_names(dir), keys[..1], "the retired key stays retired");
    assert_eq!(secret_value(dir, "db"), "cmV0aXJlLW1l");
    drop(s);

    // the server token rotates: the old one opens nothing any more, the new one (in the token file) does
    let old = std::fs::read_to_string(dir.join("pki/server-token")).expect("token").trim().to_string();
    let (ok, said) = secrets(dir, &["rotate-token", "--new-token", &old]);
    assert!(!ok && said.contains("is the current one"), "{said}");
    let (ok, said) = secrets(dir, &["rotate-token"]);
    assert!(ok, "{said}");
    let new = std::fs::read_to_string(dir.join("pki/server-token")).expect("token").trim().to_string();
    assert_ne!(new, old);
    assert!(said.contains(&format!("--token {new}")), "the generated token is printed: {said}");
    assert!(!dir.join("pki/server-token.new").exists());
    let mut refused = server(dir, port);
    refused.args(["--token", &old]);
    let (status, err) = server_support::exits(refused);
    assert!(!status.success() && err.contains("not this one"), "the old token is refused: {err}");
    let _s = start_with(dir, port, &["--token", &new]);
    assert_eq!(secret_value(dir, "db"), "cmV0aXJlLW1l");
}

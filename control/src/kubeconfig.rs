//! kubeconfig files: what kubectl (and kube-rs) need to reach the cluster with a client certificate or a token.

use base64::Engine;
use serde_json::json;

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone)]
pub enum Credential<'a> {
    /// A client certificate and its key (PEM).
    ClientCert {
        /// Certificate.
        cert_pem: &'a str,
        /// Key.
        key_pem: &'a str,
    },
    /// A bearer token.
    Token(&'a str),
}

/// Renders a kubeconfig for `server` (an `https://` URL) trusting `ca_pem`.
pub fn render(cluster: &str, server: &str, ca_pem: &str, user: &str, cred: Credential<'_>) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user_entry = match cred {
        Credential::ClientCert { cert_pem, key_pem } => {
            json!({"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)})
        }
        Credential::Token(t) => json!({"token": t}),
    };
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user, "namespace": "default"}}],
        "current-context": cluster,
        "preferences": {},
    });
    skiff_api::yaml::to_yaml(&doc).unwrap_or_else(|_| doc.to_string())
}

/// Writes a kubeconfig file readable only by its owner.
pub fn write(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

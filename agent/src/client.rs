//! The agent's API client: `--server URL --token T --ca-cert FILE`, as a kube-rs client.

use crate::AgentError;

/// The kubeconfig text for a bearer-token client of `server` trusting `ca_pem`.
pub fn kubeconfig_yaml(server: &str, token: &str, ca_pem: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    // serde_json output is valid YAML (flow style) and quotes every string safely.
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "skiff", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "node", "user": {"token": token}}],
        "contexts": [{"name": "node", "context": {"cluster": "skiff", "user": "node"}}],
        "current-context": "node",
    })
    .to_string()
}

/// A client that authenticates with the node bootstrap token and verifies the server against the cluster CA.
pub async fn connect(server: &str, token: &str, ca_pem: &str) -> Result<kube::Client, AgentError> {
    skiff_client::install_crypto_provider();
    let text = kubeconfig_yaml(server, token, ca_pem);
    let bad = |e: kube::config::KubeconfigError| AgentError::Config(format!("client configuration: {e}"));
    let kc = kube::config::Kubeconfig::from_yaml(&text).map_err(bad)?;
    let cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.map_err(bad)?;
    skiff_client::connection::client(cfg).map_err(AgentError::api("building the API client"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_carries_the_server_token_and_ca() {
        let text = kubeconfig_yaml("https://10.0.0.2:6443", "skiff-node.abc", "-----BEGIN CERTIFICATE-----\n");
        let kc = kube::config::Kubeconfig::from_yaml(&text).expect("parses");
        assert_eq!(
            kc.clusters[0].cluster.as_ref().and_then(|c| c.server.clone()).as_deref(),
            Some("https://10.0.0.2:6443")
        );
        assert_eq!(kc.current_context.as_deref(), Some("node"));
    }
}

//! CertificateSigningRequests (certificates.k8s.io/v1), as pure functions: reading a PEM request
//! ([`request`]), deciding whether the server approves one by itself ([`approve`]) and signing an approved one with
//! the cluster CA ([`sign`]). The API server's admission and the CSR controller are thin layers over these.
//!
//! Two signers are served: `kubernetes.io/kube-apiserver-client-kubelet` (node client certificates: CN
//! `system:node:NAME`, O `system:nodes`, client auth only, no subject alternative names) and
//! `kubernetes.io/kube-apiserver-client` (any client certificate, approved by a person). Node agents bootstrap
//! with the join token (group `system:bootstrappers`, which may only create CSRs) and renew with their own
//! certificate, both approved automatically when RBAC allows `create` on `certificatesigningrequests/nodeclient`
//! (bootstrap) or `…/selfnodeclient` (renewal), as kube-controller-manager's approver does.

pub mod approve;
pub mod request;
pub mod sign;

/// The signer of node client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of other client certificates.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The group nodes' certificates name.
pub const NODES_GROUP: &str = "system:nodes";
/// The prefix of a node's user name.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The group the join token authenticates as.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";

/// The signers this server signs for.
pub fn is_served_signer(signer: &str) -> bool {
    signer == KUBELET_CLIENT_SIGNER || signer == CLIENT_SIGNER
}

/// Whether a CSR has the condition `kind` with status `True` (in `status.conditions`).
pub fn has_condition(csr: &serde_json::Value, kind: &str) -> bool {
    csr.pointer("/status/conditions").and_then(serde_json::Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.get("type").and_then(serde_json::Value::as_str) == Some(kind)
                && c.get("status").and_then(serde_json::Value::as_str) == Some("True")
        })
    })
}

//! Which requests the server approves by itself: node client certificates that name exactly a node, asked for by
//! a bootstrapping node or by that node itself, as kube-controller-manager's `csrapproving` controller decides
//! (the RBAC question it then asks is the caller's: [`auto_approval`] returns it, the controller asks it).

use super::request::Request;
use super::{KUBELET_CLIENT_SIGNER, NODE_USER_PREFIX, NODES_GROUP};

/// Key usages a client certificate may ask for; `client auth` is required.
pub const CLIENT_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

/// Checks a request against the rules of the node client signer: subject `system:node:NAME` in exactly the group
/// `system:nodes`, no alternative names, not a CA, client usages only.
pub fn check_node_client(req: &Request, usages: &[String]) -> Result<(), String> {
    let node = req.common_name.strip_prefix(NODE_USER_PREFIX).unwrap_or_default();
    if node.is_empty() {
        return Err(format!(
            "the subject's common name must be {NODE_USER_PREFIX}<node name>, not {:?}",
            req.common_name
        ));
    }
    if req.organizations != [NODES_GROUP] {
        return Err(format!("the subject's organization must be exactly [{NODES_GROUP}], not {:?}", req.organizations));
    }
    if !req.alt_names.is_empty() {
        return Err(format!("a node client certificate may not have subject alternative names: {:?}", req.alt_names));
    }
    if req.wants_ca {
        return Err("a node client certificate may not be a CA".into());
    }
    check_client_usages(usages)
}

/// Checks that `usages` are client usages only and include `client auth`.
pub fn check_client_usages(usages: &[String]) -> Result<(), String> {
    if let Some(u) = usages.iter().find(|u| !CLIENT_USAGES.contains(&u.as_str())) {
        return Err(format!("usage {u:?} is not allowed for a client certificate (allowed: {CLIENT_USAGES:?})"));
    }
    if !usages.iter().any(|u| u == "client auth") {
        return Err("a client certificate must have the usage \"client auth\"".into());
    }
    Ok(())
}

/// The `certificatesigningrequests` subresource the requester must be allowed to `create` for the server to approve
/// this request by itself: `selfnodeclient` when a node renews its own certificate, `nodeclient` when someone
/// (a bootstrapping node) asks for a node's; `None` when it is not a node client request (a person approves it).
pub fn auto_approval(signer: &str, usages: &[String], requester: &str, req: &Request) -> Option<&'static str> {
    if signer != KUBELET_CLIENT_SIGNER || check_node_client(req, usages).is_err() {
        return None;
    }
    Some(if requester == req.common_name { "selfnodeclient" } else { "nodeclient" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cn: &str, orgs: &[&str]) -> Request {
        Request {
            common_name: cn.into(),
            organizations: orgs.iter().map(|s| s.to_string()).collect(),
            ..Request::default()
        }
    }

    fn usages(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn node_client_requests_are_approved_by_the_rbac_question_that_fits_the_requester() {
        let node = req("system:node:n1", &["system:nodes"]);
        let u = usages(&["digital signature", "client auth"]);
        assert_eq!(auto_approval(KUBELET_CLIENT_SIGNER, &u, "system:bootstrap:skiff", &node), Some("nodeclient"));
        assert_eq!(auto_approval(KUBELET_CLIENT_SIGNER, &u, "system:node:n1", &node), Some("selfnodeclient"));
        assert_eq!(auto_approval(KUBELET_CLIENT_SIGNER, &u, "system:node:n2", &node), Some("nodeclient"));
        assert_eq!(
            auto_approval(super::super::CLIENT_SIGNER, &u, "system:node:n1", &node),
            None,
            "other signers: a person"
        );
    }

    #[test]
    fn anything_beyond_a_plain_node_client_certificate_is_left_to_a_person() {
        let u = usages(&["client auth"]);
        let cases = [
            (req("system:node:", &["system:nodes"]), u.clone()),
            (req("admin", &["system:nodes"]), u.clone()),
            (req("system:node:n1", &["system:nodes", "system:masters"]), u.clone()),
            (req("system:node:n1", &[]), u.clone()),
            (Request { alt_names: vec!["DNS:n1".into()], ..req("system:node:n1", &["system:nodes"]) }, u.clone()),
            (Request { wants_ca: true, ..req("system:node:n1", &["system:nodes"]) }, u.clone()),
            (req("system:node:n1", &["system:nodes"]), usages(&["server auth"])),
            (req("system:node:n1", &["system:nodes"]), usages(&["client auth", "cert sign"])),
            (req("system:node:n1", &["system:nodes"]), usages(&["digital signature"])),
        ];
        for (r, u) in cases {
            assert_eq!(auto_approval(KUBELET_CLIENT_SIGNER, &u, "system:bootstrap:skiff", &r), None, "{r:?} {u:?}");
        }
    }
}

//! The CSR approver and signer, inside the API server process (kube-controller-manager's `csrapproving` and
//! `csrsigning`): node client requests are approved when the requester may `create` the
//! `certificatesigningrequests/nodeclient` (bootstrap) or `…/selfnodeclient` (renewal) subresource; approved
//! requests for the served signers are signed with the cluster CA. Every CSR write wakes it; it also looks every
//! 30 s. Decisions are [`crate::certificates`]'s; this is the I/O around them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use skiff_api::selector::Selector;

use crate::apiserver::Api;
use crate::apiserver::auth::User;
use crate::apiserver::csr::{self, GROUP};
use crate::apiserver::error::ApiResult;
use crate::apiserver::writes::DeleteOptions;
use crate::certificates::{self, approve, request, sign};
use crate::pki::CertPair;
use crate::rbac::{self, attributes::Attributes};

/// The longest certificate the signer issues (kube-controller-manager's `--cluster-signing-duration` default).
pub const MAX_SECONDS: i64 = 365 * 24 * 3600;

const MANAGER: &str = "certificate-controller";

/// What one pass decided for one CSR.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to do (decided and signed, denied, failed, another signer's, or waiting for a person).
    Nothing,
    /// Approve it; the requester may ask for this kind of certificate (the RBAC subresource it was checked on).
    Approve(&'static str),
    /// Sign it.
    Sign,
    /// Mark it failed with this message.
    Fail(String),
}

/// Decides what to do with `csr`; `may` answers whether the requester may `create` a subresource of
/// `certificatesigningrequests` (the RBAC question of auto-approval), `registered` whether a Node of that name runs
/// with its own certificate already. The join token is shared by every node, so it bootstraps only names no such
/// node has: a node that has joined renews with its own certificate, and asking anew for its name (a rebuilt
/// machine, or a node trying to become another) waits for a person.
pub fn plan(csr: &Value, may: impl Fn(&User, &str) -> bool, registered: impl Fn(&str) -> bool) -> Step {
    let signer = csr::signer(csr);
    let done = csr.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
    if done || !certificates::is_served_signer(signer) {
        return Step::Nothing;
    }
    if certificates::has_condition(csr, "Denied") || certificates::has_condition(csr, "Failed") {
        return Step::Nothing;
    }
    if certificates::has_condition(csr, "Approved") {
        return Step::Sign;
    }
    let req = match csr::request_pem(csr).and_then(|pem| request::parse(&pem)) {
        Ok(r) => r,
        Err(e) => return Step::Fail(e),
    };
    let requester = User {
        name: csr.pointer("/spec/username").and_then(Value::as_str).unwrap_or_default().to_string(),
        groups: csr
            .pointer("/spec/groups")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default(),
    };
    let node = req.common_name.strip_prefix(certificates::NODE_USER_PREFIX).unwrap_or_default();
    match approve::auto_approval(signer, &csr::usages(csr), &requester.name, &req) {
        Some("nodeclient") if registered(node) => Step::Nothing,
        Some(sub) if may(&requester, sub) => Step::Approve(sub),
        _ => Step::Nothing,
    }
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    let now = crate::apiserver::managed::now();
    json!({"type": kind, "status": "True", "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now})
}

/// One pass over every CSR.
pub async fn pass(api: &Arc<Api>, ca: &CertPair) -> ApiResult<()> {
    let info = api.builtin(GROUP, "certificatesigningrequests");
    let policy = api.policy().await?;
    let may = |u: &User, sub: &str| {
        let attrs = Attributes::subresource("create", GROUP, "certificatesigningrequests", sub, "", "");
        rbac::decide(&policy, u, &attrs).allowed
    };
    // names whose agent already runs with its own certificate (an older agent's Node may bootstrap once)
    let mut nodes: std::collections::HashSet<String> = api
        .list_all(&api.builtin("", "nodes"), None, Selector::everything())
        .await?
        .iter()
        .filter(|n| {
            n.pointer("/metadata/annotations")
                .and_then(|a| a.get(skiff_client::identity::NODE_CERTIFICATE_ANNOTATION))
                .is_some()
        })
        .map(|n| skiff_api::meta::name(n).to_string())
        .collect();
    let now = jiff::Timestamp::now().as_second();
    for c in api.list_all(&info, None, Selector::everything()).await? {
        let name = skiff_api::meta::name(&c).to_string();
        if expired(&c, now) {
            if let Err(e) = api.delete(&info, None, &name, &DeleteOptions::default()).await {
                tracing::debug!(csr = %name, error = %e, "removing an old certificate request failed");
            }
            continue;
        }
        let step = plan(&c, may, |n: &str| nodes.contains(n));
        // a name the token bootstraps is taken for the rest of the pass: two requests for it are not both approved
        if step == Step::Approve("nodeclient")
            && let Some(n) = csr::request_pem(&c)
                .ok()
                .and_then(|p| request::parse(&p).ok())
                .and_then(|r| r.common_name.strip_prefix(certificates::NODE_USER_PREFIX).map(str::to_string))
        {
            nodes.insert(n);
        }
        // one request's failure does not hold up the others
        if let Err(e) = act(api, &info, ca, &c, step).await {
            tracing::debug!(csr = %name, error = %e, "acting on a certificate request failed; next pass");
        }
    }
    Ok(())
}

/// How long requests are kept, as kube-controller-manager's CSR cleaner: decided ones an hour, pending ones a day.
const KEEP_DECIDED: i64 = 3600;
const KEEP_PENDING: i64 = 24 * 3600;

/// Whether `csr` is old enough to be removed at `now`.
pub fn expired(csr: &Value, now: i64) -> bool {
    let created = csr
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(now, |t| t.as_second());
    let decided = ["Approved", "Denied", "Failed"].iter().any(|k| certificates::has_condition(csr, k));
    now - created > if decided { KEEP_DECIDED } else { KEEP_PENDING }
}

async fn act(
    api: &Arc<Api>,
    info: &Arc<skiff_api::registry::ResourceInfo>,
    ca: &CertPair,
    c: &Value,
    step: Step,
) -> ApiResult<()> {
    let name = skiff_api::meta::name(c).to_string();
    match step {
        Step::Nothing => {}
        Step::Approve(sub) => {
            let message = format!("Auto approving node client certificate after SubjectAccessReview ({sub}).");
            let approved = condition("Approved", "AutoApproved", &message);
            api.update_with(info, None, &name, Some("approval"), MANAGER, |o| {
                push_condition(o, approved.clone());
                true
            })
            .await?;
            tracing::info!(csr = %name, "approved a node client certificate request");
        }
        Step::Sign => {
            let pem = csr::request_pem(c).map(|p| String::from_utf8_lossy(&p).into_owned()).unwrap_or_default();
            let usages = csr::usages(c);
            let r = sign::SignRequest {
                request_pem: &pem,
                signer: csr::signer(c),
                usages: &usages,
                expiration_seconds: c.pointer("/spec/expirationSeconds").and_then(Value::as_i64),
            };
            match sign::sign(&r, &ca.cert_pem, &ca.key_pem, MAX_SECONDS, jiff::Timestamp::now().as_second()) {
                Ok(cert) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(cert);
                    api.update_with(info, None, &name, Some("status"), MANAGER, |o| {
                        if !o.get("status").is_some_and(Value::is_object) {
                            o["status"] = json!({});
                        }
                        o["status"]["certificate"] = json!(b64);
                        true
                    })
                    .await?;
                    tracing::info!(csr = %name, "signed a certificate request");
                }
                Err(e) => fail(api, info, &name, &e).await?,
            }
        }
        Step::Fail(e) => fail(api, info, &name, &e).await?,
    }
    Ok(())
}

fn push_condition(o: &mut Value, c: Value) {
    if !o.get("status").is_some_and(Value::is_object) {
        o["status"] = json!({});
    }
    match o["status"].get_mut("conditions").and_then(Value::as_array_mut) {
        Some(cs) => cs.push(c),
        None => o["status"]["conditions"] = json!([c]),
    }
}

async fn fail(
    api: &Arc<Api>,
    info: &Arc<skiff_api::registry::ResourceInfo>,
    name: &str,
    message: &str,
) -> ApiResult<()> {
    tracing::info!(csr = %name, %message, "a certificate request failed");
    let failed = condition("Failed", "SignerValidationFailure", message);
    api.update_with(info, None, name, Some("status"), MANAGER, |o| {
        push_condition(o, failed.clone());
        true
    })
    .await?;
    Ok(())
}

/// Approves and signs as requests come — written through this server (woken at once) or through another one of the
/// cluster (seen on this server's watch of the requests) — and every 30 s in any case; runs forever.
pub async fn run(api: Arc<Api>, ca: CertPair) {
    let prefix = api.builtin("certificates.k8s.io", "certificatesigningrequests").storage_prefix();
    let mut changes = None;
    loop {
        // the watch opens before the pass reads, so a request written meanwhile wakes the next one
        if changes.is_none() {
            changes = watch_requests(&api, &prefix).await;
        }
        if let Err(e) = pass(&api, &ca).await {
            tracing::debug!(error = %e, "certificate controller pass failed");
        }
        tokio::select! {
            _ = api.csr_changed.notified() => {}
            more = next_change(&mut changes) => {
                if !more {
                    changes = None;
                    tokio::time::sleep(Duration::from_secs(1)).await; // a watch that keeps ending is not a busy loop
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// The store's changes of certificate requests from now on (through the watch cache), if the watch opens.
async fn watch_requests(api: &Api, prefix: &str) -> Option<crate::storage::watch_cache::ChangeStream> {
    let now = api.store.revision().await.ok()?;
    match api.watch_cache.watch(prefix, prefix, now, None).await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!(error = %e, "watching certificate requests failed");
            None
        }
    }
}

/// Waits for the next change on `changes` (forever when there is no watch); false once the watch ended.
async fn next_change(changes: &mut Option<crate::storage::watch_cache::ChangeStream>) -> bool {
    use futures::StreamExt as _;
    match changes {
        Some(w) => matches!(w.next().await, Some(Ok(_))),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificates::request::tests::make;

    fn csr(cn: &str, orgs: &[&str], requester: &str, signer: &str) -> Value {
        let (pem, _) = make(cn, orgs, &[]);
        json!({"metadata": {"name": "c"},
               "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem), "signerName": signer,
                        "usages": ["digital signature", "client auth"], "username": requester, "groups": ["system:bootstrappers"]},
               "status": {}})
    }

    #[test]
    fn node_requests_are_approved_when_rbac_allows_then_signed() {
        let c = csr("system:node:n1", &["system:nodes"], "system:bootstrap:skiff", certificates::KUBELET_CLIENT_SIGNER);
        let bootstrappers =
            |u: &User, sub: &str| sub == "nodeclient" && u.groups.iter().any(|g| g == "system:bootstrappers");
        let nobody = |_: &str| false;
        assert_eq!(plan(&c, bootstrappers, nobody), Step::Approve("nodeclient"));
        assert_eq!(plan(&c, |_, _| false, nobody), Step::Nothing, "without the RBAC grant a person decides");
        assert_eq!(
            plan(&c, bootstrappers, |n| n == "n1"),
            Step::Nothing,
            "n1 has joined: the token cannot get its name"
        );
        let renewal = csr("system:node:n1", &["system:nodes"], "system:node:n1", certificates::KUBELET_CLIENT_SIGNER);
        let selves = |_: &User, sub: &str| sub == "selfnodeclient";
        assert_eq!(plan(&renewal, selves, |n| n == "n1"), Step::Approve("selfnodeclient"), "a node renews itself");
        let mut approved = c.clone();
        push_condition(&mut approved, condition("Approved", "AutoApproved", ""));
        assert_eq!(plan(&approved, |_, _| false, |_| false), Step::Sign);
        approved["status"]["certificate"] = json!("Y2VydA==");
        assert_eq!(plan(&approved, |_, _| true, |_| false), Step::Nothing);
    }

    #[test]
    fn old_requests_are_cleaned_up() {
        let at = |t: &str, cond: Option<&str>| {
            let mut c = json!({"metadata": {"creationTimestamp": t}, "status": {}});
            if let Some(k) = cond {
                push_condition(&mut c, condition(k, "x", ""));
            }
            c
        };
        let now = "2026-12-01T12:00:00Z".parse::<jiff::Timestamp>().expect("time").as_second();
        assert!(!expired(&at("2026-12-01T11:30:00Z", Some("Approved")), now));
        assert!(expired(&at("2026-12-01T10:30:00Z", Some("Approved")), now));
        assert!(!expired(&at("2026-12-01T00:30:00Z", None), now), "pending: a day");
        assert!(expired(&at("2026-11-30T10:00:00Z", None), now));
    }

    #[test]
    fn other_requests_wait_for_a_person_or_another_signer() {
        let admin = csr("admin", &["system:masters"], "mallory", certificates::KUBELET_CLIENT_SIGNER);
        assert_eq!(plan(&admin, |_, _| true, |_| false), Step::Nothing, "not a node certificate: never auto-approved");
        let user = csr("alice", &[], "alice", certificates::CLIENT_SIGNER);
        assert_eq!(plan(&user, |_, _| true, |_| false), Step::Nothing);
        let foreign = csr("system:node:n1", &["system:nodes"], "x", "example.com/signer");
        assert_eq!(plan(&foreign, |_, _| true, |_| false), Step::Nothing);
        let mut denied = csr("system:node:n1", &["system:nodes"], "x", certificates::KUBELET_CLIENT_SIGNER);
        push_condition(&mut denied, condition("Denied", "No", ""));
        assert_eq!(plan(&denied, |_, _| true, |_| false), Step::Nothing);
        let mut broken = user.clone();
        broken["spec"]["request"] = json!("bm90IGEgcmVxdWVzdA==");
        assert!(matches!(plan(&broken, |_, _| true, |_| false), Step::Fail(_)));
    }
}

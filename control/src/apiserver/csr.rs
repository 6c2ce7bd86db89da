//! CertificateSigningRequest admission, as kube-apiserver's CSR strategy and its approval/signing authorization:
//!
//! - on create, the request must parse and carry a valid self-signature, `signerName` and `usages` are required,
//!   and `spec.username`/`groups` are set to the requester (whatever the client sent), so approvers and the
//!   signer know who asked;
//! - the spec never changes;
//! - `…/approval` changes only the Approved/Denied conditions, and needs `approve` on `signers` named by the
//!   signer (`certificates.k8s.io`), besides `update` on the subresource; a decision cannot be taken back;
//! - `…/status` may set the certificate once, of an approved request, and needs `sign` on the signer.

use base64::Engine as _;
use serde_json::{Value, json};

use super::Api;
use super::auth::User;
use super::authz::forbidden;
use super::error::ApiResult;
use crate::certificates::{self, request};
use crate::rbac::{self, attributes::Attributes};
use skiff_api::registry::ResourceInfo;
use skiff_api::validation::ErrorList;

/// The API group.
pub const GROUP: &str = "certificates.k8s.io";

/// Whether `info` is the CSR resource.
pub fn is_csr(info: &ResourceInfo) -> bool {
    info.group == GROUP && info.plural == "certificatesigningrequests"
}

/// The PEM request of a CSR object (`spec.request` is base64 in JSON).
pub fn request_pem(csr: &Value) -> Result<Vec<u8>, String> {
    let b64 = csr.pointer("/spec/request").and_then(Value::as_str).ok_or("spec.request is required")?;
    base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| format!("spec.request is not base64: {e}"))
}

/// `spec.usages`.
pub fn usages(csr: &Value) -> Vec<String> {
    csr.pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// `spec.signerName`.
pub fn signer(csr: &Value) -> &str {
    csr.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or_default()
}

/// Validates a new CSR and stamps it with its requester.
pub fn prepare_create(obj: &mut Value, user: Option<&User>) -> Result<(), ErrorList> {
    let mut errs = ErrorList::default();
    match request_pem(obj) {
        Ok(pem) => {
            if let Err(e) = request::parse(&pem) {
                errs.invalid("spec.request", "<request>", e);
            }
        }
        Err(e) => errs.required("spec.request", e),
    }
    if signer(obj).is_empty() {
        errs.required("spec.signerName", "a signer must be named (e.g. kubernetes.io/kube-apiserver-client)");
    }
    if usages(obj).is_empty() {
        errs.required("spec.usages", "at least one usage is required");
    }
    if let Some(s) = obj.pointer("/spec/expirationSeconds").and_then(Value::as_i64)
        && s < certificates::sign::MIN_SECONDS
    {
        errs.invalid(
            "spec.expirationSeconds",
            s,
            format!("may not specify a duration less than {} seconds", certificates::sign::MIN_SECONDS),
        );
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if let (Some(u), Some(spec)) = (user, obj.get_mut("spec").and_then(Value::as_object_mut)) {
        spec.insert("username".into(), json!(u.name));
        spec.insert("groups".into(), json!(u.groups));
        spec.remove("uid");
        spec.remove("extra");
    }
    Ok(())
}

fn decisions(csr: &Value) -> Vec<Value> {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter(|c| matches!(c.get("type").and_then(Value::as_str), Some("Approved" | "Denied")))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Checks an update of a CSR through `subresource` (after the strategy merged it): the spec is immutable, a
/// decision cannot be undone or contradicted, a certificate is set once and only on an approved request.
pub fn validate_update(old: &Value, new: &Value) -> ErrorList {
    let mut errs = ErrorList::default();
    if old.get("spec") != new.get("spec") {
        errs.forbidden("spec", "a CertificateSigningRequest's spec is immutable");
    }
    let (before, after) = (decisions(old), decisions(new));
    if before.iter().any(|c| !after.iter().any(|a| a.get("type") == c.get("type"))) {
        errs.forbidden("status.conditions", "an Approved or Denied condition cannot be removed");
    }
    if certificates::has_condition(new, "Approved") && certificates::has_condition(new, "Denied") {
        errs.invalid("status.conditions", "Approved, Denied", "a request cannot be both approved and denied");
    }
    let (old_cert, new_cert) = (old.pointer("/status/certificate"), new.pointer("/status/certificate"));
    if old_cert.is_some_and(|c| c.as_str() != Some("")) && old_cert != new_cert {
        errs.forbidden("status.certificate", "the certificate cannot be changed once set");
    }
    if new_cert.is_some_and(|c| c.as_str() != Some("")) && !certificates::has_condition(new, "Approved") {
        errs.forbidden("status.certificate", "only an approved request can be given a certificate");
    }
    errs
}

impl Api {
    /// The signer authorization of a CSR write: `approve` for `…/approval`, `sign` for a certificate through
    /// `…/status`, on `signers` named by the signer or its `domain/*`.
    pub(crate) async fn admit_csr(
        &self,
        new: &Value,
        old: &Value,
        subresource: Option<&str>,
        user: Option<&User>,
    ) -> ApiResult<()> {
        let Some(user) = user else { return Ok(()) };
        let verb = match subresource {
            Some("approval") if decisions(old) != decisions(new) => "approve",
            Some("status") if old.pointer("/status/certificate") != new.pointer("/status/certificate") => "sign",
            _ => return Ok(()),
        };
        let signer = signer(new);
        let policy = self.policy().await?;
        let wildcard = signer.split_once('/').map(|(domain, _)| format!("{domain}/*"));
        let allowed = std::iter::once(signer.to_string())
            .chain(wildcard)
            .any(|name| rbac::decide(&policy, user, &Attributes::resource(verb, GROUP, "signers", "", &name)).allowed);
        if allowed {
            return Ok(());
        }
        let attrs = Attributes::resource(verb, GROUP, "signers", "", signer);
        Err(forbidden(user, &attrs, &format!("user not permitted to {verb} requests with signerName {signer:?}")))
    }
}

/// Merges a write through `…/approval` onto the stored object: only the conditions change.
pub fn merge_approval(old: &Value, new: &Value) -> Value {
    let mut merged = old.clone();
    let conditions = new.pointer("/status/conditions").cloned().unwrap_or_else(|| json!([]));
    if !merged.get("status").is_some_and(Value::is_object) {
        merged["status"] = json!({});
    }
    merged["status"]["conditions"] = conditions;
    if let Some(rv) = new.pointer("/metadata/resourceVersion").cloned() {
        skiff_api::meta::metadata_mut(&mut merged).insert("resourceVersion".into(), rv);
    }
    merged
}

/// Keeps the decision conditions of the stored object on a write through `…/status` (they change through
/// `…/approval` only).
pub fn keep_decisions(old: &Value, new: &mut Value) {
    let kept = decisions(old);
    let others: Vec<Value> = new
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter(|c| !matches!(c.get("type").and_then(Value::as_str), Some("Approved" | "Denied")))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if kept.is_empty() && new.pointer("/status/conditions").is_none() {
        return;
    }
    if !new.get("status").is_some_and(Value::is_object) {
        new["status"] = json!({});
    }
    new["status"]["conditions"] = Value::Array(kept.into_iter().chain(others).collect());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificates::request::tests::make;

    fn csr(pem: &str) -> Value {
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": "c"},
               "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem), "signerName": certificates::CLIENT_SIGNER,
                        "usages": ["client auth"], "username": "someone-else", "groups": ["system:masters"]}})
    }

    #[test]
    fn a_new_request_is_checked_and_stamped_with_its_requester() {
        let (pem, _) = make("alice", &["dev"], &[]);
        let mut obj = csr(&pem);
        let user = User { name: "alice".into(), groups: vec!["dev".into(), "system:authenticated".into()] };
        prepare_create(&mut obj, Some(&user)).expect("valid");
        assert_eq!(obj["spec"]["username"], "alice", "the client cannot claim another requester");
        assert_eq!(obj["spec"]["groups"], json!(["dev", "system:authenticated"]));
        let mut bad = csr("garbage");
        bad["spec"]["usages"] = json!([]);
        bad["spec"]["expirationSeconds"] = json!(60);
        let errs = prepare_create(&mut bad, Some(&user)).expect_err("invalid");
        let text = format!("{errs:?}");
        for field in ["spec.request", "spec.usages", "spec.expirationSeconds"] {
            assert!(text.contains(field), "{field}: {text}");
        }
    }

    #[test]
    fn decisions_stick_and_certificates_need_approval() {
        let (pem, _) = make("alice", &[], &[]);
        let old = csr(&pem);
        let approved =
            merge_approval(&old, &json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}}));
        assert!(validate_update(&old, &approved).is_empty());
        assert_eq!(approved["spec"], old["spec"], "approval changes no spec");
        let both = merge_approval(
            &approved,
            &json!({"status": {"conditions": [{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]}}),
        );
        assert!(!validate_update(&approved, &both).is_empty());
        let undone = merge_approval(&approved, &json!({"status": {"conditions": []}}));
        assert!(!validate_update(&approved, &undone).is_empty());
        let mut early = old.clone();
        early["status"] = json!({"certificate": "Y2VydA=="});
        assert!(!validate_update(&old, &early).is_empty(), "no certificate before approval");
        let mut signed = approved.clone();
        signed["status"]["certificate"] = json!("Y2VydA==");
        assert!(validate_update(&approved, &signed).is_empty());
        let mut changed = signed.clone();
        changed["status"]["certificate"] = json!("b3RoZXI=");
        assert!(!validate_update(&signed, &changed).is_empty(), "a certificate is set once");
        let mut respec = old.clone();
        respec["spec"]["signerName"] = json!("example.com/x");
        assert!(!validate_update(&old, &respec).is_empty());
        // a status writer cannot approve
        let mut sneaky = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        keep_decisions(&old, &mut sneaky);
        assert!(!certificates::has_condition(&sneaky, "Approved"));
    }
}

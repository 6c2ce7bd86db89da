//! Signing an approved request with the cluster CA. What the certificate says comes from the request's subject
//! and the CSR's `spec.usages` only: requested extensions (a CA flag, other usages) are discarded, alternative names
//! are kept only where the signer allows them, and the lifetime is the requested `expirationSeconds` within the
//! server's maximum and the CA's own.

use rcgen::{ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::approve::{check_client_usages, check_node_client};
use super::{KUBELET_CLIENT_SIGNER, request};

/// The shortest lifetime a request may ask for (as upstream: 10 minutes).
pub const MIN_SECONDS: i64 = 600;

/// How far back a certificate is valid from, for clocks a little behind.
const BACKDATE_SECONDS: i64 = 300;

/// What to sign and how.
#[derive(Debug, Clone)]
pub struct SignRequest<'a> {
    /// The PEM request.
    pub request_pem: &'a str,
    /// `spec.signerName`.
    pub signer: &'a str,
    /// `spec.usages`.
    pub usages: &'a [String],
    /// `spec.expirationSeconds`.
    pub expiration_seconds: Option<i64>,
}

/// Signs `r` with the CA (`ca_cert_pem`, `ca_key_pem`) at `now`, for at most `max_seconds`; returns the PEM
/// certificate, or why the signer refuses.
pub fn sign(
    r: &SignRequest<'_>,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    max_seconds: i64,
    now: i64,
) -> Result<String, String> {
    let req = request::parse(r.request_pem.as_bytes())?;
    if r.signer == KUBELET_CLIENT_SIGNER {
        check_node_client(&req, r.usages)?;
    } else {
        check_client_usages(r.usages)?;
    }
    if req.organizations.len() > 1 {
        return Err("this signer issues certificates of one group (O) at most".into());
    }
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(r.request_pem)
        .map_err(|e| format!("the certificate request cannot be signed: {e}"))?;
    let p = &mut csr.params;
    // the subject is exactly what was checked, not what another parser made of the request
    let mut dn = rcgen::DistinguishedName::new();
    for o in &req.organizations {
        dn.push(rcgen::DnType::OrganizationName, o.as_str());
    }
    dn.push(rcgen::DnType::CommonName, req.common_name.as_str());
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    if r.signer == KUBELET_CLIENT_SIGNER {
        p.subject_alt_names.clear();
    }
    p.key_usages = r
        .usages
        .iter()
        .filter_map(|u| match u.as_str() {
            "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
            "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
            _ => None,
        })
        .collect();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let serial: [u8; 16] = rand::random();
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let ca_end = crate::pki::validity_of(ca_cert_pem).map(|(_, end)| end).ok_or("the CA certificate does not parse")?;
    let lifetime = r.expiration_seconds.unwrap_or(max_seconds).clamp(MIN_SECONDS, max_seconds);
    let end = (now + lifetime).min(ca_end);
    let at = |s: i64| time::OffsetDateTime::from_unix_timestamp(s).map_err(|e| e.to_string());
    p.not_before = at(now - BACKDATE_SECONDS)?;
    p.not_after = at(end)?;
    let key = KeyPair::from_pem(ca_key_pem).map_err(|e| format!("the CA key: {e}"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, key).map_err(|e| format!("the CA certificate: {e}"))?;
    let cert = csr.signed_by(&issuer).map_err(|e| format!("signing: {e}"))?;
    // and the certificate says so, as the API server will read it
    let (user, groups) =
        skiff_client::identity::subject_of(cert.der()).ok_or("the signed certificate does not parse")?;
    if user != req.common_name || groups != req.organizations {
        return Err(format!("the signed certificate names {user:?} {groups:?}, not the request's subject"));
    }
    Ok(cert.pem())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificates::request::tests::make;

    fn ca() -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "test-ca");
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let cert = p.self_signed(&key).expect("ca");
        (cert.pem(), key.serialize_pem())
    }

    fn usages(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_certificate_is_a_client_certificate_for_its_subject_and_no_more() {
        let (ca_cert, ca_key) = ca();
        let (pem, _) = make("system:node:n1", &["system:nodes"], &[]);
        let u = usages(&["digital signature", "client auth"]);
        let now = 1_900_000_000;
        let r = SignRequest { request_pem: &pem, signer: KUBELET_CLIENT_SIGNER, usages: &u, expiration_seconds: None };
        let cert = sign(&r, &ca_cert, &ca_key, 365 * 86400, now).expect("signed");
        let (_, block) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).expect("pem");
        let (_, c) = x509_parser::parse_x509_certificate(&block.contents).expect("cert");
        assert_eq!(c.subject().iter_common_name().next().and_then(|v| v.as_str().ok()), Some("system:node:n1"));
        assert_eq!(c.subject().iter_organization().next().and_then(|v| v.as_str().ok()), Some("system:nodes"));
        assert_eq!(c.issuer().iter_common_name().next().and_then(|v| v.as_str().ok()), Some("test-ca"));
        assert!(!c.is_ca());
        let eku = c.extended_key_usage().expect("eku").expect("present").value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(c.validity().not_after.timestamp(), now + 365 * 86400);
        // the client's identity as the API server reads it
        assert_eq!(
            skiff_client::identity::subject_of(&block.contents),
            Some(("system:node:n1".into(), vec!["system:nodes".into()]))
        );
    }

    #[test]
    fn lifetimes_stay_within_the_minimum_the_maximum_and_the_cas() {
        let (ca_cert, ca_key) = ca();
        let (pem, _) = make("alice", &["dev"], &[]);
        let u = usages(&["client auth"]);
        let end = |asked: Option<i64>, now: i64| {
            let r = SignRequest {
                request_pem: &pem,
                signer: crate::certificates::CLIENT_SIGNER,
                usages: &u,
                expiration_seconds: asked,
            };
            let cert = sign(&r, &ca_cert, &ca_key, 86400, now).expect("signed");
            crate::pki::validity_of(&cert).expect("validity").1 - now
        };
        let now = 1_900_000_000;
        assert_eq!(end(Some(3600), now), 3600);
        assert_eq!(end(Some(1), now), MIN_SECONDS);
        assert_eq!(end(Some(10 * 86400), now), 86400);
        let near_ca_end = rcgen::date_time_ymd(2040, 1, 1).unix_timestamp() - 100;
        assert_eq!(end(None, near_ca_end), 100, "never past the CA");
    }

    #[test]
    fn the_node_signer_refuses_what_its_rules_forbid() {
        let (ca_cert, ca_key) = ca();
        let u = usages(&["client auth"]);
        let (wrong_group, _) = make("system:node:n1", &["system:masters"], &[]);
        let (with_san, _) = make("system:node:n1", &["system:nodes"], &["evil.example"]);
        for pem in [wrong_group, with_san] {
            let r =
                SignRequest { request_pem: &pem, signer: KUBELET_CLIENT_SIGNER, usages: &u, expiration_seconds: None };
            assert!(sign(&r, &ca_cert, &ca_key, 86400, 1_900_000_000).is_err());
        }
        let (pem, _) = make("alice", &[], &[]);
        let server = usages(&["server auth"]);
        let r = SignRequest {
            request_pem: &pem,
            signer: crate::certificates::CLIENT_SIGNER,
            usages: &server,
            expiration_seconds: None,
        };
        assert!(sign(&r, &ca_cert, &ca_key, 86400, 1_900_000_000).is_err(), "client signers sign client certificates");
    }
}

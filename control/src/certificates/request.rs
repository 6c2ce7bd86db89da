//! Reading a PEM certificate request (`spec.request`, base64 of PEM in the API): its subject, what it asks to be
//! named besides (subject alternative names) and whether its signature holds.

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

/// What a certificate request says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The subject's common name.
    pub common_name: String,
    /// The subject's organizations (groups, for a client certificate).
    pub organizations: Vec<String>,
    /// DNS names, IP addresses, emails and URIs it asks for.
    pub alt_names: Vec<String>,
    /// Whether it asks to be a CA.
    pub wants_ca: bool,
}

/// Parses and verifies a PEM request (its self-signature must hold).
pub fn parse(pem: &[u8]) -> Result<Request, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("PEM block type must be CERTIFICATE REQUEST: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(format!("PEM block type must be CERTIFICATE REQUEST, not {}", pem.label));
    }
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("the certificate request does not parse: {e}"))?;
    csr.verify_signature().map_err(|e| format!("the certificate request's signature is invalid: {e}"))?;
    let subject = &csr.certification_request_info.subject;
    // one value per name part, one common name, nothing but CN and O: parsers that differ on which of several
    // values wins (the first or the last) must not disagree on who the certificate names
    if subject.iter().any(|rdn| rdn.iter().count() != 1) {
        return Err("the subject may not have multi-valued name parts".into());
    }
    if subject.iter_common_name().count() > 1 {
        return Err("the subject may have one common name only".into());
    }
    let known =
        [x509_parser::oid_registry::OID_X509_COMMON_NAME, x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME];
    if let Some(other) = subject.iter_attributes().find(|a| !known.contains(a.attr_type())) {
        return Err(format!("the subject may name only CN and O, not {}", other.attr_type()));
    }
    let text =
        |v: &x509_parser::x509::AttributeTypeAndValue<'_>| v.as_str().map(str::to_string).map_err(|e| e.to_string());
    let common_name = subject.iter_common_name().next().map(text).transpose()?.unwrap_or_default();
    let organizations = subject.iter_organization().map(text).collect::<Result<Vec<_>, _>>()?;
    let mut out = Request { common_name, organizations, ..Request::default() };
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    out.alt_names.push(match n {
                        GeneralName::DNSName(d) => format!("DNS:{d}"),
                        GeneralName::RFC822Name(e) => format!("email:{e}"),
                        GeneralName::URI(u) => format!("URI:{u}"),
                        GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                        other => format!("{other:?}"),
                    });
                }
            }
            ParsedExtension::BasicConstraints(bc) => out.wants_ca |= bc.ca,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request for `cn`/`orgs` with the given DNS names, and its private key (PEM).
    pub(crate) fn make(cn: &str, orgs: &[&str], dns: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        let mut dn = rcgen::DistinguishedName::new();
        for o in orgs {
            dn.push(rcgen::DnType::OrganizationName, *o);
        }
        dn.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name = dn;
        let csr = p.serialize_request(&key).expect("csr");
        (csr.pem().expect("pem"), key.serialize_pem())
    }

    #[test]
    fn a_request_names_its_subject_and_alt_names() {
        let (pem, _) = make("system:node:n1", &["system:nodes"], &[]);
        let r = parse(pem.as_bytes()).expect("parses");
        assert_eq!(r.common_name, "system:node:n1");
        assert_eq!(r.organizations, vec!["system:nodes"]);
        assert!(r.alt_names.is_empty() && !r.wants_ca);
        let (pem, _) = make("web", &[], &["web.example"]);
        assert_eq!(parse(pem.as_bytes()).expect("parses").alt_names, vec!["DNS:web.example"]);
    }

    #[test]
    fn a_subject_that_parsers_could_read_differently_is_refused() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
        p.distinguished_name.push(rcgen::DnType::CommonName, "system:node:n2");
        p.distinguished_name.push(rcgen::DnType::CountryName, "XX");
        let pem = p.serialize_request(&key).expect("csr").pem().expect("pem");
        assert!(parse(pem.as_bytes()).expect_err("refused").contains("only CN and O"));
        // rcgen keeps one value per attribute type, so requests with two CNs (or a multi-valued part) come from
        // OpenSSL, as an attacker would make them
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k.pem");
        for (subject, multi, expected) in [
            ("/O=system:nodes/CN=system:node:n2/CN=system:node:n1", false, "one common name"),
            ("/O=system:nodes/CN=system:node:n2+CN=system:node:n1", true, "multi-valued"),
        ] {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout"]);
            cmd.arg(&key).args(["-subj", subject]);
            if multi {
                cmd.arg("-multivalue-rdn");
            }
            let out = cmd.output().expect("openssl runs");
            assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
            let err = parse(&out.stdout).expect_err("refused");
            assert!(err.contains(expected), "{subject}: {err}");
        }
    }

    #[test]
    fn broken_or_tampered_requests_are_refused() {
        assert!(parse(b"not pem").is_err());
        let (pem, key) = make("a", &[], &[]);
        assert!(parse(key.as_bytes()).is_err(), "a key is not a request");
        // flip one byte of the DER inside the PEM: the signature no longer holds (or it no longer parses)
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        let mut der = block.contents.clone();
        let i = der.len() / 3;
        der[i] ^= 0x01;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let tampered = format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
        assert!(parse(tampered.as_bytes()).is_err());
    }
}

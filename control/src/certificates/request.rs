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

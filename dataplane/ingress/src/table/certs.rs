//! The certificate store: TLS certificates by SNI name, part of every table snapshot.
//!
//! Selection follows ingress-nginx: an exact name first, then a `*.parent` wildcard covering exactly one label,
//! then the default certificate (self-signed, generated at start, or one given by the operator).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate with what the metrics and problem reports need to say about it.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// Chain and signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// `namespace/name` of the Secret it came from (`""` for the default certificate).
    pub secret: Arc<str>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Why a `kubernetes.io/tls` Secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A key of the Secret is missing.
    #[error("secret has no {0:?}")]
    Missing(&'static str),
    /// `tls.crt` holds no PEM certificate.
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    /// `tls.crt` is not a valid X.509 certificate.
    #[error("tls.crt is not a valid X.509 certificate: {0}")]
    BadCertificate(String),
    /// `tls.key` holds no usable private key.
    #[error("tls.key holds no usable private key: {0}")]
    BadKey(String),
    /// The key does not belong to the certificate.
    #[error("tls.key does not match the certificate in tls.crt")]
    KeyMismatch,
    /// rcgen could not make the default certificate.
    #[error("could not generate the default certificate: {0}")]
    Generate(String),
}

impl Certificate {
    /// Parses PEM `tls.crt` (leaf first, then intermediates) and `tls.key`, checking that they belong together.
    pub fn from_pem(crt: &[u8], key: &[u8], secret: Arc<str>) -> Result<Self, CertError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| CertError::BadCertificate(e.to_string()))?;
        let not_after = parsed.validity().not_after.timestamp();
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| CertError::BadKey(e.to_string()))?;
        let signer =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| CertError::BadKey(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match().map_err(|_| CertError::KeyMismatch)?;
        Ok(Certificate { key: Arc::new(certified), secret, not_after })
    }

    /// A self-signed certificate for `name`, the fallback when no Secret covers a name (like ingress-nginx's
    /// "Kubernetes Ingress Controller Fake Certificate").
    pub fn self_signed(name: &str) -> Result<Self, CertError> {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()])
            .map_err(|e| CertError::Generate(e.to_string()))?;
        let crt = generated.cert.pem();
        let key = generated.signing_key.serialize_pem();
        Certificate::from_pem(crt.as_bytes(), key.as_bytes(), Arc::from(""))
    }
}

/// Certificates by SNI name.
#[derive(Debug, Clone)]
pub struct CertStore {
    exact: HashMap<Box<str>, Certificate>,
    wildcard: HashMap<Box<str>, Certificate>,
    default: Certificate,
}

impl CertStore {
    /// A store with only the default certificate.
    pub fn new(default: Certificate) -> Self {
        CertStore { exact: HashMap::new(), wildcard: HashMap::new(), default }
    }

    /// Adds a certificate for a host (`*.example.com` for a wildcard); false if the host already had one.
    pub fn insert(&mut self, host: &str, cert: Certificate) -> bool {
        let host = host.to_ascii_lowercase();
        let map = match host.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.into()),
            None => self.exact.entry(host.into()),
        };
        match map {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(cert);
                true
            }
        }
    }

    /// The certificate for a ClientHello's server name: exact, then wildcard, then the default.
    pub fn resolve(&self, sni: Option<&str>) -> &Certificate {
        self.find(sni).unwrap_or(&self.default)
    }

    /// The certificate a Secret gave for this name, if any.
    pub fn find(&self, sni: Option<&str>) -> Option<&Certificate> {
        let name = sni?;
        self.exact.get(name).or_else(|| self.wildcard.get(name.split_once('.')?.1))
    }

    /// Every certificate from a Secret, with the host it serves (for the expiry metric).
    pub fn iter(&self) -> impl Iterator<Item = (String, &Certificate)> {
        let exact = self.exact.iter().map(|(h, c)| (h.to_string(), c));
        exact.chain(self.wildcard.iter().map(|(h, c)| (format!("*.{h}"), c)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed PEM pair for `names` (test helper shared with the compiler tests).
    pub fn pem_pair(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let c = rcgen::generate_simple_self_signed(names).expect("rcgen");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn sni_picks_exact_then_wildcard_of_one_label_then_default() {
        let default = Certificate::self_signed("default").expect("default");
        let mut store = CertStore::new(default);
        let (c, k) = pem_pair(&["a.example.com"]);
        assert!(
            store.insert("a.example.com", Certificate::from_pem(c.as_bytes(), k.as_bytes(), "ns/a".into()).expect("a"))
        );
        let (c, k) = pem_pair(&["*.example.com"]);
        assert!(
            store.insert("*.example.com", Certificate::from_pem(c.as_bytes(), k.as_bytes(), "ns/w".into()).expect("w"))
        );
        assert_eq!(&*store.resolve(Some("a.example.com")).secret, "ns/a");
        assert_eq!(&*store.resolve(Some("b.example.com")).secret, "ns/w");
        assert_eq!(&*store.resolve(Some("x.b.example.com")).secret, "", "a wildcard covers one label only");
        assert_eq!(&*store.resolve(Some("example.com")).secret, "");
        assert_eq!(&*store.resolve(None).secret, "");
    }

    #[test]
    fn a_key_of_another_certificate_is_rejected() {
        let (c, _) = pem_pair(&["a"]);
        let (_, k) = pem_pair(&["a"]);
        let err = Certificate::from_pem(c.as_bytes(), k.as_bytes(), "ns/a".into()).expect_err("mismatch");
        assert!(matches!(err, CertError::KeyMismatch), "{err}");
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert!(matches!(Certificate::from_pem(b"nope", b"nope", "x".into()), Err(CertError::NoCertificate)));
        let (c, _) = pem_pair(&["a"]);
        assert!(matches!(Certificate::from_pem(c.as_bytes(), b"nope", "x".into()), Err(CertError::BadKey(_))));
    }
}

//! Who a client certificate names, as Kubernetes reads it (the subject's CN is the user, each O a group), and
//! when it is due for renewal.

/// The user (CN) and groups (each O) of a DER certificate; `None` if it does not parse or has no CN.
pub fn subject_of(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((name, groups))
}

/// The validity of a PEM certificate: (notBefore, notAfter) in Unix seconds.
pub fn validity_of(cert_pem: &str) -> Option<(i64, i64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The user and groups of a PEM certificate.
pub fn subject_of_pem(cert_pem: &str) -> Option<(String, Vec<String>)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    subject_of(&pem.contents)
}

/// Whether a certificate valid from `not_before` to `not_after` should be renewed at `now`: when less than a third
/// of its lifetime is left, or it has expired.
pub fn needs_renewal(not_before: i64, not_after: i64, now: i64) -> bool {
    now >= not_after - (not_after - not_before) / 3
}

/// The annotation a node's agent puts on its Node once it runs with its own certificate: from then on, the shared
/// join token may not bootstrap that name again (a node registered by an older agent, without it, may bootstrap
/// once, so that upgrading the agent does not need a person).
pub const NODE_CERTIFICATE_ANNOTATION: &str = "skiff.dev/node-certificate";

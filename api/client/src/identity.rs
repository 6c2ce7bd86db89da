//! Who a client certificate names, as Kubernetes reads it: the subject's CN is the user, each O a group.

/// The user (CN) and groups (each O) of a DER certificate; `None` if it does not parse or has no CN.
pub fn subject_of(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((name, groups))
}

//! TLS of the kubelet endpoint: a self-signed serving certificate kept under `pki/` (made again when the node's
//! names change), and client certificates required and verified against the cluster CA (the API server presents
//! CN=system:apiserver).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A new self-signed certificate and key (PEM) for `names` (IPs or DNS names).
pub fn self_signed(names: &[String]) -> Result<(String, String), String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    for n in names {
        match n.parse::<std::net::IpAddr>() {
            Ok(ip) => params.subject_alt_names.push(rcgen::SanType::IpAddress(ip)),
            Err(_) => params
                .subject_alt_names
                .push(rcgen::SanType::DnsName(n.clone().try_into().map_err(|e| format!("{n}: {e}"))?)),
        }
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_else(|| "skiff-agent".into()));
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key_pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert_pem = params.self_signed(&key_pair).map_err(|e| e.to_string())?.pem();
    Ok((cert_pem, key_pair.serialize_pem()))
}

/// The serving certificate for `names`, reused from `dir` when it was made for the same names.
pub fn serving_cert(dir: &Path, names: &[String]) -> Result<(String, String), String> {
    let (cert, key, marker) = (dir.join("kubelet.crt"), dir.join("kubelet.key"), dir.join("kubelet.names"));
    let want = names.join(",");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str())
        && let (Ok(c), Ok(k)) = (std::fs::read_to_string(&cert), std::fs::read_to_string(&key))
    {
        return Ok((c, k));
    }
    let (c, k) = self_signed(names)?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::write(&cert, &c).map_err(|e| e.to_string())?;
    std::fs::write(&key, &k).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
    std::fs::write(&marker, want).map_err(|e| e.to_string())?;
    Ok((c, k))
}

/// The server configuration: client certificates from `ca_pem` required, HTTP/1.1 (exec upgrades).
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| format!("cluster CA: {e}"))?).map_err(|e| format!("cluster CA: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("serving key: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_kept_while_the_names_stay_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = serving_cert(dir.path(), &["10.0.0.11".into(), "n1".into()]).expect("cert");
        let b = serving_cert(dir.path(), &["10.0.0.11".into(), "n1".into()]).expect("cert");
        assert_eq!(a, b);
        let c = serving_cert(dir.path(), &["10.0.0.12".into(), "n1".into()]).expect("cert");
        assert_ne!(a.0, c.0);
    }
}

//! The cluster's PKI and credentials, created on first start under `<data-dir>/pki`:
//! a cluster CA, the API server's serving certificate, an admin client certificate (`system:masters`), the
//! service-account token signing key, the node join token, and the key that encrypts Secrets at rest.
//!
//! Everything is loaded again on later starts, so certificates and tokens stay valid across restarts.

use crate::storage::encrypt::NamedKey;
use base64::Engine as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Why the PKI could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating or parsing a certificate or key failed.
    #[error("{what}: {source}")]
    Cert {
        /// What was being made.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
}

/// PEM-encoded certificate and key.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// Everything the API server needs to authenticate and be authenticated.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Directory holding the files.
    pub dir: PathBuf,
    /// The cluster CA.
    pub ca: CertPair,
    /// The API server's serving certificate.
    pub server: CertPair,
    /// The admin client certificate (CN `skiff-admin`, O `system:masters`).
    pub admin: CertPair,
    /// HMAC key signing service-account tokens.
    pub sa_key: Vec<u8>,
    /// The token nodes join with (`skiff agent --token`).
    pub node_token: String,
    /// AES-256 keys encrypting Secrets at rest (`encryption-keys`): the first seals, all open.
    pub encryption_keys: Vec<NamedKey>,
    /// Whether the encryption key file was missing and has just been made.
    pub encryption_keys_created: bool,
}

/// The file of the Secret encryption keys: one `NAME BASE64KEY` per line, the first used for writes.
pub const ENCRYPTION_KEYS: &str = "encryption-keys";

/// A new encryption key with a fresh name.
pub fn new_encryption_key() -> NamedKey {
    NamedKey { name: format!("key-{}", random_hex(4)), key: rand::random() }
}

/// Parses an `encryption-keys` file.
pub fn parse_encryption_keys(text: &str) -> Result<Vec<NamedKey>, String> {
    let mut keys: Vec<NamedKey> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, b64) =
            line.split_once(char::is_whitespace).ok_or(format!("line {}: expected `NAME BASE64KEY`", i + 1))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("line {}: the key is not base64: {e}", i + 1))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| format!("line {}: the key must be 32 bytes", i + 1))?;
        if keys.iter().any(|k| k.name == name) {
            return Err(format!("line {}: key {name:?} appears twice", i + 1));
        }
        keys.push(NamedKey { name: name.to_string(), key });
    }
    if keys.is_empty() {
        return Err("no key".into());
    }
    Ok(keys)
}

/// Renders an `encryption-keys` file.
pub fn render_encryption_keys(keys: &[NamedKey]) -> String {
    let mut out =
        String::from("# Secret encryption keys: NAME BASE64KEY; the first seals new writes, every one opens.\n");
    for k in keys {
        out.push_str(&format!("{} {}\n", k.name, base64::engine::general_purpose::STANDARD.encode(k.key)));
    }
    out
}

/// Writes the encryption keys (owner-only), atomically: a crash leaves the old file or the new one.
pub fn write_encryption_keys(dir: &Path, keys: &[NamedKey]) -> Result<(), PkiError> {
    let tmp = dir.join(format!("{ENCRYPTION_KEYS}.tmp"));
    write_private(&tmp, render_encryption_keys(keys).as_bytes())?;
    let path = dir.join(ENCRYPTION_KEYS);
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Loads the encryption keys: `encryption-keys`, else the single key of older versions (`encryption.key`, named
/// `key1`), else a new key (and `true`).
fn load_encryption_keys(dir: &Path) -> Result<(Vec<NamedKey>, bool), PkiError> {
    let path = dir.join(ENCRYPTION_KEYS);
    let invalid = |path: &Path, m: String| PkiError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, m),
    };
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        return Ok((parse_encryption_keys(&text).map_err(|m| invalid(&path, m))?, false));
    }
    let legacy = dir.join("encryption.key");
    if legacy.exists() {
        let bytes = std::fs::read(&legacy).map_err(io(&legacy))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| invalid(&legacy, "must hold exactly 32 bytes".into()))?;
        let keys = vec![NamedKey { name: "key1".into(), key }];
        write_encryption_keys(dir, &keys)?;
        return Ok((keys, false));
    }
    let keys = vec![new_encryption_key()];
    write_encryption_keys(dir, &keys)?;
    Ok((keys, true))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn validity(params: &mut CertificateParams, years: i16, now: jiff::Timestamp) {
    let now = now.to_zoned(jiff::tz::TimeZone::UTC);
    let start = now.date().yesterday().unwrap_or(now.date());
    params.not_before = rcgen::date_time_ymd(i32::from(start.year()), start.month() as u8, start.day() as u8);
    params.not_after =
        rcgen::date_time_ymd(i32::from(start.year() + years), start.month() as u8, start.day().min(28) as u8);
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

impl Pki {
    /// Loads the PKI from `dir`, creating whatever is missing. `server_names` are the DNS names and IP addresses the
    /// serving certificate is valid for (localhost, 127.0.0.1, the node's addresses and `10.96.0.1` are always added).
    pub fn load_or_create(dir: &Path, server_names: &[String]) -> Result<Pki, PkiError> {
        Self::load_or_create_at(dir, server_names, jiff::Timestamp::now())
    }

    /// [`Pki::load_or_create`] as of `now`: certificates issued then, and the API server's and the admin's
    /// renewed (signed by the same CA) when less than a third of their lifetime is left at `now`.
    pub fn load_or_create_at(dir: &Path, server_names: &[String], now: jiff::Timestamp) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca = load_or(dir, "ca", None, || new_ca(now))?;
        let mut names: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "10.96.0.1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        names.extend(server_names.iter().cloned());
        names.sort();
        names.dedup();
        let names_file = dir.join("apiserver.names");
        let previous = std::fs::read_to_string(&names_file).unwrap_or_default();
        if previous.trim() != names.join(",") {
            // the serving certificate must cover every name asked for: make a new one
            let _ = std::fs::remove_file(dir.join("apiserver.crt"));
        }
        if let Some((from, to)) = validity_of(&ca.cert_pem)
            && needs_renewal(from, to, now.as_second())
        {
            tracing::warn!(
                expires = %jiff::Timestamp::from_second(to).map(|t| t.to_string()).unwrap_or_default(),
                "the cluster CA is in the last third of its life: plan a CA rotation (every certificate changes)"
            );
        }
        let server = load_or(dir, "apiserver", Some(now), || issue(&ca, "skiff-apiserver", None, &names, true, now))?;
        std::fs::write(&names_file, names.join(",")).map_err(io(&names_file))?;
        let admin =
            load_or(dir, "admin", Some(now), || issue(&ca, "skiff-admin", Some("system:masters"), &[], false, now))?;
        let sa_key = load_or_secret(dir, SA_KEY, new_sa_key)?;
        let node_token = String::from_utf8_lossy(&load_or_secret(dir, NODE_TOKEN, || new_node_token().into_bytes())?)
            .trim()
            .to_string();
        let (encryption_keys, encryption_keys_created) = load_encryption_keys(dir)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca,
            server,
            admin,
            sa_key,
            node_token,
            encryption_keys,
            encryption_keys_created,
        })
    }

    /// Issues a client certificate signed by the cluster CA (for nodes and users).
    pub fn issue_client(&self, common_name: &str, organization: Option<&str>) -> Result<CertPair, PkiError> {
        issue(&self.ca, common_name, organization, &[], false, jiff::Timestamp::now())
    }
}

/// The service-account signing key's file.
const SA_KEY: &str = "sa.key";
/// The node join token's file.
const NODE_TOKEN: &str = "node-token";

fn new_ca(now: jiff::Timestamp) -> Result<CertPair, PkiError> {
    let key = KeyPair::generate().map_err(cert_err("CA key"))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA params"))?;
    p.distinguished_name = dn("skiff-ca", None);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p, 10, now);
    let cert = p.self_signed(&key).map_err(cert_err("CA certificate"))?;
    Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn new_sa_key() -> Vec<u8> {
    random_hex(32).into_bytes()
}

fn new_node_token() -> String {
    format!("skiff-node.{}", random_hex(16))
}

/// Reads what `dir` holds of the secrets the servers of a cluster share (see [`crate::cluster_secrets`]), without
/// making anything (a legacy `encryption.key` is converted to `encryption-keys` on the way).
pub fn read_shared(dir: &Path) -> Result<crate::cluster_secrets::Local, PkiError> {
    let read = |name: &str| -> Result<Option<Vec<u8>>, PkiError> {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PkiError::Io { path, source: e }),
        }
    };
    let text = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
    let ca = match (read("ca.crt")?, read("ca.key")?) {
        (Some(c), Some(k)) => Some(CertPair { cert_pem: text(c), key_pem: text(k) }),
        _ => None,
    };
    let encryption_keys = if dir.join(ENCRYPTION_KEYS).exists() || dir.join("encryption.key").exists() {
        Some(load_encryption_keys(dir)?.0)
    } else {
        None
    };
    Ok(crate::cluster_secrets::Local {
        ca,
        sa_key: read(SA_KEY)?,
        node_token: read(NODE_TOKEN)?.map(|v| text(v).trim().to_string()),
        encryption_keys,
    })
}

/// The shared secrets from `local`, with whatever it lacks newly made (nothing is written).
pub fn complete_shared(local: &crate::cluster_secrets::Local) -> Result<crate::cluster_secrets::Shared, PkiError> {
    Ok(crate::cluster_secrets::Shared {
        ca: match &local.ca {
            Some(ca) => ca.clone(),
            None => new_ca(jiff::Timestamp::now())?,
        },
        sa_key: local.sa_key.clone().unwrap_or_else(new_sa_key),
        node_token: local.node_token.clone().unwrap_or_else(new_node_token),
        encryption_keys: local.encryption_keys.clone().unwrap_or_else(|| vec![new_encryption_key()]),
        retired: Vec::new(),
    })
}

/// Writes the shared secrets into `dir` (each file whole, owner-only where secret), replacing what differs.
pub fn write_shared(dir: &Path, shared: &crate::cluster_secrets::Shared) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let replace = |name: &str, data: &[u8], private: bool| -> Result<(), PkiError> {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|v| v == data) {
            return Ok(());
        }
        let tmp = dir.join(format!("{name}.tmp"));
        if private {
            write_private(&tmp, data)?;
        } else {
            std::fs::write(&tmp, data).map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))
    };
    // the key before the certificate, as load_or writes them
    replace("ca.key", shared.ca.key_pem.as_bytes(), true)?;
    replace("ca.crt", shared.ca.cert_pem.as_bytes(), false)?;
    replace(SA_KEY, &shared.sa_key, true)?;
    replace(NODE_TOKEN, shared.node_token.as_bytes(), true)?;
    replace(ENCRYPTION_KEYS, render_encryption_keys(&shared.encryption_keys).as_bytes(), true)
}

/// Removes this server's own certificates (`apiserver`, `admin`), so the next load issues them from the CA now in
/// `dir`.
pub fn forget_issued(dir: &Path) -> Result<(), PkiError> {
    for name in ["apiserver.crt", "admin.crt"] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PkiError::Io { path, source: e }),
        }
    }
    Ok(())
}

/// Writes the server token file (owner-only) unless it already holds `token`.
pub fn write_token(dir: &Path, token: &str) -> Result<(), PkiError> {
    let path = dir.join(crate::cluster_secrets::TOKEN_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == token) {
        return Ok(());
    }
    write_private(&path, format!("{token}\n").as_bytes())
}

/// Writes `token` beside the token file as `server-token.new` (owner-only), before a record is sealed with it: a
/// crash between sealing and renaming it over the token file leaves the token that opens the record, which
/// [`crate::cluster_secrets::finish_rotation`] puts in place at the next start.
pub fn write_next_token(dir: &Path, token: &str) -> Result<std::path::PathBuf, PkiError> {
    let path = dir.join(crate::cluster_secrets::NEXT_TOKEN_FILE);
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(path)
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    if let Some(o) = org {
        d.push(DnType::OrganizationName, o);
    }
    d.push(DnType::CommonName, cn);
    d
}

fn issue(
    ca: &CertPair,
    cn: &str,
    org: Option<&str>,
    names: &[String],
    server: bool,
    now: jiff::Timestamp,
) -> Result<CertPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(cert_err("CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(cert_err("CA certificate"))?;
    let key = KeyPair::generate().map_err(cert_err("key"))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("params"))?;
    p.distinguished_name = dn(cn, org);
    p.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(cert_err("subject alternative name"))?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    validity(&mut p, if server { 2 } else { 1 }, now);
    let cert = p.signed_by(&key, &issuer).map_err(cert_err("certificate"))?;
    Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// When certificates are due: less than a third of their lifetime left (about eight months for the two-year serving
/// certificate, four for the one-year client certificates), or expired.
pub use skiff_client::identity::{needs_renewal, validity_of};

/// Loads `name.crt`/`name.key`, or makes them; with `renew_at`, also makes them again when the certificate is
/// due for renewal at that time (or cannot be read).
fn load_or(
    dir: &Path,
    name: &str,
    renew_at: Option<jiff::Timestamp>,
    make: impl FnOnce() -> Result<CertPair, PkiError>,
) -> Result<CertPair, PkiError> {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    if crt.exists() && key.exists() {
        let pair = CertPair {
            cert_pem: std::fs::read_to_string(&crt).map_err(io(&crt))?,
            key_pem: std::fs::read_to_string(&key).map_err(io(&key))?,
        };
        let due = renew_at.is_some_and(|now| {
            validity_of(&pair.cert_pem).is_none_or(|(from, to)| needs_renewal(from, to, now.as_second()))
        });
        if !due {
            return Ok(pair);
        }
        tracing::info!(certificate = name, "renewing a certificate due for renewal (the CA is kept)");
    }
    let pair = make()?;
    // the key first, then the certificate: both written whole before either is replaced
    let (tmp_key, tmp_crt) = (dir.join(format!("{name}.key.tmp")), dir.join(format!("{name}.crt.tmp")));
    write_private(&tmp_key, pair.key_pem.as_bytes())?;
    std::fs::write(&tmp_crt, &pair.cert_pem).map_err(io(&tmp_crt))?;
    std::fs::rename(&tmp_key, &key).map_err(io(&key))?;
    std::fs::rename(&tmp_crt, &crt).map_err(io(&crt))?;
    Ok(pair)
}

/// Renews the API server's and the admin's certificates now, whatever their age (`skiff certs rotate`); the CA
/// and every other credential are kept.
pub fn rotate_certificates(dir: &Path, server_names: &[String]) -> Result<Pki, PkiError> {
    for f in ["apiserver.crt", "admin.crt"] {
        let path = dir.join(f);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Pki::load_or_create(dir, server_names)
}

fn load_or_secret(dir: &Path, name: &str, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, PkiError> {
    let path = dir.join(name);
    if path.exists() {
        return std::fs::read(&path).map_err(io(&path));
    }
    let v = make();
    write_private(&path, &v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_renewed_in_the_last_third_of_their_life_and_the_ca_is_kept() {
        let day = 86_400;
        assert!(!needs_renewal(0, 300 * day, 100 * day));
        assert!(!needs_renewal(0, 300 * day, 199 * day));
        assert!(needs_renewal(0, 300 * day, 200 * day));
        assert!(needs_renewal(0, 300 * day, 400 * day), "expired");

        let dir = tempfile::tempdir().expect("temp dir");
        let start = jiff::Timestamp::now();
        let a = Pki::load_or_create_at(dir.path(), &[], start).expect("created");
        let (_, server_end) = validity_of(&a.server.cert_pem).expect("parses");
        let (_, admin_end) = validity_of(&a.admin.cert_pem).expect("parses");
        // a month later nothing changes
        let b =
            Pki::load_or_create_at(dir.path(), &[], start + jiff::SignedDuration::from_hours(24 * 30)).expect("loaded");
        assert_eq!((a.server.cert_pem.clone(), a.admin.cert_pem.clone()), (b.server.cert_pem, b.admin.cert_pem));
        // a day past the server certificate's expiry (a faked clock): both are renewed, valid then, by the same CA
        let later = jiff::Timestamp::from_second(server_end + day).expect("a time");
        let c = Pki::load_or_create_at(dir.path(), &[], later).expect("renewed");
        assert_eq!(c.ca.cert_pem, a.ca.cert_pem);
        let (from, to) = validity_of(&c.server.cert_pem).expect("parses");
        assert!(from <= later.as_second() && to > later.as_second() + 300 * day, "valid from then on");
        assert!(validity_of(&c.admin.cert_pem).expect("parses").1 > admin_end);
        // and what is on disk is the renewed pair
        assert_eq!(std::fs::read_to_string(dir.path().join("apiserver.crt")).expect("read"), c.server.cert_pem);
    }

    #[test]
    fn the_pki_is_created_once_and_loaded_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = Pki::load_or_create(dir.path(), &["node-1".into()]).expect("created");
        let b = Pki::load_or_create(dir.path(), &["node-1".into()]).expect("loaded");
        assert_eq!(a.ca.cert_pem, b.ca.cert_pem);
        assert_eq!(a.server.cert_pem, b.server.cert_pem);
        assert_eq!(a.node_token, b.node_token);
        let names = |p: &Pki| p.encryption_keys.iter().map(|k| (k.name.clone(), k.key)).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        assert!(a.encryption_keys_created && !b.encryption_keys_created);
        let c = Pki::load_or_create(dir.path(), &["node-2".into()]).expect("loaded");
        assert_ne!(a.server.cert_pem, c.server.cert_pem, "a new name gets a new serving certificate");
        assert_eq!(a.ca.cert_pem, c.ca.cert_pem);
    }
}

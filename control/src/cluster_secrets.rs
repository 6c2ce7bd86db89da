//! The secrets every server of one cluster must share — the cluster CA, the service-account signing key, the node
//! join token and the Secret encryption keys — kept in the datastore sealed under the cluster's server token, as
//! k3s keeps its bootstrap data.
//!
//! The first server of a cluster stores what it has (or makes) there; a server started later with the same token
//! (`skiff server --token T --datastore etcd://…`) opens the record and writes those secrets into its own PKI
//! directory before it loads it, so every server signs and checks with the same keys. What decides between the
//! stored and the local copies is the pure [`decide`]; [`establish`] only reads and writes.
//!
//! The record is JSON: the salt and iteration count of a PBKDF2-HMAC-SHA256 derivation of the token, a nonce,
//! and the secrets sealed with AES-256-GCM under the derived key (the storage key is the additional data).

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::pki::{self, CertPair};
use crate::storage::encrypt::NamedKey;
use crate::storage::{Storage, StorageError};

/// Where the sealed record lives in the datastore.
pub const KEY: &str = "/skiff/cluster-secrets";

/// The file in the PKI directory holding the token a server seals and opens the record with.
pub const TOKEN_FILE: &str = "server-token";

/// Where a token being rotated to waits until the record is sealed with it (see [`finish_rotation`]).
pub const NEXT_TOKEN_FILE: &str = "server-token.new";

/// PBKDF2 rounds for records this version writes (the count is stored in each record, so it can change).
const ITERATIONS: u32 = 210_000;

const FORMAT: &str = "skiff-cluster-secrets/v1";

/// Why the cluster's secrets could not be established.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The record does not open with this token.
    #[error(
        "the datastore belongs to a cluster whose server token is not this one: start with --token set to the \
         token of the cluster's first server (its <data-dir>/pki/{TOKEN_FILE})"
    )]
    WrongToken,
    /// The datastore already holds a cluster and no token was given.
    #[error(
        "the datastore already holds a cluster's secrets and this server has no token: start with --token set to \
         the token of the cluster's first server (its <data-dir>/pki/{TOKEN_FILE})"
    )]
    NoToken,
    /// The stored record is not one this version reads.
    #[error("the cluster secrets stored at {KEY} are unreadable: {0}")]
    Corrupt(String),
    /// The local PKI directory and the datastore disagree in a way that would break the cluster.
    #[error("{0}")]
    Conflict(String),
    /// Reading or writing the local files.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The datastore.
    #[error("datastore: {0}")]
    Storage(#[from] StorageError),
}

/// The secrets the servers of one cluster share.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The cluster CA (certificate and key).
    pub ca: CertPair,
    /// The service-account token signing key.
    pub sa_key: Vec<u8>,
    /// The token nodes join with.
    pub node_token: String,
    /// The Secret encryption keys, the sealing one first.
    pub encryption_keys: Vec<NamedKey>,
    /// Names of encryption keys retired from the cluster: a server that still has one in its key file drops it
    /// rather than adding it back.
    pub retired: Vec<String>,
}

/// What a server's PKI directory holds of the shared secrets (each part may be missing).
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// `ca.crt` and `ca.key`.
    pub ca: Option<CertPair>,
    /// `sa.key`.
    pub sa_key: Option<Vec<u8>>,
    /// `node-token`.
    pub node_token: Option<String>,
    /// `encryption-keys`.
    pub encryption_keys: Option<Vec<NamedKey>>,
}

/// What to do given the local copies and the stored record.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Nothing is stored: store the local secrets (made where missing) — the first server of a cluster.
    Publish,
    /// A record is stored: write these local files; with `republish`, store this merged set back (the local
    /// directory had encryption keys the record lacked: they still open what they sealed).
    Adopt {
        /// The shared secrets to write locally.
        shared: Shared,
        /// Whether the record must be rewritten with `shared`.
        republish: bool,
        /// Parts of the local directory that differed and are replaced (for the log).
        replaced: Vec<&'static str>,
    },
}

/// Decides between the local copies and the stored record. A local CA other than the stored one is refused (the
/// certificates it issued — node and admin credentials — would stop working); the stored service-account key and
/// node token win; encryption keys are merged (the stored ones first, so the stored sealing key keeps sealing).
pub fn decide(local: &Local, stored: Option<&Shared>) -> Result<Decision, SecretsError> {
    let Some(stored) = stored else { return Ok(Decision::Publish) };
    if let Some(ca) = &local.ca
        && ca.cert_pem.trim() != stored.ca.cert_pem.trim()
    {
        return Err(SecretsError::Conflict(
            "this server's PKI directory holds a cluster CA other than the one of the cluster in the datastore: it \
             was made for another cluster; start with an empty --data-dir (or move its pki directory aside) to join"
                .into(),
        ));
    }
    if let Some(ca) = &local.ca
        && ca.key_pem.trim() != stored.ca.key_pem.trim()
    {
        return Err(SecretsError::Conflict(
            "this server's ca.key is not the key of the cluster CA it holds (ca.crt matches the cluster's): restore \
             the right ca.key or start with an empty --data-dir"
                .into(),
        ));
    }
    let mut replaced = Vec::new();
    if local.sa_key.as_ref().is_some_and(|k| *k != stored.sa_key) {
        replaced.push("sa.key");
    }
    if local.node_token.as_ref().is_some_and(|t| t.trim() != stored.node_token.trim()) {
        replaced.push("node-token");
    }
    let mut keys = stored.encryption_keys.clone();
    let mut republish = false;
    for k in local.encryption_keys.iter().flatten() {
        if stored.retired.contains(&k.name) {
            continue; // retired from the cluster: dropped from this server's file too
        }
        match keys.iter().find(|s| s.name == k.name) {
            Some(s) if s.key != k.key => {
                return Err(SecretsError::Conflict(format!(
                    "the Secret encryption key {:?} in this server's {} is not the cluster's key of that name: \
                     Secrets sealed with either would not open on every server; remove one of them by hand",
                    k.name,
                    pki::ENCRYPTION_KEYS
                )));
            }
            Some(_) => {}
            None => {
                keys.push(k.clone());
                republish = true;
            }
        }
    }
    if local.encryption_keys.as_ref().is_some_and(|l| !same_keys(l, &keys)) {
        replaced.push(pki::ENCRYPTION_KEYS);
    }
    Ok(Decision::Adopt { shared: Shared { encryption_keys: keys, ..stored.clone() }, republish, replaced })
}

/// The shared secrets without the encryption key `name`, remembered as retired. Refused for a key the cluster does
/// not have, for the sealing key (the first: rotate first), and while `sealing_with` Secrets are still sealed
/// with it (a rotation re-encrypts them).
pub fn retire(shared: &Shared, name: &str, sealing_with: usize) -> Result<Shared, SecretsError> {
    let Some(at) = shared.encryption_keys.iter().position(|k| k.name == name) else {
        let known: Vec<&str> = shared.encryption_keys.iter().map(|k| k.name.as_str()).collect();
        return Err(SecretsError::Conflict(format!("the cluster has no encryption key {name:?} (it has {known:?})")));
    };
    if at == 0 {
        return Err(SecretsError::Conflict(format!(
            "{name:?} is the key Secrets are sealed with now: run `skiff secrets rotate-key` first, then retire it"
        )));
    }
    if sealing_with > 0 {
        return Err(SecretsError::Conflict(format!(
            "{sealing_with} Secrets are still sealed with {name:?}: run `skiff secrets rotate-key` to re-encrypt them \
             first (retiring it now would make them unreadable)"
        )));
    }
    let mut out = shared.clone();
    out.encryption_keys.remove(at);
    out.retired.push(name.to_string());
    Ok(out)
}

fn same_keys(a: &[NamedKey], b: &[NamedKey]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.name == y.name && x.key == y.key)
}

#[derive(Serialize, Deserialize)]
struct Record {
    format: String,
    iterations: u32,
    salt: String,
    nonce: String,
    sealed: String,
}

#[derive(Serialize, Deserialize)]
struct Plain {
    ca_cert: String,
    ca_key: String,
    sa_key: String,
    node_token: String,
    encryption_keys: String,
    #[serde(default)]
    retired: Vec<String>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn derive(token: &str, salt: &[u8], iterations: u32) -> Aes256Gcm {
    let mut key = [0u8; 32];
    let iterations = std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN);
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, token.as_bytes(), &mut key);
    Aes256Gcm::new_from_slice(&key).expect("a 32-byte key is valid for AES-256")
}

/// Seals `shared` under `token`.
pub fn seal(token: &str, shared: &Shared) -> Vec<u8> {
    let plain = Plain {
        ca_cert: shared.ca.cert_pem.clone(),
        ca_key: shared.ca.key_pem.clone(),
        sa_key: b64().encode(&shared.sa_key),
        node_token: shared.node_token.clone(),
        encryption_keys: pki::render_encryption_keys(&shared.encryption_keys),
        retired: shared.retired.clone(),
    };
    let plain = serde_json::to_vec(&plain).expect("strings serialise");
    let salt: [u8; 16] = rand::random();
    let nonce: [u8; 12] = rand::random();
    let sealed = derive(token, &salt, ITERATIONS)
        .encrypt(&Nonce::from(nonce), Payload { msg: &plain, aad: KEY.as_bytes() })
        .expect("AES-GCM seals any message of this size");
    let record = Record {
        format: FORMAT.into(),
        iterations: ITERATIONS,
        salt: b64().encode(salt),
        nonce: b64().encode(nonce),
        sealed: b64().encode(sealed),
    };
    serde_json::to_vec(&record).expect("strings serialise")
}

/// Opens a record sealed by [`seal`]; a record that does not open with `token` is [`SecretsError::WrongToken`].
pub fn open(token: &str, record: &[u8]) -> Result<Shared, SecretsError> {
    let corrupt = |m: String| SecretsError::Corrupt(m);
    let record: Record = serde_json::from_slice(record).map_err(|e| corrupt(e.to_string()))?;
    if record.format != FORMAT {
        return Err(corrupt(format!("format {:?}, this version reads {FORMAT:?}", record.format)));
    }
    if record.iterations == 0 || record.iterations > 10_000_000 {
        return Err(corrupt(format!("{} PBKDF2 iterations", record.iterations)));
    }
    let decode = |what: &str, v: &str| b64().decode(v).map_err(|e| corrupt(format!("{what}: {e}")));
    let (salt, nonce, sealed) =
        (decode("salt", &record.salt)?, decode("nonce", &record.nonce)?, decode("sealed", &record.sealed)?);
    let nonce: [u8; 12] = nonce.try_into().map_err(|n: Vec<u8>| corrupt(format!("a nonce of {} bytes", n.len())))?;
    let plain = derive(token, &salt, record.iterations)
        .decrypt(&Nonce::from(nonce), Payload { msg: &sealed, aad: KEY.as_bytes() })
        .map_err(|_| SecretsError::WrongToken)?;
    let plain: Plain = serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?;
    Ok(Shared {
        ca: CertPair { cert_pem: plain.ca_cert, key_pem: plain.ca_key },
        sa_key: decode("sa_key", &plain.sa_key)?,
        node_token: plain.node_token,
        encryption_keys: pki::parse_encryption_keys(&plain.encryption_keys).map_err(corrupt)?,
        retired: plain.retired,
    })
}

/// [`seal`] on a blocking thread: the key derivation takes tens of milliseconds, too long for an async worker.
async fn sealed(token: &str, shared: &Shared) -> Bytes {
    let (token, shared) = (token.to_string(), shared.clone());
    match tokio::task::spawn_blocking(move || seal(&token, &shared)).await {
        Ok(record) => Bytes::from(record),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// [`open`] on a blocking thread.
async fn opened(token: &str, record: &Bytes) -> Result<Shared, SecretsError> {
    let (token, record) = (token.to_string(), record.clone());
    match tokio::task::spawn_blocking(move || open(&token, &record)).await {
        Ok(shared) => shared,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The server token: `given` (and then written to the PKI directory for later starts), else the one in the PKI
/// directory; `None` when neither exists.
pub fn token(dir: &Path, given: Option<&str>) -> Result<Option<String>, SecretsError> {
    if let Some(t) = given {
        let t = t.trim();
        if t.is_empty() {
            return Err(SecretsError::Conflict("--token is empty".into()));
        }
        return Ok(Some(t.to_string()));
    }
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        Ok(_) => Err(SecretsError::Conflict(format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(pki::PkiError::Io { path, source: e }.into()),
    }
}

/// A new server token.
pub fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("skiff-server.{}", hex::encode(bytes))
}

/// Makes the PKI directory `dir` hold the cluster's shared secrets: adopts the datastore's record when there is
/// one (sealed under `token`), else stores this server's own (made where missing) — after `check` accepts them
/// (it refuses keys that cannot open the Secrets already stored). Writes the token file once the record opened or
/// was stored with it. Returns the shared secrets now on disk.
pub async fn establish(
    store: &dyn Storage,
    dir: &Path,
    token: Option<String>,
    check: impl AsyncFn(&Shared) -> Result<(), SecretsError>,
) -> Result<Shared, SecretsError> {
    std::fs::create_dir_all(dir).map_err(|source| pki::PkiError::Io { path: dir.to_path_buf(), source })?;
    let local = pki::read_shared(dir)?;
    // bounded: a lost race to store the first record is followed by adopting the winner's
    for _ in 0..3 {
        let stored = store.get(KEY).await?;
        let opened = match (&stored, &token) {
            (Some(kv), Some(t)) => Some(opened(t, &kv.value).await?),
            (Some(_), None) => return Err(SecretsError::NoToken),
            (None, _) => None,
        };
        match decide(&local, opened.as_ref())? {
            Decision::Publish => {
                let shared = pki::complete_shared(&local)?;
                check(&shared).await?;
                let token = token.clone().unwrap_or_else(new_token);
                // the token is saved before anything is sealed with it: a crash after the record is stored must not
                // leave a record nobody can open
                pki::write_token(dir, &token)?;
                match store.create(KEY, sealed(&token, &shared).await).await {
                    Ok(_) => {}
                    Err(StorageError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
                pki::write_shared(dir, &shared)?;
                tracing::info!(key = KEY, "stored the cluster's shared secrets: other servers join with its token");
                return Ok(shared);
            }
            Decision::Adopt { shared, republish, replaced } => {
                let (Some(kv), Some(token)) = (stored, token.as_ref()) else {
                    unreachable!("adopting a stored record")
                };
                if republish {
                    match store.update(KEY, sealed(token, &shared).await, kv.mod_revision).await {
                        Ok(_) => tracing::info!("added this server's extra encryption keys to the cluster's"),
                        Err(StorageError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                if !replaced.is_empty() {
                    tracing::warn!(?replaced, "local copies replaced by the cluster's shared secrets");
                }
                if local.ca.is_none() {
                    // certificates left from a CA this directory no longer has are issued again by the cluster's
                    pki::forget_issued(dir)?;
                }
                pki::write_shared(dir, &shared)?;
                pki::write_token(dir, token)?;
                return Ok(shared);
            }
        }
    }
    Err(SecretsError::Conflict(format!("{KEY} kept changing while this server read it; start it again")))
}

/// Finishes a token rotation that stopped between sealing the record and renaming the token file (a crash, an
/// answer lost on the way back from the datastore): `dir`'s [`NEXT_TOKEN_FILE`] replaces the token file when the
/// stored record opens with it, and is removed when the record opens with the current token (or there is none).
/// A staged token that opens nothing is left for the operator, and the start goes on to refuse the current one.
pub async fn finish_rotation(store: &dyn Storage, dir: &Path) -> Result<(), SecretsError> {
    let next_path = dir.join(NEXT_TOKEN_FILE);
    let next = match std::fs::read_to_string(&next_path) {
        Ok(t) => t.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(pki::PkiError::Io { path: next_path, source: e }.into()),
    };
    let current = token(dir, None)?;
    let Some(kv) = store.get(KEY).await? else {
        let _ = std::fs::remove_file(&next_path);
        return Ok(());
    };
    if !next.is_empty() && opened(&next, &kv.value).await.is_ok() {
        let file = dir.join(TOKEN_FILE);
        std::fs::rename(&next_path, &file).map_err(|source| pki::PkiError::Io { path: file.clone(), source })?;
        sync_dir(dir)?;
        tracing::warn!(file = %file.display(), "finished an interrupted server token rotation");
    } else if let Some(current) = current
        && opened(&current, &kv.value).await.is_ok()
    {
        let _ = std::fs::remove_file(&next_path);
    }
    Ok(())
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), SecretsError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| pki::PkiError::Io { path: dir.to_path_buf(), source }.into())
}

/// Stores `shared` as the cluster's record again (after an encryption key rotation or retirement), replacing the
/// record at the revision it was read at.
pub async fn republish(store: &dyn Storage, token: &str, shared: &Shared) -> Result<(), SecretsError> {
    reseal(store, token, token, shared).await
}

/// Stores `shared` as the cluster's record sealed under `new_token`, replacing the record that `token` opens (at the
/// revision it was read at, so a record changed meanwhile fails rather than being overwritten).
pub async fn reseal(store: &dyn Storage, token: &str, new_token: &str, shared: &Shared) -> Result<(), SecretsError> {
    let Some(kv) = store.get(KEY).await? else {
        store.create(KEY, sealed(new_token, shared).await).await?;
        return Ok(());
    };
    opened(token, &kv.value).await?;
    store.update(KEY, sealed(new_token, shared).await, kv.mod_revision).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, byte: u8) -> NamedKey {
        NamedKey { name: name.into(), key: [byte; 32] }
    }

    fn shared(ca: &str) -> Shared {
        Shared {
            ca: CertPair { cert_pem: ca.into(), key_pem: format!("{ca}-key") },
            sa_key: b"sa".to_vec(),
            node_token: "node".into(),
            encryption_keys: vec![key("a", 1)],
            retired: Vec::new(),
        }
    }

    #[test]
    fn a_key_retires_only_when_nothing_is_sealed_with_it_and_stays_retired() {
        let mut s = shared("CA");
        s.encryption_keys = vec![key("new", 2), key("old", 1)];
        let err = |r: Result<Shared, SecretsError>| r.expect_err("refused").to_string();
        assert!(err(retire(&s, "new", 0)).contains("rotate-key` first"), "the sealing key");
        assert!(err(retire(&s, "old", 3)).contains("3 Secrets are still sealed"), "in use");
        assert!(err(retire(&s, "nope", 0)).contains("no encryption key \"nope\""), "unknown");
        let r = retire(&s, "old", 0).expect("retired");
        assert_eq!(r.encryption_keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["new"]);
        assert_eq!(r.retired, ["old"]);
        // the record keeps the list: a server whose file still has the key drops it instead of adding it back
        let back = open("t", &seal("t", &r)).expect("opens");
        assert_eq!(back.retired, ["old"]);
        let local = Local { encryption_keys: Some(vec![key("new", 2), key("old", 1)]), ..Local::default() };
        let Decision::Adopt { shared, republish, replaced } = decide(&local, Some(&back)).expect("adopts") else {
            panic!("a record is stored")
        };
        assert_eq!(shared.encryption_keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["new"]);
        assert!(!republish, "nothing to add to the record");
        assert!(replaced.contains(&pki::ENCRYPTION_KEYS), "the local file is rewritten");
    }

    #[test]
    fn a_record_opens_with_its_token_only_and_is_bound_to_its_content() {
        let s = shared("CA");
        let sealed = seal("tok", &s);
        let back = open("tok", &sealed).expect("opens");
        assert_eq!(back.ca.cert_pem, "CA");
        assert_eq!(back.ca.key_pem, "CA-key");
        assert_eq!(back.sa_key, b"sa");
        assert_eq!(back.node_token, "node");
        assert!(same_keys(&back.encryption_keys, &s.encryption_keys));
        assert!(matches!(open("other", &sealed), Err(SecretsError::WrongToken)));
        // a flipped byte of the ciphertext is caught by the tag
        let mut rec: serde_json::Value = serde_json::from_slice(&sealed).expect("json");
        let mut ct = b64().decode(rec["sealed"].as_str().expect("str")).expect("b64");
        ct[0] ^= 1;
        rec["sealed"] = b64().encode(ct).into();
        assert!(matches!(open("tok", &serde_json::to_vec(&rec).expect("json")), Err(SecretsError::WrongToken)));
        assert!(matches!(open("tok", b"{}"), Err(SecretsError::Corrupt(_))));
        assert!(matches!(open("tok", b"not json"), Err(SecretsError::Corrupt(_))));
        // two seals of the same secrets differ (fresh salt and nonce)
        assert_ne!(seal("tok", &s), sealed);
    }

    #[tokio::test]
    async fn servers_on_one_datastore_share_the_first_ones_secrets() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = crate::storage::sqlite::SqliteStorage::open(tmp.path().join("state.db")).expect("sqlite");
        let ok = async |_: &Shared| Ok(());
        let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
        // the first server: makes everything, stores it, keeps its token
        let first = establish(&store, &a, None, ok).await.expect("first server");
        let token_a = std::fs::read_to_string(a.join(TOKEN_FILE)).expect("token file").trim().to_string();
        assert!(token_a.starts_with("skiff-server."), "{token_a}");
        assert!(store.get(KEY).await.expect("get").is_some());
        let pki_a = pki::Pki::load_or_create(&a, &[]).expect("pki a");
        assert_eq!(pki_a.ca.cert_pem, first.ca.cert_pem);
        // a second server with the token: the same CA, keys and tokens, its own serving certificate
        establish(&store, &b, Some(token_a.clone()), ok).await.expect("joins");
        let pki_b = pki::Pki::load_or_create(&b, &[]).expect("pki b");
        assert_eq!(pki_b.ca.cert_pem, pki_a.ca.cert_pem);
        assert_eq!(pki_b.sa_key, pki_a.sa_key);
        assert_eq!(pki_b.node_token, pki_a.node_token);
        assert!(same_keys(&pki_b.encryption_keys, &pki_a.encryption_keys));
        assert_ne!(pki_b.server.cert_pem, pki_a.server.cert_pem);
        // a wrong token, or none: refused, and nothing written
        assert!(matches!(establish(&store, &c, Some("guess".into()), ok).await, Err(SecretsError::WrongToken)));
        assert!(matches!(establish(&store, &c, None, ok).await, Err(SecretsError::NoToken)));
        assert!(pki::read_shared(&c).expect("read").ca.is_none() && !c.join(TOKEN_FILE).exists());
        // a server restarted without --token uses its token file
        let kept = token(&b, None).expect("reads the token file");
        assert_eq!(kept.as_deref(), Some(token_a.as_str()));
        establish(&store, &b, kept, ok).await.expect("restart");
    }

    #[tokio::test]
    async fn the_first_server_stores_nothing_its_check_refuses() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = crate::storage::sqlite::SqliteStorage::open(tmp.path().join("state.db")).expect("sqlite");
        let refuse = async |_: &Shared| Err(SecretsError::Conflict("Secrets sealed with a lost key".into()));
        let dir = tmp.path().join("a");
        let err = establish(&store, &dir, None, refuse).await.expect_err("refused");
        assert!(err.to_string().contains("lost key"), "{err}");
        assert!(store.get(KEY).await.expect("get").is_none(), "no record stored");
        assert!(pki::read_shared(&dir).expect("read").encryption_keys.is_none(), "no key file left behind");
    }

    #[test]
    fn decisions() {
        let stored = shared("CA");
        // nothing stored: publish, whatever is local
        assert!(matches!(decide(&Local::default(), None), Ok(Decision::Publish)));
        // an empty directory adopts everything, replacing nothing
        match decide(&Local::default(), Some(&stored)).expect("adopts") {
            Decision::Adopt { republish, replaced, shared } => {
                assert!(!republish && replaced.is_empty());
                assert_eq!(shared.ca.cert_pem, "CA");
            }
            d => panic!("{d:?}"),
        }
        // another CA: refused
        let other = Local { ca: Some(shared("OTHER").ca), ..Default::default() };
        assert!(
            matches!(decide(&other, Some(&stored)), Err(SecretsError::Conflict(m)) if m.contains("another cluster"))
        );
        // the right CA certificate with another key: refused too
        let wrong_key =
            Local { ca: Some(CertPair { cert_pem: "CA".into(), key_pem: "OTHER-key".into() }), ..Default::default() };
        assert!(matches!(decide(&wrong_key, Some(&stored)), Err(SecretsError::Conflict(m)) if m.contains("ca.key")));
        // the same CA with a stale SA key and node token: the stored ones win, and it is said
        let stale = Local {
            ca: Some(stored.ca.clone()),
            sa_key: Some(b"old".to_vec()),
            node_token: Some("old".into()),
            encryption_keys: Some(vec![key("a", 1)]),
        };
        match decide(&stale, Some(&stored)).expect("adopts") {
            Decision::Adopt { shared, republish, replaced } => {
                assert_eq!(shared.sa_key, b"sa");
                assert!(!republish);
                assert_eq!(replaced, vec!["sa.key", "node-token"]);
            }
            d => panic!("{d:?}"),
        }
        // a local-only encryption key is kept (after the stored ones) and stored back
        let extra = Local { encryption_keys: Some(vec![key("b", 2), key("a", 1)]), ..Default::default() };
        match decide(&extra, Some(&stored)).expect("adopts") {
            Decision::Adopt { shared, republish, replaced } => {
                let names: Vec<&str> = shared.encryption_keys.iter().map(|k| k.name.as_str()).collect();
                assert_eq!(names, ["a", "b"]);
                assert!(republish);
                assert_eq!(replaced, vec![pki::ENCRYPTION_KEYS], "the order changed");
            }
            d => panic!("{d:?}"),
        }
        // a local key named like a stored one but different: refused
        let clash = Local { encryption_keys: Some(vec![key("a", 9)]), ..Default::default() };
        assert!(matches!(decide(&clash, Some(&stored)), Err(SecretsError::Conflict(m)) if m.contains("\"a\"")));
    }

    #[tokio::test]
    async fn a_token_rotation_cut_short_is_finished_by_whichever_token_opens_the_record() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let store = crate::storage::sqlite::SqliteStorage::open(tmp.path().join("state.db")).expect("sqlite");
        let token_file = || std::fs::read_to_string(dir.join(TOKEN_FILE)).expect("token file").trim().to_string();
        pki::write_token(&dir, "old").expect("token");
        store.create(KEY, sealed("old", &shared("CA")).await).await.expect("record");
        // staged, never sealed: the current token stays, the staged one goes
        pki::write_next_token(&dir, "new").expect("staged");
        finish_rotation(&store, &dir).await.expect("finished");
        assert_eq!(token_file(), "old");
        assert!(!dir.join(NEXT_TOKEN_FILE).exists());
        // sealed, not yet renamed (the crash this is for): the staged token takes the file's place
        pki::write_next_token(&dir, "new").expect("staged");
        reseal(&store, "old", "new", &shared("CA")).await.expect("resealed");
        finish_rotation(&store, &dir).await.expect("finished");
        assert_eq!(token_file(), "new");
        assert!(!dir.join(NEXT_TOKEN_FILE).exists());
        // a staged token that opens nothing is left for the operator to look at
        pki::write_next_token(&dir, "stray").expect("staged");
        pki::write_token(&dir, "lost").expect("token");
        finish_rotation(&store, &dir).await.expect("finished");
        assert!(dir.join(NEXT_TOKEN_FILE).exists());
        assert_eq!(token_file(), "lost");
    }
}

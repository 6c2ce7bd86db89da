//! Encryption at rest: values under chosen key prefixes (Secrets) are sealed with AES-256-GCM before they reach the
//! backend, as Kubernetes' `aesgcm` encryption provider does.
//!
//! A sealed value is `k8s:enc:aesgcm:v2:<key name>:` followed by a random 12-byte nonce and the ciphertext, with
//! the storage key as additional authenticated data (a ciphertext moved to another key does not open). Values
//! sealed by earlier versions (`…:v1:…`, without that binding) are still read; values without a marker (written
//! before encryption) are read as they are. Several keys may be configured: the first seals, all open.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use bytes::Bytes;
use futures::StreamExt;

use super::{KeyValue, ListOptions, ListResult, Revision, SharedEvent, Storage, StorageError, WatchStream};

const MARKER_V1: &str = "k8s:enc:aesgcm:v1:";
const MARKER: &str = "k8s:enc:aesgcm:v2:";

/// A named 32-byte AES-256 key.
#[derive(Clone)]
pub struct NamedKey {
    /// The name written into every value it seals.
    pub name: String,
    /// The key.
    pub key: [u8; 32],
}

impl std::fmt::Debug for NamedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedKey").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A [`Storage`] that encrypts values under `prefixes`.
pub struct Encrypted<S> {
    inner: S,
    sealer: Arc<Sealer>,
    prefixes: Vec<String>,
}

/// The ciphers and the names of their keys; the first seals.
struct Sealer {
    ciphers: Vec<(String, Aes256Gcm)>,
}

impl<S> std::fmt::Debug for Encrypted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sealer.ciphers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Encrypted").field("keys", &names).field("prefixes", &self.prefixes).finish()
    }
}

/// The name of the key a stored value was sealed with, if it is sealed.
pub fn sealed_with(value: &[u8]) -> Option<String> {
    let rest = value.strip_prefix(MARKER.as_bytes()).or_else(|| value.strip_prefix(MARKER_V1.as_bytes()))?;
    let colon = rest.iter().position(|b| *b == b':')?;
    Some(String::from_utf8_lossy(&rest[..colon]).into_owned())
}

impl<S: Storage> Encrypted<S> {
    /// Wraps `inner`, sealing values under `prefixes` with the first of `keys` and opening with any of them.
    ///
    /// # Panics
    /// If `keys` is empty.
    pub fn new(inner: S, keys: &[NamedKey], prefixes: Vec<String>) -> Self {
        assert!(!keys.is_empty(), "at least one encryption key");
        let ciphers = keys
            .iter()
            .map(|k| (k.name.clone(), Aes256Gcm::new_from_slice(&k.key).expect("a 32-byte key is valid for AES-256")))
            .collect();
        Encrypted { inner, sealer: Arc::new(Sealer { ciphers }), prefixes }
    }

    fn covered(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }

    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes, StorageError> {
        if !self.covered(key) {
            return Ok(value);
        }
        self.sealer.seal(key, value)
    }

    fn open(&self, kv: KeyValue) -> Result<KeyValue, StorageError> {
        self.sealer.open(kv)
    }

    /// The storage underneath (sealed values as stored).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The storage underneath, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl Sealer {
    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes, StorageError> {
        let (name, cipher) = &self.ciphers[0];
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        let ct = cipher
            .encrypt(&nonce, Payload { msg: value.as_ref(), aad: key.as_bytes() })
            .map_err(|e| StorageError::Decrypt { key: key.to_string(), reason: format!("encryption failed: {e}") })?;
        let header = format!("{MARKER}{name}:");
        let mut out = Vec::with_capacity(header.len() + 12 + ct.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        Ok(Bytes::from(out))
    }

    fn open(&self, mut kv: KeyValue) -> Result<KeyValue, StorageError> {
        let (rest, bound) = if let Some(r) = kv.value.strip_prefix(MARKER.as_bytes()) {
            (r, true)
        } else if let Some(r) = kv.value.strip_prefix(MARKER_V1.as_bytes()) {
            (r, false)
        } else {
            return Ok(kv);
        };
        let fail = |reason: String| StorageError::Decrypt { key: kv.key.clone(), reason };
        let colon = rest.iter().position(|b| *b == b':').ok_or_else(|| fail("malformed header".into()))?;
        let name = String::from_utf8_lossy(&rest[..colon]);
        let Some((_, cipher)) = self.ciphers.iter().find(|(n, _)| *n == name) else {
            return Err(fail(format!("sealed with key {name:?}, which this server does not have")));
        };
        let body = &rest[colon + 1..];
        if body.len() < 12 {
            return Err(fail("truncated value".into()));
        }
        let nonce_bytes: [u8; 12] = body[..12].try_into().expect("checked length");
        let nonce = Nonce::from(nonce_bytes);
        let aad: &[u8] = if bound { kv.key.as_bytes() } else { b"" };
        let pt = cipher.decrypt(&nonce, Payload { msg: &body[12..], aad }).map_err(|_| {
            fail("authentication failed (wrong key, corrupted data, or a value moved from another key)".into())
        })?;
        kv.value = Bytes::from(pt);
        Ok(kv)
    }

    fn open_event(&self, shared: Arc<SharedEvent>) -> Result<Arc<SharedEvent>, StorageError> {
        let sealed =
            |kv: &KeyValue| kv.value.starts_with(MARKER.as_bytes()) || kv.value.starts_with(MARKER_V1.as_bytes());
        if !sealed(&shared.kv) && !shared.prev.as_ref().is_some_and(sealed) {
            // most events: shared as they are
            return Ok(shared);
        }
        let mut ev = shared.event.clone();
        ev.kv = self.open(ev.kv)?;
        // the previous value is context, not the change: one sealed with a key retired since (history older than the
        // retirement's compaction) is dropped rather than failing the watch
        ev.prev = ev.prev.and_then(|p| self.open(p).ok());
        Ok(SharedEvent::new(ev))
    }
}

#[async_trait::async_trait]
impl<S: Storage> Storage for Encrypted<S> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        self.inner.get(key).await?.map(|kv| self.open(kv)).transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StorageError> {
        let mut r = self.inner.list(prefix, opts).await?;
        r.items = r.items.into_iter().map(|kv| self.open(kv)).collect::<Result<_, _>>()?;
        Ok(r)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StorageError> {
        let mut kv = self.inner.create(key, self.seal(key, value.clone())?).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue, StorageError> {
        let mut kv = self.inner.update(key, self.seal(key, value.clone())?, expected).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StorageError> {
        let kv = self.inner.delete(key, expected).await?;
        self.open(kv)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StorageError> {
        let inner = self.inner.watch(prefix, after).await?;
        let sealer = self.sealer.clone();
        Ok(Box::pin(inner.map(move |r| r.and_then(|ev| sealer.open_event(ev)))))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StorageError> {
        self.inner.compact(revision).await
    }

    async fn revision(&self) -> Result<Revision, StorageError> {
        self.inner.revision().await
    }

    async fn compacted_revision(&self) -> Result<Revision, StorageError> {
        self.inner.compacted_revision().await
    }

    async fn claim_compaction(&self, seen_version: i64, revision: Revision) -> Result<super::Claim, StorageError> {
        self.inner.claim_compaction(seen_version, revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;

    #[tokio::test]
    async fn sealed_values_are_not_in_the_database_file_and_read_back_in_plain_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db.sqlite");
        let keys = [NamedKey { name: "key1".into(), key: [7u8; 32] }];
        let s = Encrypted::new(SqliteStorage::open(&path).expect("opens"), &keys, vec!["/registry/secrets/".into()]);
        s.create("/registry/secrets/default/db", Bytes::from_static(b"{\"data\":\"hunter2-plaintext\"}"))
            .await
            .expect("create");
        s.create("/registry/configmaps/default/c", Bytes::from_static(b"visible-config")).await.expect("create");
        let got = s.get("/registry/secrets/default/db").await.expect("get").expect("present");
        assert_eq!(got.value, Bytes::from_static(b"{\"data\":\"hunter2-plaintext\"}"));
        drop(s);
        let mut raw = Vec::new();
        for f in ["db.sqlite", "db.sqlite-wal"] {
            if let Ok(b) = std::fs::read(dir.path().join(f)) {
                raw.extend(b);
            }
        }
        let hay = String::from_utf8_lossy(&raw);
        assert!(!hay.contains("hunter2-plaintext"), "the secret is in the file in plain text");
        assert!(hay.contains("visible-config"), "the check can see plain values");
        let wrong = Encrypted::new(
            SqliteStorage::open(&path).expect("opens"),
            &[NamedKey { name: "key1".into(), key: [8u8; 32] }],
            vec!["/registry/secrets/".into()],
        );
        assert!(matches!(wrong.get("/registry/secrets/default/db").await, Err(StorageError::Decrypt { .. })));
    }

    #[tokio::test]
    async fn keys_rotate_and_ciphertexts_are_bound_to_their_storage_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db.sqlite");
        let old = NamedKey { name: "old".into(), key: [1u8; 32] };
        let new = NamedKey { name: "new".into(), key: [2u8; 32] };
        let prefixes = || vec!["/registry/secrets/".to_string()];
        let a = Encrypted::new(SqliteStorage::open(&path).expect("opens"), std::slice::from_ref(&old), prefixes());
        a.create("/registry/secrets/ns/a", Bytes::from_static(b"alpha")).await.expect("create");
        a.create("/registry/secrets/ns/b", Bytes::from_static(b"bravo")).await.expect("create");
        drop(a);
        // the new key first: old values still open, new writes use the new key
        let b = Encrypted::new(SqliteStorage::open(&path).expect("opens"), &[new.clone(), old.clone()], prefixes());
        assert_eq!(
            b.get("/registry/secrets/ns/a").await.expect("get").expect("there").value,
            Bytes::from_static(b"alpha")
        );
        let kv = b.inner().get("/registry/secrets/ns/a").await.expect("raw").expect("there");
        assert_eq!(sealed_with(&kv.value).as_deref(), Some("old"));
        b.update("/registry/secrets/ns/a", Bytes::from_static(b"alpha"), kv.mod_revision).await.expect("rewrite");
        let kv = b.inner().get("/registry/secrets/ns/a").await.expect("raw").expect("there");
        assert_eq!(sealed_with(&kv.value).as_deref(), Some("new"));
        // a ciphertext copied under another key does not open
        let stolen = b.inner().get("/registry/secrets/ns/a").await.expect("raw").expect("there").value;
        let target = b.inner().get("/registry/secrets/ns/b").await.expect("raw").expect("there");
        b.inner().update("/registry/secrets/ns/b", stolen, target.mod_revision).await.expect("raw swap");
        assert!(matches!(b.get("/registry/secrets/ns/b").await, Err(StorageError::Decrypt { .. })));
        // without the old key, a value it sealed is an error, not garbage
        drop(b);
        let c = Encrypted::new(SqliteStorage::open(&path).expect("opens"), std::slice::from_ref(&new), prefixes());
        c.create("/registry/secrets/ns/c", Bytes::from_static(b"charlie")).await.expect("create");
        assert!(c.get("/registry/secrets/ns/c").await.expect("get").is_some());
    }

    #[tokio::test]
    async fn history_sealed_with_a_retired_key_does_not_fail_a_watch() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db.sqlite");
        let (old, new) =
            (NamedKey { name: "old".into(), key: [1u8; 32] }, NamedKey { name: "new".into(), key: [2u8; 32] });
        let prefixes = || vec!["/registry/secrets/".to_string()];
        let before = {
            let s = Encrypted::new(SqliteStorage::open(&path).expect("opens"), std::slice::from_ref(&old), prefixes());
            let kv = s.create("/registry/secrets/default/db", Bytes::from_static(b"v1")).await.expect("create");
            kv.mod_revision
        };
        // rotated: rewritten with the new key (the event's previous value is the old ciphertext), then the old key
        // retired
        let rotated = Encrypted::new(SqliteStorage::open(&path).expect("opens"), &[new.clone(), old], prefixes());
        rotated.update("/registry/secrets/default/db", Bytes::from_static(b"v1"), before).await.expect("rewrite");
        drop(rotated);
        let retired = Encrypted::new(SqliteStorage::open(&path).expect("opens"), &[new], prefixes());
        let mut w = retired.watch("/registry/secrets/", before).await.expect("watch");
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("the change reads, though its previous value does not");
        assert_eq!(ev.kv.value, Bytes::from_static(b"v1"));
        assert!(ev.prev.is_none());
    }
}

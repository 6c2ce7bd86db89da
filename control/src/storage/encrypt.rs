//! Encryption at rest: values under chosen key prefixes (Secrets) are sealed with AES-256-GCM before they reach the
//! backend, as Kubernetes' `aesgcm` encryption provider does.
//!
//! A sealed value is `k8s:enc:aesgcm:v1:<key name>:` followed by a random 12-byte nonce and the ciphertext. Values
//! without the marker (written before encryption was turned on) are read as they are.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use bytes::Bytes;
use futures::StreamExt;

use super::{Event, KeyValue, ListOptions, ListResult, Revision, Storage, StorageError, WatchStream};

const MARKER: &str = "k8s:enc:aesgcm:v1:";

/// A [`Storage`] that encrypts values under `prefixes`.
pub struct Encrypted<S> {
    inner: S,
    sealer: Arc<Sealer>,
    prefixes: Vec<String>,
}

/// The cipher and the name of its key.
struct Sealer {
    cipher: Aes256Gcm,
    key_name: String,
}

impl<S> std::fmt::Debug for Encrypted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted").field("key_name", &self.sealer.key_name).field("prefixes", &self.prefixes).finish()
    }
}

impl<S: Storage> Encrypted<S> {
    /// Wraps `inner`, sealing values under `prefixes` with the 32-byte `key` named `key_name`.
    pub fn new(inner: S, key: &[u8; 32], key_name: &str, prefixes: Vec<String>) -> Self {
        let cipher = Aes256Gcm::new_from_slice(key).expect("a 32-byte key is valid for AES-256");
        Encrypted { inner, sealer: Arc::new(Sealer { cipher, key_name: key_name.to_string() }), prefixes }
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
}

impl Sealer {
    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes, StorageError> {
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        let ct = self
            .cipher
            .encrypt(&nonce, value.as_ref())
            .map_err(|e| StorageError::Decrypt { key: key.to_string(), reason: format!("encryption failed: {e}") })?;
        let header = format!("{MARKER}{}:", self.key_name);
        let mut out = Vec::with_capacity(header.len() + 12 + ct.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        Ok(Bytes::from(out))
    }

    fn open(&self, mut kv: KeyValue) -> Result<KeyValue, StorageError> {
        let Some(rest) = kv.value.strip_prefix(MARKER.as_bytes()) else {
            return Ok(kv);
        };
        let fail = |reason: String| StorageError::Decrypt { key: kv.key.clone(), reason };
        let colon = rest.iter().position(|b| *b == b':').ok_or_else(|| fail("malformed header".into()))?;
        let name = String::from_utf8_lossy(&rest[..colon]);
        if name != self.key_name {
            return Err(fail(format!("sealed with key {name:?}, which this server does not have")));
        }
        let body = &rest[colon + 1..];
        if body.len() < 12 {
            return Err(fail("truncated value".into()));
        }
        let nonce_bytes: [u8; 12] = body[..12].try_into().expect("checked length");
        let nonce = Nonce::from(nonce_bytes);
        let pt = self
            .cipher
            .decrypt(&nonce, &body[12..])
            .map_err(|_| fail("authentication failed (wrong key or corrupted data)".into()))?;
        kv.value = Bytes::from(pt);
        Ok(kv)
    }

    fn open_event(&self, mut ev: Event) -> Result<Event, StorageError> {
        ev.kv = self.open(ev.kv)?;
        ev.prev = ev.prev.map(|p| self.open(p)).transpose()?;
        Ok(ev)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;

    #[tokio::test]
    async fn sealed_values_are_not_in_the_database_file_and_read_back_in_plain_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db.sqlite");
        let key = [7u8; 32];
        let s =
            Encrypted::new(SqliteStorage::open(&path).expect("opens"), &key, "key1", vec!["/registry/secrets/".into()]);
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
            &[8u8; 32],
            "key1",
            vec!["/registry/secrets/".into()],
        );
        assert!(matches!(wrong.get("/registry/secrets/default/db").await, Err(StorageError::Decrypt { .. })));
    }
}

//! The etcd v3 backend, for several control-plane instances sharing one datastore.
//!
//! Each [`Storage`] operation is one etcd request: `Range` for get and list (prefix range, limit, revision),
//! a `Txn` comparing `create_revision` (create) or `mod_revision` (update, delete), `Watch` with `prev_kv` from a
//! revision, and `Compact`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Event, EventKind, KeyValue, ListOptions, ListResult, Revision, SharedEvent, Storage, StorageError, WatchStream,
    prefix_end,
};

fn backend(operation: &'static str) -> impl FnOnce(etcd_client::Error) -> StorageError {
    move |e| {
        let text = e.to_string();
        if text.contains("required revision has been compacted") {
            return StorageError::Compacted { requested: 0, compacted: 0 };
        }
        if text.contains("required revision is a future revision") {
            return StorageError::FutureRevision { requested: 0, current: 0 };
        }
        StorageError::Backend { backend: "etcd", operation, source: Box::new(e) }
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// etcd-backed [`Storage`].
#[derive(Clone)]
pub struct EtcdStorage {
    client: Client,
    /// The highest compaction revision seen (etcd reports it only when a request runs into it).
    compacted: Arc<AtomicI64>,
}

impl std::fmt::Debug for EtcdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStorage").finish_non_exhaustive()
    }
}

impl EtcdStorage {
    /// Connects to an etcd cluster (`http://host:port` endpoints; `etcd://` is accepted as `http://`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StorageError> {
        let eps: Vec<String> = endpoints.iter().map(|e| e.replacen("etcd://", "http://", 1)).collect();
        let client = Client::connect(eps, None).await.map_err(backend("connect"))?;
        Ok(EtcdStorage { client, compacted: Arc::new(AtomicI64::new(0)) })
    }

    /// The current value of `key` inside a transaction's failure branch.
    fn current_of(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(kv_of),
            _ => None,
        })
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or(0)
}

#[async_trait::async_trait]
impl Storage for EtcdStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        let resp = self.client.kv_client().get(key, None).await.map_err(backend("get"))?;
        Ok(resp.kvs().first().map(kv_of))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StorageError> {
        let start = opts.start.clone().unwrap_or_else(|| prefix.to_string()).max(prefix.to_string());
        let mut o = GetOptions::new().with_range(prefix_end(prefix));
        if let Some(l) = opts.limit {
            o = o.with_limit(l as i64);
        }
        if let Some(r) = opts.revision {
            o = o.with_revision(r);
        }
        let resp = self.client.kv_client().get(start, Some(o)).await.map_err(|e| match backend("list")(e) {
            StorageError::Compacted { .. } => {
                StorageError::Compacted { requested: opts.revision.unwrap_or(0), compacted: 0 }
            }
            other => other,
        })?;
        let revision = opts.revision.unwrap_or_else(|| header_rev(resp.header()));
        Ok(ListResult { items: resp.kvs().iter().map(kv_of).collect(), revision, more: resp.more() })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StorageError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(backend("create"))?;
        if !resp.succeeded() {
            return Err(StorageError::AlreadyExists { key: key.to_string() });
        }
        let rev = header_rev(resp.header());
        Ok(KeyValue { key: key.to_string(), value, create_revision: rev, mod_revision: rev })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue, StorageError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value.to_vec(), Some(etcd_client::PutOptions::new().with_prev_key()))])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(backend("update"))?;
        if !resp.succeeded() {
            return match Self::current_of(&resp) {
                None => Err(StorageError::NotFound { key: key.to_string() }),
                Some(cur) => Err(StorageError::Conflict { key: key.to_string(), expected, actual: cur.mod_revision }),
            };
        }
        let rev = header_rev(resp.header());
        let create = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Put(p) => p.prev_key().map(|kv| kv.create_revision()),
                _ => None,
            })
            .unwrap_or(rev);
        Ok(KeyValue { key: key.to_string(), value, create_revision: create, mod_revision: rev })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StorageError> {
        let cmp = match expected {
            Some(r) => Compare::mod_revision(key, CompareOp::Equal, r),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key()))])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(backend("delete"))?;
        if !resp.succeeded() {
            return match Self::current_of(&resp) {
                None => Err(StorageError::NotFound { key: key.to_string() }),
                Some(cur) => Err(StorageError::Conflict {
                    key: key.to_string(),
                    expected: expected.unwrap_or(0),
                    actual: cur.mod_revision,
                }),
            };
        }
        let rev = header_rev(resp.header());
        let prev = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(d) => d.prev_kvs().first().map(kv_of),
                _ => None,
            })
            .ok_or_else(|| StorageError::NotFound { key: key.to_string() })?;
        Ok(KeyValue { mod_revision: rev, ..prev })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StorageError> {
        let compacted = self.compacted.load(Ordering::SeqCst);
        if after < compacted {
            return Err(StorageError::Compacted { requested: after, compacted });
        }
        let seen = self.compacted.clone();
        let opts = WatchOptions::new().with_range(prefix_end(prefix)).with_start_revision(after + 1).with_prev_key();
        let mut stream = self.client.watch_client().watch(prefix, Some(opts)).await.map_err(backend("watch"))?;
        let (tx, rx) = mpsc::channel::<Result<std::sync::Arc<SharedEvent>, StorageError>>(1024);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => return,
                    m = stream.message() => m,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(backend("watch")(e))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    seen.fetch_max(resp.compact_revision(), Ordering::SeqCst);
                    let _ = tx
                        .send(Err(StorageError::Compacted { requested: after, compacted: resp.compact_revision() }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    let _ = tx
                        .send(Err(StorageError::Backend {
                            backend: "etcd",
                            operation: "watch",
                            source: resp.cancel_reason().to_string().into(),
                        }))
                        .await;
                    return;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let prev = ev.prev_kv().map(kv_of);
                    let event = match ev.event_type() {
                        EventType::Put => Event { kind: EventKind::Put, kv: kv_of(kv), prev },
                        EventType::Delete => {
                            let mut last = prev.clone().unwrap_or_else(|| kv_of(kv));
                            last.mod_revision = kv.mod_revision();
                            Event { kind: EventKind::Delete, kv: last, prev }
                        }
                    };
                    if tx.send(Ok(SharedEvent::new(event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx).map(|e| e)))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StorageError> {
        match self.client.kv_client().compact(revision, None).await {
            Ok(_) => {
                self.compacted.fetch_max(revision, Ordering::SeqCst);
                Ok(())
            }
            Err(e) if e.to_string().contains("compacted") => Ok(()),
            Err(e) => Err(backend("compact")(e)),
        }
    }

    async fn revision(&self) -> Result<Revision, StorageError> {
        let resp = self
            .client
            .kv_client()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(backend("revision"))?;
        Ok(header_rev(resp.header()))
    }

    async fn compacted_revision(&self) -> Result<Revision, StorageError> {
        Ok(self.compacted.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An etcd server (Debian's etcd-server) on loopback ports, removed on drop.
    struct EtcdProcess {
        child: std::process::Child,
        _dir: tempfile::TempDir,
        endpoint: String,
    }

    impl Drop for EtcdProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
    }

    fn start_etcd() -> Option<EtcdProcess> {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"].into_iter().find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(std::env::var("CI").is_err(), "etcd is not installed (scripts/setup installs etcd-server)");
            eprintln!("skipping: etcd is not installed");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = std::process::Command::new(bin)
            .args(["--data-dir", &dir.path().join("etcd").to_string_lossy()])
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd starts");
        Some(EtcdProcess { child, _dir: dir, endpoint })
    }

    #[tokio::test]
    async fn the_etcd_backend_passes_the_conformance_suite() {
        let Some(etcd) = start_etcd() else { return };
        let mut store = None;
        for _ in 0..100 {
            if let Ok(s) = EtcdStorage::connect(std::slice::from_ref(&etcd.endpoint)).await
                && s.revision().await.is_ok()
            {
                store = Some(s);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let store = store.expect("etcd answers within 10 s");
        crate::storage::conformance::run(&store).await;
    }
}

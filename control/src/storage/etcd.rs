//! The etcd v3 backend, for several control-plane instances sharing one datastore.
//!
//! Each [`Storage`] operation is one etcd request: `Range` for get and list (prefix range, limit, revision),
//! a `Txn` comparing `create_revision` (create) or `mod_revision` (update, delete), `Watch` with `prev_kv` from a
//! revision, and `Compact`. With [`EtcdTls`] the connection is TLS, the server's certificate checked against the
//! given CA and this server authenticated by its client certificate (etcd's `--client-cert-auth`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Claim, Event, EventKind, KeyValue, ListOptions, ListResult, Revision, SharedEvent, Storage, StorageError,
    WatchStream, prefix_end,
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

/// Whether the member a request went to could not be reached (so the request did not happen there).
fn unreachable(e: &etcd_client::Error) -> bool {
    // gRPC's UNAVAILABLE is code 14 (tonic's `Code::Unavailable`)
    matches!(e, etcd_client::Error::TransportError(_))
        || matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 14)
}

fn kv_of(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// How long connecting to an etcd member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS to etcd (PEM): the CA that signed the members' serving certificates, and the client certificate and key this
/// server authenticates with (kube-apiserver's `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA certificates trusted for the members.
    pub ca_pem: Vec<u8>,
    /// The client certificate and key, if the members ask for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").field("client_certificate", &self.client.is_some()).finish_non_exhaustive()
    }
}

/// The endpoints to dial: `etcd://` is `http://`, or `https://` with TLS; a plain `http://` endpoint with TLS
/// configured is refused (it would send the datastore's contents in clear).
pub fn endpoints(given: &[String], tls: bool) -> Result<Vec<String>, StorageError> {
    given
        .iter()
        .map(|e| {
            let scheme = if tls { "https://" } else { "http://" };
            let e = e.replacen("etcd://", scheme, 1);
            if tls && e.starts_with("http://") {
                return Err(StorageError::Backend {
                    backend: "etcd",
                    operation: "connect",
                    source: format!("endpoint {e}: plain HTTP with TLS configured (use https:// or etcd://)").into(),
                });
            }
            Ok(e)
        })
        .collect()
}

/// How long one lease serves the keys written under it, by default (kube-apiserver's
/// `--lease-reuse-duration-seconds`).
pub const LEASE_REUSE: Duration = Duration::from_secs(60);

/// Keys that expire: those under `prefixes`, `ttl` after their last write (kube-apiserver's `--event-ttl` for
/// Events), through etcd leases, so etcd itself deletes them and watchers see the deletion.
#[derive(Clone, Debug)]
pub struct Expiry {
    /// Key prefixes (`/registry/events/`).
    pub prefixes: Vec<String>,
    /// How long a key lives after its last write, at least.
    pub ttl: Duration,
    /// How long one lease serves the keys written under it ([`LEASE_REUSE`]): a key written at any time within it
    /// expires between `ttl` and `ttl` + this after that write, and etcd holds one lease per period, not per key.
    pub reuse: Duration,
}

/// etcd-backed [`Storage`].
#[derive(Clone)]
pub struct EtcdStorage {
    client: Client,
    /// The highest compaction revision seen (etcd reports it only when a request runs into it).
    compacted: Arc<AtomicI64>,
    expiry: Option<Expiry>,
    /// The lease keys under `expiry` are written with now, and when it was granted.
    lease: Arc<tokio::sync::Mutex<Option<(i64, std::time::Instant)>>>,
}

impl std::fmt::Debug for EtcdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStorage").finish_non_exhaustive()
    }
}

impl EtcdStorage {
    /// Connects to an etcd cluster over plain HTTP (`http://host:port` endpoints; `etcd://` is accepted as
    /// `http://`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StorageError> {
        Self::connect_with(endpoints, None).await
    }

    /// Connects to an etcd cluster, over TLS when `tls` is given (`https://host:port` or `etcd://host:port`
    /// endpoints).
    pub async fn connect_with(given: &[String], tls: Option<&EtcdTls>) -> Result<Self, StorageError> {
        let eps = endpoints(given, tls.is_some())?;
        let mut options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
        if let Some(t) = tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&t.ca_pem));
            if let Some((cert, key)) = &t.client {
                config = config.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        let client = Client::connect(eps, Some(options)).await.map_err(backend("connect"))?;
        Ok(EtcdStorage { client, compacted: Arc::new(AtomicI64::new(0)), expiry: None, lease: Arc::default() })
    }

    /// Runs the read `op`, again (twice more at most, 100 ms apart) when the member it went to could not be reached:
    /// a read is safe to repeat, and the balanced channel sends the next attempt to a member that answers. (Writes
    /// are not repeated: one that did happen would then answer as a conflict.)
    async fn read<T, Fut>(&self, mut op: impl FnMut(etcd_client::KvClient) -> Fut) -> Result<T, etcd_client::Error>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0;
        loop {
            match op(self.client.kv_client()).await {
                Err(e) if attempt < 2 && unreachable(&e) => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "an etcd member did not answer a read; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                done => return done,
            }
        }
    }

    /// Makes the keys `expiry` names expire.
    pub fn with_expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = Some(expiry);
        self
    }

    /// Runs the write transaction `txn` builds for `key` with the key's put options. When etcd no longer knows the
    /// lease (revoked, or the cluster restored from a snapshot), the lease is forgotten and the write tried once more
    /// with a new one.
    async fn put_txn(
        &self,
        key: &str,
        txn: impl Fn(Option<etcd_client::PutOptions>) -> Txn,
        operation: &'static str,
    ) -> Result<etcd_client::TxnResponse, StorageError> {
        let mut retried = false;
        loop {
            match self.client.kv_client().txn(txn(self.put_options(key).await?)).await {
                Err(e) if !retried && e.to_string().contains("requested lease not found") => {
                    *self.lease.lock().await = None;
                    retried = true;
                }
                other => return other.map_err(backend(operation)),
            }
        }
    }

    /// The put options for `key`: a lease when it expires (one lease per reuse period, granted for the TTL plus
    /// that period, so a key lives at least the TTL after its write). A put without a lease detaches the key from any, so
    /// an update renews the key's life as kube-apiserver's does.
    async fn put_options(&self, key: &str) -> Result<Option<etcd_client::PutOptions>, StorageError> {
        let Some(expiry) = self.expiry.as_ref().filter(|e| e.prefixes.iter().any(|p| key.starts_with(p.as_str())))
        else {
            return Ok(None);
        };
        let mut current = self.lease.lock().await;
        let id = match *current {
            Some((id, granted)) if granted.elapsed() < expiry.reuse => id,
            _ => {
                let ttl = i64::try_from((expiry.ttl + expiry.reuse).as_secs_f64().ceil() as u64).unwrap_or(i64::MAX);
                let granted = std::time::Instant::now();
                let lease = self.client.lease_client().grant(ttl, None).await.map_err(backend("lease grant"))?;
                *current = Some((lease.id(), granted));
                lease.id()
            }
        };
        Ok(Some(etcd_client::PutOptions::new().with_lease(id)))
    }

    /// The current value of `key` inside a transaction's failure branch.
    fn current_of(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(kv_of),
            _ => None,
        })
    }
}

/// The key whose version counts compaction claims (kube-apiserver's is `compact_rev_key`).
pub const COMPACT_CLAIM_KEY: &str = "/skiff/compact-claim";

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or(0)
}

#[async_trait::async_trait]
impl Storage for EtcdStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        let resp = self.read(|mut kv| async move { kv.get(key, None).await }).await.map_err(backend("get"))?;
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
        let resp = self
            .read(|mut kv| {
                let (start, o) = (start.clone(), o.clone());
                async move { kv.get(start, Some(o)).await }
            })
            .await
            .map_err(|e| match backend("list")(e) {
                StorageError::Compacted { .. } => {
                    StorageError::Compacted { requested: opts.revision.unwrap_or(0), compacted: 0 }
                }
                other => other,
            })?;
        let revision = opts.revision.unwrap_or_else(|| header_rev(resp.header()));
        Ok(ListResult { items: resp.kvs().iter().map(kv_of).collect(), revision, more: resp.more() })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StorageError> {
        let txn = |put: Option<etcd_client::PutOptions>| {
            Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value.to_vec(), put)])
                .or_else([TxnOp::get(key, None)])
        };
        let resp = self.put_txn(key, txn, "create").await?;
        if !resp.succeeded() {
            return Err(StorageError::AlreadyExists { key: key.to_string() });
        }
        let rev = header_rev(resp.header());
        Ok(KeyValue { key: key.to_string(), value, create_revision: rev, mod_revision: rev })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue, StorageError> {
        let txn = |put: Option<etcd_client::PutOptions>| {
            Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
                .and_then([TxnOp::put(key, value.to_vec(), Some(put.unwrap_or_default().with_prev_key()))])
                .or_else([TxnOp::get(key, None)])
        };
        let resp = self.put_txn(key, txn, "update").await?;
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
            .read(|mut kv| async move { kv.get("/", Some(GetOptions::new().with_count_only())).await })
            .await
            .map_err(backend("revision"))?;
        Ok(header_rev(resp.header()))
    }

    async fn compacted_revision(&self) -> Result<Revision, StorageError> {
        Ok(self.compacted.load(Ordering::SeqCst))
    }

    async fn claim_compaction(&self, seen_version: i64, revision: Revision) -> Result<Claim, StorageError> {
        // one transaction decides: the key's version is the number of claims so far, as kube-apiserver's
        // `compact_rev_key`
        let txn = Txn::new()
            .when([Compare::version(COMPACT_CLAIM_KEY, CompareOp::Equal, seen_version)])
            .and_then([TxnOp::put(COMPACT_CLAIM_KEY, revision.to_string(), None)])
            .or_else([TxnOp::get(COMPACT_CLAIM_KEY, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(backend("claim compaction"))?;
        let current = header_rev(resp.header());
        if resp.succeeded() {
            return Ok(Claim { won: true, version: seen_version + 1, current });
        }
        let version = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.version()),
                _ => None,
            })
            .unwrap_or(0);
        Ok(Claim { won: false, version, current })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member for the test (none, and the test skips, when etcd is missing outside CI).
    fn start_etcd(
        dir: &std::path::Path,
        tls: Option<skiff_testkit::etcd::Tls<'_>>,
    ) -> Option<skiff_testkit::etcd::Etcd> {
        match skiff_testkit::etcd::start(dir, tls) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !skiff_testkit::is_ci() => {
                eprintln!("skipping: {e}");
                None
            }
            Err(e) => panic!("starting etcd: {e}"),
        }
    }

    /// A store on `endpoint` that answers, within 10 s.
    async fn answering(endpoint: &str, tls: Option<&EtcdTls>) -> EtcdStorage {
        for _ in 0..100 {
            if let Ok(s) = EtcdStorage::connect_with(&[endpoint.to_string()], tls).await
                && s.revision().await.is_ok()
            {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("etcd at {endpoint} does not answer within 10 s");
    }

    #[test]
    fn tls_endpoints_are_https() {
        let given = ["etcd://a:2379".to_string(), "https://b:2379".to_string()];
        assert_eq!(endpoints(&given, true).expect("valid"), ["https://a:2379", "https://b:2379"]);
        assert_eq!(endpoints(&given[..1], false).expect("valid"), ["http://a:2379"]);
        let err = endpoints(&["http://a:2379".to_string()], true).expect_err("refused").to_string();
        assert!(err.contains("plain HTTP with TLS configured"), "{err}");
    }

    #[tokio::test]
    async fn keys_under_an_expiring_prefix_go_after_their_ttl_and_watchers_see_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(etcd) = start_etcd(dir.path(), None) else { return };
        let expiry = Expiry {
            prefixes: vec!["/registry/events/".into()],
            ttl: Duration::from_secs(2),
            reuse: Duration::from_secs(1),
        };
        let store = answering(&etcd.endpoint, None).await.with_expiry(expiry);
        let from = store.revision().await.expect("revision");
        let mut watch = store.watch("/registry/", from).await.expect("watch");
        let written = std::time::Instant::now();
        store.create("/registry/events/ns/a", Bytes::from_static(b"a")).await.expect("create an event");
        store.create("/registry/pods/ns/p", Bytes::from_static(b"p")).await.expect("create a pod");
        let kept = store.create("/registry/events/ns/b", Bytes::from_static(b"b")).await.expect("create an event");
        // an update renews the key's life: b, updated 1.5 s later, outlives a
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let renewed = std::time::Instant::now();
        store.update("/registry/events/ns/b", Bytes::from_static(b"b2"), kept.mod_revision).await.expect("update");
        let mut gone = Vec::new();
        while gone.len() < 2 {
            let next = tokio::time::timeout(Duration::from_secs(15), watch.next()).await;
            let event = next.expect("the events expire within 15 s").expect("watching").expect("an event");
            if event.event.kind == EventKind::Delete {
                gone.push((event.event.kv.key.clone(), std::time::Instant::now()));
            }
        }
        assert_eq!(gone[0].0, "/registry/events/ns/a", "{gone:?}");
        assert!(gone[0].1 - written >= Duration::from_secs(2), "a lived its TTL: {gone:?}");
        assert_eq!(gone[1].0, "/registry/events/ns/b", "{gone:?}");
        assert!(gone[1].1 - renewed >= Duration::from_secs(2), "b lived its TTL after the update: {gone:?}");
        assert!(store.get("/registry/pods/ns/p").await.expect("get").is_some(), "keys outside the prefix stay");

        // a lease etcd no longer knows (expired by now, or revoked), while this server still reuses it, is replaced
        // at the next write, which succeeds
        let lease = store.lease.lock().await.map(|(id, _)| id).expect("a lease was used");
        let _ = store.client.lease_client().revoke(lease).await;
        *store.lease.lock().await = Some((lease, std::time::Instant::now()));
        store.create("/registry/events/ns/c", Bytes::from_static(b"c")).await.expect("written with a new lease");
        let now_in_use = store.lease.lock().await.map(|(id, _)| id);
        assert!(now_in_use.is_some_and(|id| id != lease), "a new lease: {now_in_use:?}");
    }

    #[tokio::test]
    async fn tls_to_etcd_needs_the_members_ca_and_a_client_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = crate::pki::Pki::load_or_create(&dir.path().join("pki"), &[]).expect("pki");
        let other = crate::pki::Pki::load_or_create(&dir.path().join("other"), &[]).expect("another CA");
        let write = |name: &str, pem: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write");
            p
        };
        let (ca, cert, key) = (
            write("ca.crt", &pki.ca.cert_pem),
            write("etcd.crt", &pki.server.cert_pem),
            write("etcd.key", &pki.server.key_pem),
        );
        let tls = skiff_testkit::etcd::Tls { ca: &ca, cert: &cert, key: &key };
        let Some(etcd) = start_etcd(dir.path(), Some(tls)) else { return };
        let ours = pki.issue_client("skiff-apiserver", None).expect("client certificate");
        let theirs = other.issue_client("skiff-apiserver", None).expect("client certificate of another CA");
        let good = EtcdTls {
            ca_pem: pki.ca.cert_pem.clone().into(),
            client: Some((ours.cert_pem.clone().into(), ours.key_pem.clone().into())),
        };

        // the members' CA and a client certificate it signed: the whole conformance suite over TLS
        let store = answering(&etcd.endpoint, Some(&good)).await;
        crate::storage::conformance::run(&store).await;

        // refused: no client certificate, one from another CA, a member certificate from an untrusted CA, no TLS
        let no_client = EtcdTls { client: None, ..good.clone() };
        let foreign_client = EtcdTls { client: Some((theirs.cert_pem.into(), theirs.key_pem.into())), ..good.clone() };
        let wrong_ca = EtcdTls { ca_pem: other.ca.cert_pem.clone().into(), ..good.clone() };
        let plain = etcd.endpoint.replacen("https://", "http://", 1);
        let cases: [(&str, &str, Option<&EtcdTls>); 4] = [
            ("no client certificate", &etcd.endpoint, Some(&no_client)),
            ("a client certificate of another CA", &etcd.endpoint, Some(&foreign_client)),
            ("a member certificate this server does not trust", &etcd.endpoint, Some(&wrong_ca)),
            ("plain HTTP", &plain, None),
        ];
        for (what, endpoint, tls) in cases {
            let attempt = async {
                let s = EtcdStorage::connect_with(&[endpoint.to_string()], tls).await?;
                s.revision().await
            };
            let r = tokio::time::timeout(std::time::Duration::from_secs(15), attempt).await;
            assert!(!matches!(r, Ok(Ok(_))), "{what}: etcd answered ({r:?})");
        }
    }

    #[tokio::test]
    async fn the_etcd_backend_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(etcd) = start_etcd(dir.path(), None) else { return };
        let store = answering(&etcd.endpoint, None).await;
        crate::storage::conformance::run(&store).await;
    }

    /// etcd's own count of open watchers (`etcd_debugging_mvcc_watcher_total` on its metrics endpoint).
    async fn etcd_watchers(endpoint: &str) -> u64 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = endpoint.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("etcd's client port");
        conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.expect("request");
        let mut body = String::new();
        conn.read_to_string(&mut body).await.expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("no watcher count in etcd's metrics"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hundred_cached_watches_are_one_etcd_watch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(etcd) = start_etcd(dir.path(), None) else { return };
        let store: Arc<dyn Storage> = Arc::new(answering(&etcd.endpoint, None).await);
        let base = etcd_watchers(&etcd.endpoint).await;
        let cache = crate::storage::watch_cache::WatchCache::new(store.clone());
        let from = store.revision().await.expect("revision");
        let mut cached = Vec::new();
        for i in 0..200 {
            let prefix = format!("/registry/configmaps/ns{}/", i % 4);
            cached.push(cache.watch("/registry/configmaps/", &prefix, from, None).await.expect("watch"));
        }
        store.create("/registry/configmaps/ns1/x", Bytes::from_static(b"x")).await.expect("create");
        let got = tokio::time::timeout(Duration::from_secs(10), cached[1].next()).await;
        let got = got.expect("within 10 s").expect("open").expect("no error");
        let crate::storage::watch_cache::Change::Event(got) = got else { panic!("an event first: {got:?}") };
        assert_eq!(got.kv.key, "/registry/configmaps/ns1/x");
        let through_cache = etcd_watchers(&etcd.endpoint).await - base;
        assert_eq!(through_cache, 1, "200 watchers through the cache");
        // the same watches on the store itself: one etcd watcher each
        let mut direct = Vec::new();
        for i in 0..200 {
            direct.push(store.watch(&format!("/registry/configmaps/ns{}/", i % 4), from).await.expect("watch"));
        }
        let without = etcd_watchers(&etcd.endpoint).await - base - through_cache;
        assert!(without >= 200, "direct watches are {without} etcd watchers");
        eprintln!("etcd watchers for 200 client watches: {through_cache} through the cache, {without} without");
    }

    #[tokio::test]
    async fn servers_sharing_etcd_compact_once_per_interval_and_watches_resume_within_one() {
        use crate::compaction::{Turn, next};
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(etcd) = start_etcd(dir.path(), None) else { return };
        let mut servers = Vec::new();
        for _ in 0..3 {
            servers.push((answering(&etcd.endpoint, None).await, Turn::default()));
        }
        let mut compacted = Vec::new();
        let mut readings = Vec::new();
        for interval in 0..4 {
            for i in 0..5 {
                let key = format!("/registry/configmaps/default/c{interval}-{i}");
                servers[0].0.create(&key, Bytes::from_static(b"x")).await.expect("create");
            }
            readings.push(servers[0].0.revision().await.expect("revision"));
            let mut winners = 0;
            for (store, turn) in &mut servers {
                let claim = store.claim_compaction(turn.seen_version, turn.candidate).await.expect("claim");
                winners += usize::from(claim.won);
                let (after, compact) = next(*turn, claim);
                *turn = after;
                if let Some(rev) = compact {
                    store.compact(rev).await.expect("compact");
                    compacted.push(rev);
                }
            }
            assert_eq!(winners, 1, "interval {interval}: one server claims it");
        }
        // no compaction in the first interval; then one per interval, each to the revision one interval old
        assert_eq!(compacted.len(), 3, "{compacted:?}");
        assert!(compacted.windows(2).all(|w| w[0] < w[1]), "{compacted:?}");
        let last = *compacted.last().expect("one");
        assert!(last >= readings[2] && last < readings[3], "compacted to {last}, readings {readings:?}");
        // a watch from within the last interval resumes; one from before the compaction is told so
        let store = &servers[1].0;
        let mut recent = store.watch("/registry/configmaps/", readings[2]).await.expect("a recent revision resumes");
        let first = tokio::time::timeout(Duration::from_secs(10), recent.next()).await.expect("within 10 s");
        assert!(first.expect("open").expect("an event").kv.key.starts_with("/registry/configmaps/default/c3-"));
        // a store that did not compact itself learns of it from etcd, on the stream
        let old = match store.watch("/registry/configmaps/", readings[0]).await {
            Ok(mut w) => tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("within 10 s"),
            Err(e) => Some(Err(e)),
        };
        assert!(matches!(old, Some(Err(StorageError::Compacted { .. }))), "{old:?}");
    }
}

//! The embedded SQLite backend: WAL, `synchronous=FULL`, a single writer thread with group commit, a small pool
//! of reader connections, and watches fed from the write path with catch-up from the history table.
//!
//! # Layout
//! - `log(rev, key, deleted, create_rev, prev_rev, value)`: every change, one row per revision; a deletion row
//!   holds the key's last value.
//! - `current(key, rev)`: the live revision of every key (a pointer into `log`).
//! - `meta(name, value)`: `revision` (the last assigned revision) and `compacted`.
//!
//! # Guarantees
//! - A write is acknowledged only after its transaction is committed with `fsync` (durable across `kill -9` and
//!   power loss).
//! - Revisions are assigned in commit order; watchers receive events in revision order with no gaps: a watcher that
//!   falls behind the in-memory channel re-reads the history table.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Event, EventKind, KeyValue, ListOptions, ListResult, Revision, SharedEvent, Storage, StorageError, WatchStream,
    prefix_end,
};

const READERS: usize = 4;
const MAX_BATCH: usize = 256;

fn backend(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StorageError {
    move |e| StorageError::Backend { backend: "sqlite", operation, source: Box::new(e) }
}

enum Op {
    Create { key: String, value: Bytes },
    Update { key: String, value: Bytes, expected: Revision },
    Delete { key: String, expected: Option<Revision> },
    Compact { revision: Revision },
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Option<Event>, StorageError>>,
}

struct Shared {
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicI64,
    events: broadcast::Sender<Arc<SharedEvent>>,
    revision: AtomicI64,
    compacted: AtomicI64,
}

/// SQLite-backed [`Storage`].
#[derive(Clone)]
pub struct SqliteStorage {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Request>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").field("path", &self.path).finish()
    }
}

fn open(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open(path).map_err(backend("open"))?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(backend("busy_timeout"))?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")
        .map_err(backend("pragma"))?;
    // One plan per statement, whatever its parameters: without this SQLite marked the point read's key parameter as
    // able to change the plan, and prepared the cached statement again for every new key bound to it, so every read
    // by key (and every write, which reads its key first) parsed and planned its SQL anew (6% of the server's CPU
    // with 10k pods changing, scripts/bench-scale). Every query here is an index lookup or range whose plan does not
    // depend on the values.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(backend("query planner stability"))?;
    Ok(conn)
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let writer = open(&path)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS log (rev INTEGER PRIMARY KEY, key TEXT NOT NULL, deleted INTEGER NOT NULL,
                    create_rev INTEGER NOT NULL, prev_rev INTEGER NOT NULL, value BLOB NOT NULL);
                 CREATE INDEX IF NOT EXISTS log_key_rev ON log(key, rev);
                 CREATE TABLE IF NOT EXISTS current (key TEXT PRIMARY KEY, rev INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT OR IGNORE INTO meta(name, value) VALUES ('revision', 1), ('compacted', 0);",
            )
            .map_err(backend("create schema"))?;
        let meta = |name: &str| -> Result<i64, StorageError> {
            writer
                .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
                .map_err(backend("read meta"))
        };
        let revision = meta("revision")?;
        let compacted = meta("compacted")?;
        let readers = (0..READERS).map(|_| open(&path).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
        let (events, _) = broadcast::channel(8192);
        let shared = Arc::new(Shared {
            readers,
            next_reader: AtomicI64::new(0),
            events,
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
        });
        let (writes, rx) = mpsc::channel(4096);
        let s = shared.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, s))
            .map_err(|e| StorageError::Backend { backend: "sqlite", operation: "spawn writer", source: Box::new(e) })?;
        Ok(SqliteStorage { shared, writes, path })
    }

    async fn write(&self, op: Op) -> Result<Option<Event>, StorageError> {
        let (reply, rx) = oneshot::channel();
        let closed =
            || StorageError::Backend { backend: "sqlite", operation: "write", source: "writer thread stopped".into() };
        self.writes.send(Request { op, reply }).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let i = shared.next_reader.fetch_add(1, Ordering::Relaxed) as usize % shared.readers.len();
            let conn = shared.readers[i].lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StorageError::Backend {
            backend: "sqlite",
            operation: "read task",
            source: Box::new(e),
        })?
    }

    /// Runs a point read on the calling task when a reader connection is free (`None` when none is). It takes
    /// microseconds (an index lookup in pages SQLite or the kernel caches), less than handing it to the blocking
    /// pool and back: the futex calls of those two thread wake-ups per read alone were 5.4% of the server's CPU with
    /// 5-10k pods changing.
    fn read_now<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StorageError>) -> Option<Result<T, StorageError>> {
        let conn = self.shared.readers.iter().find_map(|conn| match conn.try_lock() {
            Ok(c) => Some(c),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })?;
        Some(f(&conn))
    }
}

fn row_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    let value: Vec<u8> = r.get(1)?;
    Ok(KeyValue { key: r.get(0)?, value: Bytes::from(value), create_revision: r.get(2)?, mod_revision: r.get(3)? })
}

/// A key's current row.
const GET_CURRENT: &str =
    "SELECT l.key, l.value, l.create_rev, l.rev FROM current c JOIN log l ON l.rev = c.rev WHERE c.key = ?1";

fn get_current(conn: &Connection, key: &str) -> Result<Option<KeyValue>, StorageError> {
    conn.prepare_cached(GET_CURRENT)
        .and_then(|mut stmt| stmt.query_row([key], row_kv).optional())
        .map_err(backend("get"))
}

/// Executes a statement through the connection's cache of prepared statements (the writer runs a handful of
/// statements for every write, and parsing them each time showed in its profile).
fn cached(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

// === impl writer ===

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Request>, shared: Arc<Shared>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut rev = shared.revision.load(Ordering::SeqCst);
        let start_rev = rev;
        let outcome = (|| -> Result<Vec<Result<Option<Event>, StorageError>>, StorageError> {
            let tx = conn.transaction().map_err(backend("begin"))?;
            let mut results = Vec::with_capacity(batch.len());
            for req in &batch {
                results.push(apply(&tx, &req.op, &mut rev, &shared));
            }
            if rev != start_rev {
                cached(&tx, "UPDATE meta SET value = ?1 WHERE name = 'revision'", [rev])
                    .map_err(backend("bump revision"))?;
            }
            tx.commit().map_err(backend("commit"))?;
            Ok(results)
        })();
        match outcome {
            Ok(results) => {
                shared.revision.store(rev, Ordering::SeqCst);
                for (req, res) in batch.into_iter().zip(results) {
                    if let Ok(Some(ev)) = &res {
                        // no receivers is fine
                        let _ = shared.events.send(SharedEvent::new(ev.clone()));
                    }
                    let _ = req.reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite transaction failed; the batch is rejected");
                let msg = e.to_string();
                for req in batch {
                    let _ = req.reply.send(Err(StorageError::Backend {
                        backend: "sqlite",
                        operation: "commit",
                        source: msg.clone().into(),
                    }));
                }
            }
        }
    }
}

fn apply(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    rev: &mut Revision,
    shared: &Shared,
) -> Result<Option<Event>, StorageError> {
    match op {
        Op::Create { key, value } => {
            if get_current(tx, key)?.is_some() {
                return Err(StorageError::AlreadyExists { key: key.clone() });
            }
            *rev += 1;
            cached(
                tx,
                "INSERT INTO log(rev, key, deleted, create_rev, prev_rev, value) VALUES (?1, ?2, 0, ?1, 0, ?3)",
                params![*rev, key, value.as_ref()],
            )
            .map_err(backend("insert"))?;
            cached(tx, "INSERT INTO current(key, rev) VALUES (?1, ?2)", params![key, *rev])
                .map_err(backend("insert current"))?;
            let kv = KeyValue { key: key.clone(), value: value.clone(), create_revision: *rev, mod_revision: *rev };
            Ok(Some(Event { kind: EventKind::Put, kv, prev: None }))
        }
        Op::Update { key, value, expected } => {
            let prev = get_current(tx, key)?.ok_or_else(|| StorageError::NotFound { key: key.clone() })?;
            if prev.mod_revision != *expected {
                return Err(StorageError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual: prev.mod_revision,
                });
            }
            *rev += 1;
            cached(
                tx,
                "INSERT INTO log(rev, key, deleted, create_rev, prev_rev, value) VALUES (?1, ?2, 0, ?3, ?4, ?5)",
                params![*rev, key, prev.create_revision, prev.mod_revision, value.as_ref()],
            )
            .map_err(backend("insert"))?;
            cached(tx, "UPDATE current SET rev = ?2 WHERE key = ?1", params![key, *rev])
                .map_err(backend("update current"))?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: prev.create_revision,
                mod_revision: *rev,
            };
            Ok(Some(Event { kind: EventKind::Put, kv, prev: Some(prev) }))
        }
        Op::Delete { key, expected } => {
            let prev = get_current(tx, key)?.ok_or_else(|| StorageError::NotFound { key: key.clone() })?;
            if let Some(expected) = expected
                && prev.mod_revision != *expected
            {
                return Err(StorageError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual: prev.mod_revision,
                });
            }
            *rev += 1;
            cached(
                tx,
                "INSERT INTO log(rev, key, deleted, create_rev, prev_rev, value) VALUES (?1, ?2, 1, ?3, ?4, ?5)",
                params![*rev, key, prev.create_revision, prev.mod_revision, prev.value.as_ref()],
            )
            .map_err(backend("insert"))?;
            cached(tx, "DELETE FROM current WHERE key = ?1", [key]).map_err(backend("delete current"))?;
            let kv = KeyValue {
                key: key.clone(),
                value: prev.value.clone(),
                create_revision: prev.create_revision,
                mod_revision: *rev,
            };
            Ok(Some(Event { kind: EventKind::Delete, kv, prev: Some(prev) }))
        }
        Op::Compact { revision } => {
            let revision = (*revision).min(*rev);
            if revision <= shared.compacted.load(Ordering::SeqCst) {
                return Ok(None);
            }
            // Keep, for every key, its newest row at or below the compaction revision unless it is a deletion; drop
            // everything else at or below it.
            cached(
                tx,
                "DELETE FROM log WHERE rev <= ?1 AND (deleted = 1 OR rev NOT IN
                   (SELECT MAX(rev) FROM log WHERE rev <= ?1 GROUP BY key))",
                [revision],
            )
            .map_err(backend("compact"))?;
            cached(tx, "UPDATE meta SET value = ?1 WHERE name = 'compacted'", [revision])
                .map_err(backend("compact meta"))?;
            shared.compacted.store(revision, Ordering::SeqCst);
            Ok(None)
        }
    }
}

// === impl reads and watches ===

fn history(conn: &Connection, prefix: &str, after: Revision, limit: usize) -> Result<Vec<Event>, StorageError> {
    let end = prefix_end(prefix);
    let mut stmt = conn
        .prepare_cached(
            "SELECT l.key, l.value, l.create_rev, l.rev, l.deleted, l.prev_rev, p.value
             FROM log l LEFT JOIN log p ON p.rev = l.prev_rev
             WHERE l.rev > ?1 AND l.key >= ?2 AND l.key < ?3 ORDER BY l.rev LIMIT ?4",
        )
        .map_err(backend("prepare history"))?;
    let rows = stmt
        .query_map(params![after, prefix, end, limit as i64], |r| {
            let kv = row_kv(r)?;
            let deleted: bool = r.get(4)?;
            let prev_rev: i64 = r.get(5)?;
            let prev_value: Option<Vec<u8>> = r.get(6)?;
            let prev = prev_value.map(|v| KeyValue {
                key: kv.key.clone(),
                value: Bytes::from(v),
                create_revision: kv.create_revision,
                mod_revision: prev_rev,
            });
            Ok(Event { kind: if deleted { EventKind::Delete } else { EventKind::Put }, kv, prev })
        })
        .map_err(backend("history"))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend("history row"))
}

#[async_trait::async_trait]
impl Storage for SqliteStorage {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        if let Some(read) = self.read_now(|c| get_current(c, key)) {
            return read;
        }
        let key = key.to_string();
        self.read(move |c| get_current(c, &key)).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StorageError> {
        let current = self.shared.revision.load(Ordering::SeqCst);
        let compacted = self.shared.compacted.load(Ordering::SeqCst);
        if let Some(r) = opts.revision {
            if r < compacted {
                return Err(StorageError::Compacted { requested: r, compacted });
            }
            if r > current {
                return Err(StorageError::FutureRevision { requested: r, current });
            }
        }
        let start = opts.start.clone().unwrap_or_else(|| prefix.to_string()).max(prefix.to_string());
        let end = prefix_end(prefix);
        let limit = opts.limit.map(|l| l as i64 + 1).unwrap_or(-1);
        let at = opts.revision;
        let user_limit = opts.limit;
        self.read(move |conn| {
            // Read the revision inside the read so that the page and the revision agree (WAL snapshot).
            let tx = conn.unchecked_transaction().map_err(backend("begin read"))?;
            let snapshot: i64 = tx
                .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))
                .map_err(backend("revision"))?;
            let revision = at.unwrap_or(snapshot);
            let mut items = if revision == snapshot {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT l.key, l.value, l.create_rev, l.rev FROM current c JOIN log l ON l.rev = c.rev
                         WHERE c.key >= ?1 AND c.key < ?2 ORDER BY c.key LIMIT ?3",
                    )
                    .map_err(backend("prepare list"))?;
                stmt.query_map(params![start, end, limit], row_kv)
                    .map_err(backend("list"))?
                    .collect::<Result<Vec<_>, _>>()
            } else {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT l.key, l.value, l.create_rev, l.rev FROM log l
                         WHERE l.key >= ?1 AND l.key < ?2 AND l.deleted = 0
                           AND l.rev = (SELECT MAX(rev) FROM log m WHERE m.key = l.key AND m.rev <= ?3)
                         ORDER BY l.key LIMIT ?4",
                    )
                    .map_err(backend("prepare list at revision"))?;
                stmt.query_map(params![start, end, revision, limit], row_kv)
                    .map_err(backend("list at revision"))?
                    .collect::<Result<Vec<_>, _>>()
            }
            .map_err(backend("list row"))?;
            let more = user_limit.is_some_and(|l| items.len() > l);
            if let Some(l) = user_limit {
                items.truncate(l);
            }
            Ok(ListResult { items, revision, more })
        })
        .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StorageError> {
        let ev = self.write(Op::Create { key: key.to_string(), value }).await?;
        Ok(ev.expect("a create produces an event").kv)
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue, StorageError> {
        let ev = self.write(Op::Update { key: key.to_string(), value, expected }).await?;
        Ok(ev.expect("an update produces an event").kv)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StorageError> {
        let ev = self.write(Op::Delete { key: key.to_string(), expected }).await?;
        Ok(ev.expect("a delete produces an event").kv)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StorageError> {
        let compacted = self.shared.compacted.load(Ordering::SeqCst);
        if after < compacted {
            return Err(StorageError::Compacted { requested: after, compacted });
        }
        // Subscribe before reading history so that nothing falls between the two.
        let mut live = self.shared.events.subscribe();
        let (tx, rx) = mpsc::channel::<Result<Arc<SharedEvent>, StorageError>>(1024);
        let prefix = prefix.to_string();
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = after;
            loop {
                // catch up from the history table, page by page
                loop {
                    let p = prefix.clone();
                    let page = match this.read(move |c| history(c, &p, last, 1000)).await {
                        Ok(page) => page,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let n = page.len();
                    for ev in page {
                        last = ev.revision();
                        if tx.send(Ok(SharedEvent::new(ev))).await.is_err() {
                            return;
                        }
                    }
                    if n < 1000 {
                        break;
                    }
                }
                // then follow the live channel until it lags
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        msg = live.recv() => match msg {
                            Ok(ev) => {
                                if ev.revision() <= last || !ev.kv.key.starts_with(&prefix) {
                                    continue;
                                }
                                last = ev.revision();
                                if tx.send(Ok(ev)).await.is_err() {
                                    return;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                }
                let compacted = this.shared.compacted.load(Ordering::SeqCst);
                if last < compacted {
                    let _ = tx.send(Err(StorageError::Compacted { requested: last, compacted })).await;
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StorageError> {
        self.write(Op::Compact { revision }).await.map(|_| ())
    }

    async fn revision(&self) -> Result<Revision, StorageError> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn compacted_revision(&self) -> Result<Revision, StorageError> {
        Ok(self.shared.compacted.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_statement_is_not_prepared_again_for_each_value_bound_to_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("s.db");
        let _store = SqliteStorage::open(&path).expect("open");
        let conn = open(&path).expect("a connection");
        let keys = ["/registry/pods/a/p1", "/registry/pods/a/p2", "/registry/pods/b/p3", "/registry/pods/a/p1"];
        for k in keys {
            get_current(&conn, k).expect("get");
        }
        // 3 without the query planner's stability guarantee: every new key re-prepared the statement
        let stmt = conn.prepare_cached(GET_CURRENT).expect("cached");
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[tokio::test]
    async fn the_sqlite_backend_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = SqliteStorage::open(dir.path().join("db.sqlite")).expect("opens");
        crate::storage::conformance::run(&s).await;
    }

    #[tokio::test]
    async fn data_and_revisions_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db.sqlite");
        let rev = {
            let s = SqliteStorage::open(&path).expect("opens");
            s.create("/k/a", Bytes::from_static(b"1")).await.expect("create");
            s.create("/k/b", Bytes::from_static(b"2")).await.expect("create").mod_revision
        };
        let s = SqliteStorage::open(&path).expect("reopens");
        assert_eq!(s.revision().await.expect("revision"), rev);
        assert_eq!(s.get("/k/b").await.expect("get").expect("present").value, Bytes::from_static(b"2"));
        let next = s.create("/k/c", Bytes::from_static(b"3")).await.expect("create").mod_revision;
        assert_eq!(next, rev + 1, "revisions continue after a restart");
    }
}
